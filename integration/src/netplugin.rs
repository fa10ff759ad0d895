//! A netplugin daemon for tests and benchmarks: its own state dir, admin socket and OVS.

use std::path::{Path, PathBuf};

use crate::plugins::PluginDaemon;

/// netplugin as [`PluginDaemon`] runs it; `args` carries `--ovsdb`, `--bridge`, ...
pub struct Netplugin(PluginDaemon);

impl std::ops::Deref for Netplugin {
    type Target = PluginDaemon;
    fn deref(&self) -> &PluginDaemon {
        &self.0
    }
}

impl std::ops::DerefMut for Netplugin {
    fn deref_mut(&mut self) -> &mut PluginDaemon {
        &mut self.0
    }
}

impl Netplugin {
    pub fn new(bin: PathBuf, work: &Path, plugin_dir: &Path, args: Vec<String>) -> Self {
        let mut daemon = PluginDaemon::new("netplugin", "berth-net.sock", bin, work, plugin_dir);
        daemon.args = args;
        Self(daemon)
    }
}
