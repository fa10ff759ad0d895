//! A host's cost as the fleet grows (issue 14 §3): many simulated hosts against the lab's
//! 3-member etcd, 10,000 endpoints in the fleet, figures at BASE hosts and at HOSTS hosts side
//! by side with the goals.
//!
//! Each simulated host is a lab node ([`integration::lab`], `ovs_only`): its own network and
//! mount namespace with its own ovsdb-server and ovs-vswitchd (netdev datapath) and netplugin
//! `--store etcd --uplink up0` on the lab's trunk switch, exactly as on a full lab host, but
//! without dockerd/containerd: the benchmark speaks Docker's plugin protocol on each host's
//! plugin socket itself (RequestPool, CreateNetwork, RequestAddress, CreateEndpoint, as dockerd
//! does for `docker network create` and `docker run`). Every endpoint is a real one: an address
//! and an endpoint record in etcd, a veth pair, an OVS port with its anti-spoofing flows.
//!
//! Layout: VLANS networks (VLAN 601.., a /20 each); host i (from 0) has a port on VLAN
//! i % VLANS only. Every host starts and creates its share of the ENDPOINTS (in parallel);
//! then the figures at HOSTS hosts; then the netplugins of all but the first BASE hosts stop
//! (their endpoints stay in the fleet: without --reclaim-after nobody takes them), so the fleet
//! and each running host's own endpoints are unchanged, and the figures at BASE hosts:
//! - idle over IDLE seconds: etcd requests/s and bytes/s per host (the cluster's `/metrics`,
//!   divided by the running hosts: netplugins are etcd's only clients), netplugin CPU per host
//!   (utime+stime from /proc);
//! - ARP answer flows on a host with one local VLAN, and that VLAN's endpoints in the fleet;
//! - propagation: CreateEndpoint on one host until another host with a port on that VLAN has
//!   the ARP answer flow (polled with ovs-ofctl every 5 ms), p50/p99 of SAMPLES.
//!
//! At the end it measures what the OVS instances cost (RSS and idle CPU per host).
//!
//! Usage (root; what the fleet suite needs, docker not required):
//!     cargo run --release -p integration --bin bench_fleet_scale -- [--hosts 50] [--base 10]
//!         [--endpoints 10000] [--vlans 5] [--samples 40] [--idle 30]
//! Bounded: the whole run is abandoned after --limit seconds (default 1200); everything the
//! lab started is stopped by pid on every exit (and by the harness on a signal).

mod rest;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use integration::lab::{Host, Lab, LabOptions};
use integration::procs::{cpu_seconds, rss_bytes, wait_until};
use serde_json::{json, Value};

struct Opts {
    hosts: usize,
    base: usize,
    endpoints: usize,
    /// Real endpoints (veth, OVS port) per measured host; the rest of ENDPOINTS is made by the
    /// rest of the fleet ([`rest`]).
    ports: usize,
    vlans: usize,
    samples: usize,
    idle: Duration,
    limit: Duration,
}

fn parse() -> Result<Opts> {
    let mut o = Opts {
        hosts: 50,
        base: 10,
        endpoints: 10_000,
        ports: 40,
        vlans: 5,
        samples: 40,
        idle: Duration::from_secs(30),
        limit: Duration::from_secs(1200),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let v = it.next().with_context(|| format!("{flag} needs a value"))?;
        let n: u64 = v.parse().with_context(|| format!("{flag} {v}"))?;
        let n_usize = usize::try_from(n)?;
        match flag.as_str() {
            "--hosts" => o.hosts = n_usize,
            "--base" => o.base = n_usize,
            "--endpoints" => o.endpoints = n_usize,
            "--ports" => o.ports = n_usize,
            "--vlans" => o.vlans = n_usize,
            "--samples" => o.samples = n_usize,
            "--idle" => o.idle = Duration::from_secs(n),
            "--limit" => o.limit = Duration::from_secs(n),
            other => bail!("unknown flag {other} (--hosts --base --endpoints --ports --vlans --samples --idle --limit)"),
        }
    }
    ensure!(
        o.vlans >= 1
            && o.base >= 2 * o.vlans
            && o.base <= o.hosts
            && o.base.is_multiple_of(o.vlans)
            && o.hosts.is_multiple_of(o.vlans),
        "need --vlans >= 1, --base >= 2 x --vlans (two hosts per VLAN for the propagation), \
         --base <= --hosts, and both multiples of --vlans"
    );
    // A /20 per VLAN: its share of the endpoints, the samples and the hosts' own ports.
    ensure!(
        o.endpoints / o.vlans + 2 * o.samples + o.hosts < 4000,
        "too many endpoints per VLAN for a /20"
    );
    Ok(o)
}

const FIRST_VLAN: usize = 601;

/// CreateEndpoint calls of the bulk that failed (and were retried).
static FAILED: AtomicUsize = AtomicUsize::new(0);

fn subnet(vlan_index: usize) -> String {
    format!("10.96.{}.0/20", vlan_index * 16)
}

/// A host's network: its pool and network ids there (as its dockerd would have them).
#[derive(Clone)]
struct HostNet {
    vlan: usize,
    pool: String,
    net: String,
}

fn call(h: &Host, method: &str, body: Value) -> Result<Value> {
    let (s, v) = h.net_call(method, Some(&body.to_string()))?;
    ensure!(s == 200, "host {} {method}: {v}", h.name);
    Ok(v)
}

/// `docker network create -d berth-net --ipam-driver berth-net --subnet S -o vlan=V` on `h`.
fn create_network(h: &Host, index: usize, vlan_index: usize) -> Result<HostNet> {
    let sub = subnet(vlan_index);
    let vlan = FIRST_VLAN + vlan_index;
    let v = call(
        h,
        "IpamDriver.RequestPool",
        json!({"AddressSpace":"berth-local","Pool":sub,"SubPool":"","Options":{},"V6":false}),
    )?;
    let pool = v["PoolID"].as_str().context("PoolID")?.to_string();
    let v = call(
        h,
        "IpamDriver.RequestAddress",
        json!({"PoolID":pool,"Address":"","Options":{"RequestAddressType":"com.docker.network.gateway"}}),
    )?;
    let gw = v["Address"].as_str().context("gateway")?.to_string();
    let net = format!(
        "{:016x}{:048x}",
        0x6e65_7400_0000_0000_u64 + index as u64,
        vlan
    );
    call(
        h,
        "NetworkDriver.CreateNetwork",
        json!({"NetworkID":net,"Options":{"com.docker.network.generic":{"vlan":vlan.to_string()}},
               "IPv4Data":[{"AddressSpace":"berth-local","Pool":sub,"Gateway":gw}],"IPv6Data":[]}),
    )?;
    Ok(HostNet { vlan, pool, net })
}

/// RequestAddress + CreateEndpoint as for `docker run --network`; (ip, endpoint id, start of
/// the CreateEndpoint call). Endpoint ids differ in their first 10 hex digits (the veth names).
fn create_endpoint(h: &Host, n: &HostNet, seq: u64) -> Result<(String, String, Instant)> {
    let v = call(
        h,
        "IpamDriver.RequestAddress",
        json!({"PoolID":n.pool,"Address":"","Options":{}}),
    )?;
    let addr = v["Address"].as_str().context("Address")?.to_string();
    let id = format!("{seq:010x}{:054x}", 0xbe27_u64);
    let t0 = Instant::now();
    call(
        h,
        "NetworkDriver.CreateEndpoint",
        json!({"NetworkID":n.net,"EndpointID":id,
               "Interface":{"Address":addr,"AddressIPv6":"","MacAddress":""},"Options":{}}),
    )?;
    Ok((
        addr.split('/').next().unwrap_or_default().to_string(),
        id,
        t0,
    ))
}

fn pct(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn pids_named(h: &Host, name: &str) -> Option<u32> {
    h.daemon_pids()
        .into_iter()
        .find_map(|(n, p)| (n == name).then_some(p))
}

/// Per host: mean RSS of ovsdb-server and ovs-vswitchd, and their idle CPU over `window`.
fn ovs_footprint(lab: &Lab, window: Duration) -> Result<()> {
    let mut pids = Vec::new();
    let (mut rss_db, mut rss_sw) = (Vec::new(), Vec::new());
    for h in &lab.hosts {
        let db = pids_named(h, "ovsdb-server").context("ovsdb-server pid")?;
        let sw = pids_named(h, "ovs-vswitchd").context("ovs-vswitchd pid")?;
        rss_db.push(rss_bytes(db)? as f64 / 1048576.0);
        rss_sw.push(rss_bytes(sw)? as f64 / 1048576.0);
        pids.push(db);
        pids.push(sw);
    }
    let cpu = |pids: &[u32]| -> Result<f64> { pids.iter().map(|p| cpu_seconds(*p)).sum() };
    let c0 = cpu(&pids)?;
    let t = Instant::now();
    std::thread::sleep(window);
    let per_host = (cpu(&pids)? - c0) / t.elapsed().as_secs_f64() / lab.hosts.len() as f64;
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    println!(
        "OVS per host at the end ({} hosts, each its own ovsdb-server + ovs-vswitchd, netdev datapath, its bridge, \
         ports and flows): RSS ovs-vswitchd {:.1} MiB (max {:.1}), ovsdb-server {:.1} MiB; idle CPU of both {:.2}% per host ({:.1}% of one core for all)",
        lab.hosts.len(),
        mean(&rss_sw),
        pct(&rss_sw, 1.0),
        mean(&rss_db),
        per_host * 100.0,
        per_host * 100.0 * lab.hosts.len() as f64
    );
    Ok(())
}

/// Starts netplugin on each of `hosts`, a few at a time (each start is CPU-heavy).
fn start_netplugins(hosts: &[Host]) -> Result<()> {
    for chunk in hosts.chunks(5) {
        let errs: Vec<String> = std::thread::scope(|s| {
            let hs: Vec<_> = chunk
                .iter()
                .map(|h| s.spawn(move || h.start_netplugin().map_err(|e| format!("{e:#}"))))
                .collect();
            hs.into_iter()
                .filter_map(|h| {
                    h.join()
                        .unwrap_or(Err("start thread panicked".into()))
                        .err()
                })
                .collect()
        });
        ensure!(errs.is_empty(), "starting netplugin: {}", errs.join("\n"));
    }
    Ok(())
}

#[derive(Default, Clone)]
struct Figures {
    hosts: usize,
    fleet: usize,
    etcd_rps: f64,
    etcd_bps: f64,
    cpu: f64,
    arp_answers: usize,
    vlan_endpoints: usize,
    samples: Vec<Sample>,
    missed: usize,
}

impl Figures {
    /// p50 / p99 of one part of the propagation samples.
    fn pcts(&self, part: impl Fn(&Sample) -> f64) -> String {
        let v: Vec<f64> = self.samples.iter().map(part).collect();
        format!("{:.0} / {:.0}", pct(&v, 0.5), pct(&v, 0.99))
    }
}

/// ARP answer flows (table 2, priority 100) on `h`: all, and those of `vlan`.
fn arp_answers(h: &Host, vlan: usize) -> Result<(usize, usize)> {
    let flows = h.ofctl("dump-flows", &["table=2"])?;
    let answers: Vec<&str> = flows
        .lines()
        .filter(|l| l.contains("priority=100"))
        .collect();
    let on_vlan = answers
        .iter()
        .filter(|l| l.contains(&format!("dl_vlan={vlan},")))
        .count();
    Ok((answers.len(), on_vlan))
}

/// Idle cost over `window`: etcd requests/s and bytes/s per running host, netplugin CPU share
/// per host.
fn idle_cost(lab: &Lab, hosts: &[Host], window: Duration) -> Result<(f64, f64, f64)> {
    // What the last changes started settles first.
    std::thread::sleep(Duration::from_secs(10));
    let pids: Vec<u32> = hosts
        .iter()
        .map(|h| {
            h.netplugin_pid()
                .with_context(|| format!("netplugin of {} is not running", h.name))
        })
        .collect::<Result<_>>()?;
    let cpu = |pids: &[u32]| -> Result<f64> { pids.iter().map(|p| cpu_seconds(*p)).sum() };
    let c0 = cpu(&pids)?;
    let e0 = lab.etcd_traffic()?;
    let t = Instant::now();
    std::thread::sleep(window);
    let e1 = lab.etcd_traffic()?;
    let c1 = cpu(&pids)?;
    let secs = t.elapsed().as_secs_f64();
    let n = hosts.len() as f64;
    Ok((
        (e1.requests - e0.requests) / secs / n,
        (e1.bytes - e0.bytes) / secs / n,
        (c1 - c0) / secs / n,
    ))
}

/// One propagation sample, in ms from the start of the CreateEndpoint call.
#[derive(Clone, Copy, Default)]
struct Sample {
    /// The call returned.
    call: f64,
    /// A client watching the store (beside the hosts) had both the endpoint's and its address's
    /// records.
    records: f64,
    /// The other host had the ARP answer flow.
    flow: f64,
    /// The other host's own account of its part: from the record change reaching it to the
    /// flow in OVS (its last `arp_follow` latency; the fleet is otherwise idle).
    host: f64,
}

/// CreateEndpoint on hosts[k % n] until hosts[(k + vlans) % n] (same VLAN) has its ARP answer.
fn propagation(
    hosts: &[Host],
    nets: &[HostNet],
    vlans: usize,
    samples: usize,
    seq: &AtomicUsize,
    watch: &rest::RecordWatch,
) -> Result<(Vec<Sample>, usize)> {
    let n = hosts.len();
    let (mut out, mut missed) = (Vec::new(), 0);
    for k in 0..samples {
        // Spread over the hosts: the creating hosts differ from sample to sample.
        let from = (k * 7) % n;
        let to = (from + vlans) % n;
        let (ip, id, t0) = create_endpoint(&hosts[from], &nets[from], next_seq(seq, from))?;
        let call = t0.elapsed();
        let filter = format!("table=2,arp,dl_vlan={},arp_tpa={ip}", nets[to].vlan);
        let seen = wait_until(Duration::from_secs(10), Duration::from_millis(5), || {
            hosts[to]
                .ofctl("dump-flows", &[&filter])
                .is_ok_and(|d| d.lines().any(|l| l.contains("priority=100")))
        });
        let flow = t0.elapsed();
        let addr_key = netplugin::state::addr_key(&nets[from].pool, ip.parse()?);
        let records = watch.both_seen(
            &format!("endpoints/{id}"),
            &addr_key,
            Duration::from_secs(1),
        );
        let host = hosts[to]
            .netplugin_text(&["stats"])
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|v| v["latencies"]["arp_follow"]["last_ms"].as_f64());
        match (seen, records, host) {
            (true, Some(r), Some(host)) => out.push(Sample {
                call: call.as_secs_f64() * 1000.0,
                records: r.saturating_duration_since(t0).as_secs_f64() * 1000.0,
                flow: flow.as_secs_f64() * 1000.0,
                host,
            }),
            _ => missed += 1,
        }
    }
    Ok((out, missed))
}

/// Endpoint ids: the host's index in the top bits, then a counter (unique first 10 hex digits).
fn next_seq(seq: &AtomicUsize, host: usize) -> u64 {
    ((host as u64) << 28) | seq.fetch_add(1, Ordering::SeqCst) as u64
}

#[allow(
    clippy::too_many_arguments,
    reason = "one phase's measurement, all of it"
)]
fn measure(
    lab: &Lab,
    hosts: &[Host],
    nets: &[HostNet],
    o: &Opts,
    fleet: usize,
    per_vlan: &[usize],
    seq: &AtomicUsize,
    watch: &rest::RecordWatch,
) -> Result<Figures> {
    let (etcd_rps, etcd_bps, cpu) = idle_cost(lab, hosts, o.idle)?;
    // The host measured: the last one started, with one local VLAN.
    let probe = hosts.len() - 1;
    let (arp_answers, on_vlan) = arp_answers(&hosts[probe], nets[probe].vlan)?;
    ensure!(
        arp_answers == on_vlan,
        "host {} answers ARP on VLANs it has no port on ({arp_answers} answers, {on_vlan} on its VLAN)",
        hosts[probe].name
    );
    let (samples, missed) = propagation(hosts, nets, o.vlans, o.samples, seq, watch)?;
    Ok(Figures {
        hosts: hosts.len(),
        fleet,
        etcd_rps,
        etcd_bps,
        cpu,
        arp_answers,
        vlan_endpoints: per_vlan[nets[probe].vlan - FIRST_VLAN],
        samples,
        missed,
    })
}

fn main() -> Result<()> {
    integration::harness::install_signal_watcher();
    let o = parse()?;
    let started = Instant::now();
    // The whole run is bounded: past --limit the process signals itself, and the signal
    // watcher tears the lab down (every process by pid, namespaces, files) and exits.
    {
        let limit = o.limit;
        std::thread::spawn(move || {
            std::thread::sleep(limit);
            eprintln!(
                "bench_fleet_scale: over the {} s limit, stopping",
                limit.as_secs()
            );
            // To the process, not this thread: the signal watcher takes it.
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGTERM);
        });
    }
    let names: Vec<String> = (1..=o.hosts).map(|i| format!("h{i:02}")).collect();
    let lab = Lab::start(LabOptions {
        hosts: names,
        netplugin_args: Vec::new(),
        import_image: false,
        ovs_only: true,
    })?;

    // Every host: netplugin, its network, its share of the fleet's endpoints (in parallel).
    let seq = AtomicUsize::new(1);
    let mut per_vlan = vec![0usize; o.vlans];
    let t = Instant::now();
    start_netplugins(&lab.hosts)?;
    let mut nets = Vec::new();
    for (i, h) in lab.hosts.iter().enumerate() {
        nets.push(create_network(h, i, i % o.vlans)?);
    }
    println!(
        "{} netplugins up with their networks in {:.1} s",
        o.hosts,
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let share = o.ports.min(o.endpoints / o.hosts);
    let errs: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = lab
            .hosts
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let (net, seq) = (&nets[i], &seq);
                s.spawn(move || -> Result<()> {
                    // On this loaded machine a call may time out (OVS's 5 s bound): Docker
                    // would fail that container's start and the user retry it; so does this
                    // (a new endpoint id, a few times), and the failures are counted.
                    for _ in 0..share {
                        let mut tries = 0;
                        while let Err(e) = create_endpoint(h, net, next_seq(seq, i)) {
                            tries += 1;
                            FAILED.fetch_add(1, Ordering::SeqCst);
                            if tries >= 3 {
                                return Err(e);
                            }
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        hs.into_iter()
            .filter_map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("thread panicked")))
                    .err()
                    .map(|e| format!("{e:#}"))
            })
            .collect()
    });
    ensure!(
        errs.is_empty(),
        "creating the fleet's endpoints: {}",
        errs.join("\n")
    );
    for i in 0..o.hosts {
        per_vlan[i % o.vlans] += share;
    }
    let real = share * o.hosts;
    println!(
        "{real} endpoints created through the plugin sockets of {} hosts ({share} each: veth, OVS port, flows) in {:.1} s ({:.0}/s); {} calls failed and were retried",
        o.hosts,
        t.elapsed().as_secs_f64(),
        real as f64 / t.elapsed().as_secs_f64(),
        FAILED.load(Ordering::SeqCst)
    );
    let rest_total = o.endpoints - real;
    let rest_per_vlan: Vec<usize> = (0..o.vlans)
        .map(|v| rest_total / o.vlans + usize::from(v < rest_total % o.vlans))
        .collect();
    let secs = rest::fill(&lab, &rest_per_vlan)?;
    for (v, n) in rest_per_vlan.iter().enumerate() {
        per_vlan[v] += n;
    }
    let mut fleet = real + rest_total;
    println!(
        "{rest_total} endpoints of the rest of the fleet ({} in-process hosts: netplugin's service, etcd store and IPAM, in-memory datapath) in {secs:.1} s; {fleet} in the fleet",
        rest::FILLER_HOSTS
    );
    let watch = rest::RecordWatch::start(&lab)?;

    // At HOSTS hosts, then at BASE hosts: the others' netplugins stop (their endpoints stay in
    // the fleet: without --reclaim-after nobody takes them), the fleet and each running host's
    // own endpoints are the same.
    let f_all = measure(&lab, &lab.hosts, &nets, &o, fleet, &per_vlan, &seq, &watch)?;
    fleet += o.samples;
    for k in 0..o.samples {
        per_vlan[nets[(k * 7) % o.hosts].vlan - FIRST_VLAN] += 1;
    }
    for h in &lab.hosts[o.base..] {
        h.stop_netplugin()?;
    }
    let f_base = measure(
        &lab,
        &lab.hosts[..o.base],
        &nets,
        &o,
        fleet,
        &per_vlan,
        &seq,
        &watch,
    )?;
    ovs_footprint(&lab, Duration::from_secs(10))?;
    let (f1, f2) = (f_base, f_all);

    // --- The figures, side by side.
    let row = |what: &str, a: String, b: String, goal: &str| {
        println!("{what:<58} {a:>16} {b:>16}   {goal}");
    };
    println!();
    row(
        "",
        format!("{} hosts", f1.hosts),
        format!("{} hosts", f2.hosts),
        "goal",
    );
    row(
        "endpoints in the fleet",
        f1.fleet.to_string(),
        f2.fleet.to_string(),
        "",
    );
    row(
        "idle etcd requests/s per host",
        format!("{:.3}", f1.etcd_rps),
        format!("{:.3}", f2.etcd_rps),
        "< 1, flat",
    );
    row(
        "idle etcd bytes/s per host",
        format!("{:.0}", f1.etcd_bps),
        format!("{:.0}", f2.etcd_bps),
        "flat",
    );
    row(
        &format!("idle netplugin CPU per host ({share} own endpoints each)"),
        format!("{:.2}%", f1.cpu * 100.0),
        format!("{:.2}%", f2.cpu * 100.0),
        "flat",
    );
    row(
        "ARP answers on a host with one local VLAN / its VLAN's endpoints",
        format!("{} / {}", f1.arp_answers, f1.vlan_endpoints),
        format!("{} / {}", f2.arp_answers, f2.vlan_endpoints),
        "proportional",
    );
    row(
        &format!("propagation p50 / p99 ms ({} samples)", o.samples),
        f1.pcts(|s| s.flow),
        f2.pcts(|s| s.flow),
        "p99 <= 200 ms",
    );
    row(
        "  of which the CreateEndpoint call",
        f1.pcts(|s| s.call),
        f2.pcts(|s| s.call),
        "",
    );
    row(
        "  records seen by a watcher, from the call's start",
        f1.pcts(|s| s.records),
        f2.pcts(|s| s.records),
        "",
    );
    row(
        "  the other host's flow, after the records",
        f1.pcts(|s| s.flow - s.records),
        f2.pcts(|s| s.flow - s.records),
        "",
    );
    row(
        "    of which that host's own (record in to flow in OVS)",
        f1.pcts(|s| s.host),
        f2.pcts(|s| s.host),
        "",
    );
    row(
        "  samples not seen within 10 s",
        f1.missed.to_string(),
        f2.missed.to_string(),
        "0",
    );
    println!(
        "flat from {} to {} hosts (ratio): etcd requests/s per host {:.2}, bytes/s {:.2}, netplugin CPU per host {:.2}",
        f1.hosts,
        f2.hosts,
        f2.etcd_rps / f1.etcd_rps.max(1e-9),
        f2.etcd_bps / f1.etcd_bps.max(1e-9),
        f2.cpu / f1.cpu.max(1e-9)
    );
    println!("total time {:.0} s", started.elapsed().as_secs_f64());
    drop(lab);
    Ok(())
}
