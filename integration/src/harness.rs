//! A tiny test runner for `harness = false` test targets whose tests share one expensive context
//! (a [`crate::docker::DockerEnv`], plugin daemons, ...), with guaranteed teardown.
//!
//! ```no_run
//! use integration::harness;
//! struct Ctx { /* DockerEnv, daemons, ... */ }
//! fn t_one(_c: &Ctx) -> anyhow::Result<()> { Ok(()) }
//! fn main() {
//!     harness::run("my_suite", || Ok(Ctx {}), &[("one", t_one)]);
//! }
//! ```
//!
//! Arguments: every argument not starting with `-` is a substring filter (a test runs if its name
//! contains any filter; no filter = all). `--exact` makes filters exact names, `--skip X` skips
//! names containing X, `--list` lists the tests. Other libtest flags (`--nocapture`,
//! `--test-threads N`, ...) are accepted and ignored. If no test is selected, setup is not run.
//!
//! SIGINT, SIGTERM and SIGHUP are handled by a watcher thread: it runs the emergency cleanups
//! registered with [`register_cleanup`] (a `DockerEnv` registers one) and exits with 128 + signal.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Instant;

use anyhow::{anyhow, Result};

/// A test: gets the shared context, returns `Err` (or panics) on failure.
pub type TestFn<C> = fn(&C) -> Result<()>;

/// Counts of one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
    pub setup_failed: bool,
}

impl Summary {
    /// The final line: `N passed, N failed` plus `, N skipped` if any were filtered out.
    pub fn line(&self) -> String {
        let mut s = format!("{} passed, {} failed", self.passed, self.failed);
        if self.skipped > 0 {
            s.push_str(&format!(", {} skipped", self.skipped));
        }
        s
    }

    /// True if nothing failed (setup included).
    pub fn ok(&self) -> bool {
        self.failed == 0 && !self.setup_failed
    }
}

#[derive(Debug, Default)]
struct Args {
    filters: Vec<String>,
    skips: Vec<String>,
    exact: bool,
    list: bool,
}

impl Args {
    fn parse(args: impl IntoIterator<Item = String>) -> Args {
        // libtest flags that take a separate value.
        const WITH_VALUE: &[&str] = &[
            "--test-threads",
            "--format",
            "--logfile",
            "--color",
            "--shuffle-seed",
            "-Z",
        ];
        let mut out = Args::default();
        let mut it = args.into_iter();
        while let Some(a) = it.next() {
            if a == "--exact" {
                out.exact = true;
            } else if a == "--list" {
                out.list = true;
            } else if a == "--skip" {
                if let Some(v) = it.next() {
                    out.skips.push(v);
                }
            } else if let Some(v) = a.strip_prefix("--skip=") {
                out.skips.push(v.to_string());
            } else if WITH_VALUE.contains(&a.as_str()) {
                it.next();
            } else if a.starts_with('-') {
                // --nocapture, --ignored, --include-ignored, --quiet, --test-threads=N, ...
            } else {
                out.filters.push(a);
            }
        }
        out
    }

    fn selects(&self, name: &str) -> bool {
        let matches = |f: &String| {
            if self.exact {
                name == f
            } else {
                name.contains(f.as_str())
            }
        };
        (self.filters.is_empty() || self.filters.iter().any(matches))
            && !self.skips.iter().any(|s| name.contains(s.as_str()))
    }
}

/// Runs the suite and exits the process: 0 if every selected test passed, 1 otherwise.
///
/// `setup` runs once (only if at least one test is selected); its context is dropped (teardown)
/// after the last test and before the summary line and the exit.
pub fn run<C>(suite: &str, setup: impl FnOnce() -> Result<C>, tests: &[(&str, TestFn<C>)]) -> ! {
    // Before any thread: Docker 26 needs the whole process in its own mount namespace.
    if let Err(e) = crate::docker_root::prepare_process() {
        println!("setup of {suite} ... FAILED\n{}", indent(&format!("{e:#}")));
        println!("0 passed, {} failed", tests.len());
        std::process::exit(1);
    }
    install_signal_watcher();
    let args = Args::parse(std::env::args().skip(1));
    if args.list {
        for (name, _) in tests {
            if args.selects(name) {
                println!("{name}: test");
            }
        }
        std::process::exit(0);
    }
    let summary = run_with_args(suite, &args, setup, tests);
    println!("{}", summary.line());
    std::process::exit(if summary.ok() { 0 } else { 1 });
}

/// Like [`run`], but with explicit arguments and returning the counts instead of exiting
/// (does not print the summary line nor install the signal watcher).
pub fn run_with<C>(
    suite: &str,
    args: &[&str],
    setup: impl FnOnce() -> Result<C>,
    tests: &[(&str, TestFn<C>)],
) -> Summary {
    let args = Args::parse(args.iter().map(|s| s.to_string()));
    run_with_args(suite, &args, setup, tests)
}

fn run_with_args<C>(
    suite: &str,
    args: &Args,
    setup: impl FnOnce() -> Result<C>,
    tests: &[(&str, TestFn<C>)],
) -> Summary {
    let selected: Vec<&(&str, TestFn<C>)> = tests.iter().filter(|(n, _)| args.selects(n)).collect();
    let mut summary = Summary {
        skipped: tests.len() - selected.len(),
        ..Summary::default()
    };
    println!("\nrunning {} tests ({suite})", selected.len());
    if selected.is_empty() {
        return summary;
    }

    let t0 = Instant::now();
    let ctx = match catch_unwind(AssertUnwindSafe(setup)) {
        Ok(Ok(ctx)) => ctx,
        Ok(Err(e)) => return setup_failed(suite, summary, &e, selected.len()),
        Err(p) => {
            let e = anyhow!("panicked: {}", panic_message(&*p));
            return setup_failed(suite, summary, &e, selected.len());
        }
    };
    println!(
        "setup of {suite} ... ok ({:.1}s)",
        t0.elapsed().as_secs_f64()
    );

    let mut failures = Vec::new();
    for (name, f) in selected {
        let t = Instant::now();
        let res = match catch_unwind(AssertUnwindSafe(|| f(&ctx))) {
            Ok(r) => r,
            Err(p) => Err(anyhow!("panicked: {}", panic_message(&*p))),
        };
        let secs = t.elapsed().as_secs_f64();
        match res {
            Ok(()) => {
                summary.passed += 1;
                println!("test {name} ... ok ({secs:.1}s)");
            }
            Err(e) => {
                summary.failed += 1;
                println!(
                    "test {name} ... FAILED ({secs:.1}s)\n{}",
                    indent(&format!("{e:#}"))
                );
                failures.push(*name);
            }
        }
    }

    let t = Instant::now();
    drop(ctx);
    println!(
        "teardown of {suite} ... done ({:.1}s)",
        t.elapsed().as_secs_f64()
    );
    if !failures.is_empty() {
        println!("failures:");
        for f in failures {
            println!("    {f}");
        }
    }
    summary
}

fn setup_failed(suite: &str, mut summary: Summary, e: &anyhow::Error, n: usize) -> Summary {
    println!("setup of {suite} ... FAILED\n{}", indent(&format!("{e:#}")));
    summary.setup_failed = true;
    summary.failed = n;
    summary
}

fn indent(s: &str) -> String {
    s.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "<non-string panic payload>".to_string()
    }
}

/// Fails with a clear message unless running as root and every binary in `tools` is found
/// (a name is looked up in `PATH` plus /usr/sbin and /sbin; a path containing `/` is checked as is).
/// Never skips silently: missing prerequisites are a failure.
pub fn require_root_and_tools(tools: &[&str]) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return Err(anyhow!(
            "these tests must run as root (they start dockerd, mount filesystems, create \
             network namespaces); run the project's setup and then the tests as root"
        ));
    }
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| find_binary(t).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(anyhow!(
            "required binaries not found: {} (searched PATH, /usr/sbin, /sbin). Run the project's \
             setup to install the test prerequisites (Debian: docker.io containerd runc \
             busybox-static ...), then re-run the tests",
            missing.join(", ")
        ));
    }
    Ok(())
}

/// Looks up an executable like a shell would, plus /usr/sbin and /sbin.
pub fn find_binary(name: &str) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let is_exec = |p: &std::path::Path| {
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if name.contains('/') {
        let p = std::path::PathBuf::from(name);
        return is_exec(&p).then_some(p);
    }
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .filter(|d| !d.is_empty())
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"])
        .map(|d| std::path::Path::new(d).join(name))
        .find(|p| is_exec(p));
    found
}

// ---------------------------------------------------------------------------------------------
// Emergency cleanup on signals.

type Cleanup = Arc<dyn Fn() + Send + Sync>;

static CLEANUPS: Mutex<BTreeMap<u64, Cleanup>> = Mutex::new(BTreeMap::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// Unregisters its cleanup when dropped.
pub struct CleanupGuard(u64);

impl Drop for CleanupGuard {
    fn drop(&mut self) {
        if let Ok(mut m) = CLEANUPS.lock() {
            m.remove(&self.0);
        }
    }
}

/// Registers `f` to run (on the signal watcher thread) if the process gets SIGINT/SIGTERM/SIGHUP
/// while the guard lives. Only effective in processes that went through [`run`]; harmless
/// otherwise. `f` must be safe to run concurrently with whatever the main thread is doing.
pub fn register_cleanup(f: impl Fn() + Send + Sync + 'static) -> CleanupGuard {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    CLEANUPS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id, Arc::new(f));
    CleanupGuard(id)
}

/// Makes SIGINT, SIGTERM and SIGHUP run the registered cleanups, then exit (what [`run`] does
/// for a suite; for benchmarks and tools). Call it first thing in `main`, before any thread.
pub fn install_signal_watcher() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        use nix::sys::signal::{SigSet, SigmaskHow, Signal};
        let mut set = SigSet::empty();
        set.add(Signal::SIGINT);
        set.add(Signal::SIGTERM);
        set.add(Signal::SIGHUP);
        // Block in this (main) thread before any other thread exists, so every later thread
        // inherits the mask and only the watcher receives them. std::process::Command resets the
        // mask in children, so spawned daemons get default signal handling.
        if nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None).is_err() {
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("signal-watcher".into())
            .spawn(move || {
                let Ok(sig) = set.wait() else { return };
                eprintln!("\nreceived {sig}: tearing down the test environment ...");
                let cleanups: Vec<Cleanup> = CLEANUPS
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .values()
                    .cloned()
                    .collect();
                for c in cleanups.iter().rev() {
                    c();
                }
                eprintln!("teardown after {sig} done");
                std::process::exit(128 + sig as i32);
            });
        if spawned.is_err() {
            let _ = nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&set), None);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(v: &[&str]) -> Args {
        Args::parse(v.iter().map(|s| s.to_string()))
    }

    #[test]
    fn args() {
        let x = a(&[
            "--nocapture",
            "--test-threads",
            "1",
            "vol",
            "--skip",
            "slow",
            "-q",
        ]);
        assert_eq!(x.filters, vec!["vol"]);
        assert!(x.selects("volume_create"));
        assert!(!x.selects("volume_slow"));
        assert!(!x.selects("network"));
        let x = a(&["--exact", "vol"]);
        assert!(x.selects("vol") && !x.selects("volume"));
        assert!(a(&[]).selects("anything"));
    }

    struct Ctx(Arc<Mutex<Vec<&'static str>>>);
    impl Drop for Ctx {
        fn drop(&mut self) {
            self.0.lock().unwrap().push("teardown");
        }
    }

    #[test]
    fn run_counts_and_tears_down() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let l2 = log.clone();
        let tests: &[(&str, TestFn<Ctx>)] = &[
            ("good", |c| {
                c.0.lock().unwrap().push("good");
                Ok(())
            }),
            ("bad", |_| Err(anyhow!("nope"))),
            ("boom", |_| panic!("kaboom")),
            ("other", |_| Ok(())),
        ];
        let s = run_with("t", &["--skip", "other"], move || Ok(Ctx(l2)), tests);
        assert_eq!(s.line(), "1 passed, 2 failed, 1 skipped");
        assert_eq!(*log.lock().unwrap(), vec!["good", "teardown"]);

        let s = run_with(
            "t",
            &["nomatch"],
            || -> Result<Ctx> { panic!("no setup") },
            tests,
        );
        assert_eq!(s.line(), "0 passed, 0 failed, 4 skipped");
        assert!(s.ok());

        let s = run_with(
            "t",
            &["good"],
            || -> Result<Ctx> { Err(anyhow!("x")) },
            tests,
        );
        assert!(!s.ok());
        assert_eq!(s.line(), "0 passed, 1 failed, 3 skipped");
    }
}
