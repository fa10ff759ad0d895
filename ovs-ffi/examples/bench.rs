//! Benchmark: ovs-ffi vs the CLI tools, in the same run, against a private OVS (netdev).
//!
//!   cargo run -p ovs-ffi --release --example bench [-- PORTS FLOWS]
//!
//! Defaults: 1000 port add+delete and 10000 flow_mods. Needs root and openvswitch-switch.
//! Ports are added without waiting for ovs-vswitchd on both sides (ovs-vsctl --no-wait), so
//! both measure the same database work.
#![allow(
    clippy::unwrap_used,
    reason = "a benchmark run by hand: a panic is an acceptable failure report"
)]

#[path = "../tests/common/mod.rs"]
mod common;

use ovs_ffi::openflow::*;
use ovs_ffi::ovsdb::{BridgeSpec, Client, Config, PortSpec};
use std::process::Command;
use std::time::{Duration, Instant};

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let ports = args.first().copied().unwrap_or(1000);
    let flows = args.get(1).copied().unwrap_or(10_000);
    let ovs = common::Ovs::start();
    let mut cfg = Config::new(ovs.endpoint());
    cfg.call_timeout = Duration::from_secs(30);
    let db = Client::connect(cfg).await.unwrap();
    db.ensure_bridge(&BridgeSpec {
        name: "br0".into(),
        datapath_type: Some("netdev".into()),
        fail_mode: Some("secure".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    db.wait_applied(Duration::from_secs(10)).await.unwrap();
    ovs.wait_mgmt("br0");

    // --- ports: ovs-ffi
    let mut add = Vec::with_capacity(ports);
    let mut del = Vec::with_capacity(ports);
    let t0 = Instant::now();
    for i in 0..ports {
        let spec = PortSpec {
            bridge: "br0".into(),
            name: format!("bf{i}"),
            tag: Some(100),
            iface_type: "internal".into(),
            ..Default::default()
        };
        let t = Instant::now();
        db.ensure_port(&spec).await.unwrap();
        add.push(t.elapsed());
    }
    for i in 0..ports {
        let t = Instant::now();
        assert!(db.delete_port("br0", &format!("bf{i}")).await.unwrap());
        del.push(t.elapsed());
    }
    let ffi_ports = t0.elapsed();

    // --- ports: ovs-vsctl
    let t0 = Instant::now();
    for i in 0..ports {
        ovs.vsctl(&[
            "--no-wait",
            "add-port",
            "br0",
            &format!("bc{i}"),
            "tag=100",
            "--",
            "set",
            "Interface",
            &format!("bc{i}"),
            "type=internal",
        ]);
    }
    for i in 0..ports {
        ovs.vsctl(&["--no-wait", "del-port", "br0", &format!("bc{i}")]);
    }
    let cli_ports = t0.elapsed();

    // --- flows: ovs-ffi, one flow_mod per call (each confirmed by a barrier)
    let of = OfClient::connect(ovs.mgmt("br0"), OfConfig::default())
        .await
        .unwrap();
    let flow = |i: usize, cookie: u64| {
        Flow::new(0, 100)
            .cookie(cookie)
            .matching(
                Match::new()
                    .in_port(1 + (i as u32 % 1000))
                    .ipv4_dst(std::net::Ipv4Addr::from(0x0afa_0000 + i as u32), 32),
            )
            .actions(vec![Action::Output(Port::Normal)])
    };
    let mut fl = Vec::with_capacity(flows);
    let t0 = Instant::now();
    for i in 0..flows {
        let t = Instant::now();
        of.add_flow(&flow(i, 1)).await.unwrap();
        fl.push(t.elapsed());
    }
    let ffi_flows = t0.elapsed();
    of.delete_flows_by_cookie(None, 1, u64::MAX).await.unwrap();

    // --- flows: ovs-ffi, batched (pipelined, one barrier)
    let batch: Vec<FlowMod> = (0..flows).map(|i| FlowMod::Add(flow(i, 2))).collect();
    let t0 = Instant::now();
    of.flow_mods(&batch).await.unwrap();
    let ffi_batch = t0.elapsed();
    assert_eq!(
        of.dump_flows(&FlowFilter {
            cookie: 2,
            cookie_mask: u64::MAX,
            ..Default::default()
        })
        .await
        .unwrap()
        .len(),
        flows
    );
    of.delete_flows_by_cookie(None, 2, u64::MAX).await.unwrap();

    // --- flows: ovs-ofctl, one process per flow_mod
    let mgmt = ovs.mgmt("br0");
    let mgmt = mgmt.to_str().unwrap();
    let t0 = Instant::now();
    for i in 0..flows {
        let spec = format!(
            "cookie=0x3,priority=100,ip,in_port={},nw_dst=10.250.{}.{},actions=NORMAL",
            1 + i % 1000,
            (i >> 8) & 0xff,
            i & 0xff
        );
        let out = Command::new("ovs-ofctl")
            .args(["-O", "OpenFlow13", "add-flow", mgmt, &spec])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let cli_flows = t0.elapsed();

    let pr = |name: &str, n: usize, d: Duration| {
        println!(
            "{name:<44} {n:>6} ops in {:>8.3} s = {:>9.0} ops/s",
            d.as_secs_f64(),
            rate(n, d)
        )
    };
    println!(
        "ovs-ffi benchmark ({} port add+delete, {} flow_mods; netdev datapath, private OVS)",
        ports, flows
    );
    pr(
        "ports: ovs-ffi ensure_port + delete_port",
        2 * ports,
        ffi_ports,
    );
    pr(
        "ports: ovs-vsctl --no-wait add-port/del-port",
        2 * ports,
        cli_ports,
    );
    println!(
        "  ratio ports: {:.1}x",
        cli_ports.as_secs_f64() / ffi_ports.as_secs_f64()
    );
    println!(
        "  ovs-ffi port add p50 {:.3} ms, p99 {:.3} ms; delete p50 {:.3} ms",
        pct(&mut add, 0.5).as_secs_f64() * 1e3,
        pct(&mut add, 0.99).as_secs_f64() * 1e3,
        pct(&mut del, 0.5).as_secs_f64() * 1e3
    );
    pr(
        "flows: ovs-ffi add_flow (one per call + barrier)",
        flows,
        ffi_flows,
    );
    pr(
        "flows: ovs-ffi flow_mods (batched, one barrier)",
        flows,
        ffi_batch,
    );
    pr(
        "flows: ovs-ofctl add-flow (one process each)",
        flows,
        cli_flows,
    );
    println!(
        "  ratio flows: {:.1}x one-by-one, {:.1}x batched; add_flow p50 {:.3} ms",
        cli_flows.as_secs_f64() / ffi_flows.as_secs_f64(),
        cli_flows.as_secs_f64() / ffi_batch.as_secs_f64(),
        pct(&mut fl, 0.5).as_secs_f64() * 1e3
    );
}
