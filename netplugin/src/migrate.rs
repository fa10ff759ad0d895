//! `netplugin store migrate`: copies a host's embedded state into a shared store (etcd),
//! unchanged, so the host joins a fleet without re-creating its networks. Refuses on any
//! conflict with what the target holds already, before copying anything.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::NetError;
use crate::ipam::{Ipam, IpamConfig};
use crate::ipnet::Ipv4Net;
use crate::state::{decode, PoolRecord, State};
use crate::store::{KeyValue, Store, StoreError};

/// Records per transaction: well within etcd's default limit of operations per txn.
const CHUNK: usize = 50;

/// What `store migrate` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrateReport {
    /// Records copied, per kind (the first part of the key: `pools`, `addrs`, ...).
    pub copied: BTreeMap<String, usize>,
    /// Records the target held already (a migration run before).
    pub already_there: usize,
    /// The host ids the records carry: the daemon must run with one of them.
    pub host_ids: Vec<String>,
    pub etcd_prefix: String,
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("etcd (prefix {prefix}) holds conflicting records; nothing was copied:\n  {}", conflicts.join("\n  "))]
    Conflicts {
        prefix: String,
        conflicts: Vec<String>,
    },
    #[error("another writer changed etcd during the migration; run it again (records already copied are skipped)")]
    ConcurrentWrite,
}

/// Copies every record of `source` but host leases into `target` (whose keys live under
/// `prefix`, reported back). Running it again copies nothing and reports what is there.
pub fn migrate(
    source: &dyn Store,
    target: Arc<dyn Store>,
    prefix: &str,
) -> Result<MigrateReport, MigrateError> {
    let records: Vec<KeyValue> = source
        .range("")?
        .into_iter()
        // Host records belong to a live process's lease.
        .filter(|kv| !kv.key.starts_with("hosts/"))
        .collect();
    let mut conflicts = Vec::new();
    let mut todo = Vec::new();
    let mut already = 0;
    // The same record changed since by the fleet (a pool other hosts joined, an address in
    // use) was migrated before: same object, same creation time.
    let created = |v: &[u8]| {
        serde_json::from_slice::<serde_json::Value>(v)
            .ok()
            .and_then(|j| j.get("created_at").cloned())
    };
    let migrated_pools: BTreeSet<String> = records
        .iter()
        .filter(|kv| kv.key.starts_with("pools/"))
        .filter_map(|kv| {
            let t = target.get(&kv.key).ok()??;
            (created(&t.value) == created(&kv.value)).then(|| kv.key["pools/".len()..].to_string())
        })
        .collect();
    for kv in &records {
        let pool_of_block = kv
            .key
            .strip_prefix("blocks/")
            .and_then(|r| r.split('/').next());
        if pool_of_block.is_some_and(|p| migrated_pools.contains(p)) {
            // Block records follow the addresses in etcd now.
            already += 1;
            continue;
        }
        match target.get(&kv.key)? {
            Some(t) if t.value == kv.value => already += 1,
            Some(t) if created(&t.value).is_some() && created(&t.value) == created(&kv.value) => {
                already += 1
            }
            Some(t) => conflicts.push(format!(
                "{}: etcd has {}",
                kv.key,
                String::from_utf8_lossy(&t.value)
            )),
            None => todo.push(kv),
        }
    }
    // Pools of other hosts overlapping ours are refused like any overlapping --subnet.
    let theirs: Vec<PoolRecord> = target
        .range("pools/")?
        .iter()
        .filter_map(|kv| decode(kv).ok())
        .collect();
    for kv in records.iter().filter(|kv| kv.key.starts_with("pools/")) {
        let mine: PoolRecord = decode(kv)?;
        let Ok(m) = mine.subnet.parse::<Ipv4Net>() else {
            continue;
        };
        for t in theirs
            .iter()
            .filter(|t| t.id != mine.id && t.address_space == mine.address_space)
        {
            if t.subnet.parse::<Ipv4Net>().is_ok_and(|n| n.overlaps(&m)) {
                conflicts.push(format!(
                    "pool {} {} overlaps pool {} {} in etcd",
                    mine.id, mine.subnet, t.id, t.subnet
                ));
            }
        }
    }
    if !conflicts.is_empty() {
        return Err(MigrateError::Conflicts {
            prefix: prefix.to_string(),
            conflicts,
        });
    }
    // Pools last: no other host allocates in a pool before its addresses are all there.
    todo.sort_by_key(|kv| (kv.key.starts_with("pools/"), kv.key.clone()));
    let mut copied: BTreeMap<String, usize> = BTreeMap::new();
    let state = State::new(target.clone(), "migrate");
    for chunk in todo.chunks(CHUNK) {
        if !state.import_records(chunk)? {
            return Err(MigrateError::ConcurrentWrite);
        }
        for kv in chunk {
            let kind = kv.key.split('/').next().unwrap_or("").to_string();
            *copied.entry(kind).or_default() += 1;
        }
    }
    // Pools from a release without block records get them now, before any host allocates.
    let ipam = Ipam::new(state, IpamConfig::default());
    for kv in target.range("pools/")? {
        let pool: PoolRecord = decode(&kv)?;
        if !pool.blocks {
            if let Ok(net) = pool.subnet.parse::<Ipv4Net>() {
                ipam.build_blocks(&pool, &net, kv.mod_revision)?;
            }
        }
    }
    let host_ids: BTreeSet<String> = records
        .iter()
        .filter_map(|kv| serde_json::from_slice::<serde_json::Value>(&kv.value).ok())
        .filter_map(|v| v.get("host_id")?.as_str().map(str::to_string))
        .collect();
    Ok(MigrateReport {
        copied,
        already_there: already,
        host_ids: host_ids.into_iter().collect(),
        etcd_prefix: prefix.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemStore;
    use crate::store::{Op, Txn};

    const PREFIX: &str = "/berth/v1/";

    /// A host's embedded state: one explicit pool (holding 10.233.0.50) with a gateway and
    /// two addresses, and the host's lease record.
    fn host_state(host: &str, subnet: &str) -> (Arc<MemStore>, String) {
        let store = Arc::new(MemStore::new());
        let ipam = Ipam::new(State::new(store.clone(), host), IpamConfig::default());
        let (pool, _) = ipam.request_pool("", subnet, "", false).unwrap();
        let gateway = BTreeMap::from([(
            "RequestAddressType".to_string(),
            "com.docker.network.gateway".to_string(),
        )]);
        ipam.request_address(&pool, "", &gateway).unwrap();
        ipam.request_address(&pool, "", &BTreeMap::new()).unwrap();
        ipam.request_address(&pool, "10.233.0.50", &BTreeMap::new())
            .unwrap();
        put(&*store, &format!("hosts/{host}"), b"{}");
        (store, pool)
    }

    fn put(store: &dyn Store, key: &str, value: &[u8]) {
        let done = store
            .txn(Txn {
                compare: vec![],
                success: vec![Op::put(key, value.to_vec())],
                failure: vec![],
            })
            .unwrap();
        assert!(done.succeeded);
    }

    fn keys(store: &dyn Store, prefix: &str) -> Vec<String> {
        store
            .range(prefix)
            .unwrap()
            .into_iter()
            .map(|kv| kv.key)
            .collect()
    }

    #[test]
    fn copies_everything_but_leases_once() {
        let (source, pool) = host_state("h1", "10.233.0.0/24");
        let target: Arc<dyn Store> = Arc::new(MemStore::new());
        let report = migrate(&*source, target.clone(), PREFIX).unwrap();
        assert_eq!(report.copied.get("pools"), Some(&1), "{report:?}");
        assert_eq!(report.copied.get("addrs"), Some(&3), "{report:?}");
        assert!(!report.copied.contains_key("hosts"), "{report:?}");
        assert_eq!(report.already_there, 0);
        assert_eq!(report.host_ids, vec!["h1".to_string()]);
        assert_eq!(report.etcd_prefix, PREFIX);
        assert!(keys(&*target, "hosts/").is_empty(), "leases are not copied");
        let wanted: Vec<String> = keys(&*source, "")
            .into_iter()
            .filter(|k| !k.starts_with("hosts/"))
            .collect();
        assert_eq!(keys(&*target, ""), wanted);
        assert!(keys(&*target, "pools/")[0].ends_with(&pool));

        let again = migrate(&*source, target.clone(), PREFIX).unwrap();
        assert!(again.copied.is_empty(), "{again:?}");
        assert_eq!(again.already_there, wanted.len());
        assert_eq!(keys(&*target, ""), wanted);
    }

    #[test]
    fn a_record_the_target_holds_otherwise_is_a_conflict_and_nothing_is_copied() {
        let (source, _) = host_state("h1", "10.233.0.0/24");
        let target: Arc<dyn Store> = Arc::new(MemStore::new());
        let addr = keys(&*source, "addrs/").remove(0);
        put(&*target, &addr, b"{\"other\":true}");
        let err = migrate(&*source, target.clone(), PREFIX).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with(
                "etcd (prefix /berth/v1/) holds conflicting records; nothing was copied:\n  "
            ),
            "{text}"
        );
        assert!(
            text.contains(&format!("{addr}: etcd has {{\"other\":true}}")),
            "{text}"
        );
        assert_eq!(keys(&*target, ""), vec![addr]);
    }

    #[test]
    fn an_overlapping_pool_of_another_host_is_a_conflict() {
        let (source, _) = host_state("h1", "10.233.0.0/24");
        let (other, _) = host_state("h2", "10.233.0.0/23");
        let target: Arc<dyn Store> = Arc::new(MemStore::new());
        migrate(&*other, target.clone(), PREFIX).unwrap();
        let before = keys(&*target, "");
        let err = migrate(&*source, target.clone(), PREFIX).unwrap_err();
        assert!(
            matches!(&err, MigrateError::Conflicts { conflicts, .. }
                if conflicts.iter().any(|c| c.contains("overlaps pool"))),
            "{err}"
        );
        assert_eq!(keys(&*target, ""), before);
    }
}
