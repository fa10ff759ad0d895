//! OVSDB (RFC 7047) client on a UNIX socket.
//!
//! One background task owns the connection: it correlates replies by id, answers the server's
//! `echo`, sends its own `echo` keepalive, keeps a local cache of the monitored tables current
//! from `update` notifications, and reconnects with exponential backoff (re-monitoring, so the
//! cache is rebuilt) after ovsdb-server goes away. Every call is bounded by a timeout.

pub mod frame;
pub mod ops;
mod vswitch;

pub use vswitch::{BridgeSpec, InterfaceInfo, PortInfo, PortSpec};

use crate::{Error, Result};
use frame::JsonFramer;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

/// Default socket of the system's ovsdb-server (netplugin's `--ovsdb`).
pub const DEFAULT_ENDPOINT: &str = "unix:/var/run/openvswitch/db.sock";

/// Client settings. [`Config::new`] gives defaults suited to netplugin.
#[derive(Debug, Clone)]
pub struct Config {
    /// `unix:/path/db.sock` or a plain path.
    pub endpoint: String,
    pub database: String,
    /// Bound on every call (and on waiting for the connection when it is down).
    pub call_timeout: Duration,
    /// Idle time after which we send an `echo`; no answer within twice this = dead connection.
    pub echo_interval: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Largest single message accepted from the server.
    pub max_message: usize,
    /// Tables to monitor into the cache, each with its columns (`None` = all).
    pub monitor: Vec<(String, Option<Vec<String>>)>,
}

impl Config {
    pub fn new(endpoint: impl Into<String>) -> Self {
        let cols = |c: &[&str]| Some(c.iter().map(|s| s.to_string()).collect());
        Config {
            endpoint: endpoint.into(),
            database: "Open_vSwitch".into(),
            call_timeout: Duration::from_secs(5),
            echo_interval: Duration::from_secs(5),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            max_message: 64 << 20,
            monitor: vec![
                (
                    "Open_vSwitch".into(),
                    cols(&["bridges", "next_cfg", "cur_cfg", "ovs_version"]),
                ),
                ("Bridge".into(), None),
                ("Port".into(), None),
                // Not `statistics`: it changes every few seconds and nothing here needs it.
                (
                    "Interface".into(),
                    cols(&[
                        "name",
                        "type",
                        "ofport",
                        "ofport_request",
                        "external_ids",
                        "options",
                        "error",
                        "mac_in_use",
                        "admin_state",
                        "link_state",
                    ]),
                ),
            ],
        }
    }

    fn socket_path(&self) -> Result<PathBuf> {
        let p = self
            .endpoint
            .strip_prefix("unix:")
            .unwrap_or(&self.endpoint);
        if p.is_empty() || self.endpoint.starts_with("tcp:") || self.endpoint.starts_with("ssl:") {
            return Err(Error::invalid(
                "ovsdb endpoint",
                "must be unix:/path/to/db.sock or a socket path",
            ));
        }
        Ok(PathBuf::from(p))
    }
}

/// The monitored tables: table -> row UUID -> row (monitored columns only).
#[derive(Debug, Default, Clone)]
pub struct Cache {
    tables: HashMap<String, BTreeMap<String, ops::Row>>,
}

impl Cache {
    /// Rows of `table` as (uuid, row).
    pub fn rows(&self, table: &str) -> impl Iterator<Item = (&str, &ops::Row)> {
        self.tables
            .get(table)
            .into_iter()
            .flat_map(|t| t.iter().map(|(k, v)| (k.as_str(), v)))
    }

    pub fn row(&self, table: &str, uuid: &str) -> Option<&ops::Row> {
        self.tables.get(table)?.get(uuid)
    }

    /// First row of `table` whose `name` column is `name`.
    pub fn by_name(&self, table: &str, name: &str) -> Option<(&str, &ops::Row)> {
        self.rows(table)
            .find(|(_, r)| r.get("name").and_then(Value::as_str) == Some(name))
    }

    /// Applies a `<table-updates>` object (monitor reply or `update` notification).
    fn apply(&mut self, updates: &Value) -> std::result::Result<(), String> {
        let tables = updates
            .as_object()
            .ok_or("table-updates is not an object")?;
        for (table, rows) in tables {
            let rows = rows.as_object().ok_or("table-update is not an object")?;
            let t = self.tables.entry(table.clone()).or_default();
            for (uuid, change) in rows {
                match change.get("new") {
                    Some(Value::Object(new)) => {
                        // Monitor v1: "new" carries every monitored column on insert and modify.
                        t.insert(uuid.clone(), new.clone());
                    }
                    Some(_) => return Err(format!("row {uuid}: \"new\" is not an object")),
                    None => {
                        t.remove(uuid);
                    }
                }
            }
        }
        Ok(())
    }
}

struct Call {
    method: String,
    params: Value,
    reply: oneshot::Sender<Result<Value>>,
    deadline: Instant,
}

struct Shared {
    cfg: Config,
    path: PathBuf,
    cache: RwLock<Cache>,
    /// Bumped on every cache or connection change; waiters watch it.
    version: watch::Sender<u64>,
    connected: AtomicBool,
    connections: AtomicU64,
    /// `next_cfg` our last write transaction produced (see [`Client::wait_applied`]).
    last_cfg: AtomicI64,
}

impl Shared {
    fn bump(&self) {
        self.version.send_modify(|v| *v = v.wrapping_add(1));
    }
}

/// An OVSDB connection with a monitor-fed cache. Cheap to share behind an `Arc`; dropping it
/// stops the background task and closes the socket.
pub struct Client {
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Call>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Client {
    /// Starts the client and waits (up to `call_timeout`) for the first connection and the
    /// initial monitor contents.
    pub async fn connect(cfg: Config) -> Result<Client> {
        let t = cfg.call_timeout;
        let c = Client::start(cfg)?;
        c.wait_connected(t).await?;
        Ok(c)
    }

    /// Starts the client without waiting; it keeps trying to connect in the background.
    pub fn start(cfg: Config) -> Result<Client> {
        let path = cfg.socket_path()?;
        let (version, _) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            cfg,
            path,
            cache: RwLock::new(Cache::default()),
            version,
            connected: AtomicBool::new(false),
            connections: AtomicU64::new(0),
            last_cfg: AtomicI64::new(0),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(shared.clone(), rx));
        Ok(Client { shared, tx, task })
    }

    pub fn config(&self) -> &Config {
        &self.shared.cfg
    }

    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::SeqCst)
    }

    /// How many times a connection (with its monitor) was established; >1 after a reconnect.
    pub fn connection_count(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }

    pub async fn wait_connected(&self, timeout: Duration) -> Result<()> {
        self.wait_until("OVSDB connection", timeout, |_| true).await
    }

    /// Runs `f` on the cache. Never hold on to what it borrows: copy out what you need.
    pub fn with_cache<R>(&self, f: impl FnOnce(&Cache) -> R) -> R {
        let guard = self
            .shared
            .cache
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&guard)
    }

    /// Waits until connected and `pred` holds on the cache.
    pub async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Cache) -> bool,
    ) -> Result<()> {
        let mut rx = self.shared.version.subscribe();
        let deadline = Instant::now() + timeout;
        loop {
            if self.is_connected() && self.with_cache(&pred) {
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(Error::Disconnected(self.endpoint())),
                Err(_) => {
                    return Err(Error::Timeout {
                        what: what.to_string(),
                        after: timeout,
                    })
                }
            }
        }
    }

    fn endpoint(&self) -> String {
        self.shared.cfg.endpoint.clone()
    }

    /// A raw JSON-RPC call; `Err(Error::Ovsdb)` when the reply carries an error.
    pub async fn call(&self, method: &str, params: Value) -> Result<Value> {
        let timeout = self.shared.cfg.call_timeout;
        let deadline = Instant::now() + timeout;
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Call {
                method: method.to_string(),
                params,
                reply,
                deadline,
            })
            .map_err(|_| Error::Disconnected(self.endpoint()))?;
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(Error::Disconnected(self.endpoint())),
            Err(_) => Err(Error::Timeout {
                what: format!("OVSDB {method}"),
                after: timeout,
            }),
        }
    }

    pub async fn echo(&self) -> Result<()> {
        self.call("echo", json!(["berth"])).await.map(|_| ())
    }

    pub async fn list_dbs(&self) -> Result<Vec<String>> {
        let v = self.call("list_dbs", json!([])).await?;
        Ok(ops::as_str_set(&json!(["set", v])))
    }

    pub async fn get_schema(&self, db: &str) -> Result<Value> {
        self.call("get_schema", json!([db])).await
    }

    /// One atomic transaction on the configured database. The result has one entry per
    /// operation; any operation error (or a commit error) aborts it and is returned.
    pub async fn transact(&self, operations: Vec<Value>) -> Result<Vec<Value>> {
        let mut params = vec![json!(self.shared.cfg.database)];
        let names: Vec<String> = operations
            .iter()
            .map(|o| {
                format!(
                    "{} {}",
                    o.get("op").and_then(Value::as_str).unwrap_or("?"),
                    o.get("table").and_then(Value::as_str).unwrap_or("")
                )
            })
            .collect();
        params.extend(operations);
        let result = self.call("transact", Value::Array(params)).await?;
        let Value::Array(results) = result else {
            return Err(Error::protocol(
                &self.endpoint(),
                "transact result is not an array",
            ));
        };
        for (index, r) in results.iter().enumerate() {
            if let Some(err) = r.get("error").filter(|e| !e.is_null()) {
                return Err(Error::Transaction {
                    index,
                    op: names.get(index).cloned().unwrap_or_else(|| "commit".into()),
                    error: err.as_str().map(str::to_string).unwrap_or(err.to_string()),
                    details: r
                        .get("details")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                });
            }
        }
        if results.len() < names.len() {
            return Err(Error::protocol(
                &self.endpoint(),
                format!(
                    "transact returned {} results for {} operations",
                    results.len(),
                    names.len()
                ),
            ));
        }
        Ok(results)
    }

    /// Waits until ovs-vswitchd has applied our last write (`cur_cfg` reached the `next_cfg` it
    /// produced), as `ovs-vsctl` does without `--no-wait`.
    pub async fn wait_applied(&self, timeout: Duration) -> Result<()> {
        let want = self.shared.last_cfg.load(Ordering::SeqCst);
        self.wait_until("ovs-vswitchd applying the change", timeout, |c| {
            ovs_cfg(c, "cur_cfg") >= want
        })
        .await
    }
}

/// `next_cfg` / `cur_cfg` of the Open_vSwitch row (0 when absent).
fn ovs_cfg(c: &Cache, col: &str) -> i64 {
    c.rows("Open_vSwitch")
        .next()
        .and_then(|(_, r)| r.get(col))
        .and_then(Value::as_i64)
        .unwrap_or(0)
}

enum End {
    ClientGone,
    Failed(Error),
}

async fn run(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Call>) {
    let mut backoff = shared.cfg.backoff_min;
    loop {
        let before = shared.connections.load(Ordering::SeqCst);
        let end = session(&shared, &mut rx).await;
        shared.connected.store(false, Ordering::SeqCst);
        shared.bump();
        match end {
            End::ClientGone => return,
            End::Failed(e) => {
                tracing::warn!(endpoint = %shared.cfg.endpoint, error = %e, "OVSDB connection lost; reconnecting in {backoff:?}")
            }
        }
        if shared.connections.load(Ordering::SeqCst) != before {
            backoff = shared.cfg.backoff_min;
        }
        // Calls that expire while we are down are dropped here so they never run late.
        let sleep = tokio::time::sleep(backoff);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                call = rx.recv() => match call {
                    None => return,
                    Some(c) => {
                        let _ = c.reply.send(Err(Error::Disconnected(shared.cfg.endpoint.clone())));
                    }
                }
            }
        }
        backoff = (backoff * 2).min(shared.cfg.backoff_max);
    }
}

const MONITOR_ID: u64 = 0;

async fn session(shared: &Arc<Shared>, rx: &mut mpsc::UnboundedReceiver<Call>) -> End {
    let peer = shared.cfg.endpoint.as_str();
    let stream = match UnixStream::connect(&shared.path).await {
        Ok(s) => s,
        Err(e) => {
            return End::Failed(Error::Connect {
                path: shared.path.display().to_string(),
                source: e,
            })
        }
    };
    let (mut rd, mut wr) = stream.into_split();
    let mut framer = JsonFramer::new(shared.cfg.max_message);
    let mut pending: HashMap<u64, (String, oneshot::Sender<Result<Value>>)> = HashMap::new();
    let mut next_id: u64 = 1;
    let mut monitored = false;
    let mut echo_outstanding: Option<Instant> = None;
    let mut last_rx = Instant::now();
    let mut buf = vec![0u8; 64 * 1024];
    let mut tick = tokio::time::interval(shared.cfg.echo_interval.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let fail_all = |pending: &mut HashMap<u64, (String, oneshot::Sender<Result<Value>>)>| {
        for (_, (_, tx)) in pending.drain() {
            let _ = tx.send(Err(Error::Disconnected(peer.to_string())));
        }
    };

    let mut requests = serde_json::Map::new();
    for (table, cols) in &shared.cfg.monitor {
        let mut req = serde_json::Map::new();
        if let Some(c) = cols {
            req.insert("columns".into(), json!(c));
        }
        requests.insert(table.clone(), Value::Object(req));
    }
    let monitor = json!({"method": "monitor", "id": MONITOR_ID,
        "params": [shared.cfg.database, "berth", requests]});
    if let Err(e) = write_json(&mut wr, &monitor).await {
        return End::Failed(e);
    }

    let result = loop {
        tokio::select! {
            n = rd.read(&mut buf) => {
                let n = match n {
                    Ok(0) => break Error::Disconnected(peer.to_string()),
                    Ok(n) => n,
                    Err(e) => break Error::Io { what: peer.to_string(), source: e },
                };
                last_rx = Instant::now();
                echo_outstanding = None;
                let msgs = match framer.push(&buf[..n]) {
                    Ok(m) => m,
                    Err(e) => break Error::protocol(peer, e.to_string()),
                };
                let mut err = None;
                for msg in msgs {
                    match handle(shared, &mut wr, &mut pending, &mut monitored, msg).await {
                        Ok(()) => {}
                        Err(e) => { err = Some(e); break; }
                    }
                }
                if let Some(e) = err { break e; }
            }
            call = rx.recv(), if monitored => {
                let Some(call) = call else {
                    fail_all(&mut pending);
                    return End::ClientGone;
                };
                if call.reply.is_closed() || Instant::now() >= call.deadline {
                    continue;
                }
                let id = next_id;
                next_id += 1;
                let msg = json!({"method": call.method, "params": call.params, "id": id});
                pending.insert(id, (call.method, call.reply));
                if let Err(e) = write_json(&mut wr, &msg).await {
                    break e;
                }
            }
            _ = tick.tick() => {
                let idle = last_rx.elapsed();
                if let Some(sent) = echo_outstanding {
                    if sent.elapsed() >= shared.cfg.echo_interval * 2 {
                        break Error::Timeout { what: format!("echo keepalive on {peer}"), after: shared.cfg.echo_interval * 2 };
                    }
                } else if idle >= shared.cfg.echo_interval {
                    echo_outstanding = Some(Instant::now());
                    // Its reply has an id we never registered: ignored, but it counts as traffic.
                    let msg = json!({"method": "echo", "params": ["keepalive"], "id": "keepalive"});
                    if let Err(e) = write_json(&mut wr, &msg).await {
                        break e;
                    }
                }
            }
        }
    };
    fail_all(&mut pending);
    End::Failed(result)
}

async fn write_json(wr: &mut tokio::net::unix::OwnedWriteHalf, v: &Value) -> Result<()> {
    let bytes = serde_json::to_vec(v).map_err(|e| Error::Io {
        what: "encode JSON".into(),
        source: e.into(),
    })?;
    wr.write_all(&bytes).await.map_err(|e| Error::Io {
        what: "OVSDB socket".into(),
        source: e,
    })
}

async fn handle(
    shared: &Arc<Shared>,
    wr: &mut tokio::net::unix::OwnedWriteHalf,
    pending: &mut HashMap<u64, (String, oneshot::Sender<Result<Value>>)>,
    monitored: &mut bool,
    msg: Value,
) -> Result<()> {
    let peer = shared.cfg.endpoint.as_str();
    if let Some(method) = msg.get("method").and_then(Value::as_str) {
        match method {
            "echo" => {
                let id = msg.get("id").cloned().unwrap_or(Value::Null);
                let params = msg.get("params").cloned().unwrap_or(json!([]));
                write_json(wr, &json!({"result": params, "error": null, "id": id})).await?;
            }
            "update" => {
                let updates = msg
                    .get("params")
                    .and_then(Value::as_array)
                    .and_then(|p| p.get(1))
                    .ok_or_else(|| Error::protocol(peer, "update without table-updates"))?;
                let applied = {
                    let mut c = shared.cache.write().unwrap_or_else(|p| p.into_inner());
                    c.apply(updates)
                };
                applied.map_err(|e| Error::protocol(peer, e))?;
                shared.bump();
            }
            other => tracing::debug!(method = other, "ignoring OVSDB request"),
        }
        return Ok(());
    }
    let Some(id) = msg.get("id") else {
        tracing::warn!("OVSDB message without method or id ignored");
        return Ok(());
    };
    let error = msg.get("error").filter(|e| !e.is_null()).cloned();
    let result = msg.get("result").cloned().unwrap_or(Value::Null);
    if id.as_u64() == Some(MONITOR_ID) && !*monitored {
        if let Some(e) = error {
            return Err(Error::Ovsdb {
                method: "monitor".into(),
                error: e.to_string(),
            });
        }
        let mut fresh = Cache::default();
        fresh.apply(&result).map_err(|e| Error::protocol(peer, e))?;
        // Tables with no rows still count as known (empty) tables.
        for (t, _) in &shared.cfg.monitor {
            fresh.tables.entry(t.clone()).or_default();
        }
        *shared.cache.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        *monitored = true;
        shared.connected.store(true, Ordering::SeqCst);
        shared.connections.fetch_add(1, Ordering::SeqCst);
        shared.bump();
        return Ok(());
    }
    let Some((method, tx)) = id.as_u64().and_then(|i| pending.remove(&i)) else {
        // Our keepalive echo, or an id we never sent: not fatal, nothing waits for it.
        if id != "keepalive" {
            tracing::warn!(%id, "OVSDB reply with unknown id ignored");
        }
        return Ok(());
    };
    let r = match error {
        Some(e) => Err(Error::Ovsdb {
            method,
            error: match (e.as_str(), msg.get("details")) {
                (Some(s), Some(Value::String(d))) => format!("{s}: {d}"),
                (Some(s), _) => s.to_string(),
                _ => e.to_string(),
            },
        }),
        None => Ok(result),
    };
    let _ = tx.send(r);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_applies_insert_modify_delete() {
        let mut c = Cache::default();
        c.apply(&json!({"Port": {"u1": {"new": {"name": "p1", "tag": 5}}}}))
            .unwrap();
        assert_eq!(c.by_name("Port", "p1").unwrap().0, "u1");
        c.apply(&json!({"Port": {"u1": {"old": {"tag": 5}, "new": {"name": "p1", "tag": 6}}}}))
            .unwrap();
        assert_eq!(c.row("Port", "u1").unwrap()["tag"], 6);
        c.apply(&json!({"Port": {"u1": {"old": {"name": "p1"}}}}))
            .unwrap();
        assert!(c.row("Port", "u1").is_none());
        assert!(c.apply(&json!([1])).is_err());
        assert!(c.apply(&json!({"Port": 3})).is_err());
        assert!(c.apply(&json!({"Port": {"u": {"new": 3}}})).is_err());
    }

    #[test]
    fn endpoint_forms() {
        assert!(Config::new("unix:/x/db.sock").socket_path().is_ok());
        assert!(Config::new("/x/db.sock").socket_path().is_ok());
        assert!(Config::new("tcp:1.2.3.4:6640").socket_path().is_err());
    }
}
