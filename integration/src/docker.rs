//! A private containerd + dockerd for tests, with its own paths for everything, and a test image.
//!
//! [`DockerEnv::start`] creates a short temp dir `/tmp/bd-XXXXXX` (UNIX socket paths must stay
//! under ~100 bytes) holding:
//!
//! ```text
//! containerd.toml   containerd config (only disables the CRI plugin)
//! containerd/       containerd --root (root/) and --state (state/)
//! containerd.sock   containerd --address (+ .ttrpc)
//! daemon.json       dockerd --config-file (only deprecated-key-path)
//! docker/           dockerd --data-root
//! x/                dockerd --exec-root
//! docker.sock       dockerd -H unix://...
//! docker.pid        dockerd --pidfile
//! key.json          dockerd's trust key (keeps /etc/docker/key.json untouched)
//! client/           DOCKER_CONFIG of the docker CLI
//! logs/             containerd.log, dockerd.log
//! ```
//!
//! It never touches the system's dockerd, /var/lib/docker or /var/run/docker.sock, and can run
//! alongside them. dockerd runs with `--bridge=none`, no iptables/masquerading and
//! `--ip-forward=false`: containers use `--network none` or networks the tests create, so nothing
//! in a container can reach beyond the test.
//!
//! Plugin discovery is dockerd's built-in one (`/run/docker/plugins`, `/etc/docker/plugins`):
//! there is no dockerd flag to move it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::docker_root::{DockerVersion, RootMount};
use crate::harness::{self, CleanupGuard};
use crate::procs::{self, Daemon};

/// The image every `DockerEnv` imports: Debian's busybox-static with all its applets in /bin.
pub const TEST_IMAGE: &str = "berth-test/busybox:latest";

/// Default time limit of one docker CLI call made through [`DockerEnv::docker`].
pub const DOCKER_CLI_TIMEOUT: Duration = Duration::from_secs(120);

/// How long dockerd gets to exit after SIGTERM before it is SIGKILLed.
pub const DOCKERD_STOP_TIMEOUT: Duration = Duration::from_secs(30);

const CONTAINERD_STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Options of [`DockerEnv::start_with`].
#[derive(Debug, Clone)]
pub struct DockerOptions {
    /// Appended to dockerd's command line (for example `--debug`, `--live-restore`).
    pub extra_dockerd_args: Vec<String>,
    /// Build and import [`TEST_IMAGE`] (default true).
    pub import_test_image: bool,
    /// Bound on waiting for containerd's socket and for dockerd's API (each).
    pub start_timeout: Duration,
}

impl Default for DockerOptions {
    fn default() -> Self {
        DockerOptions {
            extra_dockerd_args: Vec::new(),
            import_test_image: true,
            start_timeout: Duration::from_secs(60),
        }
    }
}

/// Everything of one environment; shared with the signal watcher's emergency cleanup.
struct Shared {
    dir: PathBuf,
    host: String,
    docker_bin: PathBuf,
    opts: DockerOptions,
    version: DockerVersion,
    /// Docker 26: the Debian 13 root containerd, dockerd and the CLI run in.
    root: Option<RootMount>,
    state: Mutex<SharedState>,
}

/// The daemons; every start, stop and teardown happens with this lock held.
#[derive(Default)]
struct SharedState {
    containerd: Option<Daemon>,
    dockerd: Option<Daemon>,
    torn_down: bool,
}

/// A private containerd + dockerd. Dropping it (or [`DockerEnv::stop`]) removes all containers,
/// stops dockerd and containerd, unmounts whatever is left under its dir and removes the dir.
///
/// All methods take `&self`, so a suite context holding a `DockerEnv` can restart dockerd from a
/// test that only gets `&Ctx`.
pub struct DockerEnv {
    shared: Arc<Shared>,
    _cleanup: Option<CleanupGuard>,
}

impl DockerEnv {
    /// Starts containerd and dockerd with default options and imports [`TEST_IMAGE`].
    pub fn start() -> Result<DockerEnv> {
        Self::start_with(DockerOptions::default())
    }

    /// Starts containerd and dockerd with `opts`. On failure everything started is torn down and
    /// the error carries the daemon's log tail.
    ///
    /// Which Docker: [`DockerVersion::from_env`] (`BERTH_DOCKER`; see [`crate::docker_root`]).
    pub fn start_with(opts: DockerOptions) -> Result<DockerEnv> {
        let version = DockerVersion::from_env()?;
        let docker_bin = match version {
            DockerVersion::Host => {
                harness::require_root_and_tools(&[
                    "containerd",
                    "containerd-shim-runc-v2",
                    "runc",
                    "dockerd",
                    "tar",
                ])?;
                docker_client()?
            }
            DockerVersion::Debian13 => {
                harness::require_root_and_tools(&["tar"])?;
                PathBuf::from(ROOT_DOCKER_CLI)
            }
        };
        let dir = tempfile::Builder::new()
            .prefix("bd-")
            .rand_bytes(6)
            .tempdir_in("/tmp")
            .context("creating temp dir under /tmp")?
            .keep();
        let root = match version {
            DockerVersion::Host => None,
            DockerVersion::Debian13 => {
                let name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
                match RootMount::mount(&name.unwrap_or_default()) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        let _ = std::fs::remove_dir_all(&dir);
                        return Err(e.context("mounting the Debian 13 root for Docker 26"));
                    }
                }
            }
        };
        let host = format!("unix://{}/docker.sock", dir.display());
        let shared = Arc::new(Shared {
            dir,
            host,
            docker_bin,
            opts,
            version,
            root,
            state: Mutex::new(SharedState::default()),
        });
        let s2 = shared.clone();
        let env = DockerEnv {
            _cleanup: Some(harness::register_cleanup(move || {
                for e in teardown(&s2) {
                    eprintln!("teardown of {}: {e}", s2.dir.display());
                }
            })),
            shared,
        };
        // From here on, an early return drops `env`, which tears everything down.
        env.write_configs()?;
        env.start_containerd()?;
        env.start_dockerd()?;
        if env.shared.opts.import_test_image {
            env.import_test_image()?;
        }
        Ok(env)
    }

    /// The `-H` value: `unix:///tmp/bd-XXXXXX/docker.sock`.
    pub fn host(&self) -> &str {
        &self.shared.host
    }

    /// dockerd's API socket.
    pub fn socket_path(&self) -> PathBuf {
        self.shared.dir.join("docker.sock")
    }

    /// containerd's socket.
    pub fn containerd_socket_path(&self) -> PathBuf {
        self.shared.dir.join("containerd.sock")
    }

    /// The temp dir holding everything of this environment.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// dockerd's `--data-root`.
    pub fn data_root(&self) -> PathBuf {
        self.shared.dir.join("docker")
    }

    /// Where `containerd.log` and `dockerd.log` are.
    pub fn log_dir(&self) -> PathBuf {
        self.shared.dir.join("logs")
    }

    /// The docker CLI used: /usr/bin/docker (Debian's 20.10 client, if present), or Docker 26's
    /// /usr/bin/docker in the Debian 13 root (a path in the root, run in its namespace).
    pub fn docker_bin(&self) -> &Path {
        &self.shared.docker_bin
    }

    /// Which Docker this is.
    pub fn version(&self) -> DockerVersion {
        self.shared.version
    }

    /// dockerd's pid while it runs.
    pub fn dockerd_pid(&self) -> Option<u32> {
        let mut st = self.lock();
        running_pid(&mut st.dockerd)
    }

    /// containerd's pid while it runs.
    pub fn containerd_pid(&self) -> Option<u32> {
        let mut st = self.lock();
        running_pid(&mut st.containerd)
    }

    /// The last `n` lines of dockerd's log (kept across restarts).
    pub fn dockerd_log_tail(&self, n: usize) -> String {
        procs::tail_file(&self.log_dir().join("dockerd.log"), n)
    }

    /// The last `n` lines of containerd's log.
    pub fn containerd_log_tail(&self, n: usize) -> String {
        procs::tail_file(&self.log_dir().join("containerd.log"), n)
    }

    /// A docker CLI command aimed at this dockerd (`-H` and `DOCKER_HOST` set, own
    /// `DOCKER_CONFIG`, no context or TLS settings from the environment). Add arguments and run.
    pub fn command(&self) -> Command {
        docker_command(&self.shared)
    }

    /// Runs `docker ARGS` (time limit [`DOCKER_CLI_TIMEOUT`]) and returns its raw output.
    pub fn docker(&self, args: &[&str]) -> Output {
        self.docker_with(args, None, DOCKER_CLI_TIMEOUT)
    }

    /// Runs `docker ARGS` with `stdin` as input and a time limit. A CLI that cannot even be
    /// spawned yields an `Output` with exit code 127 and the reason in stderr.
    pub fn docker_with(&self, args: &[&str], stdin: Option<&[u8]>, timeout: Duration) -> Output {
        let mut cmd = self.command();
        cmd.args(args);
        procs::run_with_timeout(cmd, stdin, timeout).unwrap_or_else(|e| Output {
            status: std::os::unix::process::ExitStatusExt::from_raw(127 << 8),
            stdout: Vec::new(),
            stderr: format!("cannot run {}: {e}", self.shared.docker_bin.display()).into_bytes(),
        })
    }

    /// A long-running container `name` (no network) holding `volume` at /data; its id.
    pub fn hold(&self, name: &str, volume: &str) -> Result<String> {
        let spec = format!("{volume}:/data");
        self.ok(&[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "none",
            "--stop-timeout",
            "1",
            "-v",
            &spec,
            TEST_IMAGE,
            "sleep",
            "3600",
        ])
    }

    /// Runs `docker ARGS`, which must succeed; returns its trimmed stdout. The error names the
    /// command and includes its status, stdout and stderr.
    pub fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self.docker(args);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(anyhow!(
                "`docker {}` failed ({}):\nstdout: {}\nstderr: {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Runs `docker ARGS`, which must fail; returns its trimmed stderr.
    pub fn fails(&self, args: &[&str]) -> Result<String> {
        let out = self.docker(args);
        if out.status.success() {
            Err(anyhow!(
                "`docker {}` succeeded but was expected to fail:\nstdout: {}\nstderr: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        } else {
            Ok(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    /// Stops dockerd (SIGTERM, up to 30 s) and starts it again with the same settings and data.
    /// Containers are stopped by the shutdown (no live-restore unless passed in the options).
    pub fn restart_dockerd(&self) -> Result<()> {
        self.stop_dockerd()?;
        self.start_dockerd()
    }

    /// Stops dockerd (SIGTERM, up to 30 s, then SIGKILL: an error). No-op if not running.
    pub fn stop_dockerd(&self) -> Result<()> {
        let mut st = self.lock();
        let res = match st.dockerd.as_mut() {
            Some(d) => d.stop(DOCKERD_STOP_TIMEOUT).map(|_| ()),
            None => Ok(()),
        };
        st.dockerd = None;
        res
    }

    /// SIGKILLs dockerd (a crash); [`DockerEnv::start_dockerd`] brings it back.
    pub fn kill9_dockerd(&self) -> Result<()> {
        let mut st = self.lock();
        let res = match st.dockerd.as_mut() {
            Some(d) => d.kill9().map(|_| ()),
            None => Ok(()),
        };
        st.dockerd = None;
        res
    }

    /// Starts dockerd (if not running) and waits until its API answers `docker version`.
    pub fn start_dockerd(&self) -> Result<()> {
        let shared = &*self.shared;
        let mut st = self.lock();
        if st.torn_down {
            bail!("environment already torn down");
        }
        if let Some(d) = st.dockerd.as_mut() {
            if d.is_running() {
                return Ok(());
            }
        }
        let dir = &shared.dir;
        let log_dir = self.log_dir();
        let _ = append_marker(&log_dir.join("dockerd.log"), "starting dockerd");
        let mut cmd = program(shared, "dockerd");
        cmd.arg("--data-root")
            .arg(dir.join("docker"))
            .arg("--exec-root")
            .arg(dir.join("x"))
            .arg("--pidfile")
            .arg(dir.join("docker.pid"))
            .arg("-H")
            .arg(&shared.host)
            .arg("--containerd")
            .arg(dir.join("containerd.sock"))
            .arg("--config-file")
            .arg(dir.join("daemon.json"))
            .args([
                "--bridge=none",
                "--iptables=false",
                "--ip6tables=false",
                "--ip-masq=false",
                "--ip-forward=false",
                "--exec-opt",
                "native.cgroupdriver=cgroupfs",
            ])
            .args(&shared.opts.extra_dockerd_args)
            .env_remove("DOCKER_HOST")
            .env_remove("NOTIFY_SOCKET");
        let mut daemon = Daemon::spawn("dockerd", cmd, &log_dir)?;

        let t0 = Instant::now();
        let mut last_err = String::new();
        let up = procs::wait_until(
            shared.opts.start_timeout,
            Duration::from_millis(200),
            || {
                if !daemon.is_running() {
                    return true;
                }
                let mut c = docker_command(shared);
                c.args(["version", "--format", "{{.Server.Version}}"]);
                match procs::run_with_timeout(c, None, Duration::from_secs(10)) {
                    Ok(o) if o.status.success() => true,
                    Ok(o) => {
                        last_err = String::from_utf8_lossy(&o.stderr).trim().to_string();
                        false
                    }
                    Err(e) => {
                        last_err = e.to_string();
                        false
                    }
                }
            },
        );
        if let Some(status) = daemon.try_exited() {
            bail!(
                "dockerd exited during startup ({status}); log tail ({}):\n{}",
                daemon.log_path().display(),
                daemon.log_tail(40)
            );
        }
        if !up {
            let tail = daemon.log_tail(40);
            let stop = daemon.stop(Duration::from_secs(5)).err();
            bail!(
                "dockerd API at {} did not answer within {:?} (last: {last_err}){}; log tail:\n{tail}",
                shared.host,
                t0.elapsed(),
                stop.map(|e| format!("; stopping: {e}")).unwrap_or_default()
            );
        }
        st.dockerd = Some(daemon);
        Ok(())
    }

    /// Tears down now (see the type's doc); returns every error met (it never stops at the first).
    pub fn stop(self) -> Result<()> {
        let errs = teardown(&self.shared);
        if errs.is_empty() {
            Ok(())
        } else {
            Err(anyhow!("teardown errors:\n  {}", errs.join("\n  ")))
        }
    }

    fn lock(&self) -> MutexGuard<'_, SharedState> {
        lock(&self.shared)
    }

    fn write_configs(&self) -> Result<()> {
        let dir = &self.shared.dir;
        for sub in [
            "containerd/root",
            "containerd/state",
            "docker",
            "x",
            "client",
            "logs",
        ] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        // Not /etc/containerd/config.toml. CRI is off: dockerd does not use it, and it would open
        // a TCP streaming listener and probe CNI.
        std::fs::write(
            dir.join("containerd.toml"),
            "version = 2\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n",
        )?;
        // Only moves the libtrust key off /etc/docker/key.json (20.10 has no flag for it).
        let daemon_json = serde_json::json!({
            "deprecated-key-path": dir.join("key.json"),
        });
        std::fs::write(dir.join("daemon.json"), format!("{daemon_json:#}\n"))?;
        std::fs::write(dir.join("client/config.json"), "{}\n")?;
        Ok(())
    }

    fn start_containerd(&self) -> Result<()> {
        let shared = &*self.shared;
        let mut st = self.lock();
        let dir = &shared.dir;
        let sock = dir.join("containerd.sock");
        let mut cmd = program(shared, "containerd");
        cmd.arg("--config")
            .arg(dir.join("containerd.toml"))
            .arg("--root")
            .arg(dir.join("containerd/root"))
            .arg("--state")
            .arg(dir.join("containerd/state"))
            .arg("--address")
            .arg(&sock)
            .env_remove("NOTIFY_SOCKET");
        let mut daemon = Daemon::spawn("containerd", cmd, &self.log_dir())?;
        let up = procs::wait_until(shared.opts.start_timeout, Duration::from_millis(50), || {
            !daemon.is_running() || std::os::unix::net::UnixStream::connect(&sock).is_ok()
        });
        if let Some(status) = daemon.try_exited() {
            bail!(
                "containerd exited during startup ({status}); log tail:\n{}",
                daemon.log_tail(40)
            );
        }
        let tail = daemon.log_tail(40);
        st.containerd = Some(daemon);
        if !up {
            bail!(
                "containerd socket {} not ready within {:?}; log tail:\n{tail}",
                sock.display(),
                shared.opts.start_timeout,
            );
        }
        Ok(())
    }

    fn import_test_image(&self) -> Result<()> {
        let dir = &self.shared.dir;
        let rootfs = dir.join("image-rootfs");
        let tar = dir.join("image.tar");
        build_busybox_rootfs(&rootfs)?;
        let out = Command::new("tar")
            .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .output()
            .context("running tar")?;
        if !out.status.success() {
            bail!(
                "tar of the test image rootfs failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let tar_s = tar.to_string_lossy().into_owned();
        self.ok(&["import", "--change", r#"CMD ["sh"]"#, &tar_s, TEST_IMAGE])
            .context("importing the test image")?;
        let _ = std::fs::remove_dir_all(&rootfs);
        let _ = std::fs::remove_file(&tar);
        Ok(())
    }
}

impl Drop for DockerEnv {
    fn drop(&mut self) {
        for e in teardown(&self.shared) {
            eprintln!("teardown of {}: {e}", self.shared.dir.display());
        }
    }
}

/// The full teardown (normal, or from the signal watcher); idempotent. Returns the errors met.
fn teardown(shared: &Shared) -> Vec<String> {
    let mut st = lock(shared);
    if st.torn_down {
        return Vec::new();
    }
    let mut errs = Vec::new();
    if let Some(mut d) = st.dockerd.take() {
        if d.is_running() {
            errs.extend(remove_all_containers(shared));
        }
        if let Err(e) = d.stop(DOCKERD_STOP_TIMEOUT) {
            errs.push(format!("stopping dockerd: {e:#}"));
        }
    }
    if let Some(mut c) = st.containerd.take() {
        if let Err(e) = c.stop(CONTAINERD_STOP_TIMEOUT) {
            errs.push(format!("stopping containerd: {e:#}"));
        }
    }
    errs.extend(final_cleanup(&shared.dir));
    if let Some(root) = &shared.root {
        errs.extend(root.unmount());
    }
    st.torn_down = true;
    errs
}

fn running_pid(d: &mut Option<Daemon>) -> Option<u32> {
    let d = d.as_mut()?;
    d.is_running().then(|| d.pid())
}

fn lock(shared: &Shared) -> MutexGuard<'_, SharedState> {
    shared.state.lock().unwrap_or_else(|e| e.into_inner())
}

/// /usr/bin/docker (Debian's 20.10 client, matching the daemon) if present, else `docker` in PATH.
fn docker_client() -> Result<PathBuf> {
    let p = Path::new("/usr/bin/docker");
    if p.exists() {
        return Ok(p.to_path_buf());
    }
    harness::find_binary("docker").ok_or_else(|| {
        anyhow!(
            "docker CLI not found (/usr/bin/docker or PATH); run the project's setup \
             (Debian: apt-get install docker.io)"
        )
    })
}

/// The docker CLI of Docker 26, in the Debian 13 root.
const ROOT_DOCKER_CLI: &str = "/usr/bin/docker";

/// A daemon's command (`dockerd` or `containerd`): the host's binary, or the root's (Docker 26),
/// run in its namespace.
fn program(shared: &Shared, name: &str) -> Command {
    match &shared.root {
        None => Command::new(name),
        Some(root) => root.command(match name {
            "dockerd" => "/usr/sbin/dockerd",
            _ => "/usr/bin/containerd",
        }),
    }
}

fn docker_command(shared: &Shared) -> Command {
    let mut c = match &shared.root {
        None => Command::new(&shared.docker_bin),
        Some(root) => root.command(ROOT_DOCKER_CLI),
    };
    c.arg("-H")
        .arg(&shared.host)
        .env("DOCKER_HOST", &shared.host)
        .env("DOCKER_CONFIG", shared.dir.join("client"))
        .env_remove("DOCKER_CONTEXT")
        .env_remove("DOCKER_TLS_VERIFY")
        .env_remove("DOCKER_CERT_PATH");
    c
}

fn append_marker(path: &Path, what: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    writeln!(
        f,
        "===== berth test harness: {what} (unix time {secs}) ====="
    )
}

/// Lays out a rootfs: /bin/busybox (copied from the host's busybox-static) plus a symlink per
/// applet of `busybox --list`, /sbin, /usr/bin, /usr/sbin pointing at /bin, and minimal
/// /etc/passwd and /etc/group (root, nobody).
/// The arguments of `docker network create` for a berth network (berth-net driver and IPAM)
/// on `subnet`, with `extra` options (`-o vlan=101`, `--aux-address r=...`), named `name`.
pub fn berth_network_args<'a>(subnet: &'a str, extra: &[&'a str], name: &'a str) -> Vec<&'a str> {
    let mut args = vec![
        "network",
        "create",
        "-d",
        "berth-net",
        "--ipam-driver",
        "berth-net",
        "--subnet",
        subnet,
    ];
    args.extend_from_slice(extra);
    args.push(name);
    args
}

pub fn build_busybox_rootfs(rootfs: &Path) -> Result<()> {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(Path::new)
        .find(|p| p.exists())
        .ok_or_else(|| {
            anyhow!(
                "/bin/busybox not found; run the project's setup (Debian: apt-get install \
                 busybox-static)"
            )
        })?;
    let list = Command::new(busybox)
        .arg("--list")
        .output()
        .context("running busybox --list")?;
    if !list.status.success() {
        bail!("busybox --list failed");
    }
    let applets = String::from_utf8_lossy(&list.stdout).into_owned();
    for sub in [
        "bin", "etc", "tmp", "root", "var", "usr", "dev", "proc", "sys",
    ] {
        std::fs::create_dir_all(rootfs.join(sub))?;
    }
    use std::os::unix::fs::{symlink, PermissionsExt};
    std::fs::set_permissions(rootfs.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
    std::fs::copy(busybox, rootfs.join("bin/busybox")).context("copying busybox")?;
    for applet in applets.lines().map(str::trim) {
        if applet.is_empty() || applet == "busybox" || applet.contains('/') {
            continue;
        }
        symlink("busybox", rootfs.join("bin").join(applet))
            .with_context(|| format!("symlinking applet {applet}"))?;
    }
    symlink("bin", rootfs.join("sbin"))?;
    symlink("../bin", rootfs.join("usr/bin"))?;
    symlink("../bin", rootfs.join("usr/sbin"))?;
    std::fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;
    Ok(())
}

/// `docker rm -f` of every container; errors as strings.
fn remove_all_containers(shared: &Shared) -> Vec<String> {
    let mut errs = Vec::new();
    let mut ps = docker_command(shared);
    ps.args(["ps", "-aq"]);
    let ids = match procs::run_with_timeout(ps, None, Duration::from_secs(30)) {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        Ok(o) => {
            errs.push(format!(
                "docker ps -aq failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ));
            return errs;
        }
        Err(e) => {
            errs.push(format!("docker ps -aq: {e}"));
            return errs;
        }
    };
    let ids: Vec<&str> = ids.split_whitespace().collect();
    if ids.is_empty() {
        return errs;
    }
    let mut rm = docker_command(shared);
    rm.args(["rm", "-f"]).args(&ids);
    match procs::run_with_timeout(rm, None, Duration::from_secs(60)) {
        Ok(o) if o.status.success() => {}
        Ok(o) => errs.push(format!(
            "docker rm -f failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => errs.push(format!("docker rm -f: {e}")),
    }
    errs
}

/// After the daemons are gone: kill leftovers that name our dir (containerd shims), unmount
/// everything under the dir (deepest first, lazily) and remove it.
fn final_cleanup(dir: &Path) -> Vec<String> {
    let mut errs = Vec::new();
    let needle = format!("{}/", dir.display());
    let leftovers = procs::pids_with_cmdline_containing(&needle);
    for (pid, cmdline) in &leftovers {
        errs.push(format!("leftover process {pid} killed: {cmdline}"));
        let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
    }
    if !leftovers.is_empty()
        && !procs::wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
            leftovers.iter().all(|(p, _)| !procs::pid_alive(*p))
        })
    {
        errs.push("leftover processes still alive 5 s after SIGKILL".into());
    }
    errs.extend(unmount_under(dir));
    if dir.exists() {
        if let Err(e) = std::fs::remove_dir_all(dir) {
            errs.push(format!("removing {}: {e}", dir.display()));
        }
    }
    errs
}

/// Mount points at or below `dir`, per /proc/self/mountinfo, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut mounts: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_mountinfo(m)))
        .filter(|m| m.starts_with(dir))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    mounts.dedup();
    mounts
}

fn unmount_under(dir: &Path) -> Vec<String> {
    let mut errs = Vec::new();
    for m in mounts_under(dir) {
        match nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => errs.push(format!("umount {}: {e}", m.display())),
        }
    }
    errs
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_unescape() {
        assert_eq!(unescape_mountinfo(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape_mountinfo(r"/x\134y"), r"/x\y");
        assert_eq!(unescape_mountinfo(r"/x\04"), r"/x\04");
    }
}
