//! Docker's VolumeDriver API and the admin API, mapped onto the service.

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use plugin_transport::blocking::{run_blocking, run_blocking_or_undo, BlockingError};
use plugin_transport::docker::DockerClient;
use plugin_transport::router::with;
use plugin_transport::{PluginError, Reply, Request, Router};

use crate::error::VolError;
use crate::limits::{parse_limit, LIMIT_OPTIONS};
use crate::protocol::*;
use crate::service::{display, LimitsChange, VolumeService};
use crate::spec::validate_name;
use crate::throttle::LimitsChanged;

/// The admin calls' bound.
const FAST_OP: Duration = Deadlines::DOCKER.fast;

/// How long a plugin call may run before the answer is a timeout error.
#[derive(Clone, Copy, Debug)]
pub struct Deadlines {
    /// Create and Mount (mkfs, XFS log replay).
    pub slow: Duration,
    /// Everything else.
    pub fast: Duration,
}

impl Deadlines {
    /// Docker waits 2 min for Create and Mount and 1 min for the rest (docs/protocols.md §1);
    /// answer well before, so the user sees our error rather than Docker's timeout.
    pub const DOCKER: Deadlines = Deadlines {
        slow: Duration::from_secs(100),
        fast: Duration::from_secs(50),
    };
}

/// Runs blocking work (syscalls, mkfs, fsync) off the async workers, bounded in time.
async fn blocking<T, F>(
    operation: &'static str,
    name: &str,
    limit: Duration,
    work: F,
) -> Result<T, PluginError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, VolError> + Send + 'static,
{
    finish(operation, name, run_blocking(Some(limit), work).await)
}

/// Blocking work's outcome as the caller sees it.
fn finish<T>(
    operation: &'static str,
    name: &str,
    outcome: Result<Result<T, VolError>, BlockingError>,
) -> Result<T, PluginError> {
    match outcome {
        Ok(result) => result.map_err(PluginError::from),
        Err(e @ BlockingError::Worker(_)) => {
            Err(PluginError::internal(format!("{operation} {name}: {e}")))
        }
        Err(BlockingError::TimedOut { after }) => Err(VolError::Timeout {
            operation,
            name: name.to_string(),
            secs: after.as_secs(),
        }
        .into()),
    }
}

pub fn plugin_router(svc: Arc<VolumeService>) -> Router {
    plugin_router_with(svc, Deadlines::DOCKER)
}

pub fn plugin_router_with(svc: Arc<VolumeService>, deadlines: Deadlines) -> Router {
    let Deadlines { slow, fast } = deadlines;
    let router = Router::new()
        .post_json("/Plugin.Activate", |_: Empty| async {
            Ok(ActivateResponse {
                implements: vec!["VolumeDriver"],
            })
        })
        .post_json("/VolumeDriver.Capabilities", |_: Empty| async {
            Ok(CapabilitiesResponse {
                capabilities: Capabilities { scope: "local" },
            })
        })
        .post_json(
            "/VolumeDriver.Create",
            with(&svc, move |s, req: CreateRequest| async move {
                let name = req.name.clone();
                let opts = req.opts.unwrap_or_default();
                blocking("create", &name, slow, move || s.create(&req.name, &opts)).await?;
                Ok(ErrOnly::default())
            }),
        );
    let router = router.post_json(
        "/VolumeDriver.Remove",
        with(&svc, move |s, req: NameRequest| async move {
            let name = req.name.clone();
            blocking("remove", &name, fast, move || s.remove(&req.name)).await?;
            Ok(ErrOnly::default())
        }),
    );
    let router = router.post_json(
        "/VolumeDriver.Mount",
        with(&svc, move |s, req: MountRequest| async move {
            let name = req.name.clone();
            // A Mount that ends after Docker saw it time out is undone: Docker never sends
            // the Unmount for it, and its count would keep the volume in use forever.
            let undo_svc = s.clone();
            let (undo_name, undo_id) = (req.name.clone(), req.id.clone());
            let undo = move |late: Result<std::path::PathBuf, VolError>| {
                if late.is_ok() {
                    match undo_svc.unmount(&undo_name, &undo_id) {
                        Ok(()) => tracing::warn!(volume = %undo_name, id = %undo_id, "a Mount finished after Docker gave up on it; undone"),
                        Err(e) => tracing::warn!(volume = %undo_name, id = %undo_id, error = %e, "a Mount finished after Docker gave up on it; undoing it failed (volplugin volume mounts clear)"),
                    }
                }
            };
            let mount = run_blocking_or_undo(slow, move || s.mount(&req.name, &req.id), undo);
            let target = finish("mount", &name, mount.await)?;
            Ok(MountpointResponse {
                mountpoint: target.display().to_string(),
                err: String::new(),
            })
        }),
    );
    let router = router.post_json(
        "/VolumeDriver.Unmount",
        with(&svc, move |s, req: MountRequest| async move {
            let name = req.name.clone();
            blocking("unmount", &name, fast, move || {
                s.unmount(&req.name, &req.id)
            })
            .await?;
            Ok(ErrOnly::default())
        }),
    );
    let router = router.post_json(
        "/VolumeDriver.Path",
        with(&svc, move |s, req: NameRequest| async move {
            let name = req.name.clone();
            let path = blocking("path", &name, fast, move || s.path(&req.name)).await?;
            Ok(MountpointResponse {
                mountpoint: display(path.as_deref()),
                err: String::new(),
            })
        }),
    );
    let router = router.post_json(
        "/VolumeDriver.Get",
        with(&svc, move |s, req: NameRequest| async move {
            let name = req.name.clone();
            let info = blocking("get", &name, fast, move || s.get(&req.name)).await?;
            Ok(GetResponse {
                volume: VolumeEntry {
                    status: Some(info.status()),
                    name: info.name,
                    mountpoint: info.mountpoint,
                    created_at: Some(info.created_at),
                },
                err: String::new(),
            })
        }),
    );
    router.post_json(
        "/VolumeDriver.List",
        with(&svc, move |s, _: Empty| async move {
            let names = blocking("list", "volumes", fast, move || s.names()).await?;
            let volumes = names
                .into_iter()
                .map(|name| VolumeEntry {
                    mountpoint: String::new(),
                    name,
                    created_at: None,
                    status: None,
                })
                .collect();
            Ok(ListResponse {
                volumes,
                err: String::new(),
            })
        }),
    )
}

/// Parses `{"write_bps": "4M", "read_iops": "max", ...}`: only the keys given change.
fn parse_limits_change(body: &[u8]) -> Result<LimitsChange, PluginError> {
    let map: std::collections::BTreeMap<String, String> =
        plugin_transport::router::decode_json(body)?;
    let mut change = LimitsChange::default();
    for (key, value) in &map {
        let slot = match key.as_str() {
            "read_bps" => &mut change.read_bps,
            "write_bps" => &mut change.write_bps,
            "read_iops" => &mut change.read_iops,
            "write_iops" => &mut change.write_iops,
            other => {
                return Err(PluginError::bad_request(format!(
                    "unknown limit {other:?}; valid limits are: {}",
                    LIMIT_OPTIONS.join(", ")
                )))
            }
        };
        *slot = Some(parse_limit(key, value).map_err(PluginError::from)?);
    }
    Ok(change)
}

/// The admin socket: `GET /volumes`, `GET /volumes/NAME`, `POST /volumes/NAME/limits`,
/// `POST /volumes/NAME/size`, `POST /volumes/NAME/mounts/clear`.
/// Limit changes are passed on to the throttler, which rewrites the running containers' cgroups.
/// The running containers Docker lists as using volume `name` (by name).
async fn containers_using(docker: &DockerClient, name: &str) -> Result<Vec<String>, PluginError> {
    let filters = serde_json::json!({ "volume": [name] }).to_string();
    let path = format!(
        "/containers/json?filters={}",
        plugin_transport::docker::encode_query(&filters)
    );
    let list = docker.get_json(&path, FAST_OP).await.map_err(|e| {
        PluginError::internal(format!(
            "asking Docker which containers use {name}: {e}; nothing was cleared"
        ))
    })?;
    Ok(list
        .as_array()
        .map(|containers| {
            containers
                .iter()
                .filter_map(|c| c["Names"][0].as_str().or(c["Id"].as_str()))
                .map(|n| n.trim_start_matches('/').to_string())
                .collect()
        })
        .unwrap_or_default())
}

/// `POST /volumes/NAME/mounts/clear`: refused while Docker lists a running container using
/// the volume (those mounts are real), else every count dropped and the volume unmounted.
async fn clear_mounts(s: Arc<VolumeService>, docker: &DockerClient, name: String) -> Reply {
    if let Err(e) = validate_name(&name) {
        return Reply::error(&e.into());
    }
    match containers_using(docker, &name).await {
        Ok(users) if !users.is_empty() => {
            return Reply::error(&PluginError::conflict(format!(
                "volume {name} is in use by running container(s) {}: their mounts are real; stop them instead",
                users.join(", ")
            )))
        }
        Ok(_) => {}
        Err(e) => return Reply::error(&e),
    }
    let shown = name.clone();
    match blocking("clear mounts", &shown, FAST_OP, move || {
        s.clear_mounts(&name)
    })
    .await
    {
        Ok(dropped) => Reply::json(&serde_json::json!({ "dropped": dropped })),
        Err(e) => Reply::error(&e),
    }
}

/// `POST /volumes/NAME/size` with `{"size":"20G"}`: grows the volume (see
/// `VolumeService::resize`); the answer is the volume as `inspect` shows it.
async fn resize(s: Arc<VolumeService>, name: String, body: &[u8]) -> Reply {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct ResizeBody {
        size: String,
    }
    let size = match serde_json::from_slice::<ResizeBody>(body) {
        Ok(b) => b.size,
        Err(e) => {
            return Reply::error(&PluginError::bad_request(format!(
                "a resize takes {{\"size\": \"20G\"}}: {e}"
            )))
        }
    };
    let shown = name.clone();
    match blocking("resize", &shown, FAST_OP, move || s.resize(&name, &size)).await {
        Ok(info) => Reply::json(&info),
        Err(e) => Reply::error(&e),
    }
}

pub fn admin_router(
    svc: Arc<VolumeService>,
    limits_changed: LimitsChanged,
    docker: DockerClient,
) -> Router {
    let docker = Arc::new(docker);
    Router::new()
        .route_prefix(
            Method::POST,
            "/volumes/",
            with(&svc, move |s, req: Request| {
                let limits_changed = limits_changed.clone();
                let docker = docker.clone();
                async move {
                    if let Some(name) = req
                        .path
                        .strip_prefix("/volumes/")
                        .and_then(|p| p.strip_suffix("/mounts/clear"))
                    {
                        return clear_mounts(s, &docker, name.to_string()).await;
                    }
                    if let Some(name) = req
                        .path
                        .strip_prefix("/volumes/")
                        .and_then(|p| p.strip_suffix("/size"))
                    {
                        return resize(s, name.to_string(), &req.body).await;
                    }
                    let Some(name) = req
                        .path
                        .strip_prefix("/volumes/")
                        .and_then(|p| p.strip_suffix("/limits"))
                    else {
                        return Reply::error(&PluginError::not_found(format!(
                            "unknown endpoint POST {}",
                            req.path
                        )));
                    };
                    let name = name.to_string();
                    let change = match parse_limits_change(&req.body) {
                        Ok(change) => change,
                        Err(e) => return Reply::error(&e),
                    };
                    let shown = name.clone();
                    let volume = name.clone();
                    match blocking("set-limits", &shown, FAST_OP, move || {
                        s.set_limits(&volume, &change)
                    })
                    .await
                    {
                        Ok(info) => {
                            let _ = limits_changed.send(name);
                            Reply::json(&info)
                        }
                        Err(e) => Reply::error(&e),
                    }
                }
            }),
        )
        .route(
            Method::GET,
            "/volumes",
            with(&svc, |s, _req: Request| async move {
                match blocking("list", "volumes", FAST_OP, move || s.list()).await {
                    Ok(list) => Reply::json(&list),
                    Err(e) => Reply::error(&e),
                }
            }),
        )
        .route_prefix(
            Method::GET,
            "/volumes/",
            with(&svc, |s, req: Request| async move {
                let name = req.path.trim_start_matches("/volumes/").to_string();
                let shown = name.clone();
                match blocking("inspect", &shown, FAST_OP, move || s.get(&name)).await {
                    Ok(info) => Reply::json(&info),
                    Err(e) => Reply::error(&e),
                }
            }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::memory::MemoryBackend;
    use crate::spec::{Filesystem, SpecPolicy};
    use crate::store::MetaStore;
    use bytes::Bytes;

    fn router() -> Router {
        let svc = VolumeService::new(
            MetaStore::in_memory().unwrap(),
            Arc::new(MemoryBackend::new()),
            SpecPolicy {
                default_size: 1 << 30,
                max_size: 1 << 40,
                default_fs: Filesystem::Xfs,
            },
            "/mnt/b".into(),
        );
        plugin_router(Arc::new(svc))
    }

    #[tokio::test]
    async fn a_mount_that_ends_after_its_deadline_is_undone() {
        let backend = Arc::new(MemoryBackend::new());
        let svc = Arc::new(VolumeService::new(
            MetaStore::in_memory().unwrap(),
            backend.clone(),
            SpecPolicy {
                default_size: 1 << 30,
                max_size: 1 << 40,
                default_fs: Filesystem::Xfs,
            },
            "/mnt/b".into(),
        ));
        let r = plugin_router_with(
            svc.clone(),
            Deadlines {
                slow: Duration::from_millis(100),
                fast: Duration::from_secs(5),
            },
        );
        let (status, _) = call(&r, "/VolumeDriver.Create", r#"{"Name":"db"}"#).await;
        assert_eq!(status, 200);
        backend.delay("mount", Duration::from_millis(400));
        let (status, body) = call(&r, "/VolumeDriver.Mount", r#"{"Name":"db","ID":"c1"}"#).await;
        assert_eq!(status, 500, "{body}");
        assert!(body["Err"].as_str().unwrap().contains("mount"), "{body}");
        // The mount lands late, and is taken back: no count Docker would never release.
        let mut counts = u32::MAX;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let s = svc.clone();
            counts = tokio::task::spawn_blocking(move || s.get("db").unwrap().mounts)
                .await
                .unwrap();
            if counts == 0 && !backend.is_mounted("db") {
                break;
            }
        }
        assert_eq!(counts, 0, "the late mount's count was not undone");
        assert!(!backend.is_mounted("db"), "the late mount was not undone");
    }

    async fn call(router: &Router, path: &str, body: &str) -> (u16, serde_json::Value) {
        let reply = router
            .dispatch(Request {
                method: Method::POST,
                path: path.into(),
                query: None,
                body: Bytes::from(body.to_string()),
            })
            .await;
        (
            reply.status.as_u16(),
            serde_json::from_slice(&reply.body).unwrap(),
        )
    }

    #[tokio::test]
    async fn docker_exchange() {
        let r = router();
        assert_eq!(
            call(&r, "/Plugin.Activate", "").await,
            (200, serde_json::json!({"Implements":["VolumeDriver"]}))
        );
        assert_eq!(
            call(&r, "/VolumeDriver.Capabilities", "{}\n").await.1,
            serde_json::json!({"Capabilities":{"Scope":"local"}})
        );
        let (status, body) = call(&r, "/VolumeDriver.Get", "{\"Name\":\"v\"}\n").await;
        assert_eq!(status, 404);
        assert!(body["Err"].as_str().unwrap().contains("no such volume"));
        assert_eq!(
            call(
                &r,
                "/VolumeDriver.Create",
                "{\"Name\":\"v\",\"Opts\":null}\n"
            )
            .await,
            (200, serde_json::json!({"Err":""}))
        );
        let (status, body) = call(&r, "/VolumeDriver.Get", "{\"Name\":\"v\"}\n").await;
        assert_eq!(status, 200);
        assert_eq!(body["Volume"]["Name"], "v");
        assert_eq!(body["Volume"]["Status"]["backend"], "memory");
        assert_eq!(body["Volume"]["Status"]["size_bytes"], 1u64 << 30);
        assert!(body["Volume"]["CreatedAt"].as_str().unwrap().ends_with('Z'));
        let (_, body) = call(
            &r,
            "/VolumeDriver.Mount",
            "{\"Name\":\"v\",\"ID\":\"abc\"}\n",
        )
        .await;
        assert_eq!(body["Mountpoint"], "/mnt/b/v");
        assert_eq!(
            call(&r, "/VolumeDriver.Path", "{\"Name\":\"v\"}").await.1["Mountpoint"],
            "/mnt/b/v"
        );
        let (_, body) = call(&r, "/VolumeDriver.List", "{}").await;
        assert_eq!(body["Volumes"][0]["Name"], "v");
        let (status, body) = call(&r, "/VolumeDriver.Remove", "{\"Name\":\"v\"}").await;
        assert_eq!(status, 409);
        assert!(body["Err"].as_str().unwrap().contains("in use"));
        assert_eq!(
            call(
                &r,
                "/VolumeDriver.Unmount",
                "{\"Name\":\"v\",\"ID\":\"abc\"}"
            )
            .await
            .0,
            200
        );
        assert_eq!(
            call(&r, "/VolumeDriver.Path", "{\"Name\":\"v\"}").await.1["Mountpoint"],
            ""
        );
        assert_eq!(
            call(&r, "/VolumeDriver.Remove", "{\"Name\":\"v\"}").await.0,
            200
        );
        assert_eq!(
            call(&r, "/VolumeDriver.Remove", "{\"Name\":\"v\"}").await.0,
            200
        );
    }

    #[tokio::test]
    async fn admin_resize() {
        let svc = Arc::new(VolumeService::new(
            MetaStore::in_memory().unwrap(),
            Arc::new(MemoryBackend::new()),
            SpecPolicy {
                default_size: 1 << 30,
                max_size: 1 << 40,
                default_fs: Filesystem::Xfs,
            },
            "/mnt/b".into(),
        ));
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let admin = admin_router(
            svc.clone(),
            tx,
            DockerClient::new(std::path::Path::new("/nonexistent/docker.sock")),
        );
        let plugin = plugin_router(svc);
        assert_eq!(
            call(&plugin, "/VolumeDriver.Create", r#"{"Name":"v"}"#)
                .await
                .0,
            200
        );
        let (status, body) = call(&admin, "/volumes/v/size", r#"{"size":"3G"}"#).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["size_bytes"], 3u64 << 30);
        // Docker's Get shows the new size at once.
        let (_, body) = call(&plugin, "/VolumeDriver.Get", r#"{"Name":"v"}"#).await;
        assert_eq!(body["Volume"]["Status"]["size_bytes"], 3u64 << 30);
        let (status, body) = call(&admin, "/volumes/v/size", r#"{"size":"1G"}"#).await;
        assert_eq!(status, 400, "{body}");
        assert!(body["Err"]
            .as_str()
            .unwrap()
            .contains("invalid option size"));
        let (status, body) = call(&admin, "/volumes/v/size", r#"{"bytes":1}"#).await;
        assert_eq!(status, 400, "{body}");
        let (status, _) = call(&admin, "/volumes/none/size", r#"{"size":"4G"}"#).await;
        assert_eq!(status, 404);
    }

    #[tokio::test]
    async fn hostile_input() {
        let r = router();
        let (status, body) = call(&r, "/VolumeDriver.Create", "{\"Name\":\"../../etc\"}").await;
        assert_eq!(status, 400);
        assert!(body["Err"]
            .as_str()
            .unwrap()
            .contains("invalid volume name"));
        let (status, body) = call(&r, "/VolumeDriver.Create", "").await;
        assert_eq!(status, 400);
        assert!(body["Err"].as_str().unwrap().contains("Name"));
        let (status, body) = call(
            &r,
            "/VolumeDriver.Create",
            "{\"Name\":\"v\",\"Opts\":{\"size\":5}}",
        )
        .await;
        assert_eq!(status, 400, "{body}");
        let (status, body) = call(&r, "/VolumeDriver.Mount", "{\"Name\":\"v\"}").await;
        assert_eq!(status, 400);
        assert!(body["Err"].as_str().unwrap().contains("ID"));
    }
}
