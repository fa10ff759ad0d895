//! Live rate-limit changes (`netplugin endpoint set-limits`, `netplugin network set-limits`):
//! the records change in the store, and the reconcile pass brings the meters to them (modified
//! in place: a running transfer moves to the new rate without its connection noticing). The
//! host that runs the command applies its own endpoints at once; other hosts at their next
//! pass.

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::options::parse_bits;
use super::{Service, CAS_ATTEMPTS};
use crate::error::{NetError, NetResult};
use crate::state::*;
use crate::store::StoreError;

/// The flags of a `set-limits` command: each `None` leaves that limit as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitsChange {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<String>,
}

/// What a `set-limits` command changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitsReport {
    /// The network's new defaults (`network set-limits`).
    pub network_limits: Option<RateLimits>,
    /// Each endpoint whose limits were rewritten, with its limits now.
    pub endpoints: Vec<EndpointLimits>,
    /// A failure applying them on this host (the reconcile pass retries); None when in force.
    pub datapath_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointLimits {
    pub endpoint_id: String,
    pub host_id: String,
    pub limits: RateLimits,
}

/// How a value changes one field: `Some(k)` kbit/s (0: unlimited, for own limits), `None`:
/// back to the network's (own limits) or unlimited (a network's).
type Field = Option<u32>;

const CLEAR: &[&str] = &["none", "0", "off", "max"];

/// An endpoint's flag: a rate, `none` (unlimited whatever the network says) or `network`
/// (follow the network's default again).
fn own_value(flag: &str, v: &str) -> NetResult<Field> {
    let v = v.trim();
    if v == "network" {
        return Ok(None);
    }
    if CLEAR.contains(&v) {
        return Ok(Some(0));
    }
    parse_bits(flag, v)
}

/// A network's flag: a rate or `none`.
fn net_value(flag: &str, v: &str) -> NetResult<Field> {
    let v = v.trim();
    if CLEAR.contains(&v) {
        return Ok(None);
    }
    parse_bits(flag, v)
}

fn apply(
    to: &mut RateLimits,
    change: &LimitsChange,
    parse: fn(&str, &str) -> NetResult<Field>,
) -> NetResult<()> {
    if let Some(v) = &change.egress {
        to.egress_kbps = parse("--egress ", v)?;
    }
    if let Some(v) = &change.ingress {
        to.ingress_kbps = parse("--ingress ", v)?;
    }
    if let Some(v) = &change.burst {
        to.burst_kbits = parse("--burst ", v)?;
    }
    Ok(())
}

fn check(change: &LimitsChange) -> NetResult<()> {
    if change.egress.is_none() && change.ingress.is_none() && change.burst.is_none() {
        return Err(NetError::invalid(
            "nothing to change: give --egress, --ingress and/or --burst",
        ));
    }
    Ok(())
}

fn contention(what: &str) -> NetError {
    NetError::Store(StoreError::Contention {
        what: what.into(),
        attempts: CAS_ATTEMPTS,
    })
}

/// Rewrites one endpoint record: `own` changed by `change` (own form) and/or the network's
/// defaults `old` → `new`.
fn update_endpoint(
    state: &State,
    id: &str,
    change: Option<&LimitsChange>,
    old_net: Option<RateLimits>,
    new_net: Option<RateLimits>,
) -> NetResult<EndpointLimits> {
    let key = endpoint_key(id);
    for _ in 0..CAS_ATTEMPTS {
        let Some((mut rec, rev)) = state.get::<EndpointRecord>(&key)? else {
            return Err(NetError::NotFound(format!("no endpoint {id:?}")));
        };
        let current = match new_net {
            Some(n) => n,
            None => state
                .network(&rec.network_id)?
                .map(|n| n.limits)
                .unwrap_or_default(),
        };
        let mut own = rec
            .own_limits
            .unwrap_or_else(|| RateLimits::own_from(rec.limits, old_net.unwrap_or(current)));
        if let Some(c) = change {
            apply(&mut own, c, own_value)?;
        }
        rec.own_limits = Some(own);
        rec.limits = own.over(current);
        if state.update_record(&key, &rec, rev)? {
            return Ok(EndpointLimits {
                endpoint_id: rec.id,
                host_id: rec.host_id,
                limits: rec.limits,
            });
        }
    }
    Err(contention("endpoint limits"))
}

impl Service {
    /// `netplugin endpoint set-limits ENDPOINT|CONTAINER`: the endpoint's own limits.
    pub async fn set_endpoint_limits(
        &self,
        endpoint: &str,
        change: LimitsChange,
    ) -> NetResult<LimitsReport> {
        check(&change)?;
        let record = match self.find_endpoint(endpoint).await {
            Ok(r) => r,
            Err(NetError::NotFound(_)) => self.endpoint_of_container(endpoint).await?,
            Err(e) => return Err(e),
        };
        let state = self.state.clone();
        let updated = store_op("set endpoint limits", move || {
            update_endpoint(&state, &record.id, Some(&change), None, None)
        })
        .await?;
        info!(endpoint = %updated.endpoint_id, limits = %updated.limits.describe(), "endpoint limits changed");
        self.apply_limits(None, vec![updated]).await
    }

    /// `netplugin network set-limits NETWORK`: the network's defaults, and every endpoint of
    /// the network (all hosts) that has no limit of its own in that direction.
    pub async fn set_network_limits(
        &self,
        network: &str,
        change: LimitsChange,
    ) -> NetResult<LimitsReport> {
        check(&change)?;
        let net = self.find_network(network).await?;
        let state = self.state.clone();
        let (limits, endpoints) = store_op("set network limits", move || {
            let key = network_key(&net.id);
            let mut attempt = 0;
            let (old, new) = loop {
                attempt += 1;
                if attempt > CAS_ATTEMPTS {
                    return Err(contention("network limits"));
                }
                let Some((mut rec, rev)) = state.get::<NetworkRecord>(&key)? else {
                    return Err(NetError::NotFound(format!(
                        "network {} is gone",
                        short(&net.id)
                    )));
                };
                let old = rec.limits;
                apply(&mut rec.limits, &change, net_value)?;
                if state.update_record(&key, &rec, rev)? {
                    break (old, rec.limits);
                }
            };
            let mut updated = Vec::new();
            for e in state.endpoints()? {
                if e.network_id == net.id {
                    updated.push(update_endpoint(&state, &e.id, None, Some(old), Some(new))?);
                }
            }
            Ok((new, updated))
        })
        .await?;
        info!(network = %short(network), limits = %limits.describe(), endpoints = endpoints.len(), "network limits changed");
        self.apply_limits(Some(limits), endpoints).await
    }

    /// Puts this host's changed endpoints' meters in force now (a reconcile pass).
    async fn apply_limits(
        &self,
        network_limits: Option<RateLimits>,
        endpoints: Vec<EndpointLimits>,
    ) -> NetResult<LimitsReport> {
        let mine = endpoints.iter().any(|e| e.host_id == self.state.host_id);
        let datapath_error = if mine {
            match self.reconcile().await {
                Ok(_) => None,
                Err(e) => {
                    warn!(error = %e, "limits recorded; the reconcile pass applies them when it can");
                    Some(e.to_string())
                }
            }
        } else {
            None
        };
        Ok(LimitsReport {
            network_limits,
            endpoints,
            datapath_error,
        })
    }

    /// The network with this id, or the only one whose id starts with it (4+ characters).
    async fn find_network(&self, id: &str) -> NetResult<NetworkRecord> {
        if id.len() < 4 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(NetError::invalid(format!(
                "network {id:?}: give its id or a prefix of at least 4 characters (docker network inspect -f '{{{{.Id}}}}' NAME)"
            )));
        }
        let state = self.state.clone();
        let wanted = id.to_string();
        let mut found: Vec<NetworkRecord> = store_op("find network", move || {
            Ok(state
                .networks()?
                .into_iter()
                .filter(|n| n.id.starts_with(&wanted))
                .collect::<Vec<_>>())
        })
        .await?;
        match found.len() {
            0 => Err(NetError::NotFound(format!("no berth-net network {id:?}"))),
            1 => Ok(found.remove(0)),
            n => Err(NetError::conflict(format!(
                "{n} networks start with {id:?}: give more of the id"
            ))),
        }
    }

    /// The endpoint of this host serving the container with this id (or id prefix), as
    /// learned from Docker (`berth-container-id` on its port).
    async fn endpoint_of_container(&self, container: &str) -> NetResult<EndpointRecord> {
        let matches: Vec<String> = self
            .dp
            .ports()
            .into_iter()
            .filter(|p| {
                p.container_id
                    .as_deref()
                    .is_some_and(|c| c.starts_with(container))
            })
            .filter_map(|p| p.endpoint_id)
            .collect();
        match matches.as_slice() {
            [one] => self.find_endpoint(one).await,
            [] => Err(NetError::NotFound(format!(
                "no endpoint or container {container:?} on this host (see `netplugin endpoint ls`; a container by its id: docker inspect -f '{{{{.Id}}}}' NAME)"
            ))),
            _ => Err(NetError::conflict(format!(
                "container {container:?} has several berth-net endpoints: give the endpoint id"
            ))),
        }
    }
}
