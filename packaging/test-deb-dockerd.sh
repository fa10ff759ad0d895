#!/usr/bin/env bash
# test-deb-dockerd.sh: the .debs' install, socket-activated start, live upgrade and removal with a
# real dockerd, Open vSwitch and containers (issue 12 §3). As root, on Debian 12.
#
# Everything runs inside new pid + mount + network + UTS namespaces (packaging/e2e/ns-run.sh) in
# which /etc, /usr and /var are copy-on-write overlays: dpkg installs, upgrades and purges the
# packages for real, but its writes land in the overlays' upper dirs, never in this machine's root,
# and the whole of it disappears with the namespaces even when the test is killed. The upper dirs
# also give the "nothing left" check its evidence: after the purge they may only hold dpkg's own
# bookkeeping. The namespace has its own /run, hence its own /run/docker/plugins and
# /var/run/docker.sock: the units' default paths are used unchanged. (test-deb.sh, the other .deb
# test, installs into this machine's root and checks every packaged file there, without dockerd.)
#
#  1. private Open vSwitch (ovsdb-server + ovs-vswitchd, netdev datapath); dpkg -i V1;
#     /etc/berth/*.toml edited as ops would (datapath, metrics addresses);
#  2. boot order: both sockets listening (systemd-socket-activate on the installed .socket units'
#     ListenStream=, running the .service's ExecStart= through packaging/e2e/svc.sh, which holds
#     the socket across restarts as systemd does), then containerd + dockerd (--bridge=none
#     --iptables=false, own data root); dockerd's `docker volume create -d berth-vol` and
#     `docker network create -d berth-net` are the calls that start the daemons;
#  3. a db container (berth volume + berth network, fixed --ip) running a TCP server that writes
#     the stream into the volume and a writer of its own; an app container on the same network
#     streaming lines over one TCP connection and pinging db every 0.2 s;
#  4. dpkg -i V2 (bumped version) with no --force-conf*: config kept, then the postinst's
#     try-restart with the sockets held, in two halves (svc.sh USR1/USR2) so that docker calls
#     made in the gap provably wait (still pending after 2 s) and are then answered; the daemons
#     run the new binaries with the kept config (their metrics on the configured ports); volume
#     still mounted, network and address still known; no line of the TCP stream or of the
#     writer lost, the connection never closed, no ping lost;
#  5. containers removed, daemons stopped (prerm's job under systemd), dpkg -r, dpkg -P: packaged
#     files gone; volumes (meta.redb, image) and network state (state.redb) still on disk; the
#     overlays hold nothing new but dpkg's database, log and man-db's cache;
#  6. reinstall: the volume is listed again with its data, the network takes a container.
# ns-run.sh then checks that nothing outlived the namespaces (processes, loop devices, cgroups).
#
# DEB_V1_DIR / DEB_V2_DIR: prebuilt .debs (default: built here from the release binaries with a
# bumped version for V2, as test-deb.sh does). KEEP=1 keeps the scratch dir. Prints "N passed,
# N failed"; exits non-zero on any failure.
set -uo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "test-deb-dockerd.sh: needs root" >&2; exit 2; }
TRIPLE=x86_64-unknown-linux-gnu
for p in berth-volplugin berth-netplugin; do
    if dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed'; then
        echo "test-deb-dockerd.sh: $p is installed on this machine; the test installs it in its namespace only: remove it first" >&2; exit 2
    fi
done
# The rig's tools (Debian names) and the packages' Depends, from the package definitions.
need=(docker.io containerd runc busybox-static openvswitch-switch systemd curl iproute2 util-linux)
for t in packaging/deb/volplugin.toml packaging/deb/netplugin.toml; do
    need+=($(python3 -c 'import sys,tomllib; print(" ".join(tomllib.load(open(sys.argv[1],"rb"))["depends"]))' "$t"))
done
missing=()
for p in "${need[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "apt-get install ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || exit 2
fi

B=$(mktemp -d /tmp/berth-deb-dockerd.XXXXXX)
trap 'rm -rf "$B"' EXIT
if [ -n "${DEB_V1_DIR:-}" ] && [ -n "${DEB_V2_DIR:-}" ]; then
    V1DIR=$DEB_V1_DIR V2DIR=$DEB_V2_DIR
else
    [ -x "target/$TRIPLE/release/volplugin" ] && [ -x "target/$TRIPLE/release/netplugin" ] \
        && [ -f target/pkg-gen/netplugin/man/netplugin.1.gz ] && [ -f target/pkg-gen/volplugin/man/volplugin.1.gz ] \
        || bash packaging/build-bins.sh || exit 1
    V1=$(python3 -c 'import tomllib; print(tomllib.load(open("Cargo.toml","rb"))["workspace"]["package"]["version"])')
    V1DIR=$B/v1 V2DIR=$B/v2
    for b in volplugin netplugin; do
        python3 packaging/build-deb.py "$b" --target "$TRIPLE" --version "$V1" --out "$V1DIR" --compress gzip >/dev/null || exit 1
        python3 packaging/build-deb.py "$b" --target "$TRIPLE" --version "$V1+upgrade1" --out "$V2DIR" --compress gzip >/dev/null || exit 1
    done
fi
ls "$V1DIR"/*.deb "$V2DIR"/*.deb
# In the background so that INT/TERM reach ns-run.sh (which tears the namespaces down) at once.
bash packaging/e2e/ns-run.sh packaging/e2e/deb-dockerd.sh "$V1DIR" "$V2DIR" &
NPID=$!
trap 'kill -TERM $NPID 2>/dev/null; wait $NPID; rm -rf "$B"; exit 143' INT TERM
wait "$NPID"
