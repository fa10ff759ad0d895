//! The HTTP/1.1 server loop shared by plugin, admin and metrics listeners.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::sync::{watch, Semaphore};
use tracing::{debug, info, warn, Instrument};

use crate::error::PluginError;
use crate::listen::Listener;
use crate::metrics::RequestMetrics;
use crate::router::{Reply, Request, Router};

/// Docker's largest plugin requests are a few KiB; 1 MiB leaves room and stops abuse.
pub const DEFAULT_BODY_LIMIT: usize = 1 << 20;

/// How long in-flight requests may run after SIGTERM before the server gives up on them.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(60);

/// What one client may hold of a listener: without these, any local user could open idle or
/// slow connections to the (loopback TCP) metrics port until the daemon ran out of file
/// descriptors, and Docker's calls on the plugin socket would then fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnLimits {
    /// Open connections at most; one more is accepted and closed at once (counted in
    /// `connections_refused_total`), so it holds no descriptor and no memory.
    pub max_connections: usize,
    /// A request's headers must arrive within this, counted from when the server starts
    /// waiting for them: it also closes a keep-alive connection idle for this long.
    pub header_timeout: Duration,
    /// A request's body must arrive within this once its headers have.
    pub body_timeout: Duration,
}

impl ConnLimits {
    /// The plugin socket: root-only, Docker's. Docker keeps connections open between calls
    /// and re-dials closed ones, so idle ones may stay for minutes.
    pub const PLUGIN: ConnLimits = ConnLimits {
        max_connections: 1024,
        header_timeout: Duration::from_secs(300),
        body_timeout: Duration::from_secs(30),
    };
    /// The admin socket: root-only, one CLI call at a time per operator.
    pub const ADMIN: ConnLimits = ConnLimits {
        max_connections: 64,
        header_timeout: Duration::from_secs(60),
        body_timeout: Duration::from_secs(30),
    };
    /// The metrics port: any local user can reach it; Prometheus needs one connection.
    pub const METRICS: ConnLimits = ConnLimits {
        max_connections: 32,
        header_timeout: Duration::from_secs(10),
        body_timeout: Duration::from_secs(5),
    };
}

#[derive(Clone)]
pub struct Server {
    /// Which listener this is in logs and metrics: `plugin`, `admin` or `metrics`.
    pub name: &'static str,
    pub router: Arc<Router>,
    pub metrics: Option<Arc<RequestMetrics>>,
    pub body_limit: usize,
    pub grace: Duration,
    pub limits: ConnLimits,
}

impl Server {
    pub fn new(name: &'static str, router: Router) -> Self {
        Self {
            name,
            router: Arc::new(router),
            metrics: None,
            body_limit: DEFAULT_BODY_LIMIT,
            grace: DEFAULT_GRACE,
            limits: ConnLimits::PLUGIN,
        }
    }

    pub fn with_metrics(mut self, metrics: Arc<RequestMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    pub fn with_limits(mut self, limits: ConnLimits) -> Self {
        self.limits = limits;
        self
    }

    pub fn with_body_limit(mut self, body_limit: usize) -> Self {
        self.body_limit = body_limit;
        self
    }

    /// Serves until `shutdown` turns true, then stops accepting and waits (at most `grace`)
    /// for the requests in flight; idle keep-alive connections are closed at once.
    pub async fn serve(self, listener: Listener, mut shutdown: watch::Receiver<bool>) {
        let graceful = GracefulShutdown::new();
        let this = Arc::new(self);
        let slots = Arc::new(Semaphore::new(this.limits.max_connections));
        let mut refused_since_warning = 0u64;
        let mut last_warning: Option<Instant> = None;
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(io) => {
                        let Ok(slot) = slots.clone().try_acquire_owned() else {
                            // Closed at once: it holds nothing. Warn at most once a minute.
                            drop(io);
                            if let Some(metrics) = &this.metrics {
                                metrics.refused(this.name);
                            }
                            refused_since_warning += 1;
                            if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                                warn!(
                                    listener = this.name,
                                    max_connections = this.limits.max_connections,
                                    refused = refused_since_warning,
                                    "connection limit reached; closing new connections"
                                );
                                last_warning = Some(Instant::now());
                                refused_since_warning = 0;
                            }
                            continue;
                        };
                        let server = this.clone();
                        let service = service_fn(move |req| {
                            let server = server.clone();
                            async move { Ok::<_, Infallible>(server.handle(req).await) }
                        });
                        let conn = hyper::server::conn::http1::Builder::new()
                            .keep_alive(true)
                            .timer(TokioTimer::new())
                            .header_read_timeout(this.limits.header_timeout)
                            .serve_connection(TokioIo::new(io), service);
                        let conn = graceful.watch(conn);
                        let name = this.name;
                        let open = this.metrics.clone().map(|m| m.opened(name));
                        tokio::spawn(async move {
                            if let Err(e) = conn.await {
                                debug!(listener = name, error = %e, "connection ended with an error");
                            }
                            drop(open);
                            drop(slot);
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
            let body =
                tokio::time::timeout(self.limits.body_timeout, read_body(req, self.body_limit));
            match body.await.unwrap_or_else(|_| {
                Err(PluginError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "the request body did not arrive within {} s",
                        self.limits.body_timeout.as_secs()
                    ),
                ))
            }) {
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
