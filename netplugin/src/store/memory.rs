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
            self.delete_lease_keys(lease)?;
        }
        Ok(())
    }

    fn delete_lease_keys(&self, lease: i64) -> StoreResult<()> {
        let keys: Vec<String> = {
            let d = self.data.lock().unwrap_or_else(|e| e.into_inner());
            d.kv.values()
                .filter(|kv| kv.lease == lease)
                .map(|kv| kv.key.clone())
                .collect()
        };
        if !keys.is_empty() {
            self.txn(Txn {
                success: keys.into_iter().map(super::Op::Delete).collect(),
                ..Default::default()
            })?;
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
        self.delete_lease_keys(lease)
    }

    fn watch(&self, prefix: &str) -> StoreResult<mpsc::Receiver<Event>> {
        Ok(self.watchers.add(prefix))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store::{Compare, Op};

    /// The contract every implementation must meet; the redb tests run it too.
    pub fn contract(s: &dyn Store) {
        let w = s.watch("a/").unwrap();
        let r = s
            .txn(Txn {
                compare: vec![Compare::Version("a/1".into(), 0)],
                success: vec![Op::put("a/1", "one")],
                failure: vec![],
            })
            .unwrap();
        assert!(r.succeeded);
        let kv = s.get("a/1").unwrap().unwrap();
        assert_eq!((kv.version, kv.create_revision), (1, r.revision));
        // Create-if-absent fails the second time and runs the failure branch.
        let r2 = s
            .txn(Txn {
                compare: vec![Compare::Version("a/1".into(), 0)],
                success: vec![Op::put("a/1", "clobbered")],
                failure: vec![Op::put("b/x", "lost")],
            })
            .unwrap();
        assert!(!r2.succeeded);
        assert_eq!(s.get("a/1").unwrap().unwrap().value, b"one");
        assert!(s.get("b/x").unwrap().is_some());
        // CAS on mod_revision.
        let stale = kv.mod_revision;
        assert!(
            s.txn(Txn {
                compare: vec![Compare::ModRevision("a/1".into(), stale)],
                success: vec![Op::put("a/1", "two"), Op::put("a/2", "x")],
                failure: vec![],
            })
            .unwrap()
            .succeeded
        );
        assert!(
            !s.txn(Txn {
                compare: vec![Compare::ModRevision("a/1".into(), stale)],
                success: vec![Op::put("a/1", "three")],
                failure: vec![],
            })
            .unwrap()
            .succeeded
        );
        assert!(
            s.txn(Txn {
                compare: vec![Compare::Value("a/1".into(), b"two".to_vec())],
                success: vec![],
                failure: vec![],
            })
            .unwrap()
            .succeeded
        );
        let kv = s.get("a/1").unwrap().unwrap();
        assert_eq!((kv.version, kv.value.as_slice()), (2, &b"two"[..]));
        assert_eq!(s.range("a/").unwrap().len(), 2);
        assert_eq!(s.range("a/2").unwrap().len(), 1);
        // Leases.
        let lease = s.grant_lease(Duration::from_secs(60)).unwrap();
        s.txn(Txn {
            success: vec![Op::Put {
                key: "a/leased".into(),
                value: b"l".to_vec(),
                lease,
            }],
            ..Default::default()
        })
        .unwrap();
        s.keep_alive(lease).unwrap();
        s.revoke_lease(lease).unwrap();
        assert!(s.get("a/leased").unwrap().is_none());
        assert!(s.keep_alive(lease).is_err());
        assert!(s
            .txn(Txn {
                success: vec![Op::Put {
                    key: "a/l2".into(),
                    value: vec![],
                    lease
                }],
                ..Default::default()
            })
            .is_err());
        let short = s.grant_lease(Duration::from_millis(1)).unwrap();
        s.txn(Txn {
            success: vec![Op::Put {
                key: "a/short".into(),
                value: vec![],
                lease: short,
            }],
            ..Default::default()
        })
        .unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert!(s.get("a/short").unwrap().is_none(), "expired lease");
        // Delete by prefix; deletes of absent keys are no-ops.
        s.txn(Txn {
            success: vec![Op::DeletePrefix("a/".into()), Op::Delete("nope".into())],
            ..Default::default()
        })
        .unwrap();
        assert!(s.range("a/").unwrap().is_empty());
        // The watch saw every change under a/ and nothing else, in order.
        let events: Vec<Event> = w.try_iter().collect();
        let keys: Vec<String> = events
            .iter()
            .map(|e| match e {
                Event::Put(kv) => format!("put {}", kv.key),
                Event::Delete { key, .. } => format!("del {key}"),
            })
            .collect();
        assert_eq!(keys[0], "put a/1");
        assert!(keys.contains(&"del a/leased".to_string()), "{keys:?}");
        assert!(keys.contains(&"del a/short".to_string()), "{keys:?}");
        assert_eq!(keys.last().unwrap(), "del a/2");
        assert!(!keys.iter().any(|k| k.contains("b/")));
    }

    #[test]
    fn memory_store_contract() {
        contract(&MemStore::new());
    }
}
