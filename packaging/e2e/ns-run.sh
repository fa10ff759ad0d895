#!/usr/bin/env bash
# ns-run.sh SCRIPT [ARGS...]: runs `bash SCRIPT ARGS` as PID 1 of new pid + mount + network + UTS
# namespaces (unshare --kill-child), in which packaging/e2e/rig.sh gives it a private /run
# (Docker's plugin dir /run/docker/plugins, /var/run/docker.sock, OVS's run dir), a fresh sysfs,
# copy-on-write overlays over /etc, /usr and /var (upper dirs in the scratch dir: whatever dpkg or a
# daemon writes there never reaches this machine's root), and its own containerd, dockerd and Open
# vSwitch. Everything the test touches is in the scratch dir /tmp/berth-pkg-e2e.XXXXXX (exported
# as BERTH_E2E_DIR) or in the namespaces.
#
# Teardown, also when SCRIPT fails, is killed, or this script is interrupted: when PID 1 of the
# pid namespace exits the kernel SIGKILLs every process left in it (daemons, shims, containers);
# the mount and network namespaces (mounts, overlays, OVS's tap devices, veths) go with their last
# process. What the kernel does not free on its own is checked and cleaned here afterwards, and a
# leak fails the run: loop devices backed by files in the scratch dir, the containers' cgroup dirs
# (dockerd's --cgroup-parent /$BERTH_E2E_CGROUP), processes naming the scratch dir. Then the scratch
# dir is removed (KEEP=1 keeps it for a look at the logs). Needs root, util-linux's unshare.
set -uo pipefail
[ "$(id -u)" = 0 ] || { echo "ns-run.sh: needs root" >&2; exit 2; }
[ $# -ge 1 ] || { echo "usage: $0 SCRIPT [ARGS...]" >&2; exit 2; }
S=$(mktemp -d /tmp/berth-pkg-e2e.XXXXXX)
chmod 0755 "$S"
export BERTH_E2E_DIR=$S
export BERTH_E2E_CGROUP=berth-pkg-e2e-${S##*.}

leaks=0
teardown() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    # The pid namespace is gone once unshare returned (its init's exit waits for every member).
    local left= p cmd
    for p in /proc/[0-9]*; do
        p=${p#/proc/}
        [ "$p" = $$ ] && continue
        cmd=$( { tr '\0' ' ' <"/proc/$p/cmdline"; } 2>/dev/null) || continue
        case $cmd in *"$S/"*) left="$left $p";; esac
    done
    if [ -n "$left" ]; then
        echo "ns-run: LEAK: processes naming $S alive after the namespace: $left" >&2; leaks=1
        for p in $left; do kill -9 "$p" 2>/dev/null; done
    fi
    # Loop devices of volplugin's loopfile volumes: auto-clear once the mount namespace released
    # their mounts; one still attached is a leak (detached here all the same).
    local loops
    loops=$(losetup -l -n -O NAME,BACK-FILE 2>/dev/null | awk -v s="$S/" 'index($2, s) == 1 {print $1}')
    if [ -n "$loops" ]; then
        echo "ns-run: LEAK: loop devices still attached to files in $S: $loops" >&2; leaks=1
        for l in $loops; do losetup -d "$l"; done
    fi
    local cgs
    cgs=$(find /sys/fs/cgroup -maxdepth 3 -type d -name "$BERTH_E2E_CGROUP" 2>/dev/null)
    for cg in $cgs; do
        # Empty cgroup dirs are normal leftovers of dockerd's cgroupfs driver: removed here.
        find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null
        [ -d "$cg" ] && { echo "ns-run: LEAK: cgroup $cg not removable (tasks: $(cat "$cg"/tasks 2>/dev/null | tr '\n' ' '))" >&2; leaks=1; }
    done
    # Nothing was mounted in this namespace; a mount under $S here would be a leak.
    local m
    for m in $(awk -v s="$S" 'index($5, s) == 1 {print $5}' /proc/self/mountinfo | sort -r); do
        echo "ns-run: LEAK: mount $m in the caller's namespace" >&2; leaks=1; umount -l "$m"
    done
    if [ "${KEEP:-0}" = 1 ]; then echo "ns-run: kept $S"; else rm -rf "$S"; fi
    [ "$leaks" = 0 ] || rc=1
    exit "$rc"
}
trap teardown EXIT
# --kill-child: when unshare dies, its child, PID 1 inside, gets SIGKILL, and with it every
# process of the namespace. unshare --fork ignores INT and TERM while it waits, so on ours it gets
# KILL; it runs in the background so that our signal is handled at once, not after the test.
UPID=
trap '[ -n "$UPID" ] && kill -KILL "$UPID" 2>/dev/null; wait "$UPID" 2>/dev/null; exit 143' INT TERM
unshare --pid --fork --kill-child --mount-proc --mount --net --uts --propagation private -- \
    bash "$@" &
UPID=$!
wait "$UPID"
