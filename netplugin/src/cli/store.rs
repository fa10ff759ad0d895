//! `netplugin store migrate`: offline, on the stores themselves (the daemon is stopped).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use plugin_transport::daemon::Daemon;

use netplugin::migrate::{self, MigrateReport};
use netplugin::store::etcd::EtcdStore;
use netplugin::store::redb::RedbStore;

use crate::config::{embedded_store, EtcdArgs, Net};

#[derive(Subcommand, Debug)]
pub enum StoreCommand {
    /// Copy this host's embedded state (networks, pools, endpoints, addresses) into etcd,
    /// unchanged; refuses on any conflict with what etcd holds already. Run with the daemon
    /// stopped, then start it with --store etcd and the same --host-id.
    Migrate(MigrateArgs),
}

#[derive(Args, Debug)]
pub struct MigrateArgs {
    /// Target store (only etcd).
    #[arg(long)]
    to: String,
    /// The embedded store's directory. [default: /var/lib/berth/net]
    #[arg(long)]
    state_dir: Option<PathBuf>,
    #[command(flatten)]
    etcd: EtcdArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

impl StoreCommand {
    pub async fn run(self) -> anyhow::Result<()> {
        match self {
            StoreCommand::Migrate(a) => migrate(a).await,
        }
    }
}

async fn migrate(a: MigrateArgs) -> anyhow::Result<()> {
    if a.to != "etcd" {
        bail!("--to {:?}: only etcd", a.to);
    }
    let state_dir = a
        .state_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(Net::STATE_DIR));
    let path = embedded_store(&state_dir);
    if !path.exists() {
        bail!(
            "{} does not exist: nothing to migrate (--state-dir?)",
            path.display()
        );
    }
    let config = a.etcd.config()?;
    let report = tokio::task::spawn_blocking(move || -> anyhow::Result<MigrateReport> {
        let source =
            RedbStore::open(&path).context("opening the embedded store (stop netplugin first)")?;
        let target = Arc::new(EtcdStore::connect(&config).context("connecting to etcd")?);
        Ok(migrate::migrate(&source, target, &config.prefix)?)
    })
    .await??;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    for (kind, n) in &report.copied {
        println!("copied {n} {kind}");
    }
    if report.already_there > 0 {
        println!(
            "{} records were in etcd already, identical",
            report.already_there
        );
    }
    println!(
        "done: start netplugin with --store etcd --etcd-prefix {} and --host-id {} (the host id the records carry); {} is no longer read",
        report.etcd_prefix,
        report.host_ids.join(","),
        embedded_store(&state_dir).display()
    );
    Ok(())
}
