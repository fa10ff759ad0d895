//! A netplugin daemon for tests and benchmarks: its own state dir, admin socket and OVS.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::plugins::docker_call;
use crate::procs::{wait_until, Daemon};

pub struct Netplugin {
    pub bin: PathBuf,
    pub state_dir: PathBuf,
    pub plugin_dir: PathBuf,
    pub admin_socket: PathBuf,
    pub log_dir: PathBuf,
    /// `--ovsdb`, `--ovs-rundir`, `--bridge`, ... and anything else.
    pub args: Vec<String>,
    daemon: Option<Daemon>,
}

impl Netplugin {
    pub fn new(bin: PathBuf, work: &Path, plugin_dir: &Path, args: Vec<String>) -> Self {
        Self {
            bin,
            state_dir: work.join("state"),
            plugin_dir: plugin_dir.to_path_buf(),
            admin_socket: work.join("admin.sock"),
            log_dir: work.to_path_buf(),
            args,
            daemon: None,
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.plugin_dir.join("berth-net.sock")
    }

    pub fn is_running(&mut self) -> bool {
        self.daemon.as_mut().is_some_and(|d| d.is_running())
    }

    pub fn pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(|d| d.pid())
    }

    /// Starts the daemon and waits until the plugin socket answers.
    pub fn start(&mut self) -> Result<()> {
        if UnixStream::connect(self.socket()).is_ok() {
            bail!(
                "{} is already served by another process (a netplugin of the demo or the system?); stop it first",
                self.socket().display()
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
        let mut daemon = Daemon::spawn("netplugin", cmd, &self.log_dir)?;
        let socket = self.socket();
        let up = wait_until(Duration::from_secs(30), Duration::from_millis(20), || {
            docker_call(&socket, "Plugin.Activate", None).is_ok()
        });
        if !up {
            let tail = daemon.log_tail(30);
            let _ = daemon.stop(Duration::from_secs(5));
            bail!("netplugin did not come up within 30 s:\n{tail}");
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

    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut daemon) = self.daemon.take() {
            let status = daemon.stop(Duration::from_secs(30))?;
            if !status.success() {
                bail!(
                    "netplugin exited with {status} on SIGTERM:\n{}",
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
            .unwrap_or_else(|| crate::procs::tail_file(&self.log_dir.join("netplugin.log"), n))
    }

    pub fn call(&self, method: &str, body: Option<&str>) -> Result<(u16, serde_json::Value)> {
        docker_call(&self.socket(), method, body)
    }

    /// `netplugin ARGS --json --admin-socket ...` as an operator runs it.
    pub fn admin_json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let out = Command::new(&self.bin)
            .args(args)
            .arg("--json")
            .arg("--admin-socket")
            .arg(&self.admin_socket)
            .output()?;
        if !out.status.success() {
            bail!(
                "netplugin {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// The same as a table (for the human-readable output checks).
    pub fn admin_text(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.bin)
            .args(args)
            .arg("--admin-socket")
            .arg(&self.admin_socket)
            .output()?;
        if !out.status.success() {
            bail!(
                "netplugin {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Netplugin {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("stopping netplugin: {e:#}");
        }
    }
}
