//! Smoke test of the harness itself: a private dockerd runs busybox containers, keeps `local`
//! volumes across containers, survives a restart, and leaves nothing behind.
//! Needs root, docker.io, containerd, runc and busybox-static.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{ensure, Context as _, Result};
use integration::docker::mounts_under;
use integration::procs::{pid_alive, pids_with_cmdline_containing};
use integration::{harness, DockerEnv, TEST_IMAGE};

struct Ctx {
    docker: DockerEnv,
}

fn setup() -> Result<Ctx> {
    harness::require_root_and_tools(&["dockerd", "containerd", "runc", "busybox"])?;
    let t = Instant::now();
    let docker = DockerEnv::start()?;
    let driver = docker.ok(&["info", "--format", "{{.Driver}} {{.CgroupDriver}}"])?;
    println!(
        "dockerd up in {:.1}s at {} (storage driver, cgroup driver: {driver})",
        t.elapsed().as_secs_f64(),
        docker.host()
    );
    Ok(Ctx { docker })
}

fn run_hello(c: &Ctx) -> Result<()> {
    let out = c.docker.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        TEST_IMAGE,
        "echo",
        "hello",
    ])?;
    ensure!(out == "hello", "expected hello, got {out:?}");
    // No network beyond loopback, and the applets tests rely on are there.
    let out = c.docker.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        TEST_IMAGE,
        "sh",
        "-c",
        "ls /sys/class/net; for a in sh ls cat dd sleep mkdir rm sync df stat wc head md5sum \
         sha256sum nc ping ip ifconfig true false test seq printf hostname id mount; do \
         command -v $a >/dev/null || echo missing $a; done",
    ])?;
    ensure!(out == "lo", "expected only lo and all applets, got {out:?}");
    Ok(())
}

fn local_volume(c: &Ctx) -> Result<()> {
    let d = &c.docker;
    d.ok(&["volume", "create", "smoke-vol"])?;
    d.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        "smoke-vol:/data",
        TEST_IMAGE,
        "sh",
        "-c",
        "echo persisted > /data/f && sync",
    ])?;
    let out = d.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        "smoke-vol:/data:ro",
        TEST_IMAGE,
        "cat",
        "/data/f",
    ])?;
    ensure!(out == "persisted", "read back {out:?}");
    d.ok(&["volume", "rm", "smoke-vol"])?;
    let err = d.fails(&["volume", "inspect", "smoke-vol"])?;
    // 20.10: "No such volume"; 26: "no such volume".
    ensure!(
        err.to_ascii_lowercase().contains("no such volume"),
        "unexpected error: {err}"
    );
    Ok(())
}

fn restart_dockerd(c: &Ctx) -> Result<()> {
    let d = &c.docker;
    // A container left running: the restart must not hang on it, teardown must remove it.
    d.ok(&[
        "run",
        "-d",
        "--name",
        "sleeper",
        // sleep as pid 1 ignores SIGTERM: without this, dockerd's shutdown waits 10 s for it.
        "--stop-timeout",
        "1",
        "--network",
        "none",
        TEST_IMAGE,
        "sleep",
        "600",
    ])?;
    let before = d.dockerd_pid().context("dockerd not running")?;
    let t = Instant::now();
    d.restart_dockerd()?;
    let after = d
        .dockerd_pid()
        .context("dockerd not running after restart")?;
    ensure!(
        before != after && !pid_alive(before),
        "dockerd was not restarted"
    );
    println!("    restart took {:.1}s", t.elapsed().as_secs_f64());
    let out = d.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        TEST_IMAGE,
        "echo",
        "again",
    ])?;
    ensure!(out == "again", "got {out:?}");
    d.ok(&["start", "sleeper"])?;
    Ok(())
}

fn teardown_leaves_nothing(_c: &Ctx) -> Result<()> {
    // A second, short-lived environment (no image import, to stay fast), alongside the first.
    let env = DockerEnv::start_with(integration::DockerOptions {
        import_test_image: false,
        ..Default::default()
    })?;
    let dir: PathBuf = env.dir().to_path_buf();
    let pids = [env.dockerd_pid(), env.containerd_pid()];
    let pids: Vec<u32> = pids.into_iter().flatten().collect();
    ensure!(pids.len() == 2, "daemons not both running: {pids:?}");
    env.stop()?;
    for p in &pids {
        ensure!(!pid_alive(*p), "pid {p} survived teardown");
    }
    let needle = format!("{}/", dir.display());
    let left = pids_with_cmdline_containing(&needle);
    ensure!(left.is_empty(), "processes survived teardown: {left:?}");
    ensure!(
        mounts_under(&dir).is_empty(),
        "mounts left under {}",
        dir.display()
    );
    ensure!(!dir.exists(), "{} still exists", dir.display());
    Ok(())
}

fn main() {
    harness::run(
        "harness_smoke",
        setup,
        &[
            ("run_hello", run_hello),
            ("local_volume", local_volume),
            ("restart_dockerd", restart_dockerd),
            ("teardown_leaves_nothing", teardown_leaves_nothing),
        ],
    );
}
