//! Traffic between lab containers, from the test process: ping from inside a container's
//! network namespace with the machine's busybox, and a TCP sender that shuts its socket down
//! cleanly (busybox `nc` as a sender can drop data at the end).

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context as _, Result};

use super::host::Host;
use crate::procs::{run_with_timeout, wait_until};

/// Parsed `X packets transmitted, Y packets received`.
pub fn ping_counts(out: &str) -> Option<(u32, u32)> {
    let line = out.lines().find(|l| l.contains("packets transmitted"))?;
    let mut nums = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok());
    Some((nums.next()?, nums.next()?))
}

/// The `seq=` of the first reply in busybox ping's output.
pub fn first_reply_seq(out: &str) -> Option<u32> {
    out.lines()
        .find(|l| l.contains("bytes from"))
        .and_then(|l| l.split("seq=").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
}

/// busybox ping from inside the network namespace of `pid`: its whole output.
pub fn ping_raw(pid: u32, ip: &str, args: &[&str], limit: Duration) -> Result<String> {
    let mut c = std::process::Command::new("nsenter");
    c.args(["-t", &pid.to_string(), "-n", "busybox", "ping"])
        .args(args)
        .arg(ip);
    let out = run_with_timeout(c, None, limit)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Sends `bytes` over TCP from inside the network namespace of `pid` (a thread that setns'd),
/// shutting the socket down cleanly so nothing is dropped.
pub fn tcp_send_from(pid: u32, to: SocketAddr, bytes: usize) -> Result<()> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
    std::thread::spawn(move || -> Result<()> {
        // SAFETY: setns on this thread only; the fd is valid for the call.
        let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        ensure!(rc == 0, "setns: {}", std::io::Error::last_os_error());
        // The receiver (`docker exec -d ... nc -l`) may not listen yet: refused is retried
        // for a few seconds, anything else fails at once.
        let t0 = std::time::Instant::now();
        let mut s = loop {
            match TcpStream::connect_timeout(&to, Duration::from_secs(5)) {
                Err(e)
                    if e.kind() == std::io::ErrorKind::ConnectionRefused
                        && t0.elapsed() < Duration::from_secs(5) =>
                {
                    std::thread::sleep(Duration::from_millis(100));
                }
                other => break other.with_context(|| format!("connect {to}"))?,
            }
        };
        s.set_write_timeout(Some(Duration::from_secs(30)))?;
        let chunk = vec![0x5au8; 64 * 1024];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len());
            s.write_all(&chunk[..n])?;
            left -= n;
        }
        s.shutdown(std::net::Shutdown::Write)?;
        Ok(())
    })
    .join()
    .map_err(|_| anyhow!("sender thread panicked"))?
}

/// TCP from container `from` on `hf` to `to` on `ht` at `to_ip` (busybox nc receiving, a
/// clean sender in `from`'s namespace); returns Mbit/s as the receiver counted the bytes.
pub fn tcp_transfer(
    hf: &Host,
    from: &str,
    ht: &Host,
    to: &str,
    to_ip: &str,
    bytes: usize,
) -> Result<f64> {
    // runc exec right after a container start sometimes fails on a loaded machine ("runc did
    // not terminate successfully"): a few tries.
    let listen = [
        "exec",
        "-d",
        to,
        "sh",
        "-c",
        "rm -f /tmp/got; nc -l -p 5001 | wc -c > /tmp/got",
    ];
    let mut res = ht.ok(&listen);
    for _ in 0..3 {
        if res.is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
        res = ht.ok(&listen);
    }
    res?;
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    tcp_send_from(
        hf.container_pid(from)?,
        format!("{to_ip}:5001").parse()?,
        bytes,
    )?;
    let mut got = String::new();
    let done = wait_until(Duration::from_secs(60), Duration::from_millis(50), || {
        got = ht.ok(&["exec", to, "cat", "/tmp/got"]).unwrap_or_default();
        !got.is_empty()
    });
    ensure!(
        done && got.trim() == bytes.to_string(),
        "{from} → {to}: received {got:?} of {bytes} bytes"
    );
    Ok(bytes as f64 * 8.0 / 1e6 / t0.elapsed().as_secs_f64())
}
