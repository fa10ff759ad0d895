//! Chaos soak (bounded): container starts and removals with a berth network and berth volumes
//! while netplugin, volplugin or ovs-vswitchd are killed with SIGKILL at random moments; the
//! invariants are checked every `CHECK_EVERY` cycles and at the end.
//!
//! `bash scripts/soak.sh [-- CYCLES MAX_MINUTES SEED]` (defaults 1000 cycles, 50 min, the
//! time). Root; a private dockerd (`--bridge=none --iptables=false`), Open vSwitch (netdev
//! datapath) and both plugins, all started here and stopped at the end, in network and mount
//! namespaces of their own (the script makes them). Traffic stays in 10.231.212.0/24, which
//! exists only inside the containers.
//!
//! Invariants (after a bounded settle, since reconcile and leak release run on timers):
//! - no address twice among the running containers, nor among netplugin's endpoint records;
//! - OVS ports, host-side veths, endpoint records and held addresses match the running
//!   containers exactly: no leak;
//! - volplugin: no orphan loop device, image or mount; each volume's mount count is the
//!   number of running containers using it;
//! - every running container answers a ping from another one;
//! - at the end, every volume takes a write and reads it back in a new container.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use integration::netplugin::Netplugin;
use integration::ovs::OvsEnv;
use integration::plugins::{binary, Volplugin, DOCKER_PLUGIN_DIR};
use integration::procs::wait_until;
use integration::{DockerEnv, DockerOptions, TEST_IMAGE};
use plugin_transport::fuzz::Rng;

const NETWORK: &str = "soaknet";
const SUBNET: &str = "10.231.212.0/24";
const VOLUMES: usize = 4;
/// Containers kept running; older ones are removed.
const RUNNING: usize = 8;
/// A kill in one cycle out of this many.
const KILL_ONE_IN: usize = 12;
const CHECK_EVERY: usize = 100;
/// Reconcile passes, the Docker sweep and leak release need a few seconds after a restart.
const SETTLE: Duration = Duration::from_secs(45);
/// `--release-leaked-after` here: endpoints whose container is gone are released after this.
const LEAK_GRACE: &str = "3";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    Netplugin,
    Volplugin,
    Vswitchd,
}

/// Fields drop in this order: the plugins stop before dockerd (whose teardown kills what
/// still uses its socket), OVS last, the work dir after everything.
struct Rig {
    net: Netplugin,
    vol: Volplugin,
    docker: DockerEnv,
    ovs: OvsEnv,
    bridge: String,
    /// Addresses the pool held before any container (the gateway).
    held_at_start: u64,
    _work: tempfile::TempDir,
}

impl Rig {
    fn start() -> Result<Rig> {
        integration::ovs::require_tools()?;
        integration::harness::require_root_and_tools(&["dockerd", "containerd", "runc"])?;
        let mut ovs = OvsEnv::start()?;
        let bridge = format!("brk{}", std::process::id() % 1_000_000);
        ovs.own_link(&bridge);
        let work_dir = tempfile::Builder::new().prefix("berth-soak-").tempdir()?;
        let work = work_dir.path();
        let docker = DockerEnv::start_with(DockerOptions {
            extra_dockerd_args: vec!["--live-restore".into()],
            ..Default::default()
        })?;
        let socket = docker.socket_path().display().to_string();
        let np_args: Vec<String> = [
            "--ovsdb",
            &ovs.endpoint(),
            "--ovs-rundir",
            &ovs.rundir().display().to_string(),
            "--bridge",
            &bridge,
            "--datapath",
            "netdev",
            "--host-id",
            "soak-host",
            "--metrics",
            "off",
            "--reconcile-interval",
            "0.5",
            "--docker-socket",
            &socket,
            "--docker-sync-interval",
            "0.5",
            "--release-leaked-after",
            LEAK_GRACE,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let plugin_dir = Path::new(DOCKER_PLUGIN_DIR);
        let mut net = Netplugin::new(binary("netplugin")?, &work.join("net"), plugin_dir, np_args);
        net.start()?;
        let mut vol = Volplugin::new(binary("volplugin")?, &work.join("vol"), plugin_dir);
        vol.args.extend(["--docker-socket".to_string(), socket]);
        vol.start()?;
        docker.ok(&[
            "network",
            "create",
            "-d",
            "berth-net",
            "--ipam-driver",
            "berth-net",
            "--subnet",
            SUBNET,
            "-o",
            "vlan=212",
            NETWORK,
        ])?;
        for v in 0..VOLUMES {
            docker.ok(&[
                "volume",
                "create",
                "-d",
                "berth-vol",
                "-o",
                "size=512M",
                &format!("soakvol{v}"),
            ])?;
        }
        let held_at_start = held(&net)?;
        Ok(Rig {
            docker,
            ovs,
            net,
            vol,
            bridge,
            held_at_start,
            _work: work_dir,
        })
    }

    fn restart(&mut self, target: Target) -> Result<()> {
        match target {
            Target::Netplugin => self.net.start(),
            Target::Volplugin => self.vol.start(),
            Target::Vswitchd => self.ovs.start_vswitchd(),
        }
        .with_context(|| format!("restarting {target:?} after its kill"))
    }

    /// Running containers on the test network: name → (address, volume).
    fn running(&self) -> Result<BTreeMap<String, (String, String)>> {
        let out = self.docker.ok(&[
            "ps",
            "--filter",
            &format!("network={NETWORK}"),
            "--format",
            "{{.Names}}",
        ])?;
        let mut map = BTreeMap::new();
        for name in out.lines().filter(|l| !l.is_empty()) {
            let f = format!(
                "{{{{(index .NetworkSettings.Networks \"{NETWORK}\").IPAddress}}}} {{{{range .Mounts}}}}{{{{.Name}}}}{{{{end}}}}"
            );
            let info = self.docker.ok(&["inspect", "-f", &f, name])?;
            let mut parts = info.split_whitespace();
            let ip = parts.next().unwrap_or_default().to_string();
            let volume = parts.next().unwrap_or_default().to_string();
            map.insert(name.to_string(), (ip, volume));
        }
        Ok(map)
    }

    /// Every invariant once; the list of violations.
    fn violations(&self) -> Result<Vec<String>> {
        let mut v = Vec::new();
        let running = self.running()?;
        let n = running.len();
        let mut ips = BTreeSet::new();
        for (name, (ip, _)) in &running {
            if ip.is_empty() || ip == "<no value>" {
                v.push(format!("{name} runs without an address"));
            } else if !ips.insert(ip.clone()) {
                v.push(format!("address {ip} on two running containers"));
            }
        }
        let endpoints = self.net.admin_json(&["endpoint", "ls"])?;
        let endpoints = endpoints.as_array().cloned().unwrap_or_default();
        let mut ep_ips = BTreeSet::new();
        for e in &endpoints {
            let ip = e["address"].as_str().unwrap_or_default().to_string();
            if !ep_ips.insert(ip.clone()) {
                v.push(format!("address {ip} in two endpoint records"));
            }
        }
        if endpoints.len() != n {
            v.push(format!(
                "{} endpoint records for {n} running containers",
                endpoints.len()
            ));
        }
        let ports = self.ovs.ports(&self.bridge)?;
        if ports.len() != n {
            v.push(format!(
                "{} OVS ports for {n} containers: {ports:?}",
                ports.len()
            ));
        }
        let veths = host_veths()?;
        if veths.len() != n {
            v.push(format!(
                "{} host veths for {n} containers: {veths:?}",
                veths.len()
            ));
        }
        let held = held(&self.net)?;
        if held != self.held_at_start + n as u64 {
            v.push(format!(
                "{held} addresses held for {n} containers ({} before any)",
                self.held_at_start
            ));
        }
        v.extend(self.vol.leftovers()?);
        let mut users: BTreeMap<String, u64> = BTreeMap::new();
        for (_, vol) in running.values() {
            *users.entry(vol.clone()).or_default() += 1;
        }
        for rec in self.vol.admin_ls()? {
            let name = rec["name"].as_str().unwrap_or_default();
            let mounts = rec["mounts"].as_u64().unwrap_or(u64::MAX);
            let want = users.get(name).copied().unwrap_or(0);
            if mounts != want {
                v.push(format!(
                    "{name}: {mounts} mounts counted, {want} containers use it"
                ));
            }
        }
        // Reachability: the first running container pings all the others.
        let names: Vec<&String> = running.keys().collect();
        if let Some(from) = names.first() {
            for (name, (ip, _)) in running.iter().skip(1) {
                let out = self
                    .docker
                    .docker(&["exec", from, "ping", "-c", "1", "-W", "2", ip]);
                if !out.status.success() {
                    v.push(format!("{name} ({ip}) does not answer {from}"));
                }
            }
        }
        Ok(v)
    }

    /// Waits (bounded) for the invariants; the violations left at the bound.
    fn settled(&self) -> Result<Vec<String>> {
        let mut last = Vec::new();
        let ok = wait_until(SETTLE, Duration::from_secs(1), || {
            last = self
                .violations()
                .unwrap_or_else(|e| vec![format!("checking: {e:#}")]);
            last.is_empty()
        });
        Ok(if ok { Vec::new() } else { last })
    }
}

fn held(net: &Netplugin) -> Result<u64> {
    let pool = net.admin_json(&["pool", "show", SUBNET])?;
    pool["allocated"]
        .as_u64()
        .with_context(|| format!("pool show {SUBNET}: {pool}"))
}

/// Host-side veths named like netplugin's (`vb…`/`tb…`, 12 characters).
fn host_veths() -> Result<Vec<String>> {
    Ok(std::fs::read_dir("/sys/class/net")?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| (n.starts_with("vb") || n.starts_with("tb")) && n.len() == 12)
        .collect())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cycles: usize = args.first().map(|s| s.parse()).transpose()?.unwrap_or(1000);
    let minutes: u64 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(50);
    let seed: u64 = match args.get(2) {
        Some(s) => s.parse()?,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos() as u64,
    };
    println!("soak: {cycles} cycles, at most {minutes} min, seed {seed}");
    let mut rng = Rng::new(seed);
    let mut rig = Rig::start()?;
    let result = soak(
        &mut rig,
        &mut rng,
        cycles,
        Duration::from_secs(minutes * 60),
    );
    // Teardown: containers first (their mounts and ports), then the daemons (Drop).
    let names = rig.running().unwrap_or_default();
    for name in names.keys() {
        let _ = rig.docker.ok(&["rm", "-f", name]);
    }
    result
}

fn soak(rig: &mut Rig, rng: &mut Rng, cycles: usize, bound: Duration) -> Result<()> {
    let t0 = Instant::now();
    let mut alive: VecDeque<String> = VecDeque::new();
    let mut kills: BTreeMap<Target, u64> = BTreeMap::new();
    let (mut starts, mut removals, mut failed_starts, mut checks) = (0u64, 0u64, 0u64, 0u64);
    // A `docker run` that failed with no kill in its cycle: a violation too.
    let mut unexplained: Vec<String> = Vec::new();
    let mut done = 0;
    for cycle in 0..cycles {
        if t0.elapsed() > bound {
            println!("soak: stopped at the time bound after {cycle} cycles");
            break;
        }
        let name = format!("soak{cycle}");
        let volume = format!("soakvol{}", rng.below(VOLUMES));
        // A kill at a random moment of this cycle's `docker run`, from another thread.
        let kill = (rng.below(KILL_ONE_IN) == 0).then(|| {
            let target = match rng.below(3) {
                0 => Target::Netplugin,
                1 => Target::Volplugin,
                _ => Target::Vswitchd,
            };
            (target, Duration::from_millis(rng.below(1500) as u64))
        });
        let (tx, rx) = mpsc::channel::<Result<std::process::Output>>();
        std::thread::scope(|s| -> Result<()> {
            let Rig {
                docker,
                ovs,
                net,
                vol,
                ..
            } = &mut *rig;
            let docker = &*docker;
            let v = volume.clone();
            let n = name.clone();
            s.spawn(move || {
                let out = docker.docker_with(
                    &[
                        "run",
                        "-d",
                        "--name",
                        &n,
                        "--network",
                        NETWORK,
                        "-v",
                        &format!("{v}:/data"),
                        TEST_IMAGE,
                        "sleep",
                        "100000",
                    ],
                    None,
                    Duration::from_secs(150),
                );
                let _ = tx.send(Ok(out));
            });
            if let Some((target, after)) = kill {
                std::thread::sleep(after);
                match target {
                    Target::Netplugin => net.kill9()?,
                    Target::Volplugin => vol.kill9()?,
                    Target::Vswitchd => ovs.kill9_vswitchd()?,
                }
                *kills.entry(target).or_default() += 1;
            }
            Ok(())
        })?;
        if let Some((target, _)) = kill {
            rig.restart(target)?;
        }
        let out = rx.recv().context("docker run thread")??;
        starts += 1;
        if out.status.success() {
            alive.push_back(name.clone());
        } else {
            failed_starts += 1;
            // dockerd may have left it created: remove it like an operator would.
            let _ = rig.docker.docker(&["rm", "-f", &name]);
            if kill.is_none() {
                let why = format!(
                    "cycle {cycle}: docker run failed with no kill: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                println!("{why}");
                unexplained.push(why);
            }
        }
        while alive.len() > RUNNING {
            if let Some(old) = alive.pop_front() {
                let out = rig.docker.docker(&["rm", "-f", &old]);
                ensure!(
                    out.status.success(),
                    "docker rm -f {old}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                removals += 1;
            }
        }
        done = cycle + 1;
        if done % CHECK_EVERY == 0 {
            checks += 1;
            let v = rig.settled()?;
            println!(
                "cycle {done}: {:.0}s, {} running, kills {kills:?}, failed starts {failed_starts}, {}",
                t0.elapsed().as_secs_f64(),
                alive.len(),
                if v.is_empty() { "invariants hold".to_string() } else { format!("VIOLATIONS: {v:#?}") }
            );
            if !v.is_empty() {
                bail!("invariants violated at cycle {done}: {v:#?}");
            }
        }
    }
    checks += 1;
    let v = rig.settled()?;
    if !v.is_empty() {
        bail!("invariants violated at the end: {v:#?}");
    }
    for name in alive.drain(..) {
        rig.docker.ok(&["rm", "-f", &name])?;
        removals += 1;
    }
    for k in 0..VOLUMES {
        let vol = format!("soakvol{k}");
        let out = rig.docker.ok(&[
            "run",
            "--rm",
            "-v",
            &format!("{vol}:/data"),
            TEST_IMAGE,
            "sh",
            "-c",
            "echo usable > /data/check && cat /data/check",
        ])?;
        ensure!(out.trim() == "usable", "{vol}: read back {out:?}");
    }
    checks += 1;
    let v = rig.settled()?;
    ensure!(v.is_empty(), "after removing everything: {v:#?}");
    ensure!(
        unexplained.is_empty(),
        "starts failed with no kill: {unexplained:#?}"
    );
    let total_kills: u64 = kills.values().sum();
    println!(
        "soak: {done} cycles in {:.0}s: {starts} starts ({failed_starts} failed, each in a cycle with a kill), {removals} removals, {total_kills} kills {kills:?}, {checks} invariant checks, 0 violations, {VOLUMES} volumes usable",
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
