//! Which dockerd the suites run against, and the Debian 13 root that Docker 26 runs from.
//!
//! `BERTH_DOCKER` picks the Docker: unset or `20` is Debian 12's own dockerd 20.10 (the
//! machine's `/usr/sbin/dockerd`); `26` is Debian 13's docker.io 26.1 with its containerd, runc
//! and CLI, from the root `scripts/docker26-root.sh` builds and caches
//! (`/var/cache/berth-docker26/root`; `BERTH_DOCKER26_ROOT` names another).
//!
//! How Docker 26 runs: the test process first moves into a mount namespace of its own
//! ([`prepare_process`], from [`crate::harness::run`] before any thread exists), so every mount
//! below ends with the process, even on a crash. There, per [`crate::DockerEnv`], a writable
//! overlay of the cached root (the cache itself is never written) is mounted on a tmpfs; it gets
//! `/proc`, the host's `/sys` and `/dev`, a fresh `/run`, and two of the host's paths at the same
//! places: `/tmp` and `/run/docker/plugins`. containerd, dockerd and the docker CLI are run
//! `chroot`ed into it.
//!
//! Why the plugins stay on the host rather than in the root: everything the suites look at
//! (state dirs, mount roots and loop devices, admin and plugin sockets, OVS's run dir and
//! database) keeps its path in both passes, and the plugin binaries are the ones the workspace
//! builds for this machine. dockerd sees what it needs at the paths the plugins give it: their
//! sockets in `/run/docker/plugins`, and the volumes they mount under `/tmp` (every work dir of the
//! harness is there). `/tmp` is a shared mount in the test's namespace and the root's `/tmp` its
//! peer, so a volume volplugin mounts on the host appears in the root at once, and the container
//! mounts dockerd makes under its data root appear on the host, where the harness's cleanup
//! finds them as with Docker 20.10. The network namespace is the host's, as for 20.10: the veths
//! netplugin creates are there for dockerd to move.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context as _, Result};
use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// The environment variable choosing the Docker: unset, `20` or `26`.
pub const DOCKER_VAR: &str = "BERTH_DOCKER";

/// Overrides the Debian 13 root's path (default: built or reused by `scripts/docker26-root.sh`).
pub const ROOT_VAR: &str = "BERTH_DOCKER26_ROOT";

/// PATH for the programs run in the root.
const ROOT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The Docker a [`crate::DockerEnv`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DockerVersion {
    /// This machine's dockerd, containerd and runc (Debian 12: Docker 20.10).
    Host,
    /// Debian 13's docker.io (Docker 26.1), containerd 1.7 and runc 1.1 from the cached root.
    Debian13,
}

impl DockerVersion {
    /// From [`DOCKER_VAR`]; anything but unset, empty, `20` or `26` is an error (a typo must not
    /// quietly test the other Docker).
    pub fn from_env() -> Result<DockerVersion> {
        match std::env::var(DOCKER_VAR).as_deref() {
            Err(_) | Ok("") | Ok("20") => Ok(DockerVersion::Host),
            Ok("26") => Ok(DockerVersion::Debian13),
            Ok(other) => bail!("{DOCKER_VAR}={other}: use 20 (Debian 12's dockerd) or 26 (Debian 13's, from a cached root)"),
        }
    }

    /// For messages: "20.10 (Debian 12)" or "26 (Debian 13 root)".
    pub fn label(self) -> &'static str {
        match self {
            DockerVersion::Host => "20.10 (Debian 12)",
            DockerVersion::Debian13 => "26 (Debian 13 root)",
        }
    }
}

static PRIVATE_NAMESPACE: AtomicBool = AtomicBool::new(false);

/// Run first thing in a test process (before any thread): with `BERTH_DOCKER=26`, moves the
/// process into a mount namespace of its own, cut off from the host's (private propagation),
/// with `/tmp` a shared mount of its own for the root's `/tmp` to be a peer of. A no-op otherwise.
pub fn prepare_process() -> Result<()> {
    if DockerVersion::from_env()? != DockerVersion::Debian13 {
        return Ok(());
    }
    enter_private_namespace()
}

fn enter_private_namespace() -> Result<()> {
    if PRIVATE_NAMESPACE.load(Ordering::SeqCst) {
        return Ok(());
    }
    // A namespace entered by one thread is that thread's only: refuse once others exist.
    let threads = std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0);
    if threads != 1 {
        bail!(
            "Docker 26 needs the test process in a mount namespace of its own, entered before \
             any thread starts ({threads} threads now); call integration::docker_root::prepare_process \
             first in main (harness::run does)"
        );
    }
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .context("unshare(CLONE_NEWNS): a mount namespace for the Docker 26 root (needs root)")?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .context("making / private in the test's mount namespace")?;
    bind(Path::new("/tmp"), Path::new("/tmp"), false)?;
    mount(
        None::<&str>,
        "/tmp",
        None::<&str>,
        MsFlags::MS_SHARED,
        None::<&str>,
    )
    .context("making /tmp shared in the test's mount namespace")?;
    PRIVATE_NAMESPACE.store(true, Ordering::SeqCst);
    Ok(())
}

/// The cached Debian 13 root: [`ROOT_VAR`], else what `scripts/docker26-root.sh` prints (it
/// builds the root once, with mmdebstrap, a few minutes, and reuses it afterwards).
pub fn root_path() -> Result<PathBuf> {
    static ROOT: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    ROOT.get_or_init(|| find_or_build_root().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

fn find_or_build_root() -> Result<PathBuf> {
    if let Ok(p) = std::env::var(ROOT_VAR) {
        let p = PathBuf::from(p);
        if !p.join("usr/sbin/dockerd").exists() {
            bail!("{ROOT_VAR}={}: no usr/sbin/dockerd there", p.display());
        }
        return Ok(p);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/docker26-root.sh");
    eprintln!(
        "Docker 26: the Debian 13 root ({}; built once, then cached)",
        script.display()
    );
    let out = Command::new("bash")
        .arg(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}); it needs root and mmdebstrap (bash scripts/install-deps.sh)",
            script.display(),
            out.status
        );
    }
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let path = PathBuf::from(path.lines().last().unwrap_or_default());
    if !path.join("usr/sbin/dockerd").exists() {
        bail!(
            "{} printed {}, which has no usr/sbin/dockerd",
            script.display(),
            path.display()
        );
    }
    Ok(path)
}

/// A tmpfs over `mnt/` next to the root, mounted once per process in its own namespace: the
/// roots' mount points and overlay layers live there, so nothing is left on the host's disk even
/// after a crash. Not under /tmp, whose peer each root's /tmp is.
fn scratch_base(root: &Path) -> Result<PathBuf> {
    static BASE: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    BASE.get_or_init(|| {
        let base = root
            .parent()
            .map(|p| p.join("mnt"))
            .ok_or_else(|| "the root has no parent directory".to_string())?;
        std::fs::create_dir_all(&base).map_err(|e| format!("creating {}: {e}", base.display()))?;
        mount(
            Some("tmpfs"),
            &base,
            Some("tmpfs"),
            MsFlags::empty(),
            Some("mode=755"),
        )
        .map_err(|e| format!("tmpfs on {}: {e}", base.display()))?;
        Ok(base)
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// One writable instance of the root, mounted in the test's namespace for one DockerEnv.
#[derive(Debug)]
pub struct RootMount {
    /// Where the root is mounted (what containerd, dockerd and the CLI are chrooted into).
    path: PathBuf,
    /// Its directory in the scratch tmpfs: the overlay's upper and work dirs and the mount point.
    scratch: PathBuf,
}

impl RootMount {
    /// Mounts the root for a DockerEnv named `name` (its temp dir's name: unique).
    pub fn mount(name: &str) -> Result<RootMount> {
        let root = root_path()?;
        enter_private_namespace()?;
        let scratch = scratch_base(&root)?.join(name);
        std::fs::create_dir_all(&scratch)
            .with_context(|| format!("creating {}", scratch.display()))?;
        let m = RootMount {
            path: scratch.join("root"),
            scratch,
        };
        // From here on an error drops `m`, which unmounts everything.
        m.assemble(&root)?;
        Ok(m)
    }

    fn assemble(&self, root: &Path) -> Result<()> {
        for d in ["upper", "work", "root"] {
            std::fs::create_dir_all(self.scratch.join(d))?;
        }
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            root.display(),
            self.scratch.join("upper").display(),
            self.scratch.join("work").display()
        );
        mount(
            Some("overlay"),
            &self.path,
            Some("overlay"),
            MsFlags::empty(),
            Some(opts.as_str()),
        )
        .with_context(|| format!("overlay of {} on {}", root.display(), self.path.display()))?;
        let p = &self.path;
        mount(
            Some("proc"),
            &p.join("proc"),
            Some("proc"),
            MsFlags::empty(),
            None::<&str>,
        )
        .context("proc in the root")?;
        bind(Path::new("/sys"), &p.join("sys"), true)?;
        bind(Path::new("/dev"), &p.join("dev"), true)?;
        mount(
            Some("tmpfs"),
            &p.join("run"),
            Some("tmpfs"),
            MsFlags::empty(),
            Some("mode=755"),
        )
        .context("a fresh /run in the root")?;
        let plugins = Path::new(crate::plugins::DOCKER_PLUGIN_DIR);
        std::fs::create_dir_all(plugins)?;
        let inner = p.join(plugins.strip_prefix("/").unwrap_or(plugins));
        std::fs::create_dir_all(&inner)?;
        bind(plugins, &inner, false)?;
        // Recursive, so this namespace's /tmp (a shared mount) and the root's are peers.
        bind(Path::new("/tmp"), &p.join("tmp"), true)?;
        Ok(())
    }

    /// The root's mount point.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `chroot ROOT PROGRAM`, with a PATH of the root's directories.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("chroot");
        c.arg(&self.path).arg(program).env("PATH", ROOT_PATH);
        c
    }

    /// Unmounts everything (idempotent). The root's /tmp leaves its peer group first, so that
    /// taking it down never unmounts anything on the host side (a volume volplugin still holds).
    pub fn unmount(&self) -> Vec<String> {
        let mut errs = Vec::new();
        if !self.scratch.exists() {
            return errs;
        }
        let tmp = self.path.join("tmp");
        if crate::docker::mounts_under(&tmp).contains(&tmp) {
            if let Err(e) = mount(
                None::<&str>,
                &tmp,
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&str>,
            ) {
                errs.push(format!("making {} private: {e}", tmp.display()));
            }
        }
        // Detaches the whole tree: the overlay and everything mounted in it.
        match umount2(&self.path, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) => {}
            Err(e) => errs.push(format!("umount {}: {e}", self.path.display())),
        }
        if let Err(e) = std::fs::remove_dir_all(&self.scratch) {
            if e.kind() != std::io::ErrorKind::NotFound {
                errs.push(format!("removing {}: {e}", self.scratch.display()));
            }
        }
        errs
    }
}

impl Drop for RootMount {
    fn drop(&mut self) {
        for e in self.unmount() {
            eprintln!("Docker 26 root: {e}");
        }
    }
}

fn bind(from: &Path, to: &Path, recursive: bool) -> Result<()> {
    let mut flags = MsFlags::MS_BIND;
    if recursive {
        flags |= MsFlags::MS_REC;
    }
    mount(Some(from), to, None::<&str>, flags, None::<&str>)
        .with_context(|| format!("bind {} on {}", from.display(), to.display()))
}
