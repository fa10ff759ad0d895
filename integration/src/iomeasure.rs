//! Timing dd inside busybox containers (Debian's busybox dd prints no timing of its own).

use anyhow::{ensure, Context as _, Result};

use crate::{DockerEnv, TEST_IMAGE};

/// Runs `script` with busybox sh in a throwaway container (no network) that mounts `volume` at
/// /data plus any `extra` `-v` specs, and returns its stdout and stderr (dd reports on stderr).
/// A one-second pause first lets volplugin apply the volume's limits to the new cgroup.
pub fn run_in_container(
    docker: &DockerEnv,
    volume: &str,
    extra: &[&str],
    script: &str,
) -> Result<String> {
    let spec = format!("{volume}:/data");
    let full = format!("sleep 1; {script}");
    let mut cmd = docker.command();
    cmd.args(["run", "--rm", "--network", "none", "-v", &spec]);
    for mount in extra {
        cmd.args(["-v", mount]);
    }
    let out = cmd.args([TEST_IMAGE, "sh", "-c", &full]).output()?;
    ensure!(
        out.status.success(),
        "container failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// A shell snippet that runs `dd ARGS` and prints `RATE <start> <end> <bytes>`, timed with
/// /proc/uptime (10 ms resolution). `bytes` is what the dd moves.
pub fn timed_dd(args: &str, bytes: u64) -> String {
    format!(
        "a=$(cut -d' ' -f1 /proc/uptime); dd {args} 2>/dev/null || exit 1; b=$(cut -d' ' -f1 /proc/uptime); \
         echo \"RATE $a $b {bytes}\""
    )
}

/// Bytes per second from the `RATE` line of [`timed_dd`].
pub fn dd_rate(output: &str) -> Result<f64> {
    let line = output
        .lines()
        .find(|l| l.starts_with("RATE "))
        .with_context(|| format!("no RATE line in {output:?}"))?;
    let f: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    ensure!(f.len() == 3 && f[1] > f[0], "bad timing line {line:?}");
    Ok(f[2] / (f[1] - f[0]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rate() {
        assert_eq!(dd_rate("x\nRATE 10.00 12.00 4194304\n").unwrap(), 2097152.0);
        assert!(dd_rate("RATE 5 5 10").is_err());
        assert!(dd_rate("nothing").is_err());
        assert!(timed_dd("if=/dev/zero of=/data/f bs=1M count=1", 1 << 20)
            .contains("RATE $a $b 1048576"));
    }
}
