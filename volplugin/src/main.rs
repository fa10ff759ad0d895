//! `volplugin serve` runs the daemon; every other subcommand is an admin command that talks to
//! it over the admin socket.

mod cli;
mod config;

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use plugin_transport::cli::create_private_dir;
use plugin_transport::daemon::{Daemon, Skeleton};
use plugin_transport::metrics::Metrics;
use tracing::{info, warn};

use volplugin::backend::loopfile::LoopfileBackend;
use volplugin::backend::lvm::LvmThinBackend;
use volplugin::backend::Backend;
use volplugin::service::VolumeService;
use volplugin::store::MetaStore;

use crate::cli::volume::VolumeCommand;
use crate::config::{BackendChoice, Config, ServeArgs, Vol};

#[derive(Parser, Debug)]
#[command(
    name = "volplugin",
    version = plugin_transport::version!(),
    about = "Berth volume plugin for Docker: sized volumes on loop files or LVM thin LVs"
)]
enum Command {
    /// Run the plugin daemon (Docker's VolumeDriver on <plugin-dir>/berth-vol.sock).
    Serve(Box<ServeArgs>),
    /// Inspect volumes through the running daemon.
    #[command(subcommand)]
    Volume(VolumeCommand),
}

fn main() -> anyhow::Result<()> {
    plugin_transport::daemon::main(|command| async move {
        match command {
            Command::Serve(args) => serve(*args).await,
            Command::Volume(command) => command.run().await,
        }
    })
}

async fn serve(cli: ServeArgs) -> anyhow::Result<()> {
    let args = cli.common.merge_file(&cli)?;
    plugin_transport::logging::init(args.common.log_format());
    let config = Config::from_args(&args)?;

    let state_dir = &config.daemon.state_dir;
    create_private_dir(state_dir)
        .with_context(|| format!("creating --state-dir {}", state_dir.display()))?;
    std::fs::create_dir_all(&config.mount_root)
        .with_context(|| format!("creating --mount-root {}", config.mount_root.display()))?;
    let mount_root = config
        .mount_root
        .canonicalize()
        .with_context(|| format!("resolving {}", config.mount_root.display()))?;
    let backend = open_backend(&config.backend)?;
    let store = MetaStore::open(&config.meta_store())
        .context("opening the metadata store (is another volplugin using this --state-dir?)")?;
    let svc = Arc::new(VolumeService::new(
        store,
        backend,
        config.policy.clone(),
        mount_root,
    ));

    // Before the plugin socket exists: Docker's first call finds volumes and mounts as the
    // kernel has them.
    let report = tokio::task::spawn_blocking({
        let svc = svc.clone();
        move || svc.reconcile()
    })
    .await
    .context("reconcile task")??;
    info!(?report, "reconciled state with the kernel");
    for error in &report.errors {
        warn!(error = %error, "reconcile could not fix this; it is retried at the next start");
    }
    for name in &report.unknown_storage {
        warn!(storage = %name, "storage without a volume record; left untouched");
    }

    let metrics = Metrics::new(Vol::METRICS_PREFIX);
    volplugin::metrics::register(&metrics, svc.clone());
    let (limits_tx, limits_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut daemon = Skeleton::start(
        &config.daemon,
        &metrics,
        volplugin::handlers::plugin_router(svc.clone()),
        volplugin::handlers::admin_router(
            svc.clone(),
            limits_tx,
            plugin_transport::docker::DockerClient::new(&config.docker_socket),
        ),
    )
    .await?;
    let throttler = volplugin::throttle::Throttler::new(
        svc.clone(),
        plugin_transport::docker::DockerClient::new(&config.docker_socket),
        volplugin::cgroup::CgroupFs::default(),
    );
    daemon.spawn(throttler.run(limits_rx, daemon.shutdown()));
    info!(socket = %config.daemon.plugin_socket().display(), admin = %config.daemon.admin_socket.display(),
        backend = svc.backend_kind(), "volplugin serving");
    daemon.run().await;
    info!("volplugin stopped");
    Ok(())
}

fn open_backend(choice: &BackendChoice) -> anyhow::Result<Arc<dyn Backend>> {
    Ok(match choice {
        BackendChoice::Loopfile { images } => {
            Arc::new(LoopfileBackend::new(images.clone()).context("loopfile backend")?)
        }
        BackendChoice::LvmThin(cfg) => {
            let backend = LvmThinBackend::new(cfg.clone()).context("--backend lvm-thin")?;
            backend.check_pool().context("--backend lvm-thin")?;
            Arc::new(backend)
        }
    })
}

#[test]
fn cli_is_well_formed() {
    use clap::CommandFactory;
    Command::command().debug_assert();
}

#[test]
fn version_man_pages_and_completions_cover_the_cli() {
    use clap::CommandFactory;
    let dir = tempfile::tempdir().unwrap();
    plugin_transport::generate::check_cli(
        Command::command(),
        env!("CARGO_PKG_VERSION"),
        env!("BERTH_BUILD_GIT_REV"),
        dir.path(),
    )
    .unwrap();
}
