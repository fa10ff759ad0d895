//! `netplugin serve` runs the daemon; every other subcommand is an admin command that talks to
//! it over the admin socket.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use http::Method;
use plugin_transport::cli::{create_private_dir, decode_answer, print_table};
use plugin_transport::listen::{bind_tcp, bind_unix, plugin_listener};
use plugin_transport::logging::LogFormat;
use plugin_transport::metrics::Metrics;
use plugin_transport::server::Server;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use netplugin::dataplane::ovs::{resolve_datapath, OvsConfig, OvsDataplane};
use netplugin::dataplane::Dataplane;
use netplugin::fleet::{AddressChange, HostView, ReclaimReport};
use netplugin::ipam::{Ipam, IpamConfig};
use netplugin::ipnet::Ipv4Net;
use netplugin::network::{
    EndpointRelease, EndpointView, NetConfig, NetworkView, PoolView, Service,
};
use netplugin::state::{short, State};
use netplugin::store::etcd::{EtcdConfig, EtcdStore};
use netplugin::store::redb::RedbStore;
use netplugin::store::Store;

const DEFAULT_CONFIG: &str = "/etc/berth/netplugin.toml";
const DEFAULT_ADMIN_SOCKET: &str = "/run/berth/netplugin.sock";
const PLUGIN_NAME: &str = "berth-net";

#[derive(Parser, Debug)]
#[command(
    name = "netplugin",
    version,
    about = "Berth network + IPAM Docker plugin on Open vSwitch VLAN ports"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
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
    Reconcile(AdminArgs),
    /// Endpoint setup latencies, OVS connection, store and datapath in use.
    Stats(AdminArgs),
    /// Hosts of the fleet: lease state and what each holds.
    #[command(subcommand)]
    Host(HostCommand),
    /// The state store itself (offline; the daemon must be stopped).
    #[command(subcommand)]
    Store(StoreCommand),
}

#[derive(Subcommand, Debug)]
enum HostCommand {
    /// List hosts: alive (lease held) or gone, addresses, endpoints and blocks they hold.
    Ls(AdminArgs),
}

#[derive(Subcommand, Debug)]
enum StoreCommand {
    /// Copy this host's embedded state (networks, pools, endpoints, addresses) into etcd,
    /// unchanged; refuses on any conflict with what etcd holds already. Run with the daemon
    /// stopped, then start it with --store etcd and the same --host-id.
    Migrate(MigrateArgs),
}

#[derive(Args, Debug)]
struct MigrateArgs {
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

#[derive(Args, Debug, Default, Clone)]
struct EtcdArgs {
    /// etcd endpoints, comma-separated URLs (--store etcd).
    #[arg(long)]
    etcd_endpoints: Option<String>,
    /// Key prefix in etcd. [default: /berth/v1/]
    #[arg(long)]
    etcd_prefix: Option<String>,
    /// CA certificate (PEM) of the etcd servers (https endpoints).
    #[arg(long)]
    etcd_cacert: Option<PathBuf>,
    /// Client certificate (PEM) for etcd.
    #[arg(long)]
    etcd_cert: Option<PathBuf>,
    /// Key (PEM) of the client certificate.
    #[arg(long)]
    etcd_key: Option<PathBuf>,
    /// Bound on each etcd call, seconds. [default: 3]
    #[arg(long)]
    etcd_timeout: Option<f64>,
}

impl EtcdArgs {
    fn config(&self) -> anyhow::Result<EtcdConfig> {
        let endpoints = self
            .etcd_endpoints
            .as_deref()
            .context("--etcd-endpoints is required with etcd")?;
        let mut c = EtcdConfig::new(
            endpoints,
            self.etcd_prefix.as_deref().unwrap_or("/berth/v1/"),
        )
        .map_err(anyhow::Error::msg)?;
        c.cacert = self.etcd_cacert.clone();
        c.cert = self.etcd_cert.clone();
        c.key = self.etcd_key.clone();
        let t = self.etcd_timeout.unwrap_or(3.0);
        if !(0.1..=60.0).contains(&t) {
            bail!("--etcd-timeout {t}: must be 0.1-60 seconds");
        }
        c.timeout = Duration::from_secs_f64(t);
        Ok(c)
    }
}

#[derive(Subcommand, Debug)]
enum NetworkCommand {
    /// List networks: VLAN, subnet, gateway, MTU, endpoints.
    Ls(AdminArgs),
}

#[derive(Subcommand, Debug)]
enum EndpointCommand {
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
}

#[derive(Subcommand, Debug)]
enum PoolCommand {
    /// List pools with allocated and free counts.
    Ls(AdminArgs),
    /// One pool (by pool id, subnet or network id) with every held address and its holder.
    Show {
        pool: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Hold IP for the admin: never handed out until unreserved.
    Reserve(AddressArgs),
    /// Give back an address held by `pool reserve`.
    Unreserve(AddressArgs),
    /// Free IP whoever holds it (a leak after a crash); says what held it.
    Release(AddressArgs),
    /// Release every address, endpoint and block affinity of a dead host.
    Reclaim {
        /// The host id (see `netplugin host ls`).
        #[arg(long)]
        host: String,
        /// Even if the host's lease is alive (its containers lose their addresses' guarantee).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Args, Debug)]
struct AddressArgs {
    ip: String,
    /// The pool (id, subnet or network id) when several contain IP.
    #[arg(long)]
    pool: Option<String>,
    #[command(flatten)]
    admin: AdminArgs,
}

#[derive(Args, Debug)]
struct AdminArgs {
    /// The daemon's admin socket.
    #[arg(long, default_value = DEFAULT_ADMIN_SOCKET)]
    admin_socket: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Every setting is a flag and a key of the config file (same name, e.g. `state-dir`).
#[derive(Args, Debug, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ServeArgs {
    /// Config file (TOML; keys are these flag names). Default: /etc/berth/netplugin.toml if present.
    #[arg(long)]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Where netplugin keeps its embedded store. [default: /var/lib/berth/net]
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Directory of Docker's plugin sockets. [default: /run/docker/plugins]
    #[arg(long)]
    plugin_dir: Option<PathBuf>,
    /// Admin socket (mode 0600). [default: /run/berth/netplugin.sock]
    #[arg(long)]
    admin_socket: Option<PathBuf>,
    /// Mode of the plugin socket, octal. [default: 0600]
    #[arg(long)]
    socket_mode: Option<String>,
    /// Prometheus endpoint address, or `off`. [default: 127.0.0.1:9473]
    #[arg(long)]
    metrics: Option<String>,
    /// text or json. [default: text]
    #[arg(long)]
    log_format: Option<LogFormat>,
    /// embedded or etcd. [default: embedded]
    #[arg(long)]
    store: Option<String>,
    /// etcd endpoints, comma-separated URLs (--store etcd).
    #[arg(long)]
    etcd_endpoints: Option<String>,
    /// Key prefix in etcd. [default: /berth/v1/]
    #[arg(long)]
    etcd_prefix: Option<String>,
    /// CA certificate (PEM) of the etcd servers (https endpoints).
    #[arg(long)]
    etcd_cacert: Option<PathBuf>,
    /// Client certificate (PEM) for etcd.
    #[arg(long)]
    etcd_cert: Option<PathBuf>,
    /// Key (PEM) of the client certificate.
    #[arg(long)]
    etcd_key: Option<PathBuf>,
    /// Bound on each etcd call, seconds. [default: 3]
    #[arg(long)]
    etcd_timeout: Option<f64>,
    /// Release the addresses of a host whose lease has been gone this long (e.g. 10m, 1h);
    /// off by default: a host cut off from etcd keeps its addresses until `pool reclaim`.
    #[arg(long)]
    reclaim_after: Option<String>,
    /// This host's name in the store. [default: the hostname]
    #[arg(long)]
    host_id: Option<String>,
    /// OVS bridge. [default: br-berth]
    #[arg(long)]
    bridge: Option<String>,
    /// auto, system or netdev; auto = netdev without the openvswitch kernel module. [default: auto]
    #[arg(long)]
    datapath: Option<String>,
    /// Interface added to the bridge as a trunk of every VLAN (between hosts).
    #[arg(long)]
    uplink: Option<String>,
    /// OVSDB socket. [default: unix:/var/run/openvswitch/db.sock]
    #[arg(long)]
    ovsdb: Option<String>,
    /// OVS run directory (holds <bridge>.mgmt). [default: /var/run/openvswitch]
    #[arg(long)]
    ovs_rundir: Option<PathBuf>,
    /// VLANs given to networks created without -o vlan, as FIRST-LAST. [default: 2-4094]
    #[arg(long)]
    vlan_range: Option<String>,
    /// Ranges auto pools (no --subnet) are carved from, comma-separated. [default: 10.224.0.0/12]
    #[arg(long)]
    default_pools: Option<String>,
    /// Prefix length of auto pools. [default: 24]
    #[arg(long)]
    default_pool_size: Option<u8>,
    /// MTU of networks created without -o mtu. [default: 1500]
    #[arg(long)]
    default_mtu: Option<u32>,
    /// Seconds between datapath reconcile passes (re-creates what OVS lost). [default: 2]
    #[arg(long)]
    reconcile_interval: Option<f64>,
    /// Docker's API socket, asked in the background which container each endpoint serves and
    /// which endpoints it leaked. [default: /var/run/docker.sock]
    #[arg(long)]
    docker_socket: Option<PathBuf>,
    /// Seconds between those checks. [default: 5]
    #[arg(long)]
    docker_sync_interval: Option<f64>,
    /// Release an endpoint of this host that Docker has not listed on its network for this
    /// long (e.g. 90s, 5m), or `off` to only log it. [default: 2m]
    #[arg(long)]
    release_leaked_after: Option<String>,
}

fn main() -> anyhow::Result<()> {
    plugin_transport::shutdown::unblock_stop_signals();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve(*args).await,
            Command::Network(NetworkCommand::Ls(a)) => network_ls(a).await,
            Command::Endpoint(EndpointCommand::Ls { network, admin }) => {
                endpoint_ls(network, admin).await
            }
            Command::Endpoint(EndpointCommand::Release {
                endpoint,
                force,
                admin,
            }) => endpoint_release(&endpoint, force, admin).await,
            Command::Pool(PoolCommand::Ls(a)) => pool_ls(a).await,
            Command::Pool(PoolCommand::Show { pool, admin }) => pool_show(&pool, admin).await,
            Command::Pool(PoolCommand::Reserve(a)) => address_admin("reserve", a).await,
            Command::Pool(PoolCommand::Unreserve(a)) => address_admin("unreserve", a).await,
            Command::Pool(PoolCommand::Release(a)) => address_admin("release", a).await,
            Command::Pool(PoolCommand::Reclaim { host, force, admin }) => {
                pool_reclaim(&host, force, admin).await
            }
            Command::Host(HostCommand::Ls(a)) => host_ls(a).await,
            Command::Store(StoreCommand::Migrate(a)) => migrate(a).await,
            Command::Reconcile(a) => {
                let body = admin_call(&a, Method::POST, "/reconcile").await?;
                let v: serde_json::Value = serde_json::from_slice(&body)?;
                println!("{}", serde_json::to_string_pretty(&v)?);
                Ok(())
            }
            Command::Stats(a) => {
                let body = admin_call(&a, Method::GET, "/stats").await?;
                let v: serde_json::Value = serde_json::from_slice(&body)?;
                println!("{}", serde_json::to_string_pretty(&v)?);
                Ok(())
            }
        }
    })
}

fn parse_vlan_range(s: &str) -> anyhow::Result<(u16, u16)> {
    let parsed = s.split_once('-').and_then(|(a, b)| {
        let a: u16 = a.trim().parse().ok()?;
        let b: u16 = b.trim().parse().ok()?;
        (1 <= a && a <= b && b <= 4094).then_some((a, b))
    });
    parsed.with_context(|| format!("--vlan-range {s:?}: must be FIRST-LAST within 1-4094"))
}

/// `90`, `30s`, `10m`, `2h`, `1d`, at least `min_secs`; `flag` names it in errors.
fn parse_duration(flag: &str, s: &str, min_secs: f64, why_min: &str) -> anyhow::Result<Duration> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .ok()
        .filter(|n: &f64| *n > 0.0)
        .with_context(|| format!("{flag} {s:?}: a positive number with s, m, h or d"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => bail!("{flag} {s:?}: the unit must be s, m, h or d"),
    };
    if secs < min_secs {
        bail!("{flag} {s}: at least {min_secs}s ({why_min})");
    }
    Ok(Duration::from_secs_f64(secs))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

async fn serve(cli: ServeArgs) -> anyhow::Result<()> {
    let args: ServeArgs = plugin_transport::config::merge_with_file(
        &cli,
        cli.config.as_deref(),
        Path::new(DEFAULT_CONFIG),
    )?;
    plugin_transport::logging::init(args.log_format.unwrap_or_default());

    let state_dir = args
        .state_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("/var/lib/berth/net"));
    let plugin_dir = args
        .plugin_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("/run/docker/plugins"));
    let admin_socket = args
        .admin_socket
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ADMIN_SOCKET));
    let socket_mode = match &args.socket_mode {
        Some(mode) => u32::from_str_radix(mode.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .with_context(|| format!("--socket-mode {mode:?} is not an octal mode like 0600"))?,
        None => 0o600,
    };
    let host_id = args.host_id.clone().unwrap_or_else(hostname);
    if host_id.is_empty() || host_id.len() > 253 || host_id.contains('/') {
        bail!("--host-id {host_id:?}: 1-253 characters without '/'");
    }
    let bridge = args.bridge.clone().unwrap_or_else(|| "br-berth".into());
    if bridge.is_empty() || bridge.len() > 15 {
        bail!("--bridge {bridge:?}: an interface name of 1-15 bytes");
    }
    let datapath =
        resolve_datapath(args.datapath.as_deref().unwrap_or("auto")).map_err(anyhow::Error::msg)?;
    let vlan_range = parse_vlan_range(args.vlan_range.as_deref().unwrap_or("2-4094"))?;
    let default_pools: Vec<Ipv4Net> = args
        .default_pools
        .as_deref()
        .unwrap_or("10.224.0.0/12")
        .split(',')
        .map(|p| {
            p.trim()
                .parse::<Ipv4Net>()
                .map_err(|e| anyhow::anyhow!("--default-pools: {e}"))
        })
        .collect::<anyhow::Result<_>>()?;
    let default_prefix = args.default_pool_size.unwrap_or(24);
    if !(8..=30).contains(&default_prefix)
        || default_pools.iter().any(|p| p.prefix() > default_prefix)
    {
        bail!("--default-pool-size /{default_prefix}: must be 8-30 and not larger than every --default-pools range");
    }
    let default_mtu = args.default_mtu.unwrap_or(1500);
    if !(68..=9216).contains(&default_mtu) {
        bail!("--default-mtu {default_mtu}: must be 68-9216");
    }
    let reclaim_after = args
        .reclaim_after
        .as_deref()
        .filter(|s| *s != "off")
        .map(|s| {
            parse_duration(
                "--reclaim-after",
                s,
                30.0,
                "hosts renew their lease every few seconds",
            )
        })
        .transpose()?;
    let release_leaked_after = match args.release_leaked_after.as_deref().unwrap_or("2m") {
        "off" => None,
        s => Some(parse_duration(
            "--release-leaked-after",
            s,
            1.0,
            "Docker must have had time to record a new endpoint",
        )?),
    };
    let docker_sync_interval = args.docker_sync_interval.unwrap_or(5.0);
    if !(0.1..=3600.0).contains(&docker_sync_interval) {
        bail!("--docker-sync-interval {docker_sync_interval}: must be 0.1-3600 seconds");
    }
    let docker = plugin_transport::docker::DockerClient::new(
        &args
            .docker_socket
            .clone()
            .unwrap_or_else(|| PathBuf::from("/var/run/docker.sock")),
    );
    let interval = args.reconcile_interval.unwrap_or(2.0);
    if !(0.1..=3600.0).contains(&interval) {
        bail!("--reconcile-interval {interval}: must be 0.1-3600 seconds");
    }

    let store: Arc<dyn Store> = match args.store.as_deref().unwrap_or("embedded") {
        "embedded" => {
            create_private_dir(&state_dir)
                .with_context(|| format!("creating --state-dir {}", state_dir.display()))?;
            Arc::new(
                RedbStore::open(&state_dir.join("state.redb"))
                    .context("opening the embedded store")?,
            )
        }
        "etcd" => {
            let config = EtcdArgs {
                etcd_endpoints: args.etcd_endpoints.clone(),
                etcd_prefix: args.etcd_prefix.clone(),
                etcd_cacert: args.etcd_cacert.clone(),
                etcd_cert: args.etcd_cert.clone(),
                etcd_key: args.etcd_key.clone(),
                etcd_timeout: args.etcd_timeout,
            }
            .config()?;
            Arc::new(EtcdStore::connect(&config).context("connecting to etcd")?)
        }
        other => bail!("--store {other:?} is not one of: embedded, etcd"),
    };
    let ovs = OvsConfig {
        ovsdb: args
            .ovsdb
            .clone()
            .unwrap_or_else(|| ovs_ffi::ovsdb::DEFAULT_ENDPOINT.to_string()),
        rundir: args
            .ovs_rundir
            .clone()
            .unwrap_or_else(|| PathBuf::from("/var/run/openvswitch")),
        bridge: bridge.clone(),
        datapath: datapath.clone(),
        uplink: args.uplink.clone(),
        call_timeout: Duration::from_secs(5),
    };
    let dp: Arc<dyn Dataplane> =
        Arc::new(OvsDataplane::start(ovs.clone()).map_err(anyhow::Error::msg)?);
    let state = State::new(store, host_id.clone());
    let ipam = Arc::new(Ipam::new(
        state.clone(),
        IpamConfig {
            default_pools,
            default_prefix,
        },
    ));
    let svc = Arc::new(Service::new(
        state,
        ipam,
        dp,
        NetConfig {
            vlan_range,
            default_mtu,
        },
    ));

    let metrics = Metrics::new("berth_net");
    netplugin::metrics::register(&metrics, svc.clone());
    let (_signal_tx, shutdown) =
        plugin_transport::shutdown::on_signals().context("installing signal handlers")?;

    let plugin_path = plugin_dir.join(format!("{PLUGIN_NAME}.sock"));
    let (plugin_listener, _plugin_file) =
        plugin_listener(&plugin_path, socket_mode).context("plugin socket")?;
    let (admin_listener, _admin_file) = bind_unix(&admin_socket, 0o600).context("admin socket")?;

    let mut tasks = tokio::task::JoinSet::new();
    let plugin = Server::new("plugin", netplugin::handlers::plugin_router(svc.clone()))
        .with_metrics(metrics.requests.clone());
    tasks.spawn(plugin.serve(plugin_listener, shutdown.clone()));
    let admin = Server::new(
        "admin",
        netplugin::handlers::admin_router(svc.clone(), docker.clone()),
    )
    .with_metrics(metrics.requests.clone());
    tasks.spawn(admin.serve(admin_listener, shutdown.clone()));
    match args.metrics.as_deref().unwrap_or("127.0.0.1:9473") {
        "off" => {}
        addr => {
            let listener = bind_tcp(addr)
                .await
                .with_context(|| format!("--metrics {addr}"))?;
            tasks.spawn(Server::new("metrics", metrics.router()).serve(listener, shutdown.clone()));
        }
    }
    tasks.spawn(netplugin::fleet::host_agent(
        svc.ipam().clone(),
        netplugin::fleet::HOST_TTL,
        reclaim_after,
        shutdown.clone(),
    ));
    tasks.spawn(netplugin::docker_sync::run(
        svc.clone(),
        docker,
        Duration::from_secs_f64(docker_sync_interval),
        release_leaked_after,
        shutdown.clone(),
    ));
    tasks.spawn(reconciler(
        svc.clone(),
        Duration::from_secs_f64(interval),
        shutdown.clone(),
    ));
    info!(socket = %plugin_path.display(), admin = %admin_socket.display(), host_id = %host_id,
        bridge = %bridge, datapath = %datapath, ovsdb = %ovs.ovsdb, store = svc.state().store.kind(), "netplugin serving");
    while tasks.join_next().await.is_some() {}
    info!("netplugin stopped");
    Ok(())
}

/// Re-asserts the datapath when OVS (re)appears and then every `interval`: a restarted
/// ovs-vswitchd loses our flows, a new ovsdb-server may have lost bridge and ports.
async fn reconciler(
    svc: Arc<Service>,
    interval: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut was_connected = false;
    let mut last_error = String::new();
    loop {
        let connected = svc.dataplane().connected();
        if connected {
            match svc.reconcile().await {
                Ok(report) => {
                    if !was_connected {
                        info!(?report, "OVS reachable: datapath re-asserted");
                    } else if report.repaired_drift() {
                        info!(?report, "datapath drift repaired");
                    } else if report.arp_flows_added + report.arp_flows_removed > 0 {
                        debug!(
                            added = report.arp_flows_added,
                            removed = report.arp_flows_removed,
                            "ARP proxy flows updated"
                        );
                    }
                    last_error.clear();
                }
                Err(e) => {
                    let msg = e.to_string();
                    if msg != last_error {
                        warn!(error = %msg, "reconcile failed; retrying");
                    }
                    last_error = msg;
                }
            }
        } else if was_connected || last_error.is_empty() {
            warn!("OVS is not reachable; network calls fail until it is (IPAM keeps working)");
            last_error = "down".into();
        }
        was_connected = connected && last_error.is_empty();
        tokio::select! {
            _ = tokio::time::sleep(if connected { interval } else { Duration::from_millis(200) }) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

async fn admin_call(admin: &AdminArgs, method: Method, path: &str) -> anyhow::Result<bytes::Bytes> {
    Ok(plugin_transport::cli::admin_call(&admin.admin_socket, method, path, None).await?)
}

async fn admin_post(
    admin: &AdminArgs,
    path: &str,
    body: serde_json::Value,
) -> anyhow::Result<bytes::Bytes> {
    Ok(plugin_transport::cli::admin_call(
        &admin.admin_socket,
        Method::POST,
        path,
        Some(serde_json::to_vec(&body)?),
    )
    .await?)
}

async fn address_admin(action: &str, a: AddressArgs) -> anyhow::Result<()> {
    let body = admin_post(
        &a.admin,
        &format!("/addresses/{action}"),
        serde_json::json!({ "ip": a.ip, "pool": a.pool }),
    )
    .await?;
    let Some(c) =
        decode_answer::<AddressChange>(&body, a.admin.json).context("decoding the answer")?
    else {
        return Ok(());
    };
    match c.action.as_str() {
        "reserved" => println!(
            "reserved {} in pool {} ({}): it is never handed out until `netplugin pool unreserve {}`",
            c.address, c.pool_id, c.subnet, c.address
        ),
        action => println!(
            "{action} {} in pool {} ({}); it was held by {}",
            c.address, c.pool_id, c.subnet, c.held_by
        ),
    }
    Ok(())
}

async fn endpoint_release(endpoint: &str, force: bool, admin: AdminArgs) -> anyhow::Result<()> {
    let body = admin_post(
        &admin,
        "/endpoints/release",
        serde_json::json!({ "endpoint": endpoint, "force": force }),
    )
    .await?;
    let Some(r) =
        decode_answer::<EndpointRelease>(&body, admin.json).context("decoding the answer")?
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

async fn pool_reclaim(host: &str, force: bool, admin: AdminArgs) -> anyhow::Result<()> {
    let body = admin_post(
        &admin,
        "/hosts/reclaim",
        serde_json::json!({ "host": host, "force": force }),
    )
    .await?;
    let Some(r) =
        decode_answer::<ReclaimReport>(&body, admin.json).context("decoding the answer")?
    else {
        return Ok(());
    };
    println!(
        "host {}: released {} addresses, removed {} endpoint records, freed {} blocks",
        r.host,
        r.addresses.len(),
        r.endpoints.len(),
        r.blocks
    );
    if !r.addresses.is_empty() {
        let rows = r
            .addresses
            .iter()
            .map(|a| {
                vec![
                    a.address.clone(),
                    a.pool_id.clone(),
                    a.subnet.clone(),
                    a.held_by.clone(),
                ]
            })
            .collect::<Vec<_>>();
        println!();
        print_table(&["RELEASED", "POOL", "SUBNET", "WAS HELD BY"], &rows);
    }
    Ok(())
}

async fn host_ls(admin: AdminArgs) -> anyhow::Result<()> {
    let body = admin_call(&admin, Method::GET, "/hosts").await?;
    let Some(list) =
        decode_answer::<Vec<HostView>>(&body, admin.json).context("decoding the answer")?
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

/// What `store migrate` did.
#[derive(Serialize)]
struct MigrateReport {
    copied: std::collections::BTreeMap<String, usize>,
    already_there: usize,
    host_ids: Vec<String>,
    etcd_prefix: String,
}

async fn migrate(a: MigrateArgs) -> anyhow::Result<()> {
    if a.to != "etcd" {
        bail!("--to {:?}: only etcd", a.to);
    }
    let state_dir = a
        .state_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("/var/lib/berth/net"));
    let path = state_dir.join("state.redb");
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
        netplugin_migrate(&source, target, &config.prefix)
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
        state_dir.join("state.redb").display()
    );
    Ok(())
}

fn netplugin_migrate(
    source: &dyn Store,
    target: Arc<dyn Store>,
    prefix: &str,
) -> anyhow::Result<MigrateReport> {
    use netplugin::store::{Compare, Op, Txn};
    let records: Vec<_> = source
        .range("")?
        .into_iter()
        // Host records belong to a live process's lease.
        .filter(|kv| !kv.key.starts_with("hosts/"))
        .collect();
    let mut conflicts = Vec::new();
    let mut todo = Vec::new();
    let mut already = 0;
    // The same record changed since by the fleet (a pool other hosts joined, an address in
    // use) was migrated before: same object, same creation time.
    let created = |v: &[u8]| {
        serde_json::from_slice::<serde_json::Value>(v)
            .ok()
            .and_then(|j| j.get("created_at").cloned())
    };
    let migrated_pools: std::collections::BTreeSet<String> = records
        .iter()
        .filter(|kv| kv.key.starts_with("pools/"))
        .filter_map(|kv| {
            let t = target.get(&kv.key).ok()??;
            (created(&t.value) == created(&kv.value)).then(|| kv.key["pools/".len()..].to_string())
        })
        .collect();
    for kv in &records {
        let pool_of_block = kv
            .key
            .strip_prefix("blocks/")
            .and_then(|r| r.split('/').next());
        if pool_of_block.is_some_and(|p| migrated_pools.contains(p)) {
            // Block records follow the addresses in etcd now.
            already += 1;
            continue;
        }
        match target.get(&kv.key)? {
            Some(t) if t.value == kv.value => already += 1,
            Some(t) if created(&t.value).is_some() && created(&t.value) == created(&kv.value) => {
                already += 1
            }
            Some(t) => conflicts.push(format!(
                "{}: etcd has {}",
                kv.key,
                String::from_utf8_lossy(&t.value)
            )),
            None => todo.push(kv),
        }
    }
    // Pools of other hosts overlapping ours are refused like any overlapping --subnet.
    let theirs: Vec<netplugin::state::PoolRecord> = target
        .range("pools/")?
        .iter()
        .filter_map(|kv| netplugin::state::decode(kv).ok())
        .collect();
    for kv in records.iter().filter(|kv| kv.key.starts_with("pools/")) {
        let mine: netplugin::state::PoolRecord = netplugin::state::decode(kv)?;
        let Ok(m) = mine.subnet.parse::<Ipv4Net>() else {
            continue;
        };
        for t in theirs
            .iter()
            .filter(|t| t.id != mine.id && t.address_space == mine.address_space)
        {
            if t.subnet.parse::<Ipv4Net>().is_ok_and(|n| n.overlaps(&m)) {
                conflicts.push(format!(
                    "pool {} {} overlaps pool {} {} in etcd",
                    mine.id, mine.subnet, t.id, t.subnet
                ));
            }
        }
    }
    if !conflicts.is_empty() {
        bail!(
            "etcd (prefix {prefix}) holds conflicting records; nothing was copied:\n  {}",
            conflicts.join("\n  ")
        );
    }
    // Pools last: no other host allocates in a pool before its addresses are all there.
    todo.sort_by_key(|kv| (kv.key.starts_with("pools/"), kv.key.clone()));
    let mut copied: std::collections::BTreeMap<String, usize> = Default::default();
    for chunk in todo.chunks(50) {
        let done = target.txn(Txn {
            compare: chunk
                .iter()
                .map(|kv| Compare::Version(kv.key.clone(), 0))
                .collect(),
            success: chunk
                .iter()
                .map(|kv| Op::put(kv.key.clone(), kv.value.clone()))
                .collect(),
            failure: vec![],
        })?;
        if !done.succeeded {
            bail!("another writer changed etcd during the migration; run it again (records already copied are skipped)");
        }
        for kv in chunk {
            let kind = kv.key.split('/').next().unwrap_or("").to_string();
            *copied.entry(kind).or_default() += 1;
        }
    }
    // Pools from a release without block records get them now, before any host allocates.
    let ipam = Ipam::new(
        netplugin::state::State::new(target.clone(), "migrate"),
        IpamConfig::default(),
    );
    for kv in target.range("pools/")? {
        let pool: netplugin::state::PoolRecord = netplugin::state::decode(&kv)?;
        if !pool.blocks {
            if let Ok(net) = pool.subnet.parse::<Ipv4Net>() {
                ipam.build_blocks(&pool, &net, kv.mod_revision)?;
            }
        }
    }
    let mut host_ids = std::collections::BTreeSet::new();
    for kv in &records {
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&kv.value) {
            if let Some(h) = v.get("host_id").and_then(|h| h.as_str()) {
                host_ids.insert(h.to_string());
            }
        }
    }
    Ok(MigrateReport {
        copied,
        already_there: already,
        host_ids: host_ids.into_iter().collect(),
        etcd_prefix: prefix.to_string(),
    })
}

async fn network_ls(admin: AdminArgs) -> anyhow::Result<()> {
    let body = admin_call(&admin, Method::GET, "/networks").await?;
    let Some(list) =
        decode_answer::<Vec<NetworkView>>(&body, admin.json).context("decoding the answer")?
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

async fn endpoint_ls(network: Option<String>, admin: AdminArgs) -> anyhow::Result<()> {
    let path = match &network {
        Some(n) => format!("/endpoints?network={n}"),
        None => "/endpoints".into(),
    };
    let body = admin_call(&admin, Method::GET, &path).await?;
    let Some(list) =
        decode_answer::<Vec<EndpointView>>(&body, admin.json).context("decoding the answer")?
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

async fn pool_ls(admin: AdminArgs) -> anyhow::Result<()> {
    let body = admin_call(&admin, Method::GET, "/pools").await?;
    let Some(list) =
        decode_answer::<Vec<PoolView>>(&body, admin.json).context("decoding the answer")?
    else {
        return Ok(());
    };
    let rows = list
        .iter()
        .map(|p| {
            vec![
                p.id.clone(),
                p.subnet.clone(),
                p.ip_range.clone().unwrap_or_else(|| "-".into()),
                if p.auto { "auto" } else { "explicit" }.into(),
                p.network_id
                    .as_deref()
                    .map(short)
                    .unwrap_or("-")
                    .to_string(),
                p.allocated.to_string(),
                p.free.to_string(),
                p.address_space.clone(),
                p.hosts.join(","),
            ]
        })
        .collect::<Vec<_>>();
    print_table(
        &[
            "POOL",
            "SUBNET",
            "IP-RANGE",
            "KIND",
            "NETWORK",
            "ALLOCATED",
            "FREE",
            "SPACE",
            "HOSTS",
        ],
        &rows,
    );
    Ok(())
}

async fn pool_show(pool: &str, admin: AdminArgs) -> anyhow::Result<()> {
    if pool.is_empty() || pool.contains(['?', '#', ' ']) {
        bail!("POOL {pool:?}: give a pool id, a subnet or a network id");
    }
    let path = format!("/pools/{}", pool.replace('/', "%2F"));
    let body = admin_call(&admin, Method::GET, &path).await?;
    let Some(p) = decode_answer::<PoolView>(&body, admin.json).context("decoding the answer")?
    else {
        return Ok(());
    };
    println!("Pool:       {}", p.id);
    println!("Subnet:     {}", p.subnet);
    println!("IP range:   {}", p.ip_range.as_deref().unwrap_or("-"));
    println!("Kind:       {}", if p.auto { "auto" } else { "explicit" });
    println!("Network:    {}", p.network_id.as_deref().unwrap_or("-"));
    println!("Space:      {}", p.address_space);
    println!("Allocated:  {}", p.allocated);
    println!("Free:       {}", p.free);
    println!("Hosts:      {}", p.hosts.join(", "));
    println!();
    let rows = p
        .addresses
        .iter()
        .map(|a| {
            vec![
                a.address.clone(),
                a.held_by.clone(),
                a.mac.clone().unwrap_or_else(|| "-".into()),
                a.host.clone(),
            ]
        })
        .collect::<Vec<_>>();
    print_table(&["ADDRESS", "HELD BY", "MAC", "HOST"], &rows);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example config in packaging/ lists every key with its default: uncommented, it
    /// must parse, so docs and code cannot drift apart.
    #[test]
    fn packaged_example_config_parses() {
        let example = include_str!("../../packaging/netplugin.toml");
        let uncommented = plugin_transport::cli::uncomment_example(example);
        assert!(uncommented.lines().count() >= 15, "{uncommented}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("netplugin.toml");
        std::fs::write(&path, &uncommented).unwrap();
        let merged: ServeArgs = plugin_transport::config::merge_with_file(
            &ServeArgs::default(),
            Some(&path),
            Path::new("/none"),
        )
        .unwrap();
        assert_eq!(merged.bridge.as_deref(), Some("br-berth"));
        assert_eq!(merged.metrics.as_deref(), Some("127.0.0.1:9473"));
        assert_eq!(merged.default_pool_size, Some(24));
        assert_eq!(
            parse_vlan_range(merged.vlan_range.as_deref().unwrap()).unwrap(),
            (2, 4094)
        );
    }

    #[test]
    fn vlan_range_flag() {
        assert_eq!(parse_vlan_range("100-199").unwrap(), (100, 199));
        assert!(parse_vlan_range("0-10").is_err());
        assert!(parse_vlan_range("10-5").is_err());
        assert!(parse_vlan_range("5").is_err());
    }
}
