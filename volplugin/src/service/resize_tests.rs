//! `resize`: growth online and offline, the refusals, and crash safety (failures injected
//! between the storage's growth and the filesystem's, records left as a kill -9 leaves them).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::*;
use crate::backend::memory::MemoryBackend;
use crate::spec::Filesystem;

const G: u64 = 1 << 30;

fn service() -> (VolumeService, Arc<MemoryBackend>) {
    let backend = Arc::new(MemoryBackend::new());
    let svc = VolumeService::new(
        MetaStore::in_memory().unwrap(),
        backend.clone(),
        SpecPolicy {
            default_size: G,
            max_size: 100 * G,
            default_fs: Filesystem::Xfs,
        },
        PathBuf::from("/mnt/berth"),
    );
    (svc, backend)
}

fn create(svc: &VolumeService, name: &str, size: &str) {
    let opts = BTreeMap::from([("size".to_string(), size.to_string())]);
    svc.create(name, &opts).unwrap();
}

/// Every view of the volume at `bytes`: the record, Status, the storage and the filesystem.
fn assert_size(svc: &VolumeService, backend: &MemoryBackend, name: &str, bytes: u64) {
    let record = svc.store.get(name).unwrap().unwrap();
    assert_eq!(record.spec.size_bytes, bytes, "record: {record:?}");
    assert_eq!(record.resize, None, "no resize left pending: {record:?}");
    let info = svc.get(name).unwrap();
    assert_eq!(info.size_bytes, bytes);
    assert_eq!(info.resizing_to_bytes, None);
    assert_eq!(info.status()["size_bytes"], bytes);
    assert_eq!(backend.sizes(name), Some((bytes, bytes)), "storage, fs");
}

#[test]
fn grows_mounted_online_and_unmounted_offline() {
    let (svc, backend) = service();
    create(&svc, "db", "1G");
    svc.mount("db", "c1").unwrap();
    let info = svc.resize("db", "2G").unwrap();
    assert_eq!(info.size_bytes, 2 * G);
    assert_eq!(info.mounts, 1, "the container keeps its mount");
    assert_size(&svc, &backend, "db", 2 * G);
    assert_eq!(backend.grown_online("db"), Some(true));
    assert!(backend.is_mounted("db"));
    // Docker's List and the metrics read the same records.
    assert_eq!(svc.list().unwrap()[0].size_bytes, 2 * G);

    svc.unmount("db", "c1").unwrap();
    // Rounded up to whole MiB, like create.
    svc.resize("db", "3073M").unwrap();
    assert_eq!(backend.grown_online("db"), Some(false));
    assert!(
        !backend.is_mounted("db"),
        "an offline grow leaves it unmounted"
    );
    assert_size(&svc, &backend, "db", 3073 << 20);
    svc.resize("db", "3.5G").unwrap();
    assert_size(&svc, &backend, "db", 3584 << 20);
}

#[test]
fn the_same_size_again_is_a_no_op() {
    let (svc, backend) = service();
    create(&svc, "db", "1G");
    svc.resize("db", "2G").unwrap();
    backend.fail_next("grow_storage", 1);
    assert_eq!(svc.resize("db", "2G").unwrap().size_bytes, 2 * G);
    assert_eq!(svc.resize("db", "2048M").unwrap().size_bytes, 2 * G);
    assert_size(&svc, &backend, "db", 2 * G);
}

#[test]
fn refusals_name_the_field_and_change_nothing() {
    let (svc, backend) = service();
    create(&svc, "db", "2G");
    let err = svc.resize("db", "1G").unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, VolError::InvalidOption { ref option, .. } if option == "size"));
    assert!(
        text.contains("size") && text.contains("only grow") && text.contains("2G"),
        "{text}"
    );
    let text = svc.resize("db", "200G").unwrap_err().to_string();
    assert!(text.contains("size") && text.contains("maximum"), "{text}");
    let text = svc.resize("db", "2X").unwrap_err().to_string();
    assert!(
        text.contains("size") && text.contains("not a size"),
        "{text}"
    );
    assert!(matches!(
        svc.resize("nope", "4G"),
        Err(VolError::NotFound(_))
    ));
    assert!(matches!(
        svc.resize("../x", "4G"),
        Err(VolError::InvalidName { .. })
    ));
    // The backend's own refusal (a missing capability, a full pool) comes before the intent.
    backend.fail_next("check_grow", 1);
    let text = svc.resize("db", "4G").unwrap_err().to_string();
    assert!(
        text.contains("injected check_grow") && text.contains("nothing was changed"),
        "{text}"
    );
    assert_size(&svc, &backend, "db", 2 * G);
}

#[test]
fn a_failure_before_the_storage_grew_leaves_the_old_size() {
    let (svc, backend) = service();
    create(&svc, "db", "1G");
    svc.mount("db", "c1").unwrap();
    backend.fail_next("grow_storage", 1);
    let text = svc.resize("db", "2G").unwrap_err().to_string();
    assert!(text.contains("nothing was changed"), "{text}");
    assert_size(&svc, &backend, "db", G);
    svc.resize("db", "2G").unwrap();
    assert_size(&svc, &backend, "db", 2 * G);
}

#[test]
fn a_failure_after_the_storage_grew_is_finished_later() {
    let (svc, backend) = service();
    create(&svc, "db", "1G");
    svc.mount("db", "c1").unwrap();
    backend.fail_next("grow_fs", 1);
    let text = svc.resize("db", "2G").unwrap_err().to_string();
    assert!(text.contains("retried at the next start"), "{text}");
    assert_eq!(backend.sizes("db"), Some((2 * G, G)));
    let info = svc.get("db").unwrap();
    assert_eq!((info.size_bytes, info.resizing_to_bytes), (G, Some(2 * G)));
    // A smaller size than the pending one is refused; the same size finishes it.
    let text = svc.resize("db", "1536M").unwrap_err().to_string();
    assert!(
        text.contains("unfinished resize") && text.contains("2G"),
        "{text}"
    );
    svc.resize("db", "2G").unwrap();
    assert_size(&svc, &backend, "db", 2 * G);

    // The same failure, finished by the next start instead, online (still mounted).
    backend.fail_next("grow_fs", 1);
    assert!(svc.resize("db", "3G").is_err());
    let report = svc.reconcile().unwrap();
    assert_eq!(report.finished_resizes, vec!["db".to_string()]);
    assert!(report.errors.is_empty(), "{report:?}");
    assert_size(&svc, &backend, "db", 3 * G);
    assert_eq!(backend.grown_online("db"), Some(true));
    assert_eq!(svc.get("db").unwrap().mounts, 1);
}

#[test]
fn a_larger_resize_finishes_the_unfinished_one_first() {
    let (svc, backend) = service();
    create(&svc, "db", "1G");
    backend.fail_next("grow_fs", 1);
    assert!(svc.resize("db", "2G").is_err());
    assert_eq!(backend.sizes("db"), Some((2 * G, G)));
    // The unfinished 2G fails again: it stays pending, never "dropped" back to 1G while its
    // storage is at 2G.
    backend.fail_next("grow_storage", 1);
    let text = svc.resize("db", "3G").unwrap_err().to_string();
    assert!(text.contains("retried"), "{text}");
    let info = svc.get("db").unwrap();
    assert_eq!((info.size_bytes, info.resizing_to_bytes), (G, Some(2 * G)));
    // The unfinished one finishes, the new one is refused before anything of its own changed:
    // the volume is at the finished 2G in every view.
    backend.fail_next("check_grow", 1);
    let text = svc.resize("db", "3G").unwrap_err().to_string();
    assert!(text.contains("nothing was changed"), "{text}");
    assert_size(&svc, &backend, "db", 2 * G);
    svc.resize("db", "3G").unwrap();
    assert_size(&svc, &backend, "db", 3 * G);
}

/// The states a kill -9 can leave, at each point of a resize: the next start converges to
/// one of the two sizes in every view.
#[test]
fn reconcile_finishes_what_a_crash_left() {
    for crash_after in ["intent", "storage"] {
        let (svc, backend) = service();
        create(&svc, "db", "1G");
        create(&svc, "idle", "1G");
        svc.mount("db", "c1").unwrap();
        for name in ["db", "idle"] {
            let mut record = svc.store.get(name).unwrap().unwrap();
            record.resize = Some(ResizeIntent {
                from_bytes: G,
                to_bytes: 4 * G,
            });
            svc.store.put(&record).unwrap();
            if crash_after == "storage" {
                backend.grow_storage_only(name, 4 * G);
            }
        }
        // While the intent is pending every view still says the old size.
        assert_eq!(svc.get("idle").unwrap().size_bytes, G);
        let report = svc.reconcile().unwrap();
        assert_eq!(
            report.finished_resizes,
            vec!["db".to_string(), "idle".to_string()],
            "{crash_after}: {report:?}"
        );
        assert_size(&svc, &backend, "db", 4 * G);
        assert_size(&svc, &backend, "idle", 4 * G);
        assert_eq!(backend.grown_online("db"), Some(true));
        assert_eq!(backend.grown_online("idle"), Some(false));
        assert_eq!(svc.reconcile().unwrap(), ReconcileReport::default());
    }
}

#[test]
fn reconcile_drops_a_resize_it_cannot_start_and_keeps_one_it_cannot_finish() {
    let (svc, backend) = service();
    create(&svc, "a", "1G");
    create(&svc, "b", "1G");
    for name in ["a", "b"] {
        let mut record = svc.store.get(name).unwrap().unwrap();
        record.resize = Some(ResizeIntent {
            from_bytes: G,
            to_bytes: 2 * G,
        });
        svc.store.put(&record).unwrap();
    }
    backend.grow_storage_only("b", 2 * G);
    // a: refused before its storage changed (a pool gone full since): back at 1G.
    // b: its storage grew, the filesystem fails again: kept for the next start.
    backend.fail_next("grow_storage", 1);
    backend.fail_next("grow_fs", 1);
    let report = svc.reconcile().unwrap();
    assert_eq!(report.dropped_resizes, vec!["a".to_string()], "{report:?}");
    assert_eq!(report.errors.len(), 2, "{report:?}");
    assert_size(&svc, &backend, "a", G);
    assert_eq!(svc.get("b").unwrap().resizing_to_bytes, Some(2 * G));
    let report = svc.reconcile().unwrap();
    assert_eq!(report.finished_resizes, vec!["b".to_string()]);
    assert_size(&svc, &backend, "b", 2 * G);
}

#[test]
fn concurrent_resizes_and_mounts_of_one_volume() {
    let (svc, backend) = service();
    let svc = Arc::new(svc);
    create(&svc, "db", "1G");
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let svc = svc.clone();
            std::thread::spawn(move || {
                for i in 0..10u64 {
                    let id = format!("t{t}-{i}");
                    svc.mount("db", &id).unwrap();
                    // Sizes race: a smaller one than already reached is refused, never applied.
                    let _ = svc.resize("db", &format!("{}M", 1024 + 64 * (t * 10 + i)));
                    svc.unmount("db", &id).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let size = svc.get("db").unwrap().size_bytes;
    assert!(size >= 1024 << 20, "{size}");
    assert_size(&svc, &backend, "db", size);
}
