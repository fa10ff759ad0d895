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
//! The cycles and invariants are [`integration::soak`]'s; `bin/soak_fleet.rs` runs the same
//! soak in the fleet lab.

use std::path::Path;
use std::process::Output;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Result;
use integration::netplugin::Netplugin;
use integration::ovs::OvsEnv;
use integration::plugins::{binary, Volplugin, DOCKER_PLUGIN_DIR};
use integration::soak::{is_berth_veth, Plan, Soak, SoakHost, Target};
use integration::{DockerEnv, DockerOptions};
use plugin_transport::fuzz::Rng;
use serde_json::Value;

const PLAN: Plan = Plan {
    network: "soaknet",
    subnet: "10.231.212.0/24",
    vlan: 212,
    volumes: 4,
    running: 8,
    kill_one_in: 12,
    move_one_in: 0,
    check_every: 100,
    // Reconcile passes, the Docker sweep and leak release need a few seconds after a restart.
    settle: Duration::from_secs(45),
};
/// `--release-leaked-after` here: endpoints whose container is gone are released after this.
const LEAK_GRACE: &str = "3";

/// Fields drop in this order: the plugins stop before dockerd (whose teardown kills what
/// still uses its socket), OVS last, the work dir after everything. The daemons sit behind
/// locks because a kill comes from another thread than the `docker run` it interrupts.
struct Rig {
    net: Mutex<Netplugin>,
    vol: Mutex<Volplugin>,
    docker: DockerEnv,
    ovs: Mutex<OvsEnv>,
    bridge: String,
    _work: tempfile::TempDir,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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
        Ok(Rig {
            docker,
            ovs: Mutex::new(ovs),
            net: Mutex::new(net),
            vol: Mutex::new(vol),
            bridge,
            _work: work_dir,
        })
    }
}

impl SoakHost for Rig {
    fn label(&self) -> String {
        "the host".into()
    }

    fn host_id(&self) -> &str {
        "soak-host"
    }

    fn docker_with(&self, args: &[&str], timeout: Duration) -> Output {
        self.docker.docker_with(args, None, timeout)
    }

    fn kill9(&self, target: Target) -> Result<()> {
        match target {
            Target::Netplugin => locked(&self.net).kill9(),
            Target::Volplugin => locked(&self.vol).kill9(),
            Target::Vswitchd => locked(&self.ovs).kill9_vswitchd(),
        }
    }

    fn restart(&self, target: Target) -> Result<()> {
        match target {
            Target::Netplugin => locked(&self.net).start(),
            Target::Volplugin => locked(&self.vol).start(),
            Target::Vswitchd => locked(&self.ovs).start_vswitchd(),
        }
    }

    fn ports(&self) -> Result<Vec<String>> {
        locked(&self.ovs).ports(&self.bridge)
    }

    /// This soak runs in a network namespace of its own (`scripts/soak.sh`).
    fn veths(&self) -> Result<Vec<String>> {
        Ok(std::fs::read_dir("/sys/class/net")?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| is_berth_veth(n))
            .collect())
    }

    fn endpoints(&self) -> Result<Vec<Value>> {
        let list = locked(&self.net).admin_json(&["endpoint", "ls"])?;
        Ok(list.as_array().cloned().unwrap_or_default())
    }

    fn pool(&self, subnet: &str) -> Result<Value> {
        locked(&self.net).admin_json(&["pool", "show", subnet])
    }

    fn volumes(&self) -> Result<Vec<Value>> {
        locked(&self.vol).admin_ls()
    }

    fn volume_leftovers(&self) -> Result<Vec<String>> {
        locked(&self.vol).leftovers()
    }
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
    let rig = Rig::start()?;
    let soak = Soak::setup(vec![&rig], PLAN)?;
    let result = soak.run(&mut rng, cycles, Duration::from_secs(minutes * 60));
    // Teardown: containers first (their mounts and ports), then the daemons (Drop).
    soak.remove_all();
    println!("soak: {}", result?);
    Ok(())
}
