#!/usr/bin/env bash
# Builds the RPMs into target/rpm/ with cargo-generate-rpm (no rpmbuild, no spec file).
# The metadata lives in packaging/rpm/<binary>.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
for d in "$HOME/.cargo/bin" /usr/local/cargo/bin; do [ -d "$d" ] && export PATH="$d:$PATH"; done
command -v cargo-generate-rpm >/dev/null || cargo install --locked cargo-generate-rpm
cargo build --release --quiet -p volplugin -p netplugin
for bin in volplugin netplugin; do
    strip -o "target/release/$bin.stripped" "target/release/$bin" && mv "target/release/$bin.stripped" "target/release/$bin"
done
mkdir -p target/rpm
for pkg in volplugin netplugin; do
    cargo generate-rpm -p "$pkg" --metadata-overwrite "packaging/rpm/$pkg.toml" -o target/rpm/
done
ls -l target/rpm/
