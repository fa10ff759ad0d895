//! netplugin end to end: a private dockerd, a private Open vSwitch (netdev datapath) in the host
//! network namespace, netplugin serving /run/docker/plugins/berth-net.sock, the real docker CLI
//! and the busybox image. Traffic only flows between containers of this test, on 10.231.x
//! subnets that exist only inside them. Needs root, docker.io, containerd, runc,
//! busybox-static, openvswitch-switch, iproute2 and util-linux (nsenter).

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use integration::lab::traffic::tcp_send_from;
use integration::netplugin::Netplugin;
use integration::ovs::OvsEnv;
use integration::plugins::{binary, DOCKER_PLUGIN_DIR};
use integration::procs::{run_with_timeout, wait_until};
use integration::{
    berth_network_args, harness, DockerEnv, DockerOptions, DockerVersion, TEST_IMAGE,
};
use serde_json::{json, Value};

/// netplugin's `--release-leaked-after` here: short, so the test sees the sweep act.
const LEAK_GRACE: &str = "2s";

struct Ctx {
    docker: DockerEnv,
    net: Mutex<Netplugin>,
    ovs: Mutex<OvsEnv>,
    bridge: String,
    _work: tempfile::TempDir,
}

fn setup() -> Result<Ctx> {
    integration::ovs::require_tools()?;
    harness::require_root_and_tools(&["dockerd", "containerd", "runc"])?;
    let bin = binary("netplugin")?;
    let mut ovs = OvsEnv::start()?;
    let bridge = format!("brt{}", std::process::id() % 1_000_000);
    ovs.own_link(&bridge);
    let work = tempfile::Builder::new().prefix("bn-").tempdir_in("/tmp")?;
    let args: Vec<String> = [
        "--ovsdb",
        &ovs.endpoint(),
        "--ovs-rundir",
        &ovs.rundir().to_string_lossy(),
        "--bridge",
        &bridge,
        "--datapath",
        "netdev",
        "--host-id",
        "test-host",
        "--metrics",
        "off",
        "--vlan-range",
        "3000-3009",
        "--default-pools",
        "10.231.192.0/20",
        "--reconcile-interval",
        "0.5",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let docker = DockerEnv::start_with(DockerOptions {
        // Containers keep running across a dockerd restart (the restart test's traffic).
        extra_dockerd_args: vec!["--live-restore".into()],
        ..Default::default()
    })?;
    let mut args = args;
    args.extend([
        "--docker-socket".to_string(),
        docker.socket_path().to_string_lossy().into_owned(),
        "--docker-sync-interval".into(),
        "0.5".into(),
        "--release-leaked-after".into(),
        LEAK_GRACE.into(),
    ]);
    let mut net = Netplugin::new(
        bin,
        work.path(),
        std::path::Path::new(DOCKER_PLUGIN_DIR),
        args,
    );
    net.start()?;
    Ok(Ctx {
        docker,
        net: Mutex::new(net),
        ovs: Mutex::new(ovs),
        bridge,
        _work: work,
    })
}

impl Drop for Ctx {
    fn drop(&mut self) {
        // Containers and networks first, while netplugin still answers their deletes.
        if let Ok(ids) = self.docker.ok(&["ps", "-aq"]) {
            for id in ids.split_whitespace() {
                let _ = self.docker.ok(&["rm", "-f", id]);
            }
        }
        if let Ok(nets) = self
            .docker
            .ok(&["network", "ls", "-q", "--filter", "driver=berth-net"])
        {
            for n in nets.split_whitespace() {
                let _ = self.docker.ok(&["network", "rm", n]);
            }
        }
        if let Ok(mut net) = self.net.lock() {
            if let Err(e) = net.stop() {
                eprintln!("teardown: {e:#}");
            }
        }
        // OvsEnv's drop removes leftover ports' veths, the bridge device and stops OVS.
    }
}

/// Parsed `X packets transmitted, Y packets received`.
fn ping_counts(out: &str) -> Option<(u32, u32)> {
    let line = out.lines().find(|l| l.contains("packets transmitted"))?;
    let mut nums = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok());
    Some((nums.next()?, nums.next()?))
}

impl Ctx {
    fn net(&self) -> MutexGuard<'_, Netplugin> {
        self.net.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn ovs(&self) -> MutexGuard<'_, OvsEnv> {
        self.ovs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn d(&self, args: &[&str]) -> Result<String> {
        self.docker.ok(args)
    }

    fn create_net(&self, name: &str, subnet: &str, extra: &[&str]) -> Result<String> {
        let mut args = vec![
            "network",
            "create",
            "-d",
            "berth-net",
            "--ipam-driver",
            "berth-net",
        ];
        if !subnet.is_empty() {
            args.extend(["--subnet", subnet]);
        }
        args.extend_from_slice(extra);
        args.push(name);
        self.d(&args)
    }

    /// A long-running container on `net`.
    fn sleeper(&self, name: &str, net: &str, extra: &[&str]) -> Result<String> {
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
        args.extend([TEST_IMAGE, "sleep", "3600"]);
        self.d(&args)
    }

    fn ip(&self, name: &str, net: &str) -> Result<String> {
        let f = format!("{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}}");
        let ip = self.d(&["inspect", "-f", &f, name])?;
        ensure!(
            !ip.is_empty() && ip != "<no value>",
            "{name} has no address on {net}"
        );
        Ok(ip)
    }

    fn pid(&self, name: &str) -> Result<u32> {
        Ok(self
            .d(&["inspect", "-f", "{{.State.Pid}}", name])?
            .parse()?)
    }

    /// Pings from inside `name`'s network namespace with the host's busybox (independent of
    /// dockerd, so it runs across a dockerd restart). Returns (sent, received).
    fn ping(&self, name: &str, ip: &str, count: u32, interval: &str) -> Result<(u32, u32)> {
        let pid = self.pid(name)?.to_string();
        ping_ns(&pid, ip, count, interval)
    }

    fn rm(&self, names: &[&str]) {
        for n in names {
            let _ = self.docker.ok(&["rm", "-f", n]);
        }
    }

    fn endpoints(&self) -> Result<Vec<Value>> {
        let v = self.net().admin_json(&["endpoint", "ls"])?;
        Ok(v.as_array().cloned().unwrap_or_default())
    }

    /// Ports on the test bridge and veths named like ours in the host namespace.
    fn leftovers(&self) -> Result<(Vec<String>, Vec<String>)> {
        let ports = self.ovs().ports(&self.bridge)?;
        let links: Vec<String> = std::fs::read_dir("/sys/class/net")?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| (n.starts_with("vb") || n.starts_with("tb")) && n.len() == 12)
            .collect();
        Ok((ports, links))
    }
}

fn ping_ns(pid: &str, ip: &str, count: u32, interval: &str) -> Result<(u32, u32)> {
    let mut c = std::process::Command::new("nsenter");
    c.args([
        "-t",
        pid,
        "-n",
        "busybox",
        "ping",
        "-c",
        &count.to_string(),
        "-i",
        interval,
        "-W",
        "1",
        ip,
    ]);
    let out = run_with_timeout(c, None, Duration::from_secs(u64::from(count) + 30))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    ping_counts(&text).ok_or_else(|| {
        anyhow!(
            "ping output not understood: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

// ---------------------------------------------------------------------------------------------

fn t_protocol(c: &Ctx) -> Result<()> {
    let net = c.net();
    let (s, v) = net.call("Plugin.Activate", None)?;
    ensure!(
        s == 200 && v["Implements"] == serde_json::json!(["NetworkDriver", "IpamDriver"]),
        "{v}"
    );
    let (_, v) = net.call("NetworkDriver.GetCapabilities", None)?;
    ensure!(
        v["Scope"] == "local" && v["ConnectivityScope"] == "global",
        "{v}"
    );
    let (_, v) = net.call("IpamDriver.GetCapabilities", None)?;
    ensure!(v["RequiresRequestReplay"] == false, "{v}");
    let (s, v) = net.call("IpamDriver.RequestAddress", None)?;
    ensure!(
        s != 200 && v["Error"].as_str().unwrap_or("").contains("PoolID"),
        "{s} {v}"
    );
    Ok(())
}

fn t_ping_and_tcp(c: &Ctx) -> Result<()> {
    c.create_net("n1", "10.231.1.0/24", &["-o", "vlan=101"])?;
    c.sleeper("a1", "n1", &[])?;
    c.sleeper("a2", "n1", &[])?;
    let ip2 = c.ip("a2", "n1")?;
    let (sent, got) = c.ping("a1", &ip2, 3, "0.2")?;
    ensure!(got == sent, "ping a1 → a2 ({ip2}): {got}/{sent}");
    // docker exec works too (the container's own busybox).
    c.d(&[
        "exec",
        "a2",
        "ping",
        "-c",
        "1",
        "-W",
        "2",
        &c.ip("a1", "n1")?,
    ])?;
    // A real TCP transfer: busybox nc receives, a clean sender in a1's namespace sends.
    const SIZE: usize = 8 << 20;
    c.d(&[
        "exec",
        "-d",
        "a2",
        "sh",
        "-c",
        "nc -l -p 5001 | wc -c > /tmp/got",
    ])?;
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    tcp_send_from(c.pid("a1")?, format!("{ip2}:5001").parse()?, SIZE)?;
    let mut got = String::new();
    let done = wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
        got = c.d(&["exec", "a2", "cat", "/tmp/got"]).unwrap_or_default();
        !got.is_empty()
    });
    ensure!(
        done && got.trim() == SIZE.to_string(),
        "received {got:?} of {SIZE} bytes"
    );
    println!("    TCP: {} MiB in {:?}", SIZE >> 20, t0.elapsed());
    // OVS shows the access tag and our external_ids.
    let eps = c.endpoints()?;
    ensure!(eps.len() >= 2, "{eps:?}");
    for e in &eps {
        let port = e["host_if"].as_str().unwrap_or_default();
        let tag = c.ovs().vsctl(&["get", "port", port, "tag"])?;
        ensure!(tag == "101", "port {port} tag {tag}");
        let ids = c.ovs().vsctl(&["get", "interface", port, "external_ids"])?;
        ensure!(
            ids.contains("berth-endpoint-id") && ids.contains("berth-network-id"),
            "{ids}"
        );
        ensure!(e["mtu"].is_null() || e["mtu"] == 1500);
    }
    // MTU, stable MAC, interface name inside the container.
    let link = c.d(&["exec", "a1", "ip", "-o", "link", "show", "eth0"])?;
    ensure!(
        link.contains("mtu 1500") && link.contains("link/ether 02:b7:0a:e7:01:"),
        "{link}"
    );
    Ok(())
}

fn t_vlan_isolation(c: &Ctx) -> Result<()> {
    c.create_net("n2", "10.231.2.0/24", &["-o", "vlan=102", "-o", "mtu=1400"])?;
    c.sleeper("b1", "n2", &["--cap-add", "NET_ADMIN"])?;
    c.sleeper("b2", "n2", &[])?;
    let ip_a2 = c.ip("a2", "n1")?;
    // Control: b1 reaches its own network.
    let (s, r) = c.ping("b1", &c.ip("b2", "n2")?, 2, "0.2")?;
    ensure!(r == s, "same-VLAN control ping failed: {r}/{s}");
    // b1 takes an address in n1's subnet on its own interface: still nothing crosses VLANs.
    c.d(&[
        "exec",
        "b1",
        "ip",
        "addr",
        "add",
        "10.231.1.200/24",
        "dev",
        "eth0",
    ])?;
    let (s, r) = c.ping("b1", &ip_a2, 3, "0.3")?;
    ensure!(
        r == 0,
        "VLAN 102 reached VLAN 101: {r}/{s} replies from {ip_a2}"
    );
    let arp = c.d(&[
        "exec",
        "b1",
        "sh",
        "-c",
        "arping -c 2 -w 2 -I eth0 10.231.1.3 || true",
    ])?;
    ensure!(!arp.contains("Unicast reply"), "ARP crossed VLANs: {arp}");
    let link = c.d(&["exec", "b2", "ip", "-o", "link", "show", "eth0"])?;
    ensure!(link.contains("mtu 1400"), "{link}");
    let tags: Vec<String> = c
        .endpoints()?
        .iter()
        .map(|e| e["host_if"].as_str().unwrap_or_default().to_string())
        .map(|p| {
            c.ovs()
                .vsctl(&["get", "port", &p, "tag"])
                .unwrap_or_default()
        })
        .collect();
    ensure!(
        tags.contains(&"101".into()) && tags.contains(&"102".into()),
        "{tags:?}"
    );
    Ok(())
}

fn t_static_ip_connect_disconnect(c: &Ctx) -> Result<()> {
    c.sleeper("s1", "n1", &["--ip", "10.231.1.50"])?;
    ensure!(c.ip("s1", "n1")? == "10.231.1.50");
    let e = c.docker.fails(&[
        "run",
        "--rm",
        "--network",
        "n1",
        "--ip",
        "10.231.1.50",
        TEST_IMAGE,
        "true",
    ])?;
    ensure!(e.contains("10.231.1.50 is already in use"), "{e}");
    let e = c.docker.fails(&[
        "run",
        "--rm",
        "--network",
        "n1",
        "--ip",
        "10.231.9.9",
        TEST_IMAGE,
        "true",
    ])?;
    // dockerd refuses this one itself, before asking the plugin (26: when the container is
    // created, with its own wording).
    ensure!(
        e.contains("does not belong")
            || e.contains("outside the network's subnet")
            || e.contains("no configured subnet or ip-range contain the IP address 10.231.9.9"),
        "{e}"
    );
    // connect / disconnect: a second interface on another VLAN, then gone with its port.
    let before = c.ovs().ports(&c.bridge)?.len();
    c.d(&["network", "connect", "n2", "s1"])?;
    let ip = c.ip("s1", "n2")?;
    let (s, r) = c.ping("s1", &c.ip("b2", "n2")?, 2, "0.2")?;
    ensure!(r == s, "s1 on n2 ({ip}) cannot reach b2: {r}/{s}");
    ensure!(c.ovs().ports(&c.bridge)?.len() == before + 1);
    c.d(&["network", "disconnect", "n2", "s1"])?;
    ensure!(
        c.ovs().ports(&c.bridge)?.len() == before,
        "port left after disconnect"
    );
    let pool = c.net().admin_json(&["pool", "show", "10.231.2.0/24"])?;
    ensure!(
        !pool["addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|a| a["address"] == ip.as_str()),
        "address {ip} still held after disconnect: {pool}"
    );
    c.rm(&["s1"]);
    Ok(())
}

fn t_network_rm(c: &Ctx) -> Result<()> {
    c.create_net("n3", "10.231.3.0/24", &[])?;
    let nets = c.net().admin_json(&["network", "ls"])?;
    let vlan = nets
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["subnet"] == "10.231.3.0/24")
        .map(|n| n["vlan"].clone())
        .context("n3 listed")?;
    ensure!(
        vlan.as_u64().is_some_and(|v| (3000..=3009).contains(&v)),
        "auto VLAN {vlan}"
    );
    c.sleeper("r1", "n3", &[])?;
    let e = c.docker.fails(&["network", "rm", "n3"])?;
    ensure!(e.contains("active endpoints"), "{e}");
    c.rm(&["r1"]);
    c.d(&["network", "rm", "n3"])?;
    let nets = c.net().admin_json(&["network", "ls"])?;
    ensure!(!nets.to_string().contains("10.231.3.0/24"), "{nets}");
    let pools = c.net().admin_json(&["pool", "ls"])?;
    ensure!(
        !pools.to_string().contains("10.231.3.0/24"),
        "pool left: {pools}"
    );
    // Without endpoints, and an auto pool from --default-pools.
    c.create_net("n4", "", &[])?;
    let sub = c.d(&[
        "network",
        "inspect",
        "-f",
        "{{(index .IPAM.Config 0).Subnet}}",
        "n4",
    ])?;
    ensure!(
        sub.starts_with("10.231.19") || sub.starts_with("10.231.20"),
        "auto pool {sub}"
    );
    c.d(&["network", "rm", "n4"])?;
    Ok(())
}

fn t_bad_input(c: &Ctx) -> Result<()> {
    let cases: &[(&[&str], &str)] = &[
        (&["--subnet", "10.231.5.0/24", "-o", "vlan=0"], "1 to 4094"),
        (
            &["--subnet", "10.231.5.0/24", "-o", "vlan=4095"],
            "1 to 4094",
        ),
        (
            &["--subnet", "10.231.5.0/24", "-o", "vlan=abc"],
            "1 to 4094",
        ),
        (
            &["--subnet", "10.231.5.0/24", "-o", "vlan=101"],
            "VLAN 101 is already used by network",
        ),
        (
            &["--subnet", "10.231.1.128/25"],
            "overlaps 10.231.1.0/24 of network",
        ),
        (&["--subnet", "10.231.5.0/24", "-o", "mtu=9"], "68 to 9216"),
        (
            &["--subnet", "10.231.5.0/24", "-o", "vlam=5"],
            "unknown option",
        ),
        (&["--subnet", "10.231.5.0/31"], "/30 or larger"),
        (
            &["--subnet", "10.231.5.0/24", "--ip-range", "10.231.6.0/25"],
            "no matching subnet",
        ),
        (
            &[
                "--subnet",
                "10.231.5.0/24",
                "--ipv6",
                "--subnet",
                "fd00::/64",
            ],
            "IPv6",
        ),
    ];
    let pools_before = c
        .net()
        .admin_json(&["pool", "ls"])?
        .as_array()
        .map(Vec::len);
    for (extra, needle) in cases {
        let mut args = vec![
            "network",
            "create",
            "-d",
            "berth-net",
            "--ipam-driver",
            "berth-net",
        ];
        args.extend_from_slice(extra);
        args.push("bad");
        let e = c.docker.fails(&args)?;
        ensure!(
            e.contains(needle),
            "`{}`: expected {needle:?} in: {e}",
            extra.join(" ")
        );
    }
    let pools_after = c
        .net()
        .admin_json(&["pool", "ls"])?
        .as_array()
        .map(Vec::len);
    ensure!(
        pools_before == pools_after,
        "a refused create left a pool behind"
    );
    ensure!(c.docker.fails(&["network", "inspect", "bad"]).is_ok());
    Ok(())
}

fn t_fifty_containers_no_leaks(c: &Ctx) -> Result<()> {
    let (ports0, links0) = c.leftovers()?;
    let held0 = c.net().admin_json(&["pool", "show", "10.231.1.0/24"])?["allocated"].clone();
    let names: Vec<String> = (0..50).map(|i| format!("m{i}")).collect();
    let t0 = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let chunks: Vec<_> = names.chunks(13).collect();
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                s.spawn(move || -> Result<()> {
                    for n in chunk {
                        c.sleeper(n, "n1", &[])?;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| anyhow!("thread panicked"))??;
        }
        Ok(())
    })?;
    println!("    50 containers started in {:?}", t0.elapsed());
    let eps = c.endpoints()?;
    ensure!(eps.len() >= 50, "{} endpoints", eps.len());
    let addrs: std::collections::BTreeSet<String> =
        names.iter().map(|n| c.ip(n, "n1")).collect::<Result<_>>()?;
    ensure!(addrs.len() == 50, "duplicate addresses: {addrs:?}");
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    for chunk in refs.chunks(25) {
        let mut args = vec!["rm", "-f"];
        args.extend_from_slice(chunk);
        c.d(&args)?;
    }
    let mut state = (Vec::new(), Vec::new());
    let clean = wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
        state = c.leftovers().unwrap_or_default();
        state.0.len() == ports0.len() && state.1.len() == links0.len()
    });
    ensure!(
        clean,
        "leaked: ports {:?} (before {ports0:?}), veths {:?} (before {links0:?})",
        state.0,
        state.1
    );
    let held = c.net().admin_json(&["pool", "show", "10.231.1.0/24"])?["allocated"].clone();
    ensure!(
        held == held0,
        "addresses leaked: {held} held, {held0} before"
    );
    Ok(())
}

/// Ping a1 → a2 in the background for `secs` while `disrupt` runs; returns (sent, received).
fn traffic_across(c: &Ctx, secs: u32, disrupt: impl FnOnce() -> Result<()>) -> Result<(u32, u32)> {
    let pid = c.pid("a1")?.to_string();
    let ip = c.ip("a2", "n1")?;
    let count = secs * 5;
    let pinger = std::thread::spawn(move || ping_ns(&pid, &ip, count, "0.2"));
    std::thread::sleep(Duration::from_secs(1));
    let res = disrupt();
    let counts = pinger.join().map_err(|_| anyhow!("pinger panicked"))??;
    res?;
    Ok(counts)
}

fn port_identity(c: &Ctx) -> Result<Vec<String>> {
    let mut ids = Vec::new();
    for e in c.endpoints()? {
        let p = e["host_if"].as_str().unwrap_or_default().to_string();
        let ovs = c.ovs();
        ids.push(format!(
            "{p} {} {}",
            ovs.vsctl(&["get", "interface", &p, "_uuid"])?,
            ovs.vsctl(&["get", "interface", &p, "ofport"])?
        ));
    }
    ids.sort();
    Ok(ids)
}

fn t_restart_netplugin(c: &Ctx) -> Result<()> {
    let before = port_identity(c)?;
    // Settle first: the ARP proxy flows follow endpoint changes (the previous test's removals)
    // at the next reconcile pass.
    c.net().admin_json(&["reconcile"])?;
    let flows_before = c.ovs().dump_flows(&c.bridge)?;
    let (sent, got) = traffic_across(c, 8, || {
        let mut net = c.net();
        net.stop()?;
        std::thread::sleep(Duration::from_millis(500));
        net.start()?;
        // And a crash.
        net.kill9()?;
        net.start()
    })?;
    ensure!(
        sent - got <= 2,
        "lost {} of {sent} pings across netplugin restarts",
        sent - got
    );
    ensure!(port_identity(c)? == before, "ports were re-created");
    let flows_after = c.ovs().dump_flows(&c.bridge)?;
    ensure!(
        flows_after == flows_before,
        "flows changed: gone {:?}, new {:?}",
        flows_before
            .iter()
            .filter(|f| !flows_after.contains(f))
            .collect::<Vec<_>>(),
        flows_after
            .iter()
            .filter(|f| !flows_before.contains(f))
            .collect::<Vec<_>>()
    );
    // Still works for new containers.
    c.d(&[
        "run",
        "--rm",
        "--network",
        "n1",
        TEST_IMAGE,
        "ping",
        "-c",
        "1",
        "-W",
        "2",
        &c.ip("a2", "n1")?,
    ])?;
    Ok(())
}

/// `ip link add NAME type veth peer name PEER`, removed at teardown if a test leaves it.
fn veth_pair(c: &Ctx, name: &str, peer: &str) -> Result<()> {
    c.ovs().own_link(name);
    let out = std::process::Command::new("ip")
        .args(["link", "add", name, "type", "veth", "peer", "name", peer])
        .output()?;
    ensure!(
        out.status.success(),
        "ip link add {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn link_exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

/// Issue 15 §4: a kill -9 between creating a veth and adding its OVS port leaves a pair that
/// no port names; netplugin removes it at start. A veth whose endpoint is this host's (its port
/// deleted while netplugin was down) stays and gets its port back; a veth with a name berth
/// does not give stays whatever it looks like.
fn t_leaked_veths_removed_at_start(c: &Ctx) -> Result<()> {
    c.create_net("n15", "10.231.15.0/24", &["-o", "vlan=115"])?;
    c.sleeper("v1", "n15", &[])?;
    let live = port_of_container(c, "v1")?;
    let (leaked, leaked_peer) = ("vb00000000d1", "tb00000000d1");
    // Berth-like, but not a name berth gives (not 10 hex after `vb`).
    let (foreign, foreign_peer) = ("vb00000000dz", "tb00000000dz");
    c.net().stop()?;
    let setup = (|| -> Result<()> {
        veth_pair(c, leaked, leaked_peer)?;
        veth_pair(c, foreign, foreign_peer)?;
        c.ovs().vsctl(&["del-port", &c.bridge, &live])?;
        Ok(())
    })();
    c.net().start()?;
    setup?;
    ensure!(
        !link_exists(leaked) && !link_exists(leaked_peer),
        "the leaked veth pair {leaked} is still there after the start"
    );
    ensure!(
        link_exists(foreign) && link_exists(foreign_peer),
        "{foreign} (a name berth does not give) was removed"
    );
    ensure!(
        link_exists(&live),
        "the veth {live} of a live endpoint was removed"
    );
    let back = wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
        on_bridge(c, &live).unwrap_or(false)
    });
    ensure!(back, "the live endpoint's port {live} did not come back");
    let log = c.net().log_tail(200);
    ensure!(
        log.contains("leaked veth pairs removed at start") && log.contains(leaked),
        "no log line names the removed pair:\n{log}"
    );
    integration::ovs::delete_link(foreign);
    c.rm(&["v1"]);
    c.d(&["network", "rm", "n15"])?;
    Ok(())
}

fn t_restart_ovs(c: &Ctx) -> Result<()> {
    // ovs-vswitchd restart: flows are gone until netplugin re-installs them.
    let (sent, got) = traffic_across(c, 10, || {
        let mut ovs = c.ovs();
        ovs.stop_vswitchd()?;
        ovs.start_vswitchd()?;
        Ok(())
    })?;
    ensure!(
        sent - got <= 10,
        "lost {} of {sent} pings across an ovs-vswitchd restart",
        sent - got
    );
    // The anti-spoofing guard comes back with the other flows (traffic alone would not show it:
    // the guard's base flow passes everything).
    let guarded = wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
        spoof_dropped(c, "a1").is_ok() && spoof_dropped(c, "a2").is_ok()
    });
    ensure!(
        guarded,
        "anti-spoofing flows not re-installed after the restart: {:?}",
        c.ovs().dump_flows(&c.bridge)
    );
    // Both daemons.
    let (sent, got) = traffic_across(c, 10, || {
        let mut ovs = c.ovs();
        ovs.stop_vswitchd()?;
        ovs.stop_ovsdb()?;
        ovs.start_ovsdb()?;
        ovs.start_vswitchd()?;
        Ok(())
    })?;
    ensure!(
        sent - got <= 12,
        "lost {} of {sent} pings across an OVS restart",
        sent - got
    );
    // A port deleted behind our back comes back by itself.
    let port = c.endpoints()?[0]["host_if"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    c.ovs().vsctl(&["del-port", &c.bridge, &port])?;
    let back = wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
        c.ovs().ports(&c.bridge).unwrap_or_default().contains(&port)
    });
    ensure!(back, "port {port} not re-created");
    // OVS down: network calls fail with a clear message, IPAM still answers; then it heals.
    {
        let mut ovs = c.ovs();
        ovs.stop_vswitchd()?;
        ovs.stop_ovsdb()?;
    }
    let res = (|| -> Result<()> {
        let e = c
            .docker
            .fails(&berth_network_args("10.231.7.0/24", &[], "n7"))?;
        ensure!(e.contains("Open vSwitch is not reachable"), "{e}");
        let (s, v) = c.net().call(
            "IpamDriver.RequestPool",
            Some(r#"{"Pool":"10.231.8.0/24"}"#),
        )?;
        ensure!(s == 200, "IPAM without OVS: {v}");
        let id = v["PoolID"].as_str().unwrap_or_default().to_string();
        c.net().call(
            "IpamDriver.ReleasePool",
            Some(&format!(r#"{{"PoolID":"{id}"}}"#)),
        )?;
        Ok(())
    })();
    {
        let mut ovs = c.ovs();
        ovs.start_ovsdb()?;
        ovs.start_vswitchd()?;
    }
    res?;
    let ok = wait_until(Duration::from_secs(15), Duration::from_millis(300), || {
        c.create_net("n7", "10.231.7.0/24", &[]).is_ok()
    });
    ensure!(
        ok,
        "network create still failing after OVS came back:\n{}",
        c.net().log_tail(20)
    );
    c.d(&["network", "rm", "n7"])?;
    let ip2 = c.ip("a2", "n1")?;
    let mut last = (0, 0);
    wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        last = c.ping("a1", &ip2, 1, "0.2").unwrap_or((1, 0));
        last.0 == last.1
    });
    let (s, r) = last;
    if r != s {
        let ovs = c.ovs();
        bail!(
            "traffic after OVS restarts: {r}/{s}\nflows: {:?}\nports: {}\nnetplugin:\n{}\n{}",
            ovs.dump_flows(&c.bridge),
            ovs.vsctl(&["show"]).unwrap_or_default(),
            c.net().log_tail(40),
            ovs.log_tail(30)
        );
    }
    Ok(())
}

fn t_restart_dockerd(c: &Ctx) -> Result<()> {
    c.sleeper("p1", "n1", &["--restart", "always", "--ip", "10.231.1.60"])?;
    let (sent, got) = traffic_across(c, 10, || c.docker.restart_dockerd())?;
    ensure!(
        sent - got <= 2,
        "lost {} of {sent} pings across a dockerd restart",
        sent - got
    );
    ensure!(c.ip("p1", "n1")? == "10.231.1.60");
    // The restart-policy container comes back with its address after its process dies.
    let pid = c.pid("p1")?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    let back = wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
        c.pid("p1").is_ok_and(|p| p != pid && p != 0)
    });
    ensure!(back, "p1 not restarted");
    ensure!(c.ip("p1", "n1")? == "10.231.1.60");
    let (s, r) = c.ping("a1", "10.231.1.60", 2, "0.3")?;
    ensure!(r == s, "p1 unreachable after restart: {r}/{s}");
    // The network is still usable for new containers.
    c.d(&[
        "run",
        "--rm",
        "--network",
        "n1",
        TEST_IMAGE,
        "ping",
        "-c",
        "1",
        "-W",
        "2",
        "10.231.1.60",
    ])?;
    c.rm(&["p1"]);
    Ok(())
}

fn t_admin_cli(c: &Ctx) -> Result<()> {
    let net = c.net();
    let t = net.admin_text(&["network", "ls"])?;
    ensure!(
        t.starts_with("NETWORK") && t.contains("10.231.1.0/24") && t.contains("101"),
        "{t}"
    );
    let t = net.admin_text(&[
        "endpoint",
        "ls",
        "--network",
        &c.d(&["network", "inspect", "-f", "{{.Id}}", "n2"])?,
    ])?;
    ensure!(t.contains("10.231.2.") && !t.contains("10.231.1."), "{t}");
    let t = net.admin_text(&["pool", "ls"])?;
    ensure!(
        t.contains("ALLOCATED") && t.contains("10.231.2.0/24"),
        "{t}"
    );
    let t = net.admin_text(&["pool", "show", "10.231.1.0/24"])?;
    ensure!(
        t.contains("the network's gateway") && t.contains("endpoint "),
        "{t}"
    );
    Ok(())
}

/// What Docker leaves behind when it loses an endpoint (dockerd crashed between its calls, or
/// netplugin was down when it deleted it): an address and an endpoint nobody will delete.
fn leak_endpoint(c: &Ctx, network_id: &str, pool_id: &str, ip: &str, salt: u64) -> Result<String> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as u64;
    let seed = (nanos ^ salt).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let id = format!("{seed:016x}{:016x}{seed:016x}{:016x}", !seed, salt);
    let net = c.net();
    let (s, v) = net.call(
        "IpamDriver.RequestAddress",
        Some(&format!(
            r#"{{"PoolID":"{pool_id}","Address":"{ip}","Options":{{}}}}"#
        )),
    )?;
    ensure!(s == 200, "RequestAddress {ip}: {v}");
    let (s, v) = net.call(
        "NetworkDriver.CreateEndpoint",
        Some(&format!(
            r#"{{"NetworkID":"{network_id}","EndpointID":"{id}","Interface":{{"Address":"{}","AddressIPv6":"","MacAddress":""}},"Options":{{}}}}"#,
            v["Address"].as_str().unwrap_or_default()
        )),
    )?;
    ensure!(s == 200, "CreateEndpoint: {v}");
    Ok(id)
}

fn address_held(c: &Ctx, subnet: &str, ip: &str) -> Result<bool> {
    let pool = c.net().admin_json(&["pool", "show", subnet])?;
    Ok(pool["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|a| a["address"] == ip))
}

fn t_leaked_endpoints(c: &Ctx) -> Result<()> {
    let network_id = c.d(&["network", "inspect", "-f", "{{.Id}}", "n1"])?;
    let pool = c.net().admin_json(&["pool", "show", "10.231.1.0/24"])?;
    let pool_id = pool["id"].as_str().context("pool id")?.to_string();
    // A running container's endpoint carries its container id on the OVS interface.
    let container = c.d(&["inspect", "-f", "{{.Id}}", "a1"])?;
    let endpoint = c.d(&[
        "inspect",
        "-f",
        "{{(index .NetworkSettings.Networks \"n1\").EndpointID}}",
        "a1",
    ])?;
    let port = format!("vb{}", &endpoint[..10]);
    let labelled = wait_until(Duration::from_secs(15), Duration::from_millis(100), || {
        c.ovs()
            .vsctl(&["get", "Interface", &port, "external_ids:berth-container-id"])
            .is_ok_and(|v| v.trim().trim_matches('"') == container)
    });
    ensure!(labelled, "{port} not labelled with container {container}");
    let listed = c.endpoints()?;
    ensure!(
        listed
            .iter()
            .any(|e| e["id"] == endpoint.as_str() && e["container_id"] == container.as_str()),
        "endpoint ls shows the container: {listed:?}"
    );
    // Docker still uses it: release is refused.
    let err = c
        .net()
        .admin_text(&["endpoint", "release", &endpoint[..12]])
        .expect_err("releasing an endpoint Docker still uses must be refused")
        .to_string();
    ensure!(err.contains("in use by container"), "{err}");

    // On demand: the operator releases a leak at once.
    let leak = leak_endpoint(c, &network_id, &pool_id, "10.231.1.201", 1)?;
    ensure!(c
        .ovs()
        .ports(&c.bridge)?
        .contains(&format!("vb{}", &leak[..10])));
    let out = c.net().admin_text(&["endpoint", "release", &leak[..12]])?;
    ensure!(
        out.contains(&format!("released endpoint {}", &leak[..12]))
            && out.contains("address 10.231.1.201/24 released")
            && out.contains("removed"),
        "{out}"
    );
    ensure!(!address_held(c, "10.231.1.0/24", "10.231.1.201")?);
    ensure!(!c
        .ovs()
        .ports(&c.bridge)?
        .contains(&format!("vb{}", &leak[..10])));

    // Automatically: Docker does not list it, so after the grace period it goes.
    let leak = leak_endpoint(c, &network_id, &pool_id, "10.231.1.200", 2)?;
    let leak_port = format!("vb{}", &leak[..10]);
    ensure!(address_held(c, "10.231.1.0/24", "10.231.1.200")?);
    let started = Instant::now();
    let gone = wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
        !address_held(c, "10.231.1.0/24", "10.231.1.200").unwrap_or(true)
            && c.ovs()
                .ports(&c.bridge)
                .is_ok_and(|p| !p.contains(&leak_port))
            && c.endpoints()
                .is_ok_and(|e| !e.iter().any(|e| e["id"] == leak.as_str()))
    });
    ensure!(gone, "leaked endpoint {leak_port} still there after 30 s");
    println!(
        "    leaked endpoint released {:.1} s after it was created (grace {LEAK_GRACE})",
        started.elapsed().as_secs_f64()
    );
    ensure!(
        !std::path::Path::new(&format!("/sys/class/net/{leak_port}")).exists(),
        "its veth went too"
    );
    // What Docker uses stayed.
    ensure!(c.ovs().ports(&c.bridge)?.contains(&port));
    let (s, r) = c.ping("a1", &c.ip("a2", "n1")?, 2, "0.2")?;
    ensure!(r == s, "a1 lost its network: {r}/{s}");

    // A ReleaseAddress lost while netplugin was down (Docker ignores the error): the address
    // is held for no endpoint, and Docker uses it nowhere. The sweep releases it; an
    // `--aux-address` and the gateway, held the same way but shown by Docker, stay.
    c.d(&berth_network_args(
        "10.231.77.0/24",
        &["--aux-address", "router=10.231.77.10"],
        "naux",
    ))?;
    let (s, v) = c.net().call(
        "IpamDriver.RequestAddress",
        Some(&format!(
            r#"{{"PoolID":"{pool_id}","Address":"10.231.1.202","Options":{{}}}}"#
        )),
    )?;
    ensure!(s == 200, "RequestAddress: {v}");
    ensure!(address_held(c, "10.231.1.0/24", "10.231.1.202")?);
    let started = Instant::now();
    let gone = wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
        !address_held(c, "10.231.1.0/24", "10.231.1.202").unwrap_or(true)
    });
    ensure!(
        gone,
        "an address held for no endpoint still held after 30 s"
    );
    println!(
        "    address Docker never released, released by the sweep {:.1} s after it was taken (grace {LEAK_GRACE})",
        started.elapsed().as_secs_f64()
    );
    // As old as that address by now: had the sweep taken them for leaks, they would be gone.
    std::thread::sleep(Duration::from_secs(1));
    let aux_kept = address_held(c, "10.231.77.0/24", "10.231.77.10")?
        && address_held(c, "10.231.77.0/24", "10.231.77.1")?;
    c.d(&["network", "rm", "naux"])?;
    ensure!(aux_kept, "the aux address or the gateway was released");
    Ok(())
}

/// `n_packets` of the one flow matching `filter` whose text contains every one of `has`.
fn flow_packets(c: &Ctx, filter: &str, has: &[&str]) -> Result<u64> {
    let flows = c.ovs().dump_flows_with_stats(&c.bridge, filter)?;
    let line = flows
        .iter()
        .find(|l| has.iter().all(|h| l.contains(h)))
        .with_context(|| format!("no flow {filter} with {has:?}: {flows:?}"))?;
    n_packets(line)
}

/// `n_packets` of the ARP proxy's answer for `ip` (table 1, priority 100).
fn arp_answers(c: &Ctx, ip: &str) -> Result<u64> {
    flow_packets(
        c,
        &format!("table=2,arp,arp_tpa={ip}"),
        &["priority=100", "IN_PORT"],
    )
}

/// `n_packets` of a flow as `ovs-ofctl dump-flows` prints it.
fn n_packets(flow: &str) -> Result<u64> {
    flow.split(|ch: char| ch == ',' || ch.is_whitespace())
        .find_map(|kv| kv.strip_prefix("n_packets="))
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("n_packets in {flow}"))
}

/// busybox arping from `from` for `ip`: the MACs that answered (as octets) and its output.
fn arping(c: &Ctx, from: &str, ip: &str, count: u32) -> Result<(Vec<[u8; 6]>, String)> {
    let out = c.d(&[
        "exec",
        from,
        "sh",
        "-c",
        &format!("arping -c {count} -w 3 -I eth0 {ip}; echo rc=$?"),
    ])?;
    // "Unicast reply from 10.231.1.11 [2:b7:a:e7:1:b] 0.311ms" (ether_ntoa drops leading zeros).
    let macs = out
        .lines()
        .filter(|l| l.contains("reply from"))
        .filter_map(|l| {
            let mac = l.split('[').nth(1)?.split(']').next()?;
            let octets: Vec<u8> = mac
                .split(':')
                .filter_map(|o| u8::from_str_radix(o, 16).ok())
                .collect();
            <[u8; 6]>::try_from(octets).ok()
        })
        .collect();
    Ok((macs, out))
}

fn t_arp_proxy(c: &Ctx) -> Result<()> {
    let ip2 = c.ip("a2", "n1")?;
    let mac2 = c.d(&[
        "inspect",
        "-f",
        "{{(index .NetworkSettings.Networks \"n1\").MacAddress}}",
        "a2",
    ])?;
    let mac2: Vec<u8> = mac2
        .split(':')
        .filter_map(|o| u8::from_str_radix(o, 16).ok())
        .collect();
    // The proxy learns a2's address within a reconcile pass.
    let ready = wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
        arp_answers(c, &ip2).is_ok()
    });
    ensure!(
        ready,
        "no ARP answer flow for {ip2}: {:?}",
        c.ovs().dump_flows(&c.bridge)
    );
    let before = arp_answers(c, &ip2)?;
    let (macs, out) = arping(c, "a1", &ip2, 3)?;
    ensure!(
        macs.len() == 3 && macs.iter().all(|m| m[..] == mac2[..]),
        "a1 asked for {ip2} ({mac2:02x?}): {out}"
    );
    let answered = arp_answers(c, &ip2)? - before;
    ensure!(
        answered == 3,
        "OVS itself answered {answered} of 3 requests (the rest reached a2): {out}"
    );
    // An address nobody has goes on to NORMAL (flooded in the VLAN), not dropped.
    let vlan = c.net().admin_json(&["network", "ls"])?;
    let vlan = vlan
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["subnet"] == "10.231.1.0/24")
        .and_then(|n| n["vlan"].as_u64())
        .context("n1's VLAN")?;
    let passed_on = |c: &Ctx| {
        flow_packets(
            c,
            &format!("table=2,dl_vlan={vlan}"),
            &["priority=0", "NORMAL"],
        )
    };
    let before = passed_on(c)?;
    let (macs, out) = arping(c, "a1", "10.231.1.250", 2)?;
    ensure!(macs.is_empty(), "{out}");
    ensure!(
        passed_on(c)? - before >= 2,
        "requests for an unknown address dropped"
    );
    // An address of another VLAN is not answered on this one.
    let other_vlan = c.ip("b1", "n2")?;
    let (macs, out) = arping(c, "a1", &other_vlan, 2)?;
    ensure!(macs.is_empty() && out.contains("rc=1"), "{out}");
    // The flows are OVS's: with netplugin down, ARP is still answered.
    c.net().kill9()?;
    let down = arping(c, "a1", &ip2, 1);
    c.net().start()?;
    let (macs, out) = down?;
    ensure!(macs.len() == 1, "netplugin down: {out}");
    // A second pass finds nothing to change.
    let report = c.net().admin_json(&["reconcile"])?;
    ensure!(
        report["arp_flows_added"] == 0 && report["arp_flows_removed"] == 0,
        "ARP flows churn on every pass: {report}"
    );
    // Drift: a2's ARP flows deleted by hand come back by themselves (an idle pass counts the
    // flows instead of comparing them; one missing changes the count).
    c.ovs()
        .del_flows(&c.bridge, &[&format!("table=2,arp,arp_tpa={ip2}")])?;
    ensure!(
        arp_answers(c, &ip2).is_err(),
        "the answer for {ip2} was not deleted"
    );
    let back = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        arp_answers(c, &ip2).is_ok()
    });
    ensure!(
        back,
        "the ARP answer for {ip2}, deleted by hand, did not come back: {:?}",
        c.ovs().dump_flows(&c.bridge)
    );
    let (macs, out) = arping(c, "a1", &ip2, 1)?;
    ensure!(macs.len() == 1, "after the repair: {out}");
    Ok(())
}

/// Sends `bytes` over TCP from `from` to `to` (an nc listening in it) and returns Mbit/s as
/// the receiver saw them.
fn tcp_rate(c: &Ctx, from: &str, to: &str, to_ip: &str, bytes: usize) -> Result<f64> {
    c.d(&[
        "exec",
        "-d",
        to,
        "sh",
        "-c",
        "rm -f /tmp/got; nc -l -p 5002 | wc -c > /tmp/got",
    ])?;
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    tcp_send_from(c.pid(from)?, format!("{to_ip}:5002").parse()?, bytes)?;
    let mut got = String::new();
    let done = wait_until(Duration::from_secs(60), Duration::from_millis(50), || {
        got = c.d(&["exec", to, "cat", "/tmp/got"]).unwrap_or_default();
        !got.is_empty()
    });
    ensure!(
        done && got.trim() == bytes.to_string(),
        "{from} → {to}: received {got:?} of {bytes} bytes"
    );
    Ok(bytes as f64 * 8.0 / 1e6 / t0.elapsed().as_secs_f64())
}

fn t_rate_limits(c: &Ctx) -> Result<()> {
    c.create_net("n6", "10.231.6.0/24", &["-o", "vlan=106", "-o", "rate=20M"])?;
    c.sleeper("r1", "n6", &[])?;
    c.sleeper("r2", "n6", &[])?;
    let meters = c.ovs().dump_meters(&c.bridge)?;
    ensure!(
        meters.len() == 4
            && meters
                .iter()
                .all(|m| m.contains("rate=20000") && m.contains("burst_size=16000")),
        "two 20 Mbit/s meters per container: {meters:?}"
    );
    // Both ends limited to 20 Mbit/s (a bucket of 16 Mbit lets the start through faster).
    let bytes = 12 << 20;
    let limited = tcp_rate(c, "r1", "r2", &c.ip("r2", "n6")?, bytes)?;
    let bits = (bytes * 8) as f64 / 1e6;
    let ceiling = bits / ((bits - 16.0) / 20.0);
    println!(
        "    TCP r1 → r2 at rate=20M: {limited:.1} Mbit/s (at most {ceiling:.1} with the bucket)"
    );
    ensure!(
        (8.0..=ceiling * 1.15).contains(&limited),
        "TCP at rate=20M went at {limited:.1} Mbit/s"
    );
    // What the meters dropped is reported (stats, and the metric of the same name).
    let dropped = wait_until(Duration::from_secs(5), Duration::from_millis(200), || {
        c.net().admin_json(&["stats"]).is_ok_and(|s| {
            s["rate_limit_drops"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|d| d["packets"].as_u64().unwrap_or(0) > 0)
        })
    });
    ensure!(
        dropped,
        "no meter drops reported: {:?}",
        c.net().admin_json(&["stats"])
    );
    // A container's own limit, from `docker network connect --driver-opt`: a1 sends at 5 Mbit/s.
    c.d(&[
        "network",
        "connect",
        "--driver-opt",
        "egress_rate=5M",
        "n6",
        "a1",
    ])?;
    let eps = c.endpoints()?;
    ensure!(
        eps.iter().any(|e| e["address"]
            .as_str()
            .is_some_and(|a| a.starts_with("10.231.6."))
            && e["limits"]["egress_kbps"] == 5000
            && e["limits"]["ingress_kbps"] == 20000),
        "{eps:?}"
    );
    let bytes = 4 << 20;
    let slow = tcp_rate(c, "a1", "r2", &c.ip("r2", "n6")?, bytes)?;
    let bits = (bytes * 8) as f64 / 1e6;
    let ceiling = bits / ((bits - 4.0) / 5.0);
    println!("    TCP a1 → r2 with egress_rate=5M: {slow:.1} Mbit/s (at most {ceiling:.1})");
    ensure!(
        (2.0..=ceiling * 1.15).contains(&slow),
        "TCP with egress_rate=5M went at {slow:.1} Mbit/s"
    );
    // Meters and flows go with the endpoints.
    c.d(&["network", "disconnect", "n6", "a1"])?;
    c.rm(&["r1", "r2"]);
    c.d(&["network", "rm", "n6"])?;
    // (A port's meters go with it; the shared table-2 flow at the next reconcile pass.)
    let gone = wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
        c.ovs().dump_meters(&c.bridge).is_ok_and(|m| m.is_empty())
            && c.ovs().dump_flows(&c.bridge).is_ok_and(|flows| {
                !flows
                    .iter()
                    .any(|f| f.contains("cookie=0xbe27000000000003"))
            })
    });
    ensure!(
        gone,
        "left: meters {:?}, flows {:?}",
        c.ovs().dump_meters(&c.bridge),
        c.ovs().dump_flows(&c.bridge)
    );
    // Containers without limits are not slowed: a1 → a2 on n1.
    let free = tcp_rate(c, "a1", "a2", &c.ip("a2", "n1")?, 8 << 20)?;
    println!("    TCP a1 → a2 unlimited: {free:.1} Mbit/s");
    ensure!(free > 40.0, "unlimited TCP went at {free:.1} Mbit/s");
    Ok(())
}

/// Issue 15 §4: Docker lets endpoints of two networks share a MAC (`--mac-address`); a
/// receiver's meter applies to its MAC on its own VLAN only, so a container with the same MAC
/// on another VLAN is not slowed by it.
fn t_same_mac_on_two_vlans(c: &Ctx) -> Result<()> {
    let mac = "02:42:0a:e7:10:10";
    c.create_net(
        "n16",
        "10.231.16.0/24",
        &["-o", "vlan=116", "-o", "ingress_rate=5M"],
    )?;
    c.create_net("n17", "10.231.17.0/24", &["-o", "vlan=117"])?;
    c.sleeper("m1", "n16", &["--mac-address", mac])?;
    c.sleeper("m2", "n17", &["--mac-address", mac])?;
    c.sleeper("s17", "n17", &[])?;
    let run = (|| -> Result<()> {
        ensure!(
            mac_of(c, "m1", "n16")? == mac && mac_of(c, "m2", "n17")? == mac,
            "Docker did not give both containers {mac}"
        );
        let ingress: Vec<String> = c
            .ovs()
            .dump_flows(&c.bridge)?
            .into_iter()
            .filter(|f| f.contains("cookie=0xbe27000000000003") && f.contains(mac))
            .collect();
        ensure!(
            ingress.len() == 4
                && ingress
                    .iter()
                    .all(|f| f.contains("reg0=0x74") || f.contains("dl_vlan=116")),
            "m1's ingress flows must name its VLAN 116: {ingress:?}"
        );
        let free = tcp_rate(c, "s17", "m2", &c.ip("m2", "n17")?, 8 << 20)?;
        println!("    TCP s17 → m2 (same MAC as m1, whose ingress is 5 Mbit/s): {free:.1} Mbit/s");
        ensure!(
            free > 20.0,
            "m2 went at {free:.1} Mbit/s: m1's meter (another VLAN) took its traffic"
        );
        Ok(())
    })();
    c.rm(&["m1", "m2", "s17"]);
    c.d(&["network", "rm", "n16", "n17"])?;
    run
}

/// Issue 15 §4: netplugin changes and deletes flows and meters only on a bridge that is Berth's
/// (`external_ids:berth-bridge=true`): pointed at another bridge of the same OVS it refuses,
/// and that bridge's meters, flows and fail mode stay as they were.
fn t_foreign_bridge_left_alone(c: &Ctx) -> Result<()> {
    let foreign = format!("brf{}", std::process::id() % 1_000_000);
    c.ovs().own_link(&foreign);
    c.ovs().vsctl(&[
        "add-br",
        &foreign,
        "--",
        "set",
        "bridge",
        &foreign,
        "datapath_type=netdev",
        "protocols=OpenFlow13",
    ])?;
    let work = tempfile::Builder::new().prefix("bnf-").tempdir_in("/tmp")?;
    let run = (|| -> Result<()> {
        let ofctl = |args: &[&str]| -> Result<()> {
            let mgmt = c.ovs().rundir().join(format!("{foreign}.mgmt"));
            let out = std::process::Command::new("ovs-ofctl")
                .args(["-O", "OpenFlow13", args[0]])
                .arg(&mgmt)
                .args(&args[1..])
                .output()?;
            ensure!(
                out.status.success(),
                "ovs-ofctl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(())
        };
        ofctl(&["add-meter", "meter=7,kbps,band=type=drop,rate=1000"])?;
        ofctl(&[
            "add-flow",
            "cookie=0x42,priority=5,in_port=LOCAL,actions=meter:7,NORMAL",
        ])?;
        let meters_before = c.ovs().dump_meters(&foreign)?;
        let flows_before = c.ovs().dump_flows(&foreign)?;
        let plugins = work.path().join("plugins");
        std::fs::create_dir_all(&plugins)?;
        let mut args = Vec::new();
        let mut it = c.net().args.clone().into_iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                // Its own bridge, and no Docker to sync with.
                "--bridge" | "--docker-socket" => {
                    it.next();
                }
                _ => args.push(a),
            }
        }
        args.extend([
            "--bridge".to_string(),
            foreign.clone(),
            "--docker-socket".into(),
            work.path().join("none.sock").to_string_lossy().into_owned(),
        ]);
        let bin = c.net().bin.clone();
        let mut other = Netplugin::new(bin, work.path(), &plugins, args);
        other.start()?;
        // Reconcile passes run every 0.5 s: a few of them.
        std::thread::sleep(Duration::from_secs(3));
        let log = other.log_tail(50);
        other.stop()?;
        ensure!(
            log.contains("is not Berth's"),
            "no refusal in netplugin's log:\n{log}"
        );
        ensure!(
            c.ovs().dump_meters(&foreign)? == meters_before,
            "the foreign bridge's meters changed: {:?} → {:?}",
            meters_before,
            c.ovs().dump_meters(&foreign)?
        );
        ensure!(
            c.ovs().dump_flows(&foreign)? == flows_before,
            "the foreign bridge's flows changed"
        );
        let fail_mode = c.ovs().vsctl(&["get", "bridge", &foreign, "fail_mode"])?;
        ensure!(fail_mode == "[]", "its fail mode was set: {fail_mode}");
        let ids = c
            .ovs()
            .vsctl(&["get", "bridge", &foreign, "external_ids"])?;
        ensure!(!ids.contains("berth-bridge"), "it was labelled: {ids}");
        Ok(())
    })();
    c.ovs().vsctl(&["--if-exists", "del-br", &foreign])?;
    integration::ovs::delete_link(&foreign);
    run
}

/// A port on the bridge with berth's labels but no endpoint in the store (what a crash, another
/// host id or an older release leaves). With `device`, a veth pair (both ends on the host)
/// stands for a running container's; without, it is a port whose container is gone.
fn fake_port(c: &Ctx, n: u32, host_id: Option<&str>, device: bool) -> Result<String> {
    Ok(fake_ports(c, &[(n, host_id, device)])?.remove(0))
}

/// Stray ports as a crash leaves them, all added in one OVSDB transaction (a reconcile pass
/// in between must not see half of them).
fn fake_ports(c: &Ctx, specs: &[(u32, Option<&str>, bool)]) -> Result<Vec<String>> {
    let mut names = Vec::new();
    let mut args: Vec<String> = Vec::new();
    for &(n, host_id, device) in specs {
        let name = format!("vb{n:010x}");
        let peer = format!("tb{n:010x}");
        if device {
            c.ovs().own_link(&name);
            for ip in [
                vec!["link", "add", &name, "type", "veth", "peer", "name", &peer],
                vec!["link", "set", &name, "up"],
            ] {
                let out = std::process::Command::new("ip").args(&ip).output()?;
                ensure!(
                    out.status.success(),
                    "ip {}: {}",
                    ip.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        let endpoint = format!("{n:010x}{}", "0".repeat(54));
        if !args.is_empty() {
            args.push("--".into());
        }
        args.extend([
            "add-port".to_string(),
            c.bridge.clone(),
            name.clone(),
            "--".into(),
            "set".into(),
            "interface".into(),
            name.clone(),
            format!("external_ids:berth-endpoint-id={endpoint}"),
            format!("external_ids:berth-network-id={}", "f".repeat(64)),
        ]);
        if let Some(h) = host_id {
            args.push(format!("external_ids:berth-host-id={h}"));
        }
        names.push(name);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    c.ovs().vsctl(&args)?;
    Ok(names)
}

fn on_bridge(c: &Ctx, name: &str) -> Result<bool> {
    Ok(c.ovs().ports(&c.bridge)?.iter().any(|p| p == name))
}

/// Issue 14 §1 with real OVS: every port of a container carries this host's id; reconcile
/// removes only its own stray ports, leaves another host's and unlabelled ones alone, and
/// holds a removal of most of the bridge until `netplugin reconcile --prune`.
fn t_prune_only_own_ports(c: &Ctx) -> Result<()> {
    let eps = c.endpoints()?;
    ensure!(!eps.is_empty(), "the earlier tests' containers are gone");
    for e in &eps {
        let p = e["host_if"].as_str().unwrap_or_default();
        let h = c
            .ovs()
            .vsctl(&["get", "interface", p, "external_ids:berth-host-id"])?;
        ensure!(h.trim_matches('"') == "test-host", "{p}: berth-host-id {h}");
    }
    let others = fake_port(c, 0xa1, Some("other-host"), true)?;
    let unlabelled = fake_port(c, 0xa2, None, true)?;
    let own = fake_port(c, 0xa3, Some("test-host"), true)?;
    let gone = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        !on_bridge(c, &own).unwrap_or(true)
    });
    ensure!(gone, "{own} (this host's, no endpoint) was not removed");
    c.net().admin_json(&["reconcile"])?;
    ensure!(
        on_bridge(c, &others)?,
        "another host's port {others} was removed"
    );
    ensure!(
        on_bridge(c, &unlabelled)?,
        "unlabelled port {unlabelled} was removed"
    );
    // Most of the bridge at once: held; ports whose container is gone still go.
    let total = c.ovs().ports(&c.bridge)?.len();
    let held_specs: Vec<(u32, Option<&str>, bool)> = (0..=total as u32)
        .map(|i| (0x100 + i, Some("test-host"), true))
        .collect();
    let dead_specs: Vec<(u32, Option<&str>, bool)> = (0..4)
        .map(|i| (0x200 + i, Some("test-host"), false))
        .collect();
    let all: Vec<_> = held_specs.iter().chain(&dead_specs).copied().collect();
    let mut added = fake_ports(c, &all)?;
    let dead = added.split_off(held_specs.len());
    let held = added;
    std::thread::sleep(Duration::from_secs(2));
    for p in &dead {
        ensure!(
            !on_bridge(c, p)?,
            "{p} (no device) was held with the live ones"
        );
    }
    let report = c.net().admin_json(&["reconcile"])?;
    for p in &held {
        ensure!(on_bridge(c, p)?, "{p} removed in a mass removal: {report}");
    }
    let listed: Vec<&str> = report["prune_held"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    ensure!(listed.len() == held.len(), "prune_held: {report}");
    let forced = c.net().admin_json(&["reconcile", "--prune"])?;
    for p in &held {
        ensure!(!on_bridge(c, p)?, "{p} still there after --prune: {forced}");
    }
    ensure!(
        on_bridge(c, &others)? && on_bridge(c, &unlabelled)?,
        "--prune removed what is not this host's"
    );
    for e in c.endpoints()? {
        let p = e["host_if"].as_str().unwrap_or_default();
        ensure!(on_bridge(c, p)?, "a container's port {p} went");
    }
    for p in [&others, &unlabelled] {
        c.ovs().vsctl(&["del-port", &c.bridge, p])?;
        integration::ovs::delete_link(p);
    }
    Ok(())
}

/// `netplugin serve` with the same state dir and other flags, run to its refusal (or killed
/// after 20 s): its exit status and stderr.
fn serve_once(c: &Ctx, host_id: &str) -> Result<(bool, String)> {
    let net = c.net();
    let mut args: Vec<String> = Vec::new();
    let mut it = net.args.iter();
    while let Some(a) = it.next() {
        if a == "--host-id" {
            it.next();
        } else {
            args.push(a.clone());
        }
    }
    let plugins = tempfile::tempdir()?;
    let mut cmd = std::process::Command::new(&net.bin);
    cmd.arg("serve")
        .arg("--state-dir")
        .arg(&net.state_dir)
        .arg("--plugin-dir")
        .arg(plugins.path())
        .arg("--admin-socket")
        .arg(plugins.path().join("admin.sock"))
        .args(&args)
        .args(["--host-id", host_id]);
    let out = run_with_timeout(cmd, None, Duration::from_secs(20))?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Issue 14 §1: netplugin started under another host id refuses, naming both ids and the file;
/// after `netplugin host set-id` it runs under the new id and leaves the old id's ports alone.
fn t_host_identity(c: &Ctx) -> Result<()> {
    let ports_before = c.ovs().ports(&c.bridge)?;
    c.net().stop()?;
    let (ok, err) = serve_once(c, "renamed-host")?;
    ensure!(!ok, "netplugin started under another host id");
    ensure!(
        err.contains("\"test-host\"")
            && err.contains("\"renamed-host\"")
            && err.contains("host-identity.json"),
        "refusal does not name both ids and the file: {err}"
    );
    // The admin step, then a run under the new id: the old id's ports stay.
    let state_dir = c.net().state_dir.clone();
    let set = |id: &str| -> Result<()> {
        let out = std::process::Command::new(&c.net().bin)
            .args(["host", "set-id", id, "--state-dir"])
            .arg(&state_dir)
            .output()?;
        ensure!(
            out.status.success(),
            "host set-id {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    set("renamed-host")?;
    let swap = |net: &mut Netplugin, id: &str| {
        if let Some(i) = net.args.iter().position(|a| a == "--host-id") {
            net.args[i + 1] = id.to_string();
        }
    };
    let result = (|| -> Result<()> {
        {
            let mut net = c.net();
            swap(&mut net, "renamed-host");
            net.start()?;
        }
        std::thread::sleep(Duration::from_secs(2));
        let report = c.net().admin_json(&["reconcile"])?;
        let after = c.ovs().ports(&c.bridge)?;
        ensure!(
            after == ports_before,
            "ports changed under the new id: {ports_before:?} -> {after:?} ({report})"
        );
        Ok(())
    })();
    // Back to the suite's id whatever happened.
    c.net().stop()?;
    set("test-host")?;
    {
        let mut net = c.net();
        swap(&mut net, "test-host");
        net.start()?;
    }
    result
}

/// Issue 16 §3 with real dockerd: `docker run -p` on a berth-net network fails saying where
/// the container is reached (it was accepted and ignored); without -p the same run works, with
/// nothing left behind by the refused one.
fn t_published_ports_refused(c: &Ctx) -> Result<()> {
    let before = c.endpoints()?.len();
    let err = c.docker.fails(&[
        "run",
        "--rm",
        "--name",
        "pp1",
        "-p",
        "8080:80",
        "--network",
        "n1",
        TEST_IMAGE,
        "true",
    ])?;
    ensure!(
        err.contains("berth-net does not publish ports")
            && err.contains("8080:80/tcp")
            && err.contains("reached at their own routable address"),
        "docker run -p: {err}"
    );
    c.rm(&["pp1"]);
    ensure!(
        c.endpoints()?.len() == before,
        "the refused run left an endpoint"
    );
    let ip = c.ip("a2", "n1")?;
    c.d(&[
        "run",
        "--rm",
        "--network",
        "n1",
        TEST_IMAGE,
        "ping",
        "-c",
        "1",
        "-W",
        "2",
        &ip,
    ])?;
    Ok(())
}

/// The host end of `name`'s veth on a berth-net network, once netplugin learned which
/// container the endpoint serves (docker_sync).
fn port_of_container(c: &Ctx, name: &str) -> Result<String> {
    let id = c.d(&["inspect", "-f", "{{.Id}}", name])?;
    let mut port = None;
    wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        port = c.endpoints().ok().and_then(|eps| {
            eps.iter()
                .find(|e| e["container_id"].as_str() == Some(id.as_str()))
                .and_then(|e| e["host_if"].as_str().map(str::to_string))
        });
        port.is_some()
    });
    port.ok_or_else(|| anyhow!("no endpoint labelled with container {name} ({id})"))
}

/// Bytes the host end of a veth sent into its container (kernel counter: exact, live).
fn tx_bytes(port: &str) -> Result<u64> {
    Ok(
        std::fs::read_to_string(format!("/sys/class/net/{port}/statistics/tx_bytes"))?
            .trim()
            .parse()?,
    )
}

/// Mbit/s into the container behind `port` over the next `secs` (L2 bytes, as the meters
/// count them).
fn rate_into(port: &str, secs: f64) -> Result<f64> {
    let (t0, b0) = (Instant::now(), tx_bytes(port)?);
    std::thread::sleep(Duration::from_secs_f64(secs));
    Ok((tx_bytes(port)? - b0) as f64 * 8.0 / 1e6 / t0.elapsed().as_secs_f64())
}

/// One live change with a transfer running from `from` to `to`: the rate before, the time
/// the set-limits command took, the time until the rate crosses halfway to the new one, and
/// the rate a second after the change.
/// `change` runs the set-limits command; `finish` lifts the limit so the transfer ends.
fn live_change(
    c: &Ctx,
    from: &str,
    to: &str,
    change: &dyn Fn() -> Result<()>,
    finish: &dyn Fn() -> Result<()>,
    (old, new): (f64, f64),
) -> Result<(f64, f64, f64, f64)> {
    let port = port_of_container(c, to)?;
    let to_ip = c.ip(to, "n7")?;
    c.d(&[
        "exec",
        "-d",
        to,
        "sh",
        "-c",
        "rm -f /tmp/got; nc -l -p 5003 | wc -c > /tmp/got",
    ])?;
    std::thread::sleep(Duration::from_millis(300));
    let bytes: usize = 48 << 20;
    let pid = c.pid(from)?;
    let addr = format!("{to_ip}:5003").parse()?;
    let sender = std::thread::spawn(move || tcp_send_from(pid, addr, bytes));
    let result = (|| -> Result<(f64, f64, f64, f64)> {
        // The bucket (0.8 s at the rate) lets the start through faster: past it first.
        std::thread::sleep(Duration::from_millis(2500));
        let before = rate_into(&port, 3.0)?;
        let changed = Instant::now();
        change()?;
        let command = changed.elapsed().as_secs_f64();
        // Halfway from the old rate to the new one, in 100 ms steps (bounded: 5 s).
        let half = (old + new) / 2.0;
        let mut took = f64::NAN;
        for _ in 0..50 {
            let r = rate_into(&port, 0.1)?;
            if (new > old && r > half) || (new < old && r < half) {
                took = changed.elapsed().as_secs_f64();
                break;
            }
        }
        let wait = Duration::from_secs(1).saturating_sub(changed.elapsed());
        std::thread::sleep(wait);
        let after = rate_into(&port, 3.0)?;
        Ok((before, command, took, after))
    })();
    finish()?;
    let sent = sender.join().map_err(|_| anyhow!("sender panicked"))?;
    let mut got = String::new();
    wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
        got = c.d(&["exec", to, "cat", "/tmp/got"]).unwrap_or_default();
        !got.is_empty()
    });
    sent.context("the transfer broke during the change")?;
    ensure!(
        got.trim() == bytes.to_string(),
        "{to} received {got:?} of {bytes} bytes: the connection did not survive"
    );
    result
}

/// Issue 16 §1 with real traffic: a transfer running at its old limit moves to the new one
/// (egress up, ingress down) without its connection dropping; the records and `endpoint ls`
/// show the new limits; a network's default reaches its endpoints.
fn t_live_rate_change(c: &Ctx) -> Result<()> {
    let net = c.create_net("n7", "10.231.7.0/24", &["-o", "vlan=107"])?;
    c.sleeper("l1", "n7", &[])?;
    c.sleeper("l2", "n7", &[])?;
    let l1 = c.d(&["inspect", "-f", "{{.Id}}", "l1"])?;
    let l2 = c.d(&["inspect", "-f", "{{.Id}}", "l2"])?;
    port_of_container(c, "l1")?;
    let set = |target: &str, what: &[&str], flags: &[&str]| -> Result<()> {
        let mut args = vec![what[0], "set-limits", target];
        args.extend_from_slice(flags);
        c.net().admin_text(&args).map(drop)
    };
    let tolerance = |rate: f64, want: f64| (rate - want).abs() <= want * 0.15;
    // Egress: l1 sends at 8M, then 20M.
    set(&l1[..12], &["endpoint"], &["--egress", "8M"])?;
    let (before, command, took, after) = live_change(
        c,
        "l1",
        "l2",
        &|| set(&l1[..12], &["endpoint"], &["--egress", "20M"]),
        &|| set(&l1[..12], &["endpoint"], &["--egress", "none"]),
        (8.0, 20.0),
    )?;
    println!("    egress 8M → 20M live: {before:.2} → {after:.2} Mbit/s (ratios {:.2}, {:.2}), command {command:.2} s, halfway after {took:.2} s",
        before / 8.0, after / 20.0);
    ensure!(
        tolerance(before, 8.0) && tolerance(after, 20.0),
        "egress 8M → 20M measured {before:.2} → {after:.2} Mbit/s"
    );
    // The limit in force is shown at once: `endpoint ls`, and stats (the rate_limit_kbps metric).
    set(&l1[..12], &["endpoint"], &["--egress", "30M"])?;
    let stats = c.net().admin_json(&["stats"])?;
    ensure!(
        stats["rate_limit_drops"].as_array().is_some_and(|a| a
            .iter()
            .any(|d| { d["direction"] == "egress" && d["rate_kbps"] == 30000 })),
        "stats: {stats}"
    );
    let ls = c.net().admin_text(&["endpoint", "ls", "--network", &net])?;
    ensure!(ls.contains("30M/-"), "endpoint ls: {ls}");
    set(&l1[..12], &["endpoint"], &["--egress", "none"])?;
    // Ingress: l2 receives at 20M, then 8M, through the network's default this time.
    set(&net[..12], &["network"], &["--ingress", "20M"])?;
    let eps = c.endpoints()?;
    ensure!(
        eps.iter()
            .filter(|e| e["network_id"].as_str() == Some(net.as_str()))
            .all(|e| e["limits"]["ingress_kbps"] == 20000),
        "network default not on its endpoints: {eps:?}"
    );
    let (before, command, took, after) = live_change(
        c,
        "l1",
        "l2",
        &|| set(&l2[..12], &["endpoint"], &["--ingress", "8M"]),
        &|| {
            set(&net[..12], &["network"], &["--ingress", "none"])
                .and_then(|()| set(&l2[..12], &["endpoint"], &["--ingress", "network"]))
        },
        (20.0, 8.0),
    )?;
    println!("    ingress 20M → 8M live: {before:.2} → {after:.2} Mbit/s (ratios {:.2}, {:.2}), command {command:.2} s, halfway after {took:.2} s",
        before / 20.0, after / 8.0);
    ensure!(
        tolerance(before, 20.0) && tolerance(after, 8.0),
        "ingress 20M → 8M measured {before:.2} → {after:.2} Mbit/s"
    );
    // Cleared: no meter left for n7's ports.
    let gone = wait_until(Duration::from_secs(5), Duration::from_millis(200), || {
        c.ovs().dump_meters(&c.bridge).is_ok_and(|m| m.is_empty())
    });
    ensure!(
        gone,
        "meters left after clearing: {:?}",
        c.ovs().dump_meters(&c.bridge)
    );
    c.rm(&["l1", "l2"]);
    c.d(&["network", "rm", "n7"])?;
    Ok(())
}

/// Issue 16 §3: EndpointOperInfo answers the datapath with real OVS (VLAN, port with its tag
/// and ofport, MAC, address); and what Docker 20.10 makes of it: nothing shown in
/// `docker inspect` or `docker network inspect` (docs/protocols.md §2 says so; this fails
/// if a Docker starts showing it, so the docs get updated).
fn t_oper_info(c: &Ctx) -> Result<()> {
    let net_id = c.d(&["network", "inspect", "-f", "{{.Id}}", "n1"])?;
    let ep = c.d(&[
        "inspect",
        "-f",
        "{{(index .NetworkSettings.Networks \"n1\").EndpointID}}",
        "a1",
    ])?;
    let (s, v) = c.net().call(
        "NetworkDriver.EndpointOperInfo",
        Some(&format!(
            r#"{{"NetworkID":"{net_id}","EndpointID":"{ep}"}}"#
        )),
    )?;
    ensure!(s == 200, "EndpointOperInfo: {v}");
    let info = &v["Value"];
    let port = format!("vb{}", &ep[..10]);
    let vlan = c.ovs().vsctl(&["get", "port", &port, "tag"])?;
    ensure!(info["berth.vlan"] == vlan.as_str(), "{v} (OVS tag {vlan})");
    let ofport = c.ovs().vsctl(&["get", "interface", &port, "ofport"])?;
    ensure!(
        info["berth.ovs_port"] == format!("{port} (tag {vlan}, ofport {ofport})").as_str(),
        "{v}"
    );
    let ip = c.ip("a1", "n1")?;
    ensure!(
        info["berth.address"]
            .as_str()
            .is_some_and(|a| a.starts_with(&format!("{ip}/"))),
        "{v}"
    );
    let mac = c.d(&[
        "inspect",
        "-f",
        "{{(index .NetworkSettings.Networks \"n1\").MacAddress}}",
        "a1",
    ])?;
    ensure!(info["berth.mac"] == mac.as_str(), "{v} (docker: {mac})");
    for shown in [
        c.d(&["inspect", "a1"])?,
        c.d(&["network", "inspect", "n1"])?,
    ] {
        ensure!(
            !shown.contains("berth.vlan"),
            "Docker shows EndpointOperInfo now: update docs/protocols.md §2"
        );
    }
    Ok(())
}

/// Issue 18: what differs between Docker 20.10 and 26 for a plugin network, each handled on
/// purpose (protocols.md §7).
fn t_docker_version_differences(c: &Ctx) -> Result<()> {
    let v26 = c.docker.version() == DockerVersion::Debian13;
    c.create_net("n11", "10.231.11.0/24", &["-o", "vlan=111"])?;
    c.create_net("n12", "10.231.12.0/24", &["-o", "vlan=112"])?;
    c.sleeper("d1", "n11", &[])?;
    // IPv6: none on an IPv4-only network's interface, with either Docker (20.10 turns IPv6 off
    // in the whole namespace, 26 on the interface only: the container's lo has ::1). So no
    // IPv6 chatter reaches the access port, which drops it (anti-spoofing) anyway.
    let v6 = c.d(&[
        "exec",
        "d1",
        "sh",
        "-c",
        "cat /proc/sys/net/ipv6/conf/eth0/disable_ipv6; ip -6 -o addr show dev eth0; echo LO; ip -6 -o addr show dev lo",
    ])?;
    let (eth0, lo) = v6.split_once("LO").unwrap_or((v6.as_str(), ""));
    ensure!(
        eth0.trim() == "1",
        "eth0 of a container on an IPv4-only berth-net network: {v6:?}"
    );
    ensure!(
        lo.contains("::1") == v26,
        "IPv6 on lo (expected only with Docker 26): {v6:?}"
    );
    let before = c.endpoints()?.len();
    // An interface name (Docker 28's ifname; 20.10 and 26 pass the driver option through as
    // well) is refused, saying why, and leaves nothing behind.
    let e = c.docker.fails(&[
        "network",
        "connect",
        "--driver-opt",
        "com.docker.network.endpoint.ifname=db0",
        "n12",
        "d1",
    ])?;
    ensure!(
        e.contains("berth-net cannot name the container's interface")
            && e.contains("ifname=\"db0\""),
        "{e}"
    );
    ensure!(
        c.endpoints()?.len() == before,
        "the refused connect left an endpoint"
    );
    // Per-interface sysctls pass berth-net: Docker 28 applies them itself; 20.10 and 26 only
    // hand the option to the driver, which leaves the container's sysctls alone.
    c.d(&[
        "network",
        "connect",
        "--driver-opt",
        "com.docker.network.endpoint.sysctls=net.ipv4.conf.IFNAME.log_martians=1",
        "n12",
        "d1",
    ])?;
    let martians = c.d(&[
        "exec",
        "d1",
        "cat",
        "/proc/sys/net/ipv4/conf/eth1/log_martians",
    ])?;
    ensure!(
        martians == "0",
        "log_martians on eth1 with Docker {}: {martians}",
        c.docker.version().label()
    );
    c.rm(&["d1"]);
    c.d(&["network", "rm", "n11", "n12"])?;
    Ok(())
}

fn t_final_cleanup(c: &Ctx) -> Result<()> {
    for n in ["a1", "a2", "b1", "b2"] {
        c.rm(&[n]);
    }
    for n in ["n1", "n2"] {
        c.d(&["network", "rm", n])?;
    }
    let (ports, links) = c.leftovers()?;
    ensure!(ports.is_empty(), "ports left on {}: {ports:?}", c.bridge);
    ensure!(links.is_empty(), "veths left: {links:?}");
    let state = c.net().admin_json(&["pool", "ls"])?;
    ensure!(
        state.as_array().is_some_and(|a| a.is_empty()),
        "pools left: {state}"
    );
    let eps = c.endpoints()?;
    if !eps.is_empty() {
        bail!("endpoints left: {eps:?}");
    }
    Ok(())
}

/// Ping from inside `from` (the container's own busybox, so its own routes, addresses and MAC)
/// with `extra` options: (sent, received).
fn ping_in(c: &Ctx, from: &str, extra: &str, ip: &str, count: u32) -> Result<(u32, u32)> {
    let out = c.d(&[
        "exec",
        from,
        "sh",
        "-c",
        &format!("ping -c {count} -i 0.2 -W 1 {extra} {ip} 2>&1; true"),
    ])?;
    ping_counts(&out).with_context(|| format!("ping output not understood: {out}"))
}

/// `n_packets` of the anti-spoofing drop flow of `container`'s port.
fn spoof_dropped(c: &Ctx, container: &str) -> Result<u64> {
    let port = port_of_container(c, container)?;
    let ofport = c.ovs().vsctl(&["get", "interface", &port, "ofport"])?;
    flow_packets(
        c,
        &format!("cookie=0xbe27000000000005/-1,in_port={ofport}"),
        &["priority=100"],
    )
}

fn mac_of(c: &Ctx, container: &str, net: &str) -> Result<String> {
    c.d(&[
        "inspect",
        "-f",
        &format!("{{{{(index .NetworkSettings.Networks \"{net}\").MacAddress}}}}"),
        container,
    ])
}

fn t_anti_spoofing(c: &Ctx) -> Result<()> {
    c.create_net("n9", "10.231.9.0/24", &["-o", "vlan=109"])?;
    c.sleeper("s1", "n9", &["--cap-add", "NET_ADMIN"])?;
    c.sleeper("s2", "n9", &[])?;
    c.sleeper("s3", "n9", &[])?;
    let (ip2, ip3) = (c.ip("s2", "n9")?, c.ip("s3", "n9")?);
    let (mac1, mac2) = (mac_of(c, "s1", "n9")?, mac_of(c, "s2", "n9")?);
    let (s, r) = ping_in(c, "s1", "", &ip3, 3)?;
    ensure!(r == s, "s1 → s3 with its own identity: {r}/{s}");
    let dropped_before = spoof_dropped(c, "s1")?;

    // A second address: nothing sent from it gets anywhere; the own one still works.
    c.d(&[
        "exec",
        "s1",
        "ip",
        "addr",
        "add",
        "10.231.9.200/24",
        "dev",
        "eth0",
    ])?;
    let (s, r) = ping_in(c, "s1", "-I 10.231.9.200", &ip3, 3)?;
    ensure!(r == 0, "s1 reached s3 from a second address: {r}/{s}");
    let (s, r) = ping_in(c, "s1", "", &ip3, 3)?;
    ensure!(r == s, "s1's own address after adding one: {r}/{s}");

    // Another container's address, announced by gratuitous ARP: s2 keeps its traffic.
    c.d(&[
        "exec",
        "s1",
        "ip",
        "addr",
        "add",
        &format!("{ip2}/32"),
        "dev",
        "eth0",
    ])?;
    c.d(&[
        "exec",
        "s1",
        "sh",
        "-c",
        &format!(
            "arping -U -c 3 -I eth0 -s {ip2} {ip2}; arping -A -c 3 -I eth0 -s {ip2} {ip2}; true"
        ),
    ])?;
    let (s, r) = ping_in(c, "s3", "", &ip2, 5)?;
    ensure!(r == s, "s3 → s2 after s1's forged ARP for {ip2}: {r}/{s}");
    let neigh = c.d(&["exec", "s3", "ip", "neigh", "show", &ip2])?;
    ensure!(
        !neigh.contains(&mac1),
        "s3 took s1's MAC for s2's {ip2}: {neigh}"
    );
    c.d(&[
        "exec",
        "s1",
        "ip",
        "addr",
        "del",
        &format!("{ip2}/32"),
        "dev",
        "eth0",
    ])?;

    // s2's MAC on s1: what it sends goes nowhere, and the bridge does not move s2's MAC.
    c.d(&["exec", "s1", "ip", "link", "set", "eth0", "address", &mac2])?;
    let (s, r) = ping_in(c, "s1", "", &ip3, 3)?;
    ensure!(r == 0, "s1 with s2's MAC reached s3: {r}/{s}");
    let (s, r) = ping_in(c, "s3", "", &ip2, 5)?;
    ensure!(r == s, "s3 → s2 while s1 had s2's MAC: {r}/{s}");
    c.d(&["exec", "s1", "ip", "link", "set", "eth0", "address", &mac1])?;
    let (s, r) = ping_in(c, "s1", "", &ip3, 3)?;
    ensure!(r == s, "s1 with its own MAC again: {r}/{s}");

    // Counted on the flow, and reported (stats; the metric reads the same list).
    let dropped = spoof_dropped(c, "s1")? - dropped_before;
    ensure!(
        dropped >= 6,
        "the drop flow counted {dropped} spoofed packets"
    );
    let ep1 = c.d(&[
        "inspect",
        "-f",
        "{{(index .NetworkSettings.Networks \"n9\").EndpointID}}",
        "s1",
    ])?;
    let reported = wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
        c.net().admin_json(&["stats"]).is_ok_and(|st| {
            st["spoof_drops"].as_array().into_iter().flatten().any(|d| {
                d["endpoint_id"] == ep1.as_str() && d["packets"].as_u64().unwrap_or(0) >= dropped
            })
        })
    });
    ensure!(
        reported,
        "spoof drops of s1 not reported: {:?}",
        c.net().admin_json(&["stats"])
    );

    // allow_spoofing=true: the same second address gets through.
    c.create_net(
        "n10",
        "10.231.10.0/24",
        &["-o", "vlan=110", "-o", "allow_spoofing=true"],
    )?;
    c.sleeper("s4", "n10", &["--cap-add", "NET_ADMIN"])?;
    c.sleeper("s5", "n10", &[])?;
    let ip5 = c.ip("s5", "n10")?;
    c.d(&[
        "exec",
        "s4",
        "ip",
        "addr",
        "add",
        "10.231.10.200/24",
        "dev",
        "eth0",
    ])?;
    let (s, r) = ping_in(c, "s4", "-I 10.231.10.200", &ip5, 3)?;
    ensure!(
        r == s,
        "allow_spoofing=true: s4's second address got {r}/{s}"
    );
    c.rm(&["s1", "s2", "s3", "s4", "s5"]);
    c.d(&["network", "rm", "n9", "n10"])?;
    Ok(())
}

/// Issue 15 §3: with ovsdb-server hung (SIGSTOP: its socket open, nothing answered) every
/// plugin call answers within its bound: the calls that need OVS fail naming it after the
/// OVS call bound (5 s) and undo what they did; those that do not (Join, EndpointOperInfo,
/// IPAM) answer at once, also on another network and while reconcile passes are stuck. When
/// it answers again, everything works and nothing is left.
fn t_hung_ovsdb(c: &Ctx) -> Result<()> {
    /// What a call needing OVS may take: its OVS bound (5 s), the store's, and a loaded CI.
    const OVS_BOUND: Duration = Duration::from_secs(15);
    const PROMPT: Duration = Duration::from_secs(3);
    let n1 = "5157a11ed0000000000000000000000000000000000000000000000000000001";
    let n2 = "5157a11ed0000000000000000000000000000000000000000000000000000002";
    let e1 = "e15a11ed00000000000000000000000000000000000000000000000000000001";
    let e2 = "e25a11ed00000000000000000000000000000000000000000000000000000002";
    let call = |method: &str, body: Value| -> Result<(u16, Value, Duration)> {
        let t = Instant::now();
        let (s, v) = c.net().call(method, Some(&body.to_string()))?;
        Ok((s, v, t.elapsed()))
    };
    // Two networks and one endpoint, made while OVS answers.
    let mut pools = Vec::new();
    for (net, subnet, vlan) in [(n1, "10.231.40.0/24", "140"), (n2, "10.231.41.0/24", "141")] {
        let (s, v, _) = call(
            "IpamDriver.RequestPool",
            json!({"AddressSpace":"","Pool":subnet}),
        )?;
        ensure!(s == 200, "RequestPool {subnet}: {v}");
        let pool = v["PoolID"].as_str().unwrap_or_default().to_string();
        let (s, v, _) = call(
            "NetworkDriver.CreateNetwork",
            json!({"NetworkID":net,"Options":{"com.docker.network.generic":{"vlan":vlan}},
                "IPv4Data":[{"AddressSpace":"","Pool":subnet}],"IPv6Data":[]}),
        )?;
        ensure!(s == 200, "CreateNetwork {vlan}: {v}");
        pools.push(pool);
    }
    let address = |pool: &str| -> Result<String> {
        let (s, v, _) = call(
            "IpamDriver.RequestAddress",
            json!({"PoolID":pool,"Address":""}),
        )?;
        ensure!(s == 200, "RequestAddress: {v}");
        Ok(v["Address"].as_str().unwrap_or_default().to_string())
    };
    let create = |net: &str, ep: &str, addr: &str| {
        call(
            "NetworkDriver.CreateEndpoint",
            json!({"NetworkID":net,"EndpointID":ep,"Interface":{"Address":addr,"AddressIPv6":"","MacAddress":""},"Options":{}}),
        )
    };
    let a1 = address(&pools[0])?;
    let (s, v, _) = create(n1, e1, &a1)?;
    ensure!(s == 200, "CreateEndpoint e1: {v}");
    let port1 = format!("vb{}", &e1[..10]);
    let port2 = format!("vb{}", &e2[..10]);
    c.ovs().pause_ovsdb()?;
    let hung = (|| -> Result<()> {
        // Passes run into the hung server meanwhile (every 2 s).
        std::thread::sleep(Duration::from_secs(3));
        let a2 = address(&pools[1])?;
        let (s, v, took) = create(n2, e2, &a2)?;
        println!(
            "    ovsdb hung: CreateEndpoint on another network answered {s} in {took:.1?}: {v}"
        );
        ensure!(took < OVS_BOUND, "CreateEndpoint took {took:?}");
        ensure!(s != 200, "CreateEndpoint succeeded without OVSDB: {v}");
        ensure!(
            v["Err"]
                .as_str()
                .is_some_and(|e| e.contains("OVS") || e.contains("Open vSwitch")),
            "error does not name OVS: {v}"
        );
        ensure!(
            !Path::new("/sys/class/net").join(&port2).exists(),
            "the failed endpoint's veth {port2} was left"
        );
        let (s, v, took) = call(
            "IpamDriver.ReleaseAddress",
            json!({"PoolID":pools[1],"Address":a2.split('/').next()}),
        )?;
        ensure!(
            s == 200 && took < PROMPT,
            "ReleaseAddress: {s} in {took:?}: {v}"
        );
        let (s, v, took) = call(
            "NetworkDriver.Join",
            json!({"NetworkID":n1,"EndpointID":e1,"SandboxKey":"/var/run/docker/netns/x","Options":{}}),
        )?;
        ensure!(s == 200 && took < PROMPT, "Join: {s} in {took:?}: {v}");
        let (s, v, took) = call(
            "NetworkDriver.EndpointOperInfo",
            json!({"NetworkID":n1,"EndpointID":e1}),
        )?;
        ensure!(
            s == 200 && took < PROMPT,
            "EndpointOperInfo: {s} in {took:?}: {v}"
        );
        let (s, v, took) = call(
            "NetworkDriver.Leave",
            json!({"NetworkID":n1,"EndpointID":e1}),
        )?;
        ensure!(s == 200 && took < PROMPT, "Leave: {s} in {took:?}: {v}");
        // DeleteEndpoint answers within its bound; its port goes when OVS answers again.
        let (s, v, took) = call(
            "NetworkDriver.DeleteEndpoint",
            json!({"NetworkID":n1,"EndpointID":e1}),
        )?;
        println!("    ovsdb hung: DeleteEndpoint answered {s} in {took:.1?}");
        ensure!(took < OVS_BOUND, "DeleteEndpoint took {took:?}: {v}");
        ensure!(s == 200, "DeleteEndpoint: {v}");
        Ok(())
    })();
    c.ovs().resume_ovsdb()?;
    hung?;
    // OVS answers again: the same CreateEndpoint works, the deleted endpoint's port goes.
    let a2 = address(&pools[1])?;
    let mut last = Value::Null;
    let created = wait_until(
        Duration::from_secs(20),
        Duration::from_millis(500),
        || match create(n2, e2, &a2) {
            Ok((200, _, _)) => true,
            Ok((_, v, _)) => {
                last = v;
                false
            }
            Err(_) => false,
        },
    );
    ensure!(
        created,
        "CreateEndpoint still failing after ovsdb-server resumed: {last}"
    );
    let gone = wait_until(Duration::from_secs(20), Duration::from_millis(300), || {
        !c.ovs()
            .ports(&c.bridge)
            .unwrap_or_default()
            .contains(&port1)
            && !Path::new("/sys/class/net").join(&port1).exists()
    });
    ensure!(
        gone,
        "port {port1} of the endpoint deleted while ovsdb hung is still there"
    );
    ensure!(
        c.ovs().ports(&c.bridge)?.contains(&port2),
        "port {port2} missing"
    );
    // Clean up through the protocol, as Docker would.
    let (s, v, _) = call(
        "NetworkDriver.DeleteEndpoint",
        json!({"NetworkID":n2,"EndpointID":e2}),
    )?;
    ensure!(s == 200, "DeleteEndpoint e2: {v}");
    for (pool, addr) in [(&pools[0], &a1), (&pools[1], &a2)] {
        call(
            "IpamDriver.ReleaseAddress",
            json!({"PoolID":pool,"Address":addr.split('/').next()}),
        )?;
    }
    for (net, pool) in [(n1, &pools[0]), (n2, &pools[1])] {
        let (s, v, _) = call("NetworkDriver.DeleteNetwork", json!({"NetworkID":net}))?;
        ensure!(s == 200, "DeleteNetwork: {v}");
        call("IpamDriver.ReleasePool", json!({"PoolID":pool}))?;
    }
    let ports = c.ovs().ports(&c.bridge)?;
    ensure!(
        !ports.contains(&port1) && !ports.contains(&port2),
        "ports left: {ports:?}"
    );
    Ok(())
}

fn main() {
    harness::run(
        "network",
        setup,
        &[
            ("protocol_handshake", t_protocol),
            ("ping_and_tcp_on_one_network", t_ping_and_tcp),
            ("vlan_isolation", t_vlan_isolation),
            (
                "static_ip_connect_disconnect",
                t_static_ip_connect_disconnect,
            ),
            ("network_rm", t_network_rm),
            ("bad_input_rejected_in_cli", t_bad_input),
            ("fifty_containers_no_leaks", t_fifty_containers_no_leaks),
            ("restart_netplugin_keeps_traffic", t_restart_netplugin),
            (
                "leaked_veths_removed_at_start",
                t_leaked_veths_removed_at_start,
            ),
            ("leaked_endpoints_released", t_leaked_endpoints),
            ("arp_proxy_answers_known_addresses", t_arp_proxy),
            ("rate_limits_per_container", t_rate_limits),
            ("live_rate_change", t_live_rate_change),
            (
                "same_mac_on_two_vlans_metered_apart",
                t_same_mac_on_two_vlans,
            ),
            ("foreign_bridge_left_alone", t_foreign_bridge_left_alone),
            ("anti_spoofing", t_anti_spoofing),
            ("restart_ovs_recovers", t_restart_ovs),
            ("hung_ovsdb_calls_answer_within_bounds", t_hung_ovsdb),
            ("restart_dockerd_keeps_traffic", t_restart_dockerd),
            ("admin_cli", t_admin_cli),
            ("published_ports_refused", t_published_ports_refused),
            ("endpoint_oper_info", t_oper_info),
            ("prune_only_own_ports", t_prune_only_own_ports),
            ("host_identity_change_refused", t_host_identity),
            ("docker_version_differences", t_docker_version_differences),
            ("final_no_leftovers", t_final_cleanup),
        ],
    );
}
