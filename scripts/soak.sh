#!/usr/bin/env bash
# Chaos soak (bounded): container starts and removals with a berth network and volumes while
# netplugin, volplugin or ovs-vswitchd are killed with SIGKILL at random moments; the
# invariants are checked every 100 cycles and at the end (integration/src/bin/soak.rs).
#   bash scripts/soak.sh [-- CYCLES MAX_MINUTES SEED]   (defaults: 1000 cycles, 50 min, the time)
# It runs in its own network and mount namespaces: its dockerd, OVS, plugins, veths and plugin
# sockets are invisible to the machine's own, and to the test suites running beside it.
#   bash scripts/soak.sh --fleet [-- CYCLES MAX_MINUTES SEED]   (defaults: 1000, 60 min, the time)
# runs it in the fleet lab instead: three hosts on one etcd, containers also moving between
# hosts with their address (integration/src/bin/soak_fleet.rs, docs/lab.md).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--fleet" ]; then
    shift
    [ "${1:-}" = "--" ] && shift
    bash scripts/install-deps.sh >/dev/null
    for d in "$HOME/.cargo/bin" /usr/local/cargo/bin; do [ -d "$d" ] && export PATH="$d:$PATH"; done
    cargo build --quiet -p netplugin -p volplugin -p integration --bin soak_fleet
    exec target/debug/soak_fleet "$@"
fi
[ "${1:-}" = "--" ] && shift
if [ -z "${BERTH_SOAK_INSIDE:-}" ]; then
    bash scripts/install-deps.sh >/dev/null
    for d in "$HOME/.cargo/bin" /usr/local/cargo/bin; do [ -d "$d" ] && export PATH="$d:$PATH"; done
    cargo build --quiet -p netplugin -p volplugin -p integration --bin soak
    exec unshare --mount --net --fork env BERTH_SOAK_INSIDE=1 PATH="$PATH" bash "$0" "$@"
fi
ip link set lo up
# A sysfs of this network namespace (netplugin and the checks read /sys/class/net), with the
# machine's cgroup mounts moved back under it for runc.
cgroups=$(mktemp -d)
mount --rbind /sys/fs/cgroup "$cgroups"
mount -t sysfs sysfs /sys
mount --move "$cgroups" /sys/fs/cgroup
rmdir "$cgroups" 2>/dev/null || true
mkdir -p /run/docker/plugins
mount -t tmpfs tmpfs /run/docker/plugins
exec cargo run --quiet --offline -p integration --bin soak -- "$@"
