//! A private Open vSwitch (ovsdb-server + ovs-vswitchd) for tests, in a temp run/db dir.
//!
//! Unlike ovs-ffi's own tests, ovs-vswitchd runs in the host network namespace: Docker moves
//! the container end of each veth from there, so the host end (the OVS port) lives there too.
//! Bridges get names unique to the test; [`OvsEnv::forget_links`] and drop remove every link the
//! test created by name (bridge tap devices of the netdev datapath persist otherwise). Only the
//! pids spawned here are ever signalled.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};

use crate::harness;
use crate::procs::{run_with_timeout, wait_until, Daemon};

pub const SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";

pub struct OvsEnv {
    dir: PathBuf,
    ovsdb: Option<Daemon>,
    vswitchd: Option<Daemon>,
    /// Links to delete at teardown (bridge internal devices).
    links: Vec<String>,
    /// Whether the netdev datapath's own `ovs-netdev` device existed before we started.
    had_ovs_netdev: bool,
    /// The network namespace ovs-vswitchd runs in (`None`: this one).
    netns: Option<String>,
}

/// Fails with a message naming the Debian packages when a tool is missing.
pub fn require_tools() -> Result<()> {
    harness::require_root_and_tools(&[
        "ovsdb-tool",
        "ovsdb-server",
        "ovs-vswitchd",
        "ovs-vsctl",
        "ovs-ofctl",
        "ip",
        "nsenter",
        "busybox",
    ])
    .context("Open vSwitch tests need Debian's openvswitch-switch, iproute2, util-linux and busybox-static")?;
    if !Path::new(SCHEMA).is_file() {
        bail!("{SCHEMA} is missing: apt-get install openvswitch-common");
    }
    Ok(())
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// `ip link del NAME` when it exists (by exact name only).
pub fn delete_link(name: &str) {
    if link_exists(name) {
        let mut c = Command::new("ip");
        c.args(["link", "del", name]);
        let _ = run_with_timeout(c, None, Duration::from_secs(10));
    }
}

impl OvsEnv {
    pub fn start() -> Result<OvsEnv> {
        let mut env = Self::start_ovsdb_only()?;
        env.start_vswitchd()?;
        if env.had_ovs_netdev {
            env.probe_netdev()?;
        }
        Ok(env)
    }

    /// A fresh database with ovsdb-server serving it, no ovs-vswitchd yet.
    fn start_ovsdb_only() -> Result<OvsEnv> {
        require_tools()?;
        // Short path: UNIX socket paths must stay under ~100 bytes.
        let dir = tempfile::Builder::new()
            .prefix("bo-")
            .rand_bytes(6)
            .tempdir_in("/tmp")?
            .keep();
        let mut c = Command::new("ovsdb-tool");
        c.arg("create").arg(dir.join("conf.db")).arg(SCHEMA);
        let out = run_with_timeout(c, None, Duration::from_secs(30))?;
        if !out.status.success() {
            bail!(
                "ovsdb-tool create: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut env = OvsEnv {
            dir,
            ovsdb: None,
            vswitchd: None,
            links: Vec::new(),
            had_ovs_netdev: link_exists("ovs-netdev"),
            netns: None,
        };
        env.start_ovsdb()?;
        env.vsctl(&["--no-wait", "init"])?;
        Ok(env)
    }

    /// With `ovs-netdev` already in this namespace (another ovs-vswitchd with a netdev
    /// datapath, such as the system's), a second one cannot create its datapath and every
    /// bridge the tests make would fail with no more than a missing management socket: try one
    /// bridge now and say so, with ovs-vswitchd's own words.
    pub fn probe_netdev(&mut self) -> Result<()> {
        let probe = format!("bp{}", std::process::id() % 1_000_000);
        // ovs-vsctl only warns ("Error detected while setting up") and exits 0: the bridge's
        // interface without an OpenFlow port is the failure.
        let added = self
            .vsctl(&[
                "add-br",
                &probe,
                "--",
                "set",
                "bridge",
                &probe,
                "datapath_type=netdev",
            ])
            .and_then(|_| {
                let ofport = self.vsctl(&["get", "interface", &probe, "ofport"])?;
                match ofport.parse::<i64>() {
                    Ok(p) if p > 0 => Ok(()),
                    _ => bail!("bridge {probe}: its interface has no OpenFlow port ({ofport})"),
                }
            });
        let _ = self.vsctl(&["--if-exists", "del-br", &probe]);
        delete_link(&probe);
        if let Err(e) = added {
            let log = crate::procs::tail_file(&self.dir.join("ovs-vswitchd.log"), 200);
            let reasons: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("|WARN|") || l.contains("|ERR|"))
                .collect();
            bail!(
                "the private ovs-vswitchd cannot create a netdev bridge: another ovs-vswitchd with a \
                 netdev datapath runs in this network namespace (its device ovs-netdev existed before \
                 this one started). Stop it (e.g. the system's openvswitch-switch) or run the suite \
                 where none runs.\n{e:#}\novs-vswitchd's log:\n{}",
                reasons.join("\n")
            );
        }
        Ok(())
    }

    /// Starts ovsdb-server and ovs-vswitchd as [`OvsEnv::start`] does, but with ovs-vswitchd in
    /// the network namespace `netns` (`ip netns exec`): its datapath devices live there.
    pub fn start_in_netns(netns: &str) -> Result<OvsEnv> {
        let mut env = Self::start_ovsdb_only()?;
        env.netns = Some(netns.to_string());
        env.had_ovs_netdev = true;
        env.start_vswitchd()?;
        Ok(env)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `unix:<dir>/db.sock` for `--ovsdb`.
    pub fn endpoint(&self) -> String {
        format!("unix:{}", self.dir.join("db.sock").display())
    }

    /// For `--ovs-rundir`.
    pub fn rundir(&self) -> &Path {
        &self.dir
    }

    fn env(&self, c: &mut Command) {
        c.env("OVS_RUNDIR", &self.dir)
            .env("OVS_DBDIR", &self.dir)
            .env("OVS_LOGDIR", &self.dir)
            .env("OVS_SYSCONFDIR", &self.dir);
    }

    /// Remembers a link (e.g. the bridge's internal device) to delete at teardown.
    pub fn own_link(&mut self, name: &str) {
        if !self.links.iter().any(|l| l == name) {
            self.links.push(name.to_string());
        }
    }

    pub fn start_ovsdb(&mut self) -> Result<()> {
        let sock = self.dir.join("db.sock");
        let _ = std::fs::remove_file(&sock);
        let mut c = Command::new("ovsdb-server");
        self.env(&mut c);
        c.arg(self.dir.join("conf.db"))
            .arg(format!("--remote=punix:{}", sock.display()))
            .arg(format!(
                "--unixctl={}",
                self.dir.join("ovsdb-server.ctl").display()
            ))
            .arg("-vconsole:off")
            .arg("-vfile:info")
            .arg(format!(
                "--log-file={}",
                self.dir.join("ovsdb-server.log").display()
            ));
        let mut d = Daemon::spawn("ovsdb-server", c, &self.dir)?;
        let up = wait_until(Duration::from_secs(10), Duration::from_millis(10), || {
            std::os::unix::net::UnixStream::connect(&sock).is_ok()
        });
        if !up {
            let tail = d.log_tail(20);
            let _ = d.stop(Duration::from_secs(5));
            bail!("ovsdb-server did not come up:\n{tail}");
        }
        self.ovsdb = Some(d);
        Ok(())
    }

    pub fn start_vswitchd(&mut self) -> Result<()> {
        let ctl = self.dir.join("ovs-vswitchd.ctl");
        let _ = std::fs::remove_file(&ctl);
        let mut c = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "ovs-vswitchd"]);
                c
            }
            None => Command::new("ovs-vswitchd"),
        };
        self.env(&mut c);
        c.arg(self.endpoint())
            .arg(format!("--unixctl={}", ctl.display()))
            .arg("-vconsole:off")
            .arg(format!(
                "--log-file={}",
                self.dir.join("ovs-vswitchd.log").display()
            ));
        let mut d = Daemon::spawn("ovs-vswitchd", c, &self.dir)?;
        let up = wait_until(Duration::from_secs(10), Duration::from_millis(10), || {
            std::os::unix::net::UnixStream::connect(&ctl).is_ok()
        });
        if !up {
            let tail = d.log_tail(20);
            let _ = d.stop(Duration::from_secs(5));
            bail!("ovs-vswitchd did not come up:\n{tail}");
        }
        self.vswitchd = Some(d);
        Ok(())
    }

    pub fn stop_vswitchd(&mut self) -> Result<()> {
        if let Some(mut d) = self.vswitchd.take() {
            d.stop(Duration::from_secs(10))?;
        }
        Ok(())
    }

    /// kill -9 of ovs-vswitchd (a crash: no cleanup of its datapath); start it again with
    /// [`Self::start_vswitchd`].
    pub fn kill9_vswitchd(&mut self) -> Result<()> {
        if let Some(mut d) = self.vswitchd.take() {
            d.kill9()?;
        }
        Ok(())
    }

    /// SIGSTOP ovsdb-server: its socket stays open and nothing is answered (a hung server,
    /// harder on clients than a stopped one). [`Self::resume_ovsdb`] undoes it; a paused
    /// server is still stopped at teardown.
    pub fn pause_ovsdb(&mut self) -> Result<()> {
        self.signal_ovsdb(nix::sys::signal::Signal::SIGSTOP)
    }

    pub fn resume_ovsdb(&mut self) -> Result<()> {
        self.signal_ovsdb(nix::sys::signal::Signal::SIGCONT)
    }

    fn signal_ovsdb(&mut self, sig: nix::sys::signal::Signal) -> Result<()> {
        match self.ovsdb.as_mut() {
            Some(d) => d.signal(sig),
            None => bail!("ovsdb-server is not running"),
        }
    }

    pub fn stop_ovsdb(&mut self) -> Result<()> {
        if let Some(mut d) = self.ovsdb.take() {
            d.stop(Duration::from_secs(10))?;
        }
        Ok(())
    }

    fn tool(&self, tool: &str, args: &[&str]) -> Result<String> {
        let mut c = Command::new(tool);
        self.env(&mut c);
        if tool == "ovs-vsctl" {
            c.arg(format!("--db={}", self.endpoint()))
                .arg("--timeout=20");
        } else {
            c.arg("--timeout=20");
        }
        c.args(args);
        let out = run_with_timeout(c, None, Duration::from_secs(30))?;
        if !out.status.success() {
            bail!(
                "{tool} {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    pub fn vsctl(&self, args: &[&str]) -> Result<String> {
        self.tool("ovs-vsctl", args)
    }

    /// `ovs-ofctl -O OpenFlow13 COMMAND [--no-stats] <bridge>.mgmt [FILTER]`: its lines without
    /// the reply header.
    fn ofctl_lines(
        &self,
        command: &str,
        bridge: &str,
        no_stats: bool,
        filter: Option<&str>,
    ) -> Result<Vec<String>> {
        let mgmt = self.dir.join(format!("{bridge}.mgmt"));
        let mgmt = mgmt.to_string_lossy();
        let mut args = vec!["-O", "OpenFlow13", command];
        if no_stats {
            args.push("--no-stats");
        }
        args.push(&mgmt);
        args.extend(filter);
        let out = self.tool("ovs-ofctl", &args)?;
        Ok(out
            .lines()
            .map(str::trim)
            .filter(|l| !l.starts_with("OFPST_") && !l.is_empty())
            .map(str::to_string)
            .collect())
    }

    /// `ovs-ofctl -O OpenFlow13 del-flows <bridge>.mgmt ARGS` (a change behind netplugin's
    /// back, for drift tests).
    pub fn del_flows(&self, bridge: &str, args: &[&str]) -> Result<()> {
        let mgmt = self.dir.join(format!("{bridge}.mgmt"));
        let mgmt = mgmt.to_string_lossy();
        let mut all = vec!["-O", "OpenFlow13", "del-flows", &mgmt];
        all.extend_from_slice(args);
        self.tool("ovs-ofctl", &all).map(drop)
    }

    /// `ovs-ofctl -O OpenFlow13 dump-flows --no-stats <bridge>.mgmt`, one flow a line.
    pub fn dump_flows(&self, bridge: &str) -> Result<Vec<String>> {
        self.ofctl_lines("dump-flows", bridge, true, None)
    }

    /// The flows matching `filter`, with their counters, one flow a line.
    pub fn dump_flows_with_stats(&self, bridge: &str, filter: &str) -> Result<Vec<String>> {
        self.ofctl_lines("dump-flows", bridge, false, Some(filter))
    }

    /// `ovs-ofctl -O OpenFlow13 dump-meters`, one line per meter (its bands folded in).
    pub fn dump_meters(&self, bridge: &str) -> Result<Vec<String>> {
        let mut meters: Vec<String> = Vec::new();
        for line in self.ofctl_lines("dump-meters", bridge, false, None)? {
            if line.starts_with("meter=") {
                meters.push(line);
            } else if let Some(last) = meters.last_mut() {
                last.push(' ');
                last.push_str(&line);
            }
        }
        Ok(meters)
    }

    /// Port names on `bridge` (without the bridge's own port).
    pub fn ports(&self, bridge: &str) -> Result<Vec<String>> {
        Ok(self
            .vsctl(&["list-ports", bridge])?
            .lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect())
    }

    pub fn log_tail(&self, n: usize) -> String {
        let mut s = String::new();
        for f in ["ovsdb-server.log", "ovs-vswitchd.log"] {
            s += &format!(
                "--- {f}\n{}\n",
                crate::procs::tail_file(&self.dir.join(f), n)
            );
        }
        s
    }
}

impl Drop for OvsEnv {
    fn drop(&mut self) {
        // Ports first (their veths are ours), then the daemons, then links by name.
        for bridge in self.links.clone() {
            if let Ok(ports) = self.ports(&bridge) {
                for p in ports {
                    delete_link(&p);
                }
            }
        }
        if let Err(e) = self.stop_vswitchd() {
            eprintln!("teardown: {e:#}");
        }
        if let Err(e) = self.stop_ovsdb() {
            eprintln!("teardown: {e:#}");
        }
        for l in &self.links {
            delete_link(l);
        }
        if !self.had_ovs_netdev {
            delete_link("ovs-netdev");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
