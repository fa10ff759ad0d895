//! A small client of the Docker Engine API on its UNIX socket, for background tasks only:
//! a plugin handler must never call Docker (dockerd is not serving yet while it restores
//! volumes and networks at boot, and waits on the plugin: a deadlock).

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use hyperlocal::UnixConnector;

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("Docker API {path}: {message}")]
    Transport { path: String, message: String },
    #[error("Docker API {path}: HTTP {status}: {message}")]
    Status {
        path: String,
        status: u16,
        message: String,
    },
    #[error("Docker API {path}: no answer within {secs} s")]
    Timeout { path: String, secs: u64 },
    #[error("Docker API {path}: undecodable answer: {message}")]
    Decode { path: String, message: String },
}

impl DockerError {
    /// 404: the container (or other object) does not exist (any more).
    pub fn is_not_found(&self) -> bool {
        matches!(self, DockerError::Status { status: 404, .. })
    }
}

#[derive(Clone)]
pub struct DockerClient {
    socket: PathBuf,
    client: Client<UnixConnector, Full<Bytes>>,
}

/// Percent-encoding for a query value (filters are JSON).
pub fn encode_query(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

impl DockerClient {
    pub fn new(socket: &Path) -> Self {
        let client = Client::builder(TokioExecutor::new()).build(UnixConnector);
        Self {
            socket: socket.to_path_buf(),
            client,
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    async fn send(&self, path: &str) -> Result<hyper::Response<Incoming>, DockerError> {
        let uri: hyper::Uri = hyperlocal::Uri::new(&self.socket, path).into();
        let req = http::Request::get(uri)
            .header(http::header::HOST, "docker")
            .body(Full::new(Bytes::new()))
            .map_err(|e| DockerError::Transport {
                path: path.into(),
                message: e.to_string(),
            })?;
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| DockerError::Transport {
                path: path.into(),
                message: format!("{e} ({})", self.socket.display()),
            })?;
        if !resp.status().is_success() {
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let message = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            return Err(DockerError::Status {
                path: path.into(),
                status,
                message,
            });
        }
        Ok(resp)
    }

    /// `GET path` and its JSON answer, bounded by `timeout`.
    pub async fn get_json(
        &self,
        path: &str,
        timeout: Duration,
    ) -> Result<serde_json::Value, DockerError> {
        let work = async {
            let resp = self.send(path).await?;
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| DockerError::Transport {
                    path: path.into(),
                    message: e.to_string(),
                })?
                .to_bytes();
            serde_json::from_slice(&body).map_err(|e| DockerError::Decode {
                path: path.into(),
                message: e.to_string(),
            })
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| DockerError::Timeout {
                path: path.into(),
                secs: timeout.as_secs(),
            })?
    }

    /// The `/events` stream with `filters` (Docker's JSON filter syntax); connecting is bounded
    /// by `timeout`, the stream itself runs until Docker closes it.
    pub async fn events(
        &self,
        filters: &str,
        timeout: Duration,
    ) -> Result<EventStream, DockerError> {
        let path = format!("/events?filters={}", encode_query(filters));
        let resp = tokio::time::timeout(timeout, self.send(&path))
            .await
            .map_err(|_| DockerError::Timeout {
                path: path.clone(),
                secs: timeout.as_secs(),
            })??;
        Ok(EventStream {
            body: resp.into_body(),
            buffer: Vec::new(),
            path,
        })
    }
}

/// Docker's events: one JSON object per line, as they happen.
pub struct EventStream {
    body: Incoming,
    buffer: Vec<u8>,
    path: String,
}

impl EventStream {
    /// The next event; `None` when Docker closed the stream (it stopped or restarted).
    pub async fn next(&mut self) -> Option<Result<serde_json::Value, DockerError>> {
        loop {
            if let Some(pos) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=pos).collect();
                let line = line.trim_ascii();
                if line.is_empty() {
                    continue;
                }
                return Some(
                    serde_json::from_slice(line).map_err(|e| DockerError::Decode {
                        path: self.path.clone(),
                        message: e.to_string(),
                    }),
                );
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buffer.extend_from_slice(&data);
                        // A line this long is not an event; drop it rather than grow forever.
                        if self.buffer.len() > 1 << 20 {
                            self.buffer.clear();
                        }
                    }
                }
                Some(Err(e)) => {
                    return Some(Err(DockerError::Transport {
                        path: self.path.clone(),
                        message: e.to_string(),
                    }))
                }
                None => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_encoding() {
        assert_eq!(
            encode_query(r#"{"type":["container"]}"#),
            "%7B%22type%22%3A%5B%22container%22%5D%7D"
        );
    }
}
