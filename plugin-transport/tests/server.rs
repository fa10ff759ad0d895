//! The server on a real UNIX socket, spoken to with raw HTTP/1.1 bytes as dockerd sends them.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a panic is how a test reports failure"
)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use plugin_transport::listen::bind_unix;
use plugin_transport::metrics::Metrics;
use plugin_transport::server::Server;
use plugin_transport::{PluginError, Router};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::watch;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SleepReq {
    millis: u64,
}

#[derive(Deserialize)]
struct Anything {}

fn router(in_flight: Arc<AtomicUsize>) -> Router {
    Router::new()
        .post_json("/Plugin.Activate", |_: Anything| async {
            Ok(serde_json::json!({"Implements": ["VolumeDriver"]}))
        })
        .post_json("/Test.Sleep", move |r: SleepReq| {
            let in_flight = in_flight.clone();
            async move {
                in_flight.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(r.millis)).await;
                in_flight.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, PluginError>(serde_json::json!({}))
            }
        })
}

struct Running {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    metrics: Arc<Metrics>,
    in_flight: Arc<AtomicUsize>,
}

async fn start(body_limit: usize) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.sock");
    let (listener, file) = bind_unix(&path, 0o600).unwrap();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let metrics = Metrics::new("t");
    let mut server =
        Server::new("plugin", router(in_flight.clone())).with_metrics(metrics.requests.clone());
    server.body_limit = body_limit;
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        server.serve(listener, rx).await;
        drop(file);
    });
    Running {
        _dir: dir,
        path,
        stop,
        task,
        metrics,
        in_flight,
    }
}

/// Sends raw requests on one connection and reads `count` responses.
async fn exchange(stream: &mut UnixStream, raw: &str) -> String {
    stream.write_all(raw.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 65536];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn docker_style_requests_and_keep_alive() {
    let s = start(1 << 20).await;
    let mut conn = UnixStream::connect(&s.path).await.unwrap();
    // Exactly what dockerd 20.10.24 sends: empty Host, no Content-Type, empty body.
    let activate = "POST /Plugin.Activate HTTP/1.1\r\nHost: \r\nUser-Agent: Go-http-client/1.1\r\nContent-Length: 0\r\nAccept: application/vnd.docker.plugins.v1.2+json\r\nAccept-Encoding: gzip\r\n\r\n";
    let first = exchange(&mut conn, activate).await;
    assert!(first.starts_with("HTTP/1.1 200 OK"), "{first}");
    assert!(
        first.ends_with("{\"Implements\":[\"VolumeDriver\"]}"),
        "{first}"
    );
    // Same connection again: keep-alive.
    let second = exchange(&mut conn, activate).await;
    assert!(second.starts_with("HTTP/1.1 200 OK"), "{second}");
    let unknown = exchange(&mut conn, "POST /NetworkDriver.ProgramExternalConnectivity HTTP/1.1\r\nHost: plugin.moby.localhost\r\nContent-Length: 2\r\n\r\n{}").await;
    assert!(unknown.starts_with("HTTP/1.1 404"), "{unknown}");
    let malformed = exchange(
        &mut conn,
        "POST /Test.Sleep HTTP/1.1\r\nHost: \r\nContent-Length: 9\r\n\r\n{\"Millis\"",
    )
    .await;
    assert!(malformed.starts_with("HTTP/1.1 400"), "{malformed}");
    assert!(malformed.contains("malformed request body"), "{malformed}");
    let text = s.metrics.render();
    assert!(
        text.contains(
            "t_requests_total{listener=\"plugin\",method=\"/Plugin.Activate\",outcome=\"ok\"} 2"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "t_requests_total{listener=\"plugin\",method=\"unknown\",outcome=\"error\"} 1"
        ),
        "{text}"
    );
    s.stop.send(true).unwrap();
    s.task.await.unwrap();
}

#[tokio::test]
async fn body_limit_is_enforced_with_a_clear_error() {
    let s = start(64).await;
    let mut conn = UnixStream::connect(&s.path).await.unwrap();
    let body = format!("{{\"Millis\":1,\"pad\":\"{}\"}}", "x".repeat(100));
    let raw = format!(
        "POST /Test.Sleep HTTP/1.1\r\nHost: \r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let reply = exchange(&mut conn, &raw).await;
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(
        reply.contains("larger than the limit of 64 bytes"),
        "{reply}"
    );
    // Chunked, with no Content-Length to check up front.
    let chunked = format!("POST /Test.Sleep HTTP/1.1\r\nHost: \r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n", body.len());
    let mut conn = UnixStream::connect(&s.path).await.unwrap();
    let reply = exchange(&mut conn, &chunked).await;
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    s.stop.send(true).unwrap();
    s.task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_run_in_parallel() {
    let s = start(1 << 20).await;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let path = s.path.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = UnixStream::connect(&path).await.unwrap();
            exchange(
                &mut conn,
                "POST /Test.Sleep HTTP/1.1\r\nHost: \r\nContent-Length: 14\r\n\r\n{\"Millis\":300}",
            )
            .await
        }));
    }
    for t in tasks {
        assert!(t.await.unwrap().starts_with("HTTP/1.1 200"));
    }
    // Twenty 300 ms requests one after another would take 6 s.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "requests were serialized: {:?}",
        started.elapsed()
    );
    s.stop.send(true).unwrap();
    s.task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_in_flight_requests_then_refuses_new_ones() {
    let s = start(1 << 20).await;
    let mut busy = UnixStream::connect(&s.path).await.unwrap();
    busy.write_all(
        b"POST /Test.Sleep HTTP/1.1\r\nHost: \r\nContent-Length: 14\r\n\r\n{\"Millis\":500}",
    )
    .await
    .unwrap();
    // An idle keep-alive connection must not hold the shutdown up.
    let _idle = UnixStream::connect(&s.path).await.unwrap();
    while s.in_flight.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    s.stop.send(true).unwrap();
    let mut buf = vec![0u8; 4096];
    let n = busy.read(&mut buf).await.unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        "the in-flight request completes"
    );
    tokio::time::timeout(Duration::from_secs(5), s.task)
        .await
        .expect("server stops promptly")
        .unwrap();
    assert!(!s.path.exists(), "socket file removed on clean exit");
    assert!(UnixStream::connect(&s.path).await.is_err());
}
