//! netplugin's own figures: counts read at scrape time, and endpoint setup latency with
//! sub-millisecond buckets (the transport's per-request histogram is coarser).

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::network::Service;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabel {
    pool: String,
    subnet: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabel {
    endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabel {
    endpoint: String,
    direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: String,
    quantile: String,
}

pub fn register(metrics: &plugin_transport::metrics::Metrics, svc: Arc<Service>) {
    let networks: Gauge = Gauge::default();
    let endpoints: Gauge = Gauge::default();
    let ovs_up: Gauge = Gauge::default();
    let allocated: Family<PoolLabel, Gauge> = Family::default();
    let free: Family<PoolLabel, Gauge> = Family::default();
    let latency: Family<OpLabel, Gauge<f64, std::sync::atomic::AtomicU64>> = Family::default();
    metrics.register(
        "networks",
        "berth-net networks in the store",
        networks.clone(),
    );
    metrics.register(
        "endpoints",
        "Endpoints in the store (all hosts)",
        endpoints.clone(),
    );
    metrics.register(
        "ovs_connected",
        "1 while the OVSDB connection is up",
        ovs_up.clone(),
    );
    metrics.register(
        "pool_allocated_addresses",
        "Addresses held in each pool",
        allocated.clone(),
    );
    metrics.register(
        "pool_free_addresses",
        "Addresses still free in each pool",
        free.clone(),
    );
    metrics.register(
        "endpoint_setup_milliseconds",
        "Server-side latency of CreateEndpoint, Join and RequestAddress (op) over the last 20000 calls (quantile 0.5, 0.99)",
        latency.clone(),
    );
    let store_up: Gauge = Gauge::default();
    let lease_held: Gauge = Gauge::default();
    let pending: Gauge = Gauge::default();
    metrics.register(
        "store_up",
        "1 while the state store (embedded or etcd) answers",
        store_up.clone(),
    );
    metrics.register(
        "host_lease_held",
        "1 while this host holds its lease in the store (fleet liveness)",
        lease_held.clone(),
    );
    metrics.register(
        "store_pending_operations",
        "Allocations or releases whose outcome was lost with the store, to be finished when it answers",
        pending.clone(),
    );
    let lost_races: Counter = Counter::default();
    metrics.register(
        "ipam_lost_races",
        "Address allocation transactions that lost a compare-and-swap race with another host and were retried",
        lost_races.clone(),
    );
    let released: Family<ReasonLabel, Counter> = Family::default();
    metrics.register(
        "endpoints_released",
        "Endpoints of this host released outside Docker's DeleteEndpoint: reason=leaked (Docker no longer listed them for --release-leaked-after), reason=admin (`netplugin endpoint release`)",
        released.clone(),
    );
    let addresses_released: Counter = Counter::default();
    metrics.register(
        "addresses_released",
        "Addresses this host held for no endpoint that Docker used nowhere, released by the leak sweep after --release-leaked-after (a ReleaseAddress Docker sent while the plugin was down)",
        addresses_released.clone(),
    );
    let dropped: Family<DropLabel, Gauge> = Family::default();
    metrics.register(
        "rate_limit_dropped_packets",
        "Packets a rate-limited endpoint's meter dropped since the meter was created (direction egress: sent by the container, ingress: sent to it), as of the last reconcile pass",
        dropped.clone(),
    );
    let rate: Family<DropLabel, Gauge> = Family::default();
    metrics.register(
        "rate_limit_kbps",
        "The limit in force on each rate-limited endpoint of this host, kbit/s (direction egress: sent by the container, ingress: sent to it), as of the last reconcile pass; follows `set-limits`",
        rate.clone(),
    );
    let spoofed: Family<EndpointLabel, Gauge> = Family::default();
    metrics.register(
        "spoofed_dropped_packets",
        "Packets an endpoint's port dropped because their source MAC or address was not the endpoint's (anti-spoofing; networks with allow_spoofing=true have none), since its flows were installed, as of the last reconcile pass",
        spoofed.clone(),
    );
    metrics.on_scrape(move || {
        spoofed.clear();
        for d in svc.dataplane().spoof_drops() {
            spoofed
                .get_or_create(&EndpointLabel {
                    endpoint: crate::state::short(&d.endpoint_id).to_string(),
                })
                .set(d.packets as i64);
        }
        dropped.clear();
        rate.clear();
        for d in svc.dataplane().rate_limit_drops() {
            let label = DropLabel {
                endpoint: crate::state::short(&d.endpoint_id).to_string(),
                direction: d.direction.into(),
            };
            dropped.get_or_create(&label).set(d.packets as i64);
            rate.get_or_create(&label).set(i64::from(d.rate_kbps));
        }
        let lost = svc.ipam().lost_races();
        if lost > lost_races.get() {
            lost_races.inc_by(lost - lost_races.get());
        }
        let released_addresses = svc.released_addresses();
        if released_addresses > addresses_released.get() {
            addresses_released.inc_by(released_addresses - addresses_released.get());
        }
        let (leaked, by_admin) = svc.released_counts();
        for (reason, now) in [("leaked", leaked), ("admin", by_admin)] {
            let counter = released.get_or_create(&ReasonLabel {
                reason: reason.into(),
            });
            if now > counter.get() {
                counter.inc_by(now - counter.get());
            }
        }
        ovs_up.set(i64::from(svc.dataplane().connected()));
        let st = svc.state();
        let up = st.store.revision().is_ok();
        store_up.set(i64::from(up));
        lease_held.set(i64::from(st.lease() != 0));
        pending.set(svc.ipam().pending_count() as i64);
        if !up {
            // Every read below would wait for the store's timeout.
            return;
        }
        if let Ok(n) = st.store.count("networks/") {
            networks.set(n as i64);
        }
        if let Ok(n) = st.store.count("endpoints/") {
            endpoints.set(n as i64);
        }
        allocated.clear();
        free.clear();
        if let Ok(pools) = st.pools() {
            for p in pools {
                let held = st
                    .store
                    .count(&crate::state::addr_prefix(&p.id))
                    .unwrap_or(0) as i64;
                let size = p
                    .subnet
                    .parse::<crate::ipnet::Ipv4Net>()
                    .map(|n| {
                        let (lo, hi) = n.hosts();
                        i64::from(hi - lo) + 1
                    })
                    .unwrap_or(0);
                let label = PoolLabel {
                    pool: p.id,
                    subnet: p.subnet,
                };
                allocated.get_or_create(&label).set(held);
                free.get_or_create(&label).set(size - held);
            }
        }
        for (op, s) in svc.latencies().summary() {
            for (q, v) in [("0.5", s.p50_ms), ("0.99", s.p99_ms)] {
                latency
                    .get_or_create(&OpLabel {
                        op: op.clone(),
                        quantile: q.into(),
                    })
                    .set(v);
            }
        }
    });
}
