//! `netplugin serve` runs the daemon; every other subcommand is an admin command that talks to
//! it over the admin socket.

mod cli;
mod config;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use http::Method;
use plugin_transport::cli::create_private_dir;
use plugin_transport::daemon::{Daemon, Skeleton};
use plugin_transport::docker::DockerClient;
use plugin_transport::metrics::Metrics;
use tracing::info;

use netplugin::dataplane::ovs::OvsDataplane;
use netplugin::dataplane::Dataplane;
use netplugin::ipam::Ipam;
use netplugin::network::Service;
use netplugin::state::State;
use netplugin::store::etcd::EtcdStore;
use netplugin::store::redb::RedbStore;
use netplugin::store::Store;

use crate::cli::endpoint::EndpointCommand;
use crate::cli::host::HostCommand;
use crate::cli::network::NetworkCommand;
use crate::cli::pool::PoolCommand;
use crate::cli::store::StoreCommand;
use crate::config::{embedded_store, AdminArgs, Config, Net, ServeArgs, StoreChoice};

#[derive(Parser, Debug)]
#[command(
    name = "netplugin",
    version = plugin_transport::version!(),
    about = "Berth network + IPAM Docker plugin on Open vSwitch VLAN ports"
)]
enum Command {
    /// Run the plugin daemon (NetworkDriver + IpamDriver on <plugin-dir>/berth-net.sock).
    Serve(Box<ServeArgs>),
    /// Networks known to the plugin.
    #[command(subcommand)]
    Network(NetworkCommand),
    /// Endpoints (one per container and network).
    #[command(subcommand)]
    Endpoint(EndpointCommand),
    /// IPAM pools and who holds which address.
    #[command(subcommand)]
    Pool(PoolCommand),
    /// Re-assert the datapath now (bridge, flows, ports); prints what was fixed.
    Reconcile(ReconcileArgs),
    /// Endpoint setup latencies, OVS connection, store and datapath in use.
    Stats(AdminArgs),
    /// Hosts of the fleet: lease state and what each holds.
    #[command(subcommand)]
    Host(HostCommand),
    /// The state store itself (offline; the daemon must be stopped).
    #[command(subcommand)]
    Store(StoreCommand),
}

#[derive(clap::Args, Debug)]
struct ReconcileArgs {
    #[command(flatten)]
    admin: AdminArgs,
    /// Also remove this host's ports without an endpoint when they are most of the bridge
    /// (a normal pass holds those back and logs them: see `prune_held`).
    #[arg(long)]
    prune: bool,
}

fn main() -> anyhow::Result<()> {
    plugin_transport::daemon::main(|command| async move {
        match command {
            Command::Serve(args) => serve(*args).await,
            Command::Network(command) => command.run().await,
            Command::Endpoint(command) => command.run().await,
            Command::Pool(command) => command.run().await,
            Command::Reconcile(a) => {
                let path = if a.prune {
                    "/reconcile?prune=true"
                } else {
                    "/reconcile"
                };
                cli::print_json(&a.admin, Method::POST, path).await
            }
            Command::Stats(admin) => cli::print_json(&admin, Method::GET, "/stats").await,
            Command::Host(command) => command.run().await,
            Command::Store(command) => command.run().await,
        }
    })
}

/// How long a start waits for the store to check the host identity: an etcd that is slow or
/// briefly unreachable (a host booting with the cluster) delays the start instead of failing
/// it; systemd's restart covers a longer outage.
const IDENTITY_STORE_WAIT: Duration = Duration::from_secs(120);

/// Binds or checks this host's identity ([`netplugin::identity::establish`]); store errors
/// are retried (the check is idempotent), a refusal is final.
async fn establish_identity(
    state_dir: &std::path::Path,
    host_id: &str,
    store: &Arc<dyn Store>,
    store_desc: &str,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let mut pause = Duration::from_millis(250);
    loop {
        let (store, dir, id, desc) = (
            store.clone(),
            state_dir.to_path_buf(),
            host_id.to_string(),
            store_desc.to_string(),
        );
        let outcome = tokio::task::spawn_blocking(move || {
            netplugin::identity::establish(&dir, &id, store.as_ref(), &desc)
        })
        .await
        .context("checking the host identity")?;
        match outcome {
            Ok(_) => return Ok(()),
            Err(netplugin::identity::IdentityError::Store(e))
                if started.elapsed() < IDENTITY_STORE_WAIT =>
            {
                tracing::warn!(error = %e, "the store cannot check the host identity yet; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

async fn serve(cli: ServeArgs) -> anyhow::Result<()> {
    let args = cli.common.merge_file(&cli)?;
    plugin_transport::logging::init(args.common.log_format());
    let config = Config::from_args(&args)?;

    let state_dir = &config.daemon.state_dir;
    // Also with etcd: the host identity lives there.
    create_private_dir(state_dir)
        .with_context(|| format!("creating --state-dir {}", state_dir.display()))?;
    let (store, store_desc): (Arc<dyn Store>, String) = match &config.store {
        StoreChoice::Embedded => {
            let path = embedded_store(state_dir);
            (
                Arc::new(RedbStore::open(&path).context("opening the embedded store")?),
                format!("embedded {}", path.display()),
            )
        }
        StoreChoice::Etcd(etcd) => (
            Arc::new(EtcdStore::connect(etcd).context("connecting to etcd")?),
            format!("etcd {} prefix {}", etcd.endpoints.join(","), etcd.prefix),
        ),
    };
    establish_identity(state_dir, &config.host_id, &store, &store_desc).await?;
    let dp: Arc<dyn Dataplane> =
        Arc::new(OvsDataplane::start(config.ovs.clone()).map_err(anyhow::Error::msg)?);
    let state = State::new(store, config.host_id.clone());
    let fence = config
        .fence_after
        .map(|after| netplugin::fence::Fence::new(after, state.clone(), dp.clone()));
    let ipam = Arc::new(Ipam::new(state.clone(), config.ipam.clone()));
    let svc = Arc::new(Service::new(state, ipam, dp, config.net.clone()));

    // Before serving: no CreateEndpoint of ours can be between its veth and its port now.
    match netplugin::leaks::remove_portless_veths(&svc).await {
        Ok(removed) if !removed.is_empty() => {
            info!(veths = ?removed, "leaked veth pairs removed at start");
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "leaked veth pairs not looked for at start (they stay until the next start)");
        }
    }

    let metrics = Metrics::new(Net::METRICS_PREFIX);
    netplugin::metrics::register(&metrics, svc.clone());
    if let Some(f) = &fence {
        metrics.register(
            "fenced_ports",
            "Access ports fenced (traffic dropped) because this host's lease was not renewed for --fence-after",
            f.gauge(),
        );
    }
    let docker = DockerClient::new(&config.docker_socket);
    let mut daemon = Skeleton::start(
        &config.daemon,
        &metrics,
        netplugin::handlers::plugin_router(svc.clone()),
        netplugin::handlers::admin_router(svc.clone(), docker.clone()),
    )
    .await?;
    daemon.spawn(netplugin::fleet::host_agent(
        svc.ipam().clone(),
        config.lease_ttl,
        config.reclaim_after,
        fence.clone(),
        daemon.shutdown(),
    ));
    if let Some(f) = fence {
        daemon.spawn(netplugin::fence::watchdog(f, daemon.shutdown()));
    }
    daemon.spawn(netplugin::docker_sync::run(
        svc.clone(),
        docker,
        config.docker_sync_interval,
        config.release_leaked_after,
        daemon.shutdown(),
    ));
    daemon.spawn(netplugin::reconcile::run(
        svc.clone(),
        config.reconcile_interval,
        daemon.shutdown(),
    ));
    info!(socket = %config.daemon.plugin_socket().display(), admin = %config.daemon.admin_socket.display(),
        host_id = %config.host_id, bridge = %config.ovs.bridge, datapath = %config.ovs.datapath,
        ovsdb = %config.ovs.ovsdb, store = svc.state().store.kind(), "netplugin serving");
    daemon.run().await;
    info!("netplugin stopped");
    Ok(())
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
