//! Open vSwitch access for Berth: an OVSDB (RFC 7047) client and an OpenFlow 1.3+ client.
//!
//! The clients are built by the ovs-ffi issue; this crate exists now so the workspace layout
//! matches DESIGN.md and netplugin can depend on it.
