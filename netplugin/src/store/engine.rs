//! What the embedded implementations share: etcd's transaction rules over any ordered map,
//! in-process leases and watches.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{Compare, Event, KeyValue, Op, Store, StoreError, StoreResult, Txn, TxnResult};

/// The view of one write transaction of an implementation.
pub trait Tx {
    fn get(&mut self, key: &str) -> StoreResult<Option<KeyValue>>;
    fn range(&mut self, prefix: &str) -> StoreResult<Vec<KeyValue>>;
    fn put(&mut self, kv: &KeyValue) -> StoreResult<()>;
    fn delete(&mut self, key: &str) -> StoreResult<()>;
    fn revision(&mut self) -> StoreResult<i64>;
    fn set_revision(&mut self, revision: i64) -> StoreResult<()>;
}

/// Evaluates and applies `txn`; returns the result and the events to publish after commit.
/// `lease_ok` says whether a lease id may be attached to a key.
pub fn apply(
    tx: &mut dyn Tx,
    txn: &Txn,
    lease_ok: &dyn Fn(i64) -> bool,
) -> StoreResult<(TxnResult, Vec<Event>)> {
    let mut holds = true;
    for c in &txn.compare {
        let ok = match c {
            Compare::Version(k, v) => tx.get(k)?.map(|kv| kv.version).unwrap_or(0) == *v,
            Compare::ModRevision(k, r) => tx.get(k)?.map(|kv| kv.mod_revision).unwrap_or(0) == *r,
            Compare::CreateRevision(k, r) => {
                tx.get(k)?.map(|kv| kv.create_revision).unwrap_or(0) == *r
            }
            Compare::Value(k, v) => tx.get(k)?.is_some_and(|kv| kv.value == *v),
        };
        if !ok {
            holds = false;
            break;
        }
    }
    let ops = if holds { &txn.success } else { &txn.failure };
    let current = tx.revision()?;
    if ops.iter().all(|op| matches!(op, Op::Get(_))) {
        // Reads alone write nothing and keep the revision, as in etcd.
        let reads = ops
            .iter()
            .map(|op| match op {
                Op::Get(key) => tx.get(key),
                _ => Ok(None),
            })
            .collect::<StoreResult<_>>()?;
        return Ok((
            TxnResult {
                succeeded: holds,
                revision: current,
                reads,
            },
            Vec::new(),
        ));
    }
    for op in ops {
        if let Op::Put { lease, .. } = op {
            if *lease != 0 && !lease_ok(*lease) {
                return Err(StoreError::LeaseNotFound(*lease));
            }
        }
    }
    let revision = current + 1;
    let mut events = Vec::new();
    let mut reads = Vec::new();
    for op in ops {
        match op {
            Op::Put { key, value, lease } => {
                let kv = match tx.get(key)? {
                    Some(old) => KeyValue {
                        key: key.clone(),
                        value: value.clone(),
                        create_revision: old.create_revision,
                        mod_revision: revision,
                        version: old.version + 1,
                        lease: *lease,
                    },
                    None => KeyValue {
                        key: key.clone(),
                        value: value.clone(),
                        create_revision: revision,
                        mod_revision: revision,
                        version: 1,
                        lease: *lease,
                    },
                };
                tx.put(&kv)?;
                events.push(Event::Put(kv));
            }
            Op::Delete(key) => {
                if tx.get(key)?.is_some() {
                    tx.delete(key)?;
                    events.push(Event::Delete {
                        key: key.clone(),
                        revision,
                    });
                }
            }
            Op::DeletePrefix(prefix) => {
                for kv in tx.range(prefix)? {
                    tx.delete(&kv.key)?;
                    events.push(Event::Delete {
                        key: kv.key,
                        revision,
                    });
                }
            }
            Op::Get(key) => reads.push(tx.get(key)?),
        }
    }
    tx.set_revision(revision)?;
    Ok((
        TxnResult {
            succeeded: holds,
            revision,
            reads,
        },
        events,
    ))
}

/// Deletes every key attached to `lease` (revoked or expired) in one transaction, so that
/// watchers see the deletions as etcd would show them.
pub fn delete_lease_keys(store: &dyn Store, lease: i64) -> StoreResult<()> {
    let keys: Vec<String> = store
        .range("")?
        .into_iter()
        .filter(|kv| kv.lease == lease)
        .map(|kv| kv.key)
        .collect();
    if !keys.is_empty() {
        store.txn(Txn {
            success: keys.into_iter().map(Op::Delete).collect(),
            ..Default::default()
        })?;
    }
    Ok(())
}

/// In-process leases: id → deadline and TTL.
#[derive(Default)]
pub struct Leases {
    inner: Mutex<LeaseState>,
}

#[derive(Default)]
struct LeaseState {
    next: i64,
    leases: BTreeMap<i64, (Instant, Duration)>,
}

impl Leases {
    pub fn grant(&self, ttl: Duration) -> i64 {
        let mut s = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        s.next += 1;
        let id = s.next;
        s.leases.insert(id, (Instant::now() + ttl, ttl));
        id
    }

    pub fn keep_alive(&self, id: i64) -> StoreResult<()> {
        let mut s = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match s.leases.get_mut(&id) {
            Some((deadline, ttl)) if *deadline > now => {
                *deadline = now + *ttl;
                Ok(())
            }
            _ => Err(StoreError::LeaseNotFound(id)),
        }
    }

    pub fn alive(&self, id: i64) -> bool {
        let s = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        s.leases
            .get(&id)
            .is_some_and(|(deadline, _)| *deadline > Instant::now())
    }

    pub fn remove(&self, id: i64) {
        let mut s = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        s.leases.remove(&id);
    }

    /// Leases past their deadline, removed from the table.
    pub fn take_expired(&self) -> BTreeSet<i64> {
        let mut s = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let expired: BTreeSet<i64> = s
            .leases
            .iter()
            .filter(|(_, (d, _))| *d <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in &expired {
            s.leases.remove(id);
        }
        expired
    }
}

/// Watchers by prefix.
#[derive(Default)]
pub struct Watchers {
    inner: Mutex<Vec<(String, mpsc::Sender<Event>)>>,
}

impl Watchers {
    pub fn add(&self, prefix: &str) -> mpsc::Receiver<Event> {
        let (tx, rx) = mpsc::channel();
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((prefix.to_string(), tx));
        rx
    }

    pub fn publish(&self, events: &[Event]) {
        if events.is_empty() {
            return;
        }
        let mut w = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        w.retain(|(prefix, tx)| {
            for e in events {
                let key = match e {
                    Event::Put(kv) => &kv.key,
                    Event::Delete { key, .. } => key,
                };
                if key.starts_with(prefix.as_str()) && tx.send(e.clone()).is_err() {
                    return false;
                }
            }
            true
        });
    }
}
