//! `netplugin endpoint ls|release|set-limits`.

use anyhow::Context;
use clap::Subcommand;
use plugin_transport::cli::print_table;

use netplugin::network::{EndpointRelease, EndpointView};
use netplugin::state::short;

use crate::config::AdminArgs;

#[derive(Subcommand, Debug)]
pub enum EndpointCommand {
    /// List endpoints with address, MAC, interfaces and OVS port state.
    Ls {
        /// Only endpoints of this network (id or id prefix).
        #[arg(long)]
        network: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Release what a leaked endpoint holds (OVS port, veth, record, address); refused while
    /// Docker lists it.
    Release {
        /// Endpoint id, or a prefix of at least 4 characters.
        endpoint: String,
        /// Without asking Docker (when it is down or is not the one that created it).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Change an endpoint's rate limits while its container runs (in force at once on this
    /// host; persisted).
    SetLimits {
        /// Endpoint id or container id (or a prefix of at least 4 characters).
        endpoint: String,
        #[command(flatten)]
        limits: super::LimitFlags,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

impl EndpointCommand {
    pub async fn run(self) -> anyhow::Result<()> {
        match self {
            EndpointCommand::Ls { network, admin } => ls(network, admin).await,
            EndpointCommand::Release {
                endpoint,
                force,
                admin,
            } => release(&endpoint, force, admin).await,
            EndpointCommand::SetLimits {
                endpoint,
                limits,
                admin,
            } => super::set_limits(&admin, "/endpoints/limits", &endpoint, limits).await,
        }
    }
}

async fn ls(network: Option<String>, admin: AdminArgs) -> anyhow::Result<()> {
    let path = match &network {
        Some(n) => format!("/endpoints?network={n}"),
        None => "/endpoints".into(),
    };
    let body = super::get(&admin, &path).await?;
    let Some(list) = admin
        .decode::<Vec<EndpointView>>(&body)
        .context("decoding the answer")?
    else {
        return Ok(());
    };
    let rows = list
        .iter()
        .map(|e| {
            vec![
                short(&e.id).to_string(),
                short(&e.network_id).to_string(),
                e.address.clone(),
                e.mac.clone(),
                e.vlan.to_string(),
                e.host_if.clone(),
                e.container_if.clone(),
                match e.ovs_tag {
                    Some(t) => format!("{} (tag {t})", e.ovs_port),
                    None => e.ovs_port.clone(),
                },
                e.container_id
                    .as_deref()
                    .map(|c| short(c).to_string())
                    .unwrap_or_else(|| "-".into()),
                e.limits.describe(),
                e.host_id.clone(),
            ]
        })
        .collect::<Vec<_>>();
    print_table(
        &[
            "ENDPOINT",
            "NETWORK",
            "ADDRESS",
            "MAC",
            "VLAN",
            "HOST-IF",
            "CONTAINER-IF",
            "OVS-PORT",
            "CONTAINER",
            "RATE OUT/IN",
            "HOST",
        ],
        &rows,
    );
    Ok(())
}

async fn release(endpoint: &str, force: bool, admin: AdminArgs) -> anyhow::Result<()> {
    let body = super::post(
        &admin,
        "/endpoints/release",
        serde_json::json!({ "endpoint": endpoint, "force": force }),
    )
    .await?;
    let Some(r) = admin
        .decode::<EndpointRelease>(&body)
        .context("decoding the answer")?
    else {
        return Ok(());
    };
    println!(
        "released endpoint {} of network {}: record deleted, {}",
        short(&r.endpoint_id),
        short(&r.network_id),
        if r.address_released {
            format!("address {} released", r.address)
        } else {
            format!(
                "address {} was no longer held for it (left as it is)",
                r.address
            )
        }
    );
    match &r.datapath_error {
        None => println!("OVS port and veth {} removed", r.host_if),
        Some(e) => println!(
            "OVS port or veth {} not fully removed ({e}); the reconciler retries",
            r.host_if
        ),
    }
    Ok(())
}
