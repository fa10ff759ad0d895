//! The fleet end to end (issue 13 §2), in the lab of `integration::lab`: three hosts (each its
//! own network + mount namespace with OVS, netplugin `--store etcd`, volplugin, containerd and
//! dockerd), a trunk switch (OVS in a namespace) and a 3-member etcd cluster. Traffic only flows
//! inside the lab's namespaces: hosts and etcd on 198.18.0.0/24, containers on 198.19.x.0/24.
//! Needs root, docker.io, containerd, runc, busybox-static, openvswitch-switch, etcd-server,
//! iproute2, ethtool and util-linux.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use integration::lab::relay::Relay;
use integration::lab::traffic::{first_reply_seq, ping_counts, ping_raw, tcp_transfer};
use integration::lab::{n_packets, Host, Lab, LabOptions, MGMT_IF};
use integration::procs::wait_until;
use integration::{berth_network_args, harness, TEST_IMAGE};
use serde_json::Value;

/// The network every host has: same subnet, same VLAN.
const N1: &str = "n1";
const N1_SUBNET: &str = "198.19.1.0/24";
const N1_VLAN: u16 = 101;
/// netplugin's `--release-leaked-after` in the lab: short, so the test sees the sweep act.
const LEAK_GRACE: &str = "2s";
/// netplugin's `--fence-after` in the lab (lease TTL: the default 10 s).
const FENCE_AFTER: &str = "6s";

struct Ctx {
    lab: Lab,
}

fn setup() -> Result<Ctx> {
    let lab = Lab::start(LabOptions {
        // The reconcile interval stays netplugin's default (2 s): how fast hosts learn of each
        // other's endpoints must not rest on it.
        netplugin_args: [
            "--docker-sync-interval",
            "0.5",
            "--release-leaked-after",
            LEAK_GRACE,
            "--fence-after",
            FENCE_AFTER,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        ..LabOptions::default()
    })?;
    let c = Ctx { lab };
    for h in c.hosts() {
        create_net(h, N1, N1_SUBNET, N1_VLAN, &[])?;
    }
    Ok(c)
}

impl Ctx {
    fn h(&self, name: &str) -> &Host {
        self.lab.host(name)
    }

    fn hosts(&self) -> &[Host] {
        &self.lab.hosts
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers.

fn create_net(h: &Host, name: &str, subnet: &str, vlan: u16, extra: &[&str]) -> Result<String> {
    let vlan = format!("vlan={vlan}");
    let mut options = vec!["-o", vlan.as_str()];
    options.extend_from_slice(extra);
    h.ok(&berth_network_args(subnet, &options, name))
}

fn sleeper(h: &Host, name: &str, net: &str, extra: &[&str]) -> Result<String> {
    h.sleeper(name, net, extra)
}

fn inspect_net(h: &Host, name: &str, net: &str, field: &str) -> Result<String> {
    h.container_net(name, net, field)
}

fn ip(h: &Host, name: &str) -> Result<String> {
    h.container_net(name, N1, "IPAddress")
}

fn pid(h: &Host, name: &str) -> Result<u32> {
    h.container_pid(name)
}

/// `count` pings at `interval` from the container `from` on `h`: (sent, received).
fn ping(h: &Host, from: &str, ip: &str, count: u32, interval: &str) -> Result<(u32, u32)> {
    let out = ping_raw(
        pid(h, from)?,
        ip,
        &["-c", &count.to_string(), "-i", interval, "-W", "1"],
        Duration::from_secs(u64::from(count) + 20),
    )?;
    ping_counts(&out).ok_or_else(|| anyhow!("ping output not understood: {out}"))
}

/// busybox arping in container `from` on `h`: the MACs that answered (lower case, as Docker
/// prints them) and the output.
fn arping(h: &Host, from: &str, ip: &str, count: u32) -> Result<(Vec<String>, String)> {
    let out = h.ok(&[
        "exec",
        from,
        "sh",
        "-c",
        &format!("arping -c {count} -w 3 -I eth0 {ip}; echo rc=$?"),
    ])?;
    // "Unicast reply from 198.19.1.11 [2:b7:c6:13:1:b] 0.311ms" (leading zeros dropped).
    let macs = out
        .lines()
        .filter(|l| l.contains("reply from"))
        .filter_map(|l| {
            let mac = l.split('[').nth(1)?.split(']').next()?;
            let octets: Vec<String> = mac
                .split(':')
                .filter_map(|o| u8::from_str_radix(o, 16).ok())
                .map(|o| format!("{o:02x}"))
                .collect();
            (octets.len() == 6).then(|| octets.join(":"))
        })
        .collect();
    Ok((macs, out))
}

/// `n_packets` of host `h`'s ARP proxy answer for `ip` (table 1, priority 100), if installed.
fn arp_answers(h: &Host, ip: &str) -> Result<Option<u64>> {
    let dump = h.ofctl("dump-flows", &[&format!("table=2,arp,arp_tpa={ip}")])?;
    Ok(dump
        .lines()
        .any(|l| l.contains("priority=100") && l.contains("IN_PORT"))
        .then(|| n_packets(&dump, &["priority=100", "IN_PORT"])))
}

/// `n_packets` of the switch's counting flow for ARP requests asking for `ip`.
fn switch_arp_requests(c: &Ctx, ip: &str) -> Result<u64> {
    let dump = c
        .lab
        .switch()
        .ofctl("dump-flows", &[&format!("arp,arp_tpa={ip}")])?;
    Ok(n_packets(&dump, &["priority=10"]))
}

/// Every address of `subnet` held in the store, with the host holding it.
fn pool_addresses(h: &Host, subnet: &str) -> Result<BTreeMap<String, String>> {
    let pool = h.netplugin_json(&["pool", "show", subnet])?;
    Ok(pool["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            (
                a["address"].as_str().unwrap_or_default().to_string(),
                format!(
                    "{} ({})",
                    a["host"].as_str().unwrap_or_default(),
                    a["held_by"].as_str().unwrap_or_default()
                ),
            )
        })
        .collect())
}

fn held_by(h: &Host, subnet: &str, ip: &str) -> Result<Option<String>> {
    Ok(pool_addresses(h, subnet)?.remove(ip))
}

fn ports(h: &Host) -> Result<BTreeSet<String>> {
    Ok(h.vsctl(&["list-ports", integration::lab::BRIDGE])?
        .lines()
        .filter(|l| l.starts_with("vb"))
        .map(str::to_string)
        .collect())
}

fn endpoint_ids_of(h: &Host, host_id: &str) -> Result<BTreeSet<String>> {
    Ok(h.netplugin_json(&["endpoint", "ls"])?
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["host_id"] == host_id)
        .filter_map(|e| e["id"].as_str().map(str::to_string))
        .collect())
}

/// The long-lived containers later tests talk to: x on a, y on b, z on c (on n1), created or
/// re-created when missing or not running (each test can run alone).
fn base(c: &Ctx) -> Result<()> {
    for (h, name) in [(c.h("a"), "xa"), (c.h("b"), "yb"), (c.h("c"), "zc")] {
        let running = h.ok(&["inspect", "-f", "{{.State.Running}}", name]);
        if !running.is_ok_and(|r| r == "true") {
            rm(h, &[name]);
            sleeper(h, name, N1, &[])?;
        }
    }
    Ok(())
}

fn rm(h: &Host, names: &[&str]) {
    for chunk in names.chunks(30) {
        let mut args = vec!["rm", "-f"];
        args.extend_from_slice(chunk);
        let _ = h.ok(&args);
    }
}

// ---------------------------------------------------------------------------------------------
// 1. One pool, no collisions, 60 containers at once.

fn t_one_pool_no_collisions(c: &Ctx) -> Result<()> {
    // The network created on every host is one pool in etcd, used by all three.
    let pools = c.h("a").netplugin_json(&["pool", "ls"])?;
    let ours: Vec<&Value> = pools
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["subnet"] == N1_SUBNET)
        .collect();
    ensure!(ours.len() == 1, "pools for {N1_SUBNET}: {pools}");
    let hosts: BTreeSet<&str> = ours[0]["hosts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    ensure!(
        hosts == BTreeSet::from(["host-a", "host-b", "host-c"]),
        "pool used by {hosts:?}"
    );
    for h in c.hosts() {
        let nets = h.netplugin_json(&["network", "ls"])?;
        ensure!(
            nets.as_array()
                .into_iter()
                .flatten()
                .any(|n| n["subnet"] == N1_SUBNET
                    && n["vlan"] == N1_VLAN
                    && n["pool_id"] == ours[0]["id"]),
            "host {}: {nets}",
            h.name
        );
    }
    let before = pool_addresses(c.h("a"), N1_SUBNET)?;

    // 20 containers on each host, 4 `docker run` at a time per host: 12 at once.
    const PER_HOST: usize = 20;
    let t0 = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let mut handles = Vec::new();
        for h in c.hosts() {
            for t in 0..4 {
                handles.push(s.spawn(move || -> Result<()> {
                    for i in (t..PER_HOST).step_by(4) {
                        sleeper(h, &format!("f{}{i}", h.name), N1, &[])?;
                    }
                    Ok(())
                }));
            }
        }
        for h in handles {
            h.join().map_err(|_| anyhow!("thread panicked"))??;
        }
        Ok(())
    })?;
    println!(
        "    {} containers started on 3 hosts in {:.1}s",
        3 * PER_HOST,
        t0.elapsed().as_secs_f64()
    );
    // Every address once, held in the store by the host that runs the container.
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let held = pool_addresses(c.h("b"), N1_SUBNET)?;
    for h in c.hosts() {
        let names: Vec<String> = (0..PER_HOST).map(|i| format!("f{}{i}", h.name)).collect();
        let mut args = vec![
            "inspect",
            "-f",
            "{{.Name}} {{(index .NetworkSettings.Networks \"n1\").IPAddress}}",
        ];
        args.extend(names.iter().map(String::as_str));
        for line in h.ok(&args)?.lines() {
            let (name, addr) = line.split_once(' ').context("inspect line")?;
            if let Some(other) = seen.insert(addr.to_string(), format!("{}{name}", h.name)) {
                bail!("{addr} given twice: {other} and {}{name}", h.name);
            }
            let holder = held.get(addr).cloned().unwrap_or_default();
            ensure!(
                holder.starts_with(&h.host_id),
                "{addr} of {name} on {} is held by {holder:?} in the store",
                h.name
            );
        }
    }
    ensure!(seen.len() == 3 * PER_HOST, "{} addresses", seen.len());
    std::thread::scope(|s| {
        for h in c.hosts() {
            s.spawn(move || {
                let names: Vec<String> = (0..PER_HOST).map(|i| format!("f{}{i}", h.name)).collect();
                let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                rm(h, &refs);
            });
        }
    });
    let mut after = BTreeMap::new();
    let back = wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
        after = pool_addresses(c.h("c"), N1_SUBNET).unwrap_or_default();
        after == before
    });
    ensure!(
        back,
        "addresses left after removal: before {before:?}, after {after:?}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2. Across the trunk: ping and TCP.

fn t_cross_host_ping_and_tcp(c: &Ctx) -> Result<()> {
    let (a, b, hc) = (c.h("a"), c.h("b"), c.h("c"));
    base(c)?;
    let (xa, yb, zc) = (ip(a, "xa")?, ip(b, "yb")?, ip(hc, "zc")?);
    for (h, from, to) in [(a, "xa", &yb), (b, "yb", &zc), (hc, "zc", &xa)] {
        let (s, r) = ping(h, from, to, 3, "0.2")?;
        ensure!(r == s, "ping {from} on {} → {to}: {r}/{s}", h.name);
    }
    const SIZE: usize = 8 << 20;
    let mbit = tcp_transfer(a, "xa", b, "yb", &yb, SIZE)?;
    println!(
        "    TCP x (host a) → y (host b): {} MiB at {mbit:.0} Mbit/s",
        SIZE >> 20
    );
    // It went over the trunk: the switch learned both MACs on their hosts' ports.
    let sw = c.lab.switch();
    let mac_x = inspect_net(a, "xa", N1, "MacAddress")?;
    let mac_y = inspect_net(b, "yb", N1, "MacAddress")?;
    ensure!(
        sw.port_of_mac(N1_VLAN, &mac_x)?.as_deref() == Some("t-a")
            && sw.port_of_mac(N1_VLAN, &mac_y)?.as_deref() == Some("t-b"),
        "switch MAC table: {}",
        sw.fdb()?
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 3. VLAN isolation across hosts.

fn t_vlan_isolation(c: &Ctx) -> Result<()> {
    let (a, hc) = (c.h("a"), c.h("c"));
    base(c)?;
    create_net(a, "n2", "198.19.2.0/24", 102, &[])?;
    create_net(hc, "n2", "198.19.2.0/24", 102, &[])?;
    sleeper(hc, "vc", "n2", &["--cap-add", "NET_ADMIN"])?;
    sleeper(a, "wa", "n2", &[])?;
    // Control: VLAN 102 itself crosses the trunk.
    let wa = inspect_net(a, "wa", "n2", "IPAddress")?;
    let (s, r) = ping(hc, "vc", &wa, 2, "0.2")?;
    ensure!(r == s, "same-VLAN control ping v (c) → w (a): {r}/{s}");
    // v takes an address in n1's subnet: nothing of n1 answers, on any host.
    hc.ok(&[
        "exec",
        "vc",
        "ip",
        "addr",
        "add",
        "198.19.1.200/24",
        "dev",
        "eth0",
    ])?;
    for (h, name) in [(a, "xa"), (c.h("b"), "yb"), (hc, "zc")] {
        let target = ip(h, name)?;
        let (s, r) = ping(hc, "vc", &target, 2, "0.2")?;
        ensure!(
            r == 0,
            "VLAN 102 reached {name} on host {} ({target}): {r}/{s}",
            h.name
        );
        let (macs, out) = arping(hc, "vc", &target, 2)?;
        ensure!(
            macs.is_empty(),
            "ARP crossed VLANs to {name} on {}: {out}",
            h.name
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 4. A database moves from host a to host b with its address.

const DB_IP: &str = "198.19.1.50";

fn db_args() -> Vec<&'static str> {
    // Like current Docker on IPv4-only networks: no IPv6 chatter teaches the switch anything.
    vec![
        "--ip",
        DB_IP,
        "--sysctl",
        "net.ipv6.conf.all.disable_ipv6=1",
        "--sysctl",
        "net.ipv6.conf.default.disable_ipv6=1",
    ]
}

fn t_move_database(c: &Ctx) -> Result<()> {
    let (a, b, hc) = (c.h("a"), c.h("b"), c.h("c"));
    base(c)?;
    sleeper(a, "db", N1, &db_args())?;
    let mac_a = inspect_net(a, "db", N1, "MacAddress")?;
    // The client on host c talks to it.
    let (s, r) = ping(hc, "zc", DB_IP, 3, "0.2")?;
    ensure!(r == s, "client z (c) → db on a: {r}/{s}");
    // While a holds the address, b may not take it; the error names host a.
    let mut args = vec!["run", "-d", "--name", "db-early", "--network", N1];
    args.extend(db_args());
    args.extend([TEST_IMAGE, "sleep", "3600"]);
    let e = b.fails(&args)?;
    rm(b, &["db-early"]);
    ensure!(
        e.contains(DB_IP) && e.contains("already in use") && e.contains("host-a"),
        "--ip {DB_IP} on b while a holds it: {e}"
    );
    // Move: removed on a, started on b with the same address.
    a.ok(&["rm", "-f", "db"])?;
    sleeper(b, "db", N1, &db_args())?;
    let started = Instant::now();
    let mac_b = inspect_net(b, "db", N1, "MacAddress")?;
    ensure!(
        mac_a == mac_b,
        "MAC changed with the move: {mac_a} → {mac_b}"
    );
    // The client, with its ARP cache as it is, pings every 50 ms.
    let zpid = pid(hc, "zc")?;
    let ping_started = started.elapsed();
    let out = ping_raw(
        zpid,
        DB_IP,
        &["-c", "60", "-i", "0.05", "-W", "1"],
        Duration::from_secs(20),
    )?;
    let first_seq = first_reply_seq(&out);
    let (sent, got) = ping_counts(&out).unwrap_or((0, 0));
    let sw = c.lab.switch();
    let where_now = sw.port_of_mac(N1_VLAN, &mac_b).unwrap_or(None);
    let Some(seq) = first_seq else {
        bail!(
            "the moved database never answered the client on c ({got}/{sent} pings over 3 s); \
             the trunk switch has its MAC {mac_b} on {where_now:?} (it runs on b, port t-b): \
             nothing announced the move"
        );
    };
    let reachable_after = ping_started + Duration::from_millis(50 * u64::from(seq));
    println!(
        "    db reachable from c {:.0} ms after `docker run` on b returned ({got}/{sent} pings)",
        reachable_after.as_secs_f64() * 1000.0
    );
    ensure!(
        reachable_after <= Duration::from_secs(1),
        "the moved database answered only after {reachable_after:?} (switch: MAC on {where_now:?})"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 5. ARP proxy across hosts.

fn t_arp_proxy_across_hosts(c: &Ctx) -> Result<()> {
    let (a, hc) = (c.h("a"), c.h("c"));
    base(c)?;
    let xa = ip(a, "xa")?;
    let mac_x = inspect_net(a, "xa", N1, "MacAddress")?;
    const ROUTER: &str = "198.19.1.254";
    let sw = c.lab.switch();
    // Counting flows on the switch: ARP requests for x's address and for the router's.
    for tpa in [xa.as_str(), ROUTER] {
        sw.ofctl(
            "add-flow",
            &[&format!(
                "priority=10,arp,arp_op=1,arp_tpa={tpa},actions=NORMAL"
            )],
        )?;
    }
    c.lab.attach_peer("rt", N1_VLAN, &format!("{ROUTER}/24"))?;
    let res = (|| -> Result<()> {
        // Host c's OVS knows x (on host a) from the store.
        let ready = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
            arp_answers(hc, &xa).is_ok_and(|n| n.is_some())
        });
        ensure!(ready, "host c has no ARP answer for x ({xa}) on host a");
        let answered0 = arp_answers(hc, &xa)?.unwrap_or(0);
        let trunk0 = switch_arp_requests(c, &xa)?;
        let (macs, out) = arping(hc, "zc", &xa, 3)?;
        ensure!(
            macs.len() == 3 && macs.iter().all(|m| *m == mac_x),
            "z (c) asked for x ({xa}, {mac_x}): {out}"
        );
        let answered = arp_answers(hc, &xa)?.unwrap_or(0) - answered0;
        let on_trunk = switch_arp_requests(c, &xa)? - trunk0;
        ensure!(
            answered == 3 && on_trunk == 0,
            "host c's OVS answered {answered} of 3; {on_trunk} requests reached the trunk"
        );
        // An address nobody in the fleet holds (a router on the trunk) still gets through.
        let trunk0 = switch_arp_requests(c, ROUTER)?;
        let (macs, out) = arping(hc, "zc", ROUTER, 2)?;
        ensure!(
            !macs.is_empty(),
            "the router on the trunk did not answer ARP: {out}"
        );
        ensure!(
            switch_arp_requests(c, ROUTER)? > trunk0,
            "no request for {ROUTER} on the trunk"
        );
        let (s, r) = ping(hc, "zc", ROUTER, 2, "0.2")?;
        ensure!(r == s, "z → router: {r}/{s}");
        Ok(())
    })();
    let _ = sw.ofctl(
        "del-flows",
        &[
            "--strict",
            &format!("priority=10,arp,arp_op=1,arp_tpa={xa}"),
        ],
    );
    let _ = sw.ofctl(
        "del-flows",
        &[
            "--strict",
            &format!("priority=10,arp,arp_op=1,arp_tpa={ROUTER}"),
        ],
    );
    c.lab.remove_peer("rt")?;
    res
}

// ---------------------------------------------------------------------------------------------
// 6. A host dies.

fn t_host_death(c: &Ctx) -> Result<()> {
    let res = host_death(c);
    // Whatever happened, leave no container of this test behind for the next ones.
    rm(c.h("b"), &["e1", "t6"]);
    rm(c.h("a"), &["d1", "d2"]);
    res
}

fn host_death(c: &Ctx) -> Result<()> {
    let (a, b, hc) = (c.h("a"), c.h("b"), c.h("c"));
    base(c)?;
    sleeper(a, "d1", N1, &[])?;
    sleeper(a, "d2", N1, &[])?;
    let d1 = ip(a, "d1")?;
    let dead_ports: BTreeSet<String> = ["d1", "d2"]
        .iter()
        .map(|n| inspect_net(a, n, N1, "EndpointID").map(|e| format!("vb{}", &e[..10])))
        .collect::<Result<_>>()?;
    let others_before: BTreeSet<String> = endpoint_ids_of(b, "host-b")?
        .union(&endpoint_ids_of(b, "host-c")?)
        .cloned()
        .collect();
    let (b_ports, c_ports) = (ports(b)?, ports(hc)?);

    a.kill9_all()?;
    let killed = Instant::now();
    // Its addresses stay its own while its lease lives ...
    let mut args = vec!["run", "-d", "--name", "t6", "--network", N1, "--ip", &d1];
    args.extend([TEST_IMAGE, "sleep", "3600"]);
    let e = b.fails(&args)?;
    rm(b, &["t6"]);
    ensure!(e.contains("host-a"), "--ip {d1} of dead host a, on b: {e}");
    let e = b
        .netplugin_text(&["pool", "reclaim", "--host", "host-a"])
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
    ensure!(
        e.contains("is alive"),
        "reclaim of host-a {:.1}s after its death was not refused: {e:?}",
        killed.elapsed().as_secs_f64()
    );
    // ... and after it expired, until they are reclaimed.
    let gone = wait_until(Duration::from_secs(30), Duration::from_millis(500), || {
        b.netplugin_json(&["host", "ls"]).is_ok_and(|v| {
            v.as_array()
                .into_iter()
                .flatten()
                .any(|h| h["host"] == "host-a" && h["alive"] == false)
        })
    });
    ensure!(gone, "host-a's lease still alive 30 s after its death");
    println!(
        "    host a's lease gone {:.1}s after kill -9",
        killed.elapsed().as_secs_f64()
    );
    let e = b.fails(&args)?;
    rm(b, &["t6"]);
    ensure!(
        e.contains("host-a"),
        "--ip {d1} after the lease expired, before reclaim: {e}"
    );
    let out = b.netplugin_text(&["pool", "reclaim", "--host", "host-a"])?;
    println!("    reclaim: {}", out.lines().next().unwrap_or_default());
    sleeper(b, "e1", N1, &["--ip", &d1])?;
    let (s, r) = ping(hc, "zc", &d1, 2, "0.2")?;
    ensure!(r == s, "z (c) → e1 (b) at {d1}: {r}/{s}");

    // Host a comes back: it cleans up its own dead endpoints and nothing else.
    let t = Instant::now();
    a.start_all()?;
    println!("    host a back in {:.1}s", t.elapsed().as_secs_f64());
    let mut left = BTreeSet::new();
    let clean = wait_until(Duration::from_secs(30), Duration::from_millis(300), || {
        left = ports(a)
            .unwrap_or_default()
            .intersection(&dead_ports)
            .cloned()
            .collect();
        left.is_empty()
    });
    ensure!(clean, "dead endpoints' ports still on host a: {left:?}");
    // b's hold on d1 stays: through a's boot, and when a's dockerd removes its dead
    // containers (Docker then releases their endpoints and addresses).
    for when in ["host a booted again", "host a removed its dead containers"] {
        if when.contains("removed") {
            let _ = a.ok(&["rm", "-f", "d1", "d2"]);
            std::thread::sleep(Duration::from_secs(1));
        }
        let holder = held_by(b, N1_SUBNET, &d1)?.unwrap_or_default();
        ensure!(
            holder.starts_with("host-b"),
            "after {when}, {d1} (e1's, on host b) is held by {holder:?}: host a released an \
             address that host b holds"
        );
    }
    let (s, r) = ping(hc, "zc", &d1, 2, "0.2")?;
    ensure!(r == s, "e1 lost its network when a came back: {r}/{s}");
    let others_after: BTreeSet<String> = endpoint_ids_of(b, "host-b")?
        .union(&endpoint_ids_of(b, "host-c")?)
        .cloned()
        .collect();
    ensure!(
        others_before.is_subset(&others_after),
        "endpoints of b/c lost: {:?}",
        others_before.difference(&others_after).collect::<Vec<_>>()
    );
    ensure!(
        b_ports.is_subset(&ports(b)?) && c_ports.is_subset(&ports(hc)?),
        "ports of b/c lost"
    );
    // Host a works again.
    base(c)?;
    let (s, r) = ping(a, "xa", &ip(b, "yb")?, 2, "0.2")?;
    ensure!(r == s, "x on the revived host a → y: {r}/{s}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 7. Leaked endpoints, rate limits and the ARP proxy in etcd mode with three hosts.

/// An endpoint Docker does not know (as if dockerd forgot it): IPAM + CreateEndpoint on `h`'s
/// plugin socket. Returns its id.
fn leak_endpoint(h: &Host, ip: &str, salt: u64) -> Result<String> {
    let network_id = h.ok(&["network", "inspect", "-f", "{{.Id}}", N1])?;
    let pool = h.netplugin_json(&["pool", "show", N1_SUBNET])?;
    let pool_id = pool["id"].as_str().context("pool id")?.to_string();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as u64;
    let seed = (nanos ^ salt).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let id = format!("{seed:016x}{:016x}{seed:016x}{:016x}", !seed, salt);
    let (s, v) = h.net_call(
        "IpamDriver.RequestAddress",
        Some(&format!(
            r#"{{"PoolID":"{pool_id}","Address":"{ip}","Options":{{}}}}"#
        )),
    )?;
    ensure!(s == 200, "RequestAddress {ip}: {v}");
    let (s, v) = h.net_call(
        "NetworkDriver.CreateEndpoint",
        Some(&format!(
            r#"{{"NetworkID":"{network_id}","EndpointID":"{id}","Interface":{{"Address":"{}","AddressIPv6":"","MacAddress":""}},"Options":{{}}}}"#,
            v["Address"].as_str().unwrap_or_default()
        )),
    )?;
    ensure!(s == 200, "CreateEndpoint: {v}");
    Ok(id)
}

fn t_leaks_rates_arp_in_etcd_mode(c: &Ctx) -> Result<()> {
    let (a, b, hc) = (c.h("a"), c.h("b"), c.h("c"));
    base(c)?;
    // Leaked endpoints: on demand on a; another host's is refused; automatically on b.
    let leak = leak_endpoint(a, "198.19.1.201", 1)?;
    let out = a.netplugin_text(&["endpoint", "release", &leak[..12]])?;
    ensure!(
        out.contains("198.19.1.201") && out.contains("released"),
        "{out}"
    );
    ensure!(
        held_by(c.h("c"), N1_SUBNET, "198.19.1.201")?.is_none(),
        "address still held"
    );
    let leak = leak_endpoint(b, "198.19.1.202", 2)?;
    let e = hc
        .netplugin_text(&["endpoint", "release", &leak[..12]])
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
    ensure!(e.contains("host-b"), "c released b's endpoint: {e:?}");
    let port = format!("vb{}", &leak[..10]);
    let t = Instant::now();
    let gone = wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
        held_by(a, N1_SUBNET, "198.19.1.202").is_ok_and(|h| h.is_none())
            && ports(b).is_ok_and(|p| !p.contains(&port))
    });
    ensure!(gone, "b's leaked endpoint {port} still there after 30 s");
    println!(
        "    leaked endpoint on b released after {:.1}s (grace {LEAK_GRACE})",
        t.elapsed().as_secs_f64()
    );

    // Rate limits on a network of two hosts: 20 Mbit/s across the trunk.
    create_net(a, "n6", "198.19.6.0/24", 106, &["-o", "rate=20M"])?;
    create_net(b, "n6", "198.19.6.0/24", 106, &["-o", "rate=20M"])?;
    sleeper(a, "r1", "n6", &[])?;
    sleeper(b, "r2", "n6", &[])?;
    for h in [a, b] {
        let meters = h.ofctl("dump-meters", &[])?;
        let n = meters.lines().filter(|l| l.contains("meter=")).count();
        ensure!(
            n == 2 && meters.contains("rate=20000"),
            "host {}: {meters}",
            h.name
        );
    }
    // ARP answers only where a port on the VLAN can ask for them: b (r2) answers for r1's
    // address, c (no port on VLAN 106) installs nothing for it.
    let r1 = inspect_net(a, "r1", "n6", "IPAddress")?;
    let on_b = wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
        arp_answers(b, &r1).is_ok_and(|n| n.is_some())
    });
    ensure!(on_b, "b does not answer ARP for r1 ({r1}) on a");
    ensure!(
        arp_answers(hc, &r1)?.is_none(),
        "c answers ARP for r1 ({r1}) on VLAN 106, where it has no port"
    );
    let bytes = 12 << 20;
    let limited = tcp_transfer(
        a,
        "r1",
        b,
        "r2",
        &inspect_net(b, "r2", "n6", "IPAddress")?,
        bytes,
    )?;
    let bits = (bytes * 8) as f64 / 1e6;
    let ceiling = bits / ((bits - 16.0) / 20.0);
    println!("    TCP r1 (a) → r2 (b) at rate=20M: {limited:.1} Mbit/s (at most {ceiling:.1})");
    ensure!(
        (8.0..=ceiling * 1.15).contains(&limited),
        "TCP across hosts at rate=20M went at {limited:.1} Mbit/s"
    );
    rm(a, &["r1"]);
    rm(b, &["r2"]);

    // ARP proxy: endpoints made on a are answered on b and c within a second (five of them,
    // so that a lucky phase of the hosts' periodic passes cannot make this pass), and
    // forgotten when they go.
    let mut worst = Duration::ZERO;
    for i in 0..5 {
        let name = format!("q{i}");
        sleeper(a, &name, N1, &[])?;
        let t = Instant::now();
        let qa = ip(a, &name)?;
        let learned = wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
            [b, hc]
                .iter()
                .all(|h| arp_answers(h, &qa).is_ok_and(|n| n.is_some()))
        });
        worst = worst.max(t.elapsed());
        ensure!(learned, "b and c do not answer ARP for {name} ({qa}) on a");
        rm(a, &[&name]);
        let forgotten = wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
            [b, hc]
                .iter()
                .all(|h| arp_answers(h, &qa).is_ok_and(|n| n.is_none()))
        });
        ensure!(forgotten, "ARP answers for removed {name} ({qa}) remain");
    }
    println!(
        "    endpoints on a answered by b's and c's OVS at most {:.0} ms after their start",
        worst.as_secs_f64() * 1000.0
    );
    // The figure's goal is 200 ms; a second leaves room for a loaded machine.
    ensure!(
        worst <= Duration::from_secs(1),
        "b and c answered ARP for an endpoint on a only {:.0} ms after its start: hosts learn \
         of other hosts' endpoints only at their next reconcile pass",
        worst.as_secs_f64() * 1000.0
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 8. Fencing (issue 14 §2): host a cut off from etcd stops its containers' traffic before its
// lease can expire; with the link back, traffic resumes for the addresses it still holds.

fn t_partition_fences(c: &Ctx) -> Result<()> {
    let res = partition_fences(c);
    // Whatever happened, the link is back and the container gone.
    let _ = c.h("a").node.ip(&["link", "set", MGMT_IF, "up"]);
    rm(c.h("a"), &["f1"]);
    res
}

fn partition_fences(c: &Ctx) -> Result<()> {
    let (a, b, hc) = (c.h("a"), c.h("b"), c.h("c"));
    base(c)?;
    sleeper(a, "f1", N1, &[])?;
    let f1 = ip(a, "f1")?;
    let port = format!("vb{}", &inspect_net(a, "f1", N1, "EndpointID")?[..10]);
    let (s, r) = ping(hc, "zc", &f1, 2, "0.2")?;
    ensure!(r == s, "z (c) → f1 (a) before the cut: {r}/{s}");

    // Host a loses etcd (its management link); the trunk, and so traffic, stays up.
    a.node.ip(&["link", "set", MGMT_IF, "down"])?;
    let cut = Instant::now();
    let fenced = wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
        ping(hc, "zc", &f1, 1, "0.2").is_ok_and(|(_, r)| r == 0)
    });
    ensure!(fenced, "f1 on host a still answers 20 s after a lost etcd");
    let after = cut.elapsed();
    // In time: host a's lease is still alive in etcd when its traffic has stopped.
    let alive = b.netplugin_json(&["host", "ls"])?;
    let a_alive = alive
        .as_array()
        .into_iter()
        .flatten()
        .any(|h| h["host"] == "host-a" && h["alive"] == true);
    println!(
        "    host a fenced {:.1}s after losing etcd (its lease alive then: {a_alive})",
        after.as_secs_f64()
    );
    ensure!(
        a_alive,
        "host a's lease had expired before its traffic stopped: fencing came too late"
    );
    ensure!(
        ports(a)?.contains(&port),
        "fencing removed f1's port {port}: it must only drop traffic"
    );
    let drops = a.ofctl("dump-flows", &["cookie=0xbe270000000000f0/-1"])?;
    ensure!(
        drops.contains("priority=65000"),
        "no fence flow on host a: {drops}"
    );

    // The link returns: the lease is renewed (or taken again), f1's address is still a's,
    // the fence is lifted.
    a.node.ip(&["link", "set", MGMT_IF, "up"])?;
    let back = Instant::now();
    let resumed = wait_until(Duration::from_secs(40), Duration::from_millis(300), || {
        ping(hc, "zc", &f1, 1, "0.2").is_ok_and(|(s, r)| s > 0 && r == s)
    });
    ensure!(
        resumed,
        "f1 still cut off 40 s after host a's link came back"
    );
    println!(
        "    traffic to f1 resumed {:.1}s after the link came back",
        back.elapsed().as_secs_f64()
    );
    let holder = held_by(b, N1_SUBNET, &f1)?.unwrap_or_default();
    ensure!(
        holder.starts_with("host-a"),
        "{f1} held by {holder:?} after the partition"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 9. The ARP proxy answers only for the endpoint that holds the address (issue 14 §2).

fn t_arp_proxy_ignores_stale_records(c: &Ctx) -> Result<()> {
    let res = arp_proxy_ignores_stale_records(c);
    rm(c.h("a"), &["s1"]);
    res
}

fn pool_id(h: &Host) -> Result<String> {
    let pool = h.netplugin_json(&["pool", "show", N1_SUBNET])?;
    Ok(pool["id"].as_str().context("pool id")?.to_string())
}

fn arp_proxy_ignores_stale_records(c: &Ctx) -> Result<()> {
    let (a, b, hc) = (c.h("a"), c.h("b"), c.h("c"));
    base(c)?;
    sleeper(a, "s1", N1, &[])?;
    let s1 = ip(a, "s1")?;
    let mac = inspect_net(a, "s1", N1, "MacAddress")?;
    let endpoint = inspect_net(a, "s1", N1, "EndpointID")?;
    let answered = wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
        [b, hc]
            .iter()
            .all(|h| arp_answers(h, &s1).is_ok_and(|n| n.is_some()))
    });
    ensure!(answered, "b and c do not answer ARP for s1 ({s1}) on a");
    // The address is released and the endpoint record stays (what a reclaim that released a
    // host's addresses leaves until it gets to its endpoints): a stale record, alone.
    let (status, v) = a.net_call(
        "IpamDriver.ReleaseAddress",
        Some(&format!(
            r#"{{"PoolID":"{}","Address":"{s1}"}}"#,
            pool_id(a)?
        )),
    )?;
    ensure!(status == 200, "ReleaseAddress {s1}: {v}");
    ensure!(
        held_by(b, N1_SUBNET, &s1)?.is_none(),
        "{s1} still held after its release"
    );
    ensure!(
        endpoint_ids_of(b, "host-a")?.contains(&endpoint),
        "s1's endpoint record went with its address: nothing stale to test"
    );
    let t = Instant::now();
    let gone = wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
        [b, hc]
            .iter()
            .all(|h| arp_answers(h, &s1).is_ok_and(|n| n.is_none()))
    });
    ensure!(
        gone,
        "b and c still answer ARP for {s1} 10 s after its address was released: the ARP proxy \
         answers for an endpoint record the address record does not name"
    );
    println!(
        "    b's and c's ARP proxies dropped the stale record's answer {:.0} ms after the \
         address was released",
        t.elapsed().as_secs_f64() * 1000.0
    );
    // Not answered by the proxies, the request goes on to the trunk and s1 answers itself.
    let (macs, out) = arping(b, "yb", &s1, 2)?;
    ensure!(
        !macs.is_empty() && macs.iter().all(|m| *m == mac),
        "y (b) asked for s1 ({s1}, {mac}) past the proxy: {out}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 10. An etcd connection dropped during an allocation (issue 14 §2): host c's netplugin talks
// to etcd through a relay of the test's (`lab::relay`), which passes an allocation's claim
// (the transaction that takes the address) to etcd and then cuts the connection before the
// answer comes back. The write landed; netplugin did not hear so.
//
// What must hold: RequestAddress either succeeds with an address that host c then holds, and
// nothing else new, or fails and nothing new is held (once its undo ran); an explicit address
// is never reported as held by someone else when host c holds it; the claim is never sent
// again after the cut. The cut reaches netplugin as a gRPC status of the call (code 1, 2, 4 or
// 14), not as a transport error. Checked by hand on this lab: with writes sent again on that
// status (`retryable` in `store/etcd.rs` without its `idempotent &&`: a blind retry), the
// relay counts the claim sent once more (the allocator reads its claim back and copes, the
// resend check fails); with that retry and the allocator of before commit 7e94490, host c
// held two new addresses for one dynamic request (the leak fails the test). With the code of
// before 7e94490 as it was, the test passed: its store did not resend on a status either.

fn t_connection_drop_during_allocation(c: &Ctx) -> Result<()> {
    let hc = c.h("c");
    let upstreams = integration::lab::ETCD_IPS
        .iter()
        .map(|ip| format!("{ip}:2379").parse())
        .collect::<Result<Vec<std::net::SocketAddr>, _>>()?;
    let relay = Relay::start(&hc.node, &upstreams)?;
    hc.set_etcd_endpoints(Some(&relay.endpoints()));
    let res = hc
        .stop_netplugin()
        .and_then(|()| hc.start_netplugin())
        .and_then(|()| connection_drop_during_allocation(c, &relay));
    // Back to the lab's etcd members, whatever happened.
    hc.set_etcd_endpoints(None);
    let back = hc.stop_netplugin().and_then(|()| hc.start_netplugin());
    drop(relay);
    res.and(back.context("restarting host c's netplugin on the lab's etcd"))
}

/// Addresses of n1's pool held by `host_id` (as host b, on its own etcd connection, sees them).
fn held_by_host(b: &Host, host_id: &str) -> Result<BTreeSet<String>> {
    Ok(pool_addresses(b, N1_SUBNET)?
        .into_iter()
        .filter(|(_, holder)| holder.starts_with(&format!("{host_id} ")))
        .map(|(ip, _)| ip)
        .collect())
}

/// What host c holds beyond `before`, once it stops changing (an undo may still be on its way).
fn new_holds(b: &Host, before: &BTreeSet<String>, want_none: bool) -> Result<BTreeSet<String>> {
    let mut new = BTreeSet::new();
    let settled = wait_until(Duration::from_secs(20), Duration::from_millis(500), || {
        new = held_by_host(b, "host-c")
            .unwrap_or_default()
            .difference(before)
            .cloned()
            .collect();
        !want_none || new.is_empty()
    });
    if !settled {
        println!("    host c still holds {new:?} 20 s later");
    }
    Ok(new)
}

fn request_address(hc: &Host, pool: &str, address: &str) -> Result<(u16, Value)> {
    hc.net_call(
        "IpamDriver.RequestAddress",
        Some(&format!(
            r#"{{"PoolID":"{pool}","Address":"{address}","Options":{{}}}}"#
        )),
    )
}

fn release_address(hc: &Host, pool: &str, address: &str) -> Result<()> {
    let (status, v) = hc.net_call(
        "IpamDriver.ReleaseAddress",
        Some(&format!(r#"{{"PoolID":"{pool}","Address":"{address}"}}"#)),
    )?;
    ensure!(status == 200, "ReleaseAddress {address}: {v}");
    Ok(())
}

fn connection_drop_during_allocation(c: &Ctx, relay: &Relay) -> Result<()> {
    let (b, hc) = (c.h("b"), c.h("c"));
    let pool = pool_id(hc)?;
    let at_start = held_by_host(b, "host-c")?;
    let in_use: BTreeSet<String> = pool_addresses(b, N1_SUBNET)?.into_keys().collect();
    let explicit = (200..250)
        .map(|i| format!("198.19.1.{i}"))
        .find(|a| !in_use.contains(a))
        .context("no free address in 198.19.1.200-249")?;
    for (what, address) in [("dynamic", ""), ("explicit", explicit.as_str())] {
        let before = held_by_host(b, "host-c")?;
        relay.arm(br#""claim":""#);
        let t = Instant::now();
        let (status, v) = request_address(hc, &pool, address)?;
        let took = t.elapsed();
        ensure!(
            relay.disarm(),
            "{what}: the relay saw no allocation claim to cut ({status}: {v}): nothing was tested"
        );
        let token = relay.cut_token().unwrap_or_default();
        println!(
            "    {what} RequestAddress, connection cut after its claim {token}: {status} in {:.1}s",
            took.as_secs_f64()
        );
        if status == 200 {
            let got = v["Address"]
                .as_str()
                .and_then(|a| a.split('/').next())
                .context("Address")?
                .to_string();
            ensure!(
                address.is_empty() || got == address,
                "{what}: asked for {address}, got {got}"
            );
            let new = new_holds(b, &before, false)?;
            ensure!(
                new == BTreeSet::from([got.clone()]),
                "{what}: RequestAddress gave {got}; host c now holds {new:?} besides what it held"
            );
            release_address(hc, &pool, &got)?;
        } else {
            let e = v["Err"].as_str().unwrap_or_default().to_string();
            ensure!(
                !e.contains("host-c"),
                "{what}: RequestAddress {address} failed naming host c, its own caller, as the \
                 holder: {e}"
            );
            let new = new_holds(b, &before, true)?;
            ensure!(
                new.is_empty(),
                "{what}: RequestAddress failed ({e}) and host c holds {new:?} anyway"
            );
        }
        // Even when the allocator copes with it (it reads its claim back), a write sent again
        // after its answer was lost is what must not happen.
        ensure!(
            relay.resent() == 0,
            "{what}: the claim {token} was sent {} more time(s) after its answer was lost: a \
             blind retry of a write",
            relay.resent()
        );
    }
    // Nothing leaked: host c holds what it held before, and each is its gateway or one of its
    // endpoints' addresses.
    let after = new_holds(b, &at_start, true)?;
    ensure!(after.is_empty(), "host c holds {after:?} more than before");
    let endpoints: BTreeSet<String> = b
        .netplugin_json(&["endpoint", "ls"])?
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["host_id"] == "host-c")
        .filter_map(|e| e["address"].as_str()?.split('/').next().map(str::to_string))
        .collect();
    for (address, holder) in pool_addresses(b, N1_SUBNET)? {
        if holder.starts_with("host-c ") && !holder.contains("gateway") {
            ensure!(
                endpoints.contains(&address),
                "{address} held by {holder} without an endpoint of host c"
            );
        }
    }
    Ok(())
}

fn main() {
    harness::run(
        "fleet",
        setup,
        &[
            (
                "one_pool_no_collisions_60_containers",
                t_one_pool_no_collisions,
            ),
            ("cross_host_ping_and_tcp", t_cross_host_ping_and_tcp),
            ("vlan_isolation_across_hosts", t_vlan_isolation),
            ("move_database_keeps_address", t_move_database),
            ("arp_proxy_across_hosts", t_arp_proxy_across_hosts),
            ("host_death_and_return", t_host_death),
            (
                "leaks_rates_arp_in_etcd_mode",
                t_leaks_rates_arp_in_etcd_mode,
            ),
            ("partition_fences_and_resumes", t_partition_fences),
            (
                "arp_proxy_ignores_stale_endpoint_records",
                t_arp_proxy_ignores_stale_records,
            ),
            (
                "connection_drop_during_allocation",
                t_connection_drop_during_allocation,
            ),
        ],
    );
}
