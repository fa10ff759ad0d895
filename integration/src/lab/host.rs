//! One host of the lab: Open vSwitch, netplugin, volplugin, containerd and dockerd in the
//! host's own namespaces, each started with the flags an operator would use. Inside the host
//! every default path holds: Docker's plugin dir `/run/docker/plugins`, `/var/run/docker.sock`,
//! `/var/run/openvswitch/db.sock`, `/run/berth/netplugin.sock`; from outside the same files are
//! under `<lab>/<host>/run/`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::Value;

use super::node::{kill_all, pids_in_cgroup, run_ok, Node};
use crate::plugins::{docker_call, parse_mountinfo, volume_leftovers};
use crate::procs::{run_with_timeout, tail_file, wait_until, Daemon};
use crate::soak::{is_berth_veth, SoakHost, Target};

/// The trunk interface of every host (one end of a veth pair; the other is a switch port).
pub const UPLINK: &str = "up0";
/// The management interface (etcd traffic).
pub const MGMT_IF: &str = "mg0";
/// netplugin's bridge (the default).
pub const BRIDGE: &str = "br-berth";

const STOP: Duration = Duration::from_secs(15);

/// Binaries the hosts run.
#[derive(Clone, Debug)]
pub struct Bins {
    pub netplugin: PathBuf,
    pub volplugin: PathBuf,
    pub docker_cli: PathBuf,
}

#[derive(Default)]
struct Procs {
    ovsdb: Option<Daemon>,
    vswitchd: Option<Daemon>,
    netplugin: Option<Daemon>,
    volplugin: Option<Daemon>,
    containerd: Option<Daemon>,
    dockerd: Option<Daemon>,
}

pub struct Host {
    /// Short name: `a`, `b`, `c`.
    pub name: String,
    /// netplugin's `--host-id`: `host-<name>`.
    pub host_id: String,
    pub node: Node,
    /// Address on the management network.
    pub mgmt_ip: String,
    bins: Bins,
    etcd_endpoints: String,
    /// `--etcd-endpoints` for the next netplugin start instead of the lab's (a relay).
    etcd_endpoints_override: Mutex<Option<String>>,
    netplugin_args: Vec<String>,
    /// The cgroup parent of this host's containers (unique to the lab): finds them by cgroup.
    pub cgroup_parent: String,
    procs: Mutex<Procs>,
}

impl Host {
    pub(super) fn new(
        node: Node,
        mgmt_ip: &str,
        bins: Bins,
        etcd_endpoints: &str,
        netplugin_args: Vec<String>,
        lab_id: &str,
    ) -> Result<Host> {
        let name = node.name.clone();
        let dir = node.dir.clone();
        for d in [
            "ovs",
            "docker",
            "containerd",
            "client",
            "net-state",
            "vol-state",
        ] {
            std::fs::create_dir_all(dir.join(d))?;
        }
        std::fs::create_dir_all(node.run_dir().join("openvswitch"))?;
        std::fs::write(
            dir.join("containerd.toml"),
            "version = 2\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n",
        )?;
        let daemon_json = serde_json::json!({ "deprecated-key-path": dir.join("key.json") });
        std::fs::write(dir.join("daemon.json"), format!("{daemon_json:#}\n"))?;
        std::fs::write(dir.join("client/config.json"), "{}\n")?;
        Ok(Host {
            host_id: format!("host-{name}"),
            cgroup_parent: format!("{lab_id}-{name}"),
            name,
            node,
            mgmt_ip: mgmt_ip.to_string(),
            bins,
            etcd_endpoints: etcd_endpoints.to_string(),
            etcd_endpoints_override: Mutex::new(None),
            netplugin_args,
            procs: Mutex::new(Procs::default()),
        })
    }

    fn procs(&self) -> MutexGuard<'_, Procs> {
        self.procs.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn dir(&self) -> &Path {
        &self.node.dir
    }

    /// dockerd's API socket as seen from outside (`/var/run/docker.sock` inside).
    pub fn docker_socket(&self) -> PathBuf {
        self.node.run_dir().join("docker.sock")
    }

    /// netplugin's plugin socket (`/run/docker/plugins/berth-net.sock` inside).
    pub fn net_plugin_socket(&self) -> PathBuf {
        self.node.run_dir().join("docker/plugins/berth-net.sock")
    }

    /// volplugin's plugin socket.
    pub fn vol_plugin_socket(&self) -> PathBuf {
        self.node.run_dir().join("docker/plugins/berth-vol.sock")
    }

    /// netplugin's admin socket (`/run/berth/netplugin.sock` inside).
    pub fn net_admin_socket(&self) -> PathBuf {
        self.node.run_dir().join("berth/netplugin.sock")
    }

    /// OVS's run dir (`/var/run/openvswitch` inside).
    pub fn ovs_rundir(&self) -> PathBuf {
        self.node.run_dir().join("openvswitch")
    }

    // -----------------------------------------------------------------------------------------
    // Starting and stopping.

    /// Starts everything: OVS, netplugin, volplugin, containerd, dockerd (the order of a boot:
    /// the plugins are up before dockerd restores its networks).
    pub fn start_all(&self) -> Result<()> {
        self.start_ovs()?;
        self.start_netplugin()?;
        self.start_volplugin()?;
        self.start_containerd()?;
        self.start_dockerd()
    }

    /// ovsdb-server (creating the database on first start) and ovs-vswitchd, each unless it
    /// runs.
    pub fn start_ovs(&self) -> Result<()> {
        let mut p = self.procs();
        let ovs_dir = self.node.dir.join("ovs");
        if p.ovsdb.as_mut().is_none_or(|d| !d.is_running()) {
            p.ovsdb = Some(start_ovsdb(&self.node, &ovs_dir)?);
        }
        if p.vswitchd.as_mut().is_none_or(|d| !d.is_running()) {
            p.vswitchd = Some(start_vswitchd(&self.node, &ovs_dir)?);
        }
        Ok(())
    }

    /// The flags of `netplugin serve` on this host: what an operator of a fleet host gives
    /// (`--store etcd`, endpoints, host id, uplink, a state dir), plus the lab's extra flags.
    pub fn netplugin_flags(&self) -> Vec<String> {
        let endpoints = self
            .etcd_endpoints_override
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_else(|| self.etcd_endpoints.clone());
        let mut v: Vec<String> = [
            "serve",
            "--store",
            "etcd",
            "--etcd-endpoints",
            &endpoints,
            "--host-id",
            &self.host_id,
            "--uplink",
            UPLINK,
            "--state-dir",
            &self.node.dir.join("net-state").to_string_lossy(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(self.netplugin_args.iter().cloned());
        v
    }

    /// The etcd endpoints netplugin is started with from now on (`None`: the lab's members
    /// again); takes effect at its next start.
    pub fn set_etcd_endpoints(&self, endpoints: Option<&str>) {
        *self
            .etcd_endpoints_override
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = endpoints.map(str::to_string);
    }

    pub fn start_netplugin(&self) -> Result<()> {
        let mut p = self.procs();
        if p.netplugin.as_mut().is_some_and(|d| d.is_running()) {
            return Ok(());
        }
        let mut c = self.node.command(&self.bins.netplugin);
        c.args(self.netplugin_flags()).env("RUST_LOG", "info");
        let mut d = Daemon::spawn("netplugin", c, &self.node.log_dir())?;
        let sock = self.net_plugin_socket();
        let up = wait_until(Duration::from_secs(30), Duration::from_millis(20), || {
            !d.is_running() || docker_call(&sock, "Plugin.Activate", None).is_ok()
        });
        if !up || !d.is_running() {
            let tail = d.log_tail(30);
            let _ = d.stop(Duration::from_secs(5));
            bail!("host {}: netplugin did not come up:\n{tail}", self.name);
        }
        p.netplugin = Some(d);
        Ok(())
    }

    pub fn start_volplugin(&self) -> Result<()> {
        let mut p = self.procs();
        if p.volplugin.as_mut().is_some_and(|d| d.is_running()) {
            return Ok(());
        }
        let mut c = self.node.command(&self.bins.volplugin);
        c.arg("serve")
            .arg("--state-dir")
            .arg(self.node.dir.join("vol-state"))
            .env("RUST_LOG", "info");
        let mut d = Daemon::spawn("volplugin", c, &self.node.log_dir())?;
        let sock = self.vol_plugin_socket();
        let up = wait_until(Duration::from_secs(30), Duration::from_millis(20), || {
            !d.is_running() || docker_call(&sock, "Plugin.Activate", None).is_ok()
        });
        if !up || !d.is_running() {
            let tail = d.log_tail(30);
            let _ = d.stop(Duration::from_secs(5));
            bail!("host {}: volplugin did not come up:\n{tail}", self.name);
        }
        p.volplugin = Some(d);
        Ok(())
    }

    pub fn start_containerd(&self) -> Result<()> {
        let mut p = self.procs();
        if p.containerd.as_mut().is_some_and(|d| d.is_running()) {
            return Ok(());
        }
        let dir = &self.node.dir;
        let mut c = self.node.command("containerd");
        c.arg("--config")
            .arg(dir.join("containerd.toml"))
            .arg("--root")
            .arg(dir.join("containerd"))
            .env_remove("NOTIFY_SOCKET");
        let mut d = Daemon::spawn("containerd", c, &self.node.log_dir())?;
        let sock = self.node.run_dir().join("containerd/containerd.sock");
        let up = wait_until(Duration::from_secs(30), Duration::from_millis(20), || {
            !d.is_running() || std::os::unix::net::UnixStream::connect(&sock).is_ok()
        });
        if !up || !d.is_running() {
            let tail = d.log_tail(30);
            let _ = d.stop(Duration::from_secs(5));
            bail!("host {}: containerd did not come up:\n{tail}", self.name);
        }
        p.containerd = Some(d);
        Ok(())
    }

    pub fn start_dockerd(&self) -> Result<()> {
        let mut p = self.procs();
        if p.dockerd.as_mut().is_some_and(|d| d.is_running()) {
            return Ok(());
        }
        let dir = &self.node.dir;
        let mut c = self.node.command("dockerd");
        c.arg("--data-root")
            .arg(dir.join("docker"))
            .arg("--config-file")
            .arg(dir.join("daemon.json"))
            .args(["--containerd", "/run/containerd/containerd.sock"])
            .args([
                "--bridge=none",
                "--iptables=false",
                "--ip6tables=false",
                "--ip-masq=false",
                "--ip-forward=false",
                "--exec-opt",
                "native.cgroupdriver=cgroupfs",
            ])
            .arg("--cgroup-parent")
            .arg(format!("/{}", self.cgroup_parent))
            .env_remove("DOCKER_HOST")
            .env_remove("NOTIFY_SOCKET");
        let mut d = Daemon::spawn("dockerd", c, &self.node.log_dir())?;
        let t0 = Instant::now();
        let mut last = String::new();
        let up = wait_until(Duration::from_secs(60), Duration::from_millis(200), || {
            if !d.is_running() {
                return true;
            }
            let out = self.docker_with(
                &["version", "--format", "{{.Server.Version}}"],
                Duration::from_secs(10),
            );
            last = String::from_utf8_lossy(&out.stderr).trim().to_string();
            out.status.success()
        });
        if !up || !d.is_running() {
            let tail = d.log_tail(40);
            let _ = d.stop(Duration::from_secs(5));
            bail!(
                "host {}: dockerd did not answer within {:?} (last: {last}):\n{tail}",
                self.name,
                t0.elapsed()
            );
        }
        p.dockerd = Some(d);
        Ok(())
    }

    /// kill -9 of everything of the host — netplugin, volplugin, dockerd, containerd, OVS, the
    /// containerd shims and the containers (by their cgroup) — as when it loses power. Its
    /// namespaces, files and OVS database stay, so [`Host::start_all`] boots it again.
    pub fn kill9_all(&self) -> Result<()> {
        let containers = pids_in_cgroup(&self.cgroup_parent);
        let mut guard = self.procs();
        let p = &mut *guard;
        for d in [
            &mut p.netplugin,
            &mut p.volplugin,
            &mut p.dockerd,
            &mut p.containerd,
            &mut p.vswitchd,
            &mut p.ovsdb,
        ] {
            if let Some(mut d) = d.take() {
                d.kill9()?;
            }
        }
        drop(guard);
        let mut errs = kill_all(&containers, "containers");
        // The shims (and anything else left in the host's namespaces).
        errs.extend(kill_all(&self.node.pids(), "shims"));
        if !errs.is_empty() {
            bail!("host {}: {}", self.name, errs.join("; "));
        }
        Ok(())
    }

    /// kill -9 of netplugin only.
    pub fn kill9_netplugin(&self) -> Result<()> {
        if let Some(mut d) = self.procs().netplugin.take() {
            d.kill9()?;
        }
        Ok(())
    }

    /// kill -9 of volplugin only.
    pub fn kill9_volplugin(&self) -> Result<()> {
        if let Some(mut d) = self.procs().volplugin.take() {
            d.kill9()?;
        }
        Ok(())
    }

    /// kill -9 of ovs-vswitchd only (ovsdb-server keeps the configuration;
    /// [`Host::start_ovs`] starts it again).
    pub fn kill9_vswitchd(&self) -> Result<()> {
        if let Some(mut d) = self.procs().vswitchd.take() {
            d.kill9()?;
        }
        Ok(())
    }

    /// SIGTERM of netplugin (it must exit cleanly).
    pub fn stop_netplugin(&self) -> Result<()> {
        if let Some(mut d) = self.procs().netplugin.take() {
            let st = d.stop(Duration::from_secs(30))?;
            if !st.success() {
                bail!("netplugin on {} exited with {st}", self.name);
            }
        }
        Ok(())
    }

    pub fn netplugin_pid(&self) -> Option<u32> {
        let mut p = self.procs();
        let d = p.netplugin.as_mut()?;
        d.is_running().then(|| d.pid())
    }

    /// Pids of the daemons that run, by name (for `lab status`).
    pub fn daemon_pids(&self) -> Vec<(String, u32)> {
        let mut guard = self.procs();
        let p = &mut *guard;
        let mut out = Vec::new();
        for (n, d) in [
            ("ovsdb-server", &mut p.ovsdb),
            ("ovs-vswitchd", &mut p.vswitchd),
            ("netplugin", &mut p.netplugin),
            ("volplugin", &mut p.volplugin),
            ("containerd", &mut p.containerd),
            ("dockerd", &mut p.dockerd),
        ] {
            if let Some(d) = d.as_mut() {
                if d.is_running() {
                    out.push((n.to_string(), d.pid()));
                }
            }
        }
        out
    }

    /// Orderly stop: containers removed (while netplugin answers), then dockerd, containerd,
    /// the plugins and OVS. Returns the errors met.
    pub(super) fn shutdown(&self) -> Vec<String> {
        let mut errs = Vec::new();
        let running = self
            .procs()
            .dockerd
            .as_mut()
            .is_some_and(|d| d.is_running());
        if running {
            if let Ok(ids) = self.ok(&["ps", "-aq"]) {
                let ids: Vec<&str> = ids.split_whitespace().collect();
                for chunk in ids.chunks(30) {
                    let mut args = vec!["rm", "-f"];
                    args.extend_from_slice(chunk);
                    if let Err(e) = self.ok(&args) {
                        errs.push(format!("{e:#}"));
                    }
                }
            }
        }
        let mut guard = self.procs();
        let p = &mut *guard;
        for d in [
            &mut p.dockerd,
            &mut p.containerd,
            &mut p.netplugin,
            &mut p.volplugin,
            &mut p.vswitchd,
            &mut p.ovsdb,
        ] {
            if let Some(mut d) = d.take() {
                if let Err(e) = d.stop(STOP) {
                    errs.push(format!("host {}: {e:#}", self.name));
                }
            }
        }
        errs
    }

    // -----------------------------------------------------------------------------------------
    // Talking to the host.

    /// A docker CLI command aimed at this host's dockerd.
    pub fn docker_command(&self) -> Command {
        let host = format!("unix://{}", self.docker_socket().display());
        let mut c = Command::new(&self.bins.docker_cli);
        c.arg("-H")
            .arg(&host)
            .env("DOCKER_HOST", &host)
            .env("DOCKER_CONFIG", self.node.dir.join("client"))
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_TLS_VERIFY")
            .env_remove("DOCKER_CERT_PATH");
        c
    }

    /// `docker ARGS` with a time limit; its raw output.
    pub fn docker_with(&self, args: &[&str], timeout: Duration) -> Output {
        let mut c = self.docker_command();
        c.args(args);
        run_with_timeout(c, None, timeout).unwrap_or_else(|e| Output {
            status: std::os::unix::process::ExitStatusExt::from_raw(127 << 8),
            stdout: Vec::new(),
            stderr: format!("cannot run docker: {e}").into_bytes(),
        })
    }

    /// `docker ARGS` (120 s limit), which must succeed; its trimmed stdout.
    pub fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self.docker_with(args, Duration::from_secs(120));
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(anyhow!(
                "host {}: `docker {}` failed ({}): {}{}",
                self.name,
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim()
            ))
        }
    }

    /// `docker ARGS`, which must fail; its trimmed stderr.
    pub fn fails(&self, args: &[&str]) -> Result<String> {
        let out = self.docker_with(args, Duration::from_secs(120));
        if out.status.success() {
            bail!(
                "host {}: `docker {}` succeeded but should have failed: {}",
                self.name,
                args.join(" "),
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }

    /// `docker run -d --name NAME --network NET EXTRA busybox sleep 3600`: its id.
    pub fn sleeper(&self, name: &str, net: &str, extra: &[&str]) -> Result<String> {
        let mut args = vec![
            "run",
            "-d",
            "--name",
            name,
            "--network",
            net,
            "--stop-timeout",
            "1",
        ];
        args.extend_from_slice(extra);
        args.extend([crate::TEST_IMAGE, "sleep", "3600"]);
        self.ok(&args)
    }

    /// A field of container `name`'s endpoint on `net` (`IPAddress`, `MacAddress`,
    /// `EndpointID`, ...).
    pub fn container_net(&self, name: &str, net: &str, field: &str) -> Result<String> {
        let f = format!("{{{{(index .NetworkSettings.Networks \"{net}\").{field}}}}}");
        let v = self.ok(&["inspect", "-f", &f, name])?;
        if v.is_empty() || v == "<no value>" {
            bail!("host {}: {name} has no {field} on {net}", self.name);
        }
        Ok(v)
    }

    /// The pid of container `name`'s process (in this machine's pid namespace).
    pub fn container_pid(&self, name: &str) -> Result<u32> {
        Ok(self
            .ok(&["inspect", "-f", "{{.State.Pid}}", name])?
            .parse()?)
    }

    /// `netplugin ARGS --admin-socket <this host's>`: its stdout, or an error with its stderr.
    pub fn netplugin_text(&self, args: &[&str]) -> Result<String> {
        let mut c = Command::new(&self.bins.netplugin);
        c.args(args)
            .arg("--admin-socket")
            .arg(self.net_admin_socket());
        run_ok(c, &format!("netplugin admin on host {}", self.name))
    }

    /// The same with `--json`, decoded.
    pub fn netplugin_json(&self, args: &[&str]) -> Result<Value> {
        let mut a = args.to_vec();
        a.push("--json");
        let text = self.netplugin_text(&a)?;
        serde_json::from_str(&text).with_context(|| format!("netplugin {args:?}: {text}"))
    }

    /// volplugin's admin socket (`/run/berth/volplugin.sock` inside).
    pub fn vol_admin_socket(&self) -> PathBuf {
        self.node.run_dir().join("berth/volplugin.sock")
    }

    /// `volplugin ARGS --json --admin-socket <this host's>`, decoded.
    pub fn volplugin_json(&self, args: &[&str]) -> Result<Value> {
        let mut c = Command::new(&self.bins.volplugin);
        c.args(args)
            .arg("--json")
            .arg("--admin-socket")
            .arg(self.vol_admin_socket());
        let text = run_ok(c, &format!("volplugin admin on host {}", self.name))?;
        serde_json::from_str(&text).with_context(|| format!("volplugin {args:?}: {text}"))
    }

    /// A Docker plugin-protocol call on netplugin's socket, as dockerd makes it.
    pub fn net_call(&self, method: &str, body: Option<&str>) -> Result<(u16, Value)> {
        docker_call(&self.net_plugin_socket(), method, body)
    }

    /// `ovs-vsctl ARGS` against this host's OVS.
    pub fn vsctl(&self, args: &[&str]) -> Result<String> {
        vsctl(&self.ovs_rundir(), args).with_context(|| format!("host {}", self.name))
    }

    /// `ovs-ofctl -O OpenFlow13 COMMAND <br-berth mgmt socket> ARGS`.
    pub fn ofctl(&self, command: &str, args: &[&str]) -> Result<String> {
        ofctl(&self.ovs_rundir(), BRIDGE, command, args)
            .with_context(|| format!("host {}", self.name))
    }

    /// The last lines of a daemon's log (`netplugin`, `dockerd`, `ovs-vswitchd`, ...).
    pub fn log_tail(&self, daemon: &str, n: usize) -> String {
        tail_file(&self.node.log_dir().join(format!("{daemon}.log")), n)
    }
}

fn ovs_env(node: &Node, ovs_dir: &Path, c: &mut Command) {
    c.env("OVS_RUNDIR", "/var/run/openvswitch")
        .env("OVS_DBDIR", ovs_dir)
        .env("OVS_SYSCONFDIR", ovs_dir)
        .env("OVS_LOGDIR", node.log_dir());
}

/// ovsdb-server of `node` on `<ovs_dir>/conf.db` (created if missing), serving
/// `/var/run/openvswitch/db.sock` inside the node; waits for its socket and runs `init`.
pub fn start_ovsdb(node: &Node, ovs_dir: &Path) -> Result<Daemon> {
    std::fs::create_dir_all(ovs_dir)?;
    std::fs::create_dir_all(node.run_dir().join("openvswitch"))?;
    let db = ovs_dir.join("conf.db");
    if !db.exists() {
        let mut c = Command::new("ovsdb-tool");
        c.arg("create").arg(&db).arg(crate::ovs::SCHEMA);
        run_ok(c, "ovsdb-tool create")?;
    }
    let logs = node.log_dir();
    let sock = node.run_dir().join("openvswitch/db.sock");
    let _ = std::fs::remove_file(&sock);
    let mut c = node.command("ovsdb-server");
    ovs_env(node, ovs_dir, &mut c);
    c.arg(&db)
        .arg("--remote=punix:/var/run/openvswitch/db.sock")
        .arg("--unixctl=/var/run/openvswitch/ovsdb-server.ctl")
        .arg("--pidfile")
        .args(["-vconsole:off", "-vfile:info"])
        .arg(format!(
            "--log-file={}",
            logs.join("ovsdb-server.log").display()
        ));
    let mut d = Daemon::spawn("ovsdb-server.out", c, &logs)?;
    if !wait_until(Duration::from_secs(15), Duration::from_millis(20), || {
        !d.is_running() || std::os::unix::net::UnixStream::connect(&sock).is_ok()
    }) || !d.is_running()
    {
        let _ = d.stop(Duration::from_secs(5));
        bail!(
            "node {}: ovsdb-server did not come up:\n{}",
            node.name,
            tail_file(&logs.join("ovsdb-server.log"), 20)
        );
    }
    vsctl(&node.run_dir().join("openvswitch"), &["--no-wait", "init"])?;
    Ok(d)
}

/// ovs-vswitchd of `node` (its bridges' devices live in the node's network namespace).
pub fn start_vswitchd(node: &Node, ovs_dir: &Path) -> Result<Daemon> {
    let logs = node.log_dir();
    let ctl = node.run_dir().join("openvswitch/ovs-vswitchd.ctl");
    let _ = std::fs::remove_file(&ctl);
    let mut c = node.command("ovs-vswitchd");
    ovs_env(node, ovs_dir, &mut c);
    c.arg("unix:/var/run/openvswitch/db.sock")
        .arg("--unixctl=/var/run/openvswitch/ovs-vswitchd.ctl")
        .arg("--pidfile")
        .arg("-vconsole:off")
        .arg(format!(
            "--log-file={}",
            logs.join("ovs-vswitchd.log").display()
        ));
    let mut d = Daemon::spawn("ovs-vswitchd.out", c, &logs)?;
    if !wait_until(Duration::from_secs(15), Duration::from_millis(20), || {
        !d.is_running() || std::os::unix::net::UnixStream::connect(&ctl).is_ok()
    }) || !d.is_running()
    {
        let _ = d.stop(Duration::from_secs(5));
        bail!(
            "node {}: ovs-vswitchd did not come up:\n{}",
            node.name,
            tail_file(&logs.join("ovs-vswitchd.log"), 20)
        );
    }
    Ok(d)
}

/// `ovs-vsctl ARGS` against the OVS whose run dir (seen from outside) is `rundir`.
pub fn vsctl(rundir: &Path, args: &[&str]) -> Result<String> {
    let mut c = Command::new("ovs-vsctl");
    c.env("OVS_RUNDIR", rundir)
        .arg(format!("--db=unix:{}", rundir.join("db.sock").display()))
        .arg("--timeout=20")
        .args(args);
    run_ok(c, "ovs-vsctl")
}

/// `ovs-ofctl -O OpenFlow13 COMMAND <rundir>/<bridge>.mgmt ARGS`.
pub fn ofctl(rundir: &Path, bridge: &str, command: &str, args: &[&str]) -> Result<String> {
    let mut c = Command::new("ovs-ofctl");
    c.env("OVS_RUNDIR", rundir)
        .args(["--timeout=20", "-O", "OpenFlow13", command])
        .arg(rundir.join(format!("{bridge}.mgmt")))
        .args(args);
    run_ok(c, "ovs-ofctl")
}

/// `n_packets` of the flows in `dump` (an `ovs-ofctl dump-flows` output) whose line contains
/// every string of `has`, summed.
pub fn n_packets(dump: &str, has: &[&str]) -> u64 {
    dump.lines()
        .filter(|l| has.iter().all(|h| l.contains(h)))
        .filter_map(|l| {
            l.split(|ch: char| ch == ',' || ch.is_whitespace())
                .find_map(|kv| kv.strip_prefix("n_packets="))
                .and_then(|n| n.parse::<u64>().ok())
        })
        .sum()
}

/// A lab host in the fleet soak (`bin/soak_fleet.rs`).
impl SoakHost for Host {
    fn label(&self) -> String {
        format!("host {}", self.name)
    }

    fn host_id(&self) -> &str {
        &self.host_id
    }

    fn docker_with(&self, args: &[&str], timeout: Duration) -> Output {
        Host::docker_with(self, args, timeout)
    }

    fn kill9(&self, target: Target) -> Result<()> {
        match target {
            Target::Netplugin => self.kill9_netplugin(),
            Target::Volplugin => self.kill9_volplugin(),
            Target::Vswitchd => self.kill9_vswitchd(),
        }
    }

    fn restart(&self, target: Target) -> Result<()> {
        match target {
            Target::Netplugin => self.start_netplugin(),
            Target::Volplugin => self.start_volplugin(),
            Target::Vswitchd => self.start_ovs(),
        }
    }

    fn ports(&self) -> Result<Vec<String>> {
        Ok(self
            .vsctl(&["list-ports", BRIDGE])?
            .lines()
            .filter(|l| !l.is_empty() && *l != UPLINK)
            .map(str::to_string)
            .collect())
    }

    fn veths(&self) -> Result<Vec<String>> {
        // `7: vb0123456789@if6: <BROADCAST,...`
        Ok(self
            .node
            .ip(&["-o", "link", "show"])?
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .filter(|n| is_berth_veth(n))
            .collect())
    }

    fn endpoints(&self) -> Result<Vec<Value>> {
        Ok(self
            .netplugin_json(&["endpoint", "ls"])?
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    fn pool(&self, subnet: &str) -> Result<Value> {
        self.netplugin_json(&["pool", "show", subnet])
    }

    fn volumes(&self) -> Result<Vec<Value>> {
        match self.volplugin_json(&["volume", "ls"])? {
            Value::Array(list) => Ok(list),
            other => bail!(
                "host {}: volume ls --json is not a list: {other}",
                self.name
            ),
        }
    }

    /// The mounts are those of the host's mount namespace.
    fn volume_leftovers(&self) -> Result<Vec<String>> {
        let state = self.node.dir.join("vol-state");
        volume_leftovers(
            &self.volumes()?,
            &state.join("images"),
            &state.join("mounts"),
            &parse_mountinfo(&self.node.run("cat", &["/proc/self/mountinfo"])?),
        )
    }
}
