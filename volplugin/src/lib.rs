//! volplugin: Berth's Docker volume plugin. Volumes are real block devices with a size and a
//! filesystem (a loop-mounted sparse file on single hosts), with usage figures in
//! `docker volume inspect`, crash-safe metadata and ref-counted mounts.

pub mod backend;
pub mod cgroup;
pub mod error;
pub mod handlers;
pub mod limits;
pub mod metrics;
pub mod protocol;
pub mod service;
pub mod spec;
pub mod store;
pub mod throttle;

#[cfg(test)]
mod fuzz_tests;
