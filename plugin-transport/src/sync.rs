//! Locks that survive a panic, and per-object locks with bounded waits.
//!
//! A daemon serves each request on its own thread; a panic in one request must not turn every
//! later request on the same volume or table into another panic (std's poisoned `Mutex`). What
//! the locks guard is either nothing (`Mutex<()>` serializing work whose state lives in the
//! store, crash-safe by its intent records) or caches that are rebuilt, so taking the lock
//! after a panic is what a restart would do anyway.
//!
//! [`KeyedLocks`] serializes the operations on one object (a volume, an endpoint) while other
//! objects' operations run: one slow call (an XFS log replay, an OVSDB server that stopped
//! answering) stalls only its own object, and a caller waiting for it gets a [`Busy`] error
//! naming what runs, after a bound, instead of waiting forever.

use std::collections::HashMap;
use std::pin::pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Locks `mutex`, recovering it if a panicking thread poisoned it.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An object's lock was not free within the caller's bound.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key} is busy: {holder} has been running on it for {:.1} s (waited {:.1} s); try again later", .held_for.as_secs_f64(), .waited.as_secs_f64())]
pub struct Busy {
    /// The object, as the caller named it (e.g. `volume db1`, `endpoint 3f2a…`).
    pub key: String,
    /// The operation that holds it.
    pub holder: &'static str,
    pub held_for: Duration,
    pub waited: Duration,
}

/// One lock per key, taken by sync or async callers with a bound on the wait. A key's entry
/// exists only while it is held, so the table holds what is running, never every object seen.
#[derive(Default)]
pub struct KeyedLocks {
    held: Mutex<HashMap<String, Holder>>,
    /// Wakes sync waiters when any key is released (they re-check their own).
    released: Condvar,
}

struct Holder {
    operation: &'static str,
    since: Instant,
    /// Wakes async waiters of this key.
    released: Arc<Notify>,
}

/// Holds a key of [`KeyedLocks`] until dropped.
#[must_use = "the key is released when the guard is dropped"]
pub struct KeyGuard<'a> {
    locks: &'a KeyedLocks,
    key: String,
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        let holder = lock(&self.locks.held).remove(&self.key);
        self.locks.released.notify_all();
        if let Some(h) = holder {
            h.released.notify_waiters();
        }
    }
}

impl KeyedLocks {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes `key` for `operation` if it is free, else `Err` at once (no wait).
    pub fn try_lock(&self, key: &str, operation: &'static str) -> Result<KeyGuard<'_>, Busy> {
        let mut held = lock(&self.held);
        self.take(&mut held, key, operation, Instant::now())
    }

    /// Takes `key`, waiting at most `within` (blocking the thread).
    pub fn lock_blocking(
        &self,
        key: &str,
        operation: &'static str,
        within: Duration,
    ) -> Result<KeyGuard<'_>, Busy> {
        let started = Instant::now();
        let mut held = lock(&self.held);
        loop {
            match self.take(&mut held, key, operation, started) {
                Ok(guard) => return Ok(guard),
                Err(busy) => {
                    let Some(left) = within
                        .checked_sub(started.elapsed())
                        .filter(|d| !d.is_zero())
                    else {
                        return Err(busy);
                    };
                    held = self
                        .released
                        .wait_timeout(held, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            }
        }
    }

    /// Takes `key`, waiting at most `within` without blocking the thread.
    pub async fn lock(
        &self,
        key: &str,
        operation: &'static str,
        within: Duration,
    ) -> Result<KeyGuard<'_>, Busy> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::from_std(started + within);
        loop {
            let released = {
                let mut held = lock(&self.held);
                match self.take(&mut held, key, operation, started) {
                    Ok(guard) => return Ok(guard),
                    Err(busy) => match held.get(key) {
                        Some(h) if tokio::time::Instant::now() < deadline => h.released.clone(),
                        _ => return Err(busy),
                    },
                }
            };
            let mut notified = pin!(released.notified());
            // Registered before the holder is looked at again: a release in between is not
            // lost (notify_waiters wakes only registered waiters).
            notified.as_mut().enable();
            if !lock(&self.held).contains_key(key) {
                continue;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let mut held = lock(&self.held);
                return self.take(&mut held, key, operation, started);
            }
        }
    }

    /// What is held now: (key, operation, for how long), for logs and diagnostics.
    pub fn held(&self) -> Vec<(String, &'static str, Duration)> {
        lock(&self.held)
            .iter()
            .map(|(k, h)| (k.clone(), h.operation, h.since.elapsed()))
            .collect()
    }

    fn take(
        &self,
        held: &mut HashMap<String, Holder>,
        key: &str,
        operation: &'static str,
        started: Instant,
    ) -> Result<KeyGuard<'_>, Busy> {
        if let Some(h) = held.get(key) {
            return Err(Busy {
                key: key.to_string(),
                holder: h.operation,
                held_for: h.since.elapsed(),
                waited: started.elapsed(),
            });
        }
        held.insert(
            key.to_string(),
            Holder {
                operation,
                since: Instant::now(),
                released: Arc::new(Notify::new()),
            },
        );
        Ok(KeyGuard {
            locks: self,
            key: key.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHORT: Duration = Duration::from_millis(100);

    #[test]
    fn keys_are_independent_and_released_on_drop() {
        let locks = KeyedLocks::new();
        let a = locks.try_lock("a", "create").unwrap();
        let _b = locks.try_lock("b", "mount").unwrap();
        let busy = locks.try_lock("a", "remove").err().unwrap();
        assert_eq!(busy.holder, "create");
        assert!(
            busy.to_string()
                .starts_with("a is busy: create has been running"),
            "{busy}"
        );
        drop(a);
        assert!(locks.try_lock("a", "remove").is_ok());
        assert_eq!(
            locks.held().len(),
            1,
            "only b is held; a's entry went with its guard"
        );
    }

    #[test]
    fn a_blocking_wait_is_bounded_and_ends_at_release() {
        let locks = Arc::new(KeyedLocks::new());
        let guard = locks.try_lock("v", "mount").unwrap();
        let t = Instant::now();
        let busy = locks.lock_blocking("v", "unmount", SHORT).err().unwrap();
        assert!(
            t.elapsed() >= SHORT && t.elapsed() < SHORT * 10,
            "{:?}",
            t.elapsed()
        );
        assert_eq!((busy.holder, busy.key.as_str()), ("mount", "v"));
        assert!(busy.waited >= SHORT);
        let waiter = {
            let locks = locks.clone();
            std::thread::spawn(move || {
                locks
                    .lock_blocking("v", "unmount", Duration::from_secs(10))
                    .map(drop)
            })
        };
        std::thread::sleep(SHORT);
        drop(guard);
        waiter.join().unwrap().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_async_wait_is_bounded_and_ends_at_release() {
        let locks = Arc::new(KeyedLocks::new());
        let guard = locks.try_lock("e", "create endpoint").unwrap();
        let t = Instant::now();
        let busy = locks
            .lock("e", "delete endpoint", SHORT)
            .await
            .err()
            .unwrap();
        assert!(
            t.elapsed() >= SHORT && t.elapsed() < SHORT * 10,
            "{:?}",
            t.elapsed()
        );
        assert_eq!(busy.holder, "create endpoint");
        // Other keys are free meanwhile.
        drop(locks.lock("f", "create endpoint", SHORT).await.unwrap());
        let waiter = {
            let locks = locks.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                let g = locks
                    .lock("e", "delete endpoint", Duration::from_secs(10))
                    .await;
                (g.is_ok(), t.elapsed())
            })
        };
        tokio::time::sleep(SHORT).await;
        drop(guard);
        let (ok, waited) = waiter.await.unwrap();
        assert!(ok && waited < Duration::from_secs(5), "{waited:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_waiters_take_a_key_one_at_a_time() {
        let locks = Arc::new(KeyedLocks::new());
        let inside = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (locks, inside) = (locks.clone(), inside.clone());
            tasks.push(tokio::spawn(async move {
                let _g = locks
                    .lock("k", "op", Duration::from_secs(20))
                    .await
                    .unwrap();
                assert_eq!(inside.fetch_add(1, std::sync::atomic::Ordering::SeqCst), 0);
                tokio::time::sleep(Duration::from_millis(5)).await;
                inside.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert!(locks.held().is_empty());
    }

    #[test]
    fn a_poisoned_lock_is_taken_again() {
        let m = std::sync::Arc::new(Mutex::new(1));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _g = m2.lock().unwrap();
            panic!("a request panicked while holding the lock");
        })
        .join();
        assert!(m.is_poisoned());
        *lock(&m) += 1;
        assert_eq!(*lock(&m), 2);
    }
}
