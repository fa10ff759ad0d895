//! Dispatch of plugin and admin requests to handlers, with Docker's body rules.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::PluginError;
use crate::input::quoted;

/// One request as the handlers see it: the body is already read in full (and size-checked).
#[derive(Debug, Clone)]
pub struct Request {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub body: Bytes,
}

/// What a handler answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: Bytes,
}

impl Reply {
    pub fn json<T: Serialize>(value: &T) -> Reply {
        match serde_json::to_vec(value) {
            Ok(body) => Reply {
                status: StatusCode::OK,
                content_type: JSON,
                body: body.into(),
            },
            Err(e) => Reply::error(&PluginError::internal(format!(
                "encoding the response: {e}"
            ))),
        }
    }

    pub fn error(err: &PluginError) -> Reply {
        Reply {
            status: err.status,
            content_type: JSON,
            body: err.to_body().into(),
        }
    }

    pub fn text(content_type: &'static str, body: impl Into<Bytes>) -> Reply {
        Reply {
            status: StatusCode::OK,
            content_type,
            body: body.into(),
        }
    }

    pub fn is_success(&self) -> bool {
        self.status == StatusCode::OK
    }
}

/// Docker checks no Content-Type, but this is what its own plugins answer.
pub const JSON: &str = "application/vnd.docker.plugins.v1.2+json";

type BoxFuture = Pin<Box<dyn Future<Output = Reply> + Send>>;
type Handler = Arc<dyn Fn(Request) -> BoxFuture + Send + Sync>;

/// A handler that gets the router's one shared state (a daemon's service) with each request,
/// for [`Router::post_json`] and [`Router::route`]: `.post_json(path, with(&svc, |s, req| ..))`.
pub fn with<S, A, F, Fut>(state: &Arc<S>, f: F) -> impl Fn(A) -> Fut + Send + Sync + 'static
where
    S: Send + Sync + ?Sized + 'static,
    F: Fn(Arc<S>, A) -> Fut + Send + Sync + 'static,
{
    let state = state.clone();
    move |arg| f(state.clone(), arg)
}

/// Routes by method and exact path; a prefix route (`/volumes/` + name) serves admin resources.
#[derive(Clone, Default)]
pub struct Router {
    exact: HashMap<(Method, String), Handler>,
    prefix: Vec<(Method, String, Handler)>,
}

impl Router {
    pub fn new() -> Self {
        Self::default()
    }

    /// A Docker-style `POST /Iface.Method` taking and returning JSON. An empty or `null` body
    /// decodes as `{}`: Docker sends empty bodies for some calls, and a retried request can lose
    /// its body (moby#39331), in which case required fields come out missing and are reported.
    pub fn post_json<Req, Resp, F, Fut>(mut self, path: &str, handler: F) -> Self
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
        F: Fn(Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, PluginError>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let route: Handler = Arc::new(move |req: Request| {
            let handler = handler.clone();
            Box::pin(async move {
                match decode_json::<Req>(&req.body) {
                    Ok(decoded) => match handler(decoded).await {
                        Ok(resp) => Reply::json(&resp),
                        Err(e) => Reply::error(&e),
                    },
                    Err(e) => Reply::error(&e),
                }
            })
        });
        self.exact.insert((Method::POST, path.to_string()), route);
        self
    }

    /// Any method and path, with the whole request; for admin resources and the metrics page.
    pub fn route<F, Fut>(mut self, method: Method, path: &str, handler: F) -> Self
    where
        F: Fn(Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Reply> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let route: Handler = Arc::new(move |req| Box::pin(handler(req)));
        self.exact.insert((method, path.to_string()), route);
        self
    }

    /// Requests whose path starts with `prefix` (longer than it); the handler sees the full path.
    pub fn route_prefix<F, Fut>(mut self, method: Method, prefix: &str, handler: F) -> Self
    where
        F: Fn(Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Reply> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let route: Handler = Arc::new(move |req| Box::pin(handler(req)));
        self.prefix.push((method, prefix.to_string(), route));
        self
    }

    /// The label a request is counted under: its route, or `unknown`, so that hostile paths
    /// cannot grow the metric families without bound.
    pub fn metric_label(&self, method: &Method, path: &str) -> String {
        if self.exact.contains_key(&(method.clone(), path.to_string())) {
            return path.to_string();
        }
        for (m, prefix, _) in &self.prefix {
            if m == method && path.len() > prefix.len() && path.starts_with(prefix.as_str()) {
                return format!("{prefix}*");
            }
        }
        "unknown".to_string()
    }

    pub async fn dispatch(&self, req: Request) -> Reply {
        if let Some(handler) = self.exact.get(&(req.method.clone(), req.path.clone())) {
            return handler(req).await;
        }
        for (method, prefix, handler) in &self.prefix {
            if *method == req.method
                && req.path.len() > prefix.len()
                && req.path.starts_with(prefix.as_str())
            {
                return handler(req).await;
            }
        }
        let known_path = self.exact.keys().any(|(_, p)| *p == req.path);
        if known_path {
            Reply::error(&PluginError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{} is not allowed on {}", req.method, quoted(&req.path)),
            ))
        } else {
            Reply::error(&PluginError::not_found(format!(
                "unknown endpoint {} {}",
                req.method,
                quoted(&req.path)
            )))
        }
    }
}

/// Decodes a request body, treating empty and `null` as `{}`; errors say what was wrong.
pub fn decode_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, PluginError> {
    let trimmed = body.trim_ascii();
    let empty = trimmed.is_empty() || trimmed == b"null";
    let source: &[u8] = if empty { b"{}" } else { trimmed };
    // Docker always sends an object; serde would also build a request struct out of a JSON
    // array (`[]` as "every field absent"), which would then run with all defaults.
    if !source.starts_with(b"{") {
        return Err(PluginError::bad_request(
            "malformed request body: expected a JSON object",
        ));
    }
    serde_json::from_slice(source).map_err(|e| {
        if empty {
            PluginError::bad_request(format!("request body is empty: {e}"))
        } else {
            PluginError::bad_request(format!("malformed request body: {e}"))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize, Debug)]
    #[serde(rename_all = "PascalCase")]
    struct NameReq {
        name: String,
    }

    #[derive(Deserialize, Debug, Default)]
    #[serde(default, rename_all = "PascalCase")]
    struct AllOptional {
        pool: String,
    }

    #[test]
    fn only_an_object_is_a_request() {
        // serde alone builds a struct of defaults out of `[]`: a RequestPool with no pool,
        // which allocated a pool from a body Docker never sends.
        for body in ["[]", "[\"10.0.0.0/24\"]", "\"x\"", "7"] {
            let e = decode_json::<AllOptional>(body.as_bytes()).unwrap_err();
            assert!(e.message.contains("JSON object"), "{body}: {e}");
        }
        assert_eq!(decode_json::<AllOptional>(b"").unwrap().pool, "");
        assert_eq!(
            decode_json::<AllOptional>(b" {\"Pool\":\"p\"} ")
                .unwrap()
                .pool,
            "p"
        );
    }

    fn req(method: Method, path: &str, body: &'static str) -> Request {
        Request {
            method,
            path: path.into(),
            query: None,
            body: Bytes::from_static(body.as_bytes()),
        }
    }

    fn router() -> Router {
        Router::new()
            .post_json("/Echo.Name", |r: NameReq| async move {
                if r.name == "bad" {
                    Err(PluginError::bad_request("Name: bad is refused"))
                } else {
                    Ok(serde_json::json!({ "Name": r.name }))
                }
            })
            .route_prefix(Method::GET, "/things/", |r: Request| async move {
                Reply::text("text/plain", r.path)
            })
    }

    #[tokio::test]
    async fn success_is_200_json() {
        let reply = router()
            .dispatch(req(Method::POST, "/Echo.Name", "{\"Name\":\"x\"}\n"))
            .await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(&reply.body[..], b"{\"Name\":\"x\"}");
    }

    #[tokio::test]
    async fn empty_body_reports_missing_field() {
        let reply = router().dispatch(req(Method::POST, "/Echo.Name", "")).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        let v: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        let msg = v["Err"].as_str().unwrap();
        assert!(msg.contains("empty") && msg.contains("Name"), "{msg}");
        assert_eq!(v["Err"], v["Error"]);
    }

    #[tokio::test]
    async fn malformed_json_and_wrong_types_are_named() {
        let reply = router()
            .dispatch(req(Method::POST, "/Echo.Name", "{\"Name\":"))
            .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        assert!(String::from_utf8_lossy(&reply.body).contains("malformed"));
        let reply = router()
            .dispatch(req(Method::POST, "/Echo.Name", "{\"Name\":5}"))
            .await;
        assert!(String::from_utf8_lossy(&reply.body).contains("invalid type"));
    }

    #[tokio::test]
    async fn handler_error_and_unknown_paths() {
        let reply = router()
            .dispatch(req(Method::POST, "/Echo.Name", "{\"Name\":\"bad\"}"))
            .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        let reply = router()
            .dispatch(req(Method::POST, "/Nope.Nope", "{}"))
            .await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND);
        let reply = router().dispatch(req(Method::GET, "/Echo.Name", "")).await;
        assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
        let reply = router().dispatch(req(Method::GET, "/things/a", "")).await;
        assert_eq!(&reply.body[..], b"/things/a");
        assert_eq!(
            router().metric_label(&Method::GET, "/things/a"),
            "/things/*"
        );
        assert_eq!(
            router().metric_label(&Method::POST, "/../../etc"),
            "unknown"
        );
    }
}
