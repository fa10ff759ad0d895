//! `netplugin host ls`.

use anyhow::Context;
use clap::Subcommand;
use plugin_transport::cli::print_table;

use netplugin::fleet::HostView;

use crate::config::AdminArgs;

#[derive(Subcommand, Debug)]
pub enum HostCommand {
    /// List hosts: alive (lease held) or gone, addresses, endpoints and blocks they hold.
    Ls(AdminArgs),
}

impl HostCommand {
    pub async fn run(self) -> anyhow::Result<()> {
        match self {
            HostCommand::Ls(admin) => ls(admin).await,
        }
    }
}

async fn ls(admin: AdminArgs) -> anyhow::Result<()> {
    let body = super::get(&admin, "/hosts").await?;
    let Some(list) = admin
        .decode::<Vec<HostView>>(&body)
        .context("decoding the answer")?
    else {
        return Ok(());
    };
    let rows = list
        .iter()
        .map(|h| {
            vec![
                format!("{}{}", h.host, if h.this_host { " (this)" } else { "" }),
                if h.alive {
                    format!("alive ({:x})", h.lease)
                } else {
                    "gone (no lease)".into()
                },
                h.addresses.to_string(),
                h.endpoints.to_string(),
                h.blocks.to_string(),
                h.version.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect::<Vec<_>>();
    print_table(
        &[
            "HOST",
            "LEASE",
            "ADDRESSES",
            "ENDPOINTS",
            "BLOCKS",
            "VERSION",
        ],
        &rows,
    );
    Ok(())
}
