//! What every block-device backend does the same way: run a tool with a time limit, make a
//! filesystem, mount and unmount it, give a cloned XFS a fresh UUID.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::mount::{MntFlags, MsFlags};

use super::{mountinfo, BackendError};
use crate::spec::Filesystem;

/// mkfs, xfs_admin and the like finish in seconds; this bound keeps a hung tool from hanging
/// Docker (whose own limit is 2 min for Create).
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `command` (never through a shell) and returns its stdout; fails with its stderr on a
/// non-zero exit, and kills it when `timeout` passes.
pub fn run_bounded(command: &mut Command, timeout: Duration) -> Result<String, BackendError> {
    let shown = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("LC_ALL", "C")
        .spawn()
        .map_err(BackendError::io(format!("run {shown}")))?;
    let pid = child.id() as i32;
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    // Readers send what they got at EOF; a daemon the tool started (dmeventd) that kept the
    // pipe open must not hang us, so their results are awaited with a bound too.
    let (out_tx, out_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        let _ = out_tx.send(buf);
    });
    let (err_tx, err_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        let _ = err_tx.send(buf);
    });
    // A waiter thread reaps the child; this thread only waits on the channel, so the caller
    // sees the exit at once (no polling delay) or the timeout.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let status = match rx.recv_timeout(timeout) {
        Ok(status) => status.map_err(BackendError::io(format!("wait for {shown}")))?,
        Err(_) => {
            // Not reaped yet (the waiter would have sent), so the pid is still the child's.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = rx.recv_timeout(Duration::from_secs(5));
            return Err(BackendError::Command {
                command: shown,
                status: format!("killed after {} s", timeout.as_secs()),
                stderr: "the command did not finish in time".into(),
            });
        }
    };
    let out = out_rx
        .recv_timeout(Duration::from_secs(5))
        .unwrap_or_default();
    let err = err_rx
        .recv_timeout(Duration::from_secs(5))
        .unwrap_or_default();
    if status.success() {
        return Ok(String::from_utf8_lossy(&out).into_owned());
    }
    Err(BackendError::Command {
        command: shown,
        status: status.to_string(),
        stderr: String::from_utf8_lossy(&err).trim().to_string(),
    })
}

/// Makes the filesystem on `target`, a block device or (for loopfile) an image file. Discard
/// is skipped: the storage is fresh (a sparse file, a new thin LV) and reads zeros already.
pub fn mkfs(fs: Filesystem, target: &Path) -> Result<(), BackendError> {
    let mut command = match fs {
        Filesystem::Xfs => {
            let mut c = Command::new("mkfs.xfs");
            c.args(["-q", "-K"]);
            c
        }
        Filesystem::Ext4 => {
            let mut c = Command::new("mkfs.ext4");
            // -F: an image file is not a block device, and that is intended.
            c.args(["-q", "-F", "-E", "nodiscard"]);
            c
        }
    };
    run_bounded(command.arg(target), TOOL_TIMEOUT).map(drop)
}

/// Mounts `device` (a block device) on `target` with `fs`; `data` is the filesystem's own
/// option string (e.g. `nouuid`).
pub fn mount(
    device: &Path,
    target: &Path,
    fs: Filesystem,
    data: Option<&str>,
) -> Result<(), BackendError> {
    nix::mount::mount(
        Some(device),
        target,
        Some(fs.as_str()),
        // A database volume has no use for setuid binaries or device nodes; a container that
        // could plant either on a shared volume must not gain by it.
        MsFlags::MS_NOATIME | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        data,
    )
    .map_err(|e| {
        BackendError::io(format!(
            "mount {} on {}",
            device.display(),
            target.display()
        ))(e.into())
    })
}

/// Unmounts `target`; not mounted is success. A process that still has a file open (a
/// `docker cp` finishing) makes umount EBUSY for a moment: retry briefly, as Docker's own
/// drivers do.
pub fn unmount(target: &Path) -> Result<(), BackendError> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match nix::mount::umount2(target, MntFlags::empty()) {
            Ok(()) => return Ok(()),
            Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT)
                if mountinfo::find(target).ok().flatten().is_none() =>
            {
                return Ok(())
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
}

/// Gives the XFS on `device` (a clone, so it carries its source's UUID) a new UUID, so both
/// can be mounted at once without `nouuid`. A clone of a mounted source has a dirty log, which
/// xfs_admin refuses: the log is then replayed by mounting once with `nouuid` under `scratch`.
pub fn fresh_xfs_uuid(device: &Path, scratch: &Path) -> Result<(), BackendError> {
    // xfs_db exits 0 even when it refuses a dirty log: success is its "new UUID" line.
    let generate = || -> Result<(), BackendError> {
        let out = run_bounded(
            Command::new("xfs_admin")
                .args(["-U", "generate"])
                .arg(device),
            TOOL_TIMEOUT,
        )?;
        if out.contains("new UUID") {
            Ok(())
        } else {
            Err(BackendError::Refused(format!(
                "xfs_admin -U generate {} did not set a new UUID: {}",
                device.display(),
                out.trim()
            )))
        }
    };
    if generate().is_ok() {
        return Ok(());
    }
    std::fs::create_dir_all(scratch)
        .map_err(BackendError::io(format!("create {}", scratch.display())))?;
    mount(device, scratch, Filesystem::Xfs, Some("nouuid"))?;
    let unmounted = unmount(scratch);
    let _ = std::fs::remove_dir(scratch);
    unmounted?;
    generate()
}

/// Unmounts whatever is mounted under `scratch` (deepest first) and removes its empty
/// directories. A kill -9 during [`fresh_xfs_uuid`]'s log replay leaves a scratch mount that
/// holds the clone's device, so the clone's rollback (deprovision) would fail with EBUSY at
/// every start: this runs before it. Returns the mount points it unmounted.
pub fn clear_scratch(scratch: &Path) -> Result<Vec<String>, BackendError> {
    let mut points: Vec<PathBuf> = mountinfo::read()
        .map_err(BackendError::io("read /proc/self/mountinfo"))?
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| p.starts_with(scratch) && p != scratch)
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    let mut cleared = Vec::new();
    for point in points {
        unmount(&point)?;
        cleared.push(point.display().to_string());
    }
    if let Ok(entries) = std::fs::read_dir(scratch) {
        for entry in entries.flatten() {
            // Only empty directories go; anything else is not ours to delete.
            let _ = std::fs::remove_dir(entry.path());
        }
    }
    Ok(cleared)
}

/// The capability the kernel wants from whoever grows a mounted `fs`: XFS's
/// XFS_IOC_FSGROWFSDATA checks CAP_SYS_ADMIN, ext4's EXT4_IOC_RESIZE_FS CAP_SYS_RESOURCE.
/// (bit in the capability sets, name).
pub fn online_grow_capability(fs: Filesystem) -> (u32, &'static str) {
    match fs {
        Filesystem::Xfs => (21, "CAP_SYS_ADMIN"),
        Filesystem::Ext4 => (24, "CAP_SYS_RESOURCE"),
    }
}

/// The effective capability set of this process, from `CapEff:` in a `/proc/PID/status`.
pub fn effective_capabilities(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

/// Refuses, before anything changes, to grow a mounted `fs` this process lacks the capability
/// for: the tool would fail only after the storage had grown (the sandboxes and containers
/// volplugin may run in often drop CAP_SYS_RESOURCE).
pub fn check_online_grow(fs: Filesystem) -> Result<(), BackendError> {
    let (bit, cap) = online_grow_capability(fs);
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(BackendError::io("read /proc/self/status"))?;
    let effective = effective_capabilities(&status).unwrap_or(0);
    if effective & (1 << bit) != 0 {
        return Ok(());
    }
    Err(BackendError::Refused(format!(
        "growing a mounted {} filesystem needs {cap}, which this volplugin process lacks \
         (CapEff {effective:016x}); stop the containers using the volume (it is then grown \
         offline, which needs no such capability) or run volplugin with {cap}",
        fs.as_str()
    )))
}

/// Grows the mounted filesystem at `target` (on `device`) to fill its device.
pub fn grow_mounted(fs: Filesystem, device: &Path, target: &Path) -> Result<(), BackendError> {
    match fs {
        Filesystem::Xfs => run_bounded(
            Command::new("xfs_growfs").arg("-d").arg(target),
            TOOL_TIMEOUT,
        ),
        // resize2fs finds the mount itself and grows online through the kernel.
        Filesystem::Ext4 => run_bounded(Command::new("resize2fs").arg(device), TOOL_TIMEOUT),
    }
    .map(drop)
}

/// Grows an unmounted ext4 on `device` (a block device or an image file) to fill it.
/// resize2fs wants a forced check first once the filesystem has been mounted since its last
/// one; `-p` repairs only what is safe and exits 1 when it did ("errors corrected").
pub fn grow_ext4_offline(device: &Path) -> Result<(), BackendError> {
    match run_bounded(
        Command::new("e2fsck").args(["-f", "-p"]).arg(device),
        GROW_CHECK_TIMEOUT,
    ) {
        Ok(_) => {}
        Err(BackendError::Command { status, .. }) if status.ends_with("exit status: 1") => {}
        Err(e) => return Err(e),
    }
    run_bounded(Command::new("resize2fs").arg(device), GROW_CHECK_TIMEOUT).map(drop)
}

/// e2fsck and an offline resize2fs read the whole metadata of the filesystem: larger
/// volumes take longer than mkfs.
const GROW_CHECK_TIMEOUT: Duration = Duration::from_secs(600);

/// Grows an unmounted XFS on `device`: XFS grows only mounted, so it is mounted once under
/// `scratch` (cleared at start if a crash leaves it), grown and unmounted.
pub fn grow_xfs_offline(device: &Path, scratch: &Path) -> Result<(), BackendError> {
    std::fs::create_dir_all(scratch)
        .map_err(BackendError::io(format!("create {}", scratch.display())))?;
    mount(device, scratch, Filesystem::Xfs, None)?;
    let grown = grow_mounted(Filesystem::Xfs, device, scratch);
    let unmounted = unmount(scratch);
    let _ = std::fs::remove_dir(scratch);
    grown.and(unmounted)
}

/// BLKGETSIZE64 = _IOR(0x12, 114, size_t).
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;

/// The size in bytes of the block device at `node`, by ioctl (no fork).
pub fn block_device_size(node: &Path) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd;
    let dev = std::fs::File::open(node)?;
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points at a live local.
    if unsafe { libc::ioctl(dev.as_raw_fd(), BLKGETSIZE64 as _, &mut size as *mut u64) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(size)
}

/// `MAJ:MIN` of a block device node, from stat (no fork, no ioctl).
pub fn device_number(node: &Path) -> std::io::Result<String> {
    use std::os::unix::fs::MetadataExt;
    let rdev = std::fs::metadata(node)?.rdev();
    Ok(format!("{}:{}", libc::major(rdev), libc::minor(rdev)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_commands() {
        assert_eq!(
            run_bounded(Command::new("sh").args(["-c", "echo hi"]), TOOL_TIMEOUT).unwrap(),
            "hi\n"
        );
        let err = run_bounded(
            Command::new("sh").args(["-c", "echo nope >&2; exit 3"]),
            TOOL_TIMEOUT,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("nope") && err.contains('3'), "{err}");
        let t = Instant::now();
        let err = run_bounded(Command::new("sleep").arg("30"), Duration::from_millis(200))
            .unwrap_err()
            .to_string();
        assert!(err.contains("did not finish"), "{err}");
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(run_bounded(&mut Command::new("/nonexistent/tool"), TOOL_TIMEOUT).is_err());
    }

    #[test]
    fn capabilities_from_proc_status() {
        // This machine's sandbox: everything but CAP_SYS_RESOURCE (bit 24).
        let status = "Name:\tvolplugin\nCapInh:\t0000000000000000\nCapEff:\t000001fffeffffff\n";
        let eff = effective_capabilities(status).unwrap();
        let (xfs, _) = online_grow_capability(Filesystem::Xfs);
        let (ext4, name) = online_grow_capability(Filesystem::Ext4);
        assert!(eff & (1 << xfs) != 0);
        assert!(eff & (1 << ext4) == 0);
        assert_eq!(name, "CAP_SYS_RESOURCE");
        assert_eq!(effective_capabilities("Name:\tx\n"), None);
        // This process: the check agrees with its own CapEff.
        let own = std::fs::read_to_string("/proc/self/status").unwrap();
        let own = effective_capabilities(&own).unwrap();
        assert_eq!(
            check_online_grow(Filesystem::Ext4).is_ok(),
            own & (1 << ext4) != 0
        );
        if let Err(e) = check_online_grow(Filesystem::Ext4) {
            let e = e.to_string();
            assert!(e.contains("CAP_SYS_RESOURCE") && e.contains("ext4"), "{e}");
        }
    }
}
