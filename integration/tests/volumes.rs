//! volplugin on the loopfile backend, end to end: a private dockerd, the real docker CLI, the
//! busybox image, and volplugin serving /run/docker/plugins/berth-vol.sock.
//! Needs root, docker.io, containerd, runc, busybox-static, xfsprogs and e2fsprogs.

use std::sync::Mutex;
use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use integration::plugins::{attached_loops, binary, mountinfo, Volplugin, DOCKER_PLUGIN_DIR};
use integration::{harness, DockerEnv, DockerVersion, TEST_IMAGE};
use serde_json::Value;

struct Ctx {
    docker: DockerEnv,
    vol: Mutex<Volplugin>,
    work: tempfile::TempDir,
}

fn setup() -> Result<Ctx> {
    harness::require_root_and_tools(&[
        "dockerd",
        "containerd",
        "runc",
        "busybox",
        "mkfs.xfs",
        "mkfs.ext4",
    ])?;
    let bin = binary("volplugin")?;
    let work = tempfile::Builder::new().prefix("bv-").tempdir_in("/tmp")?;
    let docker = DockerEnv::start()?;
    let mut vol = Volplugin::new(bin, work.path(), std::path::Path::new(DOCKER_PLUGIN_DIR));
    // The test dockerd, which `volume mounts clear` asks about containers.
    vol.args.extend([
        "--docker-socket".into(),
        docker.socket_path().display().to_string(),
    ]);
    vol.start()?;
    Ok(Ctx {
        docker,
        vol: Mutex::new(vol),
        work,
    })
}

impl Drop for Ctx {
    fn drop(&mut self) {
        // Containers first (their Unmounts reach volplugin), then volplugin, then whatever a
        // failed test left mounted or attached under our work dir.
        if let Ok(ids) = self.docker.ok(&["ps", "-aq"]) {
            for id in ids.split_whitespace() {
                let _ = self.docker.ok(&["rm", "-f", id]);
            }
        }
        if let Ok(mut vol) = self.vol.lock() {
            if let Err(e) = vol.stop() {
                eprintln!("teardown: {e:#}");
            }
        }
        let work = self
            .work
            .path()
            .canonicalize()
            .unwrap_or_else(|_| self.work.path().to_path_buf());
        for (point, _) in mountinfo().unwrap_or_default().into_iter().rev() {
            if point.starts_with(&work) {
                if let Err(e) = nix::mount::umount2(&point, nix::mount::MntFlags::MNT_DETACH) {
                    eprintln!("teardown: unmount {}: {e}", point.display());
                }
            }
        }
        for (dev, backing) in attached_loops() {
            if backing.starts_with(&work) {
                eprintln!(
                    "teardown: loop device {dev} still attached to {}",
                    backing.display()
                );
            }
        }
    }
}

impl Ctx {
    fn vol(&self) -> std::sync::MutexGuard<'_, Volplugin> {
        self.vol.lock().expect("volplugin lock")
    }

    fn status(&self, name: &str) -> Result<Value> {
        let out = self
            .docker
            .ok(&["volume", "inspect", name, "--format", "{{json .Status}}"])?;
        serde_json::from_str(&out).with_context(|| format!("Status of {name}: {out}"))
    }

    fn run(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["run", "--rm", "--network", "none"];
        full.extend_from_slice(args);
        self.docker.ok(&full)
    }

    /// A long-running container holding `volume` at /data.
    fn hold(&self, name: &str, volume: &str) -> Result<String> {
        self.docker.hold(name, volume)
    }

    fn assert_no_leftovers(&self) -> Result<()> {
        let problems = self.vol().leftovers()?;
        ensure!(problems.is_empty(), "leftovers: {problems:#?}");
        Ok(())
    }
}

fn raw_protocol(c: &Ctx) -> Result<()> {
    let vol = c.vol();
    // Docker's handshake: empty body, empty Host, no Content-Type.
    let (status, body) = vol.call("Plugin.Activate", None)?;
    ensure!(
        status == 200 && body == serde_json::json!({"Implements": ["VolumeDriver"]}),
        "{status} {body}"
    );
    let (status, body) = vol.call("VolumeDriver.Capabilities", Some("{}"))?;
    ensure!(
        status == 200 && body["Capabilities"]["Scope"] == "local",
        "{status} {body}"
    );
    let (status, body) = vol.call("VolumeDriver.Get", Some(r#"{"Name":"raw-none"}"#))?;
    ensure!(
        status != 200
            && body["Err"]
                .as_str()
                .unwrap_or("")
                .contains("no such volume"),
        "{status} {body}"
    );
    let (status, body) = vol.call(
        "VolumeDriver.Create",
        Some(r#"{"Name":"raw1","Opts":null}"#),
    )?;
    ensure!(status == 200 && body["Err"] == "", "{status} {body}");
    let (status, _) = vol.call("VolumeDriver.Create", Some(r#"{"Name":"raw1","Opts":{}}"#))?;
    ensure!(status == 200, "create is idempotent");
    // A retried request that lost its body.
    let (status, body) = vol.call("VolumeDriver.Mount", None)?;
    ensure!(
        status == 400 && body["Err"].as_str().unwrap_or("").contains("Name"),
        "{status} {body}"
    );
    let (status, body) = vol.call("VolumeDriver.Mount", Some(r#"{"Name":"raw1","ID":"id-a"}"#))?;
    ensure!(status == 200, "{status} {body}");
    let mountpoint = body["Mountpoint"].as_str().unwrap_or_default().to_string();
    ensure!(mountpoint.ends_with("/mounts/raw1"), "{body}");
    ensure!(
        mountinfo()?
            .iter()
            .any(|(p, _)| p.to_string_lossy() == mountpoint),
        "mounted in the kernel"
    );
    // Per-mount options (field 6 of mountinfo): no setuid binaries or device nodes on volumes.
    let mountinfo_text = std::fs::read_to_string("/proc/self/mountinfo")?;
    let options = mountinfo_text
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.get(4) == Some(&mountpoint.as_str())).then(|| f[5].to_string())
        })
        .unwrap_or_default();
    ensure!(
        options.split(',').any(|o| o == "nosuid") && options.split(',').any(|o| o == "nodev"),
        "mounted nosuid,nodev: {options}"
    );
    let (_, body) = vol.call("VolumeDriver.Path", Some(r#"{"Name":"raw1"}"#))?;
    ensure!(body["Mountpoint"] == mountpoint.as_str(), "{body}");
    let (status, body) = vol.call("VolumeDriver.Remove", Some(r#"{"Name":"raw1"}"#))?;
    ensure!(
        status != 200 && body["Err"].as_str().unwrap_or("").contains("in use"),
        "{status} {body}"
    );
    let (status, _) = vol.call(
        "VolumeDriver.Unmount",
        Some(r#"{"Name":"raw1","ID":"never-seen"}"#),
    )?;
    ensure!(status == 200, "unknown mount ID is success");
    let (status, _) = vol.call(
        "VolumeDriver.Unmount",
        Some(r#"{"Name":"raw1","ID":"id-a"}"#),
    )?;
    ensure!(status == 200);
    ensure!(
        !mountinfo()?
            .iter()
            .any(|(p, _)| p.to_string_lossy() == mountpoint),
        "unmounted"
    );
    let (status, _) = vol.call("VolumeDriver.Remove", Some(r#"{"Name":"raw1"}"#))?;
    ensure!(status == 200);
    let (status, _) = vol.call("VolumeDriver.Remove", Some(r#"{"Name":"raw1"}"#))?;
    ensure!(status == 200, "removing an unknown volume is success");
    let (status, body) = vol.call("VolumeDriver.Create", Some(r#"{"Name":"../../etc"}"#))?;
    ensure!(
        status == 400
            && body["Err"]
                .as_str()
                .unwrap_or("")
                .contains("invalid volume name"),
        "{status} {body}"
    );
    let (status, body) = vol.call("VolumeDriver.Create", Some(r#"{"Name":5}"#))?;
    ensure!(
        status == 400 && body["Err"].as_str().unwrap_or("").contains("invalid type"),
        "{status} {body}"
    );
    drop(vol);
    c.assert_no_leftovers()
}

fn create_with_options_and_inspect(c: &Ctx) -> Result<()> {
    c.docker.ok(&[
        "volume",
        "create",
        "-d",
        "berth-vol",
        "-o",
        "size=1G",
        "-o",
        "fs=ext4",
        "inspect1",
    ])?;
    let status = c.status("inspect1")?;
    ensure!(
        status["backend"] == "loopfile" && status["fs"] == "ext4",
        "{status}"
    );
    ensure!(status["size_bytes"] == 1u64 << 30, "{status}");
    ensure!(
        status["allocated_bytes"]
            .as_u64()
            .is_some_and(|a| a > 0 && a < 1 << 30),
        "sparse: {status}"
    );
    ensure!(
        status["mounts"] == 0
            && status.get("device").is_none()
            && status.get("used_bytes").is_none(),
        "{status}"
    );
    let created = c.docker.ok(&[
        "volume",
        "inspect",
        "inspect1",
        "--format",
        "{{.CreatedAt}} {{.Driver}} {{.Scope}}",
    ])?;
    ensure!(
        created.ends_with("berth-vol local") && !created.starts_with("0001-01-01"),
        "{created}"
    );

    // While a container uses it, the live figures appear.
    c.hold("inspect-holder", "inspect1")?;
    let status = c.status("inspect1")?;
    ensure!(status["mounts"] == 1, "{status}");
    let device = status["device"].as_str().unwrap_or_default();
    ensure!(device.starts_with("7:"), "a loop device MAJ:MIN: {status}");
    ensure!(
        status["used_bytes"].as_u64().is_some()
            && status["free_bytes"].as_u64().is_some_and(|f| f > 800 << 20),
        "{status}"
    );
    let df = c
        .docker
        .ok(&["exec", "inspect-holder", "df", "-k", "/data"])?;
    ensure!(df.contains("/data"), "{df}");
    c.docker.ok(&["rm", "-f", "inspect-holder"])?;
    let status = c.status("inspect1")?;
    ensure!(
        status["mounts"] == 0 && status.get("device").is_none(),
        "{status}"
    );
    c.docker.ok(&["volume", "rm", "inspect1"])?;
    c.assert_no_leftovers()
}

fn write_then_read_back(c: &Ctx) -> Result<()> {
    c.docker.ok(&[
        "volume",
        "create",
        "-d",
        "berth-vol",
        "-o",
        "size=512M",
        "rw1",
    ])?;
    c.run(&["-v", "rw1:/data", TEST_IMAGE, "sh", "-c", "dd if=/dev/urandom of=/data/blob bs=1M count=8 2>/dev/null && md5sum /data/blob > /data/blob.md5 && sync"])?;
    let check = c.run(&[
        "-v",
        "rw1:/data",
        TEST_IMAGE,
        "md5sum",
        "-c",
        "/data/blob.md5",
    ])?;
    ensure!(check.contains("OK"), "{check}");
    let status = c.status("rw1")?;
    ensure!(
        status["allocated_bytes"]
            .as_u64()
            .is_some_and(|a| a >= 8 << 20),
        "data is on the image: {status}"
    );
    c.docker.ok(&["volume", "rm", "rw1"])?;
    c.assert_no_leftovers()
}

fn two_containers_share_a_volume(c: &Ctx) -> Result<()> {
    c.docker.ok(&[
        "volume",
        "create",
        "-d",
        "berth-vol",
        "-o",
        "size=400M",
        "shared1",
    ])?;
    c.hold("share-a", "shared1")?;
    c.hold("share-b", "shared1")?;
    ensure!(c.status("shared1")?["mounts"] == 2);
    c.docker
        .ok(&["exec", "share-a", "sh", "-c", "echo from-a > /data/note"])?;
    let seen = c.docker.ok(&["exec", "share-b", "cat", "/data/note"])?;
    ensure!(seen == "from-a", "{seen}");
    c.docker.ok(&["rm", "-f", "share-a"])?;
    // b still has it: still mounted, data still there.
    let status = c.status("shared1")?;
    ensure!(
        status["mounts"] == 1 && status["device"].is_string(),
        "{status}"
    );
    ensure!(c.docker.ok(&["exec", "share-b", "cat", "/data/note"])? == "from-a");
    c.docker.ok(&["rm", "-f", "share-b"])?;
    ensure!(c.status("shared1")?["mounts"] == 0);
    c.docker.ok(&["volume", "rm", "shared1"])?;
    c.assert_no_leftovers()
}

fn docker_cp_into_running_container(c: &Ctx) -> Result<()> {
    c.docker.ok(&[
        "volume",
        "create",
        "-d",
        "berth-vol",
        "-o",
        "size=400M",
        "cp1",
    ])?;
    c.hold("cp-holder", "cp1")?;
    let src = c.work.path().join("cp-source.txt");
    std::fs::write(&src, "copied in\n")?;
    c.docker.ok(&[
        "cp",
        src.to_str().context("path")?,
        "cp-holder:/data/copied.txt",
    ])?;
    ensure!(
        c.docker
            .ok(&["exec", "cp-holder", "cat", "/data/copied.txt"])?
            == "copied in"
    );
    // docker cp re-mounts with the container's mount ID and unmounts after: still one mount.
    ensure!(c.status("cp1")?["mounts"] == 1, "{}", c.status("cp1")?);
    let dst = c.work.path().join("cp-back.txt");
    c.docker.ok(&[
        "cp",
        "cp-holder:/data/copied.txt",
        dst.to_str().context("path")?,
    ])?;
    ensure!(std::fs::read_to_string(&dst)? == "copied in\n");
    ensure!(c.status("cp1")?["mounts"] == 1);
    c.docker.ok(&["rm", "-f", "cp-holder"])?;
    ensure!(c.status("cp1")?["mounts"] == 0);
    // And into a stopped container: Docker mounts for the copy and unmounts after.
    c.docker.ok(&[
        "create",
        "--name",
        "cp-stopped",
        "--network",
        "none",
        "-v",
        "cp1:/data",
        TEST_IMAGE,
        "true",
    ])?;
    c.docker.ok(&[
        "cp",
        src.to_str().context("path")?,
        "cp-stopped:/data/second.txt",
    ])?;
    c.docker.ok(&["rm", "cp-stopped"])?;
    ensure!(c.run(&["-v", "cp1:/data", TEST_IMAGE, "cat", "/data/second.txt"])? == "copied in");
    c.docker.ok(&["volume", "rm", "cp1"])?;
    c.assert_no_leftovers()
}

fn remove_in_use_refused_then_succeeds(c: &Ctx) -> Result<()> {
    c.docker.ok(&[
        "volume",
        "create",
        "-d",
        "berth-vol",
        "-o",
        "size=400M",
        "busy1",
    ])?;
    c.hold("busy-holder", "busy1")?;
    let err = c.docker.fails(&["volume", "rm", "busy1"])?;
    ensure!(err.contains("in use"), "{err}");
    // Even past Docker's own check (rm -f purges Docker's record on plugin errors), the
    // plugin refuses while its mount count is above zero.
    let (status, body) = c
        .vol()
        .call("VolumeDriver.Remove", Some(r#"{"Name":"busy1"}"#))?;
    ensure!(
        status == 409 && body["Err"].as_str().unwrap_or("").contains("in use"),
        "{status} {body}"
    );
    ensure!(
        c.docker.ok(&[
            "exec",
            "busy-holder",
            "sh",
            "-c",
            "echo still > /data/x && cat /data/x"
        ])? == "still"
    );
    c.docker.ok(&["rm", "-f", "busy-holder"])?;
    c.docker.ok(&["volume", "rm", "busy1"])?;
    ensure!(
        !c.vol().images_dir().join("busy1.img").exists(),
        "image file removed"
    );
    let ls = c.docker.ok(&["volume", "ls", "-q"])?;
    ensure!(!ls.lines().any(|l| l == "busy1"), "{ls}");
    c.assert_no_leftovers()
}

fn implicit_create_with_volume_driver(c: &Ctx) -> Result<()> {
    let out = c.run(&[
        "--volume-driver",
        "berth-vol",
        "-v",
        "implicit1:/data",
        TEST_IMAGE,
        "sh",
        "-c",
        "echo hi > /data/f && cat /data/f",
    ])?;
    ensure!(out == "hi", "{out}");
    let status = c.status("implicit1")?;
    ensure!(
        status["size_bytes"] == 10u64 << 30 && status["fs"] == "xfs",
        "defaults: {status}"
    );
    let driver = c
        .docker
        .ok(&["volume", "inspect", "implicit1", "--format", "{{.Driver}}"])?;
    ensure!(driver == "berth-vol", "{driver}");
    // --mount syntax with driver options creates with those options.
    c.run(&["--mount", "type=volume,src=implicit2,dst=/data,volume-driver=berth-vol,volume-opt=size=600M,volume-opt=fs=ext4", TEST_IMAGE, "true"])?;
    let status = c.status("implicit2")?;
    ensure!(
        status["size_bytes"] == 600u64 << 20 && status["fs"] == "ext4",
        "{status}"
    );
    c.docker.ok(&["volume", "rm", "implicit1", "implicit2"])?;
    c.assert_no_leftovers()
}

fn bad_names_and_options_rejected(c: &Ctx) -> Result<()> {
    let cases: &[(&[&str], &str)] = &[
        (
            &["-o", "colour=blue", "badopt1"],
            "invalid option colour: unknown option; valid options are: size, fs",
        ),
        (&["-o", "size=lots", "badopt2"], "invalid option size"),
        (&["-o", "size=100T", "badopt3"], "over this host's maximum"),
        (&["-o", "size=10M", "badopt4"], "too small for xfs"),
        (&["-o", "fs=btrfs", "badopt5"], "not a supported filesystem"),
        (&[".hidden"], "invalid volume name"),
        (&["a\u{e9}b"], "invalid volume name"),
    ];
    for (args, expected) in cases {
        let mut full = vec!["volume", "create", "-d", "berth-vol"];
        full.extend_from_slice(args);
        let err = c.docker.fails(&full)?;
        ensure!(
            err.contains(expected),
            "docker volume create {args:?}: expected {expected:?} in {err:?}"
        );
    }
    let long = "x".repeat(129);
    let err = c
        .docker
        .fails(&["volume", "create", "-d", "berth-vol", &long])?;
    ensure!(err.contains("longer than 128"), "{err}");
    let listed = c.docker.ok(&["volume", "ls", "-q"])?;
    ensure!(!listed.contains("badopt"), "nothing half-made: {listed}");
    ensure!(
        std::fs::read_dir(c.vol().images_dir())?.next().is_none(),
        "no image files left"
    );
    c.assert_no_leftovers()
}

fn volplugin_restart_keeps_running_containers(c: &Ctx) -> Result<()> {
    c.docker.ok(&[
        "volume",
        "create",
        "-d",
        "berth-vol",
        "-o",
        "size=400M",
        "restart1",
    ])?;
    c.hold("restart-holder", "restart1")?;
    c.docker.ok(&[
        "exec",
        "restart-holder",
        "sh",
        "-c",
        "echo before > /data/f",
    ])?;
    c.vol().stop()?;
    c.vol().start()?;
    ensure!(c
        .docker
        .ok(&[
            "exec",
            "restart-holder",
            "sh",
            "-c",
            "cat /data/f && echo after >> /data/f"
        ])?
        .starts_with("before"));
    let status = c.status("restart1")?;
    ensure!(
        status["mounts"] == 1 && status["device"].is_string(),
        "count and mount survive a restart: {status}"
    );
    // kill -9 with the container still running: the same.
    c.vol().kill9()?;
    c.vol().start()?;
    ensure!(c.status("restart1")?["mounts"] == 1);
    c.docker.ok(&["rm", "-f", "restart-holder"])?;
    ensure!(c.status("restart1")?["mounts"] == 0);
    let out = c.run(&["-v", "restart1:/data", TEST_IMAGE, "cat", "/data/f"])?;
    ensure!(out == "before\nafter", "{out}");
    c.docker.ok(&["volume", "rm", "restart1"])?;
    c.assert_no_leftovers()
}

/// kill -9 while creates and mounts are in flight, at several points, then restart: nothing
/// half-made survives and every volume that exists is usable.
fn kill9_during_creates_and_mounts(c: &Ctx) -> Result<()> {
    let delays_ms = [3u64, 15, 40, 90, 180];
    for (round, delay) in delays_ms.iter().enumerate() {
        let socket = c.vol().socket();
        let workers: Vec<_> = (0..2)
            .map(|worker| {
                let socket = socket.clone();
                std::thread::spawn(move || {
                    for i in 0..4 {
                        let name = format!("crash{round}-{worker}{i}");
                        let create = format!(r#"{{"Name":"{name}","Opts":{{"size":"320M"}}}}"#);
                        if integration::plugins::docker_call(
                            &socket,
                            "VolumeDriver.Create",
                            Some(&create),
                        )
                        .is_err()
                        {
                            return;
                        }
                        let mount = format!(r#"{{"Name":"{name}","ID":"m-{name}"}}"#);
                        if integration::plugins::docker_call(
                            &socket,
                            "VolumeDriver.Mount",
                            Some(&mount),
                        )
                        .is_err()
                        {
                            return;
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(*delay));
        c.vol().kill9()?;
        for w in workers {
            let _ = w.join();
        }
        c.vol().start()?;
        let problems = c.vol().leftovers()?;
        ensure!(
            problems.is_empty(),
            "round {round} (kill after {delay} ms): {problems:#?}\n{}",
            c.vol().log_tail(20)
        );
        for v in c.vol().admin_ls()? {
            ensure!(v["state"] == "ready", "round {round}: {v}");
        }
    }
    // Every volume Docker lists works; then release and remove them all.
    let listed = c
        .docker
        .ok(&["volume", "ls", "-q", "--filter", "driver=berth-vol"])?;
    let crash: Vec<&str> = listed.lines().filter(|l| l.starts_with("crash")).collect();
    ensure!(!crash.is_empty(), "some creates finished before the kills");
    for name in &crash {
        let (status, _) = c.vol().call(
            "VolumeDriver.Unmount",
            Some(&format!(r#"{{"Name":"{name}","ID":"m-{name}"}}"#)),
        )?;
        ensure!(status == 200);
        let spec = format!("{name}:/data");
        let out = c.run(&[
            "-v",
            &spec,
            TEST_IMAGE,
            "sh",
            "-c",
            "echo ok > /data/probe && cat /data/probe",
        ])?;
        ensure!(out == "ok", "{name}: {out}");
        c.docker.ok(&["volume", "rm", name])?;
    }
    println!(
        "    {} volumes survived the kills and were usable",
        crash.len()
    );
    c.assert_no_leftovers()?;
    let images: Vec<String> = std::fs::read_dir(c.vol().images_dir())?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("crash"))
        .collect();
    ensure!(images.is_empty(), "every crash image removed: {images:?}");
    Ok(())
}

fn admin_cli_table(c: &Ctx) -> Result<()> {
    c.docker.ok(&[
        "volume",
        "create",
        "-d",
        "berth-vol",
        "-o",
        "size=2G",
        "admin1",
    ])?;
    let vol = c.vol();
    let out = std::process::Command::new(&vol.bin)
        .args(["volume", "ls", "--admin-socket"])
        .arg(&vol.admin_socket)
        .output()?;
    let table = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success()
            && table.starts_with("NAME")
            && table.contains("admin1")
            && table.contains("2G"),
        "{table}"
    );
    let out = std::process::Command::new(&vol.bin)
        .args(["volume", "inspect", "admin1", "--admin-socket"])
        .arg(&vol.admin_socket)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && text.contains("Backend:") && text.contains("loopfile"),
        "{text}"
    );
    let out = std::process::Command::new(&vol.bin)
        .args(["volume", "inspect", "nope", "--admin-socket"])
        .arg(&vol.admin_socket)
        .output()?;
    ensure!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("no such volume: nope")
    );
    drop(vol);
    c.docker.ok(&["volume", "rm", "admin1"])?;
    Ok(())
}

/// systemd's socket activation: volplugin serves the socket it is handed on fd 3 and leaves
/// it in place on exit (it is systemd's), so Docker's calls queue across a restart.
fn socket_activation(c: &Ctx) -> Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let mut vol = c.vol();
    vol.stop()?;
    let socket = vol.socket();
    let _ = std::fs::remove_file(&socket);
    let listener = std::os::unix::net::UnixListener::bind(&socket)?;
    let fd = listener.as_raw_fd();
    let mut cmd = std::process::Command::new("sh");
    // LISTEN_PID must be the daemon's own pid: sh sets it to $$ and execs in place.
    cmd.arg("-c")
        .arg("LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" serve --state-dir \"$1\" --plugin-dir /nonexistent-not-used --admin-socket \"$2\" --metrics off")
        .arg(&vol.bin)
        .arg(&vol.state_dir)
        .arg(&vol.admin_socket);
    // SAFETY: the closure only calls dup2/fcntl (async-signal-safe) between fork and exec, on
    // an fd the parent keeps open until the child has started.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 onto itself keeps close-on-exec set: clear it explicitly in that case.
            let rc = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut daemon = integration::Daemon::spawn("volplugin-activated", cmd, &vol.log_dir)?;
    let outcome = (|| -> Result<()> {
        c.docker.ok(&[
            "volume",
            "create",
            "-d",
            "berth-vol",
            "-o",
            "size=400M",
            "activated1",
        ])?;
        let out = c.run(&[
            "-v",
            "activated1:/data",
            TEST_IMAGE,
            "sh",
            "-c",
            "echo via-fd3 > /data/f && cat /data/f",
        ])?;
        ensure!(out == "via-fd3", "{out}");
        // The handed-over socket is close-on-exec (flags in fdinfo are octal; O_CLOEXEC is
        // 02000000), so the tools volplugin runs (mkfs, mount) never hold it.
        let fdinfo = std::fs::read_to_string(format!("/proc/{}/fdinfo/3", daemon.pid()))?;
        let flags = fdinfo
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
            .unwrap_or(0);
        ensure!(
            flags & 0o2000000 != 0,
            "fd 3 is not close-on-exec: {fdinfo}"
        );
        ensure!(
            !std::path::Path::new("/nonexistent-not-used").exists(),
            "no socket bound by the daemon itself"
        );
        Ok(())
    })();
    let status = daemon.stop(Duration::from_secs(30))?;
    ensure!(
        status.success(),
        "exit status {status} on SIGTERM:\n{}",
        daemon.log_tail(20)
    );
    ensure!(
        socket.exists(),
        "an activated socket is systemd's: left in place"
    );
    drop(listener);
    std::fs::remove_file(&socket)?;
    vol.start()?;
    drop(vol);
    outcome.map_err(|e| anyhow::anyhow!("{e:#}\n{}", daemon.log_tail(20)))?;
    c.docker.ok(&["volume", "rm", "activated1"])?;
    c.assert_no_leftovers()
}

/// A kill -9 during a clone's XFS log replay leaves a mount under `<state-dir>/scratch` that
/// holds the clone's device; the next start unmounts it before rolling the clone back. (A real
/// tmpfs mount stands in for the clone's, since the kill cannot be timed into that window.)
fn scratch_mount_left_by_a_crash(c: &Ctx) -> Result<()> {
    let mut vol = c.vol();
    vol.kill9()?;
    let point = vol.state_dir.join("scratch").join("clone-crashed");
    std::fs::create_dir_all(&point)?;
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "berth-test-scratch"])
        .arg(&point)
        .status()?;
    ensure!(status.success(), "mount tmpfs on {}", point.display());
    let mounted = || -> Result<bool> { Ok(mountinfo()?.iter().any(|(p, _)| *p == point)) };
    ensure!(mounted()?, "the stand-in scratch mount is there");
    vol.start()?;
    let left = mounted()?;
    if left {
        let _ = std::process::Command::new("umount").arg(&point).status();
    }
    ensure!(
        !left,
        "volplugin's start left the scratch mount {}",
        point.display()
    );
    ensure!(!point.exists(), "its directory is removed");
    // (The handle holds the context's lock, which the leftovers check takes again.)
    drop(vol);
    c.assert_no_leftovers()
}

/// A volume unmounted on the host can stay alive in another mount namespace for a moment (a
/// container being torn down holds a copy of the mount): mounting it again right then must
/// reuse that filesystem's device, not attach a second one (XFS: "duplicate UUID", EINVAL).
fn remount_while_another_namespace_holds_it(c: &Ctx) -> Result<()> {
    let vol = c.vol();
    let (status, body) = vol.call(
        "VolumeDriver.Create",
        Some(r#"{"Name":"held1","Opts":{"size":"320M","fs":"xfs"}}"#),
    )?;
    ensure!(status == 200, "{status} {body}");
    let (status, body) = vol.call("VolumeDriver.Mount", Some(r#"{"Name":"held1","ID":"h1"}"#))?;
    ensure!(status == 200, "{status} {body}");
    let mountpoint = body["Mountpoint"].as_str().unwrap_or_default().to_string();
    // A private copy of the host's mounts, as a container's namespace has while it starts.
    let mut holder = std::process::Command::new("unshare")
        .args(["-m", "--propagation", "private", "sleep", "120"])
        .spawn()?;
    let holder_mounts = format!("/proc/{}/mountinfo", holder.id());
    let outcome = (|| -> Result<()> {
        let copied = integration::procs::wait_until(
            Duration::from_secs(10),
            Duration::from_millis(20),
            || {
                std::fs::read_to_string(&holder_mounts)
                    .is_ok_and(|m| m.contains(&format!(" {mountpoint} ")))
            },
        );
        ensure!(copied, "the holder namespace has the volume's mount");
        let (status, body) = vol.call(
            "VolumeDriver.Unmount",
            Some(r#"{"Name":"held1","ID":"h1"}"#),
        )?;
        ensure!(status == 200, "{status} {body}");
        let (status, body) =
            vol.call("VolumeDriver.Mount", Some(r#"{"Name":"held1","ID":"h2"}"#))?;
        ensure!(
            status == 200,
            "mount while another namespace holds it: {status} {body}"
        );
        let (status, body) = vol.call(
            "VolumeDriver.Unmount",
            Some(r#"{"Name":"held1","ID":"h2"}"#),
        )?;
        ensure!(status == 200, "{status} {body}");
        Ok(())
    })();
    let _ = holder.kill();
    let _ = holder.wait();
    outcome?;
    let image = vol.images_dir().join("held1.img").canonicalize()?;
    let released =
        integration::procs::wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
            !attached_loops().iter().any(|(_, b)| *b == image)
        });
    ensure!(released, "the loop device went with the last holder");
    let (status, body) = vol.call("VolumeDriver.Remove", Some(r#"{"Name":"held1"}"#))?;
    ensure!(status == 200, "{status} {body}");
    drop(vol);
    c.assert_no_leftovers()
}

/// A mount count Docker will never release (a Mount it saw fail that still landed) is dropped
/// by `volplugin volume mounts clear`, which refuses while a running container uses the volume.
fn mounts_clear(c: &Ctx) -> Result<()> {
    let vol = c.vol();
    let (status, body) = vol.call(
        "VolumeDriver.Create",
        Some(r#"{"Name":"lost1","Opts":{"size":"320M"}}"#),
    )?;
    ensure!(status == 200, "{status} {body}");
    let (status, body) = vol.call(
        "VolumeDriver.Mount",
        Some(r#"{"Name":"lost1","ID":"docker-gave-up"}"#),
    )?;
    ensure!(status == 200, "{status} {body}");
    let mountpoint = body["Mountpoint"].as_str().unwrap_or_default().to_string();
    let shown = vol.admin_json(&["volume", "inspect", "lost1"])?;
    ensure!(shown["mounts"] == 1, "{shown}");
    let out = vol.admin_text(&["volume", "mounts", "clear", "lost1"])?;
    ensure!(out.contains("docker-gave-up"), "{out}");
    let shown = vol.admin_json(&["volume", "inspect", "lost1"])?;
    ensure!(shown["mounts"] == 0, "{shown}");
    ensure!(
        !mountinfo()?
            .iter()
            .any(|(p, _)| p.to_string_lossy() == mountpoint),
        "unmounted"
    );
    drop(vol);
    // A running container's mount is real: refused, naming the container.
    c.docker.ok(&[
        "run",
        "-d",
        "--name",
        "clear-user",
        "-v",
        "lost1:/data",
        TEST_IMAGE,
        "sleep",
        "300",
    ])?;
    let refused = c.vol().admin_text(&["volume", "mounts", "clear", "lost1"]);
    let outcome = match refused {
        Ok(out) => Err(anyhow::anyhow!(
            "clear with a running user succeeded: {out}"
        )),
        Err(e) if format!("{e:#}").contains("clear-user") => Ok(()),
        Err(e) => Err(e.context("refused, but without naming the container")),
    };
    c.docker.ok(&["rm", "-f", "clear-user"])?;
    outcome?;
    c.docker.ok(&["volume", "rm", "lost1"])?;
    c.assert_no_leftovers()
}

const MIB: u64 = 1 << 20;

/// Where volplugin serves metrics during the resize tests (off otherwise, see `Volplugin::new`).
const RESIZE_METRICS: &str = "127.0.0.1:19479";

/// The sizes of one volume in every view: its record (admin inspect), Docker's Status, the
/// metrics (when served), the image file, the loop device while attached, the filesystem
/// while mounted (statvfs on the host's mount point).
#[derive(Debug)]
struct Views {
    record: u64,
    resizing_to: Option<u64>,
    status: u64,
    metric: Option<u64>,
    image: u64,
    device: Option<u64>,
    fs: Option<u64>,
}

fn views(c: &Ctx, name: &str, metrics: bool) -> Result<Views> {
    let vol = c.vol();
    let record = vol.admin_json(&["volume", "inspect", name])?;
    let status = c.status(name)?;
    let metric = if metrics {
        let text = integration::plugins::scrape_metrics(RESIZE_METRICS)?;
        let series = format!("berth_vol_volume_size_bytes{{volume=\"{name}\"}}");
        Some(
            integration::plugins::metric_value(&text, &series)
                .with_context(|| format!("no {series} in the metrics"))? as u64,
        )
    } else {
        None
    };
    let image = std::fs::metadata(vol.images_dir().join(format!("{name}.img")))?.len();
    let device = match status["device"].as_str() {
        Some(dev) => {
            let sectors = std::fs::read_to_string(format!("/sys/dev/block/{dev}/size"))?;
            Some(sectors.trim().parse::<u64>()? * 512)
        }
        None => None,
    };
    let mountpoint = vol.mount_root().join(name);
    let fs = if status["mounts"].as_u64() > Some(0) {
        let st = nix::sys::statvfs::statvfs(&mountpoint)?;
        Some(st.blocks() * st.fragment_size())
    } else {
        None
    };
    Ok(Views {
        record: record["size_bytes"].as_u64().context("size_bytes")?,
        resizing_to: record["resizing_to_bytes"].as_u64(),
        status: status["size_bytes"].as_u64().context("Status size_bytes")?,
        metric,
        image,
        device,
        fs,
    })
}

impl Views {
    /// Every view at `size`, of the two a resize from `from` can leave, and nothing pending.
    /// The filesystem (when mounted) is compared with what statvfs said at `from`
    /// (`fs_at_from`): its own metadata (XFS: a log of a fixed size) is not in the figure.
    fn at(&self, size: u64, from: u64, fs_at_from: Option<u64>) -> Result<()> {
        ensure!(
            self.resizing_to.is_none()
                && self.record == size
                && self.status == size
                && self.metric.unwrap_or(size) == size
                && self.image == size
                && self.device.unwrap_or(size) == size,
            "views disagree on {size}: {self:?}"
        );
        if let (Some(fs), Some(before)) = (self.fs, fs_at_from) {
            let fits = if size > from {
                fs > before && fs <= size
            } else {
                fs == before
            };
            ensure!(
                fits,
                "filesystem {fs} bytes (at {from}: {before}) on a {size}-byte volume: {self:?}"
            );
        }
        Ok(())
    }
}

/// `volplugin volume resize` while a container writes with O_DIRECT, 1 MiB at a time: no
/// write fails, every view shows the new size as soon as the command returns, and the
/// container can then use the new space.
fn resize_while_a_container_writes(c: &Ctx) -> Result<()> {
    c.docker.ok(&[
        "volume",
        "create",
        "-d",
        "berth-vol",
        "-o",
        "size=320M",
        "-o",
        "fs=xfs",
        "grow1",
    ])?;
    // Bounded: 240 writes of 1 MiB with 10 ms pauses (a few seconds), each checked.
    let writer = "i=0; while [ $i -lt 240 ]; do \
        dd if=/dev/urandom of=/data/w bs=1M count=1 seek=$i conv=notrunc oflag=direct 2>/tmp/err \
        || { echo \"write $i failed: $(cat /tmp/err)\"; exit 1; }; \
        usleep 10000; i=$((i+1)); done; echo wrote $i";
    c.docker.ok(&[
        "run",
        "-d",
        "--name",
        "grow-writer",
        "--network",
        "none",
        "-v",
        "grow1:/data",
        TEST_IMAGE,
        "sh",
        "-c",
        writer,
    ])?;
    let outcome = (|| -> Result<()> {
        let file = c.vol().mount_root().join("grow1/w");
        let started = integration::procs::wait_until(
            Duration::from_secs(30),
            Duration::from_millis(20),
            || std::fs::metadata(&file).is_ok_and(|m| m.len() >= 16 * MIB),
        );
        ensure!(started, "the writer did not start");
        let before = views(c, "grow1", false)?;
        before.at(320 * MIB, 320 * MIB, None)?;
        let out = c.vol().admin_text(&["volume", "resize", "grow1", "1G"])?;
        ensure!(out.contains("size now 1G"), "{out}");
        let running = c
            .docker
            .ok(&["inspect", "-f", "{{.State.Running}}", "grow-writer"])?;
        let written = std::fs::metadata(&file)?.len();
        ensure!(
            running == "true",
            "the writer finished before the resize did ({written} bytes written): the test \
             proves nothing; make it write longer"
        );
        // At once, in every view: the record, Docker's Status, the loop device, the fs.
        views(c, "grow1", false)?.at(1 << 30, 320 * MIB, before.fs)?;
        let code = c.docker.ok(&["wait", "grow-writer"])?;
        let logs = c.docker.ok(&["logs", "grow-writer"])?;
        ensure!(
            code == "0" && logs.contains("wrote 240"),
            "writer: exit {code}: {logs}"
        );
        println!(
            "    resized after {} MiB of 240 written, no write failed",
            written / MIB
        );
        Ok(())
    })();
    let _ = c.docker.ok(&["rm", "-f", "grow-writer"]);
    outcome?;
    // 600 MiB more than the 240 written: only fits in the new space.
    let out = c.run(&[
        "-v",
        "grow1:/data",
        TEST_IMAGE,
        "sh",
        "-c",
        "dd if=/dev/zero of=/data/more bs=1M count=600 oflag=direct 2>&1 && df -k /data | tail -1",
    ])?;
    let total_kib: u64 = out
        .lines()
        .last()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("df: {out}"))?;
    ensure!(total_kib > 900 * 1024, "df inside the container: {out}");
    // Unmounted now: grown offline, then mounted at its new size.
    c.vol().admin_text(&["volume", "resize", "grow1", "1.5G"])?;
    views(c, "grow1", false)?.at(1536 * MIB, 1 << 30, None)?;
    let out = c.run(&[
        "-v",
        "grow1:/data",
        TEST_IMAGE,
        "sh",
        "-c",
        "df -k /data | tail -1",
    ])?;
    ensure!(
        out.split_whitespace()
            .nth(1)
            .and_then(|n| n.parse::<u64>().ok())
            > Some(1400 * 1024),
        "{out}"
    );
    // Shrinking is refused, naming the field; nothing changes.
    let err = match c.vol().admin_text(&["volume", "resize", "grow1", "1G"]) {
        Ok(out) => anyhow::bail!("shrinking succeeded: {out}"),
        Err(e) => format!("{e:#}"),
    };
    ensure!(
        err.contains("invalid option size") && err.contains("only grow"),
        "{err}"
    );
    views(c, "grow1", false)?.at(1536 * MIB, 1 << 30, None)?;
    c.docker.ok(&["volume", "rm", "grow1"])?;
    c.assert_no_leftovers()
}

/// ext4: offline growth works anywhere; online growth needs CAP_SYS_RESOURCE, and where
/// volplugin lacks it (this machine's sandbox) the resize is refused up front, naming it.
fn resize_ext4_online_needs_cap_sys_resource(c: &Ctx) -> Result<()> {
    c.docker.ok(&[
        "volume",
        "create",
        "-d",
        "berth-vol",
        "-o",
        "size=64M",
        "-o",
        "fs=ext4",
        "grow4",
    ])?;
    c.hold("grow4-holder", "grow4")?;
    let pid = c.vol().pid().context("volplugin pid")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        .context("CapEff")?;
    let has_cap = cap_eff & (1 << 24) != 0;
    let before = views(c, "grow4", false)?;
    let online = c.vol().admin_text(&["volume", "resize", "grow4", "128M"]);
    let outcome = (|| -> Result<()> {
        if has_cap {
            online?;
            views(c, "grow4", false)?.at(128 * MIB, 64 * MIB, before.fs)?;
        } else {
            let err = format!(
                "{:#}",
                online
                    .err()
                    .context("resize without CAP_SYS_RESOURCE succeeded")?
            );
            ensure!(
                err.contains("CAP_SYS_RESOURCE")
                    && err.contains("ext4")
                    && err.contains("nothing was changed"),
                "{err}"
            );
            views(c, "grow4", false)?.at(64 * MIB, 64 * MIB, before.fs)?;
        }
        Ok(())
    })();
    println!(
        "    volplugin CapEff {cap_eff:016x}: online ext4 growth {}",
        if has_cap {
            "done"
        } else {
            "refused, naming CAP_SYS_RESOURCE"
        }
    );
    c.docker.ok(&["rm", "-f", "grow4-holder"])?;
    outcome?;
    // Offline: e2fsck + resize2fs on the image, no capability needed.
    c.vol().admin_text(&["volume", "resize", "grow4", "256M"])?;
    views(c, "grow4", false)?.at(256 * MIB, 128 * MIB, None)?;
    let out = c.run(&[
        "-v",
        "grow4:/data",
        TEST_IMAGE,
        "sh",
        "-c",
        "dd if=/dev/zero of=/data/f bs=1M count=180 2>&1 && df -k /data | tail -1",
    ])?;
    let total_kib = out
        .lines()
        .last()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse::<u64>().ok());
    ensure!(total_kib > Some(200 * 1024), "180 MiB written; df: {out}");
    c.docker.ok(&["volume", "rm", "grow4"])?;
    c.assert_no_leftovers()
}

/// kill -9 of volplugin at moments spread over a resize of a volume a container holds: after
/// the restart every view agrees on one of the two sizes, nothing is pending, and the
/// container's data and mount are intact.
fn kill9_during_resize(c: &Ctx) -> Result<()> {
    let mut vol = c.vol();
    vol.args = vec!["--metrics".into(), RESIZE_METRICS.into()];
    vol.stop()?;
    vol.start()?;
    drop(vol);
    let outcome = (|| -> Result<()> {
        c.docker.ok(&[
            "volume",
            "create",
            "-d",
            "berth-vol",
            "-o",
            "size=320M",
            "-o",
            "fs=xfs",
            "grow9",
        ])?;
        c.hold("grow9-holder", "grow9")?;
        c.docker.ok(&[
            "exec",
            "grow9-holder",
            "sh",
            "-c",
            "echo kept > /data/marker",
        ])?;
        let mut size = 320 * MIB;
        let mut fs = views(c, "grow9", true)?.fs;
        let mut outcomes = Vec::new();
        for delay_ms in [0u64, 1, 2, 4, 7, 10, 15, 20, 30, 45, 70, 100] {
            let to = size + 64 * MIB;
            let (bin, admin) = {
                let vol = c.vol();
                (vol.bin.clone(), vol.admin_socket.clone())
            };
            let mut cli = std::process::Command::new(&bin)
                .args([
                    "volume",
                    "resize",
                    "grow9",
                    &format!("{}M", to / MIB),
                    "--admin-socket",
                ])
                .arg(&admin)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()?;
            std::thread::sleep(Duration::from_millis(delay_ms));
            c.vol().kill9()?;
            let _ = cli.wait();
            c.vol().start()?;
            let v = views(c, "grow9", true)?;
            let landed = if v.record == to { to } else { size };
            v.at(landed, size, fs).with_context(|| {
                format!(
                    "kill -9 {delay_ms} ms into a resize {size} -> {to}; log:\n{}",
                    c.vol().log_tail(40)
                )
            })?;
            outcomes.push(format!(
                "{delay_ms}ms:{}",
                if landed == to { "new" } else { "old" }
            ));
            size = landed;
            fs = v.fs;
            let out = c.docker.ok(&[
                "exec",
                "grow9-holder",
                "sh",
                "-c",
                "cat /data/marker && echo more >> /data/marker",
            ])?;
            ensure!(out.starts_with("kept"), "{out}");
        }
        // How many kills fell inside a resize, so the start-up reconcile finished it.
        let log = c.vol().log_tail(100_000);
        let finished = log.matches("finished_resizes: [\"grow9\"]").count();
        println!(
            "    sizes after each kill: {}; resizes finished at start: {finished}",
            outcomes.join(" ")
        );
        // Whatever the kills left, a resize still works, online.
        c.vol().admin_text(&[
            "volume",
            "resize",
            "grow9",
            &format!("{}M", size / MIB + 128),
        ])?;
        views(c, "grow9", true)?.at(size + 128 * MIB, size, fs)?;
        c.docker.ok(&["rm", "-f", "grow9-holder"])?;
        c.docker.ok(&["volume", "rm", "grow9"])?;
        c.assert_no_leftovers()
    })();
    let _ = c.docker.ok(&["rm", "-f", "grow9-holder"]);
    let mut vol = c.vol();
    vol.args = vec!["--metrics".into(), "off".into()];
    if vol.is_running() {
        vol.stop()?;
    }
    vol.start()?;
    outcome
}

/// For tests that stop or kill volplugin: whatever the test's outcome, volplugin serves again
/// afterwards, so one failure does not fail every test after it.
fn keeps_volplugin_up(c: &Ctx, test: fn(&Ctx) -> Result<()>) -> Result<()> {
    let outcome = test(c);
    let mut vol = c.vol();
    if !vol.is_running() {
        if let Err(e) = vol.start() {
            return outcome.and(Err(e.context("restarting volplugin after the test")));
        }
    }
    outcome
}

/// Issue 18: Docker 26 mounts a subdirectory of a volume (`volume-subpath`, API 1.45): dockerd
/// asks volplugin for the whole volume (the same Mount/Unmount as ever) and binds the subpath
/// itself. A subpath that does not exist fails the container, and Docker's Unmount must bring
/// the count back. Docker 20.10 has no subpaths (its CLI and API refuse the key).
fn volume_subpath(c: &Ctx) -> Result<()> {
    c.docker.ok(&[
        "volume",
        "create",
        "-d",
        "berth-vol",
        "-o",
        "size=300M",
        "subv",
    ])?;
    c.run(&[
        "-v",
        "subv:/data",
        TEST_IMAGE,
        "sh",
        "-c",
        "mkdir /data/sub && echo inside > /data/sub/f",
    ])?;
    let spec = |sub: &str| format!("type=volume,src=subv,dst=/d,volume-subpath={sub}");
    if c.docker.version() == DockerVersion::Host {
        let e = c.docker.fails(&[
            "run",
            "--rm",
            "--network",
            "none",
            "--mount",
            &spec("sub"),
            TEST_IMAGE,
            "true",
        ])?;
        println!("    Docker 20.10 has no volume-subpath: {e}");
    } else {
        let out = c.run(&[
            "--mount",
            &spec("sub"),
            TEST_IMAGE,
            "sh",
            "-c",
            "cat /d/f; ls /d",
        ])?;
        ensure!(out == "inside\nf", "the subpath showed {out:?}");
        let e = c.docker.fails(&[
            "run",
            "--rm",
            "--network",
            "none",
            "--mount",
            &spec("nope"),
            TEST_IMAGE,
            "true",
        ])?;
        ensure!(!e.is_empty(), "no error for a missing subpath");
        println!("    missing subpath: {e}");
    }
    ensure!(c.status("subv")?["mounts"] == 0, "{}", c.status("subv")?);
    c.docker.ok(&["volume", "rm", "subv"])?;
    c.assert_no_leftovers()
}

fn main() {
    harness::run(
        "volumes",
        setup,
        &[
            ("raw_protocol", raw_protocol),
            ("volume_subpath", volume_subpath),
            (
                "create_with_options_and_inspect",
                create_with_options_and_inspect,
            ),
            ("write_then_read_back", write_then_read_back),
            (
                "two_containers_share_a_volume",
                two_containers_share_a_volume,
            ),
            (
                "docker_cp_into_running_container",
                docker_cp_into_running_container,
            ),
            (
                "remove_in_use_refused_then_succeeds",
                remove_in_use_refused_then_succeeds,
            ),
            (
                "implicit_create_with_volume_driver",
                implicit_create_with_volume_driver,
            ),
            (
                "bad_names_and_options_rejected",
                bad_names_and_options_rejected,
            ),
            ("volplugin_restart_keeps_running_containers", |c| {
                keeps_volplugin_up(c, volplugin_restart_keeps_running_containers)
            }),
            ("kill9_during_creates_and_mounts", |c| {
                keeps_volplugin_up(c, kill9_during_creates_and_mounts)
            }),
            ("admin_cli_table", admin_cli_table),
            ("mounts_clear", mounts_clear),
            (
                "remount_while_another_namespace_holds_it",
                remount_while_another_namespace_holds_it,
            ),
            ("socket_activation", |c| {
                keeps_volplugin_up(c, socket_activation)
            }),
            ("scratch_mount_left_by_a_crash", |c| {
                keeps_volplugin_up(c, scratch_mount_left_by_a_crash)
            }),
            (
                "resize_while_a_container_writes",
                resize_while_a_container_writes,
            ),
            (
                "resize_ext4_online_needs_cap_sys_resource",
                resize_ext4_online_needs_cap_sys_resource,
            ),
            ("kill9_during_resize", |c| {
                keeps_volplugin_up(c, kill9_during_resize)
            }),
        ],
    )
}
