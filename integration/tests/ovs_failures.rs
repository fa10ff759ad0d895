//! netplugin and the test harness against an ovs-vswitchd that cannot create its bridge, as
//! happens to a second ovs-vswitchd with a netdev datapath in one network namespace (the first
//! holds the tap device `ovs-netdev`; the second logs "ovs-netdev: creating tap device failed:
//! Device or resource busy" and OVSDB says nothing). Everything runs in a network namespace of
//! the test's own: two private Open vSwitch instances and netplugin (plugin socket in a temp
//! dir, not Docker's). Touches nothing in the machine's namespaces. Needs root,
//! openvswitch-switch and iproute2.

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

use anyhow::{ensure, Context as _, Result};
use integration::harness;
use integration::netplugin::Netplugin;
use integration::ovs::OvsEnv;
use integration::plugins::binary;

struct Ctx {
    netns: String,
    /// Holds `ovs-netdev` in the namespace (a working netdev bridge).
    first: Option<OvsEnv>,
    /// The one that cannot create its datapath.
    second: Mutex<Option<OvsEnv>>,
    net: Mutex<Netplugin>,
    _work: tempfile::TempDir,
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output()?;
    ensure!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn setup() -> Result<Ctx> {
    integration::ovs::require_tools()?;
    let bin = binary("netplugin")?;
    let netns = format!("bof{}", std::process::id() % 1_000_000);
    ip(&["netns", "add", &netns])?;
    let work = tempfile::Builder::new().prefix("bof-").tempdir_in("/tmp")?;
    let started = (|| -> Result<(OvsEnv, OvsEnv)> {
        let first = OvsEnv::start_in_netns(&netns)?;
        first.vsctl(&[
            "add-br",
            "brfirst",
            "--",
            "set",
            "bridge",
            "brfirst",
            "datapath_type=netdev",
        ])?;
        let second = OvsEnv::start_in_netns(&netns)?;
        Ok((first, second))
    })();
    let (first, second) = match started {
        Ok(s) => s,
        Err(e) => {
            let _ = ip(&["netns", "del", &netns]);
            return Err(e);
        }
    };
    let args: Vec<String> = [
        "--ovsdb",
        &second.endpoint(),
        "--ovs-rundir",
        &second.rundir().to_string_lossy(),
        "--bridge",
        "brsecond",
        "--datapath",
        "netdev",
        "--host-id",
        "failing-host",
        "--metrics",
        "off",
        "--docker-socket",
        &work.path().join("no-docker.sock").to_string_lossy(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let plugins = work.path().join("plugins");
    std::fs::create_dir_all(&plugins)?;
    let net = Netplugin::new(bin, work.path(), &plugins, args);
    Ok(Ctx {
        netns,
        first: Some(first),
        second: Mutex::new(Some(second)),
        net: Mutex::new(net),
        _work: work,
    })
}

impl Drop for Ctx {
    fn drop(&mut self) {
        if let Ok(mut net) = self.net.lock() {
            if let Err(e) = net.stop() {
                eprintln!("teardown: {e:#}");
            }
        }
        if let Ok(mut s) = self.second.lock() {
            drop(s.take());
        }
        drop(self.first.take());
        // The kernel removes the namespace's tap devices with it.
        if let Err(e) = ip(&["netns", "del", &self.netns]) {
            eprintln!("teardown: {e:#}");
        }
    }
}

/// Runs `f` on a thread in the test's network namespace (children it spawns stay there).
fn in_netns<T: Send>(c: &Ctx, f: impl FnOnce() -> T + Send) -> Result<T> {
    integration::lab::node::in_netns(&Path::new("/run/netns").join(&c.netns), f)
}

/// CreateNetwork fails with OVS's reason, not only "connect to <bridge>.mgmt: No such file or
/// directory"; the log says it too.
fn t_create_network_names_the_reason(c: &Ctx) -> Result<()> {
    in_netns(c, || c.net.lock().expect("netplugin lock").start())??;
    let net = c.net.lock().expect("netplugin lock");
    let id = "f".repeat(64);
    let body = format!(
        r#"{{"NetworkID":"{id}","Options":{{}},"IPv4Data":[{{"Pool":"10.231.250.0/24","Gateway":"10.231.250.1/24"}}],"IPv6Data":[]}}"#
    );
    let (status, reply) = net.call("NetworkDriver.CreateNetwork", Some(&body))?;
    let err = reply["Err"].as_str().unwrap_or_default();
    println!("    CreateNetwork: {status} {err}");
    ensure!(
        status != 200 && !err.is_empty(),
        "CreateNetwork: {status} {reply}"
    );
    for want in [
        "brsecond",
        "has no OpenFlow port",
        "another ovs-vswitchd with a netdev datapath",
        "tap device ovs-netdev",
    ] {
        ensure!(err.contains(want), "no {want:?} in Docker's error: {err}");
    }
    let log = net.log_tail(100);
    ensure!(
        log.contains("ovs-vswitchd has not opened the bridge")
            && log.contains("another ovs-vswitchd with a netdev datapath"),
        "the log does not give the reason:\n{log}"
    );
    Ok(())
}

/// The harness's own check (what `OvsEnv::start` runs when `ovs-netdev` exists before it
/// starts): the second instance's failure is detected and said in plain words, with the lines
/// of its log that give OVS's reason.
fn t_harness_detects_a_second_netdev_ovs(c: &Ctx) -> Result<()> {
    let mut second = c.second.lock().expect("ovs lock");
    let second = second.as_mut().context("second OVS")?;
    let err = format!(
        "{:#}",
        second
            .probe_netdev()
            .err()
            .context("the probe succeeded on the second ovs-vswitchd")?
    );
    for want in [
        "another ovs-vswitchd with a netdev datapath runs in this network namespace",
        "creating tap device failed: Device or resource busy",
    ] {
        ensure!(err.contains(want), "no {want:?} in: {err}");
    }
    // And the first one, whose datapath works, passes it.
    c.first
        .as_ref()
        .context("first OVS")?
        .vsctl(&["br-exists", "brfirst"])?;
    Ok(())
}

fn main() {
    harness::run(
        "ovs_failures",
        setup,
        &[
            (
                "create_network_names_the_reason",
                t_create_network_names_the_reason,
            ),
            (
                "harness_detects_a_second_netdev_ovs",
                t_harness_detects_a_second_netdev_ovs,
            ),
        ],
    );
}
