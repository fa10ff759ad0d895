//! Typed records over the [`Store`] and their key layout (the same keys go under
//! `--etcd-prefix` in etcd):
//!
//! ```text
//! spaces/<address-space>        guard bumped by every pool create/release (overlap checks)
//! pools/<pool-id>               PoolRecord
//! addrs/<pool-id>/<ip-hex>      AddrRecord (one per held address)
//! blocks/<pool-id>/<index-hex>  BlockRecord: which addresses of a block are held, and the
//!                               host with affinity to it (kept in step with addrs/)
//! hosts/<host-id>               HostRecord, put with the host's lease (there while it lives)
//! networks/<network-id>         NetworkRecord
//! vlans/<nnnn>                  network id holding the VLAN
//! endpoints/<endpoint-id>       EndpointRecord
//! ```

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use plugin_transport::blocking::{run_blocking, BlockingError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{NetError, NetResult};
use crate::ipnet::{Ipv4If, Ipv4Net};
use crate::mac::Mac;
use crate::store::{Compare, KeyValue, Op, Store, StoreError, StoreResult, Txn, TxnResult};

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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRecord {
    pub id: String,
    pub network_id: String,
    pub host_id: String,
    pub address: Ipv4If,
    pub mac: Mac,
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

/// The store plus this host's identity, with typed reads.
#[derive(Clone)]
pub struct State {
    pub store: Arc<dyn Store>,
    pub host_id: String,
    /// This host's current lease (0 until the host agent has one).
    lease: Arc<AtomicI64>,
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("records always serialize")
}

pub fn decode<T: DeserializeOwned>(kv: &KeyValue) -> StoreResult<T> {
    serde_json::from_slice(&kv.value).map_err(|e| StoreError::Corrupt {
        key: kv.key.clone(),
        message: e.to_string(),
    })
}

impl State {
    pub fn new(store: Arc<dyn Store>, host_id: impl Into<String>) -> Self {
        Self {
            store,
            host_id: host_id.into(),
            lease: Arc::new(AtomicI64::new(0)),
        }
    }

    pub fn lease(&self) -> i64 {
        self.lease.load(Ordering::Relaxed)
    }

    pub fn set_lease(&self, lease: i64) {
        self.lease.store(lease, Ordering::Relaxed);
    }

    /// The record and its mod_revision.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> StoreResult<Option<(T, i64)>> {
        match self.store.get(key)? {
            Some(kv) => Ok(Some((decode(&kv)?, kv.mod_revision))),
            None => Ok(None),
        }
    }

    pub fn list<T: DeserializeOwned>(&self, prefix: &str) -> StoreResult<Vec<T>> {
        self.store.range(prefix)?.iter().map(decode).collect()
    }

    pub fn network(&self, id: &str) -> StoreResult<Option<NetworkRecord>> {
        Ok(self.get(&network_key(id))?.map(|(n, _)| n))
    }

    pub fn networks(&self) -> StoreResult<Vec<NetworkRecord>> {
        self.list("networks/")
    }

    pub fn endpoint(&self, id: &str) -> StoreResult<Option<EndpointRecord>> {
        Ok(self.get(&endpoint_key(id))?.map(|(e, _)| e))
    }

    pub fn endpoints(&self) -> StoreResult<Vec<EndpointRecord>> {
        self.list("endpoints/")
    }

    pub fn pools(&self) -> StoreResult<Vec<PoolRecord>> {
        self.list("pools/")
    }

    pub fn pool(&self, id: &str) -> StoreResult<Option<PoolRecord>> {
        Ok(self.get(&pool_key(id))?.map(|(p, _)| p))
    }

    pub fn addresses(&self, pool_id: &str) -> StoreResult<Vec<AddrRecord>> {
        self.list(&addr_prefix(pool_id))
    }

    // ---- writes: every change to networks, endpoints and host records goes through these
    // named transactions, so each has one definition. ----

    /// Writes a new network record, claiming its VLAN (or, joining another host's network of
    /// the same subnet, checking that network still holds it) and linking a free pool to it.
    /// `pool` is the pool record and the mod_revision it was read at. `false`: the store
    /// changed meanwhile (the caller re-reads and tries again).
    pub fn create_network_txn(
        &self,
        record: &NetworkRecord,
        joining: Option<&str>,
        pool: Option<(PoolRecord, i64)>,
    ) -> StoreResult<bool> {
        let (id, vlan) = (record.id.as_str(), record.vlan);
        let mut compare = vec![Compare::Version(network_key(id), 0)];
        let mut success = vec![Op::put(network_key(id), encode(record))];
        match joining {
            // Joining: the VLAN stays with the network that holds it.
            Some(holder) => {
                compare.push(Compare::Value(vlan_key(vlan), holder.as_bytes().to_vec()))
            }
            None => {
                compare.push(Compare::Version(vlan_key(vlan), 0));
                success.push(Op::put(vlan_key(vlan), id.as_bytes().to_vec()));
            }
        }
        if let Some((mut p, rev)) = pool {
            compare.push(Compare::ModRevision(pool_key(&p.id), rev));
            p.network_id = Some(id.to_string());
            success.push(Op::put(pool_key(&p.id), encode(&p)));
        }
        Ok(self
            .store
            .txn(Txn {
                compare,
                success,
                failure: vec![],
            })?
            .succeeded)
    }

    /// Deletes a network record. The same network created by other hosts (same VLAN) inherits
    /// its VLAN and pool; otherwise the VLAN is freed.
    pub fn delete_network(&self, net: &NetworkRecord) -> StoreResult<()> {
        let mut ops = vec![Op::Delete(network_key(&net.id))];
        let heir = self
            .networks()?
            .into_iter()
            .find(|n| n.id != net.id && n.vlan == net.vlan)
            .map(|n| n.id);
        if let Some(kv) = self.store.get(&vlan_key(net.vlan))? {
            if kv.value == net.id.as_bytes() {
                ops.push(match &heir {
                    Some(h) => Op::put(vlan_key(net.vlan), h.as_bytes().to_vec()),
                    None => Op::Delete(vlan_key(net.vlan)),
                });
            }
        }
        if let Some(pool_id) = &net.pool_id {
            if let Some((mut pool, _)) = self.get::<PoolRecord>(&pool_key(pool_id))? {
                if pool.network_id.as_deref() == Some(net.id.as_str()) {
                    pool.network_id = heir.clone();
                    ops.push(Op::put(pool_key(pool_id), encode(&pool)));
                }
            }
        }
        self.store.txn(Txn {
            success: ops,
            ..Default::default()
        })?;
        Ok(())
    }

    /// Writes a new endpoint record and links the address it holds in `net`'s pool to it
    /// (and its MAC, unless the address has one). An existing record is left alone.
    pub fn create_endpoint_txn(
        &self,
        net: &NetworkRecord,
        rec: &EndpointRecord,
    ) -> StoreResult<()> {
        let ip = rec.address.ip;
        let mut ops = vec![Op::put(endpoint_key(&rec.id), encode(rec))];
        if let Some(pool_id) = &net.pool_id {
            if let Some((mut a, _)) = self.get::<AddrRecord>(&addr_key(pool_id, ip))? {
                a.endpoint_id = Some(rec.id.clone());
                if a.mac.is_none() {
                    a.mac = Some(rec.mac.to_string());
                }
                ops.push(Op::put(addr_key(pool_id, ip), encode(&a)));
            }
        }
        self.store.txn(Txn {
            compare: vec![Compare::Version(endpoint_key(&rec.id), 0)],
            success: ops,
            failure: vec![],
        })?;
        Ok(())
    }

    /// Deletes an endpoint's record; a missing one is fine (every delete is idempotent).
    pub fn delete_endpoint(&self, id: &str) -> StoreResult<()> {
        self.store.txn(Txn {
            success: vec![Op::Delete(endpoint_key(id))],
            ..Default::default()
        })?;
        Ok(())
    }

    /// Deletes an endpoint's record unless it changed since it was read at `mod_revision`
    /// (reclaiming a dead host's endpoints races with nothing but a returning host).
    pub fn delete_endpoint_at(&self, id: &str, mod_revision: i64) -> StoreResult<bool> {
        Ok(self
            .store
            .txn(Txn {
                compare: vec![Compare::ModRevision(endpoint_key(id), mod_revision)],
                success: vec![Op::Delete(endpoint_key(id))],
                failure: vec![],
            })?
            .succeeded)
    }

    /// Puts this host's record under `lease`, so it vanishes when the lease expires.
    pub fn register_host(&self, record: &HostRecord, lease: i64) -> StoreResult<()> {
        self.store.txn(Txn {
            success: vec![Op::Put {
                key: host_key(&record.host_id),
                value: encode(record),
                lease,
            }],
            ..Default::default()
        })?;
        Ok(())
    }

    /// Creates a pool unless the address space changed since its guard was read at
    /// `space_guard` (every pool create and release bumps it: overlap checks stay valid).
    pub fn create_pool_txn(&self, record: &PoolRecord, space_guard: i64) -> StoreResult<bool> {
        let space = &record.address_space;
        Ok(self
            .store
            .txn(Txn {
                compare: vec![Compare::ModRevision(space_key(space), space_guard)],
                success: vec![
                    Op::put(space_key(space), b"{}".to_vec()),
                    Op::put(pool_key(&record.id), encode(record)),
                ],
                failure: vec![],
            })?
            .succeeded)
    }

    /// Rewrites a pool record (its users, network, blocks flag) unless it changed since it
    /// was read at `mod_revision`.
    pub fn update_pool(&self, record: &PoolRecord, mod_revision: i64) -> StoreResult<bool> {
        Ok(self
            .store
            .txn(Txn {
                compare: vec![Compare::ModRevision(pool_key(&record.id), mod_revision)],
                success: vec![Op::put(pool_key(&record.id), encode(record))],
                failure: vec![],
            })?
            .succeeded)
    }

    /// Deletes a pool with every address and block record in it, unless it changed since
    /// it was read at `mod_revision`; bumps its address space's guard.
    pub fn delete_pool(&self, pool: &PoolRecord, mod_revision: i64) -> StoreResult<bool> {
        Ok(self
            .store
            .txn(Txn {
                compare: vec![Compare::ModRevision(pool_key(&pool.id), mod_revision)],
                success: vec![
                    Op::put(space_key(&pool.address_space), b"{}".to_vec()),
                    Op::Delete(pool_key(&pool.id)),
                    Op::DeletePrefix(addr_prefix(&pool.id)),
                    Op::DeletePrefix(block_prefix(&pool.id)),
                ],
                failure: vec![],
            })?
            .succeeded)
    }

    /// Replaces a pool's block records with `blocks`, in transactions of at most 100 writes
    /// (etcd's limit is 128 operations per transaction).
    pub fn replace_blocks(
        &self,
        pool_id: &str,
        blocks: &std::collections::BTreeMap<u32, BlockRecord>,
    ) -> StoreResult<()> {
        let ops: Vec<Op> = blocks
            .iter()
            .map(|(idx, b)| Op::put(block_key(pool_id, *idx), encode(b)))
            .collect();
        let mut clear = vec![Op::DeletePrefix(block_prefix(pool_id))];
        for chunk in ops.chunks(100) {
            clear.extend_from_slice(chunk);
            self.store.txn(Txn {
                success: std::mem::take(&mut clear),
                ..Default::default()
            })?;
        }
        if !clear.is_empty() {
            self.store.txn(Txn {
                success: clear,
                ..Default::default()
            })?;
        }
        Ok(())
    }

    /// Rewrites one block record (stored under `key`) unless it changed since it was read at
    /// `mod_revision`.
    pub fn update_block(
        &self,
        key: &str,
        block: &BlockRecord,
        mod_revision: i64,
    ) -> StoreResult<bool> {
        Ok(self
            .store
            .txn(Txn {
                compare: vec![Compare::ModRevision(key.to_string(), mod_revision)],
                success: vec![Op::put(key, encode(block))],
                failure: vec![],
            })?
            .succeeded)
    }

    /// The one transaction of an allocation: the address record (at `key`) and its block's
    /// bitmap (at `bkey`, guarded by `block_guard`) together, while the pool is the one created
    /// at `pool_crev`. A lost race reads the pool and the block back in the same round trip
    /// (`reads`: pool, block).
    #[allow(clippy::too_many_arguments)]
    pub fn claim_address(
        &self,
        pool_id: &str,
        pool_crev: i64,
        key: &str,
        record: &AddrRecord,
        bkey: &str,
        block: &BlockRecord,
        block_guard: Compare,
    ) -> StoreResult<TxnResult> {
        self.store.txn(Txn {
            compare: vec![
                Compare::Version(key.to_string(), 0),
                block_guard,
                Compare::CreateRevision(pool_key(pool_id), pool_crev),
            ],
            success: vec![Op::put(key, encode(record)), Op::put(bkey, encode(block))],
            failure: vec![Op::Get(pool_key(pool_id)), Op::Get(bkey.to_string())],
        })
    }

    /// Deletes the address record `held` (as read) and, when given, writes its block (key,
    /// record with the bit cleared, revision it was read at); both only if unchanged.
    pub fn release_address_txn(
        &self,
        held: &KeyValue,
        block: Option<(String, &BlockRecord, i64)>,
    ) -> StoreResult<TxnResult> {
        let mut compare = vec![Compare::ModRevision(held.key.clone(), held.mod_revision)];
        let mut success = vec![Op::Delete(held.key.clone())];
        if let Some((bkey, b, rev)) = block {
            compare.push(Compare::ModRevision(bkey.clone(), rev));
            success.push(Op::put(bkey, encode(b)));
        }
        self.store.txn(Txn {
            compare,
            success,
            failure: vec![],
        })
    }
}

/// Bound on one store operation (the embedded store answers in ms; etcd may hang).
pub const STORE_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs a store operation on a blocking thread, bounded by [`STORE_TIMEOUT`].
pub async fn store_op<T, F>(what: &str, f: F) -> NetResult<T>
where
    T: Send + 'static,
    F: FnOnce() -> NetResult<T> + Send + 'static,
{
    match run_blocking(Some(STORE_TIMEOUT), f).await {
        Ok(r) => r,
        Err(e @ BlockingError::Worker(_)) => {
            Err(NetError::Store(StoreError::Backend(format!("{what}: {e}"))))
        }
        Err(BlockingError::TimedOut { after }) => Err(NetError::Timeout {
            what: format!("state store ({what})"),
            secs: after.as_secs(),
        }),
    }
}

/// Short form of a Docker ID, as `docker network ls` shows it.
pub fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// A random hex id (from the kernel's generator).
pub fn random_id(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    let filled = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut buf));
    if filled.is_err() {
        // Fallback: time and pid; ids only need to be unique, not secret.
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
            ^ u128::from(std::process::id());
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (seed >> ((i % 16) * 8)) as u8;
        }
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &[u8]) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: value.to_vec(),
            create_revision: 1,
            mod_revision: 1,
            version: 1,
            lease: 0,
        }
    }

    fn round_trip<T: Serialize + DeserializeOwned>(json: &str) -> T {
        let kv = kv("k", json.as_bytes());
        let record: T = decode(&kv).unwrap();
        assert_eq!(String::from_utf8(encode(&record)).unwrap(), json);
        record
    }

    /// Typed fields store the same text as the strings they replaced: no data migration.
    #[test]
    fn records_keep_their_stored_bytes() {
        let e: EndpointRecord = round_trip(
            r#"{"id":"e1","network_id":"n1","host_id":"h1","address":"10.20.0.5/24","mac":"02:b7:0a:14:00:05","host_if":"vbe1","container_if":"tbe1","vlan":100,"mtu":1500,"created_at":1700000000,"lease":7587,"limits":{"egress_kbps":1000}}"#,
        );
        assert_eq!(e.address.ip, Ipv4Addr::new(10, 20, 0, 5));
        assert_eq!(e.mac, Mac::from_ip(e.address.ip));
        round_trip::<EndpointRecord>(
            r#"{"id":"e2","network_id":"n1","host_id":"h1","address":"10.20.0.6/24","mac":"02:42:0a:14:00:06","host_if":"vbe2","container_if":"tbe2","vlan":100,"mtu":9000,"created_at":1}"#,
        );
        let n: NetworkRecord = round_trip(
            r#"{"id":"n1","vlan":100,"vlan_auto":false,"mtu":1500,"subnet":"10.20.0.0/24","gateway":"10.20.0.1","pool_id":"p1","host_id":"h1","created_at":1700000000}"#,
        );
        assert_eq!(n.subnet, Some("10.20.0.0/24".parse().unwrap()));
        round_trip::<NetworkRecord>(
            r#"{"id":"n2","vlan":7,"vlan_auto":true,"mtu":1500,"subnet":null,"gateway":null,"pool_id":null,"host_id":"h1","created_at":2,"limits":{"egress_kbps":20000,"ingress_kbps":5000,"burst_kbits":800}}"#,
        );
    }

    /// A bad value names the record (its key) and what the field should hold.
    #[test]
    fn bad_fields_name_record_and_field() {
        let kv = kv(
            "endpoints/e1",
            br#"{"id":"e1","network_id":"n1","host_id":"h1","address":"10.20.0.5/24","mac":"zz","host_if":"vbe1","container_if":"tbe1","vlan":100,"mtu":1500,"created_at":1}"#,
        );
        let e = decode::<EndpointRecord>(&kv).unwrap_err().to_string();
        assert!(
            e.contains("endpoints/e1") && e.contains("MAC address"),
            "{e}"
        );
    }

    #[test]
    fn bad_pool_subnet_names_record_and_field() {
        let pool: PoolRecord = round_trip(
            r#"{"id":"p1","address_space":"berth-local","subnet":"10.20.0.1/24","sub_pool":null,"auto":false,"network_id":null,"host_id":"h1","created_at":1,"blocks":true}"#,
        );
        let e = pool.network().unwrap_err().to_string();
        assert!(e.contains("pools/p1") && e.contains("bad subnet"), "{e}");
    }
}
