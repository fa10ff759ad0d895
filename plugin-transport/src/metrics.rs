//! Prometheus metrics: the per-request figures every listener records, a registry each daemon
//! adds its own figures to, and the loopback HTTP endpoint that serves them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Method;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::router::{Reply, Request, Router};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    listener: String,
    method: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    listener: String,
    method: String,
}

fn latency_histogram() -> Histogram {
    // 100 µs .. ~105 s: plugin calls range from in-memory lookups to mkfs of a large volume.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0001, 2.0, 21,
    ))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: String,
}

/// Counts and latencies per listener and method; open and refused connections per listener.
#[derive(Clone)]
pub struct RequestMetrics {
    requests: Family<RequestLabels, Counter>,
    errors: Family<MethodLabels, Counter>,
    latency: Family<MethodLabels, Histogram, fn() -> Histogram>,
    connections: Family<ListenerLabels, Gauge>,
    refused: Family<ListenerLabels, Counter>,
}

/// Holds one open connection in `connections{listener}` until dropped.
pub struct OpenConnection(Gauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl RequestMetrics {
    /// A connection accepted on `listener`; it counts as open until the guard is dropped.
    pub fn opened(&self, listener: &str) -> OpenConnection {
        let gauge = self
            .connections
            .get_or_create(&ListenerLabels {
                listener: listener.to_string(),
            })
            .clone();
        gauge.inc();
        OpenConnection(gauge)
    }

    /// A connection closed at once because `listener` was at its connection limit.
    pub fn refused(&self, listener: &str) {
        self.refused
            .get_or_create(&ListenerLabels {
                listener: listener.to_string(),
            })
            .inc();
    }

    pub fn observe(&self, listener: &str, method: &str, outcome: &str, elapsed: Duration) {
        let labels = MethodLabels {
            listener: listener.to_string(),
            method: method.to_string(),
        };
        self.requests
            .get_or_create(&RequestLabels {
                listener: listener.to_string(),
                method: method.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
        if outcome != "ok" {
            self.errors.get_or_create(&labels).inc();
        }
        self.latency
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }
}

type Refresh = Box<dyn Fn() + Send + Sync>;

/// The daemon's registry. Daemon figures that are cheaper to read at scrape time than to keep
/// current (volume counts, pool fill) are refreshed by hooks just before a scrape.
///
/// Those hooks block (etcd reads, mountinfo, statvfs), so a scrape never runs them on the
/// async runtime, and never more than one set at a time: [`Metrics::scrape`] builds a
/// snapshot on a blocking thread, and every scrape that arrived before that build started is
/// served the same snapshot. Concurrent scrapers cost one build, not one each.
pub struct Metrics {
    registry: Mutex<Registry>,
    refresh: Mutex<Vec<Refresh>>,
    pub requests: Arc<RequestMetrics>,
    snapshot: tokio::sync::Mutex<Option<Snapshot>>,
}

struct Snapshot {
    /// When its build started: it shows everything that happened before then.
    started: std::time::Instant,
    text: bytes::Bytes,
}

impl Metrics {
    pub fn new(prefix: &str) -> Arc<Self> {
        let mut registry = Registry::with_prefix(prefix);
        let requests = RequestMetrics {
            requests: Family::default(),
            errors: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            connections: Family::default(),
            refused: Family::default(),
        };
        registry.register(
            "connections",
            "Open connections, by listener (plugin, admin, metrics)",
            requests.connections.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections closed at once because the listener had its maximum open",
            requests.refused.clone(),
        );
        registry.register(
            "requests",
            "Requests handled, by listener (plugin, admin), method and outcome (ok, error)",
            requests.requests.clone(),
        );
        registry.register(
            "request_errors",
            "Requests answered with an error, by listener and method",
            requests.errors.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request received to response ready, by listener and method",
            requests.latency.clone(),
        );
        Arc::new(Self {
            registry: Mutex::new(registry),
            refresh: Mutex::new(Vec::new()),
            requests: Arc::new(requests),
            snapshot: tokio::sync::Mutex::new(None),
        })
    }

    /// Registers a daemon figure.
    pub fn register(
        &self,
        name: &str,
        help: &str,
        metric: impl prometheus_client::registry::Metric,
    ) {
        crate::sync::lock(&self.registry).register(name, help, metric);
    }

    /// Runs `hook` before every scrape.
    pub fn on_scrape(&self, hook: impl Fn() + Send + Sync + 'static) {
        crate::sync::lock(&self.refresh).push(Box::new(hook));
    }

    /// The OpenMetrics text of every figure.
    pub fn render(&self) -> String {
        for hook in crate::sync::lock(&self.refresh).iter() {
            hook();
        }
        let mut out = String::new();
        let registry = crate::sync::lock(&self.registry);
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// The text for a scrape that arrived now: a snapshot built after it arrived, shared with
    /// every other scrape waiting for it (see [`Metrics`]).
    pub async fn scrape(self: &Arc<Self>) -> bytes::Bytes {
        let arrived = std::time::Instant::now();
        let mut snapshot = self.snapshot.lock().await;
        if let Some(s) = snapshot.as_ref().filter(|s| s.started >= arrived) {
            return s.text.clone();
        }
        let started = std::time::Instant::now();
        let this = self.clone();
        let text = match tokio::task::spawn_blocking(move || this.render()).await {
            Ok(text) => bytes::Bytes::from(text),
            // A hook panicked: serve what was there rather than nothing.
            Err(_) => snapshot
                .as_ref()
                .map(|s| s.text.clone())
                .unwrap_or_default(),
        };
        *snapshot = Some(Snapshot {
            started,
            text: text.clone(),
        });
        text
    }

    /// `GET /metrics` for the loopback metrics listener.
    pub fn router(self: &Arc<Self>) -> Router {
        let metrics = self.clone();
        Router::new().route(Method::GET, "/metrics", move |_req: Request| {
            let metrics = metrics.clone();
            async move {
                Reply::text(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    metrics.scrape().await,
                )
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::gauge::Gauge;

    #[test]
    fn renders_requests_and_daemon_figures() {
        let metrics = Metrics::new("berth_test");
        metrics.requests.observe(
            "plugin",
            "/VolumeDriver.Get",
            "ok",
            Duration::from_millis(2),
        );
        metrics.requests.observe(
            "plugin",
            "/VolumeDriver.Get",
            "error",
            Duration::from_millis(3),
        );
        let volumes: Gauge = Gauge::default();
        metrics.register("volumes", "Volumes", volumes.clone());
        let source = volumes.clone();
        metrics.on_scrape(move || {
            source.set(7);
        });
        let text = metrics.render();
        assert!(text.contains(
            "berth_test_requests_total{listener=\"plugin\",method=\"/VolumeDriver.Get\",outcome=\"ok\"} 1"
        ), "{text}");
        assert!(text.contains(
            "berth_test_request_errors_total{listener=\"plugin\",method=\"/VolumeDriver.Get\"} 1"
        ));
        assert!(text.contains("berth_test_request_duration_seconds_count{listener=\"plugin\",method=\"/VolumeDriver.Get\"} 2"));
        assert!(text.contains("berth_test_volumes 7"), "{text}");
    }
}
