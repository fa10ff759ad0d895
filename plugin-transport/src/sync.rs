//! Locks that survive a panic. A daemon serves each request on its own thread; a panic in one
//! request must not turn every later request on the same volume or table into another panic
//! (std's poisoned `Mutex`). What the locks guard is either nothing (`Mutex<()>` serializing
//! work whose state lives in the store, crash-safe by its intent records) or caches that are
//! rebuilt, so taking the lock after a panic is what a restart would do anyway.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex`, recovering it if a panicking thread poisoned it.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

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
