//! The volume state machine. Handlers call these methods; they see only the `Backend` trait
//! and the metadata store. Every multi-step operation records its intent first, so a crash at
//! any point is rolled back or finished by `reconcile` at the next start.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use plugin_transport::sync::lock as lock_unpoisoned;
use plugin_transport::sync::{KeyGuard, KeyedLocks};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::backend::{Backend, BackendError};
use crate::error::{describe_spec, VolError};
use crate::limits::IoLimits;
use crate::spec::{human_size, parse_size, round_up_to_mib, validate_name, SpecPolicy, VolumeSpec};
use crate::store::{MetaStore, Phase, ResizeIntent, VolumeRecord};

/// How long a call waits for a volume another call holds: just under the plugin call timeout
/// of the fast calls (`handlers.rs`, 50 s), so a call that could not start in time answers
/// "busy" instead of starting after Docker gave up, and a call behind a slow clone or mount
/// (tens of seconds on a loaded LVM host) still gets its turn.
pub const VOLUME_LOCK_WAIT: Duration = Duration::from_secs(45);

/// What `docker volume inspect` shows under Status, and what the admin CLI prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInfo {
    pub name: String,
    pub mountpoint: String,
    pub created_at: String,
    pub backend: String,
    pub fs: String,
    pub size_bytes: u64,
    pub allocated_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub used_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub free_bytes: Option<u64>,
    /// `MAJ:MIN` while attached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    pub mounts: u32,
    pub state: String,
    /// Configured IO limits (absent = unlimited).
    #[serde(flatten)]
    pub limits: IoLimits,
    /// IO the containers using the volume do now, from their cgroups' statistics.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed: Option<ObservedIo>,
    /// The volume this one was cloned from (`-o from=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The size an unfinished resize grows the volume to (`size_bytes` is the size until then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resizing_to_bytes: Option<u64>,
    /// What the backend adds (lvm-thin: lv, pool, pool_data_percent, pool_metadata_percent,
    /// pool_mode), flat in Status like the rest.
    #[serde(flatten, default, deserialize_with = "crate::backend::status_keys")]
    pub backend_status: BTreeMap<String, serde_json::Value>,
}

/// Rates measured over the last sampling interval, summed over the containers using a volume.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedIo {
    pub read_bytes_per_second: u64,
    pub write_bytes_per_second: u64,
    pub read_iops: u64,
    pub write_iops: u64,
    pub containers: u32,
}

/// A change of limits: `None` leaves a limit as it is, `Some(None)` removes it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitsChange {
    pub read_bps: Option<Option<u64>>,
    pub write_bps: Option<Option<u64>>,
    pub read_iops: Option<Option<u64>>,
    pub write_iops: Option<Option<u64>>,
}

impl LimitsChange {
    pub fn apply_to(&self, limits: &mut IoLimits) {
        for (change, slot) in [
            (self.read_bps, &mut limits.read_bps),
            (self.write_bps, &mut limits.write_bps),
            (self.read_iops, &mut limits.read_iops),
            (self.write_iops, &mut limits.write_iops),
        ] {
            if let Some(value) = change {
                *slot = value;
            }
        }
    }
}

impl VolumeInfo {
    /// The Status map of Docker's Get: everything but what Docker shows at the top level.
    pub fn status(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut map = match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => serde_json::Map::new(),
        };
        for key in ["name", "mountpoint", "created_at"] {
            map.remove(key);
        }
        map
    }
}

/// What reconcile found and did at startup.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    pub cleared_scratch: Vec<String>,
    pub rolled_back_creates: Vec<String>,
    pub finished_removes: Vec<String>,
    pub cleared_mounts: Vec<String>,
    pub unmounted: Vec<String>,
    pub released_devices: Vec<String>,
    pub unknown_storage: Vec<String>,
    /// Resizes a crash interrupted, finished at their new size.
    pub finished_resizes: Vec<String>,
    /// Resizes that could not be finished and whose storage had not changed: back at their
    /// old size (the error is in `errors`).
    pub dropped_resizes: Vec<String>,
    pub errors: Vec<String>,
}

pub struct VolumeService {
    store: MetaStore,
    backend: Arc<dyn Backend>,
    policy: SpecPolicy,
    mount_root: PathBuf,
    /// One lock per volume (`volume <name>`): operations on one volume run one at a time,
    /// different volumes in parallel; a call waits at most `lock_wait` for its volume.
    locks: KeyedLocks,
    lock_wait: Duration,
    observed: Mutex<HashMap<String, ObservedIo>>,
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_string())
}

impl VolumeService {
    pub fn new(
        store: MetaStore,
        backend: Arc<dyn Backend>,
        policy: SpecPolicy,
        mount_root: PathBuf,
    ) -> Self {
        Self {
            store,
            backend,
            policy,
            mount_root,
            locks: KeyedLocks::new(),
            lock_wait: VOLUME_LOCK_WAIT,
            observed: Mutex::new(HashMap::new()),
        }
    }

    pub fn backend_kind(&self) -> &'static str {
        self.backend.kind()
    }

    pub fn mountpoint(&self, name: &str) -> PathBuf {
        self.mount_root.join(name)
    }

    /// Another bound than [`VOLUME_LOCK_WAIT`] on waiting for a busy volume (tests).
    pub fn with_lock_wait(mut self, wait: Duration) -> Self {
        self.lock_wait = wait;
        self
    }

    /// Takes the volume for `operation`, or answers "busy" after [`VOLUME_LOCK_WAIT`]: a
    /// Mount stuck in an XFS log replay stalls its own volume only, and a call behind it gets
    /// an answer naming it before Docker's own timeout rather than running late.
    fn lock(&self, name: &str, operation: &'static str) -> Result<KeyGuard<'_>, VolError> {
        Ok(self
            .locks
            .lock_blocking(&format!("volume {name}"), operation, self.lock_wait)?)
    }

    fn backend_err<'a>(
        operation: &'static str,
        name: &'a str,
    ) -> impl FnOnce(BackendError) -> VolError + 'a {
        move |e| VolError::backend(operation, name, e)
    }

    pub fn create(&self, name: &str, opts: &BTreeMap<String, String>) -> Result<(), VolError> {
        validate_name(name)?;
        if let Some(source) = opts.get("from") {
            return self.create_clone(name, source, opts);
        }
        let spec = self.policy.parse(opts)?;
        let limits = IoLimits::from_options(opts)?;
        let _guard = self.lock(name, "create")?;
        if let Some(existing) = self.store.get(name)? {
            // Docker may repeat a Create; the same request again is success. New explicit
            // options that disagree are an error rather than a silent no-op.
            if opts.is_empty() || existing.spec == spec {
                return Ok(());
            }
            return Err(VolError::Conflict {
                name: name.into(),
                existing: describe_spec(&existing.spec),
            });
        }
        let mut record = VolumeRecord {
            name: name.to_string(),
            spec: spec.clone(),
            phase: Phase::Creating,
            created_at: now_rfc3339(),
            mounts: BTreeMap::new(),
            limits,
            from: None,
            resize: None,
        };
        self.store.put(&record)?;
        if let Err(e) = self.backend.provision(name, &spec) {
            // The backend removes what it made on failure; drop the intent record too.
            self.store.delete(name)?;
            return Err(VolError::backend("create", name, e));
        }
        record.phase = Phase::Ready;
        if let Err(e) = self.store.put(&record) {
            let _ = self.backend.deprovision(name);
            let _ = self.store.delete(name);
            return Err(e);
        }
        info!(volume = name, spec = %describe_spec(&spec), limits = %limits.describe(), "created");
        Ok(())
    }

    /// `-o from=SOURCE`: the new volume is a writable copy of SOURCE (a thin snapshot on
    /// lvm-thin, a reflink on loopfile), with SOURCE's size and filesystem. Crash-safe like
    /// create: the Creating record (with its source) comes first and is rolled back at start.
    fn create_clone(
        &self,
        name: &str,
        source: &str,
        opts: &BTreeMap<String, String>,
    ) -> Result<(), VolError> {
        let bad = |why: String| VolError::InvalidOption {
            option: "from".into(),
            why,
        };
        validate_name(source).map_err(|e| bad(e.to_string()))?;
        if source == name {
            return Err(bad("a volume cannot be cloned from itself".into()));
        }
        // Unknown options and bad values are refused as for any create.
        let asked = self.policy.parse(opts)?;
        let limits = IoLimits::from_options(opts)?;
        // Both volumes are locked, in name order so that two clones cannot deadlock.
        let (first, second) = if name < source {
            (name, source)
        } else {
            (source, name)
        };
        let _guard_a = self.lock(first, "clone")?;
        let _guard_b = self.lock(second, "clone")?;
        let origin = match self.store.get(source)? {
            Some(r) if r.phase == Phase::Ready => r,
            _ => return Err(bad(format!("no such volume: {source}"))),
        };
        let spec = origin.spec.clone();
        if opts.contains_key("size") && asked.size_bytes != spec.size_bytes {
            return Err(VolError::InvalidOption {
                option: "size".into(),
                why: format!(
                    "a clone has the size of its source {source} ({}); leave size out",
                    crate::spec::human_size(spec.size_bytes)
                ),
            });
        }
        if opts.contains_key("fs") && asked.fs != spec.fs {
            return Err(VolError::InvalidOption {
                option: "fs".into(),
                why: format!(
                    "a clone has the filesystem of its source {source} ({}); leave fs out",
                    spec.fs.as_str()
                ),
            });
        }
        if let Some(existing) = self.store.get(name)? {
            if existing.from.as_deref() == Some(source) && existing.spec == spec {
                return Ok(());
            }
            return Err(VolError::Conflict {
                name: name.into(),
                existing: describe_spec(&existing.spec),
            });
        }
        let mut record = VolumeRecord {
            name: name.to_string(),
            spec: spec.clone(),
            phase: Phase::Creating,
            created_at: now_rfc3339(),
            mounts: BTreeMap::new(),
            limits,
            from: Some(source.to_string()),
            resize: None,
        };
        self.store.put(&record)?;
        if let Err(e) = self.backend.clone_volume(name, source, &spec) {
            self.store.delete(name)?;
            return Err(VolError::backend("clone", name, e));
        }
        record.phase = Phase::Ready;
        if let Err(e) = self.store.put(&record) {
            let _ = self.backend.deprovision(name);
            let _ = self.store.delete(name);
            return Err(e);
        }
        info!(volume = name, from = source, spec = %describe_spec(&spec), "cloned");
        Ok(())
    }

    /// Fill of the backend's pools (for metrics).
    pub fn pools(&self) -> Vec<crate::backend::PoolFigures> {
        self.backend.pools()
    }

    pub fn remove(&self, name: &str) -> Result<(), VolError> {
        validate_name(name)?;
        let guard = self.lock(name, "remove")?;
        let Some(mut record) = self.store.get(name)? else {
            return Ok(());
        };
        if record.phase == Phase::Ready && record.mount_count() > 0 {
            return Err(VolError::InUse {
                name: name.into(),
                mounts: record.mount_count(),
                ids: record
                    .mounts
                    .keys()
                    .map(|id| id.chars().take(12).collect::<String>())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        record.phase = Phase::Removing;
        self.store.put(&record)?;
        self.finish_remove(name)?;
        drop(guard);
        info!(volume = name, "removed");
        Ok(())
    }

    /// The steps after the Removing record; each is idempotent, so startup can repeat them.
    fn finish_remove(&self, name: &str) -> Result<(), VolError> {
        let target = self.mountpoint(name);
        self.backend
            .unmount(name, &target)
            .map_err(Self::backend_err("remove", name))?;
        self.backend
            .deprovision(name)
            .map_err(Self::backend_err("remove", name))?;
        match std::fs::remove_dir(&target) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => warn!(volume = name, error = %e, "mountpoint directory not removed"),
        }
        self.store.delete(name)
    }

    pub fn mount(&self, name: &str, id: &str) -> Result<PathBuf, VolError> {
        validate_name(name)?;
        if id.is_empty() {
            return Err(VolError::EmptyMountId);
        }
        let _guard = self.lock(name, "mount")?;
        let mut record = self.ready_record(name)?;
        let target = self.mountpoint(name);
        // The kernel mount first, then the count: a crash in between leaves a mount with no
        // count, which reconcile unmounts (Docker saw this Mount fail).
        let attached = self
            .backend
            .attachment(name, &target)
            .map_err(Self::backend_err("mount", name))?;
        let newly_mounted = attached.is_none();
        if newly_mounted {
            std::fs::create_dir_all(&target).map_err(|e| {
                VolError::backend("mount", name, format!("create {}: {e}", target.display()))
            })?;
            let attachment = self
                .backend
                .mount(name, &record.spec, &target)
                .map_err(Self::backend_err("mount", name))?;
            info!(volume = name, device = %attachment.device, source = %attachment.source, "mounted");
        }
        *record.mounts.entry(id.to_string()).or_insert(0) += 1;
        if let Err(e) = self.store.put(&record) {
            if newly_mounted {
                let _ = self.backend.unmount(name, &target);
            }
            return Err(e);
        }
        Ok(target)
    }

    /// Drops every mount count of `name` and unmounts it: for counts Docker will never release
    /// (a Mount it saw fail that still landed, a dockerd that lost its state). The caller
    /// checks first that no running container uses the volume. Returns the dropped mount ids.
    pub fn clear_mounts(&self, name: &str) -> Result<Vec<String>, VolError> {
        validate_name(name)?;
        let _guard = self.lock(name, "clear mounts")?;
        let mut record = self.ready_record(name)?;
        let dropped: Vec<String> = record.mounts.keys().cloned().collect();
        record.mounts.clear();
        // The counts first, then the kernel, as in unmount.
        self.store.put(&record)?;
        let target = self.mountpoint(name);
        self.backend
            .unmount(name, &target)
            .map_err(Self::backend_err("clear mounts", name))?;
        info!(volume = name, dropped = ?dropped, "mount counts cleared by the admin");
        Ok(dropped)
    }

    pub fn unmount(&self, name: &str, id: &str) -> Result<(), VolError> {
        validate_name(name)?;
        let _guard = self.lock(name, "unmount")?;
        let Some(mut record) = self.store.get(name)? else {
            return Ok(());
        };
        match record.mounts.get_mut(id) {
            // After a dockerd restart Unmount can carry an ID we never saw: success.
            None => return Ok(()),
            Some(count) if *count > 1 => *count -= 1,
            Some(_) => {
                record.mounts.remove(id);
            }
        }
        // The count first, then the kernel: a crash in between leaves a mount with no count,
        // which reconcile unmounts.
        self.store.put(&record)?;
        if record.mount_count() == 0 {
            let target = self.mountpoint(name);
            self.backend
                .unmount(name, &target)
                .map_err(Self::backend_err("unmount", name))?;
            info!(volume = name, "unmounted");
        }
        Ok(())
    }

    /// Changes a volume's IO limits; the caller pushes them to the running containers.
    pub fn set_limits(&self, name: &str, change: &LimitsChange) -> Result<VolumeInfo, VolError> {
        validate_name(name)?;
        let _guard = self.lock(name, "set limits")?;
        let mut record = self.ready_record(name)?;
        change.apply_to(&mut record.limits);
        self.store.put(&record)?;
        info!(volume = name, limits = %record.limits.describe(), "limits changed");
        Ok(self.info(&record))
    }

    /// Grows a volume to `size` (`20G`, rounded up to whole MiB), mounted or not: the storage
    /// first, then the filesystem (online while mounted, else offline at once). Shrinking is
    /// refused. Crash-safe: the intent is recorded before the storage changes, and a crash
    /// after that is finished by `reconcile` at the next start.
    pub fn resize(&self, name: &str, size: &str) -> Result<VolumeInfo, VolError> {
        validate_name(name)?;
        let bad = |why: String| VolError::InvalidOption {
            option: "size".into(),
            why,
        };
        let requested = parse_size(size).map_err(bad)?;
        let new_size =
            round_up_to_mib(requested).ok_or_else(|| bad(format!("{size:?} is too large")))?;
        let _guard = self.lock(name, "resize")?;
        let mut record = self.ready_record(name)?;
        let current = record.spec.size_bytes;
        if let Some(pending) = record.resize {
            if new_size < pending.to_bytes {
                return Err(bad(format!(
                    "an unfinished resize of {name} grows it to {}; ask for at least that size",
                    human_size(pending.to_bytes)
                )));
            }
        }
        if new_size < current {
            return Err(bad(format!(
                "{} is smaller than the volume's size {}: volumes can only grow (shrinking \
                 would cut off data the filesystem holds); nothing was changed",
                human_size(new_size),
                human_size(current)
            )));
        }
        if new_size > self.policy.max_size {
            return Err(bad(format!(
                "{} is over this host's maximum of {}",
                human_size(new_size),
                human_size(self.policy.max_size)
            )));
        }
        if new_size == current && record.resize.is_none() {
            return Ok(self.info(&record));
        }
        let target = self.mountpoint(name);
        let mounted_at = self
            .backend
            .attachment(name, &target)
            .map_err(Self::backend_err("resize", name))?
            .map(|_| target);
        // An unfinished resize to a smaller size is finished first: its storage may have grown
        // already, and an intent must start from a size the storage is at (else a failure of
        // the new one, its storage short of the new size, would be taken for "nothing grown").
        if record.resize.is_some_and(|p| p.to_bytes < new_size) {
            self.finish_resize(&mut record, mounted_at.as_deref())?;
        }
        let current = record.spec.size_bytes;
        self.backend
            .check_grow(name, &record.spec, new_size, mounted_at.is_some())
            .map_err(|e| VolError::backend("resize", name, format!("{e}; nothing was changed")))?;
        // The intent first: a crash from here on is finished at the next start.
        record.resize = Some(ResizeIntent {
            from_bytes: current,
            to_bytes: new_size,
        });
        self.store.put(&record)?;
        self.finish_resize(&mut record, mounted_at.as_deref())?;
        info!(volume = name, from = %human_size(current), to = %human_size(new_size),
            online = mounted_at.is_some(), "resized");
        Ok(self.info(&record))
    }

    /// Grows the storage and filesystem to the recorded intent, then records the new size. On
    /// failure the intent is dropped where the storage did not reach the new size (it grows
    /// in one step, and the filesystem only after it: nothing changed), else kept for the
    /// next start or the next resize to finish.
    fn finish_resize(
        &self,
        record: &mut VolumeRecord,
        mounted_at: Option<&Path>,
    ) -> Result<(), VolError> {
        let Some(intent) = record.resize else {
            return Ok(());
        };
        let name = record.name.clone();
        let spec = VolumeSpec {
            size_bytes: intent.to_bytes,
            fs: record.spec.fs,
        };
        match self.backend.grow(&name, &spec, mounted_at) {
            Ok(()) => {
                record.spec.size_bytes = intent.to_bytes;
                record.resize = None;
                self.store.put(record)
            }
            Err(e) => {
                // Unknown counts as grown: the intent is kept rather than a growth forgotten.
                let grown = !matches!(
                    self.backend.storage_size(&name),
                    Ok(size) if size < intent.to_bytes
                );
                if grown {
                    return Err(VolError::backend(
                        "resize",
                        &name,
                        format!(
                            "{e}; the storage is at the new size: the filesystem's growth is \
                             retried at the next start, or now by running the resize again"
                        ),
                    ));
                }
                record.resize = None;
                self.store.put(record)?;
                Err(VolError::backend(
                    "resize",
                    &name,
                    format!(
                        "{e}; nothing was changed (the volume is still {})",
                        human_size(record.spec.size_bytes)
                    ),
                ))
            }
        }
    }

    /// What the IO throttler measured, per volume; replaces the previous figures.
    pub fn record_observed(&self, observed: HashMap<String, ObservedIo>) {
        *lock_unpoisoned(&self.observed) = observed;
    }

    fn ready_record(&self, name: &str) -> Result<VolumeRecord, VolError> {
        match self.store.get(name)? {
            Some(record) if record.phase == Phase::Ready => Ok(record),
            _ => Err(VolError::NotFound(name.into())),
        }
    }

    /// The mountpoint while mounted, else None.
    pub fn path(&self, name: &str) -> Result<Option<PathBuf>, VolError> {
        validate_name(name)?;
        let record = self.ready_record(name)?;
        let target = self.mountpoint(name);
        Ok((record.mount_count() > 0).then_some(target))
    }

    /// Answers from the metadata; live figures are added when the backend can give them, and
    /// left out (never an error) when it cannot: Docker treats a failed Get as "volume gone".
    pub fn get(&self, name: &str) -> Result<VolumeInfo, VolError> {
        validate_name(name)?;
        match self.store.get(name)? {
            Some(record) if record.phase != Phase::Creating => Ok(self.info(&record)),
            _ => Err(VolError::NotFound(name.into())),
        }
    }

    pub fn list(&self) -> Result<Vec<VolumeInfo>, VolError> {
        Ok(self
            .store
            .list()?
            .iter()
            .filter(|r| r.phase != Phase::Creating)
            .map(|r| self.info(r))
            .collect())
    }

    /// Names and mountpoints only, for Docker's List (which runs on every `docker volume ls`).
    pub fn names(&self) -> Result<Vec<String>, VolError> {
        Ok(self
            .store
            .list()?
            .into_iter()
            .filter(|r| r.phase != Phase::Creating)
            .map(|r| r.name)
            .collect())
    }

    fn info(&self, record: &VolumeRecord) -> VolumeInfo {
        let target = self.mountpoint(&record.name);
        let attachment = self
            .backend
            .attachment(&record.name, &target)
            .ok()
            .flatten();
        let usage = self
            .backend
            .usage(&record.name, attachment.as_ref().map(|_| target.as_path()))
            .ok();
        VolumeInfo {
            name: record.name.clone(),
            mountpoint: target.display().to_string(),
            created_at: record.created_at.clone(),
            backend: self.backend.kind().to_string(),
            fs: record.spec.fs.as_str().to_string(),
            size_bytes: record.spec.size_bytes,
            allocated_bytes: usage.as_ref().map(|u| u.allocated_bytes),
            used_bytes: usage.as_ref().and_then(|u| u.used_bytes),
            free_bytes: usage.as_ref().and_then(|u| u.free_bytes),
            device: attachment.map(|a| a.device),
            mounts: record.mount_count(),
            limits: record.limits,
            observed: lock_unpoisoned(&self.observed).get(&record.name).copied(),
            from: record.from.clone(),
            resizing_to_bytes: record.resize.map(|r| r.to_bytes),
            backend_status: self.backend.status_extra(&record.name),
            state: match record.phase {
                Phase::Creating => "creating",
                Phase::Ready => "ready",
                Phase::Removing => "removing",
            }
            .to_string(),
        }
    }

    /// Finishes a resize a crash interrupted, online if the volume is (still) mounted.
    fn reconcile_resize(
        &self,
        name: &str,
        target: &Path,
        report: &mut ReconcileReport,
    ) -> Result<(), VolError> {
        let Some(mut record) = self.store.get(name)? else {
            return Ok(());
        };
        let mounted_at = self
            .backend
            .attachment(name, target)
            .map_err(Self::backend_err("finish resize", name))?
            .map(|_| target);
        match self.finish_resize(&mut record, mounted_at) {
            Ok(()) => {
                report.finished_resizes.push(name.to_string());
                Ok(())
            }
            Err(e) => {
                if record.resize.is_none() {
                    report.dropped_resizes.push(name.to_string());
                }
                Err(e)
            }
        }
    }

    /// Brings records and the kernel back in line after a crash or reboot. Runs before the
    /// plugin socket opens; every problem is collected and the rest still reconciled.
    pub fn reconcile(&self) -> Result<ReconcileReport, VolError> {
        let mut report = ReconcileReport::default();
        match self.backend.clear_scratch_mounts() {
            Ok(cleared) => report.cleared_scratch = cleared,
            Err(e) => report.errors.push(format!("clearing scratch mounts: {e}")),
        }
        let records = self.store.list()?;
        for record in &records {
            let name = record.name.as_str();
            let target = self.mountpoint(name);
            let outcome: Result<(), VolError> = (|| {
                match record.phase {
                    Phase::Creating => {
                        // Docker never saw this Create succeed: undo it.
                        self.backend
                            .unmount(name, &target)
                            .map_err(Self::backend_err("roll back create", name))?;
                        self.backend
                            .deprovision(name)
                            .map_err(Self::backend_err("roll back create", name))?;
                        self.store.delete(name)?;
                        report.rolled_back_creates.push(name.to_string());
                    }
                    Phase::Removing => {
                        self.finish_remove(name)?;
                        report.finished_removes.push(name.to_string());
                    }
                    Phase::Ready => {
                        let mounted = self
                            .backend
                            .attachment(name, &target)
                            .map_err(Self::backend_err("reconcile", name))?
                            .is_some();
                        let counted = record.mount_count() > 0;
                        if counted && !mounted {
                            // Rebooted, or a Mount that failed midway: Docker mounts again
                            // when it starts the containers.
                            let mut cleared = record.clone();
                            cleared.mounts.clear();
                            self.store.put(&cleared)?;
                            report.cleared_mounts.push(name.to_string());
                        } else if mounted && !counted {
                            self.backend
                                .unmount(name, &target)
                                .map_err(Self::backend_err("reconcile", name))?;
                            report.unmounted.push(name.to_string());
                        }
                        if record.resize.is_some() {
                            self.reconcile_resize(name, &target, &mut report)?;
                        }
                    }
                }
                Ok(())
            })();
            if let Err(e) = outcome {
                report.errors.push(e.to_string());
            }
        }
        match self.backend.release_stray_devices() {
            Ok(released) => report.released_devices = released,
            Err(e) => report.errors.push(format!("releasing stray devices: {e}")),
        }
        let known: Vec<&str> = records.iter().map(|r| r.name.as_str()).collect();
        match self.backend.stored() {
            // Never deleted: storage without a record is not provably ours.
            Ok(stored) => {
                report.unknown_storage = stored
                    .into_iter()
                    .filter(|s| !known.contains(&s.as_str()))
                    .collect()
            }
            Err(e) => report.errors.push(format!("listing storage: {e}")),
        }
        Ok(report)
    }
}

/// `Path`-typed helper for handlers that return Docker's Mountpoint string.
pub fn display(path: Option<&Path>) -> String {
    path.map(|p| p.display().to_string()).unwrap_or_default()
}

#[cfg(test)]
mod clone_tests;
#[cfg(test)]
mod resize_tests;
#[cfg(test)]
mod tests;
