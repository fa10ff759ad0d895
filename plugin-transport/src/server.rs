//! The HTTP/1.1 server loop shared by plugin, admin and metrics listeners.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::sync::watch;
use tracing::{debug, info, warn, Instrument};

use crate::error::PluginError;
use crate::listen::Listener;
use crate::metrics::RequestMetrics;
use crate::router::{Reply, Request, Router};

/// Docker's largest plugin requests are a few KiB; 1 MiB leaves room and stops abuse.
pub const DEFAULT_BODY_LIMIT: usize = 1 << 20;

/// How long in-flight requests may run after SIGTERM before the server gives up on them.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct Server {
    /// Which listener this is in logs and metrics: `plugin`, `admin` or `metrics`.
    pub name: &'static str,
    pub router: Arc<Router>,
    pub metrics: Option<Arc<RequestMetrics>>,
    pub body_limit: usize,
    pub grace: Duration,
}

impl Server {
    pub fn new(name: &'static str, router: Router) -> Self {
        Self {
            name,
            router: Arc::new(router),
            metrics: None,
            body_limit: DEFAULT_BODY_LIMIT,
            grace: DEFAULT_GRACE,
        }
    }

    pub fn with_metrics(mut self, metrics: Arc<RequestMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Serves until `shutdown` turns true, then stops accepting and waits (at most `grace`)
    /// for the requests in flight; idle keep-alive connections are closed at once.
    pub async fn serve(self, listener: Listener, mut shutdown: watch::Receiver<bool>) {
        let graceful = GracefulShutdown::new();
        let this = Arc::new(self);
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(io) => {
                        let server = this.clone();
                        let service = service_fn(move |req| {
                            let server = server.clone();
                            async move { Ok::<_, Infallible>(server.handle(req).await) }
                        });
                        let conn = hyper::server::conn::http1::Builder::new()
                            .keep_alive(true)
                            .serve_connection(TokioIo::new(io), service);
                        let conn = graceful.watch(conn);
                        let name = this.name;
                        tokio::spawn(async move {
                            if let Err(e) = conn.await {
                                debug!(listener = name, error = %e, "connection ended with an error");
                            }
                        });
                    }
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        warn!(listener = this.name, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                _ = crate::shutdown::requested(&mut shutdown) => break,
            }
        }
        drop(listener);
        tokio::select! {
            _ = graceful.shutdown() => debug!(listener = this.name, "all connections closed"),
            _ = tokio::time::sleep(this.grace) => {
                warn!(listener = this.name, grace_s = this.grace.as_secs(), "requests still running after the grace period; exiting anyway");
            }
        }
    }

    async fn handle(&self, req: hyper::Request<Incoming>) -> Response<Full<Bytes>> {
        let started = Instant::now();
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let query = req.uri().query().map(str::to_string);
        let label = self.router.metric_label(&method, &path);
        let span =
            tracing::info_span!("request", listener = self.name, method = %method, path = %label);
        let reply = async {
            match read_body(req, self.body_limit).await {
                Ok(body) => {
                    self.router
                        .dispatch(Request {
                            method: method.clone(),
                            path,
                            query,
                            body,
                        })
                        .await
                }
                Err(e) => Reply::error(&e),
            }
        }
        .instrument(span.clone())
        .await;
        let elapsed = started.elapsed();
        let outcome = if reply.is_success() { "ok" } else { "error" };
        if let Some(metrics) = &self.metrics {
            metrics.observe(self.name, &label, outcome, elapsed);
        }
        span.in_scope(|| {
            let duration_ms = elapsed.as_secs_f64() * 1000.0;
            if reply.is_success() {
                info!(status = reply.status.as_u16(), duration_ms, outcome, "handled");
            } else {
                let message = String::from_utf8_lossy(&reply.body);
                info!(status = reply.status.as_u16(), duration_ms, outcome, error = %message, "handled");
            }
        });
        Response::builder()
            .status(reply.status)
            .header(header::CONTENT_TYPE, reply.content_type)
            .body(Full::new(reply.body))
            .unwrap_or_else(|_| {
                let mut resp = Response::new(Full::new(Bytes::new()));
                *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                resp
            })
    }
}

async fn read_body(req: hyper::Request<Incoming>, limit: usize) -> Result<Bytes, PluginError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(PluginError::payload_too_large(limit));
    }
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(PluginError::payload_too_large(limit))
        }
        Err(e) => Err(PluginError::bad_request(format!(
            "reading the request body: {e}"
        ))),
    }
}
