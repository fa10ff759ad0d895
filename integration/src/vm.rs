//! Throwaway virtual machines for tests that need a kernel feature this host lacks
//! (device-mapper, thin provisioning): Debian's `linux-image-cloud-amd64` kernel under
//! `qemu-system-x86_64 -accel tcg`, booted straight into a small initramfs made from this
//! host's own binaries (busybox, lvm2, xfsprogs, e2fsprogs, thin-provisioning-tools, dmsetup)
//! and their `ldd` libraries, plus the programs under test.
//!
//! - The kernel package is fetched at setup time (`apt-get download`, see
//!   [`KERNEL_DEB_DIR`]); nothing is downloaded while tests run.
//! - Built artifacts (the unpacked kernel, the base initramfs, stripped programs) are cached
//!   under `<target>/lvm-guest/`, keyed by what they were made from.
//! - The guest runs `/etc/berth/run.sh` and powers off. Console (kernel + program output) goes
//!   to the first serial port, results to the second (`/dev/ttyS1`), each to a host file.
//! - Every boot is bounded; qemu is killed at the deadline.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::harness::find_binary;
use crate::procs::run_with_timeout;

/// Where the project's setup (scripts/install-deps.sh) downloads the guest kernel package:
/// `apt-get download linux-image-<version>-cloud-amd64` run in this directory. Overridden by
/// `BERTH_GUEST_KERNEL_DEB` (a path to the .deb).
pub const KERNEL_DEB_DIR: &str = "/var/cache/berth-guest";

/// Kernel modules the guests load (with their dependencies, resolved from the .ko files).
pub const MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "dm_thin_pool",
    // LVM checks for the snapshot target on `lvcreate -s`, even of a thin LV.
    "dm_snapshot",
    "loop",
    "xfs",
];

/// Host tools copied into every guest (looked up like a shell would, plus /usr/sbin, /sbin).
pub const TOOLS: &[&str] = &[
    "busybox",
    "lvm",
    "dmsetup",
    "mkfs.xfs",
    "xfs_admin",
    "xfs_db",
    "xfs_growfs",
    "mkfs.ext4",
    "resize2fs",
    "e2fsck",
    "tune2fs",
    "blkid",
    "thin_check",
    "thin_repair",
    "thin_dump",
    "thin_restore",
    "pdata_tools",
];

/// Commands LVM runs under these names; all are the `lvm` binary.
const LVM_COMMANDS: &[&str] = &[
    "lvcreate",
    "lvremove",
    "lvchange",
    "lvs",
    "lvextend",
    "lvdisplay",
    "vgcreate",
    "vgs",
    "vgchange",
    "pvcreate",
    "pvs",
];

/// Debian packages that provide the above (the message for a missing tool names them).
pub const HOST_PACKAGES: &str = "qemu-system-x86 busybox-static lvm2 dmsetup xfsprogs \
    e2fsprogs thin-provisioning-tools binutils";

/// Fails with the list of everything a guest run needs that this host lacks.
pub fn require_prerequisites() -> Result<()> {
    let mut missing: Vec<String> = ["qemu-system-x86_64", "strip", "dpkg-deb", "ldd"]
        .iter()
        .chain(TOOLS)
        .filter(|t| find_binary(t).is_none())
        .map(|t| t.to_string())
        .collect();
    if let Err(e) = kernel_deb() {
        missing.push(format!("{e:#}"));
    }
    if !nix::unistd::geteuid().is_root() {
        missing.push("root (the guest tests need it to read the host's tools)".into());
    }
    if !missing.is_empty() {
        bail!(
            "the LVM guest tests cannot run; missing: {}.\nInstall with the project's setup \
             (scripts/install-deps.sh), which installs the Debian packages {HOST_PACKAGES} and \
             downloads the guest kernel (apt-get download linux-image-cloud-amd64's kernel into \
             {KERNEL_DEB_DIR})",
            missing.join("; ")
        );
    }
    Ok(())
}

/// The guest kernel package on this host.
pub fn kernel_deb() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("BERTH_GUEST_KERNEL_DEB") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        bail!("BERTH_GUEST_KERNEL_DEB={} does not exist", p.display());
    }
    let mut debs: Vec<PathBuf> = std::fs::read_dir(KERNEL_DEB_DIR)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    let n = p.file_name().unwrap_or_default().to_string_lossy();
                    n.starts_with("linux-image-")
                        && n.contains("-cloud-amd64")
                        && n.ends_with(".deb")
                })
                .collect()
        })
        .unwrap_or_default();
    debs.sort();
    debs.pop().ok_or_else(|| {
        anyhow!(
            "no linux-image-*-cloud-amd64 .deb in {KERNEL_DEB_DIR} (the guest kernel; run \
             `cd {KERNEL_DEB_DIR} && apt-get download $(apt-cache depends linux-image-cloud-amd64 \
             | sed -n 's/.*Depends: \\(linux-image-.*\\)/\\1/p')`)"
        )
    })
}

/// `<target>/lvm-guest`, beside the profile directories (from this executable's path).
pub fn cache_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test>-<hash> or target/<profile>/<bin>
    let mut dir = exe.parent().context("exe dir")?.to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let target = dir.parent().context("target dir")?;
    let cache = target.join("lvm-guest");
    std::fs::create_dir_all(&cache)?;
    Ok(cache)
}

/// The unpacked guest kernel.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub vmlinuz: PathBuf,
    /// `lib/modules/<release>`.
    pub modules: PathBuf,
    pub release: String,
}

/// Unpacks the kernel package once (cached by package file name).
pub fn kernel() -> Result<Kernel> {
    let deb = kernel_deb()?;
    let stem = deb
        .file_stem()
        .unwrap_or_default()
        .to_string_lossy()
        .to_string();
    let dir = cache_dir()?.join(format!("kernel-{stem}"));
    if !dir.join(".done").exists() {
        let tmp = dir.with_extension("tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp), 120)?;
        std::fs::write(tmp.join(".done"), "")?;
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&tmp, &dir)?;
    }
    let boot = dir.join("boot");
    let vmlinuz = std::fs::read_dir(&boot)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .with_context(|| format!("no vmlinuz in {}", boot.display()))?;
    let release = vmlinuz
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .trim_start_matches("vmlinuz-")
        .to_string();
    let modules = dir.join("lib/modules").join(&release);
    Ok(Kernel {
        vmlinuz,
        modules,
        release,
    })
}

fn run(cmd: &mut Command, secs: u64) -> Result<String> {
    let shown = format!("{cmd:?}");
    let mut c = Command::new(cmd.get_program());
    c.args(cmd.get_args());
    let out = run_with_timeout(c, None, Duration::from_secs(secs))
        .with_context(|| format!("running {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Module files to load, dependencies first (from each .ko's `depends=` modinfo field).
pub fn module_load_order(modules_dir: &Path, wanted: &[&str]) -> Result<Vec<PathBuf>> {
    let mut index = BTreeMap::new();
    let mut stack = vec![modules_dir.join("kernel")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)?.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Some(n) = p.file_name().and_then(|n| n.to_str()) {
                if let Some(stem) = n.strip_suffix(".ko") {
                    index.insert(stem.replace('-', "_"), p.clone());
                }
            }
        }
    }
    fn visit(
        name: &str,
        index: &BTreeMap<String, PathBuf>,
        done: &mut BTreeSet<String>,
        order: &mut Vec<PathBuf>,
    ) -> Result<()> {
        let name = name.replace('-', "_");
        if done.contains(&name) {
            return Ok(());
        }
        done.insert(name.clone());
        let Some(path) = index.get(&name) else {
            // Built into the kernel.
            return Ok(());
        };
        let bytes = std::fs::read(path)?;
        let needle = b"depends=";
        if let Some(pos) = bytes.windows(needle.len()).position(|w| w == needle) {
            let rest = &bytes[pos + needle.len()..];
            let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            let deps = String::from_utf8_lossy(&rest[..end]).to_string();
            for dep in deps.split(',').filter(|d| !d.is_empty()) {
                visit(dep, index, done, order)?;
            }
        }
        order.push(path.clone());
        Ok(())
    }
    let mut done = BTreeSet::new();
    let mut order = Vec::new();
    for w in wanted {
        if !index.contains_key(&w.replace('-', "_")) {
            bail!("module {w} is not in {}", modules_dir.display());
        }
        visit(w, &index, &mut done, &mut order)?;
    }
    Ok(order)
}

// ---------------------------------------------------------------------------------------------
// initramfs (cpio "newc")

/// An initramfs being assembled: entries by guest path.
#[derive(Default)]
pub struct Cpio {
    entries: BTreeMap<PathBuf, Entry>,
}

enum Entry {
    Dir,
    File { data: Vec<u8>, mode: u32 },
    Symlink(PathBuf),
}

impl Cpio {
    pub fn new() -> Self {
        Self::default()
    }

    fn parents(&mut self, path: &Path) {
        let mut p = PathBuf::from("/");
        if let Some(parent) = path.parent() {
            for c in parent.components() {
                if let Component::Normal(n) = c {
                    p.push(n);
                    self.entries.entry(p.clone()).or_insert(Entry::Dir);
                }
            }
        }
    }

    pub fn dir(&mut self, path: impl AsRef<Path>) {
        let path = path.as_ref();
        self.parents(path);
        self.entries.entry(path.to_path_buf()).or_insert(Entry::Dir);
    }

    pub fn bytes(&mut self, path: impl AsRef<Path>, data: impl Into<Vec<u8>>, mode: u32) {
        let path = path.as_ref();
        self.parents(path);
        self.entries.insert(
            path.to_path_buf(),
            Entry::File {
                data: data.into(),
                mode,
            },
        );
    }

    pub fn symlink(&mut self, path: impl AsRef<Path>, target: impl AsRef<Path>) {
        let path = path.as_ref();
        self.parents(path);
        self.entries
            .entry(path.to_path_buf())
            .or_insert(Entry::Symlink(target.as_ref().to_path_buf()));
    }

    pub fn contains(&self, path: impl AsRef<Path>) -> bool {
        self.entries.contains_key(path.as_ref())
    }

    /// Copies host file `host` to the same place in the guest, the way the host has it: each
    /// symlink on the way (`/sbin/lvm` → `/usr/sbin/lvm`, `thin_check` → `pdata_tools`) is
    /// recreated, the real file copied once.
    pub fn host_path(&mut self, host: &Path) -> Result<PathBuf> {
        let dir = host
            .parent()
            .context("path without a directory")?
            .canonicalize()
            .with_context(|| format!("resolving {}", host.display()))?;
        let here = dir.join(host.file_name().context("file name")?);
        let meta =
            std::fs::symlink_metadata(&here).with_context(|| format!("stat {}", here.display()))?;
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&here)?;
            self.symlink(&here, &target);
            let resolved = if target.is_absolute() {
                target
            } else {
                dir.join(target)
            };
            return self.host_path(&resolved);
        }
        if !self.contains(&here) {
            let data = std::fs::read(&here).with_context(|| format!("read {}", here.display()))?;
            self.bytes(&here, data, meta.permissions().mode() & 0o7777);
        }
        Ok(here)
    }

    /// A host binary (found like a shell would) and every library `ldd` lists for it.
    pub fn binary_with_libs(&mut self, host: &Path) -> Result<PathBuf> {
        let real = self.host_path(host)?;
        self.libs_of(&real)?;
        Ok(real)
    }

    /// The `ldd` libraries of a host file (nothing for static binaries and scripts).
    pub fn libs_of(&mut self, host: &Path) -> Result<()> {
        let out = run_with_timeout(
            {
                let mut c = Command::new("ldd");
                c.arg(host);
                c
            },
            None,
            Duration::from_secs(30),
        )?;
        if !out.status.success() {
            return Ok(()); // "not a dynamic executable"
        }
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let path = match line.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next(),
                None => line.split_whitespace().next(),
            };
            if let Some(p) = path.filter(|p| p.starts_with('/')) {
                self.host_path(Path::new(p))?;
            }
        }
        Ok(())
    }

    /// Writes the archive (uncompressed: fastest to make and to unpack).
    pub fn write(&self, out: &Path) -> Result<()> {
        let mut w = std::io::BufWriter::new(std::fs::File::create(out)?);
        let mut ino = 1u32;
        let mut total = 0usize;
        let mut emit = |w: &mut std::io::BufWriter<std::fs::File>,
                        name: &str,
                        mode: u32,
                        data: &[u8]|
         -> Result<()> {
            let header = format!(
                "070701{ino:08x}{mode:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
                0,
                0,
                1,
                0,
                data.len(),
                0,
                0,
                0,
                0,
                name.len() + 1,
                0
            );
            ino += 1;
            w.write_all(header.as_bytes())?;
            w.write_all(name.as_bytes())?;
            w.write_all(&[0])?;
            let n = header.len() + name.len() + 1;
            w.write_all(&vec![0u8; (4 - n % 4) % 4])?;
            w.write_all(data)?;
            w.write_all(&vec![0u8; (4 - data.len() % 4) % 4])?;
            total += n + (4 - n % 4) % 4 + data.len() + (4 - data.len() % 4) % 4;
            Ok(())
        };
        for (path, entry) in &self.entries {
            let name = path.to_string_lossy();
            let name = name.trim_start_matches('/');
            if name.is_empty() {
                continue;
            }
            match entry {
                Entry::Dir => emit(&mut w, name, 0o040755, &[])?,
                Entry::File { data, mode } => emit(&mut w, name, 0o100000 | mode, data)?,
                Entry::Symlink(t) => emit(&mut w, name, 0o120777, t.to_string_lossy().as_bytes())?,
            }
        }
        emit(&mut w, "TRAILER!!!", 0, &[])?;
        // Pad to 512 so that archives can be concatenated.
        w.write_all(&vec![0u8; (512 - total % 512) % 512])?;
        w.flush()?;
        Ok(())
    }
}

/// The guest's /init: mounts, modules, then /etc/berth/run.sh, then power off.
const INIT: &str = r#"#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu:/lib/x86_64-linux-gnu
mkdir -p /proc /sys /dev /run /tmp /var/lock /mnt
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs run /run
mount -t tmpfs tmp /tmp
mkdir -p /run/lvm /run/lock/lvm /dev/pts /dev/shm
mount -t tmpfs shm /dev/shm
for m in $(cat /etc/berth/modules); do
    insmod "$m" || echo "berth-init: insmod $m failed"
done
ip link set lo up
# No udev in the guest: LVM and libdevmapper make the device nodes themselves.
export DM_DISABLE_UDEV=1 LVM_SUPPRESS_FD_WARNINGS=1 HOME=/root
echo "berth-init: up, running /etc/berth/run.sh"
sh /etc/berth/run.sh
echo "berth-init: run.sh exited with $?"
sync
poweroff -f
"#;

/// lvm.conf for a guest without udev or dmeventd.
const LVM_CONF: &str = r#"activation {
    udev_sync = 0
    udev_rules = 0
    monitoring = 0
}
devices {
    obtain_device_list_from_udev = 0
    external_device_info_source = "none"
}
global {
    use_lvmpolld = 0
    event_activation = 0
}
"#;

fn file_key(p: &Path) -> String {
    std::fs::metadata(p)
        .map(|m| format!("{}:{}:{}", p.display(), m.len(), m.mtime()))
        .unwrap_or_default()
}

fn hash(text: &str) -> String {
    // FNV-1a: only to key caches.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

/// The shared part of every guest's initramfs (cached): tools, libraries, modules, /init.
pub fn base_initramfs(kernel: &Kernel) -> Result<PathBuf> {
    let tools: Vec<PathBuf> = TOOLS
        .iter()
        .map(|t| find_binary(t).ok_or_else(|| anyhow!("{t} not found (install {HOST_PACKAGES})")))
        .collect::<Result<_>>()?;
    let key = hash(&format!(
        "{}|{}|{INIT}|{LVM_CONF}|{MODULES:?}",
        kernel.release,
        tools
            .iter()
            .map(|t| file_key(t))
            .collect::<Vec<_>>()
            .join(","),
    ));
    let out = cache_dir()?.join(format!("base-{key}.cpio"));
    if out.exists() {
        return Ok(out);
    }
    let mut cpio = Cpio::new();
    for (link, target) in [
        ("/bin", "usr/bin"),
        ("/sbin", "usr/sbin"),
        ("/lib", "usr/lib"),
        ("/lib64", "usr/lib64"),
    ] {
        if std::fs::symlink_metadata(link).is_ok_and(|m| m.file_type().is_symlink()) {
            cpio.symlink(link, target);
        }
    }
    for t in &tools {
        cpio.binary_with_libs(t)?;
    }
    // busybox applets where no real tool of that name is copied.
    let busybox = find_binary("busybox").context("busybox")?;
    let list = run(Command::new(&busybox).arg("--list"), 30)?;
    let busybox_real = cpio.host_path(&busybox)?;
    for applet in list.lines().map(str::trim).filter(|a| !a.is_empty()) {
        let p = Path::new("/usr/bin").join(applet);
        let s = Path::new("/usr/sbin").join(applet);
        if !cpio.contains(&p) && !cpio.contains(&s) {
            cpio.symlink(&p, &busybox_real);
        }
    }
    let lvm = cpio.host_path(&find_binary("lvm").context("lvm")?)?;
    for c in LVM_COMMANDS {
        let p = Path::new("/usr/sbin").join(c);
        if !cpio.contains(&p) {
            cpio.symlink(&p, &lvm);
        }
    }
    let mut order = String::new();
    for m in module_load_order(&kernel.modules, MODULES)? {
        let rel = m.strip_prefix(&kernel.modules)?;
        let guest = Path::new("/lib/modules").join(&kernel.release).join(rel);
        let guest = Path::new("/usr").join(guest.strip_prefix("/")?);
        cpio.bytes(&guest, std::fs::read(&m)?, 0o644);
        order.push_str(&format!("{}\n", guest.display()));
    }
    cpio.bytes("/etc/berth/modules", order, 0o644);
    cpio.bytes("/init", INIT, 0o755);
    cpio.bytes("/etc/lvm/lvm.conf", LVM_CONF, 0o644);
    cpio.bytes("/etc/mtab", "", 0o644);
    cpio.symlink("/etc/mtab", "/proc/self/mounts");
    for d in ["/root", "/proc", "/sys", "/dev", "/run", "/tmp", "/mnt"] {
        cpio.dir(d);
    }
    let tmp = out.with_extension("tmp");
    cpio.write(&tmp)?;
    std::fs::rename(&tmp, &out)?;
    Ok(out)
}

/// A stripped copy of a program (cached by its size and mtime): the guest unpacks less.
pub fn stripped(program: &Path) -> Result<PathBuf> {
    let name = program
        .file_name()
        .context("file name")?
        .to_string_lossy()
        .to_string();
    let out = cache_dir()?.join(format!("{name}-{}", hash(&file_key(program))));
    if !out.exists() {
        let tmp = out.with_extension("tmp");
        run(
            Command::new("strip")
                .arg("--strip-debug")
                .arg("-o")
                .arg(&tmp)
                .arg(program),
            120,
        )?;
        std::fs::rename(&tmp, &out)?;
    }
    Ok(out)
}

/// What one boot runs.
pub struct Boot {
    /// (host program, guest name): placed in /usr/bin, stripped, with their libraries.
    pub programs: Vec<(PathBuf, String)>,
    /// Raw disk images, attached as virtio disks /dev/vda, /dev/vdb, ...
    pub disks: Vec<PathBuf>,
    /// The shell script the guest runs (`sh /etc/berth/run.sh`).
    pub script: String,
    pub memory_mb: u32,
    pub cpus: u32,
    /// qemu is killed at this bound.
    pub timeout: Duration,
    /// Console and results files go here.
    pub work: PathBuf,
    /// A name for the files of this boot.
    pub name: String,
}

/// What a boot left.
#[derive(Debug)]
pub struct BootOutput {
    /// What the guest wrote to /dev/ttyS1.
    pub results: String,
    /// Kernel and program output (/dev/ttyS0).
    pub console: String,
    pub elapsed: Duration,
    pub timed_out: bool,
}

impl BootOutput {
    pub fn console_tail(&self, n: usize) -> String {
        let lines: Vec<&str> = self.console.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// Creates a sparse raw disk image of `bytes`.
pub fn create_disk(path: &Path, bytes: u64) -> Result<()> {
    let _ = std::fs::remove_file(path);
    let f = std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    f.set_len(bytes)?;
    Ok(())
}

/// Boots the guest and waits for it to power off (or kills it at the bound).
pub fn boot(kernel: &Kernel, base: &Path, spec: &Boot) -> Result<BootOutput> {
    std::fs::create_dir_all(&spec.work)?;
    let mut app = Cpio::new();
    for (host, guest_name) in &spec.programs {
        let small = stripped(host)?;
        let data = std::fs::read(&small)?;
        app.bytes(Path::new("/usr/bin").join(guest_name), data, 0o755);
        app.libs_of(host)?;
    }
    app.bytes("/etc/berth/run.sh", spec.script.clone(), 0o755);
    let app_path = spec.work.join(format!("{}-app.cpio", spec.name));
    app.write(&app_path)?;
    let initrd = spec.work.join(format!("{}-initrd.cpio", spec.name));
    {
        let mut out = std::fs::File::create(&initrd)?;
        std::io::copy(&mut std::fs::File::open(base)?, &mut out)?;
        std::io::copy(&mut std::fs::File::open(&app_path)?, &mut out)?;
    }
    let console = spec.work.join(format!("{}-console.log", spec.name));
    let results = spec.work.join(format!("{}-results.log", spec.name));
    let _ = std::fs::remove_file(&console);
    let _ = std::fs::remove_file(&results);
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "tcg,thread=multi", "-cpu", "max", "-nodefaults"])
        .args(["-display", "none", "-no-reboot"])
        .args(["-m", &spec.memory_mb.to_string()])
        .args(["-smp", &spec.cpus.to_string()])
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(&initrd)
        .args([
            "-append",
            "console=ttyS0 panic=-1 quiet loglevel=4 rdinit=/init",
        ])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-serial")
        .arg(format!("file:{}", results.display()));
    for d in &spec.disks {
        cmd.arg("-drive").arg(format!(
            "file={},format=raw,if=virtio,cache=unsafe,discard=unmap",
            d.display()
        ));
    }
    let t0 = Instant::now();
    let out = run_with_timeout(cmd, None, spec.timeout).context("running qemu-system-x86_64")?;
    let elapsed = t0.elapsed();
    let timed_out = String::from_utf8_lossy(&out.stderr).contains("[timed out after");
    if !out.status.success() && !timed_out {
        bail!(
            "qemu-system-x86_64 failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let _ = std::fs::remove_file(&initrd);
    Ok(BootOutput {
        results: std::fs::read_to_string(&results).unwrap_or_default(),
        console: String::from_utf8_lossy(&std::fs::read(&console).unwrap_or_default()).into_owned(),
        elapsed,
        timed_out,
    })
}

/// Result lines a guest writes to /dev/ttyS1: `RESULT <name> ok` or
/// `RESULT <name> FAIL <message with \n as \\n>`.
pub fn parse_results(text: &str) -> BTreeMap<String, Result<(), String>> {
    text.lines()
        .filter_map(|l| {
            let rest = l.trim_end_matches('\r').strip_prefix("RESULT ")?;
            let (name, outcome) = rest.split_once(' ')?;
            let result = if outcome == "ok" {
                Ok(())
            } else {
                Err(outcome
                    .strip_prefix("FAIL ")
                    .unwrap_or(outcome)
                    .replace("\\n", "\n"))
            };
            Some((name.to_string(), result))
        })
        .collect()
}

/// Formats one result line (the guest side of [`parse_results`]).
pub fn result_line(name: &str, result: &Result<(), String>) -> String {
    match result {
        Ok(()) => format!("RESULT {name} ok\n"),
        Err(e) => format!(
            "RESULT {name} FAIL {}\n",
            e.replace('\r', "").replace('\n', "\\n")
        ),
    }
}

/// Other lines a guest reports (`FIGURE key value`), e.g. benchmark figures.
pub fn parse_figures(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let rest = l.trim_end_matches('\r').strip_prefix("FIGURE ")?;
            let (k, v) = rest.split_once(' ')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

/// Helpers for code that runs inside the guest.
pub mod guest {
    use super::*;

    /// A command with a bound; its stdout, or an error with its stderr.
    pub fn sh(args: &[&str]) -> Result<String> {
        let mut c = Command::new(args[0]);
        c.args(&args[1..]);
        let out = run_with_timeout(c, None, Duration::from_secs(120))
            .with_context(|| format!("running {args:?}"))?;
        if !out.status.success() {
            bail!(
                "{args:?} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A VG on the guest's disk /dev/vda with a 64 MiB ext4 LV `state` mounted on /state (for
    /// volplugin's state dir), and a thin pool `pool` of `size` with `metadata` (LVM's size
    /// syntax) and optionally a chunk size.
    pub fn vg_state_and_pool(
        vg: &str,
        pool: &str,
        size: &str,
        metadata: &str,
        chunk: Option<&str>,
    ) -> Result<()> {
        sh(&["lvm", "pvcreate", "-q", "/dev/vda"])?;
        sh(&["lvm", "vgcreate", "-q", vg, "/dev/vda"])?;
        sh(&["lvm", "lvcreate", "-q", "-L", "64m", "-n", "state", vg])?;
        sh(&["mkfs.ext4", "-q", &format!("/dev/{vg}/state")])?;
        std::fs::create_dir_all("/state")?;
        sh(&["mount", &format!("/dev/{vg}/state"), "/state"])?;
        let mut args = vec!["lvm", "lvcreate", "-q", "--type", "thin-pool", "-L", size];
        args.extend(["--poolmetadatasize", metadata]);
        if let Some(chunk) = chunk {
            args.extend(["--chunksize", chunk]);
        }
        args.extend(["-n", pool, vg]);
        sh(&args).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_round_trip() {
        let text = format!(
            "noise\n{}{}FIGURE create_ratio 1.02\n",
            result_line("a", &Ok(())),
            result_line("b", &Err("two\nlines".into()))
        );
        let r = parse_results(&text);
        assert_eq!(r["a"], Ok(()));
        assert_eq!(r["b"], Err("two\nlines".to_string()));
        assert_eq!(parse_figures(&text)["create_ratio"], "1.02");
    }

    #[test]
    fn cpio_is_newc() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Cpio::new();
        c.bytes("/etc/x/y", "hello", 0o644);
        c.symlink("/bin", "usr/bin");
        let out = dir.path().join("a.cpio");
        c.write(&out).unwrap();
        let data = std::fs::read(&out).unwrap();
        assert_eq!(data.len() % 512, 0);
        assert!(data.starts_with(b"070701"));
        let text = String::from_utf8_lossy(&data);
        assert!(
            text.contains("etc/x/y\0") && text.contains("hello") && text.contains("TRAILER!!!")
        );
    }
}
