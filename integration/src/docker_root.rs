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
//! places: `/tmp` and `/run/docker/plugins`. containerd, dockerd and the docker CLI run in a
//! mount namespace whose root is that overlay ([`RootMount`]; the test's own namespace does not
//! keep it mounted).
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

/// One writable instance of the root for one DockerEnv, and the mount namespace whose root it is.
///
/// containerd, dockerd and the CLI run in that namespace (see [`RootMount::command`]), not merely
/// `chroot`ed: runc's `pivot_root` into a container's rootfs from a chroot attaches the rootfs
/// under the chroot's mount point, and `docker exec` (runc's setns into the container's mount
/// namespace) then lands at that namespace's real root, the host's `/`. With the Debian root as
/// the namespace's root, as on a real machine, it lands in the container.
#[derive(Debug)]
pub struct RootMount {
    /// Its directory in the scratch tmpfs: the overlay's upper and work dirs and the mount point.
    scratch: PathBuf,
    /// The namespace (an open `/proc/PID/ns/mnt` keeps it alive after that process is gone).
    ns: std::fs::File,
}

impl RootMount {
    /// Mounts the root for a DockerEnv named `name` (its temp dir's name: unique) and makes the
    /// namespace for its daemons.
    pub fn mount(name: &str) -> Result<RootMount> {
        let root = root_path()?;
        enter_private_namespace()?;
        let scratch = scratch_base(&root)?.join(name);
        std::fs::create_dir_all(&scratch)
            .with_context(|| format!("creating {}", scratch.display()))?;
        let mountpoint = scratch.join("root");
        let assembled = assemble(&root, &scratch, &mountpoint);
        let ns = assembled.and_then(|()| namespace_rooted_at(&mountpoint));
        // The daemons' namespace has its own copy of every mount; this namespace needs none.
        let errs = detach(&mountpoint);
        let ns = match ns {
            Ok(ns) if errs.is_empty() => ns,
            Ok(_) => bail!("unmounting the assembled root: {}", errs.join("; ")),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&scratch);
                return Err(e);
            }
        };
        Ok(RootMount { scratch, ns })
    }

    /// PROGRAM (an absolute path in the root) run in the root's namespace, with a PATH of the
    /// root's directories and `/` as its working directory.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("PATH", ROOT_PATH).current_dir("/");
        match self.ns.try_clone() {
            Ok(ns) => {
                // SAFETY: between fork and exec the closure makes two syscalls (setns, chdir) on
                // a descriptor and a short path it owns; nothing is allocated or locked.
                unsafe {
                    use std::os::unix::process::CommandExt;
                    c.pre_exec(move || {
                        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNS)?;
                        nix::unistd::chdir("/")?;
                        Ok(())
                    });
                }
            }
            // The spawn fails with this reason rather than run outside the root.
            Err(e) => {
                let msg = format!("the Docker 26 root's namespace: {e}");
                // SAFETY: as above; the closure only builds an io::Error from a moved String.
                unsafe {
                    use std::os::unix::process::CommandExt;
                    c.pre_exec(move || Err(std::io::Error::other(msg.clone())));
                }
            }
        }
        c
    }

    /// Removes the scratch dir (idempotent). The namespace ends when the last process in it
    /// and this handle are gone.
    pub fn unmount(&self) -> Vec<String> {
        match std::fs::remove_dir_all(&self.scratch) {
            Ok(()) => Vec::new(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => vec![format!("removing {}: {e}", self.scratch.display())],
        }
    }
}

impl Drop for RootMount {
    fn drop(&mut self) {
        for e in self.unmount() {
            eprintln!("Docker 26 root: {e}");
        }
    }
}

/// The overlay of `root` at `mountpoint` (upper and work dirs in `scratch`), with `/proc`, the
/// host's `/sys` and `/dev`, a fresh `/run`, `/run/docker/plugins` and `/tmp` (a peer).
fn assemble(root: &Path, scratch: &Path, mountpoint: &Path) -> Result<()> {
    for d in ["upper", "work", "root"] {
        std::fs::create_dir_all(scratch.join(d))?;
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        root.display(),
        scratch.join("upper").display(),
        scratch.join("work").display()
    );
    let p = mountpoint;
    mount(
        Some("overlay"),
        p,
        Some("overlay"),
        MsFlags::empty(),
        Some(opts.as_str()),
    )
    .with_context(|| format!("overlay of {} on {}", root.display(), p.display()))?;
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

/// A new mount namespace (a copy of this one) whose root is `mountpoint`: a short-lived
/// process unshares, pivots into it (as runc does for a container: old root made a slave so
/// that detaching it unmounts nothing in this namespace, then detached) and sleeps until its
/// namespace has been opened.
fn namespace_rooted_at(mountpoint: &Path) -> Result<std::fs::File> {
    let newroot = std::ffi::CString::new(mountpoint.as_os_str().as_encoded_bytes())?;
    let mut cmd = Command::new("/usr/bin/sleep");
    cmd.arg("60")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    // SAFETY: between fork and exec the closure only makes syscalls (unshare, open, fchdir,
    // pivot_root, mount, umount2, chdir) with a C string allocated before the fork; nothing is
    // allocated or locked.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || {
            use nix::fcntl::{open, OFlag};
            use nix::sys::stat::Mode;
            let dir = OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC;
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
            let old = open("/", dir, Mode::empty())?;
            let new = open(newroot.as_c_str(), dir, Mode::empty())?;
            nix::unistd::fchdir(&new)?;
            nix::unistd::pivot_root(".", ".")?;
            nix::unistd::fchdir(&old)?;
            mount(
                None::<&str>,
                ".",
                None::<&str>,
                MsFlags::MS_SLAVE | MsFlags::MS_REC,
                None::<&str>,
            )?;
            umount2(".", MntFlags::MNT_DETACH)?;
            nix::unistd::chdir("/")?;
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .context("making the mount namespace rooted at the Debian 13 root")?;
    let opened = std::fs::File::open(format!("/proc/{}/ns/mnt", child.id()));
    // Ours, by pid, not yet reaped.
    let _ = child.kill();
    let _ = child.wait();
    opened.context("opening the Debian 13 root's mount namespace")
}

/// Detaches `mountpoint` and everything under it, after taking its /tmp out of the peer group
/// (detaching a peer's submounts would unmount their counterparts, e.g. a volume volplugin
/// holds).
fn detach(mountpoint: &Path) -> Vec<String> {
    let mut errs = Vec::new();
    let tmp = mountpoint.join("tmp");
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
    match umount2(mountpoint, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) => {}
        Err(e) => errs.push(format!("umount {}: {e}", mountpoint.display())),
    }
    errs
}

fn bind(from: &Path, to: &Path, recursive: bool) -> Result<()> {
    let mut flags = MsFlags::MS_BIND;
    if recursive {
        flags |= MsFlags::MS_REC;
    }
    mount(Some(from), to, None::<&str>, flags, None::<&str>)
        .with_context(|| format!("bind {} on {}", from.display(), to.display()))
}
