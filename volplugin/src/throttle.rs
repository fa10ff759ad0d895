//! Makes each volume's IO limits follow it into every container that mounts it.
//!
//! Runs in the background, never inside a plugin handler: Docker's events stream says when a
//! container starts or dies, container inspect says which berth-vol volumes it mounts and its
//! pid, and the pid leads to its cgroup, where the throttles for the volume's current device
//! (`MAJ:MIN`, resolved at every apply) are written. At start and after every reconnect all
//! running containers are reconciled, so containers that started while volplugin or Docker
//! was down get their limits too. Limit changes are pushed to running containers at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use plugin_transport::docker::{DockerClient, DockerError};
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::cgroup::{CgroupFs, IoCgroup, IoCounters};
use crate::service::{ObservedIo, VolumeService};

/// The driver name Docker records for our volumes.
pub const DRIVER: &str = "berth-vol";
const DOCKER_TIMEOUT: Duration = Duration::from_secs(10);
const SAMPLE_EVERY: Duration = Duration::from_secs(2);

struct Tracked {
    cgroup: IoCgroup,
    volumes: Vec<String>,
}

pub struct Throttler {
    svc: Arc<VolumeService>,
    docker: DockerClient,
    cgroups: CgroupFs,
    tracked: HashMap<String, Tracked>,
    /// (container, volume) → last counters, for rates.
    last: HashMap<(String, String), (Instant, IoCounters)>,
}

/// Sends the names of volumes whose limits changed.
pub type LimitsChanged = mpsc::UnboundedSender<String>;

impl Throttler {
    pub fn new(svc: Arc<VolumeService>, docker: DockerClient, cgroups: CgroupFs) -> Self {
        Self {
            svc,
            docker,
            cgroups,
            tracked: HashMap::new(),
            last: HashMap::new(),
        }
    }

    pub async fn run(
        mut self,
        mut changes: mpsc::UnboundedReceiver<String>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut backoff = Duration::from_millis(500);
        let mut sampler = tokio::time::interval(SAMPLE_EVERY);
        loop {
            let filters = r#"{"type":["container"],"event":["start","die"]}"#;
            let stream = self.docker.events(filters, DOCKER_TIMEOUT).await;
            let mut events = match stream {
                Ok(events) => {
                    backoff = Duration::from_millis(500);
                    // Subscribed first, then reconciled: nothing can slip between the two.
                    if let Err(e) = self.reconcile().await {
                        warn!(error = %e, "reconciling running containers failed; retrying");
                        continue;
                    }
                    Some(events)
                }
                Err(e) => {
                    debug!(error = %e, "Docker events not available; volume API unaffected, retrying");
                    None
                }
            };
            // Serve events (if connected) until the stream ends; keep applying limit changes
            // and sampling either way: they need the cgroups, not Docker.
            let retry_at = tokio::time::Instant::now() + backoff;
            loop {
                tokio::select! {
                    event = next_event(&mut events) => match event {
                        Some(Ok(event)) => self.handle_event(&event).await,
                        Some(Err(e)) => { warn!(error = %e, "Docker events stream failed; reconnecting"); break; }
                        None => { info!("Docker events stream ended (Docker stopped?); reconnecting"); break; }
                    },
                    _ = tokio::time::sleep_until(retry_at), if events.is_none() => break,
                    Some(volume) = changes.recv() => self.apply_volume(&volume),
                    _ = sampler.tick() => self.sample(),
                    _ = plugin_transport::shutdown::requested(&mut shutdown) => return,
                }
            }
            if events.is_none() {
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }

    async fn reconcile(&mut self) -> Result<(), DockerError> {
        let list = self
            .docker
            .get_json("/containers/json", DOCKER_TIMEOUT)
            .await?;
        let running: Vec<String> = list
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["Id"].as_str().map(str::to_string))
            .collect();
        self.tracked.retain(|id, _| running.contains(id));
        for id in &running {
            self.track(id).await;
        }
        info!(
            containers = running.len(),
            with_volumes = self.tracked.len(),
            "reconciled IO limits of running containers"
        );
        Ok(())
    }

    async fn handle_event(&mut self, event: &Value) {
        let action = event["Action"]
            .as_str()
            .or_else(|| event["status"].as_str())
            .unwrap_or_default();
        let Some(id) = event["Actor"]["ID"]
            .as_str()
            .or_else(|| event["id"].as_str())
        else {
            return;
        };
        match action {
            "start" => self.track(id).await,
            "die" => {
                self.tracked.remove(id);
                self.last.retain(|(c, _), _| c != id);
            }
            _ => {}
        }
    }

    /// Learns which of our volumes a running container mounts and applies their limits.
    async fn track(&mut self, id: &str) {
        let inspect = match self
            .docker
            .get_json(&format!("/containers/{id}/json"), DOCKER_TIMEOUT)
            .await
        {
            Ok(v) => v,
            Err(e) if e.is_not_found() => return,
            Err(e) => {
                warn!(container = id, error = %e, "inspect failed; limits applied at the next reconcile");
                return;
            }
        };
        let volumes: Vec<String> = inspect["Mounts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["Type"] == "volume" && m["Driver"] == DRIVER)
            .filter_map(|m| m["Name"].as_str().map(str::to_string))
            .collect();
        let pid = inspect["State"]["Pid"].as_u64().unwrap_or(0) as u32;
        if volumes.is_empty() || pid == 0 || inspect["State"]["Running"] != true {
            return;
        }
        let cgroup = match self.cgroups.of_pid(pid) {
            Ok(cg) => cg,
            Err(e) => {
                warn!(container = id, pid, error = %e, "no IO cgroup for the container; its volumes are not throttled");
                return;
            }
        };
        self.tracked.insert(
            id.to_string(),
            Tracked {
                cgroup,
                volumes: volumes.clone(),
            },
        );
        for volume in &volumes {
            self.apply(id, volume);
        }
    }

    fn apply_volume(&mut self, volume: &str) {
        let ids: Vec<String> = self
            .tracked
            .iter()
            .filter(|(_, t)| t.volumes.iter().any(|v| v == volume))
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            self.apply(&id, volume);
        }
    }

    fn apply(&self, id: &str, volume: &str) {
        let Some(tracked) = self.tracked.get(id) else {
            return;
        };
        let info = match self.svc.get(volume) {
            Ok(info) => info,
            Err(e) => return debug!(volume, error = %e, "volume gone; nothing to throttle"),
        };
        let Some(device) = info.device else {
            return debug!(
                volume,
                container = id,
                "volume not attached; nothing to throttle"
            );
        };
        match tracked.cgroup.apply(&device, &info.limits) {
            Ok(()) => {
                info!(volume, container = &id[..id.len().min(12)], device = %device, limits = %info.limits.describe(), "IO limits applied")
            }
            Err(e) => warn!(volume, container = id, error = %e, "writing IO limits failed"),
        }
    }

    /// Per-volume rates from the containers' cgroup counters since the last sample.
    fn sample(&mut self) {
        let now = Instant::now();
        let mut observed: HashMap<String, ObservedIo> = HashMap::new();
        let mut devices: HashMap<String, Option<String>> = HashMap::new();
        for (id, tracked) in &self.tracked {
            for volume in &tracked.volumes {
                let device = devices
                    .entry(volume.clone())
                    .or_insert_with(|| self.svc.get(volume).ok().and_then(|i| i.device))
                    .clone();
                let Some(device) = device else { continue };
                let Ok(counters) = tracked.cgroup.counters(&device) else {
                    continue;
                };
                let entry = observed.entry(volume.clone()).or_default();
                entry.containers += 1;
                let key = (id.clone(), volume.clone());
                if let Some((then, prev)) = self.last.get(&key) {
                    let secs = now.duration_since(*then).as_secs_f64().max(0.001);
                    let rate = |a: u64, b: u64| (a.saturating_sub(b) as f64 / secs) as u64;
                    entry.read_bytes_per_second += rate(counters.read_bytes, prev.read_bytes);
                    entry.write_bytes_per_second += rate(counters.write_bytes, prev.write_bytes);
                    entry.read_iops += rate(counters.read_ios, prev.read_ios);
                    entry.write_iops += rate(counters.write_ios, prev.write_ios);
                }
                self.last.insert(key, (now, counters));
            }
        }
        self.svc.record_observed(observed);
    }
}

async fn next_event(
    events: &mut Option<plugin_transport::docker::EventStream>,
) -> Option<Result<Value, DockerError>> {
    match events {
        Some(stream) => stream.next().await,
        None => std::future::pending().await,
    }
}
