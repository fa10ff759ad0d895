//! Docker's NetworkDriver + IpamDriver on the plugin socket, and the admin API. Handlers only
//! translate between the protocol and calls on [`Service`]; the rules live there.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::Method;
use plugin_transport::docker::DockerClient;
use plugin_transport::router::with;
use plugin_transport::{PluginError, Reply, Request, Router};

use crate::error::NetError;
use crate::ipam::{GLOBAL_SPACE, LOCAL_SPACE};
use crate::network::Service;
use crate::protocol::*;

fn ok<T>(r: Result<T, NetError>) -> Result<T, PluginError> {
    r.map_err(PluginError::from)
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
    let r = r.post_json(
        "/NetworkDriver.CreateNetwork",
        with(&svc, |s, req: CreateNetworkRequest| async move {
            ok(s.create_network(req).await).map(|_| EmptyReply {})
        }),
    );
    let r = r.post_json(
        "/NetworkDriver.DeleteNetwork",
        with(&svc, |s, req: NetworkIdRequest| async move {
            ok(s.delete_network(&req.network_id).await).map(|_| EmptyReply {})
        }),
    );
    let r = r.post_json(
        "/NetworkDriver.CreateEndpoint",
        with(&svc, |s, req: CreateEndpointRequest| async move {
            ok(s.create_endpoint(req).await)
        }),
    );
    let r = r.post_json(
        "/NetworkDriver.DeleteEndpoint",
        with(&svc, |s, req: EndpointRequest| async move {
            ok(s.delete_endpoint(&req.network_id, &req.endpoint_id).await).map(|_| EmptyReply {})
        }),
    );
    let r = r.post_json(
        "/NetworkDriver.Join",
        with(
            &svc,
            |s, req: JoinRequest| async move { ok(s.join(req).await) },
        ),
    );
    let r = r
        .post_json("/NetworkDriver.Leave", |_: EndpointRequest| async {
            Ok(EmptyReply {})
        })
        .post_json(
            "/NetworkDriver.EndpointOperInfo",
            with(&svc, |s, req: EndpointRequest| async move {
                Ok::<_, PluginError>(s.oper_info(&req.endpoint_id).await)
            }),
        )
        .post_json(
            "/NetworkDriver.ProgramExternalConnectivity",
            |req: ExternalConnectivityRequest| async move {
                ok(crate::network::refuse_published_ports(&req.options)).map(|_| EmptyReply {})
            },
        )
        // Nothing was programmed, so nothing to revoke (deliberate; docs/protocols.md §2).
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
    let r = r.post_json(
        "/IpamDriver.RequestPool",
        with(&svc, |s, req: RequestPoolRequest| async move {
            let (id, pool) = ok(s.request_pool(req).await)?;
            Ok(RequestPoolResponse {
                pool_id: id,
                pool,
                data: BTreeMap::new(),
            })
        }),
    );
    let r = r.post_json(
        "/IpamDriver.ReleasePool",
        with(&svc, |s, req: PoolIdRequest| async move {
            ok(s.release_pool(req.pool_id).await).map(|_| EmptyReply {})
        }),
    );
    let r = r.post_json(
        "/IpamDriver.RequestAddress",
        with(&svc, |s, req: RequestAddressRequest| async move {
            let address = ok(s.request_address(req).await)?;
            Ok(RequestAddressResponse {
                address,
                data: BTreeMap::new(),
            })
        }),
    );
    r.post_json(
        "/IpamDriver.ReleaseAddress",
        with(&svc, |s, req: ReleaseAddressRequest| async move {
            ok(s.release_address(req.pool_id, req.address).await).map(|_| EmptyReply {})
        }),
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
/// `/stats`, `/hosts`, `/audit`; `POST /reconcile[?prune=true]`, `/hosts/reclaim`,
/// `/addresses/reserve|unreserve|release`, `/endpoints/release`, `/endpoints/limits`,
/// `/networks/limits`.
pub fn admin_router(svc: Arc<Service>, docker: DockerClient) -> Router {
    let docker = Arc::new(docker);
    Router::new()
        .route(
            Method::GET,
            "/networks",
            with(&svc, |s, _| async move { reply(s.admin_networks().await) }),
        )
        .route(
            Method::GET,
            "/endpoints",
            with(&svc, |s, req: Request| async move {
                reply(s.admin_endpoints(query_param(&req, "network")).await)
            }),
        )
        .route(
            Method::GET,
            "/pools",
            with(&svc, |s, _| async move { reply(s.admin_pools().await) }),
        )
        .route_prefix(
            Method::GET,
            "/pools/",
            with(&svc, |s, req: Request| async move {
                let key = req.path.trim_start_matches("/pools/").replace("%2F", "/");
                reply(s.admin_pool(key).await)
            }),
        )
        .route(
            Method::GET,
            "/stats",
            with(&svc, |s, _| async move { Reply::json(&s.stats()) }),
        )
        .route(
            Method::POST,
            "/reconcile",
            with(&svc, |s, req: Request| async move {
                let prune = query_param(&req, "prune").is_some_and(|v| v == "true");
                reply(s.reconcile_with(prune).await)
            }),
        )
        .route(
            Method::GET,
            "/hosts",
            with(&svc, |s, _| async move { reply(s.hosts().await) }),
        )
        .route(
            Method::POST,
            "/hosts/reclaim",
            with(&svc, |s, req: Request| async move {
                match body_of::<ReclaimBody>(&req) {
                    Ok(b) => reply(s.reclaim_host(b.host, b.force).await),
                    Err(e) => Reply::error(&PluginError::from(e)),
                }
            }),
        )
        .route(
            Method::GET,
            "/audit",
            with(&svc, |s, _| async move { reply(s.audit().await) }),
        )
        .route(
            Method::POST,
            "/endpoints/release",
            with(&svc, move |s, req: Request| {
                let docker = docker.clone();
                async move {
                    match body_of::<ReleaseEndpointBody>(&req) {
                        Ok(b) => reply(
                            s.release_endpoint_by_admin(&docker, &b.endpoint, b.force)
                                .await,
                        ),
                        Err(e) => Reply::error(&PluginError::from(e)),
                    }
                }
            }),
        )
        .route(
            Method::POST,
            "/endpoints/limits",
            with(&svc, |s, req: Request| async move {
                match body_of::<SetLimitsBody>(&req) {
                    Ok(b) => reply(s.set_endpoint_limits(&b.target, b.change).await),
                    Err(e) => Reply::error(&PluginError::from(e)),
                }
            }),
        )
        .route(
            Method::POST,
            "/networks/limits",
            with(&svc, |s, req: Request| async move {
                match body_of::<SetLimitsBody>(&req) {
                    Ok(b) => reply(s.set_network_limits(&b.target, b.change).await),
                    Err(e) => Reply::error(&PluginError::from(e)),
                }
            }),
        )
        .route_prefix(
            Method::POST,
            "/addresses/",
            with(&svc, |s, req: Request| async move {
                match body_of::<AddressBody>(&req) {
                    Ok(b) => {
                        let action = req.path.trim_start_matches("/addresses/").to_string();
                        reply(s.change_address(action, b.ip, b.pool).await)
                    }
                    Err(e) => Reply::error(&PluginError::from(e)),
                }
            }),
        )
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

/// `POST /endpoints/limits` (target: endpoint or container) and `/networks/limits`.
#[derive(serde::Deserialize)]
struct SetLimitsBody {
    target: String,
    #[serde(flatten)]
    change: crate::network::LimitsChange,
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
