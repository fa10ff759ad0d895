//! The contract every [`Store`] implementation meets: the embedded and in-memory stores run
//! it in unit tests, the etcd store against a real cluster in the integration suite. Panics
//! (with the failed expectation) on the first violation. Uses keys under `a/` and `b/`.
#![allow(
    clippy::unwrap_used,
    reason = "a test suite: a panic is how it reports a violated contract"
)]

use std::time::{Duration, Instant};

use super::{Compare, Event, Op, Store, Txn};

pub fn run(s: &dyn Store) {
    let w = s.watch("a/").unwrap();
    let r = s
        .txn(Txn {
            compare: vec![Compare::Version("a/1".into(), 0)],
            success: vec![Op::put("a/1", "one")],
            failure: vec![],
        })
        .unwrap();
    assert!(r.succeeded);
    let kv = s.get("a/1").unwrap().unwrap();
    assert_eq!((kv.version, kv.create_revision), (1, r.revision));
    // Create-if-absent fails the second time and runs the failure branch.
    let r2 = s
        .txn(Txn {
            compare: vec![Compare::Version("a/1".into(), 0)],
            success: vec![Op::put("a/1", "clobbered")],
            failure: vec![Op::put("b/x", "lost")],
        })
        .unwrap();
    assert!(!r2.succeeded);
    assert_eq!(s.get("a/1").unwrap().unwrap().value, b"one");
    assert!(s.get("b/x").unwrap().is_some());
    // CAS on mod_revision.
    let stale = kv.mod_revision;
    assert!(
        s.txn(Txn {
            compare: vec![Compare::ModRevision("a/1".into(), stale)],
            success: vec![Op::put("a/1", "two"), Op::put("a/2", "x")],
            failure: vec![],
        })
        .unwrap()
        .succeeded
    );
    assert!(
        !s.txn(Txn {
            compare: vec![Compare::ModRevision("a/1".into(), stale)],
            success: vec![Op::put("a/1", "three")],
            failure: vec![],
        })
        .unwrap()
        .succeeded
    );
    assert!(
        s.txn(Txn {
            compare: vec![Compare::Value("a/1".into(), b"two".to_vec())],
            success: vec![],
            failure: vec![],
        })
        .unwrap()
        .succeeded
    );
    let kv = s.get("a/1").unwrap().unwrap();
    assert_eq!((kv.version, kv.value.as_slice()), (2, &b"two"[..]));
    // create_revision stays across updates; 0 = absent.
    assert!(
        s.txn(Txn {
            compare: vec![
                Compare::CreateRevision("a/1".into(), r.revision),
                Compare::CreateRevision("a/none".into(), 0),
            ],
            ..Default::default()
        })
        .unwrap()
        .succeeded
    );
    assert_eq!(s.range("a/").unwrap().len(), 2);
    assert_eq!(s.range("a/2").unwrap().len(), 1);
    assert_eq!(s.count("a/").unwrap(), 2);
    assert_eq!(s.count("a/2").unwrap(), 1);
    assert_eq!(s.count("nothing/").unwrap(), 0);
    // Reads in a branch: a lost CAS sees the current records in the same call, without a
    // new revision; reads after a write in the branch see the write.
    let before = s.revision().unwrap();
    let lost = s
        .txn(Txn {
            compare: vec![Compare::Version("a/1".into(), 0)],
            success: vec![],
            failure: vec![Op::Get("a/1".into()), Op::Get("a/none".into())],
        })
        .unwrap();
    assert!(!lost.succeeded);
    assert_eq!(lost.revision, before);
    assert_eq!(lost.reads.len(), 2);
    assert_eq!(lost.reads[0].as_ref().unwrap().value, b"two");
    assert!(lost.reads[1].is_none());
    let wrote = s
        .txn(Txn {
            compare: vec![],
            success: vec![Op::put("b/read", "fresh"), Op::Get("b/read".into())],
            failure: vec![],
        })
        .unwrap();
    let seen = wrote.reads[0].as_ref().unwrap();
    assert_eq!(
        (seen.value.as_slice(), seen.mod_revision),
        (&b"fresh"[..], wrote.revision)
    );
    // Leases.
    let lease = s.grant_lease(Duration::from_secs(60)).unwrap();
    s.txn(Txn {
        success: vec![Op::Put {
            key: "a/leased".into(),
            value: b"l".to_vec(),
            lease,
        }],
        ..Default::default()
    })
    .unwrap();
    s.keep_alive(lease).unwrap();
    s.revoke_lease(lease).unwrap();
    assert!(s.get("a/leased").unwrap().is_none());
    assert!(s.keep_alive(lease).is_err());
    assert!(s
        .txn(Txn {
            success: vec![Op::Put {
                key: "a/l2".into(),
                value: vec![],
                lease
            }],
            ..Default::default()
        })
        .is_err());
    let short = s.grant_lease(Duration::from_millis(1)).unwrap();
    s.txn(Txn {
        success: vec![Op::Put {
            key: "a/short".into(),
            value: vec![],
            lease: short,
        }],
        ..Default::default()
    })
    .unwrap();
    // etcd rounds TTLs up to its minimum (about 2 s) and expires leases on the leader's
    // schedule: wait a bounded time for the key to go.
    let deadline = Instant::now() + Duration::from_secs(15);
    while s.get("a/short").unwrap().is_some() {
        assert!(
            Instant::now() < deadline,
            "a key of an expired lease is still there"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // Delete by prefix; deletes of absent keys are no-ops.
    s.txn(Txn {
        success: vec![Op::DeletePrefix("a/".into()), Op::Delete("nope".into())],
        ..Default::default()
    })
    .unwrap();
    assert!(s.range("a/").unwrap().is_empty());
    // The watch saw every change under a/ and nothing else, in order.
    // Events may arrive asynchronously (etcd): collect until the last change, bounded.
    let mut events: Vec<Event> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !events
        .iter()
        .any(|e| matches!(e, Event::Delete { key, .. } if key == "a/2"))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match w.recv_timeout(left) {
            Ok(e) => events.push(e),
            Err(_) => panic!("watch events missing after 10 s: {events:?}"),
        }
    }
    let keys: Vec<String> = events
        .iter()
        .map(|e| match e {
            Event::Put(kv) => format!("put {}", kv.key),
            Event::Delete { key, .. } => format!("del {key}"),
        })
        .collect();
    assert_eq!(keys[0], "put a/1");
    assert!(keys.contains(&"del a/leased".to_string()), "{keys:?}");
    assert!(keys.contains(&"del a/short".to_string()), "{keys:?}");
    assert_eq!(keys.last().unwrap(), "del a/2");
    assert!(!keys.iter().any(|k| k.contains("b/")));
}
