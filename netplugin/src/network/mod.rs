//! The network driver's logic (Docker's NetworkDriver) over the state store and the datapath.
//! A Docker request enters in [`crate::handlers`], which only translates it into a call on
//! [`Service`]; state is written through [`State`]'s named transactions, the datapath touched
//! through the [`Dataplane`] trait.
//!
//! - `options`: the `-o` / `--driver-opt` options;
//! - `ipam_driver`: Docker's IpamDriver calls, over [`Ipam`];
//! - `admin`: the admin API's views and operations; `latency`: latency tracking.

mod admin;
mod fleet_view;
pub(crate) mod ipam_driver;
mod latency;
mod limits;
mod local_changes;
mod options;

pub use admin::{AddressView, EndpointView, NetworkView, PoolView, Stats};
pub use fleet_view::{FleetView, UnlinkedAddress};
pub use latency::{Latencies, LatencySummary};
pub use limits::{EndpointLimits, LimitsChange, LimitsReport};

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::{info, warn};

use crate::dataplane::{
    container_if_name, format_mac, host_if_name, is_berth_if_name, mac_from_ip, parse_mac,
    Dataplane, EndpointPlan, ReassertReport,
};
use crate::error::{NetError, NetResult};
use crate::ipam::{require_id, Ipam};
use crate::ipnet::{parse_addr, parse_cidr, Ipv4If, Ipv4Net};
use crate::mac::Mac;
use crate::protocol::*;
use crate::state::*;
use crate::store::StoreError;

use local_changes::LocalChanges;
use options::{parse_limits, parse_options, NetOptions};
use plugin_transport::sync::{KeyGuard, KeyedLocks};

const CAS_ATTEMPTS: usize = 64;
pub const DEFAULT_MTU: u32 = 1500;

#[derive(Debug, Clone)]
pub struct NetConfig {
    /// VLANs handed to networks created without `-o vlan`.
    pub vlan_range: (u16, u16),
    pub default_mtu: u32,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            vlan_range: (2, 4094),
            default_mtu: DEFAULT_MTU,
        }
    }
}

/// The driver: every Docker and admin request on the network side is a method here.
pub struct Service {
    state: State,
    ipam: Arc<Ipam>,
    dp: Arc<dyn Dataplane>,
    config: NetConfig,
    latencies: Latencies,
    /// One lock per endpoint (`endpoint <id>`), per network (`network <id>`) and for the
    /// reconcile pass ([`PASS_KEY`]) and for the ARP proxy's flows ([`ARP_KEY`]); waits are
    /// bounded ([`LockWaits`]).
    /// No lock is held across the whole host: a slow call stalls only its own object.
    locks: KeyedLocks,
    lock_waits: LockWaits,
    /// This host's endpoint changes in flight, laid over the view by the pass.
    local_changes: LocalChanges,
    /// Endpoints released because Docker no longer knew them, and by `endpoint release`.
    released_leaked: AtomicU64,
    /// Addresses released by the sweep: held for no endpoint, and Docker used none of them.
    released_addresses: AtomicU64,
    released_by_admin: AtomicU64,
    /// Ports a reconcile pass left alone (not this host's label), logged once each.
    prune_logged: std::sync::Mutex<BTreeSet<String>>,
    /// What the last pass held back as a mass removal (logged again only when it changes).
    prune_held: std::sync::Mutex<Vec<String>>,
    /// The fleet's endpoint records, kept by a watch (`fleet_view.rs`).
    fleet: std::sync::Mutex<FleetView>,
}

/// The keys of [`KeyedLocks`] that serialize reconcile passes, and the ARP proxy's flows
/// (ARP pushes, and a pass's last step). Not Docker ids: those are `[A-Za-z0-9_.-]`.
const PASS_KEY: &str = "the reconcile pass";
const ARP_KEY: &str = "the ARP proxy";

/// How long a call waits for its object's lock before it answers "busy".
#[derive(Debug, Clone, Copy)]
pub struct LockWaits {
    /// An endpoint's or network's calls (Docker's and the admin's); Docker's network calls
    /// have no timeout of their own (protocols.md), so this is what bounds a call that
    /// finds its endpoint busy.
    pub object: Duration,
    /// A reconcile pass or ARP push waiting for the one running (`netplugin reconcile`).
    pub pass: Duration,
}

impl Default for LockWaits {
    fn default() -> Self {
        Self {
            object: Duration::from_secs(10),
            pass: Duration::from_secs(30),
        }
    }
}

fn endpoint_key(id: &str) -> String {
    format!("endpoint {id}")
}

fn network_key(id: &str) -> String {
    format!("network {id}")
}

/// A reconcile pass removes up to this many stray ports whatever the bridge's size; more, and
/// more than half of the bridge's berth ports, waits for `netplugin reconcile --prune`.
pub const MASS_PRUNE_MIN: usize = 3;

/// Why an endpoint is released outside Docker's DeleteEndpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseReason {
    /// Docker no longer lists it (a crash leaked it); found by the background sweep.
    Leaked,
    /// `netplugin endpoint release`.
    Admin,
}

/// What releasing one endpoint did.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct EndpointRelease {
    pub endpoint_id: String,
    pub network_id: String,
    pub host_if: String,
    pub address: String,
    /// False when the address was no longer held for this endpoint (released already, or
    /// taken again by an admin).
    pub address_released: bool,
    /// A datapath step that failed (the reconciler removes the port later); None when clean.
    pub datapath_error: Option<String>,
}

/// When a joined endpoint's MAC is announced again, after the announcement at Join.
pub const ANNOUNCE_AGAIN: [Duration; 2] = [Duration::from_millis(500), Duration::from_secs(2)];

/// `docker run -p/-P` on a berth-net network: refused, never silently ignored. berth-net gives
/// no NAT and no proxy on the host; a container is reached at its own routable address on its
/// container ports. Docker sends the bindings in CreateEndpoint's options (the container's
/// first non-internal network) and in ProgramExternalConnectivity's (the network that becomes
/// the container's gateway).
pub fn refuse_published_ports(
    options: &std::collections::BTreeMap<String, serde_json::Value>,
) -> NetResult<()> {
    let bindings = crate::protocol::port_bindings(options);
    if bindings.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = bindings.iter().map(|b| b.describe()).collect();
    Err(NetError::invalid(format!(
        "berth-net does not publish ports (-p {}): containers on a berth-net network are reached at their own routable address          (docker inspect shows it) on the container's ports; run without -p/-P, or publish through a bridge network",
        list.join(", -p ")
    )))
}

/// Docker 28 names a container's interface from this option for its own drivers only: for a
/// plugin driver it keeps `DstPrefix` + index and drops the name (moby issue 52865, Join ignores
/// both the option and a `DstName` answer). Refused rather than silently ignored, like `-p`
/// (protocols.md §7).
pub fn refuse_interface_name(
    options: &std::collections::BTreeMap<String, serde_json::Value>,
) -> NetResult<()> {
    let Some(name) = options.get(crate::protocol::ENDPOINT_IFNAME) else {
        return Ok(());
    };
    let name = name
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| name.to_string());
    Err(NetError::invalid(format!(
        "berth-net cannot name the container's interface ({}={}): Docker does not apply interface \
         names for plugin network drivers, so the interface is eth0, eth1, ... in the order of the \
         container's networks; drop the interface name",
        crate::protocol::ENDPOINT_IFNAME,
        plugin_transport::input::quoted(&name)
    )))
}

/// Interface names come from the id, not the record's fields (see [`EndpointRecord::host_if`]).
fn plan_of(e: &EndpointRecord) -> EndpointPlan {
    EndpointPlan {
        endpoint_id: e.id.clone(),
        network_id: e.network_id.clone(),
        host_id: e.host_id.clone(),
        host_if: e.host_if_name(),
        container_if: e.container_if_name(),
        vlan: e.vlan,
        mtu: e.mtu,
        limits: e.limits,
        mac: e.mac.octets(),
        ip: e.address.ip,
        anti_spoof: !e.allow_spoofing,
    }
}

impl Service {
    pub fn new(state: State, ipam: Arc<Ipam>, dp: Arc<dyn Dataplane>, config: NetConfig) -> Self {
        Self {
            fleet: std::sync::Mutex::new(FleetView::new(&state.host_id)),
            state,
            ipam,
            dp,
            config,
            latencies: Latencies::default(),
            locks: KeyedLocks::new(),
            lock_waits: LockWaits::default(),
            local_changes: LocalChanges::default(),
            released_leaked: AtomicU64::new(0),
            released_addresses: AtomicU64::new(0),
            released_by_admin: AtomicU64::new(0),
            prune_logged: Default::default(),
            prune_held: Default::default(),
        }
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// Other lock-wait bounds than [`LockWaits::default`] (tests).
    pub fn with_lock_waits(mut self, waits: LockWaits) -> Self {
        self.lock_waits = waits;
        self
    }

    async fn lock_endpoint(&self, id: &str, operation: &'static str) -> NetResult<KeyGuard<'_>> {
        self.lock_key(&endpoint_key(id), operation, self.lock_waits.object)
            .await
    }

    async fn lock_network(&self, id: &str, operation: &'static str) -> NetResult<KeyGuard<'_>> {
        self.lock_key(&network_key(id), operation, self.lock_waits.object)
            .await
    }

    pub(super) async fn lock_pass(&self, operation: &'static str) -> NetResult<KeyGuard<'_>> {
        self.lock_key(PASS_KEY, operation, self.lock_waits.pass)
            .await
    }

    /// Taken after [`PASS_KEY`] by a pass, alone by an ARP push: a push never waits for a
    /// pass's work on ports and flows, only for its ARP sync.
    pub(super) async fn lock_arp(&self, operation: &'static str) -> NetResult<KeyGuard<'_>> {
        self.lock_key(ARP_KEY, operation, self.lock_waits.pass)
            .await
    }

    async fn lock_key(
        &self,
        key: &str,
        operation: &'static str,
        within: Duration,
    ) -> NetResult<KeyGuard<'_>> {
        Ok(self.locks.lock(key, operation, within).await?)
    }

    pub fn ipam(&self) -> &Arc<Ipam> {
        &self.ipam
    }

    pub fn dataplane(&self) -> &Arc<dyn Dataplane> {
        &self.dp
    }

    pub fn latencies(&self) -> &Latencies {
        &self.latencies
    }

    /// Endpoints released outside Docker so far: (leaked, by admin).
    pub fn released_counts(&self) -> (u64, u64) {
        (
            self.released_leaked.load(Ordering::Relaxed),
            self.released_by_admin.load(Ordering::Relaxed),
        )
    }

    async fn ready(&self) -> NetResult<()> {
        self.dp.ready().await.map_err(NetError::Datapath)
    }

    pub async fn create_network(&self, req: CreateNetworkRequest) -> NetResult<()> {
        require_id("NetworkID", &req.network_id)?;
        let opts = parse_options(&req.generic_options(), self.config.default_mtu)?;
        // Docker 28 can make a network without IPv4; berth-net's plan (VLAN access ports,
        // ARP proxy, anti-spoofing) is IPv4 (protocols.md §7).
        if req.ipv4_disabled() {
            return Err(NetError::invalid(
                "berth-net networks are IPv4 networks: create the network without --ipv4=false",
            ));
        }
        if req.ipv6_data.iter().any(|d| !d.pool.is_empty()) {
            return Err(NetError::invalid(
                "IPv6 is not supported by berth-net yet: create the network without --ipv6",
            ));
        }
        if req.ipv4_data.len() > 1 {
            return Err(NetError::invalid(
                "berth-net networks take one IPv4 subnet (one --subnet)",
            ));
        }
        let data = req.ipv4_data.first().cloned().unwrap_or_default();
        let subnet = if data.pool.is_empty() {
            None
        } else {
            Some(
                data.pool
                    .parse::<Ipv4Net>()
                    .map_err(|e| NetError::invalid(format!("IPv4Data.Pool {e}")))?,
            )
        };
        let gateway = if data.gateway.is_empty() {
            None
        } else {
            Some(
                parse_addr(&data.gateway)
                    .map_err(|e| NetError::invalid(format!("IPv4Data.Gateway {e}")))?,
            )
        };
        self.ready().await?;
        let _net = self.lock_network(&req.network_id, "create network").await?;
        let state = self.state.clone();
        let config = self.config.clone();
        let id = req.network_id.clone();
        store_op("create network", move || {
            create_network_record(
                &state,
                &config,
                &id,
                opts,
                subnet,
                gateway,
                &data.address_space,
            )
        })
        .await
    }

    pub async fn delete_network(&self, network_id: &str) -> NetResult<()> {
        require_id("NetworkID", network_id)?;
        let _net = self.lock_network(network_id, "delete network").await?;
        let state = self.state.clone();
        let id = network_id.to_string();
        let (net, stale) = store_op("delete network", move || {
            let net = state.network(&id)?;
            let stale: Vec<EndpointRecord> = state
                .endpoints()?
                .into_iter()
                .filter(|e| e.network_id == id && e.host_id == state.host_id)
                .collect();
            Ok((net, stale))
        })
        .await?;
        let Some(net) = net else {
            return Ok(());
        };
        for e in &stale {
            warn!(endpoint = %e.id, network = %net.id, "endpoint left behind by Docker; removing it with its network");
            self.delete_endpoint(&e.network_id, &e.id).await?;
        }
        let state = self.state.clone();
        store_op("delete network", move || {
            state.delete_network(&net)?;
            info!(network = %net.id, vlan = net.vlan, "network deleted");
            Ok(())
        })
        .await
    }

    pub async fn create_endpoint(
        &self,
        req: CreateEndpointRequest,
    ) -> NetResult<CreateEndpointResponse> {
        let started = Instant::now();
        require_id("NetworkID", &req.network_id)?;
        require_id("EndpointID", &req.endpoint_id)?;
        if !req.interface.address_ipv6.is_empty() {
            return Err(NetError::invalid(
                "IPv6 addresses are not supported by berth-net yet",
            ));
        }
        if req.interface.address.is_empty() {
            return Err(NetError::invalid(
                "Interface.Address is empty: berth-net endpoints need an IPv4 address from IPAM",
            ));
        }
        refuse_published_ports(&req.options)?;
        refuse_interface_name(&req.options)?;
        let (ip, prefix) = parse_cidr(&req.interface.address)
            .map_err(|e| NetError::invalid(format!("Interface.Address {e}")))?;
        let given_mac = !req.interface.mac_address.is_empty();
        let mac = if given_mac {
            parse_mac(&req.interface.mac_address)
                .map_err(|e| NetError::invalid(format!("Interface.MacAddress {e}")))?
        } else {
            mac_from_ip(ip)
        };
        // `docker network connect --driver-opt rate=...` arrives among the endpoint's options.
        let own_limits = parse_limits(
            req.options
                .iter()
                .filter_map(|(k, v)| Some((k.as_str(), v.as_str()?))),
            "--driver-opt ",
        )?;
        let _endpoint = self
            .lock_endpoint(&req.endpoint_id, "create endpoint")
            .await?;
        let state = self.state.clone();
        let (nid, eid) = (req.network_id.clone(), req.endpoint_id.clone());
        let (net, existing) = store_op("create endpoint", move || {
            Ok((state.network(&nid)?, state.endpoint(&eid)?))
        })
        .await?;
        let Some(net) = net else {
            return Err(NetError::NotFound(format!(
                "network {} is not known to berth-net (was it created with -d berth-net on this store?)",
                short(&req.network_id)
            )));
        };
        let reply = CreateEndpointResponse {
            interface: (!given_mac).then(|| ReplyInterface {
                mac_address: format_mac(&mac),
            }),
        };
        let record = EndpointRecord {
            id: req.endpoint_id.clone(),
            network_id: net.id.clone(),
            host_id: self.state.host_id.clone(),
            address: Ipv4If { ip, prefix },
            mac: Mac(mac),
            host_if: host_if_name(&req.endpoint_id),
            container_if: container_if_name(&req.endpoint_id),
            vlan: net.vlan,
            mtu: net.mtu,
            created_at: now(),
            lease: self.state.lease(),
            limits: net.limits.overridden_by(own_limits),
            own_limits: Some(own_limits),
            allow_spoofing: net.allow_spoofing,
        };
        if let Some(e) = existing {
            if e.network_id == record.network_id && e.address == record.address {
                return Ok(reply);
            }
            return Err(NetError::conflict(format!(
                "endpoint {} exists already on network {} with address {}",
                short(&e.id),
                short(&e.network_id),
                e.address
            )));
        }
        let plan = plan_of(&record);
        self.ready().await?;
        self.local_changes.creating(&plan);
        let built = self.build_endpoint(net, &record, &plan).await;
        self.local_changes
            .finished(&record.id, built.is_ok().then(|| plan.clone()));
        let (dp_time, store_time) = built?;
        self.latencies.record("create_endpoint_datapath", dp_time);
        self.latencies.record("create_endpoint_store", store_time);
        self.latencies.record("create_endpoint", started.elapsed());
        Ok(reply)
    }

    /// CreateEndpoint's work, under the endpoint's lock: the record and the datapath, both or
    /// neither. Returns the datapath's and the store's times.
    async fn build_endpoint(
        &self,
        net: NetworkRecord,
        record: &EndpointRecord,
        plan: &EndpointPlan,
    ) -> NetResult<(Duration, Duration)> {
        // The record (write-ahead: a crash leaves it for the reconciler) is written while the
        // datapath is built; both must succeed, else both are undone.
        let state = self.state.clone();
        let rec = record.clone();
        let store_task = tokio::spawn(async move {
            let t = Instant::now();
            let late = state.clone();
            let eid = rec.id.clone();
            // Docker saw a timeout and answers it by deleting nothing: a record written after
            // that is removed again (unless changed since).
            let undo = move |rev: Option<i64>| {
                if let Some(rev) = rev {
                    match late.delete_endpoint_at(&eid, rev, None) {
                        Ok(_) => {
                            info!(endpoint = %eid, "endpoint record written after its request timed out: removed")
                        }
                        Err(e) => {
                            warn!(endpoint = %eid, error = %e, "removing an endpoint record written after its request timed out")
                        }
                    }
                }
            };
            let ip = rec.address.ip;
            let r = store_op_or_undo(
                "create endpoint",
                STORE_TIMEOUT,
                move || match state.create_endpoint_txn(&net, &rec)? {
                    Ok(rev) => Ok(rev),
                    Err(holder) => Err(NetError::conflict(format!(
                        "address {ip} is held by {holder} by now"
                    ))),
                },
                undo,
            )
            .await
            .map(|_| ());
            (r, t.elapsed())
        });
        let dp_started = Instant::now();
        let built = self.dp.create_endpoint(plan).await;
        let dp_time = dp_started.elapsed();
        let (saved, store_time) = match store_task.await {
            Ok(r) => r,
            Err(join) => (
                Err(NetError::Store(StoreError::Backend(format!(
                    "create endpoint: worker failed: {join}"
                )))),
                Duration::ZERO,
            ),
        };
        match (built, saved) {
            (Ok(()), Ok(())) => {}
            (Err(dp), saved) => {
                if saved.is_ok() {
                    let state = self.state.clone();
                    let eid = record.id.clone();
                    let undo =
                        store_op("undo endpoint", move || Ok(state.delete_endpoint(&eid)?)).await;
                    if let Err(e) = undo {
                        warn!(endpoint = %record.id, error = %e, "undoing the record of a failed endpoint");
                    }
                }
                return Err(NetError::Datapath(dp));
            }
            (Ok(()), Err(e)) => {
                if let Err(undo) = self.dp.delete_endpoint(&plan.host_if).await {
                    warn!(endpoint = %record.id, error = %undo, "undoing the datapath of a failed endpoint");
                }
                return Err(e);
            }
        }
        Ok((dp_time, store_time))
    }

    pub async fn join(&self, req: JoinRequest) -> NetResult<JoinResponse> {
        let started = Instant::now();
        require_id("NetworkID", &req.network_id)?;
        require_id("EndpointID", &req.endpoint_id)?;
        let state = self.state.clone();
        let (nid, eid) = (req.network_id.clone(), req.endpoint_id.clone());
        let (net, ep) = store_op("join", move || {
            Ok((state.network(&nid)?, state.endpoint(&eid)?))
        })
        .await?;
        let Some(ep) = ep else {
            return Err(NetError::NotFound(format!(
                "endpoint {} not found: CreateEndpoint did not succeed",
                short(&req.endpoint_id)
            )));
        };
        let gateway = net
            .and_then(|n| n.gateway)
            .map(|g| g.to_string())
            .unwrap_or_default();
        self.announce_in_background(&ep);
        let reply = JoinResponse {
            interface_name: InterfaceName {
                src_name: ep.container_if_name(),
                dst_prefix: "eth".into(),
            },
            disable_gateway_service: gateway.is_empty(),
            gateway,
        };
        self.latencies.record("join", started.elapsed());
        Ok(reply)
    }

    /// The endpoint's MAC is announced from its port (see [`Dataplane::announce`]) when it
    /// joins, then again at [`ANNOUNCE_AGAIN`] (a frame can be lost; the container may still
    /// be starting), off the request path: Join answers at once, and a failure is only logged
    /// (the endpoint works; the switches learn its place from its own traffic).
    fn announce_in_background(&self, ep: &EndpointRecord) {
        let dp = self.dp.clone();
        let (host_if, mac, ip) = (ep.host_if_name(), ep.mac.octets(), ep.address.ip);
        tokio::spawn(async move {
            let mut waited = Duration::ZERO;
            for at in std::iter::once(Duration::ZERO).chain(ANNOUNCE_AGAIN) {
                tokio::time::sleep(at.saturating_sub(waited)).await;
                waited = at;
                if let Err(e) = dp.announce(&host_if, mac, ip).await {
                    tracing::debug!(port = %host_if, error = %e, "gratuitous ARP not sent");
                    return;
                }
            }
        });
    }

    /// DeleteEndpoint: the port and the veth go even if the record or the container's
    /// namespace is gone already.
    pub async fn delete_endpoint(&self, network_id: &str, endpoint_id: &str) -> NetResult<()> {
        require_id("NetworkID", network_id)?;
        require_id("EndpointID", endpoint_id)?;
        let _endpoint = self.lock_endpoint(endpoint_id, "delete endpoint").await?;
        let state = self.state.clone();
        let eid = endpoint_id.to_string();
        let record = store_op("delete endpoint", move || Ok(state.endpoint(&eid)?)).await?;
        let host_if = host_if_name(endpoint_id);
        self.local_changes.deleting(endpoint_id);
        // Noted as gone even if the store write fails: its port is gone, and Docker deletes
        // again or the leak sweep releases it.
        let deleted = self
            .remove_endpoint(endpoint_id, &host_if, record.is_some())
            .await;
        self.local_changes.finished(endpoint_id, None);
        deleted
    }

    async fn remove_endpoint(
        &self,
        endpoint_id: &str,
        host_if: &str,
        recorded: bool,
    ) -> NetResult<()> {
        if let Err(e) = self.dp.delete_endpoint(host_if).await {
            // The record goes anyway: the reconcile pass removes a port without an endpoint.
            warn!(endpoint = endpoint_id, error = %e, "datapath cleanup incomplete; the reconciler retries");
        }
        if recorded {
            let state = self.state.clone();
            let eid = endpoint_id.to_string();
            store_op("delete endpoint", move || Ok(state.delete_endpoint(&eid)?)).await?;
        }
        Ok(())
    }

    /// EndpointOperInfo: what an operator wants to know of the endpoint, under `berth.*` keys
    /// (VLAN, host interface, OVS port, MAC, address, host, limits). Never an error: dockerd
    /// asks when it builds a container's network settings, and an error there fails the
    /// container; an unknown endpoint or an unreachable store answers an empty map.
    pub async fn oper_info(&self, endpoint_id: &str) -> OperInfoResponse {
        let mut value = std::collections::BTreeMap::new();
        if require_id("EndpointID", endpoint_id).is_err() {
            return OperInfoResponse { value };
        }
        let state = self.state.clone();
        let eid = endpoint_id.to_string();
        let record = match store_op("endpoint info", move || Ok(state.endpoint(&eid)?)).await {
            Ok(Some(r)) => r,
            Ok(None) => return OperInfoResponse { value },
            Err(e) => {
                tracing::debug!(endpoint = endpoint_id, error = %e, "EndpointOperInfo without the record");
                return OperInfoResponse { value };
            }
        };
        let host_if = record.host_if_name();
        let port = self.dp.ports().into_iter().find(|p| p.name == host_if);
        let kbps =
            |k: Option<u32>| k.map_or_else(|| "unlimited".to_string(), |k| format!("{k}kbit"));
        for (k, v) in [
            ("berth.vlan", record.vlan.to_string()),
            ("berth.host_if", host_if.clone()),
            ("berth.container_if", record.container_if_name()),
            (
                "berth.ovs_port",
                match &port {
                    Some(p) => format!(
                        "{} (tag {}, ofport {})",
                        p.name,
                        p.tag.map_or_else(|| "-".into(), |t| t.to_string()),
                        p.ofport.map_or_else(|| "-".into(), |o| o.to_string())
                    ),
                    None => "missing".into(),
                },
            ),
            ("berth.mac", record.mac.to_string()),
            ("berth.address", record.address.to_string()),
            ("berth.host_id", record.host_id.clone()),
            ("berth.mtu", record.mtu.to_string()),
            ("berth.egress_limit", kbps(record.limits.egress_kbps)),
            ("berth.ingress_limit", kbps(record.limits.ingress_kbps)),
        ] {
            value.insert(k.to_string(), v);
        }
        OperInfoResponse { value }
    }

    /// The endpoint with this id, or the only one whose id starts with it (at least 4
    /// characters, as `endpoint ls` shows 12).
    pub async fn find_endpoint(&self, id: &str) -> NetResult<EndpointRecord> {
        if id.len() < 4 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(NetError::invalid(format!(
                "endpoint {id:?}: give its id or a prefix of at least 4 characters (see `netplugin endpoint ls`)"
            )));
        }
        let state = self.state.clone();
        let wanted = id.to_string();
        let mut found = store_op("find endpoint", move || {
            if let Some(e) = state.endpoint(&wanted)? {
                return Ok(vec![e]);
            }
            Ok(state
                .endpoints()?
                .into_iter()
                .filter(|e| e.id.starts_with(&wanted))
                .collect::<Vec<_>>())
        })
        .await?;
        match found.len() {
            0 => Err(NetError::NotFound(format!("no endpoint {id:?}"))),
            1 => Ok(found.remove(0)),
            n => Err(NetError::conflict(format!(
                "{n} endpoints start with {id:?}: give more of the id"
            ))),
        }
    }

    /// Releases what an endpoint holds when Docker cannot any more: its OVS port and veth,
    /// its record and its address. Only this host's endpoints (the port is here). Whether
    /// Docker still uses it is the caller's check.
    pub async fn release_endpoint(
        &self,
        record: &EndpointRecord,
        reason: ReleaseReason,
    ) -> NetResult<EndpointRelease> {
        if record.host_id != self.state.host_id {
            return Err(NetError::conflict(format!(
                "endpoint {} is on host {}: release it there, or `netplugin pool reclaim --host {}` if that host is gone",
                short(&record.id),
                record.host_id,
                record.host_id
            )));
        }
        let _endpoint = self.lock_endpoint(&record.id, "release endpoint").await?;
        self.local_changes.deleting(&record.id);
        let released = self.release_locked(record).await;
        self.local_changes.finished(&record.id, None);
        let (datapath_error, address_released) = released?;
        match reason {
            ReleaseReason::Leaked => self.released_leaked.fetch_add(1, Ordering::Relaxed),
            ReleaseReason::Admin => self.released_by_admin.fetch_add(1, Ordering::Relaxed),
        };
        let release = EndpointRelease {
            endpoint_id: record.id.clone(),
            network_id: record.network_id.clone(),
            host_if: record.host_if_name(),
            address: record.address.to_string(),
            address_released,
            datapath_error,
        };
        warn!(endpoint = %release.endpoint_id, network = %release.network_id, address = %release.address,
            address_released, ?reason, datapath_error = ?release.datapath_error, "endpoint released outside Docker");
        Ok(release)
    }

    /// Releases an address this host holds for no endpoint, that Docker does not use (the
    /// caller's check): what a ReleaseAddress lost while the plugin was down leaves. The
    /// store's record is read again and released only if it still names no endpoint (a
    /// CreateEndpoint linking it meanwhile wins). Whether it was released.
    pub async fn release_unlinked_address(&self, address: &UnlinkedAddress) -> NetResult<bool> {
        let ipam = self.ipam.clone();
        let (pool, ip) = (address.pool_id.clone(), address.address.to_string());
        let released = store_op("release an unused address", move || {
            ipam.release_unused(&pool, &ip)
        })
        .await?;
        if released {
            self.released_addresses.fetch_add(1, Ordering::Relaxed);
            warn!(address = %address.address, pool = %address.pool_id,
                "address released outside Docker: this host held it for no endpoint and Docker used it nowhere (its ReleaseAddress was lost while the plugin was down)");
        }
        Ok(released)
    }

    /// Addresses released by the sweep so far ([`Service::release_unlinked_address`]).
    pub fn released_addresses(&self) -> u64 {
        self.released_addresses.load(Ordering::Relaxed)
    }

    /// [`Service::release_endpoint`]'s work under the endpoint's lock: (the datapath's error,
    /// whether the address was released).
    async fn release_locked(&self, record: &EndpointRecord) -> NetResult<(Option<String>, bool)> {
        let datapath_error = self
            .dp
            .delete_endpoint(&record.host_if_name())
            .await
            .err()
            .map(|e| e.to_string());
        let state = self.state.clone();
        let ipam = self.ipam.clone();
        let rec = record.clone();
        let address_released = store_op("release endpoint", move || {
            state.delete_endpoint(&rec.id)?;
            let Some(pool_id) = state.network(&rec.network_id)?.and_then(|n| n.pool_id) else {
                return Ok(false);
            };
            let ip = rec.address.ip;
            let Some(kv) = state.store.get(&addr_key(&pool_id, ip))? else {
                return Ok(false);
            };
            let held: AddrRecord = decode(&kv)?;
            // Only the endpoint's own lease: an admin may have reserved the address since.
            if held.endpoint_id.as_deref() != Some(rec.id.as_str()) {
                return Ok(false);
            }
            ipam.release_held(&pool_id, &kv)
        })
        .await?;
        Ok((datapath_error, address_released))
    }

    /// This host's endpoints with their datapath plans, for the Docker sweep.
    pub async fn local_endpoints(&self) -> NetResult<Vec<EndpointRecord>> {
        let mut all = self.fleet_records().await?;
        all.retain(|e| e.host_id == self.state.host_id);
        Ok(all)
    }

    /// Writes `berth-container-id` on the endpoint's interface.
    pub async fn label_container(
        &self,
        record: &EndpointRecord,
        container_id: &str,
    ) -> NetResult<()> {
        let plan = plan_of(record);
        let _endpoint = self.lock_endpoint(&record.id, "label endpoint").await?;
        self.dp
            .label_container(&plan, container_id)
            .await
            .map_err(NetError::Datapath)
    }

    /// Re-asserts the datapath of this host's endpoints without touching what is right,
    /// removes this host's ports that no endpoint has (see [`Service::prune`]), then
    /// re-asserts every ARP proxy flow (`fleet_view.rs`: what is answered).
    pub async fn reconcile(&self) -> NetResult<ReassertReport> {
        self.reconcile_with(false).await
    }

    /// [`Service::reconcile`]; with `force_prune` (`netplugin reconcile --prune`) also when the
    /// ports to remove are most of the bridge.
    pub async fn reconcile_with(&self, force_prune: bool) -> NetResult<ReassertReport> {
        let _pass = self.lock_pass("reconcile pass").await?;
        let all = self.fleet_records().await?;
        let me = &self.state.host_id;
        let mut plans: Vec<EndpointPlan> = all
            .iter()
            .filter(|e| e.host_id == *me)
            .map(plan_of)
            .collect();
        // Applied outside every endpoint's lock: calls go on meanwhile, and what they are
        // doing is laid over the view (`local_changes.rs`). A port whose endpoint a call
        // removes during the pass may be asserted once more: it has no device, and the next
        // pass prunes it.
        self.local_changes.overlay(&mut plans);
        let mut report = self.dp.reassert(&plans).await.map_err(NetError::Datapath)?;
        self.prune(&plans, force_prune, &mut report).await?;
        let _arp = self.lock_arp("reconcile pass").await?;
        (report.arp_flows_added, report.arp_flows_removed) = self
            .dp
            .sync_arp(&self.arp_full_entries(&all))
            .await
            .map_err(NetError::Datapath)?;
        Ok(report)
    }

    /// Removes ports of this host that no endpoint of the store has (left by a crash, or by
    /// a DeleteEndpoint whose datapath step failed). Only ports labelled with this host's id
    /// and named as berth names them; ports without the label (older releases) or another
    /// host's id are left alone and logged once. A pass that would remove most of the bridge's
    /// ports in use at once (more than [`MASS_PRUNE_MIN`] ports with a device, and more than
    /// half of those) removes none of them: a store that lost this host's records must not cut
    /// every container off; it is logged and held until `netplugin reconcile --prune`. Ports
    /// without a device (their container is gone) carry no traffic and always go.
    async fn prune(
        &self,
        plans: &[EndpointPlan],
        force: bool,
        report: &mut ReassertReport,
    ) -> NetResult<()> {
        let me = &self.state.host_id;
        let wanted: BTreeSet<&str> = plans.iter().map(|p| p.host_if.as_str()).collect();
        let ports = self.dp.ports();
        let mut stray = Vec::new();
        let mut left_alone = Vec::new();
        for p in &ports {
            if wanted.contains(p.name.as_str()) {
                continue;
            }
            let named_by_us = is_berth_if_name(&p.name)
                && p.endpoint_id.as_deref().map(host_if_name).as_deref() == Some(p.name.as_str());
            match &p.host_id {
                Some(h) if h == me && named_by_us => stray.push(p.name.clone()),
                Some(h) if h != me => {}
                _ => left_alone.push(p.name.clone()),
            }
        }
        {
            let mut logged = self.prune_logged.lock().unwrap_or_else(|e| e.into_inner());
            for name in &left_alone {
                if logged.insert(name.clone()) {
                    warn!(port = %name, host = %me, "port with a berth-endpoint-id but without this host's berth-host-id (or with a name berth does not give): left alone; remove it by hand if it is stale");
                }
            }
        }
        if stray.is_empty() {
            return Ok(());
        }
        // A port whose endpoint a call is changing right now is that call's business: skipped
        // (the next pass sees the outcome). The others stay locked until removed or kept.
        let mut held = std::collections::BTreeMap::new();
        for name in &stray {
            let Some(id) = ports
                .iter()
                .find(|p| &p.name == name)
                .and_then(|p| p.endpoint_id.as_deref())
            else {
                continue;
            };
            if let Ok(guard) = self.locks.try_lock(&endpoint_key(id), "prune port") {
                held.insert(name.clone(), (id.to_string(), guard));
            }
        }
        // `plans` may come from the watch-fed view, which can lag the store by a moment (an
        // endpoint this host created a moment ago): a port is only stray if the store itself
        // has no record of its endpoint on this host.
        let candidates: Vec<(String, Option<String>)> = held
            .iter()
            .map(|(name, (id, _))| (name.clone(), Some(id.clone())))
            .collect();
        let state = self.state.clone();
        let me_owned = me.clone();
        let stray: Vec<String> = store_op("confirm stray ports", move || {
            let mut confirmed = Vec::new();
            for (name, id) in candidates {
                let recorded = match &id {
                    Some(id) => state.endpoint(id)?.is_some_and(|e| e.host_id == me_owned),
                    None => false,
                };
                if !recorded {
                    confirmed.push(name);
                }
            }
            Ok(confirmed)
        })
        .await?;
        if stray.is_empty() {
            return Ok(());
        }
        // Only ports with a device carry traffic: those are what the guard protects. Ports
        // whose container's namespace is gone (a host back from a crash) always go.
        let has_device = |name: &String| ports.iter().any(|p| &p.name == name && p.has_device);
        let (live, dead): (Vec<String>, Vec<String>) = stray.into_iter().partition(has_device);
        let in_use = ports.iter().filter(|p| p.has_device).count();
        let mut remove = dead;
        if !force && live.len() > MASS_PRUNE_MIN && live.len() * 2 > in_use {
            let mut held = self.prune_held.lock().unwrap_or_else(|e| e.into_inner());
            if *held != live {
                warn!(ports = ?live, of = in_use, host = %me,
                    "reconcile would remove most of the bridge's ports in use (their endpoints are not in the store): NOT removing them; check the store (--etcd-prefix, --host-id), then run `netplugin reconcile --prune` to remove them");
                held.clone_from(&live);
            }
            report.prune_held = live;
        } else {
            self.prune_held
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
            remove.extend(live);
        }
        for name in remove {
            let _endpoint = held.remove(&name);
            self.dp
                .delete_endpoint(&name)
                .await
                .map_err(NetError::Datapath)?;
            info!(port = %name, "port without an endpoint removed");
            report.ports_removed.push(name.clone());
            report.veths_removed.push(name);
        }
        Ok(())
    }
}

fn create_network_record(
    state: &State,
    config: &NetConfig,
    id: &str,
    opts: NetOptions,
    subnet: Option<Ipv4Net>,
    gateway: Option<Ipv4Addr>,
    space: &str,
) -> NetResult<()> {
    for _ in 0..CAS_ATTEMPTS {
        if let Some(existing) = state.network(id)? {
            if opts.vlan.is_none_or(|v| v == existing.vlan) {
                return Ok(());
            }
            return Err(NetError::conflict(format!(
                "network {} exists already with VLAN {}",
                short(id),
                existing.vlan
            )));
        }
        // Our pool for this subnet, if berth-net is also the IPAM driver; with etcd it may be
        // the pool of the same network created on another host (RequestPool shared it).
        let pool = match subnet {
            Some(net) => state.pools()?.into_iter().find(|p| {
                p.subnet == net.to_string() && (space.is_empty() || p.address_space == space)
            }),
            None => None,
        };
        // The network this one joins: another host's network on the same pool.
        let shared = match pool.as_ref().and_then(|p| p.network_id.clone()) {
            Some(other) if other != id => match state.network(&other)? {
                Some(o) if o.host_id != state.host_id => {
                    if opts.vlan.is_some_and(|v| v != o.vlan) {
                        return Err(NetError::conflict(format!(
                            "-o vlan={}: subnet {} is network {} with VLAN {} (created on host {}): the same network on every host needs the same VLAN",
                            opts.vlan.unwrap_or(0),
                            o.subnet.map(|s| s.to_string()).unwrap_or_default(),
                            short(&o.id),
                            o.vlan,
                            o.host_id
                        )));
                    }
                    Some(o)
                }
                Some(o) => {
                    return Err(NetError::conflict(format!(
                        "subnet {} is already network {} on this host",
                        o.subnet.map(|s| s.to_string()).unwrap_or_default(),
                        short(&o.id)
                    )))
                }
                None => None,
            },
            _ => None,
        };
        let vlan = match (opts.vlan, &shared) {
            (_, Some(o)) => o.vlan,
            (Some(v), None) => {
                if let Some(kv) = state.store.get(&vlan_key(v))? {
                    let holder = String::from_utf8_lossy(&kv.value).into_owned();
                    return Err(NetError::conflict(format!(
                        "-o vlan={v}: VLAN {v} is already used by network {}",
                        short(&holder)
                    )));
                }
                v
            }
            (None, None) => {
                let held: BTreeSet<u16> = state
                    .store
                    .range("vlans/")?
                    .iter()
                    .filter_map(|kv| kv.key.strip_prefix("vlans/")?.parse().ok())
                    .collect();
                let (lo, hi) = config.vlan_range;
                (lo..=hi).find(|v| !held.contains(v)).ok_or_else(|| {
                    NetError::conflict(format!(
                        "no free VLAN left in --vlan-range {lo}-{hi}: pass -o vlan=N"
                    ))
                })?
            }
        };
        let record = NetworkRecord {
            id: id.to_string(),
            vlan,
            vlan_auto: opts.vlan.is_none(),
            mtu: opts.mtu,
            subnet,
            gateway,
            pool_id: pool.as_ref().map(|p| p.id.clone()),
            host_id: state.host_id.clone(),
            created_at: now(),
            limits: opts.limits,
            allow_spoofing: opts.allow_spoofing,
        };
        let pool = match pool.filter(|_| shared.is_none()) {
            Some(p) => {
                let rev = state
                    .store
                    .get(&pool_key(&p.id))?
                    .map(|kv| kv.mod_revision)
                    .unwrap_or(0);
                Some((p, rev))
            }
            None => None,
        };
        let joining = shared.as_ref().map(|o| o.id.as_str());
        if state.create_network_txn(&record, joining, pool)? {
            info!(network = id, vlan, subnet = ?record.subnet.map(|s| s.to_string()), "network created");
            return Ok(());
        }
    }
    Err(NetError::Store(StoreError::Contention {
        what: "network creation".into(),
        attempts: CAS_ATTEMPTS,
    }))
}
