//! Block IO throttles in a container's cgroup: cgroup v1 `blkio.throttle.*` or cgroup v2
//! `io.max`, found from the container's pid so that both the cgroupfs and the systemd cgroup
//! drivers work (their paths differ: `/docker/<id>` vs `/system.slice/docker-<id>.scope`).

use std::path::{Path, PathBuf};

use crate::limits::IoLimits;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no blkio or io cgroup found for pid {0}")]
    NotFound(u32),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A container's IO cgroup directory and its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IoCgroup {
    V1(PathBuf),
    V2(PathBuf),
}

/// Counters of one device in one cgroup since the cgroup was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoCounters {
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub read_ios: u64,
    pub write_ios: u64,
}

impl std::ops::AddAssign for IoCounters {
    fn add_assign(&mut self, o: Self) {
        self.read_bytes += o.read_bytes;
        self.write_bytes += o.write_bytes;
        self.read_ios += o.read_ios;
        self.write_ios += o.write_ios;
    }
}

/// Where the cgroup hierarchies are mounted; a parameter so tests can use a fake tree.
#[derive(Debug, Clone)]
pub struct CgroupFs {
    pub root: PathBuf,
    pub proc: PathBuf,
}

impl Default for CgroupFs {
    fn default() -> Self {
        Self {
            root: PathBuf::from("/sys/fs/cgroup"),
            proc: PathBuf::from("/proc"),
        }
    }
}

impl CgroupFs {
    /// Pure v2 when the root itself is the unified hierarchy.
    pub fn is_v2(&self) -> bool {
        self.root.join("cgroup.controllers").exists()
    }

    /// The IO cgroup of `pid`, from /proc/<pid>/cgroup.
    pub fn of_pid(&self, pid: u32) -> Result<IoCgroup, CgroupError> {
        let path = self.proc.join(pid.to_string()).join("cgroup");
        let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
        let v2 = self.is_v2();
        for line in text.lines() {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, rel) = match (parts.next(), parts.next(), parts.next()) {
                (Some(a), Some(b), Some(c)) => (a, b, c),
                _ => continue,
            };
            let rel = rel.trim_start_matches('/');
            if v2 && controllers.is_empty() {
                return Ok(IoCgroup::V2(self.root.join(rel)));
            }
            if !v2 && controllers.split(',').any(|c| c == "blkio") {
                return Ok(IoCgroup::V1(self.root.join("blkio").join(rel)));
            }
        }
        Err(CgroupError::NotFound(pid))
    }
}

impl IoCgroup {
    pub fn path(&self) -> &Path {
        match self {
            IoCgroup::V1(p) | IoCgroup::V2(p) => p,
        }
    }

    /// Sets the throttles of `device` (`MAJ:MIN`) to `limits`; unset limits are removed.
    pub fn apply(&self, device: &str, limits: &IoLimits) -> Result<(), CgroupError> {
        match self {
            IoCgroup::V1(dir) => {
                let files = [
                    ("blkio.throttle.read_bps_device", limits.read_bps),
                    ("blkio.throttle.write_bps_device", limits.write_bps),
                    ("blkio.throttle.read_iops_device", limits.read_iops),
                    ("blkio.throttle.write_iops_device", limits.write_iops),
                ];
                for (file, value) in files {
                    let path = dir.join(file);
                    // v1: a value of 0 deletes the device's rule.
                    std::fs::write(&path, format!("{device} {}\n", value.unwrap_or(0)))
                        .map_err(io_err(&path))?;
                }
                Ok(())
            }
            IoCgroup::V2(dir) => {
                let path = dir.join("io.max");
                let v = |x: Option<u64>| x.map(|n| n.to_string()).unwrap_or_else(|| "max".into());
                let line = format!(
                    "{device} rbps={} wbps={} riops={} wiops={}\n",
                    v(limits.read_bps),
                    v(limits.write_bps),
                    v(limits.read_iops),
                    v(limits.write_iops)
                );
                std::fs::write(&path, line).map_err(io_err(&path))
            }
        }
    }

    /// IO done on `device` by this cgroup so far.
    pub fn counters(&self, device: &str) -> Result<IoCounters, CgroupError> {
        let mut c = IoCounters::default();
        match self {
            IoCgroup::V1(dir) => {
                let bytes = dir.join("blkio.throttle.io_service_bytes");
                let ios = dir.join("blkio.throttle.io_serviced");
                let bytes = std::fs::read_to_string(&bytes).map_err(io_err(&bytes))?;
                let ios = std::fs::read_to_string(&ios).map_err(io_err(&ios))?;
                for line in bytes.lines() {
                    let f: Vec<&str> = line.split_whitespace().collect();
                    if f.len() == 3 && f[0] == device {
                        let n = f[2].parse().unwrap_or(0);
                        match f[1] {
                            "Read" => c.read_bytes = n,
                            "Write" => c.write_bytes = n,
                            _ => {}
                        }
                    }
                }
                for line in ios.lines() {
                    let f: Vec<&str> = line.split_whitespace().collect();
                    if f.len() == 3 && f[0] == device {
                        let n = f[2].parse().unwrap_or(0);
                        match f[1] {
                            "Read" => c.read_ios = n,
                            "Write" => c.write_ios = n,
                            _ => {}
                        }
                    }
                }
            }
            IoCgroup::V2(dir) => {
                let path = dir.join("io.stat");
                let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
                for line in text.lines() {
                    let mut fields = line.split_whitespace();
                    if fields.next() != Some(device) {
                        continue;
                    }
                    for kv in fields {
                        let Some((k, v)) = kv.split_once('=') else {
                            continue;
                        };
                        let n = v.parse().unwrap_or(0);
                        match k {
                            "rbytes" => c.read_bytes = n,
                            "wbytes" => c.write_bytes = n,
                            "rios" => c.read_ios = n,
                            "wios" => c.write_ios = n,
                            _ => {}
                        }
                    }
                }
            }
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(v2: bool) -> (tempfile::TempDir, CgroupFs) {
        let dir = tempfile::tempdir().unwrap();
        let fs = CgroupFs {
            root: dir.path().join("cg"),
            proc: dir.path().join("proc"),
        };
        std::fs::create_dir_all(fs.proc.join("42")).unwrap();
        if v2 {
            std::fs::create_dir_all(fs.root.join("system.slice/docker-abc.scope")).unwrap();
            std::fs::write(fs.root.join("cgroup.controllers"), "io memory").unwrap();
            std::fs::write(
                fs.proc.join("42/cgroup"),
                "0::/system.slice/docker-abc.scope\n",
            )
            .unwrap();
        } else {
            std::fs::create_dir_all(fs.root.join("blkio/docker/abc")).unwrap();
            std::fs::write(
                fs.proc.join("42/cgroup"),
                "12:memory:/docker/abc\n7:blkio:/docker/abc\n0::/\n",
            )
            .unwrap();
        }
        (dir, fs)
    }

    #[test]
    fn v1_paths_limits_and_counters() {
        let (_d, fs) = fake(false);
        let cg = fs.of_pid(42).unwrap();
        assert_eq!(cg, IoCgroup::V1(fs.root.join("blkio/docker/abc")));
        let limits = IoLimits {
            write_bps: Some(2 << 20),
            ..Default::default()
        };
        cg.apply("7:3", &limits).unwrap();
        assert_eq!(
            std::fs::read_to_string(cg.path().join("blkio.throttle.write_bps_device")).unwrap(),
            "7:3 2097152\n"
        );
        assert_eq!(
            std::fs::read_to_string(cg.path().join("blkio.throttle.read_bps_device")).unwrap(),
            "7:3 0\n"
        );
        std::fs::write(
            cg.path().join("blkio.throttle.io_service_bytes"),
            "7:3 Read 100\n7:3 Write 200\n7:4 Write 9\nTotal 309\n",
        )
        .unwrap();
        std::fs::write(
            cg.path().join("blkio.throttle.io_serviced"),
            "7:3 Read 1\n7:3 Write 2\n",
        )
        .unwrap();
        assert_eq!(
            cg.counters("7:3").unwrap(),
            IoCounters {
                read_bytes: 100,
                write_bytes: 200,
                read_ios: 1,
                write_ios: 2
            }
        );
    }

    #[test]
    fn v2_paths_limits_and_counters() {
        let (_d, fs) = fake(true);
        let cg = fs.of_pid(42).unwrap();
        assert_eq!(
            cg,
            IoCgroup::V2(fs.root.join("system.slice/docker-abc.scope"))
        );
        cg.apply(
            "253:2",
            &IoLimits {
                read_iops: Some(500),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(cg.path().join("io.max")).unwrap(),
            "253:2 rbps=max wbps=max riops=500 wiops=max\n"
        );
        std::fs::write(
            cg.path().join("io.stat"),
            "253:2 rbytes=10 wbytes=20 rios=1 wios=2 dbytes=0 dios=0\n",
        )
        .unwrap();
        assert_eq!(
            cg.counters("253:2").unwrap(),
            IoCounters {
                read_bytes: 10,
                write_bytes: 20,
                read_ios: 1,
                write_ios: 2
            }
        );
        assert!(matches!(fs.of_pid(7), Err(CgroupError::Io { .. })));
    }
}
