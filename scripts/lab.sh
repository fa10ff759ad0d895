#!/usr/bin/env bash
# The fleet lab by hand: three hosts (own network + mount namespaces, each with Open vSwitch,
# netplugin --store etcd, volplugin, containerd and dockerd), a trunk switch and a 3-member etcd
# cluster, all on this machine. See docs/lab.md.
#   bash scripts/lab.sh up            start it in the background (log: /tmp/berth-lab.log)
#   bash scripts/lab.sh status        names, sockets, daemons, `netplugin host ls`
#   bash scripts/lab.sh shell a       a shell on host a (docker, netplugin, ovs-vsctl work there)
#   bash scripts/lab.sh shell a CMD   run CMD on host a
#   bash scripts/lab.sh down          stop and remove everything it made
set -euo pipefail
cd "$(dirname "$0")/.."
for d in "$HOME/.cargo/bin" /usr/local/cargo/bin; do [ -d "$d" ] && export PATH="$d:$PATH"; done
log=/tmp/berth-lab.log
lab=target/debug/lab

build() {
    cargo build --quiet -p integration --bin lab -p netplugin --bin netplugin -p volplugin --bin volplugin
}

case "${1:-}" in
    up)
        [ "$(id -u)" = 0 ] || { echo "lab.sh: run as root" >&2; exit 1; }
        build
        "$lab" clean >/dev/null
        nohup "$lab" up >"$log" 2>&1 &
        pid=$!
        echo "lab.sh: starting (pid $pid, log $log) ..."
        for _ in $(seq 1 300); do
            if grep -q '^lab up;' "$log" 2>/dev/null; then
                "$lab" status
                exit 0
            fi
            if ! kill -0 "$pid" 2>/dev/null; then
                echo "lab.sh: the lab did not start:" >&2
                tail -40 "$log" >&2
                exit 1
            fi
            sleep 0.5
        done
        echo "lab.sh: not up after 150 s; see $log (lab.sh down removes it)" >&2
        exit 1
        ;;
    down) "$lab" down ;;
    status) "$lab" status ;;
    shell) shift; exec "$lab" shell "$@" ;;
    clean) "$lab" clean ;;
    *)
        sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
        exit 2
        ;;
esac
