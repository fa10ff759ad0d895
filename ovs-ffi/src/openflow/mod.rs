//! OpenFlow 1.3+ client on a bridge's management socket (`<ovs-rundir>/<bridge>.mgmt`).
//!
//! Offers 1.3, 1.4 and 1.5 and uses the highest the switch accepts (bundles use the ONF
//! extension on 1.3, the meter instruction becomes the meter action on 1.5). Messages are
//! laid out with the structs generated from OVS's headers (`crate::wire`).

mod client;
mod codec;
mod types;

pub use client::{mgmt_socket, OfClient, OfConfig};
pub use codec::OfError;
pub use types::*;

/// Decoders exposed for fuzz and property tests: they take untrusted bytes and must return
/// errors, never panic.
#[doc(hidden)]
pub mod fuzz {
    use super::*;

    pub fn flow_stats(version: OfVersion, body: &[u8]) -> Result<Vec<FlowStats>, String> {
        codec::parse_flow_stats(version, body)
    }
    pub fn meter_configs(body: &[u8]) -> Result<Vec<Meter>, String> {
        codec::parse_meter_configs(body)
    }
    pub fn meter_stats(body: &[u8]) -> Result<Vec<MeterStats>, String> {
        codec::parse_meter_stats(body)
    }
    pub fn error(version: u8, body: &[u8]) -> Result<OfError, String> {
        codec::parse_error(version, body)
    }
    /// Encodes a flow_mod (for building valid inputs to mutate).
    pub fn flow_mod(version: OfVersion, fm: &FlowMod) -> crate::Result<Vec<u8>> {
        codec::flow_mod(version, 1, fm)
    }
}
