//! Child processes for tests: long-running daemons with their output in a log file, and polling.
//!
//! Safety rule: a [`Daemon`] only ever signals the pid it spawned, and only while that child has not
//! been reaped yet (an unreaped child keeps its pid, even as a zombie, so the pid cannot have been
//! reused by an unrelated process).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A spawned background process whose stdout and stderr are appended to `<log_dir>/<name>.log`.
///
/// The process runs in its own process group, so a Ctrl-C on the terminal reaches only the test
/// process, which then tears down in order. Dropping a `Daemon` stops it (see [`Daemon::stop`],
/// with a 10 s grace period).
pub struct Daemon {
    name: String,
    pid: u32,
    /// `None` once reaped.
    child: Option<Child>,
    status: Option<ExitStatus>,
    log_path: PathBuf,
}

impl Daemon {
    /// Spawns `cmd` (stdin from /dev/null, stdout + stderr appended to `<log_dir>/<name>.log`).
    pub fn spawn(name: &str, mut cmd: Command, log_dir: &Path) -> Result<Daemon> {
        std::fs::create_dir_all(log_dir)
            .with_context(|| format!("creating log dir {}", log_dir.display()))?;
        let log_path = log_dir.join(format!("{name}.log"));
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let log2 = log.try_clone()?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .process_group(0);
        // The harness blocks SIGTERM/SIGINT in its own threads to handle them itself; a child
        // must not inherit that mask, or it could never be stopped gracefully.
        // SAFETY: the pre_exec closure only calls sigprocmask (async-signal-safe) between fork
        // and exec, and allocates nothing.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                let empty = nix::sys::signal::SigSet::empty();
                nix::sys::signal::sigprocmask(
                    nix::sys::signal::SigmaskHow::SIG_SETMASK,
                    Some(&empty),
                    None,
                )
                .map_err(std::io::Error::from)
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {name}: {cmd:?}"))?;
        Ok(Daemon {
            name: name.to_string(),
            pid: child.id(),
            child: Some(child),
            status: None,
            log_path,
        })
    }

    /// The name given at spawn time.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pid of the spawned process (stays the same after it exited).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Path of the log file.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last `n` lines of the log file (for failure messages).
    pub fn log_tail(&self, n: usize) -> String {
        tail_file(&self.log_path, n)
    }

    /// `Some(status)` if the process has exited (reaping it), `None` while it runs.
    pub fn try_exited(&mut self) -> Option<ExitStatus> {
        if let Some(child) = self.child.as_mut() {
            if let Ok(Some(st)) = child.try_wait() {
                self.status = Some(st);
                self.child = None;
            }
        }
        self.status
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        self.try_exited().is_none()
    }

    /// Sends `sig` to the spawned pid, if it has not been reaped yet.
    pub fn signal(&mut self, sig: Signal) -> Result<()> {
        if self.child.is_none() {
            return Ok(());
        }
        match kill(Pid::from_raw(self.pid as i32), sig) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(anyhow!("kill({}, {sig}) for {}: {e}", self.pid, self.name)),
        }
    }

    /// SIGKILL and reap (simulates a crash). Returns the exit status.
    pub fn kill9(&mut self) -> Result<ExitStatus> {
        if let Some(st) = self.try_exited() {
            return Ok(st);
        }
        self.signal(Signal::SIGKILL)?;
        self.reap()
    }

    /// SIGTERM, wait up to `timeout` for the exit, then SIGKILL; always reaps.
    /// Errs if the process had to be killed (with the log tail), or could not be signalled.
    pub fn stop(&mut self, timeout: Duration) -> Result<ExitStatus> {
        if let Some(st) = self.try_exited() {
            return Ok(st);
        }
        self.signal(Signal::SIGTERM)?;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(st) = self.try_exited() {
                return Ok(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.signal(Signal::SIGKILL)?;
        let st = self.reap()?;
        Err(anyhow!(
            "{} (pid {}) did not exit within {timeout:?} of SIGTERM; SIGKILLed ({st}). Log tail:\n{}",
            self.name,
            self.pid,
            self.log_tail(30)
        ))
    }

    fn reap(&mut self) -> Result<ExitStatus> {
        if let Some(mut child) = self.child.take() {
            let st = child
                .wait()
                .with_context(|| format!("waiting for {} (pid {})", self.name, self.pid))?;
            self.status = Some(st);
        }
        self.status
            .ok_or_else(|| anyhow!("{}: no exit status", self.name))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Err(e) = self.stop(Duration::from_secs(10)) {
            eprintln!("stopping {}: {e:#}", self.name);
        }
    }
}

/// Polls `cond` every `poll` until it returns true (→ `true`) or `timeout` has passed (→ `false`).
/// `cond` is always called at least once, and once more at the deadline.
pub fn wait_until(timeout: Duration, poll: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        std::thread::sleep(poll.min(deadline - now));
        if Instant::now() >= deadline {
            return cond();
        }
    }
}

/// The last `n` lines of a file (at most its last 256 KiB), or a note saying why it is unreadable.
pub fn tail_file(path: &Path, n: usize) -> String {
    const MAX: u64 = 256 * 1024;
    let read = || -> std::io::Result<String> {
        let mut f = File::open(path)?;
        let len = f.metadata()?.len();
        if len > MAX {
            f.seek(SeekFrom::Start(len - MAX))?;
        }
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    match read() {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// True if `pid` exists and is not a zombie (per `/proc/<pid>/stat`).
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Format: "pid (comm) S ..." — comm may contain spaces or parens, so split at the last ')'.
        Ok(stat) => match stat.rfind(')') {
            Some(i) => !matches!(stat[i + 1..].trim_start().chars().next(), Some('Z' | 'X')),
            None => true,
        },
        Err(_) => false,
    }
}

/// Pids of live processes whose command line (argv joined by spaces) contains `needle`.
/// Excludes the calling process.
pub fn pids_with_cmdline_containing(needle: &str) -> Vec<(u32, String)> {
    let me = std::process::id();
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw)
            .split('\0')
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        if cmdline.contains(needle) && pid_alive(pid) {
            out.push((pid, cmdline));
        }
    }
    out
}

/// Runs `cmd` to completion with piped stdout/stderr, optional `stdin` bytes, and a time limit.
/// On timeout the child (only the pid we spawned) is SIGKILLed and reaped, and the returned
/// output's stderr ends with a `[timed out after ...]` note (status: killed by signal 9).
pub fn run_with_timeout(
    mut cmd: Command,
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> std::io::Result<std::process::Output> {
    use std::io::Write;
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let writer = match (stdin, child.stdin.take()) {
        (Some(data), Some(mut pipe)) => {
            let data = data.to_vec();
            Some(std::thread::spawn(move || {
                let _ = pipe.write_all(&data);
            }))
        }
        _ => None,
    };
    let reader = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out_t = reader(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err_t = reader(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );

    let deadline = Instant::now() + timeout;
    let mut nap = Duration::from_millis(1);
    let mut timed_out = false;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() >= deadline {
            timed_out = true;
            let _ = child.kill();
            break child.wait()?;
        }
        std::thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(20));
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    let stdout = out_t.join().unwrap_or_default();
    let mut stderr = err_t.join().unwrap_or_default();
    if timed_out {
        stderr.extend_from_slice(format!("\n[timed out after {timeout:?}]").as_bytes());
    }
    Ok(std::process::Output {
        status,
        stdout,
        stderr,
    })
}

/// CPU seconds the process `pid` has used (utime + stime from `/proc/<pid>/stat`).
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat
        .rsplit_once(')')
        .ok_or_else(|| anyhow::anyhow!("/proc/{pid}/stat: no command"))?
        .1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| -> Result<f64> {
        Ok(f.get(i)
            .ok_or_else(|| anyhow::anyhow!("/proc/{pid}/stat: short"))?
            .parse::<f64>()?)
    };
    let ticks = field(11)? + field(12)?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
}

/// Resident memory of the process `pid` in bytes (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .ok_or_else(|| anyhow::anyhow!("/proc/{pid}/status: no VmRSS"))?
        .parse::<u64>()?;
    Ok(kb * 1024)
}
