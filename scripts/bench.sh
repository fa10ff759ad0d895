#!/usr/bin/env bash
# Benchmarks: each figure is printed next to its baseline measured in the same run.
#   bash scripts/bench.sh volumes|io|network|etcd|ovs|lvm|fleet|fleet-scale [-- extra args, e.g. --cycles 100 --size 10G]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh >/dev/null
for d in "$HOME/.cargo/bin" /usr/local/cargo/bin; do [ -d "$d" ] && export PATH="$d:$PATH"; done
if [ -d /run/berth-demo ]; then bash scripts/demo.sh stop; fi
which=${1:-volumes}; shift || true
[ "${1:-}" = "--" ] && shift
case "$which" in
    volumes) cargo run --release --quiet -p integration --bin bench_volumes -- "$@" ;;
    network) cargo run --release --quiet -p integration --bin bench_network -- "$@" ;;
    ovs) cargo run --release --quiet -p ovs-ffi --example bench -- "$@" ;;
    lvm) cargo run --release --quiet -p integration --bin bench_lvm -- "$@" ;;
    io) cargo run --release --quiet -p integration --bin bench_io -- "$@" ;;
    etcd) cargo run --release --quiet -p integration --bin bench_etcd -- "$@" ;;
    fleet) cargo run --release --quiet -p integration --bin bench_fleet -- "$@" ;;
    fleet-scale) cargo run --release --quiet -p integration --bin bench_fleet_scale -- "$@" ;;
    *) echo "bench.sh: unknown benchmark $which (available: volumes, io, network, etcd, ovs, lvm, fleet, fleet-scale)" >&2; exit 2 ;;
esac
