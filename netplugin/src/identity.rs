//! This host's identity, bound to its state dir and to the store at first start.
//!
//! Every record and every OVS interface of a host carries its host id, and a host prunes only
//! interfaces carrying its own id that the store does not list. A host that came up under
//! another id (renamed host, `--host-id` typo) or on another store (a different
//! `--etcd-prefix`, a lost `state.redb`) would see none of its endpoints and, before this,
//! cut every container off at the first reconcile pass. So the id is written to
//! `<state-dir>/host-identity.json` with a random token, and the token to the store under
//! `identities/<host-id>`; a start where either no longer matches is refused, naming both
//! sides. `netplugin host set-id ID` (offline) is the admin step that accepts a change.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::state::{now, random_id};
use crate::store::{Compare, Op, Store, StoreError, Txn};

/// The identity file, in the state dir.
pub const IDENTITY_FILE: &str = "host-identity.json";

/// The store key binding a host id to one state dir (migrated with the rest by `store migrate`).
pub fn identity_key(host_id: &str) -> String {
    format!("identities/{host_id}")
}

pub fn identity_file(state_dir: &Path) -> PathBuf {
    state_dir.join(IDENTITY_FILE)
}

/// What `host-identity.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityRecord {
    pub host_id: String,
    /// Also stored under [`identity_key`]: the store this state dir was bound to.
    pub token: String,
    /// The store when it was bound (for the error message only: `store migrate` moves the
    /// token with the records, so the token is what is compared).
    pub store: String,
    /// False until the token is known to be in the store (a crash in between re-binds).
    pub bound: bool,
    /// Set by `netplugin host set-id`: the next start takes the id over in the store, whatever
    /// token is there.
    #[serde(default)]
    pub adopt: bool,
    pub created_at: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "host identity changed: {file} says this host is {recorded:?}, but netplugin was started as {configured:?} \
         (--host-id, or the hostname when it is not given). Refusing to start: under a new id the endpoints recorded \
         for {recorded:?} are not this host's any more. Start with --host-id {recorded}, or, if the change is intended, \
         run `netplugin host set-id {configured}` first"
    )]
    Changed {
        file: PathBuf,
        recorded: String,
        configured: String,
    },
    #[error(
        "the store ({store}) does not know host {host_id:?}, which {file} bound to store {bound_store} at its first start: \
         this is an empty or different store (another --etcd-prefix or --etcd-endpoints, a lost or replaced state.redb). \
         Refusing to start: this host's endpoints would all look gone. Fix the store flags, or, if the new store is \
         intended, run `netplugin host set-id {host_id}` first"
    )]
    NotInStore {
        file: PathBuf,
        host_id: String,
        store: String,
        bound_store: String,
    },
    #[error(
        "host id {host_id:?} is already in use in the store ({store}) by another state dir (not {file}): another \
         host runs with this id, or this host's state dir was lost. Refusing to start: two hosts with one id remove \
         each other's ports. Give this host its own --host-id, or, if it really is {host_id:?} (state dir lost), run \
         `netplugin host set-id {host_id}` first"
    )]
    Taken {
        file: PathBuf,
        host_id: String,
        store: String,
    },
    #[error("host identity file {file}: {message}")]
    File { file: PathBuf, message: String },
    #[error("host identity: {0}")]
    Store(#[from] StoreError),
}

fn file_err(file: &Path, e: impl std::fmt::Display) -> IdentityError {
    IdentityError::File {
        file: file.to_path_buf(),
        message: e.to_string(),
    }
}

pub fn read(state_dir: &Path) -> Result<Option<IdentityRecord>, IdentityError> {
    let file = identity_file(state_dir);
    match std::fs::read(&file) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            file_err(
                &file,
                format!("unreadable ({e}); it is written by netplugin, do not edit it"),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(file_err(&file, e)),
    }
}

/// Written next to it and renamed over it: never half a file.
pub fn write(state_dir: &Path, record: &IdentityRecord) -> Result<(), IdentityError> {
    use std::io::Write;
    let file = identity_file(state_dir);
    let tmp = state_dir.join(format!(".{IDENTITY_FILE}.tmp"));
    let body = serde_json::to_vec_pretty(record).map_err(|e| file_err(&file, e))?;
    let written = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(&body).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, &file));
    written.map_err(|e| file_err(&file, e))
}

/// Checks (and at first start, records) that `host_id` on `store` is this state dir's
/// identity. `store_desc` names the store in messages (`embedded <path>`, `etcd <prefix>`).
pub fn establish(
    state_dir: &Path,
    host_id: &str,
    store: &dyn Store,
    store_desc: &str,
) -> Result<IdentityRecord, IdentityError> {
    let file = identity_file(state_dir);
    let key = identity_key(host_id);
    let mut record = match read(state_dir)? {
        Some(r) => r,
        None => {
            // First start: the token goes to the file before the store, so a crash in between
            // leaves `bound: false`, which the next start completes.
            let r = IdentityRecord {
                host_id: host_id.to_string(),
                token: random_id(16),
                store: store_desc.to_string(),
                bound: false,
                adopt: false,
                created_at: now(),
            };
            if store.get(&key)?.is_some() {
                return Err(IdentityError::Taken {
                    file,
                    host_id: host_id.into(),
                    store: store_desc.into(),
                });
            }
            write(state_dir, &r)?;
            r
        }
    };
    if record.host_id != host_id {
        return Err(IdentityError::Changed {
            file,
            recorded: record.host_id,
            configured: host_id.into(),
        });
    }
    let held = store.get(&key)?.map(|kv| kv.value);
    if record.adopt {
        store.txn(Txn {
            compare: vec![],
            success: vec![Op::put(key, record.token.clone())],
            failure: vec![],
        })?;
    } else {
        match held {
            Some(v) if v == record.token.as_bytes() => {}
            Some(_) => {
                return Err(IdentityError::Taken {
                    file,
                    host_id: host_id.into(),
                    store: store_desc.into(),
                })
            }
            None if record.bound => {
                return Err(IdentityError::NotInStore {
                    file,
                    host_id: host_id.into(),
                    store: store_desc.into(),
                    bound_store: record.store,
                })
            }
            None => {
                let created = store.txn(Txn {
                    compare: vec![Compare::Version(key.clone(), 0)],
                    success: vec![Op::put(key, record.token.clone())],
                    failure: vec![],
                })?;
                if !created.succeeded {
                    return Err(IdentityError::Taken {
                        file,
                        host_id: host_id.into(),
                        store: store_desc.into(),
                    });
                }
            }
        }
    }
    if !record.bound || record.adopt || record.store != store_desc {
        record.bound = true;
        record.adopt = false;
        record.store = store_desc.to_string();
        write(state_dir, &record)?;
    }
    Ok(record)
}

/// `netplugin host set-id ID` (daemon stopped): this state dir becomes host `host_id`'s,
/// and the next start takes that id over in whatever store it is given.
pub fn set_id(state_dir: &Path, host_id: &str) -> Result<Option<IdentityRecord>, IdentityError> {
    let before = read(state_dir)?;
    write(
        state_dir,
        &IdentityRecord {
            host_id: host_id.to_string(),
            token: random_id(16),
            store: before.as_ref().map(|r| r.store.clone()).unwrap_or_default(),
            bound: false,
            adopt: true,
            created_at: now(),
        },
    )?;
    Ok(before)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemStore;

    fn dir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn first_start_binds_then_same_start_passes() {
        let d = dir();
        let store = MemStore::new();
        let r = establish(d.path(), "h1", &store, "embedded").unwrap();
        assert!(r.bound);
        assert_eq!(
            store.get(&identity_key("h1")).unwrap().unwrap().value,
            r.token.as_bytes()
        );
        assert_eq!(establish(d.path(), "h1", &store, "embedded").unwrap(), r);
    }

    #[test]
    fn renamed_host_is_refused_naming_both_ids_and_the_file() {
        let d = dir();
        let store = MemStore::new();
        establish(d.path(), "db-1", &store, "embedded").unwrap();
        let e = establish(d.path(), "db-1-renamed", &store, "embedded")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"db-1\"") && e.contains("\"db-1-renamed\""),
            "{e}"
        );
        assert!(e.contains(IDENTITY_FILE), "{e}");
        assert!(e.contains("netplugin host set-id db-1-renamed"), "{e}");
    }

    #[test]
    fn empty_or_other_store_is_refused() {
        let d = dir();
        establish(d.path(), "h1", &MemStore::new(), "etcd /berth/v1/").unwrap();
        let e = establish(d.path(), "h1", &MemStore::new(), "etcd /berth/v2/").unwrap_err();
        assert!(matches!(e, IdentityError::NotInStore { .. }), "{e}");
        let e = e.to_string();
        assert!(e.contains("/berth/v1/") && e.contains("/berth/v2/"), "{e}");
    }

    #[test]
    fn a_second_host_with_the_same_id_is_refused() {
        let store = MemStore::new();
        let (a, b) = (dir(), dir());
        establish(a.path(), "h1", &store, "etcd").unwrap();
        let e = establish(b.path(), "h1", &store, "etcd").unwrap_err();
        assert!(matches!(e, IdentityError::Taken { .. }), "{e}");
        // And the first keeps working.
        establish(a.path(), "h1", &store, "etcd").unwrap();
    }

    #[test]
    fn set_id_is_the_admin_step_for_each_change() {
        let store = MemStore::new();
        let d = dir();
        establish(d.path(), "old", &store, "etcd").unwrap();
        // Rename.
        set_id(d.path(), "new").unwrap();
        let r = establish(d.path(), "new", &store, "etcd").unwrap();
        assert!(r.bound && !r.adopt);
        establish(d.path(), "new", &store, "etcd").unwrap();
        // A new store on purpose.
        let fresh = MemStore::new();
        assert!(establish(d.path(), "new", &fresh, "etcd2").is_err());
        set_id(d.path(), "new").unwrap();
        establish(d.path(), "new", &fresh, "etcd2").unwrap();
        // A lost state dir, same id: the new one takes the id over; the old token is void.
        let lost = dir();
        assert!(establish(lost.path(), "new", &fresh, "etcd2").is_err());
        set_id(lost.path(), "new").unwrap();
        establish(lost.path(), "new", &fresh, "etcd2").unwrap();
        assert!(matches!(
            establish(d.path(), "new", &fresh, "etcd2").unwrap_err(),
            IdentityError::Taken { .. }
        ));
    }

    #[test]
    fn a_crash_between_file_and_store_is_completed_at_the_next_start() {
        let store = MemStore::new();
        let d = dir();
        let r = IdentityRecord {
            host_id: "h1".into(),
            token: "t".into(),
            store: "etcd".into(),
            bound: false,
            adopt: false,
            created_at: 0,
        };
        write(d.path(), &r).unwrap();
        assert!(establish(d.path(), "h1", &store, "etcd").unwrap().bound);
        assert_eq!(store.get(&identity_key("h1")).unwrap().unwrap().value, b"t");
    }
}
