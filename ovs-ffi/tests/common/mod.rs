//! Test harness: a private Open vSwitch (ovsdb-server + ovs-vswitchd) per test, in its own
//! temporary rundir/dbdir and its own network namespace (netdev datapath: this machine's
//! kernel has no openvswitch module). Everything is stopped and removed on drop, by pid and by
//! name, even when the test fails. Nothing touches /var/run/openvswitch or the host network.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static COUNTER: AtomicU32 = AtomicU32::new(0);

const SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";

/// Fails (not skips) the test when a tool it needs is missing.
pub fn require(bins: &[&str]) {
    for b in bins {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(b).is_file()))
            .unwrap_or(false);
        assert!(
            found,
            "required binary `{b}` not found in PATH: install Debian's openvswitch-switch, iproute2 and iputils-arping (see ovs-ffi/README.md)"
        );
    }
    assert!(
        Path::new(SCHEMA).is_file(),
        "{SCHEMA} missing: install openvswitch-common"
    );
    assert!(
        unsafe_free_is_root(),
        "these tests need root (network namespaces, OVS daemons)"
    );
}

fn unsafe_free_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Runs a command with a time bound; returns stdout, panics with stderr on failure.
pub fn run(cmd: &mut Command) -> String {
    let out = run_status(cmd);
    match out {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    }
}

pub fn run_status(cmd: &mut Command) -> Result<String, String> {
    let desc = format!("{cmd:?}");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn {desc}: {e}"))?;
    let out = wait_bounded(child, Duration::from_secs(30)).map_err(|e| format!("{desc}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{desc} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn wait_bounded(mut child: Child, limit: Duration) -> Result<std::process::Output, String> {
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return child.wait_with_output().map_err(|e| e.to_string()),
            Ok(None) if start.elapsed() > limit => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("timed out after {limit:?}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(e.to_string()),
        }
    }
}

pub fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = format!(
            "ovsffi-{}-{}-{tag}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    pub fn exec(&self, args: &[&str]) -> String {
        run(Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args))
    }

    pub fn exec_status(&self, args: &[&str]) -> Result<String, String> {
        run_status(
            Command::new("ip")
                .args(["netns", "exec", &self.name])
                .args(args),
        )
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(args);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// One private Open vSwitch.
pub struct Ovs {
    pub dir: tempfile::TempDir,
    /// ovs-vswitchd and every datapath device live here.
    pub ns: Netns,
    ovsdb: Option<Child>,
    vswitchd: Option<Child>,
}

impl Ovs {
    pub fn start() -> Ovs {
        require(&[
            "ovsdb-tool",
            "ovsdb-server",
            "ovs-vswitchd",
            "ovs-vsctl",
            "ovs-ofctl",
            "ip",
        ]);
        // Short path: UNIX socket paths must stay under ~100 bytes.
        let dir = tempfile::Builder::new()
            .prefix("ovs")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let db = dir.path().join("conf.db");
        run(Command::new("ovsdb-tool")
            .arg("create")
            .arg(&db)
            .arg(SCHEMA));
        let ns = Netns::new("ovs");
        let mut ovs = Ovs {
            dir,
            ns,
            ovsdb: None,
            vswitchd: None,
        };
        ovs.start_ovsdb();
        ovs.vsctl(&["--no-wait", "init"]);
        ovs.start_vswitchd();
        ovs
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn db_sock(&self) -> PathBuf {
        self.path("db.sock")
    }

    pub fn endpoint(&self) -> String {
        format!("unix:{}", self.db_sock().display())
    }

    pub fn mgmt(&self, bridge: &str) -> PathBuf {
        self.path(&format!("{bridge}.mgmt"))
    }

    fn env(&self, c: &mut Command) {
        let d = self.dir.path();
        c.env("OVS_RUNDIR", d)
            .env("OVS_DBDIR", d)
            .env("OVS_LOGDIR", d)
            .env("OVS_SYSCONFDIR", d);
    }

    pub fn start_ovsdb(&mut self) {
        let d = self.dir.path().to_path_buf();
        let _ = std::fs::remove_file(self.db_sock());
        let mut c = Command::new("ovsdb-server");
        self.env(&mut c);
        c.arg(d.join("conf.db"))
            .arg(format!("--remote=punix:{}", self.db_sock().display()))
            .arg(format!(
                "--unixctl={}",
                d.join("ovsdb-server.ctl").display()
            ))
            .arg(format!(
                "--log-file={}",
                d.join("ovsdb-server.log").display()
            ))
            .arg("-vconsole:off")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.ovsdb = Some(c.spawn().expect("spawn ovsdb-server"));
        let sock = self.db_sock();
        wait_for("ovsdb-server socket", Duration::from_secs(10), || {
            std::os::unix::net::UnixStream::connect(&sock).is_ok()
        });
    }

    pub fn start_vswitchd(&mut self) {
        let d = self.dir.path().to_path_buf();
        let ctl = d.join("ovs-vswitchd.ctl");
        let _ = std::fs::remove_file(&ctl);
        let mut c = self.ns.command(&["ovs-vswitchd"]);
        self.env(&mut c);
        c.arg(self.endpoint())
            .arg(format!("--unixctl={}", ctl.display()))
            .arg(format!(
                "--log-file={}",
                d.join("ovs-vswitchd.log").display()
            ))
            .arg("-vconsole:off")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.vswitchd = Some(c.spawn().expect("spawn ovs-vswitchd"));
        wait_for(
            "ovs-vswitchd control socket",
            Duration::from_secs(10),
            || std::os::unix::net::UnixStream::connect(&ctl).is_ok(),
        );
    }

    pub fn kill_ovsdb(&mut self) {
        stop(self.ovsdb.take());
    }

    pub fn kill_vswitchd(&mut self) {
        stop(self.vswitchd.take());
    }

    pub fn vsctl(&self, args: &[&str]) -> String {
        let mut c = Command::new("ovs-vsctl");
        self.env(&mut c);
        c.arg(format!("--db={}", self.endpoint()))
            .arg("--timeout=20")
            .args(args);
        run(&mut c)
    }

    pub fn ofctl(&self, args: &[&str]) -> String {
        let mut c = Command::new("ovs-ofctl");
        self.env(&mut c);
        c.arg("--timeout=20").args(args);
        run(&mut c)
    }

    /// `ovs-ofctl dump-flows --no-stats`, one flow per line, sorted.
    pub fn dump_flows(&self, bridge: &str, extra: &[&str]) -> Vec<String> {
        let mgmt = self.mgmt(bridge);
        let mut args = vec![
            "-O",
            "OpenFlow13",
            "dump-flows",
            "--no-stats",
            mgmt.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let mut v: Vec<String> = self
            .ofctl(&args)
            .lines()
            .filter(|l| !l.starts_with("OFPST_FLOW") && !l.trim().is_empty())
            .map(|l| l.trim().to_string())
            .collect();
        v.sort();
        v
    }

    pub fn wait_mgmt(&self, bridge: &str) {
        let m = self.mgmt(bridge);
        wait_for(&format!("{}", m.display()), Duration::from_secs(10), || {
            std::os::unix::net::UnixStream::connect(&m).is_ok()
        });
    }

    pub fn log_tail(&self) -> String {
        let mut s = String::new();
        for f in ["ovsdb-server.log", "ovs-vswitchd.log"] {
            let t = std::fs::read_to_string(self.path(f)).unwrap_or_default();
            let lines: Vec<&str> = t.lines().collect();
            s += &format!(
                "--- {f}\n{}\n",
                lines[lines.len().saturating_sub(20)..].join("\n")
            );
        }
        s
    }
}

fn stop(child: Option<Child>) {
    if let Some(mut c) = child {
        let pid = c.id() as i32;
        // SIGTERM first so the daemon removes its sockets and pidfiles; SIGKILL if it hangs.
        // SAFETY: kill takes plain integers; `pid` is our own child, not yet reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for Ovs {
    fn drop(&mut self) {
        stop(self.vswitchd.take());
        stop(self.ovsdb.take());
    }
}

/// Unique short bridge/port names (interface names must fit 15 bytes).
pub fn uniq(prefix: &str) -> String {
    format!("{prefix}{}", COUNTER.fetch_add(1, Ordering::SeqCst))
}
