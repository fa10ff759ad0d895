//! The datapath behind the network driver: veth pairs and OVS access ports. Handlers see only
//! the [`Dataplane`] trait; [`ovs::OvsDataplane`] is the real one (ovs-ffi + netlink), and
//! `fake::FakeDataplane` (tests and the `test-support` feature) records calls.

mod error;
pub mod ethtool;
#[cfg(any(test, feature = "test-support"))]
pub mod fake;
pub mod netlink;
pub mod ovs;

pub use error::{DataplaneError, DataplaneErrors, DpResult};

use std::future::Future;
use std::pin::Pin;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Interface names: `vb`/`tb` + 10 hex of the endpoint id (docs/design.md, Names), within 15 bytes.
/// Names on the host are always derived from the endpoint id, never read from a record: a
/// record (in etcd, written by any host) must not be able to make a host touch `eth0`.
pub fn host_if_name(endpoint_id: &str) -> String {
    format!("vb{}", hex10(endpoint_id))
}

pub fn container_if_name(endpoint_id: &str) -> String {
    format!("tb{}", hex10(endpoint_id))
}

/// Whether `name` is one berth creates (`vb`/`tb` + 10 lowercase hex): the only names the
/// datapath creates, deletes or unplugs.
pub fn is_berth_if_name(name: &str) -> bool {
    let hex = name.strip_prefix("vb").or_else(|| name.strip_prefix("tb"));
    hex.is_some_and(|h| {
        h.len() == 10
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

fn hex10(id: &str) -> String {
    let hex: String = id
        .chars()
        .filter(|c| c.is_ascii_hexdigit())
        .map(|c| c.to_ascii_lowercase())
        .take(10)
        .collect();
    // Docker ids are 64 hex; anything else still gets a valid, stable name.
    if hex.len() == 10 {
        hex
    } else {
        let h = id.bytes().fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
        });
        format!("{:010x}", h & 0xff_ffff_ffff)
    }
}

/// What the datapath needs to plug one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointPlan {
    pub endpoint_id: String,
    pub network_id: String,
    /// The host that owns it: labelled `berth-host-id` on its interface.
    pub host_id: String,
    pub host_if: String,
    pub container_if: String,
    pub vlan: u16,
    pub mtu: u32,
    /// Of the container end.
    pub mac: [u8; 6],
    pub limits: crate::state::RateLimits,
    /// The container's address: with `anti_spoof`, the only source its port admits.
    pub ip: std::net::Ipv4Addr,
    /// Whether its port drops frames from any other MAC or address (network option
    /// `allow_spoofing`, off by default, turns this off).
    pub anti_spoof: bool,
}

/// One of our OVS ports as OVS shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PortView {
    pub name: String,
    pub tag: Option<u16>,
    pub endpoint_id: Option<String>,
    pub network_id: Option<String>,
    /// `berth-host-id`: the host that created it (absent on ports of older releases).
    pub host_id: Option<String>,
    /// `berth-container-id`, once learned from Docker.
    pub container_id: Option<String>,
    pub ofport: Option<i64>,
    /// Whether its host-side device exists: a port without one (its container's namespace
    /// is gone) carries nobody's traffic.
    pub has_device: bool,
}

/// What a reconcile pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReassertReport {
    pub ports_fixed: Vec<String>,
    pub ports_removed: Vec<String>,
    pub veths_removed: Vec<String>,
    /// This host's ports without an endpoint that were NOT removed because they were most of
    /// the bridge (`netplugin reconcile --prune` removes them).
    pub prune_held: Vec<String>,
    pub flows_installed: bool,
    pub bridge_created: bool,
    /// ARP proxy flows added and removed (endpoints come and go: not drift).
    pub arp_flows_added: usize,
    pub arp_flows_removed: usize,
    /// Meters and rate-limit flows added, changed or removed.
    pub rate_limit_changes: usize,
    /// Anti-spoofing flows added or removed (endpoints come and go, so not drift by itself).
    pub spoof_flow_changes: usize,
}

impl ReassertReport {
    /// Whether anything that should have been in place was not.
    pub fn repaired_drift(&self) -> bool {
        !self.ports_fixed.is_empty()
            || !self.ports_removed.is_empty()
            || !self.veths_removed.is_empty()
            || self.flows_installed
            || self.bridge_created
    }
}

/// What one endpoint's meter dropped since the meter was created.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RateLimitDrops {
    pub endpoint_id: String,
    /// `egress` (what the container sent) or `ingress` (what was sent to it).
    pub direction: &'static str,
    pub packets: u64,
    /// The meter's rate now, kbit/s (changes live with `set-limits`).
    pub rate_kbps: u32,
}

/// Packets a guarded endpoint's port dropped as spoofed (a source MAC or address not its
/// own), since its anti-spoofing flows were installed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SpoofDrops {
    pub endpoint_id: String,
    pub packets: u64,
}

/// One address the ARP proxy answers for: on `vlan`, `ip` is at `mac`. `local_port` is set for
/// this host's endpoints (their own requests are caught at that port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArpEntry {
    pub vlan: u16,
    pub ip: std::net::Ipv4Addr,
    pub mac: [u8; 6],
    pub local_port: Option<String>,
}

impl ArpEntry {
    pub fn key(&self) -> ArpKey {
        (self.vlan, self.ip)
    }
}

/// What an ARP proxy flow answers for: an address on a VLAN (two networks never share a VLAN,
/// so a key has one owner).
pub type ArpKey = (u16, std::net::Ipv4Addr);

/// One change of the ARP proxy: what `key` is answered with from now on (None: not at all).
pub type ArpChange = (ArpKey, Option<ArpEntry>);

pub trait Dataplane: Send + Sync {
    /// `Ok` when OVS is reachable and the bridge and our base flows are in place (created if
    /// needed); otherwise a clear error saying what is missing.
    fn ready(&self) -> BoxFuture<'_, DpResult<()>>;
    /// Creates the veth pair (container end: MTU, MAC, no address) and the access port.
    /// On failure nothing of it is left behind.
    fn create_endpoint<'a>(&'a self, plan: &'a EndpointPlan) -> BoxFuture<'a, DpResult<()>>;
    /// Removes the port and the veth; missing ones are fine.
    fn delete_endpoint<'a>(&'a self, host_if: &'a str) -> BoxFuture<'a, DpResult<()>>;
    /// Brings OVS to the endpoints of this host without touching what is already right:
    /// missing bridge, flows and ports are re-created. Removes nothing: which ports without
    /// an endpoint go is the caller's decision (see `Service::reconcile`), through
    /// [`Dataplane::delete_endpoint`].
    fn reassert<'a>(
        &'a self,
        endpoints: &'a [EndpointPlan],
    ) -> BoxFuture<'a, DpResult<ReassertReport>>;
    /// Records the container an endpoint serves on its OVS interface (`berth-container-id`).
    /// A port that does not exist (yet, or any more) is left alone.
    fn label_container<'a>(
        &'a self,
        plan: &'a EndpointPlan,
        container_id: &'a str,
    ) -> BoxFuture<'a, DpResult<()>>;
    /// Brings the ARP proxy flows to `entries` exactly (the fleet's endpoints on VLANs with a
    /// port on this host): ARP requests from this host's ports for a known address on their
    /// VLAN are answered by OVS itself.
    /// Returns (added, removed).
    fn sync_arp<'a>(&'a self, entries: &'a [ArpEntry]) -> BoxFuture<'a, DpResult<(usize, usize)>>;
    /// Changes only the ARP proxy flows of the keys in `changes`, against what the last
    /// `sync_arp` and `update_arp` installed (no dump: one endpoint's change is a flow mod or
    /// two whatever the size of the fleet; `sync_arp` repairs drift). `None` when there is no
    /// such baseline yet: the caller runs `sync_arp`. Returns (added, removed).
    fn update_arp<'a>(
        &'a self,
        changes: &'a [ArpChange],
    ) -> BoxFuture<'a, DpResult<Option<(usize, usize)>>>;
    /// Announces that `mac` (holding `ip`) is now behind the port `host_if`: a gratuitous ARP
    /// enters the bridge on that port and NORMAL floods it on the port's VLAN, so every
    /// learning switch on the way (this bridge, the trunk's, the other hosts' bridges) moves
    /// the MAC to its new place at once. A container moved to another host keeps its address
    /// and MAC; without this, traffic to it follows the old place until the switches' entries
    /// age out (nothing else is sent: clients' ARP is answered by their own host's proxy, and
    /// Docker's containers send no IPv6 chatter on IPv4-only networks).
    fn announce<'a>(
        &'a self,
        host_if: &'a str,
        mac: [u8; 6],
        ip: std::net::Ipv4Addr,
    ) -> BoxFuture<'a, DpResult<()>>;
    /// Fencing: makes the fence flows exactly `host_ifs` (drop everything those access ports
    /// send; ports and veths stay). An empty set lifts every fence. Returns how many ports
    /// are fenced (those with a port number).
    fn fence<'a>(
        &'a self,
        host_ifs: &'a std::collections::BTreeSet<String>,
    ) -> BoxFuture<'a, DpResult<usize>>;
    /// Our ports (by external_ids), from the OVSDB cache.
    fn ports(&self) -> Vec<PortView>;
    /// Host ends of veth pairs in this namespace named as berth names them (`vb` + 10 hex)
    /// that no OVS port or interface (of any bridge) names: what a crash between creating a
    /// veth and adding its port leaves. Fails when OVS cannot be asked (then nothing can be
    /// said about ports).
    fn portless_veths(&self) -> BoxFuture<'_, DpResult<Vec<String>>>;
    /// Packets each rate-limited endpoint's meters dropped, as of the last reconcile pass.
    fn rate_limit_drops(&self) -> Vec<RateLimitDrops> {
        Vec::new()
    }
    /// Packets each guarded endpoint's port dropped as spoofed, as of the last reconcile pass.
    fn spoof_drops(&self) -> Vec<SpoofDrops> {
        Vec::new()
    }
    /// `system` or `netdev`.
    fn datapath_type(&self) -> &str;
    /// Whether OVSDB is connected right now.
    fn connected(&self) -> bool;
}

/// A stable MAC from the IPv4 address (like Docker's bridge): 02:b7 + the four bytes.
pub fn mac_from_ip(ip: std::net::Ipv4Addr) -> [u8; 6] {
    crate::mac::Mac::from_ip(ip).octets()
}

pub fn format_mac(mac: &[u8; 6]) -> String {
    crate::mac::Mac(*mac).to_string()
}

pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    s.parse::<crate::mac::Mac>().map(|m| m.octets())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_macs() {
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        assert_eq!(host_if_name(id), "vb0123456789");
        assert_eq!(container_if_name(id), "tb0123456789");
        assert!(host_if_name("x").len() <= 15);
        assert_eq!(host_if_name("x"), host_if_name("x"));
        let mac = mac_from_ip("10.231.1.2".parse().unwrap());
        assert_eq!(format_mac(&mac), "02:b7:0a:e7:01:02");
        assert_eq!(parse_mac("02:b7:0a:e7:01:02").unwrap(), mac);
        assert!(parse_mac("01:00:5e:00:00:01").is_err());
        assert!(parse_mac("zz").is_err());
    }

    #[test]
    fn only_berth_names_pass() {
        for id in ["x", "eth0", &"e".repeat(64), "0123456789abcdef"] {
            assert!(is_berth_if_name(&host_if_name(id)), "{id}");
            assert!(is_berth_if_name(&container_if_name(id)), "{id}");
        }
        for name in [
            "eth0",
            "bond0",
            "docker0",
            "vb",
            "vb012345678",
            "vb0123456789a",
            "vbABCDEF0123",
            "xb0123456789",
            "vb01234567../",
        ] {
            assert!(!is_berth_if_name(name), "{name}");
        }
    }
}
