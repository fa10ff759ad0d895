#!/usr/bin/env bash
# The Debian 13 (trixie) root the Docker 26 test pass runs dockerd from (BERTH_DOCKER=26; see
# docs/testing.md): mmdebstrap's minbase plus Debian 13's docker.io (dockerd 26.1), its CLI,
# containerd and runc. Built once and cached; the test harness never writes to it (it runs
# dockerd on a private overlay of it, in the test's own mount namespace).
#
#   bash scripts/docker26-root.sh           build it unless the cached one is current; print its path
#   bash scripts/docker26-root.sh --rebuild build it anew
#
# Cache, in /var/cache/berth-docker26 (BERTH_DOCKER26_CACHE moves it):
#   root/    the root; root/.berth-root-key names what it was built from (suite + packages)
#   apt/     the downloaded .debs, pruned to the last build's set
# A root whose key differs from this script's is rebuilt. Packages come from this machine's apt
# sources for its own Debian release, with the release renamed (scripts/lib/debian-root.sh).
set -euo pipefail
self=$(readlink -f "$0")
. "$(dirname "$self")/lib/debian-root.sh"

suite=trixie
# docker.io's own dependencies (containerd, runc, tini, iptables, ...) come with it; the CLI is
# named so it stays in even if Debian splits it out; iproute2 is for looking around by hand.
packages=docker.io,docker-cli,containerd,runc,ca-certificates,iproute2
key="$suite minbase $packages v1"

cache=${BERTH_DOCKER26_CACHE:-/var/cache/berth-docker26}
root=$cache/root
log() { echo "docker26-root: $*" >&2; }

[ "$(id -u)" -eq 0 ] || { log "run as root (mmdebstrap --mode=root)"; exit 1; }
command -v mmdebstrap >/dev/null || { log "mmdebstrap is missing: bash scripts/install-deps.sh"; exit 1; }

mkdir -p "$cache/apt"
exec 9>"$cache/lock"
flock -w 1800 9 || { log "another build holds $cache/lock"; exit 1; }

if [ "${1:-}" != "--rebuild" ] && [ "$(cat "$root/.berth-root-key" 2>/dev/null)" = "$key" ] &&
    [ -x "$root/usr/sbin/dockerd" ]; then
    echo "$root"
    exit 0
fi

work=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf --one-file-system "$work"' EXIT
t0=$SECONDS
log "building a Debian 13 ($suite) root with $packages (a few minutes; cached afterwards)"
debian_sources_for "$suite" "$work/sources.list"
debian_acquire_conf "$work/apt.conf"
if ! debian_mmdebstrap "$suite" "$work/root" "$cache/apt" "$work/apt.conf" "$work/mmdebstrap.log" \
    "$packages" "$work/sources.list"; then
    tail -30 "$work/mmdebstrap.log" >&2
    log "mmdebstrap failed"
    exit 1
fi
debian_copy_local_cas "$work/root"
debian_prune_deb_cache "$work/root" "$cache/apt"
version=$(chroot "$work/root" dockerd --version)
echo "$key" >"$work/root/.berth-root-key"
rm -rf --one-file-system "$root"
mv "$work/root" "$root"
log "built in $((SECONDS - t0)) s: $version"
echo "$root"
