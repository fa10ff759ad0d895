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

/// The flags of `endpoint set-limits` and `network set-limits`.
#[derive(clap::Args, Debug)]
pub struct LimitFlags {
    /// What the container sends: bits per second like 500K, 100M, 1G; `none` removes the
    /// limit (and its meter); on an endpoint, `network` follows the network's default again.
    #[arg(long)]
    egress: Option<String>,
    /// What the container receives, as --egress.
    #[arg(long)]
    ingress: Option<String>,
    /// Bucket size of both meters, bits (like 1M); `none`: 80% of a second at the rate.
    #[arg(long)]
    burst: Option<String>,
}

impl LimitFlags {
    pub fn change(self) -> netplugin::network::LimitsChange {
        netplugin::network::LimitsChange {
            egress: self.egress,
            ingress: self.ingress,
            burst: self.burst,
        }
    }
}

/// Posts a `set-limits` command and prints what changed.
pub async fn set_limits(
    admin: &AdminArgs,
    path: &str,
    target: &str,
    flags: LimitFlags,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let mut body = serde_json::to_value(flags.change())?;
    body["target"] = serde_json::Value::String(target.to_string());
    let answer = post(admin, path, body).await?;
    let Some(r) = admin
        .decode::<netplugin::network::LimitsReport>(&answer)
        .context("decoding the answer")?
    else {
        return Ok(());
    };
    if let Some(n) = &r.network_limits {
        println!("network default: {} (out/in)", n.describe());
    }
    for e in &r.endpoints {
        println!(
            "endpoint {} on {}: {} (out/in)",
            netplugin::state::short(&e.endpoint_id),
            e.host_id,
            e.limits.describe()
        );
    }
    match &r.datapath_error {
        None => {
            println!("in force on this host; other hosts apply theirs at their next reconcile pass")
        }
        Some(e) => println!("recorded, not yet in force here ({e}); the reconcile pass retries"),
    }
    Ok(())
}
