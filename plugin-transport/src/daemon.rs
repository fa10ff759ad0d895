//! The skeleton both daemons share: the flags common to their `serve` and to their admin
//! commands, the start-up of the plugin, admin and metrics listeners (the plugin socket from
//! systemd when socket-activated), the task set, and the shutdown on SIGTERM/SIGINT.
//!
//! A daemon names itself with [`Daemon`], flattens [`CommonServeArgs`] into its own serve flags,
//! builds its service, then hands the routers to [`Skeleton::start`] and adds its background
//! tasks with [`Skeleton::spawn`].

use std::future::Future;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use clap::Args;
use http::Method;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::warn;

use crate::client::ClientError;
use crate::config::{merge_with_file, ConfigError};
use crate::generate::{Generate, SUBCOMMAND};
use crate::listen::{bind_tcp, bind_unix, plugin_listener, ListenError, SocketFile};
use crate::logging::LogFormat;
use crate::metrics::Metrics;
use crate::router::Router;
use crate::server::{ConnLimits, Server};

/// Where Docker looks for plugin sockets.
pub const DEFAULT_PLUGIN_DIR: &str = "/run/docker/plugins";
/// The plugin socket's mode without `--socket-mode`: root only, like Docker's own.
pub const DEFAULT_SOCKET_MODE: u32 = 0o600;
/// Docker's API socket, which the daemons ask only in the background (never on a request
/// path: dockerd may be waiting on the plugin).
pub const DEFAULT_DOCKER_SOCKET: &str = "/var/run/docker.sock";
/// The admin socket is root only, always.
const ADMIN_SOCKET_MODE: u32 = 0o600;

/// What tells one daemon from the other to the skeleton: its names and defaults.
pub trait Daemon: Send + Sync + 'static {
    /// Docker's name for the plugin; its socket is `<plugin-dir>/<PLUGIN>.sock`.
    const PLUGIN: &'static str;
    const CONFIG_FILE: &'static str;
    const STATE_DIR: &'static str;
    /// What the state dir is for, as `--state-dir`'s help says it (before the default).
    const STATE_DIR_HELP: &'static str;
    const ADMIN_SOCKET: &'static str;
    const METRICS_ADDR: &'static str;
    /// Prefix of every metric's name.
    const METRICS_PREFIX: &'static str;
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("--socket-mode {0:?} is not an octal mode like 0600")]
    SocketMode(String),
    #[error("writing man pages or completions")]
    Generate(#[source] std::io::Error),
    #[error("starting the async runtime")]
    Runtime(#[source] std::io::Error),
    #[error("installing signal handlers")]
    Signals(#[source] std::io::Error),
    #[error("plugin socket")]
    PluginSocket(#[source] ListenError),
    #[error("admin socket")]
    AdminSocket(#[source] ListenError),
    #[error("--metrics {0}: not a loopback address; any host that reaches it could scrape the daemon. Give --metrics-allow-remote to serve it anyway")]
    MetricsRemote(String),
    #[error("--metrics {0}: {1} (expected IP:PORT, e.g. 127.0.0.1:9473, or off)")]
    MetricsAddr(String, String),
    #[error("--metrics {addr}")]
    Metrics {
        addr: String,
        #[source]
        source: ListenError,
    },
}

/// A binary's `main`: parses the command line into `C` and runs `run` on it in a tokio
/// runtime. Stop signals are unblocked first, before any thread exists (see
/// [`crate::shutdown::unblock_stop_signals`]). The hidden `generate` subcommand (man pages
/// and completions of `C`, [`crate::generate`]) is handled here, without a runtime.
pub fn main<C, F, Fut, E>(run: F) -> Result<(), E>
where
    C: clap::Parser,
    F: FnOnce(C) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: From<DaemonError>,
{
    // Before anything that could start a thread or a child process (see take_activation).
    crate::listen::take_activation();
    raise_fd_limit();
    crate::shutdown::unblock_stop_signals();
    let mut cli = C::command().subcommand(Generate::command());
    let matches = cli.get_matches_mut();
    if let Some((SUBCOMMAND, sub)) = matches.subcommand() {
        let generate = Generate::from_matches(sub).unwrap_or_else(|e| e.format(&mut cli).exit());
        return generate
            .run(C::command())
            .map_err(|e| DaemonError::Generate(e).into());
    }
    let command = C::from_arg_matches(&matches).unwrap_or_else(|e| e.format(&mut cli).exit());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(DaemonError::Runtime)?;
    runtime.block_on(run(command))
}

/// Raises the soft limit on open files to the hard one (at most 65,536): the listeners' caps
/// (`ConnLimits`) add up to over a thousand connections, above a 1,024 default, and a cap
/// only protects the plugin socket if the process can still open descriptors below it.
fn raise_fd_limit() {
    // SAFETY: `rlimit` is a plain C struct of integers; all-zero is a valid value.
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: `limit` is a live, exclusively borrowed `rlimit` for the kernel to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    let wanted = limit.rlim_max.min(65_536);
    if limit.rlim_cur < wanted {
        limit.rlim_cur = wanted;
        // SAFETY: `limit` is a live `rlimit` the kernel only reads. Failure leaves the limit
        // as it was, which is only less headroom.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    }
}

/// Parses `flags` into a flattened `Args` struct on its own, as `serve` would: for tests of a
/// daemon's settings.
pub fn parse_flags<T: clap::Args + clap::FromArgMatches>(flags: &[&str]) -> Result<T, clap::Error> {
    let command = T::augment_args(clap::Command::new("serve"));
    let matches =
        command.try_get_matches_from(std::iter::once("serve").chain(flags.iter().copied()))?;
    T::from_arg_matches(&matches)
}

/// The flags every daemon's `serve` takes, flattened into its own (clap and serde alike), so
/// each is also a key of the config file. Unset flags are `None`: the file fills them in.
#[derive(Args, Debug, Serialize, Deserialize)]
#[serde(bound = "", rename_all = "kebab-case")]
pub struct CommonServeArgs<D: Daemon> {
    #[arg(long, help = format!(
        "Config file (TOML; keys are these flag names). Default: {} if present", D::CONFIG_FILE
    ))]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    #[arg(long, help = format!("{} [default: {}]", D::STATE_DIR_HELP, D::STATE_DIR))]
    pub state_dir: Option<PathBuf>,
    /// Directory of Docker's plugin sockets. [default: /run/docker/plugins]
    #[arg(long)]
    pub plugin_dir: Option<PathBuf>,
    #[arg(long, help = format!("Admin socket (mode 0600). [default: {}]", D::ADMIN_SOCKET))]
    pub admin_socket: Option<PathBuf>,
    /// Mode of the plugin socket, octal. [default: 0600]
    #[arg(long)]
    pub socket_mode: Option<String>,
    #[arg(long, help = format!(
        "Prometheus endpoint address, or `off`. [default: {}]", D::METRICS_ADDR
    ))]
    pub metrics: Option<String>,
    /// Allow `--metrics` on an address other than loopback (any host that reaches it can
    /// scrape, and the daemon logs a warning at start). [default: false]
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub metrics_allow_remote: Option<bool>,
    /// text or json. [default: text]
    #[arg(long)]
    pub log_format: Option<LogFormat>,
    #[arg(skip)]
    #[serde(skip)]
    daemon: PhantomData<D>,
}

impl<D: Daemon> Default for CommonServeArgs<D> {
    fn default() -> Self {
        Self {
            config: None,
            state_dir: None,
            plugin_dir: None,
            admin_socket: None,
            socket_mode: None,
            metrics: None,
            metrics_allow_remote: None,
            log_format: None,
            daemon: PhantomData,
        }
    }
}

impl<D: Daemon> CommonServeArgs<D> {
    /// The daemon's whole serve flags `cli` (which flatten these) merged over the config file:
    /// `--config`, or the daemon's default file if present.
    pub fn merge_file<T: Serialize + DeserializeOwned>(&self, cli: &T) -> Result<T, ConfigError> {
        merge_with_file(
            cli,
            self.config.as_deref(),
            std::path::Path::new(D::CONFIG_FILE),
        )
    }

    pub fn log_format(&self) -> LogFormat {
        self.log_format.unwrap_or_default()
    }

    /// The common settings, defaults filled in and checked.
    pub fn settings(&self) -> Result<Settings, DaemonError> {
        let path = |flag: &Option<PathBuf>, default: &str| {
            flag.clone().unwrap_or_else(|| PathBuf::from(default))
        };
        let socket_mode = match &self.socket_mode {
            Some(mode) => parse_mode(mode).ok_or_else(|| DaemonError::SocketMode(mode.clone()))?,
            None => DEFAULT_SOCKET_MODE,
        };
        Ok(Settings {
            state_dir: path(&self.state_dir, D::STATE_DIR),
            plugin_dir: path(&self.plugin_dir, DEFAULT_PLUGIN_DIR),
            admin_socket: path(&self.admin_socket, D::ADMIN_SOCKET),
            socket_mode,
            metrics: match self.metrics.as_deref().unwrap_or(D::METRICS_ADDR) {
                "off" => None,
                addr => {
                    let remote = !is_loopback(addr)?;
                    if remote && !self.metrics_allow_remote.unwrap_or(false) {
                        return Err(DaemonError::MetricsRemote(addr.to_string()));
                    }
                    Some(addr.to_string())
                }
            },
            plugin: D::PLUGIN,
        })
    }
}

/// Whether every address `addr` (`IP:PORT` or `NAME:PORT`) resolves to is a loopback one.
fn is_loopback(addr: &str) -> Result<bool, DaemonError> {
    use std::net::ToSocketAddrs;
    let resolved: Vec<_> = addr
        .to_socket_addrs()
        .map_err(|e| DaemonError::MetricsAddr(addr.to_string(), e.to_string()))?
        .collect();
    if resolved.is_empty() {
        return Err(DaemonError::MetricsAddr(
            addr.to_string(),
            "resolves to no address".into(),
        ));
    }
    Ok(resolved.iter().all(|a| a.ip().is_loopback()))
}

/// `0600`, `600` or `0o600`; nothing above 0777.
fn parse_mode(mode: &str) -> Option<u32> {
    u32::from_str_radix(mode.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
}

/// The common serve settings, checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub state_dir: PathBuf,
    pub plugin_dir: PathBuf,
    pub admin_socket: PathBuf,
    /// Mode of the plugin socket when we bind it (systemd's socket unit sets its own).
    pub socket_mode: u32,
    /// The metrics server's address; `None` for `--metrics off`.
    pub metrics: Option<String>,
    plugin: &'static str,
}

impl Settings {
    /// `<plugin-dir>/<plugin>.sock`, where Docker finds the plugin.
    pub fn plugin_socket(&self) -> PathBuf {
        self.plugin_dir.join(format!("{}.sock", self.plugin))
    }
}

/// The flags of every admin command: where the daemon is, and JSON or text out.
#[derive(Args, Debug)]
pub struct AdminArgs<D: Daemon> {
    /// The daemon's admin socket.
    #[arg(long, default_value = D::ADMIN_SOCKET)]
    pub admin_socket: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[arg(skip)]
    daemon: PhantomData<D>,
}

impl<D: Daemon> AdminArgs<D> {
    /// One request to the daemon; a non-200 answer is an error with the daemon's message.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, ClientError> {
        crate::cli::admin_call(&self.admin_socket, method, path, body).await
    }

    /// The answer as `T`, or `None` once printed as JSON under `--json`.
    pub fn decode<T: DeserializeOwned + Serialize>(
        &self,
        body: &[u8],
    ) -> serde_json::Result<Option<T>> {
        crate::cli::decode_answer(body, self.json)
    }
}

/// A running daemon: its servers and background tasks, until SIGTERM or SIGINT.
pub struct Skeleton {
    tasks: JoinSet<()>,
    shutdown: watch::Receiver<bool>,
    /// Kept so the shutdown flag has a sender for as long as the daemon runs.
    _signals: watch::Sender<bool>,
    /// Our socket files, removed on a clean exit.
    _sockets: Vec<SocketFile>,
}

impl Skeleton {
    /// Installs the signal handlers, opens the plugin socket (systemd's when activated) and the
    /// admin socket, and serves them and the metrics endpoint. Call it once the service is
    /// ready: Docker may call the moment the plugin socket exists.
    pub async fn start(
        settings: &Settings,
        metrics: &Arc<Metrics>,
        plugin: Router,
        admin: Router,
    ) -> Result<Self, DaemonError> {
        let (signals, shutdown) = crate::shutdown::on_signals().map_err(DaemonError::Signals)?;
        let (plugin_listener, plugin_file) =
            plugin_listener(&settings.plugin_socket(), settings.socket_mode)
                .map_err(DaemonError::PluginSocket)?;
        let (admin_listener, admin_file) = bind_unix(&settings.admin_socket, ADMIN_SOCKET_MODE)
            .map_err(DaemonError::AdminSocket)?;
        let mut tasks = JoinSet::new();
        let plugin = Server::new("plugin", plugin)
            .with_metrics(metrics.requests.clone())
            .with_limits(ConnLimits::PLUGIN);
        tasks.spawn(plugin.serve(plugin_listener, shutdown.clone()));
        let admin = Server::new("admin", admin)
            .with_metrics(metrics.requests.clone())
            .with_limits(ConnLimits::ADMIN);
        tasks.spawn(admin.serve(admin_listener, shutdown.clone()));
        if let Some(addr) = &settings.metrics {
            if !is_loopback(addr)? {
                warn!(addr = %addr, "metrics served beyond loopback (--metrics-allow-remote)");
            }
            let listener = bind_tcp(addr)
                .await
                .map_err(|source| DaemonError::Metrics {
                    addr: addr.clone(),
                    source,
                })?;
            // GET /metrics has no body: any byte of one is refused (413) at once.
            let server = Server::new("metrics", metrics.router())
                .with_metrics(metrics.requests.clone())
                .with_limits(ConnLimits::METRICS)
                .with_body_limit(0);
            tasks.spawn(server.serve(listener, shutdown.clone()));
        }
        Ok(Self {
            tasks,
            shutdown,
            _signals: signals,
            _sockets: plugin_file.into_iter().chain([admin_file]).collect(),
        })
    }

    /// The flag background tasks watch; it turns true on SIGTERM or SIGINT.
    pub fn shutdown(&self) -> watch::Receiver<bool> {
        self.shutdown.clone()
    }

    /// A background task; it must return once the shutdown flag turns true.
    pub fn spawn(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(task);
    }

    /// Runs until every server and task has finished after a stop signal.
    pub async fn run(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Test;
    impl Daemon for Test {
        const PLUGIN: &'static str = "berth-test";
        const CONFIG_FILE: &'static str = "/nonexistent/testd.toml";
        const STATE_DIR: &'static str = "/var/lib/berth/test";
        const STATE_DIR_HELP: &'static str = "Where testd keeps things.";
        const ADMIN_SOCKET: &'static str = "/run/berth/testd.sock";
        const METRICS_ADDR: &'static str = "127.0.0.1:9479";
        const METRICS_PREFIX: &'static str = "berth_test";
    }

    #[derive(Args, Debug, Serialize, Deserialize)]
    #[serde(rename_all = "kebab-case")]
    struct Serve {
        #[command(flatten)]
        #[serde(flatten)]
        common: CommonServeArgs<Test>,
        #[arg(long)]
        colour: Option<String>,
    }

    #[test]
    fn defaults_come_from_the_daemon() {
        let serve: Serve = parse_flags(&[]).unwrap();
        let s = serve.common.settings().unwrap();
        assert_eq!(s.state_dir, PathBuf::from("/var/lib/berth/test"));
        assert_eq!(
            s.plugin_socket(),
            PathBuf::from("/run/docker/plugins/berth-test.sock")
        );
        assert_eq!(s.admin_socket, PathBuf::from("/run/berth/testd.sock"));
        assert_eq!(s.socket_mode, 0o600);
        assert_eq!(s.metrics.as_deref(), Some("127.0.0.1:9479"));
        assert_eq!(serve.common.log_format(), LogFormat::Text);
    }

    #[test]
    fn flags_and_file_merge_into_the_common_part() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("testd.toml");
        std::fs::write(
            &file,
            "metrics = \"off\"\nplugin-dir = \"/p\"\ncolour = \"red\"\n",
        )
        .unwrap();
        let cli: Serve = parse_flags(&[
            "--config",
            file.to_str().unwrap(),
            "--plugin-dir",
            "/flag",
            "--socket-mode",
            "0660",
        ])
        .unwrap();
        let merged = cli.common.merge_file(&cli).unwrap();
        let s = merged.common.settings().unwrap();
        assert_eq!(s.metrics, None);
        assert_eq!(s.plugin_dir, PathBuf::from("/flag"));
        assert_eq!(s.socket_mode, 0o660);
        assert_eq!(merged.colour.as_deref(), Some("red"));
    }

    #[test]
    fn socket_mode_is_octal_up_to_0777() {
        assert_eq!(parse_mode("0o755"), Some(0o755));
        assert_eq!(parse_mode("600"), Some(0o600));
        assert_eq!(parse_mode("999"), None);
        assert_eq!(parse_mode("1000"), None);
        let args = CommonServeArgs::<Test> {
            socket_mode: Some("8".into()),
            ..Default::default()
        };
        assert_eq!(
            args.settings().unwrap_err().to_string(),
            "--socket-mode \"8\" is not an octal mode like 0600"
        );
    }

    #[test]
    fn help_names_the_daemons_defaults() {
        let help = Serve::augment_args(clap::Command::new("testd"))
            .render_help()
            .to_string();
        assert!(
            help.contains("Where testd keeps things. [default: /var/lib/berth/test]"),
            "{help}"
        );
        assert!(
            help.contains("Default: /nonexistent/testd.toml if present"),
            "{help}"
        );
        let admin: AdminArgs<Test> = parse_flags(&["--json"]).unwrap();
        assert_eq!(admin.admin_socket, PathBuf::from("/run/berth/testd.sock"));
        assert!(admin.json);
    }

    #[tokio::test]
    async fn serves_until_shutdown_and_removes_its_sockets() {
        let dir = tempfile::tempdir().unwrap();
        let common = CommonServeArgs::<Test> {
            plugin_dir: Some(dir.path().join("plugins")),
            admin_socket: Some(dir.path().join("admin.sock")),
            metrics: Some("off".into()),
            ..Default::default()
        };
        let settings = common.settings().unwrap();
        let metrics = Metrics::new(Test::METRICS_PREFIX);
        let mut daemon = Skeleton::start(&settings, &metrics, Router::new(), Router::new())
            .await
            .unwrap();
        assert!(settings.plugin_socket().exists());
        assert!(settings.admin_socket.exists());
        let mut stop = daemon.shutdown();
        daemon.spawn(async move {
            let _ = stop.wait_for(|s| *s).await;
        });
        daemon._signals.send(true).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(10), daemon.run())
            .await
            .unwrap();
        assert!(!settings.plugin_socket().exists());
        assert!(!settings.admin_socket.exists());
    }
}
