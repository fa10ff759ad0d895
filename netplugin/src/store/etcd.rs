//! The fleet store: etcd v3 (etcd-client, gRPC). Keys are the embedded layout under
//! `--etcd-prefix`; revisions, transactions and leases are etcd's own, so the [`Store`] mapping
//! is one call each.
//!
//! - Every call is bounded ([`EtcdConfig::timeout`], default 3 s): a hung or unreachable
//!   cluster gives a clear error naming the endpoints, never a hung dockerd.
//! - The client balances over every endpoint and reconnects by itself: one member of three
//!   down is invisible, all down fails fast and works again when a member returns.
//! - `require_leader`: a member cut off from the quorum refuses instead of answering stale.
//! - The store owns a small runtime; the trait's calls are synchronous (they run on blocking
//!   threads of the daemon) and wait on a channel, so they work from any thread.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare as ECompare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions,
    KvClient, LeaseKeepAliveStream, LeaseKeeper, PutOptions, TxnOp, TxnOpResponse, WatchOptions,
};

use super::{
    Compare, Event, KeyValue, Listing, Op, Store, StoreError, StoreResult, Txn, TxnResult,
};

/// Keys per page of a range read (one response stays far below gRPC's message limit).
const PAGE: i64 = 2000;

/// `--etcd-prefix` when none is given.
pub const DEFAULT_PREFIX: &str = "/berth/v1/";

#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// `http://host:port` or `https://...` (TLS).
    pub endpoints: Vec<String>,
    /// Every key goes under it; ends with '/'.
    pub prefix: String,
    pub cacert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Bound on one call (connect included).
    pub timeout: Duration,
}

impl EtcdConfig {
    pub fn new(endpoints: &str, prefix: &str) -> Result<Self, String> {
        let endpoints: Vec<String> = endpoints
            .split(',')
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .collect();
        if endpoints.is_empty() {
            return Err("--etcd-endpoints is empty: give URLs like http://10.0.0.1:2379".into());
        }
        for e in &endpoints {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(format!(
                    "--etcd-endpoints {e:?}: must start with http:// or https://"
                ));
            }
        }
        if !prefix.starts_with('/') || !prefix.ends_with('/') || prefix.len() < 2 {
            return Err(format!(
                "--etcd-prefix {prefix:?}: must start and end with '/', like /berth/v1/"
            ));
        }
        Ok(Self {
            endpoints,
            prefix: prefix.to_string(),
            cacert: None,
            cert: None,
            key: None,
            timeout: Duration::from_secs(3),
        })
    }
}

pub struct EtcdStore {
    rt: Option<tokio::runtime::Runtime>,
    /// One client per endpoint: a member that is down or cut off from the quorum is
    /// skipped deterministically (the balanced channel keeps picking a dead member).
    members: Vec<Member>,
    /// The member calls go to; moves on when one fails.
    current: AtomicUsize,
    prefix: String,
    timeout: Duration,
    endpoints: String,
    /// The host lease's keep-alive stream, open for as long as it works (one stream per
    /// host, not one per renewal); reopened on the next member when it breaks.
    keeper: Arc<tokio::sync::Mutex<Option<Keeper>>>,
}

struct Keeper {
    lease: i64,
    member: usize,
    sender: LeaseKeeper,
    stream: LeaseKeepAliveStream,
}

#[derive(Clone)]
struct Member {
    client: Client,
    kv: KvClient,
}

/// Whether a failed call may be sent again to another member: always for reads; for writes
/// only when the request provably never reached a server or was refused before proposal.
fn retryable(e: &etcd_client::Error, idempotent: bool) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            let m = s.message();
            let not_sent = m.contains("tcp connect error")
                || m.contains("Connection refused")
                || m.contains("no leader")
                || m.contains("not capable");
            // gRPC codes: 1 cancelled, 2 unknown, 4 deadline exceeded, 14 unavailable.
            not_sent || (idempotent && matches!(s.code() as i32, 1 | 2 | 4 | 14))
        }
        // The connection broke: a write may have been applied before it did. Sending it again
        // would make a create-if-absent lose to itself (issue 14 §2); the caller reads back
        // what landed instead.
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => idempotent,
        _ => idempotent,
    }
}

fn backend(what: &str, endpoints: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("etcd {what} ({endpoints}): {e}"))
}

/// The smallest key after every key starting with `prefix` (etcd's range end).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl EtcdStore {
    /// Builds the client; connections are made lazily, so this works while etcd is down.
    pub fn connect(config: &EtcdConfig) -> StoreResult<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("etcd-client")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Backend(format!("etcd: starting the client runtime: {e}")))?;
        let endpoints = config.endpoints.join(",");
        let mut options = ConnectOptions::new()
            .with_timeout(config.timeout)
            .with_connect_timeout(config.timeout.min(Duration::from_secs(2)))
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        let tls_files = [&config.cacert, &config.cert, &config.key];
        if tls_files.iter().any(|f| f.is_some()) {
            let read = |flag: &str, f: &Option<PathBuf>| -> StoreResult<Option<Vec<u8>>> {
                match f {
                    Some(p) => std::fs::read(p)
                        .map(Some)
                        .map_err(|e| StoreError::Backend(format!("{flag} {}: {e}", p.display()))),
                    None => Ok(None),
                }
            };
            let mut tls = etcd_client::TlsOptions::new();
            if let Some(ca) = read("--etcd-cacert", &config.cacert)? {
                tls = tls.ca_certificate(etcd_client::Certificate::from_pem(ca));
            }
            match (
                read("--etcd-cert", &config.cert)?,
                read("--etcd-key", &config.key)?,
            ) {
                (Some(c), Some(k)) => tls = tls.identity(etcd_client::Identity::from_pem(c, k)),
                (None, None) => {}
                _ => {
                    return Err(StoreError::Backend(
                        "--etcd-cert and --etcd-key go together (a client certificate and its key)"
                            .into(),
                    ))
                }
            }
            if config.endpoints.iter().any(|e| e.starts_with("http://")) {
                return Err(StoreError::Backend(
                    "--etcd-cacert/--etcd-cert/--etcd-key need https:// endpoints".into(),
                ));
            }
            options = options.with_tls(tls);
        }
        let mut members = Vec::new();
        for endpoint in &config.endpoints {
            let (tx, rx) = mpsc::sync_channel(1);
            let (ep, options) = (endpoint.clone(), options.clone());
            rt.spawn(async move {
                let _ = tx.send(Client::connect([ep], Some(options)).await);
            });
            let client = match rx.recv_timeout(config.timeout + Duration::from_secs(1)) {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => return Err(backend("connect", &endpoints, e)),
                Err(_) => {
                    return Err(backend(
                        "connect",
                        &endpoints,
                        format!("no answer within {} s", config.timeout.as_secs_f64()),
                    ))
                }
            };
            let kv = client
                .kv_client()
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(16 << 20);
            members.push(Member { client, kv });
        }
        // Spread the fleet's hosts over the members.
        let start = std::process::id() as usize % members.len();
        Ok(Self {
            rt: Some(rt),
            members,
            current: AtomicUsize::new(start),
            prefix: config.prefix.clone(),
            timeout: config.timeout,
            endpoints,
            keeper: Arc::new(tokio::sync::Mutex::new(None)),
        })
    }

    pub fn endpoints(&self) -> &str {
        &self.endpoints
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.rt
            .as_ref()
            .expect("runtime lives as long as the store")
    }

    /// Runs `f(member)` on the client runtime, bounded by the call timeout in all; moves to
    /// the next member when one fails in a way [`retryable`] allows.
    fn call<T, F, Fut>(&self, what: &str, idempotent: bool, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: Fn(Member) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    {
        let (tx, rx) = mpsc::sync_channel(1);
        let timeout = self.timeout;
        let members = self.members.clone();
        let first = self.current.load(Ordering::Relaxed);
        self.rt().spawn(async move {
            let deadline = Instant::now() + timeout;
            let n = members.len();
            let mut i = first;
            let mut last = None;
            for attempt in 0..(3 * n) {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                // A hung member gets a share of the time, so reads can still try another.
                let share = if idempotent && attempt + 1 < 3 * n {
                    left.min(timeout / 2)
                } else {
                    left
                };
                match tokio::time::timeout(share, f(members[i % n].clone())).await {
                    Ok(Ok(v)) => {
                        let _ = tx.send((Ok(v), i % n));
                        return;
                    }
                    Ok(Err(e)) => {
                        if !retryable(&e, idempotent) {
                            let _ = tx.send((Err(Some(e)), i % n));
                            return;
                        }
                        last = Some(e);
                    }
                    Err(_) if idempotent => {}
                    Err(_) => break,
                }
                i += 1;
                if attempt + 1 >= n {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            let _ = tx.send((Err(last), i % n));
        });
        match rx.recv_timeout(timeout + Duration::from_millis(500)) {
            Ok((r, used)) => {
                self.current.store(used, Ordering::Relaxed);
                match r {
                    Ok(v) => Ok(v),
                    Err(Some(e)) => Err(self.error(what, e)),
                    Err(None) => Err(self.no_answer(what)),
                }
            }
            Err(_) => Err(self.no_answer(what)),
        }
    }

    fn no_answer(&self, what: &str) -> StoreError {
        backend(
            what,
            &self.endpoints,
            format!(
                "no answer within {} s (is a quorum of etcd members up and reachable?)",
                self.timeout.as_secs_f64()
            ),
        )
    }

    fn error(&self, what: &str, e: etcd_client::Error) -> StoreError {
        let text = match &e {
            etcd_client::Error::GRpcStatus(s) => {
                format!("{} ({:?})", s.message(), s.code())
            }
            other => other.to_string(),
        };
        backend(what, &self.endpoints, text)
    }

    fn full(&self, key: &str) -> Vec<u8> {
        format!("{}{key}", self.prefix).into_bytes()
    }

    fn convert(&self, kv: &etcd_client::KeyValue) -> StoreResult<KeyValue> {
        let key = kv
            .key()
            .strip_prefix(self.prefix.as_bytes())
            .ok_or_else(|| StoreError::Corrupt {
                key: String::from_utf8_lossy(kv.key()).into_owned(),
                message: format!("outside the prefix {}", self.prefix),
            })?;
        Ok(KeyValue {
            key: String::from_utf8_lossy(key).into_owned(),
            value: kv.value().to_vec(),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
            version: kv.version(),
            lease: kv.lease(),
        })
    }

    /// The keys under `prefix` and the revision they are as of (every page is read at the
    /// first page's revision).
    fn range_at(&self, prefix: &str) -> StoreResult<(Vec<KeyValue>, i64)> {
        let from = self.full(prefix);
        let end = prefix_end(&from);
        let mut out = Vec::new();
        let mut start = from;
        let mut revision = 0;
        loop {
            let mut options = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
            if revision != 0 {
                options = options.with_revision(revision);
            }
            let s = start.clone();
            let mut resp = self.call("range", true, move |m| {
                let (mut kv, s, o) = (m.kv, s.clone(), options.clone());
                async move { kv.get(s, Some(o)).await }
            })?;
            if revision == 0 {
                revision = resp.header().map(|h| h.revision()).unwrap_or(0);
            }
            let more = resp.more();
            let kvs = resp.take_kvs();
            for kv in &kvs {
                out.push(self.convert(kv)?);
            }
            match kvs.last() {
                Some(last) if more => {
                    start = last.key().to_vec();
                    start.push(0);
                }
                _ => return Ok((out, revision)),
            }
        }
    }

    fn op(&self, op: &Op) -> TxnOp {
        match op {
            Op::Put { key, value, lease } => TxnOp::put(
                self.full(key),
                value.clone(),
                (*lease != 0).then(|| PutOptions::new().with_lease(*lease)),
            ),
            Op::Delete(key) => TxnOp::delete(self.full(key), None),
            Op::DeletePrefix(prefix) => {
                let from = self.full(prefix);
                let end = prefix_end(&from);
                TxnOp::delete(from, Some(DeleteOptions::new().with_range(end)))
            }
            Op::Get(key) => TxnOp::get(self.full(key), None),
        }
    }
}

/// One renewal of `lease` on the long-lived stream in `slot`: one keep-alive request, one
/// answer (its TTL, or 1 when a new stream renewed it; 0 = the lease is gone). A stream that fails or does not answer in time is
/// dropped and a new one opened, starting at member `first` and moving on; opening a stream
/// sends the first request itself (etcd-client's `lease_keep_alive`), so nothing is sent twice.
async fn renew(
    slot: &mut Option<Keeper>,
    lease: i64,
    members: &[Member],
    first: usize,
    deadline: tokio::time::Instant,
) -> Result<i64, etcd_client::Error> {
    let half = tokio::time::Instant::now() + (deadline - tokio::time::Instant::now()) / 2;
    let mut start = first;
    if let Some(k) = slot.as_mut().filter(|k| k.lease == lease) {
        let sent = tokio::time::timeout_at(half, async {
            k.sender.keep_alive().await?;
            k.stream.message().await
        })
        .await;
        if let Ok(Ok(Some(r))) = sent {
            return Ok(r.ttl());
        }
        // Broken, closed or silent: that member is skipped first.
        start = k.member + 1;
    }
    *slot = None;
    let mut last = etcd_client::Error::LeaseKeepAliveError("no etcd member answered".into());
    for i in 0..members.len() {
        let member = (start + i) % members.len();
        let mut client = members[member].client.clone();
        // etcd-client sends the first request and reads its answer itself: Ok means the
        // lease was renewed (its TTL is not passed on), "lease not found" that it is gone.
        let opened = tokio::time::timeout_at(deadline, client.lease_keep_alive(lease)).await;
        match opened {
            Ok(Ok((sender, stream))) => {
                *slot = Some(Keeper {
                    lease,
                    member,
                    sender,
                    stream,
                });
                return Ok(1);
            }
            Ok(Err(etcd_client::Error::LeaseKeepAliveError(m))) if m.contains("not found") => {
                return Ok(0)
            }
            Ok(Err(e)) => last = e,
            Err(_) => break,
        }
    }
    Err(last)
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which is not allowed inside the daemon's own runtime.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Store for EtcdStore {
    fn kind(&self) -> &'static str {
        "etcd"
    }

    fn get(&self, key: &str) -> StoreResult<Option<KeyValue>> {
        let k = self.full(key);
        let mut resp = self.call("get", true, move |m| {
            let (mut kv, k) = (m.kv, k.clone());
            async move { kv.get(k, None).await }
        })?;
        match resp.take_kvs().first() {
            Some(kv) => self.convert(kv).map(Some),
            None => Ok(None),
        }
    }

    fn range(&self, prefix: &str) -> StoreResult<Vec<KeyValue>> {
        Ok(self.range_at(prefix)?.0)
    }

    fn count(&self, prefix: &str) -> StoreResult<u64> {
        let from = self.full(prefix);
        let options = GetOptions::new()
            .with_range(prefix_end(&from))
            .with_count_only();
        let resp = self.call("count", true, move |m| {
            let (mut kv, s, o) = (m.kv, from.clone(), options.clone());
            async move { kv.get(s, Some(o)).await }
        })?;
        Ok(resp.count().max(0) as u64)
    }

    fn txn(&self, txn: Txn) -> StoreResult<TxnResult> {
        let compares: Vec<ECompare> = txn
            .compare
            .iter()
            .map(|c| match c {
                Compare::Version(k, v) => ECompare::version(self.full(k), CompareOp::Equal, *v),
                Compare::ModRevision(k, r) => {
                    ECompare::mod_revision(self.full(k), CompareOp::Equal, *r)
                }
                Compare::CreateRevision(k, r) => {
                    ECompare::create_revision(self.full(k), CompareOp::Equal, *r)
                }
                Compare::Value(k, v) => ECompare::value(self.full(k), CompareOp::Equal, v.clone()),
            })
            .collect();
        let success: Vec<TxnOp> = txn.success.iter().map(|o| self.op(o)).collect();
        let failure: Vec<TxnOp> = txn.failure.iter().map(|o| self.op(o)).collect();
        let leases: Vec<i64> = txn
            .success
            .iter()
            .chain(&txn.failure)
            .filter_map(|o| match o {
                Op::Put { lease, .. } if *lease != 0 => Some(*lease),
                _ => None,
            })
            .collect();
        let request = etcd_client::Txn::new()
            .when(compares)
            .and_then(success)
            .or_else(failure);
        let resp = match self.call("txn", false, move |m| {
            let (mut kv, r) = (m.kv, request.clone());
            async move { kv.txn(r).await }
        }) {
            Ok(r) => r,
            Err(StoreError::Backend(m)) if m.contains("lease not found") => {
                return Err(StoreError::LeaseNotFound(
                    leases.first().copied().unwrap_or(0),
                ))
            }
            Err(e) => return Err(e),
        };
        let mut reads = Vec::new();
        for op in resp.op_responses() {
            if let TxnOpResponse::Get(got) = op {
                reads.push(got.kvs().first().map(|kv| self.convert(kv)).transpose()?);
            }
        }
        Ok(TxnResult {
            succeeded: resp.succeeded(),
            revision: resp.header().map(|h| h.revision()).unwrap_or(0),
            reads,
        })
    }

    fn revision(&self) -> StoreResult<i64> {
        let k = self.full("");
        let resp = self.call("revision", true, move |m| {
            let (mut kv, k) = (m.kv, k.clone());
            async move { kv.get(k, Some(GetOptions::new().with_count_only())).await }
        })?;
        Ok(resp.header().map(|h| h.revision()).unwrap_or(0))
    }

    fn grant_lease(&self, ttl: Duration) -> StoreResult<i64> {
        let secs = ttl.as_secs_f64().ceil().max(1.0) as i64;
        // A retried grant at worst leaves an unused lease that expires by itself.
        let resp = self.call("lease grant", true, move |m| {
            let mut c = m.client;
            async move { c.lease_grant(secs, None).await }
        })?;
        Ok(resp.id())
    }

    fn keep_alive(&self, lease: i64) -> StoreResult<()> {
        let (tx, rx) = mpsc::sync_channel(1);
        let (slot, members, timeout) = (self.keeper.clone(), self.members.clone(), self.timeout);
        let first = self.current.load(Ordering::Relaxed);
        self.rt().spawn(async move {
            let mut slot = slot.lock().await;
            let deadline = tokio::time::Instant::now() + timeout;
            let _ = tx.send(renew(&mut slot, lease, &members, first, deadline).await);
        });
        let ttl = match rx.recv_timeout(timeout + Duration::from_millis(500)) {
            Ok(Ok(ttl)) => ttl,
            Ok(Err(e)) => return Err(self.error("lease keep-alive", e)),
            Err(_) => return Err(self.no_answer("lease keep-alive")),
        };
        if ttl <= 0 {
            return Err(StoreError::LeaseNotFound(lease));
        }
        Ok(())
    }

    fn revoke_lease(&self, lease: i64) -> StoreResult<()> {
        match self.call("lease revoke", true, move |m| {
            let mut c = m.client;
            async move { c.lease_revoke(lease).await }
        }) {
            Ok(_) => Ok(()),
            Err(StoreError::Backend(m)) if m.contains("lease not found") => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn watch(&self, prefix: &str) -> StoreResult<mpsc::Receiver<Event>> {
        self.watch_from(prefix, self.revision()? + 1)
    }

    fn list_and_watch(&self, prefix: &str) -> StoreResult<Listing> {
        let (kvs, revision) = self.range_at(prefix)?;
        let events = self.watch_from(prefix, revision + 1)?;
        Ok(Listing {
            kvs,
            revision,
            events,
        })
    }
}

impl EtcdStore {
    /// Changes under `prefix` from revision `start` on. A broken stream is resumed from the
    /// revision after the last event seen, on the next member; the channel ends when that
    /// revision has been compacted away (the caller lists again) or the receiver is dropped.
    pub fn watch_from(&self, prefix: &str, start: i64) -> StoreResult<mpsc::Receiver<Event>> {
        let from = self.full(prefix);
        let end = prefix_end(&from);
        let (tx, rx) = mpsc::channel();
        let members = self.members.clone();
        let mut which = self.current.load(Ordering::Relaxed);
        let strip = self.prefix.clone();
        let timeout = self.timeout;
        // Establish the first watch before returning, so no change after "now" is missed.
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        self.rt().spawn(async move {
            let mut next = start;
            let mut ready = Some(ready_tx);
            let mut tries = 0;
            loop {
                let options = WatchOptions::new()
                    .with_range(end.clone())
                    .with_start_revision(next);
                let mut client = members[which % members.len()].client.clone();
                let stream =
                    tokio::time::timeout(timeout, client.watch(from.clone(), Some(options))).await;
                let mut stream = match stream {
                    Ok(Ok(s)) => s,
                    _ => {
                        which += 1;
                        tries += 1;
                        if tries < members.len() && ready.is_some() {
                            continue;
                        }
                        if let Some(r) = ready.take() {
                            let _ = r.send(false);
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                };
                if let Some(r) = ready.take() {
                    let _ = r.send(true);
                }
                // Until the stream ends or breaks: then resume from the next revision.
                while let Ok(Some(resp)) = stream.message().await {
                    if resp.compact_revision() > 0 {
                        // The revisions after the last event are gone: no resuming without
                        // a gap; ending the channel tells the caller to list again.
                        return;
                    }
                    if resp.canceled() {
                        break;
                    }
                    for e in resp.events() {
                        let Some(kv) = e.kv() else { continue };
                        let key = String::from_utf8_lossy(
                            kv.key().strip_prefix(strip.as_bytes()).unwrap_or(kv.key()),
                        )
                        .into_owned();
                        next = next.max(kv.mod_revision() + 1);
                        let event = match e.event_type() {
                            EventType::Put => Event::Put(KeyValue {
                                key,
                                value: kv.value().to_vec(),
                                create_revision: kv.create_revision(),
                                mod_revision: kv.mod_revision(),
                                version: kv.version(),
                                lease: kv.lease(),
                            }),
                            EventType::Delete => Event::Delete {
                                key,
                                revision: kv.mod_revision(),
                            },
                        };
                        if tx.send(event).is_err() {
                            return;
                        }
                    }
                }
                which += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        match ready_rx.recv_timeout(timeout + Duration::from_secs(1)) {
            Ok(true) => Ok(rx),
            _ => Err(backend(
                "watch",
                &self.endpoints,
                format!("not established within {} s", timeout.as_secs_f64()),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_and_prefix_end() {
        assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(&[b'a', 0xff]), b"b".to_vec());
        let c =
            EtcdConfig::new("http://127.0.0.1:2379, http://127.0.0.2:2379", "/berth/v1/").unwrap();
        assert_eq!(c.endpoints.len(), 2);
        assert!(EtcdConfig::new("", "/x/").is_err());
        assert!(EtcdConfig::new("127.0.0.1:2379", "/x/").is_err());
        assert!(EtcdConfig::new("http://a:1", "berth").is_err());
    }

    /// Unreachable etcd: a clear error within the bound, not a hang.
    #[test]
    fn unreachable_fails_within_the_bound() {
        let mut c = EtcdConfig::new("http://127.0.0.1:9", "/t/").unwrap();
        c.timeout = Duration::from_millis(800);
        let s = EtcdStore::connect(&c).unwrap();
        let t = std::time::Instant::now();
        let e = s.get("x").unwrap_err().to_string();
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        assert!(e.contains("127.0.0.1:9"), "{e}");
    }
}

#[cfg(test)]
mod live {
    use super::*;

    /// `BERTH_TEST_ETCD=http://127.0.0.1:2379 cargo test -p netplugin etcd_contract`: the store
    /// contract against a running etcd (the integration suite runs it on a 3-member cluster).
    #[test]
    fn etcd_contract_when_configured() {
        let Ok(endpoints) = std::env::var("BERTH_TEST_ETCD") else {
            return;
        };
        let prefix = format!("/berth-unit-{}/", std::process::id());
        let s = EtcdStore::connect(&EtcdConfig::new(&endpoints, &prefix).unwrap()).unwrap();
        crate::store::contract::run(&s);
        s.txn(Txn {
            success: vec![Op::DeletePrefix(String::new())],
            ..Default::default()
        })
        .unwrap();
    }
}
