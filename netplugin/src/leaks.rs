//! Start-up repair of what a kill -9 leaves between two datapath steps that the reconcile pass
//! cannot see: a veth pair created by CreateEndpoint whose OVS port was never added. The pass
//! finds stray veths through their ports only, so such a pair would stay forever.

use std::collections::BTreeSet;

use tracing::{info, warn};

use crate::dataplane::host_if_name;
use crate::error::{NetError, NetResult};
use crate::network::Service;
use crate::state::store_op;

/// Removes berth-named veth pairs that have no OVS port and whose endpoint is not this host's
/// in the store. Run at start, before the plugin socket serves: no CreateEndpoint of this
/// daemon can then be between its two steps (a veth just made, its port not yet added), so a
/// veth without a port is a leftover. A veth whose endpoint record is this host's stays: the
/// reconcile pass gives it its port again. Returns the names removed.
pub async fn remove_portless_veths(svc: &Service) -> NetResult<Vec<String>> {
    let dp = svc.dataplane();
    let candidates = dp.portless_veths().await.map_err(NetError::Datapath)?;
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    let state = svc.state().clone();
    let records = store_op("endpoints at start", move || Ok(state.endpoints()?)).await?;
    let me = &svc.state().host_id;
    let recorded: BTreeSet<String> = records
        .iter()
        .filter(|e| &e.host_id == me)
        .map(|e| host_if_name(&e.id))
        .collect();
    let mut removed = Vec::new();
    for name in candidates {
        if recorded.contains(&name) {
            continue;
        }
        match dp.delete_endpoint(&name).await {
            Ok(()) => {
                info!(veth = %name, "veth pair without an OVS port or an endpoint removed (left by a crash)");
                removed.push(name);
            }
            Err(e) => warn!(veth = %name, error = %e, "could not remove a leaked veth pair"),
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::dataplane::fake::FakeDataplane;
    use crate::ipam::{Ipam, IpamConfig};
    use crate::ipnet::Ipv4If;
    use crate::mac::Mac;
    use crate::network::NetConfig;
    use crate::state::{encode, endpoint_key, EndpointRecord, State};
    use crate::store::memory::MemStore;
    use crate::store::{Op, Store, Txn};

    fn record(id: &str, host: &str) -> EndpointRecord {
        let ip = std::net::Ipv4Addr::new(10, 0, 0, 2);
        EndpointRecord {
            id: id.into(),
            network_id: "n".repeat(64),
            host_id: host.into(),
            address: Ipv4If { ip, prefix: 24 },
            mac: Mac::from_ip(ip),
            host_if: host_if_name(id),
            container_if: crate::dataplane::container_if_name(id),
            vlan: 100,
            mtu: 1500,
            created_at: 0,
            lease: 0,
            limits: Default::default(),
            own_limits: None,
            allow_spoofing: false,
        }
    }

    /// Only veths whose endpoint is not this host's go: this host's record keeps its veth (its
    /// port comes back with the reconcile pass), another host's record does not.
    #[tokio::test]
    async fn only_veths_without_this_hosts_endpoint_go() {
        let store = Arc::new(MemStore::new());
        let (mine, theirs, none) = ("a".repeat(64), "b".repeat(64), "c".repeat(64));
        for r in [record(&mine, "h1"), record(&theirs, "h2")] {
            store
                .txn(Txn {
                    success: vec![Op::put(endpoint_key(&r.id), encode(&r))],
                    ..Default::default()
                })
                .unwrap();
        }
        let state = State::new(store, "h1");
        let ipam = Arc::new(Ipam::new(
            state.clone(),
            IpamConfig {
                default_pools: vec!["10.240.0.0/16".parse().unwrap()],
                default_prefix: 24,
            },
        ));
        let dp = Arc::new(FakeDataplane::new());
        *dp.portless.lock().unwrap() = [&mine, &theirs, &none].map(|i| host_if_name(i)).to_vec();
        let svc = Service::new(
            state,
            ipam,
            dp.clone(),
            NetConfig {
                vlan_range: (100, 101),
                default_mtu: 1500,
            },
        );
        let removed = remove_portless_veths(&svc).await.unwrap();
        assert_eq!(removed, [host_if_name(&theirs), host_if_name(&none)]);
        assert_eq!(*dp.portless.lock().unwrap(), [host_if_name(&mine)]);
        dp.set_down(true);
        assert!(
            remove_portless_veths(&svc).await.is_err(),
            "OVS down: not looked for"
        );
    }
}
