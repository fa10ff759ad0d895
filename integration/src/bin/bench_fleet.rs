//! Fleet figures (issue 13 §3) in the lab (`integration::lab`), each next to its same-run
//! baseline, with netplugin's default settings:
//!
//! - TCP throughput between containers on two hosts across the trunk vs two containers on one
//!   host (both on the netdev datapath), alternating, median of the rounds, and the ratio;
//! - a database moving between hosts a and b with `--ip X`: time from `docker run` returning on
//!   the new host to the first reply seen by a client on host c pinging every 20 ms (p50, p99;
//!   moves never answered within 3 s are counted apart). Goal: p99 ≤ 1 s;
//! - time from CreateEndpoint on host a until host c's ARP proxy answers for it, with 100 and
//!   with 1,000 endpoints in the fleet (p50, p99). Goal: p99 ≤ 200 ms, flat.
//!
//! Usage (root; what the fleet suite needs):
//!     cargo run --release -p integration --bin bench_fleet [-- MOVES SAMPLES]
//! Defaults: 20 moves, 20 samples per fleet size. A few minutes.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};
use integration::berth_network_args;
use integration::lab::traffic::{first_reply_seq, ping_raw, tcp_transfer};
use integration::lab::{Host, Lab, LabOptions};
use integration::procs::{cpu_seconds, wait_until};

/// The idle window the per-host etcd requests and CPU are measured over.
const IDLE: Duration = Duration::from_secs(20);

/// Per host, over `window` with nothing happening: etcd requests/s (the cluster's, divided by
/// the hosts: only netplugins use it) and netplugin's CPU share.
fn idle_cost(lab: &Lab, window: Duration) -> Result<(f64, f64)> {
    let hosts: Vec<&Host> = ["a", "b", "c"].iter().map(|n| lab.host(n)).collect();
    // What the last endpoints started settles first.
    std::thread::sleep(Duration::from_secs(3));
    let pids: Vec<u32> = hosts
        .iter()
        .map(|h| h.netplugin_pid().context("netplugin pid"))
        .collect::<Result<_>>()?;
    let cpu0: f64 = pids.iter().map(|p| cpu_seconds(*p)).sum::<Result<f64>>()?;
    let req0 = lab.etcd_traffic()?.requests;
    let t = Instant::now();
    std::thread::sleep(window);
    let secs = t.elapsed().as_secs_f64();
    // The scrapes themselves are HTTP, not gRPC: not counted.
    let reqs = (lab.etcd_traffic()?.requests - req0) / secs / hosts.len() as f64;
    let cpu = (pids.iter().map(|p| cpu_seconds(*p)).sum::<Result<f64>>()? - cpu0)
        / secs
        / hosts.len() as f64;
    Ok((reqs, cpu))
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn create_net(h: &Host, name: &str, subnet: &str, vlan: &str) -> Result<()> {
    h.ok(&berth_network_args(
        subnet,
        &["-o", &format!("vlan={vlan}")],
        name,
    ))?;
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let moves: usize = args.first().map(|s| s.parse()).transpose()?.unwrap_or(20);
    let samples: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(20);
    let lab = Lab::start(LabOptions::default())?;
    let (a, b, c) = (lab.host("a"), lab.host("b"), lab.host("c"));
    for h in [a, b, c] {
        create_net(h, "n1", "198.19.1.0/24", "101")?;
    }

    // --- TCP: across the trunk vs on one host.
    a.sleeper("s1", "n1", &[])?;
    a.sleeper("s2", "n1", &[])?;
    b.sleeper("s3", "n1", &[])?;
    let (ip2, ip3) = (
        a.container_net("s2", "n1", "IPAddress")?,
        b.container_net("s3", "n1", "IPAddress")?,
    );
    let bytes = 64 << 20;
    let (mut local, mut cross) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        local.push(tcp_transfer(a, "s1", a, "s2", &ip2, bytes)?);
        cross.push(tcp_transfer(a, "s1", b, "s3", &ip3, bytes)?);
    }
    let (l, x) = (pct(&mut local, 0.5), pct(&mut cross, 0.5));
    println!(
        "TCP, {} MiB x 3: two hosts across the trunk {x:.0} Mbit/s, one host {l:.0} Mbit/s: ratio {:.2}",
        bytes >> 20,
        x / l
    );

    // --- Moving a database between a and b; the client on c.
    const X: &str = "198.19.1.50";
    c.sleeper("cli", "n1", &[])?;
    let db_args = [
        "--ip",
        X,
        "--sysctl",
        "net.ipv6.conf.all.disable_ipv6=1",
        "--sysctl",
        "net.ipv6.conf.default.disable_ipv6=1",
    ];
    a.sleeper("db", "n1", &db_args)?;
    let cli = c.container_pid("cli")?;
    let out = ping_raw(
        cli,
        X,
        &["-c", "3", "-i", "0.2", "-W", "1"],
        Duration::from_secs(10),
    )?;
    ensure!(
        first_reply_seq(&out).is_some(),
        "the client cannot reach the database: {out}"
    );
    let (mut times, mut lost) = (Vec::new(), 0);
    let mut on = a;
    for i in 0..moves {
        let next = if i.is_multiple_of(2) { b } else { a };
        on.ok(&["rm", "-f", "db"])?;
        next.sleeper("db", "n1", &db_args)?;
        // The client starts pinging every 20 ms as soon as `docker run` returned; the time is
        // that of the first echo request answered (its seq x 20 ms).
        let out = ping_raw(
            cli,
            X,
            &["-c", "150", "-i", "0.02", "-W", "1", "-w", "3"],
            Duration::from_secs(10),
        )?;
        match first_reply_seq(&out) {
            Some(seq) => times.push(0.02 * f64::from(seq)),
            None => lost += 1,
        }
        on = next;
    }
    let (p50, p99) = (pct(&mut times.clone(), 0.5), pct(&mut times, 0.99));
    println!(
        "move: docker run --ip on the new host to the first reply on c, {moves} moves: p50 {:.0} ms, p99 {:.0} ms; {lost} never answered within 3 s (goal p99 <= 1000 ms)",
        p50 * 1000.0,
        p99 * 1000.0
    );

    // --- ARP proxy: CreateEndpoint on a until c answers, with 100 and 1,000 endpoints.
    for h in [a, b, c] {
        create_net(h, "n9", "198.19.128.0/20", "109")?;
    }
    let pool = a.netplugin_json(&["pool", "show", "198.19.128.0/20"])?;
    let pool_id = pool["id"].as_str().context("pool id")?.to_string();
    let net_of = |h: &Host| h.ok(&["network", "inspect", "-f", "{{.Id}}", "n9"]);
    let (net_a, net_b, net_c) = (net_of(a)?, net_of(b)?, net_of(c)?);
    let made = std::cell::Cell::new(0usize);
    let endpoint = |h: &Host, net: &str| -> Result<(String, Instant)> {
        made.set(made.get() + 1);
        let id = format!("{:016x}{:048x}", 0xbe27_f1ee_u64, made.get());
        let (s, v) = h.net_call(
            "IpamDriver.RequestAddress",
            Some(&format!(
                r#"{{"PoolID":"{pool_id}","Address":"","Options":{{}}}}"#
            )),
        )?;
        ensure!(s == 200, "RequestAddress: {v}");
        let addr = v["Address"].as_str().unwrap_or_default().to_string();
        let t0 = Instant::now();
        let (s, v) = h.net_call(
            "NetworkDriver.CreateEndpoint",
            Some(&format!(
                r#"{{"NetworkID":"{net}","EndpointID":"{id}","Interface":{{"Address":"{addr}","AddressIPv6":"","MacAddress":""}},"Options":{{}}}}"#
            )),
        )?;
        ensure!(s == 200, "CreateEndpoint: {v}");
        Ok((addr.split('/').next().unwrap_or_default().to_string(), t0))
    };
    // Host c answers ARP only on VLANs it has a port on: one endpoint there.
    endpoint(c, &net_c)?;
    let mut learned: Vec<(usize, f64)> = Vec::new();
    let mut idle: Vec<(usize, f64, f64)> = Vec::new();
    for fleet in [100usize, 1000] {
        while made.get() < fleet {
            let h = if made.get().is_multiple_of(2) { a } else { b };
            endpoint(
                h,
                if made.get().is_multiple_of(2) {
                    &net_a
                } else {
                    &net_b
                },
            )?;
        }
        let mut lat = Vec::new();
        let mut missed = 0;
        for _ in 0..samples {
            let (ip, t0) = endpoint(a, &net_a)?;
            let filter = format!("table=2,arp,arp_tpa={ip}");
            let seen = wait_until(Duration::from_secs(10), Duration::from_millis(5), || {
                c.ofctl("dump-flows", &[&filter])
                    .is_ok_and(|d| d.lines().any(|l| l.contains("priority=100")))
            });
            if seen {
                lat.push(t0.elapsed().as_secs_f64());
            } else {
                missed += 1;
            }
        }
        let (p50, p99) = (pct(&mut lat.clone(), 0.5), pct(&mut lat, 0.99));
        println!(
            "ARP proxy: CreateEndpoint on a until c answers, {} endpoints in the fleet: p50 {:.0} ms, p99 {:.0} ms ({missed} not within 10 s; goal p99 <= 200 ms)",
            made.get(),
            p50 * 1000.0,
            p99 * 1000.0
        );
        learned.push((made.get(), p99));
        // c's ARP answers: only for the VLANs it has a port on (n9's is 109).
        let flows = c.ofctl("dump-flows", &["table=2"])?;
        let answers = flows.lines().filter(|l| l.contains("priority=100")).count();
        let on_109 = flows
            .lines()
            .filter(|l| l.contains("priority=100") && l.contains("dl_vlan=109"))
            .count();
        println!(
            "ARP flows on c: {answers} answers, {on_109} of them for VLAN 109's {} endpoints",
            made.get()
        );
        let (reqs, cpu) = idle_cost(&lab, IDLE)?;
        println!(
            "idle, {} endpoints: {reqs:.2} etcd requests/s per host (goal < 1), netplugin CPU {:.2}% per host, over {} s",
            made.get(),
            cpu * 100.0,
            IDLE.as_secs()
        );
        idle.push((made.get(), reqs, cpu));
    }
    if let ([(n0, p0), (n1, p1)], [(_, r0, c0), (_, r1, c1)]) = (&learned[..], &idle[..]) {
        println!(
            "flat from {n0} to {n1} endpoints (ratio at {n1} to the same run's {n0}): ARP-learn p99 {:.2}, idle etcd requests {:.2}, idle CPU {:.2}",
            p1 / p0,
            r1 / r0.max(1e-9),
            c1 / c0.max(1e-9)
        );
    }
    drop(lab);
    Ok(())
}
