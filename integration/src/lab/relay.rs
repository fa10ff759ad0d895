//! A TCP relay between one lab host's netplugin and etcd, for tests that drop the real
//! connection at a chosen moment (issue 14 §2: an allocation whose answer is lost).
//!
//! It listens on loopback in the host's network namespace (netplugin is started with
//! `--etcd-endpoints` pointing at it, one port per etcd member) and connects to the members
//! from that namespace too: nothing leaves the lab. Bytes pass through unchanged. When
//! [`Relay::arm`]ed with a marker, the first connection on which the client sends the marker
//! (an allocation's `"claim":"` in the address record it writes) stops passing the server's
//! bytes back from that moment on, goes on passing the client's for [`CUT_AFTER`] (the
//! request is complete and applied by etcd), then is closed on both sides: the write landed,
//! its answer never arrived. The token after the marker is remembered, and every later time a
//! client sends it again on any connection is counted ([`Relay::resent`]): a write sent again
//! after its answer was lost.
//!
//! Every thread is bounded: sockets poll a stop flag every [`POLL`]; dropping the relay stops
//! and joins them.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

use super::node::{in_netns, Node};

/// How long the client's bytes still pass after the marker, before the connection is cut.
pub const CUT_AFTER: Duration = Duration::from_millis(500);
/// How often blocked threads look at the stop flag.
const POLL: Duration = Duration::from_millis(100);
/// Bytes kept from the previous read, so a marker and its token split across reads are seen.
const CARRY: usize = 256;
/// The longest token remembered after the marker.
const TOKEN_MAX: usize = 64;

pub struct Relay {
    /// `127.0.0.1:<port>` in the node's namespace, one per upstream, in order.
    ports: Vec<u16>,
    shared: Arc<Shared>,
    acceptors: Vec<JoinHandle<()>>,
}

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    /// The marker of the next cut (None: pass everything).
    armed: Mutex<Option<Vec<u8>>>,
    /// The token that followed the marker in the cut request.
    cut_token: Mutex<Option<Vec<u8>>>,
    /// Times a client sent the cut token again after the cut.
    resent: AtomicUsize,
    pumps: Mutex<Vec<JoinHandle<()>>>,
}

/// One relayed connection.
struct Conn {
    client: TcpStream,
    upstream: TcpStream,
    /// The server's bytes are dropped (set under this lock, so none is written after).
    holding: Mutex<bool>,
}

impl Relay {
    /// Listens in `node`'s network namespace, one port for each of `upstreams`.
    pub fn start(node: &Node, upstreams: &[SocketAddr]) -> Result<Relay> {
        let shared = Arc::new(Shared::default());
        let mut relay = Relay {
            ports: Vec::new(),
            shared: shared.clone(),
            acceptors: Vec::new(),
        };
        for upstream in upstreams {
            let listener = in_netns(&node.netns, || TcpListener::bind("127.0.0.1:0"))?
                .context("relay listener")?;
            listener.set_nonblocking(true)?;
            relay.ports.push(listener.local_addr()?.port());
            let (shared, netns, upstream) = (shared.clone(), node.netns.clone(), *upstream);
            relay.acceptors.push(
                std::thread::Builder::new()
                    .name("relay-accept".into())
                    .spawn(move || accept(listener, netns, upstream, shared))?,
            );
        }
        Ok(relay)
    }

    /// `http://127.0.0.1:<port>,...`: what `--etcd-endpoints` takes.
    pub fn endpoints(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Cuts the next connection whose client sends `marker` (see the module doc); forgets the
    /// previous cut.
    pub fn arm(&self, marker: &[u8]) {
        *lock(&self.shared.cut_token) = None;
        self.shared.resent.store(0, Ordering::SeqCst);
        *lock(&self.shared.armed) = Some(marker.to_vec());
    }

    /// Disarms; true if it had cut a connection.
    pub fn disarm(&self) -> bool {
        *lock(&self.shared.armed) = None;
        lock(&self.shared.cut_token).is_some()
    }

    /// The token after the marker in the request that was cut, once it was.
    pub fn cut_token(&self) -> Option<String> {
        lock(&self.shared.cut_token)
            .as_ref()
            .map(|t| String::from_utf8_lossy(t).into_owned())
    }

    /// Times a client sent the cut token again after the cut.
    pub fn resent(&self) -> usize {
        self.shared.resent.load(Ordering::SeqCst)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for t in self.acceptors.drain(..) {
            let _ = t.join();
        }
        let pumps: Vec<_> = lock(&self.shared.pumps).drain(..).collect();
        for t in pumps {
            let _ = t.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn accept(listener: TcpListener, netns: PathBuf, upstream: SocketAddr, shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        let client = match listener.accept() {
            Ok((c, _)) => c,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(_) => {
                std::thread::sleep(POLL);
                continue;
            }
        };
        let connected = in_netns(&netns, || {
            TcpStream::connect_timeout(&upstream, Duration::from_secs(2))
        });
        let Ok(Ok(upstream)) = connected else {
            // The client sees its connection refused, as with an unreachable member.
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        let conn = (|| -> std::io::Result<Arc<Conn>> {
            client.set_nonblocking(false)?;
            for s in [&client, &upstream] {
                s.set_read_timeout(Some(POLL))?;
                s.set_nodelay(true)?;
            }
            Ok(Arc::new(Conn {
                client,
                upstream,
                holding: Mutex::new(false),
            }))
        })();
        let Ok(conn) = conn else { continue };
        let (up, down) = (conn.clone(), shared.clone());
        let mut pumps = lock(&shared.pumps);
        pumps.retain(|t| !t.is_finished());
        if let Ok(t) = std::thread::Builder::new()
            .name("relay-up".into())
            .spawn(move || pump_up(&up, &down))
        {
            pumps.push(t);
        }
        let (conn2, shared2) = (conn, shared.clone());
        if let Ok(t) = std::thread::Builder::new()
            .name("relay-down".into())
            .spawn(move || pump_down(&conn2, &shared2))
        {
            pumps.push(t);
        }
    }
}

/// Client → server, watching for the marker and for the cut token sent again.
fn pump_up(conn: &Conn, shared: &Shared) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut carry: Vec<u8> = Vec::new();
    let mut cut_at: Option<Instant> = None;
    let mut client = &conn.client;
    let mut upstream = &conn.upstream;
    loop {
        if shared.stop.load(Ordering::SeqCst) || cut_at.is_some_and(|t| t.elapsed() >= CUT_AFTER) {
            break;
        }
        let n = match client.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(_) => break,
        };
        let mut window = std::mem::take(&mut carry);
        let fresh_from = window.len();
        window.extend_from_slice(&buf[..n]);
        // The cut token again (only matches ending in this read's bytes: none counted twice).
        if let Some(token) = lock(&shared.cut_token).clone() {
            let again = find_all(&window, &token)
                .filter(|&i| i + token.len() > fresh_from)
                .count();
            shared.resent.fetch_add(again, Ordering::SeqCst);
        }
        if cut_at.is_none() {
            let mut armed = lock(&shared.armed);
            if let Some(token) = armed.as_deref().and_then(|m| token_after(&window, m)) {
                *lock(&conn.holding) = true;
                *lock(&shared.cut_token) = Some(token);
                *armed = None;
                cut_at = Some(Instant::now());
            }
        }
        if upstream.write_all(&buf[..n]).is_err() {
            break;
        }
        let keep = window.len().saturating_sub(CARRY);
        carry = window.split_off(keep);
    }
    let _ = conn.client.shutdown(Shutdown::Both);
    let _ = conn.upstream.shutdown(Shutdown::Both);
}

/// Server → client, unless holding.
fn pump_down(conn: &Conn, shared: &Shared) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut upstream = &conn.upstream;
    let mut client = &conn.client;
    while !shared.stop.load(Ordering::SeqCst) {
        let n = match upstream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(_) => break,
        };
        let holding = lock(&conn.holding);
        if *holding {
            continue;
        }
        if client.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = conn.client.shutdown(Shutdown::Both);
    let _ = conn.upstream.shutdown(Shutdown::Both);
}

fn find_all<'a>(hay: &'a [u8], needle: &'a [u8]) -> impl Iterator<Item = usize> + 'a {
    (0..(hay.len() + 1).saturating_sub(needle.len()))
        .filter(move |&i| !needle.is_empty() && hay[i..].starts_with(needle))
}

/// The bytes after `marker` in `window` up to the next `"`, once they are complete.
fn token_after(window: &[u8], marker: &[u8]) -> Option<Vec<u8>> {
    let start = find_all(window, marker).next()? + marker.len();
    let rest = &window[start..];
    let end = rest.iter().take(TOKEN_MAX).position(|&b| b == b'"')?;
    Some(rest[..end].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_matches() {
        let w = br#"xx"claim":"0123abcd","y"#;
        assert_eq!(token_after(w, br#""claim":""#).unwrap(), b"0123abcd");
        assert!(token_after(br#"xx"claim":"0123"#, br#""claim":""#).is_none());
        assert_eq!(find_all(b"abcabc", b"bc").collect::<Vec<_>>(), vec![1, 4]);
    }
}
