//! Hostile clients against the live daemons.
//!
//! - No local user can starve a daemon: a real volplugin, limited to 4,096 open files, gets
//!   10,000 idle connections and 200 slow ones on its loopback metrics port while a client
//!   drives its plugin socket. Every plugin call must answer, the daemon's descriptors must
//!   stay bounded and come back to their level when the attackers leave, and its memory must
//!   stay bounded.
//! - Malformed requests (integration::hostile: cut JSON, wrong types, hostile ids and names,
//!   bad option values, oversized and deeply nested bodies), over a thousand to each daemon:
//!   each gets an error naming the problem, no daemon panics or restarts, and afterwards its
//!   state is exactly as before.
//!
//! Needs root (volplugin's loopfile backend) and nothing else: no dockerd, no OVS (netplugin
//! runs on its embedded store; malformed requests never reach the datapath).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use integration::harness;
use integration::hostile;
use integration::netplugin::Netplugin;
use integration::plugins::{attached_loops, binary, docker_call, mountinfo, scrape_metrics};
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
    netplugin: PathBuf,
}

fn setup() -> Result<Ctx> {
    harness::require_root_and_tools(&["mkfs.xfs"])?;
    Ok(Ctx {
        dir: tempfile::tempdir()?,
        bin: binary("volplugin")?,
        netplugin: binary("netplugin")?,
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

/// One request as Docker sends it; a daemon may refuse an oversized body before reading it,
/// so a failed write still reads the answer.
fn raw_call(socket: &Path, method: &str, body: &[u8]) -> Result<(u16, serde_json::Value)> {
    let mut s = std::os::unix::net::UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let head = format!(
        "POST /{method} HTTP/1.1\r\nHost: \r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let _ = s.write_all(head.as_bytes()).and_then(|_| s.write_all(body));
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    let text = String::from_utf8_lossy(&reply);
    let status: u16 = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|t| t.get(..3))
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("{method}: no HTTP answer: {text:.200}"))?;
    let json_start = text.find("\r\n\r\n").map_or(text.len(), |i| i + 4);
    let value = serde_json::from_str(&text[json_start..]).unwrap_or(serde_json::Value::Null);
    Ok((status, value))
}

/// Sends every malformed request of `methods`; each must be refused with a bounded error.
fn send_malformed(socket: &Path, methods: &[hostile::Method]) -> Result<usize> {
    let mut sent = 0;
    for m in methods {
        for (method, body) in hostile::malformed(m) {
            let shown = String::from_utf8_lossy(&body[..body.len().min(80)]).to_string();
            let (status, answer) =
                raw_call(socket, method, &body).with_context(|| format!("{method} {shown:?}"))?;
            let err = answer["Err"].as_str().unwrap_or_default();
            ensure!(
                status != 200 && !err.is_empty(),
                "{method} {shown:?} ({} bytes) was not refused: {status} {answer}",
                body.len()
            );
            ensure!(err.len() <= 4096, "{method}: a {} byte error", err.len());
            sent += 1;
        }
    }
    Ok(sent)
}

/// What volplugin holds: its records, image files, loop devices and mounts.
fn volplugin_state(admin: &Path, bin: &Path, state_dir: &Path) -> Result<String> {
    let out = Command::new(bin)
        .args(["volume", "ls", "--json", "--admin-socket"])
        .arg(admin)
        .output()?;
    ensure!(
        out.status.success(),
        "volume ls: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut images: Vec<String> = std::fs::read_dir(state_dir.join("images"))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    images.sort();
    let loops: Vec<String> = attached_loops()
        .into_iter()
        .filter(|(_, b)| b.starts_with(state_dir))
        .map(|(d, b)| format!("{d} {}", b.display()))
        .collect();
    let mounts: Vec<String> = mountinfo()?
        .into_iter()
        .filter(|(p, _)| p.starts_with(state_dir))
        .map(|(p, s)| format!("{} {s}", p.display()))
        .collect();
    Ok(format!(
        "{}\n{images:?}\n{loops:?}\n{mounts:?}",
        String::from_utf8_lossy(&out.stdout)
    ))
}

fn malformed_requests_to_volplugin(c: &Ctx) -> Result<()> {
    let (mut daemon, socket) = start_volplugin(c, "malformed-vol", "off")?;
    let root = c.dir.path().join("malformed-vol");
    let state_dir = root.join("state");
    let admin = root.join("admin.sock");
    let pid = daemon.pid();
    let outcome = (|| -> Result<()> {
        // Something to protect: a volume, mounted.
        let (s, b) = docker_call(
            &socket,
            "VolumeDriver.Create",
            Some(r#"{"Name":"hostile-held","Opts":{"size":"400M"}}"#),
        )?;
        ensure!(s == 200, "{b}");
        let (s, b) = docker_call(
            &socket,
            "VolumeDriver.Mount",
            Some(r#"{"Name":"hostile-held","ID":"keep"}"#),
        )?;
        ensure!(s == 200, "{b}");
        let before = volplugin_state(&admin, &c.bin, &state_dir)?;
        let sent = send_malformed(&socket, &hostile::volume_methods())?;
        ensure!(sent >= 1000, "only {sent} malformed requests");
        ensure!(daemon.is_running(), "volplugin died");
        ensure!(daemon.pid() == pid, "volplugin restarted");
        let after = volplugin_state(&admin, &c.bin, &state_dir)?;
        ensure!(
            before == after,
            "state changed:\nbefore {before}\nafter {after}"
        );
        println!("    {sent} malformed requests refused; state unchanged");
        let (s, _) = docker_call(
            &socket,
            "VolumeDriver.Unmount",
            Some(r#"{"Name":"hostile-held","ID":"keep"}"#),
        )?;
        ensure!(s == 200);
        let (s, _) = docker_call(
            &socket,
            "VolumeDriver.Remove",
            Some(r#"{"Name":"hostile-held"}"#),
        )?;
        ensure!(s == 200);
        ensure!(
            !daemon.log_tail(10_000).contains("panicked"),
            "a panic in the log"
        );
        Ok(())
    })();
    let stopped = daemon.stop(Duration::from_secs(30));
    outcome.map_err(|e| anyhow::anyhow!("{e:#}\n{}", daemon.log_tail(20)))?;
    stopped?;
    Ok(())
}

fn netplugin_state(n: &Netplugin) -> Result<String> {
    let mut out = String::new();
    for what in [
        ["pool", "ls"],
        ["network", "ls"],
        ["endpoint", "ls"],
        ["host", "ls"],
    ] {
        out.push_str(&n.admin_json(&what)?.to_string());
        out.push('\n');
    }
    Ok(out)
}

fn malformed_requests_to_netplugin(c: &Ctx) -> Result<()> {
    let work = c.dir.path().join("malformed-net");
    let plugins = work.join("plugins");
    std::fs::create_dir_all(&plugins)?;
    let args = vec![
        "--metrics".to_string(),
        "off".into(),
        "--ovsdb".into(),
        format!("unix:{}/no-ovs.sock", work.display()),
    ];
    let mut net = Netplugin::new(c.netplugin.clone(), &work, &plugins, args);
    net.start()?;
    let socket = net.socket();
    let outcome = (|| -> Result<()> {
        let pid = net.pid();
        // Something to protect: a pool with a gateway and an address.
        let (s, b) = docker_call(
            &socket,
            "IpamDriver.RequestPool",
            Some(
                r#"{"AddressSpace":"berth-local","Pool":"10.231.98.0/24","SubPool":"","Options":{},"V6":false}"#,
            ),
        )?;
        ensure!(s == 200, "{b}");
        let pool = b["PoolID"].as_str().context("PoolID")?.to_string();
        for body in [
            format!(
                r#"{{"PoolID":"{pool}","Address":"","Options":{{"RequestAddressType":"com.docker.network.gateway"}}}}"#
            ),
            format!(r#"{{"PoolID":"{pool}","Address":"10.231.98.7","Options":{{}}}}"#),
        ] {
            let (s, b) = docker_call(&socket, "IpamDriver.RequestAddress", Some(&body))?;
            ensure!(s == 200, "{b}");
        }
        let before = netplugin_state(&net)?;
        let sent = send_malformed(&socket, &hostile::network_methods(&pool))?;
        ensure!(sent >= 1000, "only {sent} malformed requests");
        ensure!(
            net.is_running() && net.pid() == pid,
            "netplugin died or restarted"
        );
        let after = netplugin_state(&net)?;
        ensure!(
            before == after,
            "state changed:\nbefore {before}\nafter {after}"
        );
        println!("    {sent} malformed requests refused; state unchanged");
        ensure!(
            !net.log_tail(10_000).contains("panicked"),
            "a panic in the log"
        );
        Ok(())
    })();
    let stopped = net.stop();
    outcome?;
    stopped
}

fn main() {
    harness::run(
        "hostile",
        setup,
        &[
            (
                "malformed_requests_to_volplugin",
                malformed_requests_to_volplugin,
            ),
            (
                "malformed_requests_to_netplugin",
                malformed_requests_to_netplugin,
            ),
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
