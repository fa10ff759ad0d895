//! This host's copy of the fleet's endpoint records, and the ARP proxy that follows it.
//!
//! The view follows three prefixes of the store: the endpoint records, the address records
//! (`addrs/`: which endpoint holds each address of a pool) and the network records (which pool
//! a network's addresses come from). Each is listed once and then followed by a watch from
//! the listing's revision ([`Store::list_and_watch`]); they are listed again only when a watch
//! cannot go on without a gap (etcd compacted it). Each change marks the (VLAN, address) keys
//! it touches, and only those keys' flows change ([`Dataplane::update_arp`]): a host's cost per
//! change does not grow with the fleet, and at idle it reads nothing. The periodic reconcile
//! pass takes its records from here too and re-asserts every flow (drift repair), without
//! reading the store.
//!
//! What is answered: an address on a VLAN that has a port on this host (requests only come
//! from local ports, so other VLANs' answers would never be used), with the MAC of the
//! endpoint that holds it: the one its address record names (issue 14 §2). An endpoint record
//! the address record does not name (its host died and the address was reclaimed, taken by
//! another endpoint, or freed) is stale and never answered for, even while it is the only
//! record claiming the address; then nobody is, and the request goes on to the trunk, where
//! the real owner answers. Only on a network without a berth pool (another IPAM driver, so no
//! address records) or whose network record is not known is the endpoint record all there is
//! to go by; when two such records claim one address, neither is answered for.
//!
//! [`Store::list_and_watch`]: crate::store::Store::list_and_watch

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::MutexGuard;
use std::time::Duration;

use tokio::sync::Notify;
use tracing::{debug, warn};

use super::Service;
use crate::dataplane::{ArpChange, ArpEntry, ArpKey};
use crate::error::{NetError, NetResult};
use crate::state::{
    addr_key, decode, store_op, AddrKind, AddrRecord, EndpointRecord, NetworkRecord, RateLimits,
};
use crate::store::{Event, KeyValue, Listing};

/// Pause before listing again after the store refused (etcd unreachable).
const RELIST_PAUSE: Duration = Duration::from_secs(1);
/// How often a thread waiting on a watch looks at its stop flags.
const STOP_POLL: Duration = Duration::from_secs(1);

/// The prefixes the view follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Endpoints,
    Addresses,
    Networks,
}

impl Source {
    const ALL: [Source; 3] = [Source::Endpoints, Source::Addresses, Source::Networks];

    fn prefix(self) -> &'static str {
        match self {
            Source::Endpoints => "endpoints/",
            Source::Addresses => "addrs/",
            Source::Networks => "networks/",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What the view keeps of a network record.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NetworkPool {
    /// The berth pool its addresses come from (None: another IPAM driver's).
    pool_id: Option<String>,
    vlan: u16,
}

/// An address this host holds for an endpoint, with no endpoint linked to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnlinkedAddress {
    /// Its record's key (`addrs/<pool>/<hex>`).
    pub key: String,
    pub pool_id: String,
    pub address: std::net::Ipv4Addr,
    /// Unix seconds.
    pub created_at: u64,
}

/// The fleet's endpoint records as of their watch's revision, indexed for the ARP proxy, with
/// what decides who holds an address: the address records naming an endpoint and the
/// networks' pools.
#[derive(Default)]
pub struct FleetView {
    host_id: String,
    /// Whether the records were listed (until then, callers read the store).
    listed: bool,
    /// Each source's listing revision: its events at or before it are in the view already.
    listed_at: [i64; 3],
    /// Endpoint id → record and the revision it was written at.
    records: HashMap<String, (EndpointRecord, i64)>,
    /// Key → the endpoints claiming it.
    claims: HashMap<ArpKey, BTreeSet<String>>,
    /// VLAN → this host's endpoints on it.
    local: BTreeMap<u16, usize>,
    /// Address record key → the endpoint it names and its revision (records naming no
    /// endpoint are left out: such an address is nobody's to answer for).
    holders: HashMap<String, (String, i64)>,
    /// Network id → its pool and VLAN, and the revision it was written at.
    networks: HashMap<String, (NetworkPool, i64)>,
    /// This host's addresses held for an endpoint that none is linked to (yet), by record key:
    /// what a ReleaseAddress lost while the plugin was down leaves behind (`docker_sync.rs`).
    unlinked: HashMap<String, UnlinkedAddress>,
    /// Keys and whole VLANs whose answers may have changed since the datapath was told.
    dirty: BTreeSet<ArpKey>,
    dirty_vlans: BTreeSet<u16>,
    /// The datapath needs every flow (after a listing, or a change that failed).
    full: bool,
    /// When the oldest change not yet pushed reached this host (the `arp_follow` latency).
    changed_at: Option<std::time::Instant>,
}

impl FleetView {
    pub fn new(host_id: &str) -> Self {
        Self {
            host_id: host_id.to_string(),
            ..Default::default()
        }
    }

    pub fn listed(&self) -> bool {
        self.listed
    }

    /// Starts again from a listing of each source.
    fn reset(&mut self, listings: &[(Source, &[KeyValue], i64)]) {
        *self = Self::new(&self.host_id);
        for (source, kvs, revision) in listings {
            for kv in kvs.iter() {
                self.put(*source, kv);
            }
            self.listed_at[source.index()] = *revision;
        }
        self.listed = true;
        self.dirty.clear();
        self.dirty_vlans.clear();
        self.full = true;
    }

    /// Applies one watch event of `source`; returns whether it changed anything.
    fn apply(&mut self, source: Source, event: &Event) -> bool {
        let listed_at = self.listed_at[source.index()];
        match event {
            Event::Put(kv) if kv.mod_revision > listed_at => self.put(source, kv),
            Event::Delete { key, revision } if *revision > listed_at => self.delete(source, key),
            _ => false,
        }
    }

    fn put(&mut self, source: Source, kv: &KeyValue) -> bool {
        match source {
            Source::Endpoints => self.put_endpoint(kv),
            Source::Addresses => self.put_address(kv),
            Source::Networks => self.put_network(kv),
        }
    }

    fn delete(&mut self, source: Source, key: &str) -> bool {
        let Some(id) = key.strip_prefix(source.prefix()) else {
            return false;
        };
        match source {
            Source::Endpoints => self.remove(id).is_some(),
            Source::Addresses => {
                self.unlinked.remove(key);
                self.set_holder(key, None)
            }
            Source::Networks => self.set_network(id, None),
        }
    }

    fn put_endpoint(&mut self, kv: &KeyValue) -> bool {
        let record: EndpointRecord = match decode(kv) {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "endpoint record skipped by the ARP proxy");
                return false;
            }
        };
        if let Some((_, rev)) = self.records.get(&record.id) {
            if *rev >= kv.mod_revision {
                return false;
            }
        }
        self.remove(&record.id);
        let key = (record.vlan, record.address.ip);
        self.claims
            .entry(key)
            .or_default()
            .insert(record.id.clone());
        self.dirty.insert(key);
        if record.host_id == self.host_id {
            let n = self.local.entry(record.vlan).or_default();
            *n += 1;
            if *n == 1 {
                self.dirty_vlans.insert(record.vlan);
            }
        }
        self.records
            .insert(record.id.clone(), (record, kv.mod_revision));
        true
    }

    fn remove(&mut self, id: &str) -> Option<EndpointRecord> {
        let (record, _) = self.records.remove(id)?;
        let key = (record.vlan, record.address.ip);
        if let Some(c) = self.claims.get_mut(&key) {
            c.remove(id);
            if c.is_empty() {
                self.claims.remove(&key);
            }
        }
        self.dirty.insert(key);
        if record.host_id == self.host_id {
            if let Some(n) = self.local.get_mut(&record.vlan) {
                *n -= 1;
                if *n == 0 {
                    self.local.remove(&record.vlan);
                    self.dirty_vlans.insert(record.vlan);
                }
            }
        }
        Some(record)
    }

    fn put_address(&mut self, kv: &KeyValue) -> bool {
        let record: AddrRecord = match decode(kv) {
            Ok(r) => r,
            Err(e) => {
                // Unreadable: nobody is answered for by it (the endpoint claiming it is not).
                warn!(error = %e, "address record skipped by the ARP proxy");
                self.unlinked.remove(&kv.key);
                return self.set_holder(&kv.key, None);
            }
        };
        if record.host_id == self.host_id
            && record.kind == AddrKind::Address
            && record.endpoint_id.is_none()
        {
            self.unlinked.insert(
                kv.key.clone(),
                UnlinkedAddress {
                    key: kv.key.clone(),
                    pool_id: record.pool_id.clone(),
                    address: record.address,
                    created_at: record.created_at,
                },
            );
        } else {
            self.unlinked.remove(&kv.key);
        }
        if let Some((_, rev)) = self.holders.get(&kv.key) {
            if *rev >= kv.mod_revision {
                return false;
            }
        }
        self.set_holder(&kv.key, record.endpoint_id.map(|e| (e, kv.mod_revision)))
    }

    /// Makes the address record `key` name `holder`; marks the keys of the endpoints it named
    /// before and names now.
    fn set_holder(&mut self, key: &str, holder: Option<(String, i64)>) -> bool {
        let before = match holder {
            Some(h) => self.holders.insert(key.to_string(), h),
            None => self.holders.remove(key),
        };
        let now = self.holders.get(key).map(|(id, _)| id.clone());
        let before = before.map(|(id, _)| id);
        if before == now {
            return false;
        }
        for id in before.iter().chain(now.iter()) {
            if let Some((e, _)) = self.records.get(id) {
                self.dirty.insert((e.vlan, e.address.ip));
            }
        }
        true
    }

    fn put_network(&mut self, kv: &KeyValue) -> bool {
        let record: NetworkRecord = match decode(kv) {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "network record skipped by the ARP proxy");
                return false;
            }
        };
        if let Some((_, rev)) = self.networks.get(&record.id) {
            if *rev >= kv.mod_revision {
                return false;
            }
        }
        let pool = NetworkPool {
            pool_id: record.pool_id,
            vlan: record.vlan,
        };
        self.set_network(&record.id, Some((pool, kv.mod_revision)))
    }

    /// Sets what the view knows of network `id`; a change marks its VLAN (old and new), where
    /// it has a local port (elsewhere nothing is answered anyway).
    fn set_network(&mut self, id: &str, network: Option<(NetworkPool, i64)>) -> bool {
        let before = match network {
            Some(n) => self.networks.insert(id.to_string(), n),
            None => self.networks.remove(id),
        };
        let now = self.networks.get(id).map(|(n, _)| n.clone());
        let before = before.map(|(n, _)| n);
        if before == now {
            return false;
        }
        for n in before.iter().chain(now.iter()) {
            if self.local.contains_key(&n.vlan) {
                self.dirty_vlans.insert(n.vlan);
            }
        }
        true
    }

    /// This host's addresses with no endpoint linked.
    pub fn unlinked(&self) -> Vec<UnlinkedAddress> {
        self.unlinked.values().cloned().collect()
    }

    /// Network id → its pool id.
    pub fn network_pools(&self) -> HashMap<String, String> {
        self.networks
            .iter()
            .filter_map(|(id, (n, _))| Some((id.clone(), n.pool_id.clone()?)))
            .collect()
    }

    /// This host's endpoints' limits, by endpoint id: what a full pass applies to the meters.
    /// A change of it from the watch (a `set-limits` run on another host) asks for a pass.
    pub fn local_limits(&self) -> BTreeMap<String, RateLimits> {
        self.records
            .values()
            .filter(|(r, _)| r.host_id == self.host_id)
            .map(|(r, _)| (r.id.clone(), r.limits))
            .collect()
    }

    pub fn records(&self) -> Vec<EndpointRecord> {
        self.records.values().map(|(r, _)| r.clone()).collect()
    }

    /// Whether `e` holds its address: its pool's address record names it. On a network
    /// without a berth pool, or not known here, the endpoint record is all there is.
    fn holds(&self, e: &EndpointRecord) -> bool {
        match self.networks.get(&e.network_id) {
            Some((
                NetworkPool {
                    pool_id: Some(pool),
                    ..
                },
                _,
            )) => self
                .holders
                .get(&addr_key(pool, e.address.ip))
                .is_some_and(|(id, _)| *id == e.id),
            _ => true,
        }
    }

    /// What `key` is answered with: the one endpoint claiming it that holds it, on a VLAN
    /// with a local port.
    fn entry(&self, key: ArpKey) -> Option<ArpEntry> {
        if !self.local.contains_key(&key.0) {
            return None;
        }
        let mut holding = self
            .claims
            .get(&key)?
            .iter()
            .filter_map(|id| self.records.get(id))
            .map(|(e, _)| e)
            .filter(|e| self.holds(e));
        let e = holding.next()?;
        if holding.next().is_some() {
            // Two records and nothing to choose between them by: the real owner answers.
            return None;
        }
        Some(ArpEntry {
            vlan: e.vlan,
            ip: e.address.ip,
            mac: e.mac.octets(),
            local_port: (e.host_id == self.host_id).then(|| e.host_if.clone()),
        })
    }

    /// Every answer (for a full sync); clears what was marked.
    pub fn take_all(&mut self) -> Vec<ArpEntry> {
        self.dirty.clear();
        self.dirty_vlans.clear();
        self.full = false;
        let mut keys: Vec<ArpKey> = self.claims.keys().copied().collect();
        keys.sort();
        keys.into_iter().filter_map(|k| self.entry(k)).collect()
    }

    /// The answers changed since the last call, or None when the datapath needs them all.
    pub fn take_changes(&mut self) -> Option<Vec<ArpChange>> {
        if self.full {
            return None;
        }
        let mut keys = std::mem::take(&mut self.dirty);
        let vlans = std::mem::take(&mut self.dirty_vlans);
        if !vlans.is_empty() {
            keys.extend(self.claims.keys().filter(|k| vlans.contains(&k.0)));
        }
        Some(keys.into_iter().map(|k| (k, self.entry(k))).collect())
    }

    /// The datapath missed a change: the next push is a full sync.
    pub fn need_full(&mut self) {
        self.full = true;
    }
}

/// Passes `events` on to `merged` as `source`'s until the watch ends (then `None` says so) or
/// `ended` or `stop` is set (looked at every [`STOP_POLL`]).
fn forward(
    source: Source,
    events: Receiver<Event>,
    merged: Sender<Option<(Source, Event)>>,
    ended: &AtomicBool,
    stop: &AtomicBool,
) {
    loop {
        match events.recv_timeout(STOP_POLL) {
            Ok(event) => {
                if merged.send(Some((source, event))).is_err() {
                    return;
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                if ended.load(Ordering::SeqCst) || stop.load(Ordering::SeqCst) {
                    return;
                }
            }
            Err(RecvTimeoutError::Disconnected) => {
                let _ = merged.send(None);
                return;
            }
        }
    }
}

impl Service {
    /// This host's endpoints' limits as the view has them (see [`FleetView::local_limits`]);
    /// `None` before the first listing.
    pub fn local_limits(&self) -> Option<BTreeMap<String, RateLimits>> {
        let view = self.fleet();
        view.listed().then(|| view.local_limits())
    }

    /// This host's addresses with no endpoint linked, and each network's pool (None until the
    /// view is listed).
    pub fn unlinked_addresses(&self) -> Option<(Vec<UnlinkedAddress>, HashMap<String, String>)> {
        let view = self.fleet();
        view.listed()
            .then(|| (view.unlinked(), view.network_pools()))
    }

    pub(super) fn fleet(&self) -> MutexGuard<'_, FleetView> {
        self.fleet.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every endpoint record of the fleet: from the view once it is listed, else the store.
    pub async fn fleet_records(&self) -> NetResult<Vec<EndpointRecord>> {
        {
            let view = self.fleet();
            if view.listed() {
                return Ok(view.records());
            }
        }
        let state = self.state.clone();
        store_op("list endpoints", move || Ok(state.endpoints()?)).await
    }

    /// What a full ARP sync installs: the view's answers, or (before it is listed, moments at
    /// start) those of `all`, read from the store, by the endpoint records alone; the first
    /// listing brings a full sync by the address records.
    pub(super) fn arp_full_entries(&self, all: &[EndpointRecord]) -> Vec<ArpEntry> {
        let mut view = self.fleet();
        if view.listed() {
            return view.take_all();
        }
        let mut once = FleetView::new(&self.state.host_id);
        for (i, e) in all.iter().enumerate() {
            once.put_endpoint(&KeyValue {
                key: format!("{}{}", Source::Endpoints.prefix(), e.id),
                value: crate::state::encode(e),
                create_revision: 0,
                mod_revision: i as i64 + 1,
                version: 1,
                lease: 0,
            });
        }
        once.take_all()
    }

    /// Brings the ARP proxy to the view's changes since the last push: only the changed keys'
    /// flows, or all of them after a listing or a failure. Returns (added, removed).
    pub async fn push_arp(&self) -> NetResult<(usize, usize)> {
        let _arp = self.lock_arp("ARP push").await?;
        let (changes, changed_at) = {
            let mut view = self.fleet();
            (view.take_changes(), view.changed_at.take())
        };
        let result = match changes {
            Some(c) if c.is_empty() => return Ok((0, 0)),
            Some(c) => match self.dp.update_arp(&c).await {
                Ok(Some(counts)) => Ok(counts),
                // No baseline in the datapath yet: everything, once.
                Ok(None) => {
                    let entries = self.fleet().take_all();
                    self.dp.sync_arp(&entries).await
                }
                Err(e) => Err(e),
            },
            None => {
                let entries = self.fleet().take_all();
                self.dp.sync_arp(&entries).await
            }
        };
        match result {
            Ok(counts) => {
                if let Some(t) = changed_at {
                    self.latencies.record("arp_follow", t.elapsed());
                }
                Ok(counts)
            }
            Err(e) => {
                let mut view = self.fleet();
                view.need_full();
                if let Some(t) = changed_at {
                    view.changed_at = Some(view.changed_at.map_or(t, |later| later.min(t)));
                }
                Err(NetError::Datapath(e))
            }
        }
    }

    /// Keeps the view: lists the endpoint, address and network records, follows their
    /// watches, lists again when one ends; `changed` is notified after every change (the
    /// reconciler pushes it to the datapath). Blocking: runs on its own thread until `stop`.
    pub fn follow_endpoints(&self, changed: &Notify, stop: &AtomicBool) {
        while !stop.load(Ordering::SeqCst) {
            let mut listings = Vec::with_capacity(Source::ALL.len());
            for source in Source::ALL {
                match self.state.store.list_and_watch(source.prefix()) {
                    Ok(l) => listings.push((source, l)),
                    Err(e) => {
                        debug!(error = %e, prefix = source.prefix(), "records not listed; retrying");
                        break;
                    }
                }
            }
            if listings.len() < Source::ALL.len() {
                std::thread::sleep(RELIST_PAUSE);
                continue;
            }
            {
                let kvs: Vec<(Source, &[KeyValue], i64)> = listings
                    .iter()
                    .map(|(s, l)| (*s, l.kvs.as_slice(), l.revision))
                    .collect();
                self.fleet().reset(&kvs);
            }
            changed.notify_one();
            if self.follow_watches(listings, changed, stop) {
                return;
            }
            debug!("a watch of the fleet's records ended (compacted); listing again");
        }
    }

    /// Applies the listings' watch events as they come, until one of the watches ends
    /// (returns false: list again) or `stop` (returns true). Each watch is forwarded by its own
    /// thread into one channel, so the view takes them in one place and a burst is pushed as
    /// one change.
    fn follow_watches(
        &self,
        listings: Vec<(Source, Listing)>,
        changed: &Notify,
        stop: &AtomicBool,
    ) -> bool {
        let (merged, events) = mpsc::channel();
        let ended = AtomicBool::new(false);
        std::thread::scope(|scope| {
            for (source, listing) in listings {
                let (merged, ended) = (merged.clone(), &ended);
                let spawned = std::thread::Builder::new()
                    .name(format!("watch-{}", source.prefix().trim_end_matches('/')))
                    .spawn_scoped(scope, move || {
                        forward(source, listing.events, merged, ended, stop)
                    });
                if let Err(e) = spawned {
                    warn!(error = %e, "no thread to follow a watch; listing again");
                    ended.store(true, Ordering::SeqCst);
                    std::thread::sleep(RELIST_PAUSE);
                    return false;
                }
            }
            drop(merged);
            let stopped = loop {
                match events.recv_timeout(STOP_POLL) {
                    Ok(Some((source, event))) => {
                        let mut any = self.fleet().apply(source, &event);
                        // A burst is taken in at once, and pushed as one change.
                        let mut gone = false;
                        while let Ok(next) = events.try_recv() {
                            match next {
                                Some((source, event)) => any |= self.fleet().apply(source, &event),
                                None => gone = true,
                            }
                        }
                        if any {
                            self.fleet()
                                .changed_at
                                .get_or_insert_with(std::time::Instant::now);
                            changed.notify_one();
                        }
                        if gone {
                            break false;
                        }
                    }
                    Ok(None) | Err(RecvTimeoutError::Disconnected) => break false,
                    Err(RecvTimeoutError::Timeout) => {
                        if stop.load(Ordering::SeqCst) {
                            break true;
                        }
                    }
                }
            };
            ended.store(true, Ordering::SeqCst);
            stopped
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipnet::Ipv4If;
    use crate::mac::Mac;
    use crate::state::AddrKind;

    fn record(id: &str, host: &str, vlan: u16, ip: &str) -> EndpointRecord {
        let ip: std::net::Ipv4Addr = ip.parse().unwrap();
        EndpointRecord {
            id: id.into(),
            network_id: "n".into(),
            host_id: host.into(),
            address: Ipv4If { ip, prefix: 24 },
            mac: Mac::from_ip(ip),
            host_if: format!("vb{id}"),
            container_if: format!("tb{id}"),
            vlan,
            mtu: 1500,
            created_at: 0,
            lease: 0,
            limits: Default::default(),
            own_limits: None,
            allow_spoofing: false,
        }
    }

    fn kv(key: String, value: Vec<u8>, rev: i64) -> KeyValue {
        KeyValue {
            key,
            value,
            create_revision: rev,
            mod_revision: rev,
            version: 1,
            lease: 0,
        }
    }

    fn endpoint_kv(e: &EndpointRecord, rev: i64) -> KeyValue {
        kv(format!("endpoints/{}", e.id), crate::state::encode(e), rev)
    }

    fn put(e: &EndpointRecord, rev: i64) -> (Source, Event) {
        (Source::Endpoints, Event::Put(endpoint_kv(e, rev)))
    }

    fn delete(source: Source, key: String, revision: i64) -> (Source, Event) {
        (source, Event::Delete { key, revision })
    }

    /// Network "n" with its addresses from pool "p".
    fn network(vlan: u16, rev: i64) -> (Source, Event) {
        let n = NetworkRecord {
            id: "n".into(),
            vlan,
            vlan_auto: false,
            mtu: 1500,
            subnet: None,
            gateway: None,
            pool_id: Some("p".into()),
            host_id: "a".into(),
            created_at: 0,
            limits: Default::default(),
            allow_spoofing: false,
        };
        (
            Source::Networks,
            Event::Put(kv("networks/n".into(), crate::state::encode(&n), rev)),
        )
    }

    /// Pool "p"'s address record of `ip`, naming `endpoint`.
    fn address(ip: &str, endpoint: Option<&str>, rev: i64) -> (Source, Event) {
        let address: std::net::Ipv4Addr = ip.parse().unwrap();
        let a = AddrRecord {
            pool_id: "p".into(),
            address,
            kind: AddrKind::Address,
            endpoint_id: endpoint.map(str::to_string),
            mac: None,
            host_id: "b".into(),
            created_at: 0,
            lease: 0,
            claim: String::new(),
        };
        (
            Source::Addresses,
            Event::Put(kv(addr_key("p", address), crate::state::encode(&a), rev)),
        )
    }

    fn apply(v: &mut FleetView, (source, event): (Source, Event)) -> bool {
        v.apply(source, &event)
    }

    fn keys(changes: &[ArpChange]) -> Vec<(ArpKey, bool)> {
        changes.iter().map(|(k, e)| (*k, e.is_some())).collect()
    }

    /// The answer `changes` (or the full set) has for `key`: the answering endpoint's host
    /// port (None: remote) and MAC.
    fn answer_in(changes: &[ArpChange], key: ArpKey) -> Option<ArpEntry> {
        changes
            .iter()
            .find(|(k, _)| *k == key)
            .and_then(|(_, e)| e.clone())
    }

    fn answer_for(v: &mut FleetView, key: ArpKey) -> Option<ArpEntry> {
        v.take_all().into_iter().find(|e| e.key() == key)
    }

    /// The view keeps this host's addresses held for no endpoint (what a lost ReleaseAddress
    /// leaves), and only those: not another host's, not one an endpoint is linked to.
    #[test]
    fn unlinked_addresses_are_this_hosts_without_an_endpoint() {
        let mut v = FleetView::new("b");
        v.reset(&[(Source::Networks, &[], 1)]);
        apply(&mut v, network(200, 2));
        assert_eq!(v.network_pools().get("n").map(String::as_str), Some("p"));
        let ips = |v: &FleetView| -> Vec<String> {
            let mut l: Vec<String> = v.unlinked().iter().map(|a| a.address.to_string()).collect();
            l.sort();
            l
        };
        apply(&mut v, address("10.0.0.5", None, 3));
        apply(&mut v, address("10.0.0.6", Some("e6"), 4));
        assert_eq!(ips(&v), ["10.0.0.5"]);
        // CreateEndpoint links it.
        apply(&mut v, address("10.0.0.5", Some("e5"), 5));
        assert!(ips(&v).is_empty());
        // Released, then taken again by a RequestAddress with no endpoint yet.
        let key = addr_key("p", "10.0.0.5".parse().unwrap());
        apply(&mut v, delete(Source::Addresses, key.clone(), 6));
        apply(&mut v, address("10.0.0.5", None, 7));
        assert_eq!(ips(&v), ["10.0.0.5"]);
        apply(&mut v, delete(Source::Addresses, key, 8));
        assert!(ips(&v).is_empty());
        // Another host's address is never this host's to release.
        let mut other = FleetView::new("a");
        other.reset(&[(Source::Addresses, &[], 1)]);
        apply(&mut other, address("10.0.0.9", None, 2));
        assert!(ips(&other).is_empty());
    }

    /// Answers only on VLANs with a local port; the first local port brings its VLAN's
    /// answers, the last takes them away; one change touches one key.
    #[test]
    fn answers_follow_local_vlans_and_changes_are_per_key() {
        let mut v = FleetView::new("me");
        let remote = record("r1", "other", 200, "10.0.0.2");
        v.reset(&[(Source::Endpoints, &[endpoint_kv(&remote, 1)], 1)]);
        assert!(v.take_changes().is_none(), "a listing needs a full sync");
        assert!(v.take_all().is_empty(), "no local port on VLAN 200");
        // Events at or before the listing are in it already.
        assert!(!apply(&mut v, put(&remote, 1)));
        let local = record("l1", "me", 200, "10.0.0.3");
        assert!(apply(&mut v, put(&local, 2)));
        let ip2 = (200, "10.0.0.2".parse().unwrap());
        let ip3 = (200, "10.0.0.3".parse().unwrap());
        assert_eq!(
            keys(&v.take_changes().unwrap()),
            vec![(ip2, true), (ip3, true)]
        );
        let other = record("r2", "other", 200, "10.0.0.4");
        apply(&mut v, put(&other, 3));
        let ip4 = (200, "10.0.0.4".parse().unwrap());
        assert_eq!(keys(&v.take_changes().unwrap()), vec![(ip4, true)]);
        // Another VLAN without a local port: nothing to do.
        apply(&mut v, put(&record("r3", "other", 300, "10.1.0.4"), 4));
        assert_eq!(
            keys(&v.take_changes().unwrap()),
            vec![((300, "10.1.0.4".parse().unwrap()), false)]
        );
        apply(&mut v, delete(Source::Endpoints, "endpoints/l1".into(), 5));
        assert_eq!(
            keys(&v.take_changes().unwrap()),
            vec![(ip2, false), (ip3, false), (ip4, false)]
        );
    }

    /// Issue 14 §2: only the endpoint the address record names is answered for. A stale
    /// endpoint record is not, even while it is the only one claiming the address: when the
    /// address record is free, names an endpoint whose record has not come yet, or names
    /// another; two records claiming one address: only the one the record names. Each
    /// change of an address record touches only the keys of the endpoints it named.
    #[test]
    fn only_the_endpoint_the_address_record_names_is_answered_for() {
        let mut v = FleetView::new("me");
        v.reset(&[]);
        v.take_all();
        apply(&mut v, network(200, 1));
        let local = record("l1", "me", 200, "10.0.0.3");
        apply(&mut v, put(&local, 2));
        apply(&mut v, address("10.0.0.3", Some("l1"), 2));
        let key = (200, "10.0.0.9".parse().unwrap());
        let mut old = record("old", "a", 200, "10.0.0.9");
        old.mac.0[5] = 0xaa;
        let mut new = record("new", "b", 200, "10.0.0.9");
        new.mac.0[5] = 0xbb;

        // Held: answered for.
        apply(&mut v, put(&old, 3));
        apply(&mut v, address("10.0.0.9", Some("old"), 3));
        let changes = v.take_changes().unwrap();
        assert_eq!(answer_in(&changes, key).unwrap().mac, old.mac.octets());
        // Its host died and the address was freed: its record alone is not answered for.
        assert!(apply(
            &mut v,
            delete(Source::Addresses, addr_key("p", key.1), 4)
        ));
        let changes = v.take_changes().unwrap();
        assert_eq!(keys(&changes), vec![(key, false)], "only its key touched");
        assert!(
            answer_for(&mut v, key).is_none(),
            "a freed address answered for"
        );
        // Taken by another host's request, no endpoint yet.
        apply(&mut v, address("10.0.0.9", None, 5));
        assert!(
            answer_for(&mut v, key).is_none(),
            "answered for before its endpoint"
        );
        // Linked to the new endpoint, whose record has not come yet.
        apply(&mut v, address("10.0.0.9", Some("new"), 6));
        assert!(
            answer_for(&mut v, key).is_none(),
            "a stale record answered for"
        );
        // Its record comes: two claim the address, the one the address record names answers.
        apply(&mut v, put(&new, 7));
        let changes = v.take_changes().unwrap();
        assert_eq!(answer_in(&changes, key).unwrap().mac, new.mac.octets());
        // The stale record goes: no change of answer.
        apply(&mut v, delete(Source::Endpoints, "endpoints/old".into(), 8));
        assert_eq!(answer_for(&mut v, key).unwrap().mac, new.mac.octets());
        // The local endpoint was answered for all along.
        let own = answer_for(&mut v, (200, "10.0.0.3".parse().unwrap())).unwrap();
        assert_eq!(own.local_port.as_deref(), Some("vbl1"));
    }

    /// Without a berth pool (another IPAM driver) there are no address records: the endpoint
    /// record answers; the network record's pool, once known, decides. A listing that starts
    /// again keeps the rule (each source from its own revision).
    #[test]
    fn the_network_record_says_whether_address_records_decide() {
        let mut v = FleetView::new("me");
        let local = record("l1", "me", 200, "10.0.0.3");
        let remote = record("r1", "b", 200, "10.0.0.9");
        let key = (200, "10.0.0.9".parse().unwrap());
        v.reset(&[
            (
                Source::Endpoints,
                &[endpoint_kv(&local, 1), endpoint_kv(&remote, 2)],
                2,
            ),
            (Source::Addresses, &[], 2),
            (Source::Networks, &[], 2),
        ]);
        assert!(
            answer_for(&mut v, key).is_some(),
            "no pool: the record answers"
        );
        // The network turns out to take its addresses from pool p, which has none of them.
        apply(&mut v, network(200, 3));
        let changes = v.take_changes().unwrap();
        assert!(answer_in(&changes, key).is_none());
        assert!(keys(&changes).contains(&(key, false)));
        apply(&mut v, address("10.0.0.9", Some("r1"), 4));
        assert!(answer_in(&v.take_changes().unwrap(), key).is_some());
        // Listed again (a compacted watch): same answers from the listing.
        let net = match network(200, 3).1 {
            Event::Put(kv) => kv,
            _ => unreachable!(),
        };
        let addr = match address("10.0.0.9", Some("r1"), 4).1 {
            Event::Put(kv) => kv,
            _ => unreachable!(),
        };
        v.reset(&[
            (
                Source::Endpoints,
                &[endpoint_kv(&local, 1), endpoint_kv(&remote, 2)],
                9,
            ),
            (Source::Addresses, &[addr], 9),
            (Source::Networks, &[net], 9),
        ]);
        assert!(answer_for(&mut v, key).is_some());
        // An event of the listing's past is dropped.
        assert!(!apply(
            &mut v,
            delete(Source::Addresses, addr_key("p", key.1), 8)
        ));
    }
}
