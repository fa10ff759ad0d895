//! Transactions whose answer was lost (etcd unreachable mid-call): what may have landed is
//! undone, what may not have is retried, once the store answers again.

use super::*;

pub(super) enum Pending {
    /// An allocation that may have landed after we answered Docker with an error.
    Undo {
        pool_id: String,
        key: String,
        claim: String,
        since: std::time::Instant,
    },
    /// A release that may not have landed (Docker does not retry releases).
    Release(String, KeyValue),
}

impl Ipam {
    /// Allocation transactions lost to another writer (each was retried).
    pub fn lost_races(&self) -> u64 {
        self.lost_races.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Entries left for [`Ipam::finish_pending`].
    pub fn pending_count(&self) -> usize {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub(super) fn defer(&self, p: Pending) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(p);
    }

    /// Work left by transactions whose outcome was unknown; the host agent calls this while
    /// the store answers. Returns how many entries are still pending.
    pub fn finish_pending(&self) -> usize {
        let todo: Vec<Pending> =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        let mut left = Vec::new();
        for p in todo {
            let done = match &p {
                Pending::Undo {
                    pool_id,
                    key,
                    claim,
                    since,
                } => {
                    if since.elapsed() < std::time::Duration::from_secs(5) {
                        false
                    } else {
                        match self.state.store.get(key) {
                            Ok(Some(kv)) => match decode::<AddrRecord>(&kv) {
                                Ok(r) if r.claim == *claim => {
                                    self.release_held(pool_id, &kv).is_ok()
                                }
                                _ => true,
                            },
                            Ok(None) => true,
                            Err(_) => false,
                        }
                    }
                }
                Pending::Release(pool_id, kv) => self.release_held(pool_id, kv).is_ok(),
            };
            if !done {
                left.push(p);
            }
        }
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.extend(left);
        pending.len()
    }
}
