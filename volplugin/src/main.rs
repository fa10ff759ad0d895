//! `volplugin serve` runs the daemon; every other subcommand is an admin command that talks to
//! it over the admin socket.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use http::Method;
use plugin_transport::cli::{admin_call, create_private_dir, decode_answer, print_table};
use plugin_transport::listen::{bind_tcp, bind_unix, plugin_listener};
use plugin_transport::logging::LogFormat;
use plugin_transport::metrics::Metrics;
use plugin_transport::server::Server;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use volplugin::backend::loopfile::LoopfileBackend;
use volplugin::backend::lvm::{LvmConfig, LvmThinBackend};
use volplugin::backend::Backend;
use volplugin::service::{VolumeInfo, VolumeService};
use volplugin::spec::{human_size, parse_size, Filesystem, SpecPolicy};
use volplugin::store::MetaStore;

const DEFAULT_CONFIG: &str = "/etc/berth/volplugin.toml";
const DEFAULT_ADMIN_SOCKET: &str = "/run/berth/volplugin.sock";
const PLUGIN_NAME: &str = "berth-vol";

#[derive(Parser, Debug)]
#[command(
    name = "volplugin",
    version,
    about = "Berth volume plugin for Docker: sized volumes on loop files or LVM thin LVs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the plugin daemon (Docker's VolumeDriver on <plugin-dir>/berth-vol.sock).
    Serve(Box<ServeArgs>),
    /// Inspect volumes through the running daemon.
    #[command(subcommand)]
    Volume(VolumeCommand),
}

#[derive(Subcommand, Debug)]
enum VolumeCommand {
    /// List volumes with size, usage, mounts and device.
    Ls(AdminArgs),
    /// Show one volume in full.
    Inspect {
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Change a volume's IO limits, live: running containers using it follow within a second.
    /// `0` or `max` removes a limit; limits not given stay as they are.
    SetLimits {
        name: String,
        /// Read bandwidth, bytes/s with K/M/G suffixes (binary).
        #[arg(long)]
        read_bps: Option<String>,
        /// Write bandwidth, bytes/s with K/M/G suffixes (binary).
        #[arg(long)]
        write_bps: Option<String>,
        /// Read operations per second.
        #[arg(long)]
        read_iops: Option<String>,
        /// Write operations per second.
        #[arg(long)]
        write_iops: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
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
    /// Config file (TOML; keys are these flag names). Default: /etc/berth/volplugin.toml if present.
    #[arg(long)]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Where volplugin keeps everything it persists. [default: /var/lib/berth/vol]
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Directory of Docker's plugin sockets. [default: /run/docker/plugins]
    #[arg(long)]
    plugin_dir: Option<PathBuf>,
    /// Admin socket (mode 0600). [default: /run/berth/volplugin.sock]
    #[arg(long)]
    admin_socket: Option<PathBuf>,
    /// Mode of the plugin socket, octal. [default: 0600]
    #[arg(long)]
    socket_mode: Option<String>,
    /// Prometheus endpoint address, or `off`. [default: 127.0.0.1:9474]
    #[arg(long)]
    metrics: Option<String>,
    /// text or json. [default: text]
    #[arg(long)]
    log_format: Option<LogFormat>,
    /// loopfile or lvm-thin. [default: loopfile]
    #[arg(long)]
    backend: Option<String>,
    /// LVM volume group (lvm-thin).
    #[arg(long)]
    vg: Option<String>,
    /// LVM thin pool in --vg (lvm-thin).
    #[arg(long)]
    thin_pool: Option<String>,
    /// lvm-thin: refuse new volumes while the pool's data is fuller than this. [default: 80]
    #[arg(long)]
    pool_data_max_percent: Option<f64>,
    /// lvm-thin: refuse new volumes while the pool's metadata is fuller than this. [default: 80]
    #[arg(long)]
    pool_metadata_max_percent: Option<f64>,
    /// lvm-thin: refuse new volumes that would make the thin LVs' total size pass this multiple
    /// of the pool's data size (e.g. 4). [default: no cap]
    #[arg(long)]
    max_overcommit: Option<f64>,
    /// Where volumes are mounted, one directory per volume. [default: <state-dir>/mounts]
    #[arg(long)]
    mount_root: Option<PathBuf>,
    /// Size of volumes created without -o size. [default: 10G]
    #[arg(long)]
    default_size: Option<String>,
    /// Largest size -o size may ask for. [default: 8T]
    #[arg(long)]
    max_size: Option<String>,
    /// Filesystem of volumes created without -o fs: xfs or ext4. [default: xfs]
    #[arg(long)]
    default_fs: Option<String>,
    /// Docker's API socket, watched in the background to apply IO limits to the containers
    /// that mount a volume. [default: /var/run/docker.sock]
    #[arg(long)]
    docker_socket: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    plugin_transport::shutdown::unblock_stop_signals();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match cli.command {
        Command::Serve(args) => runtime.block_on(serve(*args)),
        Command::Volume(VolumeCommand::Ls(admin)) => runtime.block_on(volume_ls(admin)),
        Command::Volume(VolumeCommand::Inspect { name, admin }) => {
            runtime.block_on(volume_inspect(&name, admin))
        }
        Command::Volume(VolumeCommand::SetLimits {
            name,
            read_bps,
            write_bps,
            read_iops,
            write_iops,
            admin,
        }) => {
            let limits = [
                ("read_bps", read_bps),
                ("write_bps", write_bps),
                ("read_iops", read_iops),
                ("write_iops", write_iops),
            ];
            runtime.block_on(volume_set_limits(&name, &limits, admin))
        }
    }
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
        .unwrap_or_else(|| PathBuf::from("/var/lib/berth/vol"));
    let plugin_dir = args
        .plugin_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("/run/docker/plugins"));
    let admin_socket = args
        .admin_socket
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ADMIN_SOCKET));
    let mount_root = args
        .mount_root
        .clone()
        .unwrap_or_else(|| state_dir.join("mounts"));
    let socket_mode = match &args.socket_mode {
        Some(mode) => u32::from_str_radix(mode.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .with_context(|| format!("--socket-mode {mode:?} is not an octal mode like 0600"))?,
        None => 0o600,
    };
    let size_flag = |flag: &str, value: &Option<String>, default: &str| -> anyhow::Result<u64> {
        let text = value.as_deref().unwrap_or(default);
        parse_size(text).map_err(|e| anyhow::anyhow!("--{flag}: {e}"))
    };
    let policy = SpecPolicy {
        default_size: size_flag("default-size", &args.default_size, "10G")?,
        max_size: size_flag("max-size", &args.max_size, "8T")?,
        default_fs: args
            .default_fs
            .as_deref()
            .unwrap_or("xfs")
            .parse::<Filesystem>()
            .map_err(|e| anyhow::anyhow!("--default-fs: {e}"))?,
    };
    if policy.default_size > policy.max_size {
        bail!(
            "--default-size {} is over --max-size {}",
            human_size(policy.default_size),
            human_size(policy.max_size)
        );
    }

    create_private_dir(&state_dir)
        .with_context(|| format!("creating --state-dir {}", state_dir.display()))?;
    std::fs::create_dir_all(&mount_root)
        .with_context(|| format!("creating --mount-root {}", mount_root.display()))?;
    if mount_root.starts_with("/var/lib/docker") {
        bail!("--mount-root must not be under /var/lib/docker (Docker owns that tree)");
    }
    let mount_root = mount_root
        .canonicalize()
        .with_context(|| format!("resolving {}", mount_root.display()))?;

    let backend: Arc<dyn Backend> = match args.backend.as_deref().unwrap_or("loopfile") {
        "loopfile" => {
            Arc::new(LoopfileBackend::new(state_dir.join("images")).context("loopfile backend")?)
        }
        "lvm-thin" => {
            let (Some(vg), Some(pool)) = (args.vg.as_deref(), args.thin_pool.as_deref()) else {
                bail!("--backend lvm-thin needs --vg VG and --thin-pool POOL (a pool made with lvcreate --type thin-pool)");
            };
            let mut cfg = LvmConfig::new(vg, pool, state_dir.join("scratch"));
            cfg.data_max_percent = args.pool_data_max_percent.unwrap_or(cfg.data_max_percent);
            cfg.metadata_max_percent = args
                .pool_metadata_max_percent
                .unwrap_or(cfg.metadata_max_percent);
            cfg.max_overcommit = args.max_overcommit;
            let backend = LvmThinBackend::new(cfg).context("--backend lvm-thin")?;
            backend.check_pool().context("--backend lvm-thin")?;
            Arc::new(backend)
        }
        other => bail!("--backend {other:?} is not one of: loopfile, lvm-thin"),
    };
    let store = MetaStore::open(&state_dir.join("meta.redb"))
        .context("opening the metadata store (is another volplugin using this --state-dir?)")?;
    let svc = Arc::new(VolumeService::new(store, backend, policy, mount_root));

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

    let metrics = Metrics::new("berth_vol");
    volplugin::metrics::register(&metrics, svc.clone());
    let (_signal_tx, shutdown) =
        plugin_transport::shutdown::on_signals().context("installing signal handlers")?;

    let plugin_path = plugin_dir.join(format!("{PLUGIN_NAME}.sock"));
    let (plugin_listener, _plugin_file) =
        plugin_listener(&plugin_path, socket_mode).context("plugin socket")?;
    let (admin_listener, _admin_file) = bind_unix(&admin_socket, 0o600).context("admin socket")?;

    let mut tasks = tokio::task::JoinSet::new();
    let plugin = Server::new("plugin", volplugin::handlers::plugin_router(svc.clone()))
        .with_metrics(metrics.requests.clone());
    tasks.spawn(plugin.serve(plugin_listener, shutdown.clone()));
    let (limits_tx, limits_rx) = tokio::sync::mpsc::unbounded_channel();
    let docker_socket = args
        .docker_socket
        .clone()
        .unwrap_or_else(|| PathBuf::from("/var/run/docker.sock"));
    let throttler = volplugin::throttle::Throttler::new(
        svc.clone(),
        plugin_transport::docker::DockerClient::new(&docker_socket),
        volplugin::cgroup::CgroupFs::default(),
    );
    tasks.spawn(throttler.run(limits_rx, shutdown.clone()));
    let admin = Server::new(
        "admin",
        volplugin::handlers::admin_router(svc.clone(), limits_tx),
    )
    .with_metrics(metrics.requests.clone());
    tasks.spawn(admin.serve(admin_listener, shutdown.clone()));
    match args.metrics.as_deref().unwrap_or("127.0.0.1:9474") {
        "off" => {}
        addr => {
            let listener = bind_tcp(addr)
                .await
                .with_context(|| format!("--metrics {addr}"))?;
            tasks.spawn(Server::new("metrics", metrics.router()).serve(listener, shutdown.clone()));
        }
    }
    info!(socket = %plugin_path.display(), admin = %admin_socket.display(), backend = svc.backend_kind(), "volplugin serving");
    while tasks.join_next().await.is_some() {}
    info!("volplugin stopped");
    Ok(())
}

async fn volume_set_limits(
    name: &str,
    limits: &[(&str, Option<String>)],
    admin: AdminArgs,
) -> anyhow::Result<()> {
    volplugin::spec::validate_name(name)?;
    let change: serde_json::Map<String, serde_json::Value> = limits
        .iter()
        .filter_map(|(key, value)| {
            value
                .as_ref()
                .map(|v| (key.to_string(), serde_json::Value::String(v.clone())))
        })
        .collect();
    if change.is_empty() {
        bail!("nothing to change: give at least one of --read-bps, --write-bps, --read-iops, --write-iops");
    }
    let body = admin_call(
        &admin.admin_socket,
        Method::POST,
        &format!("/volumes/{name}/limits"),
        Some(serde_json::to_vec(&change)?),
    )
    .await?;
    if let Some(info) =
        decode_answer::<VolumeInfo>(&body, admin.json).context("decoding the daemon's answer")?
    {
        println!("{}: limits now {}", info.name, info.limits.describe());
    }
    Ok(())
}

async fn admin_get(admin: &AdminArgs, path: &str) -> anyhow::Result<bytes::Bytes> {
    Ok(admin_call(&admin.admin_socket, Method::GET, path, None).await?)
}

async fn volume_ls(admin: AdminArgs) -> anyhow::Result<()> {
    let body = admin_get(&admin, "/volumes").await?;
    let Some(volumes) = decode_answer::<Vec<VolumeInfo>>(&body, admin.json)
        .context("decoding the daemon's answer")?
    else {
        return Ok(());
    };
    let rows: Vec<Vec<String>> = volumes
        .iter()
        .map(|v| {
            vec![
                v.name.clone(),
                human_size(v.size_bytes),
                v.fs.clone(),
                v.allocated_bytes
                    .map(human_size)
                    .unwrap_or_else(|| "-".into()),
                v.used_bytes.map(human_size).unwrap_or_else(|| "-".into()),
                v.mounts.to_string(),
                v.device.clone().unwrap_or_else(|| "-".into()),
                v.created_at.clone(),
            ]
        })
        .collect();
    print_table(
        &[
            "NAME",
            "SIZE",
            "FS",
            "ALLOCATED",
            "USED",
            "MOUNTS",
            "DEVICE",
            "CREATED",
        ],
        &rows,
    );
    Ok(())
}

async fn volume_inspect(name: &str, admin: AdminArgs) -> anyhow::Result<()> {
    volplugin::spec::validate_name(name)?;
    let body = admin_get(&admin, &format!("/volumes/{name}")).await?;
    let Some(info) =
        decode_answer::<VolumeInfo>(&body, admin.json).context("decoding the daemon's answer")?
    else {
        return Ok(());
    };
    let opt = |v: Option<u64>| {
        v.map(|b| format!("{} ({b} bytes)", human_size(b)))
            .unwrap_or_else(|| "-".into())
    };
    let rows = vec![
        vec!["Name".into(), info.name.clone()],
        vec!["State".into(), info.state.clone()],
        vec!["Backend".into(), info.backend.clone()],
        vec!["Filesystem".into(), info.fs.clone()],
        vec!["Size".into(), opt(Some(info.size_bytes))],
        vec!["Allocated".into(), opt(info.allocated_bytes)],
        vec!["Used".into(), opt(info.used_bytes)],
        vec!["Free".into(), opt(info.free_bytes)],
        vec!["Mounts".into(), info.mounts.to_string()],
        vec![
            "Device".into(),
            info.device.clone().unwrap_or_else(|| "-".into()),
        ],
        vec!["Mountpoint".into(), info.mountpoint.clone()],
        vec!["Created".into(), info.created_at.clone()],
    ];
    for row in rows {
        println!("{:<12} {}", format!("{}:", row[0]), row[1]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example config in packaging/ lists every key with its default: uncommented, it
    /// must parse, so docs and code cannot drift apart.
    #[test]
    fn packaged_example_config_parses() {
        let example = include_str!("../../packaging/volplugin.toml");
        let uncommented = plugin_transport::cli::uncomment_example(example);
        assert!(uncommented.lines().count() >= 10, "{uncommented}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("volplugin.toml");
        std::fs::write(&path, &uncommented).unwrap();
        let merged: ServeArgs = plugin_transport::config::merge_with_file(
            &ServeArgs::default(),
            Some(&path),
            Path::new("/none"),
        )
        .unwrap();
        assert_eq!(merged.default_size.as_deref(), Some("10G"));
        assert_eq!(merged.metrics.as_deref(), Some("127.0.0.1:9474"));
        assert_eq!(merged.log_format, Some(LogFormat::Text));
    }
}
