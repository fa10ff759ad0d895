#!/usr/bin/env bash
# check.sh: builds every packaging artifact and runs every packaging check, as CI would:
#   1. EL-compatible binaries (build-bins.sh: Zig as the linker, glibc 2.28) + check-glibc.sh
#   2. RPMs V1 and V2 (cargo generate-rpm), rpm -qp checks and rpm --root installs (test-rpm.sh),
#      rpmlint
#   3. .debs (build-deb.sh), lintian
#   4. systemd-analyze verify on every unit (verify-units.sh)
#   5. install / socket-activated start / upgrade / remove of the .debs (test-deb.sh)
#   6. the .debs with a real dockerd, OVS and containers, in namespaces of their own
#      (test-deb-dockerd.sh): socket-activated start by dockerd's calls, live upgrade with traffic
#      and IO running, remove
#   7. managed-plugin bundles + their static checks (managed/build.sh), and volplugin run from
#      the berth-vol rootfs creating, mounting and removing volumes (managed/smoke-rootfs.sh)
#   8. the bundles as Docker managed plugins on a test dockerd in namespaces of its own
#      (managed/test-managed-ns.sh: plugin create, enable, volume and network lifecycle,
#      disable, rm)
# Needs root and Debian 12 with the build deps of scripts/install-deps.sh; installs the few
# packaging tools it needs (rpm, rpmlint, lintian from Debian; ziglang + cargo-zigbuild from PyPI;
# cargo-generate-rpm from crates.io) when missing. Exits non-zero when any step fails; prints the
# wall time.
set -uo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
TRIPLE=x86_64-unknown-linux-gnu
results=()
failed=0
run() { # run NAME CMD...: runs a step, records ok/FAIL and its time
    local name=$1 t=$(date +%s); shift
    echo; echo "######## $name"
    if "$@"; then results+=("ok    $name ($(( $(date +%s) - t )) s)")
    else results+=("FAIL  $name ($(( $(date +%s) - t )) s)"); failed=1; fi
}

need_apt=()
for p in rpm rpmlint lintian systemd curl init-system-helpers xfsprogs e2fsprogs lvm2 thin-provisioning-tools binutils; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || need_apt+=("$p")
done
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "installing ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

BIN=target/$TRIPLE/release
V1=$(python3 -c 'import tomllib; print(tomllib.load(open("Cargo.toml","rb"))["workspace"]["package"]["version"])')
V2="$V1+upgrade1"

run "binaries (Zig linker, glibc 2.28) + check-glibc" bash packaging/build-bins.sh
[ -x "$BIN/volplugin" ] && [ -x "$BIN/netplugin" ] || { printf '%s\n' "${results[@]}"; exit 1; }

rpms() {
    bash packaging/build-rpm.sh >/dev/null || return 1
    rm -rf target/rpm-v2 && mkdir -p target/rpm-v2
    for pkg in volplugin netplugin; do
        cargo generate-rpm -p "$pkg" --target "$TRIPLE" --metadata-overwrite "packaging/rpm/$pkg.toml" \
            --payload-compress gzip --set-metadata "version = \"$V2\"" -o target/rpm-v2/ || return 1
    done
    ls target/rpm/*.rpm target/rpm-v2/*.rpm
}
run "RPMs $V1 and $V2" rpms
run "rpm -qp and rpm --root install/upgrade/erase" bash packaging/test-rpm.sh target/rpm target/rpm-v2
lint_rpm() {
    # rpmlint 2 (Debian's): the remaining warnings are explained in packaging/README.md; errors fail.
    rpmlint -c packaging/rpm/rpmlint.toml target/rpm/*.rpm | tee target/rpmlint.txt
    ! grep -qE ': E: ' target/rpmlint.txt
}
run "rpmlint" lint_rpm
run ".debs $V1" bash -c 'rm -rf target/deb && bash packaging/build-deb.sh'
lint_deb() {
    # Tags suppressed here are explained in packaging/deb/lintian-suppress and packaging/README.md.
    lintian --fail-on error,warning --suppress-tags-from-file packaging/deb/lintian-suppress \
        --display-info target/deb/*.deb
}
run "lintian" lint_deb
run "systemd-analyze verify" bash packaging/verify-units.sh target/deb/*.deb
run "deb install / socket activation / upgrade / remove (test-deb.sh)" bash packaging/test-deb.sh
run "deb with dockerd: socket activation, live upgrade with traffic + IO, remove (test-deb-dockerd.sh)" \
    bash packaging/test-deb-dockerd.sh
run "managed-plugin bundles + static checks" bash packaging/managed/build.sh
run "berth-vol bundle rootfs runs volumes (smoke-rootfs.sh)" bash packaging/managed/smoke-rootfs.sh
run "managed plugins on a test dockerd (test-managed-ns.sh)" bash packaging/managed/test-managed-ns.sh

echo
echo "######## packaging/check.sh summary"
printf '%s\n' "${results[@]}"
echo "wall time: $(( $(date +%s) - T0 )) s"
# The plain closing line CI runners read: one count per step above.
n_ok=$(printf '%s\n' "${results[@]}" | grep -c '^ok') n_fail=$(printf '%s\n' "${results[@]}" | grep -c '^FAIL')
echo "packaging: $n_ok passed, $n_fail failed"
exit $failed
