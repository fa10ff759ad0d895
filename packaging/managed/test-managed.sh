#!/usr/bin/env bash
# test-managed.sh DOCKER_HOST: the managed-plugin lifecycle against a running (test) dockerd:
# docker plugin create + enable for both bundles (target/managed/, from build.sh), a volume
# create/inspect/mount-by-container/rm on berth-vol, a network create/inspect, a container on it
# pinged by another, rm on berth-net, then disable + rm. It never starts dockerd itself:
# DOCKER_HOST is the test daemon's socket; packaging/managed/test-managed-ns.sh starts one (with
# OVS) in namespaces of its own and runs this against it. Needs an image to run a container
# (TEST_IMAGE, default busybox:latest; skipped when absent) and Open vSwitch running for the
# network part (skipped when /var/run/openvswitch/db.sock is absent); REQUIRE_ALL=1 makes a
# skip a failure (test-managed-ns.sh sets it: there both exist).
#
# The plugin state dirs are host bind mounts (config.json: mounts "state"); this test points
# them at a scratch dir with `docker plugin set`, never at /var/lib/berth.
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 DOCKER_HOST (e.g. unix:///run/test-docker.sock)" >&2; exit 2; }
export DOCKER_HOST=$1
cd "$(dirname "$0")/../.."
TAG=${TAG:-berth-test}
VOL=berth/vol:$TAG
NET=berth/net:$TAG
SCRATCH=$(mktemp -d /tmp/berth-managed.XXXXXX)
TEST_IMAGE=${TEST_IMAGE:-busybox:latest}
pass=0 fail=0
ok() { echo "ok: $*"; pass=$((pass + 1)); }
bad() { echo "FAIL: $*"; fail=$((fail + 1)); }
skip() { if [ "${REQUIRE_ALL:-0}" = 1 ]; then bad "$* (REQUIRE_ALL=1)"; else echo "skip: $*"; fi; }
cleanup() {
    set +e
    docker rm -f berth-managed-c1 >/dev/null 2>&1
    docker volume rm -f berth-managed-v1 >/dev/null 2>&1
    docker network rm berth-managed-n1 >/dev/null 2>&1
    for p in "$VOL" "$NET"; do
        docker plugin disable -f "$p" >/dev/null 2>&1
        docker plugin rm -f "$p" >/dev/null 2>&1
    done
    rm -rf "$SCRATCH"
}
trap cleanup EXIT

docker version --format 'dockerd {{.Server.Version}}' || { echo "no dockerd at $DOCKER_HOST" >&2; exit 2; }
[ -f target/managed/berth-vol/config.json ] || bash packaging/managed/build.sh

# Volume plugin.
mkdir -p "$SCRATCH/vol"
docker plugin create "$VOL" target/managed/berth-vol && ok "plugin create $VOL" || bad "plugin create $VOL"
docker plugin set "$VOL" state.source="$SCRATCH/vol" args="--metrics off" && ok "plugin set $VOL" || bad "plugin set $VOL"
if docker plugin enable --timeout 60 "$VOL"; then
    ok "plugin enable $VOL"
    docker volume create -d "$VOL" -o size=64M -o fs=ext4 berth-managed-v1 >/dev/null \
        && ok "volume create" || bad "volume create"
    mp=$(docker volume inspect -f '{{.Mountpoint}}' berth-managed-v1 2>/dev/null || true)
    [ -n "$mp" ] && ok "volume inspect: $mp" || bad "volume inspect"
    if docker image inspect "$TEST_IMAGE" >/dev/null 2>&1; then
        docker run --rm -v berth-managed-v1:/data "$TEST_IMAGE" sh -c 'echo hello > /data/f && cat /data/f' | grep -qx hello \
            && ok "container writes and reads the volume" || bad "container with the volume"
    else
        skip "no image $TEST_IMAGE for the container part"
    fi
    docker volume rm berth-managed-v1 >/dev/null && ok "volume rm" || bad "volume rm"
    [ -f "$SCRATCH/vol/meta.redb" ] && ok "state on the host bind mount" || bad "no meta.redb in $SCRATCH/vol"
else
    bad "plugin enable $VOL (dockerd's log has the runtime's reason)"
fi
docker plugin disable "$VOL" >/dev/null && ok "plugin disable $VOL" || bad "plugin disable $VOL"
docker plugin rm "$VOL" >/dev/null && ok "plugin rm $VOL" || bad "plugin rm $VOL"

# Network + IPAM plugin.
mkdir -p "$SCRATCH/net"
docker plugin create "$NET" target/managed/berth-net && ok "plugin create $NET" || bad "plugin create $NET"
docker plugin set "$NET" state.source="$SCRATCH/net" args="--metrics off" && ok "plugin set $NET" || bad "plugin set $NET"
if [ ! -S /var/run/openvswitch/db.sock ]; then
    skip "Open vSwitch is not running (no /var/run/openvswitch/db.sock): berth-net cannot be enabled"
elif docker plugin enable --timeout 60 "$NET"; then
    ok "plugin enable $NET"
    docker network create -d "$NET" --ipam-driver "$NET" --subnet 10.231.7.0/24 -o vlan=3907 berth-managed-n1 >/dev/null \
        && ok "network create" || bad "network create"
    docker network inspect -f '{{.Driver}} {{range .IPAM.Config}}{{.Subnet}}{{end}}' berth-managed-n1 \
        | grep -q "$NET 10.231.7.0/24" && ok "network inspect" || bad "network inspect"
    if ! docker image inspect "$TEST_IMAGE" >/dev/null 2>&1; then
        skip "no image $TEST_IMAGE for the endpoint part"
    else
        # Endpoints through the managed plugin: a port on its OVS bridge per container, traffic.
        docker run -d --name berth-managed-c1 --network berth-managed-n1 --ip 10.231.7.10 "$TEST_IMAGE" sleep 600 >/dev/null \
            && ok "container on the network (CreateEndpoint, Join)" || bad "container on the network"
        docker run --rm --network berth-managed-n1 "$TEST_IMAGE" ping -c 3 -W 5 10.231.7.10 \
            | grep -q ', 0% packet loss' && ok "ping between two containers on the network" || bad "ping between containers"
        docker rm -f berth-managed-c1 >/dev/null && ok "container removed (Leave, DeleteEndpoint)" || bad "container rm"
    fi
    docker network rm berth-managed-n1 >/dev/null && ok "network rm" || bad "network rm"
    docker plugin disable "$NET" >/dev/null && ok "plugin disable $NET" || bad "plugin disable $NET"
else
    bad "plugin enable $NET (dockerd's log has the runtime's reason)"
fi
docker plugin rm -f "$NET" >/dev/null && ok "plugin rm $NET" || bad "plugin rm $NET"

echo "managed plugins: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
