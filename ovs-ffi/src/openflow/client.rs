//! The connection: hello/version negotiation, request/reply correlation by xid, echo
//! answering, barrier-confirmed batches, bundles, and a transparent reconnect.

use super::codec::{self, Frame, HDR};
use super::types::*;
use crate::wire;
use crate::{Error, Result};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// Client settings.
#[derive(Debug, Clone)]
pub struct OfConfig {
    /// Versions we offer; the highest one the switch also speaks is used.
    pub versions: Vec<OfVersion>,
    /// Bound on every operation (connect, hello, request and its replies).
    pub timeout: Duration,
}

impl Default for OfConfig {
    fn default() -> Self {
        OfConfig {
            versions: vec![OfVersion::V1_3, OfVersion::V1_4, OfVersion::V1_5],
            timeout: Duration::from_secs(10),
        }
    }
}

/// The management socket of `bridge` under an OVS run directory.
pub fn mgmt_socket(rundir: impl AsRef<Path>, bridge: &str) -> PathBuf {
    rundir.as_ref().join(format!("{bridge}.mgmt"))
}

struct Conn {
    rd: BufReader<OwnedReadHalf>,
    wr: OwnedWriteHalf,
    version: OfVersion,
}

/// What ends a request.
#[derive(Clone, Copy)]
enum Wait {
    /// A reply of this type with the last xid.
    Reply(u8),
    /// Multipart replies with the last xid, until one without the MORE flag.
    Multipart,
    /// A bundle control reply of this control type with the last xid.
    Bundle(u16),
}

struct Req {
    bytes: Vec<u8>,
    first_xid: u32,
    last_xid: u32,
    wait: Wait,
}

/// An OpenFlow connection to one bridge. Safe to share; requests are serialized.
pub struct OfClient {
    path: PathBuf,
    cfg: OfConfig,
    conn: Mutex<Option<Conn>>,
    xid: AtomicU32,
    bundle_id: AtomicU32,
}

fn io(e: std::io::Error, path: &Path) -> Error {
    if matches!(
        e.kind(),
        std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::BrokenPipe
            | std::io::ErrorKind::ConnectionReset
    ) {
        Error::Disconnected(path.display().to_string())
    } else {
        Error::Io {
            what: path.display().to_string(),
            source: e,
        }
    }
}

async fn read_frame(rd: &mut BufReader<OwnedReadHalf>, path: &Path) -> Result<Frame> {
    let mut h = [0u8; HDR];
    rd.read_exact(&mut h).await.map_err(|e| io(e, path))?;
    let (version, typ, len, xid) =
        codec::parse_header(&h).map_err(|r| Error::protocol(&path.display().to_string(), r))?;
    let mut body = vec![0u8; len - HDR];
    rd.read_exact(&mut body).await.map_err(|e| io(e, path))?;
    Ok(Frame {
        version,
        typ,
        xid,
        body,
    })
}

impl OfClient {
    /// Connects (hello + version negotiation) to a `.mgmt` socket.
    pub async fn connect(path: impl AsRef<Path>, cfg: OfConfig) -> Result<OfClient> {
        let c = OfClient::new(path, cfg);
        let conn = tokio::time::timeout(c.cfg.timeout, c.open())
            .await
            .map_err(|_| c.timeout("OpenFlow hello"))??;
        *c.conn.lock().await = Some(conn);
        Ok(c)
    }

    /// A client that connects on first use (and again after the switch restarted).
    pub fn new(path: impl AsRef<Path>, cfg: OfConfig) -> OfClient {
        OfClient {
            path: path.as_ref().to_path_buf(),
            cfg,
            conn: Mutex::new(None),
            xid: AtomicU32::new(1),
            bundle_id: AtomicU32::new(1),
        }
    }

    fn peer(&self) -> String {
        self.path.display().to_string()
    }

    fn timeout(&self, what: &str) -> Error {
        Error::Timeout {
            what: format!("{what} on {}", self.peer()),
            after: self.cfg.timeout,
        }
    }

    fn next_xid(&self) -> u32 {
        self.xid.fetch_add(1, Ordering::Relaxed)
    }

    async fn open(&self) -> Result<Conn> {
        let s = UnixStream::connect(&self.path)
            .await
            .map_err(|e| Error::Connect {
                path: self.peer(),
                source: e,
            })?;
        let (rd, mut wr) = s.into_split();
        let mut rd = BufReader::with_capacity(256 * 1024, rd);
        if self.cfg.versions.is_empty() {
            return Err(Error::invalid("OpenFlow versions", "at least one"));
        }
        wr.write_all(&codec::hello(&self.cfg.versions, self.next_xid()))
            .await
            .map_err(|e| io(e, &self.path))?;
        let f = read_frame(&mut rd, &self.path).await?;
        match f.typ {
            wire::OFPT_HELLO => {}
            wire::OFPT_ERROR => {
                let e = codec::parse_error(f.version, &f.body)
                    .map_err(|r| Error::protocol(&self.peer(), r))?;
                return Err(Error::OpenFlow(e));
            }
            t => {
                return Err(Error::protocol(
                    &self.peer(),
                    format!("expected hello, got message type {t}"),
                ))
            }
        }
        let version = codec::negotiate(&self.cfg.versions, &f)
            .map_err(|r| Error::protocol(&self.peer(), r))?;
        tracing::debug!(path = %self.peer(), %version, "OpenFlow connected");
        Ok(Conn { rd, wr, version })
    }

    /// The negotiated version (connecting if needed).
    pub async fn version(&self) -> Result<OfVersion> {
        self.run(|v, _| Ok((v, None))).await.map(|(v, _)| v)
    }

    /// Runs one request, connecting first if needed. A request that fails because a reused
    /// connection turned out dead (the switch restarted) is retried once on a new one.
    async fn run<T>(
        &self,
        build: impl Fn(OfVersion, &dyn Fn() -> u32) -> Result<(T, Option<Req>)>,
    ) -> Result<(T, Vec<Frame>)> {
        let deadline = Instant::now() + self.cfg.timeout;
        let mut guard = tokio::time::timeout_at(deadline, self.conn.lock())
            .await
            .map_err(|_| self.timeout("waiting for the OpenFlow connection"))?;
        for attempt in 0..2 {
            let fresh = guard.is_none();
            let conn = match guard.as_mut() {
                Some(c) => c,
                None => {
                    let c = tokio::time::timeout_at(deadline, self.open())
                        .await
                        .map_err(|_| self.timeout("OpenFlow hello"))??;
                    guard.insert(c)
                }
            };
            let xid = || self.next_xid();
            let (out, req) = build(conn.version, &xid)?;
            let Some(req) = req else {
                return Ok((out, Vec::new()));
            };
            match tokio::time::timeout_at(deadline, exchange(conn, &req, &self.path)).await {
                Ok(Ok(frames)) => return Ok((out, frames)),
                Ok(Err((e, _))) if matches!(e, Error::OpenFlow(_)) => return Err(e),
                Ok(Err((e, stale))) => {
                    *guard = None;
                    if attempt == 0 && stale && !fresh {
                        tracing::debug!(error = %e, "OpenFlow connection was stale; reconnecting");
                        continue;
                    }
                    return Err(e);
                }
                Err(_) => {
                    // Replies may still be in flight: this connection's state is unknown.
                    *guard = None;
                    return Err(self.timeout("OpenFlow request"));
                }
            }
        }
        Err(Error::Disconnected(self.peer()))
    }

    /// Round trip to the switch.
    pub async fn echo(&self) -> Result<()> {
        self.run(|v, xid| {
            let x = xid();
            Ok((
                (),
                Some(single(
                    codec::simple(v, wire::OFPT_ECHO_REQUEST, x, b"berth"),
                    x,
                    Wait::Reply(wire::OFPT_ECHO_REPLY),
                )),
            ))
        })
        .await
        .map(|_| ())
    }

    pub async fn barrier(&self) -> Result<()> {
        self.flow_mods(&[]).await
    }

    /// Sends the flow_mods back to back followed by a barrier; returns when the switch has
    /// processed all of them. The first error the switch reports (if any) is returned; flow
    /// mods before and after it still took effect (use [`OfClient::bundle`] for all or none).
    pub async fn flow_mods(&self, mods: &[FlowMod]) -> Result<()> {
        self.run(|v, xid| {
            let mut bytes = Vec::with_capacity(mods.len() * 96 + 8);
            let first = xid();
            let mut x = first;
            for m in mods {
                bytes.extend(codec::flow_mod(v, x, m)?);
                x = xid();
            }
            bytes.extend(codec::simple(v, wire::OFPT_BARRIER_REQUEST, x, &[]));
            Ok((
                (),
                Some(Req {
                    bytes,
                    first_xid: first,
                    last_xid: x,
                    wait: Wait::Reply(wire::OFPT_BARRIER_REPLY),
                }),
            ))
        })
        .await
        .map(|_| ())
    }

    /// Sends the Ethernet frame `data` into the switch as if it had arrived on `in_port`,
    /// through `actions` (with `Output(Port::Normal)` it is learned from and forwarded like a
    /// received frame: a gratuitous ARP announces a MAC's new port to every switch on the
    /// way). Returns once the switch has processed it (a barrier follows).
    pub async fn packet_out(&self, in_port: u32, actions: &[Action], data: &[u8]) -> Result<()> {
        self.run(|v, xid| {
            let first = xid();
            let mut bytes = codec::packet_out(v, first, in_port, actions, data)?;
            let last = xid();
            bytes.extend(codec::simple(v, wire::OFPT_BARRIER_REQUEST, last, &[]));
            Ok((
                (),
                Some(Req {
                    bytes,
                    first_xid: first,
                    last_xid: last,
                    wait: Wait::Reply(wire::OFPT_BARRIER_REPLY),
                }),
            ))
        })
        .await
        .map(|_| ())
    }

    pub async fn add_flow(&self, flow: &Flow) -> Result<()> {
        self.flow_mods(&[FlowMod::Add(flow.clone())]).await
    }

    pub async fn modify_flow_strict(&self, flow: &Flow) -> Result<()> {
        self.flow_mods(&[FlowMod::ModifyStrict(flow.clone())]).await
    }

    pub async fn delete_flow_strict(
        &self,
        table: u8,
        priority: u16,
        matches: &Match,
    ) -> Result<()> {
        self.flow_mods(&[FlowMod::DeleteStrict {
            table,
            priority,
            matches: matches.clone(),
        }])
        .await
    }

    /// Deletes every flow (in `table`, or all tables) whose cookie matches under `mask`.
    pub async fn delete_flows_by_cookie(
        &self,
        table: Option<u8>,
        cookie: u64,
        mask: u64,
    ) -> Result<()> {
        self.flow_mods(&[FlowMod::Delete {
            table,
            cookie,
            cookie_mask: mask,
            matches: Match::new(),
        }])
        .await
    }

    /// Applies the flow_mods atomically (an ordered, atomic bundle): all or none.
    pub async fn bundle(&self, mods: &[FlowMod]) -> Result<()> {
        let id = self.bundle_id.fetch_add(1, Ordering::Relaxed);
        let flags = wire::OFPBF_ATOMIC | wire::OFPBF_ORDERED;
        self.run(|v, xid| {
            let first = xid();
            let mut bytes = codec::bundle_ctrl(v, first, id, wire::OFPBCT_OPEN_REQUEST, flags);
            for m in mods {
                let x = xid();
                bytes.extend(codec::bundle_add(
                    v,
                    x,
                    id,
                    flags,
                    &codec::flow_mod(v, x, m)?,
                )?);
            }
            let last = xid();
            bytes.extend(codec::bundle_ctrl(
                v,
                last,
                id,
                wire::OFPBCT_COMMIT_REQUEST,
                flags,
            ));
            Ok((
                (),
                Some(Req {
                    bytes,
                    first_xid: first,
                    last_xid: last,
                    wait: Wait::Bundle(wire::OFPBCT_COMMIT_REPLY),
                }),
            ))
        })
        .await
        // Nothing to clean up on failure: a failed commit leaves the flow tables as they were.
        .map(|_| ())
    }

    /// Flow stats: the flows matching `filter`, with their counters.
    pub async fn dump_flows(&self, filter: &FlowFilter) -> Result<Vec<FlowStats>> {
        let (v, frames) = self
            .run(|v, xid| {
                let x = xid();
                Ok((
                    v,
                    Some(single(
                        codec::flow_stats_request(v, x, filter)?,
                        x,
                        Wait::Multipart,
                    )),
                ))
            })
            .await?;
        let mut out = Vec::new();
        for f in frames {
            out.extend(
                codec::parse_flow_stats(v, f.body.get(wire::MULTIPART_HDR..).unwrap_or_default())
                    .map_err(|r| Error::protocol(&self.peer(), r))?,
            );
        }
        Ok(out)
    }

    /// How many flows match `filter` (with their summed counters), without dumping them: the
    /// cheap check that a set of flows is still all there.
    pub async fn aggregate_stats(&self, filter: &FlowFilter) -> Result<AggregateStats> {
        let (v, frames) = self
            .run(|v, xid| {
                let x = xid();
                Ok((
                    v,
                    Some(single(
                        codec::aggregate_stats_request(v, x, filter)?,
                        x,
                        Wait::Multipart,
                    )),
                ))
            })
            .await?;
        let body = frames
            .first()
            .and_then(|f| f.body.get(wire::MULTIPART_HDR..))
            .ok_or_else(|| Error::protocol(&self.peer(), "empty aggregate stats reply"))?;
        codec::parse_aggregate_stats(v, body).map_err(|r| Error::protocol(&self.peer(), r))
    }

    async fn meter_mod(&self, command: u16, m: &Meter) -> Result<()> {
        self.run(|v, xid| {
            let first = xid();
            let mut bytes = codec::meter_mod(v, first, command, m)?;
            let last = xid();
            bytes.extend(codec::simple(v, wire::OFPT_BARRIER_REQUEST, last, &[]));
            Ok((
                (),
                Some(Req {
                    bytes,
                    first_xid: first,
                    last_xid: last,
                    wait: Wait::Reply(wire::OFPT_BARRIER_REPLY),
                }),
            ))
        })
        .await
        .map(|_| ())
    }

    pub async fn add_meter(&self, m: &Meter) -> Result<()> {
        self.meter_mod(wire::OFPMC_ADD, m).await
    }

    pub async fn modify_meter(&self, m: &Meter) -> Result<()> {
        self.meter_mod(wire::OFPMC_MODIFY, m).await
    }

    /// Deletes a meter (and the flows that use it). Deleting a missing meter is not an error.
    pub async fn delete_meter(&self, id: u32) -> Result<()> {
        let m = Meter {
            id,
            pktps: false,
            burst: false,
            stats: false,
            bands: Vec::new(),
        };
        self.meter_mod(wire::OFPMC_DELETE, &m).await
    }

    /// Adds the meter, or modifies it if it exists and differs. Returns whether it changed.
    pub async fn ensure_meter(&self, m: &Meter) -> Result<bool> {
        let have = self.meter_configs(Some(m.id)).await?;
        match have.first() {
            Some(h) if h == m => Ok(false),
            Some(_) => self.modify_meter(m).await.map(|_| true),
            None => match self.add_meter(m).await {
                Err(Error::OpenFlow(e)) if e.name == Some("OFPMMFC_METER_EXISTS") => {
                    self.modify_meter(m).await.map(|_| true)
                }
                other => other.map(|_| true),
            },
        }
    }

    /// Meter configurations (`None` = all meters).
    pub async fn meter_configs(&self, id: Option<u32>) -> Result<Vec<Meter>> {
        let r = self
            .run(|v, xid| {
                let x = xid();
                Ok((
                    (),
                    Some(single(
                        codec::meter_request(v, x, wire::OFPMP_METER_CONFIG, id),
                        x,
                        Wait::Multipart,
                    )),
                ))
            })
            .await;
        let frames = match r {
            Ok((_, f)) => f,
            // Asking for one meter that does not exist: OVS answers with an error.
            Err(Error::OpenFlow(e)) if id.is_some() && e.name == Some("OFPMMFC_UNKNOWN_METER") => {
                Vec::new()
            }
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for f in frames {
            out.extend(
                codec::parse_meter_configs(f.body.get(wire::MULTIPART_HDR..).unwrap_or_default())
                    .map_err(|r| Error::protocol(&self.peer(), r))?,
            );
        }
        Ok(out)
    }

    /// Meter counters (`None` = all meters).
    pub async fn meter_stats(&self, id: Option<u32>) -> Result<Vec<MeterStats>> {
        let (_, frames) = self
            .run(|v, xid| {
                let x = xid();
                Ok((
                    (),
                    Some(single(
                        codec::meter_request(v, x, wire::OFPMP_METER, id),
                        x,
                        Wait::Multipart,
                    )),
                ))
            })
            .await?;
        let mut out = Vec::new();
        for f in frames {
            out.extend(
                codec::parse_meter_stats(f.body.get(wire::MULTIPART_HDR..).unwrap_or_default())
                    .map_err(|r| Error::protocol(&self.peer(), r))?,
            );
        }
        Ok(out)
    }
}

fn single(bytes: Vec<u8>, xid: u32, wait: Wait) -> Req {
    Req {
        bytes,
        first_xid: xid,
        last_xid: xid,
        wait,
    }
}

/// Sends `req` and reads until its last reply. `Err((e, stale))`: `stale` when the connection
/// failed before the switch answered anything (safe to resend on a new connection).
async fn exchange(
    conn: &mut Conn,
    req: &Req,
    path: &Path,
) -> std::result::Result<Vec<Frame>, (Error, bool)> {
    let peer = path.display().to_string();
    if let Err(e) = conn.wr.write_all(&req.bytes).await {
        return Err((io(e, path), true));
    }
    let mut got_any = false;
    let mut first_err: Option<codec::OfError> = None;
    let mut frames = Vec::new();
    let in_range = |x: u32| {
        if req.first_xid <= req.last_xid {
            (req.first_xid..=req.last_xid).contains(&x)
        } else {
            x >= req.first_xid || x <= req.last_xid
        }
    };
    loop {
        let f = match read_frame(&mut conn.rd, path).await {
            Ok(f) => f,
            Err(e) => {
                let stale = !got_any && e.is_connection_error();
                return Err((e, stale));
            }
        };
        got_any = true;
        if f.typ == wire::OFPT_ECHO_REQUEST {
            let reply = codec::simple(conn.version, wire::OFPT_ECHO_REPLY, f.xid, &f.body);
            conn.wr
                .write_all(&reply)
                .await
                .map_err(|e| (io(e, path), false))?;
            continue;
        }
        if !in_range(f.xid) {
            continue; // asynchronous message or a late reply to an abandoned request
        }
        if f.typ == wire::OFPT_ERROR {
            let e = codec::parse_error(f.version, &f.body)
                .map_err(|r| (Error::protocol(&peer, r), false))?;
            if f.xid == req.last_xid {
                return Err((Error::OpenFlow(first_err.unwrap_or(e)), false));
            }
            first_err.get_or_insert(e);
            continue;
        }
        if f.xid != req.last_xid {
            continue;
        }
        let done = match req.wait {
            Wait::Reply(t) => f.typ == t,
            Wait::Multipart => {
                if f.typ != wire::OFPT_MULTIPART_REPLY {
                    false
                } else {
                    let flags = f
                        .body
                        .get(2..4)
                        .map(|b| u16::from_be_bytes([b[0], b[1]]))
                        .ok_or_else(|| {
                            (
                                Error::protocol(&peer, "multipart reply without header"),
                                false,
                            )
                        })?;
                    frames.push(f.clone());
                    flags & wire::OFPMPF_MORE == 0
                }
            }
            Wait::Bundle(t) => {
                codec::bundle_reply_type(conn.version, &f)
                    .map_err(|r| (Error::protocol(&peer, r), false))?
                    == Some(t)
            }
        };
        if done {
            if !matches!(req.wait, Wait::Multipart) {
                frames.push(f);
            }
            return match first_err {
                Some(e) => Err((Error::OpenFlow(e), false)),
                None => Ok(frames),
            };
        }
        if frames.len() > 100_000 {
            return Err((Error::protocol(&peer, "endless multipart reply"), false));
        }
    }
}
