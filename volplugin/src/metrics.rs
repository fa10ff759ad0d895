//! volplugin's own figures, read from the service at scrape time.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::service::VolumeService;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    volume: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabel {
    pool: String,
}

/// Fill of the backend's pools (lvm-thin): `berth_vol_pool_data_percent{pool="vg/pool"}` and
/// `..._metadata_percent`, read by ioctl at scrape time.
fn register_pools(metrics: &plugin_transport::metrics::Metrics, svc: Arc<VolumeService>) {
    type Percent = Gauge<f64, std::sync::atomic::AtomicU64>;
    let data: Family<PoolLabel, Percent> = Family::default();
    let meta: Family<PoolLabel, Percent> = Family::default();
    metrics.register(
        "pool_data_percent",
        "Data space used in each thin pool, percent",
        data.clone(),
    );
    metrics.register(
        "pool_metadata_percent",
        "Metadata space used in each thin pool, percent",
        meta.clone(),
    );
    metrics.on_scrape(move || {
        data.clear();
        meta.clear();
        for p in svc.pools() {
            let label = PoolLabel { pool: p.pool };
            data.get_or_create(&label).set(p.data_percent);
            meta.get_or_create(&label).set(p.metadata_percent);
        }
    });
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VolumeLabel {
    volume: String,
}

pub fn register(metrics: &plugin_transport::metrics::Metrics, svc: Arc<VolumeService>) {
    register_pools(metrics, svc.clone());
    let volumes: Gauge = Gauge::default();
    let mounted: Gauge = Gauge::default();
    let size: Family<VolumeLabel, Gauge> = Family::default();
    let allocated: Family<VolumeLabel, Gauge> = Family::default();
    let used: Family<VolumeLabel, Gauge> = Family::default();
    let mounts: Family<VolumeLabel, Gauge> = Family::default();
    metrics.register("volumes", "Volumes this daemon manages", volumes.clone());
    metrics.register(
        "volumes_mounted",
        "Volumes mounted by at least one container",
        mounted.clone(),
    );
    metrics.register(
        "volume_size_bytes",
        "Size of each volume as created",
        size.clone(),
    );
    metrics.register(
        "volume_allocated_bytes",
        "Backing storage each volume really takes",
        allocated.clone(),
    );
    metrics.register(
        "volume_used_bytes",
        "Filesystem bytes used in each mounted volume (statvfs)",
        used.clone(),
    );
    metrics.register(
        "volume_mounts",
        "Outstanding Docker mounts of each volume",
        mounts.clone(),
    );
    let limit: Family<LimitLabels, Gauge> = Family::default();
    let observed: Family<LimitLabels, Gauge> = Family::default();
    metrics.register(
        "volume_io_limit",
        "Configured IO limit of each volume (kind: read_bps, write_bps in bytes/s; read_iops, write_iops); absent = unlimited",
        limit.clone(),
    );
    metrics.register(
        "volume_io_observed",
        "IO rate the containers using each volume did over the last 2 s, from their cgroups (same kinds and units as volume_io_limit)",
        observed.clone(),
    );
    metrics.on_scrape(move || {
        let Ok(list) = svc.list() else { return };
        // Volumes removed since the last scrape must disappear, not linger with old values.
        for family in [&size, &allocated, &used, &mounts] {
            family.clear();
        }
        limit.clear();
        observed.clear();
        volumes.set(list.len() as i64);
        mounted.set(list.iter().filter(|v| v.mounts > 0).count() as i64);
        for v in &list {
            let label = VolumeLabel {
                volume: v.name.clone(),
            };
            size.get_or_create(&label).set(v.size_bytes as i64);
            if let Some(a) = v.allocated_bytes {
                allocated.get_or_create(&label).set(a as i64);
            }
            if let Some(u) = v.used_bytes {
                used.get_or_create(&label).set(u as i64);
            }
            mounts.get_or_create(&label).set(i64::from(v.mounts));
            let kinds = [
                (
                    "read_bps",
                    v.limits.read_bps,
                    v.observed.map(|o| o.read_bytes_per_second),
                ),
                (
                    "write_bps",
                    v.limits.write_bps,
                    v.observed.map(|o| o.write_bytes_per_second),
                ),
                (
                    "read_iops",
                    v.limits.read_iops,
                    v.observed.map(|o| o.read_iops),
                ),
                (
                    "write_iops",
                    v.limits.write_iops,
                    v.observed.map(|o| o.write_iops),
                ),
            ];
            for (kind, configured, seen) in kinds {
                let labels = LimitLabels {
                    volume: v.name.clone(),
                    kind: kind.to_string(),
                };
                if let Some(n) = configured {
                    limit.get_or_create(&labels).set(n as i64);
                }
                if let Some(n) = seen {
                    observed.get_or_create(&labels).set(n as i64);
                }
            }
        }
    });
}
