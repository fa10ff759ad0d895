//! Malformed and hostile peers: random and mutated replies to the decoders, and fake
//! OVSDB / OpenFlow servers that send truncated frames, wrong ids and oversized messages.
//! Every case must end in an error value, never a panic or a hang.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a panic is how a test reports failure"
)]

use ovs_ffi::openflow::{self, *};
use ovs_ffi::ovsdb::{Client, Config};
use plugin_transport::fuzz::Rng;
use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::time::Duration;

fn valid_stats_body(v: OfVersion) -> Vec<u8> {
    // A flow_mod body re-framed as a flow stats entry: a realistic starting point to mutate.
    let f = Flow::new(1, 100)
        .cookie(7)
        .matching(
            Match::new()
                .in_port(3)
                .arp_tpa("10.0.0.1".parse().unwrap())
                .vlan_vid(5),
        )
        .meter(1)
        .actions(vec![
            Action::move_field(Field::EthSrc, Field::EthDst),
            Action::SetField(SetField::ArpOp(2)),
            Action::Output(Port::InPort),
        ])
        .goto_table(3);
    let fm = openflow::fuzz::flow_mod(v, &FlowMod::Add(f)).unwrap();
    let body = &fm[8 + 40..];
    let mut e = vec![0u8; if v >= OfVersion::V1_5 { 24 } else { 48 }];
    if v >= OfVersion::V1_5 {
        let mlen = (u16::from_be_bytes([body[2], body[3]]) as usize).div_ceil(8) * 8;
        e.extend_from_slice(&body[..mlen]);
        e.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0]);
        e.extend_from_slice(&body[mlen..]);
    } else {
        e.extend_from_slice(body);
    }
    let l = e.len() as u16;
    e[..2].copy_from_slice(&l.to_be_bytes());
    e
}

#[test]
fn decoders_never_panic_on_random_or_mutated_input() {
    let mut rng = Rng::new(0x0b5e_55ed_cafe_f00d);
    for v in [OfVersion::V1_3, OfVersion::V1_4, OfVersion::V1_5] {
        let valid = valid_stats_body(v);
        assert_eq!(openflow::fuzz::flow_stats(v, &valid).unwrap().len(), 1);
        for i in 0..20_000 {
            let mut b = valid.clone();
            match i % 4 {
                0 => b.truncate(rng.below(b.len())),
                1 => {
                    for _ in 0..1 + rng.below(4) {
                        let at = rng.below(b.len());
                        b[at] = rng.next_u64() as u8;
                    }
                }
                2 => {
                    // Lengths are the interesting fields: poke 16-bit values at even offsets.
                    let at = rng.below(b.len() / 2) * 2;
                    let val = [0u16, 1, 4, 7, 8, 0xffff, 0x8000][rng.below(7)].to_be_bytes();
                    b[at..at + 2].copy_from_slice(&val);
                }
                _ => {
                    b = (0..rng.below(200)).map(|_| rng.next_u64() as u8).collect();
                }
            }
            let _ = openflow::fuzz::flow_stats(v, &b);
            let _ = openflow::fuzz::meter_configs(&b);
            let _ = openflow::fuzz::meter_stats(&b);
            let _ = openflow::fuzz::error(v as u8 + 4, &b);
        }
    }
}

fn sock_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("ovsh")
        .tempdir_in("/tmp")
        .unwrap()
}

/// A fake switch: answers our hello with `hello`, then runs `script` on the stream.
fn fake_switch(
    hello: Vec<u8>,
    script: impl FnOnce(&mut std::os::unix::net::UnixStream) + Send + 'static,
) -> (
    tempfile::TempDir,
    std::path::PathBuf,
    std::thread::JoinHandle<()>,
) {
    let d = sock_dir();
    let p = d.path().join("br.mgmt");
    let l = UnixListener::bind(&p).unwrap();
    let h = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut hdr = [0u8; 16];
        let _ = s.read(&mut hdr);
        let _ = s.write_all(&hello);
        script(&mut s);
    });
    (d, p, h)
}

fn of13_hello() -> Vec<u8> {
    vec![4, 0, 0, 8, 0, 0, 0, 1]
}

fn cfg(ms: u64) -> OfConfig {
    OfConfig {
        versions: vec![OfVersion::V1_3],
        timeout: Duration::from_millis(ms),
    }
}

/// Reads one request frame from the client; returns its xid.
fn read_req(s: &mut std::os::unix::net::UnixStream) -> u32 {
    let mut h = [0u8; 8];
    if s.read_exact(&mut h).is_err() {
        return 0;
    }
    let len = u16::from_be_bytes([h[2], h[3]]) as usize;
    let mut body = vec![0u8; len.saturating_sub(8)];
    let _ = s.read_exact(&mut body);
    u32::from_be_bytes([h[4], h[5], h[6], h[7]])
}

#[tokio::test]
async fn openflow_hostile_switches() {
    // No common version.
    let (_d, p, h) = fake_switch(vec![1, 0, 0, 8, 0, 0, 0, 1], |_| {});
    let e = OfClient::connect(&p, cfg(2000))
        .await
        .err()
        .expect("must fail");
    assert!(e.to_string().contains("no common OpenFlow version"), "{e}");
    h.join().unwrap();

    // A header whose length is shorter than the header itself.
    let (_d, p, h) = fake_switch(vec![4, 0, 0, 4, 0, 0, 0, 1], |_| {});
    let e = OfClient::connect(&p, cfg(2000))
        .await
        .err()
        .expect("must fail");
    assert!(matches!(e, ovs_ffi::Error::Protocol { .. }), "{e}");
    h.join().unwrap();

    // Truncated reply, then close.
    let (_d, p, h) = fake_switch(of13_hello(), |s| {
        let x = read_req(s).to_be_bytes();
        let _ = s.write_all(&[4, 3, 0, 40, x[0], x[1], x[2], x[3], 1, 2]);
    });
    let c = OfClient::connect(&p, cfg(2000)).await.unwrap();
    let e = c.echo().await.unwrap_err();
    assert!(e.is_connection_error(), "{e}");
    h.join().unwrap();

    // Replies with the wrong xid only: bounded by the timeout.
    let (_d, p, h) = fake_switch(of13_hello(), |s| {
        let x = read_req(s).wrapping_add(1000).to_be_bytes();
        for _ in 0..100 {
            if s.write_all(&[4, 3, 0, 8, x[0], x[1], x[2], x[3]]).is_err() {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(600));
    });
    let c = OfClient::connect(&p, cfg(300)).await.unwrap();
    let e = c.echo().await.unwrap_err();
    assert!(matches!(e, ovs_ffi::Error::Timeout { .. }), "{e}");
    h.join().unwrap();

    // A multipart reply with a garbage body: a protocol error.
    let (_d, p, h) = fake_switch(of13_hello(), |s| {
        let x = read_req(s).to_be_bytes();
        let mut m = vec![4, 19, 0, 24, x[0], x[1], x[2], x[3], 0, 1, 0, 0, 0, 0, 0, 0];
        m.extend_from_slice(&[0, 200, 1, 2, 3, 4, 5, 6]);
        let _ = s.write_all(&m);
        std::thread::sleep(Duration::from_millis(200));
    });
    let c = OfClient::connect(&p, cfg(2000)).await.unwrap();
    let e = c.dump_flows(&FlowFilter::default()).await.unwrap_err();
    assert!(matches!(e, ovs_ffi::Error::Protocol { .. }), "{e}");
    h.join().unwrap();

    // An error reply with a truncated body.
    let (_d, p, h) = fake_switch(of13_hello(), |s| {
        let x = read_req(s).to_be_bytes();
        let _ = s.write_all(&[4, 1, 0, 9, x[0], x[1], x[2], x[3], 0]);
        std::thread::sleep(Duration::from_millis(200));
    });
    let c = OfClient::connect(&p, cfg(2000)).await.unwrap();
    assert!(c.echo().await.is_err());
    h.join().unwrap();
}

/// A fake ovsdb-server: reads the monitor request and runs `script`.
fn fake_ovsdb(
    script: impl FnOnce(&mut std::os::unix::net::UnixStream) + Send + 'static,
) -> (tempfile::TempDir, String, std::thread::JoinHandle<()>) {
    let d = sock_dir();
    let p = d.path().join("db.sock");
    let l = UnixListener::bind(&p).unwrap();
    let h = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf);
        script(&mut s);
    });
    (d, format!("unix:{}", p.display()), h)
}

fn db_cfg(ep: &str) -> Config {
    let mut c = Config::new(ep);
    c.call_timeout = Duration::from_millis(400);
    c.max_message = 4096;
    c.backoff_min = Duration::from_millis(200);
    c
}

#[tokio::test]
async fn ovsdb_hostile_servers() {
    const MONITOR_OK: &[u8] = br#"{"id":0,"result":{},"error":null}"#;

    // Wrong ids on every reply: the call times out; nothing panics.
    let (_d, ep, h) = fake_ovsdb(|s| {
        let _ = s.write_all(MONITOR_OK);
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf);
        let _ =
            s.write_all(br#"{"id":999,"result":[],"error":null}{"id":"x","result":1}{"id":null}"#);
        std::thread::sleep(Duration::from_millis(600));
    });
    let c = Client::connect(db_cfg(&ep)).await.unwrap();
    let e = c.echo().await.unwrap_err();
    assert!(matches!(e, ovs_ffi::Error::Timeout { .. }), "{e}");
    drop(c);
    h.join().unwrap();

    // Oversized message: the connection is dropped, the pending call fails.
    let (_d, ep, h) = fake_ovsdb(|s| {
        let _ = s.write_all(MONITOR_OK);
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf);
        let mut big = br#"{"id":1,"result":""#.to_vec();
        big.extend(std::iter::repeat_n(b'a', 64 * 1024));
        let _ = s.write_all(&big);
        std::thread::sleep(Duration::from_millis(300));
    });
    let c = Client::connect(db_cfg(&ep)).await.unwrap();
    assert!(c.echo().await.is_err());
    drop(c);
    h.join().unwrap();

    // Truncated frame then close; garbage; hostile monitor replies.
    for script in [
        br#"{"id":0,"result":{"Bridge":{"u":{"new":"#.as_slice(),
        b"\x00\xffnot json at all".as_slice(),
        br#"{"id":0,"result":[1,2,3],"error":null}"#.as_slice(),
        br#"{"id":0,"result":{"Bridge":{"u":{"new":7}}},"error":null}"#.as_slice(),
        br#"{"id":0,"result":null,"error":{"deep":[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]}}"#.as_slice(),
        br#"{"method":"update","params":[]}"#.as_slice(),
        br#"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["#.as_slice(),
    ] {
        let (_d, ep, h) = fake_ovsdb(move |s| {
            let _ = s.write_all(script);
            std::thread::sleep(Duration::from_millis(100));
        });
        let r = Client::connect(db_cfg(&ep)).await;
        assert!(r.is_err(), "connect must fail for {:?}", String::from_utf8_lossy(script));
        h.join().unwrap();
    }
}
