//! The admin API's side of the driver: what `netplugin network|endpoint|pool|host ...` shows and
//! does. Views are the admin socket's JSON (the CLI decodes the same structs).

use std::collections::BTreeMap;

use plugin_transport::docker::DockerClient;
use serde::Serialize;

use super::{EndpointRelease, LatencySummary, ReleaseReason, Service};
use crate::dataplane::RateLimitDrops;
use crate::docker_sync::{self, Attachment};
use crate::error::{NetError, NetResult};
use crate::fleet::{self, AddressChange, Audit, HostView, ReclaimReport};
use crate::ipam::describe_holder;
use crate::ipnet::Ipv4Net;
use crate::state::*;

/// `GET /stats`. Fields in alphabetical order: the JSON is byte-for-byte what the admin socket
/// has always answered (it was a `serde_json` map).
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub datapath: String,
    pub host_id: String,
    pub latencies: BTreeMap<String, LatencySummary>,
    pub ovs_connected: bool,
    pub rate_limit_drops: Vec<RateLimitDrops>,
    /// Packets each guarded endpoint's port dropped as spoofed (as of the last reconcile).
    pub spoof_drops: Vec<crate::dataplane::SpoofDrops>,
    pub store: &'static str,
}

impl Service {
    pub async fn admin_networks(&self) -> NetResult<Vec<NetworkView>> {
        let state = self.state.clone();
        store_op("list networks", move || {
            let eps = state.endpoints()?;
            Ok(state
                .networks()?
                .into_iter()
                .map(|n| NetworkView {
                    endpoints: eps.iter().filter(|e| e.network_id == n.id).count(),
                    id: n.id,
                    vlan: n.vlan,
                    vlan_auto: n.vlan_auto,
                    subnet: n.subnet.map(|s| s.to_string()).unwrap_or_default(),
                    gateway: n.gateway.map(|g| g.to_string()).unwrap_or_default(),
                    mtu: n.mtu,
                    pool_id: n.pool_id.unwrap_or_default(),
                    host_id: n.host_id,
                    limits: n.limits,
                })
                .collect())
        })
        .await
    }

    pub async fn admin_endpoints(&self, network: Option<String>) -> NetResult<Vec<EndpointView>> {
        let state = self.state.clone();
        let ports: BTreeMap<String, (Option<u16>, Option<String>)> = self
            .dp
            .ports()
            .into_iter()
            .map(|p| (p.name, (p.tag, p.container_id)))
            .collect();
        store_op("list endpoints", move || {
            Ok(state
                .endpoints()?
                .into_iter()
                .filter(|e| {
                    network
                        .as_deref()
                        .is_none_or(|n| e.network_id.starts_with(n))
                })
                .map(|e| {
                    let (host_if, container_if) = (e.host_if_name(), e.container_if_name());
                    let port = ports.get(&host_if);
                    EndpointView {
                        ovs_port: if port.is_some() { "present" } else { "missing" }.into(),
                        ovs_tag: port.and_then(|p| p.0),
                        container_id: port.and_then(|p| p.1.clone()),
                        limits: e.limits,
                        id: e.id,
                        network_id: e.network_id,
                        address: e.address.to_string(),
                        mac: e.mac.to_string(),
                        host_if,
                        container_if,
                        vlan: e.vlan,
                        host_id: e.host_id,
                    }
                })
                .collect())
        })
        .await
    }

    pub async fn admin_pools(&self) -> NetResult<Vec<PoolView>> {
        let state = self.state.clone();
        store_op("list pools", move || {
            state
                .pools()?
                .into_iter()
                .map(|p| pool_view(&state, p, false))
                .collect()
        })
        .await
    }

    /// One pool, by pool id, subnet or network id (prefix).
    pub async fn admin_pool(&self, key: String) -> NetResult<PoolView> {
        let state = self.state.clone();
        store_op("show pool", move || {
            let pools = state.pools()?;
            let found = pools.into_iter().find(|p| {
                p.id == key
                    || p.subnet == key
                    || (key.len() >= 4
                        && p.network_id.as_deref().is_some_and(|n| n.starts_with(&key)))
            });
            match found {
                Some(p) => pool_view(&state, p, true),
                None => Err(NetError::NotFound(format!(
                    "no pool {key:?} (give a pool id, a subnet or a network id)"
                ))),
            }
        })
        .await
    }

    pub fn stats(&self) -> Stats {
        Stats {
            latencies: self.latencies.summary(),
            ovs_connected: self.dp.connected(),
            datapath: self.dp.datapath_type().to_string(),
            store: self.state.store.kind(),
            host_id: self.state.host_id.clone(),
            rate_limit_drops: self.dp.rate_limit_drops(),
            spoof_drops: self.dp.spoof_drops(),
        }
    }

    pub async fn hosts(&self) -> NetResult<Vec<HostView>> {
        let state = self.state.clone();
        store_op("list hosts", move || fleet::hosts(&state)).await
    }

    pub async fn audit(&self) -> NetResult<Audit> {
        let state = self.state.clone();
        store_op("audit", move || fleet::audit(&state)).await
    }

    /// `netplugin host reclaim`: what a dead host held goes back to the pools.
    pub async fn reclaim_host(&self, host: String, force: bool) -> NetResult<ReclaimReport> {
        let ipam = self.ipam.clone();
        store_op("reclaim", move || fleet::reclaim(&ipam, &host, force)).await
    }

    /// `netplugin pool reserve|unreserve|release <ip>`.
    pub async fn change_address(
        &self,
        action: String,
        ip: String,
        pool: Option<String>,
    ) -> NetResult<AddressChange> {
        let ipam = self.ipam.clone();
        store_op("address admin", move || {
            let pool = pool.as_deref();
            match action.as_str() {
                "reserve" => fleet::reserve(&ipam, &ip, pool),
                "unreserve" => fleet::unreserve(&ipam, &ip, pool),
                "release" => fleet::release(&ipam, &ip, pool),
                other => Err(NetError::NotFound(format!("no admin action {other:?}"))),
            }
        })
        .await
    }

    /// `netplugin endpoint release`: refused while Docker lists the endpoint, or cannot be
    /// asked, unless forced.
    pub async fn release_endpoint_by_admin(
        &self,
        docker: &DockerClient,
        endpoint: &str,
        force: bool,
    ) -> NetResult<EndpointRelease> {
        let record = self.find_endpoint(endpoint).await?;
        if !force {
            let view = docker_sync::fetch_view(docker).await.map_err(|e| {
                NetError::conflict(format!(
                    "cannot ask Docker whether endpoint {} is in use ({e}); --force releases it without asking",
                    short(&record.id)
                ))
            })?;
            match view.attachment(&record.network_id, &record.id) {
                Attachment::Listed(Some(container)) => {
                    return Err(NetError::conflict(format!(
                        "endpoint {} is in use by container {}: `docker network disconnect` or remove the container instead",
                        short(&record.id),
                        short(&container)
                    )))
                }
                Attachment::Listed(None) => {
                    return Err(NetError::conflict(format!(
                        "Docker still lists endpoint {} on network {}; --force releases it anyway",
                        short(&record.id),
                        short(&record.network_id)
                    )))
                }
                Attachment::Missing | Attachment::UnknownNetwork => {}
            }
        }
        self.release_endpoint(&record, ReleaseReason::Admin).await
    }
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct NetworkView {
    pub id: String,
    pub vlan: u16,
    pub vlan_auto: bool,
    pub subnet: String,
    pub gateway: String,
    pub mtu: u32,
    pub pool_id: String,
    pub endpoints: usize,
    pub host_id: String,
    /// Each container's rate limits on it.
    #[serde(default)]
    pub limits: RateLimits,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct EndpointView {
    pub id: String,
    pub network_id: String,
    pub address: String,
    pub mac: String,
    pub host_if: String,
    pub container_if: String,
    pub vlan: u16,
    pub host_id: String,
    pub ovs_port: String,
    pub ovs_tag: Option<u16>,
    /// The container Docker attached it to (this host's endpoints, once learned).
    #[serde(default)]
    pub container_id: Option<String>,
    #[serde(default)]
    pub limits: RateLimits,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct AddressView {
    pub address: String,
    pub held_by: String,
    pub mac: Option<String>,
    #[serde(default)]
    pub host: String,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct PoolView {
    pub id: String,
    pub address_space: String,
    pub subnet: String,
    pub ip_range: Option<String>,
    pub auto: bool,
    pub network_id: Option<String>,
    pub allocated: usize,
    pub free: u64,
    /// Hosts using the pool (one per host that created the network).
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<AddressView>,
}

fn pool_view(state: &State, p: PoolRecord, detail: bool) -> NetResult<PoolView> {
    let addrs = state.addresses(&p.id)?;
    let net: Option<Ipv4Net> = p.subnet.parse().ok();
    let usable = net
        .map(|n| {
            let (lo, hi) = n.hosts();
            u64::from(hi - lo) + 1
        })
        .unwrap_or(0);
    Ok(PoolView {
        allocated: addrs.len(),
        free: usable.saturating_sub(addrs.len() as u64),
        addresses: if detail {
            addrs
                .iter()
                .map(|a| AddressView {
                    address: a.address.to_string(),
                    held_by: describe_holder(a),
                    mac: a.mac.clone(),
                    host: a.host_id.clone(),
                })
                .collect()
        } else {
            Vec::new()
        },
        hosts: p.users().into_iter().collect(),
        id: p.id,
        address_space: p.address_space,
        subnet: p.subnet,
        ip_range: p.sub_pool,
        auto: p.auto,
        network_id: p.network_id,
    })
}
