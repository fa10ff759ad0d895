//! volplugin's lvm-thin backend on a real device-mapper kernel.
//!
//! This host's kernel has no device-mapper, so the tests run in a qemu guest (see
//! `integration::vm`): Debian's cloud kernel, an initramfs with lvm2, xfsprogs, busybox,
//! volplugin and this very test binary, and a virtual disk with a VG and a thin pool made in
//! the guest. In the guest this binary (with `BERTH_GUEST=1`) drives volplugin over its socket
//! with the exact requests dockerd sends, checks with `lvs` and `dmsetup`, and reports each
//! check on the second serial port; on the host each check is one test.
//!
//! Two boots on one disk: the second one checks what survives a reboot.
//! Run: `cargo test -p integration --test lvm_thin` (root; see `vm::require_prerequisites`).

use std::time::Duration;

use anyhow::Result;
use integration::harness;
use integration::thin_guest::{GuestRun, GuestSuite};

// A bound, not a timing: the boots take several minutes, far longer when the machine's two
// cores are busy.
const BOOT_TIMEOUT: Duration = Duration::from_secs(720);

struct Ctx {
    run: GuestRun,
}

fn setup() -> Result<Ctx> {
    let run = GuestSuite {
        name: "lvm_thin",
        phases: &[("first_boot", ""), ("second_boot", "")],
        disk_per_phase: false,
        disk_bytes: 3 << 30,
        memory_mb: 1536,
        timeout: BOOT_TIMEOUT,
        env: Vec::new(),
        programs: Vec::new(),
    }
    .run()?;
    for (key, value) in &run.figures {
        println!("guest figure {key}: {value}");
    }
    Ok(Ctx { run })
}

integration::guest_tests!(
    Ctx,
    run,
    pool_setup,
    create_get_and_lvs,
    mount_refcount_and_mapped_sectors,
    ext4_volume,
    lvm_name_rules,
    foreign_lvs_untouched,
    clone_is_writable_with_its_own_uuid,
    clone_of_unmounted_source_and_o1,
    clone_errors,
    kill9_mid_create_clone_remove,
    restart_keeps_mounts,
    overcommit_cap,
    pool_threshold_and_metrics,
    loopfile_reflink_clone,
    resize_xfs_online_while_writing,
    resize_ext4_online_and_without_the_capability,
    resize_refused_past_the_overcommit_cap,
    kill9_mid_resize,
    resize_time_10g_100g,
    after_reboot,
);

fn main() {
    if std::env::var_os("BERTH_GUEST").is_some() {
        guest::main();
    }
    harness::run("lvm_thin", setup, GUEST_TESTS);
}

/// What runs inside the guest.
mod guest {
    use std::io::{Read, Write};
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::time::{Duration, Instant};

    use anyhow::{anyhow, bail, ensure, Context, Result};
    use integration::plugins::{docker_call, metric_value, scrape_metrics};
    use integration::procs::{wait_until, Daemon};
    use integration::thin_guest::*;
    use serde_json::{json, Value};

    pub fn main() -> ! {
        let phase = std::env::args().nth(1).unwrap_or_default();
        let tests: Vec<(&str, GuestTest)> = match phase.as_str() {
            "first_boot" => vec![
                ("pool_setup", pool_setup),
                ("create_get_and_lvs", create_get_and_lvs),
                (
                    "mount_refcount_and_mapped_sectors",
                    mount_refcount_and_mapped_sectors,
                ),
                ("ext4_volume", ext4_volume),
                ("lvm_name_rules", lvm_name_rules),
                ("foreign_lvs_untouched", foreign_lvs_untouched),
                (
                    "clone_is_writable_with_its_own_uuid",
                    clone_is_writable_with_its_own_uuid,
                ),
                (
                    "clone_of_unmounted_source_and_o1",
                    clone_of_unmounted_source_and_o1,
                ),
                ("clone_errors", clone_errors),
                (
                    "kill9_mid_create_clone_remove",
                    kill9_mid_create_clone_remove,
                ),
                ("restart_keeps_mounts", restart_keeps_mounts),
                ("overcommit_cap", overcommit_cap),
                ("pool_threshold_and_metrics", pool_threshold_and_metrics),
                ("loopfile_reflink_clone", loopfile_reflink_clone),
                (
                    "resize_xfs_online_while_writing",
                    resize_xfs_online_while_writing,
                ),
                (
                    "resize_ext4_online_and_without_the_capability",
                    resize_ext4_online_and_without_the_capability,
                ),
                (
                    "resize_refused_past_the_overcommit_cap",
                    resize_refused_past_the_overcommit_cap,
                ),
                ("kill9_mid_resize", kill9_mid_resize),
                ("resize_time_10g_100g", resize_time_10g_100g),
                ("prepare_reboot", prepare_reboot),
            ],
            "second_boot" => vec![("after_reboot", after_reboot)],
            other => panic!("unknown guest phase {other:?}"),
        };
        run_phase(tests)
    }

    fn write_file(path: &Path, mib: usize, byte: u8) -> Result<()> {
        let mut f = std::fs::File::create(path)?;
        let block = vec![byte; 1 << 20];
        for _ in 0..mib {
            f.write_all(&block)?;
        }
        f.sync_all()?;
        Ok(())
    }

    fn read_all(path: &Path) -> Result<Vec<u8>> {
        let mut v = Vec::new();
        std::fs::File::open(path)
            .with_context(|| format!("open {}", path.display()))?
            .read_to_end(&mut v)?;
        Ok(v)
    }

    fn xfs_uuid(dev: &str) -> Result<String> {
        let out = sh(&["xfs_admin", "-u", dev])?;
        Ok(out.trim().trim_start_matches("UUID = ").to_string())
    }

    // -----------------------------------------------------------------------------------------
    // first boot

    fn pool_setup(g: &mut Guest) -> Result<()> {
        integration::vm::guest::vg_state_and_pool(VG, POOL, "1500m", "16m", None)?;
        // A daemon with a missing pool refuses to start, naming it.
        g.pool = "nopool".into();
        let err = g
            .start()
            .expect_err("a daemon whose pool is missing must refuse to start")
            .to_string();
        ensure!(
            err.contains("nopool") && err.contains("does not exist"),
            "{err}"
        );
        g.pool = POOL.into();
        g.flags = vec![
            "--pool-data-max-percent".into(),
            "60".into(),
            "--max-overcommit".into(),
            "20".into(),
        ];
        g.start()?;
        // LVM's default 64 KiB chunk for this pool: volplugin warns at start.
        let log = g.log_tail(40);
        ensure!(
            log.contains("chunk size below 256 KiB") && log.contains("chunk_kib=64"),
            "no chunk size warning:\n{log}"
        );
        Ok(())
    }

    fn create_get_and_lvs(_: &mut Guest) -> Result<()> {
        create("db", json!({"size": "1G", "fs": "xfs"}))?;
        // Docker repeats a Create: success.
        create("db", json!({"size": "1G", "fs": "xfs"}))?;
        let rows = lvs()?;
        let row = rows.get("berth_db").context("no LV berth_db")?;
        ensure!(row["lv_size"] == "1073741824", "{row}");
        ensure!(row["pool_lv"] == POOL, "{row}");
        ensure!(row["lv_tags"] == "berth-vol", "{row}");
        let st = status("db")?;
        ensure!(st["backend"] == "lvm-thin", "{st}");
        ensure!(st["pool"] == format!("{VG}/{POOL}"), "{st}");
        ensure!(st["pool_mode"] == "rw", "{st}");
        ensure!(st["pool_data_percent"].as_f64().is_some(), "{st}");
        ensure!(st["pool_metadata_percent"].as_f64() > Some(0.0), "{st}");
        ensure!(st["lv"] == format!("{VG}/berth_db"), "{st}");
        // mkfs wrote a few MiB: mapped sectors, from the dm status.
        let alloc = st["allocated_bytes"].as_u64().context("allocated_bytes")?;
        ensure!(alloc > 0 && alloc < 200 << 20, "{st}");
        let dms = sh(&["dmsetup", "status", &dm("berth_db")])?;
        ensure!(dms.contains(" thin "), "{dms}");
        let mapped: u64 = dms.split_whitespace().nth(3).unwrap_or("0").parse()?;
        ensure!(
            mapped * 512 == alloc,
            "dmsetup says {dms}, Status says {alloc}"
        );
        ensure!(list()?.contains(&"db".to_string()));
        consistent()
    }

    fn mount_refcount_and_mapped_sectors(_: &mut Guest) -> Result<()> {
        let before = status("db")?["allocated_bytes"].as_u64().unwrap_or(0);
        let p1 = mount("db", "c1")?;
        let p2 = mount("db", "c2")?;
        ensure!(
            p1 == p2 && p1 == Path::new("/state/vol/mounts/db"),
            "{p1:?} {p2:?}"
        );
        write_file(&p1.join("data"), 64, 0xab)?;
        let st = status("db")?;
        ensure!(st["mounts"] == 2, "{st}");
        ensure!(
            st["device"]
                .as_str()
                .is_some_and(|d| d.starts_with("253:") || d.contains(':')),
            "{st}"
        );
        let after = st["allocated_bytes"].as_u64().unwrap_or(0);
        ensure!(
            after >= before + (60 << 20),
            "allocated {before} -> {after}"
        );
        ensure!(st["used_bytes"].as_u64() > Some(60 << 20), "{st}");
        unmount("db", "c1")?;
        ensure!(p1.join("data").exists(), "still mounted for c2");
        let err = call_err("VolumeDriver.Remove", json!({"Name": "db"}))?;
        ensure!(err.contains("in use"), "{err}");
        unmount("db", "c2")?;
        ensure!(!p1.join("data").exists(), "unmounted after the last one");
        // Unmount of an unknown ID is success (dockerd restarts).
        unmount("db", "c2")?;
        let p = mount("db", "c3")?;
        ensure!(read_all(&p.join("data"))?.iter().all(|&b| b == 0xab));
        unmount("db", "c3")?;
        consistent()
    }

    fn ext4_volume(_: &mut Guest) -> Result<()> {
        create("logs", json!({"size": "256M", "fs": "ext4"}))?;
        let p = mount("logs", "x")?;
        std::fs::write(p.join("f"), b"ext4 works")?;
        let mounts = std::fs::read_to_string("/proc/self/mounts")?;
        ensure!(mounts.contains("/state/vol/mounts/logs ext4"), "{mounts}");
        unmount("logs", "x")?;
        remove("logs")?;
        remove("logs")?; // idempotent
        ensure!(!lvs()?.contains_key("berth_logs"));
        consistent()
    }

    fn lvm_name_rules(_: &mut Guest) -> Result<()> {
        // LVM refuses LV names starting with "snapshot"; the berth_ prefix makes them fine.
        create("snapshot1", json!({"size": "16M", "fs": "ext4"}))?;
        create("a.b_c-d", json!({"size": "16M", "fs": "ext4"}))?;
        let rows = lvs()?;
        ensure!(rows.contains_key("berth_snapshot1") && rows.contains_key("berth_a.b_c-d"));
        ensure!(Path::new(&format!("/dev/mapper/{}", dm("berth_a.b_c-d"))).exists());
        let err = call_err(
            "VolumeDriver.Create",
            json!({"Name": "x_tmeta", "Opts": {}}),
        )?;
        ensure!(err.contains("_tmeta") && err.contains("reserves"), "{err}");
        let long = "l".repeat(120);
        let err = call_err("VolumeDriver.Create", json!({"Name": long, "Opts": {}}))?;
        ensure!(err.contains("too long for LVM"), "{err}");
        // The longest name that fits works end to end.
        let longest = "m".repeat(124 - VG.len() - "berth_".len());
        create(&longest, json!({"size": "16M", "fs": "ext4"}))?;
        mount(&longest, "x")?;
        unmount(&longest, "x")?;
        remove(&longest)?;
        let err = call_err(
            "VolumeDriver.Create",
            json!({"Name": "bad/name", "Opts": {}}),
        )?;
        ensure!(err.contains("volume name"), "{err}");
        remove("snapshot1")?;
        remove("a.b_c-d")?;
        consistent()
    }

    fn foreign_lvs_untouched(g: &mut Guest) -> Result<()> {
        // An admin's thin LV that happens to have our naming, but not our tag.
        sh(&[
            "lvm",
            "lvcreate",
            "-q",
            "-V",
            "64m",
            "-T",
            &format!("{VG}/{POOL}"),
            "-n",
            "berth_manual",
        ])?;
        ensure!(
            !list()?.contains(&"manual".to_string()),
            "listed a foreign LV"
        );
        let err = call_err("VolumeDriver.Create", json!({"Name": "manual", "Opts": {}}))?;
        ensure!(
            err.contains("not tagged berth-vol") || err.contains("already exists"),
            "{err}"
        );
        remove("manual")?; // no such volume: success, and the LV stays
        g.restart()?; // reconcile must leave it alone too
        ensure!(
            lvs()?.contains_key("berth_manual"),
            "the foreign LV was removed"
        );
        ensure!(!list()?.contains(&"manual".to_string()));
        // The command volplugin removes with leaves an untagged LV alone.
        sh(&[
            "lvm",
            "lvremove",
            "--yes",
            "--select",
            "lv_tags={berth-vol}",
            &format!("{VG}/berth_manual"),
        ])?;
        ensure!(
            lvs()?.contains_key("berth_manual"),
            "lvremove --select removed an untagged LV"
        );
        sh(&["lvm", "lvremove", "-q", "-y", &format!("{VG}/berth_manual")])?;
        // A volume whose LV was removed behind volplugin's back can still be removed.
        create("gone", json!({"size": "16M", "fs": "ext4"}))?;
        sh(&["lvm", "lvremove", "-q", "-y", &format!("{VG}/berth_gone")])?;
        remove("gone")?;
        ensure!(!list()?.contains(&"gone".to_string()));
        consistent()
    }

    fn clone_is_writable_with_its_own_uuid(_: &mut Guest) -> Result<()> {
        // The source stays mounted and busy: the clone is crash-consistent, its log replayed.
        let p = mount("db", "writer")?;
        std::fs::write(p.join("marker"), b"before clone")?;
        sh(&["sync"])?;
        create("db-copy", json!({"from": "db"}))?;
        std::fs::write(p.join("marker"), b"after clone")?;
        let st = status("db-copy")?;
        ensure!(
            st["from"] == "db" && st["size_bytes"] == 1u64 << 30 && st["fs"] == "xfs",
            "{st}"
        );
        let row = lvs()?.remove("berth_db-copy").context("no clone LV")?;
        ensure!(row["origin"] == "berth_db", "{row}");
        ensure!(
            row["lv_attr"].as_str().unwrap_or("").chars().nth(4) == Some('a'),
            "clone not active: {row}"
        );
        let src_uuid = xfs_uuid(&format!("/dev/mapper/{}", dm("berth_db")));
        let q = mount("db-copy", "reader")?;
        // Both mounted at once without nouuid: the clone has its own UUID.
        let clone_uuid = xfs_uuid(&format!("/dev/mapper/{}", dm("berth_db-copy")));
        if let (Ok(a), Ok(b)) = (&src_uuid, &clone_uuid) {
            ensure!(a != b, "clone UUID {b} equals its source's");
        }
        ensure!(
            read_all(&q.join("marker"))? == b"before clone",
            "clone data"
        );
        ensure!(
            read_all(&q.join("data"))?.iter().all(|&b| b == 0xab),
            "clone data (64 MiB)"
        );
        std::fs::write(q.join("marker"), b"clone's own")?;
        ensure!(
            read_all(&p.join("marker"))? == b"after clone",
            "source changed by the clone"
        );
        unmount("db-copy", "reader")?;
        unmount("db", "writer")?;
        // Idempotent repeat, then a conflicting one.
        create("db-copy", json!({"from": "db"}))?;
        let err = call_err(
            "VolumeDriver.Create",
            json!({"Name": "db-copy", "Opts": {"size": "2G"}}),
        )?;
        ensure!(err.contains("exists with different settings"), "{err}");
        consistent()
    }

    fn clone_of_unmounted_source_and_o1(_: &mut Guest) -> Result<()> {
        // Clone of a clone; clone time does not grow with data (metadata only).
        let t = Instant::now();
        create("copy2", json!({"from": "db-copy"}))?;
        let small = t.elapsed();
        let st = status("copy2")?;
        ensure!(st["from"] == "db-copy", "{st}");
        let q = mount("copy2", "x")?;
        ensure!(read_all(&q.join("marker"))? == b"clone's own");
        unmount("copy2", "x")?;
        // Removing the source leaves the clone whole.
        remove("db-copy")?;
        let q = mount("copy2", "y")?;
        ensure!(read_all(&q.join("data"))?.len() == 64 << 20);
        unmount("copy2", "y")?;
        remove("copy2")?;
        println!("clone of a 1G volume with 64 MiB took {small:?}");
        consistent()
    }

    fn clone_errors(_: &mut Guest) -> Result<()> {
        let err = call_err(
            "VolumeDriver.Create",
            json!({"Name": "c", "Opts": {"from": "missing"}}),
        )?;
        ensure!(err.contains("from") && err.contains("missing"), "{err}");
        let err = call_err(
            "VolumeDriver.Create",
            json!({"Name": "c", "Opts": {"from": "db", "size": "5G"}}),
        )?;
        ensure!(err.contains("size") && err.contains("1G"), "{err}");
        let err = call_err(
            "VolumeDriver.Create",
            json!({"Name": "c", "Opts": {"from": "db", "fs": "ext4"}}),
        )?;
        ensure!(err.contains("fs"), "{err}");
        ensure!(!lvs()?.contains_key("berth_c"));
        consistent()
    }

    fn kill9_mid_create_clone_remove(g: &mut Guest) -> Result<()> {
        for (i, delay) in [20u64, 200, 700].iter().enumerate() {
            for op in ["create", "clone", "remove"] {
                let name = format!("k{i}{op}");
                if op == "remove" {
                    create(&name, json!({"size": "512M"}))?;
                }
                let n2 = name.clone();
                let op2 = op.to_string();
                let worker = std::thread::spawn(move || match op2.as_str() {
                    "create" => create(&n2, json!({"size": "512M", "fs": "xfs"})),
                    "clone" => create(&n2, json!({"from": "db"})),
                    _ => remove(&n2),
                });
                std::thread::sleep(Duration::from_millis(*delay));
                g.kill9()?;
                let _ = worker.join();
                g.start()?;
                consistent()
                    .with_context(|| format!("after kill -9 {delay} ms into {op} {name}"))?;
                // Whatever state it was left in, the volume can be made and removed again.
                if op == "remove" || !list()?.contains(&name) {
                    let _ = remove(&name);
                    if op != "remove" {
                        continue;
                    }
                } else {
                    remove(&name)?;
                }
            }
        }
        // Everything back to just db.
        let names = list()?;
        ensure!(names == vec!["db".to_string()], "left: {names:?}");
        consistent()
    }

    fn restart_keeps_mounts(g: &mut Guest) -> Result<()> {
        let p = mount("db", "long-running")?;
        g.kill9()?;
        g.start()?;
        let st = status("db")?;
        ensure!(st["mounts"] == 1, "{st}");
        ensure!(p.join("data").exists(), "the mount went away");
        g.restart()?; // a clean restart too
        ensure!(status("db")?["mounts"] == 1);
        unmount("db", "long-running")?;
        ensure!(!p.join("data").exists());
        consistent()
    }

    fn overcommit_cap(_: &mut Guest) -> Result<()> {
        // Pool 1500 MiB, cap 20x = 30000 MiB; 1 GiB (db) is already provisioned.
        create("big1", json!({"size": "20G"}))?;
        let err = call_err(
            "VolumeDriver.Create",
            json!({"Name": "big2", "Opts": {"size": "10G"}}),
        )?;
        ensure!(
            err.contains(&format!("{VG}/{POOL}"))
                && err.contains("overcommitted")
                && err.contains("20x"),
            "{err}"
        );
        let err2 = call_err(
            "VolumeDriver.Create",
            json!({"Name": "big2", "Opts": {"from": "big1"}}),
        )?;
        ensure!(err2.contains("overcommitted"), "{err2}");
        ensure!(!lvs()?.contains_key("berth_big2"));
        remove("big1")?;
        create("big2", json!({"size": "10G"}))?;
        remove("big2")?;
        consistent()
    }

    fn metric(name: &str) -> Result<f64> {
        let series = format!("{name}{{pool=\"{VG}/{POOL}\"}}");
        metric_value(&scrape_metrics("127.0.0.1:9474")?, &series)
            .ok_or_else(|| anyhow!("no {series} in the metrics"))
    }

    fn pool_threshold_and_metrics(g: &mut Guest) -> Result<()> {
        let before = metric("berth_vol_pool_data_percent")?;
        ensure!(metric("berth_vol_pool_metadata_percent")? > 0.0);
        // Fill the pool past 25%, with the daemon refusing new volumes over 25%.
        g.flags = vec!["--pool-data-max-percent".into(), "25".into()];
        g.restart()?;
        create("filler", json!({"size": "1G"}))?;
        let p = mount("filler", "f")?;
        let need = ((26.0 - before).max(0.0) / 100.0 * 1500.0) as usize + 8;
        write_file(&p.join("fill"), need, 0x5a)?;
        let data = metric("berth_vol_pool_data_percent")?;
        ensure!(data > 25.0, "pool data {data}% after writing {need} MiB");
        let st = status("filler")?;
        ensure!(st["pool_data_percent"].as_f64() > Some(25.0), "{st}");
        let err = call_err(
            "VolumeDriver.Create",
            json!({"Name": "more", "Opts": {"size": "64M", "fs": "ext4"}}),
        )?;
        ensure!(
            err.contains(&format!("{VG}/{POOL}"))
                && err.contains("25%")
                && err.contains("pool-data-max-percent"),
            "{err}"
        );
        let err = call_err(
            "VolumeDriver.Create",
            json!({"Name": "more", "Opts": {"from": "db"}}),
        )?;
        ensure!(err.contains("pool-data-max-percent"), "{err}");
        ensure!(!lvs()?.contains_key("berth_more"));
        // Removing data frees the pool (the LV goes; fstrim is not needed for that).
        unmount("filler", "f")?;
        remove("filler")?;
        let data = metric("berth_vol_pool_data_percent")?;
        ensure!(data < 25.0, "pool still {data}% after removing the filler");
        create("more", json!({"size": "64M", "fs": "ext4"}))?;
        remove("more")?;
        g.flags = vec![
            "--pool-data-max-percent".into(),
            "60".into(),
            "--max-overcommit".into(),
            "20".into(),
        ];
        g.restart()?;
        consistent()
    }

    /// loopfile's `from=`: reflink where the state dir's filesystem can, else a clear error.
    fn loopfile_reflink_clone(_: &mut Guest) -> Result<()> {
        let mut results = Vec::new();
        for (fs, reflink) in [("xfs", true), ("ext4", false)] {
            let lv = format!("lf{fs}");
            sh(&["lvm", "lvcreate", "-q", "-y", "-L", "320m", "-n", &lv, VG])?;
            let dev = format!("/dev/{VG}/{lv}");
            if fs == "xfs" {
                sh(&["mkfs.xfs", "-q", "-m", "reflink=1", &dev])?;
            } else {
                sh(&["mkfs.ext4", "-q", &dev])?;
            }
            let root = format!("/lf-{fs}");
            std::fs::create_dir_all(&root)?;
            sh(&["mount", &dev, &root])?;
            let plugin_dir = format!("/run/lf-{fs}");
            let mut cmd = Command::new("/usr/bin/volplugin");
            cmd.args([
                "serve",
                "--backend",
                "loopfile",
                "--state-dir",
                &format!("{root}/state"),
            ])
            .args([
                "--plugin-dir",
                &plugin_dir,
                "--admin-socket",
                &format!("/run/lf-{fs}.admin"),
            ])
            .args(["--metrics", "off", "--docker-socket", "/run/no-docker.sock"])
            .args(["--default-size", "64M", "--default-fs", "ext4"]);
            let mut d = Daemon::spawn(&format!("loopfile-{fs}"), cmd, Path::new("/tmp/logs"))?;
            let sock = Path::new(&plugin_dir).join("berth-vol.sock");
            ensure!(wait_until(
                Duration::from_secs(60),
                Duration::from_millis(20),
                || { docker_call(&sock, "Plugin.Activate", None).is_ok() }
            ));
            let c = |m: &str, b: Value| docker_call(&sock, m, Some(&b.to_string()));
            let check = || -> Result<()> {
                let (s, v) = c(
                    "VolumeDriver.Create",
                    json!({"Name": "src", "Opts": {"size": "300M", "fs": "xfs"}}),
                )?;
                ensure!(s == 200, "{v}");
                let (_, v) = c("VolumeDriver.Mount", json!({"Name": "src", "ID": "a"}))?;
                let p = PathBuf::from(v["Mountpoint"].as_str().unwrap_or_default());
                write_file(&p.join("x"), 8, 0x11)?;
                // Cloned while the source is mounted (dirty log).
                let (s, v) = c(
                    "VolumeDriver.Create",
                    json!({"Name": "dst", "Opts": {"from": "src"}}),
                )?;
                if reflink {
                    ensure!(s == 200, "reflink clone failed: {v}");
                    let (_, v) = c("VolumeDriver.Mount", json!({"Name": "dst", "ID": "b"}))?;
                    let q = PathBuf::from(v["Mountpoint"].as_str().unwrap_or_default());
                    ensure!(
                        read_all(&q.join("x"))?.iter().all(|&b| b == 0x11) && q.join("x").exists()
                    );
                    c("VolumeDriver.Unmount", json!({"Name": "dst", "ID": "b"}))?;
                } else {
                    let err = v["Err"].as_str().unwrap_or_default();
                    ensure!(
                        s != 200 && err.contains("cannot reflink") && err.contains("lvm-thin"),
                        "{v}"
                    );
                    let (s, _) = c("VolumeDriver.Get", json!({"Name": "dst"}))?;
                    ensure!(s != 200, "a failed clone left a volume");
                }
                c("VolumeDriver.Unmount", json!({"Name": "src", "ID": "a"}))?;
                Ok(())
            };
            let r = check();
            let tail = d.log_tail(10);
            let _ = d.stop(Duration::from_secs(20));
            let _ = sh(&["umount", &root]);
            let _ = sh(&["lvm", "lvremove", "-q", "-y", &format!("{VG}/{lv}")]);
            results.push(r.with_context(|| format!("loopfile on {fs}; log:\n{tail}")));
        }
        for r in results {
            r?;
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // online resize

    const MIB: u64 = 1 << 20;
    const ADMIN: &str = "/run/berth/volplugin.sock";

    /// `volplugin volume resize` as an operator runs it: its output, or its error text.
    fn resize(name: &str, size: &str) -> Result<String> {
        let out = Command::new("/usr/bin/volplugin")
            .args(["volume", "resize", name, size, "--admin-socket", ADMIN])
            .output()?;
        if !out.status.success() {
            bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn size_metric(name: &str) -> Result<u64> {
        let series = format!("berth_vol_volume_size_bytes{{volume=\"{name}\"}}");
        metric_value(&scrape_metrics("127.0.0.1:9474")?, &series)
            .map(|v| v as u64)
            .ok_or_else(|| anyhow!("no {series} in the metrics"))
    }

    /// The filesystem's size by statvfs while mounted (its own metadata, such as XFS's log of
    /// a fixed size, left out).
    fn fs_bytes(name: &str) -> Result<Option<u64>> {
        if status(name)?["mounts"].as_u64() == Some(0) {
            return Ok(None);
        }
        let vfs = nix::sys::statvfs::statvfs(&Path::new("/state/vol/mounts").join(name))?;
        Ok(Some(vfs.blocks() * vfs.fragment_size()))
    }

    /// Every view of a thin volume at `size` (of the two a resize from `from` can leave):
    /// Status (Docker's Get), the metrics, the LV, the dm device, and the filesystem while
    /// mounted against its statvfs size at `from` (`fs_at_from`). Returns the filesystem's.
    fn sizes_agree(
        name: &str,
        size: u64,
        from: u64,
        fs_at_from: Option<u64>,
    ) -> Result<Option<u64>> {
        let st = status(name)?;
        let lv = lvs()?
            .remove(&format!("berth_{name}"))
            .with_context(|| format!("no LV for {name}"))?;
        let lv_size: u64 = lv["lv_size"].as_str().unwrap_or("0").parse()?;
        let node = format!("/dev/mapper/{}", dm(&format!("berth_{name}")));
        let dev_size: u64 = sh(&["blockdev", "--getsize64", &node])?.trim().parse()?;
        let metric = size_metric(name)?;
        ensure!(
            st["size_bytes"] == size
                && st.get("resizing_to_bytes").is_none()
                && metric == size
                && lv_size == size
                && dev_size == size,
            "not all at {size}: Status {st}, metric {metric}, LV {lv_size}, device {dev_size}"
        );
        let fs = fs_bytes(name)?;
        if let (Some(fs), Some(before)) = (fs, fs_at_from) {
            let fits = if size > from {
                fs > before && fs <= size
            } else {
                fs == before
            };
            ensure!(
                fits,
                "filesystem {fs} bytes (at {from}: {before}) on a {size}-byte volume {name}"
            );
        }
        Ok(fs)
    }

    /// A thread appending 1 MiB blocks with O_DIRECT to `path`, one per 20 ms at most, until
    /// told to stop or at `max_mib`; returns how many it wrote, or the first error.
    fn direct_writer(
        path: PathBuf,
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
        max_mib: u64,
    ) -> std::thread::JoinHandle<Result<u64>> {
        std::thread::spawn(move || {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(&path)?;
            // O_DIRECT wants an aligned buffer: a 1 MiB block inside a larger allocation.
            let raw = vec![0x5au8; 2 << 20];
            let offset = raw.as_ptr().align_offset(4096);
            let block = &raw[offset..offset + (1 << 20)];
            let mut written = 0;
            while written < max_mib && !stop.load(std::sync::atomic::Ordering::Relaxed) {
                f.write_all(block)
                    .with_context(|| format!("write {} MiB into {}", written, path.display()))?;
                written += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            f.sync_all()?;
            Ok(written)
        })
    }

    /// xfs on a thin volume grows online while a writer keeps writing: no write fails, every
    /// view shows the new size as soon as the command returns, and the new space is usable.
    fn resize_xfs_online_while_writing(_: &mut Guest) -> Result<()> {
        create("rx", json!({"size": "512M", "fs": "xfs"}))?;
        let p = mount("rx", "writer")?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = direct_writer(p.join("w"), stop.clone(), 450);
        let started = wait_until(Duration::from_secs(30), Duration::from_millis(20), || {
            std::fs::metadata(p.join("w")).is_ok_and(|m| m.len() >= 16 * MIB)
        });
        let fs0 = fs_bytes("rx")?;
        let resized = resize("rx", "1G");
        let during = std::fs::metadata(p.join("w"))?.len();
        let still_writing = !writer.is_finished();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let written = writer
            .join()
            .map_err(|_| anyhow!("writer panicked"))?
            .context("the writer saw an error")?;
        ensure!(started, "the writer did not start");
        let out = resized?;
        ensure!(
            out.contains("size now 1G") && out.contains("online"),
            "{out}"
        );
        ensure!(
            still_writing,
            "the writer had finished before the resize returned"
        );
        sizes_agree("rx", 1 << 30, 512 * MIB, fs0)?;
        println!(
            "resized after {} MiB; the writer wrote {written} MiB",
            during / MIB
        );
        // 500 MiB more: only fits in the new space.
        write_file(&p.join("more"), 500, 0x33)?;
        let err = resize("rx", "768M").expect_err("shrinking must be refused");
        ensure!(err.to_string().contains("invalid option size"), "{err}");
        unmount("rx", "writer")?;
        // Unmounted: grown offline (a scratch mount), then mounted at the new size.
        resize("rx", "1536M")?;
        sizes_agree("rx", 1536 * MIB, 1 << 30, None)?;
        let p = mount("rx", "again")?;
        let fs = sizes_agree("rx", 1536 * MIB, 1 << 30, None)?.context("mounted")?;
        ensure!(
            fs > (1 << 30),
            "the filesystem after an offline growth: {fs}"
        );
        ensure!(read_all(&p.join("more"))?.len() == 500 << 20);
        unmount("rx", "again")?;
        remove("rx")?;
        consistent()
    }

    /// ext4 on a thin volume grows online (this guest's root has CAP_SYS_RESOURCE); a
    /// volplugin without that capability refuses before anything changes, naming it, and
    /// still grows the volume offline.
    fn resize_ext4_online_and_without_the_capability(g: &mut Guest) -> Result<()> {
        create("r4", json!({"size": "256M", "fs": "ext4"}))?;
        let p = mount("r4", "c")?;
        std::fs::write(p.join("marker"), b"ext4 data")?;
        let fs0 = fs_bytes("r4")?;
        let out = resize("r4", "512M")?;
        ensure!(out.contains("online"), "{out}");
        let fs1 = sizes_agree("r4", 512 * MIB, 256 * MIB, fs0)?;
        write_file(&p.join("fill"), 300, 0x44)?;
        // Without CAP_SYS_RESOURCE (24).
        g.drop_caps = vec![24];
        let outcome = (|| -> Result<()> {
            g.restart()?;
            let err = resize("r4", "768M").expect_err("online ext4 growth without the capability");
            let err = err.to_string();
            ensure!(
                err.contains("CAP_SYS_RESOURCE") && err.contains("nothing was changed"),
                "{err}"
            );
            sizes_agree("r4", 512 * MIB, 512 * MIB, fs1)?;
            unmount("r4", "c")?;
            resize("r4", "768M")?;
            sizes_agree("r4", 768 * MIB, 512 * MIB, None)?;
            Ok(())
        })();
        g.drop_caps.clear();
        g.restart()?;
        outcome?;
        let p = mount("r4", "d")?;
        sizes_agree("r4", 768 * MIB, 512 * MIB, fs1)?;
        ensure!(read_all(&p.join("marker"))? == b"ext4 data");
        sh(&["sync"])?;
        unmount("r4", "d")?;
        // The filesystem is clean after online and offline growth.
        let node = format!("/dev/mapper/{}", dm("berth_r4"));
        sh(&["e2fsck", "-f", "-n", &node])?;
        remove("r4")?;
        consistent()
    }

    /// Growth counts against --max-overcommit like a new volume (20x of a 1500 MiB pool).
    fn resize_refused_past_the_overcommit_cap(_: &mut Guest) -> Result<()> {
        create("rcap", json!({"size": "1G"}))?;
        let err = resize("rcap", "40G").expect_err("past the overcommit cap");
        let err = err.to_string();
        ensure!(
            err.contains("overcommitted")
                && err.contains("20x")
                && err.contains("nothing was changed"),
            "{err}"
        );
        sizes_agree("rcap", 1 << 30, 1 << 30, None)?;
        resize("rcap", "2G")?;
        sizes_agree("rcap", 2 << 30, 1 << 30, None)?;
        remove("rcap")?;
        consistent()
    }

    /// kill -9 at moments spread over resizes of a mounted thin volume: after each restart
    /// every view agrees on one of the two sizes and the data is whole.
    fn kill9_mid_resize(g: &mut Guest) -> Result<()> {
        create("rk", json!({"size": "512M", "fs": "xfs"}))?;
        let p = mount("rk", "holder")?;
        write_file(&p.join("data"), 32, 0x77)?;
        // One resize undisturbed, to spread the kills over how long one takes here.
        let t = Instant::now();
        resize("rk", "768M")?;
        let full = t.elapsed().as_millis() as u64;
        let mut size = 768 * MIB;
        let mut fs = fs_bytes("rk")?;
        let mut seen = Vec::new();
        let delays: Vec<u64> = [0u64, 15, 30, 45, 60, 70, 80, 90, 100, 115]
            .iter()
            .map(|pct| full * pct / 100)
            .collect();
        for delay_ms in delays {
            let to = size + 256 * MIB;
            let mut cli = Command::new("/usr/bin/volplugin")
                .args(["volume", "resize", "rk", &format!("{}M", to / MIB)])
                .args(["--admin-socket", ADMIN])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()?;
            std::thread::sleep(Duration::from_millis(delay_ms));
            g.kill9()?;
            let _ = cli.wait();
            g.start()?;
            let landed = if status("rk")?["size_bytes"] == to {
                to
            } else {
                size
            };
            let now = sizes_agree("rk", landed, size, fs)
                .with_context(|| format!("kill -9 {delay_ms} ms into a resize {size} -> {to}"))?;
            seen.push(format!(
                "{delay_ms}ms:{}",
                if landed == to { "new" } else { "old" }
            ));
            size = landed;
            fs = now;
            ensure!(
                read_all(&p.join("data"))?.iter().all(|&b| b == 0x77),
                "data changed"
            );
        }
        // How many kills fell inside a resize, so the start-up reconcile finished it.
        let finished = std::fs::read_to_string("/tmp/logs/volplugin.log")
            .unwrap_or_default()
            .matches("finished_resizes: [\"rk\"]")
            .count();
        println!(
            "an undisturbed resize took {full} ms; sizes after each kill: {}; resizes finished \
             at start: {finished}",
            seen.join(" ")
        );
        resize("rk", &format!("{}M", size / MIB + 256))?;
        sizes_agree("rk", size + 256 * MIB, size, fs)?;
        unmount("rk", "holder")?;
        remove("rk")?;
        consistent()
    }

    /// The time to grow a mounted 10 GiB and 100 GiB thin volume to twice its size through
    /// volplugin, against the same growth by hand on a thin LV of the same pool (lvextend +
    /// xfs_growfs, what volplugin runs): medians of 3, printed as FIGURE lines with the ratio.
    fn resize_time_10g_100g(g: &mut Guest) -> Result<()> {
        // No overcommit cap for these (thin LVs take no space until written).
        let saved = std::mem::replace(
            &mut g.flags,
            vec!["--pool-data-max-percent".into(), "60".into()],
        );
        g.restart()?;
        let outcome = (|| -> Result<()> {
            for gib in [10u64, 100] {
                let mut ours = Vec::new();
                let mut cli = Vec::new();
                let mut raw = Vec::new();
                for round in 0..3 {
                    let name = format!("t{gib}g{round}");
                    create(&name, json!({"size": format!("{gib}G"), "fs": "xfs"}))?;
                    mount(&name, "t")?;
                    let fs0 = fs_bytes(&name)?;
                    // The daemon's work: the admin call the CLI makes, timed at the socket.
                    let body = json!({"size": format!("{}G", 2 * gib)}).to_string();
                    let t = Instant::now();
                    let (code, answer) = docker_call(
                        Path::new(ADMIN),
                        &format!("volumes/{name}/size"),
                        Some(&body),
                    )?;
                    ours.push(t.elapsed());
                    ensure!(code == 200, "{answer}");
                    let fs1 = sizes_agree(&name, (2 * gib) << 30, gib << 30, fs0)?;
                    // What an operator waits for: the CLI (its own start included), 2x -> 3x.
                    let t = Instant::now();
                    resize(&name, &format!("{}G", 3 * gib))?;
                    cli.push(t.elapsed());
                    sizes_agree(&name, (3 * gib) << 30, (2 * gib) << 30, fs1)?;
                    unmount(&name, "t")?;
                    remove(&name)?;

                    let lv = format!("raw{gib}g{round}");
                    sh(&[
                        "lvm",
                        "lvcreate",
                        "-q",
                        "-V",
                        &format!("{gib}g"),
                        "-T",
                        &format!("{VG}/{POOL}"),
                        "-n",
                        &lv,
                    ])?;
                    let node = format!("/dev/{VG}/{lv}");
                    sh(&["mkfs.xfs", "-q", "-K", &node])?;
                    let mnt = format!("/mnt/{lv}");
                    std::fs::create_dir_all(&mnt)?;
                    sh(&["mount", &node, &mnt])?;
                    let t = Instant::now();
                    sh(&[
                        "lvm",
                        "lvextend",
                        "--quiet",
                        "-L",
                        &format!("{}g", 2 * gib),
                        &format!("{VG}/{lv}"),
                    ])?;
                    sh(&["xfs_growfs", "-d", &mnt])?;
                    raw.push(t.elapsed());
                    sh(&["umount", &mnt])?;
                    sh(&["lvm", "lvremove", "-q", "-y", &format!("{VG}/{lv}")])?;
                }
                let median_ms = |v: &mut Vec<Duration>| {
                    v.sort();
                    v[v.len() / 2].as_secs_f64() * 1000.0
                };
                let (o, c, r) = (
                    median_ms(&mut ours),
                    median_ms(&mut cli),
                    median_ms(&mut raw),
                );
                let line = format!(
                    "FIGURE resize_{gib}g_mounted_ms volplugin(admin call) {o:.0} by_hand(lvextend+xfs_growfs) {r:.0} ratio {:.2}; with the CLI's start ({}G->{}G) {c:.0} ratio {:.2}\n",
                    o / r,
                    2 * gib,
                    3 * gib,
                    c / r
                );
                print!("{line}");
                let mut report = std::fs::OpenOptions::new().write(true).open("/dev/ttyS1")?;
                report.write_all(line.as_bytes())?;
            }
            Ok(())
        })();
        g.flags = saved;
        g.restart()?;
        outcome?;
        consistent()
    }

    /// Leaves a mounted volume with data for the second boot (a "power cut": no unmount).
    fn prepare_reboot(_: &mut Guest) -> Result<()> {
        create("persist", json!({"size": "512M"}))?;
        let p = mount("persist", "before-reboot")?;
        std::fs::write(p.join("kept"), b"across reboots")?;
        create("persist-copy", json!({"from": "persist"}))?;
        sh(&["sync"])?;
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // second boot

    fn after_reboot(g: &mut Guest) -> Result<()> {
        // Only the state LV is activated by hand (no LVM autoactivation in this guest):
        // volplugin must activate its thin LVs itself.
        sh(&["lvm", "vgscan", "-q"]).ok();
        sh(&["lvm", "lvchange", "-ay", &format!("{VG}/state")])?;
        std::fs::create_dir_all("/state")?;
        sh(&["mount", &format!("/dev/{VG}/state"), "/state"])?;
        ensure!(!Path::new(&format!("/dev/mapper/{}", dm("berth_persist"))).exists());
        g.flags = vec!["--pool-data-max-percent".into(), "60".into()];
        g.start()?;
        let names = list()?;
        ensure!(names == vec!["db", "persist", "persist-copy"], "{names:?}");
        let st = status("persist")?;
        ensure!(
            st["mounts"] == 0,
            "mount count not cleared after reboot: {st}"
        );
        let p = mount("persist", "after-reboot")?;
        ensure!(read_all(&p.join("kept"))? == b"across reboots");
        let st = status("persist")?;
        ensure!(
            st["pool_mode"] == "rw" && st["allocated_bytes"].as_u64() > Some(0),
            "{st}"
        );
        let q = mount("persist-copy", "c")?;
        ensure!(read_all(&q.join("kept"))? == b"across reboots");
        unmount("persist-copy", "c")?;
        unmount("persist", "after-reboot")?;
        for v in ["persist-copy", "persist", "db"] {
            remove(v)?;
        }
        ensure!(tagged_volumes()?.is_empty());
        let pool = lvs()?.remove(POOL).context("pool gone")?;
        ensure!(
            pool["lv_attr"].as_str().unwrap_or("").starts_with('t'),
            "{pool}"
        );
        consistent()
    }
}
