//! The fleet lab by hand (see docs/lab.md; `scripts/lab.sh` wraps this):
//!
//! ```text
//! lab up            start the lab and keep it up until SIGINT/SIGTERM (then remove it)
//! lab down          stop the running lab (SIGTERM to its `lab up`), or remove a stale one
//! lab status        the running lab: names, sockets, daemons, `netplugin host ls`
//! lab shell HOST    a shell inside HOST (a, b, c, sw, etcd): docker, netplugin, ovs-vsctl
//!                   work there with their default paths
//! lab clean         remove labs whose owner process is gone
//! ```

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use integration::lab::{self, Lab, LabOptions};
use integration::procs::{pid_alive, wait_until};

fn usage() -> ! {
    eprintln!("usage: lab up | down | status | shell HOST [CMD...] | clean");
    std::process::exit(2);
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("up") => up(),
        Some("down") => down(),
        Some("status") => status(),
        Some("shell") => shell(
            args.get(1).map(String::as_str).unwrap_or_else(|| usage()),
            &args[2..],
        ),
        Some("clean") => {
            for l in lab::clean_stale() {
                println!("removed: {l}");
            }
            Ok(())
        }
        _ => usage(),
    }
}

fn up() -> Result<()> {
    use nix::sys::signal::{SigSet, SigmaskHow, Signal};
    // Blocked here before any thread exists, so only the sigwait below sees them; daemons get
    // a clean mask (Daemon::spawn resets it).
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None)?;
    if let Some(dir) = lab::current_lab_dir() {
        if owner_alive(&dir) {
            bail!("a lab is already up in {} (lab down first)", dir.display());
        }
    }
    // netplugin with its defaults, as on a real fleet host.
    let lab = Lab::start(LabOptions::default())?;
    let mut env = lab.describe();
    env += &format!(
        "NETPLUGIN_BIN={}\n",
        integration::plugins::binary("netplugin")?.display()
    );
    std::fs::write(lab.dir.join("lab.env"), &env)?;
    println!("{env}");
    println!("lab up; `lab shell a` enters host a; `lab down` (or Ctrl-C here) removes it");
    std::fs::write(lab.dir.join("ready"), "")?;
    let sig = set.wait()?;
    println!("{sig}: removing lab {}", lab.id);
    drop(lab);
    println!("lab removed");
    Ok(())
}

fn owner(dir: &Path) -> Option<u32> {
    std::fs::read_to_string(dir.join("owner.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn owner_alive(dir: &Path) -> bool {
    owner(dir).is_some_and(pid_alive)
}

fn current() -> Result<PathBuf> {
    lab::current_lab_dir().context("no lab is up (lab up)")
}

fn env_of(dir: &Path) -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(dir.join("lab.env"))
        .with_context(|| format!("{} is not ready yet", dir.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

fn down() -> Result<()> {
    let dir = current()?;
    let id = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match owner(&dir).filter(|p| pid_alive(*p)) {
        Some(pid) => {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            )?;
            println!("asked `lab up` (pid {pid}) to remove lab {id} ...");
            if !wait_until(Duration::from_secs(180), Duration::from_millis(200), || {
                !dir.exists() && !pid_alive(pid)
            }) {
                bail!("lab {id} still there after 180 s");
            }
        }
        None => {
            for e in lab::force_teardown(&id, &dir) {
                eprintln!("{e}");
            }
        }
    }
    println!("lab {id} removed");
    Ok(())
}

fn status() -> Result<()> {
    let dir = current()?;
    println!(
        "lab {} (owner pid {:?}, {})",
        dir.display(),
        owner(&dir),
        if owner_alive(&dir) {
            "up"
        } else {
            "owner gone: lab down removes it"
        }
    );
    let env = env_of(&dir)?;
    for (k, v) in &env {
        println!("  {k}={v}");
    }
    let get = |k: &str| env.iter().find(|(kk, _)| kk == k).map(|(_, v)| v.clone());
    if let (Some(bin), Some(sock)) = (get("NETPLUGIN_BIN"), get("HOST_A_NETPLUGIN_ADMIN")) {
        println!("\nnetplugin host ls (via host a):");
        let _ = Command::new(bin)
            .args(["host", "ls", "--admin-socket", &sock])
            .status();
    }
    Ok(())
}

fn shell(host: &str, cmd: &[String]) -> Result<()> {
    let dir = current()?;
    let env = env_of(&dir)?;
    let get = |k: &str| env.iter().find(|(kk, _)| kk == k).map(|(_, v)| v.clone());
    let (netns, mntns) = match host {
        "sw" | "switch" => (get("SWITCH_NETNS"), get("SWITCH_MNTNS")),
        "etcd" => (get("ETCD_NETNS"), None),
        h => {
            let n = h.to_uppercase();
            (
                get(&format!("HOST_{n}_NETNS")),
                get(&format!("HOST_{n}_MNTNS")),
            )
        }
    };
    let netns = netns.with_context(|| format!("no lab node {host}"))?;
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={netns}"));
    if let Some(m) = mntns {
        c.arg(format!("--mount={m}"));
    }
    let bin_dir = get("NETPLUGIN_BIN")
        .and_then(|b| Path::new(&b).parent().map(|p| p.display().to_string()))
        .unwrap_or_default();
    c.arg("--")
        .env(
            "PATH",
            format!("{bin_dir}:{}", std::env::var("PATH").unwrap_or_default()),
        )
        .env_remove("DOCKER_HOST")
        .env("PS1", format!("[lab {host}] \\w# "));
    if cmd.is_empty() {
        c.args(["bash", "--norc", "-i"]);
    } else {
        c.args(cmd);
    }
    Err(c.exec().into())
}
