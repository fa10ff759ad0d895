//! Fuzz target: every NetworkDriver and IpamDriver request body through the plugin router, on
//! the in-memory store and the recording datapath. Whatever the bytes, the answer is one of
//! the protocol's statuses with a JSON body naming the problem, and no handler panics.
//! Seeds: `fuzz/corpus/netplugin-plugin/`, one file per request, named `<Method>.<n>`.

use std::sync::Arc;

use bytes::Bytes;
use http::Method;
use plugin_transport::Request;

use crate::dataplane::fake::FakeDataplane;
use crate::handlers::plugin_router;
use crate::ipam::{Ipam, IpamConfig};
use crate::network::{NetConfig, Service};
use crate::state::State;
use crate::store::memory::MemStore;

#[test]
fn fuzz_network_and_ipam_driver_requests() {
    let state = State::new(Arc::new(MemStore::new()), "h1");
    let ipam = Arc::new(Ipam::new(
        state.clone(),
        IpamConfig {
            default_pools: vec!["10.240.0.0/16".parse().unwrap()],
            default_prefix: 24,
        },
    ));
    let svc = Arc::new(Service::new(
        state,
        ipam,
        Arc::new(FakeDataplane::new()),
        NetConfig {
            vlan_range: (100, 4094),
            default_mtu: 1500,
        },
    ));
    let router = plugin_router(svc);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let mut seen = std::collections::BTreeMap::<u16, u64>::new();
    plugin_transport::fuzz::run(&corpus, "netplugin-plugin", |seed, input| {
        let method = seed.rsplit_once('.').map_or(seed, |(m, _)| m);
        let reply = runtime.block_on(router.dispatch(Request {
            method: Method::POST,
            path: format!("/{method}"),
            query: None,
            body: Bytes::copy_from_slice(input),
        }));
        let status = reply.status.as_u16();
        *seen.entry(status).or_default() += 1;
        assert!(
            matches!(status, 200 | 400 | 404 | 409 | 413 | 500),
            "{method}: status {status}"
        );
        let body: serde_json::Value = serde_json::from_slice(&reply.body)
            .unwrap_or_else(|e| panic!("{method}: answer is not JSON ({e})"));
        if status != 200 {
            let err = body["Err"].as_str().unwrap_or_default();
            assert!(!err.is_empty(), "{method}: error without Err: {body}");
            assert_eq!(body["Err"], body["Error"], "{method}: IPAM reads Error");
            assert!(
                !err.contains("worker failed"),
                "{method}: a handler panicked: {err}"
            );
            assert!(err.len() <= 4096, "{method}: {} byte error", err.len());
        }
    });
    assert!(
        seen.get(&200) > Some(&10) && seen.get(&400) > Some(&10),
        "{seen:?}"
    );
}
