//! The IPAM's unit tests, on the in-memory store.

use super::*;
use crate::store::memory::MemStore;
use crate::store::{Op, Txn};
use std::sync::Arc;

fn ipam() -> Ipam {
    Ipam::new(
        State::new(Arc::new(MemStore::new()), "h1"),
        IpamConfig {
            default_pools: vec!["10.240.0.0/22".parse().unwrap()],
            default_prefix: 24,
        },
    )
}

fn gw() -> BTreeMap<String, String> {
    BTreeMap::from([(GATEWAY_TYPE_KEY.to_string(), GATEWAY_TYPE.to_string())])
}

#[test]
fn explicit_pool_gateway_and_addresses() {
    let i = ipam();
    let (id, cidr) = i.request_pool("", "10.231.1.0/24", "", false).unwrap();
    assert_eq!(cidr, "10.231.1.0/24");
    assert_eq!(i.request_address(&id, "", &gw()).unwrap(), "10.231.1.1/24");
    let none = BTreeMap::new();
    assert_eq!(i.request_address(&id, "", &none).unwrap(), "10.231.1.2/24");
    assert_eq!(
        i.request_address(&id, "10.231.1.50", &none).unwrap(),
        "10.231.1.50/24"
    );
    let e = i.request_address(&id, "10.231.1.50", &none).unwrap_err();
    assert!(e.to_string().contains("already in use"), "{e}");
    let e = i.request_address(&id, "10.231.2.5", &none).unwrap_err();
    assert!(e.to_string().contains("outside"), "{e}");
    let e = i.request_address(&id, "10.231.1.255", &none).unwrap_err();
    assert!(e.to_string().contains("broadcast"), "{e}");
    let e = i.request_address(&id, "10.231.1.1", &none).unwrap_err();
    assert!(e.to_string().contains("gateway"), "{e}");
    // Released addresses come back; release is idempotent.
    i.release_address(&id, "10.231.1.2").unwrap();
    i.release_address(&id, "10.231.1.2").unwrap();
    assert_eq!(i.request_address(&id, "", &none).unwrap(), "10.231.1.2/24");
    // Overlap with a clear message; another address space is separate.
    let e = i.request_pool("", "10.231.0.0/16", "", false).unwrap_err();
    assert!(e.to_string().contains("overlaps 10.231.1.0/24"), "{e}");
    i.request_pool("other", "10.231.0.0/16", "", false).unwrap();
    i.release_pool(&id).unwrap();
    i.release_pool(&id).unwrap();
    assert!(i.state.addresses(&id).unwrap().is_empty());
    i.request_pool("", "10.231.1.0/24", "", false).unwrap();
}

#[test]
fn ip_range_and_bad_input() {
    let i = ipam();
    let (id, _) = i
        .request_pool("", "10.231.2.0/24", "10.231.2.128/25", false)
        .unwrap();
    assert_eq!(i.request_address(&id, "", &gw()).unwrap(), "10.231.2.1/24");
    let none = BTreeMap::new();
    assert_eq!(
        i.request_address(&id, "", &none).unwrap(),
        "10.231.2.129/24"
    );
    // Aux addresses outside the range but inside the subnet are accepted.
    assert_eq!(
        i.request_address(&id, "10.231.2.5", &none).unwrap(),
        "10.231.2.5/24"
    );
    for (pool, sub, v6, needle) in [
        ("", "10.1.0.0/24", false, "needs --subnet"),
        ("10.1.0.1/24", "", false, "host bits"),
        ("banana", "", false, "CIDR"),
        ("10.1.0.0/31", "", false, "/30"),
        ("10.1.0.0/24", "10.2.0.0/25", false, "not inside"),
        ("", "", true, "IPv6"),
    ] {
        let e = i.request_pool("", pool, sub, v6).unwrap_err();
        assert!(e.to_string().contains(needle), "{pool} {sub}: {e}");
    }
    assert!(i.request_address("", "", &none).is_err());
    assert!(i
        .request_address("p-none", "", &none)
        .unwrap_err()
        .to_string()
        .contains("not found"));
}

#[test]
fn auto_pools_never_twice_and_exhaustion() {
    let i = ipam();
    let mut seen = BTreeSet::new();
    // A held explicit pool inside the default range is skipped too.
    i.request_pool("", "10.240.1.0/24", "", false).unwrap();
    for _ in 0..3 {
        let (_, cidr) = i.request_pool("", "", "", false).unwrap();
        assert!(cidr != "10.240.1.0/24");
        assert!(seen.insert(cidr));
    }
    let e = i.request_pool("", "", "", false).unwrap_err();
    assert!(e.to_string().contains("no free /24"), "{e}");
}

#[test]
fn exhaustion_of_addresses() {
    let i = ipam();
    let (id, _) = i.request_pool("", "10.231.3.0/30", "", false).unwrap();
    let none = BTreeMap::new();
    i.request_address(&id, "", &gw()).unwrap();
    i.request_address(&id, "", &none).unwrap();
    let e = i.request_address(&id, "", &none).unwrap_err();
    assert!(e.to_string().contains("no free address"), "{e}");
}

/// Property-style: random interleavings of allocate/release over many rounds, checked
/// against a model: never a duplicate, nothing leaked, everything inside the subnet.
#[test]
fn allocator_no_duplicates_no_leaks() {
    let i = Arc::new(ipam());
    let (id, _) = i.request_pool("", "10.231.4.0/26", "", false).unwrap();
    let mut rng = 0x9e3779b97f4a7c15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let none = BTreeMap::new();
    let mut model: BTreeSet<String> = BTreeSet::new();
    for _ in 0..3000 {
        if next() % 3 != 0 {
            match i.request_address(&id, "", &none) {
                Ok(a) => assert!(model.insert(a.clone()), "duplicate {a}"),
                Err(e) => {
                    assert_eq!(model.len(), 62, "only full pools refuse: {e}");
                }
            }
        } else if !model.is_empty() {
            let n = (next() as usize) % model.len();
            let a = model.iter().nth(n).unwrap().clone();
            i.release_address(&id, &a).unwrap();
            model.remove(&a);
        }
        let held: BTreeSet<String> = i
            .state
            .addresses(&id)
            .unwrap()
            .iter()
            .map(|r| format!("{}/26", r.address))
            .collect();
        assert_eq!(held, model, "store and model agree (no leaks)");
    }
    // Concurrent allocation from several threads: still no duplicates.
    for a in &model {
        i.release_address(&id, a).unwrap();
    }
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let i = i.clone();
            let id = id.clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                while let Ok(a) = i.request_address(&id, "", &BTreeMap::new()) {
                    got.push(a);
                }
                got
            })
        })
        .collect();
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.join().unwrap());
    }
    let unique: BTreeSet<&String> = all.iter().collect();
    assert_eq!(unique.len(), all.len(), "no duplicates across threads");
    assert_eq!(all.len(), 62);
}

/// Property test: several hosts (each its own `Ipam`, cache and host id) share one store
/// and one /24 pool of 16 blocks, allocating (dynamic and explicit) and releasing at
/// random, concurrently; for several seeds. Never two holders of one address (checked
/// live against a model), nothing lost or leaked at the end, blocks in step with
/// addresses, borrowing once the blocks are all claimed.
#[test]
fn concurrent_hosts_property() {
    use crate::fleet::audit;
    for seed in [0x9e3779b97f4a7c15u64, 0xdeadbeef12345678, 42] {
        let store: Arc<dyn crate::store::Store> = Arc::new(MemStore::new());
        let hosts: Vec<Arc<Ipam>> = (0..6)
            .map(|h| {
                Arc::new(Ipam::new(
                    State::new(store.clone(), format!("h{h}")),
                    IpamConfig::default(),
                ))
            })
            .collect();
        let mut pool = String::new();
        for h in &hosts {
            let (id, _) = h.request_pool("", "10.231.9.0/24", "", false).unwrap();
            assert!(pool.is_empty() || pool == id, "one shared pool");
            pool = id;
            assert_eq!(
                h.request_address(&pool, "", &gw()).unwrap(),
                "10.231.9.1/24",
                "the gateway is shared"
            );
        }
        let model: Arc<std::sync::Mutex<BTreeMap<Ipv4Addr, String>>> = Arc::default();
        let threads: Vec<_> = hosts
            .iter()
            .enumerate()
            .map(|(n, h)| {
                let h = h.clone();
                let pool = pool.clone();
                let model = model.clone();
                std::thread::spawn(move || {
                    let mut rng = seed ^ (n as u64 + 1).wrapping_mul(0x2545f4914f6cdd1d);
                    let mut next = move || {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        rng
                    };
                    let mut mine: Vec<Ipv4Addr> = Vec::new();
                    let none = BTreeMap::new();
                    for _ in 0..400 {
                        let r = next() % 10;
                        let got = if r < 6 {
                            Some(h.request_address(&pool, "", &none))
                        } else if r < 7 {
                            let ip = format!("10.231.9.{}", 2 + next() % 253);
                            Some(h.request_address(&pool, &ip, &none))
                        } else if !mine.is_empty() {
                            let ip = mine.swap_remove((next() as usize) % mine.len());
                            model.lock().unwrap().remove(&ip);
                            h.release_address(&pool, &ip.to_string()).unwrap();
                            None
                        } else {
                            None
                        };
                        match got {
                            Some(Ok(a)) => {
                                let ip: Ipv4Addr = a.split('/').next().unwrap().parse().unwrap();
                                let prev = model.lock().unwrap().insert(ip, format!("h{n}"));
                                assert!(
                                    prev.is_none(),
                                    "{ip} handed to h{n} while {prev:?} holds it"
                                );
                                mine.push(ip);
                            }
                            Some(Err(e)) => {
                                let m = e.to_string();
                                assert!(
                                    m.contains("no free address") || m.contains("already in use"),
                                    "h{n}: {m}"
                                );
                            }
                            None => {}
                        }
                    }
                    mine
                })
            })
            .collect();
        let mut held: BTreeMap<Ipv4Addr, usize> = BTreeMap::new();
        for (n, t) in threads.into_iter().enumerate() {
            for ip in t.join().unwrap() {
                assert!(held.insert(ip, n).is_none(), "{ip} held twice");
            }
        }
        let stored: BTreeSet<Ipv4Addr> = hosts[0]
            .state
            .addresses(&pool)
            .unwrap()
            .iter()
            .filter(|a| a.kind == AddrKind::Address)
            .map(|a| a.address)
            .collect();
        let expected: BTreeSet<Ipv4Addr> = held.keys().copied().collect();
        assert_eq!(
            stored, expected,
            "store and holders agree: nothing lost or leaked"
        );
        let a = audit(&hosts[0].state).unwrap();
        assert!(a.problems.is_empty(), "{:?}", a.problems);
        // Every block was claimed, some by each host (affinity), and borrowing happened
        // if a host holds addresses in another host's block.
        let blocks = store.range(&block_prefix(&pool)).unwrap();
        assert_eq!(blocks.len(), 16);
        // The range is full after a final fill from one host: 253 endpoints + gateway.
        let none = BTreeMap::new();
        while hosts[0].request_address(&pool, "", &none).is_ok() {}
        assert_eq!(hosts[0].state.addresses(&pool).unwrap().len(), 254);
        for a in hosts[0].state.addresses(&pool).unwrap() {
            if a.kind == AddrKind::Address {
                // Released by the host holding it; any other host's release leaves it.
                let holder = hosts.iter().find(|h| h.state.host_id == a.host_id).unwrap();
                let other = hosts.iter().find(|h| h.state.host_id != a.host_id).unwrap();
                other
                    .release_address(&pool, &a.address.to_string())
                    .unwrap();
                assert!(
                    other
                        .state
                        .addresses(&pool)
                        .unwrap()
                        .iter()
                        .any(|b| b.address == a.address),
                    "{} released by a host that does not hold it",
                    a.address
                );
                holder
                    .release_address(&pool, &a.address.to_string())
                    .unwrap();
            }
        }
        let a = audit(&hosts[0].state).unwrap();
        assert!(a.problems.is_empty(), "{:?}", a.problems);
        assert_eq!(a.addresses, 1, "only the gateway is left");
        // The pool goes with its last user only.
        for h in &hosts[..5] {
            h.release_pool(&pool).unwrap();
            assert!(h.state.pool(&pool).unwrap().is_some());
        }
        hosts[5].release_pool(&pool).unwrap();
        assert!(hosts[5].state.pool(&pool).unwrap().is_none());
        assert!(store.range("blocks/").unwrap().is_empty());
        assert!(store.range("addrs/").unwrap().is_empty());
    }
}

/// Old pools (no block records) get them on first use; Geometry cuts pools as documented.
#[test]
fn blocks_built_for_old_pools_and_geometry() {
    let g = Geometry::of(&"10.0.0.0/16".parse().unwrap());
    assert_eq!((g.block_size(), g.blocks()), (64, 1024));
    let g = Geometry::of(&"10.0.0.0/24".parse().unwrap());
    assert_eq!((g.block_size(), g.blocks()), (16, 16));
    let g = Geometry::of(&"10.0.0.0/30".parse().unwrap());
    assert_eq!((g.block_size(), g.blocks()), (4, 1));
    assert_eq!(
        g.mask(0, 0, u32::MAX),
        0b0110,
        "network and broadcast excluded"
    );
    let g = Geometry::of(&"10.0.0.0/16".parse().unwrap());
    let (lo, hi) = (
        u32::from(Ipv4Addr::new(10, 0, 0, 0)),
        u32::from(Ipv4Addr::new(10, 0, 255, 255)),
    );
    assert_eq!(g.mask(0, lo, hi), u64::MAX - 1);
    assert_eq!(g.mask(5, lo, hi), u64::MAX);
    assert_eq!(g.mask(1023, lo, hi), u64::MAX >> 1);
    let r = u32::from(Ipv4Addr::new(10, 0, 0, 70));
    assert_eq!(g.mask(1, r, r + 2), 0b111 << 6);
    assert_eq!(g.mask(2, r, r + 2), 0);
    let i = ipam();
    let (id, _) = i.request_pool("", "10.231.5.0/24", "", false).unwrap();
    let none = BTreeMap::new();
    i.request_address(&id, "10.231.5.7", &none).unwrap();
    // Make it look like a pool from before blocks.
    let (mut p, _) = i.state.get::<PoolRecord>(&pool_key(&id)).unwrap().unwrap();
    p.blocks = false;
    i.state
        .store
        .txn(Txn {
            success: vec![
                Op::put(pool_key(&id), encode(&p)),
                Op::DeletePrefix(block_prefix(&id)),
            ],
            ..Default::default()
        })
        .unwrap();
    let fresh = Ipam::new(i.state.clone(), IpamConfig::default());
    for _ in 0..20 {
        let a = fresh.request_address(&id, "", &none).unwrap();
        assert_ne!(a, "10.231.5.7/24");
    }
    assert!(crate::fleet::audit(&i.state).unwrap().problems.is_empty());
}

/// Issue 13: a host whose hold ended while it was away (reclaimed after its death) and whose
/// address another host took since must not free that address when its Docker comes back and
/// releases the dead container's address: that would hand out an address in use.
#[test]
fn release_leaves_an_address_another_host_holds() {
    let store: Arc<dyn crate::store::Store> = Arc::new(MemStore::new());
    let a = Ipam::new(State::new(store.clone(), "host-a"), IpamConfig::default());
    let b = Ipam::new(State::new(store.clone(), "host-b"), IpamConfig::default());
    let (pool, _) = a.request_pool("", "10.231.7.0/24", "", false).unwrap();
    assert_eq!(
        b.request_pool("", "10.231.7.0/24", "", false).unwrap().0,
        pool
    );
    let none = BTreeMap::new();
    let ip: Ipv4Addr = "10.231.7.9".parse().unwrap();
    a.request_address(&pool, "10.231.7.9", &none).unwrap();
    // a's hold ends (as `pool reclaim --host host-a` ends it), b takes the address.
    let kv = store.get(&addr_key(&pool, ip)).unwrap().unwrap();
    assert!(b.release_held(&pool, &kv).unwrap());
    b.request_address(&pool, "10.231.7.9", &none).unwrap();
    // a is back: its dockerd releases what its dead container had.
    a.release_address(&pool, "10.231.7.9").unwrap();
    let holder = |i: &Ipam| {
        i.state
            .addresses(&pool)
            .unwrap()
            .into_iter()
            .find(|r| r.address == ip)
            .map(|r| r.host_id)
    };
    assert_eq!(holder(&a).as_deref(), Some("host-b"), "b's hold stays");
    let e = a.request_address(&pool, "10.231.7.9", &none).unwrap_err();
    assert!(e.to_string().contains("host-b"), "{e}");
    // b releases its own.
    b.release_address(&pool, "10.231.7.9").unwrap();
    assert_eq!(holder(&b), None);
}

#[test]
fn hostile_ids_spaces_and_macs_are_refused_briefly() {
    let i = ipam();
    let none = BTreeMap::new();
    // Non-ASCII ids: refused with the field named (shortening them for logs used to panic).
    for bad in ["0123456789aé", "é", "p-\u{0}", "../../etc"] {
        let e = i.request_address(bad, "", &none).unwrap_err();
        assert!(e.to_string().starts_with("PoolID "), "{e}");
    }
    for bad in ["spaceé", "a\u{0}b", "x/y"] {
        let e = i.request_pool(bad, "10.231.9.0/24", "", false).unwrap_err();
        assert!(e.to_string().contains("AddressSpace"), "{e}");
    }
    // A 1 MiB id or subnet is quoted by a bounded prefix, not echoed whole.
    let huge = "a".repeat(1 << 20);
    let e = i.request_address(&huge, "", &none).unwrap_err();
    assert!(e.to_string().len() < 200, "{}", e.to_string().len());
    let e = i.request_pool("", &huge, "", false).unwrap_err();
    assert!(e.to_string().len() < 300, "{}", e.to_string().len());
    // The MAC option is checked, and stored as a MAC, never as any string.
    let (id, _) = i.request_pool("", "10.231.9.0/24", "", false).unwrap();
    for bad in ["not-a-mac", "+f:00:00:00:00:01", "01:00:5e:00:00:01", &huge] {
        let opts = BTreeMap::from([(MAC_OPTION.to_string(), bad.to_string())]);
        let e = i.request_address(&id, "", &opts).unwrap_err();
        assert!(e.to_string().contains(MAC_OPTION), "{e}");
        assert!(e.to_string().len() < 300);
    }
    assert!(
        i.state.addresses(&id).unwrap().is_empty(),
        "nothing half-done"
    );
    let opts = BTreeMap::from([(MAC_OPTION.to_string(), "02:AA:bb:00:00:01".to_string())]);
    let a = i.request_address(&id, "", &opts).unwrap();
    let held = i.state.addresses(&id).unwrap();
    assert_eq!(held.len(), 1, "{a}");
    assert_eq!(held[0].mac.as_deref(), Some("02:aa:bb:00:00:01"));
}

mod transport_faults {
    //! Issue 14 §2: a write whose outcome is unknown (the connection dropped) is never
    //! blindly retried with another address: the allocator checks whether its own claim
    //! landed first. No address leaks; an explicit address is never reported as held by
    //! someone else when the caller holds it.
    use super::*;
    use crate::store::faulty::{Fault, Faulty};
    use crate::store::Store;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn setup() -> (Arc<Faulty>, Ipam, String) {
        let store = Arc::new(Faulty::new());
        let i = Ipam::new(State::new(store.clone(), "host-a"), IpamConfig::default());
        let (pool, _) = i.request_pool("", "10.232.0.0/24", "", false).unwrap();
        (store, i, pool)
    }

    /// The first allocation transaction (it writes an address record) gets `fault`.
    fn fault_first_claim(store: &Faulty, fault: Fault) -> Arc<AtomicUsize> {
        let n = Arc::new(AtomicUsize::new(0));
        let seen = n.clone();
        store.on_txn(move |_, t| {
            let claims = t
                .success
                .iter()
                .any(|o| matches!(o, Op::Put { key, .. } if key.starts_with("addrs/")));
            if claims && seen.fetch_add(1, Ordering::SeqCst) == 0 {
                fault
            } else {
                Fault::None
            }
        });
        n
    }

    fn held(i: &Ipam, pool: &str) -> Vec<Ipv4Addr> {
        i.state
            .addresses(pool)
            .unwrap()
            .into_iter()
            .filter(|a| a.kind == AddrKind::Address)
            .map(|a| a.address)
            .collect()
    }

    fn no_leaks(i: &Ipam) {
        let audit = crate::fleet::audit(&i.state).unwrap();
        assert!(audit.problems.is_empty(), "{:?}", audit.problems);
    }

    #[test]
    fn resent_claim_of_an_explicit_address_is_ours() {
        let (store, i, pool) = setup();
        fault_first_claim(&store, Fault::Resend);
        let got = i.request_address(&pool, "10.232.0.40", &BTreeMap::new());
        assert_eq!(got.unwrap(), "10.232.0.40/24");
        assert_eq!(
            held(&i, &pool),
            vec!["10.232.0.40".parse::<Ipv4Addr>().unwrap()]
        );
        no_leaks(&i);
        assert_eq!(i.pending_count(), 0);
    }

    #[test]
    fn resent_claim_of_a_dynamic_address_leaks_nothing() {
        let (store, i, pool) = setup();
        fault_first_claim(&store, Fault::Resend);
        let got = i.request_address(&pool, "", &BTreeMap::new()).unwrap();
        let ip: Ipv4Addr = got.trim_end_matches("/24").parse().unwrap();
        assert_eq!(held(&i, &pool), vec![ip], "one allocation, one address");
        no_leaks(&i);
    }

    #[test]
    fn dropped_answer_of_a_landed_claim_is_ours() {
        for address in ["10.232.0.41", ""] {
            let (store, i, pool) = setup();
            fault_first_claim(&store, Fault::DropAnswer);
            let got = i.request_address(&pool, address, &BTreeMap::new()).unwrap();
            let ip: Ipv4Addr = got.trim_end_matches("/24").parse().unwrap();
            assert_eq!(held(&i, &pool), vec![ip]);
            no_leaks(&i);
            // Nothing left to undo: the address is held, by this allocation.
            assert_eq!(i.pending_count(), 0);
        }
    }

    /// A request that never reached the store is tried again, with the same claim and the
    /// same address: the compare on the address record lets at most one of them land.
    #[test]
    fn dropped_request_is_retried_with_the_same_claim() {
        for address in ["10.232.0.42", ""] {
            let (store, i, pool) = setup();
            let n = fault_first_claim(&store, Fault::DropRequest);
            let got = i.request_address(&pool, address, &BTreeMap::new()).unwrap();
            let ip: Ipv4Addr = got.trim_end_matches("/24").parse().unwrap();
            assert_eq!(held(&i, &pool), vec![ip]);
            assert!(n.load(Ordering::SeqCst) >= 2, "not retried");
            no_leaks(&i);
            assert_eq!(i.pending_count(), 0);
        }
    }

    /// The store stays unreachable: the request fails with the store's error (not "in use"),
    /// holds nothing, and its undo is left for the host agent.
    #[test]
    fn unreachable_store_fails_cleanly() {
        let (store, i, pool) = setup();
        store.on_txn(|_, _| Fault::DropRequest);
        let err = i
            .request_address(&pool, "10.232.0.43", &BTreeMap::new())
            .unwrap_err();
        assert!(!err.to_string().contains("in use"), "{err}");
        store.on_txn(|_, _| Fault::None);
        assert!(held(&i, &pool).is_empty());
        no_leaks(&i);
    }

    fn endpoint(id: &str, ip: &str) -> EndpointRecord {
        let ip: Ipv4Addr = ip.parse().unwrap();
        EndpointRecord {
            id: id.into(),
            network_id: "n1".into(),
            host_id: "host-a".into(),
            address: crate::ipnet::Ipv4If { ip, prefix: 24 },
            mac: crate::mac::Mac::from_ip(ip),
            host_if: format!("vb{id}"),
            container_if: format!("tb{id}"),
            vlan: 100,
            mtu: 1500,
            created_at: 0,
            lease: 0,
            limits: Default::default(),
            own_limits: None,
            allow_spoofing: false,
        }
    }

    fn network(pool: &str) -> NetworkRecord {
        NetworkRecord {
            id: "n1".into(),
            vlan: 100,
            vlan_auto: false,
            mtu: 1500,
            subnet: None,
            gateway: None,
            pool_id: Some(pool.into()),
            host_id: "host-a".into(),
            created_at: 0,
            limits: Default::default(),
            allow_spoofing: false,
        }
    }

    fn linked(i: &Ipam, pool: &str, ip: &str) -> Option<String> {
        let key = addr_key(pool, ip.parse().unwrap());
        i.state
            .get::<AddrRecord>(&key)
            .unwrap()
            .unwrap()
            .0
            .endpoint_id
    }

    /// A late CreateEndpoint write (its request timed out; the address was released and
    /// taken by another endpoint meanwhile) never overwrites the address record another
    /// endpoint holds: compare-and-swap on the record's revision.
    #[test]
    fn late_endpoint_write_never_takes_another_endpoints_address() {
        let (store, i, pool) = setup();
        let net = network(&pool);
        i.request_address(&pool, "10.232.0.50", &BTreeMap::new())
            .unwrap();
        // Between the late write's read of the address record and its transaction, the
        // address changes hands (released, taken again, linked to endpoint "e-new").
        let key = addr_key(&pool, "10.232.0.50".parse().unwrap());
        let mut once = false;
        store.on_txn(move |inner, t| {
            let endpoint_write = t
                .success
                .iter()
                .any(|o| matches!(o, Op::Put { key, .. } if key == "endpoints/e-late"));
            if endpoint_write && !once {
                once = true;
                let kv = inner.get(&key).unwrap().unwrap();
                let mut a: AddrRecord = decode(&kv).unwrap();
                a.endpoint_id = Some("e-new".into());
                a.claim = "other".into();
                inner
                    .txn(Txn {
                        success: vec![Op::put(key.clone(), encode(&a))],
                        ..Default::default()
                    })
                    .unwrap();
            }
            Fault::None
        });
        let r = i
            .state
            .create_endpoint_txn(&net, &endpoint("e-late", "10.232.0.50"))
            .unwrap();
        assert!(r.is_err(), "{r:?}");
        assert_eq!(linked(&i, &pool, "10.232.0.50").as_deref(), Some("e-new"));
        assert!(i.state.endpoint("e-late").unwrap().is_none());
        // Its own address, unlinked: linked, and a second write is a no-op.
        store.on_txn(|_, _| Fault::None);
        i.request_address(&pool, "10.232.0.51", &BTreeMap::new())
            .unwrap();
        let ep = endpoint("e-ok", "10.232.0.51");
        assert!(matches!(
            i.state.create_endpoint_txn(&net, &ep).unwrap(),
            Ok(Some(_))
        ));
        assert_eq!(linked(&i, &pool, "10.232.0.51").as_deref(), Some("e-ok"));
        assert_eq!(i.state.create_endpoint_txn(&net, &ep).unwrap(), Ok(None));
    }

    /// A RequestAddress that times out and lands later is undone: Docker saw an error and
    /// will never release the address.
    #[tokio::test]
    async fn timed_out_request_address_is_undone_when_it_lands() {
        let (store, i, pool) = setup();
        store.on_txn(|_, t| {
            if t.success
                .iter()
                .any(|o| matches!(o, Op::Put { key, .. } if key.starts_with("addrs/")))
            {
                std::thread::sleep(std::time::Duration::from_millis(300));
            }
            Fault::None
        });
        let i = Arc::new(i);
        let req = crate::protocol::RequestAddressRequest {
            pool_id: pool.clone(),
            address: "10.232.0.60".into(),
            options: BTreeMap::new(),
        };
        let r = crate::network::ipam_driver::request_address_within(
            i.clone(),
            req,
            std::time::Duration::from_millis(50),
        )
        .await;
        assert!(matches!(r, Err(NetError::Timeout { .. })), "{r:?}");
        // Undone = landed (one write) and released (another), nothing held.
        let before = store.revision().unwrap();
        let mut undone = false;
        for _ in 0..50 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            if store.revision().unwrap() < before + 2 {
                continue;
            }
            let (j, p) = (i.clone(), pool.clone());
            let n = tokio::task::spawn_blocking(move || held(&j, &p).len())
                .await
                .unwrap();
            if n == 0 {
                undone = true;
                break;
            }
        }
        assert!(undone, "the late allocation is still held");
        no_leaks(&i);
    }
}
