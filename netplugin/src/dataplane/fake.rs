//! A datapath that only records, for unit tests of the handlers.
#![allow(
    clippy::unwrap_used,
    reason = "a test fake: a poisoned lock means a test already panicked"
)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use super::{
    ArpChange, ArpEntry, BoxFuture, Dataplane, DataplaneError, DpResult, EndpointPlan, PortView,
    ReassertReport,
};

#[derive(Default)]
pub struct FakeDataplane {
    /// host_if → plan.
    pub endpoints: Mutex<BTreeMap<String, EndpointPlan>>,
    pub down: AtomicBool,
    pub fail_next_create: AtomicBool,
    /// host_if → container id, as `label_container` set it.
    pub containers: Mutex<BTreeMap<String, String>>,
    /// The ARP proxy's entries, as `sync_arp` and `update_arp` left them.
    pub arp: Mutex<Vec<ArpEntry>>,
    /// Ports whose device is gone (`PortView::has_device` false).
    pub no_device: Mutex<std::collections::BTreeSet<String>>,
    /// Every `delete_endpoint`, in order.
    pub deleted: Mutex<Vec<String>>,
    /// Calls of `sync_arp` (full) and `update_arp` (incremental) so far.
    pub arp_syncs: AtomicUsize,
    pub arp_updates: AtomicUsize,
    /// The fenced ports, as `fence` left them.
    pub fenced: Mutex<std::collections::BTreeSet<String>>,
    /// Every `announce`: (host_if, mac, ip).
    pub announced: Mutex<Vec<(String, [u8; 6], std::net::Ipv4Addr)>>,
    /// The endpoint ids of the last `reassert`'s plans (a whole-bridge sync removes what is
    /// not among them).
    pub reasserted: Mutex<Vec<String>>,
    /// Operations held (`hold`) until `release`, as a stopped ovsdb-server holds them:
    /// `reassert` at its start, `create_endpoint` once its port exists.
    held: Mutex<BTreeMap<&'static str, tokio::sync::watch::Sender<bool>>>,
    /// Veths without a port, as `portless_veths` reports them (deleting one takes it away).
    pub portless: Mutex<Vec<String>>,
}

impl FakeDataplane {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Holds every later `operation` (`reassert`, `create_endpoint`) until [`Self::release`].
    pub fn hold(&self, operation: &'static str) {
        let (tx, _) = tokio::sync::watch::channel(false);
        self.held.lock().unwrap().insert(operation, tx);
    }

    pub fn release(&self, operation: &'static str) {
        if let Some(tx) = self.held.lock().unwrap().remove(operation) {
            tx.send_replace(true);
        }
    }

    async fn pause(&self, operation: &'static str) {
        let rx = self
            .held
            .lock()
            .unwrap()
            .get(operation)
            .map(|tx| tx.subscribe());
        if let Some(mut rx) = rx {
            // Err: released and gone meanwhile, as good as released.
            let _ = rx.wait_for(|released| *released).await;
        }
    }

    fn check(&self) -> DpResult<()> {
        if self.down.load(Ordering::SeqCst) {
            Err(DataplaneError::Unreachable(
                "Open vSwitch is not reachable (fake)".into(),
            ))
        } else {
            Ok(())
        }
    }
}

impl Dataplane for FakeDataplane {
    fn fence<'a>(
        &'a self,
        host_ifs: &'a std::collections::BTreeSet<String>,
    ) -> BoxFuture<'a, DpResult<usize>> {
        Box::pin(async move {
            self.check()?;
            *self.fenced.lock().unwrap() = host_ifs.clone();
            Ok(host_ifs.len())
        })
    }

    fn ready(&self) -> BoxFuture<'_, DpResult<()>> {
        Box::pin(async move { self.check() })
    }

    fn create_endpoint<'a>(&'a self, plan: &'a EndpointPlan) -> BoxFuture<'a, DpResult<()>> {
        Box::pin(async move {
            self.check()?;
            if self.fail_next_create.swap(false, Ordering::SeqCst) {
                return Err(DataplaneError::Worker("injected failure".into()));
            }
            self.endpoints
                .lock()
                .unwrap()
                .insert(plan.host_if.clone(), plan.clone());
            self.pause("create_endpoint").await;
            Ok(())
        })
    }

    fn delete_endpoint<'a>(&'a self, host_if: &'a str) -> BoxFuture<'a, DpResult<()>> {
        Box::pin(async move {
            self.deleted.lock().unwrap().push(host_if.to_string());
            self.portless.lock().unwrap().retain(|v| v != host_if);
            self.endpoints.lock().unwrap().remove(host_if);
            self.containers.lock().unwrap().remove(host_if);
            Ok(())
        })
    }

    fn reassert<'a>(
        &'a self,
        endpoints: &'a [EndpointPlan],
    ) -> BoxFuture<'a, DpResult<ReassertReport>> {
        Box::pin(async move {
            self.pause("reassert").await;
            self.check()?;
            *self.reasserted.lock().unwrap() =
                endpoints.iter().map(|p| p.endpoint_id.clone()).collect();
            let mut report = ReassertReport::default();
            let mut have = self.endpoints.lock().unwrap();
            for plan in endpoints {
                if have.get(&plan.host_if) != Some(plan) {
                    have.insert(plan.host_if.clone(), plan.clone());
                    report.ports_fixed.push(plan.host_if.clone());
                }
            }
            Ok(report)
        })
    }

    fn announce<'a>(
        &'a self,
        host_if: &'a str,
        mac: [u8; 6],
        ip: std::net::Ipv4Addr,
    ) -> BoxFuture<'a, DpResult<()>> {
        Box::pin(async move {
            self.check()?;
            self.announced
                .lock()
                .unwrap()
                .push((host_if.to_string(), mac, ip));
            Ok(())
        })
    }

    fn label_container<'a>(
        &'a self,
        plan: &'a EndpointPlan,
        container_id: &'a str,
    ) -> BoxFuture<'a, DpResult<()>> {
        Box::pin(async move {
            self.check()?;
            if self.endpoints.lock().unwrap().contains_key(&plan.host_if) {
                self.containers
                    .lock()
                    .unwrap()
                    .insert(plan.host_if.clone(), container_id.to_string());
            }
            Ok(())
        })
    }

    fn sync_arp<'a>(&'a self, entries: &'a [ArpEntry]) -> BoxFuture<'a, DpResult<(usize, usize)>> {
        Box::pin(async move {
            self.check()?;
            self.arp_syncs.fetch_add(1, Ordering::SeqCst);
            let mut have = self.arp.lock().unwrap();
            let added = entries.iter().filter(|e| !have.contains(e)).count();
            let removed = have.iter().filter(|e| !entries.contains(e)).count();
            *have = entries.to_vec();
            Ok((added, removed))
        })
    }

    fn update_arp<'a>(
        &'a self,
        changes: &'a [ArpChange],
    ) -> BoxFuture<'a, DpResult<Option<(usize, usize)>>> {
        Box::pin(async move {
            self.check()?;
            if self.arp_syncs.load(Ordering::SeqCst) == 0 {
                return Ok(None);
            }
            self.arp_updates.fetch_add(1, Ordering::SeqCst);
            let mut have = self.arp.lock().unwrap();
            let (mut added, mut removed) = (0, 0);
            for (key, entry) in changes {
                let before = have.len();
                have.retain(|e| e.key() != *key || Some(e) == entry.as_ref());
                removed += before - have.len();
                if let Some(e) = entry {
                    if !have.contains(e) {
                        have.push(e.clone());
                        added += 1;
                    }
                }
            }
            Ok(Some((added, removed)))
        })
    }

    fn ports(&self) -> Vec<PortView> {
        self.endpoints
            .lock()
            .unwrap()
            .values()
            .map(|p| PortView {
                name: p.host_if.clone(),
                tag: Some(p.vlan),
                endpoint_id: Some(p.endpoint_id.clone()),
                network_id: Some(p.network_id.clone()),
                // An empty host id stands for a port of an older release (no label).
                host_id: Some(p.host_id.clone()).filter(|h| !h.is_empty()),
                container_id: self.containers.lock().unwrap().get(&p.host_if).cloned(),
                ofport: Some(1),
                has_device: !self.no_device.lock().unwrap().contains(&p.host_if),
            })
            .collect()
    }

    fn portless_veths(&self) -> BoxFuture<'_, DpResult<Vec<String>>> {
        Box::pin(async move {
            self.check()?;
            Ok(self.portless.lock().unwrap().clone())
        })
    }

    fn datapath_type(&self) -> &str {
        "fake"
    }

    fn connected(&self) -> bool {
        !self.down.load(Ordering::SeqCst)
    }
}
