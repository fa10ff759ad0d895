//! IO through berth volumes: unthrottled direct IO in a container on a volume next to the same
//! IO by the same busybox dd on the host filesystem that holds the volume images (measured in
//! the same run), and a table of requested vs measured IO limits.
//!
//! `cargo run --release -p integration --bin bench_io -- [--mib 512] [--rounds 10]`
//! (as root; `bash scripts/bench.sh io` does the same).

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use integration::iomeasure::{dd_rate, run_in_container, timed_dd};
use integration::plugins::{binary, Volplugin, DOCKER_PLUGIN_DIR};
use integration::DockerEnv;

const MIB: f64 = 1048576.0;

fn in_container(docker: &DockerEnv, volume: &str, script: &str) -> Result<f64> {
    dd_rate(&run_in_container(docker, volume, &[], script)?)
}

/// A shell snippet that runs `dd ARGS` (several at once: `streams` dd's, each on its own file
/// `PATH.N` and a 1/streams share of the bytes) and prints `T LABEL START END`.
fn timed(label: &str, streams: u64, dd: impl Fn(u64) -> String) -> String {
    let runs: Vec<String> = (0..streams)
        .map(|n| format!("dd {} 2>/dev/null &", dd(n)))
        .collect();
    format!(
        "a=$(cut -d' ' -f1 /proc/uptime); {} wait; b=$(cut -d' ' -f1 /proc/uptime); echo \"T {label} $a $b\"; ",
        runs.join(" ")
    )
}

/// Seconds per label, summed, and per pair, from the `T` lines of [`timed`].
fn durations(output: &str) -> Result<std::collections::BTreeMap<String, Vec<f64>>> {
    let mut by_label = std::collections::BTreeMap::<String, Vec<f64>>::new();
    for line in output.lines().filter(|l| l.starts_with("T ")) {
        let f: Vec<&str> = line.split_whitespace().collect();
        ensure!(f.len() == 4, "bad timing line {line:?}");
        let (a, b): (f64, f64) = (f[2].parse()?, f[3].parse()?);
        by_label.entry(f[1].to_string()).or_default().push(b - a);
    }
    Ok(by_label)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let mut mib: u64 = 512;
    let mut rounds = 10;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--mib" => mib = args.next().context("--mib N")?.parse()?,
            "--rounds" => rounds = args.next().context("--rounds N")?.parse()?,
            "--bench" => {}
            other => bail!("unknown argument {other}; use --mib N --rounds N"),
        }
    }
    ensure!(
        (16..=4096).contains(&mib) && (2..=40).contains(&rounds),
        "--mib 16..4096, --rounds 2..40"
    );
    integration::harness::require_root_and_tools(&[
        "dockerd",
        "containerd",
        "busybox",
        "mkfs.xfs",
    ])?;
    let docker = DockerEnv::start()?;
    let work = tempfile::Builder::new()
        .prefix("bi-")
        .tempdir_in("/var/tmp")?;
    let mut vol = Volplugin::new(
        binary("volplugin")?,
        &work.path().join("vol"),
        Path::new(DOCKER_PLUGIN_DIR),
    );
    vol.args.extend([
        "--docker-socket".to_string(),
        docker.socket_path().display().to_string(),
    ]);
    vol.start()?;
    let raw = work.path().join("raw");
    std::fs::create_dir(&raw)?;

    let size = format!("size={}M", mib * 3 + 512);
    docker.ok(&[
        "volume",
        "create",
        "-d",
        "berth-vol",
        "-o",
        &size,
        "bench-free",
    ])?;
    // Both sides run in one container, in one cgroup, with the same busybox dd, alternating
    // within each pair (ABBA) so the virtual disk's drift hits both alike: /data is the volume,
    // /raw a directory on the filesystem that holds the volume images.
    let raw_mount = format!("{}:/raw", raw.display());
    let per_stream = |streams: u64| mib / streams;
    let mut script = String::new();
    for streams in [1u64, 4] {
        for n in 0..streams {
            for dir in ["/data", "/raw"] {
                script += &format!(
                    "dd if=/dev/zero of={dir}/f{streams}.{n} bs=1M count={} oflag=direct 2>/dev/null || exit 1; ",
                    per_stream(streams)
                );
            }
        }
    }
    for pair in 0..rounds {
        for streams in [1u64, 4] {
            let sides = if pair % 2 == 0 {
                ["vol", "raw"]
            } else {
                ["raw", "vol"]
            };
            for op in ["write", "read"] {
                for side in sides {
                    let dir = if side == "vol" { "/data" } else { "/raw" };
                    let count = per_stream(streams);
                    script += &timed(&format!("{op}-{streams}-{side}"), streams, |n| {
                        if op == "write" {
                            format!("if=/dev/zero of={dir}/f{streams}.{n} bs=1M count={count} oflag=direct conv=notrunc")
                        } else {
                            format!("if={dir}/f{streams}.{n} of=/dev/null bs=1M count={count} iflag=direct")
                        }
                    });
                }
            }
        }
    }
    let times = durations(&run_in_container(
        &docker,
        "bench-free",
        &[&raw_mount],
        &script,
    )?)?;
    println!(
        "unthrottled direct IO, {mib} MiB in 1 MiB blocks per measurement, {rounds} alternating pairs"
    );
    println!(
        "  (one container: busybox dd on a berth-vol loopfile volume and on a directory of the"
    );
    println!(
        "   filesystem that holds the volume images, {}; ratio = volume / host file throughput)",
        work.path().display()
    );
    for streams in [1u64, 4] {
        for op in ["write", "read"] {
            let get = |side: &str| {
                times
                    .get(&format!("{op}-{streams}-{side}"))
                    .cloned()
                    .unwrap_or_default()
            };
            let (vol_t, raw_t) = (get("vol"), get("raw"));
            ensure!(
                vol_t.len() == rounds && raw_t.len() == rounds,
                "missing timings for {op} with {streams} streams"
            );
            let rate =
                |t: &[f64]| (rounds as f64 * (mib << 20) as f64) / t.iter().sum::<f64>() / MIB;
            let pair_ratios: Vec<f64> = vol_t.iter().zip(&raw_t).map(|(v, r)| r / v).collect();
            println!(
                "  {op:<5} {streams} stream{} volume {:8.1} MiB/s   host file {:8.1} MiB/s   ratio {:.3} (median pair {:.3})   goal >= 0.95",
                if streams == 1 { " " } else { "s" },
                rate(&vol_t),
                rate(&raw_t),
                rate(&vol_t) / rate(&raw_t),
                median(pair_ratios)
            );
        }
    }

    // The file the read limits below read.
    run_in_container(
        &docker,
        "bench-free",
        &[],
        &format!("dd if=/dev/zero of=/data/f bs=1M count={mib} oflag=direct"),
    )?;
    println!();
    println!("requested vs measured limits (one container, O_DIRECT, ~4 s of IO each)");
    println!(
        "  {:<11} {:>12} {:>12} {:>8}",
        "limit", "requested", "measured", "ratio"
    );
    let cases: [(&str, &str, f64, &str, u64); 7] = [
        (
            "write_bps",
            "1M",
            MIB,
            "if=/dev/zero of=/data/w bs=256k count=16 oflag=direct",
            4 << 20,
        ),
        (
            "write_bps",
            "4M",
            4.0 * MIB,
            "if=/dev/zero of=/data/w bs=1M count=16 oflag=direct",
            16 << 20,
        ),
        (
            "write_bps",
            "16M",
            16.0 * MIB,
            "if=/dev/zero of=/data/w bs=1M count=64 oflag=direct",
            64 << 20,
        ),
        (
            "read_bps",
            "4M",
            4.0 * MIB,
            "if=/data/f of=/dev/null bs=1M count=16 iflag=direct",
            16 << 20,
        ),
        (
            "write_iops",
            "100",
            100.0,
            "if=/dev/zero of=/data/w bs=4k count=400 oflag=direct",
            400 * 4096,
        ),
        (
            "write_iops",
            "500",
            500.0,
            "if=/dev/zero of=/data/w bs=4k count=2000 oflag=direct",
            2000 * 4096,
        ),
        (
            "read_iops",
            "300",
            300.0,
            "if=/data/f of=/dev/null bs=4k count=1200 iflag=direct",
            1200 * 4096,
        ),
    ];
    for (limit, value, expected, dd, bytes) in cases {
        let flag = format!("--{}", limit.replace('_', "-"));
        vol.admin_text(&[
            "volume",
            "set-limits",
            "bench-free",
            "--read-bps",
            "max",
            "--write-bps",
            "max",
            "--read-iops",
            "max",
            "--write-iops",
            "max",
        ])
        .context("clearing limits")?;
        vol.admin_text(&["volume", "set-limits", "bench-free", &flag, value])?;
        let rate = in_container(&docker, "bench-free", &timed_dd(dd, bytes))?;
        let measured = if limit.ends_with("iops") {
            rate / 4096.0
        } else {
            rate
        };
        let show = |x: f64| {
            if limit.ends_with("iops") {
                format!("{x:.0}/s")
            } else {
                format!("{:.2} MiB/s", x / MIB)
            }
        };
        println!(
            "  {limit:<11} {:>12} {:>12} {:>8.3}",
            show(expected),
            show(measured),
            measured / expected
        );
    }
    docker.ok(&["volume", "rm", "bench-free"])?;
    vol.stop()?;
    docker.stop()?;
    Ok(())
}
