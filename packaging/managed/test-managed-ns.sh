#!/usr/bin/env bash
# test-managed-ns.sh: the managed-plugin lifecycle (test-managed.sh: docker plugin create, set,
# enable, a volume and a network lifecycle, disable, rm) against a test dockerd of its own, with
# Open vSwitch, in new pid + mount + network namespaces (packaging/e2e/ns-run.sh; cleaned up when
# they end, also on failure). As root on Debian 12; installs the rig's Debian packages when
# missing. Builds the bundles (build.sh) when target/managed/ has none.
set -uo pipefail
cd "$(dirname "$0")/../.."
[ "$(id -u)" = 0 ] || { echo "test-managed-ns.sh: needs root" >&2; exit 2; }
missing=()
for p in docker.io containerd runc busybox-static openvswitch-switch iproute2 util-linux; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || exit 2
fi
[ -f target/managed/berth-vol/config.json ] && [ -f target/managed/berth-net/config.json ] \
    || bash packaging/managed/build.sh || exit 1
bash packaging/e2e/ns-run.sh packaging/e2e/managed-dockerd.sh
