//! SIGTERM/SIGINT turned into a shutdown flag every server watches.

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tracing::info;

/// Unblocks the stop signals for the whole process. A daemon started by a program that blocks
/// them (test runners, some supervisors) would otherwise never see SIGTERM: the mask is
/// inherited across exec. Call first thing in main, before any thread exists.
pub fn unblock_stop_signals() {
    // SAFETY: `sigset_t` is a plain C bit array; all-zero bytes are a valid (empty) set, and
    // sigemptyset below initialises it properly anyway.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: every call gets a pointer to the local, initialised `set` and valid signal
    // numbers; pthread_sigmask may take a null pointer for the old mask (POSIX). None of them
    // keeps the pointer past the call.
    unsafe {
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
}

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

/// Resolves once shutdown is requested (or nobody is left to request it).
pub async fn requested(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}
