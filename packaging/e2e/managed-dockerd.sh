# managed-dockerd.sh: run by packaging/managed/test-managed-ns.sh through packaging/e2e/ns-run.sh
# (inside new pid + mount + net + UTS namespaces): a private Open vSwitch, containerd and dockerd
# with the test image, then packaging/managed/test-managed.sh against that dockerd on the
# namespace's default socket /var/run/docker.sock (which the bundles also bind-mount).
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=rig.sh
source "$HERE/rig.sh"
rig_ns || { echo "namespace setup failed"; exit 1; }
rig_ovs || { rig_fail_logs; exit 1; }
rig_docker || { rig_fail_logs; exit 1; }
# test-managed.sh calls `docker`: the client matching Debian's dockerd.
mkdir -p "$S/bin" && ln -s "$DOCKER" "$S/bin/docker"
PATH=$S/bin:$PATH TEST_IMAGE=$TEST_IMAGE REQUIRE_ALL=1 bash "$HERE/../managed/test-managed.sh" "$DOCKER_HOST"
rc=$?
if [ "$rc" != 0 ]; then
    echo "---- dockerd's log about plugins"
    grep -iE 'plugin|error|level=warn' "$S/logs/dockerd.log" | tail -n 40
fi
exit "$rc"
