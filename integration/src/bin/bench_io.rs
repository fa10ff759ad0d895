//! IO through berth volumes: unthrottled direct IO in a container on a volume next to the same
//! IO by the same busybox dd on the host filesystem that holds the volume images (measured in
//! the same run), and a table of requested vs measured IO limits.
//!
//! `cargo run --release -p integration --bin bench_io -- [--mib 256] [--rounds 3]`
//! (as root; `bash scripts/bench.sh io` does the same).

use std::path::Path;
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use integration::iomeasure::{dd_rate, timed_dd};
use integration::plugins::{binary, Volplugin, DOCKER_PLUGIN_DIR};
use integration::{DockerEnv, TEST_IMAGE};

const MIB: f64 = 1048576.0;

fn in_container(docker: &DockerEnv, volume: &str, script: &str) -> Result<f64> {
    let spec = format!("{volume}:/data");
    // A moment for volplugin to apply the volume's limits to the new container's cgroup.
    let full = format!("sleep 1; {script}");
    let out = docker
        .command()
        .args([
            "run",
            "--rm",
            "--network",
            "none",
            "-v",
            &spec,
            TEST_IMAGE,
            "sh",
            "-c",
            &full,
        ])
        .output()?;
    ensure!(
        out.status.success(),
        "container: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dd_rate(&String::from_utf8_lossy(&out.stdout))
}

fn on_host(dir: &Path, script: &str) -> Result<f64> {
    let out = Command::new("busybox")
        .args(["sh", "-c", script])
        .current_dir(dir)
        .output()?;
    ensure!(
        out.status.success(),
        "host dd: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dd_rate(&String::from_utf8_lossy(&out.stdout))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let mut mib: u64 = 256;
    let mut rounds = 3;
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
        (16..=4096).contains(&mib) && (1..=20).contains(&rounds),
        "--mib 16..4096, --rounds 1..20"
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

    let size = format!("size={}M", mib * 2 + 512);
    docker.ok(&[
        "volume",
        "create",
        "-d",
        "berth-vol",
        "-o",
        &size,
        "bench-free",
    ])?;
    let bytes = mib << 20;
    let write = timed_dd(
        &format!("if=/dev/zero of=/data/f bs=1M count={mib} oflag=direct"),
        bytes,
    );
    let read = timed_dd(
        &format!("if=/data/f of=/dev/null bs=1M count={mib} iflag=direct"),
        bytes,
    );
    let (host_write, host_read) = (write.replace("/data/", "./"), read.replace("/data/", "./"));
    let (mut vw, mut vr, mut hw, mut hr) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        vw.push(in_container(&docker, "bench-free", &write)?);
        hw.push(on_host(&raw, &host_write)?);
        vr.push(in_container(&docker, "bench-free", &read)?);
        hr.push(on_host(&raw, &host_read)?);
    }
    println!(
        "unthrottled direct IO, {mib} MiB in 1 MiB blocks, median of {rounds} interleaved rounds"
    );
    println!("  (volume: busybox dd in a container on a berth-vol loopfile volume; baseline: the same dd on the host,");
    println!(
        "   on the filesystem that holds the volume images, {})",
        work.path().display()
    );
    for (what, v, h) in [
        ("write", median(vw), median(hw)),
        ("read", median(vr), median(hr)),
    ] {
        println!("  {what:<6} volume {:9.1} MiB/s   host file {:9.1} MiB/s   ratio {:.3}   (goal >= 0.95)", v / MIB, h / MIB, v / h);
    }

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
        let out = Command::new(&vol.bin)
            .args([
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
            .arg("--admin-socket")
            .arg(&vol.admin_socket)
            .output()?;
        ensure!(
            out.status.success(),
            "clearing limits: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = Command::new(&vol.bin)
            .args([
                "volume",
                "set-limits",
                "bench-free",
                &flag,
                value,
                "--admin-socket",
            ])
            .arg(&vol.admin_socket)
            .output()?;
        ensure!(
            out.status.success(),
            "set-limits: {}",
            String::from_utf8_lossy(&out.stderr)
        );
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
