//! Benchmark of netplugin (docs/testing.md, Benchmarks), all in one run on this machine:
//!
//! - median `docker run --rm --network X berth-test/busybox true` with berth-net, Docker's
//!   built-in `bridge` (a user-defined bridge network; this dockerd runs with iptables off) and
//!   `macvlan` on a dummy parent, interleaved round by round, as ratios;
//! - CreateEndpoint + Join server-side latency p50/p99 from netplugin's own metrics
//!   (`berth_net_endpoint_setup_milliseconds` on its Prometheus endpoint);
//! - endpoint time (CreateEndpoint + Join, Docker's exact requests on the plugin socket) at the
//!   1st vs the 500th endpoint alive on this host, each with its veth and OVS port;
//! - TCP throughput between two containers on an anti-spoofed network (the default) vs two on
//!   a network with `allow_spoofing=true` (no guard flows), interleaved, as a ratio.
//!
//! Usage (root; the same packages as the network tests):
//!     cargo run --release -p integration --bin bench_network [-- RUNS ENDPOINTS]
//! Defaults: 30 runs per driver, 500 endpoints. Takes about 2-3 minutes.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, ensure, Context as _, Result};
use integration::lab::traffic::tcp_send_from;
use integration::netplugin::Netplugin;
use integration::ovs::{delete_link, OvsEnv};
use integration::plugins::{binary, docker_call, metric_value, scrape_metrics, DOCKER_PLUGIN_DIR};
use integration::{berth_network_args, DockerEnv, TEST_IMAGE};

const METRICS: &str = "127.0.0.1:19473";

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn metric(text: &str, op: &str, q: &str) -> Option<f64> {
    metric_value(
        text,
        &format!("berth_net_endpoint_setup_milliseconds{{op=\"{op}\",quantile=\"{q}\"}}"),
    )
}

struct Dummy(&'static str);
impl Drop for Dummy {
    fn drop(&mut self) {
        delete_link(self.0);
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runs: usize = args.first().map(|s| s.parse()).transpose()?.unwrap_or(30);
    let endpoints: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(500);
    integration::ovs::require_tools()?;
    let bin = binary("netplugin")?;
    let mut ovs = OvsEnv::start()?;
    let bridge = format!("brb{}", std::process::id() % 1_000_000);
    ovs.own_link(&bridge);
    let work = tempfile::Builder::new().prefix("bb-").tempdir_in("/tmp")?;
    let np_args = vec![
        "--ovsdb".to_string(),
        ovs.endpoint(),
        "--ovs-rundir".into(),
        ovs.rundir().display().to_string(),
        "--bridge".into(),
        bridge.clone(),
        "--datapath".into(),
        "netdev".into(),
        "--host-id".into(),
        "bench-host".into(),
        "--metrics".into(),
        METRICS.into(),
    ];
    let mut net = Netplugin::new(bin, work.path(), Path::new(DOCKER_PLUGIN_DIR), np_args);
    net.start()?;
    let docker = DockerEnv::start()?;
    // macvlan's parent: a dummy link, or (kernels without the dummy module, like these
    // machines) one end of a veth pair whose other end goes nowhere; both carry nothing out.
    delete_link("bbdum0");
    let dummy = std::process::Command::new("ip")
        .args(["link", "add", "bbdum0", "type", "dummy"])
        .output()?;
    let parent_kind = if dummy.status.success() {
        "dummy"
    } else {
        let status = std::process::Command::new("ip")
            .args([
                "link", "add", "bbdum0", "type", "veth", "peer", "name", "bbdum1",
            ])
            .status()?;
        ensure!(
            status.success(),
            "cannot create a parent link for macvlan (dummy or veth)"
        );
        "veth (no dummy module)"
    };
    let _dummy = Dummy("bbdum0");
    std::process::Command::new("ip")
        .args(["link", "set", "bbdum0", "up"])
        .status()?;

    docker.ok(&berth_network_args(
        "10.231.96.0/24",
        &["-o", "vlan=200"],
        "bench-berth",
    ))?;
    docker.ok(&[
        "network",
        "create",
        "-d",
        "bridge",
        "--subnet",
        "10.231.97.0/24",
        "bench-bridge",
    ])?;
    docker.ok(&[
        "network",
        "create",
        "-d",
        "macvlan",
        "--subnet",
        "10.231.98.0/24",
        "-o",
        "parent=bbdum0",
        "bench-macvlan",
    ])?;
    let nets = ["bench-berth", "bench-bridge", "bench-macvlan"];
    // Warm-up: image layers, plugin connection, first bridge.
    for n in nets {
        docker.ok(&["run", "--rm", "--network", n, TEST_IMAGE, "true"])?;
    }
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); nets.len()];
    for round in 0..runs {
        for k in 0..nets.len() {
            // Rotate the order so no driver always runs first.
            let i = (k + round) % nets.len();
            let t = Instant::now();
            docker.ok(&["run", "--rm", "--network", nets[i], TEST_IMAGE, "true"])?;
            times[i].push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    let med: Vec<f64> = times.iter_mut().map(|v| median(v)).collect();

    // Anti-spoofing's cost: the same transfer on a guarded and an unguarded network.
    let mut rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let spoof_nets = [
        ("bench-guarded", "10.231.95.0/24", "vlan=202", None),
        (
            "bench-open",
            "10.231.94.0/24",
            "vlan=203",
            Some("allow_spoofing=true"),
        ),
    ];
    for (name, subnet, vlan, extra) in spoof_nets {
        let mut args = vec![
            "network",
            "create",
            "-d",
            "berth-net",
            "--ipam-driver",
            "berth-net",
            "--subnet",
            subnet,
            "-o",
            vlan,
        ];
        if let Some(e) = extra {
            args.extend(["-o", e]);
        }
        args.push(name);
        docker.ok(&args)?;
        for side in ["tx", "rx"] {
            docker.ok(&[
                "run",
                "-d",
                "--name",
                &format!("{name}-{side}"),
                "--network",
                name,
                TEST_IMAGE,
                "sleep",
                "3600",
            ])?;
        }
    }
    let tcp_bytes = 128 << 20;
    for round in 0..5 {
        for k in 0..2 {
            let i = (k + round) % 2;
            let name = spoof_nets[i].0;
            rates[i].push(tcp_rate(&docker, name, tcp_bytes)?);
        }
    }
    for (name, _, _, _) in spoof_nets {
        docker.ok(&["rm", "-f", &format!("{name}-tx"), &format!("{name}-rx")])?;
        docker.ok(&["network", "rm", name])?;
    }
    let (guarded, open) = (median(&mut rates[0]), median(&mut rates[1]));
    let text = scrape_metrics(METRICS).context("scraping netplugin's metrics")?;
    let ce = (
        metric(&text, "create_endpoint", "0.5"),
        metric(&text, "create_endpoint", "0.99"),
    );
    let jn = (metric(&text, "join", "0.5"), metric(&text, "join", "0.99"));
    let parts = [
        ("datapath", metric(&text, "create_endpoint_datapath", "0.5")),
        ("store", metric(&text, "create_endpoint_store", "0.5")),
    ];

    // 1st vs Nth endpoint: Docker's requests, endpoints kept alive.
    let sock = net.socket();
    let (s, v) = docker_call(
        &sock,
        "IpamDriver.RequestPool",
        Some(r#"{"AddressSpace":"berth-local","Pool":"10.231.100.0/22","Options":{},"V6":false}"#),
    )?;
    ensure!(s == 200, "{v}");
    let pool = v["PoolID"].as_str().unwrap_or_default().to_string();
    let netid = format!("{:064x}", 0xbe27u64);
    let (s, v) = docker_call(
        &sock,
        "NetworkDriver.CreateNetwork",
        Some(&format!(
            r#"{{"NetworkID":"{netid}","Options":{{"com.docker.network.generic":{{"vlan":"201"}}}},"IPv4Data":[{{"Pool":"10.231.100.0/22","Gateway":"10.231.100.1/22"}}]}}"#
        )),
    )?;
    ensure!(s == 200, "{v}");
    let mut ep_ms = Vec::new();
    let mut ids = Vec::new();
    for i in 0..endpoints {
        let (s, v) = docker_call(
            &sock,
            "IpamDriver.RequestAddress",
            Some(&format!(
                r#"{{"PoolID":"{pool}","Address":"","Options":null}}"#
            )),
        )?;
        ensure!(s == 200, "{v}");
        let addr = v["Address"].as_str().unwrap_or_default().to_string();
        let ep = format!("{:010x}{:054x}", 0xb0000 + i, i);
        let t = Instant::now();
        let (s, v) = docker_call(
            &sock,
            "NetworkDriver.CreateEndpoint",
            Some(&format!(
                r#"{{"NetworkID":"{netid}","EndpointID":"{ep}","Interface":{{"Address":"{addr}","AddressIPv6":"","MacAddress":""}},"Options":{{}}}}"#
            )),
        )?;
        ensure!(s == 200, "endpoint {i}: {v}");
        let (s, v) = docker_call(
            &sock,
            "NetworkDriver.Join",
            Some(&format!(
                r#"{{"NetworkID":"{netid}","EndpointID":"{ep}","SandboxKey":"/x","Options":null}}"#
            )),
        )?;
        ensure!(s == 200, "join {i}: {v}");
        ep_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        ids.push((ep, addr));
    }
    let ports = ovs.ports(&bridge)?.len();
    for (ep, addr) in &ids {
        docker_call(
            &sock,
            "NetworkDriver.DeleteEndpoint",
            Some(&format!(r#"{{"NetworkID":"{netid}","EndpointID":"{ep}"}}"#)),
        )?;
        let ip = addr.split('/').next().unwrap_or_default();
        docker_call(
            &sock,
            "IpamDriver.ReleaseAddress",
            Some(&format!(r#"{{"PoolID":"{pool}","Address":"{ip}"}}"#)),
        )?;
    }
    docker_call(
        &sock,
        "NetworkDriver.DeleteNetwork",
        Some(&format!(r#"{{"NetworkID":"{netid}"}}"#)),
    )?;
    docker_call(
        &sock,
        "IpamDriver.ReleasePool",
        Some(&format!(r#"{{"PoolID":"{pool}"}}"#)),
    )?;
    let left = ovs.ports(&bridge)?.len();
    for n in nets {
        docker.ok(&["network", "rm", n])?;
    }

    let window = |from: usize| -> f64 {
        let mut w: Vec<f64> = ep_ms[from..(from + 10).min(ep_ms.len())].to_vec();
        median(&mut w)
    };
    let fmt = |v: Option<f64>| {
        v.map(|x| format!("{x:.2} ms"))
            .unwrap_or_else(|| "n/a".into())
    };
    println!(
        "\nnetplugin benchmark ({runs} runs per driver, netdev datapath, {} cores)",
        num_cpus()
    );
    println!("docker run --rm true, median (macvlan parent: {parent_kind}):");
    for (i, n) in nets.iter().enumerate() {
        println!(
            "  {n:<14} {:>8.1} ms   ratio to bridge {:.3}",
            med[i],
            med[i] / med[1]
        );
    }
    println!(
        "CreateEndpoint (server side, plugin metrics): p50 {}  p99 {}",
        fmt(ce.0),
        fmt(ce.1)
    );
    println!(
        "  of which p50: datapath (veth + OVS port) {}, store write {}",
        fmt(parts[0].1),
        fmt(parts[1].1)
    );
    println!(
        "Join (server side, plugin metrics):           p50 {}  p99 {}",
        fmt(jn.0),
        fmt(jn.1)
    );
    if let (Some(a), Some(b), Some(c), Some(d)) = (ce.0, jn.0, ce.1, jn.1) {
        println!(
            "CreateEndpoint+Join:                          p50 {:.2} ms  p99 {:.2} ms (sums)",
            a + b,
            c + d
        );
    }
    let n = ep_ms.len();
    if n >= 20 {
        println!(
            "endpoint time (client side, CreateEndpoint+Join): 1st {:.2} ms, median of 1-10 {:.2} ms, median of {}-{} {:.2} ms, {}th {:.2} ms ({} ports on the bridge at the peak, {} left)",
            ep_ms[0],
            window(0),
            n - 9,
            n,
            window(n - 10),
            n,
            ep_ms[n - 1],
            ports,
            left
        );
    }
    println!(
        "TCP between two containers, {} MiB x 5 each, median: anti-spoofed {guarded:.0} Mbit/s, allow_spoofing=true {open:.0} Mbit/s: ratio {:.3}",
        tcp_bytes >> 20,
        guarded / open
    );
    if left > 0 {
        bail!("{left} ports left on the bridge after deleting every endpoint");
    }
    drop(docker);
    net.stop()?;
    Ok(())
}

/// One TCP transfer of `bytes` from `{net}-tx` to `{net}-rx`, in Mbit/s (sender in the
/// container's namespace, busybox nc receiving).
fn tcp_rate(docker: &DockerEnv, net: &str, bytes: usize) -> Result<f64> {
    let (tx, rx) = (format!("{net}-tx"), format!("{net}-rx"));
    let ip = docker.ok(&[
        "inspect",
        "-f",
        &format!("{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}}"),
        &rx,
    ])?;
    let pid: u32 = docker
        .ok(&["inspect", "-f", "{{.State.Pid}}", &tx])?
        .trim()
        .parse()
        .context("pid of the sender")?;
    docker.ok(&[
        "exec",
        "-d",
        &rx,
        "sh",
        "-c",
        "rm -f /tmp/got; nc -l -p 5001 | wc -c > /tmp/got",
    ])?;
    std::thread::sleep(std::time::Duration::from_millis(300));
    let t0 = Instant::now();
    tcp_send_from(pid, format!("{}:5001", ip.trim()).parse()?, bytes)?;
    // Timed at the sender's close (what is still in flight then is a socket buffer, a few
    // MiB at most): polling the receiver through docker exec would add its own latency.
    let secs = t0.elapsed().as_secs_f64();
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let got = docker
            .ok(&["exec", &rx, "cat", "/tmp/got"])
            .unwrap_or_default();
        if !got.trim().is_empty() {
            ensure!(
                got.trim() == bytes.to_string(),
                "{tx} → {rx}: received {got:?} of {bytes} bytes"
            );
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "{tx} → {rx}: nothing received in 60 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(bytes as f64 * 8.0 / 1e6 / secs)
}

fn num_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
