//! The fleet lab: three hosts, a trunk switch and a 3-member etcd cluster on this one machine,
//! each a network + mount namespace of its own ([`node::Node`]). See `docs/lab.md`.
//!
//! ```text
//!            etcd node: 198.18.0.2, .3, .4 (members m0, m1, m2; mg0)
//!                 |
//!   switch node:  mgmt (Linux bridge, untagged)      trunk (OVS, netdev, every VLAN)
//!                 |m-a      |m-b      |m-c            |t-a      |t-b      |t-c
//!   host a: mg0 198.18.0.11      up0 (trunk uplink of br-berth)
//!   host b: mg0 198.18.0.12      up0
//!   host c: mg0 198.18.0.13      up0
//! ```
//!
//! Each host runs ovsdb-server + ovs-vswitchd (netdev), netplugin (`--store etcd --host-id
//! host-X --uplink up0`), volplugin, containerd and dockerd, with a private `/run` (so the
//! default plugin dir, Docker socket, OVS run dir and admin sockets are its own). The switch
//! node runs its own OVS. Nothing has a route out; every address exists only inside the lab's
//! namespaces. Everything lives in `/tmp/blab-XXXXXX` (the lab id), the namespaces in
//! `/run/netns/<id>-<node>` and `<dir>/ns/<node>.mnt`, etcd's data in `/dev/shm/<id>-etcd`.
//! Dropping the [`Lab`] stops every process by pid, kills what is left in its namespaces and in
//! its containers' cgroups, releases the namespaces and removes every file; a signal (Ctrl-C)
//! does the same through the harness's emergency cleanup; [`clean_stale`] removes labs whose
//! owner process died.

pub mod host;
pub mod node;
pub mod relay;
pub mod traffic;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};

pub use host::{n_packets, Bins, Host, BRIDGE, MGMT_IF, UPLINK};
pub use node::Node;

use crate::harness::{self, CleanupGuard};
use crate::procs::{pid_alive, wait_until, Daemon};

/// The trunk switch's OVS bridge.
pub const TRUNK_BRIDGE: &str = "trunk";
/// Management network (etcd traffic), untagged on a Linux bridge in the switch node.
pub const MGMT_PREFIX: &str = "198.18.0";
/// etcd members' addresses.
pub const ETCD_IPS: [&str; 3] = ["198.18.0.2", "198.18.0.3", "198.18.0.4"];
/// Prefix of lab directories under /tmp (and of lab ids).
pub const LAB_PREFIX: &str = "blab-";

/// What to start.
#[derive(Clone, Debug)]
pub struct LabOptions {
    /// Host names (default `a`, `b`, `c`; at most 9).
    pub hosts: Vec<String>,
    /// Extra `netplugin serve` flags on every host (e.g. `--reconcile-interval 0.5`).
    pub netplugin_args: Vec<String>,
    /// Import the busybox test image ([`crate::TEST_IMAGE`]) into every dockerd.
    pub import_image: bool,
    /// Hosts run only their OVS: the caller starts netplugin ([`Host::start_netplugin`]) and
    /// drives it through its plugin socket as Docker would. No dockerd, containerd, volplugin
    /// or test image, so up to [`MAX_OVS_ONLY_HOSTS`] hosts fit (the fleet-scale benchmark).
    pub ovs_only: bool,
}

/// Hosts of a lab with every daemon.
pub const MAX_HOSTS: usize = 9;
/// Hosts of an [`LabOptions::ovs_only`] lab (management addresses .11 to .70).
pub const MAX_OVS_ONLY_HOSTS: usize = 60;

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions {
            hosts: ["a", "b", "c"].iter().map(|s| s.to_string()).collect(),
            netplugin_args: Vec::new(),
            import_image: true,
            ovs_only: false,
        }
    }
}

/// The switch node: its OVS with the `trunk` bridge.
pub struct Switch {
    pub node: Node,
    ovsdb: Option<Daemon>,
    vswitchd: Option<Daemon>,
}

impl Switch {
    /// The switch OVS's run dir, seen from outside.
    pub fn rundir(&self) -> PathBuf {
        self.node.run_dir().join("openvswitch")
    }

    pub fn vsctl(&self, args: &[&str]) -> Result<String> {
        host::vsctl(&self.rundir(), args).context("the switch")
    }

    /// `ovs-ofctl COMMAND trunk ARGS` on the switch.
    pub fn ofctl(&self, command: &str, args: &[&str]) -> Result<String> {
        host::ofctl(&self.rundir(), TRUNK_BRIDGE, command, args).context("the switch")
    }

    /// `ovs-appctl fdb/show trunk`: the switch's MAC table.
    pub fn fdb(&self) -> Result<String> {
        let mut c = Command::new("ovs-appctl");
        c.arg("-t")
            .arg(self.rundir().join("ovs-vswitchd.ctl"))
            .args(["fdb/show", TRUNK_BRIDGE]);
        node::run_ok(c, "ovs-appctl fdb/show on the switch")
    }

    /// The switch port (`t-<host>`) on which it learned `mac` in `vlan`, if any.
    pub fn port_of_mac(&self, vlan: u16, mac: &str) -> Result<Option<String>> {
        let fdb = self.fdb()?;
        let ofport = fdb.lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3 && f[1] == vlan.to_string() && f[2].eq_ignore_ascii_case(mac))
                .then(|| f[0].to_string())
        });
        let Some(ofport) = ofport else {
            return Ok(None);
        };
        for p in self.vsctl(&["list-ports", TRUNK_BRIDGE])?.lines() {
            if self.vsctl(&["get", "Interface", p, "ofport"])?.trim() == ofport {
                return Ok(Some(p.to_string()));
            }
        }
        Ok(Some(format!("ofport {ofport}")))
    }
}

pub struct EtcdMember {
    pub name: String,
    pub ip: String,
    daemon: Option<Daemon>,
}

impl EtcdMember {
    pub fn client_url(&self) -> String {
        format!("http://{}:2379", self.ip)
    }
}

pub struct Lab {
    /// `blab-XXXXXX`: names the dir, the namespaces and the containers' cgroup parents.
    pub id: String,
    /// `/tmp/<id>`.
    pub dir: PathBuf,
    pub hosts: Vec<Host>,
    pub switch: Option<Switch>,
    pub etcd_node: Option<Node>,
    pub etcd: Vec<EtcdMember>,
    /// Nodes attached to the switch by [`Lab::attach_peer`] (a router, a client).
    peers: Mutex<Vec<Node>>,
    etcd_data: PathBuf,
    _cleanup: Option<CleanupGuard>,
}

/// Tools the lab runs.
pub fn require_tools() -> Result<()> {
    crate::ovs::require_tools()?;
    harness::require_root_and_tools(&[
        "unshare",
        "nsenter",
        "mount",
        "ethtool",
        "ovs-appctl",
        "etcd",
        "containerd",
        "containerd-shim-runc-v2",
        "runc",
        "dockerd",
        "tar",
    ])
    .context("the lab needs util-linux, iproute2, ethtool, openvswitch-switch, etcd-server, docker.io, containerd, runc")
}

impl Lab {
    /// Starts the lab (about 20–40 s). On failure everything started is removed again.
    pub fn start(opts: LabOptions) -> Result<Lab> {
        require_tools()?;
        let max = if opts.ovs_only {
            MAX_OVS_ONLY_HOSTS
        } else {
            MAX_HOSTS
        };
        if opts.hosts.is_empty() || opts.hosts.len() > max {
            bail!("a lab has 1 to {max} hosts");
        }
        for e in clean_stale() {
            eprintln!("lab: cleaning a stale lab: {e}");
        }
        let bins = if opts.ovs_only {
            // Nothing runs them: no need to build or find them.
            Bins {
                netplugin: crate::plugins::binary("netplugin")?,
                volplugin: PathBuf::new(),
                docker_cli: PathBuf::new(),
            }
        } else {
            Bins {
                netplugin: crate::plugins::binary("netplugin")?,
                volplugin: crate::plugins::binary("volplugin")?,
                docker_cli: docker_cli()?,
            }
        };
        let dir = tempfile::Builder::new()
            .prefix(LAB_PREFIX)
            .rand_bytes(6)
            .tempdir_in("/tmp")?
            .keep();
        let id = dir
            .file_name()
            .and_then(|n| n.to_str())
            .context("lab dir name")?
            .to_string();
        std::fs::write(dir.join("owner.pid"), format!("{}\n", std::process::id()))?;
        let cleanup = {
            let (id, dir) = (id.clone(), dir.clone());
            harness::register_cleanup(move || {
                for e in force_teardown(&id, &dir) {
                    eprintln!("lab teardown: {e}");
                }
            })
        };
        let mut lab = Lab {
            etcd_data: Path::new("/dev/shm").join(format!("{id}-etcd")),
            id,
            dir,
            hosts: Vec::new(),
            switch: None,
            etcd_node: None,
            etcd: Vec::new(),
            peers: Mutex::new(Vec::new()),
            _cleanup: Some(cleanup),
        };
        // From here on an error drops `lab`, which removes what was made.
        let t0 = Instant::now();
        lab.build(&opts, bins)?;
        println!(
            "lab {} up in {:.1}s: hosts {}",
            lab.id,
            t0.elapsed().as_secs_f64(),
            opts.hosts.join(", ")
        );
        Ok(lab)
    }

    fn build(&mut self, opts: &LabOptions, bins: Bins) -> Result<()> {
        let ns_dir = self.dir.join("ns");
        std::fs::create_dir_all(&ns_dir)?;
        // Mount namespace files may only be bind-mounted on a private mount.
        node::run_ok(
            cmd("mount", &["--bind", &s(&ns_dir), &s(&ns_dir)]),
            "bind-mounting the lab's ns dir",
        )?;
        node::run_ok(
            cmd("mount", &["--make-private", &s(&ns_dir)]),
            "making the lab's ns dir private",
        )?;

        // The switch: management bridge and trunk OVS.
        let sw = Node::create(&self.dir, &self.id, "sw")?;
        self.switch = Some(Switch {
            node: sw,
            ovsdb: None,
            vswitchd: None,
        });
        let sw = &self.switch.as_ref().context("switch")?.node;
        sw.ip(&["link", "add", "mgmt", "type", "bridge"])?;
        sw.ip(&["link", "set", "mgmt", "up"])?;

        // etcd's node on the management network.
        let etcd_node = Node::create(&self.dir, &self.id, "etcd")?;
        mgmt_link(sw, &etcd_node, &ETCD_IPS)?;
        self.etcd_node = Some(etcd_node);

        // Hosts: nodes, management and trunk links.
        let endpoints = ETCD_IPS
            .iter()
            .map(|ip| format!("http://{ip}:2379"))
            .collect::<Vec<_>>()
            .join(",");
        for (i, name) in opts.hosts.iter().enumerate() {
            let node = Node::create(&self.dir, &self.id, name)?;
            let ip = format!("{MGMT_PREFIX}.{}", 11 + i);
            mgmt_link(sw, &node, &[&ip])?;
            let sw_port = format!("t-{name}");
            node::run_ok(
                cmd(
                    "ip",
                    &[
                        "link",
                        "add",
                        UPLINK,
                        "netns",
                        node.netns_name(),
                        "type",
                        "veth",
                        "peer",
                        "name",
                        &sw_port,
                        "netns",
                        sw.netns_name(),
                    ],
                ),
                "creating a trunk veth",
            )?;
            node.ip(&["link", "set", UPLINK, "up"])?;
            sw.ip(&["link", "set", &sw_port, "up"])?;
            // netdev datapath: TX checksum offload off on both ends (TCP stalls otherwise).
            node.run("ethtool", &["-K", UPLINK, "tx", "off"])?;
            sw.run("ethtool", &["-K", &sw_port, "tx", "off"])?;
            self.hosts.push(Host::new(
                node,
                &ip,
                bins.clone(),
                &endpoints,
                opts.netplugin_args.clone(),
                &self.id,
            )?);
        }

        // The trunk switch: every port a trunk of every VLAN; flows: NORMAL (the test adds
        // counting flows above it).
        {
            let sw = self.switch.as_mut().context("switch")?;
            let ovs_dir = sw.node.dir.join("ovs");
            sw.ovsdb = Some(host::start_ovsdb(&sw.node, &ovs_dir)?);
            sw.vswitchd = Some(host::start_vswitchd(&sw.node, &ovs_dir)?);
            let mut args: Vec<String> = [
                "add-br",
                TRUNK_BRIDGE,
                "--",
                "set",
                "bridge",
                TRUNK_BRIDGE,
                "datapath_type=netdev",
                "fail_mode=secure",
                "protocols=OpenFlow13",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            for h in &opts.hosts {
                args.extend(["--", "add-port", TRUNK_BRIDGE].map(String::from));
                args.push(format!("t-{h}"));
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            sw.vsctl(&args)?;
            let mgmt = sw.rundir().join(format!("{TRUNK_BRIDGE}.mgmt"));
            if !wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
                mgmt.exists()
            }) {
                bail!("the switch's bridge did not come up");
            }
            sw.ofctl("add-flow", &["priority=0,actions=NORMAL"])?;
        }

        // etcd.
        self.start_etcd()?;

        // Hosts' daemons, in parallel.
        let t = Instant::now();
        let errs: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = self
                .hosts
                .iter()
                .map(|h| {
                    s.spawn(move || {
                        if opts.ovs_only {
                            h.start_ovs()
                        } else {
                            h.start_all()
                        }
                        .map_err(|e| format!("{e:#}"))
                    })
                })
                .collect();
            handles
                .into_iter()
                .filter_map(|h| match h.join() {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(e),
                    Err(_) => Some("a host start thread panicked".into()),
                })
                .collect()
        });
        if !errs.is_empty() {
            bail!("starting hosts: {}", errs.join("\n"));
        }
        println!(
            "lab {}: hosts started in {:.1}s",
            self.id,
            t.elapsed().as_secs_f64()
        );
        if opts.import_image && !opts.ovs_only {
            self.import_image()?;
        }
        Ok(())
    }

    fn start_etcd(&mut self) -> Result<()> {
        let node = self.etcd_node.as_ref().context("etcd node")?;
        std::fs::create_dir_all(&self.etcd_data)?;
        let cluster = ETCD_IPS
            .iter()
            .enumerate()
            .map(|(i, ip)| format!("m{i}=http://{ip}:2380"))
            .collect::<Vec<_>>()
            .join(",");
        for (i, ip) in ETCD_IPS.iter().enumerate() {
            let name = format!("m{i}");
            let mut c = node.command("etcd");
            c.args(["--name", &name])
                .arg("--data-dir")
                .arg(self.etcd_data.join(&name))
                .args(["--listen-client-urls", &format!("http://{ip}:2379")])
                .args(["--advertise-client-urls", &format!("http://{ip}:2379")])
                .args(["--listen-peer-urls", &format!("http://{ip}:2380")])
                .args([
                    "--initial-advertise-peer-urls",
                    &format!("http://{ip}:2380"),
                ])
                .args(["--initial-cluster", &cluster])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", &self.id])
                .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
                .args(["--logger", "zap", "--log-level", "warn"]);
            let d = Daemon::spawn(&format!("etcd-{name}"), c, &node.log_dir())?;
            self.etcd.push(EtcdMember {
                name,
                ip: ip.to_string(),
                daemon: Some(d),
            });
        }
        let ok = wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
            ETCD_IPS.iter().all(|ip| {
                node.in_netns(|| http_get(ip, 2379, "/health"))
                    .ok()
                    .and_then(|r| r.ok())
                    .is_some_and(|b| b.contains("\"health\":\"true\""))
            })
        });
        if !ok {
            let logs: Vec<String> = self
                .etcd
                .iter()
                .map(|m| {
                    format!(
                        "{}: {}",
                        m.name,
                        crate::procs::tail_file(
                            &node.log_dir().join(format!("etcd-{}.log", m.name)),
                            10
                        )
                    )
                })
                .collect();
            bail!("etcd not healthy within 30 s:\n{}", logs.join("\n"));
        }
        Ok(())
    }

    fn import_image(&self) -> Result<()> {
        let rootfs = self.dir.join("image-rootfs");
        let tar = self.dir.join("image.tar");
        crate::docker::build_busybox_rootfs(&rootfs)?;
        node::run_ok(
            cmd(
                "tar",
                &[
                    "--numeric-owner",
                    "--owner=0",
                    "--group=0",
                    "-C",
                    &s(&rootfs),
                    "-cf",
                    &s(&tar),
                    ".",
                ],
            ),
            "tar of the test image",
        )?;
        let tar_s = s(&tar);
        let errs: Vec<String> = std::thread::scope(|sc| {
            let hs: Vec<_> = self
                .hosts
                .iter()
                .map(|h| {
                    let tar_s = &tar_s;
                    sc.spawn(move || {
                        h.ok(&[
                            "import",
                            "--change",
                            r#"CMD ["sh"]"#,
                            tar_s,
                            crate::TEST_IMAGE,
                        ])
                        .map(|_| ())
                        .map_err(|e| format!("{e:#}"))
                    })
                })
                .collect();
            hs.into_iter()
                .filter_map(|h| {
                    h.join()
                        .unwrap_or(Err("import thread panicked".into()))
                        .err()
                })
                .collect()
        });
        let _ = std::fs::remove_dir_all(&rootfs);
        let _ = std::fs::remove_file(&tar);
        if !errs.is_empty() {
            bail!("importing the test image: {}", errs.join("; "));
        }
        Ok(())
    }

    /// The host named `name` (`a`, `b`, `c`).
    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no lab host {name}"))
    }

    pub fn switch(&self) -> &Switch {
        self.switch.as_ref().expect("the lab has a switch")
    }

    /// Comma-separated etcd client URLs (as `--etcd-endpoints` takes them).
    pub fn etcd_endpoints(&self) -> String {
        self.etcd
            .iter()
            .map(EtcdMember::client_url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A node of its own on the trunk switch: `eth0` with `cidr`, an access port of `vlan` on
    /// the switch (like a router or a machine outside the fleet on that VLAN). Removed with the
    /// lab, or by [`Lab::remove_peer`].
    pub fn attach_peer(&self, name: &str, vlan: u16, cidr: &str) -> Result<()> {
        let sw = self.switch();
        let node = Node::create(&self.dir, &self.id, name)?;
        let port = format!("p-{name}");
        let res = (|| -> Result<()> {
            node::run_ok(
                cmd(
                    "ip",
                    &[
                        "link",
                        "add",
                        "eth0",
                        "netns",
                        node.netns_name(),
                        "type",
                        "veth",
                        "peer",
                        "name",
                        &port,
                        "netns",
                        sw.node.netns_name(),
                    ],
                ),
                "creating a peer's veth",
            )?;
            node.ip(&["addr", "add", cidr, "dev", "eth0"])?;
            node.ip(&["link", "set", "eth0", "up"])?;
            sw.node.ip(&["link", "set", &port, "up"])?;
            node.run("ethtool", &["-K", "eth0", "tx", "off"])?;
            sw.node.run("ethtool", &["-K", &port, "tx", "off"])?;
            sw.vsctl(&["add-port", TRUNK_BRIDGE, &port, &format!("tag={vlan}")])?;
            Ok(())
        })();
        if let Err(e) = res {
            for e2 in node.destroy() {
                eprintln!("lab: {e2}");
            }
            return Err(e);
        }
        self.peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(node);
        Ok(())
    }

    /// The peer node `name` made by [`Lab::attach_peer`]: runs `f` with it.
    pub fn with_peer<T>(&self, name: &str, f: impl FnOnce(&Node) -> T) -> Result<T> {
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let node = peers
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| anyhow!("no peer {name}"))?;
        Ok(f(node))
    }

    /// Removes a peer: its switch port and its namespaces.
    pub fn remove_peer(&self, name: &str) -> Result<()> {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let Some(i) = peers.iter().position(|n| n.name == name) else {
            return Ok(());
        };
        let node = peers.remove(i);
        let _ = self.switch().vsctl(&[
            "--if-exists",
            "del-port",
            TRUNK_BRIDGE,
            &format!("p-{name}"),
        ]);
        let errs = node.destroy();
        if !errs.is_empty() {
            bail!("removing peer {name}: {}", errs.join("; "));
        }
        Ok(())
    }

    /// A shell-friendly description: one `KEY=value` line per fact (for `lab status`).
    pub fn describe(&self) -> String {
        let mut out = format!("LAB_ID={}\nLAB_DIR={}\n", self.id, self.dir.display());
        out += &format!("ETCD_ENDPOINTS={}\n", self.etcd_endpoints());
        for h in &self.hosts {
            let n = h.name.to_uppercase();
            out += &format!("HOST_{n}_NETNS={}\n", h.node.netns.display());
            out += &format!("HOST_{n}_MNTNS={}\n", h.node.mntns.display());
            out += &format!(
                "HOST_{n}_DOCKER_HOST=unix://{}\n",
                h.docker_socket().display()
            );
            out += &format!(
                "HOST_{n}_NETPLUGIN_ADMIN={}\n",
                h.net_admin_socket().display()
            );
            out += &format!("HOST_{n}_MGMT_IP={}\n", h.mgmt_ip);
            out += &format!("HOST_{n}_HOST_ID={}\n", h.host_id);
        }
        if let Some(sw) = &self.switch {
            out += &format!("SWITCH_NETNS={}\n", sw.node.netns.display());
            out += &format!("SWITCH_MNTNS={}\n", sw.node.mntns.display());
            out += &format!("SWITCH_OVS_RUNDIR={}\n", sw.rundir().display());
        }
        if let Some(n) = &self.etcd_node {
            out += &format!("ETCD_NETNS={}\n", n.netns.display());
        }
        out
    }

    /// Stops and removes everything (also done on drop); returns every error met.
    pub fn teardown(&mut self) -> Vec<String> {
        let mut errs: Vec<String> = std::thread::scope(|s| {
            let hs: Vec<_> = self
                .hosts
                .iter()
                .map(|h| s.spawn(move || h.shutdown()))
                .collect();
            hs.into_iter()
                .flat_map(|h| h.join().unwrap_or_default())
                .collect()
        });
        if let Some(sw) = self.switch.as_mut() {
            for d in [sw.vswitchd.take(), sw.ovsdb.take()].into_iter().flatten() {
                let mut d = d;
                if let Err(e) = d.stop(Duration::from_secs(10)) {
                    errs.push(format!("switch: {e:#}"));
                }
            }
        }
        for m in &mut self.etcd {
            if let Some(mut d) = m.daemon.take() {
                if let Err(e) = d.stop(Duration::from_secs(10)) {
                    errs.push(format!("etcd {}: {e:#}", m.name));
                }
            }
        }
        errs.extend(force_teardown(&self.id, &self.dir));
        self.hosts.clear();
        self.switch = None;
        self.etcd_node = None;
        self.etcd.clear();
        self.peers.lock().unwrap_or_else(|e| e.into_inner()).clear();
        errs
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for e in self.teardown() {
            eprintln!("lab teardown: {e}");
        }
    }
}

/// Removes everything of the lab `id` in `dir` by its names alone (used on drop after the
/// orderly stops, on a signal, and for stale labs): SIGKILL of every process left in its
/// namespaces and in its containers' cgroups, the namespaces released, the cgroup dirs, mounts
/// and files removed. Touches nothing that does not carry the lab id. Idempotent.
pub fn force_teardown(id: &str, dir: &Path) -> Vec<String> {
    let mut errs = Vec::new();
    if !id.starts_with(LAB_PREFIX) || id.contains('/') {
        return vec![format!("not a lab id: {id}")];
    }
    // Namespace files of this lab.
    let mut netns: Vec<PathBuf> = std::fs::read_dir(node::NETNS_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{id}-"))
        })
        .map(|e| e.path())
        .collect();
    netns.sort();
    let mntns: Vec<PathBuf> = std::fs::read_dir(dir.join("ns"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "mnt"))
        .collect();
    let files: Vec<&Path> = netns
        .iter()
        .chain(mntns.iter())
        .map(PathBuf::as_path)
        .collect();
    // Containers (own namespaces, but our cgroup parents), then everything in our namespaces.
    let containers = node::pids_in_cgroup_prefix(&format!("{id}-"));
    if !containers.is_empty() {
        errs.extend(node::kill_all(&containers, "lab containers"));
    }
    let left = node::pids_in_namespaces(&files);
    if !left.is_empty() {
        errs.extend(node::kill_all(&left, "lab processes"));
    }
    for f in &files {
        let _ = nix::mount::umount2(*f, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_file(f);
    }
    // The containers' cgroup dirs (dockerd's --cgroup-parent /<id>-<host>).
    for ctrl in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        for e in std::fs::read_dir(ctrl.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{id}-"))
            {
                for sub in std::fs::read_dir(e.path()).into_iter().flatten().flatten() {
                    if sub.path().is_dir() {
                        let _ = std::fs::remove_dir(sub.path());
                    }
                }
                if let Err(err) = std::fs::remove_dir(e.path()) {
                    errs.push(format!("rmdir {}: {err}", e.path().display()));
                }
            }
        }
    }
    for m in crate::docker::mounts_under(dir) {
        let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
    }
    let etcd_data = Path::new("/dev/shm").join(format!("{id}-etcd"));
    let _ = std::fs::remove_dir_all(etcd_data);
    if dir.exists() {
        if let Err(e) = std::fs::remove_dir_all(dir) {
            errs.push(format!("removing {}: {e}", dir.display()));
        }
    }
    errs
}

/// Tears down every lab under /tmp whose owner process is gone (a test killed with SIGKILL);
/// returns what it did or met.
pub fn clean_stale() -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/tmp").into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with(LAB_PREFIX) {
            continue;
        }
        let owner = std::fs::read_to_string(e.path().join("owner.pid"))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        if owner.is_some_and(pid_alive) {
            continue;
        }
        // A lab being created right now has its owner.pid written first thing; one without
        // it and younger than a minute may be starting.
        if owner.is_none()
            && e.metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().unwrap_or_default() < Duration::from_secs(60))
        {
            continue;
        }
        out.push(format!("{name} (owner {owner:?} gone)"));
        out.extend(force_teardown(&name, &e.path()));
    }
    out
}

/// The lab whose owner is alive and whose dir is newest (for `lab shell` and `lab down`).
pub fn current_lab_dir() -> Option<PathBuf> {
    let mut best: Option<(std::time::SystemTime, PathBuf)> = None;
    for e in std::fs::read_dir("/tmp").into_iter().flatten().flatten() {
        if !e.file_name().to_string_lossy().starts_with(LAB_PREFIX) {
            continue;
        }
        let t = e.metadata().and_then(|m| m.modified()).ok()?;
        if best.as_ref().is_none_or(|(bt, _)| t > *bt) {
            best = Some((t, e.path()));
        }
    }
    best.map(|(_, p)| p)
}

fn docker_cli() -> Result<PathBuf> {
    let p = Path::new("/usr/bin/docker");
    if p.exists() {
        return Ok(p.to_path_buf());
    }
    harness::find_binary("docker").ok_or_else(|| anyhow!("docker CLI not found"))
}

fn cmd(program: &str, args: &[&str]) -> Command {
    let mut c = Command::new(program);
    c.args(args);
    c
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// A veth from `node` (`mg0`, with `ips` as /24s) to the switch's management bridge.
fn mgmt_link(sw: &Node, node: &Node, ips: &[&str]) -> Result<()> {
    let port = format!("m-{}", node.name);
    node::run_ok(
        cmd(
            "ip",
            &[
                "link",
                "add",
                MGMT_IF,
                "netns",
                node.netns_name(),
                "type",
                "veth",
                "peer",
                "name",
                &port,
                "netns",
                sw.netns_name(),
            ],
        ),
        "creating a management veth",
    )?;
    sw.ip(&["link", "set", &port, "master", "mgmt", "up"])?;
    for ip in ips {
        node.ip(&["addr", "add", &format!("{ip}/24"), "dev", MGMT_IF])?;
    }
    node.ip(&["link", "set", MGMT_IF, "up"])?;
    Ok(())
}

/// `GET path` on ip:port (from the calling thread's network namespace); the body.
pub fn http_get(ip: &str, port: u16, path: &str) -> Result<String> {
    let addr = format!("{ip}:{port}").parse()?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {ip}\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    Ok(out.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
}

/// What the lab's etcd cluster has served so far, summed over the members (from their
/// `/metrics`; the scrapes themselves are HTTP, not gRPC, and not counted).
#[derive(Clone, Copy, Debug, Default)]
pub struct EtcdTraffic {
    /// Unary gRPC calls, and messages received on streams (lease keep-alives, watch requests).
    pub requests: f64,
    /// gRPC bytes received from and sent to clients.
    pub bytes: f64,
}

impl Lab {
    pub fn etcd_traffic(&self) -> Result<EtcdTraffic> {
        let node = self.etcd_node.as_ref().context("etcd node")?;
        let mut t = EtcdTraffic::default();
        for ip in ETCD_IPS {
            let text = node.in_netns(|| http_get(ip, 2379, "/metrics"))??;
            let value = |l: &str| l.rsplit(' ').next()?.parse::<f64>().ok();
            for l in text.lines() {
                if (l.starts_with("grpc_server_handled_total") && l.contains("grpc_type=\"unary\""))
                    || (l.starts_with("grpc_server_msg_received_total")
                        && !l.contains("grpc_type=\"unary\""))
                {
                    t.requests += value(l).unwrap_or(0.0);
                } else if l.starts_with("etcd_network_client_grpc_received_bytes_total")
                    || l.starts_with("etcd_network_client_grpc_sent_bytes_total")
                {
                    t.bytes += value(l).unwrap_or(0.0);
                }
            }
        }
        Ok(t)
    }
}
