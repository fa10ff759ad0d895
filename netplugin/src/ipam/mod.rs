//! IPAM logic (Docker's IpamDriver) over the state store: pools with overlap checks per
//! address space, auto pools from the configured default range (never handed out twice while
//! held), addresses allocated with create-if-absent transactions.
//!
//! - `pools`: RequestPool / ReleasePool, and block records for pools that predate them;
//! - `alloc`: RequestAddress / ReleaseAddress over the blocks (Calico's model), one
//!   compare-and-swap transaction per allocation;
//! - `pending`: transactions whose answer was lost, finished when the store answers again;
//! - `geometry`: how a pool is cut into blocks.

mod alloc;
mod geometry;
mod pending;
mod pools;
#[cfg(test)]
mod tests;

pub use geometry::Geometry;
use pending::Pending;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use crate::error::{NetError, NetResult};
use crate::ipnet::{parse_addr, Ipv4Net};
use crate::state::*;
use crate::store::{Compare, KeyValue, StoreError};

pub const LOCAL_SPACE: &str = "berth-local";
pub const GLOBAL_SPACE: &str = "berth-global";
pub const GATEWAY_TYPE_KEY: &str = "RequestAddressType";
pub const GATEWAY_TYPE: &str = "com.docker.network.gateway";
pub const MAC_OPTION: &str = "com.docker.network.endpoint.macaddress";

/// How often an allocation is retried when another writer got in between.
const CAS_ATTEMPTS: usize = 64;

/// How often one allocation claim is sent when the store's answer is lost (connection
/// dropped); each time only after reading back that it did not land.
const TRANSPORT_ATTEMPTS: usize = 3;

#[derive(Debug, Clone)]
pub struct IpamConfig {
    /// Where pools without `--subnet` come from.
    pub default_pools: Vec<Ipv4Net>,
    /// Prefix length of those pools.
    pub default_prefix: u8,
}

impl Default for IpamConfig {
    fn default() -> Self {
        Self {
            default_pools: vec!["10.224.0.0/12".parse().expect("valid")],
            default_prefix: 24,
        }
    }
}

pub struct Ipam {
    state: State,
    config: IpamConfig,
    /// Per pool: the block records this host has seen (revisions included), so an
    /// allocation from an own block is one compare-and-swap transaction.
    caches: Mutex<HashMap<String, Arc<Mutex<PoolCache>>>>,
    /// Transactions whose answer was lost, to finish when the store answers again.
    pending: Mutex<Vec<Pending>>,
    /// Allocation transactions that lost a race with another writer and were retried.
    lost_races: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct PoolCache {
    /// The pool record, its subnet and create revision.
    pool: Option<(PoolRecord, Ipv4Net, i64)>,
    /// Other hosts claim blocks of this pool at the same time: claim from this host's own
    /// starting point instead of the lowest free block.
    contended: bool,
    /// The own block allocated from last (looked at first).
    hint: Option<u32>,
    /// This host has no free block of its own and none is unclaimed: it borrows. The view of
    /// other hosts' blocks was reloaded when borrowing began (a stale view near a full pool
    /// would send it through block after block that filled since, one failed CAS each).
    borrowing: bool,
    loaded: bool,
    pool_crev: i64,
    /// Block index → record and its mod_revision.
    blocks: BTreeMap<u32, (BlockRecord, i64)>,
}

pub(super) fn contention(what: &str) -> NetError {
    NetError::Store(StoreError::Contention {
        what: what.to_string(),
        attempts: CAS_ATTEMPTS,
    })
}

/// Who holds a pool, for error messages.
pub fn describe_pool(p: &PoolRecord) -> String {
    match &p.network_id {
        Some(n) => format!("{} of network {}", p.subnet, short(n)),
        None => format!("{} (pool {}, no network yet)", p.subnet, p.id),
    }
}

impl Ipam {
    pub fn new(state: State, config: IpamConfig) -> Self {
        Self {
            state,
            config,
            caches: Mutex::default(),
            pending: Mutex::default(),
            lost_races: Default::default(),
        }
    }

    /// The store this IPAM writes through (its named transactions).
    pub fn state(&self) -> &State {
        &self.state
    }
}

pub fn describe_holder(a: &AddrRecord) -> String {
    match (&a.kind, &a.endpoint_id) {
        (AddrKind::Gateway, _) => "the network's gateway".to_string(),
        (AddrKind::Reserved, _) => format!("reserved by an admin on host {}", a.host_id),
        (_, Some(ep)) => format!("endpoint {} on host {}", short(ep), a.host_id),
        (_, None) => format!(
            "host {} (an aux address, or an endpoint being created)",
            a.host_id
        ),
    }
}

pub fn require_id(field: &str, value: &str) -> NetResult<()> {
    plugin_transport::input::check_id(field, value).map_err(NetError::invalid)
}
