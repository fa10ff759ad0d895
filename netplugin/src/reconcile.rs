//! The reconciler: re-asserts the datapath when OVS (re)appears and then every interval, so
//! what a restarted ovs-vswitchd or a new ovsdb-server lost comes back without a request; and
//! pushes each endpoint change (any host's) to the ARP proxy as soon as the watch brings it,
//! flow by flow (`network/fleet_view.rs`), so other hosts' new and moved endpoints are
//! answered within moments whatever the size of the fleet.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::network::Service;

/// How often OVS is looked for while it is unreachable: it comes back within a pass.
const RECONNECT_POLL: Duration = Duration::from_millis(200);

/// Runs until `shutdown` turns true. A failure is logged once until it changes or heals, so
/// an OVS that stays down does not flood the log. The full passes and the ARP pushes run as
/// two tasks: a pass can take seconds on a busy host with many ports, and an endpoint change
/// of another host must not wait for it (they share only the ARP proxy's lock, which the pass
/// takes for its last step).
pub async fn run(svc: Arc<Service>, interval: Duration, shutdown: watch::Receiver<bool>) {
    let changed = Arc::new(Notify::new());
    let pass_now = Arc::new(Notify::new());
    let stop = Arc::new(AtomicBool::new(false));
    watch_endpoints(svc.clone(), changed.clone(), stop.clone());
    let pushes = tokio::spawn(push_changes(
        svc.clone(),
        changed,
        pass_now.clone(),
        shutdown.clone(),
    ));
    passes(svc, interval, pass_now, shutdown).await;
    stop.store(true, Ordering::SeqCst);
    if let Err(e) = pushes.await {
        warn!(error = %e, "the ARP push task ended abnormally");
    }
}

/// Full passes: when OVS (re)appears, every `interval`, and at once when `pass_now` is
/// notified.
async fn passes(
    svc: Arc<Service>,
    interval: Duration,
    pass_now: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut was_connected = false;
    let mut last_error = String::new();
    loop {
        let connected = svc.dataplane().connected();
        if connected {
            match svc.reconcile().await {
                Ok(report) => {
                    if !was_connected {
                        info!(?report, "OVS reachable: datapath re-asserted");
                    } else if report.repaired_drift() {
                        info!(?report, "datapath drift repaired");
                    } else if report.arp_flows_added + report.arp_flows_removed > 0 {
                        debug!(
                            added = report.arp_flows_added,
                            removed = report.arp_flows_removed,
                            "ARP proxy flows updated"
                        );
                    }
                    last_error.clear();
                }
                Err(e) => {
                    let msg = e.to_string();
                    if msg != last_error {
                        warn!(error = %msg, "reconcile failed; retrying");
                    }
                    last_error = msg;
                }
            }
        } else if was_connected || last_error.is_empty() {
            warn!("OVS is not reachable; network calls fail until it is (IPAM keeps working)");
            last_error = "down".into();
        }
        was_connected = connected && last_error.is_empty();
        let next_pass = Instant::now() + if connected { interval } else { RECONNECT_POLL };
        tokio::select! {
            _ = tokio::time::sleep_until(next_pass) => {}
            _ = pass_now.notified() => {}
            // (The guard wait_for returns must not live across the other branch's awaits.)
            _ = async { drop(shutdown.wait_for(|s| *s).await) } => return,
        }
    }
}

/// ARP-only pushes whenever the view changes; asks for a pass at once when a local
/// endpoint's limits changed in the store (a `set-limits` run on another host of the fleet is
/// in force here within moments).
async fn push_changes(
    svc: Arc<Service>,
    changed: Arc<Notify>,
    pass_now: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut known_limits = svc.local_limits();
    loop {
        tokio::select! {
            _ = changed.notified() => {}
            _ = async { drop(shutdown.wait_for(|s| *s).await) } => return,
        }
        // While OVS is away the pass that follows its return syncs everything.
        if svc.dataplane().connected() {
            // Changes that arrive meanwhile are marked in the view and taken by the next
            // push: a burst needs no extra wait to be batched.
            match svc.push_arp().await {
                Ok((added, removed)) if added + removed > 0 => {
                    debug!(added, removed, "ARP proxy flows follow an endpoint change");
                }
                Ok(_) => {}
                // The next push or full pass retries and reports it.
                Err(e) => debug!(error = %e, "ARP proxy update failed"),
            }
        }
        // Only a changed limit of an endpoint already known: a new endpoint got its meters
        // when it was created, a removed one has none left.
        if let Some(now) = svc.local_limits() {
            let changed_limit = known_limits.as_ref().is_some_and(|before| {
                now.iter()
                    .any(|(id, l)| before.get(id).is_some_and(|b| b != l))
            });
            if changed_limit {
                debug!("a local endpoint's limits changed in the store: a pass now");
                pass_now.notify_one();
            }
            known_limits = Some(now);
        }
    }
}

/// The thread that keeps the service's view of the fleet's endpoints (list, then watch) and
/// notifies `changed` after each change, for as long as `stop` is false.
fn watch_endpoints(svc: Arc<Service>, changed: Arc<Notify>, stop: Arc<AtomicBool>) {
    let spawned = std::thread::Builder::new()
        .name("endpoint-watch".into())
        .spawn(move || svc.follow_endpoints(&changed, &stop));
    if let Err(e) = spawned {
        warn!(error = %e, "no endpoint watch: other hosts' endpoints are learned at each reconcile pass only");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::fake::FakeDataplane;
    use crate::dataplane::{Dataplane, EndpointPlan};
    use crate::ipam::{Ipam, IpamConfig};
    use crate::ipnet::Ipv4If;
    use crate::mac::Mac;
    use crate::network::NetConfig;
    use crate::state::State;
    use crate::state::{encode, endpoint_key, EndpointRecord};
    use crate::store::counting::Counting;
    use crate::store::memory::MemStore;
    use crate::store::{Op, Store, Txn};

    fn counting() -> Arc<Counting> {
        Arc::new(Counting::new())
    }

    fn endpoint(n: u8, host: &str, vlan: u16, mac_last: u8) -> EndpointRecord {
        let ip = std::net::Ipv4Addr::new(10, 0, vlan as u8, n);
        let mut mac = Mac::from_ip(ip);
        mac.0[5] = mac_last;
        EndpointRecord {
            id: format!("{n:02x}").repeat(32),
            network_id: format!("net{vlan}"),
            host_id: host.into(),
            address: Ipv4If { ip, prefix: 24 },
            mac,
            host_if: format!("vb{n:010x}"),
            container_if: format!("tb{n:010x}"),
            vlan,
            mtu: 1500,
            created_at: 0,
            lease: 0,
            limits: Default::default(),
            own_limits: None,
            allow_spoofing: false,
        }
    }

    fn write(store: &dyn Store, e: &EndpointRecord) {
        store
            .txn(Txn {
                success: vec![Op::put(endpoint_key(&e.id), encode(e))],
                ..Default::default()
            })
            .unwrap();
    }

    fn remove(store: &dyn Store, e: &EndpointRecord) {
        store
            .txn(Txn {
                success: vec![Op::Delete(endpoint_key(&e.id))],
                ..Default::default()
            })
            .unwrap();
    }

    type Answer = (u16, std::net::Ipv4Addr, [u8; 6]);

    fn answers(dp: &FakeDataplane) -> Vec<Answer> {
        let mut v: Vec<_> = dp
            .arp
            .lock()
            .unwrap()
            .iter()
            .map(|e| (e.vlan, e.ip, e.mac))
            .collect();
        v.sort();
        v
    }

    fn answer(e: &EndpointRecord) -> Answer {
        (e.vlan, e.address.ip, e.mac.octets())
    }

    /// A local endpoint's limits changed in the store (`set-limits` run on another host of
    /// the fleet) are applied at once, not at the next full pass (an hour here).
    #[tokio::test]
    async fn a_limit_changed_in_the_store_is_applied_within_moments() {
        let dp = Arc::new(FakeDataplane::new());
        let store = counting();
        let mut local = endpoint(1, "h1", 100, 1);
        local.limits.egress_kbps = Some(8_000);
        write(&*store, &local);
        let reconciler = Reconciler::start(
            service_on(dp.clone(), store.clone()),
            Duration::from_secs(3600),
        );
        let host_if = local.host_if_name();
        let limit_of = |dp: &FakeDataplane| {
            dp.endpoints
                .lock()
                .unwrap()
                .get(&host_if)
                .map(|p| p.limits.egress_kbps)
        };
        eventually("the first pass applied 8M", || {
            limit_of(&dp) == Some(Some(8_000))
        })
        .await;
        // The view has listed the records.
        tokio::time::sleep(Duration::from_millis(200)).await;
        local.limits.egress_kbps = Some(20_000);
        write(&*store, &local);
        eventually(
            "the new limit applied without waiting for the next pass",
            || limit_of(&dp) == Some(Some(20_000)),
        )
        .await;
        reconciler.stop().await;
    }

    /// Other hosts' endpoint changes reach the ARP proxy through the watch, one flow change
    /// each: after the first listing the endpoint records are never read again, and no change
    /// is a full sync (a full pass every hour here).
    #[tokio::test]
    async fn endpoint_changes_reach_the_arp_proxy_incrementally() {
        let dp = Arc::new(FakeDataplane::new());
        let store = counting();
        let local = endpoint(1, "h1", 100, 1);
        write(&*store, &local);
        let svc = service_on(dp.clone(), store.clone());
        let reconciler = Reconciler::start(svc.clone(), Duration::from_secs(3600));
        eventually("the local endpoint answered for", || {
            answers(&dp) == vec![answer(&local)]
        })
        .await;
        // The first pass and the view's listing settle.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let reads = store.ranges("endpoints/");
        let syncs = dp.arp_syncs.load(Ordering::SeqCst);

        let remote = endpoint(2, "h2", 100, 2);
        write(&*store, &remote);
        eventually("a new endpoint of another host answered for", || {
            answers(&dp) == vec![answer(&local), answer(&remote)]
        })
        .await;
        // It moved: same address, another MAC; one answer for it, the new one.
        let moved = endpoint(2, "h3", 100, 9);
        write(&*store, &moved);
        eventually("a moved endpoint answered with its new MAC", || {
            answers(&dp) == vec![answer(&local), answer(&moved)]
        })
        .await;
        remove(&*store, &moved);
        eventually("a removed endpoint no longer answered for", || {
            answers(&dp) == vec![answer(&local)]
        })
        .await;
        assert_eq!(
            store.ranges("endpoints/"),
            reads,
            "endpoint records read again"
        );
        assert_eq!(
            dp.arp_syncs.load(Ordering::SeqCst),
            syncs,
            "a full ARP sync"
        );
        assert!(dp.arp_updates.load(Ordering::SeqCst) >= 3);
        // Each push is timed from the change's arrival (the `arp_follow` latency).
        let follow = svc.latencies().summary().remove("arp_follow");
        assert!(
            follow.is_some_and(|f| f.count >= 3),
            "arp_follow not recorded"
        );
        reconciler.stop().await;
    }

    /// A pass stuck in the datapath (a busy ovsdb-server, a host with many ports) does not
    /// hold back other hosts' endpoint changes: the ARP push runs beside it.
    #[tokio::test]
    async fn an_endpoint_change_is_pushed_while_a_pass_is_stuck() {
        let dp = Arc::new(FakeDataplane::new());
        let store = counting();
        let local = endpoint(1, "h1", 100, 1);
        write(&*store, &local);
        let reconciler = Reconciler::start(
            service_on(dp.clone(), store.clone()),
            Duration::from_millis(100),
        );
        eventually("the local endpoint answered for", || {
            answers(&dp) == vec![answer(&local)]
        })
        .await;
        dp.hold("reassert");
        // Each finished pass ends with a full ARP sync.
        let passes = dp.arp_syncs.load(Ordering::SeqCst);
        // The next pass starts and stays in reassert.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let remote = endpoint(2, "h2", 100, 2);
        write(&*store, &remote);
        eventually(
            "another host's new endpoint answered for during the pass",
            || answers(&dp) == vec![answer(&local), answer(&remote)],
        )
        .await;
        assert_eq!(
            dp.arp_syncs.load(Ordering::SeqCst),
            passes,
            "a pass finished meanwhile: the test proves nothing"
        );
        dp.release("reassert");
        reconciler.stop().await;
    }

    /// [`run`] on its own task, as the daemon runs it.
    struct Reconciler {
        stop: watch::Sender<bool>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Reconciler {
        fn start(svc: Arc<Service>, interval: Duration) -> Self {
            let (stop, shutdown) = watch::channel(false);
            let task = tokio::spawn(run(svc, interval, shutdown));
            Reconciler { stop, task }
        }

        async fn stop(self) {
            self.stop.send(true).unwrap();
            self.task.await.unwrap();
        }
    }

    fn service(dp: Arc<FakeDataplane>) -> Arc<Service> {
        service_on(dp, Arc::new(MemStore::new()))
    }

    fn service_on(dp: Arc<FakeDataplane>, store: Arc<dyn Store>) -> Arc<Service> {
        let state = State::new(store, "h1");
        let ipam = Arc::new(Ipam::new(state.clone(), IpamConfig::default()));
        Arc::new(Service::new(
            state,
            ipam,
            dp,
            NetConfig {
                vlan_range: (100, 101),
                default_mtu: 1500,
            },
        ))
    }

    fn stray_port() -> EndpointPlan {
        EndpointPlan {
            endpoint_id: "e".repeat(64),
            network_id: "n".repeat(64),
            host_id: "h1".into(),
            host_if: "vbeeeeeeeeee".into(),
            container_if: "tbeeeeeeeeee".into(),
            vlan: 100,
            mtu: 1500,
            mac: [2, 0, 0, 0, 0, 1],
            limits: Default::default(),
            ip: std::net::Ipv4Addr::new(10, 0, 0, 9),
            anti_spoof: true,
        }
    }

    async fn eventually(what: &str, cond: impl Fn() -> bool) {
        for _ in 0..200 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{what}: not within 2 s");
    }

    /// Answers only on VLANs with a port on this host: another VLAN's endpoints are not
    /// installed; the first local port on a VLAN brings its answers, the last one takes them.
    #[tokio::test]
    async fn answers_only_on_vlans_with_a_local_port() {
        let dp = Arc::new(FakeDataplane::new());
        let store = counting();
        let here = endpoint(1, "h1", 100, 1);
        let there = endpoint(2, "h2", 100, 2);
        let elsewhere = endpoint(3, "h2", 101, 3);
        for e in [&here, &there, &elsewhere] {
            write(&*store, e);
        }
        let reconciler = Reconciler::start(
            service_on(dp.clone(), store.clone()),
            Duration::from_secs(3600),
        );
        eventually("VLAN 100 answered for, VLAN 101 not", || {
            answers(&dp) == vec![answer(&here), answer(&there)]
        })
        .await;
        let local_101 = endpoint(4, "h1", 101, 4);
        write(&*store, &local_101);
        eventually(
            "the first local port on VLAN 101 brings its answers",
            || {
                answers(&dp)
                    == vec![
                        answer(&here),
                        answer(&there),
                        answer(&elsewhere),
                        answer(&local_101),
                    ]
            },
        )
        .await;
        remove(&*store, &here);
        eventually("the last local port on VLAN 100 takes its answers", || {
            answers(&dp) == vec![answer(&elsewhere), answer(&local_101)]
        })
        .await;
        reconciler.stop().await;
    }

    /// OVS down at start: nothing is re-asserted until it is reachable, then at once (not
    /// after a whole interval); shutdown ends the loop.
    #[tokio::test]
    async fn reasserts_when_ovs_appears_and_stops_on_shutdown() {
        let dp = Arc::new(FakeDataplane::new());
        dp.set_down(true);
        dp.endpoints
            .lock()
            .unwrap()
            .insert(stray_port().host_if, stray_port());
        let reconciler = Reconciler::start(service(dp.clone()), Duration::from_secs(3600));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(dp.endpoints.lock().unwrap().len(), 1, "touched while down");
        dp.set_down(false);
        eventually("stray port removed", || {
            dp.endpoints.lock().unwrap().is_empty()
        })
        .await;
        tokio::time::timeout(Duration::from_secs(2), reconciler.stop())
            .await
            .expect("loop ended on shutdown");
    }

    /// Drift while OVS stays up is repaired at the next interval.
    #[tokio::test]
    async fn repairs_drift_every_interval() {
        let dp = Arc::new(FakeDataplane::new());
        let reconciler = Reconciler::start(service(dp.clone()), Duration::from_millis(50));
        tokio::time::sleep(Duration::from_millis(100)).await;
        dp.create_endpoint(&stray_port()).await.unwrap();
        eventually("drift repaired", || dp.endpoints.lock().unwrap().is_empty()).await;
        reconciler.stop().await;
    }
}
