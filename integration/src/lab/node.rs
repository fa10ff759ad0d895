//! One simulated machine of the lab: a network namespace and a mount namespace of its own, both
//! kept alive by bind mounts of their namespace files (no holder process), with a fresh sysfs
//! (so `/sys/class/net` lists this namespace's links) and a private `/run` that is a directory of
//! the lab seen from outside (`<lab>/<node>/run`), so every default path under `/run` and
//! `/var/run` (Docker's plugin dir, OVS's run dir, the admin sockets) is the node's own.

use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::procs::{pid_alive, run_with_timeout, wait_until};

/// Where `ip netns` keeps named network namespaces (so `ip -n NAME` works on lab nodes).
pub const NETNS_DIR: &str = "/run/netns";

pub struct Node {
    pub name: String,
    /// `/run/netns/<lab id>-<name>`.
    pub netns: PathBuf,
    /// `<lab>/ns/<name>.mnt`.
    pub mntns: PathBuf,
    /// `<lab>/<name>`: the node's files; `run/` in it is the node's `/run`.
    pub dir: PathBuf,
}

/// Runs `cmd` (time limit 60 s); its stdout, or an error with its stderr.
pub fn run_ok(mut cmd: Command, what: &str) -> Result<String> {
    let shown = format!("{cmd:?}");
    cmd.env_remove("DOCKER_HOST");
    let out = run_with_timeout(cmd, None, Duration::from_secs(60))
        .with_context(|| format!("{what}: running {shown}"))?;
    if !out.status.success() {
        bail!(
            "{what}: {shown} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn cmd(program: &str, args: &[&str]) -> Command {
    let mut c = Command::new(program);
    c.args(args);
    c
}

impl Node {
    /// Creates both namespaces. `lab_dir/ns` must be a private mount (see [`crate::lab`]).
    pub fn create(lab_dir: &Path, lab_id: &str, name: &str) -> Result<Node> {
        let node = Node {
            name: name.to_string(),
            netns: Path::new(NETNS_DIR).join(format!("{lab_id}-{name}")),
            mntns: lab_dir.join("ns").join(format!("{name}.mnt")),
            dir: lab_dir.join(name),
        };
        for d in ["run", "logs", ".cg"] {
            std::fs::create_dir_all(node.dir.join(d))?;
        }
        std::fs::create_dir_all(NETNS_DIR)?;
        std::fs::File::create(&node.netns)
            .with_context(|| format!("creating {}", node.netns.display()))?;
        std::fs::File::create(&node.mntns)?;
        let cg = node.dir.join(".cg");
        let run = node.dir.join("run");
        // Inside the new namespaces: sysfs of this netns (keeping the cgroup mounts Docker
        // needs), the private /run, loopback up.
        let script = format!(
            "set -e; mount --rbind /sys/fs/cgroup '{cg}'; mount -t sysfs sysfs /sys; \
             mount --move '{cg}' /sys/fs/cgroup; mount --bind '{run}' /run; ip link set lo up",
            cg = cg.display(),
            run = run.display()
        );
        let mut c = Command::new("unshare");
        c.arg(format!("--net={}", node.netns.display()))
            .arg(format!("--mount={}", node.mntns.display()))
            .args(["--propagation", "private", "--", "sh", "-c", &script]);
        if let Err(e) = run_ok(c, &format!("creating the namespaces of lab node {name}")) {
            node.remove_ns_files();
            return Err(e);
        }
        Ok(node)
    }

    /// `nsenter --net --mount -- PROGRAM`: runs in this node (same pid namespace as the caller).
    /// nsenter execs PROGRAM (no fork), so the spawned pid is the program's.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.netns.display()))
            .arg(format!("--mount={}", self.mntns.display()))
            .arg("--")
            .arg(program);
        c
    }

    /// Runs `program ARGS` in the node (60 s limit); its stdout.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<String> {
        let mut c = self.command(program);
        c.args(args);
        run_ok(c, &format!("on lab node {}", self.name))
    }

    /// `ip -n <netns> ARGS` (from outside: the node's links by name).
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["-n", self.netns_name()];
        all.extend_from_slice(args);
        run_ok(cmd("ip", &all), &format!("ip on lab node {}", self.name))
    }

    /// The namespace's name for `ip -n`.
    pub fn netns_name(&self) -> &str {
        self.netns
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
    }

    /// The node's `/run` as seen from outside.
    pub fn run_dir(&self) -> PathBuf {
        self.dir.join("run")
    }

    pub fn log_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }

    /// Runs `f` on a thread that entered this node's network namespace (sockets it opens live
    /// there); waits for it.
    pub fn in_netns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        in_netns(&self.netns, f)
    }

    /// Pids of live processes in this node's network or mount namespace.
    pub fn pids(&self) -> Vec<u32> {
        pids_in_namespaces(&[&self.netns, &self.mntns])
    }

    fn remove_ns_files(&self) {
        for f in [&self.mntns, &self.netns] {
            let _ = nix::mount::umount2(f, nix::mount::MntFlags::MNT_DETACH);
            let _ = std::fs::remove_file(f);
        }
    }

    /// SIGKILLs whatever still runs in the namespaces, then releases them (the kernel removes
    /// their links, mounts and OVS tap devices with them). Returns what went wrong.
    pub fn destroy(&self) -> Vec<String> {
        let mut errs = Vec::new();
        let left = self.pids();
        if !left.is_empty() {
            errs.extend(kill_all(&left, &format!("node {}", self.name)));
        }
        self.remove_ns_files();
        errs
    }
}

/// Runs `f` on a thread inside the network namespace at `netns`.
pub fn in_netns<T: Send>(netns: &Path, f: impl FnOnce() -> T + Send) -> Result<T> {
    let ns = std::fs::File::open(netns).with_context(|| format!("open {}", netns.display()))?;
    std::thread::scope(|s| {
        s.spawn(move || -> Result<T> {
            // SAFETY: setns on this thread only; the fd is valid for the call.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                bail!(
                    "setns {}: {}",
                    netns.display(),
                    std::io::Error::last_os_error()
                );
            }
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow!("thread in {} panicked", netns.display()))?
    })
}

fn ns_inode(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Live pids whose network or mount namespace is one of `files` (bind-mounted namespace files).
pub fn pids_in_namespaces(files: &[&Path]) -> Vec<u32> {
    let wanted: Vec<(u64, u64)> = files.iter().filter_map(|f| ns_inode(f)).collect();
    // A namespace file not bind-mounted (any more) is a plain empty file: ignore it.
    let wanted: Vec<u64> = wanted
        .into_iter()
        .filter(|(dev, _)| std::fs::metadata("/proc/self/ns/net").is_ok_and(|m| m.dev() == *dev))
        .map(|(_, ino)| ino)
        .collect();
    if wanted.is_empty() {
        return Vec::new();
    }
    let me = std::process::id();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let hit = ["net", "mnt"].iter().any(|k| {
            std::fs::metadata(format!("/proc/{pid}/ns/{k}"))
                .is_ok_and(|m| wanted.contains(&m.ino()))
        });
        if hit && pid_alive(pid) {
            out.push(pid);
        }
    }
    out
}

/// Live pids whose cgroup path (any hierarchy) contains `/<needle>/`.
pub fn pids_in_cgroup(needle: &str) -> Vec<u32> {
    pids_whose_cgroup_contains(&format!("/{needle}/"))
}

/// SIGKILL `pids` and wait (5 s) until they are gone. Errors as strings.
pub fn kill_all(pids: &[u32], what: &str) -> Vec<String> {
    let mut errs = Vec::new();
    for p in pids {
        match kill(Pid::from_raw(*p as i32), Signal::SIGKILL) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => errs.push(format!("kill {p} ({what}): {e}")),
        }
    }
    if !wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
        pids.iter().all(|p| !pid_alive(*p))
    }) {
        errs.push(format!(
            "{what}: processes {pids:?} alive 5 s after SIGKILL"
        ));
    }
    errs
}

/// Live pids with a cgroup path component (any hierarchy) starting with `prefix`.
pub fn pids_in_cgroup_prefix(prefix: &str) -> Vec<u32> {
    pids_whose_cgroup_contains(&format!("/{prefix}"))
}

/// Live pids with a line of `/proc/PID/cgroup` containing `pat`.
fn pids_whose_cgroup_contains(pat: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cg) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
            continue;
        };
        if cg.lines().any(|l| l.contains(pat)) && pid_alive(pid) {
            out.push(pid);
        }
    }
    out
}
