//! A store that counts range reads by prefix: tests of what a background task reads.
#![allow(clippy::unwrap_used, reason = "test support")]

use std::collections::BTreeMap;
use std::sync::{mpsc, Mutex};
use std::time::Duration;

use super::memory::MemStore;
use super::{Event, KeyValue, Store, StoreResult, Txn, TxnResult};

#[derive(Default)]
pub struct Counting {
    pub inner: MemStore,
    ranges: Mutex<BTreeMap<String, usize>>,
}

impl Counting {
    pub fn new() -> Self {
        Self::default()
    }

    /// Range reads so far of prefixes starting with `prefix` ("" = all).
    pub fn ranges(&self, prefix: &str) -> usize {
        self.ranges
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p.starts_with(prefix))
            .map(|(_, n)| n)
            .sum()
    }
}

impl Store for Counting {
    fn kind(&self) -> &'static str {
        "counting"
    }
    fn get(&self, key: &str) -> StoreResult<Option<KeyValue>> {
        self.inner.get(key)
    }
    fn range(&self, prefix: &str) -> StoreResult<Vec<KeyValue>> {
        *self
            .ranges
            .lock()
            .unwrap()
            .entry(prefix.to_string())
            .or_default() += 1;
        self.inner.range(prefix)
    }
    fn txn(&self, txn: Txn) -> StoreResult<TxnResult> {
        self.inner.txn(txn)
    }
    fn revision(&self) -> StoreResult<i64> {
        self.inner.revision()
    }
    fn grant_lease(&self, ttl: Duration) -> StoreResult<i64> {
        self.inner.grant_lease(ttl)
    }
    fn keep_alive(&self, lease: i64) -> StoreResult<()> {
        self.inner.keep_alive(lease)
    }
    fn revoke_lease(&self, lease: i64) -> StoreResult<()> {
        self.inner.revoke_lease(lease)
    }
    fn watch(&self, prefix: &str) -> StoreResult<mpsc::Receiver<Event>> {
        self.inner.watch(prefix)
    }
}
