//! Benchmark of volplugin's lvm-thin backend, in a qemu guest (this host has no
//! device-mapper; see `integration::vm`).
//!
//! - Create (10G, xfs), clone and remove through volplugin (the exact requests dockerd
//!   sends) against the same LVM commands run by hand in the same guest, as ratios (goal
//!   <= 1.10). By hand = what volplugin runs: `lvcreate -V -T` + `mkfs.xfs -K` for create,
//!   `lvcreate -s -kn` + `xfs_admin -U generate` for clone, `lvremove` for remove.
//! - Clone time of a source with 1 MiB vs 1 GiB written (goal: equal within noise: thin
//!   snapshots are metadata only).
//! - Direct IO (1 MiB blocks) on a mounted volume against a plain linear LV of the same VG
//!   with the same filesystem (goal >= 0.95). The pool's chunk size decides it: `--chunk-size`
//!   (default 512k, what the README and docs/volumes.md recommend; 64k is LVM's default).
//!
//! Run (root): `cargo run --release -p integration --bin bench_lvm [-- --rounds N] [--chunk-size 64k]`.
//! Figures are printed and written to `<target>/lvm-guest/bench_lvm.json`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use integration::plugins::docker_call;
use integration::procs::{wait_until, Daemon};
use integration::vm;
use integration::vm::guest::sh;
use serde_json::{json, Value};

const VG: &str = "benchvg";
const POOL: &str = "pool";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let rounds: usize = args
        .iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse())
        .transpose()
        .context("--rounds N")?
        .unwrap_or(5);
    let chunk = args
        .iter()
        .position(|a| a == "--chunk-size")
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| "512k".into());
    ensure!(
        chunk.len() <= 8 && chunk.chars().all(|c| c.is_ascii_alphanumeric()),
        "--chunk-size like 64k or 512k"
    );
    if std::env::var_os("BERTH_GUEST").is_some() {
        let mut out = std::fs::OpenOptions::new().write(true).open("/dev/ttyS1")?;
        let result = guest(rounds, &chunk, &mut out);
        use std::io::Write;
        let line = vm::result_line("bench", &result.map_err(|e| format!("{e:#}")));
        out.write_all(line.as_bytes())?;
        let _ = Command::new("sync").status();
        std::process::exit(0);
    }
    host(rounds, &chunk)
}

fn host(rounds: usize, chunk: &str) -> Result<()> {
    vm::require_prerequisites()?;
    if cfg!(debug_assertions) {
        eprintln!("note: a debug build; run with --release for figures worth comparing");
    }
    let volplugin = integration::plugins::binary("volplugin")?;
    let kernel = vm::kernel()?;
    let base = vm::base_initramfs(&kernel)?;
    let work = tempfile::Builder::new()
        .prefix("berth-bench-")
        .tempdir_in(vm::cache_dir()?)?;
    let disk = work.path().join("disk.raw");
    vm::create_disk(&disk, 5 << 30)?;
    let out = vm::boot(
        &kernel,
        &base,
        &vm::Boot {
            programs: vec![
                (volplugin, "volplugin".into()),
                (std::env::current_exe()?, "bench_lvm".into()),
            ],
            disks: vec![disk],
            script: format!(
                "BERTH_GUEST=1 /usr/bin/bench_lvm --rounds {rounds} --chunk-size {chunk}\n"
            ),
            memory_mb: 2048,
            cpus: 2,
            timeout: Duration::from_secs(300),
            work: work.path().to_path_buf(),
            name: "bench".into(),
        },
    )?;
    let console = vm::cache_dir()?.join("last-bench-console.log");
    std::fs::write(&console, &out.console)?;
    let results = vm::parse_results(&out.results);
    match results.get("bench") {
        Some(Ok(())) => {}
        Some(Err(e)) => bail!("benchmark failed in the guest: {e}"),
        None => bail!(
            "the guest reported no result ({}; console: {}):\n{}",
            if out.timed_out {
                "timed out"
            } else {
                "crashed"
            },
            console.display(),
            out.console_tail(30)
        ),
    }
    let figures = vm::parse_figures(&out.results);
    println!(
        "lvm-thin benchmark in a TCG guest ({rounds} rounds, medians, ms; pool chunk size {chunk}):"
    );
    for (k, v) in &figures {
        println!("  {k:<34} {v}");
    }
    let json = serde_json::to_string_pretty(&figures)?;
    std::fs::write(vm::cache_dir()?.join("bench_lvm.json"), json)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// guest side

fn timed(f: impl FnOnce() -> Result<()>) -> Result<f64> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed().as_secs_f64() * 1000.0)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn call(socket: &Path, method: &str, body: Value) -> Result<()> {
    let (status, v) = docker_call(socket, method, Some(&body.to_string()))?;
    ensure!(status == 200, "{method} {body}: {status} {v}");
    Ok(())
}

fn dm(lv: &str) -> String {
    format!("/dev/mapper/{VG}-{}", lv.replace('-', "--"))
}

fn write_mib(path: &Path, mib: usize) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    let block = vec![0x3cu8; 1 << 20];
    for _ in 0..mib {
        f.write_all(&block)?;
    }
    f.sync_all()?;
    Ok(())
}

fn guest(rounds: usize, chunk: &str, out: &mut std::fs::File) -> Result<()> {
    use std::io::Write;
    vm::guest::vg_state_and_pool(VG, POOL, "3400m", "32m", Some(chunk))?;
    let plugin_dir = "/run/docker/plugins";
    let socket = Path::new(plugin_dir).join("berth-vol.sock");
    let mut cmd = Command::new("/usr/bin/volplugin");
    cmd.args([
        "serve",
        "--backend",
        "lvm-thin",
        "--vg",
        VG,
        "--thin-pool",
        POOL,
    ])
    .args(["--state-dir", "/state/vol", "--plugin-dir", plugin_dir])
    .args(["--admin-socket", "/run/volplugin.sock", "--metrics", "off"])
    .args(["--docker-socket", "/run/no-docker.sock"])
    .args(["--pool-data-max-percent", "95"])
    .env("RUST_LOG", "warn");
    let mut daemon = Daemon::spawn("volplugin", cmd, Path::new("/tmp/logs"))?;
    ensure!(
        wait_until(Duration::from_secs(60), Duration::from_millis(20), || {
            docker_call(&socket, "Plugin.Activate", None).is_ok()
        }),
        "volplugin did not start: {}",
        daemon.log_tail(20)
    );

    let mut t: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let pool = format!("{VG}/{POOL}");
    // One warm-up of each path, not counted (page cache, first-run LVM metadata).
    for round in 0..=rounds {
        let (v, c) = (format!("v{round}"), format!("c{round}"));
        let (h, hc) = (format!("berth_h{round}"), format!("berth_hc{round}"));
        // Alternate which goes first, so drift (pool growing) hits both alike.
        let plugin_first = round % 2 == 0;
        let mut samples: Vec<(&str, f64)> = Vec::new();
        for side in 0..2 {
            if (side == 0) == plugin_first {
                samples.push((
                    "create_plugin",
                    timed(|| {
                        call(
                            &socket,
                            "VolumeDriver.Create",
                            json!({"Name": v, "Opts": {"size": "10G", "fs": "xfs"}}),
                        )
                    })?,
                ));
                samples.push((
                    "clone_plugin",
                    timed(|| {
                        call(
                            &socket,
                            "VolumeDriver.Create",
                            json!({"Name": c, "Opts": {"from": v}}),
                        )
                    })?,
                ));
                samples.push((
                    "remove_plugin",
                    timed(|| call(&socket, "VolumeDriver.Remove", json!({"Name": c})))?,
                ));
                call(&socket, "VolumeDriver.Remove", json!({"Name": v}))?;
            } else {
                samples.push((
                    "create_hand",
                    timed(|| {
                        sh(&[
                            "lvm",
                            "lvcreate",
                            "--yes",
                            "--quiet",
                            "-V",
                            "10240m",
                            "-T",
                            &pool,
                            "-n",
                            &h,
                            "--addtag",
                            "berth-vol",
                        ])?;
                        sh(&["mkfs.xfs", "-q", "-K", &dm(&h)]).map(drop)
                    })?,
                ));
                samples.push((
                    "clone_hand",
                    timed(|| {
                        sh(&[
                            "lvm",
                            "lvcreate",
                            "--yes",
                            "--quiet",
                            "-s",
                            "-kn",
                            "-n",
                            &hc,
                            "--addtag",
                            "berth-vol",
                            &format!("{VG}/{h}"),
                        ])?;
                        sh(&["xfs_admin", "-U", "generate", &dm(&hc)]).map(drop)
                    })?,
                ));
                samples.push((
                    "remove_hand",
                    timed(|| sh(&["lvm", "lvremove", "--yes", &format!("{VG}/{hc}")]).map(drop))?,
                ));
                sh(&["lvm", "lvremove", "--yes", &format!("{VG}/{h}")])?;
            }
        }
        if round > 0 {
            for (k, ms) in samples {
                t.entry(k).or_default().push(ms);
            }
        }
    }

    // Clone time against the amount of data in the source: both sources written first, then
    // their clones interleaved (order alternating), so that neither gets a quieter machine.
    let mut by_size: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let sources = [("clone_1MiB_source", 1usize), ("clone_1GiB_source", 1024)];
    for (_, mib) in sources {
        let src = format!("src{mib}");
        call(
            &socket,
            "VolumeDriver.Create",
            json!({"Name": src, "Opts": {"size": "2G", "fs": "xfs"}}),
        )?;
        let (status, v) = docker_call(
            &socket,
            "VolumeDriver.Mount",
            Some(&json!({"Name": src, "ID": "w"}).to_string()),
        )?;
        ensure!(status == 200, "{v}");
        let mp = v["Mountpoint"].as_str().unwrap_or_default().to_string();
        write_mib(&Path::new(&mp).join("data"), mib)?;
        call(
            &socket,
            "VolumeDriver.Unmount",
            json!({"Name": src, "ID": "w"}),
        )?;
    }
    sh(&["sync"])?;
    std::thread::sleep(Duration::from_secs(2));
    for i in 0..rounds.max(3) {
        let mut order = sources.to_vec();
        if i % 2 == 1 {
            order.reverse();
        }
        for (label, mib) in order {
            let (src, name) = (format!("src{mib}"), format!("src{mib}-c{i}"));
            by_size.entry(label).or_default().push(timed(|| {
                call(
                    &socket,
                    "VolumeDriver.Create",
                    json!({"Name": name, "Opts": {"from": src}}),
                )
            })?);
            call(&socket, "VolumeDriver.Remove", json!({"Name": name}))?;
        }
    }
    let io = direct_io_vs_linear(&socket, rounds.max(4))?;
    let _ = daemon.stop(Duration::from_secs(20));

    let mut figures: Vec<(String, String)> = Vec::new();
    let mut med: BTreeMap<String, f64> = BTreeMap::new();
    for (k, mut v) in t.into_iter().chain(by_size) {
        let m = median(&mut v);
        med.insert(k.to_string(), m);
        let spread = format!("{:.0}..{:.0}", v[0], v[v.len() - 1]);
        figures.push((format!("{k}_ms"), format!("{m:.1} (range {spread})")));
    }
    for op in ["create", "clone", "remove"] {
        let ratio = med[&format!("{op}_plugin")] / med[&format!("{op}_hand")];
        figures.push((format!("{op}_ratio_plugin_vs_hand"), format!("{ratio:.3}")));
    }
    let r = med["clone_1GiB_source"] / med["clone_1MiB_source"];
    figures.push(("clone_ratio_1GiB_vs_1MiB".into(), format!("{r:.3}")));
    figures.extend(io);
    for (k, v) in figures {
        println!("FIGURE {k} {v}");
        out.write_all(format!("FIGURE {k} {v}\n").as_bytes())?;
    }
    Ok(())
}

/// Unthrottled direct IO (busybox dd, 1 MiB blocks) on a mounted berth thin volume against the
/// same on a plain linear LV of the same volume group with the same filesystem, alternating
/// within each pair. Returns figures: throughputs and volume/linear ratios.
fn direct_io_vs_linear(socket: &Path, pairs: usize) -> Result<Vec<(String, String)>> {
    const MIB: usize = 128;
    call(
        socket,
        "VolumeDriver.Create",
        json!({"Name": "iobench", "Opts": {"size": "1G", "fs": "xfs"}}),
    )?;
    let (status, v) = docker_call(
        socket,
        "VolumeDriver.Mount",
        Some(&json!({"Name": "iobench", "ID": "io"}).to_string()),
    )?;
    ensure!(status == 200, "{v}");
    let volume_dir = v["Mountpoint"].as_str().unwrap_or_default().to_string();
    sh(&["lvm", "lvcreate", "-q", "-L", "512m", "-n", "linear", VG])?;
    sh(&["mkfs.xfs", "-q", "-K", &dm("linear")])?;
    std::fs::create_dir_all("/linear")?;
    sh(&["mount", &dm("linear"), "/linear"])?;
    let sides = [("volume", volume_dir.as_str()), ("linear", "/linear")];
    for (_, dir) in sides {
        let of = format!("of={dir}/f");
        sh(&[
            "dd",
            "if=/dev/zero",
            &of,
            "bs=1M",
            &format!("count={MIB}"),
            "oflag=direct",
        ])?;
    }
    let mut secs: BTreeMap<String, f64> = BTreeMap::new();
    for pair in 0..pairs {
        let mut order = sides.to_vec();
        if pair % 2 == 1 {
            order.reverse();
        }
        for op in ["write", "read"] {
            for (side, dir) in &order {
                let file = format!("{dir}/f");
                let count = format!("count={MIB}");
                let args: Vec<String> = if op == "write" {
                    vec![
                        "if=/dev/zero".into(),
                        format!("of={file}"),
                        "oflag=direct".into(),
                        "conv=notrunc".into(),
                    ]
                } else {
                    vec![
                        format!("if={file}"),
                        "of=/dev/null".into(),
                        "iflag=direct".into(),
                    ]
                };
                let mut argv: Vec<&str> = vec!["dd", "bs=1M", &count];
                argv.extend(args.iter().map(String::as_str));
                let ms = timed(|| sh(&argv).map(drop))?;
                *secs.entry(format!("{op}_{side}")).or_default() += ms / 1000.0;
            }
        }
    }
    let _ = sh(&["umount", "/linear"]);
    let _ = sh(&["lvm", "lvremove", "--yes", &format!("{VG}/linear")]);
    call(
        socket,
        "VolumeDriver.Unmount",
        json!({"Name": "iobench", "ID": "io"}),
    )?;
    call(socket, "VolumeDriver.Remove", json!({"Name": "iobench"}))?;
    let total = (pairs * MIB) as f64;
    let mut figures = Vec::new();
    for op in ["write", "read"] {
        let (vol, lin) = (
            total / secs[&format!("{op}_volume")],
            total / secs[&format!("{op}_linear")],
        );
        figures.push((format!("direct_{op}_volume_MiB_s"), format!("{vol:.1}")));
        figures.push((format!("direct_{op}_linear_lv_MiB_s"), format!("{lin:.1}")));
        figures.push((
            format!("direct_{op}_ratio_volume_vs_linear"),
            format!("{:.3}", vol / lin),
        ));
    }
    Ok(figures)
}
