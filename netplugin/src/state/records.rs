//! The records the store holds, and their keys. Typed fields serialize to the exact text
//! earlier releases stored, so stored data needs no migration.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::ipnet::{Ipv4If, Ipv4Net};
use crate::mac::Mac;
use crate::store::{StoreError, StoreResult};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolRecord {
    pub id: String,
    pub address_space: String,
    /// CIDR.
    pub subnet: String,
    /// `--ip-range`: dynamic addresses come from here.
    #[serde(default)]
    pub sub_pool: Option<String>,
    /// Handed out from the default range (no `--subnet`).
    pub auto: bool,
    /// Set when a network is created on it.
    #[serde(default)]
    pub network_id: Option<String>,
    pub host_id: String,
    pub created_at: u64,
    /// Hosts whose Docker requested this pool (an explicit pool is shared by every host that
    /// creates the same network; it goes when the last one releases it). Empty in records
    /// written before sharing: then `host_id` is the one user.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub hosts: BTreeSet<String>,
    /// Block records (`blocks/<pool>/`) exist for every held address.
    #[serde(default)]
    pub blocks: bool,
}

impl PoolRecord {
    /// The pool's subnet. (Stored as text; a bad one names this record and field.)
    pub fn network(&self) -> StoreResult<Ipv4Net> {
        self.subnet.parse().map_err(|message| StoreError::BadField {
            key: pool_key(&self.id),
            field: "subnet",
            message,
        })
    }

    /// The hosts using the pool (see `hosts`).
    pub fn users(&self) -> BTreeSet<String> {
        if self.hosts.is_empty() {
            BTreeSet::from([self.host_id.clone()])
        } else {
            self.hosts.clone()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AddrKind {
    Gateway,
    /// Requested by Docker for an endpoint (or an aux address: Docker does not tell them apart).
    Address,
    /// Held by an admin (`netplugin pool reserve`): never handed out.
    Reserved,
}

/// A block of a pool's addresses (Calico's model): the host with affinity allocates from it
/// without touching other hosts' keys; bit `i` = address `first + i` is held.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRecord {
    /// Affinity; `None` = free to claim (made by an explicit address, or reclaimed).
    #[serde(default)]
    pub host: Option<String>,
    pub used: u64,
}

/// A live host: put with its lease, so it vanishes when the host stops renewing it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    pub host_id: String,
    pub lease: i64,
    pub started_at: u64,
    pub version: String,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddrRecord {
    pub pool_id: String,
    pub address: Ipv4Addr,
    pub kind: AddrKind,
    /// Set once an endpoint is created with this address.
    #[serde(default)]
    pub endpoint_id: Option<String>,
    #[serde(default)]
    pub mac: Option<String>,
    pub host_id: String,
    pub created_at: u64,
    /// The allocating host's lease when it was taken (a reference: the address outlives it
    /// until reclaimed).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lease: i64,
    /// Random id of the request that took it: tells whether a transaction whose answer was
    /// lost (etcd unreachable mid-call) did land.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub claim: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRecord {
    pub id: String,
    pub vlan: u16,
    /// The VLAN was picked from `--vlan-range`.
    pub vlan_auto: bool,
    pub mtu: u32,
    #[serde(default)]
    pub subnet: Option<Ipv4Net>,
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    #[serde(default)]
    pub pool_id: Option<String>,
    pub host_id: String,
    pub created_at: u64,
    /// Each container's limits on this network (`-o rate=...`).
    #[serde(default, skip_serializing_if = "RateLimits::is_unlimited")]
    pub limits: RateLimits,
    /// `-o allow_spoofing=true`: its ports admit any source address and MAC.
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_spoofing: bool,
}

/// Per-container rate limits, enforced by OpenFlow meters; `None` = unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimits {
    /// What the container sends, kbit/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_kbps: Option<u32>,
    /// What the container receives (unicast to its MAC), kbit/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_kbps: Option<u32>,
    /// Bucket size of both meters, kbit; `None`: 80% of a second at the rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst_kbits: Option<u32>,
}

impl RateLimits {
    pub fn is_unlimited(&self) -> bool {
        self.egress_kbps.is_none() && self.ingress_kbps.is_none()
    }

    /// `self`, with each limit `over` sets replacing it.
    pub fn overridden_by(self, over: RateLimits) -> RateLimits {
        RateLimits {
            egress_kbps: over.egress_kbps.or(self.egress_kbps),
            ingress_kbps: over.ingress_kbps.or(self.ingress_kbps),
            burst_kbits: over.burst_kbits.or(self.burst_kbits),
        }
    }

    /// Own limits over a network's: per field, `None` follows `net`, `Some(0)` is unlimited
    /// whatever `net` says (`--egress none` on an endpoint), `Some(k)` is `k`.
    pub fn over(&self, net: RateLimits) -> RateLimits {
        let one = |own: Option<u32>, net: Option<u32>| match own {
            Some(0) => None,
            Some(k) => Some(k),
            None => net,
        };
        RateLimits {
            egress_kbps: one(self.egress_kbps, net.egress_kbps),
            ingress_kbps: one(self.ingress_kbps, net.ingress_kbps),
            burst_kbits: one(self.burst_kbits, net.burst_kbits),
        }
    }

    /// The own limits that make `effective` out of `net` (records without `own_limits`): the
    /// fields where they differ.
    pub fn own_from(effective: RateLimits, net: RateLimits) -> RateLimits {
        let one = |eff: Option<u32>, net: Option<u32>| {
            if eff == net {
                None
            } else {
                Some(eff.unwrap_or(0))
            }
        };
        RateLimits {
            egress_kbps: one(effective.egress_kbps, net.egress_kbps),
            ingress_kbps: one(effective.ingress_kbps, net.ingress_kbps),
            burst_kbits: one(effective.burst_kbits, net.burst_kbits),
        }
    }

    /// The bucket for a meter of `rate_kbps`.
    pub fn burst_for(&self, rate_kbps: u32) -> u32 {
        self.burst_kbits
            .unwrap_or_else(|| (u64::from(rate_kbps) * 4 / 5).max(8) as u32)
    }

    /// `20M/5M` (egress/ingress, bits per second), `-` for unlimited.
    pub fn describe(&self) -> String {
        let one = |k: Option<u32>| match k {
            None => "-".to_string(),
            Some(k) if k % 1_000_000 == 0 => format!("{}G", k / 1_000_000),
            Some(k) if k % 1_000 == 0 => format!("{}M", k / 1_000),
            Some(k) => format!("{k}K"),
        };
        if self.is_unlimited() {
            "-".into()
        } else {
            format!("{}/{}", one(self.egress_kbps), one(self.ingress_kbps))
        }
    }
}

impl EndpointRecord {
    /// The host end of its veth and its OVS port, from the endpoint id.
    pub fn host_if_name(&self) -> String {
        crate::dataplane::host_if_name(&self.id)
    }

    /// The container end, from the endpoint id.
    pub fn container_if_name(&self) -> String {
        crate::dataplane::container_if_name(&self.id)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRecord {
    pub id: String,
    pub network_id: String,
    pub host_id: String,
    pub address: Ipv4If,
    pub mac: Mac,
    /// As the creating host named them; informative only. Every use on a host goes through
    /// [`EndpointRecord::host_if_name`] / [`EndpointRecord::container_if_name`], derived from
    /// the id: a record must not choose which interface a host touches.
    pub host_if: String,
    pub container_if: String,
    pub vlan: u16,
    pub mtu: u32,
    pub created_at: u64,
    /// The host's lease when the endpoint was created (0: embedded store without leases).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lease: i64,
    /// The network's limits, with the endpoint's own `--driver-opt` ones over them.
    #[serde(default, skip_serializing_if = "RateLimits::is_unlimited")]
    pub limits: RateLimits,
    /// The endpoint's own limits (`--driver-opt`, `netplugin endpoint set-limits`), in the
    /// form [`RateLimits::over`] reads; `None` in records of releases before live changes
    /// (derived from `limits` and the network's when first needed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub own_limits: Option<RateLimits>,
    /// Its network's `allow_spoofing` when it was created (the datapath needs it per port).
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_spoofing: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

pub fn pool_key(id: &str) -> String {
    format!("pools/{id}")
}
pub fn space_key(space: &str) -> String {
    format!("spaces/{space}")
}
pub fn addr_prefix(pool_id: &str) -> String {
    format!("addrs/{pool_id}/")
}
pub fn addr_key(pool_id: &str, ip: Ipv4Addr) -> String {
    format!("addrs/{pool_id}/{:08x}", u32::from(ip))
}
pub fn network_key(id: &str) -> String {
    format!("networks/{id}")
}
pub fn vlan_key(vlan: u16) -> String {
    format!("vlans/{vlan:04}")
}
pub fn endpoint_key(id: &str) -> String {
    format!("endpoints/{id}")
}
pub fn block_prefix(pool_id: &str) -> String {
    format!("blocks/{pool_id}/")
}
pub fn block_key(pool_id: &str, index: u32) -> String {
    format!("blocks/{pool_id}/{index:08x}")
}
pub fn host_key(host: &str) -> String {
    format!("hosts/{host}")
}
