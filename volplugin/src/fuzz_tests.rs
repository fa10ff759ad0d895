//! Fuzz target: every VolumeDriver request body through the plugin router, on the simulator
//! backend (`plugin_transport::fuzz::run_router` says what every answer must be).
//! Seeds: `fuzz/corpus/volplugin-plugin/`, one file per request, named `<Method>.<n>`.

use std::sync::Arc;

use crate::backend::memory::MemoryBackend;
use crate::handlers::plugin_router;
use crate::service::VolumeService;
use crate::spec::{Filesystem, SpecPolicy};
use crate::store::MetaStore;

#[test]
fn fuzz_volume_driver_requests() {
    let mounts = tempfile::tempdir().unwrap();
    let svc = VolumeService::new(
        MetaStore::in_memory().unwrap(),
        Arc::new(MemoryBackend::new()),
        SpecPolicy {
            default_size: 1 << 30,
            max_size: 1 << 40,
            default_fs: Filesystem::Xfs,
        },
        mounts.path().to_path_buf(),
    );
    let router = plugin_router(Arc::new(svc));
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let seen = plugin_transport::fuzz::run_router(&corpus, "volplugin-plugin", &router);
    // The run reached the handlers, not only the decoder.
    assert!(
        seen.get(&200) > Some(&10) && seen.get(&400) > Some(&10),
        "{seen:?}"
    );
}
