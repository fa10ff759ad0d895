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
                // Only what the helpers read: ovs-vswitchd rewrites status columns such as
                // Bridge.status or Port.statistics on its own, and every such write would
                // otherwise come back as an update.
                (
                    "Bridge".into(),
                    cols(&[
                        "name",
                        "ports",
                        "datapath_type",
                        "fail_mode",
                        "protocols",
                        "other_config",
                        "external_ids",
                    ]),
                ),
                (
                    "Port".into(),
                    cols(&["name", "interfaces", "tag", "trunks", "external_ids"]),
                ),
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
///
/// Rows carry every monitored column, as RFC 7047's monitor sends them (a column at its
/// default value is filled in, a one-element set is a bare atom). Name and bridge-membership
/// lookups go through indexes kept with the rows, so they cost the same with 5 or 5,000 ports.
#[derive(Debug, Default, Clone)]
pub struct Cache {
    tables: HashMap<String, BTreeMap<String, ops::Row>>,
    /// table -> `name` -> row UUID (Bridge, Port and Interface names are unique in the schema).
    names: HashMap<String, HashMap<String, String>>,
    /// Port UUID -> UUID of the Bridge whose `ports` holds it.
    port_bridge: HashMap<String, String>,
}

/// What an update2 `modify` means for a column, from the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ColKind {
    /// At most one value (`max` 1, optional or not): the diff is the new value, as
    /// ovsdb-server diffs only composite (`max` > 1) columns.
    Scalar,
    /// The diff holds the elements that changed membership.
    Set,
    /// The diff holds added, removed (old value repeated) and changed (new value) pairs.
    Map,
}

/// Monitored columns per table with their kind and default value.
#[derive(Debug, Default, Clone)]
struct Columns {
    tables: HashMap<String, BTreeMap<String, (ColKind, Value)>>,
}

impl Columns {
    /// From a `<database-schema>`, restricted to what `monitor` asks for.
    fn from_schema(
        schema: &Value,
        monitor: &[(String, Option<Vec<String>>)],
    ) -> std::result::Result<Columns, String> {
        let tables = schema
            .get("tables")
            .and_then(Value::as_object)
            .ok_or("schema without tables")?;
        let mut out = Columns::default();
        for (table, wanted) in monitor {
            let Some(cols) = tables
                .get(table)
                .and_then(|t| t.get("columns"))
                .and_then(Value::as_object)
            else {
                return Err(format!("schema has no table {table}"));
            };
            let mut m = BTreeMap::new();
            for (name, c) in cols {
                if wanted.as_ref().is_some_and(|w| !w.contains(name)) {
                    continue;
                }
                m.insert(
                    name.clone(),
                    column_kind(c.get("type").unwrap_or(&Value::Null)),
                );
            }
            out.tables.insert(table.clone(), m);
        }
        Ok(out)
    }
}

/// Kind and default of a `<type>` (RFC 7047 section 3.2).
fn column_kind(t: &Value) -> (ColKind, Value) {
    let atomic = |k: &Value| -> String {
        match k {
            Value::String(s) => s.clone(),
            other => other
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("string")
                .to_string(),
        }
    };
    let default_atom = |ty: &str| match ty {
        "integer" => json!(0),
        "real" => json!(0.0),
        "boolean" => json!(false),
        "uuid" => ops::uuid("00000000-0000-0000-0000-000000000000"),
        _ => json!(""),
    };
    let Some(obj) = t.as_object() else {
        return (ColKind::Scalar, default_atom(&atomic(t)));
    };
    if obj.contains_key("value") {
        return (ColKind::Map, json!(["map", []]));
    }
    let min = obj.get("min").and_then(Value::as_u64).unwrap_or(1);
    let max = match obj.get("max") {
        None => Some(1),
        Some(v) => v.as_u64(),
    };
    let key = atomic(obj.get("key").unwrap_or(&Value::Null));
    let default = if min == 0 {
        ops::set([])
    } else {
        default_atom(&key)
    };
    let kind = if max == Some(1) {
        ColKind::Scalar
    } else {
        ColKind::Set
    };
    (kind, default)
}

/// A set datum as OVSDB writes it: one element bare, otherwise `["set", [...]]`.
fn encode_set(mut items: Vec<Value>) -> Value {
    if items.len() == 1 {
        items.pop().unwrap_or(Value::Null)
    } else {
        json!(["set", items])
    }
}

/// Applies an update2 column diff to `have`.
fn apply_diff(kind: ColKind, have: Option<Value>, diff: &Value) -> Value {
    match kind {
        ColKind::Scalar => diff.clone(),
        ColKind::Set => {
            let mut items: Vec<Value> = have
                .as_ref()
                .map(|h| ops::set_items(h).into_iter().cloned().collect())
                .unwrap_or_default();
            for d in ops::set_items(diff) {
                match items.iter().position(|x| x == d) {
                    Some(i) => {
                        items.swap_remove(i);
                    }
                    None => items.push(d.clone()),
                }
            }
            encode_set(items)
        }
        ColKind::Map => {
            let pairs = |v: &Value| -> Vec<(Value, Value)> {
                v.as_array()
                    .filter(|a| a.len() == 2 && a[0] == "map")
                    .and_then(|a| a[1].as_array())
                    .into_iter()
                    .flatten()
                    .filter_map(|p| match p.as_array().map(Vec::as_slice) {
                        Some([k, v]) => Some((k.clone(), v.clone())),
                        _ => None,
                    })
                    .collect()
            };
            let mut m = have.as_ref().map(pairs).unwrap_or_default();
            for (k, v) in pairs(diff) {
                match m.iter().position(|(hk, _)| *hk == k) {
                    Some(i) if m[i].1 == v => {
                        m.remove(i);
                    }
                    Some(i) => m[i].1 = v,
                    None => m.push((k, v)),
                }
            }
            json!([
                "map",
                m.into_iter()
                    .map(|(k, v)| json!([k, v]))
                    .collect::<Vec<_>>()
            ])
        }
    }
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

    /// The row of `table` whose `name` column is `name` (indexed).
    pub fn by_name(&self, table: &str, name: &str) -> Option<(&str, &ops::Row)> {
        let uuid = self.names.get(table)?.get(name)?;
        let (k, r) = self.tables.get(table)?.get_key_value(uuid)?;
        Some((k.as_str(), r))
    }

    /// UUID of the Bridge holding Port `port_uuid` (indexed).
    pub fn bridge_uuid_of_port(&self, port_uuid: &str) -> Option<&str> {
        self.port_bridge.get(port_uuid).map(String::as_str)
    }

    fn index_name(&mut self, table: &str, uuid: &str, row: &ops::Row, add: bool) {
        let Some(name) = row.get("name").and_then(Value::as_str) else {
            return;
        };
        let idx = self.names.entry(table.to_string()).or_default();
        if add {
            idx.insert(name.to_string(), uuid.to_string());
        } else if idx.get(name).map(String::as_str) == Some(uuid) {
            // Only when it still points here: a new row of the same name may have come first.
            idx.remove(name);
        }
    }

    fn index_ports(&mut self, bridge: &str, ports: &Value, add: bool) {
        for p in ops::set_items(ports) {
            let Some(p) = ops::as_uuid(p) else { continue };
            if add {
                self.port_bridge.insert(p.to_string(), bridge.to_string());
            } else if self.port_bridge.get(p).map(String::as_str) == Some(bridge) {
                self.port_bridge.remove(p);
            }
        }
    }

    fn index_row(&mut self, table: &str, uuid: &str, row: &ops::Row, add: bool) {
        self.index_name(table, uuid, row, add);
        if table == "Bridge" {
            if let Some(ports) = row.get("ports") {
                self.index_ports(uuid, ports, add);
            }
        }
    }

    fn remove_row(&mut self, table: &str, uuid: &str) {
        if let Some(old) = self.tables.get_mut(table).and_then(|t| t.remove(uuid)) {
            self.index_row(table, uuid, &old, false);
        }
    }

    fn insert_row(&mut self, table: &str, uuid: &str, row: ops::Row) {
        self.remove_row(table, uuid);
        self.index_row(table, uuid, &row, true);
        self.tables
            .entry(table.to_string())
            .or_default()
            .insert(uuid.to_string(), row);
    }

    /// Applies a `<table-updates2>` object (monitor_cond reply or `update2` notification).
    fn apply2(&mut self, updates: &Value, cols: &Columns) -> std::result::Result<(), String> {
        let tables = updates
            .as_object()
            .ok_or("table-updates2 is not an object")?;
        for (table, rows) in tables {
            let rows = rows.as_object().ok_or("table-update2 is not an object")?;
            self.tables.entry(table.clone()).or_default();
            let kinds = cols.tables.get(table);
            for (uuid, change) in rows {
                let change = change
                    .as_object()
                    .ok_or_else(|| format!("row {uuid}: row-update2 is not an object"))?;
                let inserted = change.get("initial").or_else(|| change.get("insert"));
                if let Some(new) = inserted {
                    let Value::Object(new) = new else {
                        return Err(format!("row {uuid}: new row is not an object"));
                    };
                    let mut row = new.clone();
                    // Columns at their default value are left out: put them back.
                    for (c, (_, default)) in kinds.into_iter().flatten() {
                        if !row.contains_key(c) {
                            row.insert(c.clone(), default.clone());
                        }
                    }
                    self.insert_row(table, uuid, row);
                } else if let Some(diff) = change.get("modify") {
                    let Value::Object(diff) = diff else {
                        return Err(format!("row {uuid}: \"modify\" is not an object"));
                    };
                    self.modify_row(table, uuid, diff, kinds)?;
                } else if change.contains_key("delete") {
                    self.remove_row(table, uuid);
                } else {
                    return Err(format!("row {uuid}: unknown row-update2"));
                }
            }
        }
        Ok(())
    }

    fn modify_row(
        &mut self,
        table: &str,
        uuid: &str,
        diff: &ops::Row,
        kinds: Option<&BTreeMap<String, (ColKind, Value)>>,
    ) -> std::result::Result<(), String> {
        let Some(mut row) = self.tables.get_mut(table).and_then(|t| t.remove(uuid)) else {
            return Err(format!("modify of unknown row {table} {uuid}"));
        };
        if diff.contains_key("name") {
            self.index_name(table, uuid, &row, false);
        }
        for (c, d) in diff {
            let Some((kind, _)) = kinds.and_then(|k| k.get(c)) else {
                return Err(format!("modify of column {table}.{c} not in the schema"));
            };
            let have = row.remove(c);
            let now = apply_diff(*kind, have, d);
            if table == "Bridge" && c == "ports" {
                // The diff lists exactly the ports that joined or left this bridge.
                let members = ops::set_items(&now);
                for p in ops::set_items(d) {
                    let Some(pu) = ops::as_uuid(p) else { continue };
                    if members.contains(&p) {
                        self.port_bridge.insert(pu.to_string(), uuid.to_string());
                    } else if self.port_bridge.get(pu).map(String::as_str) == Some(uuid) {
                        self.port_bridge.remove(pu);
                    }
                }
            }
            row.insert(c.clone(), now);
        }
        if diff.contains_key("name") {
            self.index_name(table, uuid, &row, true);
        }
        self.tables
            .get_mut(table)
            .map(|t| t.insert(uuid.to_string(), row));
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
/// Id of the `get_schema` request sent before the monitor (replies come in order).
const SCHEMA_ID: &str = "schema";

/// Per-connection state of the monitor.
#[derive(Default)]
struct Monitor {
    /// The initial contents arrived: calls may go out.
    ready: bool,
    /// Monitored columns from the schema; needed to apply update2 diffs.
    columns: Option<Columns>,
}

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
    let mut mon = Monitor::default();
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
    // monitor_cond (update2): a modification carries only what changed (one port added to a
    // bridge is one UUID, not the bridge's whole port set). Its diffs need the column types,
    // hence the schema first; ovsdb-server answers both in order.
    let schema = json!({"method": "get_schema", "id": SCHEMA_ID, "params": [shared.cfg.database]});
    let monitor = json!({"method": "monitor_cond", "id": MONITOR_ID,
        "params": [shared.cfg.database, "berth", requests]});
    let mut first = match serde_json::to_vec(&schema) {
        Ok(b) => b,
        Err(e) => {
            return End::Failed(Error::Io {
                what: "encode JSON".into(),
                source: e.into(),
            })
        }
    };
    first.extend(serde_json::to_vec(&monitor).unwrap_or_default());
    if let Err(e) = wr.write_all(&first).await {
        return End::Failed(Error::Io {
            what: "OVSDB socket".into(),
            source: e,
        });
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
                    match handle(shared, &mut wr, &mut pending, &mut mon, msg).await {
                        Ok(()) => {}
                        Err(e) => { err = Some(e); break; }
                    }
                }
                if let Some(e) = err { break e; }
            }
            call = rx.recv(), if mon.ready => {
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
    mon: &mut Monitor,
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
            "update2" => {
                let updates = msg
                    .get("params")
                    .and_then(Value::as_array)
                    .and_then(|p| p.get(1))
                    .ok_or_else(|| Error::protocol(peer, "update2 without table-updates2"))?;
                let cols = mon
                    .columns
                    .as_ref()
                    .ok_or_else(|| Error::protocol(peer, "update2 before the schema reply"))?;
                let applied = {
                    let mut c = shared.cache.write().unwrap_or_else(|p| p.into_inner());
                    c.apply2(updates, cols)
                };
                applied.map_err(|e| Error::protocol(peer, e))?;
                shared.bump();
            }
            "update" => {
                return Err(Error::protocol(
                    peer,
                    "\"update\" notification for a monitor never requested (we use monitor_cond)",
                ))
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
    if id == SCHEMA_ID && mon.columns.is_none() {
        if let Some(e) = error {
            return Err(Error::Ovsdb {
                method: "get_schema".into(),
                error: e.to_string(),
            });
        }
        let cols = Columns::from_schema(&result, &shared.cfg.monitor)
            .map_err(|e| Error::protocol(peer, format!("schema: {e}")))?;
        mon.columns = Some(cols);
        return Ok(());
    }
    if id.as_u64() == Some(MONITOR_ID) && !mon.ready {
        if let Some(e) = error {
            return Err(Error::Ovsdb {
                method: "monitor_cond".into(),
                error: e.to_string(),
            });
        }
        let mut fresh = Cache::default();
        let no_schema = Columns::default();
        fresh
            .apply2(&result, mon.columns.as_ref().unwrap_or(&no_schema))
            .map_err(|e| Error::protocol(peer, e))?;
        // Tables with no rows still count as known (empty) tables.
        for (t, _) in &shared.cfg.monitor {
            fresh.tables.entry(t.clone()).or_default();
        }
        *shared.cache.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        mon.ready = true;
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
mod fuzz_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn columns() -> Columns {
        let schema = json!({"tables": {
            "Port": {"columns": {
                "name": {"type": "string"},
                "tag": {"type": {"key": {"type": "integer"}, "min": 0, "max": 1}},
                "external_ids": {"type": {"key": "string", "value": "string", "min": 0, "max": "unlimited"}},
            }},
            "Bridge": {"columns": {
                "name": {"type": "string"},
                "ports": {"type": {"key": {"type": "uuid", "refTable": "Port"}, "min": 0, "max": "unlimited"}},
                "statistics": {"type": {"key": "string", "value": "integer", "min": 0, "max": "unlimited"}},
            }},
        }});
        let monitor = vec![
            ("Port".to_string(), None),
            (
                "Bridge".to_string(),
                Some(vec!["name".to_string(), "ports".to_string()]),
            ),
        ];
        Columns::from_schema(&schema, &monitor).unwrap()
    }

    #[test]
    fn cache_applies_update2() {
        let cols = columns();
        assert!(!cols.tables["Bridge"].contains_key("statistics"));
        let mut c = Cache::default();
        // Defaults left out of "initial" are filled in.
        c.apply2(&json!({"Port": {"u1": {"initial": {"name": "p1"}}}}), &cols)
            .unwrap();
        assert_eq!(c.by_name("Port", "p1").unwrap().0, "u1");
        assert_eq!(c.row("Port", "u1").unwrap()["tag"], json!(["set", []]));
        assert_eq!(
            c.row("Port", "u1").unwrap()["external_ids"],
            json!(["map", []])
        );
        // Optional value (max 1): the "diff" is the new value, as for scalars.
        c.apply2(&json!({"Port": {"u1": {"modify": {"tag": 5}}}}), &cols)
            .unwrap();
        assert_eq!(c.row("Port", "u1").unwrap()["tag"], json!(5));
        c.apply2(&json!({"Port": {"u1": {"modify": {"tag": 6}}}}), &cols)
            .unwrap();
        assert_eq!(c.row("Port", "u1").unwrap()["tag"], json!(6));
        c.apply2(
            &json!({"Port": {"u1": {"modify": {"tag": ["set", []]}}}}),
            &cols,
        )
        .unwrap();
        assert_eq!(c.row("Port", "u1").unwrap()["tag"], json!(["set", []]));
        // Map diff: add, change, remove.
        c.apply2(
            &json!({"Port": {"u1": {"modify": {"external_ids": ["map", [["a", "1"], ["b", "2"]]]}}}}),
            &cols,
        )
        .unwrap();
        c.apply2(
            &json!({"Port": {"u1": {"modify": {"external_ids": ["map", [["a", "9"], ["b", "2"]]]}}}}),
            &cols,
        )
        .unwrap();
        assert_eq!(
            ops::as_str_map(&c.row("Port", "u1").unwrap()["external_ids"]),
            [("a".to_string(), "9".to_string())].into_iter().collect()
        );
        // Rename moves the name index.
        c.apply2(&json!({"Port": {"u1": {"modify": {"name": "p2"}}}}), &cols)
            .unwrap();
        assert!(c.by_name("Port", "p1").is_none());
        assert_eq!(c.by_name("Port", "p2").unwrap().0, "u1");
        // Bridge membership follows the ports diff.
        c.apply2(
            &json!({"Bridge": {"b1": {"insert": {"name": "br", "ports": ["uuid", "u1"]}},
                               "b2": {"insert": {"name": "br2"}}}}),
            &cols,
        )
        .unwrap();
        assert_eq!(c.bridge_uuid_of_port("u1"), Some("b1"));
        // A port moving between bridges in one update, in either order.
        c.apply2(
            &json!({"Bridge": {"b1": {"modify": {"ports": ["uuid", "u1"]}},
                               "b2": {"modify": {"ports": ["uuid", "u1"]}}}}),
            &cols,
        )
        .unwrap();
        assert_eq!(c.bridge_uuid_of_port("u1"), Some("b2"));
        assert_eq!(c.row("Bridge", "b1").unwrap()["ports"], json!(["set", []]));
        assert_eq!(
            c.row("Bridge", "b2").unwrap()["ports"],
            json!(["uuid", "u1"])
        );
        c.apply2(
            &json!({"Bridge": {"b2": {"modify": {"ports": ["set", [["uuid", "u1"], ["uuid", "u3"]]]}}}}),
            &cols,
        )
        .unwrap();
        assert_eq!(c.bridge_uuid_of_port("u1"), None);
        assert_eq!(c.bridge_uuid_of_port("u3"), Some("b2"));
        // Delete; a new row with the same name arriving in the same update keeps the index.
        c.apply2(
            &json!({"Port": {"u0": {"insert": {"name": "p2"}}, "u1": {"delete": null}}}),
            &cols,
        )
        .unwrap();
        assert!(c.row("Port", "u1").is_none());
        assert_eq!(c.by_name("Port", "p2").unwrap().0, "u0");
        c.apply2(&json!({"Bridge": {"b2": {"delete": null}}}), &cols)
            .unwrap();
        assert_eq!(c.bridge_uuid_of_port("u3"), None);
        // Malformed.
        assert!(c.apply2(&json!([1]), &cols).is_err());
        assert!(c.apply2(&json!({"Port": 3}), &cols).is_err());
        assert!(c
            .apply2(&json!({"Port": {"u": {"new": {}}}}), &cols)
            .is_err());
        assert!(c
            .apply2(&json!({"Port": {"u": {"insert": 3}}}), &cols)
            .is_err());
        assert!(c
            .apply2(&json!({"Port": {"zz": {"modify": {"tag": 1}}}}), &cols)
            .is_err());
        assert!(c
            .apply2(&json!({"Port": {"u0": {"modify": {"nope": 1}}}}), &cols)
            .is_err());
    }

    #[test]
    fn endpoint_forms() {
        assert!(Config::new("unix:/x/db.sock").socket_path().is_ok());
        assert!(Config::new("/x/db.sock").socket_path().is_ok());
        assert!(Config::new("tcp:1.2.3.4:6640").socket_path().is_err());
    }
}
