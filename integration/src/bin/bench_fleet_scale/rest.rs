//! The rest of the fleet, and a watcher of its records.
//!
//! On this 2-core machine 50 ovs-vswitchd instances stop keeping up past about 120 ports each
//! (endpoint creation falls to 6–8/s), so 10,000 real ports cannot be made here. The measured
//! hosts keep real ports (`--ports` each); the rest of the fleet's endpoints are made by
//! [`FILLER_HOSTS`] more hosts that run netplugin's own service in this process, on its real
//! etcd store and IPAM, with the in-memory datapath (`FakeDataplane`, which records the flows
//! it is given) instead of OVS: their address and endpoint records are exactly those a host
//! writes, and that is all the measured hosts see of another host.
//!
//! Both run on threads inside a lab host's network namespace: the lab's etcd exists only
//! there.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};
use integration::lab::Lab;
use netplugin::dataplane::fake::FakeDataplane;
use netplugin::ipam::{Ipam, IpamConfig};
use netplugin::network::{NetConfig, Service};
use netplugin::state::State;
use netplugin::store::etcd::{EtcdConfig, EtcdStore, DEFAULT_PREFIX};
use netplugin::store::{Event, Store};
use serde_json::{from_value, json};

use super::{subnet, FIRST_VLAN};

/// Hosts of the rest of the fleet (each its own etcd client, IPAM and service).
pub const FILLER_HOSTS: usize = 10;

fn etcd_store(endpoints: &str) -> Result<Arc<dyn Store>> {
    let config = EtcdConfig::new(endpoints, DEFAULT_PREFIX).map_err(anyhow::Error::msg)?;
    Ok(Arc::new(EtcdStore::connect(&config)?))
}

/// Creates `per_vlan[i]` endpoints on VLAN index i, spread over the filler hosts, each through
/// the calls dockerd makes (RequestPool, gateway RequestAddress and CreateNetwork once per
/// host and VLAN; RequestAddress + CreateEndpoint per endpoint). Returns the seconds taken.
pub fn fill(lab: &Lab, per_vlan: &[usize]) -> Result<f64> {
    let endpoints = lab.etcd_endpoints();
    let per_vlan = per_vlan.to_vec();
    lab.hosts[0].node.in_netns(move || -> Result<f64> {
        let t = Instant::now();
        // Made (and dropped, below) outside the runtime: each store owns a runtime of its own.
        let services: Vec<Arc<Service>> = (0..FILLER_HOSTS)
            .map(|f| -> Result<Arc<Service>> {
                let store = etcd_store(&endpoints)?;
                let host = format!("filler-{f:02}");
                let ipam = Arc::new(Ipam::new(
                    State::new(store.clone(), host.clone()),
                    IpamConfig::default(),
                ));
                Ok(Arc::new(Service::new(
                    State::new(store, host),
                    ipam,
                    Arc::new(FakeDataplane::new()),
                    NetConfig::default(),
                )))
            })
            .collect::<Result<_>>()?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let result = rt.block_on(async {
            let mut tasks = tokio::task::JoinSet::new();
            for (f, svc) in services.iter().enumerate() {
                let svc = svc.clone();
                // Filler host f makes every FILLER_HOSTS-th endpoint of each VLAN.
                let mine: Vec<usize> = per_vlan
                    .iter()
                    .map(|n| n / FILLER_HOSTS + usize::from(f < n % FILLER_HOSTS))
                    .collect();
                tasks.spawn(async move { fill_host(&svc, f, &mine).await });
            }
            let mut made = 0;
            while let Some(done) = tasks.join_next().await {
                made += done??;
            }
            anyhow::Ok(made)
        });
        drop(rt);
        drop(services);
        let made = result?;
        ensure!(
            made == per_vlan.iter().sum::<usize>(),
            "the rest of the fleet: {made} endpoints made"
        );
        Ok(t.elapsed().as_secs_f64())
    })?
}

async fn fill_host(svc: &Service, f: usize, per_vlan: &[usize]) -> Result<usize> {
    let mut made = 0;
    for (v, &count) in per_vlan.iter().enumerate() {
        let sub = subnet(v);
        let vlan = FIRST_VLAN + v;
        let (pool, _) = svc
            .request_pool(from_value(
                json!({"AddressSpace":"berth-local","Pool":sub}),
            )?)
            .await?;
        let gw = svc
            .request_address(from_value(json!({"PoolID":pool,
                "Options":{"RequestAddressType":"com.docker.network.gateway"}}))?)
            .await?;
        // Ids as a dockerd would make them, apart from the measured hosts' (first hex digit f).
        let net = format!("f{:015x}{:048x}", f * 100 + v, vlan);
        svc.create_network(from_value(json!({"NetworkID":net,
            "Options":{"com.docker.network.generic":{"vlan":vlan.to_string()}},
            "IPv4Data":[{"AddressSpace":"berth-local","Pool":sub,"Gateway":gw}]}))?)
            .await?;
        for k in 0..count {
            let addr = svc
                .request_address(from_value(json!({"PoolID":pool,"Address":""}))?)
                .await?;
            // Veth names come from the first 10 hex digits: unique per filler, VLAN and k.
            let id = format!("f{f:02x}{v:01x}{k:06x}{:054x}", 0xf111);
            svc.create_endpoint(from_value(json!({"NetworkID":net,"EndpointID":id,
                "Interface":{"Address":addr,"AddressIPv6":"","MacAddress":""}}))?)
                .await
                .with_context(|| format!("filler-{f:02} CreateEndpoint {k} on VLAN {vlan}"))?;
            made += 1;
        }
    }
    Ok(made)
}

/// When each endpoint and address record last changed, as a client watching the store beside
/// the hosts sees it: splits propagation into the store's part and the receiving host's.
pub struct RecordWatch {
    seen: Arc<Mutex<HashMap<String, Instant>>>,
    _store: Arc<dyn Store>,
}

impl RecordWatch {
    pub fn start(lab: &Lab) -> Result<RecordWatch> {
        let endpoints = lab.etcd_endpoints();
        let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let s = seen.clone();
        let store = lab.hosts[0]
            .node
            .in_netns(move || -> Result<Arc<dyn Store>> {
                let store = etcd_store(&endpoints)?;
                for prefix in ["endpoints/", "addrs/"] {
                    let listing = store.list_and_watch(prefix)?;
                    let s = s.clone();
                    // Ends when the store is dropped (the watch channel closes).
                    std::thread::spawn(move || {
                        for event in listing.events {
                            if let Event::Put(kv) = event {
                                s.lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .insert(kv.key, Instant::now());
                            }
                        }
                    });
                }
                Ok(store)
            })??;
        Ok(RecordWatch {
            seen,
            _store: store,
        })
    }

    /// When both keys had been written (the later of the two), waiting up to `bound`.
    pub fn both_seen(&self, a: &str, b: &str, bound: Duration) -> Option<Instant> {
        let t = Instant::now();
        loop {
            {
                let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
                if let (Some(x), Some(y)) = (seen.get(a), seen.get(b)) {
                    return Some(*x.max(y));
                }
            }
            if t.elapsed() > bound {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
