//! The real datapath: veth pairs through netlink, access ports through OVSDB and our base
//! flow through OpenFlow, all via ovs-ffi (never ovs-vsctl/ovs-ofctl). The ARP proxy's and
//! the rate limits' flows and meters are in `flows.rs`.

mod fence;
mod flows;
mod spoof;

use flows::{egress_meter, ingress_meter};

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ovs_ffi::openflow::{
    Action, Flow, FlowFilter, FlowMod, Mac, Match, Meter, OfClient, OfConfig, Port, SetField,
};
use ovs_ffi::ovsdb::{self, BridgeSpec, PortSpec};
use plugin_transport::blocking::run_blocking;
use serde_json::Value;
use tracing::{info, warn};

use super::{
    ethtool, netlink, ArpChange, ArpEntry, ArpKey, BoxFuture, Dataplane, DataplaneError,
    DataplaneErrors, DpResult, EndpointPlan, PortView, RateLimitDrops, ReassertReport, SpoofDrops,
};

/// Cookie of the bridge-wide flows this plugin owns (`0xbe27` marks Berth's cookies).
pub const COOKIE_BASE: u64 = 0xbe27_0000_0000_0001;
/// Cookie of every ARP proxy flow.
pub const COOKIE_ARP: u64 = 0xbe27_0000_0000_0002;
/// Cookie of every rate-limit flow.
pub const COOKIE_QOS: u64 = 0xbe27_0000_0000_0003;
/// Cookie of every anti-spoofing flow.
pub const COOKIE_SPOOF: u64 = 0xbe27_0000_0000_0005;

/// The guard: where every packet starts, and where a port's spoofed packets end.
const GUARD_TABLE: u8 = 0;
/// What passed the guard: the ARP proxy's and the rate limits' dispatch, then NORMAL.
const CLASSIFY_TABLE: u8 = 1;
/// Register 0: the VLAN of the access port a packet came in on, written by the guard table
/// (0: not one of our access ports, e.g. the uplink, whose frames carry their tag).
const VLAN_REG: u8 = 0;
pub const EXT_ENDPOINT: &str = "berth-endpoint-id";
pub const EXT_NETWORK: &str = "berth-network-id";
pub const EXT_CONTAINER: &str = "berth-container-id";
/// The host that created the interface: a host only ever prunes its own.
pub const EXT_HOST: &str = "berth-host-id";

/// The label of a bridge netplugin created (`external_ids`): only such a bridge's flows and
/// meters are netplugin's to change and delete.
pub const BRIDGE_LABEL: &str = "berth-bridge";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BridgeOwner {
    Missing,
    Berth,
    /// A bridge of that name without our label: someone else's.
    Other,
}

/// How long a request waits for an OVSDB connection that is not up yet (see ensure_bridge).
const FIRST_CONNECT_WAIT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone)]
pub struct OvsConfig {
    /// `unix:/path/db.sock`.
    pub ovsdb: String,
    pub rundir: PathBuf,
    pub bridge: String,
    /// `system` or `netdev` (resolved from `auto`).
    pub datapath: String,
    pub uplink: Option<String>,
    /// Bound on each OVSDB and OpenFlow call.
    pub call_timeout: Duration,
}

/// `auto`: netdev when the kernel has no openvswitch module (as on these machines).
pub fn resolve_datapath(flag: &str) -> Result<String, String> {
    match flag {
        "system" | "netdev" => Ok(flag.to_string()),
        "auto" => Ok(
            if std::path::Path::new("/sys/module/openvswitch").exists() {
                "system"
            } else {
                "netdev"
            }
            .to_string(),
        ),
        other => Err(format!(
            "--datapath {other:?} is not one of: auto, system, netdev"
        )),
    }
}

pub struct OvsDataplane {
    cfg: OvsConfig,
    db: ovsdb::Client,
    of: OfClient,
    flows_ok: AtomicBool,
    /// OVSDB connection count when the flows were last checked: a new connection means OVS
    /// may have restarted, so the flows are checked again.
    flows_conn: AtomicU64,
    /// Counts the bridge's creations and updates: its flows may be gone since.
    bridge_generation: AtomicU64,
    /// Meter drops read at the last reconcile pass, for the metrics.
    drops: std::sync::Mutex<Vec<RateLimitDrops>>,
    /// Anti-spoofing drops read at the last reconcile pass, for the metrics.
    spoof_drops: std::sync::Mutex<Vec<SpoofDrops>>,
    /// The ARP proxy flows as installed, for changes without a dump.
    arp: tokio::sync::Mutex<flows::ArpFlows>,
}

fn io_err(what: &'static str, name: &str, e: std::io::Error) -> DataplaneError {
    DataplaneError::netlink(what, name, e)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> DpResult<T> + Send + 'static,
) -> DpResult<T> {
    // netlink requests bound themselves (socket timeouts): no deadline here.
    run_blocking(None, f)
        .await
        .map_err(|e| DataplaneError::Worker(e.to_string()))?
}

impl OvsDataplane {
    /// Starts the OVSDB client in the background: it connects (and reconnects) by itself.
    pub fn start(cfg: OvsConfig) -> Result<Self, String> {
        let mut dbcfg = ovsdb::Config::new(cfg.ovsdb.clone());
        dbcfg.call_timeout = cfg.call_timeout;
        let db = ovsdb::Client::start(dbcfg).map_err(|e| format!("--ovsdb: {e}"))?;
        let of = OfClient::new(
            ovs_ffi::openflow::mgmt_socket(&cfg.rundir, &cfg.bridge),
            OfConfig {
                timeout: cfg.call_timeout,
                ..Default::default()
            },
        );
        Ok(Self {
            cfg,
            db,
            of,
            flows_ok: AtomicBool::new(false),
            flows_conn: AtomicU64::new(0),
            bridge_generation: AtomicU64::new(0),
            drops: Default::default(),
            spoof_drops: Default::default(),
            arp: Default::default(),
        })
    }

    fn unreachable(&self) -> DataplaneError {
        DataplaneError::Unreachable(format!(
            "Open vSwitch is not reachable: no OVSDB connection to {} (is ovsdb-server running? see --ovsdb); \
             the request fails until it is, and works again without restarting netplugin",
            self.cfg.ovsdb
        ))
    }

    /// ovs-vswitchd creates `<bridge>.mgmt` a moment after the bridge row appears; a request
    /// that arrives in between (the first one after a start) waits for it, within the bound of
    /// one call, instead of failing.
    /// When it does not come, the error says why as far as OVS shows it ([`Self::bridge_failure`])
    /// rather than only that the socket is missing.
    async fn wait_for_mgmt_socket(&self) -> DpResult<()> {
        let path = ovs_ffi::openflow::mgmt_socket(&self.cfg.rundir, &self.cfg.bridge);
        let deadline = tokio::time::Instant::now() + self.cfg.call_timeout;
        while !path.exists() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if path.exists() {
            return Ok(());
        }
        let reason = self.bridge_failure();
        warn!(bridge = %self.cfg.bridge, %reason, "ovs-vswitchd has not opened the bridge");
        Err(DataplaneError::BridgeNotOpen(format!(
            "OVS bridge {}: no OpenFlow management socket {} after {:?}: {reason}",
            self.cfg.bridge,
            path.display(),
            self.cfg.call_timeout
        )))
    }

    /// Why ovs-vswitchd has not opened our bridge, from what OVSDB holds: the `error` column of
    /// the bridge's own interface when OVS wrote one; else whether ovs-vswitchd applied the
    /// database at all, and whether it gave the interface an OpenFlow port. A netdev bridge that
    /// fails while the `ovs-netdev` device exists in this namespace and no other netdev bridge
    /// of this OVS works is most likely a second ovs-vswitchd in the namespace: its log says
    /// "ovs-netdev: creating tap device failed: Device or resource busy" and OVSDB says nothing.
    fn bridge_failure(&self) -> String {
        let bridge = &self.cfg.bridge;
        let (cur_cfg, next_cfg, iface, other_netdev_works) = self.db.with_cache(|c| {
            let cfg = |col: &str| {
                c.rows("Open_vSwitch")
                    .next()
                    .and_then(|(_, r)| r.get(col))
                    .and_then(Value::as_i64)
                    .unwrap_or(0)
            };
            let iface_of = |name: &str| {
                c.by_name("Interface", name).map(|(_, r)| {
                    let error = r.get("error").and_then(Value::as_str).map(str::to_string);
                    let ofport = r.get("ofport").and_then(Value::as_i64);
                    (error, ofport)
                })
            };
            let other_netdev_works = c.rows("Bridge").any(|(_, r)| {
                let name = r.get("name").and_then(Value::as_str).unwrap_or_default();
                name != bridge
                    && r.get("datapath_type").and_then(Value::as_str) == Some("netdev")
                    && iface_of(name).is_some_and(|(_, p)| p.is_some_and(|p| p > 0))
            });
            (
                cfg("cur_cfg"),
                cfg("next_cfg"),
                iface_of(bridge),
                other_netdev_works,
            )
        });
        let mut reason = match iface {
            None => format!("OVSDB has no interface {bridge} (the bridge row is gone?)"),
            Some((Some(error), _)) => format!("OVS reports for its interface {bridge}: {error}"),
            Some((None, Some(p))) if p > 0 => format!(
                "ovs-vswitchd gave its interface OpenFlow port {p}, so the socket is elsewhere: is --ovs-rundir {} ovs-vswitchd's run directory?",
                self.cfg.rundir.display()
            ),
            Some((None, _)) if cur_cfg < next_cfg => format!(
                "ovs-vswitchd has not applied the database (cur_cfg {cur_cfg} < next_cfg {next_cfg}): is it running, on this database?"
            ),
            Some((None, _)) => format!(
                "ovs-vswitchd did not create it (its interface {bridge} has no OpenFlow port; OVSDB holds no reason, ovs-vswitchd's log has it)"
            ),
        };
        if self.cfg.datapath == "netdev" && netlink::exists("ovs-netdev") && !other_netdev_works {
            reason.push_str(
                "; probably another ovs-vswitchd with a netdev datapath runs in this network namespace: \
                 it holds the tap device ovs-netdev, so this one cannot create its datapath \
                 (its log: \"ovs-netdev: creating tap device failed: Device or resource busy\"); \
                 use that Open vSwitch (--ovsdb, --ovs-rundir) or run this one in its own network namespace",
            );
        }
        reason
    }

    /// The OpenFlow port number of one of our ports, once ovs-vswitchd assigned it.
    fn ofport(&self, name: &str) -> Option<u32> {
        let ofport = self.db.port(name)?.interfaces.first()?.ofport?;
        u32::try_from(ofport).ok().filter(|p| *p > 0)
    }

    /// Past the guard for what no anti-spoofing flow catches, then NORMAL for what no ARP
    /// proxy or rate-limit flow takes.
    fn base_flows(&self) -> [Flow; 2] {
        [
            Flow::new(GUARD_TABLE, 0)
                .cookie(COOKIE_BASE)
                .goto_table(CLASSIFY_TABLE),
            Flow::new(CLASSIFY_TABLE, 0)
                .cookie(COOKIE_BASE)
                .actions(vec![Action::Output(Port::Normal)]),
        ]
    }

    /// Waits a little for the first OVSDB connection (a start under way), else unreachable.
    async fn first_connection(&self) -> DpResult<()> {
        if !self.db.is_connected()
            && self
                .db
                .wait_connected(self.cfg.call_timeout.min(FIRST_CONNECT_WAIT))
                .await
                .is_err()
        {
            return Err(self.unreachable());
        }
        Ok(())
    }

    async fn ensure_bridge(&self) -> DpResult<bool> {
        // Right after a start (socket activation hands over Docker's call within
        // milliseconds) the first OVSDB connection may still be under way: wait for it a
        // little, as for the mgmt socket, rather than fail a container's start. An OVS that
        // is really down still fails the call within the bound.
        self.first_connection().await?;
        if self.bridge_owner() == BridgeOwner::Other {
            return Err(DataplaneError::Refused(format!(
                "OVS bridge {b} exists and is not Berth's (no external_ids:{BRIDGE_LABEL}=true): \
                 netplugin does not take over another bridge, whose fail mode, flows and meters \
                 it would change; choose another --bridge, or mark this one as Berth's with \
                 `ovs-vsctl br-set-external-id {b} {BRIDGE_LABEL} true`",
                b = self.cfg.bridge
            )));
        }
        let mut external_ids = BTreeMap::new();
        external_ids.insert(BRIDGE_LABEL.to_string(), "true".to_string());
        let changed = self
            .db
            .ensure_bridge(&BridgeSpec {
                name: self.cfg.bridge.clone(),
                datapath_type: Some(self.cfg.datapath.clone()),
                fail_mode: Some("secure".into()),
                protocols: vec![
                    "OpenFlow13".into(),
                    "OpenFlow14".into(),
                    "OpenFlow15".into(),
                ],
                other_config: BTreeMap::new(),
                external_ids,
            })
            .await
            .map_err(|e| DataplaneError::ovs(format!("OVS bridge {}", self.cfg.bridge), e))?;
        if changed {
            info!(bridge = %self.cfg.bridge, datapath = %self.cfg.datapath, "OVS bridge created or updated");
            self.flows_ok.store(false, Ordering::SeqCst);
            self.bridge_generation.fetch_add(1, Ordering::SeqCst);
            self.db
                .wait_applied(self.cfg.call_timeout)
                .await
                .map_err(|e| DataplaneError::ovs(format!("OVS bridge {}", self.cfg.bridge), e))?;
        }
        if let Some(uplink) = &self.cfg.uplink {
            self.db
                .ensure_port(&PortSpec {
                    bridge: self.cfg.bridge.clone(),
                    name: uplink.clone(),
                    ..Default::default()
                })
                .await
                .map_err(|e| DataplaneError::ovs(format!("--uplink {uplink}"), e))?;
        }
        Ok(changed)
    }

    /// Whose our bridge is, from the OVSDB cache.
    fn bridge_owner(&self) -> BridgeOwner {
        self.db
            .with_cache(|c| match c.by_name("Bridge", &self.cfg.bridge) {
                None => BridgeOwner::Missing,
                Some((_, row)) => {
                    let ids =
                        ovsdb::ops::as_str_map(row.get("external_ids").unwrap_or(&Value::Null));
                    if ids.get(BRIDGE_LABEL).map(String::as_str) == Some("true") {
                        BridgeOwner::Berth
                    } else {
                        BridgeOwner::Other
                    }
                }
            })
    }

    /// Installs the base flow unless it is there (checked on the switch when `check`).
    async fn ensure_flows(&self, check: bool) -> DpResult<bool> {
        let conn = self.db.connection_count();
        if self.flows_ok.load(Ordering::SeqCst)
            && !check
            && self.flows_conn.load(Ordering::SeqCst) == conn
        {
            return Ok(false);
        }
        self.flows_conn.store(conn, Ordering::SeqCst);
        let flow_err = |e: ovs_ffi::Error| {
            self.flows_ok.store(false, Ordering::SeqCst);
            DataplaneError::ovs(
                format!(
                    "OpenFlow on bridge {} ({})",
                    self.cfg.bridge,
                    ovs_ffi::openflow::mgmt_socket(&self.cfg.rundir, &self.cfg.bridge).display()
                ),
                e,
            )
        };
        self.wait_for_mgmt_socket().await.inspect_err(|_| {
            self.flows_ok.store(false, Ordering::SeqCst);
        })?;
        // Add replaces a flow with the same match and priority in place: no gap (a base flow
        // of a release before the guard, NORMAL in table 0, is replaced so).
        let (added, _) = self
            .sync_flows_counted(COOKIE_BASE, self.base_flows().to_vec())
            .await
            .map_err(flow_err)?;
        self.flows_ok.store(true, Ordering::SeqCst);
        if added > 0 {
            info!(bridge = %self.cfg.bridge, "base flows installed");
        }
        Ok(added > 0)
    }

    fn port_spec(&self, plan: &EndpointPlan) -> PortSpec {
        let mut ids = BTreeMap::new();
        ids.insert(EXT_ENDPOINT.to_string(), plan.endpoint_id.clone());
        ids.insert(EXT_NETWORK.to_string(), plan.network_id.clone());
        ids.insert(EXT_HOST.to_string(), plan.host_id.clone());
        PortSpec {
            bridge: self.cfg.bridge.clone(),
            name: plan.host_if.clone(),
            tag: Some(plan.vlan),
            iface_external_ids: ids,
            ..Default::default()
        }
    }

    /// Port names on our bridge.
    fn bridge_ports(&self) -> Vec<String> {
        let bridge = self.cfg.bridge.clone();
        self.db.with_cache(|c| {
            let Some((_, br)) = c.by_name("Bridge", &bridge) else {
                return Vec::new();
            };
            let ports = ovsdb::ops::as_uuid_set(br.get("ports").unwrap_or(&Value::Null));
            ports
                .iter()
                .filter_map(|u| c.row("Port", u))
                .filter_map(|r| r.get("name").and_then(Value::as_str).map(str::to_string))
                .collect()
        })
    }

    async fn plug(&self, plan: &EndpointPlan) -> DpResult<()> {
        check_name(&plan.host_if)?;
        check_name(&plan.container_if)?;
        let (host, peer, mtu, mac) = (
            plan.host_if.clone(),
            plan.container_if.clone(),
            plan.mtu,
            plan.mac,
        );
        let netdev = self.cfg.datapath == "netdev";
        blocking(move || {
            // A leftover of a crashed attempt with the same (endpoint-derived) name.
            netlink::delete(&host).map_err(|e| io_err("deleting stale veth", &host, e))?;
            netlink::create_veth(&host, &peer, mtu, &mac)
                .map_err(|e| io_err("creating veth", &host, e))?;
            if netdev {
                ethtool::tx_checksum_off(&host)
                    .map_err(|e| io_err("turning TX checksum offload off on", &host, e))?;
                ethtool::tx_checksum_off(&peer)
                    .map_err(|e| io_err("turning TX checksum offload off on", &peer, e))?;
            }
            netlink::set_up(&host).map_err(|e| io_err("setting up", &host, e))
        })
        .await?;
        self.db
            .ensure_port(&self.port_spec(plan))
            .await
            .map_err(|e| DataplaneError::ovs(format!("OVS port {}", plan.host_if), e))?;
        {
            // In place before the container can send (its guard, or the pass that marks its
            // VLAN for the rate limits of others): its port's number is needed for that.
            let ofport = self
                .db
                .wait_ofport(&plan.host_if, self.cfg.call_timeout)
                .await
                .map_err(|e| DataplaneError::ovs(format!("OVS port {}", plan.host_if), e))?;
            self.add_spoof_flows(plan, ofport).await?;
        }
        if !plan.limits.is_unlimited() {
            let err = |e: ovs_ffi::Error| {
                DataplaneError::ovs(format!("rate limits of {}", plan.host_if), e)
            };
            let (flows, meters) = self.qos_plan(std::slice::from_ref(plan));
            for m in &meters {
                self.of.ensure_meter(m).await.map_err(err)?;
            }
            let mods: Vec<FlowMod> = flows.into_iter().map(FlowMod::Add).collect();
            self.of.flow_mods(&mods).await.map_err(err)?;
        }
        Ok(())
    }

    async fn unplug(&self, host_if: &str) -> DpResult<()> {
        check_name(host_if)?;
        let mut errors = DataplaneErrors::default();
        // Its ofport may be given to another port later: its ARP and fence flows and its meters
        // (their flows go with them) go first. Only on a bridge that is Berth's: meters carry
        // no cookie, so on another's bridge the same ids may be its owner's.
        let ours = self.bridge_owner() == BridgeOwner::Berth;
        if let Some(ofport) = self.ofport(host_if).filter(|_| ours) {
            let by_port = |cookie| FlowMod::Delete {
                table: None,
                cookie,
                cookie_mask: u64::MAX,
                matches: Match::new().in_port(ofport),
            };
            if let Err(e) = self
                .of
                .flow_mods(&[
                    by_port(COOKIE_ARP),
                    by_port(COOKIE_QOS),
                    by_port(fence::COOKIE_FENCE),
                    by_port(COOKIE_SPOOF),
                ])
                .await
            {
                errors.push(DataplaneError::ovs(
                    format!("ARP, rate-limit, fence and anti-spoofing flows of {host_if}"),
                    e,
                ));
            }
            match self.of.meter_configs(None).await {
                Ok(meters) => {
                    for id in [egress_meter(ofport), ingress_meter(ofport)] {
                        if meters.iter().any(|m| m.id == id) {
                            if let Err(e) = self.of.delete_meter(id).await {
                                errors.push(DataplaneError::ovs(
                                    format!("meter {id} of {host_if}"),
                                    e,
                                ));
                            }
                        }
                    }
                }
                Err(e) => errors.push(DataplaneError::ovs(format!("meters of {host_if}"), e)),
            }
        }
        if self.db.is_connected() {
            if let Err(e) = self.db.delete_port(&self.cfg.bridge, host_if).await {
                errors.push(DataplaneError::ovs(format!("OVS port {host_if}"), e));
            }
        } else {
            warn!(
                port = host_if,
                "OVS unreachable: its port row is removed by the next reconcile"
            );
        }
        let host = host_if.to_string();
        if let Err(e) = blocking(move || {
            netlink::delete(&host)
                .map(|_| ())
                .map_err(|e| io_err("deleting veth", &host, e))
        })
        .await
        {
            errors.push(e);
        }
        errors.into_result()
    }
}

/// The last line of defence against a bad name: only berth's own names are created, deleted
/// or unplugged (the callers derive them from endpoint ids already).
fn check_name(name: &str) -> DpResult<()> {
    if super::is_berth_if_name(name) {
        Ok(())
    } else {
        Err(DataplaneError::Refused(format!(
            "interface {name:?} is not one berth-net creates (vb/tb + 10 hex): not touched"
        )))
    }
}

impl Dataplane for OvsDataplane {
    fn ready(&self) -> BoxFuture<'_, DpResult<()>> {
        Box::pin(async move {
            self.ensure_bridge().await?;
            self.ensure_flows(false).await?;
            Ok(())
        })
    }

    fn create_endpoint<'a>(&'a self, plan: &'a EndpointPlan) -> BoxFuture<'a, DpResult<()>> {
        Box::pin(async move {
            match self.plug(plan).await {
                Ok(()) => Ok(()),
                Err(e) => {
                    if let Err(undo) = self.unplug(&plan.host_if).await {
                        warn!(endpoint = %plan.endpoint_id, error = %undo, "undoing a failed endpoint");
                    }
                    Err(e)
                }
            }
        })
    }

    fn delete_endpoint<'a>(&'a self, host_if: &'a str) -> BoxFuture<'a, DpResult<()>> {
        Box::pin(async move { self.unplug(host_if).await })
    }

    fn reassert<'a>(
        &'a self,
        endpoints: &'a [EndpointPlan],
    ) -> BoxFuture<'a, DpResult<ReassertReport>> {
        Box::pin(async move {
            let mut report = ReassertReport {
                bridge_created: self.ensure_bridge().await?,
                ..Default::default()
            };
            for plan in endpoints {
                if !netlink::exists(&plan.host_if) {
                    // The container's side is gone: Docker deletes the endpoint when it can;
                    // its port would only show an error meanwhile.
                    continue;
                }
                match self.db.ensure_port(&self.port_spec(plan)).await {
                    Ok(true) => report.ports_fixed.push(plan.host_if.clone()),
                    Ok(false) => {}
                    Err(e) => {
                        return Err(DataplaneError::ovs(format!("OVS port {}", plan.host_if), e))
                    }
                }
            }
            // The guard before the base flows: after an ovs-vswitchd restart the ports pass
            // nothing until both are in, rather than everything for a moment.
            self.wait_for_mgmt_socket().await?;
            report.spoof_flow_changes = self.sync_spoof(endpoints).await?;
            report.flows_installed = self.ensure_flows(true).await?;
            report.rate_limit_changes = self.sync_qos(endpoints).await?;
            Ok(report)
        })
    }

    fn label_container<'a>(
        &'a self,
        plan: &'a EndpointPlan,
        container_id: &'a str,
    ) -> BoxFuture<'a, DpResult<()>> {
        Box::pin(async move {
            if self.db.port(&plan.host_if).is_none() {
                return Ok(());
            }
            // ensure_port only adds keys, so the reconciler's specs (without the container)
            // keep the label.
            let mut spec = self.port_spec(plan);
            spec.iface_external_ids
                .insert(EXT_CONTAINER.to_string(), container_id.to_string());
            self.db
                .ensure_port(&spec)
                .await
                .map(drop)
                .map_err(|e| DataplaneError::ovs(format!("OVS port {}", plan.host_if), e))
        })
    }

    fn fence<'a>(
        &'a self,
        host_ifs: &'a std::collections::BTreeSet<String>,
    ) -> BoxFuture<'a, DpResult<usize>> {
        Box::pin(self.sync_fence(host_ifs))
    }

    fn sync_arp<'a>(&'a self, entries: &'a [ArpEntry]) -> BoxFuture<'a, DpResult<(usize, usize)>> {
        Box::pin(async move {
            let err = |e: ovs_ffi::Error| {
                DataplaneError::ovs(format!("ARP proxy flows on bridge {}", self.cfg.bridge), e)
            };
            let mut installed = self.arp.lock().await;
            let (flows, mut now) = self.arp_flows(entries);
            let (conn, generation) = (
                self.db.connection_count(),
                self.bridge_generation.load(Ordering::SeqCst),
            );
            // Idle passes cost the same whatever the fleet's size: the same flows as installed
            // and OVS counting as many under our cookie need no dump (see ARP_FULL_CHECK).
            let recent = installed.checked.is_some_and(|(at, c, g)| {
                at.elapsed() < flows::ARP_FULL_CHECK && c == conn && g == generation
            });
            if installed.synced && recent && installed.same_flows(&now) {
                let filter = FlowFilter {
                    cookie: COOKIE_ARP,
                    cookie_mask: u64::MAX,
                    ..Default::default()
                };
                let counted = self.of.aggregate_stats(&filter).await.map_err(err)?;
                if counted.flow_count as usize == now.flow_count() {
                    return Ok((0, 0));
                }
                info!(
                    bridge = %self.cfg.bridge,
                    in_ovs = counted.flow_count,
                    installed = now.flow_count(),
                    "ARP proxy flows changed behind our back: comparing them all"
                );
            }
            installed.synced = false;
            let counts = self
                .sync_flows_counted(COOKIE_ARP, flows)
                .await
                .map_err(err)?;
            now.checked = Some((std::time::Instant::now(), conn, generation));
            *installed = now;
            Ok(counts)
        })
    }

    fn update_arp<'a>(
        &'a self,
        changes: &'a [ArpChange],
    ) -> BoxFuture<'a, DpResult<Option<(usize, usize)>>> {
        Box::pin(async move {
            if !self.connected() {
                return Err(self.unreachable());
            }
            self.update_arp_flows(changes).await.map_err(|e| {
                DataplaneError::ovs(format!("ARP proxy flows on bridge {}", self.cfg.bridge), e)
            })
        })
    }

    fn announce<'a>(
        &'a self,
        host_if: &'a str,
        mac: [u8; 6],
        ip: std::net::Ipv4Addr,
    ) -> BoxFuture<'a, DpResult<()>> {
        Box::pin(async move {
            let ofport = match self.ofport(host_if) {
                Some(p) => p,
                None => self
                    .db
                    .wait_ofport(host_if, self.cfg.call_timeout)
                    .await
                    .map_err(|e| DataplaneError::ovs(format!("OVS port {host_if}"), e))?,
            };
            self.of
                .packet_out(
                    ofport,
                    &[Action::Output(Port::Normal)],
                    &ovs_ffi::openflow::gratuitous_arp(Mac(mac), ip),
                )
                .await
                .map_err(|e| DataplaneError::ovs(format!("gratuitous ARP on {host_if}"), e))
        })
    }

    fn rate_limit_drops(&self) -> Vec<RateLimitDrops> {
        self.drops.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn spoof_drops(&self) -> Vec<SpoofDrops> {
        self.spoof_drops
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn ports(&self) -> Vec<PortView> {
        self.bridge_ports()
            .into_iter()
            .filter_map(|name| self.db.port(&name))
            .filter_map(|p| {
                let iface = p.interfaces.first()?;
                let endpoint_id = iface.external_ids.get(EXT_ENDPOINT).cloned()?;
                Some(PortView {
                    name: p.name.clone(),
                    tag: p.tag,
                    endpoint_id: Some(endpoint_id),
                    network_id: iface.external_ids.get(EXT_NETWORK).cloned(),
                    host_id: iface.external_ids.get(EXT_HOST).cloned(),
                    container_id: iface.external_ids.get(EXT_CONTAINER).cloned(),
                    ofport: iface.ofport,
                    has_device: netlink::exists(&p.name),
                })
            })
            .collect()
    }

    fn portless_veths(&self) -> BoxFuture<'_, DpResult<Vec<String>>> {
        Box::pin(async move {
            // The first connection (and its monitor's rows) may still be under way at start.
            self.first_connection().await?;
            let veths = blocking(|| {
                Ok(netlink::links()
                    .into_iter()
                    .filter(|n| n.starts_with("vb") && super::is_berth_if_name(n))
                    // /sys may be another namespace's (`nsenter` without a fresh sysfs): only
                    // what this namespace has counts.
                    .filter(|n| netlink::exists(n) && netlink::is_veth(n))
                    .collect::<Vec<_>>())
            })
            .await?;
            Ok(self.db.with_cache(|c| {
                veths
                    .into_iter()
                    .filter(|n| {
                        c.by_name("Port", n).is_none() && c.by_name("Interface", n).is_none()
                    })
                    .collect()
            }))
        })
    }

    fn datapath_type(&self) -> &str {
        &self.cfg.datapath
    }

    fn connected(&self) -> bool {
        self.db.is_connected()
    }
}
