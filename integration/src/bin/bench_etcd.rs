//! Benchmark of netplugin's fleet allocator (docs/testing.md, Benchmarks), all in one run against a real
//! 3-member etcd cluster on loopback (Debian's etcd-server 3.4, data on /dev/shm):
//!
//! - raw etcd: 8 threads, each with its own client (netplugin's `EtcdStore`, the same client
//!   the allocator uses), doing create-if-absent transactions of one ~200-byte key: tx/s, p99;
//! - allocator: 8 threads, each a host of its own (own client, own `--host-id`, own block
//!   cache) allocating dynamic addresses from one shared /16 pool: allocations/s, p99, and the
//!   ratio to raw (goal >= 0.5);
//! - a /16 filled completely (65,534 addresses) by the 8 hosts: time of the first 1,000
//!   allocations vs the last 1,000 (goal: last <= 1.5 x first), then a full scan (audit).
//!
//! Usage (no root, no Docker; needs etcd-server):
//!     cargo run --release -p integration --bin bench_etcd [-- SECONDS]
//! Default: 5 s per throughput phase. Takes about 1-2 minutes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};
use integration::etcd::EtcdCluster;
use netplugin::ipam::{Ipam, IpamConfig};
use netplugin::state::State;
use netplugin::store::etcd::{EtcdConfig, EtcdStore};
use netplugin::store::{Compare, Op, Store, Txn};

const THREADS: usize = 8;

fn store(endpoints: &str, prefix: &str) -> Result<Arc<dyn Store>> {
    let mut c = EtcdConfig::new(endpoints, prefix).map_err(anyhow::Error::msg)?;
    c.timeout = Duration::from_secs(5);
    Ok(Arc::new(EtcdStore::connect(&c)?))
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Runs `op(thread, i)` on THREADS threads for `secs`; (ops/s, p50 ms, p99 ms).
fn throughput(
    secs: f64,
    op: impl Fn(usize, usize) -> Result<()> + Sync,
) -> Result<(f64, f64, f64)> {
    let lat: Mutex<Vec<f64>> = Mutex::default();
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(secs);
    std::thread::scope(|s| -> Result<()> {
        let mut handles = Vec::new();
        for t in 0..THREADS {
            let (op, lat) = (&op, &lat);
            handles.push(s.spawn(move || -> Result<()> {
                let mut mine = Vec::new();
                let mut i = 0;
                while Instant::now() < until {
                    let t0 = Instant::now();
                    op(t, i)?;
                    mine.push(t0.elapsed().as_secs_f64() * 1000.0);
                    i += 1;
                }
                lat.lock().unwrap_or_else(|e| e.into_inner()).extend(mine);
                Ok(())
            }));
        }
        for h in handles {
            h.join().map_err(|_| anyhow::anyhow!("worker panicked"))??;
        }
        Ok(())
    })?;
    let elapsed = start.elapsed().as_secs_f64();
    let mut lat = lat.into_inner().unwrap_or_default();
    let n = lat.len() as f64;
    Ok((n / elapsed, pct(&mut lat, 0.5), pct(&mut lat, 0.99)))
}

fn hosts(endpoints: &str, prefix: &str, subnet: &str) -> Result<(Vec<Arc<Ipam>>, String)> {
    let mut out = Vec::new();
    let mut pool = String::new();
    for t in 0..THREADS {
        let ipam = Arc::new(Ipam::new(
            State::new(store(endpoints, prefix)?, format!("bench-h{t}")),
            IpamConfig::default(),
        ));
        let (id, _) = ipam.request_pool("", subnet, "", false)?;
        ensure!(pool.is_empty() || pool == id, "hosts got different pools");
        pool = id;
        out.push(ipam);
    }
    Ok((out, pool))
}

fn main() -> Result<()> {
    let secs: f64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()
        .context("SECONDS")?
        .unwrap_or(5.0);
    let cluster = EtcdCluster::start(3)?;
    let endpoints = cluster.endpoints();
    println!(
        "etcd: 3 members on loopback, data under {}",
        cluster.log_dir().display()
    );

    // Raw etcd transactions: the same client and call the allocator's commit uses.
    let raw_stores: Vec<Arc<dyn Store>> = (0..THREADS)
        .map(|_| store(&endpoints, "/bench-raw/"))
        .collect::<Result<_>>()?;
    let value = vec![b'x'; 200];
    let (raw_rate, raw_p50, raw_p99) = throughput(secs, |t, i| {
        let key = format!("raw/{t}/{i:08}");
        let r = raw_stores[t].txn(Txn {
            compare: vec![Compare::Version(key.clone(), 0)],
            success: vec![Op::put(key, value.clone())],
            failure: vec![],
        })?;
        ensure!(r.succeeded, "raw create-if-absent failed");
        Ok(())
    })?;
    println!(
        "raw etcd txn (8 clients):      {raw_rate:8.0} tx/s      p50 {raw_p50:6.2} ms  p99 {raw_p99:6.2} ms"
    );

    // The allocator: 8 hosts on one shared /16.
    let (alloc_hosts, pool) = hosts(&endpoints, "/bench-alloc/", "10.100.0.0/16")?;
    let none = BTreeMap::new();
    let (rate, p50, p99) = throughput(secs, |t, _| {
        alloc_hosts[t].request_address(&pool, "", &none)?;
        Ok(())
    })?;
    println!(
        "allocator (8 hosts, /16):      {rate:8.0} alloc/s   p50 {p50:6.2} ms  p99 {p99:6.2} ms"
    );
    println!(
        "ratio allocator / raw etcd:    {:8.2}  (goal >= 0.5)",
        rate / raw_rate
    );

    // A /16 filled completely by the 8 hosts: first 1,000 vs last 1,000. On a fresh cluster,
    // so etcd's own housekeeping triggered by the phases above (a snapshot every 100,000
    // writes) does not land in the fill.
    drop(alloc_hosts);
    drop(raw_stores);
    drop(cluster);
    let cluster = EtcdCluster::start(3)?;
    let endpoints = cluster.endpoints();
    let raw_stores: Vec<Arc<dyn Store>> = (0..THREADS)
        .map(|_| store(&endpoints, "/bench-raw/"))
        .collect::<Result<_>>()?;
    let raw_txn = |t: usize, i: usize, tag: &str| -> Result<()> {
        let key = format!("{tag}/{t}/{i:08}");
        raw_stores[t].txn(Txn {
            compare: vec![Compare::Version(key.clone(), 0)],
            success: vec![Op::put(key, value.clone())],
            failure: vec![],
        })?;
        Ok(())
    };
    // etcd's own rate on this cluster before and after the fill tells how much of any tail
    // slowdown is etcd's (a bigger database) rather than the allocator's.
    let (raw_before, _, _) = throughput(2.0, |t, i| raw_txn(t, i, "raw-before"))?;
    let (fill_hosts, pool) = hosts(&endpoints, "/bench-fill/", "10.101.0.0/16")?;
    let total = 65_534usize;
    let done = AtomicUsize::new(0);
    // (time, lost races of all hosts so far) at each allocation.
    let stamps: Mutex<Vec<(Duration, u64)>> = Mutex::new(Vec::with_capacity(total));
    let lost_races = || fill_hosts.iter().map(|h| h.lost_races()).sum::<u64>();
    let start = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let mut handles = Vec::new();
        for h in &fill_hosts {
            let (done, stamps, pool, none, lost_races) =
                (&done, &stamps, &pool, &none, &lost_races);
            handles.push(s.spawn(move || -> Result<()> {
                loop {
                    match h.request_address(pool, "", none) {
                        Ok(_) => {
                            done.fetch_add(1, Ordering::Relaxed);
                            stamps
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push((start.elapsed(), lost_races()));
                        }
                        Err(e) if e.to_string().contains("no free address") => return Ok(()),
                        Err(e) => return Err(e.into()),
                    }
                    if start.elapsed() > Duration::from_secs(900) {
                        anyhow::bail!("the fill took more than 15 minutes");
                    }
                }
            }));
        }
        for h in handles {
            h.join().map_err(|_| anyhow::anyhow!("worker panicked"))??;
        }
        Ok(())
    })?;
    let mut stamped = stamps.into_inner().unwrap_or_default();
    stamped.sort();
    let stamps: Vec<Duration> = stamped.iter().map(|s| s.0).collect();
    let races: Vec<u64> = stamped.iter().map(|s| s.1).collect();
    let n = stamps.len();
    ensure!(n == total, "filled {n} of {total} addresses");
    let first = stamps[999].as_secs_f64();
    let last = (stamps[n - 1] - stamps[n - 1001]).as_secs_f64();
    println!(
        "fill of a /16 (8 hosts):       {n} addresses in {:.1} s ({:.0} alloc/s)",
        stamps[n - 1].as_secs_f64(),
        n as f64 / stamps[n - 1].as_secs_f64()
    );
    println!(
        "first 1,000: {:.2} s   last 1,000: {:.2} s   ratio {:.2}  (goal <= 1.5)",
        first,
        last,
        last / first
    );
    let windows: Vec<String> = (0..10)
        .map(|k| {
            let at = (n - 1000) * k / 9;
            let from = if at == 0 {
                Duration::ZERO
            } else {
                stamps[at - 1]
            };
            format!("{:.2}", (stamps[at + 999] - from).as_secs_f64())
        })
        .collect();
    println!("seconds per 1,000 across the fill: {}", windows.join(" "));
    let lost_window = |from: usize, to: usize| races[to].saturating_sub(races[from]);
    println!(
        "lost CAS races (retried): first 1,000: {}   last 1,000: {}   whole fill: {}",
        lost_window(0, 999),
        lost_window(n - 1001, n - 1),
        races[n - 1]
    );
    // Context: etcd itself after holding the filled /16 (its history grows with every write).
    let (raw_after, _, _) = throughput(2.0, |t, i| raw_txn(t, i, "raw-after"))?;
    // > 1: etcd itself went slower as the database filled.
    let etcd_slowdown = raw_before / raw_after;
    println!(
        "raw etcd txn on this cluster:  {raw_before:8.0} tx/s before the fill, {raw_after:.0} after \
         (etcd's own time per txn, full / empty: {etcd_slowdown:.2})"
    );
    println!(
        "tail ratio divided by etcd's own slowdown: {:.2}",
        last / first / etcd_slowdown
    );
    let audit = netplugin::fleet::audit(fill_hosts[0].state())?;
    println!(
        "scan: {} addresses, {} blocks, {} problems",
        audit.addresses,
        audit.blocks,
        audit.problems.len()
    );
    ensure!(audit.problems.is_empty(), "{:?}", audit.problems);
    Ok(())
}
