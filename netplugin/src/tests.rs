//! Handler tests: Docker's exchanges byte for byte through the router, on the in-memory store
//! and the recording datapath.

use std::sync::Arc;

use bytes::Bytes;
use http::Method;
use plugin_transport::{Request, Router};
use serde_json::{json, Value};

use crate::dataplane::fake::FakeDataplane;
use crate::handlers::plugin_router;
use crate::ipam::{Ipam, IpamConfig};
use crate::network::{LockWaits, NetConfig, Service};
use crate::state::State;
use crate::store::memory::MemStore;

struct T {
    router: Router,
    dp: Arc<FakeDataplane>,
    svc: Arc<Service>,
}

fn setup() -> T {
    setup_host(Arc::new(MemStore::new()), "h1")
}

/// A host's service over a store other hosts may share (the fleet in one process).
fn setup_host(store: Arc<dyn crate::store::Store>, host: &str) -> T {
    setup_on(store, host, LockWaits::default())
}

fn setup_on(store: Arc<dyn crate::store::Store>, host: &str, waits: LockWaits) -> T {
    let state = State::new(store, host);
    let ipam = Arc::new(Ipam::new(
        state.clone(),
        IpamConfig {
            default_pools: vec!["10.240.0.0/16".parse().unwrap()],
            default_prefix: 24,
        },
    ));
    let dp = Arc::new(FakeDataplane::new());
    let svc = Arc::new(
        Service::new(
            state,
            ipam,
            dp.clone(),
            NetConfig {
                vlan_range: (100, 101),
                default_mtu: 1500,
            },
        )
        .with_lock_waits(waits),
    );
    T {
        router: plugin_router(svc.clone()),
        dp,
        svc,
    }
}

impl T {
    async fn call(&self, method: &str, body: Value) -> (u16, Value) {
        let body = if body.is_null() {
            String::new()
        } else {
            format!("{body}\n")
        };
        let reply = self
            .router
            .dispatch(Request {
                method: Method::POST,
                path: format!("/{method}"),
                query: None,
                body: Bytes::from(body),
            })
            .await;
        (
            reply.status.as_u16(),
            serde_json::from_slice(&reply.body).unwrap(),
        )
    }

    async fn ok(&self, method: &str, body: Value) -> Value {
        let (status, v) = self.call(method, body).await;
        assert_eq!(status, 200, "{method}: {v}");
        v
    }

    async fn err(&self, method: &str, body: Value) -> String {
        let (status, v) = self.call(method, body).await;
        assert_ne!(status, 200, "{method} should fail: {v}");
        assert_eq!(v["Err"], v["Error"], "IPAM clients read Error");
        v["Err"].as_str().unwrap().to_string()
    }

    /// `docker network create` as dockerd 20.10 sends it.
    async fn create_network(&self, id: &str, subnet: &str, opts: Value) -> Result<String, String> {
        let pool = self
            .call(
                "IpamDriver.RequestPool",
                json!({"AddressSpace":"berth-local","Pool":subnet,"SubPool":"","Options":{},"V6":false}),
            )
            .await;
        if pool.0 != 200 {
            return Err(pool.1["Err"].as_str().unwrap().into());
        }
        let pool_id = pool.1["PoolID"].as_str().unwrap().to_string();
        let cidr = pool.1["Pool"].as_str().unwrap().to_string();
        let gw = self
            .ok(
                "IpamDriver.RequestAddress",
                json!({"PoolID":pool_id,"Address":"","Options":{"RequestAddressType":"com.docker.network.gateway"}}),
            )
            .await;
        let (status, v) = self
            .call(
                "NetworkDriver.CreateNetwork",
                json!({"NetworkID":id,"Options":{"com.docker.network.enable_ipv6":false,"com.docker.network.generic":opts},
                    "IPv4Data":[{"AddressSpace":"berth-local","Gateway":gw["Address"],"Pool":cidr}],"IPv6Data":[]}),
            )
            .await;
        if status != 200 {
            // Docker rolls back: gateway and pool released.
            self.ok(
                "IpamDriver.ReleaseAddress",
                json!({"PoolID":pool_id,"Address":gw["Address"].as_str().unwrap().split('/').next().unwrap()}),
            )
            .await;
            self.ok("IpamDriver.ReleasePool", json!({ "PoolID": pool_id }))
                .await;
            return Err(v["Err"].as_str().unwrap().into());
        }
        Ok(pool_id)
    }

    /// `docker run --network`: address, endpoint, join.
    async fn start(&self, net: &str, pool: &str, ep: &str, ip: &str) -> (String, Value) {
        let a = self
            .ok(
                "IpamDriver.RequestAddress",
                json!({"PoolID":pool,"Address":ip,"Options":null}),
            )
            .await;
        let addr = a["Address"].as_str().unwrap().to_string();
        let c = self
            .ok(
                "NetworkDriver.CreateEndpoint",
                json!({"NetworkID":net,"EndpointID":ep,"Interface":{"Address":addr,"AddressIPv6":"","MacAddress":""},"Options":{}}),
            )
            .await;
        assert!(c["Interface"]["MacAddress"]
            .as_str()
            .unwrap()
            .starts_with("02:b7:"));
        let j = self
            .ok(
                "NetworkDriver.Join",
                json!({"NetworkID":net,"EndpointID":ep,"SandboxKey":"/var/run/docker/netns/x","Options":{}}),
            )
            .await;
        (addr, j)
    }

    async fn stop(&self, net: &str, pool: &str, ep: &str, addr: &str) {
        let ip = addr.split('/').next().unwrap();
        self.ok(
            "NetworkDriver.Leave",
            json!({"NetworkID":net,"EndpointID":ep}),
        )
        .await;
        self.ok(
            "NetworkDriver.DeleteEndpoint",
            json!({"NetworkID":net,"EndpointID":ep}),
        )
        .await;
        self.ok(
            "IpamDriver.ReleaseAddress",
            json!({"PoolID":pool,"Address":ip}),
        )
        .await;
    }
}

const N1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const N2: &str = "2222222222222222222222222222222222222222222222222222222222222222";
const E1: &str = "aaaaaaaaaa0000000000000000000000000000000000000000000000000000000";
const E2: &str = "bbbbbbbbbb0000000000000000000000000000000000000000000000000000000";

#[tokio::test]
async fn handshake_is_constant() {
    let t = setup();
    t.dp.set_down(true);
    assert_eq!(
        t.ok("Plugin.Activate", Value::Null).await,
        json!({"Implements":["NetworkDriver","IpamDriver"]})
    );
    assert_eq!(
        t.ok("NetworkDriver.GetCapabilities", Value::Null).await,
        json!({"Scope":"local","ConnectivityScope":"global"})
    );
    assert_eq!(
        t.ok("IpamDriver.GetCapabilities", Value::Null).await,
        json!({"RequiresMACAddress":false,"RequiresRequestReplay":false})
    );
    assert_eq!(
        t.ok("IpamDriver.GetDefaultAddressSpaces", Value::Null)
            .await,
        json!({"LocalDefaultAddressSpace":"berth-local","GlobalDefaultAddressSpace":"berth-global"})
    );
    assert_eq!(
        t.ok(
            "NetworkDriver.EndpointOperInfo",
            json!({"NetworkID":N1,"EndpointID":E1})
        )
        .await,
        json!({"Value":{}})
    );
}

#[tokio::test]
async fn container_lifecycle() {
    let t = setup();
    let pool = t
        .create_network(N1, "10.231.1.0/24", json!({"vlan":"100"}))
        .await
        .unwrap();
    let (addr, join) = t.start(N1, &pool, E1, "").await;
    assert_eq!(addr, "10.231.1.2/24");
    assert_eq!(
        join,
        json!({"InterfaceName":{"SrcName":"tbaaaaaaaaaa","DstPrefix":"eth"},"Gateway":"10.231.1.1","DisableGatewayService":false})
    );
    {
        let eps = t.dp.endpoints.lock().unwrap();
        let plan = eps.get("vbaaaaaaaaaa").expect("port created");
        assert_eq!((plan.vlan, plan.mtu), (100, 1500));
    }
    // --ip and a MAC given by Docker (not echoed back).
    let a = t
        .ok(
            "IpamDriver.RequestAddress",
            json!({"PoolID":pool,"Address":"10.231.1.50","Options":{}}),
        )
        .await;
    assert_eq!(a["Address"], "10.231.1.50/24");
    let c = t
        .ok(
            "NetworkDriver.CreateEndpoint",
            json!({"NetworkID":N1,"EndpointID":E2,"Interface":{"Address":"10.231.1.50/24","MacAddress":"02:42:00:00:00:07"}}),
        )
        .await;
    assert_eq!(c, json!({ "Interface": null }));
    let msg = t
        .err(
            "IpamDriver.RequestAddress",
            json!({"PoolID":pool,"Address":"10.231.1.50","Options":{}}),
        )
        .await;
    assert!(
        msg.contains("already in use") && msg.contains("endpoint bbbbbbbbbb00"),
        "{msg}"
    );
    let views = t.svc.admin_pool(pool.clone()).await.unwrap();
    assert_eq!(views.allocated, 3);
    t.stop(N1, &pool, E1, &addr).await;
    t.stop(N1, &pool, E1, &addr).await; // all idempotent
    t.stop(N1, &pool, E2, "10.231.1.50/24").await;
    assert!(t.dp.endpoints.lock().unwrap().is_empty());
    assert_eq!(t.svc.admin_pool(pool.clone()).await.unwrap().allocated, 1);
    // docker network rm
    t.ok(
        "IpamDriver.ReleaseAddress",
        json!({"PoolID":pool,"Address":"10.231.1.1"}),
    )
    .await;
    t.ok("IpamDriver.ReleasePool", json!({ "PoolID": pool }))
        .await;
    t.ok("NetworkDriver.DeleteNetwork", json!({ "NetworkID": N1 }))
        .await;
    t.ok("NetworkDriver.DeleteNetwork", json!({ "NetworkID": N1 }))
        .await;
    assert!(t
        .svc
        .state()
        .store
        .range("")
        .unwrap()
        .iter()
        .all(|kv| kv.key.starts_with("spaces/")));
}

#[tokio::test]
async fn vlans_subnets_and_options() {
    let t = setup();
    t.create_network(N1, "10.231.1.0/24", json!({"vlan":"100"}))
        .await
        .unwrap();
    let e = t
        .create_network(N2, "10.231.2.0/24", json!({"vlan":"100"}))
        .await
        .unwrap_err();
    assert!(
        e.contains("VLAN 100 is already used by network 111111111111"),
        "{e}"
    );
    let e = t
        .create_network(N2, "10.231.1.128/25", json!({}))
        .await
        .unwrap_err();
    assert!(
        e.contains("overlaps 10.231.1.0/24 of network 111111111111"),
        "{e}"
    );
    for (opts, needle) in [
        (json!({"vlan":"0"}), "1 to 4094"),
        (json!({"vlan":"4095"}), "1 to 4094"),
        (json!({"vlan":"abc"}), "1 to 4094"),
        (json!({"mtu":"20"}), "68 to 9216"),
        (json!({"vlam":"5"}), "unknown option"),
    ] {
        let e = t
            .create_network(N2, "10.231.2.0/24", opts)
            .await
            .unwrap_err();
        assert!(e.contains(needle), "{e}");
    }
    // Auto VLAN from the range (100 is taken → 101), then the range is exhausted.
    let pool = t
        .create_network(N2, "", json!({"mtu":"1400"}))
        .await
        .unwrap();
    let nets = t.svc.admin_networks().await.unwrap();
    let n2 = nets.iter().find(|n| n.id == N2).unwrap();
    assert_eq!((n2.vlan, n2.vlan_auto, n2.mtu), (101, true, 1400));
    assert_eq!(n2.subnet, "10.240.0.0/24");
    assert_eq!(n2.pool_id, pool);
    let e = t
        .create_network("3333", "10.231.3.0/24", json!({}))
        .await
        .unwrap_err();
    assert!(e.contains("no free VLAN"), "{e}");
    // Deleting frees the VLAN.
    t.ok("NetworkDriver.DeleteNetwork", json!({ "NetworkID": N1 }))
        .await;
    t.create_network("3333", "10.231.3.0/24", json!({}))
        .await
        .unwrap();
}

#[tokio::test]
async fn ovs_down_fails_network_calls_but_not_ipam() {
    let t = setup();
    t.dp.set_down(true);
    let (status, pool) = t
        .call(
            "IpamDriver.RequestPool",
            json!({"Pool":"10.231.5.0/24","V6":false}),
        )
        .await;
    assert_eq!(status, 200, "IPAM works without OVS: {pool}");
    let e = t
        .err(
            "NetworkDriver.CreateNetwork",
            json!({"NetworkID":N1,"Options":{},"IPv4Data":[{"Pool":"10.231.5.0/24","Gateway":"10.231.5.1/24"}]}),
        )
        .await;
    assert!(e.contains("not reachable"), "{e}");
    t.dp.set_down(false);
    t.ok(
        "NetworkDriver.CreateNetwork",
        json!({"NetworkID":N1,"Options":{},"IPv4Data":[{"Pool":"10.231.5.0/24","Gateway":"10.231.5.1/24"}]}),
    )
    .await;
    // A failed datapath leaves no record behind.
    t.dp.fail_next_create
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let e = t
        .err(
            "NetworkDriver.CreateEndpoint",
            json!({"NetworkID":N1,"EndpointID":E1,"Interface":{"Address":"10.231.5.2/24"}}),
        )
        .await;
    assert!(e.contains("injected"), "{e}");
    assert!(t.svc.state().endpoint(E1).unwrap().is_none());
}

#[tokio::test]
async fn hostile_and_empty_requests() {
    let t = setup();
    for method in [
        "NetworkDriver.CreateNetwork",
        "NetworkDriver.CreateEndpoint",
        "NetworkDriver.Join",
        "NetworkDriver.DeleteEndpoint",
        "IpamDriver.RequestAddress",
        "IpamDriver.ReleasePool",
    ] {
        let e = t.err(method, Value::Null).await;
        assert!(
            e.contains("empty") || e.contains("missing"),
            "{method}: {e}"
        );
    }
    let e = t
        .err(
            "NetworkDriver.CreateEndpoint",
            json!({"NetworkID":N1,"EndpointID":E1,"Interface":{"Address":"10.0.0.2/24"}}),
        )
        .await;
    assert!(e.contains("not known to berth-net"), "{e}");
    let e = t
        .err(
            "NetworkDriver.CreateNetwork",
            json!({"NetworkID":"../../x","Options":{}}),
        )
        .await;
    assert!(e.contains("NetworkID"), "{e}");
    let e = t
        .err(
            "IpamDriver.RequestPool",
            json!({"Pool":"","SubPool":"10.0.0.0/24"}),
        )
        .await;
    assert!(e.contains("--ip-range needs --subnet"), "{e}");
    // Idempotent deletes of unknown things.
    t.ok(
        "NetworkDriver.DeleteEndpoint",
        json!({"NetworkID":N1,"EndpointID":E1}),
    )
    .await;
    t.ok(
        "IpamDriver.ReleaseAddress",
        json!({"PoolID":"p-x","Address":"10.0.0.9"}),
    )
    .await;
    t.ok("IpamDriver.ReleasePool", json!({"PoolID":"p-x"}))
        .await;
    t.ok("NetworkDriver.DeleteNetwork", json!({"NetworkID":N2}))
        .await;
}

#[tokio::test]
async fn reconcile_restores_and_removes() {
    let t = setup();
    let pool = t
        .create_network(N1, "10.231.6.0/24", json!({"vlan":"100"}))
        .await
        .unwrap();
    t.start(N1, &pool, E1, "").await;
    // OVS lost the port: reconcile puts it back; an unknown port of ours is removed.
    let lost =
        t.dp.endpoints
            .lock()
            .unwrap()
            .remove("vbaaaaaaaaaa")
            .unwrap();
    let mut stray = lost.clone();
    stray.endpoint_id = format!("deadbeef00{}", &E1[10..]);
    stray.host_if = "vbdeadbeef00".into();
    t.dp.endpoints
        .lock()
        .unwrap()
        .insert(stray.host_if.clone(), stray);
    let report = t.svc.reconcile().await.unwrap();
    assert_eq!(report.ports_fixed, vec!["vbaaaaaaaaaa"]);
    assert_eq!(report.ports_removed, vec!["vbdeadbeef00"]);
    let again = t.svc.reconcile().await.unwrap();
    assert!(again.ports_fixed.is_empty() && again.ports_removed.is_empty());
}

/// A port on the bridge as a host (or an older release, `host_id` empty) left it.
fn port_of(endpoint_id: &str, host_id: &str) -> crate::dataplane::EndpointPlan {
    crate::dataplane::EndpointPlan {
        endpoint_id: endpoint_id.into(),
        network_id: N1.into(),
        host_id: host_id.into(),
        host_if: crate::dataplane::host_if_name(endpoint_id),
        container_if: crate::dataplane::container_if_name(endpoint_id),
        vlan: 100,
        mtu: 1500,
        mac: [2, 0, 0, 0, 0, 9],
        limits: Default::default(),
        ip: std::net::Ipv4Addr::new(10, 0, 0, 9),
        anti_spoof: true,
    }
}

fn put_port(t: &T, plan: crate::dataplane::EndpointPlan) {
    t.dp.endpoints
        .lock()
        .unwrap()
        .insert(plan.host_if.clone(), plan);
}

fn eid(n: usize) -> String {
    format!("{n:010x}{}", "0".repeat(54))
}

/// Issue 14 §1: a host prunes only ports labelled with its own id. Ports of another id (the
/// host's id before a rename, a second host on the bridge) and ports without the label (older
/// releases) stay; so does a port with a name berth does not give, whatever its labels.
#[tokio::test]
async fn reconcile_prunes_only_this_hosts_ports() {
    let t = setup();
    let pool = t
        .create_network(N1, "10.231.6.0/24", json!({"vlan":"100"}))
        .await
        .unwrap();
    t.start(N1, &pool, E1, "").await;
    put_port(&t, port_of(&eid(1), "h1"));
    put_port(&t, port_of(&eid(2), "h2"));
    put_port(&t, port_of(&eid(3), ""));
    let mut eth0 = port_of(&eid(4), "h1");
    eth0.host_if = "eth0".into();
    put_port(&t, eth0);
    let report = t.svc.reconcile().await.unwrap();
    assert_eq!(
        report.ports_removed,
        vec![crate::dataplane::host_if_name(&eid(1))]
    );
    assert!(report.prune_held.is_empty());
    let left: Vec<String> = t.dp.endpoints.lock().unwrap().keys().cloned().collect();
    for kept in [
        crate::dataplane::host_if_name(E1),
        crate::dataplane::host_if_name(&eid(2)),
        crate::dataplane::host_if_name(&eid(3)),
        "eth0".into(),
    ] {
        assert!(left.contains(&kept), "{kept} removed: {left:?}");
    }
    assert_eq!(
        *t.dp.deleted.lock().unwrap(),
        vec![crate::dataplane::host_if_name(&eid(1))]
    );
    // The endpoint's own port carries this host's id.
    assert_eq!(
        t.dp.endpoints.lock().unwrap()[&crate::dataplane::host_if_name(E1)].host_id,
        "h1"
    );
}

/// Issue 14 §1: a pass that would remove most of the bridge's ports (the store lost this
/// host's records) removes none and says so, until `reconcile --prune`; a few go at once.
#[tokio::test]
async fn reconcile_holds_a_mass_removal_until_pruned_by_hand() {
    let t = setup();
    let pool = t
        .create_network(N1, "10.231.6.0/24", json!({"vlan":"100"}))
        .await
        .unwrap();
    t.start(N1, &pool, E1, "").await;
    let n = crate::network::MASS_PRUNE_MIN + 1;
    for i in 0..n {
        put_port(&t, port_of(&eid(i + 1), "h1"));
    }
    let before = t.dp.endpoints.lock().unwrap().len();
    let report = t.svc.reconcile().await.unwrap();
    assert_eq!(report.prune_held.len(), n, "{report:?}");
    assert!(report.ports_removed.is_empty());
    assert_eq!(
        t.dp.endpoints.lock().unwrap().len(),
        before,
        "nothing removed"
    );
    // Still held at the next pass.
    assert_eq!(t.svc.reconcile().await.unwrap().prune_held.len(), n);
    // The admin's `netplugin reconcile --prune`, through the admin API.
    let admin = crate::handlers::admin_router(
        t.svc.clone(),
        plugin_transport::docker::DockerClient::new(std::path::Path::new("/nonexistent")),
    );
    let reply = admin
        .dispatch(Request {
            method: Method::POST,
            path: "/reconcile".into(),
            query: Some("prune=true".into()),
            body: Bytes::new(),
        })
        .await;
    assert_eq!(reply.status.as_u16(), 200);
    let forced: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(
        forced["ports_removed"].as_array().unwrap().len(),
        n,
        "{forced}"
    );
    assert_eq!(t.dp.endpoints.lock().unwrap().len(), 1);
    // A few strays among many ports go without asking.
    for i in 0..8 {
        put_port(&t, port_of(&eid(100 + i), "h2"));
    }
    for i in 0..crate::network::MASS_PRUNE_MIN + 1 {
        put_port(&t, port_of(&eid(200 + i), "h1"));
    }
    let report = t.svc.reconcile().await.unwrap();
    assert_eq!(
        report.ports_removed.len(),
        crate::network::MASS_PRUNE_MIN + 1
    );
    assert!(report.prune_held.is_empty());
    // A host back from a crash: every port of its own is stray, but their containers are
    // gone (no device): they carry nobody's traffic and go; live ones beside them are held.
    for i in 0..8 {
        t.dp.endpoints
            .lock()
            .unwrap()
            .remove(&crate::dataplane::host_if_name(&eid(100 + i)));
    }
    let mut dead = Vec::new();
    for i in 0..6 {
        let p = port_of(&eid(300 + i), "h1");
        t.dp.no_device.lock().unwrap().insert(p.host_if.clone());
        dead.push(p.host_if.clone());
        put_port(&t, p);
    }
    let mut live = Vec::new();
    for i in 0..crate::network::MASS_PRUNE_MIN + 1 {
        let p = port_of(&eid(400 + i), "h1");
        live.push(p.host_if.clone());
        put_port(&t, p);
    }
    let report = t.svc.reconcile().await.unwrap();
    let mut removed = report.ports_removed.clone();
    removed.sort();
    assert_eq!(removed, dead, "{report:?}");
    assert_eq!(report.prune_held, live, "{report:?}");
}

/// Issue 14 §1: interface names on the host come from the endpoint id, never from the record:
/// a record (etcd, written by anyone) naming `eth0`/`bond0` makes the host touch neither.
#[tokio::test]
async fn record_cannot_name_host_interfaces() {
    use crate::state::{encode, endpoint_key, EndpointRecord};
    use crate::store::{Op, Txn};
    let t = setup();
    let pool = t
        .create_network(N1, "10.231.6.0/24", json!({"vlan":"100"}))
        .await
        .unwrap();
    t.start(N1, &pool, E1, "").await;
    let mut rec: EndpointRecord = t.svc.state().endpoint(E1).unwrap().unwrap();
    rec.host_if = "eth0".into();
    rec.container_if = "bond0".into();
    t.svc
        .state()
        .store
        .txn(Txn {
            compare: vec![],
            success: vec![Op::put(endpoint_key(E1), encode(&rec))],
            failure: vec![],
        })
        .unwrap();
    let mut host = port_of(&eid(9), "h1");
    host.host_if = "docker0".into();
    put_port(&t, host);
    let report = t.svc.reconcile().await.unwrap();
    let touched: Vec<&String> = report
        .ports_fixed
        .iter()
        .chain(&report.ports_removed)
        .collect();
    assert!(touched.iter().all(|n| n.starts_with("vb")), "{report:?}");
    let names: Vec<String> = t.dp.endpoints.lock().unwrap().keys().cloned().collect();
    assert!(!names.contains(&"eth0".to_string()), "{names:?}");
    let join = t
        .ok(
            "NetworkDriver.Join",
            json!({"NetworkID":N1,"EndpointID":E1,"SandboxKey":"/x","Options":{}}),
        )
        .await;
    assert_eq!(
        join["InterfaceName"]["SrcName"],
        crate::dataplane::container_if_name(E1)
    );
    t.ok(
        "NetworkDriver.DeleteEndpoint",
        json!({"NetworkID":N1,"EndpointID":E1}),
    )
    .await;
    let deleted = t.dp.deleted.lock().unwrap().clone();
    assert_eq!(deleted, vec![crate::dataplane::host_if_name(E1)]);
    assert!(t.dp.endpoints.lock().unwrap().contains_key("docker0"));
}

/// The same `docker network create` on two hosts (fleet store): one pool and one network,
/// the pool counted per host; another VLAN on that subnet is refused naming the network; the
/// network outlives the first host's delete.
#[tokio::test]
async fn same_network_on_two_hosts() {
    let store = Arc::new(MemStore::new());
    let a = setup_host(store.clone(), "host-a");
    let b = setup_host(store, "host-b");
    let pa = a
        .create_network(N1, "10.231.7.0/24", json!({"vlan":"120"}))
        .await
        .unwrap();
    // Host b's dockerd has its own network id for it.
    let e = b
        .create_network(N2, "10.231.7.0/24", json!({"vlan":"121"}))
        .await
        .unwrap_err();
    assert!(e.contains("network 111111111111 with VLAN 120"), "{e}");
    let pb = b
        .create_network(N2, "10.231.7.0/24", json!({"vlan":"120"}))
        .await
        .unwrap();
    assert_eq!(pa, pb, "one shared pool");
    let pools = b.svc.admin_pools().await.unwrap();
    assert_eq!(pools.len(), 1);
    assert_eq!(pools[0].hosts, vec!["host-a", "host-b"]);
    // Without -o vlan, host b would have joined with VLAN 120 as well; addresses never clash.
    let (ia, _) = a.start(N1, &pa, E1, "").await;
    let (ib, _) = b.start(N2, &pb, E2, "").await;
    assert_ne!(ia, ib);
    // Each host's ARP proxy answers for both hosts' endpoints; only its own are its ports.
    let report = a.svc.reconcile().await.unwrap();
    assert_eq!((report.arp_flows_added, report.arp_flows_removed), (2, 0));
    let entries = a.dp.arp.lock().unwrap().clone();
    let ip_of =
        |cidr: &str| -> std::net::Ipv4Addr { cidr.split('/').next().unwrap().parse().unwrap() };
    let own = entries.iter().find(|e| e.ip == ip_of(&ia)).unwrap();
    assert_eq!(own.local_port.as_deref(), Some("vbaaaaaaaaaa"));
    assert_eq!(own.vlan, 120);
    let remote = entries.iter().find(|e| e.ip == ip_of(&ib)).unwrap();
    assert_eq!(remote.local_port, None);
    assert_eq!(
        crate::dataplane::format_mac(&remote.mac),
        crate::dataplane::format_mac(&crate::dataplane::mac_from_ip(remote.ip))
    );
    let again = a.svc.reconcile().await.unwrap();
    assert_eq!((again.arp_flows_added, again.arp_flows_removed), (0, 0));
    let e = b
        .err(
            "IpamDriver.RequestAddress",
            json!({"PoolID":pb,"Address":ia.split('/').next().unwrap(),"Options":{}}),
        )
        .await;
    assert!(e.contains("already in use") && e.contains("host-a"), "{e}");
    // Host a deletes its network: host b's stays, with VLAN and pool.
    a.stop(N1, &pa, E1, &ia).await;
    a.ok("NetworkDriver.DeleteNetwork", json!({ "NetworkID": N1 }))
        .await;
    a.ok(
        "IpamDriver.ReleaseAddress",
        json!({"PoolID":pa,"Address":"10.231.7.1"}),
    )
    .await;
    a.ok("IpamDriver.ReleasePool", json!({ "PoolID": pa }))
        .await;
    let nets = b.svc.admin_networks().await.unwrap();
    assert_eq!(nets.len(), 1);
    assert_eq!((nets[0].id.as_str(), nets[0].vlan), (N2, 120));
    let pools = b.svc.admin_pools().await.unwrap();
    assert_eq!(pools[0].hosts, vec!["host-b"]);
    assert_eq!(pools[0].network_id.as_deref(), Some(N2));
    // The gateway stayed for host b until its own release.
    let show = b.svc.admin_pool(pb.clone()).await.unwrap();
    assert!(show.addresses.iter().any(|x| x.held_by.contains("gateway")));
}

/// An address held for no endpoint that Docker uses nowhere is released after the grace
/// period; one Docker shows (an endpoint's, the gateway, an aux address) or on a pool of a
/// network this Docker does not know, never.
#[test]
fn unused_address_plan() {
    use crate::docker_sync::{DockerView, LeakTracker};
    use crate::network::UnlinkedAddress;
    use std::collections::HashMap;
    use std::time::{Duration, Instant};

    let unlinked = |ip: &str, pool: &str| UnlinkedAddress {
        key: format!("addrs/{pool}/{ip}"),
        pool_id: pool.into(),
        address: ip.parse().unwrap(),
        created_at: 1_000,
    };
    let all = [
        unlinked("10.231.8.7", "p1"),
        unlinked("10.231.8.9", "p1"),
        unlinked("10.231.8.10", "p1"),
        unlinked("10.231.8.1", "p1"),
        unlinked("10.231.9.7", "p2"),
    ];
    let pools: HashMap<String, String> = [(N1.to_string(), "p1".to_string())].into();
    let view = DockerView::from_inspects(&[json!({
        "Id": N1,
        "IPAM": {"Config": [{"Subnet": "10.231.8.0/24", "Gateway": "10.231.8.1",
                             "AuxiliaryAddresses": {"router": "10.231.8.10"}}]},
        "Containers": {"c0ffee": {"EndpointID": E1, "IPv4Address": "10.231.8.9/24"}},
    })]);
    let grace = Duration::from_secs(60);
    let mut tracker = LeakTracker::new(Some(grace));
    let start = Instant::now();
    assert!(
        tracker
            .plan_addresses(&view, &all, &pools, start, 1_000)
            .is_empty(),
        "young, first sighting"
    );
    let later = start + grace;
    let released: Vec<String> = tracker
        .plan_addresses(&view, &all, &pools, later, 1_060)
        .iter()
        .map(|a| a.address.to_string())
        .collect();
    assert_eq!(released, ["10.231.8.7"]);
    // Docker using it again resets the clock.
    let back = DockerView::from_inspects(&[json!({
        "Id": N1,
        "Containers": {"c1": {"EndpointID": E2, "IPv4Address": "10.231.8.7/24"}},
    })]);
    assert!(tracker
        .plan_addresses(&back, &all, &pools, later, 1_060)
        .is_empty());
    assert!(tracker
        .plan_addresses(&view, &all, &pools, later, 1_060)
        .is_empty());
    // With `off`: reported, never released.
    let mut off = LeakTracker::new(None);
    off.plan_addresses(&view, &all, &pools, start, 1_000);
    assert!(off
        .plan_addresses(&view, &all, &pools, later, 1_060)
        .is_empty());
}

#[tokio::test]
async fn leaked_endpoint_release_and_labels() {
    use crate::dataplane::Dataplane;
    use crate::docker_sync::{DockerView, LeakTracker};
    use crate::network::ReleaseReason;
    use std::collections::HashMap;
    use std::time::{Duration, Instant};

    let store = Arc::new(MemStore::new());
    let t = setup_host(store.clone(), "h1");
    let other = setup_host(store, "h2");
    let pool = t
        .create_network(N1, "10.231.8.0/24", json!({"vlan":"100"}))
        .await
        .unwrap();
    let (in_use, _) = t.start(N1, &pool, E1, "").await;
    let (leaked, _) = t.start(N1, &pool, E2, "10.231.8.77").await;
    assert_eq!(leaked, "10.231.8.77/24");

    // Docker lists E1 with its container and not E2.
    let view = DockerView::from_inspects(&[json!({
        "Id": N1,
        "Containers": {"c0ffee": {"EndpointID": E1, "Name": "db1"},
                       "ep-ffff": {"EndpointID": "ffff"}},
    })]);
    let endpoints = t.svc.local_endpoints().await.unwrap();
    let labels: HashMap<String, Option<String>> =
        t.dp.ports()
            .into_iter()
            .map(|p| (p.name, p.container_id))
            .collect();
    let grace = Duration::from_secs(60);
    let mut tracker = LeakTracker::new(Some(grace));
    let start = Instant::now();
    let created = endpoints[0].created_at;
    // Young endpoints and a first sighting: nothing released; E1 gets its label.
    let plan = tracker.plan(&view, &endpoints, &labels, start, created);
    assert_eq!(plan.label.len(), 1);
    assert_eq!(plan.label[0].1, "c0ffee");
    assert!(plan.release.is_empty());
    // Missing for the whole grace period and old enough: E2 only.
    let later = start + grace;
    let plan = tracker.plan(&view, &endpoints, &labels, later, created + 60);
    assert_eq!(
        plan.release
            .iter()
            .map(|e| e.id.as_str())
            .collect::<Vec<_>>(),
        vec![E2]
    );
    // Docker listing it again resets the clock.
    let back = DockerView::from_inspects(&[json!({
        "Id": N1,
        "Containers": {"c0ffee": {"EndpointID": E1}, "ep-x": {"EndpointID": E2}},
    })]);
    assert!(tracker
        .plan(&back, &endpoints, &labels, later, created + 60)
        .release
        .is_empty());
    assert!(tracker
        .plan(&view, &endpoints, &labels, later, created + 60)
        .release
        .is_empty());
    // A network Docker does not know is never judged.
    let mut fresh = LeakTracker::new(Some(Duration::from_secs(1)));
    let none = DockerView::default();
    fresh.plan(&none, &endpoints, &labels, start, created + 10);
    assert!(fresh
        .plan(&none, &endpoints, &labels, later, created + 100)
        .release
        .is_empty());

    // Labelling and releasing through the service.
    let e1 = t.svc.find_endpoint(&E1[..12]).await.unwrap();
    t.svc.label_container(&e1, "c0ffee").await.unwrap();
    let listed = t.svc.admin_endpoints(None).await.unwrap();
    let shown = listed.iter().find(|e| e.id == E1).unwrap();
    assert_eq!(shown.container_id.as_deref(), Some("c0ffee"));
    assert!(t.svc.find_endpoint("aa").await.is_err(), "too short");
    assert!(t.svc.find_endpoint("zzzz").await.is_err(), "unknown");
    let e2 = t.svc.find_endpoint(E2).await.unwrap();
    // Another host cannot release it: the port is on h1.
    let e = other
        .svc
        .release_endpoint(&e2, ReleaseReason::Admin)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("is on host h1"), "{e}");
    let r = t
        .svc
        .release_endpoint(&e2, ReleaseReason::Leaked)
        .await
        .unwrap();
    assert!(r.address_released && r.datapath_error.is_none(), "{r:?}");
    assert!(!t.dp.endpoints.lock().unwrap().contains_key(&e2.host_if));
    assert!(t.svc.find_endpoint(E2).await.is_err(), "record gone");
    // The address is free again; the endpoint in use kept everything.
    let again = t
        .ok(
            "IpamDriver.RequestAddress",
            json!({"PoolID":pool,"Address":"10.231.8.77","Options":null}),
        )
        .await;
    assert_eq!(again["Address"], "10.231.8.77/24");
    let show = t.svc.admin_pool(pool.clone()).await.unwrap();
    assert!(show
        .addresses
        .iter()
        .any(|a| a.address == in_use.split('/').next().unwrap()));
    // A second release of the same record is harmless and frees nothing of the new holder's.
    let r = t
        .svc
        .release_endpoint(&e2, ReleaseReason::Admin)
        .await
        .unwrap();
    assert!(!r.address_released);
    assert_eq!(t.svc.released_counts().0, 1);
}

#[tokio::test]
async fn rate_limits_from_network_and_endpoint_options() {
    let t = setup();
    let e = t
        .create_network(N1, "10.231.9.0/24", json!({"vlan":"100","rate":"fast"}))
        .await
        .unwrap_err();
    assert!(e.contains("-o rate=fast") && e.contains("100M"), "{e}");
    let e = t
        .create_network(N1, "10.231.9.0/24", json!({"vlan":"100","rate":"5"}))
        .await
        .unwrap_err();
    assert!(e.contains("from 8K"), "{e}");
    let pool = t
        .create_network(
            N1,
            "10.231.9.0/24",
            json!({"vlan":"100","rate":"20M","rate_burst":"1M"}),
        )
        .await
        .unwrap();
    let nets = t.svc.admin_networks().await.unwrap();
    assert_eq!(nets[0].limits.describe(), "20M/20M");
    // An endpoint's own option (docker network connect --driver-opt) wins for its direction.
    let a = t
        .ok(
            "IpamDriver.RequestAddress",
            json!({"PoolID":pool,"Address":"","Options":null}),
        )
        .await;
    let bad = t
        .err(
            "NetworkDriver.CreateEndpoint",
            json!({"NetworkID":N1,"EndpointID":E1,"Interface":{"Address":a["Address"]},
                "Options":{"ingress_rate":"-3","com.docker.network.endpoint.exposedports":[]}}),
        )
        .await;
    assert!(bad.contains("--driver-opt ingress_rate=-3"), "{bad}");
    assert!(
        t.dp.endpoints.lock().unwrap().is_empty(),
        "nothing half-made"
    );
    t.ok(
        "NetworkDriver.CreateEndpoint",
        json!({"NetworkID":N1,"EndpointID":E1,"Interface":{"Address":a["Address"]},
            "Options":{"egress_rate":"1.5M","com.docker.network.endpoint.exposedports":[]}}),
    )
    .await;
    let plan =
        t.dp.endpoints
            .lock()
            .unwrap()
            .values()
            .next()
            .unwrap()
            .clone();
    assert_eq!(plan.limits.egress_kbps, Some(1500));
    assert_eq!(plan.limits.ingress_kbps, Some(20_000));
    assert_eq!(plan.limits.burst_kbits, Some(1000));
    assert_eq!(plan.limits.burst_for(1500), 1000);
    let eps = t.svc.admin_endpoints(None).await.unwrap();
    assert_eq!(eps[0].limits.describe(), "1500K/20M");
    // `0` removes a limit; without rate_burst the bucket is 80% of a second.
    let unlimited = crate::state::RateLimits {
        egress_kbps: Some(10_000),
        ..Default::default()
    };
    assert_eq!(unlimited.burst_for(10_000), 8_000);
    assert_eq!(unlimited.describe(), "10M/-");
}

/// Issue 16 §2: ports are guarded unless their network says `allow_spoofing=true`, and the
/// datapath gets the endpoint's own address and MAC to guard with (the reconciler's plans too).
#[tokio::test]
async fn anti_spoofing_follows_the_network_option() {
    let t = setup();
    let e = t
        .create_network(N1, "10.231.9.0/24", json!({"allow_spoofing":"maybe"}))
        .await
        .unwrap_err();
    assert!(e.contains("allow_spoofing=maybe"), "{e}");
    for (net, subnet, allow, ep, want) in [
        (N1, "10.231.9.0/24", None, E1, true),
        (N2, "10.231.10.0/24", Some("true"), E2, false),
    ] {
        let opts = match allow {
            Some(v) => json!({ "allow_spoofing": v }),
            None => json!({}),
        };
        let pool = t.create_network(net, subnet, opts).await.unwrap();
        let (addr, _) = t.start(net, &pool, ep, "").await;
        let ip: std::net::Ipv4Addr = addr.split('/').next().unwrap().parse().unwrap();
        let plan = t.dp.endpoints.lock().unwrap()[&crate::dataplane::host_if_name(ep)].clone();
        assert_eq!(plan.anti_spoof, want, "{net}");
        assert_eq!(plan.ip, ip);
        assert_eq!(plan.mac, crate::dataplane::mac_from_ip(ip));
    }
    // The reconciler hands the same plans to the datapath (a restarted OVS gets the guard back).
    t.dp.endpoints.lock().unwrap().clear();
    t.svc.reconcile().await.unwrap();
    let guarded: Vec<bool> =
        t.dp.endpoints
            .lock()
            .unwrap()
            .values()
            .map(|p| p.anti_spoof)
            .collect();
    assert_eq!(guarded.len(), 2);
    assert_eq!(guarded.iter().filter(|g| **g).count(), 1);
}

/// Issue 13: a joined endpoint's MAC is announced from its port (gratuitous ARP) at Join and
/// again shortly after, without delaying Join, so a container that moved hosts with its
/// address and MAC is found at its new place at once.
#[tokio::test]
async fn join_announces_the_endpoint() {
    let t = setup();
    let pool = t
        .create_network(N1, "10.231.1.0/24", json!({"vlan":"100"}))
        .await
        .unwrap();
    t.start(N1, &pool, E1, "10.231.1.50").await;
    let want = (
        "vbaaaaaaaaaa".to_string(),
        [0x02, 0xb7, 10, 231, 1, 50],
        std::net::Ipv4Addr::new(10, 231, 1, 50),
    );
    let announced = || t.dp.announced.lock().unwrap().clone();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(announced(), vec![want.clone()], "announced at Join");
    tokio::time::sleep(crate::network::ANNOUNCE_AGAIN[0]).await;
    assert_eq!(announced(), vec![want.clone(), want], "and again");
}

/// Issue 13: another host's new endpoint reaches this host's ARP proxy through the store's
/// watch at once, not at the next periodic pass (an hour here); and its removal too. (Host a
/// has a port on the VLAN: answers are only installed where they can be asked for.)
#[tokio::test]
async fn arp_proxy_follows_other_hosts_endpoints_at_once() {
    use std::time::{Duration, Instant};
    let store = Arc::new(MemStore::new());
    let a = setup_host(store.clone(), "host-a");
    let b = setup_host(store, "host-b");
    let pa = a
        .create_network(N1, "10.231.8.0/24", json!({"vlan":"130"}))
        .await
        .unwrap();
    a.start(N1, &pa, E1, "10.231.8.5").await;
    let pb = b
        .create_network(N2, "10.231.8.0/24", json!({"vlan":"130"}))
        .await
        .unwrap();
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(crate::reconcile::run(
        a.svc.clone(),
        Duration::from_secs(3600),
        shutdown,
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let has = |ip: &str| {
        a.dp.arp
            .lock()
            .unwrap()
            .iter()
            .any(|e| e.ip.to_string() == ip)
    };
    assert!(!has("10.231.8.77"));
    let t0 = Instant::now();
    let (ib, _) = b.start(N2, &pb, E2, "10.231.8.77").await;
    while !has("10.231.8.77") && t0.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(has("10.231.8.77"), "host a never learned b's endpoint");
    assert!(
        t0.elapsed() < Duration::from_millis(500),
        "learned after {:?}",
        t0.elapsed()
    );
    b.stop(N2, &pb, E2, &ib).await;
    let t1 = Instant::now();
    while has("10.231.8.77") && t1.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        !has("10.231.8.77"),
        "host a still answers for b's removed endpoint"
    );
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(3), task)
        .await
        .expect("reconciler ended on shutdown")
        .unwrap();
}

/// Issue 14 §2: the ARP proxy answers only for the endpoint the address record names. Host
/// b's endpoint record outlives its address (a reclaim that released the address and did not
/// get to the record): alone as it is, it is no longer answered for, nor while host c holds
/// the address without an endpoint yet; c's endpoint is, once it has one. All through the
/// watches (a pass every hour here): the records they follow are never read again.
#[tokio::test]
async fn arp_proxy_never_answers_for_a_stale_endpoint_record() {
    use std::time::{Duration, Instant};
    const N3: &str = "3333333333333333333333333333333333333333333333333333333333333333";
    const E3: &str = "cccccccccc0000000000000000000000000000000000000000000000000000000";
    let store = Arc::new(crate::store::counting::Counting::new());
    let a = setup_host(store.clone(), "host-a");
    let b = setup_host(store.clone(), "host-b");
    let c = setup_host(store.clone(), "host-c");
    let pa = a
        .create_network(N1, "10.231.9.0/24", json!({"vlan":"131"}))
        .await
        .unwrap();
    a.start(N1, &pa, E1, "10.231.9.5").await;
    let pb = b
        .create_network(N2, "10.231.9.0/24", json!({"vlan":"131"}))
        .await
        .unwrap();
    let pc = c
        .create_network(N3, "10.231.9.0/24", json!({"vlan":"131"}))
        .await
        .unwrap();
    let (ib, _) = b.start(N2, &pb, E2, "10.231.9.77").await;
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(crate::reconcile::run(
        a.svc.clone(),
        Duration::from_secs(3600),
        shutdown,
    ));
    let answered = || {
        a.dp.arp
            .lock()
            .unwrap()
            .iter()
            .any(|e| e.ip.to_string() == "10.231.9.77")
    };
    let settles = |want: bool, what: &'static str| async move {
        let t0 = Instant::now();
        while answered() != want && t0.elapsed() < Duration::from_secs(2) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(answered(), want, "{what}");
    };
    settles(true, "b's endpoint, holding its address, answered for").await;
    // The view has listed; from here on, changes come by the watches alone.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let followed = || {
        ["endpoints/", "addrs/", "networks/"]
            .map(|p| store.ranges(p))
            .to_vec()
    };
    let listed = followed();
    // The address goes; b's endpoint record stays.
    b.ok(
        "IpamDriver.ReleaseAddress",
        json!({"PoolID":pb,"Address":ib.split('/').next().unwrap()}),
    )
    .await;
    assert!(b.svc.state().endpoint(E2).unwrap().is_some());
    settles(false, "a stale endpoint record answered for").await;
    // Host c takes the address: no endpoint yet, nobody to answer for.
    c.ok(
        "IpamDriver.RequestAddress",
        json!({"PoolID":pc,"Address":"10.231.9.77","Options":null}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!answered(), "answered for before c's endpoint exists");
    c.ok(
        "NetworkDriver.CreateEndpoint",
        json!({"NetworkID":N3,"EndpointID":E3,"Interface":{"Address":"10.231.9.77/24","AddressIPv6":"","MacAddress":""},"Options":{}}),
    )
    .await;
    settles(true, "c's endpoint, holding the address, answered for").await;
    assert_eq!(
        followed(),
        listed,
        "records the view follows were read again"
    );
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(3), task)
        .await
        .expect("reconciler ended on shutdown")
        .unwrap();
}

/// Issue 16 §3: `docker run -p 8080:80` on a berth-net network is refused (CreateEndpoint, as
/// Docker 20.10 sends the bindings), saying where the container is reached; exposed ports
/// alone (an image's EXPOSE) are fine; nothing is built for the refused endpoint.
#[tokio::test]
async fn published_ports_are_refused_not_ignored() {
    let t = setup();
    let pool = t
        .create_network(N1, "10.231.6.0/24", json!({"vlan":"100"}))
        .await
        .unwrap();
    let a = t
        .ok(
            "IpamDriver.RequestAddress",
            json!({"PoolID":pool,"Address":"","Options":null}),
        )
        .await;
    let addr = a["Address"].as_str().unwrap().to_string();
    let e = t
        .err(
            "NetworkDriver.CreateEndpoint",
            json!({"NetworkID":N1,"EndpointID":E1,"Interface":{"Address":addr,"AddressIPv6":"","MacAddress":""},
                "Options":{"com.docker.network.endpoint.exposedports":[{"Proto":6,"Port":80}],
                    "com.docker.network.portmap":[{"Proto":6,"IP":"","Port":80,"HostIP":"","HostPort":8080,"HostPortEnd":8080}]}}),
        )
        .await;
    assert!(e.contains("8080:80/tcp"), "{e}");
    assert!(e.contains("reached at their own routable address"), "{e}");
    assert!(t.dp.endpoints.lock().unwrap().is_empty(), "built anyway");
    assert!(
        t.svc.state().endpoint(E1).unwrap().is_none(),
        "recorded anyway"
    );
    t.ok(
        "NetworkDriver.CreateEndpoint",
        json!({"NetworkID":N1,"EndpointID":E1,"Interface":{"Address":addr,"AddressIPv6":"","MacAddress":""},
            "Options":{"com.docker.network.endpoint.exposedports":[{"Proto":6,"Port":80}],"com.docker.network.portmap":null}}),
    )
    .await;
    // The gateway endpoint's call carries the sandbox's bindings too.
    let e = t
        .err(
            "NetworkDriver.ProgramExternalConnectivity",
            json!({"NetworkID":N1,"EndpointID":E1,
                "Options":{"com.docker.network.portmap":[{"Proto":17,"IP":"","Port":53,"HostIP":"127.0.0.1","HostPort":0,"HostPortEnd":0}]}}),
        )
        .await;
    assert!(e.contains("-p 127.0.0.1::53/udp"), "{e}");
    t.ok(
        "NetworkDriver.ProgramExternalConnectivity",
        json!({"NetworkID":N1,"EndpointID":E1,"Options":{"com.docker.network.endpoint.exposedports":[{"Proto":6,"Port":80}]}}),
    )
    .await;
    t.ok(
        "NetworkDriver.RevokeExternalConnectivity",
        json!({"NetworkID":N1,"EndpointID":E1}),
    )
    .await;
}

/// Issue 16 §3: EndpointOperInfo answers what an operator wants (it was an empty map), and
/// never fails (dockerd fails the container on an error there).
#[tokio::test]
async fn endpoint_oper_info_shows_the_datapath() {
    let t = setup();
    let pool = t
        .create_network(
            N1,
            "10.231.6.0/24",
            json!({"vlan":"100","egress_rate":"50M"}),
        )
        .await
        .unwrap();
    let (addr, _) = t.start(N1, &pool, E1, "").await;
    let v = t
        .ok(
            "NetworkDriver.EndpointOperInfo",
            json!({"NetworkID":N1,"EndpointID":E1}),
        )
        .await;
    let info = &v["Value"];
    assert_eq!(info["berth.vlan"], "100", "{v}");
    assert_eq!(info["berth.host_if"], "vbaaaaaaaaaa", "{v}");
    assert_eq!(info["berth.container_if"], "tbaaaaaaaaaa", "{v}");
    assert!(
        info["berth.ovs_port"]
            .as_str()
            .unwrap()
            .starts_with("vbaaaaaaaaaa (tag 100"),
        "{v}"
    );
    assert_eq!(info["berth.address"], addr.as_str(), "{v}");
    assert!(
        info["berth.mac"].as_str().unwrap().starts_with("02:b7:"),
        "{v}"
    );
    assert_eq!(info["berth.host_id"], "h1", "{v}");
    assert_eq!(info["berth.egress_limit"], "50000kbit", "{v}");
    assert_eq!(info["berth.ingress_limit"], "unlimited", "{v}");
    // Unknown endpoint, bad id: an empty map, not an error.
    for id in [E2, ""] {
        let v = t
            .ok(
                "NetworkDriver.EndpointOperInfo",
                json!({"NetworkID":N1,"EndpointID":id}),
            )
            .await;
        assert_eq!(v, json!({"Value":{}}));
    }
}

/// Issue 16 §1: live limit changes. An endpoint's own limits win over its network's; a
/// network's change reaches every endpoint without its own limit in that direction (records
/// of older releases included); `none` removes a limit, `network` follows the network again;
/// the datapath gets the new limits at once.
#[tokio::test]
async fn limits_change_live() {
    use crate::network::LimitsChange;
    use crate::state::{encode, endpoint_key, RateLimits};
    use crate::store::{Op, Txn};
    let t = setup();
    let pool = t
        .create_network(
            N1,
            "10.231.6.0/24",
            json!({"vlan":"100","egress_rate":"50M"}),
        )
        .await
        .unwrap();
    t.start(N1, &pool, E1, "").await;
    let a = t
        .ok(
            "IpamDriver.RequestAddress",
            json!({"PoolID":pool,"Address":"","Options":null}),
        )
        .await;
    t.ok(
        "NetworkDriver.CreateEndpoint",
        json!({"NetworkID":N1,"EndpointID":E2,"Interface":{"Address":a["Address"],"AddressIPv6":"","MacAddress":""},
            "Options":{"ingress_rate":"10M"}}),
    )
    .await;
    let limits = |id: &str| t.svc.state().endpoint(id).unwrap().unwrap().limits;
    let in_dp =
        |id: &str| t.dp.endpoints.lock().unwrap()[&crate::dataplane::host_if_name(id)].limits;
    let rl = |e: Option<u32>, i: Option<u32>| RateLimits {
        egress_kbps: e,
        ingress_kbps: i,
        burst_kbits: None,
    };
    let change = |e: Option<&str>, i: Option<&str>| LimitsChange {
        egress: e.map(str::to_string),
        ingress: i.map(str::to_string),
        burst: None,
    };
    // E2 as a release before live changes wrote it: no own_limits.
    let mut old = t.svc.state().endpoint(E2).unwrap().unwrap();
    old.own_limits = None;
    t.svc
        .state()
        .store
        .txn(Txn {
            compare: vec![],
            success: vec![Op::put(endpoint_key(E2), encode(&old))],
            failure: vec![],
        })
        .unwrap();
    assert_eq!(limits(E2), rl(Some(50_000), Some(10_000)));

    let r = t
        .svc
        .set_endpoint_limits(&E1[..8], change(Some("20M"), None))
        .await
        .unwrap();
    assert_eq!(r.endpoints.len(), 1);
    assert!(r.datapath_error.is_none());
    assert_eq!(limits(E1), rl(Some(20_000), None));
    assert_eq!(in_dp(E1), rl(Some(20_000), None), "not applied at once");
    assert_eq!(limits(E2), rl(Some(50_000), Some(10_000)), "E2 touched");

    let r = t
        .svc
        .set_network_limits(&N1[..6], change(Some("100M"), Some("30M")))
        .await
        .unwrap();
    assert_eq!(r.network_limits, Some(rl(Some(100_000), Some(30_000))));
    assert_eq!(r.endpoints.len(), 2);
    assert_eq!(
        limits(E1),
        rl(Some(20_000), Some(30_000)),
        "own egress kept"
    );
    assert_eq!(
        limits(E2),
        rl(Some(100_000), Some(10_000)),
        "own ingress kept"
    );
    assert_eq!(in_dp(E2), rl(Some(100_000), Some(10_000)));

    t.svc
        .set_endpoint_limits(E1, change(Some("none"), None))
        .await
        .unwrap();
    assert_eq!(limits(E1), rl(None, Some(30_000)), "none: no meter");
    assert_eq!(in_dp(E1), rl(None, Some(30_000)));
    t.svc
        .set_endpoint_limits(E1, change(Some("network"), None))
        .await
        .unwrap();
    assert_eq!(limits(E1), rl(Some(100_000), Some(30_000)));
    t.svc
        .set_network_limits(N1, change(Some("none"), Some("none")))
        .await
        .unwrap();
    assert_eq!(limits(E1), rl(None, None));
    assert_eq!(limits(E2), rl(None, Some(10_000)));
    let views = t.svc.admin_networks().await.unwrap();
    assert!(views[0].limits.is_unlimited());

    for (bad, why) in [
        (change(Some("5"), None), "8K"),
        (change(None, None), "nothing to change"),
    ] {
        let e = t.svc.set_endpoint_limits(E1, bad).await.unwrap_err();
        assert!(e.to_string().contains(why), "{e}");
    }
    let e = t
        .svc
        .set_endpoint_limits("ffffffff", change(Some("1M"), None))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no endpoint or container"), "{e}");
}

/// Issue 14 §2, `--fence-after`: no renewal answered for that long fences every own port
/// (drop flows, nothing deleted); with the lease back, the fence is lifted only for
/// endpoints whose address is still theirs.
#[tokio::test]
async fn fence_when_cut_off_and_lift_only_where_the_address_is_still_held() {
    use crate::fence::Fence;
    use crate::state::{addr_key, decode, encode, AddrRecord};
    use crate::store::{Op, Store, Txn};
    use std::time::{Duration, Instant};

    let store = Arc::new(MemStore::new());
    let t = setup_host(store.clone(), "h1");
    let pool = t
        .create_network(N1, "10.231.9.0/24", json!({}))
        .await
        .unwrap();
    t.start(N1, &pool, E1, "10.231.9.10").await;
    let e2 = E2;
    t.start(N1, &pool, e2, "10.231.9.11").await;
    let port_of = |ep: &str| {
        t.dp.endpoints
            .lock()
            .unwrap()
            .values()
            .find(|p| p.endpoint_id == ep)
            .unwrap()
            .host_if
            .clone()
    };
    let (p1, p2) = (port_of(E1), port_of(e2));
    let fence = Fence::new(
        Duration::from_millis(200),
        t.svc.state().clone(),
        t.dp.clone(),
    );
    fence.renewed(Instant::now());
    assert!(!fence.check().await, "fenced while renewing on time");
    assert!(t.dp.fenced.lock().unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(fence.check().await);
    let both: std::collections::BTreeSet<String> = [p1.clone(), p2.clone()].into();
    assert_eq!(*t.dp.fenced.lock().unwrap(), both);
    assert_eq!(
        t.dp.endpoints.lock().unwrap().len(),
        2,
        "fencing deleted a port"
    );
    // Not lifted while still cut off.
    fence.recover().await;
    assert_eq!(*t.dp.fenced.lock().unwrap(), both);
    // While cut off, e2's address was reclaimed and another host's endpoint took it.
    let key = addr_key(&pool, "10.231.9.11".parse().unwrap());
    let mut a: AddrRecord = decode(&store.get(&key).unwrap().unwrap()).unwrap();
    a.host_id = "h2".into();
    a.endpoint_id = Some("e9".into());
    store
        .txn(Txn {
            success: vec![Op::put(key, encode(&a))],
            ..Default::default()
        })
        .unwrap();
    // The lease is back: e1's fence goes, e2's stays.
    fence.renewed(Instant::now());
    fence.recover().await;
    assert_eq!(*t.dp.fenced.lock().unwrap(), [p2.clone()].into());
    assert_eq!(fence.fenced().await, [p2].into());
    assert!(!fence.check().await);
}

/// Issue 18: what Docker 26–28 send that 20.10 does not, as they send it (protocols.md §7).
/// Docker 28's `--ipv4=false` network (no IPv4Data, `enable_ipv4` false) is refused with a
/// reason, not recorded as a network without a subnet.
#[tokio::test]
async fn docker28_network_without_ipv4_is_refused() {
    let t = setup();
    let e = t
        .err(
            "NetworkDriver.CreateNetwork",
            json!({"NetworkID":N1,"Options":{"com.docker.network.enable_ipv4":false,
                "com.docker.network.enable_ipv6":true,"com.docker.network.generic":{}},
                "IPv4Data":[],"IPv6Data":[]}),
        )
        .await;
    assert!(e.contains("without --ipv4=false"), "{e}");
    assert!(
        t.svc.state().network(N1).unwrap().is_none(),
        "recorded anyway"
    );
    // Docker 28's ordinary network says enable_ipv4 true: accepted as before.
    let pool = t
        .ok(
            "IpamDriver.RequestPool",
            json!({"AddressSpace":"berth-local","Pool":"10.231.7.0/24","SubPool":"","Options":{},"V6":false}),
        )
        .await;
    let gw = t
        .ok(
            "IpamDriver.RequestAddress",
            json!({"PoolID":pool["PoolID"],"Address":"","Options":{"RequestAddressType":"com.docker.network.gateway"}}),
        )
        .await;
    t.ok(
        "NetworkDriver.CreateNetwork",
        json!({"NetworkID":N1,"Options":{"com.docker.network.enable_ipv4":true,
            "com.docker.network.enable_ipv6":false,"com.docker.network.generic":{"vlan":"100"}},
            "IPv4Data":[{"AddressSpace":"berth-local","Gateway":gw["Address"],"Pool":"10.231.7.0/24"}],"IPv6Data":[]}),
    )
    .await;
    assert!(t.svc.state().network(N1).unwrap().is_some());
}

/// Docker 28's interface name for a plugin network is dropped by dockerd (the container gets
/// eth<N> anyway): CreateEndpoint refuses it, saying so, and builds nothing. Docker 25+'s
/// per-interface sysctls, which dockerd applies itself, pass.
#[tokio::test]
async fn interface_name_refused_sysctls_pass() {
    let t = setup();
    let pool = t
        .create_network(N1, "10.231.8.0/24", json!({"vlan":"100"}))
        .await
        .unwrap();
    let a = t
        .ok(
            "IpamDriver.RequestAddress",
            json!({"PoolID":pool,"Address":"","Options":null}),
        )
        .await;
    let addr = a["Address"].as_str().unwrap().to_string();
    let e = t
        .err(
            "NetworkDriver.CreateEndpoint",
            json!({"NetworkID":N1,"EndpointID":E1,"Interface":{"Address":addr,"AddressIPv6":"","MacAddress":""},
                "Options":{"com.docker.network.endpoint.exposedports":[],"com.docker.network.endpoint.ifname":"db0",
                    "com.docker.network.portmap":[]}}),
        )
        .await;
    assert!(e.contains("cannot name the container's interface"), "{e}");
    assert!(e.contains("ifname=\"db0\""), "{e}");
    assert!(t.dp.endpoints.lock().unwrap().is_empty(), "built anyway");
    t.ok(
        "NetworkDriver.CreateEndpoint",
        json!({"NetworkID":N1,"EndpointID":E1,"Interface":{"Address":addr,"AddressIPv6":"","MacAddress":""},
            "Options":{"com.docker.network.endpoint.exposedports":[],
                "com.docker.network.endpoint.sysctls":"net.ipv4.conf.IFNAME.log_martians=1",
                "com.docker.network.portmap":[]}}),
    )
    .await;
    assert_eq!(t.dp.endpoints.lock().unwrap().len(), 1);
}

/// What a call may take here when nothing it needs is held (generous: a loaded CI machine).
const PROMPT: std::time::Duration = std::time::Duration::from_secs(5);

/// Issue 15 §3: a reconcile pass stuck in the datapath (as behind a stopped ovsdb-server)
/// holds no lock the endpoint calls need: containers on other networks start and stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reconcile_pass_does_not_stall_endpoint_calls() {
    let t = setup();
    let p1 = t
        .create_network(N1, "10.231.1.0/24", json!({"vlan":"100"}))
        .await
        .unwrap();
    let p2 = t
        .create_network(N2, "10.231.2.0/24", json!({"vlan":"101"}))
        .await
        .unwrap();
    let (a1, _) = t.start(N1, &p1, E1, "").await;
    t.dp.hold("reassert");
    let pass = tokio::spawn({
        let svc = t.svc.clone();
        async move { svc.reconcile().await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(!pass.is_finished(), "the pass is held in the datapath");
    let (a2, _) = tokio::time::timeout(PROMPT, t.start(N2, &p2, E2, ""))
        .await
        .expect("a container starts while a pass is stuck");
    tokio::time::timeout(PROMPT, t.stop(N1, &p1, E1, &a1))
        .await
        .expect("a container stops while a pass is stuck");
    // The admin's pass waits its bound for the one running, then says so.
    t.dp.release("reassert");
    pass.await.unwrap().unwrap();
    // The stuck pass planned with E1 still there; the next pass leaves exactly E2's port.
    t.svc.reconcile().await.unwrap();
    let ports: Vec<String> = t.dp.endpoints.lock().unwrap().keys().cloned().collect();
    assert_eq!(ports, ["vbbbbbbbbbbb"]);
    t.stop(N2, &p2, E2, &a2).await;
    assert!(t.dp.endpoints.lock().unwrap().is_empty());
}

/// A call on an endpoint another call holds waits its bound, then answers "busy" naming what
/// runs (503); it never waits without limit, and the same call later succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_on_a_busy_endpoint_answers_within_its_bound() {
    let bound = std::time::Duration::from_millis(300);
    let t = setup_on(
        Arc::new(MemStore::new()),
        "h1",
        LockWaits {
            object: bound,
            pass: bound,
        },
    );
    let p1 = t
        .create_network(N1, "10.231.1.0/24", json!({"vlan":"100"}))
        .await
        .unwrap();
    let a = t
        .ok(
            "IpamDriver.RequestAddress",
            json!({"PoolID":p1,"Address":"","Options":null}),
        )
        .await;
    let addr = a["Address"].as_str().unwrap().to_string();
    t.dp.hold("create_endpoint");
    let create = tokio::spawn({
        let router = t.router.clone();
        let body = json!({"NetworkID":N1,"EndpointID":E1,"Interface":{"Address":addr,"AddressIPv6":"","MacAddress":""},"Options":{}});
        async move {
            router
                .dispatch(Request {
                    method: Method::POST,
                    path: "/NetworkDriver.CreateEndpoint".into(),
                    query: None,
                    body: Bytes::from(body.to_string()),
                })
                .await
                .status
                .as_u16()
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    let (status, v) = t
        .call(
            "NetworkDriver.DeleteEndpoint",
            json!({"NetworkID":N1,"EndpointID":E1}),
        )
        .await;
    let took = started.elapsed();
    assert_eq!(status, 503, "{v}");
    let msg = v["Err"].as_str().unwrap();
    assert!(
        msg.contains(E1) && msg.contains("busy: create endpoint has been running"),
        "{msg}"
    );
    assert!(took >= bound && took < PROMPT, "{took:?}");
    // A reconcile pass meanwhile neither waits for the endpoint nor removes its new port.
    let report = tokio::time::timeout(PROMPT, t.svc.reconcile())
        .await
        .expect("a pass runs beside the held endpoint")
        .unwrap();
    assert!(report.ports_removed.is_empty(), "{report:?}");
    assert!(t.dp.reasserted.lock().unwrap().contains(&E1.to_string()));
    t.dp.release("create_endpoint");
    assert_eq!(create.await.unwrap(), 200);
    t.ok(
        "NetworkDriver.DeleteEndpoint",
        json!({"NetworkID":N1,"EndpointID":E1}),
    )
    .await;
    assert!(t.dp.endpoints.lock().unwrap().is_empty());
}

/// An endpoint whose record is not written yet (the store is slow) while its port exists is
/// being created, not leaked: a pass keeps its port and its whole-bridge state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_keeps_an_endpoint_whose_record_is_still_being_written() {
    use crate::store::faulty::{Fault, Faulty};
    let store = Arc::new(Faulty::new());
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let wait = std::sync::Mutex::new(wait);
    store.on_txn(move |_, txn| {
        let writes_e1 = txn.success.iter().any(|op| format!("{op:?}").contains(E1));
        if writes_e1 {
            let _ = wait
                .lock()
                .unwrap()
                .recv_timeout(std::time::Duration::from_secs(20));
        }
        Fault::None
    });
    let t = setup_on(store, "h1", LockWaits::default());
    let p1 = t
        .create_network(N1, "10.231.1.0/24", json!({"vlan":"100"}))
        .await
        .unwrap();
    let create = tokio::spawn({
        let router = t.router.clone();
        let pool = p1.clone();
        async move {
            let body = |v: Value| Bytes::from(v.to_string());
            let a = router
                .dispatch(Request {
                    method: Method::POST,
                    path: "/IpamDriver.RequestAddress".into(),
                    query: None,
                    body: body(json!({"PoolID":pool,"Address":"","Options":null})),
                })
                .await;
            let a: Value = serde_json::from_slice(&a.body).unwrap();
            router
                .dispatch(Request {
                    method: Method::POST,
                    path: "/NetworkDriver.CreateEndpoint".into(),
                    query: None,
                    body: body(json!({"NetworkID":N1,"EndpointID":E1,"Interface":{"Address":a["Address"],"AddressIPv6":"","MacAddress":""},"Options":{}})),
                })
                .await
                .status
                .as_u16()
        }
    });
    // Its port exists; its record does not yet.
    let deadline = std::time::Instant::now() + PROMPT;
    while !t.dp.endpoints.lock().unwrap().contains_key("vbaaaaaaaaaa") {
        assert!(std::time::Instant::now() < deadline, "port never made");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(t.svc.state().endpoint(E1).unwrap().is_none());
    let report = tokio::time::timeout(PROMPT, t.svc.reconcile())
        .await
        .expect("the pass does not wait for the endpoint")
        .unwrap();
    assert!(report.ports_removed.is_empty(), "{report:?}");
    assert_eq!(*t.dp.reasserted.lock().unwrap(), [E1.to_string()]);
    go.send(()).unwrap();
    assert_eq!(create.await.unwrap(), 200);
    assert!(t.dp.endpoints.lock().unwrap().contains_key("vbaaaaaaaaaa"));
}
