//! Hosts of the fleet and the pool admin's tools: each host's lease (the host agent), the
//! host list, reclaiming a dead host's addresses, reserving and releasing single addresses,
//! and the consistency audit of address records against block records.
//!
//! Addresses reference their host's lease but are not attached to it: a host that dies keeps
//! its addresses (its containers may still run, cut off) until an admin runs
//! `netplugin pool reclaim --host H`, or `--reclaim-after` has passed with the host gone.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::error::{NetError, NetResult};
use crate::ipam::{describe_holder, Geometry, Ipam};
use crate::ipnet::{parse_addr, Ipv4Net};
use crate::state::store_op;
use crate::state::*;
use crate::store::StoreError;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HostView {
    pub host: String,
    /// The host's lease is live (its `hosts/` record exists).
    pub alive: bool,
    pub lease: i64,
    pub started_at: Option<u64>,
    pub version: Option<String>,
    /// Addresses it holds (gateways and admin reservations not counted).
    pub addresses: usize,
    pub endpoints: usize,
    /// Blocks it has affinity to.
    pub blocks: usize,
    /// The host of the daemon that answered.
    pub this_host: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AddressChange {
    /// "reserved", "unreserved" or "released".
    pub action: String,
    pub address: String,
    pub pool_id: String,
    pub subnet: String,
    /// Who held it (release) or holds it now (reserve).
    pub held_by: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ReclaimReport {
    pub host: String,
    pub addresses: Vec<AddressChange>,
    pub endpoints: Vec<String>,
    /// Blocks whose affinity was dropped (free for any host to claim).
    pub blocks: usize,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Audit {
    pub pools: usize,
    pub addresses: usize,
    pub blocks: usize,
    /// Address records without their block bit, bits without an address (leaks), addresses
    /// outside their pool.
    pub problems: Vec<String>,
}

/// Every host that is alive or still holds something.
pub fn hosts(state: &State) -> NetResult<Vec<HostView>> {
    let mut out: BTreeMap<String, HostView> = BTreeMap::new();
    let entry = |out: &mut BTreeMap<String, HostView>, h: &str| {
        out.entry(h.to_string()).or_insert_with(|| HostView {
            host: h.to_string(),
            alive: false,
            lease: 0,
            started_at: None,
            version: None,
            addresses: 0,
            endpoints: 0,
            blocks: 0,
            this_host: h == state.host_id,
        });
    };
    for kv in state.store.range("hosts/")? {
        let r: HostRecord = decode(&kv)?;
        entry(&mut out, &r.host_id);
        if let Some(v) = out.get_mut(&r.host_id) {
            v.alive = true;
            v.lease = kv.lease;
            v.started_at = Some(r.started_at);
            v.version = Some(r.version);
        }
    }
    for kv in state.store.range("addrs/")? {
        let a: AddrRecord = decode(&kv)?;
        if matches!(a.kind, AddrKind::Address) {
            entry(&mut out, &a.host_id);
            if let Some(v) = out.get_mut(&a.host_id) {
                v.addresses += 1;
            }
        }
    }
    for e in state.endpoints()? {
        entry(&mut out, &e.host_id);
        if let Some(v) = out.get_mut(&e.host_id) {
            v.endpoints += 1;
        }
    }
    for kv in state.store.range("blocks/")? {
        let b: BlockRecord = decode(&kv)?;
        if let Some(h) = b.host {
            entry(&mut out, &h);
            if let Some(v) = out.get_mut(&h) {
                v.blocks += 1;
            }
        }
    }
    Ok(out.into_values().collect())
}

/// Releases what `host` holds: its addresses (not gateways, not admin reservations), its
/// endpoint records, its block affinities. Refused while the host is alive unless `force`.
pub fn reclaim(ipam: &Ipam, host: &str, force: bool) -> NetResult<ReclaimReport> {
    let state = ipam.state();
    if host.is_empty() || host.contains('/') {
        return Err(NetError::invalid(format!(
            "--host {host:?}: a host id without '/'"
        )));
    }
    if let Some(kv) = state.store.get(&host_key(host))? {
        if !force {
            return Err(NetError::conflict(format!(
                "host {host} is alive (lease {:x}): its addresses are in use; stop its netplugin first, or pass --force",
                kv.lease
            )));
        }
    }
    let mut report = ReclaimReport {
        host: host.to_string(),
        ..Default::default()
    };
    // Every write below compares, in its own transaction, that the host's lease key is still
    // absent: a host registering again meanwhile keeps the rest (the error says so).
    let dead = (!force).then_some(host);
    for pool in state.pools()? {
        for kv in state.store.range(&addr_prefix(&pool.id))? {
            let a: AddrRecord = decode(&kv)?;
            if a.host_id != host || a.kind != AddrKind::Address {
                continue;
            }
            if ipam.release_held_of(&pool.id, &kv, dead)? {
                report.addresses.push(AddressChange {
                    action: "released".into(),
                    address: a.address.to_string(),
                    pool_id: pool.id.clone(),
                    subnet: pool.subnet.clone(),
                    held_by: describe_holder(&a),
                });
            }
        }
        for kv in state.store.range(&block_prefix(&pool.id))? {
            let mut b: BlockRecord = decode(&kv)?;
            if b.host.as_deref() != Some(host) {
                continue;
            }
            b.host = None;
            // A block written meanwhile is simply left for the next reclaim.
            if state.update_block(&kv.key, &b, kv.mod_revision, dead)? {
                report.blocks += 1;
            } else if let Some(h) = dead {
                state.check_host_gone(h)?;
            }
        }
    }
    for kv in state.store.range("endpoints/")? {
        let e: EndpointRecord = decode(&kv)?;
        if e.host_id != host {
            continue;
        }
        if state.delete_endpoint_at(&e.id, kv.mod_revision, dead)? {
            report.endpoints.push(e.id);
        } else if let Some(h) = dead {
            state.check_host_gone(h)?;
        }
    }
    info!(
        host,
        addresses = report.addresses.len(),
        endpoints = report.endpoints.len(),
        blocks = report.blocks,
        "reclaimed a host's addresses"
    );
    Ok(report)
}

/// The pool holding `ip`: the one whose subnet contains it, narrowed by `hint` (pool id,
/// subnet or network id prefix) when several do.
pub fn find_pool(state: &State, ip: Ipv4Addr, hint: Option<&str>) -> NetResult<PoolRecord> {
    let found: Vec<PoolRecord> = state
        .pools()?
        .into_iter()
        .filter(|p| p.subnet.parse::<Ipv4Net>().is_ok_and(|n| n.contains(ip)))
        .filter(|p| {
            hint.is_none_or(|h| {
                p.id == h
                    || p.subnet == h
                    || (h.len() >= 4 && p.network_id.as_deref().is_some_and(|n| n.starts_with(h)))
            })
        })
        .collect();
    match found.len() {
        0 => Err(NetError::NotFound(format!(
            "no pool{} contains {ip} (see `netplugin pool ls`)",
            hint.map(|h| format!(" matching {h:?}")).unwrap_or_default()
        ))),
        1 => Ok(found.into_iter().next().expect("one")),
        _ => Err(NetError::invalid(format!(
            "{ip} is in several pools ({}): pass --pool ID",
            found
                .iter()
                .map(|p| format!("{} {}", p.id, p.subnet))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

fn parse_ip(ip: &str) -> NetResult<Ipv4Addr> {
    parse_addr(ip).map_err(|e| NetError::invalid(format!("IP {e}")))
}

/// `netplugin pool reserve IP`: held by the admin, never handed out.
pub fn reserve(ipam: &Ipam, ip: &str, hint: Option<&str>) -> NetResult<AddressChange> {
    let addr = parse_ip(ip)?;
    let pool = find_pool(ipam.state(), addr, hint)?;
    ipam.allocate(&pool.id, &addr.to_string(), AddrKind::Reserved, None)?;
    Ok(AddressChange {
        action: "reserved".into(),
        address: addr.to_string(),
        pool_id: pool.id,
        subnet: pool.subnet,
        held_by: format!("reserved by an admin on host {}", ipam.state().host_id),
    })
}

/// `netplugin pool unreserve IP`: only an admin reservation.
pub fn unreserve(ipam: &Ipam, ip: &str, hint: Option<&str>) -> NetResult<AddressChange> {
    let addr = parse_ip(ip)?;
    let pool = find_pool(ipam.state(), addr, hint)?;
    let key = addr_key(&pool.id, addr);
    let Some(kv) = ipam.state().store.get(&key)? else {
        return Err(NetError::NotFound(format!(
            "{addr} is not reserved in pool {} ({}): nobody holds it",
            pool.id, pool.subnet
        )));
    };
    let a: AddrRecord = decode(&kv)?;
    if a.kind != AddrKind::Reserved {
        return Err(NetError::conflict(format!(
            "{addr} is not an admin reservation; it is held by {} (`netplugin pool release {addr}` frees it anyway)",
            describe_holder(&a)
        )));
    }
    ipam.release_held(&pool.id, &kv)?;
    Ok(AddressChange {
        action: "unreserved".into(),
        address: addr.to_string(),
        pool_id: pool.id,
        subnet: pool.subnet,
        held_by: describe_holder(&a),
    })
}

/// `netplugin pool release IP`: whatever holds it (a leak after a crash, usually).
pub fn release(ipam: &Ipam, ip: &str, hint: Option<&str>) -> NetResult<AddressChange> {
    let addr = parse_ip(ip)?;
    let pool = find_pool(ipam.state(), addr, hint)?;
    let key = addr_key(&pool.id, addr);
    let Some(kv) = ipam.state().store.get(&key)? else {
        return Err(NetError::NotFound(format!(
            "{addr} is not held in pool {} ({}): nothing to release",
            pool.id, pool.subnet
        )));
    };
    let a: AddrRecord = decode(&kv)?;
    if !ipam.release_held(&pool.id, &kv)? {
        return Err(NetError::conflict(format!(
            "{addr} changed while releasing it; look again with `netplugin pool show {}`",
            pool.id
        )));
    }
    info!(address = %addr, pool = %pool.id, held_by = %describe_holder(&a), "address released by an admin");
    Ok(AddressChange {
        action: "released".into(),
        address: addr.to_string(),
        pool_id: pool.id,
        subnet: pool.subnet,
        held_by: describe_holder(&a),
    })
}

/// Address records against block records, pool by pool. The two are read one after the
/// other, so a change in between looks like a problem: only what shows in two scans a moment
/// apart is reported.
pub fn audit(state: &State) -> NetResult<Audit> {
    let first = audit_once(state)?;
    if first.problems.is_empty() {
        return Ok(first);
    }
    std::thread::sleep(Duration::from_millis(300));
    let mut second = audit_once(state)?;
    second.problems.retain(|p| first.problems.contains(p));
    Ok(second)
}

fn audit_once(state: &State) -> NetResult<Audit> {
    let mut out = Audit::default();
    for pool in state.pools()? {
        out.pools += 1;
        let Ok(net) = pool.subnet.parse::<Ipv4Net>() else {
            out.problems
                .push(format!("pool {}: bad subnet {}", pool.id, pool.subnet));
            continue;
        };
        let geo = Geometry::of(&net);
        let mut held: BTreeSet<(u32, u32)> = BTreeSet::new();
        for a in state.addresses(&pool.id)? {
            out.addresses += 1;
            match geo.locate(a.address) {
                Some(loc) => {
                    held.insert(loc);
                }
                None => out.problems.push(format!(
                    "pool {}: {} is outside {}",
                    pool.id, a.address, pool.subnet
                )),
            }
        }
        if !pool.blocks {
            continue;
        }
        let mut bits: BTreeSet<(u32, u32)> = BTreeSet::new();
        for kv in state.store.range(&block_prefix(&pool.id))? {
            out.blocks += 1;
            let b: BlockRecord = decode(&kv)?;
            let idx = kv
                .key
                .rsplit('/')
                .next()
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .unwrap_or(u32::MAX);
            for bit in 0..64 {
                if b.used & (1u64 << bit) != 0 {
                    bits.insert((idx, bit));
                }
            }
        }
        for (idx, bit) in held.difference(&bits) {
            out.problems.push(format!(
                "pool {}: {} is held but its block bit is clear",
                pool.id,
                geo.addr(*idx, *bit)
            ));
        }
        for (idx, bit) in bits.difference(&held) {
            out.problems.push(format!(
                "pool {}: {} is marked in its block but nobody holds it (leak)",
                pool.id,
                geo.addr(*idx, *bit)
            ));
        }
    }
    Ok(out)
}

fn host_record(state: &State, lease: i64) -> HostRecord {
    HostRecord {
        host_id: state.host_id.clone(),
        lease,
        started_at: now(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    }
}

/// Registers this host with a fresh lease; returns the lease.
pub fn register(state: &State, ttl: Duration) -> NetResult<i64> {
    let lease = state.store.grant_lease(ttl)?;
    if let Some(kv) = state.store.get(&host_key(&state.host_id))? {
        if state.lease() == 0 && kv.lease != 0 {
            warn!(host = %state.host_id, lease = format!("{:x}", kv.lease),
                "this --host-id is registered with another live lease: a restart within its TTL, or another netplugin with the same --host-id");
        }
    }
    state.register_host(&host_record(state, lease), lease)?;
    state.set_lease(lease);
    Ok(lease)
}

/// The hosts alive now: the keys under `hosts/` (each put with its host's lease).
pub fn live_hosts(state: &State) -> NetResult<BTreeSet<String>> {
    Ok(state
        .store
        .range("hosts/")?
        .into_iter()
        .filter_map(|kv| kv.key.strip_prefix("hosts/").map(str::to_string))
        .collect())
}

/// The dead-host scan of `--reclaim-after`. Each scan reads only the live hosts' keys: a host
/// whose key went away since the last scan is dead from then on. The scan at start (of
/// everything, once) finds the hosts that died before this one was watching and still hold
/// something.
#[derive(Default)]
struct Deaths {
    /// The live hosts at the last scan; None before the first.
    alive: Option<BTreeSet<String>>,
    gone_since: HashMap<String, Instant>,
}

impl Deaths {
    async fn scan(&mut self, ipam: &Arc<Ipam>, after: Duration) {
        let now = Instant::now();
        let i = ipam.clone();
        let alive = match self.alive {
            None => {
                let Ok(list) = store_op("host scan", move || hosts(i.state())).await else {
                    return;
                };
                for v in &list {
                    let holds = v.addresses + v.endpoints + v.blocks > 0;
                    if !v.alive && !v.this_host && holds {
                        self.gone_since.insert(v.host.clone(), now);
                    }
                }
                list.into_iter()
                    .filter(|v| v.alive)
                    .map(|v| v.host)
                    .collect()
            }
            Some(ref before) => {
                let Ok(alive) = store_op("host scan", move || live_hosts(i.state())).await else {
                    return;
                };
                for gone in before.difference(&alive) {
                    if *gone != ipam.state().host_id {
                        self.gone_since.entry(gone.clone()).or_insert(now);
                    }
                }
                alive
            }
        };
        self.gone_since.retain(|h, _| !alive.contains(h));
        self.alive = Some(alive);
        let due: Vec<String> = self
            .gone_since
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= after)
            .map(|(h, _)| h.clone())
            .collect();
        for host in due {
            let i = ipam.clone();
            let h = host.clone();
            match store_op("reclaim", move || reclaim(&i, &h, false)).await {
                Ok(r) => {
                    if !(r.addresses.is_empty() && r.endpoints.is_empty() && r.blocks == 0) {
                        warn!(host = %host, addresses = r.addresses.len(), endpoints = r.endpoints.len(),
                            after = ?after, "host gone for --reclaim-after: its addresses were released");
                    }
                    self.gone_since.remove(&host);
                }
                // Kept: the next scan tries again (or finds the host back).
                Err(e) => warn!(host = %host, error = %e, "automatic reclaim failed; retrying"),
            }
        }
    }
}

/// The host agent: holds this host's lease (re-registers after it expired while etcd was
/// unreachable) and, with `reclaim_after`, reclaims hosts gone for that long.
pub async fn host_agent(
    ipam: Arc<Ipam>,
    ttl: Duration,
    reclaim_after: Option<Duration>,
    fence: Option<Arc<crate::fence::Fence>>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let state = ipam.state().clone();
    let mut last_error = String::new();
    let mut deaths = Deaths::default();
    let mut last_scan = Instant::now() - Duration::from_secs(3600);
    loop {
        let lease = state.lease();
        let s = state.clone();
        let sent = Instant::now();
        let result = if lease == 0 {
            store_op("host lease", move || register(&s, ttl)).await.map(|l| {
                info!(host = %state.host_id, lease = format!("{l:x}"), "host registered with its lease");
            })
        } else {
            store_op("host lease keep-alive", move || {
                Ok(s.store.keep_alive(lease)?)
            })
            .await
        };
        match result {
            Ok(()) => {
                if !last_error.is_empty() {
                    info!("state store reachable again; host lease held");
                }
                last_error.clear();
                if let Some(f) = &fence {
                    f.renewed(sent);
                    f.recover().await;
                }
                let i = ipam.clone();
                let _ = store_op("finish pending", move || Ok(i.finish_pending())).await;
            }
            Err(NetError::Store(StoreError::LeaseNotFound(_))) => {
                warn!(host = %state.host_id, "host lease expired (cut off from the store for longer than its TTL); registering again");
                state.set_lease(0);
                continue;
            }
            Err(e) => {
                let msg = e.to_string();
                if msg != last_error {
                    warn!(error = %msg, "host lease: state store unreachable; retrying");
                }
                last_error = msg;
            }
        }
        if let Some(after) = reclaim_after {
            if last_error.is_empty()
                && last_scan.elapsed() >= (after / 4).min(Duration::from_secs(5))
            {
                last_scan = Instant::now();
                deaths.scan(&ipam, after).await;
            }
        }
        let pause = if last_error.is_empty() {
            ttl / 3
        } else {
            Duration::from_secs(1)
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::IpamConfig;
    use crate::store::counting::Counting;
    use crate::store::{Op, Store, Txn};

    fn what_hosts_hold(store: &Counting) -> usize {
        store.ranges("addrs/") + store.ranges("endpoints/") + store.ranges("blocks/")
    }

    /// `--reclaim-after`: a host whose lease ends is reclaimed after the delay; the scans
    /// that find it read the live hosts' keys, not every address, endpoint and block.
    #[tokio::test]
    async fn dead_host_scan_reads_only_host_keys() {
        let store = Arc::new(Counting::new());
        let h2 = State::new(store.clone(), "h2");
        register(&h2, Duration::from_secs(1)).unwrap();
        let ip = Ipv4Addr::new(10, 0, 0, 2);
        let endpoint = EndpointRecord {
            id: "e2".into(),
            network_id: "n".into(),
            host_id: "h2".into(),
            address: crate::ipnet::Ipv4If { ip, prefix: 24 },
            mac: crate::mac::Mac::from_ip(ip),
            host_if: "vbe2".into(),
            container_if: "tbe2".into(),
            vlan: 100,
            mtu: 1500,
            created_at: 0,
            lease: 0,
            limits: Default::default(),
            own_limits: None,
            allow_spoofing: false,
        };
        store
            .txn(Txn {
                success: vec![Op::put(endpoint_key("e2"), encode(&endpoint))],
                ..Default::default()
            })
            .unwrap();
        let ipam = Arc::new(Ipam::new(
            State::new(store.clone(), "h1"),
            IpamConfig::default(),
        ));
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(host_agent(
            ipam,
            Duration::from_secs(1),
            Some(Duration::from_millis(400)),
            None,
            shutdown,
        ));
        let mut reclaimed = false;
        for _ in 0..100 {
            if store.get(&endpoint_key("e2")).unwrap().is_none() {
                reclaimed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(reclaimed, "h2's endpoint not reclaimed within 5 s");
        let (held, scans) = (what_hosts_hold(&store), store.ranges("hosts/"));
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert!(store.ranges("hosts/") > scans, "no scan meanwhile");
        assert_eq!(
            what_hosts_hold(&store),
            held,
            "a scan read addresses, endpoints or blocks"
        );
        stop.send(true).unwrap();
        task.await.unwrap();
    }
}

#[cfg(test)]
mod reclaim_tests {
    use super::*;
    use crate::ipam::IpamConfig;
    use crate::store::faulty::{Fault, Faulty};
    use crate::store::{Op, Store, Txn};
    use std::collections::BTreeMap as Map;

    /// Issue 14 §2: a host that registers again while it is being reclaimed keeps its
    /// addresses: every reclaim write compares, in the same transaction, that the host's
    /// lease key is still absent.
    #[test]
    fn host_back_during_reclaim_keeps_its_addresses() {
        let store = Arc::new(Faulty::new());
        let h2 = Ipam::new(State::new(store.clone(), "h2"), IpamConfig::default());
        let lease = register(h2.state(), Duration::from_secs(30)).unwrap();
        let (pool, _) = h2.request_pool("", "10.233.0.0/24", "", false).unwrap();
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(h2.request_address(&pool, "", &Map::new()).unwrap());
        }
        // h2 dies (its lease ends) ...
        store.revoke_lease(lease).unwrap();
        let h1 = Ipam::new(State::new(store.clone(), "h1"), IpamConfig::default());
        // ... and comes back just as h1's reclaim starts releasing its addresses.
        let record = encode(&host_record(h2.state(), 0));
        let mut back = false;
        store.on_txn(move |inner, t| {
            let releases = t
                .success
                .iter()
                .any(|o| matches!(o, Op::Delete(k) if k.starts_with("addrs/")));
            if releases && !back {
                back = true;
                let lease = inner.grant_lease(Duration::from_secs(30)).unwrap();
                inner
                    .txn(Txn {
                        success: vec![Op::Put {
                            key: host_key("h2"),
                            value: record.clone(),
                            lease,
                        }],
                        ..Default::default()
                    })
                    .unwrap();
            }
            Fault::None
        });
        let result = reclaim(&h1, "h2", false);
        assert!(
            matches!(result, Err(NetError::Conflict(ref m)) if m.contains("registered again")),
            "{result:?}"
        );
        let still: Vec<String> = h1
            .state()
            .addresses(&pool)
            .unwrap()
            .into_iter()
            .filter(|a| a.kind == AddrKind::Address && a.host_id == "h2")
            .map(|a| format!("{}/24", a.address))
            .collect();
        assert_eq!(
            still, held,
            "h2 lost addresses to a reclaim after it came back"
        );
        assert!(audit(h1.state()).unwrap().problems.is_empty());
    }
}
