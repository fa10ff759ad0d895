//! `-o from=` on the simulator: options, idempotency, rollback and crash recovery.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::*;
use crate::backend::memory::MemoryBackend;
use crate::spec::Filesystem;

fn service() -> (Arc<VolumeService>, Arc<MemoryBackend>) {
    let backend = Arc::new(MemoryBackend::new());
    let svc = VolumeService::new(
        MetaStore::in_memory().unwrap(),
        backend.clone(),
        SpecPolicy {
            default_size: 1 << 30,
            max_size: 1 << 40,
            default_fs: Filesystem::Xfs,
        },
        PathBuf::from("/mnt/berth"),
    );
    (Arc::new(svc), backend)
}

fn opts(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn clone_takes_the_source_spec_and_records_it() {
    let (svc, backend) = service();
    svc.create("src", &opts(&[("size", "2G"), ("fs", "ext4")]))
        .unwrap();
    svc.create("copy", &opts(&[("from", "src")])).unwrap();
    // Docker repeats a Create: same request, success.
    svc.create("copy", &opts(&[("from", "src")])).unwrap();
    let info = svc.get("copy").unwrap();
    assert_eq!((info.size_bytes, info.fs.as_str()), (2 << 30, "ext4"));
    assert_eq!(info.from.as_deref(), Some("src"));
    assert_eq!(info.backend_status["pool"], "sim/pool");
    assert!(backend.stored().unwrap().contains(&"copy".to_string()));
    let status = info.status();
    assert_eq!(status["from"], "src");
    // The source can go; the clone stays.
    svc.remove("src").unwrap();
    assert!(svc.get("copy").is_ok());
    // Reading Status back (the admin CLI) keeps the backend's keys and nothing else twice.
    let back: VolumeInfo = serde_json::from_value(serde_json::to_value(&info).unwrap()).unwrap();
    assert_eq!(back, info);
}

#[test]
fn clone_errors_name_the_option() {
    let (svc, backend) = service();
    svc.create("src", &opts(&[("size", "2G")])).unwrap();
    for (o, needle) in [
        (opts(&[("from", "nope")]), "no such volume: nope"),
        (opts(&[("from", "../x")]), "from"),
        (opts(&[("from", "c")]), "itself"),
        (opts(&[("from", "src"), ("size", "3G")]), "size"),
        (opts(&[("from", "src"), ("fs", "ext4")]), "fs"),
        (opts(&[("from", "src"), ("colour", "red")]), "colour"),
    ] {
        let err = svc.create("c", &o).unwrap_err().to_string();
        assert!(err.contains(needle), "{o:?}: {err}");
    }
    // The same size, spelled out, is fine.
    svc.create("c", &opts(&[("from", "src"), ("size", "2G")]))
        .unwrap();
    let err = svc
        .create("c", &opts(&[("from", "other")]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no such volume") || err.contains("exists"),
        "{err}"
    );
    backend.fail_next("clone", 1);
    let err = svc.create("d", &opts(&[("from", "src")])).unwrap_err();
    assert!(err.to_string().contains("injected clone failure"), "{err}");
    assert!(svc.get("d").is_err());
    assert!(!backend.stored().unwrap().contains(&"d".to_string()));
}

#[test]
fn crash_mid_clone_is_rolled_back_at_start() {
    let (svc, backend) = service();
    svc.create("src", &opts(&[])).unwrap();
    // What a crash after lvcreate -s and before the Ready record leaves behind.
    let record = VolumeRecord {
        name: "half".into(),
        spec: crate::spec::VolumeSpec {
            size_bytes: 1 << 30,
            fs: Filesystem::Xfs,
        },
        phase: Phase::Creating,
        created_at: now_rfc3339(),
        mounts: BTreeMap::new(),
        limits: Default::default(),
        from: Some("src".into()),
        resize: None,
    };
    svc.store.put(&record).unwrap();
    backend.clone_volume("half", "src", &record.spec).unwrap();
    let report = svc.reconcile().unwrap();
    assert_eq!(report.rolled_back_creates, vec!["half".to_string()]);
    assert!(!backend.stored().unwrap().contains(&"half".to_string()));
    assert!(svc.get("src").is_ok());
}

#[test]
fn concurrent_clones_do_not_deadlock() {
    let (svc, _) = service();
    svc.create("a", &opts(&[])).unwrap();
    svc.create("b", &opts(&[])).unwrap();
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let svc = svc.clone();
            std::thread::spawn(move || {
                let (name, from) = if i % 2 == 0 { ("b2", "a") } else { ("a2", "b") };
                let _ = svc.create(name, &opts(&[("from", from)]));
                let _ = svc.create(&format!("x{i}"), &opts(&[("from", name)]));
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(svc.get("a2").is_ok() && svc.get("b2").is_ok());
}
