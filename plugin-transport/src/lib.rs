//! What both Berth daemons share, and nothing else: the Docker plugin transport (HTTP/1.1 on a
//! UNIX socket with Docker's error format), systemd socket activation, the admin socket and its
//! client, the Prometheus metrics server, logging, config-file loading, and the daemon skeleton
//! (common flags, listeners, tasks, shutdown).

pub mod blocking;
/// The git revision for `--version`; also `include!`d by the daemons' build scripts.
pub mod build_info;
pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod docker;
pub mod error;
pub mod fuzz;
pub mod generate;
pub mod input;
pub mod listen;
pub mod logging;
pub mod metrics;
pub mod router;
pub mod server;
pub mod shutdown;
pub mod sync;

pub use error::PluginError;
pub use router::{Reply, Request, Router};

/// `"<crate version> (git <revision>)"`, the `--version` of a daemon, e.g.
/// `0.1.0 (git 602f1e3)`: expanded in the daemon's crate, whose build script sets
/// `BERTH_BUILD_GIT_REV` ([`build_info`]); clap prints it after the binary's name.
#[macro_export]
macro_rules! version {
    () => {
        concat!(
            env!("CARGO_PKG_VERSION"),
            " (git ",
            env!("BERTH_BUILD_GIT_REV"),
            ")"
        )
    };
}
