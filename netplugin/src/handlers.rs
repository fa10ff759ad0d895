//! Docker's NetworkDriver + IpamDriver on the plugin socket, and the admin API.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::Method;
use plugin_transport::docker::DockerClient;
use plugin_transport::{PluginError, Reply, Request, Router};

use crate::docker_sync::{self, Attachment};
use crate::error::NetError;
use crate::fleet;
use crate::ipam::{GLOBAL_SPACE, LOCAL_SPACE};
use crate::network::{store_op, EndpointRelease, ReleaseReason, Service};
use crate::protocol::*;
use crate::state::short;

fn ok<T>(r: Result<T, NetError>) -> Result<T, PluginError> {
    r.map_err(PluginError::from)
}

/// Adds a POST handler that gets the service.
macro_rules! route {
    ($router:expr, $svc:expr, $path:literal, |$s:ident, $req:ident : $ty:ty| $body:block) => {{
        let svc = $svc.clone();
        $router.post_json($path, move |$req: $ty| {
            let $s = svc.clone();
            async move $body
        })
    }};
}

pub fn plugin_router(svc: Arc<Service>) -> Router {
    let r = Router::new()
        .post_json("/Plugin.Activate", |_: Empty| async {
            Ok(ActivateResponse {
                implements: vec!["NetworkDriver", "IpamDriver"],
            })
        })
        .post_json("/NetworkDriver.GetCapabilities", |_: Empty| async {
            Ok(NetCapabilities {
                scope: "local",
                connectivity_scope: "global",
            })
        })
        .post_json("/IpamDriver.GetCapabilities", |_: Empty| async {
            Ok(IpamCapabilities {
                requires_mac_address: false,
                requires_request_replay: false,
            })
        })
        .post_json("/IpamDriver.GetDefaultAddressSpaces", |_: Empty| async {
            Ok(AddressSpaces {
                local_default_address_space: LOCAL_SPACE,
                global_default_address_space: GLOBAL_SPACE,
            })
        });
    // ---- network driver ----
    let r = route!(
        r,
        svc,
        "/NetworkDriver.CreateNetwork",
        |s, req: CreateNetworkRequest| { ok(s.create_network(req).await).map(|_| EmptyReply {}) }
    );
    let r = route!(
        r,
        svc,
        "/NetworkDriver.DeleteNetwork",
        |s, req: NetworkIdRequest| {
            ok(s.delete_network(&req.network_id).await).map(|_| EmptyReply {})
        }
    );
    let r = route!(
        r,
        svc,
        "/NetworkDriver.CreateEndpoint",
        |s, req: CreateEndpointRequest| { ok(s.create_endpoint(req).await) }
    );
    let r = route!(
        r,
        svc,
        "/NetworkDriver.DeleteEndpoint",
        |s, req: EndpointRequest| {
            ok(s.delete_endpoint(&req.network_id, &req.endpoint_id).await).map(|_| EmptyReply {})
        }
    );
    let r = route!(r, svc, "/NetworkDriver.Join", |s, req: JoinRequest| {
        ok(s.join(req).await)
    });
    let r = r
        .post_json("/NetworkDriver.Leave", |_: EndpointRequest| async {
            Ok(EmptyReply {})
        })
        .post_json(
            "/NetworkDriver.EndpointOperInfo",
            |_: EndpointRequest| async { Ok(OperInfoResponse::default()) },
        )
        .post_json(
            "/NetworkDriver.ProgramExternalConnectivity",
            |_: Empty| async { Ok(EmptyReply {}) },
        )
        .post_json(
            "/NetworkDriver.RevokeExternalConnectivity",
            |_: Empty| async { Ok(EmptyReply {}) },
        )
        .post_json("/NetworkDriver.DiscoverNew", |_: Empty| async {
            Ok(EmptyReply {})
        })
        .post_json("/NetworkDriver.DiscoverDelete", |_: Empty| async {
            Ok(EmptyReply {})
        })
        .post_json("/NetworkDriver.AllocateNetwork", |_: Empty| async {
            Ok(AllocateNetworkResponse::default())
        })
        .post_json("/NetworkDriver.FreeNetwork", |_: Empty| async {
            Ok(EmptyReply {})
        });
    // ---- IPAM (works without OVS) ----
    let r = route!(
        r,
        svc,
        "/IpamDriver.RequestPool",
        |s, req: RequestPoolRequest| {
            let ipam = s.ipam.clone();
            let (id, pool) = ok(store_op("request pool", move || {
                ipam.request_pool(&req.address_space, &req.pool, &req.sub_pool, req.v6)
            })
            .await)?;
            Ok(RequestPoolResponse {
                pool_id: id,
                pool,
                data: BTreeMap::new(),
            })
        }
    );
    let r = route!(
        r,
        svc,
        "/IpamDriver.ReleasePool",
        |s, req: PoolIdRequest| {
            let ipam = s.ipam.clone();
            ok(store_op("release pool", move || ipam.release_pool(&req.pool_id)).await)
                .map(|_| EmptyReply {})
        }
    );
    let r = route!(
        r,
        svc,
        "/IpamDriver.RequestAddress",
        |s, req: RequestAddressRequest| {
            let ipam = s.ipam.clone();
            let started = std::time::Instant::now();
            let address = ok(store_op("request address", move || {
                ipam.request_address(&req.pool_id, &req.address, &req.options)
            })
            .await)?;
            s.latencies.record("request_address", started.elapsed());
            Ok(RequestAddressResponse {
                address,
                data: BTreeMap::new(),
            })
        }
    );
    route!(
        r,
        svc,
        "/IpamDriver.ReleaseAddress",
        |s, req: ReleaseAddressRequest| {
            let ipam = s.ipam.clone();
            ok(store_op("release address", move || {
                ipam.release_address(&req.pool_id, &req.address)
            })
            .await)
            .map(|_| EmptyReply {})
        }
    )
}

fn reply<T: serde::Serialize>(r: Result<T, NetError>) -> Reply {
    match r {
        Ok(v) => Reply::json(&v),
        Err(e) => Reply::error(&PluginError::from(e)),
    }
}

fn query_param(req: &Request, name: &str) -> Option<String> {
    req.query.as_deref()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name && !v.is_empty()).then(|| v.to_string())
    })
}

/// Admin API: `GET /networks`, `/endpoints[?network=ID]`, `/pools`, `/pools/<id|subnet|network>`,
/// `/stats`, `/hosts`, `/audit`; `POST /reconcile`, `/hosts/reclaim`,
/// `/addresses/reserve|unreserve|release`, `/endpoints/release`.
pub fn admin_router(svc: Arc<Service>, docker: DockerClient) -> Router {
    let s1 = svc.clone();
    let s2 = svc.clone();
    let s3 = svc.clone();
    let s4 = svc.clone();
    let s5 = svc.clone();
    let s6 = svc.clone();
    let s7 = svc.clone();
    let s8 = svc.clone();
    let s9 = svc.clone();
    let s10 = svc.clone();
    let s11 = svc;
    Router::new()
        .route(Method::GET, "/networks", move |_req: Request| {
            let s = s1.clone();
            async move { reply(s.admin_networks().await) }
        })
        .route(Method::GET, "/endpoints", move |req: Request| {
            let s = s2.clone();
            async move { reply(s.admin_endpoints(query_param(&req, "network")).await) }
        })
        .route(Method::GET, "/pools", move |_req: Request| {
            let s = s3.clone();
            async move { reply(s.admin_pools().await) }
        })
        .route_prefix(Method::GET, "/pools/", move |req: Request| {
            let s = s4.clone();
            async move {
                let key = req.path.trim_start_matches("/pools/").replace("%2F", "/");
                reply(s.admin_pool(key).await)
            }
        })
        .route(Method::GET, "/stats", move |_req: Request| {
            let s = s5.clone();
            async move {
                Reply::json(&serde_json::json!({
                    "latencies": s.latencies.summary(),
                    "ovs_connected": s.dp.connected(),
                    "datapath": s.dp.datapath_type(),
                    "store": s.state.store.kind(),
                    "host_id": s.state.host_id,
                    "rate_limit_drops": s.dp.rate_limit_drops(),
                }))
            }
        })
        .route(Method::POST, "/reconcile", move |_req: Request| {
            let s = s6.clone();
            async move { reply(s.reconcile().await) }
        })
        .route(Method::GET, "/hosts", move |_req: Request| {
            let s = s7.clone();
            async move {
                let state = s.state.clone();
                reply(store_op("list hosts", move || fleet::hosts(&state)).await)
            }
        })
        .route(Method::POST, "/hosts/reclaim", move |req: Request| {
            let s = s8.clone();
            async move {
                let body: ReclaimBody = match body_of(&req) {
                    Ok(b) => b,
                    Err(e) => return Reply::error(&PluginError::from(e)),
                };
                let ipam = s.ipam.clone();
                reply(
                    store_op("reclaim", move || {
                        fleet::reclaim(&ipam, &body.host, body.force)
                    })
                    .await,
                )
            }
        })
        .route(Method::GET, "/audit", move |_req: Request| {
            let s = s9.clone();
            async move {
                let state = s.state.clone();
                reply(store_op("audit", move || fleet::audit(&state)).await)
            }
        })
        .route(Method::POST, "/endpoints/release", move |req: Request| {
            let s = s11.clone();
            let docker = docker.clone();
            async move {
                let body: ReleaseEndpointBody = match body_of(&req) {
                    Ok(b) => b,
                    Err(e) => return Reply::error(&PluginError::from(e)),
                };
                reply(release_endpoint(&s, &docker, &body).await)
            }
        })
        .route_prefix(Method::POST, "/addresses/", move |req: Request| {
            let s = s10.clone();
            async move {
                let body: AddressBody = match body_of(&req) {
                    Ok(b) => b,
                    Err(e) => return Reply::error(&PluginError::from(e)),
                };
                let ipam = s.ipam.clone();
                let action = req.path.trim_start_matches("/addresses/").to_string();
                reply(
                    store_op("address admin", move || {
                        let pool = body.pool.as_deref();
                        match action.as_str() {
                            "reserve" => fleet::reserve(&ipam, &body.ip, pool),
                            "unreserve" => fleet::unreserve(&ipam, &body.ip, pool),
                            "release" => fleet::release(&ipam, &body.ip, pool),
                            other => Err(NetError::NotFound(format!("no admin action {other:?}"))),
                        }
                    })
                    .await,
                )
            }
        })
}

#[derive(serde::Deserialize)]
struct ReclaimBody {
    host: String,
    #[serde(default)]
    force: bool,
}

#[derive(serde::Deserialize)]
struct ReleaseEndpointBody {
    endpoint: String,
    #[serde(default)]
    force: bool,
}

/// `netplugin endpoint release`: refused while Docker lists the endpoint, or cannot be asked,
/// unless forced.
async fn release_endpoint(
    svc: &Service,
    docker: &DockerClient,
    body: &ReleaseEndpointBody,
) -> Result<EndpointRelease, NetError> {
    let record = svc.find_endpoint(&body.endpoint).await?;
    if !body.force {
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
    svc.release_endpoint(&record, ReleaseReason::Admin).await
}

#[derive(serde::Deserialize)]
struct AddressBody {
    ip: String,
    #[serde(default)]
    pool: Option<String>,
}

fn body_of<T: serde::de::DeserializeOwned>(req: &Request) -> Result<T, NetError> {
    serde_json::from_slice(&req.body).map_err(|e| NetError::invalid(format!("request body: {e}")))
}
