//! Test harness of the Berth end-to-end tests.
//!
//! - [`procs`]: background daemons with log files ([`procs::Daemon`]), polling
//!   ([`procs::wait_until`]), commands with time limits.
//! - [`docker`]: a private containerd + dockerd per test suite ([`docker::DockerEnv`]) with the
//!   `berth-test/busybox:latest` image, isolated from any system Docker; Debian 12's dockerd 20.10
//!   or, with `BERTH_DOCKER=26`, Debian 13's 26.1 from a cached root ([`docker_root`]).
//! - [`lab`]: the fleet lab: three hosts (own network + mount namespaces, dockerd, OVS,
//!   netplugin, volplugin), a trunk switch and etcd on this one machine.
//! - [`soak`]: the chaos soak's cycles and invariants, on one host or in the lab.
//! - [`harness`]: a runner for `harness = false` test targets that share one expensive context
//!   and need guaranteed teardown ([`harness::run`]), and [`harness::require_root_and_tools`].
//!
//! Tests using these need root and Debian's `docker.io`, `containerd`, `runc` and
//! `busybox-static`.

pub mod docker;
pub mod docker_root;
pub mod etcd;
pub mod harness;
pub mod hostile;
pub mod iomeasure;
pub mod lab;
pub mod netplugin;
pub mod ovs;
pub mod plugins;
pub mod procs;
pub mod soak;
pub mod thin_guest;
pub mod vm;

pub use docker::{berth_network_args, DockerEnv, DockerOptions, TEST_IMAGE};
pub use docker_root::DockerVersion;
pub use procs::{wait_until, Daemon};
