#!/usr/bin/env bash
# Chaos soak (bounded): container starts and removals with a berth network and volumes while
# netplugin, volplugin or ovs-vswitchd are killed with SIGKILL at random moments; the
# invariants are checked every 100 cycles and at the end (integration/src/bin/soak.rs).
#   bash scripts/soak.sh [-- CYCLES MAX_MINUTES SEED]   (defaults: 1000 cycles, 50 min, the time)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh >/dev/null
for d in "$HOME/.cargo/bin" /usr/local/cargo/bin; do [ -d "$d" ] && export PATH="$d:$PATH"; done
# The demo's plugins hold the sockets the soak needs.
if [ -d /run/berth-demo ]; then bash scripts/demo.sh stop; fi
[ "${1:-}" = "--" ] && shift
cargo build --quiet -p netplugin -p volplugin
exec cargo run --quiet -p integration --bin soak -- "$@"
