//! Fuzz target: every NetworkDriver and IpamDriver request body through the plugin router, on
//! the in-memory store and the recording datapath (`plugin_transport::fuzz::run_router` says
//! what every answer must be).
//! Seeds: `fuzz/corpus/netplugin-plugin/`, one file per request, named `<Method>.<n>`.

use std::sync::Arc;

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
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let seen = plugin_transport::fuzz::run_router(&corpus, "netplugin-plugin", &router);
    // The run reached the handlers, not only the decoder.
    assert!(
        seen.get(&200) > Some(&10) && seen.get(&400) > Some(&10),
        "{seen:?}"
    );
}
