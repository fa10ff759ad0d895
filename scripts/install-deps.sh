#!/usr/bin/env bash
# Installs, from Debian's packages, everything Berth builds and tests with. Idempotent.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: run as root (apt-get, loop devices, mounts, dockerd need it)" >&2
    exit 1
fi

packages=(
    # the test and demo Docker: dockerd 20.10, containerd, runc; the image comes from busybox-static
    docker.io containerd runc busybox-static
    # the Docker 26 test pass: mmdebstrap builds the Debian 13 root it runs dockerd from
    # (scripts/docker26-root.sh); the fresh-machine check's root too
    mmdebstrap
    # volplugin's loopfile backend: mkfs, loop devices, mount
    xfsprogs e2fsprogs util-linux mount
    # netplugin / ovs-ffi: Open vSwitch (netdev datapath), namespaces, veth, offload switches
    openvswitch-switch iproute2 ethtool iputils-arping
    # netplugin's fleet store: etcd 3.4 for the tests; protoc and protobuf's well-known .proto
    # files (google/protobuf/descriptor.proto, struct.proto: libprotobuf-dev, not protobuf-compiler)
    # for the etcd-client crate's build
    etcd-server protobuf-compiler libprotobuf-dev
    # ovs-ffi's check that its checked-in wire definitions regenerate identically
    openvswitch-source bindgen libclang-dev python3
    # volplugin's lvm-thin tests: a Debian cloud kernel under qemu (TCG) with LVM inside
    qemu-system-x86 lvm2 thin-provisioning-tools dmsetup binutils
    # build (libdevmapper-dev + libclang-dev: the devicemapper crate's bindings)
    gcc pkg-config libdevmapper-dev ca-certificates curl procps
)

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "install-deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
    for d in "$HOME/.cargo/bin" /usr/local/cargo/bin; do
        [ -x "$d/cargo" ] && export PATH="$d:$PATH"
    done
fi
command -v cargo >/dev/null 2>&1 || { echo "install-deps: no Rust toolchain (cargo) found; install rustup's stable toolchain" >&2; exit 1; }

# Debian's docker.io unit may have started a system dockerd with its own bridge and iptables
# rules on install. Tests never use it; they start their own.
# The lvm-thin tests boot Debian's cloud kernel (this machine's kernel has no device-mapper).
# Downloaded as a .deb into a cache, never installed on the host.
guest_cache=/var/cache/berth-guest
mkdir -p "$guest_cache"
if ! ls "$guest_cache"/linux-image-*-cloud-amd64_*.deb >/dev/null 2>&1; then
    kpkg=$(apt-cache depends linux-image-cloud-amd64 | sed -n 's/^ *Depends: \(linux-image-[^ ]*\)$/\1/p' | head -1)
    [ -n "$kpkg" ] || { apt-get update -qq; kpkg=$(apt-cache depends linux-image-cloud-amd64 | sed -n 's/^ *Depends: \(linux-image-[^ ]*\)$/\1/p' | head -1); }
    [ -n "$kpkg" ] || { echo "install-deps: cannot resolve linux-image-cloud-amd64" >&2; exit 1; }
    (cd "$guest_cache" && apt-get download "$kpkg" >/dev/null)
fi

modprobe loop 2>/dev/null || true
[ -e /dev/loop-control ] || { echo "install-deps: /dev/loop-control is missing; loop devices are needed" >&2; exit 1; }
echo "install-deps: ok"
