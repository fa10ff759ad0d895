//! Typed, idempotent helpers for the `Open_vSwitch` database: what netplugin needs.
//!
//! Reads come from the monitor cache; each logical change is one transaction, guarded with
//! `wait` so that a stale cache makes it fail (and retry) instead of duplicating rows. Every
//! write also bumps `Open_vSwitch.next_cfg`, like ovs-vsctl: we then wait for the cache to see
//! our own write (read-your-writes), and [`Client::wait_applied`] can wait for ovs-vswitchd.

use super::ops::{self, Row};
use super::{ovs_cfg, Cache, Client};
use crate::{Error, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Desired state of a bridge. `None`/empty fields are left as they are on an existing bridge
/// (except `protocols`, which is set exactly when non-empty).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BridgeSpec {
    pub name: String,
    /// `system` or `netdev`.
    pub datapath_type: Option<String>,
    /// `secure` or `standalone`.
    pub fail_mode: Option<String>,
    /// e.g. `["OpenFlow13", "OpenFlow14", "OpenFlow15"]`.
    pub protocols: Vec<String>,
    /// Keys set (others kept).
    pub other_config: BTreeMap<String, String>,
    pub external_ids: BTreeMap<String, String>,
}

/// Desired state of a single-interface port.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortSpec {
    pub bridge: String,
    pub name: String,
    /// Access VLAN (`tag`); `None` = no tag.
    pub tag: Option<u16>,
    /// Trunk VLANs; empty = all (OVS's meaning).
    pub trunks: Vec<u16>,
    /// Interface type: `""` (system device such as a veth), `internal`, `patch`, ...
    pub iface_type: String,
    /// Keys set on the Port row (others kept).
    pub external_ids: BTreeMap<String, String>,
    /// Keys set on the Interface row (others kept): Berth's `berth-endpoint-id`, ...
    pub iface_external_ids: BTreeMap<String, String>,
    pub iface_options: BTreeMap<String, String>,
    pub ofport_request: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceInfo {
    pub uuid: String,
    pub name: String,
    pub iface_type: String,
    /// `None` until ovs-vswitchd assigned one; `Some(-1)` when it failed (see `error`).
    pub ofport: Option<i64>,
    pub external_ids: BTreeMap<String, String>,
    pub options: BTreeMap<String, String>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortInfo {
    pub uuid: String,
    pub name: String,
    /// Name of the bridge that holds the port (none while it is being deleted).
    pub bridge: Option<String>,
    pub tag: Option<u16>,
    pub trunks: Vec<u16>,
    pub external_ids: BTreeMap<String, String>,
    pub interfaces: Vec<InterfaceInfo>,
}

fn name_eq(name: &str) -> Vec<Value> {
    vec![ops::cond("name", "==", json!(name))]
}

fn uuid_eq(uuid: &str) -> Vec<Value> {
    vec![ops::cond("_uuid", "==", ops::uuid(uuid))]
}

fn opt_str(v: Option<&Value>) -> Option<String> {
    match v {
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => ops::as_str_set(other).into_iter().next(),
        None => None,
    }
}

fn col<'a>(row: &'a Row, c: &str) -> &'a Value {
    row.get(c).unwrap_or(&Value::Null)
}

/// Mutations that make `column` contain `want` (keys set, other keys kept); none if it does.
fn map_mutations(column: &str, have: &Value, want: &BTreeMap<String, String>) -> Vec<Value> {
    let have = ops::as_str_map(have);
    let changed: BTreeMap<String, String> = want
        .iter()
        .filter(|(k, v)| have.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if changed.is_empty() {
        return Vec::new();
    }
    // Map "insert" does not overwrite existing keys, so drop them first.
    vec![
        json!([column, "delete", ops::set(changed.keys().map(|k| json!(k)))]),
        json!([column, "insert", ops::str_map(&changed)]),
    ]
}

fn vlan(field: &str, v: u16) -> Result<i64> {
    if v > 4095 {
        return Err(Error::invalid(field, "VLAN id must be 0..=4095"));
    }
    Ok(i64::from(v))
}

fn check_name(field: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 255 || name.chars().any(|c| c.is_control()) {
        return Err(Error::invalid(
            field,
            "must be 1..=255 characters without control characters",
        ));
    }
    Ok(())
}

impl Cache {
    fn bridge_of_port(&self, port_uuid: &str) -> Option<(String, String)> {
        let b = self.bridge_uuid_of_port(port_uuid)?;
        let r = self.row("Bridge", b)?;
        Some((b.to_string(), opt_str(r.get("name")).unwrap_or_default()))
    }

    fn interface_info(&self, uuid: &str) -> Option<InterfaceInfo> {
        let r = self.row("Interface", uuid)?;
        Some(InterfaceInfo {
            uuid: uuid.to_string(),
            name: opt_str(r.get("name")).unwrap_or_default(),
            iface_type: opt_str(r.get("type")).unwrap_or_default(),
            ofport: ops::as_int_set(col(r, "ofport")).first().copied(),
            external_ids: ops::as_str_map(col(r, "external_ids")),
            options: ops::as_str_map(col(r, "options")),
            error: opt_str(r.get("error")),
        })
    }

    fn port_info(&self, uuid: &str, r: &Row) -> PortInfo {
        PortInfo {
            uuid: uuid.to_string(),
            name: opt_str(r.get("name")).unwrap_or_default(),
            bridge: self.bridge_of_port(uuid).map(|(_, n)| n),
            tag: ops::as_int_set(col(r, "tag"))
                .first()
                .and_then(|t| u16::try_from(*t).ok()),
            trunks: ops::as_int_set(col(r, "trunks"))
                .into_iter()
                .filter_map(|t| u16::try_from(t).ok())
                .collect(),
            external_ids: ops::as_str_map(col(r, "external_ids")),
            interfaces: ops::as_uuid_set(col(r, "interfaces"))
                .iter()
                .filter_map(|i| self.interface_info(i))
                .collect(),
        }
    }
}

/// How often a guarded write is retried after its guard found the cache stale.
const GUARD_RETRIES: usize = 5;

fn is_guard_failure(e: &Error) -> bool {
    matches!(e, Error::Transaction { error, op, .. } if error == "timed out" && op.starts_with("wait"))
}

impl Client {
    /// Commits `operations` plus a `next_cfg` bump, then waits until the cache shows the
    /// result of this transaction. Returns the per-operation results (without the bump's).
    async fn write(&self, mut operations: Vec<Value>) -> Result<Vec<Value>> {
        let n = operations.len();
        operations.push(ops::mutate(
            "Open_vSwitch",
            vec![],
            vec![json!(["next_cfg", "+=", 1])],
        ));
        operations.push(ops::select("Open_vSwitch", vec![], Some(&["next_cfg"])));
        let mut results = self.transact(operations).await?;
        let cfg = results
            .get(n + 1)
            .and_then(|r| r.get("rows"))
            .and_then(|r| r.get(0))
            .and_then(|r| r.get("next_cfg"))
            .and_then(Value::as_i64);
        results.truncate(n);
        if let Some(cfg) = cfg {
            self.shared.last_cfg.fetch_max(cfg, Ordering::SeqCst);
            self.wait_until("OVSDB cache update", self.config().call_timeout, |c| {
                ovs_cfg(c, "next_cfg") >= cfg
            })
            .await?;
        }
        Ok(results)
    }

    /// Names of all bridges.
    pub fn bridges(&self) -> Vec<String> {
        self.with_cache(|c| {
            c.rows("Bridge")
                .filter_map(|(_, r)| opt_str(r.get("name")))
                .collect()
        })
    }

    /// Creates the bridge or brings an existing one to `spec`. Returns whether anything changed.
    pub async fn ensure_bridge(&self, spec: &BridgeSpec) -> Result<bool> {
        check_name("bridge name", &spec.name)?;
        for attempt in 0.. {
            match self.try_ensure_bridge(spec).await {
                Err(e) if is_guard_failure(&e) && attempt < GUARD_RETRIES => {
                    tokio::time::sleep(Duration::from_millis(10 << attempt)).await;
                }
                other => return other,
            }
        }
        unreachable!("loop returns")
    }

    async fn try_ensure_bridge(&self, spec: &BridgeSpec) -> Result<bool> {
        let (existing, have_root) = self.with_cache(|c| {
            (
                // Without `ports`: that set grows with every port and is not compared here.
                c.by_name("Bridge", &spec.name).map(|(u, r)| {
                    let row: Row = r
                        .iter()
                        .filter(|(k, _)| k.as_str() != "ports")
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    (u.to_string(), row)
                }),
                c.rows("Open_vSwitch").next().is_some(),
            )
        });
        if !have_root {
            return Err(Error::NotFound(
                "Open_vSwitch root row (database not initialized: ovs-vsctl init)".into(),
            ));
        }
        let protocols = ops::set(spec.protocols.iter().map(|p| json!(p)));
        match existing {
            None => {
                let mut br = Row::new();
                br.insert("name".into(), json!(spec.name));
                br.insert("ports".into(), ops::named_uuid("port"));
                if let Some(d) = &spec.datapath_type {
                    br.insert("datapath_type".into(), json!(d));
                }
                if let Some(f) = &spec.fail_mode {
                    br.insert("fail_mode".into(), json!(f));
                }
                br.insert("protocols".into(), protocols);
                br.insert("other_config".into(), ops::str_map(&spec.other_config));
                br.insert("external_ids".into(), ops::str_map(&spec.external_ids));
                let mut iface = Row::new();
                iface.insert("name".into(), json!(spec.name));
                iface.insert("type".into(), json!("internal"));
                let mut port = Row::new();
                port.insert("name".into(), json!(spec.name));
                port.insert("interfaces".into(), ops::named_uuid("iface"));
                self.write(vec![
                    ops::wait(
                        "Bridge",
                        name_eq(&spec.name),
                        &["name"],
                        "==",
                        vec![],
                        Some(0),
                    ),
                    ops::wait("Open_vSwitch", vec![], &[], "!=", vec![], Some(0)),
                    ops::insert("Interface", iface, Some("iface")),
                    ops::insert("Port", port, Some("port")),
                    ops::insert("Bridge", br, Some("bridge")),
                    ops::mutate(
                        "Open_vSwitch",
                        vec![],
                        vec![json!([
                            "bridges",
                            "insert",
                            ops::set([ops::named_uuid("bridge")])
                        ])],
                    ),
                ])
                .await?;
                Ok(true)
            }
            Some((uuid, row)) => {
                let mut set = Row::new();
                if let Some(d) = &spec.datapath_type {
                    if opt_str(row.get("datapath_type")).as_deref().unwrap_or("") != d {
                        set.insert("datapath_type".into(), json!(d));
                    }
                }
                if let Some(f) = &spec.fail_mode {
                    if opt_str(row.get("fail_mode")).as_deref() != Some(f.as_str()) {
                        set.insert("fail_mode".into(), json!(f));
                    }
                }
                if !spec.protocols.is_empty() {
                    let mut have = ops::as_str_set(col(&row, "protocols"));
                    let mut want = spec.protocols.clone();
                    have.sort();
                    want.sort();
                    if have != want {
                        set.insert("protocols".into(), protocols);
                    }
                }
                let mut muts = map_mutations(
                    "other_config",
                    col(&row, "other_config"),
                    &spec.other_config,
                );
                muts.extend(map_mutations(
                    "external_ids",
                    col(&row, "external_ids"),
                    &spec.external_ids,
                ));
                if set.is_empty() && muts.is_empty() {
                    return Ok(false);
                }
                let mut txn = Vec::new();
                if !set.is_empty() {
                    txn.push(ops::update("Bridge", uuid_eq(&uuid), set));
                }
                if !muts.is_empty() {
                    txn.push(ops::mutate("Bridge", uuid_eq(&uuid), muts));
                }
                self.write(txn).await?;
                Ok(true)
            }
        }
    }

    /// Deletes a bridge (with its ports). `false` if there was none.
    pub async fn delete_bridge(&self, name: &str) -> Result<bool> {
        let Some(uuid) = self.with_cache(|c| c.by_name("Bridge", name).map(|(u, _)| u.to_string()))
        else {
            return Ok(false);
        };
        self.write(vec![ops::mutate(
            "Open_vSwitch",
            vec![],
            vec![json!(["bridges", "delete", ops::set([ops::uuid(&uuid)])])],
        )])
        .await?;
        Ok(true)
    }

    /// Creates the port (with one interface of the same name) or brings it to `spec`.
    /// Returns whether anything changed. A port of that name on another bridge is an error.
    pub async fn ensure_port(&self, spec: &PortSpec) -> Result<bool> {
        check_name("port name", &spec.name)?;
        check_name("bridge name", &spec.bridge)?;
        if let Some(t) = spec.tag {
            vlan("tag", t)?;
        }
        for t in &spec.trunks {
            vlan("trunks", *t)?;
        }
        for attempt in 0.. {
            match self.try_ensure_port(spec).await {
                Err(e) if is_guard_failure(&e) && attempt < GUARD_RETRIES => {
                    tokio::time::sleep(Duration::from_millis(10 << attempt)).await;
                }
                other => return other,
            }
        }
        unreachable!("loop returns")
    }

    async fn try_ensure_port(&self, spec: &PortSpec) -> Result<bool> {
        type SeenPort = (String, Row, Option<(String, String)>);
        struct Seen {
            bridge: String,
            /// (uuid, row, (bridge uuid, bridge name) holding it).
            port: Option<SeenPort>,
            iface: Option<(String, Row)>,
        }
        let seen = self.with_cache(|c| {
            let bridge = c
                .by_name("Bridge", &spec.bridge)
                .map(|(u, _)| u.to_string())?;
            let port = c
                .by_name("Port", &spec.name)
                .map(|(u, r)| (u.to_string(), r.clone(), c.bridge_of_port(u)));
            let iface = port.as_ref().and_then(|(_, r, _)| {
                ops::as_uuid_set(col(r, "interfaces"))
                    .into_iter()
                    .find_map(|i| c.row("Interface", &i).map(|ir| (i.clone(), ir.clone())))
            });
            Some(Seen {
                bridge,
                port,
                iface,
            })
        });
        let Some(seen) = seen else {
            return Err(Error::NotFound(format!("bridge {}", spec.bridge)));
        };
        let tag = match spec.tag {
            Some(t) => json!(t),
            None => ops::set([]),
        };
        let mut trunks: Vec<u16> = spec.trunks.clone();
        trunks.sort_unstable();
        trunks.dedup();
        let trunks_v = ops::set(trunks.iter().map(|t| json!(t)));

        match seen.port {
            None => {
                let mut iface = Row::new();
                iface.insert("name".into(), json!(spec.name));
                iface.insert("type".into(), json!(spec.iface_type));
                iface.insert(
                    "external_ids".into(),
                    ops::str_map(&spec.iface_external_ids),
                );
                iface.insert("options".into(), ops::str_map(&spec.iface_options));
                if let Some(o) = spec.ofport_request {
                    iface.insert("ofport_request".into(), json!(o));
                }
                let mut port = Row::new();
                port.insert("name".into(), json!(spec.name));
                port.insert("interfaces".into(), ops::named_uuid("iface"));
                port.insert("tag".into(), tag);
                port.insert("trunks".into(), trunks_v);
                port.insert("external_ids".into(), ops::str_map(&spec.external_ids));
                let r = self
                    .write(vec![
                        ops::wait(
                            "Port",
                            name_eq(&spec.name),
                            &["name"],
                            "==",
                            vec![],
                            Some(0),
                        ),
                        ops::insert("Interface", iface, Some("iface")),
                        ops::insert("Port", port, Some("port")),
                        ops::mutate(
                            "Bridge",
                            uuid_eq(&seen.bridge),
                            vec![json!([
                                "ports",
                                "insert",
                                ops::set([ops::named_uuid("port")])
                            ])],
                        ),
                    ])
                    .await?;
                if r.get(3)
                    .and_then(|r| r.get("count"))
                    .and_then(Value::as_i64)
                    != Some(1)
                {
                    // The rows were garbage-collected with nothing referring to them.
                    return Err(Error::NotFound(format!("bridge {}", spec.bridge)));
                }
                Ok(true)
            }
            Some((puuid, prow, on)) => {
                match on {
                    Some((b, _)) if b == seen.bridge => {}
                    Some((_, other)) => {
                        return Err(Error::invalid(
                            "port name",
                            format!("{} is already a port of bridge {other}", spec.name),
                        ))
                    }
                    None => {
                        return Err(Error::invalid(
                            "port name",
                            format!("{} exists but belongs to no bridge", spec.name),
                        ))
                    }
                }
                let mut txn = Vec::new();
                let mut set = Row::new();
                let have_tag = ops::as_int_set(col(&prow, "tag"));
                if have_tag.first().copied() != spec.tag.map(i64::from) || have_tag.len() > 1 {
                    set.insert("tag".into(), tag);
                }
                let mut have_trunks = ops::as_int_set(col(&prow, "trunks"));
                have_trunks.sort_unstable();
                if have_trunks != trunks.iter().map(|t| i64::from(*t)).collect::<Vec<_>>() {
                    set.insert("trunks".into(), trunks_v);
                }
                if !set.is_empty() {
                    txn.push(ops::update("Port", uuid_eq(&puuid), set));
                }
                let muts = map_mutations(
                    "external_ids",
                    col(&prow, "external_ids"),
                    &spec.external_ids,
                );
                if !muts.is_empty() {
                    txn.push(ops::mutate("Port", uuid_eq(&puuid), muts));
                }
                if let Some((iuuid, irow)) = seen.iface {
                    if opt_str(irow.get("type")).unwrap_or_default() != spec.iface_type {
                        let mut s = Row::new();
                        s.insert("type".into(), json!(spec.iface_type));
                        txn.push(ops::update("Interface", uuid_eq(&iuuid), s));
                    }
                    let mut muts = map_mutations(
                        "external_ids",
                        col(&irow, "external_ids"),
                        &spec.iface_external_ids,
                    );
                    muts.extend(map_mutations(
                        "options",
                        col(&irow, "options"),
                        &spec.iface_options,
                    ));
                    if !muts.is_empty() {
                        txn.push(ops::mutate("Interface", uuid_eq(&iuuid), muts));
                    }
                }
                if txn.is_empty() {
                    return Ok(false);
                }
                self.write(txn).await?;
                Ok(true)
            }
        }
    }

    /// Removes a port from `bridge` (its Port and Interface rows go with it). `false` if the
    /// bridge has no such port.
    pub async fn delete_port(&self, bridge: &str, name: &str) -> Result<bool> {
        let found = self.with_cache(|c| {
            let (puuid, _) = c.by_name("Port", name)?;
            let (buuid, bname) = c.bridge_of_port(puuid)?;
            (bname == bridge).then(|| (buuid, puuid.to_string()))
        });
        let Some((buuid, puuid)) = found else {
            return Ok(false);
        };
        let r = self
            .write(vec![ops::mutate(
                "Bridge",
                uuid_eq(&buuid),
                vec![json!(["ports", "delete", ops::set([ops::uuid(&puuid)])])],
            )])
            .await?;
        Ok(r.first()
            .and_then(|r| r.get("count"))
            .and_then(Value::as_i64)
            == Some(1))
    }

    /// The port named `name`, from the cache.
    pub fn port(&self, name: &str) -> Option<PortInfo> {
        self.with_cache(|c| c.by_name("Port", name).map(|(u, r)| c.port_info(u, r)))
    }

    /// Ports whose own external_ids, or one of whose interfaces' external_ids, contain every
    /// pair of `want`.
    pub fn find_ports_by_external_ids(&self, want: &[(&str, &str)]) -> Vec<PortInfo> {
        let has = |m: &BTreeMap<String, String>| {
            want.iter()
                .all(|(k, v)| m.get(*k).map(String::as_str) == Some(*v))
        };
        self.with_cache(|c| {
            let mut out: Vec<PortInfo> = c
                .rows("Port")
                .map(|(u, r)| c.port_info(u, r))
                .filter(|p| {
                    has(&p.external_ids) || p.interfaces.iter().any(|i| has(&i.external_ids))
                })
                .collect();
            out.sort_by(|a, b| a.name.cmp(&b.name));
            out
        })
    }

    /// Interfaces whose external_ids contain every pair of `want`.
    pub fn find_interfaces_by_external_ids(&self, want: &[(&str, &str)]) -> Vec<InterfaceInfo> {
        self.with_cache(|c| {
            let mut out: Vec<InterfaceInfo> = c
                .rows("Interface")
                .filter_map(|(u, _)| c.interface_info(u))
                .filter(|i| {
                    want.iter()
                        .all(|(k, v)| i.external_ids.get(*k).map(String::as_str) == Some(*v))
                })
                .collect();
            out.sort_by(|a, b| a.name.cmp(&b.name));
            out
        })
    }

    /// The interface's OpenFlow port number: `Ok(None)` while ovs-vswitchd has not assigned
    /// one yet, an error when the interface does not exist or failed (ofport -1).
    pub fn interface_ofport(&self, name: &str) -> Result<Option<u32>> {
        let info = self.with_cache(|c| {
            c.by_name("Interface", name)
                .and_then(|(u, _)| c.interface_info(u))
        });
        let Some(info) = info else {
            return Err(Error::NotFound(format!("interface {name}")));
        };
        match info.ofport {
            None => Ok(None),
            Some(p) if p > 0 => u32::try_from(p)
                .map(Some)
                .map_err(|_| Error::protocol(&self.endpoint(), format!("ofport {p} out of range"))),
            Some(_) => Err(Error::Invalid {
                field: format!("interface {name}"),
                rule: format!(
                    "ovs-vswitchd could not add it: {}",
                    info.error.unwrap_or_else(|| "ofport -1".into())
                ),
            }),
        }
    }

    /// Waits until ovs-vswitchd assigned the interface an ofport.
    pub async fn wait_ofport(&self, name: &str, timeout: Duration) -> Result<u32> {
        let what = format!("ofport of interface {name}");
        self.wait_until(&what, timeout, |c| {
            c.by_name("Interface", name)
                .and_then(|(_, r)| ops::as_int_set(col(r, "ofport")).first().copied())
                .is_some()
        })
        .await?;
        self.interface_ofport(name)?.ok_or(Error::NotFound(what))
    }
}
