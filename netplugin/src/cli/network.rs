//! `netplugin network ls|set-limits`.

use anyhow::Context;
use clap::Subcommand;
use plugin_transport::cli::print_table;

use netplugin::network::NetworkView;
use netplugin::state::short;

use crate::config::AdminArgs;

#[derive(Subcommand, Debug)]
pub enum NetworkCommand {
    /// List networks: VLAN, subnet, gateway, MTU, endpoints.
    Ls(AdminArgs),
    /// Change a network's default rate limits while containers run: every endpoint of the
    /// network (all hosts) without a limit of its own in that direction follows.
    SetLimits {
        /// Network id (or a prefix of at least 4 characters).
        network: String,
        #[command(flatten)]
        limits: super::LimitFlags,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

impl NetworkCommand {
    pub async fn run(self) -> anyhow::Result<()> {
        match self {
            NetworkCommand::Ls(admin) => ls(admin).await,
            NetworkCommand::SetLimits {
                network,
                limits,
                admin,
            } => super::set_limits(&admin, "/networks/limits", &network, limits).await,
        }
    }
}

async fn ls(admin: AdminArgs) -> anyhow::Result<()> {
    let body = super::get(&admin, "/networks").await?;
    let Some(list) = admin
        .decode::<Vec<NetworkView>>(&body)
        .context("decoding the answer")?
    else {
        return Ok(());
    };
    let rows = list
        .iter()
        .map(|n| {
            vec![
                short(&n.id).to_string(),
                format!("{}{}", n.vlan, if n.vlan_auto { " (auto)" } else { "" }),
                n.subnet.clone(),
                n.gateway.clone(),
                n.mtu.to_string(),
                n.endpoints.to_string(),
                n.limits.describe(),
                n.pool_id.clone(),
            ]
        })
        .collect::<Vec<_>>();
    print_table(
        &[
            "NETWORK",
            "VLAN",
            "SUBNET",
            "GATEWAY",
            "MTU",
            "ENDPOINTS",
            "RATE OUT/IN",
            "POOL",
        ],
        &rows,
    );
    Ok(())
}
