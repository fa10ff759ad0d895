//! Persisted volume metadata in redb. Every state change of a multi-step operation is one
//! durable transaction, so a restart knows exactly how far each operation got.

use std::collections::BTreeMap;
use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::error::VolError;
use crate::limits::IoLimits;
use crate::spec::VolumeSpec;

const VOLUMES: TableDefinition<&str, &str> = TableDefinition::new("volumes");

/// Where a volume is in its life; the two transitional states are resolved at startup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Recorded before any storage is made; a crash here is rolled back.
    Creating,
    Ready,
    /// Recorded before storage is destroyed; a crash here is finished at startup.
    Removing,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub name: String,
    pub spec: VolumeSpec,
    pub phase: Phase,
    /// RFC 3339.
    pub created_at: String,
    /// Docker mount ID → how many Mounts with that ID are outstanding.
    #[serde(default)]
    pub mounts: BTreeMap<String, u32>,
    #[serde(default)]
    pub limits: IoLimits,
    /// The volume this one was cloned from (`-o from=`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// A resize in progress, recorded before the storage changes: a crash leaves it for the
    /// start-up reconcile, which finishes it (growing is idempotent). `spec.size_bytes` stays
    /// the old size until the storage and filesystem are at the new one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resize: Option<ResizeIntent>,
}

/// A volume growing from one size to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResizeIntent {
    pub from_bytes: u64,
    pub to_bytes: u64,
}

impl VolumeRecord {
    pub fn mount_count(&self) -> u32 {
        self.mounts.values().sum()
    }
}

/// The metadata database.
pub struct MetaStore {
    db: Database,
}

fn store_err(e: impl Into<redb::Error>) -> VolError {
    VolError::Store(e.into().to_string())
}

impl MetaStore {
    pub fn open(path: &Path) -> Result<Self, VolError> {
        let db = Database::create(path)
            .map_err(|e| VolError::Store(format!("{}: {e}", path.display())))?;
        Self::init(db)
    }

    /// An in-memory database, for unit tests.
    pub fn in_memory() -> Result<Self, VolError> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(store_err)?;
        Self::init(db)
    }

    fn init(db: Database) -> Result<Self, VolError> {
        let txn = db.begin_write().map_err(store_err)?;
        txn.open_table(VOLUMES).map_err(store_err)?;
        txn.commit().map_err(store_err)?;
        Ok(Self { db })
    }

    pub fn get(&self, name: &str) -> Result<Option<VolumeRecord>, VolError> {
        let txn = self.db.begin_read().map_err(store_err)?;
        let table = txn.open_table(VOLUMES).map_err(store_err)?;
        match table.get(name).map_err(store_err)? {
            Some(raw) => decode(name, raw.value()).map(Some),
            None => Ok(None),
        }
    }

    pub fn list(&self) -> Result<Vec<VolumeRecord>, VolError> {
        let txn = self.db.begin_read().map_err(store_err)?;
        let table = txn.open_table(VOLUMES).map_err(store_err)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(store_err)? {
            let (key, value) = entry.map_err(store_err)?;
            out.push(decode(key.value(), value.value())?);
        }
        Ok(out)
    }

    /// Writes the record durably (fsync before returning).
    pub fn put(&self, record: &VolumeRecord) -> Result<(), VolError> {
        let json = serde_json::to_string(record).map_err(|e| VolError::Store(e.to_string()))?;
        let txn = self.db.begin_write().map_err(store_err)?;
        {
            let mut table = txn.open_table(VOLUMES).map_err(store_err)?;
            table
                .insert(record.name.as_str(), json.as_str())
                .map_err(store_err)?;
        }
        txn.commit().map_err(store_err)
    }

    pub fn delete(&self, name: &str) -> Result<(), VolError> {
        let txn = self.db.begin_write().map_err(store_err)?;
        {
            let mut table = txn.open_table(VOLUMES).map_err(store_err)?;
            table.remove(name).map_err(store_err)?;
        }
        txn.commit().map_err(store_err)
    }
}

fn decode(name: &str, raw: &str) -> Result<VolumeRecord, VolError> {
    serde_json::from_str(raw)
        .map_err(|e| VolError::Store(format!("record of volume {name} is unreadable: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Filesystem;

    #[test]
    fn round_trip_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        let record = VolumeRecord {
            name: "v1".into(),
            spec: VolumeSpec {
                size_bytes: 1 << 30,
                fs: Filesystem::Xfs,
            },
            phase: Phase::Ready,
            created_at: "2026-11-22T00:00:00Z".into(),
            mounts: BTreeMap::from([("abc".to_string(), 2)]),
            limits: IoLimits::default(),
            from: None,
            resize: Some(ResizeIntent {
                from_bytes: 1 << 30,
                to_bytes: 2 << 30,
            }),
        };
        {
            let store = MetaStore::open(&path).unwrap();
            store.put(&record).unwrap();
            assert_eq!(store.get("v1").unwrap().unwrap().mount_count(), 2);
        }
        let store = MetaStore::open(&path).unwrap();
        assert_eq!(store.list().unwrap(), vec![record]);
        store.delete("v1").unwrap();
        store.delete("v1").unwrap();
        assert!(store.get("v1").unwrap().is_none());
    }

    #[test]
    fn records_written_before_resize_existed_still_read() {
        let old = r#"{"name":"v","spec":{"size_bytes":1073741824,"fs":"xfs"},"phase":"ready","created_at":"2026-11-22T00:00:00Z"}"#;
        let record = decode("v", old).unwrap();
        assert_eq!(record.resize, None);
        assert!(!serde_json::to_string(&record).unwrap().contains("resize"));
    }
}
