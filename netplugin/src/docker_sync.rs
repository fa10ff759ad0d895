//! What Docker knows of our endpoints, asked in the background and by admin commands, never
//! inside a plugin handler (dockerd waits on its plugins at boot: a deadlock).
//!
//! - The container an endpoint serves is written on its OVS interface (`berth-container-id`),
//!   so `ovs-vsctl find Interface external_ids:berth-container-id=...` finds a container's port.
//! - An endpoint of this host that Docker no longer lists on a network Docker knows was leaked
//!   (the plugin was down when Docker deleted it, dockerd crashed mid-way, ...). Once it has been
//!   missing for the grace period, its port, record and address are released, so the address
//!   can be used again and the port stops holding the VLAN.
//! - Endpoints on networks this Docker does not know are never touched: a different dockerd on
//!   the socket (or none) must not make us release what another one uses.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use plugin_transport::docker::{encode_query, DockerClient, DockerError};
use serde_json::Value;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::network::{ReleaseReason, Service, UnlinkedAddress};
use crate::state::{now, short, EndpointRecord};

/// The driver name Docker records for our networks.
pub const DRIVER: &str = "berth-net";
const DOCKER_TIMEOUT: Duration = Duration::from_secs(10);

/// Docker's side of one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attachment {
    /// Docker does not know the endpoint's network: not ours to judge.
    UnknownNetwork,
    /// Docker knows the network but not the endpoint.
    Missing,
    /// Docker lists it, with the container it serves (None: an endpoint without a container).
    Listed(Option<String>),
}

/// Docker's networks of our driver: network id → endpoint id → container id; and the
/// addresses Docker uses on each (its endpoints', the gateway, `--aux-address`es).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DockerView {
    pub networks: BTreeMap<String, BTreeMap<String, Option<String>>>,
    pub addresses: BTreeMap<String, BTreeSet<Ipv4Addr>>,
}

impl DockerView {
    /// From `GET /networks/{id}` answers. `Containers` is keyed by container id, or by
    /// `ep-<endpoint id>` for an endpoint that has no container.
    pub fn from_inspects(inspects: &[Value]) -> Self {
        let mut networks = BTreeMap::new();
        let mut addresses = BTreeMap::new();
        for net in inspects {
            let Some(id) = net["Id"].as_str() else {
                continue;
            };
            addresses.insert(id.to_string(), addresses_in_use(net));
            let endpoints = net["Containers"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(key, ep)| {
                    let endpoint = ep["EndpointID"].as_str()?.to_string();
                    let container = (!key.starts_with("ep-")).then(|| key.clone());
                    Some((endpoint, container))
                })
                .collect();
            networks.insert(id.to_string(), endpoints);
        }
        Self {
            networks,
            addresses,
        }
    }

    /// Whether Docker uses `ip` on any of `networks` (None: it knows none of them, so it is
    /// not ours to judge).
    pub fn uses_address<'a>(
        &self,
        mut networks: impl Iterator<Item = &'a String>,
        ip: Ipv4Addr,
    ) -> Option<bool> {
        let mut known = false;
        let used = networks.any(|n| match self.addresses.get(n) {
            Some(set) => {
                known = true;
                set.contains(&ip)
            }
            None => false,
        });
        known.then_some(used)
    }

    pub fn attachment(&self, network_id: &str, endpoint_id: &str) -> Attachment {
        match self.networks.get(network_id) {
            None => Attachment::UnknownNetwork,
            Some(endpoints) => match endpoints.get(endpoint_id) {
                None => Attachment::Missing,
                Some(container) => Attachment::Listed(container.clone()),
            },
        }
    }
}

/// The addresses a network inspect shows in use: each endpoint's `IPv4Address`, and the IPAM
/// config's `Gateway` and `AuxiliaryAddresses` (Docker holds those without an endpoint).
fn addresses_in_use(net: &Value) -> BTreeSet<Ipv4Addr> {
    let plain = |v: &Value| -> Option<Ipv4Addr> { v.as_str()?.split('/').next()?.parse().ok() };
    let endpoints = net["Containers"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(_, ep)| plain(&ep["IPv4Address"]));
    let config = net["IPAM"]["Config"].as_array().into_iter().flatten();
    let reserved = config.flat_map(|c| {
        let aux = c["AuxiliaryAddresses"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(_, v)| plain(v));
        plain(&c["Gateway"]).into_iter().chain(aux)
    });
    endpoints.chain(reserved).collect()
}

/// Docker's current view: its berth-net networks, each inspected.
pub async fn fetch_view(docker: &DockerClient) -> Result<DockerView, DockerError> {
    let filters = format!(r#"{{"driver":{{"{DRIVER}":true}}}}"#);
    let list = docker
        .get_json(
            &format!("/networks?filters={}", encode_query(&filters)),
            DOCKER_TIMEOUT,
        )
        .await?;
    let mut inspects = Vec::new();
    for id in list
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n["Id"].as_str())
    {
        match docker
            .get_json(&format!("/networks/{id}"), DOCKER_TIMEOUT)
            .await
        {
            Ok(v) => inspects.push(v),
            // Removed between the list and the inspect.
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(DockerView::from_inspects(&inspects))
}

/// What one sweep does, decided from Docker's view and this host's endpoints.
#[derive(Debug, Default, PartialEq)]
pub struct SweepPlan {
    /// Endpoints whose interface lacks their container's id, with the id.
    pub label: Vec<(EndpointRecord, String)>,
    /// Endpoints missing from Docker for the whole grace period.
    pub release: Vec<EndpointRecord>,
}

/// Remembers since when each endpoint has been missing from Docker.
pub struct LeakTracker {
    /// None: leaked endpoints are reported, never released.
    grace: Option<Duration>,
    missing_since: HashMap<String, Instant>,
    reported: HashMap<String, Instant>,
    /// The same for addresses held for no endpoint, by record key.
    unused_since: HashMap<String, Instant>,
    reported_addresses: HashMap<String, Instant>,
}

impl LeakTracker {
    pub fn new(grace: Option<Duration>) -> Self {
        Self {
            grace,
            missing_since: HashMap::new(),
            reported: HashMap::new(),
            unused_since: HashMap::new(),
            reported_addresses: HashMap::new(),
        }
    }

    /// This host's addresses held for no endpoint (`unlinked`) that Docker has used on none of
    /// the networks of their pool (`pools`: network id → pool id) for the grace period, and
    /// are at least that old: a ReleaseAddress Docker sent while the plugin was down (it
    /// ignores the error). Docker holds an address without an endpoint only for a moment
    /// (RequestAddress, then CreateEndpoint), or as a gateway or `--aux-address`, which it
    /// shows. Pools of networks this Docker does not know are never touched.
    pub fn plan_addresses(
        &mut self,
        view: &DockerView,
        unlinked: &[UnlinkedAddress],
        pools: &HashMap<String, String>,
        now: Instant,
        now_unix: u64,
    ) -> Vec<UnlinkedAddress> {
        let mut release = Vec::new();
        let mut still_unused = HashMap::new();
        for a in unlinked {
            let networks = pools
                .iter()
                .filter(|(_, pool)| **pool == a.pool_id)
                .map(|(net, _)| net);
            if view.uses_address(networks, a.address) != Some(false) {
                continue;
            }
            let since = *self.unused_since.get(&a.key).unwrap_or(&now);
            still_unused.insert(a.key.clone(), since);
            let Some(grace) = self.grace else {
                if !self.reported_addresses.contains_key(&a.key) {
                    warn!(address = %a.address, pool = %a.pool_id,
                        "this host holds an address for no endpoint and Docker does not use it (a lost ReleaseAddress?); it stays held without --release-leaked-after");
                    self.reported_addresses.insert(a.key.clone(), now);
                }
                continue;
            };
            let old_enough = now_unix.saturating_sub(a.created_at) >= grace.as_secs();
            if old_enough && now.duration_since(since) >= grace {
                release.push(a.clone());
            }
        }
        self.reported_addresses
            .retain(|k, _| still_unused.contains_key(k));
        self.unused_since = still_unused;
        release
    }

    /// `labels`: host interface → the container id its OVS interface carries now.
    pub fn plan(
        &mut self,
        view: &DockerView,
        endpoints: &[EndpointRecord],
        labels: &HashMap<String, Option<String>>,
        now: Instant,
        now_unix: u64,
    ) -> SweepPlan {
        let mut plan = SweepPlan::default();
        let mut still_missing = HashMap::new();
        for ep in endpoints {
            match view.attachment(&ep.network_id, &ep.id) {
                Attachment::UnknownNetwork => {}
                Attachment::Listed(container) => {
                    if let (Some(container), Some(have)) =
                        (container, labels.get(&ep.host_if_name()))
                    {
                        if have.as_deref() != Some(container.as_str()) {
                            plan.label.push((ep.clone(), container));
                        }
                    }
                }
                Attachment::Missing => {
                    let since = *self.missing_since.get(&ep.id).unwrap_or(&now);
                    still_missing.insert(ep.id.clone(), since);
                    let Some(grace) = self.grace else {
                        if !self.reported.contains_key(&ep.id) {
                            warn!(endpoint = %short(&ep.id), address = %ep.address,
                                "Docker does not know this endpoint (leaked?); release it with `netplugin endpoint release`");
                            self.reported.insert(ep.id.clone(), now);
                        }
                        continue;
                    };
                    // A CreateEndpoint in flight is not in Docker's store yet: the endpoint's
                    // age counts too, not only how long this process has seen it missing.
                    let old_enough = now_unix.saturating_sub(ep.created_at) >= grace.as_secs();
                    if old_enough && now.duration_since(since) >= grace {
                        plan.release.push(ep.clone());
                    }
                }
            }
        }
        self.reported.retain(|id, _| still_missing.contains_key(id));
        self.missing_since = still_missing;
        plan
    }
}

/// The background sweep: every `interval`, labels endpoints with their containers and releases
/// leaked ones (`grace`: None = never). Docker unreachable = nothing happens.
pub async fn run(
    svc: Arc<Service>,
    docker: DockerClient,
    interval: Duration,
    grace: Option<Duration>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tracker = LeakTracker::new(grace);
    let mut docker_was_up: Option<bool> = None;
    loop {
        match fetch_view(&docker).await {
            Ok(view) => {
                if docker_was_up != Some(true) {
                    info!(socket = %docker.socket().display(), networks = view.networks.len(), "Docker reachable: endpoints checked against it");
                }
                docker_was_up = Some(true);
                if let Err(e) = sweep(&svc, &docker, &view, &mut tracker).await {
                    debug!(error = %e, "endpoint sweep incomplete; retrying");
                }
            }
            Err(e) => {
                if docker_was_up != Some(false) {
                    info!(error = %e, "Docker not reachable: leaked endpoints are not looked for until it is");
                }
                docker_was_up = Some(false);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = plugin_transport::shutdown::requested(&mut shutdown) => return,
        }
    }
}

async fn sweep(
    svc: &Service,
    docker: &DockerClient,
    view: &DockerView,
    tracker: &mut LeakTracker,
) -> crate::error::NetResult<()> {
    let endpoints = svc.local_endpoints().await?;
    let labels: HashMap<String, Option<String>> = svc
        .dataplane()
        .ports()
        .into_iter()
        .map(|p| (p.name, p.container_id))
        .collect();
    let plan = tracker.plan(view, &endpoints, &labels, Instant::now(), now());
    for (ep, container) in &plan.label {
        if let Err(e) = svc.label_container(ep, container).await {
            debug!(endpoint = %short(&ep.id), error = %e, "labelling the port with its container failed; retrying");
        }
    }
    let addresses = match svc.unlinked_addresses() {
        Some((unlinked, pools)) => {
            tracker.plan_addresses(view, &unlinked, &pools, Instant::now(), now())
        }
        None => Vec::new(),
    };
    if plan.release.is_empty() && addresses.is_empty() {
        return Ok(());
    }
    // Releasing is not undone by anything: ask Docker once more right before.
    let Ok(fresh) = fetch_view(docker).await else {
        return Ok(());
    };
    if !addresses.is_empty() {
        // The pools as of now, too: a network created meanwhile may use one.
        let pools = svc
            .unlinked_addresses()
            .map(|(_, pools)| pools)
            .unwrap_or_default();
        for a in &addresses {
            let networks = pools
                .iter()
                .filter(|(_, pool)| **pool == a.pool_id)
                .map(|(net, _)| net);
            if fresh.uses_address(networks, a.address) != Some(false) {
                continue;
            }
            if let Err(e) = svc.release_unlinked_address(a).await {
                warn!(address = %a.address, error = %e, "releasing an unused address failed; retrying");
            }
        }
    }
    for ep in &plan.release {
        if fresh.attachment(&ep.network_id, &ep.id) != Attachment::Missing {
            continue;
        }
        if let Err(e) = svc.release_endpoint(ep, ReleaseReason::Leaked).await {
            warn!(endpoint = %short(&ep.id), error = %e, "releasing a leaked endpoint failed; retrying");
        }
    }
    Ok(())
}
