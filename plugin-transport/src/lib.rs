//! What both Berth daemons share, and nothing else: the Docker plugin transport (HTTP/1.1 on a
//! UNIX socket with Docker's error format), systemd socket activation, the admin socket and its
//! client, the Prometheus metrics server, logging, config-file loading, and the daemon skeleton
//! (common flags, listeners, tasks, shutdown).

pub mod blocking;
pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod docker;
pub mod error;
pub mod listen;
pub mod logging;
pub mod metrics;
pub mod router;
pub mod server;
pub mod shutdown;

pub use error::PluginError;
pub use router::{Reply, Request, Router};
