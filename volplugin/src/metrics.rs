//! volplugin's own figures, read from the service at scrape time.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::service::VolumeService;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VolumeLabel {
    volume: String,
}

pub fn register(metrics: &plugin_transport::metrics::Metrics, svc: Arc<VolumeService>) {
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
    metrics.on_scrape(move || {
        let Ok(list) = svc.list() else { return };
        // Volumes removed since the last scrape must disappear, not linger with old values.
        for family in [&size, &allocated, &used, &mounts] {
            family.clear();
        }
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
        }
    });
}
