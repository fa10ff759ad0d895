//! Open vSwitch access for Berth, with no `ovs-vsctl`/`ovs-ofctl` forks:
//!
//! - [`ovsdb`]: an OVSDB (RFC 7047) client on the UNIX socket, with a monitor-fed cache,
//!   echo keepalive, reconnect with backoff, and typed idempotent helpers for bridges and ports.
//! - [`openflow`]: an OpenFlow 1.3/1.4/1.5 client on the bridge's `.mgmt` socket: flows,
//!   meters, bundles, flow and meter stats, errors decoded to names.
//! - `wire` (private): the OpenFlow structs bindgen generated from Open vSwitch's own headers
//!   (`scripts/regen-wire.sh`); the safe API above is the only way out of it.
//!
//! Everything is async (tokio); every call is bounded by a timeout.

mod error;
pub mod openflow;
pub mod ovsdb;
mod wire;

pub use error::{Error, Result};
