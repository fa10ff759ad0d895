//! Loop devices through the kernel's ioctls: no `losetup` fork per mount.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::BackendError;

const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
const LOOP_SET_CAPACITY: libc::c_ulong = 0x4C07;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_FLAGS_DIRECT_IO: u32 = 16;
const LO_NAME_SIZE: usize = 64;

#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; LO_NAME_SIZE],
    lo_crypt_name: [u8; LO_NAME_SIZE],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// An attached loop device. The device is configured with autoclear: the kernel detaches it
/// when its last user goes away, so once a filesystem on it is unmounted, or if this process
/// dies between attach and mount, no loop device is left behind.
pub struct LoopDevice {
    file: File,
    pub path: PathBuf,
    pub rdev: u64,
}

impl LoopDevice {
    /// `MAJ:MIN`.
    pub fn device(&self) -> String {
        format!("{}:{}", libc::major(self.rdev), libc::minor(self.rdev))
    }

    /// Closes our handle; with a mount holding the device, it stays attached.
    pub fn release(self) {
        drop(self.file);
    }
}

fn last_os_error(context: String) -> BackendError {
    BackendError::Io {
        context,
        source: std::io::Error::last_os_error(),
    }
}

/// Opens a loop device already attached (to one of our images), to mount it again.
pub fn open_attached(path: &Path) -> Result<LoopDevice, BackendError> {
    use std::os::unix::fs::MetadataExt;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(BackendError::io(format!("open {}", path.display())))?;
    let rdev = file
        .metadata()
        .map_err(BackendError::io(format!("stat {}", path.display())))?
        .rdev();
    Ok(LoopDevice {
        file,
        path: path.to_path_buf(),
        rdev,
    })
}

/// Attaches `image` to a free loop device, read-write, with direct IO where the backing
/// filesystem allows it (no double caching of database pages).
pub fn attach(image: &Path) -> Result<LoopDevice, BackendError> {
    let backing = OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .map_err(BackendError::io(format!("open {}", image.display())))?;
    let control =
        File::open("/dev/loop-control").map_err(BackendError::io("open /dev/loop-control"))?;
    // Another process can take the free device between GET_FREE and CONFIGURE: retry.
    for _ in 0..16 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument; `control` is an open fd we own.
        let index = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE as _) };
        if index < 0 {
            return Err(last_os_error("LOOP_CTL_GET_FREE".into()));
        }
        let path = PathBuf::from(format!("/dev/loop{index}"));
        let dev = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(dev) => dev,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // udev-less hosts: the node may not exist yet; make it.
                make_node(&path, index as u32)?;
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .map_err(BackendError::io(format!("open {}", path.display())))?
            }
            Err(e) => return Err(BackendError::io(format!("open {}", path.display()))(e)),
        };
        match configure(
            &dev,
            &backing,
            image,
            LO_FLAGS_AUTOCLEAR | LO_FLAGS_DIRECT_IO,
        )
        .or_else(|e| {
            if e.raw_os_error() == Some(libc::EINVAL) {
                configure(&dev, &backing, image, LO_FLAGS_AUTOCLEAR)
            } else {
                Err(e)
            }
        }) {
            Ok(()) => {
                let rdev = dev
                    .metadata()
                    .map_err(BackendError::io(format!("stat {}", path.display())))?
                    .rdev();
                return Ok(LoopDevice {
                    file: dev,
                    path,
                    rdev,
                });
            }
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => continue,
            Err(e) => {
                return Err(BackendError::Io {
                    context: format!("LOOP_CONFIGURE {} on {}", image.display(), path.display()),
                    source: e,
                })
            }
        }
    }
    Err(BackendError::Refused(
        "no free loop device after 16 attempts".into(),
    ))
}

fn configure(dev: &File, backing: &File, image: &Path, flags: u32) -> std::io::Result<()> {
    // SAFETY: LoopConfig is a repr(C) struct of integers and byte arrays: all-zero is a valid
    // value, and the one the kernel expects for every field we do not set.
    let mut config: LoopConfig = unsafe { std::mem::zeroed() };
    config.fd = backing.as_raw_fd() as u32;
    config.info.lo_flags = flags;
    let name = image.as_os_str().as_encoded_bytes();
    let n = name.len().min(LO_NAME_SIZE - 1);
    config.info.lo_file_name[..n].copy_from_slice(&name[..n]);
    // SAFETY: LOOP_CONFIGURE reads a `struct loop_config`, which LoopConfig mirrors field for
    // field; the pointer is to a live local the kernel only reads during the call.
    let rc = unsafe {
        libc::ioctl(
            dev.as_raw_fd(),
            LOOP_CONFIGURE as _,
            &config as *const LoopConfig,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn make_node(path: &Path, index: u32) -> Result<(), BackendError> {
    let dev = libc::makedev(7, index);
    let c =
        std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("no NUL in /dev/loopN");
    // SAFETY: `c` is a NUL-terminated path that outlives the call.
    if unsafe { libc::mknod(c.as_ptr(), libc::S_IFBLK | 0o660, dev) } != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EEXIST) {
            return Err(BackendError::Io {
                context: format!("mknod {}", path.display()),
                source: err,
            });
        }
    }
    Ok(())
}

/// Detaches `/dev/loopN`; a device that is already free is success.
pub fn detach(path: &Path) -> Result<(), BackendError> {
    let dev = match File::open(path) {
        Ok(dev) => dev,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(BackendError::io(format!("open {}", path.display()))(e)),
    };
    // SAFETY: LOOP_CLR_FD takes no pointer argument; `dev` is an open fd we own.
    if unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CLR_FD as _, 0) } < 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ENXIO) {
            return Err(BackendError::Io {
                context: format!("LOOP_CLR_FD {}", path.display()),
                source: err,
            });
        }
    }
    Ok(())
}

/// Tells `/dev/loopN` that its backing file has grown: the device takes the file's new size
/// at once, while mounted.
pub fn set_capacity(path: &Path) -> Result<(), BackendError> {
    let dev = File::open(path).map_err(BackendError::io(format!("open {}", path.display())))?;
    // SAFETY: LOOP_SET_CAPACITY takes no pointer argument; `dev` is an open fd we own.
    if unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_SET_CAPACITY as _, 0) } < 0 {
        return Err(last_os_error(format!(
            "LOOP_SET_CAPACITY {}",
            path.display()
        )));
    }
    Ok(())
}

/// Every attached loop device and its backing file, from sysfs.
pub fn attached() -> Vec<(PathBuf, PathBuf)> {
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            if !name.starts_with("loop") {
                return None;
            }
            let backing = std::fs::read_to_string(entry.path().join("loop/backing_file")).ok()?;
            let backing = backing.trim_end_matches('\n');
            let backing = backing.strip_suffix(" (deleted)").unwrap_or(backing);
            Some((
                PathBuf::from(format!("/dev/{name}")),
                PathBuf::from(backing),
            ))
        })
        .collect()
}

/// Loop devices backed by the file that is `image` now: not by an earlier file of that name
/// since deleted (a volume removed and created again).
pub fn devices_of_current(image: &Path) -> Vec<PathBuf> {
    devices_of(image)
        .into_iter()
        .filter(|dev| {
            let Some(name) = dev.file_name() else {
                return false;
            };
            let sysfs = Path::new("/sys/block").join(name).join("loop/backing_file");
            std::fs::read_to_string(sysfs)
                .is_ok_and(|b| !b.trim_end_matches('\n').ends_with(" (deleted)"))
        })
        .collect()
}

/// Loop devices whose backing file is `image`.
pub fn devices_of(image: &Path) -> Vec<PathBuf> {
    attached()
        .into_iter()
        .filter(|(_, b)| b == image)
        .map(|(d, _)| d)
        .collect()
}
