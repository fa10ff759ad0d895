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

/// Like [`run_blocking`] with a deadline, for work whose result the caller must see or not have
/// at all: when the caller has given up (the deadline passed) and the work still finishes with
/// a result, `undo` gets that result on the blocking pool. A Mount that ends after Docker saw
/// it fail must not leave a mount count Docker will never Unmount.
pub async fn run_blocking_or_undo<T, F, U>(
    deadline: Duration,
    work: F,
    undo: U,
) -> Result<T, BlockingError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
    U: FnOnce(T) + Send + 'static,
{
    let mut task = tokio::task::spawn_blocking(work);
    match tokio::time::timeout(deadline, &mut task).await {
        Ok(joined) => Ok(joined?),
        Err(_) => {
            tokio::spawn(async move {
                if let Ok(late) = task.await {
                    let _ = tokio::task::spawn_blocking(move || undo(late)).await;
                }
            });
            Err(BlockingError::TimedOut { after: deadline })
        }
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

    #[tokio::test]
    async fn late_work_is_undone_and_timely_work_is_not() {
        let (tx, rx) = std::sync::mpsc::channel();
        let tx2 = tx.clone();
        let late = run_blocking_or_undo(
            Duration::from_millis(20),
            || {
                std::thread::sleep(Duration::from_millis(200));
                "mounted late"
            },
            move |v| tx.send(v).unwrap(),
        )
        .await;
        assert!(matches!(late, Err(BlockingError::TimedOut { .. })));
        let undone = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(5)))
            .await
            .unwrap();
        assert_eq!(undone, Ok("mounted late"));
        let (tx3, rx3) = std::sync::mpsc::channel::<&str>();
        let timely = run_blocking_or_undo(
            Duration::from_secs(5),
            || "ok",
            move |v| tx3.send(v).unwrap(),
        )
        .await;
        assert_eq!(timely.unwrap(), "ok");
        drop(tx2);
        assert!(
            rx3.recv_timeout(Duration::from_millis(100)).is_err(),
            "nothing undone"
        );
    }
}
