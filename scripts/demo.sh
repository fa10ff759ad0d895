#!/usr/bin/env bash
# Sets Berth up on this machine with the single-host defaults and shows it working:
# builds, starts containerd + dockerd and Open vSwitch if they are not running, starts
# volplugin (loopfile backend) and netplugin (embedded store), creates a volume, writes and
# reads it through containers, inspects it, and pings between two containers on a VLAN network.
#   bash scripts/demo.sh         set up and show
#   bash scripts/demo.sh stop    stop what the demo started (volumes stay on disk)
set -euo pipefail
cd "$(dirname "$0")/.."
run_dir=/run/berth-demo
image=berth-demo/busybox:latest

stop_pid() { # name
    local f="$run_dir/$1.pid"
    [ -f "$f" ] || return 0
    local pid; pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && { echo "demo: $1 ($pid) ignored SIGTERM; killing"; kill -KILL "$pid"; }
    fi
    rm -f "$f"
    echo "demo: stopped $1"
}

if [ "${1:-}" = "stop" ]; then
    stop_pid netplugin
    if [ -f "$run_dir/ovs-started" ]; then
        /usr/share/openvswitch/scripts/ovs-ctl stop >/dev/null 2>&1 && echo "demo: stopped Open vSwitch"
        # The netdev datapath leaves its bridge's tap device behind.
        ip link del br-berth 2>/dev/null || true
    fi
    stop_pid volplugin
    stop_pid dockerd
    stop_pid containerd
    rm -rf "$run_dir"
    exit 0
fi

bash scripts/install-deps.sh
for d in "$HOME/.cargo/bin" /usr/local/cargo/bin; do [ -d "$d" ] && export PATH="$d:$PATH"; done
echo "== building (release)"
cargo build --release --quiet -p volplugin -p netplugin
bin=$PWD/target/release
mkdir -p "$run_dir"

wait_for() { # seconds, command...
    local n=$(( $1 * 10 )); shift
    for _ in $(seq 1 "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
    return 1
}

export DOCKER_HOST=unix:///var/run/docker.sock
docker_cli=/usr/bin/docker; [ -x "$docker_cli" ] || docker_cli=docker
if ! wait_for 1 "$docker_cli" version; then
    echo "== starting containerd and dockerd (no bridge, no iptables: containers get only the networks you give them)"
    containerd >"$run_dir/containerd.log" 2>&1 &
    echo $! >"$run_dir/containerd.pid"
    wait_for 30 test -S /run/containerd/containerd.sock || { tail "$run_dir/containerd.log"; exit 1; }
    dockerd --bridge=none --iptables=false --ip-masq=false --ip-forward=false \
        --containerd /run/containerd/containerd.sock >"$run_dir/dockerd.log" 2>&1 &
    echo $! >"$run_dir/dockerd.pid"
    wait_for 60 "$docker_cli" version || { tail "$run_dir/dockerd.log"; exit 1; }
fi

if ! "$docker_cli" image inspect "$image" >/dev/null 2>&1; then
    echo "== importing $image from busybox-static"
    rootfs=$(mktemp -d)
    mkdir -p "$rootfs/bin" "$rootfs/etc" "$rootfs/tmp"
    cp /bin/busybox "$rootfs/bin/busybox"
    for applet in $(/bin/busybox --list); do [ -e "$rootfs/bin/$applet" ] || ln -s busybox "$rootfs/bin/$applet"; done
    echo 'root:x:0:0:root:/root:/bin/sh' >"$rootfs/etc/passwd"
    echo 'root:x:0:' >"$rootfs/etc/group"
    tar -C "$rootfs" -c . | "$docker_cli" import --change 'CMD ["sh"]' - "$image" >/dev/null
    rm -rf "$rootfs"
fi

if ! wait_for 1 test -S /run/docker/plugins/berth-vol.sock || ! wait_for 1 "$bin/volplugin" volume ls; then
    echo "== starting volplugin (loopfile backend, state in /var/lib/berth/vol)"
    "$bin/volplugin" serve >"$run_dir/volplugin.log" 2>&1 &
    echo $! >"$run_dir/volplugin.pid"
    wait_for 30 "$bin/volplugin" volume ls || { tail "$run_dir/volplugin.log"; exit 1; }
fi

if ! ovs-vsctl --timeout=2 show >/dev/null 2>&1; then
    echo "== starting Open vSwitch (netdev datapath where the kernel has no openvswitch module)"
    /usr/share/openvswitch/scripts/ovs-ctl start --system-id=random >"$run_dir/ovs.log" 2>&1 || { tail "$run_dir/ovs.log"; exit 1; }
    touch "$run_dir/ovs-started"
fi

if ! wait_for 1 "$bin/netplugin" network ls; then
    echo "== starting netplugin (embedded store in /var/lib/berth/net, bridge br-berth)"
    "$bin/netplugin" serve >"$run_dir/netplugin.log" 2>&1 &
    echo $! >"$run_dir/netplugin.pid"
    wait_for 30 "$bin/netplugin" network ls || { tail "$run_dir/netplugin.log"; exit 1; }
fi

set -x
"$docker_cli" volume create -d berth-vol -o size=2G -o fs=xfs demo-data
"$docker_cli" run --rm --network none -v demo-data:/data "$image" sh -c 'date > /data/written-at && df -h /data'
"$docker_cli" run --rm --network none -v demo-data:/data "$image" cat /data/written-at
"$docker_cli" volume inspect demo-data
"$bin/volplugin" volume ls
# A network on VLAN 100 with addresses that exist only inside these containers; the bridge
# has no uplink, so nothing leaves this host.
"$docker_cli" network inspect demo-net >/dev/null 2>&1 || \
    "$docker_cli" network create -d berth-net --ipam-driver berth-net --subnet 10.231.100.0/24 -o vlan=100 demo-net
"$docker_cli" run -d --rm --name demo-db --network demo-net --ip 10.231.100.10 "$image" sleep 60
"$docker_cli" run --rm --network demo-net "$image" ping -c 3 -W 2 10.231.100.10
"$docker_cli" rm -f demo-db
"$bin/netplugin" network ls
"$bin/netplugin" pool show 10.231.100.0/24
ovs-vsctl show
{ set +x; } 2>/dev/null
if curl -sf http://127.0.0.1:9474/metrics >"$run_dir/metrics.txt"; then
    echo "== a few of volplugin's metrics (http://127.0.0.1:9474/metrics)"
    grep -E '^berth_vol_(volumes|volume_size_bytes|volume_allocated_bytes)' "$run_dir/metrics.txt" | head -6
fi
echo
echo "volplugin and netplugin are serving Docker on /run/docker/plugins/berth-{vol,net}.sock; logs in $run_dir."
echo "Stop what the demo started with: bash scripts/demo.sh stop"
