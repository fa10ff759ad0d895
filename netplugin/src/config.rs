//! `netplugin serve`'s settings: the flags (each also a key of the config file), their
//! defaults, and [`Config`], what they mean once checked.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use plugin_transport::daemon::{self, Daemon, Settings};
use serde::{Deserialize, Serialize};

use netplugin::dataplane::ovs::{resolve_datapath, OvsConfig};
use netplugin::ipam::IpamConfig;
use netplugin::ipnet::Ipv4Net;
use netplugin::network::NetConfig;
use netplugin::store::etcd::{EtcdConfig, DEFAULT_PREFIX as DEFAULT_ETCD_PREFIX};

pub const DEFAULT_STORE: &str = "embedded";
/// Seconds.
pub const DEFAULT_ETCD_TIMEOUT: f64 = 3.0;
pub const DEFAULT_BRIDGE: &str = "br-berth";
pub const DEFAULT_DATAPATH: &str = "auto";
pub const DEFAULT_OVS_RUNDIR: &str = "/var/run/openvswitch";
pub const DEFAULT_VLAN_RANGE: &str = "2-4094";
pub const DEFAULT_POOLS: &str = "10.224.0.0/12";
pub const DEFAULT_POOL_SIZE: u8 = 24;
pub const DEFAULT_MTU: u32 = 1500;
/// Seconds.
pub const DEFAULT_RECONCILE_INTERVAL: f64 = 2.0;
/// Seconds.
pub const DEFAULT_DOCKER_SYNC_INTERVAL: f64 = 5.0;
pub const DEFAULT_RELEASE_LEAKED_AFTER: &str = "2m";
pub const DEFAULT_LEASE_TTL: &str = "10s";
/// Bound of each OVSDB and OpenFlow call.
const OVS_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// netplugin's names and defaults, for the shared daemon skeleton.
#[derive(Debug)]
pub struct Net;

impl Daemon for Net {
    const PLUGIN: &'static str = "berth-net";
    const CONFIG_FILE: &'static str = "/etc/berth/netplugin.toml";
    const STATE_DIR: &'static str = "/var/lib/berth/net";
    const STATE_DIR_HELP: &'static str = "Where netplugin keeps its embedded store.";
    const ADMIN_SOCKET: &'static str = "/run/berth/netplugin.sock";
    const METRICS_ADDR: &'static str = "127.0.0.1:9473";
    const METRICS_PREFIX: &'static str = "berth_net";
}

pub type AdminArgs = daemon::AdminArgs<Net>;

/// The etcd flags, of `serve --store etcd` and of `store migrate`.
#[derive(Args, Debug, Default, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct EtcdArgs {
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
    pub fn config(&self) -> anyhow::Result<EtcdConfig> {
        let endpoints = self
            .etcd_endpoints
            .as_deref()
            .context("--etcd-endpoints is required with etcd")?;
        let mut c = EtcdConfig::new(
            endpoints,
            self.etcd_prefix.as_deref().unwrap_or(DEFAULT_ETCD_PREFIX),
        )
        .map_err(anyhow::Error::msg)?;
        c.cacert = self.etcd_cacert.clone();
        c.cert = self.etcd_cert.clone();
        c.key = self.etcd_key.clone();
        let t = self.etcd_timeout.unwrap_or(DEFAULT_ETCD_TIMEOUT);
        if !(0.1..=60.0).contains(&t) {
            bail!("--etcd-timeout {t}: must be 0.1-60 seconds");
        }
        c.timeout = Duration::from_secs_f64(t);
        Ok(c)
    }
}

/// Every setting is a flag and a key of the config file (same name, e.g. `state-dir`).
#[derive(Args, Debug, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub struct ServeArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub common: daemon::CommonServeArgs<Net>,
    /// embedded or etcd. [default: embedded]
    #[arg(long)]
    store: Option<String>,
    #[command(flatten)]
    #[serde(flatten)]
    etcd: EtcdArgs,
    /// Release the addresses of a host whose lease has been gone this long (e.g. 10m, 1h);
    /// off by default: a host cut off from etcd keeps its addresses until `pool reclaim`.
    #[arg(long)]
    reclaim_after: Option<String>,
    /// TTL of this host's lease in the store (e.g. 10s, 1m), renewed every third of it: how
    /// long after it last reached etcd a host counts as gone. --reclaim-after must be at least
    /// twice it. [default: 10s]
    #[arg(long)]
    lease_ttl: Option<String>,
    /// Fleet mode: stop this host's endpoints' traffic (OVS drop flows, nothing deleted) once
    /// its lease has not been renewed for this long (e.g. 6s), until the lease is back and
    /// each address is checked. At least half of --lease-ttl and shorter than it, so the host
    /// is fenced before its lease can expire and long before --reclaim-after. [default: off]
    #[arg(long)]
    fence_after: Option<String>,
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

/// Where the state lives.
#[derive(Debug, Clone)]
pub enum StoreChoice {
    /// redb, in `<state-dir>/state.redb`.
    Embedded,
    Etcd(EtcdConfig),
}

/// The serve settings, checked; nothing is created or opened yet.
#[derive(Debug, Clone)]
pub struct Config {
    pub daemon: Settings,
    pub host_id: String,
    pub store: StoreChoice,
    pub ovs: OvsConfig,
    pub ipam: IpamConfig,
    pub net: NetConfig,
    pub reclaim_after: Option<Duration>,
    pub lease_ttl: Duration,
    pub fence_after: Option<Duration>,
    pub release_leaked_after: Option<Duration>,
    pub docker_socket: PathBuf,
    pub docker_sync_interval: Duration,
    pub reconcile_interval: Duration,
}

impl Config {
    pub fn from_args(args: &ServeArgs) -> anyhow::Result<Config> {
        let daemon = args.common.settings()?;
        let host_id = args.host_id.clone().unwrap_or_else(hostname);
        check_host_id(&host_id)?;
        let bridge = args.bridge.clone().unwrap_or_else(|| DEFAULT_BRIDGE.into());
        if bridge.is_empty() || bridge.len() > 15 {
            bail!("--bridge {bridge:?}: an interface name of 1-15 bytes");
        }
        let datapath = resolve_datapath(args.datapath.as_deref().unwrap_or(DEFAULT_DATAPATH))
            .map_err(anyhow::Error::msg)?;
        let vlan_range =
            parse_vlan_range(args.vlan_range.as_deref().unwrap_or(DEFAULT_VLAN_RANGE))?;
        let default_pools: Vec<Ipv4Net> = args
            .default_pools
            .as_deref()
            .unwrap_or(DEFAULT_POOLS)
            .split(',')
            .map(|p| {
                p.trim()
                    .parse::<Ipv4Net>()
                    .map_err(|e| anyhow::anyhow!("--default-pools: {e}"))
            })
            .collect::<anyhow::Result<_>>()?;
        let default_prefix = args.default_pool_size.unwrap_or(DEFAULT_POOL_SIZE);
        if !(8..=30).contains(&default_prefix)
            || default_pools.iter().any(|p| p.prefix() > default_prefix)
        {
            bail!("--default-pool-size /{default_prefix}: must be 8-30 and not larger than every --default-pools range");
        }
        let default_mtu = args.default_mtu.unwrap_or(DEFAULT_MTU);
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
        let lease_ttl = parse_duration(
            "--lease-ttl",
            args.lease_ttl.as_deref().unwrap_or(DEFAULT_LEASE_TTL),
            3.0,
            "it is renewed every third of it, and etcd's shortest is a few seconds",
        )?;
        if lease_ttl > Duration::from_secs(3600) {
            bail!(
                "--lease-ttl {:?}: at most 1h",
                args.lease_ttl.as_deref().unwrap_or_default()
            );
        }
        if let Some(after) = reclaim_after {
            // A host cut off from etcd must have had at least another TTL to notice it lost
            // its lease (and stop) before its addresses are handed out again.
            if after < lease_ttl * 2 {
                bail!(
                    "--reclaim-after {}s is shorter than twice --lease-ttl ({}s): a host cut off from etcd would lose its addresses while it may still be using them",
                    after.as_secs_f64(),
                    lease_ttl.as_secs_f64()
                );
            }
        }
        let fence_after = args
            .fence_after
            .as_deref()
            .filter(|s| *s != "off")
            .map(|s| parse_duration("--fence-after", s, 1.0, "renewals come every few seconds"))
            .transpose()?;
        if let Some(fence) = fence_after {
            // Renewals go every third of the TTL: a healthy host must never reach the fence;
            // and the fence must be up before the lease can expire in the store (before any
            // host can count this one as gone, and so before --reclaim-after, at least twice
            // the TTL, can start).
            if fence < lease_ttl / 2 || fence >= lease_ttl {
                bail!(
                    "--fence-after {}s: must be at least half of --lease-ttl and shorter than it ({}s): fencing must never hit a host that renews on time, and must happen before its lease can expire and its addresses be reclaimed",
                    fence.as_secs_f64(),
                    lease_ttl.as_secs_f64()
                );
            }
        }
        let release_leaked_after = match args
            .release_leaked_after
            .as_deref()
            .unwrap_or(DEFAULT_RELEASE_LEAKED_AFTER)
        {
            "off" => None,
            s => Some(parse_duration(
                "--release-leaked-after",
                s,
                1.0,
                "Docker must have had time to record a new endpoint",
            )?),
        };
        let docker_sync_interval = args
            .docker_sync_interval
            .unwrap_or(DEFAULT_DOCKER_SYNC_INTERVAL);
        if !(0.1..=3600.0).contains(&docker_sync_interval) {
            bail!("--docker-sync-interval {docker_sync_interval}: must be 0.1-3600 seconds");
        }
        let reconcile_interval = args
            .reconcile_interval
            .unwrap_or(DEFAULT_RECONCILE_INTERVAL);
        if !(0.1..=3600.0).contains(&reconcile_interval) {
            bail!("--reconcile-interval {reconcile_interval}: must be 0.1-3600 seconds");
        }
        let store = match args.store.as_deref().unwrap_or(DEFAULT_STORE) {
            "embedded" => StoreChoice::Embedded,
            "etcd" => StoreChoice::Etcd(args.etcd.config()?),
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
                .unwrap_or_else(|| PathBuf::from(DEFAULT_OVS_RUNDIR)),
            bridge,
            datapath,
            uplink: args.uplink.clone(),
            call_timeout: OVS_CALL_TIMEOUT,
        };
        Ok(Config {
            daemon,
            host_id,
            store,
            ovs,
            ipam: IpamConfig {
                default_pools,
                default_prefix,
            },
            net: NetConfig {
                vlan_range,
                default_mtu,
            },
            reclaim_after,
            lease_ttl,
            fence_after,
            release_leaked_after,
            docker_socket: args
                .docker_socket
                .clone()
                .unwrap_or_else(|| PathBuf::from(daemon::DEFAULT_DOCKER_SOCKET)),
            docker_sync_interval: Duration::from_secs_f64(docker_sync_interval),
            reconcile_interval: Duration::from_secs_f64(reconcile_interval),
        })
    }
}

pub fn check_host_id(host_id: &str) -> anyhow::Result<()> {
    if host_id.is_empty() || host_id.len() > 253 || host_id.contains('/') {
        bail!("--host-id {host_id:?}: 1-253 characters without '/'");
    }
    Ok(())
}

/// The embedded store's file in a state dir.
pub fn embedded_store(state_dir: &std::path::Path) -> PathBuf {
    state_dir.join("state.redb")
}

/// `--host-id`'s default.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

pub fn parse_vlan_range(s: &str) -> anyhow::Result<(u16, u16)> {
    let parsed = s.split_once('-').and_then(|(a, b)| {
        let a: u16 = a.trim().parse().ok()?;
        let b: u16 = b.trim().parse().ok()?;
        (1 <= a && a <= b && b <= 4094).then_some((a, b))
    });
    parsed.with_context(|| format!("--vlan-range {s:?}: must be FIRST-LAST within 1-4094"))
}

/// `90`, `30s`, `10m`, `2h`, `1d`, at least `min_secs`; `flag` names it in errors.
pub fn parse_duration(
    flag: &str,
    s: &str,
    min_secs: f64,
    why_min: &str,
) -> anyhow::Result<Duration> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use plugin_transport::daemon::parse_flags;

    fn config(flags: &[&str]) -> anyhow::Result<Config> {
        Config::from_args(&parse_flags(flags)?)
    }

    fn error(flags: &[&str]) -> String {
        match config(flags) {
            Ok(c) => panic!("{flags:?} accepted: {c:?}"),
            Err(e) => e.to_string(),
        }
    }

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
        let mut cli = ServeArgs::default();
        cli.common.config = Some(path);
        let merged = cli.common.merge_file(&cli).unwrap();
        assert_eq!(merged.bridge.as_deref(), Some("br-berth"));
        assert_eq!(merged.common.metrics.as_deref(), Some("127.0.0.1:9473"));
        assert_eq!(merged.default_pool_size, Some(24));
        assert_eq!(
            parse_vlan_range(merged.vlan_range.as_deref().unwrap()).unwrap(),
            (2, 4094)
        );
        let from_file = Config::from_args(&merged).unwrap();
        let defaults = config(&[]).unwrap();
        assert_eq!(from_file.daemon.state_dir, defaults.daemon.state_dir);
        assert_eq!(from_file.net.vlan_range, defaults.net.vlan_range);
        assert_eq!(from_file.ipam.default_pools, defaults.ipam.default_pools);
        assert_eq!(from_file.ovs.ovsdb, defaults.ovs.ovsdb);
        assert_eq!(from_file.reconcile_interval, defaults.reconcile_interval);
    }

    #[test]
    fn defaults() {
        let c = config(&[]).unwrap();
        assert_eq!(c.daemon.state_dir, PathBuf::from("/var/lib/berth/net"));
        assert_eq!(
            c.daemon.plugin_socket(),
            PathBuf::from("/run/docker/plugins/berth-net.sock")
        );
        assert_eq!(
            c.daemon.admin_socket,
            PathBuf::from("/run/berth/netplugin.sock")
        );
        assert_eq!(c.daemon.metrics.as_deref(), Some("127.0.0.1:9473"));
        assert!(matches!(c.store, StoreChoice::Embedded));
        assert_eq!(c.ovs.bridge, "br-berth");
        assert_eq!(c.ovs.ovsdb, "unix:/var/run/openvswitch/db.sock");
        assert_eq!(c.ovs.rundir, PathBuf::from("/var/run/openvswitch"));
        assert_eq!(c.net.vlan_range, (2, 4094));
        assert_eq!(c.net.default_mtu, 1500);
        assert_eq!(c.ipam.default_prefix, 24);
        assert_eq!(c.reclaim_after, None);
        assert_eq!(c.lease_ttl, Duration::from_secs(10));
        assert_eq!(c.release_leaked_after, Some(Duration::from_secs(120)));
        assert_eq!(c.reconcile_interval, Duration::from_secs(2));
        assert_eq!(c.docker_sync_interval, Duration::from_secs(5));
        assert!(!c.host_id.is_empty());
    }

    #[test]
    fn etcd_flags() {
        let c = config(&[
            "--store",
            "etcd",
            "--etcd-endpoints",
            "http://10.0.0.1:2379,http://10.0.0.2:2379",
            "--etcd-timeout",
            "1.5",
        ])
        .unwrap();
        let StoreChoice::Etcd(etcd) = c.store else {
            panic!("not etcd");
        };
        assert_eq!(etcd.endpoints.len(), 2);
        assert_eq!(etcd.prefix, "/berth/v1/");
        assert_eq!(etcd.timeout, Duration::from_millis(1500));
        assert_eq!(
            error(&["--store", "etcd"]),
            "--etcd-endpoints is required with etcd"
        );
        assert_eq!(
            error(&[
                "--store",
                "etcd",
                "--etcd-endpoints",
                "http://e:1",
                "--etcd-timeout",
                "100"
            ]),
            "--etcd-timeout 100: must be 0.1-60 seconds"
        );
    }

    #[test]
    fn bad_flags_are_named() {
        assert_eq!(
            error(&["--host-id", "a/b"]),
            "--host-id \"a/b\": 1-253 characters without '/'"
        );
        assert!(error(&["--bridge", "a-very-long-bridge"]).starts_with("--bridge "));
        assert!(error(&["--datapath", "dpdk"]).starts_with("--datapath \"dpdk\""));
        assert!(error(&["--default-pools", "10.0.0.0/33"]).starts_with("--default-pools: "));
        assert!(error(&[
            "--default-pool-size",
            "16",
            "--default-pools",
            "10.0.0.0/20"
        ])
        .starts_with("--default-pool-size /16"));
        assert_eq!(
            error(&["--default-mtu", "10"]),
            "--default-mtu 10: must be 68-9216"
        );
        assert!(error(&["--reclaim-after", "10s"]).contains("at least 30s"));
        assert!(error(&["--docker-sync-interval", "0"]).starts_with("--docker-sync-interval"));
        assert!(error(&["--reconcile-interval", "99999"]).starts_with("--reconcile-interval"));
        assert_eq!(
            error(&["--store", "zk"]),
            "--store \"zk\" is not one of: embedded, etcd"
        );
        assert!(error(&["--lease-ttl", "1s"]).contains("at least 3s"));
        assert!(error(&["--lease-ttl", "2h"]).contains("at most 1h"));
        assert!(
            error(&["--lease-ttl", "1m", "--reclaim-after", "90s"]).contains("twice --lease-ttl"),
            "reclaim before the lease had time to be missed"
        );
        let c = config(&["--lease-ttl", "20s", "--reclaim-after", "40s"]).unwrap();
        assert_eq!(c.lease_ttl, Duration::from_secs(20));
        let c = config(&["--release-leaked-after", "off", "--reclaim-after", "10m"]).unwrap();
        assert_eq!(c.release_leaked_after, None);
        assert_eq!(c.reclaim_after, Some(Duration::from_secs(600)));
    }

    /// `--fence-after`: at least half of the lease TTL (a host renewing on time is never
    /// fenced) and shorter than it (fenced before its lease can expire and be reclaimed).
    #[test]
    fn fence_after_flag() {
        assert_eq!(config(&[]).unwrap().fence_after, None);
        let c = config(&["--fence-after", "6s"]).unwrap();
        assert_eq!(c.fence_after, Some(Duration::from_secs(6)));
        assert!(error(&["--fence-after", "10s"]).contains("shorter than it"));
        assert!(error(&["--fence-after", "4s"]).contains("at least half of --lease-ttl"));
        let c = config(&["--lease-ttl", "30s", "--fence-after", "20s"]).unwrap();
        assert_eq!(c.fence_after, Some(Duration::from_secs(20)));
        assert_eq!(config(&["--fence-after", "off"]).unwrap().fence_after, None);
    }

    #[test]
    fn vlan_range_flag() {
        assert_eq!(parse_vlan_range("100-199").unwrap(), (100, 199));
        assert!(parse_vlan_range("0-10").is_err());
        assert!(parse_vlan_range("10-5").is_err());
        assert!(parse_vlan_range("5").is_err());
    }

    #[test]
    fn durations() {
        let d = |s: &str| parse_duration("--x", s, 1.0, "why");
        assert_eq!(d("90").unwrap(), Duration::from_secs(90));
        assert_eq!(d("1.5m").unwrap(), Duration::from_secs(90));
        assert_eq!(d("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(d("1d").unwrap(), Duration::from_secs(86400));
        assert_eq!(
            d("10x").unwrap_err().to_string(),
            "--x \"10x\": the unit must be s, m, h or d"
        );
        assert!(d("-5s").is_err());
        assert_eq!(
            d("0.5").unwrap_err().to_string(),
            "--x 0.5: at least 1s (why)"
        );
    }
}
