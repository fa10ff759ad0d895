//! The state store: a key-value store with etcd's semantics, so that the etcd implementation
//! (its own issue) is a thin mapping and handlers never change.
//!
//! - Every key carries `create_revision`, `mod_revision` and `version`, from one store-wide
//!   revision counter that every committed write bumps.
//! - [`Store::txn`] is etcd's `Txn`: if every [`Compare`] holds, the `success` ops run, else the
//!   `failure` ops; all atomically. Create-if-absent is `Compare::Version(key, 0)`,
//!   compare-and-swap is `Compare::ModRevision(key, seen)`.
//! - Leases: keys put with a lease vanish when it is revoked or expires (a host's leases keep
//!   its live records; the embedded store is single-host, where leases matter little).
//! - Watches: every change under a prefix, in revision order.
//!
//! Implementations: [`memory::MemStore`] (unit tests), [`redb::RedbStore`] (the embedded,
//! durable default) and [`etcd::EtcdStore`] (`--store etcd`, the fleet). All three pass
//! `contract::run` (feature `test-support`). Typed records live in [`crate::state`].

/// The behaviour every `Store` must have; run on each implementation by its tests.
#[cfg(any(test, feature = "test-support"))]
pub mod contract;
#[cfg(test)]
pub mod counting;
pub mod engine;
pub mod etcd;
#[cfg(test)]
pub mod faulty;
pub mod memory;
pub mod redb;

use std::sync::mpsc;
use std::time::Duration;

/// One stored key with its revisions.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    /// Number of writes since creation (1 after the first put).
    pub version: i64,
    /// 0 = none.
    pub lease: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// Version of the key; 0 means "does not exist".
    Version(String, i64),
    ModRevision(String, i64),
    /// Revision of the key's creation; 0 means "does not exist". Stays while the key lives,
    /// whatever its updates: "this record is still the one I read".
    CreateRevision(String, i64),
    /// The value equals (absent keys never match).
    Value(String, Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put {
        key: String,
        value: Vec<u8>,
        /// 0 = none.
        lease: i64,
    },
    Delete(String),
    DeletePrefix(String),
    /// Reads the key (after the branch's earlier writes) into [`TxnResult::reads`]: a lost
    /// compare-and-swap learns the current records in the same round trip.
    Get(String),
}

impl Op {
    pub fn put(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Op {
        Op::Put {
            key: key.into(),
            value: value.into(),
            lease: 0,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    pub compare: Vec<Compare>,
    pub success: Vec<Op>,
    pub failure: Vec<Op>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnResult {
    /// Whether the comparisons held (and `success` ran).
    pub succeeded: bool,
    /// The store revision after the transaction.
    pub revision: i64,
    /// One entry per [`Op::Get`] of the branch that ran, in order.
    pub reads: Vec<Option<KeyValue>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Put(KeyValue),
    /// The key and the revision of its deletion.
    Delete {
        key: String,
        revision: i64,
    },
}

/// The keys under a prefix as of one revision, and the changes after it: what a consumer keeps
/// an in-memory copy with (list once, then follow the watch).
#[derive(Debug)]
pub struct Listing {
    pub kvs: Vec<KeyValue>,
    /// The store revision the keys are as of.
    pub revision: i64,
    /// Every change after `revision`, in order; it may also carry changes at or before it
    /// (already in `kvs`), which the consumer drops. The channel ends when the watch cannot
    /// go on without a gap (etcd compacted the revisions it needed): list again then.
    pub events: mpsc::Receiver<Event>,
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum StoreError {
    #[error("state store: {0}")]
    Backend(String),
    #[error("state store: lease {0} not found (expired or revoked)")]
    LeaseNotFound(i64),
    #[error("state store: record {key} is unreadable: {message}")]
    Corrupt { key: String, message: String },
    /// A record that decodes but one of whose fields does not hold what it must.
    #[error("state store: record {key} has a bad {field}: {message}")]
    BadField {
        key: String,
        field: &'static str,
        message: String,
    },
    #[error("state store: {what} still conflicting after {attempts} attempts; try again")]
    Contention { what: String, attempts: usize },
    #[error(
        "state store: the {0} store is not available in this release yet (use --store embedded)"
    )]
    Unavailable(&'static str),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// The state store. Calls are synchronous and short; async callers run them on blocking
/// threads with a time bound (the etcd implementation runs each call on its own runtime and
/// bounds it itself).
pub trait Store: Send + Sync {
    /// Which implementation (for logs and `netplugin` admin output).
    fn kind(&self) -> &'static str;
    fn get(&self, key: &str) -> StoreResult<Option<KeyValue>>;
    /// Every key starting with `prefix`, in key order.
    fn range(&self, prefix: &str) -> StoreResult<Vec<KeyValue>>;
    /// How many keys start with `prefix` (etcd answers with the count alone, so metrics of a
    /// full /16 do not move 65k records).
    fn count(&self, prefix: &str) -> StoreResult<u64> {
        Ok(self.range(prefix)?.len() as u64)
    }
    fn txn(&self, txn: Txn) -> StoreResult<TxnResult>;
    fn revision(&self) -> StoreResult<i64>;
    fn grant_lease(&self, ttl: Duration) -> StoreResult<i64>;
    fn keep_alive(&self, lease: i64) -> StoreResult<()>;
    /// Revokes the lease and deletes its keys; unknown leases are fine.
    fn revoke_lease(&self, lease: i64) -> StoreResult<()>;
    /// Changes under `prefix` after the current revision, until the receiver is dropped.
    fn watch(&self, prefix: &str) -> StoreResult<mpsc::Receiver<Event>>;
    /// The keys under `prefix` and a watch of what changes after them, with nothing missed in
    /// between. The embedded stores watch first and read second (their watches start "now"),
    /// so an event may repeat what the read saw: [`Listing`] says how that is handled.
    fn list_and_watch(&self, prefix: &str) -> StoreResult<Listing> {
        let events = self.watch(prefix)?;
        let revision = self.revision()?;
        let kvs = self.range(prefix)?;
        Ok(Listing {
            kvs,
            revision,
            events,
        })
    }
}
