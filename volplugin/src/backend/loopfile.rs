//! The single-host default: a sparse image file per volume under the state dir, formatted
//! with a real filesystem, attached to a loop device only while mounted.

use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{fs_usage, fsops, loopdev, mountinfo, Attachment, Backend, BackendError, Usage};
use crate::spec::{Filesystem, VolumeSpec};

pub struct LoopfileBackend {
    images: PathBuf,
    /// Temporary mount points (log replay of XFS clones), beside the images.
    scratch: PathBuf,
}

const SUFFIX: &str = ".img";

impl LoopfileBackend {
    /// `images` is created if missing (mode 0700: volume contents are private to root).
    pub fn new(images: PathBuf) -> Result<Self, BackendError> {
        std::fs::create_dir_all(&images)
            .map_err(BackendError::io(format!("create {}", images.display())))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&images, std::fs::Permissions::from_mode(0o700))
            .map_err(BackendError::io(format!("chmod {}", images.display())))?;
        let images = images
            .canonicalize()
            .map_err(BackendError::io(format!("resolve {}", images.display())))?;
        let scratch = images.with_file_name("scratch");
        Ok(Self { images, scratch })
    }

    /// The image of a volume. `name` has been validated: no `/`, no leading `.`.
    pub fn image(&self, name: &str) -> PathBuf {
        self.images.join(format!("{name}{SUFFIX}"))
    }
}

impl Backend for LoopfileBackend {
    fn kind(&self) -> &'static str {
        "loopfile"
    }

    fn provision(&self, name: &str, spec: &VolumeSpec) -> Result<(), BackendError> {
        let image = self.image(name);
        let file = self.create_image(&image)?;
        let result = file
            .set_len(spec.size_bytes)
            .map_err(BackendError::io(format!("size {}", image.display())))
            .and_then(|()| fsops::mkfs(spec.fs, &image))
            .and_then(|()| {
                file.sync_all()
                    .map_err(BackendError::io(format!("fsync {}", image.display())))
            });
        if result.is_err() {
            let _ = std::fs::remove_file(&image);
        }
        result
    }

    fn deprovision(&self, name: &str) -> Result<(), BackendError> {
        let image = self.image(name);
        for dev in loopdev::devices_of(&image) {
            loopdev::detach(&dev)?;
        }
        match std::fs::remove_file(&image) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(BackendError::io(format!("remove {}", image.display()))(e)),
        }
    }

    fn stored(&self) -> Result<Vec<String>, BackendError> {
        let entries = std::fs::read_dir(&self.images)
            .map_err(BackendError::io(format!("list {}", self.images.display())))?;
        Ok(entries
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .into_string()
                    .ok()?
                    .strip_suffix(SUFFIX)
                    .map(str::to_string)
            })
            .collect())
    }

    fn mount(
        &self,
        name: &str,
        spec: &VolumeSpec,
        target: &Path,
    ) -> Result<Attachment, BackendError> {
        if let Some(current) = self.attachment(name, target)? {
            return Ok(current);
        }
        let image = self.image(name);
        // A device still attached to this image may carry a filesystem that is alive in
        // another mount namespace (a container's, being torn down, still holds a copy of the
        // mount the host has just unmounted). Mount that same device: the kernel reuses the
        // live filesystem. A second device would be a second instance of one filesystem,
        // which XFS refuses ("duplicate UUID", EINVAL) and ext4 would let corrupt.
        let reused = loopdev::devices_of_current(&image)
            .iter()
            .find_map(|d| loopdev::open_attached(d).ok());
        let dev = match reused {
            Some(dev) => dev,
            None => loopdev::attach(&image)?,
        };
        fsops::mount(&dev.path, target, spec.fs, None)
            .map_err(|e| BackendError::Refused(format!("{e} (image {})", image.display())))?;
        let attachment = Attachment {
            source: dev.path.display().to_string(),
            device: dev.device(),
        };
        // The mount now holds the device; autoclear detaches it at unmount.
        dev.release();
        Ok(attachment)
    }

    fn unmount(&self, name: &str, target: &Path) -> Result<(), BackendError> {
        if self.attachment(name, target)?.is_none() {
            return self.release_image_devices(name);
        }
        fsops::unmount(target)?;
        self.release_image_devices(name)
    }

    fn attachment(&self, name: &str, target: &Path) -> Result<Option<Attachment>, BackendError> {
        let entry =
            mountinfo::find(target).map_err(BackendError::io("read /proc/self/mountinfo"))?;
        let image = self.image(name);
        Ok(entry.and_then(|m| {
            // Only a mount of this volume's own image counts; anything else at the path is not ours.
            let ours = loopdev::devices_of(&image)
                .iter()
                .any(|d| d.display().to_string() == m.source);
            ours.then_some(Attachment {
                source: m.source,
                device: m.device,
            })
        }))
    }

    fn usage(&self, name: &str, mounted_at: Option<&Path>) -> Result<Usage, BackendError> {
        let image = self.image(name);
        let meta = std::fs::metadata(&image)
            .map_err(BackendError::io(format!("stat {}", image.display())))?;
        let mut usage = Usage {
            allocated_bytes: meta.blocks() * 512,
            ..Usage::default()
        };
        if let Some(target) = mounted_at {
            let (used, free) = fs_usage(target)?;
            usage.used_bytes = Some(used);
            usage.free_bytes = Some(free);
        }
        Ok(usage)
    }

    fn clone_volume(
        &self,
        name: &str,
        source: &str,
        spec: &VolumeSpec,
    ) -> Result<(), BackendError> {
        let from = self.image(source);
        let image = self.image(name);
        let source_file = std::fs::File::open(&from).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                BackendError::Refused(format!(
                    "the image of {source} ({}) is missing",
                    from.display()
                ))
            } else {
                BackendError::io(format!("open {}", from.display()))(e)
            }
        })?;
        let file = self.create_image(&image)?;
        let result = reflink(&source_file, &file, &self.images)
            .and_then(|()| match spec.fs {
                Filesystem::Xfs => self.fresh_uuid(name, &image),
                // ext4 mounts fine with a duplicate UUID.
                Filesystem::Ext4 => Ok(()),
            })
            .and_then(|()| {
                file.sync_all()
                    .map_err(BackendError::io(format!("fsync {}", image.display())))
            });
        if result.is_err() {
            let _ = std::fs::remove_file(&image);
        }
        result
    }

    fn check_grow(
        &self,
        name: &str,
        spec: &VolumeSpec,
        _new_size: u64,
        mounted: bool,
    ) -> Result<(), BackendError> {
        let image = self.image(name);
        if !image.exists() {
            return Err(BackendError::Refused(format!(
                "the image of {name} ({}) is missing",
                image.display()
            )));
        }
        if mounted {
            fsops::check_online_grow(spec.fs)?;
        }
        Ok(())
    }

    /// The image grows (sparse: no data written), every loop device on it is told its new
    /// size, then the filesystem grows: online through the mount, else offline.
    fn grow(
        &self,
        name: &str,
        spec: &VolumeSpec,
        mounted_at: Option<&Path>,
    ) -> Result<(), BackendError> {
        let image = self.image(name);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&image)
            .map_err(BackendError::io(format!("open {}", image.display())))?;
        let len = file
            .metadata()
            .map_err(BackendError::io(format!("stat {}", image.display())))?
            .len();
        if len < spec.size_bytes {
            // One step: a crash leaves the image at its old length or at the new one.
            file.set_len(spec.size_bytes)
                .map_err(BackendError::io(format!("size {}", image.display())))?;
            file.sync_all()
                .map_err(BackendError::io(format!("fsync {}", image.display())))?;
        }
        // Also a device another namespace still holds: it must not keep the old size.
        let devices = loopdev::devices_of_current(&image);
        for dev in &devices {
            loopdev::set_capacity(dev)?;
        }
        match mounted_at {
            Some(target) => {
                let attachment = self.attachment(name, target)?.ok_or_else(|| {
                    BackendError::Refused(format!(
                        "{name} is no longer mounted at {}",
                        target.display()
                    ))
                })?;
                fsops::grow_mounted(spec.fs, Path::new(&attachment.source), target)
            }
            None if !devices.is_empty() => Err(BackendError::Refused(format!(
                "the image of {name} is still attached to {} with no mount of ours (a container \
                 being torn down holds it); resize again in a moment",
                devices
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
            None => match spec.fs {
                Filesystem::Ext4 => fsops::grow_ext4_offline(&image),
                Filesystem::Xfs => {
                    let dev = loopdev::attach(&image)?;
                    let grown =
                        fsops::grow_xfs_offline(&dev.path, &self.scratch.join("grow").join(name));
                    // Autoclear detaches the device once our handle closes (unmounted now).
                    dev.release();
                    grown
                }
            },
        }
    }

    fn storage_size(&self, name: &str) -> Result<u64, BackendError> {
        let image = self.image(name);
        Ok(std::fs::metadata(&image)
            .map_err(BackendError::io(format!("stat {}", image.display())))?
            .len())
    }

    fn clear_scratch_mounts(&self) -> Result<Vec<String>, BackendError> {
        fsops::clear_scratch(&self.scratch)
    }

    fn release_stray_devices(&self) -> Result<Vec<String>, BackendError> {
        let mounted: Vec<String> = mountinfo::read()
            .map_err(BackendError::io("read /proc/self/mountinfo"))?
            .into_iter()
            .map(|m| m.source)
            .collect();
        let mut released = Vec::new();
        for (dev, backing) in loopdev::attached() {
            let dev_name = dev.display().to_string();
            if backing.parent() == Some(self.images.as_path()) && !mounted.contains(&dev_name) {
                loopdev::detach(&dev)?;
                released.push(format!("{dev_name} ({})", backing.display()));
            }
        }
        Ok(released)
    }
}

/// FICLONE = _IOW(0x94, 9, int): the destination shares the source's extents (copy on write).
const FICLONE: libc::c_ulong = 0x4004_9409;

/// Clones `from` into `to` by reflink: O(1) whatever the data size, or a clear refusal where
/// the filesystem under `dir` cannot share extents (ext4, tmpfs, XFS without reflink).
fn reflink(from: &std::fs::File, to: &std::fs::File, dir: &Path) -> Result<(), BackendError> {
    // SAFETY: FICLONE takes the source fd as its argument and touches no memory of ours.
    let rc = unsafe { libc::ioctl(to.as_raw_fd(), FICLONE as _, from.as_raw_fd()) };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EOPNOTSUPP | libc::EXDEV | libc::EINVAL | libc::ENOTTY | libc::ENOSYS) => {
            Err(BackendError::Refused(format!(
                "-o from= on the loopfile backend clones by reflink, and the filesystem under {} \
                 cannot reflink ({err}); put --state-dir on XFS with reflink=1 or on btrfs, or use \
                 the lvm-thin backend",
                dir.display()
            )))
        }
        _ => Err(BackendError::io(format!("reflink into {}", dir.display()))(
            err,
        )),
    }
}

impl LoopfileBackend {
    fn create_image(&self, image: &Path) -> Result<std::fs::File, BackendError> {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(image)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    BackendError::Refused(format!(
                        "{} already exists but belongs to no volume; move it away to reuse the name",
                        image.display()
                    ))
                } else {
                    BackendError::io(format!("create {}", image.display()))(e)
                }
            })
    }

    /// A reflinked XFS image carries its source's UUID. xfs_admin works on the file when the
    /// log is clean; a clone of a mounted source needs its log replayed on a loop device first.
    fn fresh_uuid(&self, name: &str, image: &Path) -> Result<(), BackendError> {
        let direct = fsops::run_bounded(
            std::process::Command::new("xfs_admin")
                .args(["-U", "generate"])
                .arg(image),
            fsops::TOOL_TIMEOUT,
        );
        // xfs_db exits 0 even when it refuses a dirty log: success is its "new UUID" line.
        if direct.is_ok_and(|out| out.contains("new UUID")) {
            return Ok(());
        }
        let dev = loopdev::attach(image)?;
        let scratch = self.scratch.join(name);
        let result = fsops::fresh_xfs_uuid(&dev.path, &scratch);
        // Autoclear detaches the device once our handle closes (nothing mounts it now).
        dev.release();
        result
    }

    /// After an unmount, autoclear detaches the loop device; the kernel may finish that a
    /// moment later. Wait briefly, then detach explicitly what is still attached.
    fn release_image_devices(&self, name: &str) -> Result<(), BackendError> {
        let image = self.image(name);
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            let devices = loopdev::devices_of(&image);
            if devices.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                for dev in devices {
                    loopdev::detach(&dev)?;
                }
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
