//! SIGTERM/SIGINT turned into a shutdown flag every server watches.

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tracing::info;

/// Returns the receiver servers watch; the flag turns true on the first SIGTERM or SIGINT.
pub fn on_signals() -> std::io::Result<(watch::Sender<bool>, watch::Receiver<bool>)> {
    let (tx, rx) = watch::channel(false);
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let notify = tx.clone();
    tokio::spawn(async move {
        let which = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        info!(
            signal = which,
            "shutting down: no new connections, finishing requests in flight"
        );
        let _ = notify.send(true);
    });
    Ok((tx, rx))
}
