//! The admin commands: each asks the running daemon over its admin socket and prints the
//! answer as a table or, with `--json`, as JSON. `store` works offline, on the store itself.

pub mod endpoint;
pub mod host;
pub mod network;
pub mod pool;
pub mod store;

use bytes::Bytes;
use http::Method;

use crate::config::AdminArgs;

pub async fn get(admin: &AdminArgs, path: &str) -> anyhow::Result<Bytes> {
    Ok(admin.call(Method::GET, path, None).await?)
}

pub async fn post(admin: &AdminArgs, path: &str, body: serde_json::Value) -> anyhow::Result<Bytes> {
    Ok(admin
        .call(Method::POST, path, Some(serde_json::to_vec(&body)?))
        .await?)
}

/// `reconcile` and `stats`: the daemon's answer as it is, pretty-printed JSON.
pub async fn print_json(admin: &AdminArgs, method: Method, path: &str) -> anyhow::Result<()> {
    let body = admin.call(method, path, None).await?;
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}
