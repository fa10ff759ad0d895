//! Recent server-side latencies of endpoint setup and address requests, for the admin `stats`
//! and the benchmark.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

/// A sliding window of latencies per operation.
#[derive(Default)]
pub struct Latencies {
    inner: Mutex<BTreeMap<&'static str, VecDeque<f64>>>,
}

const LATENCY_WINDOW: usize = 20_000;

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct LatencySummary {
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub first_ms: f64,
    pub last_ms: f64,
}

impl Latencies {
    pub fn record(&self, what: &'static str, d: Duration) {
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let q = m.entry(what).or_default();
        if q.len() == LATENCY_WINDOW {
            q.pop_front();
        }
        q.push_back(d.as_secs_f64() * 1000.0);
    }

    pub fn summary(&self) -> BTreeMap<String, LatencySummary> {
        let m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        m.iter()
            .filter(|(_, q)| !q.is_empty())
            .map(|(k, q)| {
                let mut v: Vec<f64> = q.iter().copied().collect();
                let first = v[0];
                let last = v[v.len() - 1];
                v.sort_by(|a, b| a.total_cmp(b));
                let pct = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
                (
                    k.to_string(),
                    LatencySummary {
                        count: v.len(),
                        p50_ms: pct(0.5),
                        p99_ms: pct(0.99),
                        first_ms: first,
                        last_ms: last,
                    },
                )
            })
            .collect()
    }
}
