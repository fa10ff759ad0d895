//! Fencing (issue 14 §2, `--fence-after`): a host whose lease could not be renewed for that
//! long stops its own endpoints' traffic (drop flows on their access ports, nothing deleted)
//! before the lease can expire in the store, so before any other host can see it gone and
//! reclaim its addresses. When a renewal is answered again, each fenced endpoint's address is
//! checked in the store: the fence is lifted only where the address is still this host's and
//! that endpoint's; the others stay fenced (and are logged).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;
use tracing::{info, warn};

use crate::dataplane::Dataplane;
use crate::error::NetResult;
use crate::state::{addr_key, store_op, AddrRecord, State};

pub struct Fence {
    after: Duration,
    state: State,
    dp: Arc<dyn Dataplane>,
    /// Send time of the last renewal the store answered (a renewal is valid from when it was
    /// sent, not from when its answer came).
    renewed: Mutex<Instant>,
    /// The fenced access ports.
    fenced: tokio::sync::Mutex<BTreeSet<String>>,
    /// Ports kept fenced after a re-check (logged once each).
    kept: Mutex<BTreeSet<String>>,
    /// `fenced_ports` in the metrics.
    gauge: Gauge,
}

impl Fence {
    pub fn new(after: Duration, state: State, dp: Arc<dyn Dataplane>) -> Arc<Self> {
        Arc::new(Self {
            after,
            state,
            dp,
            renewed: Mutex::new(Instant::now()),
            fenced: tokio::sync::Mutex::new(BTreeSet::new()),
            kept: Mutex::new(BTreeSet::new()),
            gauge: Gauge::default(),
        })
    }

    /// The gauge of fenced ports, for the metrics registry.
    pub fn gauge(&self) -> Gauge {
        self.gauge.clone()
    }

    pub async fn fenced(&self) -> BTreeSet<String> {
        self.fenced.lock().await.clone()
    }

    /// A renewal sent at `sent` was answered: the lease is held.
    pub fn renewed(&self, sent: Instant) {
        let mut r = self.renewed.lock().unwrap_or_else(|e| e.into_inner());
        if sent > *r {
            *r = sent;
        }
    }

    fn since_renewal(&self) -> Duration {
        self.renewed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
    }

    /// This host's endpoint ports now (labelled with its host id, or unlabelled ones of
    /// older releases), from the OVSDB cache: nothing here needs the store.
    fn own_ports(&self) -> BTreeSet<String> {
        self.dp
            .ports()
            .into_iter()
            .filter(|p| p.endpoint_id.is_some())
            .filter(|p| p.host_id.as_deref().is_none_or(|h| h == self.state.host_id))
            .map(|p| p.name)
            .collect()
    }

    /// The watchdog's tick: fences every own port once no renewal has been answered for
    /// `--fence-after`. True while fenced for being cut off.
    pub async fn check(&self) -> bool {
        let since = self.since_renewal();
        if since < self.after {
            return false;
        }
        let mut fenced = self.fenced.lock().await;
        let ports = self.own_ports();
        if ports.is_subset(&fenced) {
            return true;
        }
        let all: BTreeSet<String> = fenced.union(&ports).cloned().collect();
        match self.dp.fence(&all).await {
            Ok(n) => {
                warn!(ports = n, cut_off_for = ?since, fence_after = ?self.after,
                    "fenced: host lease not renewed for --fence-after; this host's endpoints' traffic is dropped until the lease is back and each address is checked");
                *fenced = all;
                self.gauge.set(fenced.len() as i64);
            }
            Err(e) => warn!(error = %e, "fencing failed (OVS); retrying"),
        }
        true
    }

    /// After a renewal was answered: lifts the fence of every port whose endpoint still holds
    /// its address in the store; the others stay fenced.
    pub async fn recover(&self) {
        let mut fenced = self.fenced.lock().await;
        if fenced.is_empty() || self.since_renewal() >= self.after {
            return;
        }
        let state = self.state.clone();
        let ours = match store_op("fence re-check", move || still_ours(&state)).await {
            Ok(o) => o,
            Err(e) => {
                warn!(error = %e, "fence re-check failed; the fence stays for now");
                return;
            }
        };
        // Ports gone meanwhile need no fence (their port number may be reused).
        let present = self.own_ports();
        let keep: BTreeSet<String> = fenced
            .iter()
            .filter(|p| present.contains(*p) && !ours.contains(*p))
            .cloned()
            .collect();
        if let Err(e) = self.dp.fence(&keep).await {
            warn!(error = %e, "lifting the fence failed (OVS); retrying");
            return;
        }
        let lifted = fenced.len() - keep.len();
        if lifted > 0 {
            info!(
                ports = lifted,
                "fence lifted: lease back and addresses still held by this host"
            );
        }
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        for p in keep.difference(&kept) {
            warn!(port = %p, "stays fenced: its address is no longer held by this host's endpoint (reclaimed while cut off, or taken by another host)");
        }
        kept.clone_from(&keep);
        *fenced = keep;
        self.gauge.set(fenced.len() as i64);
    }
}

/// The access ports of this host's endpoints whose address record names this host and that
/// endpoint (or no endpoint yet).
pub fn still_ours(state: &State) -> NetResult<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    for e in state.endpoints()? {
        if e.host_id != state.host_id {
            continue;
        }
        let pool = state.network(&e.network_id)?.and_then(|n| n.pool_id);
        let held = match pool {
            Some(pool) => state
                .get::<AddrRecord>(&addr_key(&pool, e.address.ip))?
                .is_some_and(|(a, _)| {
                    a.host_id == state.host_id
                        && a.endpoint_id.as_deref().is_none_or(|id| id == e.id)
                }),
            None => true,
        };
        if held {
            out.insert(e.host_if.clone());
        }
    }
    Ok(out)
}

/// The watchdog: checks twice a second whether this host has been cut off for too long.
pub async fn watchdog(fence: Arc<Fence>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    loop {
        fence.check().await;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}
