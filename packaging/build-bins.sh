#!/usr/bin/env bash
# Builds the release binaries that every package ships (RPM, .deb, managed-plugin bundles), linked
# against glibc 2.28 symbol versions so they run on EL 8 (glibc 2.28), EL 9 (2.34), Debian 10+
# and Ubuntu 20.04+. Output: target/x86_64-unknown-linux-gnu/release/{netplugin,volplugin},
# stripped, checked with packaging/check-glibc.sh.
#
# How: a plain `cargo build --target x86_64-unknown-linux-gnu` whose linker is Zig
# (packaging/zig-linker.sh: `zig cc -target x86_64-linux-gnu.2.28`), so every glibc symbol is bound
# to the version glibc 2.28 has. Zig and cargo-zigbuild (used only for its linker-argument filter)
# are PyPI wheels. Not `cargo zigbuild` itself: it also hands Zig's glibc-2.28 defines to bindgen,
# which then mixes them with this machine's glibc 2.36 headers and fails in devicemapper-sys's
# build script (L_tmpnam undeclared). Everything compiled from C (ring) uses the host compiler;
# the link against 2.28 and check-glibc.sh catch any newer symbol it would need.
#
# Why not a static (musl) build: the musl target is not installed in this toolchain and rustup
# cannot download one here; a static glibc build breaks NSS (host name lookups of
# --etcd-endpoints). See packaging/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
TRIPLE=x86_64-unknown-linux-gnu
GLIBC=2.28
# Zig and cargo-zigbuild both come from PyPI as prebuilt wheels (no compile, no other download).
ZIGLANG_VERSION=0.17.1
ZIGBUILD_VERSION=0.24.1
for d in "$HOME/.cargo/bin" /usr/local/cargo/bin; do [ -d "$d" ] && export PATH="$d:$PATH"; done
if ! command -v cargo-zigbuild >/dev/null || ! python3 -m ziglang version >/dev/null 2>&1; then
    # Debian's own python3 refuses pip installs (PEP 668); the wheels only add two tools.
    python3 -m pip install --quiet "ziglang==$ZIGLANG_VERSION" "cargo-zigbuild==$ZIGBUILD_VERSION" \
        || python3 -m pip install --quiet --break-system-packages "ziglang==$ZIGLANG_VERSION" "cargo-zigbuild==$ZIGBUILD_VERSION"
    hash -r
fi
# protoc for etcd-client's build script comes from scripts/install-deps.sh (libprotobuf-dev too).
CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER="$PWD/packaging/zig-linker.sh" \
    cargo build --release --quiet --target "$TRIPLE" -p volplugin -p netplugin
for bin in volplugin netplugin; do
    f="target/$TRIPLE/release/$bin"
    # Strip only what was not stripped yet (a no-op build must not rewrite the files).
    # .comment too (the linkers' version strings), as Debian's dh_strip does.
    if [ -n "$(objdump -h "$f" | awk '$2 == ".symtab" || $2 == ".comment" || $2 ~ /^\.debug/')" ]; then
        strip --strip-all -R .comment -o "$f.stripped" "$f" && mv "$f.stripped" "$f"
    fi
done
MAX_GLIBC=$GLIBC bash packaging/check-glibc.sh "target/$TRIPLE/release/volplugin" "target/$TRIPLE/release/netplugin"
