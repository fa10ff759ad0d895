//! No local user can starve a daemon (issue 15 §1): a real volplugin, limited to 4,096 open
//! files, gets 10,000 idle connections and 200 slow ones on its loopback metrics port while a
//! client drives its plugin socket. Every plugin call must answer, the daemon's descriptors
//! must stay bounded and come back to their level when the attackers leave, and its memory
//! must stay bounded. Needs root (volplugin's loopfile backend) and nothing else: no dockerd.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use integration::harness;
use integration::plugins::{binary, docker_call, scrape_metrics};
use integration::procs::{wait_until, Daemon};

/// Open files the daemon may have: well under the attackers' count, as on a host whose unit
/// sets no LimitNOFILE and whose default is low.
const DAEMON_NOFILE: u64 = 4096;
const IDLE_ATTACKERS: usize = 10_000;
const SLOW_ATTACKERS: usize = 200;
const PLUGIN_CALLS: usize = 300;

struct Ctx {
    dir: tempfile::TempDir,
    bin: PathBuf,
}

fn setup() -> Result<Ctx> {
    harness::require_root_and_tools(&[])?;
    Ok(Ctx {
        dir: tempfile::tempdir()?,
        bin: binary("volplugin")?,
    })
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn open_fds(pid: u32) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS in /proc/PID/status")
}

/// This process needs a descriptor per attacker: raise its own limit (root may).
fn raise_own_nofile(want: u64) -> Result<()> {
    let limit = libc::rlimit {
        rlim_cur: want,
        rlim_max: want,
    };
    let mut current = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `current` is a live, exclusively borrowed rlimit for the kernel to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut current) } == 0
        && current.rlim_cur >= want
    {
        return Ok(());
    }
    // SAFETY: `limit` is a live rlimit the kernel only reads.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    ensure!(
        rc == 0,
        "raising this test's open-file limit to {want}: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

fn start_volplugin(c: &Ctx, name: &str, metrics: &str) -> Result<(Daemon, PathBuf)> {
    let root = c.dir.path().join(name);
    let plugins = root.join("plugins");
    std::fs::create_dir_all(&plugins)?;
    let mut cmd = Command::new(&c.bin);
    cmd.arg("serve")
        .arg("--state-dir")
        .arg(root.join("state"))
        .arg("--plugin-dir")
        .arg(&plugins)
        .arg("--admin-socket")
        .arg(root.join("admin.sock"))
        .args(["--metrics", metrics, "--docker-socket", "/nonexistent"])
        .env("RUST_LOG", "warn");
    // SAFETY: setrlimit is async-signal-safe and touches only the struct on this stack.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: DAEMON_NOFILE,
                rlim_max: DAEMON_NOFILE,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let daemon = Daemon::spawn(name, cmd, &root)?;
    let socket = plugins.join("berth-vol.sock");
    let up = wait_until(Duration::from_secs(30), Duration::from_millis(20), || {
        docker_call(&socket, "Plugin.Activate", None).is_ok()
    });
    ensure!(up, "volplugin did not come up:\n{}", daemon.log_tail(20));
    Ok((daemon, socket))
}

fn plugin_calls_answer(socket: &Path, count: usize) -> Result<()> {
    for i in 0..count {
        let method = if i % 2 == 0 {
            "VolumeDriver.List"
        } else {
            "VolumeDriver.Capabilities"
        };
        let (status, body) = docker_call(socket, method, Some("{}"))
            .with_context(|| format!("plugin call {i} of {count} ({method})"))?;
        ensure!(status == 200, "{method}: {status} {body}");
    }
    Ok(())
}

fn idle_and_slow_connections_on_metrics(c: &Ctx) -> Result<()> {
    raise_own_nofile((IDLE_ATTACKERS + SLOW_ATTACKERS + 1024) as u64)?;
    let addr = format!("127.0.0.1:{}", free_port()?);
    let (mut daemon, socket) = start_volplugin(c, "metrics-flood", &addr)?;
    let pid = daemon.pid();
    let outcome = (|| -> Result<()> {
        ensure!(
            scrape_metrics(&addr)?.contains("berth_vol_"),
            "a scrape works"
        );
        plugin_calls_answer(&socket, 10)?;
        let fds_before = open_fds(pid)?;
        let rss_before = rss_kib(pid)?;
        // Idle connections that never send a byte.
        let mut attackers = Vec::with_capacity(IDLE_ATTACKERS + SLOW_ATTACKERS);
        for i in 0..IDLE_ATTACKERS {
            attackers
                .push(TcpStream::connect(&addr).with_context(|| format!("idle attacker {i}"))?);
        }
        // Slow ones: headers a byte at a time, and a body announced but never sent.
        for i in 0..SLOW_ATTACKERS {
            let Ok(mut s) = TcpStream::connect(&addr) else {
                continue;
            };
            let _ = if i % 2 == 0 {
                s.write_all(b"GET /metr")
            } else {
                s.write_all(b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{")
            };
            attackers.push(s);
        }
        // Docker's calls go on meanwhile, every one answered.
        plugin_calls_answer(&socket, PLUGIN_CALLS)?;
        let fds_during = open_fds(pid)?;
        let rss_during = rss_kib(pid)?;
        println!(
            "    {} attackers held; daemon fds {fds_before} -> {fds_during}, RSS {} -> {} MiB",
            attackers.len(),
            rss_before / 1024,
            rss_during / 1024
        );
        // The metrics listener holds at most its cap (32) of them.
        ensure!(
            fds_during <= fds_before + 64,
            "daemon fds grew from {fds_before} to {fds_during} with attackers connected"
        );
        ensure!(
            rss_during <= rss_before + 64 * 1024,
            "daemon RSS grew from {rss_before} KiB to {rss_during} KiB"
        );
        drop(attackers);
        let settled = wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
            open_fds(pid).is_ok_and(|n| n <= fds_before + 2)
        });
        ensure!(
            settled,
            "daemon fds at {} after the attackers left (before: {fds_before})",
            open_fds(pid)?
        );
        // An announced body gets its refusal at once: GET /metrics takes none.
        let mut slow = TcpStream::connect(&addr)?;
        slow.set_read_timeout(Some(Duration::from_secs(30)))?;
        slow.write_all(b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{")?;
        let mut reply = [0u8; 64];
        let n = slow.read(&mut reply)?;
        let reply = String::from_utf8_lossy(&reply[..n]).to_string();
        ensure!(
            reply.starts_with("HTTP/1.1 413"),
            "slow body answered {reply:?}"
        );
        drop(slow);
        ensure!(
            scrape_metrics(&addr)?
                .contains("berth_vol_connections_refused_total{listener=\"metrics\"}"),
            "refusals are counted"
        );
        plugin_calls_answer(&socket, 10)
    })();
    let stopped = daemon.stop(Duration::from_secs(30));
    outcome.map_err(|e| anyhow::anyhow!("{e:#}\n{}", daemon.log_tail(20)))?;
    stopped?;
    Ok(())
}

fn metrics_beyond_loopback_needs_the_flag(c: &Ctx) -> Result<()> {
    let out = Command::new(&c.bin)
        .arg("serve")
        .arg("--state-dir")
        .arg(c.dir.path().join("remote-state"))
        .arg("--plugin-dir")
        .arg(c.dir.path().join("remote-plugins"))
        .args(["--metrics", "0.0.0.0:1"])
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "started with --metrics 0.0.0.0");
    ensure!(
        stderr.contains("--metrics-allow-remote"),
        "the error names the flag: {stderr}"
    );
    Ok(())
}

fn main() {
    harness::run(
        "starvation",
        setup,
        &[
            (
                "idle_and_slow_connections_on_metrics",
                idle_and_slow_connections_on_metrics,
            ),
            (
                "metrics_beyond_loopback_needs_the_flag",
                metrics_beyond_loopback_needs_the_flag,
            ),
        ],
    );
}
