//! The in-memory store for unit tests: the same rules as the embedded one, nothing persisted.

use std::collections::BTreeMap;
use std::sync::{mpsc, Mutex};
use std::time::Duration;

use super::engine::{self, Leases, Tx, Watchers};
use super::{Event, KeyValue, Store, StoreResult, Txn, TxnResult};

#[derive(Default)]
pub struct MemStore {
    data: Mutex<Data>,
    leases: Leases,
    watchers: Watchers,
}

#[derive(Default)]
struct Data {
    kv: BTreeMap<String, KeyValue>,
    revision: i64,
}

impl Tx for Data {
    fn get(&mut self, key: &str) -> StoreResult<Option<KeyValue>> {
        Ok(self.kv.get(key).cloned())
    }
    fn range(&mut self, prefix: &str) -> StoreResult<Vec<KeyValue>> {
        Ok(self
            .kv
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v.clone())
            .collect())
    }
    fn put(&mut self, kv: &KeyValue) -> StoreResult<()> {
        self.kv.insert(kv.key.clone(), kv.clone());
        Ok(())
    }
    fn delete(&mut self, key: &str) -> StoreResult<()> {
        self.kv.remove(key);
        Ok(())
    }
    fn revision(&mut self) -> StoreResult<i64> {
        Ok(self.revision)
    }
    fn set_revision(&mut self, revision: i64) -> StoreResult<()> {
        self.revision = revision;
        Ok(())
    }
}

impl MemStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn expire(&self) -> StoreResult<()> {
        for lease in self.leases.take_expired() {
            engine::delete_lease_keys(self, lease)?;
        }
        Ok(())
    }
}

impl Store for MemStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn get(&self, key: &str) -> StoreResult<Option<KeyValue>> {
        self.expire()?;
        let mut d = self.data.lock().unwrap_or_else(|e| e.into_inner());
        d.get(key)
    }

    fn range(&self, prefix: &str) -> StoreResult<Vec<KeyValue>> {
        self.expire()?;
        let mut d = self.data.lock().unwrap_or_else(|e| e.into_inner());
        d.range(prefix)
    }

    fn txn(&self, txn: Txn) -> StoreResult<TxnResult> {
        let (result, events) = {
            let mut d = self.data.lock().unwrap_or_else(|e| e.into_inner());
            engine::apply(&mut *d, &txn, &|l| self.leases.alive(l))?
        };
        self.watchers.publish(&events);
        Ok(result)
    }

    fn revision(&self) -> StoreResult<i64> {
        Ok(self.data.lock().unwrap_or_else(|e| e.into_inner()).revision)
    }

    fn grant_lease(&self, ttl: Duration) -> StoreResult<i64> {
        Ok(self.leases.grant(ttl))
    }

    fn keep_alive(&self, lease: i64) -> StoreResult<()> {
        self.leases.keep_alive(lease)
    }

    fn revoke_lease(&self, lease: i64) -> StoreResult<()> {
        self.leases.remove(lease);
        engine::delete_lease_keys(self, lease)
    }

    fn watch(&self, prefix: &str) -> StoreResult<mpsc::Receiver<Event>> {
        Ok(self.watchers.add(prefix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_store_contract() {
        crate::store::contract::run(&MemStore::new());
    }
}
