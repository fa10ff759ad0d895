#!/usr/bin/env bash
# smoke-rootfs.sh: runs volplugin from the berth-vol bundle's rootfs (target/managed/berth-vol,
# from build.sh) roughly as dockerd runs the managed plugin, without dockerd: a copy of the rootfs
# with /dev, /proc and /sys bind-mounted, the state dir a host directory bind-mounted where
# config.json mounts it, volplugin chrooted with the bundle's entrypoint flags (+ --metrics off,
# no Docker socket). Then over its plugin socket: an xfs and an ext4 volume created (mkfs.xfs,
# xfs_admin through /bin/sh + xfs_db, mkfs.ext4 with mke2fs.conf, all from the rootfs), the xfs
# one mounted, written, unmounted, both removed. Proves the tools in the rootfs work, not only
# that they are present. Needs root and loop devices. Prints "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/../.."
B=target/managed/berth-vol
[ -f "$B/config.json" ] || { echo "smoke-rootfs: build the bundle first (packaging/managed/build.sh)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "smoke-rootfs: needs root" >&2; exit 2; }

S=$(mktemp -d /tmp/berth-bundle-smoke.XXXXXX)
R=$S/rootfs
PID=
pass=0 fail=0
ok() { echo "  ok: $*"; pass=$((pass + 1)); }
bad() { echo "  FAIL: $*"; fail=$((fail + 1)); }
check() { local what=$1; shift; if "$@"; then ok "$what"; else bad "$what"; fi; }
mounts_under() { awk -v p="$S/" 'index($5, p) == 1 { print $5 }' /proc/self/mountinfo | sort -r; }
cleanup() {
    set +e
    if [ -n "$PID" ]; then kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null; fi
    for m in $(mounts_under); do umount "$m" 2>/dev/null || umount -l "$m"; done
    # Never delete through a mount (the /dev bind above all): only when nothing is mounted.
    if [ -z "$(mounts_under)" ]; then rm -rf --one-file-system "$S"; else echo "smoke-rootfs: left $S (still mounted)" >&2; fi
}
trap cleanup EXIT

cp -a "$B/rootfs" "$R"
mkdir -p "$S/state"
mount --bind /dev "$R/dev"
mount -t proc proc "$R/proc"
mount --bind /sys "$R/sys"
mount --bind "$S/state" "$R/var/lib/berth/vol"

# The entrypoint and PATH from config.json, as the plugin runs.
mapfile -t EP < <(python3 -c 'import json,sys; print("\n".join(json.load(open(sys.argv[1]))["entrypoint"]))' "$B/config.json")
PATHV=$(python3 -c 'import json,sys; print({e["name"]: e["value"] for e in json.load(open(sys.argv[1]))["env"]}["PATH"])' "$B/config.json")
env -i PATH="$PATHV" chroot "$R" "${EP[@]}" --metrics off --docker-socket /nonexistent.sock >"$S/volplugin.log" 2>&1 &
PID=$!
SOCK=$R/run/docker/plugins/berth-vol.sock
for _ in $(seq 150); do [ -S "$SOCK" ] && break; sleep 0.1; done
check "volplugin from the rootfs serves $SOCK" test -S "$SOCK"
call() { curl -sS --fail-with-body --max-time 120 --unix-socket "$SOCK" -X POST -d "$2" "http://plugin$1"; }
out=$(call /VolumeDriver.Create '{"Name":"smoke-xfs","Opts":{"size":"512M","fs":"xfs"}}'); check "create xfs volume (mkfs.xfs, xfs_admin): $out" test $? -eq 0
out=$(call /VolumeDriver.Create '{"Name":"smoke-ext4","Opts":{"size":"64M","fs":"ext4"}}'); check "create ext4 volume (mkfs.ext4): $out" test $? -eq 0
out=$(call /VolumeDriver.Mount '{"Name":"smoke-xfs","ID":"c1"}'); check "mount: $out" grep -q '"Mountpoint":"/mnt/volumes/smoke-xfs"' <<<"$out"
check "mounted in the propagated mount dir" mountpoint -q "$R/mnt/volumes/smoke-xfs"
check "writable" bash -c "echo hello > '$R/mnt/volumes/smoke-xfs/f' && grep -qx hello '$R/mnt/volumes/smoke-xfs/f'"
out=$(call /VolumeDriver.Unmount '{"Name":"smoke-xfs","ID":"c1"}'); check "unmount" test $? -eq 0
for v in smoke-xfs smoke-ext4; do
    out=$(call /VolumeDriver.Remove "{\"Name\":\"$v\"}"); check "remove $v" test $? -eq 0
done
check "state on the host side of the bind mount" test -s "$S/state/meta.redb"
[ "$fail" -eq 0 ] || { echo "--- volplugin log"; tail -20 "$S/volplugin.log"; }
echo "smoke-rootfs: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
