//! Fuzz target: every VolumeDriver request body through the plugin router, on the simulator
//! backend. Whatever the bytes, the answer is one of the protocol's statuses with a JSON body,
//! and no handler panics (a panic on a worker thread would come back as "worker failed").
//! Seeds: `fuzz/corpus/volplugin-plugin/`, one file per request, named `<Method>.<n>`.

use std::sync::Arc;

use bytes::Bytes;
use http::Method;
use plugin_transport::Request;

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
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let mut seen = std::collections::BTreeMap::<u16, u64>::new();
    plugin_transport::fuzz::run(&corpus, "volplugin-plugin", |seed, input| {
        let method = seed.rsplit_once('.').map_or(seed, |(m, _)| m);
        let reply = runtime.block_on(router.dispatch(Request {
            method: Method::POST,
            path: format!("/{method}"),
            query: None,
            body: Bytes::copy_from_slice(input),
        }));
        let status = reply.status.as_u16();
        *seen.entry(status).or_default() += 1;
        assert!(
            matches!(status, 200 | 400 | 404 | 409 | 413 | 500),
            "{method}: status {status}"
        );
        let body: serde_json::Value = serde_json::from_slice(&reply.body)
            .unwrap_or_else(|e| panic!("{method}: answer is not JSON ({e})"));
        if status != 200 {
            let err = body["Err"].as_str().unwrap_or_default();
            assert!(!err.is_empty(), "{method}: error without Err: {body}");
            assert!(
                !err.contains("worker failed"),
                "{method}: a handler panicked: {err}"
            );
            assert!(err.len() <= 4096, "{method}: {} byte error", err.len());
        }
    });
    // The run reached the handlers, not only the decoder.
    assert!(
        seen.get(&200) > Some(&10) && seen.get(&400) > Some(&10),
        "{seen:?}"
    );
}
