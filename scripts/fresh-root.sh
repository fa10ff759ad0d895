#!/usr/bin/env bash
# The fresh-machine check: builds a pristine Debian 12 (bookworm) root with mmdebstrap, puts a
# clean clone of this repository in it, and runs there, as root, the README's first command
# exactly as a newcomer would: `bash scripts/demo.sh`, then `bash scripts/demo.sh stop`.
# A package missing from scripts/install-deps.sh fails here even when the machine running the
# check has it installed.
#
#   bash scripts/fresh-root.sh          check the current HEAD (committed state; not the working tree)
#   bash scripts/fresh-root.sh REV      check any git revision, e.g. 868b994~1 (must fail: no libprotobuf-dev)
#
# What "a fresh Debian 12 machine" means here: mmdebstrap's `minbase` variant (Essential packages +
# apt: the same set as the debian:12 container image, and a subset of every Debian 12 server or
# cloud image) plus ca-certificates and git, since the README's commands are run from a clone
# (the newcomer installed git to make it). Nothing else: everything else must come from
# install-deps.sh. The clone is `git clone` of the given revision, made on this machine and copied
# in: no target/, no build outputs, no untracked files.
#
# The Rust toolchain: a newcomer runs rustup's installer, which puts rustup's layout in ~/.rustup
# and ~/.cargo/bin and adds `. "$HOME/.cargo/env"` to ~/.profile and ~/.bashrc. rustup cannot
# download anything on these machines, so the toolchain rustup installed on this machine is given
# instead, in the same layout: /root/.rustup and /root/.cargo/bin bind-mounted read-only at the
# root's /root, ~/.cargo/env copied, the same two lines added; the command runs in a login shell.
#
# Caches, in /var/cache/berth-fresh (kept between runs where the machine keeps them):
#   apt/             downloaded .debs (mmdebstrap's and install-deps.sh's), pruned to the last run's set
#   cargo-registry/  the root's ~/.cargo/registry (registry index + crate sources). Not the host's
#                    ~/.cargo/registry itself: cargo's lock for it lives in the host's ~/.cargo and
#                    other builds use it concurrently.
# Never a target/: the build starts from none. The root itself is built anew on every run.
#
# Isolation: the root runs in new mount, network and PID namespaces (its dockerd, containerd,
# Open vSwitch with the netdev datapath and the plugins cannot meet the host's or the test
# suite's; everything in it dies with the namespace). Its network namespace has only `lo`: the
# package registries are reached through an HTTP proxy (tinyproxy on the host's loopback, allowing
# only the hosts of this machine's apt sources and cargo registry) that a UNIX socket brings into the
# namespace as 127.0.0.1:3128 (http_proxy/https_proxy, as a newcomer behind a proxy would set them).
# This machine's apt sources, Acquire:: options and local CA certificates go into the root: they
# describe this site's network, not the project.
# Nothing in the root has a route anywhere; the demo's dockerd has no bridge and no iptables.
# On exit, success or not, everything this script made is removed: processes (by pid; the PID
# namespace takes its own with it), loop devices backed by the root's files, the root directory.
set -euo pipefail

if [ "${1:-}" = "--inner" ]; then
    # ---- Inside the new namespaces (PID 1 of the PID namespace), before the chroot. ----
    work=$2
    root=$work/root
    cache=$3
    ip link set lo up
    # dockerd remounts /: the root must be a mount point of its own.
    mount --bind "$root" "$root"
    mount -t proc proc "$root/proc"
    # A sysfs of this network namespace (its /sys/class/net shows only this namespace's links),
    # the host's cgroup hierarchy under it, and the host's /dev (loop devices).
    mount -t sysfs sysfs "$root/sys"
    mount --rbind /sys/fs/cgroup "$root/sys/fs/cgroup"
    mount --rbind /dev "$root/dev"
    mount -t tmpfs -o mode=755 tmpfs "$root/run"
    mount --bind "$cache/apt" "$root/var/cache/apt/archives"
    mount --bind "$cache/cargo-registry" "$root/root/.cargo/registry"
    for d in .rustup .cargo/bin; do
        mount --bind "/root/$d" "$root/root/$d"
        mount -o remount,bind,ro "$root/root/$d"
    done
    # The registries, through the host's filtering proxy.
    socat TCP-LISTEN:3128,bind=127.0.0.1,fork,reuseaddr "UNIX-CONNECT:$work/proxy.sock" &
    for _ in $(seq 1 50); do
        (exec 3<>/dev/tcp/127.0.0.1/3128) 2>/dev/null && break
        sleep 0.1
    done
    in_root() { # timeout-seconds, command (a login shell as root in the root, in the clone)
        timeout --kill-after=30 "$1" env -i HOME=/root TERM=dumb LOGNAME=root USER=root \
            PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
            http_proxy=http://127.0.0.1:3128 https_proxy=http://127.0.0.1:3128 \
            no_proxy=localhost,127.0.0.1,::1 \
            chroot "$root" /bin/bash -l -c "cd /root/berth && $2"
    }
    rc=0
    in_root 3000 'bash scripts/demo.sh' || rc=$?
    echo "fresh-root: demo.sh exited $rc" >"$work/demo.rc"
    if [ -f "$root/run/berth-demo/dockerd.log" ]; then cp "$root/run/berth-demo/"*.log "$work/" 2>/dev/null || true; fi
    src=0
    in_root 300 'bash scripts/demo.sh stop' || src=$?
    echo "fresh-root: demo.sh stop exited $src" >"$work/stop.rc"
    [ "$rc" -eq 0 ] && [ "$src" -eq 0 ]
    exit
fi

self=$(readlink -f "$0")
. "$(dirname "$self")/lib/debian-root.sh"
cd "$(dirname "$self")/.."
repo=$PWD
rev=${1:-HEAD}
cache=/var/cache/berth-fresh
t0=$SECONDS
stamp() { printf '[fresh-root +%4ds] %s\n' $((SECONDS - t0)) "$*"; }
die() { stamp "FAILED: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (mmdebstrap, chroot, namespaces)"
[ -x /root/.cargo/bin/cargo ] && [ -d /root/.rustup/toolchains ] ||
    die "no Rust toolchain in rustup's layout (/root/.rustup, /root/.cargo/bin) on this machine"
sha=$(git -C "$repo" rev-parse --verify --quiet "$rev^{commit}") || die "no such revision: $rev"

need=()
for p in mmdebstrap tinyproxy-bin socat; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
    stamp "installing ${need[*]} on this machine"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

mkdir -p "$cache/apt" "$cache/cargo-registry"
exec 9>"$cache/lock"
flock -w 3600 9 || die "another fresh-root check holds $cache/lock"

work=$(mktemp -d /var/tmp/berth-fresh.XXXXXX)
root=$work/root
pids=()
inner=
cleanup() {
    local rc=$?
    set +e
    if [ -n "$inner" ] && kill -0 "$inner" 2>/dev/null; then
        # unshare --kill-child takes the PID namespace (dockerd, OVS, plugins, builds) with it.
        kill -TERM "$inner"
        for _ in $(seq 1 100); do kill -0 "$inner" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$inner" 2>/dev/null
    fi
    for p in "${pids[@]}"; do
        kill -TERM "$p" 2>/dev/null
        for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null
    done
    wait 2>/dev/null
    # Loop devices whose backing file is in the root (volplugin's loopfile volumes).
    local dev ino
    for dev in /sys/block/loop*; do
        [ -r "$dev/loop/backing_file" ] || continue
        ino=$(losetup -n -O BACK-INO "/dev/${dev##*/}" 2>/dev/null | tr -d ' ')
        [ -n "$ino" ] && [ -n "$(find "$root/var/lib/berth" -xdev -inum "$ino" 2>/dev/null | head -1)" ] &&
            losetup -d "/dev/${dev##*/}" && stamp "detached /dev/${dev##*/} (a volume of the root)"
    done
    # Everything was mounted in namespaces that are gone; anything left under $work is a bug,
    # and rm must never run into a bind mount.
    if findmnt -rn -o TARGET | grep -q "^$work"; then
        findmnt -rn -o TARGET | grep "^$work" | sort -r | xargs -r -n1 umount -l
    fi
    if findmnt -rn -o TARGET | grep -q "^$work"; then
        stamp "mounts remain under $work; not removing it" >&2
        rc=1
    else
        rm -rf --one-file-system "$work"
    fi
    stamp "done, exit $rc (wall time $((SECONDS - t0)) s)"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

stamp "checking $rev ($sha) in a fresh Debian 12 root at $root"

# ---- 1. The root: Debian 12 minbase + ca-certificates + git, from this machine's apt sources. ----
mapfile -t mirrors < <(debian_apt_source_files)
[ ${#mirrors[@]} -gt 0 ] || die "no apt sources on this machine"
# This machine's Acquire:: settings (e.g. Check-Valid-Until for a snapshot mirror) go with them.
debian_acquire_conf "$work/apt.conf"
stamp "mmdebstrap: bookworm minbase + ca-certificates, git"
debian_mmdebstrap bookworm "$root" "$cache/apt" "$work/apt.conf" "$work/mmdebstrap.log" \
    ca-certificates,git "${mirrors[@]}" ||
    { tail -30 "$work/mmdebstrap.log"; die "mmdebstrap"; }
stamp "root built: $(du -sh --one-file-system "$root" | cut -f1)"
t_root=$((SECONDS - t0))
# This machine's own CA certificates (a site's TLS-intercepting egress proxy, for example) are
# part of its network, like its apt sources: without them no HTTPS registry can be reached.
debian_copy_local_cas "$root" || die "update-ca-certificates in the root"

# ---- 2. The clone and the toolchain, as a newcomer has them. ----
git clone --quiet --no-checkout --no-hardlinks "$repo" "$root/root/berth"
git -C "$root/root/berth" checkout --quiet --detach "$sha"
[ ! -e "$root/root/berth/target" ] || die "the clone has a target/"
mkdir -p "$root/root/.rustup" "$root/root/.cargo/bin" "$root/root/.cargo/registry"
if [ -f /root/.cargo/env ]; then
    cp /root/.cargo/env "$root/root/.cargo/env"
else # what rustup's installer writes
    printf '#!/bin/sh\ncase ":${PATH}:" in\n    *:"$HOME/.cargo/bin":*) ;;\n    *) export PATH="$HOME/.cargo/bin:$PATH" ;;\nesac\n' >"$root/root/.cargo/env"
fi
for f in .profile .bashrc; do printf '\n. "$HOME/.cargo/env"\n' >>"$root/root/$f"; done

# ---- 3. The registries' proxy: only this machine's apt hosts and cargo registry hosts. ----
# Both lists come from this machine's own configuration, never from literals here: the apt
# sources, and the cargo registry the host's cargo already uses (its index directories are named
# after the index host; each index's config.json names its download and API hosts).
hosts=$(debian_apt_source_hosts "${mirrors[@]}")
cargo_hosts=$(
    for d in /root/.cargo/registry/index/*/; do
        [ -d "$d" ] || continue
        basename "$d" | sed -E 's/-[0-9a-f]{16}$//'
        [ -f "$d/config.json" ] && grep -oE 'https?://[^/":]+' "$d/config.json" | sed -E 's#^https?://##'
    done | sort -u
)
[ -n "$cargo_hosts" ] || die "no cargo registry index under /root/.cargo/registry/index: run a cargo build on this machine once first"
{
    for h in $hosts $cargo_hosts; do
        printf '^%s$\n' "${h//./\\.}"
    done
} >"$work/proxy-allow"
for port in $(shuf -i 20000-60000 -n 20); do
    cat >"$work/tinyproxy.conf" <<EOF
Port $port
Listen 127.0.0.1
Timeout 120
MaxClients 50
Allow 127.0.0.1
LogLevel Notice
LogFile "$work/tinyproxy.log"
Filter "$work/proxy-allow"
FilterType ere
FilterURLs Off
FilterDefaultDeny Yes
ConnectPort 443
DisableViaHeader Yes
EOF
    tinyproxy -d -c "$work/tinyproxy.conf" >>"$work/tinyproxy.out" 2>&1 &
    tp=$!
    up=
    for _ in $(seq 1 30); do
        kill -0 "$tp" 2>/dev/null || break
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && { up=1; break; }
        sleep 0.1
    done
    [ -n "$up" ] && { pids+=("$tp"); break; }
    kill "$tp" 2>/dev/null; wait "$tp" 2>/dev/null || true
done
[ -n "$up" ] || { tail "$work/tinyproxy.out" "$work/tinyproxy.log"; die "tinyproxy did not start"; }
socat "UNIX-LISTEN:$work/proxy.sock,fork,mode=600" "TCP:127.0.0.1:$port" &
pids+=($!)

# ---- 4. The README's first command, in the root, in its own namespaces. ----
stamp "in the root: bash scripts/demo.sh; bash scripts/demo.sh stop"
t_demo=$SECONDS
t_demo_at=$((SECONDS - t0))
unshare --mount --net --pid --fork --kill-child --propagation private \
    bash "$self" --inner "$work" "$cache" \
    > >(while IFS= read -r l; do printf '[fresh-root +%4ds] | %s\n' $((SECONDS - t0)) "$l" | tee -a "$work/demo.log"; done) 2>&1 &
inner=$!
rc=0
wait "$inner" || rc=$?
inner=
sleep 0.5 # let the prefixing reader drain
cat "$work/demo.rc" "$work/stop.rc" 2>/dev/null || true
at() { grep -m1 -F -- "$1" "$work/demo.log" 2>/dev/null | sed -E 's/^\[fresh-root \+ *([0-9]+)s\].*/\1/' || true; }
t_deps=$(at 'install-deps: ok'); t_built=$(at '== starting'); t_shown=$(at 'Stop what the demo started')
span() { if [ -n "$1" ] && [ -n "$2" ]; then echo "$(($2 - $1)) s"; else echo "did not finish"; fi; }
stamp "phases: root $t_root s; install-deps $(span "$t_demo_at" "$t_deps"); release build $(span "$t_deps" "$t_built"); demo $(span "$t_built" "$t_shown"); all in the root $((SECONDS - t_demo)) s"
if [ "$rc" -ne 0 ]; then
    for f in "$work"/{containerd,dockerd,volplugin,netplugin,ovs}.log; do
        [ -s "$f" ] && { echo "--- tail of ${f##*/}"; tail -20 "$f"; }
    done
    die "the README's first command failed in a fresh Debian 12 root (revision $rev)"
fi

# Keep the .deb cache to what this run used (newer versions replace older ones).
debian_prune_deb_cache "$root" "$cache/apt"
stamp "PASSED: install-deps.sh, the release build and the demo work on a fresh Debian 12 root (revision $rev)"
