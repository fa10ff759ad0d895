//! `netplugin host ls` and `netplugin host set-id`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use plugin_transport::cli::print_table;
use plugin_transport::daemon::Daemon;

use netplugin::fleet::HostView;

use crate::config::{AdminArgs, Net};

#[derive(Subcommand, Debug)]
pub enum HostCommand {
    /// List hosts: alive (lease held) or gone, addresses, endpoints and blocks they hold.
    Ls(AdminArgs),
    /// Offline (daemon stopped): make this state dir host ID's. The admin step netplugin asks
    /// for when it refuses to start because the host id or the store changed: the next start
    /// takes ID over in the store it is given.
    SetId(SetIdArgs),
}

#[derive(Args, Debug)]
pub struct SetIdArgs {
    /// The host id netplugin will run as (its --host-id, or the hostname).
    id: String,
    /// netplugin's state directory. [default: /var/lib/berth/net]
    #[arg(long)]
    state_dir: Option<PathBuf>,
}

impl HostCommand {
    pub async fn run(self) -> anyhow::Result<()> {
        match self {
            HostCommand::Ls(admin) => ls(admin).await,
            HostCommand::SetId(a) => set_id(a),
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

fn set_id(a: SetIdArgs) -> anyhow::Result<()> {
    crate::config::check_host_id(&a.id)?;
    let dir = a.state_dir.unwrap_or_else(|| PathBuf::from(Net::STATE_DIR));
    plugin_transport::cli::create_private_dir(&dir)
        .with_context(|| format!("creating --state-dir {}", dir.display()))?;
    let before = netplugin::identity::set_id(&dir, &a.id)?;
    let file = netplugin::identity::identity_file(&dir);
    match before {
        Some(b) => println!(
            "{}: host {} -> {}; start netplugin as {} (it takes the id over in its store)",
            file.display(),
            b.host_id,
            a.id,
            a.id
        ),
        None => println!("{}: host {}", file.display(), a.id),
    }
    Ok(())
}
