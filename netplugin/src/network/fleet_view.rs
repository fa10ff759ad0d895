//! This host's copy of the fleet's endpoint records, and the ARP proxy that follows it.
//!
//! The records are listed once and then followed by a watch from the listing's revision
//! ([`Store::list_and_watch`]); they are listed again only when the watch cannot go on without
//! a gap (etcd compacted it). Each change marks the (VLAN, address) keys it touches, and only
//! those keys' flows change ([`Dataplane::update_arp`]): a host's cost per change does not
//! grow with the fleet. The periodic reconcile pass takes its records from here too and
//! re-asserts every flow (drift repair), without reading the store.
//!
//! What is answered: an address on a VLAN that has a port on this host (requests only come
//! from local ports, so other VLANs' answers would never be used), with the MAC of the one
//! endpoint that claims it; when two endpoint records claim the same address (a stale record),
//! the address record decides, and until it has, nobody is answered for (the request goes on
//! to the trunk, where the real owner answers).
//!
//! [`Store::list_and_watch`]: crate::store::Store::list_and_watch

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::MutexGuard;
use std::time::Duration;

use tokio::sync::Notify;
use tracing::{debug, warn};

use super::Service;
use crate::dataplane::{ArpChange, ArpEntry, ArpKey};
use crate::error::{NetError, NetResult};
use crate::state::{addr_key, decode, store_op, AddrRecord, EndpointRecord, RateLimits, State};
use crate::store::{Event, KeyValue, StoreResult};

/// Pause before listing again after the store refused (etcd unreachable).
const RELIST_PAUSE: Duration = Duration::from_secs(1);
const PREFIX: &str = "endpoints/";

/// The fleet's endpoint records as of `revision`, indexed for the ARP proxy.
#[derive(Default)]
pub struct FleetView {
    host_id: String,
    /// Whether the records were listed (until then, callers read the store).
    listed: bool,
    /// The listing's revision: events at or before it are in the records already.
    listed_at: i64,
    /// Endpoint id → record and the revision it was written at.
    records: HashMap<String, (EndpointRecord, i64)>,
    /// Key → the endpoints claiming it.
    claims: HashMap<ArpKey, BTreeSet<String>>,
    /// VLAN → this host's endpoints on it.
    local: BTreeMap<u16, usize>,
    /// Contested keys: the endpoint their address record names (None: none of them).
    decided: HashMap<ArpKey, Option<String>>,
    /// Keys and whole VLANs whose answers may have changed since the datapath was told.
    dirty: BTreeSet<ArpKey>,
    dirty_vlans: BTreeSet<u16>,
    /// The datapath needs every flow (after a listing, or a change that failed).
    full: bool,
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

    /// Starts again from a listing.
    pub fn reset(&mut self, kvs: &[KeyValue], revision: i64) {
        *self = Self::new(&self.host_id);
        for kv in kvs {
            self.put(kv);
        }
        self.listed = true;
        self.listed_at = revision;
        self.dirty.clear();
        self.dirty_vlans.clear();
        self.full = true;
    }

    /// Applies one watch event; returns whether it changed anything.
    pub fn apply(&mut self, event: &Event) -> bool {
        match event {
            Event::Put(kv) if kv.mod_revision > self.listed_at => self.put(kv),
            Event::Delete { key, revision } if *revision > self.listed_at => {
                match key.strip_prefix(PREFIX) {
                    Some(id) => self.remove(id).is_some(),
                    None => false,
                }
            }
            _ => false,
        }
    }

    fn put(&mut self, kv: &KeyValue) -> bool {
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
        self.decided.remove(&key);
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
        self.decided.remove(&key);
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

    /// Keys claimed by several endpoints that the address record has not decided yet, with
    /// one of the claimants (the pool is found through its network).
    pub fn contested(&self) -> Vec<(ArpKey, EndpointRecord)> {
        self.claims
            .iter()
            .filter(|(k, c)| c.len() > 1 && !self.decided.contains_key(k))
            .filter_map(|(k, c)| {
                let first = c.iter().next()?;
                Some((*k, self.records.get(first)?.0.clone()))
            })
            .collect()
    }

    /// The address record of `key` names `holder`.
    pub fn decide(&mut self, key: ArpKey, holder: Option<String>) {
        if self.claims.get(&key).is_some_and(|c| c.len() > 1) {
            self.decided.insert(key, holder);
            self.dirty.insert(key);
        }
    }

    /// What `key` is answered with: its one claimant (or the decided one), on a VLAN with a
    /// local port.
    fn entry(&self, key: ArpKey) -> Option<ArpEntry> {
        if !self.local.contains_key(&key.0) {
            return None;
        }
        let claims = self.claims.get(&key)?;
        let id = if claims.len() == 1 {
            claims.iter().next()?
        } else {
            self.decided
                .get(&key)?
                .as_ref()
                .filter(|h| claims.contains(*h))?
        };
        let (e, _) = self.records.get(id)?;
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

/// The endpoint the address record of `claimant`'s address names, if any.
fn address_holder(state: &State, claimant: &EndpointRecord) -> StoreResult<Option<String>> {
    let Some(pool) = state.network(&claimant.network_id)?.and_then(|n| n.pool_id) else {
        return Ok(None);
    };
    Ok(state
        .get::<AddrRecord>(&addr_key(&pool, claimant.address.ip))?
        .and_then(|(a, _)| a.endpoint_id))
}

impl Service {
    /// This host's endpoints' limits as the view has them (see [`FleetView::local_limits`]);
    /// `None` before the first listing.
    pub fn local_limits(&self) -> Option<BTreeMap<String, RateLimits>> {
        let view = self.fleet();
        view.listed().then(|| view.local_limits())
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

    /// What a full ARP sync installs: the view's answers, or (before it is listed) those of
    /// `all`, read from the store.
    pub(super) fn arp_full_entries(&self, all: &[EndpointRecord]) -> Vec<ArpEntry> {
        let mut view = self.fleet();
        if view.listed() {
            return view.take_all();
        }
        let mut once = FleetView::new(&self.state.host_id);
        for (i, e) in all.iter().enumerate() {
            once.put(&KeyValue {
                key: format!("{PREFIX}{}", e.id),
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
        let _pass = self.lock_pass("ARP push").await?;
        let changes = self.fleet().take_changes();
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
        result.map_err(|e| {
            self.fleet().need_full();
            NetError::Datapath(e)
        })
    }

    /// Keeps the view: lists the endpoint records, follows the watch, lists again when it
    /// ends; `changed` is notified after every change (the reconciler pushes it to the
    /// datapath). Blocking: runs on its own thread until `stop`.
    pub fn follow_endpoints(&self, changed: &Notify, stop: &AtomicBool) {
        while !stop.load(Ordering::SeqCst) {
            let listing = match self.state.store.list_and_watch(PREFIX) {
                Ok(l) => l,
                Err(e) => {
                    debug!(error = %e, "endpoint records not listed; retrying");
                    std::thread::sleep(RELIST_PAUSE);
                    continue;
                }
            };
            self.fleet().reset(&listing.kvs, listing.revision);
            self.decide_contested();
            changed.notify_one();
            loop {
                match listing.events.recv_timeout(Duration::from_secs(1)) {
                    Ok(event) => {
                        let mut any = self.fleet().apply(&event);
                        // A burst is taken in at once, and pushed as one change.
                        while let Ok(event) = listing.events.try_recv() {
                            any |= self.fleet().apply(&event);
                        }
                        if any {
                            self.decide_contested();
                            changed.notify_one();
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => {
                        if stop.load(Ordering::SeqCst) {
                            return;
                        }
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
            debug!("endpoint watch ended (compacted); listing again");
        }
    }

    /// Asks the address records about contested keys (rare: a stale endpoint record).
    fn decide_contested(&self) {
        let contested = self.fleet().contested();
        for (key, claimant) in contested {
            match address_holder(&self.state, &claimant) {
                Ok(holder) => self.fleet().decide(key, holder),
                Err(e) => {
                    debug!(error = %e, "address record not read; the address is not answered for")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipnet::Ipv4If;
    use crate::mac::Mac;

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

    fn put(e: &EndpointRecord, rev: i64) -> Event {
        Event::Put(KeyValue {
            key: format!("{PREFIX}{}", e.id),
            value: crate::state::encode(e),
            create_revision: rev,
            mod_revision: rev,
            version: 1,
            lease: 0,
        })
    }

    fn keys(changes: &[ArpChange]) -> Vec<(ArpKey, bool)> {
        changes.iter().map(|(k, e)| (*k, e.is_some())).collect()
    }

    /// Answers only on VLANs with a local port; the first local port brings its VLAN's
    /// answers, the last takes them away; one change touches one key.
    #[test]
    fn answers_follow_local_vlans_and_changes_are_per_key() {
        let mut v = FleetView::new("me");
        let remote = record("r1", "other", 200, "10.0.0.2");
        v.reset(
            &[match put(&remote, 1) {
                Event::Put(kv) => kv,
                _ => unreachable!(),
            }],
            1,
        );
        assert!(v.take_changes().is_none(), "a listing needs a full sync");
        assert!(v.take_all().is_empty(), "no local port on VLAN 200");
        // Events at or before the listing are in it already.
        assert!(!v.apply(&put(&remote, 1)));
        let local = record("l1", "me", 200, "10.0.0.3");
        assert!(v.apply(&put(&local, 2)));
        let ip2 = (200, "10.0.0.2".parse().unwrap());
        let ip3 = (200, "10.0.0.3".parse().unwrap());
        assert_eq!(
            keys(&v.take_changes().unwrap()),
            vec![(ip2, true), (ip3, true)]
        );
        let other = record("r2", "other", 200, "10.0.0.4");
        v.apply(&put(&other, 3));
        let ip4 = (200, "10.0.0.4".parse().unwrap());
        assert_eq!(keys(&v.take_changes().unwrap()), vec![(ip4, true)]);
        // Another VLAN without a local port: nothing to do.
        v.apply(&put(&record("r3", "other", 300, "10.1.0.4"), 4));
        assert_eq!(
            keys(&v.take_changes().unwrap()),
            vec![((300, "10.1.0.4".parse().unwrap()), false)]
        );
        v.apply(&Event::Delete {
            key: format!("{PREFIX}l1"),
            revision: 5,
        });
        assert_eq!(
            keys(&v.take_changes().unwrap()),
            vec![(ip2, false), (ip3, false), (ip4, false)]
        );
    }

    /// Two records claiming one address: nobody is answered for until the address record
    /// decides, then only its endpoint.
    #[test]
    fn contested_address_is_decided_by_the_address_record() {
        let mut v = FleetView::new("me");
        v.reset(&[], 0);
        v.take_all();
        v.apply(&put(&record("l1", "me", 200, "10.0.0.3"), 1));
        v.apply(&put(&record("old", "a", 200, "10.0.0.9"), 2));
        v.apply(&put(&record("new", "b", 200, "10.0.0.9"), 3));
        let key = (200, "10.0.0.9".parse().unwrap());
        let changes = v.take_changes().unwrap();
        assert!(changes.iter().any(|(k, e)| *k == key && e.is_none()));
        assert_eq!(v.contested().len(), 1);
        v.decide(key, Some("new".into()));
        let changes = v.take_changes().unwrap();
        let (_, entry) = changes.iter().find(|(k, _)| *k == key).unwrap();
        assert_eq!(
            entry.as_ref().unwrap().mac,
            Mac::from_ip("10.0.0.9".parse().unwrap()).octets()
        );
        assert!(v.contested().is_empty());
        // The stale one goes: the other is answered for without asking again.
        v.apply(&Event::Delete {
            key: format!("{PREFIX}old"),
            revision: 4,
        });
        assert!(v.contested().is_empty());
        assert!(v.take_all().iter().any(|e| e.key() == key));
    }
}
