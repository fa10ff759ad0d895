//! OVSDB client against a real ovsdb-server + ovs-vswitchd, checked with ovs-vsctl.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a panic is how a test reports failure"
)]

mod common;

use common::Ovs;
use ovs_ffi::ovsdb::{ops, BridgeSpec, Client, Config, PortSpec};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn client(ovs: &Ovs) -> Client {
    let mut cfg = Config::new(ovs.endpoint());
    cfg.call_timeout = Duration::from_secs(10);
    Client::connect(cfg).await.expect("connect to ovsdb-server")
}

fn bridge_spec(name: &str) -> BridgeSpec {
    BridgeSpec {
        name: name.into(),
        datapath_type: Some("netdev".into()),
        fail_mode: Some("secure".into()),
        protocols: vec![
            "OpenFlow13".into(),
            "OpenFlow14".into(),
            "OpenFlow15".into(),
        ],
        other_config: map(&[("disable-in-band", "true")]),
        external_ids: map(&[("berth-owner", "test")]),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_rpc_and_transact_ops() {
    let ovs = Ovs::start();
    let c = client(&ovs).await;
    c.echo().await.unwrap();
    assert!(c
        .list_dbs()
        .await
        .unwrap()
        .contains(&"Open_vSwitch".to_string()));
    let schema = c.get_schema("Open_vSwitch").await.unwrap();
    assert!(schema["tables"]["Bridge"].is_object());

    // insert with named-uuid + select + wait in one transaction (QoS is a root table).
    let mut row = ops::Row::new();
    row.insert("type".into(), json!("linux-htb"));
    row.insert("external_ids".into(), ops::str_map(&map(&[("k", "v1")])));
    let r = c
        .transact(vec![
            ops::wait(
                "QoS",
                vec![ops::cond("type", "==", json!("linux-htb"))],
                &["type"],
                "==",
                vec![],
                Some(0),
            ),
            ops::insert("QoS", row, Some("q")),
            ops::select(
                "QoS",
                vec![ops::cond("_uuid", "==", ops::named_uuid("q"))],
                Some(&["type"]),
            ),
        ])
        .await
        .unwrap();
    let uuid = ops::as_uuid(&r[1]["uuid"]).unwrap().to_string();
    assert_eq!(r[2]["rows"][0]["type"], "linux-htb");
    assert_eq!(
        ovs.vsctl(&["get", "QoS", &uuid, "type"]).trim(),
        "linux-htb"
    );

    // update + mutate
    let mut set = ops::Row::new();
    set.insert("type".into(), json!("linux-hfsc"));
    let where_ = vec![ops::cond("_uuid", "==", ops::uuid(&uuid))];
    let r = c
        .transact(vec![
            ops::update("QoS", where_.clone(), set),
            ops::mutate(
                "QoS",
                where_.clone(),
                vec![json!([
                    "external_ids",
                    "insert",
                    ops::str_map(&map(&[("k2", "v2")]))
                ])],
            ),
        ])
        .await
        .unwrap();
    assert_eq!(r[0]["count"], 1);
    assert_eq!(
        ovs.vsctl(&["get", "QoS", &uuid, "type"]).trim(),
        "linux-hfsc"
    );
    assert_eq!(
        ovs.vsctl(&["get", "QoS", &uuid, "external_ids"]).trim(),
        "{k=v1, k2=v2}"
    );

    // A failing wait aborts the whole transaction: nothing half-done.
    let err = c
        .transact(vec![
            ops::delete("QoS", where_.clone()),
            ops::wait(
                "QoS",
                where_.clone(),
                &["type"],
                "==",
                vec![json!({"type": "nope"})],
                Some(0),
            ),
        ])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("timed out"), "{err}");
    assert_eq!(
        ovs.vsctl(&["get", "QoS", &uuid, "type"]).trim(),
        "linux-hfsc"
    );

    // delete
    let r = c.transact(vec![ops::delete("QoS", where_)]).await.unwrap();
    assert_eq!(r[0]["count"], 1);
    assert_eq!(ovs.vsctl(&["list", "QoS"]).trim(), "");

    // An unknown table is a clear error, not a panic.
    let err = c
        .transact(vec![ops::select("Nope", vec![], None)])
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("Nope") || err.to_string().contains("unknown"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_and_ports_golden_and_idempotent() {
    let ovs = Ovs::start();
    let c = client(&ovs).await;
    let spec = bridge_spec("br0");
    assert!(c.ensure_bridge(&spec).await.unwrap());
    assert!(
        !c.ensure_bridge(&spec).await.unwrap(),
        "second ensure must change nothing"
    );
    assert_eq!(ovs.vsctl(&["list-br"]).trim(), "br0");
    assert_eq!(
        ovs.vsctl(&["get", "Bridge", "br0", "datapath_type"]).trim(),
        "netdev"
    );
    assert_eq!(
        ovs.vsctl(&["get", "Bridge", "br0", "fail_mode"]).trim(),
        "secure"
    );
    assert_eq!(
        ovs.vsctl(&["get", "Bridge", "br0", "protocols"]).trim(),
        "[OpenFlow13, OpenFlow14, OpenFlow15]"
    );
    assert_eq!(
        ovs.vsctl(&["get", "Bridge", "br0", "other_config:disable-in-band"])
            .trim(),
        "\"true\""
    );
    assert_eq!(
        ovs.vsctl(&["--columns=name", "--bare", "list", "Bridge"])
            .trim(),
        "br0"
    );

    // A changed spec converges the existing bridge, keeping keys it does not name.
    ovs.vsctl(&[
        "set",
        "Bridge",
        "br0",
        "other_config:keep=me",
        "fail_mode=standalone",
    ]);
    let mut spec2 = spec.clone();
    spec2
        .other_config
        .insert("mac-aging-time".into(), "600".into());
    assert!(c.ensure_bridge(&spec2).await.unwrap());
    assert_eq!(
        ovs.vsctl(&["get", "Bridge", "br0", "fail_mode"]).trim(),
        "secure"
    );
    assert_eq!(
        ovs.vsctl(&["get", "Bridge", "br0", "other_config"]).trim(),
        r#"{disable-in-band="true", keep=me, mac-aging-time="600"}"#
    );

    // Ports: access port with tag and external ids; trunk port.
    let access = PortSpec {
        bridge: "br0".into(),
        name: "vbaccess".into(),
        tag: Some(100),
        iface_type: "internal".into(),
        external_ids: map(&[("berth-network-id", "net1")]),
        iface_external_ids: map(&[("berth-endpoint-id", "ep1"), ("berth-network-id", "net1")]),
        ..Default::default()
    };
    assert!(c.ensure_port(&access).await.unwrap());
    assert!(!c.ensure_port(&access).await.unwrap());
    let trunk = PortSpec {
        bridge: "br0".into(),
        name: "vbtrunk".into(),
        trunks: vec![200, 100],
        iface_type: "internal".into(),
        ..Default::default()
    };
    assert!(c.ensure_port(&trunk).await.unwrap());
    assert!(!c.ensure_port(&trunk).await.unwrap());

    let ports = ovs.vsctl(&["list-ports", "br0"]);
    assert_eq!(ports.lines().collect::<Vec<_>>(), ["vbaccess", "vbtrunk"]);
    assert_eq!(
        ovs.vsctl(&["--bare", "--columns=name", "find", "Port", "name=vbaccess"])
            .trim(),
        "vbaccess"
    );
    assert_eq!(ovs.vsctl(&["get", "Port", "vbaccess", "tag"]).trim(), "100");
    assert_eq!(
        ovs.vsctl(&["get", "Port", "vbtrunk", "trunks"]).trim(),
        "[100, 200]"
    );
    assert_eq!(
        ovs.vsctl(&["get", "Port", "vbaccess", "external_ids"])
            .trim(),
        r#"{berth-network-id=net1}"#
    );
    assert_eq!(
        ovs.vsctl(&["get", "Interface", "vbaccess", "external_ids"])
            .trim(),
        r#"{berth-endpoint-id=ep1, berth-network-id=net1}"#
    );
    assert_eq!(
        ovs.vsctl(&["get", "Interface", "vbaccess", "type"]).trim(),
        "internal"
    );

    // find by external_ids (Port or Interface rows), ofport.
    let found = c.find_ports_by_external_ids(&[("berth-endpoint-id", "ep1")]);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].name, "vbaccess");
    assert_eq!(found[0].bridge.as_deref(), Some("br0"));
    assert_eq!(found[0].tag, Some(100));
    assert_eq!(
        c.find_ports_by_external_ids(&[("berth-network-id", "net1")])
            .len(),
        1
    );
    assert!(c
        .find_ports_by_external_ids(&[("berth-endpoint-id", "nope")])
        .is_empty());
    assert_eq!(
        c.find_interfaces_by_external_ids(&[("berth-endpoint-id", "ep1")])[0].name,
        "vbaccess"
    );
    let ofport = c
        .wait_ofport("vbaccess", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        ovs.vsctl(&["get", "Interface", "vbaccess", "ofport"])
            .trim(),
        ofport.to_string()
    );
    assert!(c.interface_ofport("nope").is_err());

    // Changing the tag and retagging as trunk converges in place (same row).
    let uuid_before = ovs.vsctl(&["get", "Port", "vbaccess", "_uuid"]);
    let mut access2 = access.clone();
    access2.tag = Some(101);
    assert!(c.ensure_port(&access2).await.unwrap());
    assert_eq!(ovs.vsctl(&["get", "Port", "vbaccess", "tag"]).trim(), "101");
    assert_eq!(
        ovs.vsctl(&["get", "Port", "vbaccess", "_uuid"]),
        uuid_before
    );
    access2.tag = None;
    assert!(c.ensure_port(&access2).await.unwrap());
    assert_eq!(ovs.vsctl(&["get", "Port", "vbaccess", "tag"]).trim(), "[]");

    // Bad input is rejected before reaching the database.
    let mut bad = access.clone();
    bad.tag = Some(5000);
    assert!(c
        .ensure_port(&bad)
        .await
        .unwrap_err()
        .to_string()
        .contains("tag"));
    let mut bad = access.clone();
    bad.bridge = "nobridge".into();
    assert!(c.ensure_port(&bad).await.is_err());

    // delete, twice.
    assert!(c.delete_port("br0", "vbaccess").await.unwrap());
    assert!(!c.delete_port("br0", "vbaccess").await.unwrap());
    assert_eq!(ovs.vsctl(&["list-ports", "br0"]).trim(), "vbtrunk");
    assert_eq!(
        ovs.vsctl(&[
            "--bare",
            "--columns=name",
            "find",
            "Interface",
            "name=vbaccess"
        ])
        .trim(),
        ""
    );
    c.wait_applied(Duration::from_secs(10)).await.unwrap();

    assert!(c.delete_bridge("br0").await.unwrap());
    assert!(!c.delete_bridge("br0").await.unwrap());
    assert_eq!(ovs.vsctl(&["list-br"]).trim(), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_ensure_makes_one_row() {
    let ovs = Ovs::start();
    let c1 = client(&ovs).await;
    let c2 = client(&ovs).await;
    c1.ensure_bridge(&bridge_spec("br0")).await.unwrap();
    // c2 learns of c1's bridge through its monitor, a moment later: the race under test is
    // two ensure_port calls, not a cache that has not heard of the bridge yet.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !c2.bridges().iter().any(|b| b == "br0") {
        assert!(std::time::Instant::now() < deadline, "c2 never saw br0");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let spec = PortSpec {
        bridge: "br0".into(),
        name: "vbrace".into(),
        tag: Some(7),
        iface_type: "internal".into(),
        ..Default::default()
    };
    let (a, b) = tokio::join!(c1.ensure_port(&spec), c2.ensure_port(&spec));
    a.unwrap();
    b.unwrap();
    assert_eq!(
        ovs.vsctl(&["--bare", "--columns=_uuid", "find", "Port", "name=vbrace"])
            .lines()
            .filter(|l| !l.is_empty())
            .count(),
        1
    );
    assert_eq!(ovs.vsctl(&["list-ports", "br0"]).trim(), "vbrace");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_ovsdb_server_and_vswitchd_restart() {
    let mut ovs = Ovs::start();
    let mut cfg = Config::new(ovs.endpoint());
    cfg.call_timeout = Duration::from_secs(10);
    cfg.echo_interval = Duration::from_millis(500);
    let c = Client::connect(cfg).await.unwrap();
    c.ensure_bridge(&bridge_spec("br0")).await.unwrap();
    assert_eq!(c.connection_count(), 1);

    ovs.kill_ovsdb();
    // While it is down, calls fail fast and clearly instead of hanging.
    let err = c.echo().await.unwrap_err();
    assert!(
        err.is_connection_error() || matches!(err, ovs_ffi::Error::Timeout { .. }),
        "{err}"
    );
    ovs.start_ovsdb();
    c.wait_until("reconnect", Duration::from_secs(10), |_| true)
        .await
        .unwrap();
    assert!(c.connection_count() >= 2);
    // The cache was rebuilt from the new session and writes work again.
    assert_eq!(c.bridges(), ["br0"]);
    let spec = PortSpec {
        bridge: "br0".into(),
        name: "vbafter".into(),
        iface_type: "internal".into(),
        ..Default::default()
    };
    assert!(c.ensure_port(&spec).await.unwrap());
    assert_eq!(ovs.vsctl(&["list-ports", "br0"]).trim(), "vbafter");

    // ovs-vswitchd restart: the database is unaffected, ofports come back.
    ovs.kill_vswitchd();
    ovs.start_vswitchd();
    c.wait_ofport("vbafter", Duration::from_secs(10))
        .await
        .unwrap();
    c.wait_applied(Duration::from_secs(10)).await.unwrap();
}

/// Sets and maps in a canonical order, so two caches can be compared.
fn canonical(v: &serde_json::Value) -> serde_json::Value {
    match v.as_array().map(Vec::as_slice) {
        Some([kind, items]) if kind == "set" || kind == "map" => {
            let mut items: Vec<serde_json::Value> = items
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(canonical)
                .collect();
            items.sort_by_key(|a| a.to_string());
            if kind == "set" && items.len() == 1 {
                return items.pop().unwrap();
            }
            json!([kind, items])
        }
        _ => v.clone(),
    }
}

fn snapshot(
    c: &Client,
    table: &str,
    columns: &[&str],
) -> BTreeMap<String, BTreeMap<String, serde_json::Value>> {
    c.with_cache(|cache| {
        cache
            .rows(table)
            .map(|(u, r)| {
                let row = columns
                    .iter()
                    .map(|col| {
                        (
                            col.to_string(),
                            canonical(r.get(*col).unwrap_or(&serde_json::Value::Null)),
                        )
                    })
                    .collect();
                (u.to_string(), row)
            })
            .collect()
    })
}

/// The cache kept current from update2 diffs (sets, maps, optional values, inserts, deletes,
/// changes by another client) equals the initial contents a fresh monitor receives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_from_diffs_matches_fresh_monitor() {
    let ovs = Ovs::start();
    let c = client(&ovs).await;
    c.ensure_bridge(&bridge_spec("br0")).await.unwrap();
    for i in 0..12 {
        let spec = PortSpec {
            bridge: "br0".into(),
            name: format!("vbd{i}"),
            tag: (i % 3 != 0).then_some(100 + i as u16),
            trunks: if i % 4 == 0 { vec![7, 8] } else { vec![] },
            iface_type: "internal".into(),
            external_ids: map(&[("k", "v")]),
            iface_external_ids: map(&[("berth-endpoint-id", &format!("ep{i}"))]),
            ..Default::default()
        };
        c.ensure_port(&spec).await.unwrap();
    }
    for i in (0..12).step_by(3) {
        assert!(c.delete_port("br0", &format!("vbd{i}")).await.unwrap());
    }
    // Changes made by someone else: an optional value set and cleared, map keys added,
    // changed and removed, a set shrunk.
    ovs.vsctl(&[
        "set",
        "Port",
        "vbd1",
        "tag=5",
        "external_ids:k=w",
        "external_ids:n=1",
    ]);
    ovs.vsctl(&["clear", "Port", "vbd2", "tag"]);
    ovs.vsctl(&["remove", "Port", "vbd4", "external_ids", "k"]);
    ovs.vsctl(&["set", "Port", "vbd4", "trunks=9"]);
    ovs.vsctl(&[
        "set",
        "Bridge",
        "br0",
        "fail_mode=standalone",
        "other_config:x=y",
    ]);
    ovs.vsctl(&[
        "add-port",
        "br0",
        "vbcli",
        "--",
        "set",
        "Interface",
        "vbcli",
        "type=internal",
    ]);
    c.wait_applied(Duration::from_secs(10)).await.unwrap();
    let fresh = client(&ovs).await;
    let bridge_cols = [
        "name",
        "ports",
        "datapath_type",
        "fail_mode",
        "protocols",
        "other_config",
        "external_ids",
    ];
    let port_cols = ["name", "interfaces", "tag", "trunks", "external_ids"];
    let iface_cols = ["name", "type", "external_ids", "options"];
    // The writes above are acknowledged; give c's monitor a moment for the last one.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let same = snapshot(&c, "Bridge", &bridge_cols) == snapshot(&fresh, "Bridge", &bridge_cols)
            && snapshot(&c, "Port", &port_cols) == snapshot(&fresh, "Port", &port_cols)
            && snapshot(&c, "Interface", &iface_cols) == snapshot(&fresh, "Interface", &iface_cols);
        if same {
            break;
        }
        if std::time::Instant::now() > deadline {
            assert_eq!(
                snapshot(&c, "Port", &port_cols),
                snapshot(&fresh, "Port", &port_cols)
            );
            assert_eq!(
                snapshot(&c, "Bridge", &bridge_cols),
                snapshot(&fresh, "Bridge", &bridge_cols)
            );
            panic!("Interface tables differ");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // 12 - 4 deleted + vbcli + the bridge's own port.
    assert_eq!(snapshot(&c, "Port", &port_cols).len(), 10);
    assert_eq!(c.port("vbd1").unwrap().tag, Some(5));
    assert_eq!(c.port("vbd2").unwrap().tag, None);
    assert_eq!(c.port("vbcli").unwrap().bridge.as_deref(), Some("br0"));
    assert!(c.port("vbd3").is_none());
}
