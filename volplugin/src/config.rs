//! `volplugin serve`'s settings: the flags (each also a key of the config file), their
//! defaults, and [`Config`], what they mean once checked.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::Args;
use plugin_transport::daemon::{self, Daemon, Settings};
use serde::{Deserialize, Serialize};

use volplugin::backend::lvm::LvmConfig;
use volplugin::spec::{human_size, parse_size, Filesystem, SpecPolicy};

pub const DEFAULT_BACKEND: &str = "loopfile";
pub const DEFAULT_SIZE: &str = "10G";
pub const DEFAULT_MAX_SIZE: &str = "8T";
pub const DEFAULT_FS: &str = "xfs";
/// Docker owns this tree: volumes mounted under it would be Docker's to clean up.
const DOCKER_ROOT: &str = "/var/lib/docker";

/// volplugin's names and defaults, for the shared daemon skeleton.
#[derive(Debug)]
pub struct Vol;

impl Daemon for Vol {
    const PLUGIN: &'static str = "berth-vol";
    const CONFIG_FILE: &'static str = "/etc/berth/volplugin.toml";
    const STATE_DIR: &'static str = "/var/lib/berth/vol";
    const STATE_DIR_HELP: &'static str = "Where volplugin keeps everything it persists.";
    const ADMIN_SOCKET: &'static str = "/run/berth/volplugin.sock";
    const METRICS_ADDR: &'static str = "127.0.0.1:9474";
    const METRICS_PREFIX: &'static str = "berth_vol";
}

pub type AdminArgs = daemon::AdminArgs<Vol>;

/// Every setting is a flag and a key of the config file (same name, e.g. `state-dir`).
#[derive(Args, Debug, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub struct ServeArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub common: daemon::CommonServeArgs<Vol>,
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

/// Where volumes live.
#[derive(Debug, Clone)]
pub enum BackendChoice {
    /// A sparse file per volume under `<state-dir>/images`.
    Loopfile {
        images: PathBuf,
    },
    LvmThin(LvmConfig),
}

/// The serve settings, checked; nothing is created or opened yet.
#[derive(Debug, Clone)]
pub struct Config {
    pub daemon: Settings,
    /// As given: created, then resolved, at start-up.
    pub mount_root: PathBuf,
    pub policy: SpecPolicy,
    pub backend: BackendChoice,
    pub docker_socket: PathBuf,
}

impl Config {
    pub fn from_args(args: &ServeArgs) -> anyhow::Result<Config> {
        let daemon = args.common.settings()?;
        let size_flag = |flag: &str, value: &Option<String>, default: &str| {
            let text = value.as_deref().unwrap_or(default);
            parse_size(text).map_err(|e| anyhow::anyhow!("--{flag}: {e}"))
        };
        let policy = SpecPolicy {
            default_size: size_flag("default-size", &args.default_size, DEFAULT_SIZE)?,
            max_size: size_flag("max-size", &args.max_size, DEFAULT_MAX_SIZE)?,
            default_fs: args
                .default_fs
                .as_deref()
                .unwrap_or(DEFAULT_FS)
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
        let mount_root = args
            .mount_root
            .clone()
            .unwrap_or_else(|| daemon.state_dir.join("mounts"));
        check_mount_root(&mount_root, Path::new(DOCKER_ROOT))?;
        let backend = match args.backend.as_deref().unwrap_or(DEFAULT_BACKEND) {
            "loopfile" => BackendChoice::Loopfile {
                images: daemon.state_dir.join("images"),
            },
            "lvm-thin" => {
                let (Some(vg), Some(pool)) = (args.vg.as_deref(), args.thin_pool.as_deref()) else {
                    bail!("--backend lvm-thin needs --vg VG and --thin-pool POOL (a pool made with lvcreate --type thin-pool)");
                };
                let mut cfg = LvmConfig::new(vg, pool, daemon.state_dir.join("scratch"));
                cfg.data_max_percent = args.pool_data_max_percent.unwrap_or(cfg.data_max_percent);
                cfg.metadata_max_percent = args
                    .pool_metadata_max_percent
                    .unwrap_or(cfg.metadata_max_percent);
                cfg.max_overcommit = args.max_overcommit;
                BackendChoice::LvmThin(cfg)
            }
            other => bail!("--backend {other:?} is not one of: loopfile, lvm-thin"),
        };
        Ok(Config {
            mount_root,
            policy,
            backend,
            docker_socket: args
                .docker_socket
                .clone()
                .unwrap_or_else(|| PathBuf::from(daemon::DEFAULT_DOCKER_SOCKET)),
            daemon,
        })
    }

    /// The metadata store, beside everything else volplugin persists.
    pub fn meta_store(&self) -> PathBuf {
        self.daemon.state_dir.join("meta.redb")
    }
}

/// `--mount-root` must be absolute and, once symlinks are resolved, not inside Docker's own
/// tree (`docker_root`): a link into /var/lib/docker would let volume mounts shadow Docker's
/// data. The root need not exist yet: its longest existing ancestor is resolved.
fn check_mount_root(mount_root: &Path, docker_root: &Path) -> Result<()> {
    if !mount_root.is_absolute() {
        bail!(
            "--mount-root {}: must be an absolute path",
            mount_root.display()
        );
    }
    let resolved = resolve_existing_prefix(mount_root);
    let docker_resolved = resolve_existing_prefix(docker_root);
    if mount_root.starts_with(docker_root)
        || resolved.starts_with(docker_root)
        || resolved.starts_with(&docker_resolved)
    {
        bail!(
            "--mount-root {} (resolved: {}) must not be under {} (Docker owns that tree)",
            mount_root.display(),
            resolved.display(),
            docker_root.display()
        );
    }
    Ok(())
}

/// `path` with its longest existing ancestor canonicalized (symlinks resolved) and the rest,
/// which does not exist yet, appended as it is.
fn resolve_existing_prefix(path: &Path) -> PathBuf {
    let mut missing = Vec::new();
    let mut current = path;
    loop {
        if let Ok(real) = current.canonicalize() {
            return missing.iter().rev().fold(real, |p, part| p.join(part));
        }
        match (current.parent(), current.file_name()) {
            (Some(parent), Some(name)) => {
                missing.push(name.to_os_string());
                current = parent;
            }
            _ => return path.to_path_buf(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plugin_transport::daemon::parse_flags;

    fn config(flags: &[&str]) -> anyhow::Result<Config> {
        Config::from_args(&parse_flags(flags)?)
    }

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
        let mut cli = ServeArgs::default();
        cli.common.config = Some(path);
        let merged = cli.common.merge_file(&cli).unwrap();
        assert_eq!(merged.default_size.as_deref(), Some("10G"));
        assert_eq!(merged.common.metrics.as_deref(), Some("127.0.0.1:9474"));
        assert_eq!(
            merged.common.log_format,
            Some(plugin_transport::logging::LogFormat::Text)
        );
        let from_file = Config::from_args(&merged).unwrap();
        let defaults = config(&[]).unwrap();
        assert_eq!(from_file.daemon.state_dir, defaults.daemon.state_dir);
        assert_eq!(from_file.mount_root, defaults.mount_root);
        assert_eq!(from_file.policy.max_size, defaults.policy.max_size);
    }

    #[test]
    fn defaults() {
        let c = config(&[]).unwrap();
        assert_eq!(c.daemon.state_dir, PathBuf::from("/var/lib/berth/vol"));
        assert_eq!(c.mount_root, PathBuf::from("/var/lib/berth/vol/mounts"));
        assert_eq!(c.policy.default_size, 10 << 30);
        assert_eq!(c.policy.max_size, 8 << 40);
        assert_eq!(c.policy.default_fs, Filesystem::Xfs);
        assert_eq!(c.daemon.metrics.as_deref(), Some("127.0.0.1:9474"));
        assert!(
            matches!(c.backend, BackendChoice::Loopfile { ref images } if images.ends_with("vol/images"))
        );
        let c = config(&[
            "--state-dir",
            "/s",
            "--backend",
            "lvm-thin",
            "--vg",
            "v",
            "--thin-pool",
            "p",
        ])
        .unwrap();
        assert_eq!(c.mount_root, PathBuf::from("/s/mounts"));
        let BackendChoice::LvmThin(lvm) = c.backend else {
            panic!("not lvm-thin");
        };
        assert_eq!((lvm.vg.as_str(), lvm.pool.as_str()), ("v", "p"));
        assert_eq!(lvm.data_max_percent, 80.0);
    }

    #[test]
    fn mount_root_is_checked_after_resolving_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let docker = dir.path().join("docker");
        std::fs::create_dir(&docker).unwrap();
        let link = dir.path().join("innocent");
        std::os::unix::fs::symlink(docker.join("volumes"), &link).unwrap();
        std::fs::create_dir(docker.join("volumes")).unwrap();
        // Through the link, and through the link to a root that does not exist yet.
        for root in [link.clone(), link.join("berth/mounts")] {
            let e = check_mount_root(&root, &docker).unwrap_err().to_string();
            assert!(e.contains("Docker owns that tree"), "{e}");
        }
        let e = check_mount_root(&docker.join("x"), &docker).unwrap_err();
        assert!(e.to_string().starts_with("--mount-root"), "{e}");
        let e = check_mount_root(Path::new("rel/mounts"), &docker).unwrap_err();
        assert!(e.to_string().contains("absolute"), "{e}");
        check_mount_root(&dir.path().join("berth/mounts"), &docker).unwrap();
    }

    #[test]
    fn bad_flags_are_named() {
        let err = |flags: &[&str]| config(flags).unwrap_err().to_string();
        assert!(err(&["--default-size", "1Q"]).starts_with("--default-size: "));
        assert_eq!(
            err(&["--default-size", "9T"]),
            "--default-size 9T is over --max-size 8T"
        );
        assert!(err(&["--default-fs", "btrfs"]).starts_with("--default-fs: "));
        let e = err(&["--mount-root", "/var/lib/docker/v"]);
        assert!(
            e.starts_with("--mount-root /var/lib/docker/v") && e.contains("must not be under"),
            "{e}"
        );
        assert!(
            err(&["--backend", "lvm-thin", "--vg", "v"]).contains("needs --vg VG and --thin-pool")
        );
        assert_eq!(
            err(&["--backend", "zfs"]),
            "--backend \"zfs\" is not one of: loopfile, lvm-thin"
        );
        assert!(err(&["--socket-mode", "9"]).starts_with("--socket-mode"));
    }
}
