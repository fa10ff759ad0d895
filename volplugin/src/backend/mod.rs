//! Where volumes live. The service sees only the `Backend` trait; `loopfile` is the real
//! single-host implementation, `lvm` the fleet one (thin LVs in an LVM thin pool), `memory`
//! the simulator the unit tests run on. `fsops` holds what the real ones share (mkfs, mount,
//! commands with a time limit).

use std::collections::BTreeMap;
use std::path::Path;

use crate::spec::VolumeSpec;

pub mod dmstatus;
pub mod fsops;
pub mod loopdev;
pub mod loopfile;
pub mod lvm;
#[cfg(test)]
pub mod memory;
pub mod mountinfo;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("{command} failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("{0}")]
    Refused(String),
}

impl BackendError {
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> BackendError {
        let context = context.into();
        move |source| BackendError::Io { context, source }
    }
}

/// A volume's device while it is mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The block device, e.g. `/dev/loop3`.
    pub source: String,
    /// `MAJ:MIN`, what cgroup IO limits are keyed by.
    pub device: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// What the volume really takes on the backing store.
    pub allocated_bytes: u64,
    /// Filesystem figures (statvfs); only while mounted.
    pub used_bytes: Option<u64>,
    pub free_bytes: Option<u64>,
}

/// Storage for volumes. Every method is idempotent where the trait says so, because the
/// service retries and resumes operations after crashes.
pub trait Backend: Send + Sync {
    /// `loopfile`, `lvm-thin`, `memory`: shown in Status.
    fn kind(&self) -> &'static str;

    /// Makes the storage and its filesystem. Storage that already exists for `name` is
    /// refused, never overwritten: it is not ours to destroy.
    fn provision(&self, name: &str, spec: &VolumeSpec) -> Result<(), BackendError>;

    /// Destroys the storage (releasing any device first); absent storage is success.
    fn deprovision(&self, name: &str) -> Result<(), BackendError>;

    /// Names that have storage, whether or not a record exists.
    fn stored(&self) -> Result<Vec<String>, BackendError>;

    /// Mounts the volume's filesystem at `target` (which exists); already mounted there is
    /// success and returns the current attachment.
    fn mount(
        &self,
        name: &str,
        spec: &VolumeSpec,
        target: &Path,
    ) -> Result<Attachment, BackendError>;

    /// Unmounts `target` and releases the device; not mounted is success.
    fn unmount(&self, name: &str, target: &Path) -> Result<(), BackendError>;

    /// What is mounted at `target` now, from the kernel's view.
    fn attachment(&self, name: &str, target: &Path) -> Result<Option<Attachment>, BackendError>;

    fn usage(&self, name: &str, mounted_at: Option<&Path>) -> Result<Usage, BackendError>;

    /// Unmounts scratch mounts a crash left (a clone's XFS log replay); returns the mount
    /// points. Runs at start before anything is rolled back, since such a mount holds a device.
    fn clear_scratch_mounts(&self) -> Result<Vec<String>, BackendError> {
        Ok(Vec::new())
    }

    /// Releases devices of ours that no mount uses (left by a crash); returns what it released.
    fn release_stray_devices(&self) -> Result<Vec<String>, BackendError>;

    /// Makes `name` a writable copy of `source` (same `spec`), in O(1) where the storage
    /// allows. Like `provision`: existing storage for `name` is refused, and on failure
    /// nothing is left behind.
    fn clone_volume(
        &self,
        name: &str,
        source: &str,
        spec: &VolumeSpec,
    ) -> Result<(), BackendError> {
        let _ = (name, spec);
        Err(BackendError::Refused(format!(
            "the {} backend cannot clone volumes (-o from={source})",
            self.kind()
        )))
    }

    /// Refuses, before anything changes, a grow of `name` from `spec` to `new_size` that the
    /// backend can tell would fail: a mounted filesystem this process may not grow (a missing
    /// capability), a pool the growth would take past its rules.
    fn check_grow(
        &self,
        name: &str,
        spec: &VolumeSpec,
        new_size: u64,
        mounted: bool,
    ) -> Result<(), BackendError> {
        let _ = (name, spec, new_size, mounted);
        Err(BackendError::Refused(format!(
            "the {} backend cannot resize volumes",
            self.kind()
        )))
    }

    /// Grows the storage of `name` to `spec.size_bytes` and its filesystem to fill it: online
    /// at `mounted_at` while the volume is mounted there, else offline. Idempotent, so a grow
    /// cut short by a crash is finished by calling it again: what is already that large is
    /// left as it is. Never shrinks. The storage grows in one step (it is never part-grown),
    /// and the filesystem only after it.
    fn grow(
        &self,
        name: &str,
        spec: &VolumeSpec,
        mounted_at: Option<&Path>,
    ) -> Result<(), BackendError> {
        let _ = (name, spec, mounted_at);
        Err(BackendError::Refused(format!(
            "the {} backend cannot resize volumes",
            self.kind()
        )))
    }

    /// The size of the volume's storage now (the image file's length, the LV's size).
    fn storage_size(&self, name: &str) -> Result<u64, BackendError> {
        let _ = name;
        Err(BackendError::Refused(format!(
            "the {} backend cannot tell a volume's storage size",
            self.kind()
        )))
    }

    /// Backend-specific figures added to the volume's Status (LV, pool fill and mode, ...).
    /// Never fails: what cannot be read is left out.
    fn status_extra(&self, name: &str) -> BTreeMap<String, serde_json::Value> {
        let _ = name;
        BTreeMap::new()
    }

    /// Fill of the pools volumes are carved from (none for loop files).
    fn pools(&self) -> Vec<PoolFigures> {
        Vec::new()
    }
}

/// The keys `status_extra` may return. Status is flat (one JSON object), so reading it back
/// (the admin CLI) keeps only these: the other keys belong to other fields.
pub const STATUS_KEYS: &[&str] = &[
    "lv",
    "pool",
    "pool_data_percent",
    "pool_metadata_percent",
    "pool_mode",
];

/// Deserializes the backend's part of a flat Status object.
pub fn status_keys<'de, D>(d: D) -> Result<BTreeMap<String, serde_json::Value>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let mut map: BTreeMap<String, serde_json::Value> = serde::Deserialize::deserialize(d)?;
    map.retain(|k, _| STATUS_KEYS.contains(&k.as_str()));
    Ok(map)
}

/// One pool's fill, for Status and metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolFigures {
    /// `VG/POOL`.
    pub pool: String,
    pub data_percent: f64,
    pub metadata_percent: f64,
    /// rw, ro, out_of_data_space, needs_check, fail.
    pub mode: String,
}

/// statvfs of a mounted filesystem: (used, free for unprivileged users).
pub fn fs_usage(target: &Path) -> Result<(u64, u64), BackendError> {
    let st = nix::sys::statvfs::statvfs(target)
        .map_err(|e| BackendError::io(format!("statvfs {}", target.display()))(e.into()))?;
    let frsize = st.fragment_size();
    let used = (st.blocks() - st.blocks_free()) * frsize;
    Ok((used, st.blocks_available() * frsize))
}
