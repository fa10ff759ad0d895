//! Real traffic through a private OVS (netdev datapath), between network namespaces the test
//! creates with addresses that exist only there: an ARP responder flow answers arping, and a
//! meter measurably limits TCP.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a panic is how a test reports failure"
)]

mod common;

use common::{Netns, Ovs};
use ovs_ffi::openflow::*;
use ovs_ffi::ovsdb::{BridgeSpec, Client, Config, PortSpec};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

struct Lab {
    ovs: Ovs,
    db: Client,
    of: OfClient,
}

async fn lab() -> Lab {
    common::require(&["ethtool", "arping"]);
    let ovs = Ovs::start();
    let mut cfg = Config::new(ovs.endpoint());
    cfg.call_timeout = Duration::from_secs(10);
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
    let of = OfClient::connect(ovs.mgmt("br0"), OfConfig::default())
        .await
        .unwrap();
    Lab { ovs, db, of }
}

/// A namespace plugged into br0 through a veth pair; returns it and the port's ofport.
async fn plug(lab: &Lab, port: &str, addr: &str) -> (Netns, u32) {
    let ns = Netns::new("c");
    lab.ovs.ns.exec(&[
        "ip", "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
    ]);
    lab.ovs.ns.exec(&["ip", "link", "set", port, "up"]);
    ns.exec(&["ip", "addr", "add", addr, "dev", "eth0"]);
    ns.exec(&["ip", "link", "set", "eth0", "up"]);
    // netdev datapath: TCP stalls with TX checksum offload on veths (docs/design.md, Network datapath).
    lab.ovs.ns.exec(&["ethtool", "-K", port, "tx", "off"]);
    ns.exec(&["ethtool", "-K", "eth0", "tx", "off"]);
    lab.db
        .ensure_port(&PortSpec {
            bridge: "br0".into(),
            name: port.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let ofport = lab
        .db
        .wait_ofport(port, Duration::from_secs(10))
        .await
        .unwrap();
    (ns, ofport)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arp_responder_answers_arping() {
    let lab = lab().await;
    let (ns, ofport) = plug(&lab, "vbarp", "10.250.0.2/24").await;
    let gw = Ipv4Addr::new(10, 250, 0, 1);
    let mac = Mac([0x02, 0xbe, 0x27, 0, 0, 1]);
    // No other host exists: only the flow can answer.
    let flow = Flow::new(0, 100)
        .cookie(0xa12)
        .matching(Match::new().in_port(ofport).arp_tpa(gw).arp_op(1))
        .actions(
            [
                Action::arp_reply(mac, gw),
                vec![Action::Output(Port::InPort)],
            ]
            .concat(),
        );
    lab.of.add_flow(&flow).await.unwrap();
    let out = ns.exec_status(&["arping", "-c", "2", "-w", "5", "-I", "eth0", "10.250.0.1"]);
    let out = out.unwrap_or_else(|e| panic!("arping got no reply: {e}\n{}", lab.ovs.log_tail()));
    assert!(out.to_lowercase().contains("02:be:27:00:00:01"), "{out}");
    let stats = lab
        .of
        .dump_flows(&FlowFilter {
            cookie: 0xa12,
            cookie_mask: u64::MAX,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(stats[0].packet_count >= 1, "{stats:?}");

    // An address the responder does not know gets no answer.
    assert!(ns
        .exec_status(&["arping", "-c", "1", "-w", "1", "-I", "eth0", "10.250.0.9"])
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gratuitous_arp_packet_out_teaches_mac_learning() {
    let lab = lab().await;
    let (_n1, p1) = plug(&lab, "vbgo1", "10.250.2.2/24").await;
    let (_n2, _p2) = plug(&lab, "vbgo2", "10.250.2.3/24").await;
    lab.of
        .add_flow(&Flow::new(0, 0).actions(vec![Action::Output(Port::Normal)]))
        .await
        .unwrap();
    for (i, v) in [OfVersion::V1_3, OfVersion::V1_5].into_iter().enumerate() {
        let cfg = OfConfig {
            versions: vec![v],
            timeout: Duration::from_secs(10),
        };
        let of = OfClient::connect(lab.ovs.mgmt("br0"), cfg).await.unwrap();
        let mac = Mac([0x02, 0xbe, 0x27, 0, 0, 0x10 + i as u8]);
        of.packet_out(
            p1,
            &[Action::Output(Port::Normal)],
            &gratuitous_arp(mac, Ipv4Addr::new(10, 250, 2, 9)),
        )
        .await
        .unwrap();
        // NORMAL learned the announced MAC on the port the frame came "in" on.
        let mut c = std::process::Command::new("ovs-appctl");
        c.arg("-t")
            .arg(lab.ovs.path("ovs-vswitchd.ctl"))
            .args(["fdb/show", "br0"]);
        let fdb = common::run(&mut c);
        let want = format!("{mac}");
        assert!(
            fdb.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() >= 3 && f[0] == p1.to_string() && f[2] == want
            }),
            "{v:?}: {want} not learned on port {p1}:\n{fdb}"
        );
    }
}

/// Enters `ns` on the current thread (namespaces are per thread) so new sockets live there.
fn enter(ns: &str) {
    let f = std::fs::File::open(format!("/var/run/netns/{ns}")).expect("open netns");
    // SAFETY: setns switches only this thread's namespace; `f` is open for the whole call.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "setns {ns}: {}", std::io::Error::last_os_error());
}

/// Sends TCP for `secs` from `from` to 10.250.1.3 in `to`; returns the received Mbit/s.
fn tcp_mbps(from: &str, to: &str, secs: f64) -> f64 {
    let to = to.to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    let receiver = std::thread::spawn(move || {
        enter(&to);
        let l = TcpListener::bind("10.250.1.3:5201").expect("bind");
        tx.send(()).unwrap();
        let (mut s, _) = l.accept().expect("accept");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        let mut first: Option<Instant> = None;
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    first.get_or_insert_with(Instant::now);
                    total += n as u64;
                }
            }
        }
        let dt = first
            .map(|f| f.elapsed().as_secs_f64())
            .unwrap_or(1.0)
            .max(0.001);
        total as f64 * 8.0 / dt / 1e6
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("receiver ready");
    let from = from.to_string();
    let sender = std::thread::spawn(move || {
        enter(&from);
        let addr: SocketAddr = "10.250.1.3:5201".parse().unwrap();
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        let chunk = vec![0x5au8; 64 * 1024];
        let start = Instant::now();
        while start.elapsed().as_secs_f64() < secs {
            if s.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = s.shutdown(std::net::Shutdown::Write);
    });
    sender.join().unwrap();
    receiver.join().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meter_limits_tcp_between_namespaces() {
    let lab = lab().await;
    let (a, pa) = plug(&lab, "vbma", "10.250.1.2/24").await;
    let (b, _pb) = plug(&lab, "vbmb", "10.250.1.3/24").await;
    // Unmetered first: NORMAL forwarding for everything.
    lab.of
        .add_flow(
            &Flow::new(0, 1)
                .cookie(0x1)
                .actions(vec![Action::Output(Port::Normal)]),
        )
        .await
        .unwrap();
    let free = tcp_mbps(&a.name, &b.name, 1.5);

    // Then a 5 Mbit/s meter on what a sends.
    let meter = Meter::drop_kbps(1, 5_000, Some(500));
    lab.of.ensure_meter(&meter).await.unwrap();
    lab.of
        .add_flow(
            &Flow::new(0, 10)
                .cookie(0x2)
                .matching(Match::new().in_port(pa))
                .meter(1)
                .actions(vec![Action::Output(Port::Normal)]),
        )
        .await
        .unwrap();
    let metered = tcp_mbps(&a.name, &b.name, 2.0);
    eprintln!("TCP a->b: unmetered {free:.1} Mbit/s, metered at 5 Mbit/s: {metered:.1} Mbit/s");
    assert!(metered < 8.0, "meter did not limit: {metered:.1} Mbit/s");
    assert!(metered > 0.5, "metered TCP stalled: {metered:.1} Mbit/s");
    assert!(
        free > 4.0 * metered,
        "unmetered {free:.1} vs metered {metered:.1}"
    );
    let stats = lab.of.meter_stats(Some(1)).await.unwrap();
    assert!(
        stats[0].bands[0].0 > 0,
        "the band dropped nothing: {stats:?}"
    );
}
