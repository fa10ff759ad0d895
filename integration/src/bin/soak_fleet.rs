//! Chaos soak in the fleet lab (bounded): the soak of `bin/soak.rs` on the lab's three hosts
//! (`docs/lab.md`), one IP plan in the lab's 3-member etcd. Each cycle starts a container on a
//! random host with the fleet's network and one of that host's volumes; one cycle in eight
//! moves a running container to another host keeping its address (`docker rm -f`, then
//! `docker run --ip` there), as an operator moves a database; one cycle in twelve SIGKILLs
//! netplugin, volplugin or ovs-vswitchd of a random host at a random moment of the cycle's
//! `docker run`. The invariants ([`integration::soak`]) hold across the fleet: no address twice
//! on the fleet's containers or records, each host's ports, veths and records match its
//! containers, and every container answers a ping from another host's across the trunk.
//!
//! `bash scripts/soak.sh --fleet [-- CYCLES MAX_MINUTES SEED]` (defaults 1000 cycles, 60 min,
//! the time). Root. Traffic stays in the lab's namespaces (198.19.213.0/24 on VLAN 213).

use std::time::Duration;

use anyhow::Result;
use integration::lab::{Lab, LabOptions};
use integration::soak::{Plan, Soak, SoakHost};
use plugin_transport::fuzz::Rng;

const PLAN: Plan = Plan {
    network: "soaknet",
    subnet: "198.19.213.0/24",
    vlan: 213,
    volumes: 2,
    running: 12,
    kill_one_in: 12,
    move_one_in: 8,
    check_every: 100,
    // A restarted netplugin's first pass, the Docker sweep and leak release, on three hosts.
    settle: Duration::from_secs(60),
};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cycles: usize = args.first().map(|s| s.parse()).transpose()?.unwrap_or(1000);
    let minutes: u64 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(60);
    let seed: u64 = match args.get(2) {
        Some(s) => s.parse()?,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos() as u64,
    };
    println!("fleet soak: {cycles} cycles, at most {minutes} min, seed {seed}");
    let mut rng = Rng::new(seed);
    let lab = Lab::start(LabOptions {
        netplugin_args: [
            "--docker-sync-interval",
            "0.5",
            "--release-leaked-after",
            "3s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        ..LabOptions::default()
    })?;
    let hosts: Vec<&dyn SoakHost> = lab.hosts.iter().map(|h| h as &dyn SoakHost).collect();
    let soak = Soak::setup(hosts, PLAN)?;
    let result = soak.run(&mut rng, cycles, Duration::from_secs(minutes * 60));
    // Teardown: containers first (their mounts and ports), then the lab (Drop).
    soak.remove_all();
    println!("fleet soak: {}", result?);
    Ok(())
}
