//! Volume lifecycle benchmark: volplugin next to the same work done with the raw tools, and
//! Docker's `local` driver next to berth-vol through dockerd, all measured in the same run.
//!
//! `cargo run --release -p integration --bin bench_volumes -- [--cycles N] [--docker-cycles N] [--size 10G]`
//! (as root; `bash scripts/bench.sh volumes` does the same).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use integration::plugins::{binary, docker_call, Volplugin, DOCKER_PLUGIN_DIR};
use integration::{DockerEnv, TEST_IMAGE};

struct Args {
    cycles: usize,
    docker_cycles: usize,
    size: String,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        cycles: 50,
        docker_cycles: 10,
        size: "10G".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--cycles" => args.cycles = value()?.parse().context("--cycles")?,
            "--docker-cycles" => {
                args.docker_cycles = value()?.parse().context("--docker-cycles")?
            }
            "--size" => args.size = value()?,
            "--bench" => {}
            other => {
                bail!("unknown argument {other}; use --cycles N --docker-cycles N --size SIZE")
            }
        }
    }
    ensure!(
        args.cycles >= 1 && args.cycles <= 1000,
        "--cycles must be 1..1000"
    );
    ensure!(args.docker_cycles <= 200, "--docker-cycles must be 0..200");
    Ok(args)
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// What an operator would type without Berth.
fn raw_cycle(dir: &Path, size: &str, i: usize) -> Result<Duration> {
    let image = dir.join(format!("raw{i}.img"));
    let target = dir.join(format!("raw{i}.mnt"));
    let t = Instant::now();
    run(Command::new("truncate").arg("-s").arg(size).arg(&image))?;
    let dev = run(Command::new("losetup").args(["-f", "--show"]).arg(&image))?;
    run(Command::new("mkfs.xfs").arg("-q").arg(&dev))?;
    std::fs::create_dir(&target)?;
    run(Command::new("mount").arg(&dev).arg(&target))?;
    run(Command::new("umount").arg(&target))?;
    run(Command::new("losetup").arg("-d").arg(&dev))?;
    std::fs::remove_dir(&target)?;
    std::fs::remove_file(&image)?;
    Ok(t.elapsed())
}

/// The same through volplugin's socket, as dockerd would call it. Returns the total and
/// the time of each step.
fn plugin_cycle(socket: &Path, size: &str, i: usize) -> Result<(Duration, [Duration; 4])> {
    let name = format!("bench{i}");
    let mut steps = [Duration::ZERO; 4];
    let calls = [
        (
            "VolumeDriver.Create",
            format!(r#"{{"Name":"{name}","Opts":{{"size":"{size}"}}}}"#),
        ),
        (
            "VolumeDriver.Mount",
            format!(r#"{{"Name":"{name}","ID":"bench"}}"#),
        ),
        (
            "VolumeDriver.Unmount",
            format!(r#"{{"Name":"{name}","ID":"bench"}}"#),
        ),
        ("VolumeDriver.Remove", format!(r#"{{"Name":"{name}"}}"#)),
    ];
    let t = Instant::now();
    for (step, (method, body)) in calls.iter().enumerate() {
        let s = Instant::now();
        let (status, reply) = docker_call(socket, method, Some(body))?;
        ensure!(status == 200, "{method}: {status} {reply}");
        steps[step] = s.elapsed();
    }
    Ok((t.elapsed(), steps))
}

fn docker_cycle(docker: &DockerEnv, driver: &str, opts: &[&str], i: usize) -> Result<Duration> {
    let name = format!("dbench-{driver}-{i}");
    let spec = format!("{name}:/data");
    let t = Instant::now();
    let mut create = vec!["volume", "create", "-d", driver];
    create.extend_from_slice(opts);
    create.push(&name);
    docker.ok(&create)?;
    docker.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        &spec,
        TEST_IMAGE,
        "true",
    ])?;
    docker.ok(&["volume", "rm", &name])?;
    Ok(t.elapsed())
}

fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

fn ms(d: Duration) -> String {
    format!("{:8.2} ms", d.as_secs_f64() * 1000.0)
}

fn row(label: &str, samples: &[Duration]) {
    println!(
        "  {label:<58} median {}  p95 {}",
        ms(percentile(samples, 0.5)),
        ms(percentile(samples, 0.95))
    );
}

fn ratio(label: &str, ours: &[Duration], baseline: &[Duration], goal: Option<f64>) {
    let r = |p| percentile(ours, p).as_secs_f64() / percentile(baseline, p).as_secs_f64();
    let goal = goal
        .map(|g| format!("   (goal <= {g:.2})"))
        .unwrap_or_default();
    println!(
        "  {label:<58} median {:8.3}     p95 {:8.3}{goal}",
        r(0.5),
        r(0.95)
    );
}

fn main() -> Result<()> {
    let args = parse_args()?;
    integration::harness::require_root_and_tools(&[
        "truncate",
        "losetup",
        "mkfs.xfs",
        "mount",
        "umount",
        "dockerd",
        "containerd",
    ])?;
    let bin = binary("volplugin")?;
    let work = tempfile::Builder::new()
        .prefix("bb-")
        .tempdir_in("/var/tmp")
        .context("work dir")?;
    let raw_dir: PathBuf = work.path().join("raw");
    std::fs::create_dir(&raw_dir)?;
    let mut vol = Volplugin::new(bin, &work.path().join("vol"), Path::new(DOCKER_PLUGIN_DIR));
    vol.start()?;
    let socket = vol.socket();

    println!(
        "volume lifecycle: create + mount + unmount + remove, {} xfs, {} cycles each, interleaved",
        args.size, args.cycles
    );
    println!(
        "  work dir {} (the same filesystem for both)",
        work.path().display()
    );
    // One warm-up of each so that page cache and binaries are in the same state for both.
    raw_cycle(&raw_dir, &args.size, 0)?;
    plugin_cycle(&socket, &args.size, 0)?;
    let mut raw = Vec::new();
    let mut plugin = Vec::new();
    let mut steps: [Vec<Duration>; 4] = Default::default();
    for i in 1..=args.cycles {
        raw.push(raw_cycle(&raw_dir, &args.size, i)?);
        let (total, per_step) = plugin_cycle(&socket, &args.size, i)?;
        plugin.push(total);
        for (k, d) in per_step.iter().enumerate() {
            steps[k].push(*d);
        }
    }
    row(
        "raw tools (truncate, losetup, mkfs.xfs, mount, umount, losetup -d, rm)",
        &raw,
    );
    row("volplugin (Docker plugin protocol on its socket)", &plugin);
    for (k, name) in ["Create", "Mount", "Unmount", "Remove"].iter().enumerate() {
        row(&format!("  of which VolumeDriver.{name}"), &steps[k]);
    }
    ratio("ratio volplugin / raw tools", &plugin, &raw, Some(1.10));
    println!("  (volplugin runs mkfs on the image file before any loop device exists and attaches loop devices");
    println!("   by ioctl; the raw sequence forks losetup and runs mkfs on the loop device)");

    if args.docker_cycles > 0 {
        let docker = DockerEnv::start()?;
        println!();
        println!("through dockerd: docker volume create + docker run --rm -v + docker volume rm, {} cycles each, interleaved", args.docker_cycles);
        docker_cycle(&docker, "local", &[], 0)?;
        docker_cycle(
            &docker,
            "berth-vol",
            &["-o", &format!("size={}", args.size)],
            0,
        )?;
        let mut local = Vec::new();
        let mut berth = Vec::new();
        for i in 1..=args.docker_cycles {
            local.push(docker_cycle(&docker, "local", &[], i)?);
            berth.push(docker_cycle(
                &docker,
                "berth-vol",
                &["-o", &format!("size={}", args.size)],
                i,
            )?);
        }
        row(
            "Docker's local driver (a directory, no size, no filesystem)",
            &local,
        );
        row(
            &format!("berth-vol ({} xfs on a loop device)", args.size),
            &berth,
        );
        ratio(
            "ratio berth-vol / local (for reference)",
            &berth,
            &local,
            None,
        );
        docker.stop()?;
    }
    vol.stop()?;
    Ok(())
}
