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
//! identities/<host-id>          token binding the host id to one state dir (crate::identity)
//! ```
//!
//! [`State`] is the store plus this host's identity: typed reads here, and the named
//! transactions in `txn.rs`, the only writes; `records.rs`: what is stored.

mod records;
#[cfg(test)]
mod tests;
mod txn;

pub use records::*;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use plugin_transport::blocking::{run_blocking, run_blocking_or_undo, BlockingError};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{NetError, NetResult};
use crate::store::{KeyValue, Store, StoreError, StoreResult};

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

    /// A conflict error if `host` is registered (its lease key exists): a reclaim of it
    /// that lost a transaction stops there (issue 14 §2).
    pub fn check_host_gone(&self, host: &str) -> crate::error::NetResult<()> {
        if let Some(kv) = self.store.get(&host_key(host))? {
            return Err(crate::error::NetError::conflict(format!(
                "host {host} registered again (lease {:x}) while it was being reclaimed: it keeps what it still holds",
                kv.lease
            )));
        }
        Ok(())
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

    /// Changes of endpoint records (any host's) from now on.
    pub fn watch_endpoints(&self) -> StoreResult<std::sync::mpsc::Receiver<crate::store::Event>> {
        self.store.watch("endpoints/")
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

/// [`store_op`] for a request whose work must not outlive Docker's answer: when it ends after
/// `deadline` (Docker saw a timeout and will not come back for it) and succeeded, `undo`
/// gets its result on a blocking thread (issue 14 §2: a timed-out RequestAddress or
/// CreateEndpoint that lands later is undone).
pub async fn store_op_or_undo<T, F, U>(
    what: &str,
    deadline: Duration,
    f: F,
    undo: U,
) -> NetResult<T>
where
    T: Send + 'static,
    F: FnOnce() -> NetResult<T> + Send + 'static,
    U: FnOnce(T) + Send + 'static,
{
    let late = move |r: NetResult<T>| {
        if let Ok(v) = r {
            undo(v)
        }
    };
    match run_blocking_or_undo(deadline, f, late).await {
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

/// Short form of a Docker ID, as `docker network ls` shows it (by characters, never bytes).
pub use plugin_transport::input::short_id as short;

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
