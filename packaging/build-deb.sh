#!/usr/bin/env bash
# build-deb.sh [VERSION]: builds berth-netplugin and berth-volplugin .debs into target/deb/ from
# the RPM definitions (packaging/rpm/*.toml) plus packaging/deb/*.toml; see build-deb.py.
set -euo pipefail
cd "$(dirname "$0")/.."
TRIPLE=x86_64-unknown-linux-gnu
[ -x "target/$TRIPLE/release/netplugin" ] && [ -x "target/$TRIPLE/release/volplugin" ] \
    && [ -f target/pkg-gen/netplugin/man/netplugin.1.gz ] && [ -f target/pkg-gen/volplugin/man/volplugin.1.gz ] \
    || bash packaging/build-bins.sh
version=()
[ $# -ge 1 ] && version=(--version "$1")
for pkg in volplugin netplugin; do
    python3 packaging/build-deb.py "$pkg" --target "$TRIPLE" "${version[@]}"
done
