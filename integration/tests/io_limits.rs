//! Per-volume IO limits that follow the volume into every container mounting it, measured
//! with O_DIRECT IO from inside real containers (cgroup v1 here: direct IO and reads are
//! throttled, buffered writes are not).
//! Needs root, docker.io, containerd, runc, busybox-static, xfsprogs.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use integration::iomeasure::{dd_rate, run_in_container, timed_dd};
use integration::plugins::{binary, Volplugin, DOCKER_PLUGIN_DIR};
use integration::{harness, DockerEnv};

// Field order is drop order: volplugin stops before the dockerd it watches.
struct Ctx {
    vol: Mutex<Volplugin>,
    docker: DockerEnv,
    _work: tempfile::TempDir,
}

const MIB: f64 = 1048576.0;

fn setup() -> Result<Ctx> {
    harness::require_root_and_tools(&["dockerd", "containerd", "runc", "busybox", "mkfs.xfs"])?;
    let docker = DockerEnv::start()?;
    let work = tempfile::Builder::new().prefix("bl-").tempdir_in("/tmp")?;
    let mut vol = Volplugin::new(
        binary("volplugin")?,
        work.path(),
        std::path::Path::new(DOCKER_PLUGIN_DIR),
    );
    vol.args.extend([
        "--docker-socket".into(),
        docker.socket_path().display().to_string(),
    ]);
    vol.start()?;
    Ok(Ctx {
        docker,
        vol: Mutex::new(vol),
        _work: work,
    })
}

impl Drop for Ctx {
    fn drop(&mut self) {
        if let Ok(ids) = self.docker.ok(&["ps", "-aq"]) {
            for id in ids.split_whitespace() {
                let _ = self.docker.ok(&["rm", "-f", id]);
            }
        }
        if let Ok(names) = self.docker.ok(&["volume", "ls", "-q"]) {
            for name in names.split_whitespace() {
                let _ = self.docker.ok(&["volume", "rm", name]);
            }
        }
    }
}

fn within(measured: f64, expected: f64, what: &str) -> Result<()> {
    let ratio = measured / expected;
    if expected >= MIB {
        println!(
            "    {what}: measured {:.2} MiB/s, expected {:.2} MiB/s, ratio {ratio:.3}",
            measured / MIB,
            expected / MIB
        );
    } else {
        println!(
            "    {what}: measured {measured:.0}/s, expected {expected:.0}/s, ratio {ratio:.3}"
        );
    }
    ensure!(
        (0.85..=1.15).contains(&ratio),
        "{what}: {measured:.0}/s is not within ±15% of {expected:.0}/s"
    );
    Ok(())
}

impl Ctx {
    fn create(&self, name: &str, opts: &[&str]) -> Result<()> {
        let mut args = vec!["volume", "create", "-d", "berth-vol", "-o", "size=1G"];
        args.extend_from_slice(opts);
        args.push(name);
        self.docker.ok(&args)?;
        Ok(())
    }

    /// Runs `script` in a fresh container with `volume` at /data; the container waits a
    /// moment first so that its limits are in place before it does IO.
    fn run_in(&self, volume: &str, script: &str) -> Result<String> {
        run_in_container(&self.docker, volume, &[], script)
    }

    fn exec(&self, container: &str, script: &str) -> Result<String> {
        let out = self
            .docker
            .command()
            .args(["exec", container, "sh", "-c", script])
            .output()?;
        ensure!(
            out.status.success(),
            "exec failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }

    fn set_limits(&self, volume: &str, flags: &[&str]) -> Result<()> {
        let vol = self.vol.lock().expect("volplugin");
        vol.admin_text(&[&["volume", "set-limits", volume], flags].concat())
            .map(drop)
    }

    fn status(&self, volume: &str) -> Result<serde_json::Value> {
        let out = self
            .docker
            .ok(&["volume", "inspect", volume, "--format", "{{json .Status}}"])?;
        Ok(serde_json::from_str(&out)?)
    }

    fn hold(&self, name: &str, volume: &str) -> Result<()> {
        self.docker.hold(name, volume).map(drop)
    }
}

fn write_8m() -> String {
    timed_dd(
        "if=/dev/zero of=/data/f bs=1M count=8 oflag=direct",
        8 << 20,
    )
}

fn write_bps_is_enforced(c: &Ctx) -> Result<()> {
    c.create("lim-w", &["-o", "write_bps=2M"])?;
    let status = c.status("lim-w")?;
    ensure!(
        status["write_bps"] == 2u64 << 20,
        "Status shows the limit: {status}"
    );
    within(
        dd_rate(&c.run_in("lim-w", &write_8m())?)?,
        2.0 * MIB,
        "write_bps=2M",
    )?;
    Ok(())
}

fn live_change_and_observed_rate(c: &Ctx) -> Result<()> {
    c.create("lim-live", &["-o", "write_bps=2M"])?;
    c.hold("live-writer", "lim-live")?;
    // A long direct write in the background; watch the observed rate change with the limit.
    c.docker.ok(&[
        "exec",
        "-d",
        "live-writer",
        "sh",
        "-c",
        "dd if=/dev/zero of=/data/big bs=256k count=400 oflag=direct 2>/data/dd.log",
    ])?;
    std::thread::sleep(Duration::from_secs(5));
    let seen = c.status("lim-live")?["observed"]["write_bytes_per_second"]
        .as_f64()
        .context("observed rate in Status")?;
    within(seen, 2.0 * MIB, "observed before the change (Status)")?;
    let changed = Instant::now();
    c.set_limits("lim-live", &["--write-bps", "4M"])?;
    std::thread::sleep(Duration::from_secs(5));
    let seen = c.status("lim-live")?["observed"]["write_bytes_per_second"]
        .as_f64()
        .context("observed rate")?;
    within(seen, 4.0 * MIB, "observed after set-limits 4M (Status)")?;
    println!(
        "    change observed within {:.1} s (two 2 s samples)",
        changed.elapsed().as_secs_f64()
    );
    c.set_limits("lim-live", &["--write-bps", "max"])?;
    ensure!(
        c.status("lim-live")?.get("write_bps").is_none(),
        "limit removed"
    );
    c.docker.ok(&["rm", "-f", "live-writer"])?;
    Ok(())
}

fn second_container_is_limited_too(c: &Ctx) -> Result<()> {
    c.create("lim-two", &["-o", "write_bps=2M"])?;
    c.hold("two-a", "lim-two")?;
    c.hold("two-b", "lim-two")?;
    let b = std::thread::scope(|s| {
        let other = s.spawn(|| {
            c.exec(
                "two-b",
                &timed_dd(
                    "if=/dev/zero of=/data/fb bs=1M count=8 oflag=direct",
                    8 << 20,
                ),
            )
        });
        let a = c.exec(
            "two-a",
            &timed_dd(
                "if=/dev/zero of=/data/fa bs=1M count=8 oflag=direct",
                8 << 20,
            ),
        );
        (a, other.join().expect("thread"))
    });
    within(dd_rate(&b.0?)?, 2.0 * MIB, "first container")?;
    within(dd_rate(&b.1?)?, 2.0 * MIB, "second container, same volume")?;
    c.docker.ok(&["rm", "-f", "two-a", "two-b"])?;
    Ok(())
}

fn limits_survive_restarts(c: &Ctx) -> Result<()> {
    c.create("lim-restart", &["-o", "write_bps=2M"])?;
    c.hold("restarter", "lim-restart")?;
    {
        let mut vol = c.vol.lock().expect("volplugin");
        vol.stop()?;
        vol.start()?;
    }
    std::thread::sleep(Duration::from_millis(700));
    within(
        dd_rate(&c.exec("restarter", &write_8m())?)?,
        2.0 * MIB,
        "after a volplugin restart",
    )?;
    c.docker.ok(&["restart", "restarter"])?;
    std::thread::sleep(Duration::from_millis(700));
    within(
        dd_rate(&c.exec("restarter", &write_8m())?)?,
        2.0 * MIB,
        "after a container restart (new cgroup)",
    )?;
    c.docker.ok(&["rm", "-f", "restarter"])?;
    Ok(())
}

fn unlimited_volume_and_removed_limit_run_at_full_speed(c: &Ctx) -> Result<()> {
    c.create("free", &[])?;
    let free = dd_rate(&c.run_in(
        "free",
        &timed_dd(
            "if=/dev/zero of=/data/f bs=1M count=64 oflag=direct",
            64 << 20,
        ),
    )?)?;
    println!("    unlimited volume: {:.1} MiB/s", free / MIB);
    ensure!(
        free > 10.0 * MIB,
        "a container without a limited volume is unaffected: {:.1} MiB/s",
        free / MIB
    );
    c.create("lim-lift", &["-o", "write_bps=2M"])?;
    within(
        dd_rate(&c.run_in("lim-lift", &write_8m())?)?,
        2.0 * MIB,
        "limited",
    )?;
    c.set_limits("lim-lift", &["--write-bps", "0"])?;
    let lifted = dd_rate(&c.run_in(
        "lim-lift",
        &timed_dd(
            "if=/dev/zero of=/data/f bs=1M count=64 oflag=direct",
            64 << 20,
        ),
    )?)?;
    println!("    limit removed: {:.1} MiB/s", lifted / MIB);
    ensure!(
        lifted > 10.0 * MIB,
        "removing the limit restores full speed: {:.1} MiB/s",
        lifted / MIB
    );
    Ok(())
}

fn read_bps_and_iops_are_enforced(c: &Ctx) -> Result<()> {
    c.create("lim-r", &[])?;
    c.run_in("lim-r", &write_8m())?;
    c.set_limits("lim-r", &["--read-bps", "2M"])?;
    within(
        dd_rate(&c.run_in(
            "lim-r",
            &timed_dd("if=/data/f of=/dev/null bs=1M iflag=direct", 8 << 20),
        )?)?,
        2.0 * MIB,
        "read_bps=2M",
    )?;
    c.set_limits("lim-r", &["--read-bps", "max", "--read-iops", "200"])?;
    let rate = dd_rate(&c.run_in(
        "lim-r",
        &timed_dd(
            "if=/data/f of=/dev/null bs=4k count=600 iflag=direct",
            600 * 4096,
        ),
    )?)?;
    within(rate / 4096.0, 200.0, "read_iops=200 (4 KiB reads/s)")?;
    c.set_limits("lim-r", &["--read-iops", "max", "--write-iops", "200"])?;
    let rate = dd_rate(&c.run_in(
        "lim-r",
        &timed_dd(
            "if=/dev/zero of=/data/g bs=4k count=600 oflag=direct",
            600 * 4096,
        ),
    )?)?;
    within(rate / 4096.0, 200.0, "write_iops=200 (4 KiB writes/s)")?;
    Ok(())
}

fn docker_down_then_back(c: &Ctx) -> Result<()> {
    c.docker.stop_dockerd()?;
    // The volume API keeps working while Docker is away.
    let (status, body) = c.vol.lock().expect("volplugin").call(
        "VolumeDriver.Create",
        Some(r#"{"Name":"lim-away","Opts":{"write_bps":"2M","size":"1G"}}"#),
    )?;
    ensure!(status == 200, "{status} {body}");
    c.docker.start_dockerd()?;
    // The throttler reconnects with backoff (at most 10 s) and then serves new containers.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rate = dd_rate(&c.run_in("lim-away", &write_8m())?)?;
        if (rate / (2.0 * MIB) - 1.0).abs() <= 0.15 {
            return within(rate, 2.0 * MIB, "after Docker came back");
        }
        if Instant::now() > deadline {
            bail!(
                "limits not applied 30 s after Docker came back: {:.2} MiB/s",
                rate / MIB
            );
        }
    }
}

fn main() {
    harness::run(
        "io_limits",
        setup,
        &[
            ("write_bps_is_enforced", write_bps_is_enforced),
            (
                "live_change_and_observed_rate",
                live_change_and_observed_rate,
            ),
            (
                "second_container_is_limited_too",
                second_container_is_limited_too,
            ),
            ("limits_survive_restarts", limits_survive_restarts),
            (
                "unlimited_volume_and_removed_limit_run_at_full_speed",
                unlimited_volume_and_removed_limit_run_at_full_speed,
            ),
            (
                "read_bps_and_iops_are_enforced",
                read_bps_and_iops_are_enforced,
            ),
            ("docker_down_then_back", docker_down_then_back),
        ],
    )
}
