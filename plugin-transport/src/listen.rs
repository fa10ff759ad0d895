//! Listening sockets: UNIX sockets we bind (stale-file removal, mode), sockets handed over by
//! systemd (LISTEN_PID/LISTEN_FDS), and the loopback TCP socket of the metrics server.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("{path}: another process is serving on this socket")]
    InUse { path: PathBuf },
    #[error("{path}: exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("socket activation: {0}")]
    Activation(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ListenError + '_ {
    move |source| ListenError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

/// A listener of either kind; the server loop does not care which.
#[derive(Debug)]
pub enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

impl Listener {
    pub async fn accept(&self) -> io::Result<Box<dyn Stream>> {
        match self {
            Listener::Unix(l) => l
                .accept()
                .await
                .map(|(s, _)| Box::new(s) as Box<dyn Stream>),
            Listener::Tcp(l) => l.accept().await.map(|(s, _)| {
                let _ = s.set_nodelay(true);
                Box::new(s) as Box<dyn Stream>
            }),
        }
    }
}

/// Removes the socket file it bound when dropped (on clean exit), unless it was replaced.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    inode: Option<u64>,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        use std::os::unix::fs::MetadataExt;
        // Only our own socket: a newer instance may have bound the same path since.
        if let (Some(ino), Ok(meta)) = (self.inode, std::fs::symlink_metadata(&self.path)) {
            if meta.ino() == ino {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// After a kill -9, a child the dead instance was spawning (between fork and exec) can hold its
/// listening socket for a moment, so a socket that accepts connections only counts as served
/// if it still does a little later.
fn still_served(path: &Path) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        if std::os::unix::net::UnixStream::connect(path).is_err() {
            return false;
        }
        if std::time::Instant::now() >= deadline {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Binds a UNIX socket at `path` with `mode`, creating the parent directory (0755) if needed.
/// A stale socket file (nobody accepting) is removed first; a live one is an error, so a second
/// instance cannot steal the first one's clients.
pub fn bind_unix(path: &Path, mode: u32) -> Result<(Listener, SocketFile), ListenError> {
    if let Some(parent) = path.parent() {
        if !parent.as_os_str().is_empty() && !parent.exists() {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if still_served(path) {
                return Err(ListenError::InUse {
                    path: path.to_path_buf(),
                });
            }
            std::fs::remove_file(path).map_err(io_err(path))?;
        }
        Ok(_) => {
            return Err(ListenError::NotASocket {
                path: path.to_path_buf(),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(path)(e)),
    }
    // Bind with a restrictive umask so the socket is never reachable with wider permissions,
    // not even between bind and chmod.
    // SAFETY: umask(2) takes a plain mode, cannot fail and touches no memory of ours. It is
    // process-wide: a file another thread creates in this window gets the narrower mask, which
    // errs on the safe side; it is restored right after the bind.
    let old = unsafe { libc::umask(0o177) };
    let bound = std::os::unix::net::UnixListener::bind(path);
    // SAFETY: as above; restores the mask read by the first call.
    unsafe { libc::umask(old) };
    let std_listener = bound.map_err(io_err(path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io_err(path))?;
    std_listener.set_nonblocking(true).map_err(io_err(path))?;
    let listener = UnixListener::from_std(std_listener).map_err(io_err(path))?;
    let inode = {
        use std::os::unix::fs::MetadataExt;
        std::fs::symlink_metadata(path).ok().map(|m| m.ino())
    };
    Ok((
        Listener::Unix(listener),
        SocketFile {
            path: path.to_path_buf(),
            inode,
        },
    ))
}

/// First fd systemd passes (sd_listen_fds(3)).
const SD_LISTEN_FDS_START: RawFd = 3;

/// What systemd's activation variables said, taken once by [`take_activation`].
static ACTIVATION: std::sync::Mutex<Option<Result<Option<OwnedFd>, String>>> =
    std::sync::Mutex::new(None);

/// Takes systemd's socket-activation handover: reads and removes `LISTEN_PID`, `LISTEN_FDS`
/// and `LISTEN_FDNAMES`, and marks the passed socket close-on-exec. Call it first thing in
/// `main`, before any thread or child process exists: changing the environment is only sound
/// while no other thread reads it, and a child started before fd 3 is close-on-exec would
/// inherit the plugin socket and keep it open after the daemon died (Docker's calls would
/// then hang instead of failing over to a restarted daemon). Later calls do nothing.
pub fn take_activation() {
    let mut slot = crate::sync::lock(&ACTIVATION);
    if slot.is_none() {
        *slot = Some(read_activation());
    }
}

fn read_activation() -> Result<Option<OwnedFd>, String> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    let (Some(pid), Some(fds)) = (pid, fds) else {
        return Ok(None);
    };
    // SAFETY: take_activation runs first thing in main, before any other thread exists, so
    // nothing reads or writes the environment concurrently.
    unsafe {
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_FDNAMES");
    }
    if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
        return Ok(None);
    }
    let count: i32 = fds
        .trim()
        .parse()
        .map_err(|_| format!("LISTEN_FDS={} is not a number", crate::input::quoted(&fds)))?;
    if count < 1 {
        return Ok(None);
    }
    if count > 1 {
        return Err(format!(
            "{count} sockets passed; the plugin socket unit must listen on exactly one"
        ));
    }
    let fd = SD_LISTEN_FDS_START;
    // Check it really is a socket before taking ownership of it.
    // SAFETY: `libc::stat` is a plain C struct of integers, for which all-zero bytes are a
    // valid value.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `stat` is a valid, exclusively borrowed `libc::stat` for the kernel to fill; an
    // fd that is not open only makes fstat return -1 (EBADF), which is checked.
    if unsafe { libc::fstat(fd, &mut stat) } != 0 || (stat.st_mode & libc::S_IFMT) != libc::S_IFSOCK
    {
        return Err(format!("fd {fd} is not a socket"));
    }
    // SAFETY: fcntl(F_SETFD) on an fd fstat just showed is open only sets its close-on-exec
    // flag; it passes no pointers.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    // SAFETY: systemd hands this fd to us alone, it was checked to be open and a socket, and
    // this runs once (take_activation), so nothing else owns it.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// The UNIX listening socket systemd passed, if this process was socket-activated (as taken
/// by [`take_activation`], which this calls in case `main` did not).
pub fn systemd_listener() -> Result<Option<Listener>, ListenError> {
    take_activation();
    let taken = crate::sync::lock(&ACTIVATION)
        .as_mut()
        .map(|r| match r {
            Ok(fd) => Ok(fd.take()),
            Err(e) => Err(e.clone()),
        })
        .unwrap_or(Ok(None));
    let Some(fd) = taken.map_err(ListenError::Activation)? else {
        return Ok(None);
    };
    let std_listener = std::os::unix::net::UnixListener::from(fd);
    std_listener
        .set_nonblocking(true)
        .map_err(|e| ListenError::Activation(format!("fd {SD_LISTEN_FDS_START}: {e}")))?;
    let listener = UnixListener::from_std(std_listener)
        .map_err(|e| ListenError::Activation(format!("fd {SD_LISTEN_FDS_START}: {e}")))?;
    Ok(Some(Listener::Unix(listener)))
}

/// The plugin socket: systemd's if activated, else `path` bound by us.
pub fn plugin_listener(
    path: &Path,
    mode: u32,
) -> Result<(Listener, Option<SocketFile>), ListenError> {
    if let Some(listener) = systemd_listener()? {
        return Ok((listener, None));
    }
    let (listener, file) = bind_unix(path, mode)?;
    Ok((listener, Some(file)))
}

pub async fn bind_tcp(addr: &str) -> Result<Listener, ListenError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ListenError::Io {
            path: addr.into(),
            source,
        })?;
    Ok(Listener::Tcp(listener))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stale_socket_is_replaced_and_live_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.sock");
        {
            // A socket file nobody listens on any more.
            let _l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        }
        assert!(path.exists());
        let (_listener, file) = bind_unix(&path, 0o600).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let err = bind_unix(&path, 0o600).unwrap_err();
        assert!(matches!(err, ListenError::InUse { .. }), "{err}");
        drop(file);
        assert!(!path.exists(), "clean exit removes the socket file");
    }

    #[tokio::test]
    async fn socket_released_shortly_after_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.sock");
        // Stands for the listener a crashed instance's half-spawned child holds for a moment.
        let lingering = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            drop(lingering);
        });
        let (_listener, _file) = bind_unix(&path, 0o600).unwrap();
        release.join().unwrap();
    }

    #[tokio::test]
    async fn regular_file_is_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.sock");
        std::fs::write(&path, b"data").unwrap();
        assert!(matches!(
            bind_unix(&path, 0o600),
            Err(ListenError::NotASocket { .. })
        ));
        assert_eq!(std::fs::read(&path).unwrap(), b"data");
    }
}
