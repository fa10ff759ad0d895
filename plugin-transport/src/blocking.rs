//! Blocking work (store calls, syscalls, mkfs) run off the async workers, optionally with a
//! deadline. One helper for both daemons, so "every backend call is bounded" is enforced in one
//! place and a hung etcd or LVM becomes a clear error instead of a hung dockerd.
//!
//! On timeout the worker thread is not stopped (a blocking call cannot be interrupted): its
//! result is dropped when it finishes. Callers only lose the wait.

use std::time::Duration;

/// Why blocking work produced no result.
#[derive(Debug, thiserror::Error)]
pub enum BlockingError {
    /// The worker panicked or was cancelled by the runtime.
    #[error("worker failed: {0}")]
    Worker(#[from] tokio::task::JoinError),
    /// It did not finish within the deadline.
    #[error("did not finish within {} s", after.as_secs())]
    TimedOut { after: Duration },
}

/// Runs `work` on tokio's blocking pool and waits for it, at most `deadline` when one is given
/// (`None`: the work bounds itself, for example through socket timeouts).
pub async fn run_blocking<T, F>(deadline: Option<Duration>, work: F) -> Result<T, BlockingError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let task = tokio::task::spawn_blocking(work);
    match deadline {
        None => Ok(task.await?),
        Some(after) => match tokio::time::timeout(after, task).await {
            Ok(joined) => Ok(joined?),
            Err(_) => Err(BlockingError::TimedOut { after }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn result_panic_and_deadline() {
        assert_eq!(run_blocking(None, || 7).await.unwrap(), 7);
        let within = run_blocking(Some(Duration::from_secs(5)), || "ok").await;
        assert_eq!(within.unwrap(), "ok");
        let panicked = run_blocking(None, || -> u8 { panic!("boom") }).await;
        assert!(matches!(panicked, Err(BlockingError::Worker(_))));
        let slow = run_blocking(Some(Duration::from_millis(10)), || {
            std::thread::sleep(Duration::from_millis(200))
        })
        .await;
        assert!(matches!(slow, Err(BlockingError::TimedOut { .. })));
    }
}
