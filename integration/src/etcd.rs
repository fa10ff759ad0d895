//! A real etcd cluster for tests and benchmarks: N members of Debian's `etcd` (3.4) on
//! 127.0.0.1 with free ports, data dirs in their own temporary directory (on /dev/shm when
//! there is one, so fsync costs little), each member a [`Daemon`] stopped by its pid.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::procs::{wait_until, Daemon};

pub struct EtcdMember {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub data_dir: PathBuf,
    daemon: Option<Daemon>,
}

impl EtcdMember {
    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    pub fn is_running(&mut self) -> bool {
        self.daemon.as_mut().is_some_and(|d| d.is_running())
    }

    /// `GET /health` answers `"health":"true"` (the member is part of a quorum).
    pub fn healthy(&self) -> bool {
        http_get(self.client_port, "/health", "health")
            .is_ok_and(|b| b.contains("\"health\":\"true\""))
    }
}

pub struct EtcdCluster {
    pub members: Vec<EtcdMember>,
    initial_cluster: String,
    token: String,
    dir: tempfile::TempDir,
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A bare HTTP GET on loopback; the body so far once it holds `want` (etcd keeps
/// connections open, so this does not wait for the end).
fn http_get(port: u16, path: &str, want: &str) -> Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if String::from_utf8_lossy(&out).contains(want) {
            break;
        }
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    Ok(text.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
}

impl EtcdCluster {
    /// Starts `n` members and waits (up to 30 s) until every one is healthy.
    pub fn start(n: usize) -> Result<Self> {
        if crate::harness::find_binary("etcd").is_none() {
            bail!("etcd not found: install Debian's etcd-server (apt-get install etcd-server)");
        }
        let base = if Path::new("/dev/shm").is_dir() {
            "/dev/shm"
        } else {
            "/tmp"
        };
        let dir = tempfile::Builder::new()
            .prefix("berth-etcd-")
            .tempdir_in(base)?;
        let mut members = Vec::new();
        for i in 0..n {
            members.push(EtcdMember {
                name: format!("m{i}"),
                client_port: free_port()?,
                peer_port: free_port()?,
                data_dir: dir.path().join(format!("m{i}")),
                daemon: None,
            });
        }
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Self {
            members,
            initial_cluster,
            token: format!("berth-test-{}", std::process::id()),
            dir,
        };
        for i in 0..n {
            cluster.spawn(i)?;
        }
        cluster.wait_healthy(Duration::from_secs(30))?;
        Ok(cluster)
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        let m = &self.members[i];
        let mut cmd = Command::new("etcd");
        cmd.args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.data_dir)
            .args(["--listen-client-urls", &m.client_url()])
            .args(["--advertise-client-urls", &m.client_url()])
            .args(["--listen-peer-urls", &m.peer_url()])
            .args(["--initial-advertise-peer-urls", &m.peer_url()])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &self.token])
            // Quick elections on loopback: tests kill members.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--logger", "zap", "--log-level", "warn"]);
        let daemon = Daemon::spawn(&format!("etcd-{}", m.name), cmd, self.dir.path())?;
        self.members[i].daemon = Some(daemon);
        Ok(())
    }

    /// Comma-separated client URLs of every member (as `--etcd-endpoints` takes them).
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| m.client_url())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Waits until every running member is healthy.
    pub fn wait_healthy(&mut self, timeout: Duration) -> Result<()> {
        let ok = wait_until(timeout, Duration::from_millis(100), || {
            self.members
                .iter_mut()
                .all(|m| !m.is_running() || m.healthy())
        });
        if !ok {
            let logs: Vec<String> = self
                .members
                .iter()
                .map(|m| {
                    format!(
                        "{}: {}",
                        m.name,
                        crate::procs::tail_file(
                            &self.dir.path().join(format!("etcd-{}.log", m.name)),
                            10
                        )
                    )
                })
                .collect();
            bail!(
                "etcd members not healthy within {timeout:?}:\n{}",
                logs.join("\n")
            );
        }
        Ok(())
    }

    /// SIGKILL member `i` (a crash).
    pub fn kill(&mut self, i: usize) -> Result<()> {
        if let Some(mut d) = self.members[i].daemon.take() {
            d.kill9().context("killing an etcd member")?;
        }
        Ok(())
    }

    /// SIGSTOP member `i`: it keeps its connections and answers nothing (a stalled disk or
    /// VM), harder on clients than a crash. [`EtcdCluster::resume`] undoes it; a paused
    /// member is still killed at teardown.
    pub fn pause(&mut self, i: usize) -> Result<()> {
        self.signal(i, nix::sys::signal::Signal::SIGSTOP)
    }

    pub fn resume(&mut self, i: usize) -> Result<()> {
        self.signal(i, nix::sys::signal::Signal::SIGCONT)
    }

    fn signal(&mut self, i: usize, sig: nix::sys::signal::Signal) -> Result<()> {
        match self.members[i].daemon.as_mut() {
            Some(d) => d.signal(sig),
            None => bail!("member {i} is not running"),
        }
    }

    /// Starts member `i` again on its data dir (it rejoins the cluster).
    pub fn restart(&mut self, i: usize) -> Result<()> {
        if self.members[i].daemon.is_some() {
            bail!("member {i} is running");
        }
        self.spawn(i)
    }

    pub fn log_dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut d) = m.daemon.take() {
                let _ = d.stop(Duration::from_secs(5));
            }
        }
    }
}
