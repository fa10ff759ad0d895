//! A store whose transactions can be made to fail on the "transport", for tests of what the
//! library does when a write's outcome is unknown (etcd's connection dropped mid-call).
#![allow(clippy::unwrap_used, reason = "test support")]

use std::sync::{mpsc, Mutex};
use std::time::Duration;

use super::memory::MemStore;
use super::{Event, KeyValue, Store, StoreError, StoreResult, Txn, TxnResult};

/// What happens to one transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Applied, answer returned.
    None,
    /// Lost before it reached the store: not applied, transport error.
    DropRequest,
    /// Applied, then the answer lost: transport error.
    DropAnswer,
    /// Applied, answer lost, sent again by a lower layer, which returns the second answer
    /// (what a client that retries writes after a dropped connection does).
    Resend,
}

type Hook = Box<dyn FnMut(&MemStore, &Txn) -> Fault + Send>;

#[derive(Default)]
pub struct Faulty {
    pub inner: MemStore,
    hook: Mutex<Option<Hook>>,
}

impl Faulty {
    pub fn new() -> Self {
        Self::default()
    }

    /// Called before every transaction (it may also write to the inner store, as another
    /// host would meanwhile); its answer says what happens to the transaction.
    pub fn on_txn(&self, hook: impl FnMut(&MemStore, &Txn) -> Fault + Send + 'static) {
        *self.hook.lock().unwrap() = Some(Box::new(hook));
    }
}

fn dropped() -> StoreError {
    StoreError::Backend("etcd txn: transport error: connection reset by peer".into())
}

impl Store for Faulty {
    fn kind(&self) -> &'static str {
        "faulty"
    }
    fn get(&self, key: &str) -> StoreResult<Option<KeyValue>> {
        self.inner.get(key)
    }
    fn range(&self, prefix: &str) -> StoreResult<Vec<KeyValue>> {
        self.inner.range(prefix)
    }
    fn txn(&self, txn: Txn) -> StoreResult<TxnResult> {
        let fault = match self.hook.lock().unwrap().as_mut() {
            Some(h) => h(&self.inner, &txn),
            None => Fault::None,
        };
        match fault {
            Fault::None => self.inner.txn(txn),
            Fault::DropRequest => Err(dropped()),
            Fault::DropAnswer => {
                self.inner.txn(txn)?;
                Err(dropped())
            }
            Fault::Resend => {
                self.inner.txn(txn.clone())?;
                self.inner.txn(txn)
            }
        }
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
