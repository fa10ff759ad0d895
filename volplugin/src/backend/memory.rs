//! The simulator: volumes as records in memory, with failures that tests can inject at any
//! step, so the service's rollback and resume logic is tested without root.
#![allow(
    clippy::unwrap_used,
    reason = "a test fake: a poisoned lock means a test already panicked"
)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::{Attachment, Backend, BackendError, Usage};
use crate::spec::VolumeSpec;

#[derive(Debug, Clone)]
struct SimVolume {
    spec: VolumeSpec,
    mounted_at: Option<PathBuf>,
    minor: u32,
    /// The block storage's size and the filesystem's, apart: a grow changes one, then the other.
    device_bytes: u64,
    fs_bytes: u64,
    /// How the last grow of the filesystem ran: `Some(true)` online (mounted), `Some(false)` offline.
    grown_online: Option<bool>,
}

impl SimVolume {
    fn new(spec: &VolumeSpec) -> Self {
        Self {
            spec: spec.clone(),
            mounted_at: None,
            minor: 0,
            device_bytes: spec.size_bytes,
            fs_bytes: spec.size_bytes,
            grown_online: None,
        }
    }
}

#[derive(Default)]
pub struct MemoryBackend {
    volumes: Mutex<HashMap<String, SimVolume>>,
    next_minor: Mutex<u32>,
    failures: Mutex<HashMap<&'static str, u32>>,
    delays: Mutex<HashMap<&'static str, std::time::Duration>>,
}

impl MemoryBackend {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the next `times` calls of `operation` (`provision`, `deprovision`, `mount`,
    /// `unmount`, `clone`, `check_grow`, `grow_storage`, `grow_fs`) fail.
    pub fn fail_next(&self, operation: &'static str, times: u32) {
        self.failures.lock().unwrap().insert(operation, times);
    }

    /// Makes every later call of `operation` take `delay` first (a slow mkfs or log replay).
    pub fn delay(&self, operation: &'static str, delay: std::time::Duration) {
        self.delays.lock().unwrap().insert(operation, delay);
    }

    fn injected(&self, operation: &'static str) -> Result<(), BackendError> {
        let delay = self.delays.lock().unwrap().get(operation).copied();
        if let Some(delay) = delay {
            std::thread::sleep(delay);
        }
        let mut failures = self.failures.lock().unwrap();
        match failures.get_mut(operation) {
            Some(n) if *n > 0 => {
                *n -= 1;
                Err(BackendError::Refused(format!(
                    "injected {operation} failure"
                )))
            }
            _ => Ok(()),
        }
    }

    /// Simulates storage left by something else (or a crash of another implementation).
    pub fn insert_stray(&self, name: &str, spec: VolumeSpec) {
        self.volumes
            .lock()
            .unwrap()
            .insert(name.to_string(), SimVolume::new(&spec));
    }

    /// (storage, filesystem) sizes of a volume's storage.
    pub fn sizes(&self, name: &str) -> Option<(u64, u64)> {
        self.volumes
            .lock()
            .unwrap()
            .get(name)
            .map(|v| (v.device_bytes, v.fs_bytes))
    }

    /// Whether the last filesystem grow ran online (mounted) or offline.
    pub fn grown_online(&self, name: &str) -> Option<bool> {
        self.volumes
            .lock()
            .unwrap()
            .get(name)
            .and_then(|v| v.grown_online)
    }

    /// Simulates a crash between a grow's two steps: the storage is grown, not the filesystem.
    pub fn grow_storage_only(&self, name: &str, bytes: u64) {
        if let Some(v) = self.volumes.lock().unwrap().get_mut(name) {
            v.device_bytes = v.device_bytes.max(bytes);
        }
    }

    /// Simulates a reboot: nothing stays mounted.
    pub fn drop_all_mounts(&self) {
        for v in self.volumes.lock().unwrap().values_mut() {
            v.mounted_at = None;
        }
    }

    pub fn is_mounted(&self, name: &str) -> bool {
        self.volumes
            .lock()
            .unwrap()
            .get(name)
            .is_some_and(|v| v.mounted_at.is_some())
    }
}

impl Backend for MemoryBackend {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn provision(&self, name: &str, spec: &VolumeSpec) -> Result<(), BackendError> {
        self.injected("provision")?;
        let mut volumes = self.volumes.lock().unwrap();
        if volumes.contains_key(name) {
            return Err(BackendError::Refused(format!(
                "storage for {name} already exists but belongs to no volume"
            )));
        }
        volumes.insert(name.to_string(), SimVolume::new(spec));
        Ok(())
    }

    fn deprovision(&self, name: &str) -> Result<(), BackendError> {
        self.injected("deprovision")?;
        self.volumes.lock().unwrap().remove(name);
        Ok(())
    }

    fn stored(&self) -> Result<Vec<String>, BackendError> {
        Ok(self.volumes.lock().unwrap().keys().cloned().collect())
    }

    fn mount(
        &self,
        name: &str,
        _spec: &VolumeSpec,
        target: &Path,
    ) -> Result<Attachment, BackendError> {
        self.injected("mount")?;
        let mut volumes = self.volumes.lock().unwrap();
        let mut next = self.next_minor.lock().unwrap();
        let volume = volumes
            .get_mut(name)
            .ok_or_else(|| BackendError::Refused(format!("no storage for {name}")))?;
        if volume.mounted_at.is_none() {
            *next += 1;
            volume.minor = *next;
            volume.mounted_at = Some(target.to_path_buf());
        }
        Ok(Attachment {
            source: format!("/dev/sim{}", volume.minor),
            device: format!("253:{}", volume.minor),
        })
    }

    fn unmount(&self, name: &str, _target: &Path) -> Result<(), BackendError> {
        self.injected("unmount")?;
        if let Some(volume) = self.volumes.lock().unwrap().get_mut(name) {
            volume.mounted_at = None;
        }
        Ok(())
    }

    fn attachment(&self, name: &str, target: &Path) -> Result<Option<Attachment>, BackendError> {
        let volumes = self.volumes.lock().unwrap();
        Ok(volumes
            .get(name)
            .filter(|v| v.mounted_at.as_deref() == Some(target))
            .map(|v| Attachment {
                source: format!("/dev/sim{}", v.minor),
                device: format!("253:{}", v.minor),
            }))
    }

    fn usage(&self, name: &str, mounted_at: Option<&Path>) -> Result<Usage, BackendError> {
        let volumes = self.volumes.lock().unwrap();
        let volume = volumes
            .get(name)
            .ok_or_else(|| BackendError::Refused(format!("no storage for {name}")))?;
        let allocated = volume.spec.size_bytes / 100;
        Ok(Usage {
            allocated_bytes: allocated,
            used_bytes: mounted_at.map(|_| allocated),
            free_bytes: mounted_at.map(|_| volume.spec.size_bytes - allocated),
        })
    }

    fn release_stray_devices(&self) -> Result<Vec<String>, BackendError> {
        Ok(Vec::new())
    }

    fn clone_volume(
        &self,
        name: &str,
        source: &str,
        spec: &VolumeSpec,
    ) -> Result<(), BackendError> {
        self.injected("clone")?;
        let mut volumes = self.volumes.lock().unwrap();
        if !volumes.contains_key(source) {
            return Err(BackendError::Refused(format!("no storage for {source}")));
        }
        if volumes.contains_key(name) {
            return Err(BackendError::Refused(format!(
                "storage for {name} already exists but belongs to no volume"
            )));
        }
        volumes.insert(name.to_string(), SimVolume::new(spec));
        Ok(())
    }

    fn check_grow(
        &self,
        name: &str,
        _spec: &VolumeSpec,
        _new_size: u64,
        _mounted: bool,
    ) -> Result<(), BackendError> {
        self.injected("check_grow")?;
        if !self.volumes.lock().unwrap().contains_key(name) {
            return Err(BackendError::Refused(format!("no storage for {name}")));
        }
        Ok(())
    }

    fn grow(
        &self,
        name: &str,
        spec: &VolumeSpec,
        mounted_at: Option<&Path>,
    ) -> Result<(), BackendError> {
        self.injected("grow_storage")?;
        {
            let mut volumes = self.volumes.lock().unwrap();
            let volume = volumes
                .get_mut(name)
                .ok_or_else(|| BackendError::Refused(format!("no storage for {name}")))?;
            if volume.mounted_at.as_deref() != mounted_at {
                return Err(BackendError::Refused(format!(
                    "{name} is mounted at {:?}, not at {mounted_at:?}",
                    volume.mounted_at
                )));
            }
            volume.device_bytes = volume.device_bytes.max(spec.size_bytes);
        }
        self.injected("grow_fs")?;
        let mut volumes = self.volumes.lock().unwrap();
        let volume = volumes
            .get_mut(name)
            .ok_or_else(|| BackendError::Refused(format!("no storage for {name}")))?;
        volume.fs_bytes = volume.device_bytes;
        volume.spec.size_bytes = volume.device_bytes;
        volume.grown_online = Some(mounted_at.is_some());
        Ok(())
    }

    fn storage_size(&self, name: &str) -> Result<u64, BackendError> {
        self.volumes
            .lock()
            .unwrap()
            .get(name)
            .map(|v| v.device_bytes)
            .ok_or_else(|| BackendError::Refused(format!("no storage for {name}")))
    }

    fn status_extra(&self, _name: &str) -> std::collections::BTreeMap<String, serde_json::Value> {
        std::collections::BTreeMap::from([("pool".to_string(), serde_json::json!("sim/pool"))])
    }
}
