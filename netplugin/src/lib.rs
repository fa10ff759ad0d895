//! netplugin: Berth's libnetwork remote network driver and remote IPAM driver on Open vSwitch
//! VLAN access ports.
//!
//! - [`store`]: the `Store` trait (etcd semantics: revisions, transactions, leases, watches)
//!   with the embedded redb implementation and an in-memory one; [`state`]: typed records.
//! - [`ipam`] and [`network`]: the drivers' logic; [`protocol`]: Docker's messages;
//!   [`handlers`]: the plugin and admin routers.
//! - [`dataplane`]: veth pairs and OVS ports behind a trait (ovs-ffi for the real one).
//! - [`docker_sync`]: Docker's view of our endpoints, in the background: container labels on
//!   OVS interfaces, and release of endpoints Docker leaked.

pub mod dataplane;
pub mod docker_sync;
pub mod error;
pub mod fence;
pub mod fleet;
pub mod handlers;
pub mod identity;
pub mod ipam;
pub mod ipnet;
pub mod leaks;
pub mod mac;
pub mod metrics;
pub mod migrate;
pub mod network;
pub mod protocol;
pub mod reconcile;
pub mod state;
pub mod store;

#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod tests;
