//! netplugin's fleet mode against a real 3-member etcd cluster on loopback (Debian's
//! etcd-server 3.4): the store contract, 8 netplugin instances (own --state-dir, --plugin-dir,
//! --admin-socket, --host-id, no metrics, no OVS: IPAM needs none) allocating and releasing
//! concurrently through Docker's IPAM protocol while a member is killed and restarted, every
//! member down and back, reclaim of a dead host (by hand and with --reclaim-after), and the
//! migration of an embedded store into etcd. Needs etcd-server; no dockerd, no OVS, no root.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use integration::etcd::EtcdCluster;
use integration::harness;
use integration::netplugin::Netplugin;
use integration::plugins::{binary, docker_call, metric_value, scrape_metrics};
use integration::procs::wait_until;
use netplugin::state::{AddrKind, State};
use netplugin::store::etcd::{EtcdConfig, EtcdStore};
use serde_json::{json, Value};

const PREFIX: &str = "/berth-it/";
const SUBNET: &str = "10.232.0.0/22";
const HOSTS: usize = 8;
/// Host 0 reclaims hosts gone this long by itself.
const RECLAIM_AFTER_SECS: u64 = 30;

struct Ctx {
    cluster: Mutex<EtcdCluster>,
    bin: PathBuf,
    work: tempfile::TempDir,
    hosts: Mutex<Vec<Netplugin>>,
    /// The shared pool of SUBNET.
    pool: String,
    /// When host 6 was killed (for the automatic reclaim).
    killed_6: Mutex<Option<Instant>>,
}

fn host_args(endpoints: &str, work: &Path, host: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--store",
        "etcd",
        "--etcd-endpoints",
        endpoints,
        "--etcd-prefix",
        PREFIX,
        "--etcd-timeout",
        "2",
        "--host-id",
        host,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if !extra.contains(&"--metrics") {
        args.extend(["--metrics".into(), "off".into()]);
    }
    // No OVS here: point it at a socket that does not exist (IPAM never needs it).
    args.push("--ovsdb".into());
    args.push(format!("unix:{}/no-ovs.sock", work.display()));
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn new_host(
    bin: &Path,
    root: &Path,
    endpoints: &str,
    i: usize,
    extra: &[&str],
) -> Result<Netplugin> {
    let work = root.join(format!("h{i}"));
    let plugins = work.join("plugins");
    std::fs::create_dir_all(&plugins)?;
    let args = host_args(endpoints, &work, &format!("h{i}"), extra);
    Ok(Netplugin::new(bin.to_path_buf(), &work, &plugins, args))
}

fn call(host: &Netplugin, method: &str, body: Value) -> Result<(u16, Value)> {
    docker_call(&host.socket(), method, Some(&body.to_string()))
}

fn request_pool(host: &Netplugin, subnet: &str) -> Result<String> {
    let (s, v) = call(
        host,
        "IpamDriver.RequestPool",
        json!({"AddressSpace":"berth-local","Pool":subnet,"SubPool":"","Options":{},"V6":false}),
    )?;
    ensure!(s == 200, "RequestPool {subnet}: {v}");
    Ok(v["PoolID"].as_str().context("PoolID")?.to_string())
}

/// Ok(ip) or Err(message) from the plugin.
fn request_address(
    host: &Netplugin,
    pool: &str,
    ip: &str,
) -> Result<std::result::Result<Ipv4Addr, String>> {
    let (s, v) = call(
        host,
        "IpamDriver.RequestAddress",
        json!({"PoolID":pool,"Address":ip,"Options":{}}),
    )?;
    if s != 200 {
        return Ok(Err(v["Err"].as_str().unwrap_or("").to_string()));
    }
    let a = v["Address"].as_str().context("Address")?;
    Ok(Ok(a.split('/').next().unwrap_or("").parse()?))
}

fn release_address(
    host: &Netplugin,
    pool: &str,
    ip: Ipv4Addr,
) -> Result<std::result::Result<(), String>> {
    let (s, v) = call(
        host,
        "IpamDriver.ReleaseAddress",
        json!({"PoolID":pool,"Address":ip.to_string()}),
    )?;
    Ok(if s == 200 {
        Ok(())
    } else {
        Err(v["Err"].as_str().unwrap_or("").to_string())
    })
}

/// An in-process view of the fleet's store, for full scans.
fn scan_state(c: &Ctx) -> Result<State> {
    let endpoints = c
        .cluster
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .endpoints();
    let store =
        EtcdStore::connect(&EtcdConfig::new(&endpoints, PREFIX).map_err(anyhow::Error::msg)?)?;
    Ok(State::new(Arc::new(store), "scanner"))
}

fn held_addresses(state: &State, pool: &str) -> Result<BTreeMap<Ipv4Addr, String>> {
    Ok(state
        .addresses(pool)?
        .into_iter()
        .filter(|a| a.kind == AddrKind::Address)
        .map(|a| (a.address, a.host_id))
        .collect())
}

fn audit_clean(state: &State) -> Result<netplugin::fleet::Audit> {
    let a = netplugin::fleet::audit(state)?;
    ensure!(a.problems.is_empty(), "audit: {:?}", a.problems);
    Ok(a)
}

fn setup() -> Result<Ctx> {
    let t = Instant::now();
    let bin = binary("netplugin")?;
    let cluster = EtcdCluster::start(3)?;
    println!(
        "    etcd cluster up after {:.1}s",
        t.elapsed().as_secs_f64()
    );
    let endpoints = cluster.endpoints();
    let work = tempfile::Builder::new()
        .prefix("bnet-etcd-")
        .tempdir_in("/tmp")?;
    let mut hosts = Vec::new();
    for i in 0..HOSTS {
        let reclaim = RECLAIM_AFTER_SECS.to_string() + "s";
        let extra: Vec<&str> = if i == 0 {
            vec!["--reclaim-after", &reclaim]
        } else {
            vec![]
        };
        let mut h = new_host(&bin, work.path(), &endpoints, i, &extra)?;
        h.start()?;
        hosts.push(h);
    }
    println!(
        "    {HOSTS} netplugins up after {:.1}s",
        t.elapsed().as_secs_f64()
    );
    // The same `docker network create --subnet` on every host: one pool, counted per host,
    // one gateway.
    let mut pool = String::new();
    for h in &hosts {
        let id = request_pool(h, SUBNET)?;
        ensure!(
            pool.is_empty() || pool == id,
            "hosts got different pools: {pool} {id}"
        );
        pool = id;
        let (s, v) = call(
            h,
            "IpamDriver.RequestAddress",
            json!({"PoolID":pool,"Address":"","Options":{"RequestAddressType":"com.docker.network.gateway"}}),
        )?;
        ensure!(s == 200 && v["Address"] == "10.232.0.1/22", "gateway: {v}");
    }
    Ok(Ctx {
        cluster: Mutex::new(cluster),
        bin,
        work,
        hosts: Mutex::new(hosts),
        pool,
        killed_6: Mutex::new(None),
    })
}

fn t_store_contract(c: &Ctx) -> Result<()> {
    let endpoints = c
        .cluster
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .endpoints();
    let store = EtcdStore::connect(
        &EtcdConfig::new(&endpoints, "/berth-contract/").map_err(anyhow::Error::msg)?,
    )?;
    netplugin::store::contract::run(&store);
    Ok(())
}

fn t_pool_shared_per_host(c: &Ctx) -> Result<()> {
    let hosts = c.hosts.lock().unwrap_or_else(|e| e.into_inner());
    let v = hosts[3].admin_json(&["pool", "show", &c.pool])?;
    let users: Vec<String> = v["hosts"]
        .as_array()
        .context("hosts")?
        .iter()
        .filter_map(|h| h.as_str().map(str::to_string))
        .collect();
    ensure!(users.len() == HOSTS, "pool users: {users:?}");
    // An overlapping subnet is refused, naming the pool that holds it.
    let (s, v) = call(
        &hosts[2],
        "IpamDriver.RequestPool",
        json!({"AddressSpace":"berth-local","Pool":"10.232.1.0/24","SubPool":"","Options":{},"V6":false}),
    )?;
    ensure!(s != 200, "an overlapping subnet was accepted: {v}");
    let e = v["Err"].as_str().unwrap_or("");
    ensure!(e.contains("overlaps 10.232.0.0/22"), "{e}");
    Ok(())
}

/// Fleet metrics of a host that allocates: address counts (asked of etcd as counts) equal a
/// scan of the store, and the lost-race counter is exposed.
fn t_fleet_metrics(c: &Ctx) -> Result<()> {
    let endpoints = c
        .cluster
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .endpoints();
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut host = new_host(&c.bin, c.work.path(), &endpoints, 90, &["--metrics", &addr])?;
    host.start()?;
    let mut taken = Vec::new();
    let mut result = (|| -> Result<()> {
        request_pool(&host, SUBNET)?;
        for _ in 0..3 {
            taken.push(request_address(&host, &c.pool, "")?.map_err(anyhow::Error::msg)?);
        }
        let text = scrape_metrics(&addr)?;
        let state = scan_state(c)?;
        let held = state.addresses(&c.pool)?.len() as f64;
        let series = format!(
            "berth_net_pool_allocated_addresses{{pool=\"{}\",subnet=\"{SUBNET}\"}}",
            c.pool
        );
        let shown = metric_value(&text, &series).with_context(|| format!("no {series}"))?;
        ensure!(shown == held, "metric {shown}, store {held}");
        ensure!(
            metric_value(&text, "berth_net_ipam_lost_races_total").is_some(),
            "no berth_net_ipam_lost_races_total in:\n{text}"
        );
        ensure!(metric_value(&text, "berth_net_store_up") == Some(1.0));
        Ok(())
    })();
    // Leave the pool as the other tests expect it.
    for ip in taken {
        if let Err(e) =
            release_address(&host, &c.pool, ip).and_then(|r| r.map_err(anyhow::Error::msg))
        {
            result = result.and(Err(e));
        }
    }
    if let Err(e) = call(&host, "IpamDriver.ReleasePool", json!({"PoolID": c.pool})) {
        result = result.and(Err(e));
    }
    host.stop()?;
    result
}

/// 8 hosts allocate and release at once while member 1 is killed and restarted.
fn t_concurrent_hosts_with_member_restart(c: &Ctx) -> Result<()> {
    let hosts = c.hosts.lock().unwrap_or_else(|e| e.into_inner());
    let model: Arc<Mutex<BTreeMap<Ipv4Addr, usize>>> = Arc::default();
    let start = Instant::now();
    let failures: Arc<Mutex<Vec<(Duration, String)>>> = Arc::default();
    let mut held: BTreeMap<Ipv4Addr, usize> = BTreeMap::new();
    let kill_at = Duration::from_millis(800);
    let (killed, restarted) = std::thread::scope(|s| -> Result<(Duration, Duration)> {
        let mut workers = Vec::new();
        for (n, h) in hosts.iter().enumerate() {
            let model = model.clone();
            let failures = failures.clone();
            let pool = c.pool.clone();
            workers.push(s.spawn(move || -> Result<Vec<Ipv4Addr>> {
                let mut rng =
                    0x9e3779b97f4a7c15u64 ^ (n as u64 + 1).wrapping_mul(0x2545f4914f6cdd1d);
                let mut next = move || {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng
                };
                let mut mine: Vec<Ipv4Addr> = Vec::new();
                let deadline = Instant::now() + Duration::from_secs(60);
                for _ in 0..150 {
                    if Instant::now() > deadline {
                        bail!("h{n}: 150 operations took more than 60 s");
                    }
                    let r = next() % 20;
                    let got = if r < 13 {
                        Some(request_address(h, &pool, "")?)
                    } else if r < 15 {
                        let ip = Ipv4Addr::from(
                            u32::from(Ipv4Addr::new(10, 232, 0, 2)) + (next() % 1000) as u32,
                        );
                        Some(request_address(h, &pool, &ip.to_string())?)
                    } else if !mine.is_empty() {
                        let ip = mine.swap_remove((next() as usize) % mine.len());
                        model.lock().unwrap_or_else(|e| e.into_inner()).remove(&ip);
                        if let Err(e) = release_address(h, &pool, ip)? {
                            // Finished by the host agent when the store answers again.
                            failures
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push((start.elapsed(), format!("h{n} release {ip}: {e}")));
                        }
                        None
                    } else {
                        None
                    };
                    match got {
                        Some(Ok(ip)) => {
                            let prev = model
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .insert(ip, n);
                            ensure!(
                                prev.is_none(),
                                "{ip} handed to h{n} while h{:?} holds it",
                                prev
                            );
                            mine.push(ip);
                        }
                        Some(Err(e)) if e.contains("already in use") => {}
                        Some(Err(e)) => failures
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((start.elapsed(), format!("h{n}: {e}"))),
                        None => {}
                    }
                }
                Ok(mine)
            }));
        }
        std::thread::sleep(kill_at);
        let killed = start.elapsed();
        c.cluster
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .kill(1)?;
        std::thread::sleep(Duration::from_secs(2));
        c.cluster
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .restart(1)?;
        let restarted = start.elapsed();
        for (n, w) in workers.into_iter().enumerate() {
            for ip in w.join().map_err(|_| anyhow::anyhow!("worker panicked"))?? {
                ensure!(held.insert(ip, n).is_none(), "{ip} held by two hosts");
            }
        }
        Ok((killed, restarted))
    })?;
    let total = start.elapsed();
    c.cluster
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .wait_healthy(Duration::from_secs(30))?;
    let failures = failures.lock().unwrap_or_else(|e| e.into_inner()).clone();
    println!(
        "    {} addresses held by 8 hosts after {:.1}s; member 1 down {:.1}s-{:.1}s; {} failed calls",
        held.len(),
        total.as_secs_f64(),
        killed.as_secs_f64(),
        restarted.as_secs_f64(),
        failures.len()
    );
    // Calls in flight to the member when it died may fail; after that, allocations go on.
    let late: Vec<&(Duration, String)> = failures
        .iter()
        // In flight when it died, or waiting out --etcd-timeout (2 s) on it.
        .filter(|(t, _)| *t > killed + Duration::from_secs(3) || *t < killed)
        .collect();
    ensure!(
        late.is_empty(),
        "calls failed outside the kill window: {late:?}"
    );
    ensure!(
        failures.len() <= HOSTS * 2,
        "too many failed calls: {failures:?}"
    );
    for (t, f) in failures.iter().take(4) {
        println!("    failed at {:.2}s: {f}", t.as_secs_f64());
    }
    // Full scan: exactly the addresses the hosts hold, no duplicates, no leaks (allowing the
    // host agents a few seconds to finish transactions whose answer was lost).
    let state = scan_state(c)?;
    let expected: BTreeMap<Ipv4Addr, String> =
        held.iter().map(|(ip, n)| (*ip, format!("h{n}"))).collect();
    let same = wait_until(Duration::from_secs(20), Duration::from_millis(250), || {
        held_addresses(&state, &c.pool).is_ok_and(|s| s == expected)
    });
    if !same {
        let stored = held_addresses(&state, &c.pool)?;
        let extra: Vec<_> = stored
            .keys()
            .filter(|ip| !expected.contains_key(ip))
            .collect();
        let lost: Vec<_> = expected
            .keys()
            .filter(|ip| !stored.contains_key(ip))
            .collect();
        bail!("store and holders differ: leaked {extra:?}, lost {lost:?}");
    }
    audit_clean(&state)?;
    // Release everything; the scan must come back empty.
    for (ip, n) in &held {
        if let Err(e) = release_address(&hosts[*n], &c.pool, *ip)? {
            bail!("release {ip} on h{n}: {e}");
        }
    }
    ensure!(
        held_addresses(&state, &c.pool)?.is_empty(),
        "addresses left after releasing all"
    );
    let a = audit_clean(&state)?;
    println!(
        "    scan after release: {} records (the gateway), {} blocks, no problems",
        a.addresses, a.blocks
    );
    Ok(())
}

/// Every member down: calls fail within a bound with a clear error; they work again by
/// themselves when etcd returns.
fn t_all_members_down_and_back(c: &Ctx) -> Result<()> {
    let hosts = c.hosts.lock().unwrap_or_else(|e| e.into_inner());
    {
        let mut cl = c.cluster.lock().unwrap_or_else(|e| e.into_inner());
        for i in 0..3 {
            cl.kill(i)?;
        }
    }
    let t = Instant::now();
    let r = request_address(&hosts[0], &c.pool, "")?;
    let took = t.elapsed();
    let e = match r {
        Ok(ip) => bail!("allocated {ip} with every etcd member down"),
        Err(e) => e,
    };
    ensure!(took < Duration::from_secs(10), "the failure took {took:?}");
    ensure!(
        e.contains("etcd") || e.contains("state store"),
        "unclear error: {e}"
    );
    println!(
        "    all members down: RequestAddress failed after {:.1}s: {e}",
        took.as_secs_f64()
    );
    // The handshake never touches the store.
    let t = Instant::now();
    docker_call(&hosts[0].socket(), "Plugin.Activate", None)?;
    ensure!(t.elapsed() < Duration::from_secs(1));
    {
        let mut cl = c.cluster.lock().unwrap_or_else(|e| e.into_inner());
        for i in 0..3 {
            cl.restart(i)?;
        }
        cl.wait_healthy(Duration::from_secs(30))?;
    }
    let t = Instant::now();
    let mut got = None;
    let ok = wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
        if let Ok(Ok(ip)) = request_address(&hosts[0], &c.pool, "") {
            got = Some(ip);
        }
        got.is_some()
    });
    ensure!(ok, "no allocation within 30 s of etcd's return");
    println!(
        "    etcd back: allocations work again after {:.1}s",
        t.elapsed().as_secs_f64()
    );
    if let Some(ip) = got {
        release_address(&hosts[0], &c.pool, ip)?.map_err(anyhow::Error::msg)?;
    }
    Ok(())
}

/// Issue 15 §3: a member that stops answering without closing its connections (SIGSTOP)
/// stalls no host: every IPAM call of 8 hosts answers within the store's bound (10 s), every
/// host still allocates, and once the member is back no address is leaked or held twice.
fn t_paused_member(c: &Ctx) -> Result<()> {
    const BOUND: Duration = Duration::from_secs(12);
    let hosts = c.hosts.lock().unwrap_or_else(|e| e.into_inner());
    let before = held_addresses(&scan_state(c)?, &c.pool)?;
    c.cluster
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .pause(0)?;
    let outcome = std::thread::scope(|s| {
        let workers: Vec<_> = hosts
            .iter()
            .enumerate()
            .map(|(n, h)| {
                let pool = c.pool.clone();
                s.spawn(move || -> Result<(usize, usize, Duration, Vec<Ipv4Addr>)> {
                    let (mut ok, mut failed, mut slowest) = (0, 0, Duration::ZERO);
                    let mut kept = Vec::new();
                    for _ in 0..6 {
                        let t = Instant::now();
                        let got = request_address(h, &c.pool, "")?;
                        slowest = slowest.max(t.elapsed());
                        ensure!(
                            t.elapsed() < BOUND,
                            "h{n}: RequestAddress answered after {:?}",
                            t.elapsed()
                        );
                        let Ok(ip) = got else {
                            failed += 1;
                            continue;
                        };
                        ok += 1;
                        let t = Instant::now();
                        let released = release_address(h, &pool, ip)?;
                        slowest = slowest.max(t.elapsed());
                        ensure!(
                            t.elapsed() < BOUND,
                            "h{n}: ReleaseAddress answered after {:?}",
                            t.elapsed()
                        );
                        if released.is_err() {
                            // Finished by the host's agent once the store answers (checked
                            // below: released or still held, never lost).
                            kept.push(ip);
                        }
                    }
                    Ok((ok, failed, slowest, kept))
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("worker panicked")))
            })
            .collect::<Result<Vec<_>>>()
    });
    c.cluster
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .resume(0)?;
    let outcome = outcome?;
    let slowest = outcome.iter().map(|o| o.2).max().unwrap_or_default();
    let (ok, failed): (usize, usize) = outcome
        .iter()
        .map(|o| (o.0, o.1))
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    println!(
        "    member 0 paused: {ok} allocations succeeded, {failed} failed, slowest call {:.1}s",
        slowest.as_secs_f64()
    );
    for (n, o) in outcome.iter().enumerate() {
        ensure!(
            o.0 > 0,
            "h{n} allocated nothing while one member of three was paused"
        );
    }
    c.cluster
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .wait_healthy(Duration::from_secs(30))?;
    // Releases that failed are finished by the hosts' agents; nothing else is left.
    let kept: BTreeSet<Ipv4Addr> = outcome.iter().flat_map(|o| o.3.iter().copied()).collect();
    let ok = wait_until(Duration::from_secs(30), Duration::from_millis(500), || {
        scan_state(c)
            .and_then(|state| held_addresses(&state, &c.pool))
            .is_ok_and(|now| now == before)
    });
    ensure!(
        ok,
        "addresses held after the pause differ from before it (releases pending: {kept:?}): {:?}",
        held_addresses(&scan_state(c)?, &c.pool)?
            .into_iter()
            .filter(|(ip, _)| !before.contains_key(ip))
            .collect::<Vec<_>>()
    );
    audit_clean(&scan_state(c)?)?;
    Ok(())
}

/// A host dies holding addresses: refused while its lease lives, then reclaimed by hand,
/// saying what it released. Host 6 dies too and is left to host 0's --reclaim-after.
fn t_reclaim_dead_host(c: &Ctx) -> Result<()> {
    let mut hosts = c.hosts.lock().unwrap_or_else(|e| e.into_inner());
    let mut dead = Vec::new();
    for _ in 0..5 {
        dead.push(request_address(&hosts[7], &c.pool, "")?.map_err(anyhow::Error::msg)?);
    }
    for _ in 0..3 {
        request_address(&hosts[6], &c.pool, "")?.map_err(anyhow::Error::msg)?;
    }
    hosts[7].kill9()?;
    hosts[6].kill9()?;
    *c.killed_6.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    let refused = hosts[0].admin_text(&["pool", "reclaim", "--host", "h7"]);
    ensure!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("alive")),
        "reclaim of a live lease: {refused:?}"
    );
    let gone = wait_until(Duration::from_secs(25), Duration::from_millis(250), || {
        hosts[0].admin_json(&["host", "ls"]).is_ok_and(|v| {
            v.as_array()
                .is_some_and(|l| l.iter().any(|h| h["host"] == "h7" && h["alive"] == false))
        })
    });
    ensure!(
        gone,
        "h7's lease did not expire: {}",
        hosts[0].admin_text(&["host", "ls"])?
    );
    println!("{}", hosts[0].admin_text(&["host", "ls"])?);
    let out = hosts[0].admin_text(&["pool", "reclaim", "--host", "h7"])?;
    println!("{out}");
    ensure!(out.contains("released 5 addresses"), "{out}");
    let again = hosts[0].admin_text(&["pool", "reclaim", "--host", "h7"])?;
    ensure!(
        again.contains("released 0 addresses"),
        "not idempotent: {again}"
    );
    for ip in &dead {
        ensure!(out.contains(&ip.to_string()), "{ip} not reported: {out}");
    }
    let state = scan_state(c)?;
    let left = held_addresses(&state, &c.pool)?;
    ensure!(!left.values().any(|h| h == "h7"), "h7 still holds {left:?}");
    audit_clean(&state)?;
    // A reclaimed address is handed out again.
    let mut again = BTreeSet::new();
    for _ in 0..40 {
        again.insert(request_address(&hosts[1], &c.pool, "")?.map_err(anyhow::Error::msg)?);
    }
    for ip in &again {
        release_address(&hosts[1], &c.pool, *ip)?.map_err(anyhow::Error::msg)?;
    }
    Ok(())
}

/// Single-host embedded state moved into etcd: same pool, same addresses; other hosts share
/// the pool and never get those addresses; a second run changes nothing.
fn t_migration(c: &Ctx) -> Result<()> {
    let endpoints = c
        .cluster
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .endpoints();
    let work = c.work.path().join("hm");
    let plugins = work.join("plugins");
    std::fs::create_dir_all(&plugins)?;
    let embedded = vec![
        "--host-id".to_string(),
        "hm".into(),
        "--metrics".into(),
        "off".into(),
        "--ovsdb".into(),
        format!("unix:{}/no-ovs.sock", work.display()),
    ];
    let mut hm = Netplugin::new(c.bin.clone(), &work, &plugins, embedded);
    hm.start()?;
    let pool = request_pool(&hm, "10.233.0.0/24")?;
    let (s, v) = call(
        &hm,
        "IpamDriver.RequestAddress",
        json!({"PoolID":pool,"Address":"","Options":{"RequestAddressType":"com.docker.network.gateway"}}),
    )?;
    ensure!(s == 200, "{v}");
    let mut before = BTreeSet::new();
    for ip in ["", "", "", "10.233.0.50"] {
        before.insert(request_address(&hm, &pool, ip)?.map_err(anyhow::Error::msg)?);
    }
    hm.stop()?;
    let migrate = |json: bool| -> Result<String> {
        let mut cmd = std::process::Command::new(&c.bin);
        cmd.args([
            "store",
            "migrate",
            "--to",
            "etcd",
            "--etcd-endpoints",
            &endpoints,
            "--etcd-prefix",
            PREFIX,
        ])
        .arg("--state-dir")
        .arg(work.join("state"));
        if json {
            cmd.arg("--json");
        }
        let out = cmd.output()?;
        ensure!(
            out.status.success(),
            "migrate: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let out = migrate(false)?;
    println!("{out}");
    ensure!(
        out.contains("copied 1 pools") && out.contains("copied 5 addrs"),
        "{out}"
    );
    // Back as a fleet member.
    hm.args = host_args(&endpoints, &work, "hm", &[]);
    hm.start()?;
    let v = hm.admin_json(&["pool", "show", &pool])?;
    let shown: BTreeSet<Ipv4Addr> = v["addresses"]
        .as_array()
        .context("addresses")?
        .iter()
        .filter_map(|a| a["address"].as_str()?.parse().ok())
        .collect();
    let mut expected = before.clone();
    expected.insert(Ipv4Addr::new(10, 233, 0, 1));
    ensure!(
        shown == expected,
        "after migration {shown:?}, before {expected:?}"
    );
    // Another host creates the same network: same pool; new addresses avoid the old ones.
    let hosts = c.hosts.lock().unwrap_or_else(|e| e.into_inner());
    ensure!(
        request_pool(&hosts[2], "10.233.0.0/24")? == pool,
        "not the migrated pool"
    );
    for _ in 0..10 {
        let ip = request_address(&hosts[2], &pool, "")?.map_err(anyhow::Error::msg)?;
        ensure!(
            !expected.contains(&ip),
            "{ip} handed out twice after migration"
        );
    }
    let v: Value = serde_json::from_str(&migrate(true)?)?;
    ensure!(
        v["copied"].as_object().is_some_and(|m| m.is_empty()),
        "second run copied: {v}"
    );
    audit_clean(&scan_state(c)?)?;
    Ok(())
}

/// Host 6 died in the reclaim test; host 0 runs with --reclaim-after 30s.
fn t_auto_reclaim(c: &Ctx) -> Result<()> {
    let since = c
        .killed_6
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .context("the reclaim test did not run")?;
    let state = scan_state(c)?;
    let done = wait_until(Duration::from_secs(75), Duration::from_millis(500), || {
        held_addresses(&state, &c.pool).is_ok_and(|m| !m.values().any(|h| h == "h6"))
    });
    ensure!(done, "h6's addresses were not reclaimed automatically");
    let took = since.elapsed();
    ensure!(
        took >= Duration::from_secs(RECLAIM_AFTER_SECS),
        "reclaimed after only {took:?}"
    );
    println!(
        "    h6 reclaimed automatically {:.0}s after it died",
        took.as_secs_f64()
    );
    audit_clean(&state)?;
    Ok(())
}

/// The LeaseKeepAlive streams a member started and the keep-alive requests it received.
fn keep_alive_counts(endpoint: &str) -> Result<(f64, f64)> {
    let addr = endpoint.trim_start_matches("http://");
    let text = scrape_metrics(addr)?;
    let sum = |name: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(name) && l.contains("grpc_method=\"LeaseKeepAlive\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    Ok((
        sum("grpc_server_started_total"),
        sum("grpc_server_msg_received_total"),
    ))
}

/// A host's lease renewals go over one long-lived keep-alive stream, one request each (a
/// one-member cluster of its own, so that the counts are this store's alone).
fn t_keep_alive_one_stream(_c: &Ctx) -> Result<()> {
    use netplugin::store::Store;
    let cluster = EtcdCluster::start(1)?;
    let endpoint = cluster.endpoints();
    let store =
        EtcdStore::connect(&EtcdConfig::new(&endpoint, "/berth-ka/").map_err(anyhow::Error::msg)?)?;
    let lease = store.grant_lease(Duration::from_secs(10))?;
    let (streams0, msgs0) = keep_alive_counts(&endpoint)?;
    for _ in 0..5 {
        store.keep_alive(lease)?;
    }
    let (streams, msgs) = keep_alive_counts(&endpoint)?;
    ensure!(
        (streams - streams0, msgs - msgs0) == (1.0, 5.0),
        "5 renewals took {} keep-alive streams and {} requests (want 1 and 5)",
        streams - streams0,
        msgs - msgs0
    );
    store.revoke_lease(lease)?;
    ensure!(
        store.keep_alive(lease).is_err(),
        "a revoked lease was renewed"
    );
    Ok(())
}

/// Compacts etcd's history up to `revision` (etcd's JSON gateway; the suite has no etcdctl).
fn compact(endpoint: &str, revision: i64) -> Result<()> {
    use std::io::{Read, Write};
    let addr = endpoint.trim_start_matches("http://");
    let body = format!(r#"{{"revision":"{revision}","physical":true}}"#);
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "POST /v3/kv/compaction HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    ensure!(answer.starts_with("HTTP/1.1 200"), "compaction: {answer}");
    Ok(())
}

/// A watch (the ARP proxy's, of the endpoint records) that must resume from a revision etcd
/// has compacted ends, so that its consumer lists again, instead of retrying forever; a
/// listing and its watch see what follows.
fn t_watch_ends_when_compacted(c: &Ctx) -> Result<()> {
    use netplugin::store::{Event, Op, Store, Txn};
    let endpoints = c
        .cluster
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .endpoints();
    let store = EtcdStore::connect(
        &EtcdConfig::new(&endpoints, "/berth-compact/").map_err(anyhow::Error::msg)?,
    )?;
    let put = |k: &str| -> Result<i64> {
        Ok(store
            .txn(Txn {
                success: vec![Op::put(k, b"v".to_vec())],
                ..Default::default()
            })?
            .revision)
    };
    let first = put("e/1")?;
    put("e/2")?;
    let last = put("e/3")?;
    compact(endpoints.split(',').next().unwrap_or_default(), last)?;
    let rx = store.watch_from("e/", first + 1)?;
    match rx.recv_timeout(Duration::from_secs(5)) {
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {}
        other => bail!("a watch from a compacted revision did not end: {other:?}"),
    }
    let listing = store.list_and_watch("e/")?;
    ensure!(
        listing.kvs.len() == 3 && listing.revision >= last,
        "listing: {:?}",
        listing.kvs
    );
    let rev = put("e/4")?;
    match listing.events.recv_timeout(Duration::from_secs(5)) {
        Ok(Event::Put(kv)) if kv.key == "e/4" && kv.mod_revision == rev => Ok(()),
        other => bail!("the listing's watch: {other:?}"),
    }
}

fn main() {
    harness::run(
        "etcd",
        setup,
        &[
            ("store_contract", t_store_contract),
            ("keep_alive_one_stream", t_keep_alive_one_stream),
            ("watch_ends_when_compacted", t_watch_ends_when_compacted),
            ("pool_shared_per_host", t_pool_shared_per_host),
            ("fleet_metrics", t_fleet_metrics),
            (
                "concurrent_hosts_with_member_restart",
                t_concurrent_hosts_with_member_restart,
            ),
            ("all_members_down_and_back", t_all_members_down_and_back),
            ("paused_member", t_paused_member),
            ("reclaim_dead_host", t_reclaim_dead_host),
            ("migration", t_migration),
            ("auto_reclaim", t_auto_reclaim),
        ],
    );
}
