//! The embedded store (the default): redb under `--state-dir`, every transaction durable
//! (fsync) before it returns. Leases and watches are in-process; keys put with a lease are
//! kept across restarts (the embedded store serves one host, which is the lease holder).

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::engine::{self, Leases, Tx, Watchers};
use super::{Event, KeyValue, Store, StoreError, StoreResult, Txn, TxnResult};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const META: TableDefinition<&str, i64> = TableDefinition::new("meta");

pub struct RedbStore {
    db: Database,
    leases: Leases,
    watchers: Watchers,
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Stored {
    v: String,
    c: i64,
    m: i64,
    n: i64,
    #[serde(default)]
    l: i64,
}

fn encode(kv: &KeyValue) -> Vec<u8> {
    // Values are JSON text; keep them readable in the file.
    let stored = Stored {
        v: String::from_utf8_lossy(&kv.value).into_owned(),
        c: kv.create_revision,
        m: kv.mod_revision,
        n: kv.version,
        l: kv.lease,
    };
    serde_json::to_vec(&stored).unwrap_or_default()
}

fn decode(key: &str, raw: &[u8]) -> StoreResult<KeyValue> {
    let s: Stored = serde_json::from_slice(raw).map_err(|e| StoreError::Corrupt {
        key: key.to_string(),
        message: e.to_string(),
    })?;
    Ok(KeyValue {
        key: key.to_string(),
        value: s.v.into_bytes(),
        create_revision: s.c,
        mod_revision: s.m,
        version: s.n,
        lease: s.l,
    })
}

impl RedbStore {
    pub fn open(path: &Path) -> StoreResult<Self> {
        let db = Database::create(path).map_err(|e| {
            StoreError::Backend(format!(
                "{}: {e} (is another netplugin using this --state-dir?)",
                path.display()
            ))
        })?;
        Self::init(db)
    }

    pub fn in_memory() -> StoreResult<Self> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(err)?;
        Self::init(db)
    }

    fn init(db: Database) -> StoreResult<Self> {
        let txn = db.begin_write().map_err(err)?;
        txn.open_table(KV).map_err(err)?;
        txn.open_table(META).map_err(err)?;
        txn.commit().map_err(err)?;
        Ok(Self {
            db,
            leases: Leases::default(),
            watchers: Watchers::default(),
        })
    }

    fn expire(&self) -> StoreResult<()> {
        for lease in self.leases.take_expired() {
            engine::delete_lease_keys(self, lease)?;
        }
        Ok(())
    }
}

struct WriteTx<'a> {
    kv: redb::Table<'a, &'static str, &'static [u8]>,
    meta: redb::Table<'a, &'static str, i64>,
}

impl Tx for WriteTx<'_> {
    fn get(&mut self, key: &str) -> StoreResult<Option<KeyValue>> {
        match self.kv.get(key).map_err(err)? {
            Some(raw) => decode(key, raw.value()).map(Some),
            None => Ok(None),
        }
    }
    fn range(&mut self, prefix: &str) -> StoreResult<Vec<KeyValue>> {
        let mut out = Vec::new();
        for entry in self.kv.range(prefix..).map_err(err)? {
            let (k, v) = entry.map_err(err)?;
            if !k.value().starts_with(prefix) {
                break;
            }
            out.push(decode(k.value(), v.value())?);
        }
        Ok(out)
    }
    fn put(&mut self, kv: &KeyValue) -> StoreResult<()> {
        self.kv
            .insert(kv.key.as_str(), encode(kv).as_slice())
            .map_err(err)?;
        Ok(())
    }
    fn delete(&mut self, key: &str) -> StoreResult<()> {
        self.kv.remove(key).map_err(err)?;
        Ok(())
    }
    fn revision(&mut self) -> StoreResult<i64> {
        Ok(self
            .meta
            .get("revision")
            .map_err(err)?
            .map(|v| v.value())
            .unwrap_or(0))
    }
    fn set_revision(&mut self, revision: i64) -> StoreResult<()> {
        self.meta.insert("revision", revision).map_err(err)?;
        Ok(())
    }
}

impl Store for RedbStore {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    fn get(&self, key: &str) -> StoreResult<Option<KeyValue>> {
        self.expire()?;
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(KV).map_err(err)?;
        match table.get(key).map_err(err)? {
            Some(raw) => decode(key, raw.value()).map(Some),
            None => Ok(None),
        }
    }

    fn range(&self, prefix: &str) -> StoreResult<Vec<KeyValue>> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(KV).map_err(err)?;
        let mut out = Vec::new();
        for entry in table.range(prefix..).map_err(err)? {
            let (k, v) = entry.map_err(err)?;
            if !k.value().starts_with(prefix) {
                break;
            }
            out.push(decode(k.value(), v.value())?);
        }
        Ok(out)
    }

    fn txn(&self, txn: Txn) -> StoreResult<TxnResult> {
        let wtx = self.db.begin_write().map_err(err)?;
        let (result, events) = {
            let mut tx = WriteTx {
                kv: wtx.open_table(KV).map_err(err)?,
                meta: wtx.open_table(META).map_err(err)?,
            };
            engine::apply(&mut tx, &txn, &|l| self.leases.alive(l))?
        };
        if events.is_empty() {
            wtx.abort().map_err(err)?;
        } else {
            wtx.commit().map_err(err)?;
        }
        self.watchers.publish(&events);
        Ok(result)
    }

    fn revision(&self) -> StoreResult<i64> {
        let txn = self.db.begin_read().map_err(err)?;
        let meta = txn.open_table(META).map_err(err)?;
        Ok(meta
            .get("revision")
            .map_err(err)?
            .map(|v| v.value())
            .unwrap_or(0))
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
    use crate::store::{Compare, Op};

    #[test]
    fn redb_store_contract() {
        crate::store::contract::run(&RedbStore::in_memory().unwrap());
    }

    #[test]
    fn survives_reopen_with_revisions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let rev = {
            let s = RedbStore::open(&path).unwrap();
            s.txn(Txn {
                compare: vec![Compare::Version("k".into(), 0)],
                success: vec![Op::put("k", "v")],
                failure: vec![],
            })
            .unwrap()
            .revision
        };
        let s = RedbStore::open(&path).unwrap();
        assert_eq!(s.revision().unwrap(), rev);
        let kv = s.get("k").unwrap().unwrap();
        assert_eq!((kv.value.as_slice(), kv.mod_revision), (&b"v"[..], rev));
    }
}
