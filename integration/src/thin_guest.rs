//! The lvm-thin guest suites' shared parts: booting the guest in phases and collecting its
//! results (host side), and driving volplugin inside the guest exactly as dockerd does
//! (guest side). Used by `tests/lvm_thin.rs` and `tests/lvm_stress.rs`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Result};
use serde_json::{json, Value};

use crate::plugins::docker_call;
use crate::procs::{wait_until, Daemon};
use crate::vm;
pub use crate::vm::guest::sh;

pub const VG: &str = "berthvg";
pub const POOL: &str = "pool";
const PLUGIN_DIR: &str = "/run/docker/plugins";

// ---------------------------------------------------------------------------------------------
// host side

/// What the boots of one suite reported.
pub struct GuestRun {
    pub results: BTreeMap<String, Result<(), String>>,
    pub figures: BTreeMap<String, String>,
    pub boots: Vec<(String, vm::BootOutput)>,
    pub timeout: Duration,
    _work: tempfile::TempDir,
}

/// One guest suite's boots: volplugin, `programs` and the test binary itself (run in the guest
/// as `BERTH_GUEST=1 <binary> <phase>`), one boot per phase.
pub struct GuestSuite<'a> {
    /// The test binary's name in the guest (and of its console logs).
    pub name: &'a str,
    /// (phase, shell the guest runs before the test binary: mounts, say).
    pub phases: &'a [(&'a str, &'a str)],
    /// Each phase on a fresh disk, or all on one (what survives a reboot).
    pub disk_per_phase: bool,
    pub disk_bytes: u64,
    pub memory_mb: u32,
    pub timeout: Duration,
    /// `NAME=value` pairs for the test binary in the guest (parameters of the run).
    pub env: Vec<(String, String)>,
    /// More host programs for the guest: (host path, guest name).
    pub programs: Vec<(PathBuf, String)>,
}

impl GuestSuite<'_> {
    pub fn run(&self) -> Result<GuestRun> {
        vm::require_prerequisites()?;
        let mut programs = vec![
            (
                crate::plugins::binary("volplugin")?,
                "volplugin".to_string(),
            ),
            (std::env::current_exe()?, self.name.to_string()),
        ];
        programs.extend(self.programs.iter().cloned());
        let kernel = vm::kernel()?;
        let base = vm::base_initramfs(&kernel)?;
        let work = tempfile::Builder::new()
            .prefix(&format!("berth-{}-", self.name))
            .tempdir_in(vm::cache_dir()?)?;
        let env: String = self.env.iter().map(|(k, v)| format!("{k}={v} ")).collect();
        let mut results = BTreeMap::new();
        let mut figures = BTreeMap::new();
        let mut boots = Vec::new();
        let shared_disk = work.path().join("disk.raw");
        if !self.disk_per_phase {
            vm::create_disk(&shared_disk, self.disk_bytes)?;
        }
        for (phase, prelude) in self.phases {
            let disk = if self.disk_per_phase {
                let d = work.path().join(format!("{phase}.raw"));
                vm::create_disk(&d, self.disk_bytes)?;
                d
            } else {
                shared_disk.clone()
            };
            let out = vm::boot(
                &kernel,
                &base,
                &vm::Boot {
                    programs: programs.clone(),
                    disks: vec![disk.clone()],
                    script: format!(
                        "{prelude}{env}BERTH_GUEST=1 /usr/bin/{} {phase}\n",
                        self.name
                    ),
                    memory_mb: self.memory_mb,
                    cpus: 2,
                    timeout: self.timeout,
                    work: work.path().to_path_buf(),
                    name: phase.to_string(),
                },
            )?;
            if self.disk_per_phase {
                // Sparse but partly written: gone as soon as its phase is.
                let _ = std::fs::remove_file(&disk);
            }
            // Kept after the run (the work dir goes): what to read when a guest test fails.
            let kept = vm::cache_dir()?.join(format!("last-{}-{phase}-console.log", self.name));
            std::fs::write(&kept, &out.console)?;
            println!(
                "guest {phase}: {:.1}s{} (console: {})",
                out.elapsed.as_secs_f64(),
                if out.timed_out { " (TIMED OUT)" } else { "" },
                kept.display()
            );
            results.extend(vm::parse_results(&out.results));
            figures.extend(vm::parse_figures(&out.results));
            boots.push((phase.to_string(), out));
        }
        Ok(GuestRun {
            results,
            figures,
            boots,
            timeout: self.timeout,
            _work: work,
        })
    }
}

impl GuestRun {
    /// The guest's verdict on one test.
    pub fn outcome(&self, name: &str) -> Result<()> {
        match self.results.get(name) {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(anyhow!("in the guest: {e}")),
            None => {
                let tails: Vec<String> = self
                    .boots
                    .iter()
                    .map(|(phase, b)| {
                        format!(
                            "--- {phase} console (last 40 lines):\n{}",
                            b.console_tail(40)
                        )
                    })
                    .collect();
                Err(anyhow!(
                    "the guest reported nothing for {name} (it crashed or ran out of time)\n{}",
                    tails.join("\n")
                ))
            }
        }
    }

    /// Fails if any boot was killed at its bound.
    pub fn boots_are_bounded(&self) -> Result<()> {
        for (phase, b) in &self.boots {
            if b.timed_out {
                bail!(
                    "{phase} ran past {:?}; console tail:\n{}",
                    self.timeout,
                    b.console_tail(40)
                );
            }
        }
        Ok(())
    }
}

/// A host-side test per guest test, each the guest's verdict (`run`: the context's
/// [`GuestRun`]), after `boots_are_bounded`.
#[macro_export]
macro_rules! guest_tests {
    ($ctx:ty, $run:ident, $($name:ident),* $(,)?) => {
        fn boots_are_bounded(ctx: &$ctx) -> anyhow::Result<()> { ctx.$run.boots_are_bounded() }
        $(fn $name(ctx: &$ctx) -> anyhow::Result<()> { ctx.$run.outcome(stringify!($name)) })*
        const GUEST_TESTS: &[(&str, integration::harness::TestFn<$ctx>)] =
            &[("boots_are_bounded", boots_are_bounded), $((stringify!($name), $name)),*];
    };
}

// ---------------------------------------------------------------------------------------------
// guest side

pub type GuestTest = fn(&mut Guest) -> Result<()>;

/// Runs one phase's tests in the guest, reporting each on /dev/ttyS1, then exits.
pub fn run_phase(tests: Vec<(&str, GuestTest)>) -> ! {
    let mut report = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/ttyS1")
        .expect("/dev/ttyS1");
    let mut g = Guest::new();
    for (name, f) in tests {
        let t = Instant::now();
        println!("=== guest test {name}");
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut g)))
            .unwrap_or_else(|_| Err(anyhow!("panicked")));
        let result = result.map_err(|e| {
            let mut msg = format!("{e:#}");
            let tail = g.log_tail(15);
            if !tail.is_empty() {
                msg.push_str(&format!("\nvolplugin log tail:\n{tail}"));
            }
            msg
        });
        println!(
            "=== {name}: {} ({:.1}s)",
            if result.is_ok() { "ok" } else { "FAILED" },
            t.elapsed().as_secs_f64()
        );
        if let Err(e) = &result {
            println!("{e}");
        }
        let _ = report.write_all(vm::result_line(name, &result).as_bytes());
        let _ = report.flush();
    }
    g.stop();
    let _ = Command::new("sync").status();
    std::process::exit(0);
}

/// Reports a figure (`FIGURE key value`) to the host.
pub fn report_figure(key: &str, value: &str) {
    if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open("/dev/ttyS1") {
        let _ = writeln!(f, "FIGURE {key} {value}");
    }
}

pub struct Guest {
    daemon: Option<Daemon>,
    pub pool: String,
    /// Flags beyond the fixed ones (thresholds).
    pub flags: Vec<String>,
    /// Capabilities (bit numbers) volplugin runs without: dropped from its bounding set
    /// before exec, so root's exec does not grant them.
    pub drop_caps: Vec<u32>,
}

pub fn socket() -> PathBuf {
    Path::new(PLUGIN_DIR).join("berth-vol.sock")
}

/// One plugin call exactly as dockerd sends it; fails unless 200.
pub fn call(method: &str, body: Value) -> Result<Value> {
    let (status, value) = docker_call(&socket(), method, Some(&body.to_string()))?;
    if status != 200 {
        bail!("{method} {body}: HTTP {status}: {value}");
    }
    Ok(value)
}

/// A call that must fail; returns Docker's error text.
pub fn call_err(method: &str, body: Value) -> Result<String> {
    let (status, value) = docker_call(&socket(), method, Some(&body.to_string()))?;
    ensure!(
        status != 200,
        "{method} {body} succeeded but must fail: {value}"
    );
    Ok(value["Err"].as_str().unwrap_or_default().to_string())
}

pub fn create(name: &str, opts: Value) -> Result<()> {
    call("VolumeDriver.Create", json!({"Name": name, "Opts": opts})).map(drop)
}

pub fn mount(name: &str, id: &str) -> Result<PathBuf> {
    let v = call("VolumeDriver.Mount", json!({"Name": name, "ID": id}))?;
    Ok(PathBuf::from(v["Mountpoint"].as_str().unwrap_or_default()))
}

pub fn unmount(name: &str, id: &str) -> Result<()> {
    call("VolumeDriver.Unmount", json!({"Name": name, "ID": id})).map(drop)
}

pub fn remove(name: &str) -> Result<()> {
    call("VolumeDriver.Remove", json!({"Name": name})).map(drop)
}

pub fn status(name: &str) -> Result<Value> {
    let v = call("VolumeDriver.Get", json!({"Name": name}))?;
    Ok(v["Volume"]["Status"].clone())
}

pub fn list() -> Result<Vec<String>> {
    let v = call("VolumeDriver.List", json!({}))?;
    let mut names: Vec<String> = v["Volumes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|v| v["Name"].as_str().map(str::to_string))
        .collect();
    names.sort();
    Ok(names)
}

/// `lvs` rows of the VG as (name → row).
pub fn lvs() -> Result<BTreeMap<String, Value>> {
    let out = sh(&[
        "lvm",
        "lvs",
        "--reportformat",
        "json",
        "--units",
        "b",
        "--nosuffix",
        "-o",
        "lv_name,lv_attr,lv_size,lv_tags,pool_lv,origin,data_percent",
        VG,
    ])?;
    let v: Value = serde_json::from_str(&out)?;
    Ok(v["report"][0]["lv"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|r| (r["lv_name"].as_str().unwrap_or_default().to_string(), r))
        .collect())
}

/// Volume names that have a tagged thin LV.
pub fn tagged_volumes() -> Result<Vec<String>> {
    let mut v: Vec<String> = lvs()?
        .into_iter()
        .filter(|(_, r)| {
            r["lv_tags"]
                .as_str()
                .unwrap_or_default()
                .split(',')
                .any(|t| t == "berth-vol")
        })
        .filter_map(|(n, _)| n.strip_prefix("berth_").map(str::to_string))
        .collect();
    v.sort();
    Ok(v)
}

pub fn dm(lv: &str) -> String {
    format!("{VG}-{}", lv.replace('-', "--"))
}

/// Nothing half-done: the tagged LVs are exactly the volumes, every mount under the mount
/// root is counted, and dmsetup knows every volume's device.
pub fn consistent() -> Result<()> {
    let names = list()?;
    let tagged = tagged_volumes()?;
    ensure!(
        names == tagged,
        "volumes {names:?} but tagged LVs {tagged:?}"
    );
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    for line in mounts.lines() {
        let mut f = line.split(' ');
        let (_src, point) = (f.next().unwrap_or(""), f.next().unwrap_or(""));
        if let Some(vol) = point.strip_prefix("/state/vol/mounts/") {
            let st = status(vol)?;
            ensure!(
                st["mounts"].as_u64() > Some(0),
                "{vol} is mounted at {point} with no counted mount"
            );
        }
    }
    Ok(())
}

impl Guest {
    fn new() -> Self {
        Self {
            daemon: None,
            pool: POOL.into(),
            flags: Vec::new(),
            drop_caps: Vec::new(),
        }
    }

    pub fn start(&mut self) -> Result<()> {
        let mut cmd = Command::new("/usr/bin/volplugin");
        cmd.args([
            "serve",
            "--backend",
            "lvm-thin",
            "--vg",
            VG,
            "--thin-pool",
            &self.pool,
        ])
        .args(["--state-dir", "/state/vol", "--plugin-dir", PLUGIN_DIR])
        .args(["--admin-socket", "/run/berth/volplugin.sock"])
        .args(["--metrics", "127.0.0.1:9474"])
        .args(["--docker-socket", "/run/no-docker.sock"])
        .args(&self.flags)
        .env("RUST_LOG", "info");
        let caps = self.drop_caps.clone();
        if !caps.is_empty() {
            use std::os::unix::process::CommandExt;
            // SAFETY: only prctl (async-signal-safe, no allocation) between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    for &cap in &caps {
                        if libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        }
        let mut daemon = Daemon::spawn("volplugin", cmd, Path::new("/tmp/logs"))?;
        let up = wait_until(Duration::from_secs(60), Duration::from_millis(20), || {
            docker_call(&socket(), "Plugin.Activate", None).is_ok() || daemon.try_exited().is_some()
        });
        if daemon.try_exited().is_some() {
            bail!("volplugin exited at start:\n{}", daemon.log_tail(30));
        }
        if !up {
            let tail = daemon.log_tail(30);
            let _ = daemon.kill9();
            bail!("volplugin did not come up within 60 s:\n{tail}");
        }
        self.daemon = Some(daemon);
        Ok(())
    }

    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut d) = self.daemon.take() {
            d.kill9()?;
        }
        Ok(())
    }

    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.start()
    }

    pub fn stop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = d.stop(Duration::from_secs(20));
        }
    }

    pub fn log_tail(&self, n: usize) -> String {
        self.daemon
            .as_ref()
            .map(|d| d.log_tail(n))
            .unwrap_or_default()
    }
}
