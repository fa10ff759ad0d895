//! Running Berth's own daemons in tests and benchmarks, and speaking Docker's plugin protocol
//! to them byte for byte as dockerd does.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::procs::{wait_until, Daemon};

/// Where dockerd looks for v1 plugin sockets; no dockerd flag moves it.
pub const DOCKER_PLUGIN_DIR: &str = "/run/docker/plugins";

/// Builds (a no-op when fresh) and returns the path of a workspace binary, in the profile this
/// test was built with, so a test never runs a stale daemon.
pub fn binary(package: &str) -> Result<PathBuf> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .args(["build", "--quiet", "-p", package, "--bin", package]);
    // What cargo sets for the running test (CARGO_MANIFEST_DIR, CARGO_PKG_*, OUT_DIR, ...) must
    // not reach this build: some build scripts (ring's) rerun when these change, so the test's
    // values would rebuild them here and the next `cargo test` would rebuild them back.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        let keep = [
            "CARGO_HOME",
            "CARGO_TARGET_DIR",
            "CARGO_BUILD_",
            "CARGO_PROFILE_",
            "CARGO_REGISTRIES_",
            "CARGO_NET_",
            "CARGO_INCREMENTAL",
            "CARGO_TERM_",
        ];
        if (k.starts_with("CARGO_") && !keep.iter().any(|p| k.starts_with(p))) || k == "OUT_DIR" {
            cmd.env_remove(k.as_ref());
        }
    }
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    let status = cmd
        .status()
        .with_context(|| format!("building {package}"))?;
    if !status.success() {
        bail!("cargo build -p {package} failed ({status})");
    }
    let exe = std::env::current_exe()?;
    // Tests run from target/<profile>/deps/, benchmark binaries from target/<profile>/.
    let mut dir = exe.parent().context("directory of the running binary")?;
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir
            .parent()
            .context("target directory of the test binary")?;
    }
    let path = dir.join(package);
    if !path.exists() {
        bail!("{} was not built", path.display());
    }
    Ok(path)
}

/// One POST exactly as dockerd 20.10 sends it: empty Host, no Content-Type, the v1.2 Accept
/// header, a JSON body with a trailing newline (or nothing at all). Returns status and body.
pub fn docker_call(
    socket: &Path,
    method: &str,
    body: Option<&str>,
) -> Result<(u16, serde_json::Value)> {
    let mut stream =
        UnixStream::connect(socket).with_context(|| format!("connect {}", socket.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let payload = body.map(|b| format!("{b}\n")).unwrap_or_default();
    let request = format!(
        "POST /{method} HTTP/1.1\r\nHost: \r\nUser-Agent: Go-http-client/1.1\r\nContent-Length: {}\r\n\
         Accept: application/vnd.docker.plugins.v1.2+json\r\nAccept-Encoding: gzip\r\n\r\n{payload}",
        payload.len()
    );
    stream.write_all(request.as_bytes())?;
    let (status, raw) = read_response(&mut stream)?;
    let value = serde_json::from_slice(&raw).with_context(|| {
        format!(
            "{method}: body is not JSON: {}",
            String::from_utf8_lossy(&raw)
        )
    })?;
    Ok((status, value))
}

fn read_response(stream: &mut UnixStream) -> Result<(u16, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let header_end = loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            bail!(
                "connection closed before a full response: {:?}",
                String::from_utf8_lossy(&buf)
            );
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).to_string();
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("status line")?;
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_string())
        })
        .and_then(|v| v.parse().ok())
        .context("Content-Length")?;
    while buf.len() < header_end + length {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            bail!("connection closed mid-body");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok((status, buf[header_end..header_end + length].to_vec()))
}

/// The processes holding the UNIX socket bound at `path`, as "pid command", for error messages.
pub fn socket_holders(path: &Path) -> Vec<String> {
    let Ok(table) = std::fs::read_to_string("/proc/net/unix") else {
        return Vec::new();
    };
    let wanted = path.to_string_lossy();
    // Columns: Num RefCount Protocol Flags Type St Inode Path.
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            (cols.len() >= 8 && cols[7] == wanted).then(|| format!("socket:[{}]", cols[6]))
        })
        .collect();
    let mut holders = Vec::new();
    for proc_dir in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let pid = proc_dir.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let holds = std::fs::read_dir(proc_dir.path().join("fd"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|fd| std::fs::read_link(fd.path()).ok())
            .any(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()));
        if holds {
            let cmdline = std::fs::read(proc_dir.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            holders.push(format!("{pid} {}", cmdline.trim()));
        }
    }
    holders
}

/// A Berth daemon (`volplugin` or `netplugin`) run by a test: its own state dir, admin socket
/// and log, serving Docker's plugin dir (or another one), stopped by pid when dropped.
pub struct PluginDaemon {
    /// `volplugin` or `netplugin`: the binary's and the log's name.
    pub name: &'static str,
    /// The plugin socket's file name in `plugin_dir`.
    pub socket_name: &'static str,
    pub bin: PathBuf,
    pub state_dir: PathBuf,
    pub plugin_dir: PathBuf,
    pub admin_socket: PathBuf,
    pub log_dir: PathBuf,
    /// Flags after `serve --state-dir --plugin-dir --admin-socket`.
    pub args: Vec<String>,
    daemon: Option<Daemon>,
}

impl PluginDaemon {
    pub fn new(
        name: &'static str,
        socket_name: &'static str,
        bin: PathBuf,
        work: &Path,
        plugin_dir: &Path,
    ) -> Self {
        Self {
            name,
            socket_name,
            bin,
            state_dir: work.join("state"),
            plugin_dir: plugin_dir.to_path_buf(),
            admin_socket: work.join("admin.sock"),
            log_dir: work.to_path_buf(),
            args: Vec::new(),
            daemon: None,
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.plugin_dir.join(self.socket_name)
    }

    pub fn is_running(&mut self) -> bool {
        self.daemon.as_mut().is_some_and(|d| d.is_running())
    }

    pub fn pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(|d| d.pid())
    }

    /// Starts the daemon and waits until the plugin socket answers.
    pub fn start(&mut self) -> Result<()> {
        // Right after a kill -9 a child the daemon was spawning (between fork and exec) can hold
        // the listening socket for a moment; only a holder that stays is another server.
        let socket = self.socket();
        let freed = wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
            UnixStream::connect(&socket).is_err()
        });
        if !freed {
            bail!(
                "{} is already served by another process (the demo's or the system's {}?); stop it first. Holders: {:?}",
                socket.display(),
                self.name,
                socket_holders(&socket)
            );
        }
        let mut cmd = Command::new(&self.bin);
        cmd.arg("serve")
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--plugin-dir")
            .arg(&self.plugin_dir)
            .arg("--admin-socket")
            .arg(&self.admin_socket)
            .args(&self.args)
            .env("RUST_LOG", "info");
        let mut daemon = Daemon::spawn(self.name, cmd, &self.log_dir)?;
        let up = wait_until(Duration::from_secs(30), Duration::from_millis(20), || {
            docker_call(&socket, "Plugin.Activate", None).is_ok()
        });
        if !up {
            let tail = daemon.log_tail(30);
            let _ = daemon.stop(Duration::from_secs(5));
            bail!("{} did not come up within 30 s:\n{tail}", self.name);
        }
        self.daemon = Some(daemon);
        Ok(())
    }

    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut daemon) = self.daemon.take() {
            daemon.kill9()?;
        }
        Ok(())
    }

    /// SIGTERM; the daemon must exit 0 within 30 s.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut daemon) = self.daemon.take() {
            let status = daemon.stop(Duration::from_secs(30))?;
            if !status.success() {
                bail!(
                    "{} exited with {status} on SIGTERM:\n{}",
                    self.name,
                    daemon.log_tail(20)
                );
            }
        }
        Ok(())
    }

    pub fn log_tail(&self, n: usize) -> String {
        self.daemon
            .as_ref()
            .map(|d| d.log_tail(n))
            .unwrap_or_else(|| {
                crate::procs::tail_file(&self.log_dir.join(format!("{}.log", self.name)), n)
            })
    }

    pub fn call(&self, method: &str, body: Option<&str>) -> Result<(u16, serde_json::Value)> {
        docker_call(&self.socket(), method, body)
    }

    /// `<bin> ARGS --admin-socket ...` as an operator runs it; its stdout.
    pub fn admin_text(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.bin)
            .args(args)
            .arg("--admin-socket")
            .arg(&self.admin_socket)
            .output()?;
        if !out.status.success() {
            bail!(
                "{} {}: {}",
                self.name,
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The same with `--json`, decoded.
    pub fn admin_json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let mut with_json = args.to_vec();
        with_json.push("--json");
        Ok(serde_json::from_str(&self.admin_text(&with_json)?)?)
    }
}

impl Drop for PluginDaemon {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("stopping {}: {e:#}", self.name);
        }
        // A daemon last killed with -9 leaves its socket file. dockerd scans the plugin dir
        // and retries a socket nobody serves for about 15 s: remove it when nobody answers.
        let socket = self.socket();
        if socket.exists() && UnixStream::connect(&socket).is_err() {
            let _ = std::fs::remove_file(&socket);
        }
    }
}

/// volplugin with the loopfile backend's view of its state dir, for leak checks.
pub struct Volplugin(PluginDaemon);

impl std::ops::Deref for Volplugin {
    type Target = PluginDaemon;
    fn deref(&self) -> &PluginDaemon {
        &self.0
    }
}

impl std::ops::DerefMut for Volplugin {
    fn deref_mut(&mut self) -> &mut PluginDaemon {
        &mut self.0
    }
}

impl Volplugin {
    /// Without a metrics listener, so several can run side by side.
    pub fn new(bin: PathBuf, work: &Path, plugin_dir: &Path) -> Self {
        let mut daemon = PluginDaemon::new("volplugin", "berth-vol.sock", bin, work, plugin_dir);
        daemon.args = vec!["--metrics".into(), "off".into()];
        Self(daemon)
    }

    pub fn images_dir(&self) -> PathBuf {
        self.state_dir.join("images")
    }

    pub fn mount_root(&self) -> PathBuf {
        self.state_dir.join("mounts")
    }

    /// `volplugin volume ls --json` through the admin socket, as an operator runs it.
    pub fn admin_ls(&self) -> Result<Vec<serde_json::Value>> {
        match self.admin_json(&["volume", "ls"])? {
            serde_json::Value::Array(list) => Ok(list),
            other => bail!("volume ls --json is not a list: {other}"),
        }
    }

    /// Leftovers a crash could cause: loop devices on our images that no mount uses, image
    /// files with no volume, mounts under the mount root with no Docker mount counted.
    pub fn leftovers(&self) -> Result<Vec<String>> {
        volume_leftovers(
            &self.admin_ls()?,
            &self.images_dir(),
            &self.mount_root(),
            &mountinfo()?,
        )
    }
}

/// Leftovers of a loopfile volplugin a crash could cause, given its `volume ls --json`, its
/// images dir and mount root, and the mounts of its mount namespace: loop devices on its
/// images that no mount uses, image files with no volume, mounts under the mount root with no
/// Docker mount counted.
pub fn volume_leftovers(
    volumes: &[serde_json::Value],
    images: &Path,
    mount_root: &Path,
    mounts: &[(PathBuf, String)],
) -> Result<Vec<String>> {
    let known: Vec<&str> = volumes.iter().filter_map(|v| v["name"].as_str()).collect();
    let mounted_sources: Vec<&str> = mounts.iter().map(|(_, source)| source.as_str()).collect();
    let mut problems = Vec::new();
    let images = images.canonicalize()?;
    for (dev, backing) in attached_loops() {
        if backing.starts_with(&images) && !mounted_sources.contains(&dev.as_str()) {
            problems.push(format!("orphan loop device {dev} on {}", backing.display()));
        }
    }
    for entry in std::fs::read_dir(&images)? {
        let name = entry?.file_name().to_string_lossy().to_string();
        let volume = name.trim_end_matches(".img");
        if !known.contains(&volume) {
            problems.push(format!("orphan image file {name}"));
        }
    }
    let root = mount_root.canonicalize()?;
    for (point, source) in mounts {
        if let Ok(rest) = point.strip_prefix(&root) {
            let volume = rest.to_string_lossy().to_string();
            let counted = volumes
                .iter()
                .any(|v| v["name"] == volume.as_str() && v["mounts"].as_u64() > Some(0));
            if !counted {
                problems.push(format!("stale mount of {source} at {}", point.display()));
            }
        }
    }
    Ok(problems)
}

/// (mount point, source) of every mount in this namespace.
pub fn mountinfo() -> Result<Vec<(PathBuf, String)>> {
    Ok(parse_mountinfo(&std::fs::read_to_string(
        "/proc/self/mountinfo",
    )?))
}

/// (mount point, source) of every line of a `/proc/PID/mountinfo`.
pub fn parse_mountinfo(text: &str) -> Vec<(PathBuf, String)> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let point = left.split(' ').nth(4)?;
            let source = right.split(' ').nth(1)?;
            Some((
                PathBuf::from(point.replace("\\040", " ")),
                source.to_string(),
            ))
        })
        .collect()
}

/// (device, backing file) of every attached loop device.
pub fn attached_loops() -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let backing = std::fs::read_to_string(e.path().join("loop/backing_file")).ok()?;
            let backing = backing
                .trim_end()
                .trim_end_matches(" (deleted)")
                .to_string();
            Some((format!("/dev/{name}"), PathBuf::from(backing)))
        })
        .collect()
}

/// The Prometheus text a daemon serves on `--metrics ADDR` (loopback TCP).
pub fn scrape_metrics(addr: &str) -> Result<String> {
    let mut s = std::net::TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    Ok(text)
}

/// The value of the sample `series` (name and labels exactly as exposed, e.g.
/// `berth_net_pool_free_addresses{pool="p",subnet="10.0.0.0/24"}`).
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}
