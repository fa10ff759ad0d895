#!/usr/bin/env bash
# Runs every test of the project: formatting, lints, unit tests and the end-to-end suites
# against a private dockerd (and, where they exist, Open vSwitch, etcd and LVM in a VM): Debian
# 12's Docker 20.10, then the volumes, IO-limits and network suites against Docker 26.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
for d in "$HOME/.cargo/bin" /usr/local/cargo/bin; do [ -d "$d" ] && export PATH="$d:$PATH"; done

# The demo's volplugin holds the plugin socket the tests need; stop what the demo started.
if [ -d /run/berth-demo ]; then bash scripts/demo.sh stop; fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== ovs-ffi wire definitions regenerate identically from OVS's headers"
bash ovs-ffi/scripts/regen-wire.sh --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== cargo build"
cargo build --workspace --all-targets --quiet
echo "== cargo test"
# One test binary at a time: the end-to-end suites share /run/docker/plugins and the machine
# has two cores.
cargo test --workspace --no-fail-fast -- --test-threads=2
echo "== the end-to-end suites again, against Docker 26 (Debian 13's dockerd, from a cached root)"
# All three fit CI's budget (about 6 min together; the root is built once, about 70 s).
bash scripts/docker26-root.sh >/dev/null
BERTH_DOCKER=26 cargo test -p integration --no-fail-fast \
    --test volumes --test io_limits --test network -- --test-threads=2
echo "== packaging: EL 8/9 binaries, RPMs, debs, lints, units, install/upgrade/remove, managed-plugin bundles"
bash packaging/check.sh
echo "== fresh Debian 12 root: the README's first command from nothing"
bash scripts/fresh-root.sh
