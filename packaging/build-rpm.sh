#!/usr/bin/env bash
# build-rpm.sh [VERSION]: builds berth-netplugin and berth-volplugin RPMs into target/rpm/ with
# cargo-generate-rpm (no rpmbuild, no spec file). The package definitions are
# packaging/rpm/<binary>.toml; the binaries come from packaging/build-bins.sh (glibc 2.28).
# VERSION overrides the workspace version (tests build a "newer" package this way).
set -euo pipefail
cd "$(dirname "$0")/.."
TRIPLE=x86_64-unknown-linux-gnu
CGR_VERSION=0.21.1
for d in "$HOME/.cargo/bin" /usr/local/cargo/bin; do [ -d "$d" ] && export PATH="$d:$PATH"; done
command -v cargo-generate-rpm >/dev/null || cargo install --locked --version "$CGR_VERSION" cargo-generate-rpm
[ -x "target/$TRIPLE/release/netplugin" ] && [ -x "target/$TRIPLE/release/volplugin" ] \
    && [ -f target/pkg-gen/netplugin/man/netplugin.1.gz ] && [ -f target/pkg-gen/volplugin/man/volplugin.1.gz ] \
    || bash packaging/build-bins.sh
set_version=()
[ $# -ge 1 ] && set_version=(--set-metadata "version = \"$1\"")
mkdir -p target/rpm
for pkg in volplugin netplugin; do
    # --target: assets under target/release/ are read from target/$TRIPLE/release/.
    # gzip payload: EL 8's rpm 4.14 may lack zstd (rpmlib(PayloadIsZstd)); gzip reads everywhere.
    # Auto-requires come from /usr/lib/rpm/find-requires (Debian's rpm package): libc.so.6(GLIBC_x)
    # entries as rpmbuild would write them.
    cargo generate-rpm -p "$pkg" --target "$TRIPLE" --metadata-overwrite "packaging/rpm/$pkg.toml" \
        --payload-compress gzip "${set_version[@]}" -o target/rpm/
done
ls -l target/rpm/
