//! The chaos soak's driver, shared by the single-host soak (`bin/soak.rs`, one host in
//! namespaces of its own) and the fleet soak (`bin/soak_fleet.rs`, the hosts of the fleet lab
//! on one etcd): container starts and removals with a berth network and berth volumes while
//! netplugin, volplugin or ovs-vswitchd of a host are killed with SIGKILL at random moments;
//! in the fleet, databases also move between hosts keeping their address (`docker run --ip`).
//!
//! Invariants (after a bounded settle, since reconcile and leak release run on timers):
//! - no address twice among the running containers of the fleet, nor among the endpoint
//!   records; the pool holds exactly the running containers' addresses (and the gateway);
//! - on each host, OVS ports, host-side veths and the host's endpoint records match its running
//!   containers exactly: no leak;
//! - volplugin on each host: no orphan loop device, image or mount; each volume's mount count
//!   is the number of the host's running containers using it;
//! - every running container answers a ping from another one (across the trunk in the fleet);
//! - at the end, every volume takes a write and reads it back in a new container.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::process::Output;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use plugin_transport::fuzz::Rng;
use serde_json::Value;

use crate::procs::wait_until;
use crate::{berth_network_args, TEST_IMAGE};

/// What a kill hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    Netplugin,
    Volplugin,
    Vswitchd,
}

const TARGETS: [Target; 3] = [Target::Netplugin, Target::Volplugin, Target::Vswitchd];

/// One host of a soak: its Docker, its daemons and what the checks read there.
pub trait SoakHost: Sync {
    /// For messages: `host a`, or `the host`.
    fn label(&self) -> String;
    /// netplugin's `--host-id`: the endpoint records that are this host's.
    fn host_id(&self) -> &str;
    /// `docker ARGS` against the host's dockerd, bounded by `timeout`.
    fn docker_with(&self, args: &[&str], timeout: Duration) -> Output;
    fn kill9(&self, target: Target) -> Result<()>;
    /// Starts the killed daemon again (and waits until it answers).
    fn restart(&self, target: Target) -> Result<()>;
    /// Ports on berth's bridge, the uplink left out.
    fn ports(&self) -> Result<Vec<String>>;
    /// Host-side veths named like netplugin's ([`is_berth_veth`]).
    fn veths(&self) -> Result<Vec<String>>;
    /// `netplugin endpoint ls --json`: every endpoint record the store has (the fleet's).
    fn endpoints(&self) -> Result<Vec<Value>>;
    /// `netplugin pool show SUBNET --json`: `allocated`, and `addresses` with their holders.
    fn pool(&self, subnet: &str) -> Result<Value>;
    /// `volplugin volume ls --json`.
    fn volumes(&self) -> Result<Vec<Value>>;
    /// Loop devices, images and mounts of volplugin that no volume or container accounts for.
    fn volume_leftovers(&self) -> Result<Vec<String>>;
}

/// netplugin's host-side veth names: `vb`/`tb` and ten hex digits of the endpoint id.
pub fn is_berth_veth(name: &str) -> bool {
    (name.starts_with("vb") || name.starts_with("tb")) && name.len() == 12
}

/// The shape of a soak.
#[derive(Clone, Debug)]
pub struct Plan {
    pub network: &'static str,
    pub subnet: &'static str,
    pub vlan: u16,
    /// Berth volumes made on each host.
    pub volumes: usize,
    /// Containers kept running in the whole soak; older ones are removed.
    pub running: usize,
    /// A kill in one cycle out of this many.
    pub kill_one_in: usize,
    /// A move (remove on one host, `docker run --ip` of its address on another) in one cycle
    /// out of this many; 0: never (one host).
    pub move_one_in: usize,
    pub check_every: usize,
    /// The bound of each wait for the invariants.
    pub settle: Duration,
}

/// A running container of the soak.
#[derive(Clone, Debug)]
struct Running {
    host: usize,
    name: String,
    ip: String,
    volume: String,
}

pub struct Soak<'a> {
    hosts: Vec<&'a dyn SoakHost>,
    plan: Plan,
    /// Addresses the pool held before any container (the gateway).
    held_at_start: u64,
}

impl<'a> Soak<'a> {
    /// Creates the network on every host and the volumes on each.
    pub fn setup(hosts: Vec<&'a dyn SoakHost>, plan: Plan) -> Result<Self> {
        ensure!(!hosts.is_empty(), "a soak needs a host");
        let vlan = format!("vlan={}", plan.vlan);
        for h in &hosts {
            ok(
                *h,
                &berth_network_args(plan.subnet, &["-o", &vlan], plan.network),
            )?;
            for v in 0..plan.volumes {
                let name = volume_name(v);
                ok(
                    *h,
                    &[
                        "volume",
                        "create",
                        "-d",
                        "berth-vol",
                        "-o",
                        "size=512M",
                        &name,
                    ],
                )?;
            }
        }
        let held_at_start = allocated(&hosts[0].pool(plan.subnet)?)?;
        Ok(Soak {
            hosts,
            plan,
            held_at_start,
        })
    }

    /// Running containers of the soak's network on every host.
    fn running(&self) -> Result<Vec<Running>> {
        let net = self.plan.network;
        let mut all = Vec::new();
        for (i, h) in self.hosts.iter().enumerate() {
            let out = ok(
                *h,
                &[
                    "ps",
                    "--filter",
                    &format!("network={net}"),
                    "--format",
                    "{{.Names}}",
                ],
            )?;
            for name in out.lines().filter(|l| !l.is_empty()) {
                let f = format!(
                    "{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}} {{{{range .Mounts}}}}{{{{.Name}}}}{{{{end}}}}"
                );
                let info = ok(*h, &["inspect", "-f", &f, name])?;
                let mut parts = info.split_whitespace();
                all.push(Running {
                    host: i,
                    name: name.to_string(),
                    ip: parts.next().unwrap_or_default().to_string(),
                    volume: parts.next().unwrap_or_default().to_string(),
                });
            }
        }
        Ok(all)
    }

    /// Every invariant once; the list of violations.
    fn violations(&self) -> Result<Vec<String>> {
        let mut v = Vec::new();
        let running = self.running()?;
        let mut ips = BTreeSet::new();
        for r in &running {
            if r.ip.is_empty() || r.ip == "<no value>" {
                v.push(format!("{} runs without an address", r.name));
            } else if !ips.insert(r.ip.clone()) {
                v.push(format!("address {} on two running containers", r.ip));
            }
        }
        let endpoints = self.hosts[0].endpoints()?;
        let mut ep_ips = BTreeSet::new();
        for e in &endpoints {
            let ip = e["address"].as_str().unwrap_or_default().to_string();
            if !ep_ips.insert(ip.clone()) {
                v.push(format!("address {ip} in two endpoint records"));
            }
        }
        let pool = self.hosts[0].pool(self.plan.subnet)?;
        let held = allocated(&pool)?;
        if held != self.held_at_start + running.len() as u64 {
            // Which ones, and who holds them: what a violation needs to be understood.
            let extra: Vec<String> = pool["addresses"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|a| !ips.contains(a["address"].as_str().unwrap_or_default()))
                .map(|a| a.to_string())
                .collect();
            v.push(format!(
                "{held} addresses held for {} containers ({} before any); not a running container's: {extra:?}",
                running.len(),
                self.held_at_start
            ));
        }
        for (i, h) in self.hosts.iter().enumerate() {
            let here: Vec<&Running> = running.iter().filter(|r| r.host == i).collect();
            let n = here.len();
            let label = h.label();
            let records = endpoints
                .iter()
                .filter(|e| e["host_id"].as_str() == Some(h.host_id()))
                .count();
            if records != n {
                v.push(format!(
                    "{label}: {records} endpoint records for {n} running containers"
                ));
            }
            let ports = h.ports()?;
            if ports.len() != n {
                v.push(format!(
                    "{label}: {} OVS ports for {n} containers: {ports:?}",
                    ports.len()
                ));
            }
            let veths = h.veths()?;
            if veths.len() != n {
                v.push(format!(
                    "{label}: {} host veths for {n} containers: {veths:?}",
                    veths.len()
                ));
            }
            v.extend(
                h.volume_leftovers()?
                    .into_iter()
                    .map(|p| format!("{label}: {p}")),
            );
            let mut users: BTreeMap<&str, u64> = BTreeMap::new();
            for r in &here {
                *users.entry(r.volume.as_str()).or_default() += 1;
            }
            for rec in h.volumes()? {
                let name = rec["name"].as_str().unwrap_or_default();
                let mounts = rec["mounts"].as_u64().unwrap_or(u64::MAX);
                let want = users.get(name).copied().unwrap_or(0);
                if mounts != want {
                    v.push(format!(
                        "{label}: {name}: {mounts} mounts counted, {want} containers use it"
                    ));
                }
            }
        }
        // Reachability: the first running container pings all the others.
        if let Some(from) = running.first() {
            let pinger = self.hosts[from.host];
            for r in running.iter().skip(1) {
                let out = pinger.docker_with(
                    &["exec", &from.name, "ping", "-c", "1", "-W", "2", &r.ip],
                    Duration::from_secs(20),
                );
                if !out.status.success() {
                    v.push(format!(
                        "{} ({}, {}) does not answer {} ({})",
                        r.name,
                        r.ip,
                        self.hosts[r.host].label(),
                        from.name,
                        pinger.label()
                    ));
                }
            }
        }
        Ok(v)
    }

    /// Waits (bounded) for the invariants; the violations left at the bound.
    fn settled(&self) -> Vec<String> {
        let mut last = Vec::new();
        let ok = wait_until(self.plan.settle, Duration::from_secs(1), || {
            last = self
                .violations()
                .unwrap_or_else(|e| vec![format!("checking: {e:#}")]);
            last.is_empty()
        });
        if ok {
            Vec::new()
        } else {
            last
        }
    }

    /// Removes every container of the soak (teardown; errors are only printed).
    pub fn remove_all(&self) {
        for r in self.running().unwrap_or_default() {
            let out =
                self.hosts[r.host].docker_with(&["rm", "-f", &r.name], Duration::from_secs(60));
            if !out.status.success() {
                eprintln!(
                    "{}: docker rm -f {}: {}",
                    self.hosts[r.host].label(),
                    r.name,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
    }

    /// The soak: `cycles` cycles or until `bound`, whichever first. Fails on the first
    /// violation; its summary otherwise.
    pub fn run(&self, rng: &mut Rng, cycles: usize, bound: Duration) -> Result<String> {
        let plan = &self.plan;
        let t0 = Instant::now();
        let mut alive: VecDeque<(usize, String)> = VecDeque::new();
        let mut kills: BTreeMap<Target, u64> = BTreeMap::new();
        let (mut starts, mut removals, mut failed_starts, mut checks) = (0u64, 0u64, 0u64, 0u64);
        let (mut moves, mut failed_moves) = (0u64, 0u64);
        // A `docker run` that failed with no kill in its cycle: a violation too.
        let mut unexplained: Vec<String> = Vec::new();
        let mut done = 0;
        for cycle in 0..cycles {
            if t0.elapsed() > bound {
                println!("soak: stopped at the time bound after {cycle} cycles");
                break;
            }
            let name = format!("soak{cycle}");
            let volume = volume_name(rng.below(plan.volumes));
            // A move takes a running container's address to another host.
            let moving = (plan.move_one_in > 0
                && self.hosts.len() > 1
                && !alive.is_empty()
                && rng.below(plan.move_one_in) == 0)
                .then(|| alive.remove(rng.below(alive.len())))
                .flatten();
            let (host, fixed_ip) = match &moving {
                Some((from, old)) => {
                    let h = self.hosts[*from];
                    let f = format!(
                        "{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
                        plan.network
                    );
                    let ip = ok(h, &["inspect", "-f", &f, old])?;
                    ok(h, &["rm", "-f", old])?;
                    removals += 1;
                    let to = (from + 1 + rng.below(self.hosts.len() - 1)) % self.hosts.len();
                    (to, Some(ip))
                }
                None => (rng.below(self.hosts.len()), None),
            };
            // A kill at a random moment of this cycle's `docker run`, on any host.
            let kill = (rng.below(plan.kill_one_in) == 0).then(|| {
                (
                    rng.below(self.hosts.len()),
                    TARGETS[rng.below(TARGETS.len())],
                    Duration::from_millis(rng.below(1500) as u64),
                )
            });
            let (tx, rx) = mpsc::channel::<Output>();
            let mount = format!("{volume}:/data");
            let mut args = vec!["run", "-d", "--name", &name, "--network", plan.network];
            if let Some(ip) = &fixed_ip {
                args.extend(["--ip", ip]);
            }
            args.extend(["-v", &mount, TEST_IMAGE, "sleep", "100000"]);
            std::thread::scope(|s| -> Result<()> {
                let h = self.hosts[host];
                let args = &args;
                s.spawn(move || {
                    let _ = tx.send(h.docker_with(args, Duration::from_secs(150)));
                });
                if let Some((k, target, after)) = kill {
                    std::thread::sleep(after);
                    self.hosts[k].kill9(target)?;
                    *kills.entry(target).or_default() += 1;
                }
                Ok(())
            })?;
            if let Some((k, target, _)) = kill {
                self.hosts[k].restart(target).with_context(|| {
                    format!(
                        "restarting {target:?} on {} after its kill",
                        self.hosts[k].label()
                    )
                })?;
            }
            let out = rx.recv().context("docker run thread")?;
            starts += 1;
            moves += u64::from(fixed_ip.is_some());
            if out.status.success() {
                alive.push_back((host, name.clone()));
            } else {
                failed_starts += 1;
                failed_moves += u64::from(fixed_ip.is_some());
                // dockerd may have left it created: remove it like an operator would.
                let _ = self.hosts[host].docker_with(&["rm", "-f", &name], Duration::from_secs(60));
                if kill.is_none() {
                    let why = format!(
                        "cycle {cycle}: docker run{} on {} failed with no kill: {}",
                        fixed_ip
                            .as_ref()
                            .map(|ip| format!(" --ip {ip}"))
                            .unwrap_or_default(),
                        self.hosts[host].label(),
                        String::from_utf8_lossy(&out.stderr).trim()
                    );
                    println!("{why}");
                    unexplained.push(why);
                }
            }
            while alive.len() > plan.running {
                if let Some((h, old)) = alive.pop_front() {
                    ok(self.hosts[h], &["rm", "-f", &old])?;
                    removals += 1;
                }
            }
            done = cycle + 1;
            if done % plan.check_every == 0 {
                checks += 1;
                let v = self.settled();
                println!(
                    "cycle {done}: {:.0}s, {} running, {moves} moves, kills {kills:?}, failed starts {failed_starts}, {}",
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
        let v = self.settled();
        if !v.is_empty() {
            bail!("invariants violated at the end: {v:#?}");
        }
        for (h, name) in alive.drain(..) {
            ok(self.hosts[h], &["rm", "-f", &name])?;
            removals += 1;
        }
        for h in &self.hosts {
            for k in 0..plan.volumes {
                let vol = volume_name(k);
                let out = ok(
                    *h,
                    &[
                        "run",
                        "--rm",
                        "-v",
                        &format!("{vol}:/data"),
                        TEST_IMAGE,
                        "sh",
                        "-c",
                        "echo usable > /data/check && cat /data/check",
                    ],
                )?;
                ensure!(
                    out.trim() == "usable",
                    "{}: {vol}: read back {out:?}",
                    h.label()
                );
            }
        }
        checks += 1;
        let v = self.settled();
        ensure!(v.is_empty(), "after removing everything: {v:#?}");
        ensure!(
            unexplained.is_empty(),
            "starts failed with no kill: {unexplained:#?}"
        );
        let total_kills: u64 = kills.values().sum();
        Ok(format!(
            "{done} cycles in {:.0}s on {} host(s): {starts} starts ({failed_starts} failed, each in a cycle with a kill; {moves} of them moves to another host with --ip, {failed_moves} failed), {removals} removals, {total_kills} kills {kills:?}, {checks} invariant checks, 0 violations, {} volumes usable",
            t0.elapsed().as_secs_f64(),
            self.hosts.len(),
            plan.volumes * self.hosts.len()
        ))
    }
}

fn allocated(pool: &Value) -> Result<u64> {
    pool["allocated"]
        .as_u64()
        .with_context(|| format!("pool show: {pool}"))
}

fn volume_name(k: usize) -> String {
    format!("soakvol{k}")
}

/// `docker ARGS` on `h` (120 s limit), which must succeed; its trimmed stdout.
fn ok(h: &dyn SoakHost, args: &[&str]) -> Result<String> {
    let out = h.docker_with(args, Duration::from_secs(120));
    ensure!(
        out.status.success(),
        "{}: docker {}: {}",
        h.label(),
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}
