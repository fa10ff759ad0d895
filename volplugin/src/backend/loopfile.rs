//! The single-host default: a sparse image file per volume under the state dir, formatted
//! with a real filesystem, attached to a loop device only while mounted.

use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::mount::{MntFlags, MsFlags};

use super::{fs_usage, loopdev, mountinfo, Attachment, Backend, BackendError, Usage};
use crate::spec::{Filesystem, VolumeSpec};

pub struct LoopfileBackend {
    images: PathBuf,
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
        Ok(Self { images })
    }

    /// The image of a volume. `name` has been validated: no `/`, no leading `.`.
    pub fn image(&self, name: &str) -> PathBuf {
        self.images.join(format!("{name}{SUFFIX}"))
    }
}

fn run(command: &mut Command) -> Result<(), BackendError> {
    let output = command
        .output()
        .map_err(BackendError::io(format!("run {command:?}")))?;
    if output.status.success() {
        return Ok(());
    }
    Err(BackendError::Command {
        command: format!("{command:?}"),
        status: output.status.to_string(),
        stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
    })
}

/// mkfs on the image file itself: no loop device needed until the first mount.
fn mkfs(fs: Filesystem, image: &Path) -> Result<(), BackendError> {
    match fs {
        Filesystem::Xfs => run(Command::new("mkfs.xfs").arg("-q").arg(image)),
        // -F: it is a regular file, not a block device, and that is intended.
        Filesystem::Ext4 => run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(image)),
    }
}

impl Backend for LoopfileBackend {
    fn kind(&self) -> &'static str {
        "loopfile"
    }

    fn provision(&self, name: &str, spec: &VolumeSpec) -> Result<(), BackendError> {
        let image = self.image(name);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&image)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    BackendError::Refused(format!(
                        "{} already exists but belongs to no volume; move it away to reuse the name",
                        image.display()
                    ))
                } else {
                    BackendError::io(format!("create {}", image.display()))(e)
                }
            })?;
        let result = file
            .set_len(spec.size_bytes)
            .map_err(BackendError::io(format!("size {}", image.display())))
            .and_then(|()| mkfs(spec.fs, &image))
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
        let dev = loopdev::attach(&image)?;
        nix::mount::mount(
            Some(&dev.path),
            target,
            Some(spec.fs.as_str()),
            MsFlags::MS_NOATIME,
            None::<&str>,
        )
        .map_err(|e| {
            BackendError::io(format!(
                "mount {} ({}) on {}",
                dev.path.display(),
                image.display(),
                target.display()
            ))(e.into())
        })?;
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
        // A process that still has a file open (a `docker cp` finishing) makes umount EBUSY for
        // a moment: retry briefly, as Docker's own drivers do.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match nix::mount::umount2(target, MntFlags::empty()) {
                Ok(()) => break,
                Err(nix::errno::Errno::EINVAL)
                    if mountinfo::find(target).ok().flatten().is_none() =>
                {
                    break
                }
                Err(nix::errno::Errno::EBUSY) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(e) => {
                    return Err(BackendError::io(format!("unmount {}", target.display()))(
                        e.into(),
                    ))
                }
            }
        }
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

impl LoopfileBackend {
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
