//! The reconciler: re-asserts the datapath when OVS (re)appears and then every interval, so
//! what a restarted ovs-vswitchd or a new ovsdb-server lost comes back without a request; and
//! brings the ARP proxy to the store as soon as the store reports an endpoint change (any
//! host's), so other hosts' new and moved endpoints are answered within moments.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::network::Service;

/// How often OVS is looked for while it is unreachable: it comes back within a pass.
const RECONNECT_POLL: Duration = Duration::from_millis(200);
/// Endpoint changes arriving this close together are handled by one ARP pass (a burst of
/// container starts is one pass, not one per container).
const COALESCE: Duration = Duration::from_millis(20);
/// Pause before the endpoint watch is set up again after the store lost it (etcd down).
const REWATCH: Duration = Duration::from_secs(1);

/// Runs until `shutdown` turns true. A failure is logged once until it changes or heals, so
/// an OVS that stays down does not flood the log.
pub async fn run(svc: Arc<Service>, interval: Duration, mut shutdown: watch::Receiver<bool>) {
    let changed = Arc::new(Notify::new());
    let stop = Arc::new(AtomicBool::new(false));
    watch_endpoints(svc.clone(), changed.clone(), stop.clone());
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
        // Until the next full pass: ARP-only passes whenever endpoints change.
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next_pass) => break,
                _ = changed.notified() => {
                    if !was_connected {
                        continue;
                    }
                    tokio::time::sleep(COALESCE).await;
                    match svc.sync_arp().await {
                        Ok((added, removed)) if added + removed > 0 => {
                            debug!(added, removed, "ARP proxy flows follow an endpoint change");
                        }
                        Ok(_) => {}
                        // The next full pass retries and reports it.
                        Err(e) => debug!(error = %e, "ARP proxy update failed"),
                    }
                }
                // (The guard wait_for returns must not live across the other branch's awaits.)
                _ = async { drop(shutdown.wait_for(|s| *s).await) } => {
                    stop.store(true, Ordering::SeqCst);
                    return;
                }
            }
        }
    }
}

/// A thread that turns the store's endpoint changes into `changed` notifications, for as
/// long as `stop` is false (it looks every second). When the store drops the watch (etcd
/// unreachable), it is set up again after [`REWATCH`], followed by one notification for what
/// may have been missed meanwhile; the periodic pass covers the gap.
fn watch_endpoints(svc: Arc<Service>, changed: Arc<Notify>, stop: Arc<AtomicBool>) {
    let spawned = std::thread::Builder::new()
        .name("endpoint-watch".into())
        .spawn(move || {
            let mut first = true;
            while !stop.load(Ordering::SeqCst) {
                match svc.state().watch_endpoints() {
                    Ok(rx) => {
                        if !first {
                            changed.notify_one();
                        }
                        first = false;
                        loop {
                            match rx.recv_timeout(Duration::from_secs(1)) {
                                Ok(_) => changed.notify_one(),
                                Err(RecvTimeoutError::Timeout) => {
                                    if stop.load(Ordering::SeqCst) {
                                        return;
                                    }
                                }
                                Err(RecvTimeoutError::Disconnected) => break,
                            }
                        }
                        debug!("endpoint watch ended; setting it up again");
                    }
                    Err(e) => debug!(error = %e, "endpoint watch not set up; retrying"),
                }
                std::thread::sleep(REWATCH);
            }
        });
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
    use crate::network::NetConfig;
    use crate::state::State;
    use crate::store::memory::MemStore;

    fn service(dp: Arc<FakeDataplane>) -> Arc<Service> {
        let state = State::new(Arc::new(MemStore::new()), "h1");
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
        let (stop, shutdown) = watch::channel(false);
        let task = tokio::spawn(run(
            service(dp.clone()),
            Duration::from_secs(3600),
            shutdown,
        ));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(dp.endpoints.lock().unwrap().len(), 1, "touched while down");
        dp.set_down(false);
        eventually("stray port removed", || {
            dp.endpoints.lock().unwrap().is_empty()
        })
        .await;
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .expect("loop ended on shutdown")
            .unwrap();
    }

    /// Drift while OVS stays up is repaired at the next interval.
    #[tokio::test]
    async fn repairs_drift_every_interval() {
        let dp = Arc::new(FakeDataplane::new());
        let (stop, shutdown) = watch::channel(false);
        let task = tokio::spawn(run(
            service(dp.clone()),
            Duration::from_millis(50),
            shutdown,
        ));
        tokio::time::sleep(Duration::from_millis(100)).await;
        dp.create_endpoint(&stray_port()).await.unwrap();
        eventually("drift repaired", || dp.endpoints.lock().unwrap().is_empty()).await;
        stop.send(true).unwrap();
        task.await.unwrap();
    }
}
