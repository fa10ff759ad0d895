//! A small HTTP/1.1 client on a UNIX socket, for the admin CLIs and tests.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot connect to {path}: {source} (is the daemon running? is --admin-socket right?)"
    )]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("request to {path} failed: {message}")]
    Http { path: String, message: String },
    #[error("no answer from {path} within {secs} s")]
    Timeout { path: String, secs: u64 },
    /// The daemon answered with an error; this is its message.
    #[error("{0}")]
    Refused(String),
}

/// Sends one request and returns the status and body.
pub async fn request(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<(StatusCode, Bytes), ClientError> {
    let sock = socket.display().to_string();
    let work = async {
        let stream = UnixStream::connect(socket)
            .await
            .map_err(|source| ClientError::Connect {
                path: sock.clone(),
                source,
            })?;
        let http_err = |e: &dyn std::fmt::Display| ClientError::Http {
            path: sock.clone(),
            message: e.to_string(),
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| http_err(&e))?;
        tokio::spawn(conn);
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, "localhost")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| http_err(&e))?;
        let resp = sender.send_request(req).await.map_err(|e| http_err(&e))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| http_err(&e))?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| ClientError::Timeout {
            path: sock.clone(),
            secs: timeout.as_secs(),
        })?
}

/// The message of a Docker-style error body, or the raw body.
pub fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("Err").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned())
}
