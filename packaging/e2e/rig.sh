# rig.sh: sourced (bash) by the scripts packaging/e2e/ns-run.sh runs inside its namespaces.
# Functions:
#   rig_ns            the namespace's filesystem view: private /run (tmpfs), fresh sysfs (this
#                     netns's links) with the host's cgroup mounts, overlays over /etc /usr /var
#                     (upper dirs $S/ovl/{etc,usr,var}/upper; the real dirs read-only at
#                     $S/lower/), /var/lib/berth a dir of $S, lo up
#   rig_ovs           ovsdb-server + ovs-vswitchd (db in $S/ovs, default run dir
#                     /var/run/openvswitch), the way netplugin finds them by default
#   rig_docker        containerd + dockerd (--bridge=none --iptables=false, data in $S, default
#                     API socket /var/run/docker.sock and plugin dir /run/docker/plugins, both
#                     private), then the test image berth-test/busybox:latest (busybox-static,
#                     docker import, no registry)
#   d ARGS            the docker CLI against that dockerd
#   ok/bad/check      counted results; `rig_summary NAME` prints "NAME: N passed, N failed"
# Daemons run in the background; ns-run.sh's pid namespace ends them all. Logs: $S/logs/.
S=${BERTH_E2E_DIR:?run through packaging/e2e/ns-run.sh}
CG=${BERTH_E2E_CGROUP:?}
TEST_IMAGE=berth-test/busybox:latest
export DOCKER_CONFIG=$S/client DOCKER_HOST=unix:///var/run/docker.sock
unset DOCKER_CONTEXT DOCKER_TLS_VERIFY DOCKER_CERT_PATH NOTIFY_SOCKET
# Debian's 20.10 client matches Debian's dockerd; another docker in PATH may be newer.
DOCKER=/usr/bin/docker
[ -x "$DOCKER" ] || DOCKER=docker
mkdir -p "$S/logs" "$S/client"
echo '{}' >"$S/client/config.json"

pass=0 fail=0 known=0
ok() { echo "  ok: $*"; pass=$((pass + 1)); }
bad() { echo "  FAIL: $*"; fail=$((fail + 1)); }
check() { local what=$1; shift; if "$@"; then ok "$what"; else bad "$what"; fi; }
step() { echo "== $*"; }
# known_bug WHAT BUG CMD...: a check that can fail because of a daemon bug reported but not
# fixed yet (BUG says which; a race, so it does not fail every run). A failure is counted apart
# and printed as that bug, so the run stays usable and the bug visible; a pass is a pass. Once
# the bug is fixed, make it a `check`.
known_bug() {
    local what=$1 bug=$2; shift 2
    if "$@"; then ok "$what"
    else echo "  KNOWN BUG hit: $what: $bug"; known=$((known + 1)); fi
}
rig_summary() {
    local k=; [ "$known" -gt 0 ] && k=", $known known bug(s)"
    echo "$1: $pass passed, $fail failed$k"; [ "$fail" -eq 0 ]
}
d() { timeout 120 "$DOCKER" "$@"; }
# Checks often run `bash -c "..."`: the CLI function and its settings go with them.
export DOCKER TEST_IMAGE
export -f d
# wait_for SECONDS CMD...: polls CMD every 0.1 s until it succeeds; fails after SECONDS.
wait_for() {
    local n=$(( $1 * 10 )); shift
    for _ in $(seq "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
    return 1
}

rig_ns() {
    set -e
    # The host's cgroup mounts survive the fresh sysfs (dockerd and runc need them).
    mkdir -p "$S/.cg"
    mount --rbind /sys/fs/cgroup "$S/.cg"
    mount -t sysfs sysfs /sys
    mount --move "$S/.cg" /sys/fs/cgroup
    mount -t tmpfs -o mode=0755 tmpfs /run
    local dir
    for dir in etc usr var; do
        mkdir -p "$S/ovl/$dir/upper" "$S/ovl/$dir/work" "$S/lower/$dir"
        # The real one stays readable at $S/lower (what the overlay's upper dir is compared with).
        mount --bind "/$dir" "$S/lower/$dir"
        mount -o remount,bind,ro "$S/lower/$dir"
        mount -t overlay overlay -o "lowerdir=/$dir,upperdir=$S/ovl/$dir/upper,workdir=$S/ovl/$dir/work" "/$dir"
    done
    # The daemons' state on the disk under $S (loop images want a real filesystem, and the
    # state must be inspectable after the namespace is gone).
    mkdir -p "$S/var-lib-berth" /var/lib/berth
    mount --bind "$S/var-lib-berth" /var/lib/berth
    hostname berth-e2e
    ip link set lo up
    set +e
}

rig_ovs() {
    mkdir -p "$S/ovs" /var/run/openvswitch
    ovsdb-tool create "$S/ovs/conf.db" /usr/share/openvswitch/vswitch.ovsschema || return 1
    # OVS_* keep everything it writes (db, logs, pid files, system id) in $S and the private /run.
    export OVS_RUNDIR=/var/run/openvswitch OVS_DBDIR=$S/ovs OVS_SYSCONFDIR=$S/ovs OVS_LOGDIR=$S/logs
    ovsdb-server "$S/ovs/conf.db" --remote=punix:/var/run/openvswitch/db.sock \
        --unixctl=/var/run/openvswitch/ovsdb-server.ctl --pidfile -vconsole:off -vfile:info \
        --log-file="$S/logs/ovsdb-server.log" >>"$S/logs/ovsdb-server.out" 2>&1 &
    wait_for 15 test -S /var/run/openvswitch/db.sock || { echo "ovsdb-server did not start"; return 1; }
    ovs-vsctl --timeout=20 --no-wait init || return 1
    ovs-vswitchd unix:/var/run/openvswitch/db.sock --unixctl=/var/run/openvswitch/ovs-vswitchd.ctl \
        --pidfile -vconsole:off --log-file="$S/logs/ovs-vswitchd.log" >>"$S/logs/ovs-vswitchd.out" 2>&1 &
    wait_for 15 test -S /var/run/openvswitch/ovs-vswitchd.ctl || { echo "ovs-vswitchd did not start"; return 1; }
}

rig_docker() {
    mkdir -p "$S/containerd" "$S/docker"
    printf 'version = 2\ndisabled_plugins = ["io.containerd.grpc.v1.cri"]\n' >"$S/containerd.toml"
    # Only moves the libtrust key off /etc/docker/key.json.
    printf '{ "deprecated-key-path": "%s/key.json" }\n' "$S" >"$S/daemon.json"
    containerd --config "$S/containerd.toml" --root "$S/containerd" >>"$S/logs/containerd.log" 2>&1 &
    wait_for 30 test -S /run/containerd/containerd.sock || { echo "containerd did not start"; tail -20 "$S/logs/containerd.log"; return 1; }
    dockerd --data-root "$S/docker" --config-file "$S/daemon.json" \
        --containerd /run/containerd/containerd.sock \
        --bridge=none --iptables=false --ip6tables=false --ip-masq=false --ip-forward=false \
        --exec-opt native.cgroupdriver=cgroupfs --cgroup-parent "/$CG" >>"$S/logs/dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    wait_for 60 "$DOCKER" version || { echo "dockerd did not answer"; tail -30 "$S/logs/dockerd.log"; return 1; }
    rig_image
}

# The test image: Debian's busybox-static with an applet link each (as integration/src/docker.rs).
rig_image() {
    local r=$S/image-rootfs bb
    bb=$(command -v busybox) || { echo "busybox missing (apt-get install busybox-static)"; return 1; }
    mkdir -p "$r"/{bin,etc,tmp,root,var,usr,dev,proc,sys}
    chmod 1777 "$r/tmp"
    cp "$bb" "$r/bin/busybox"
    local a
    for a in $("$bb" --list); do [ "$a" = busybox ] || ln -s busybox "$r/bin/$a"; done
    ln -s bin "$r/sbin"; ln -s ../bin "$r/usr/bin"; ln -s ../bin "$r/usr/sbin"
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$r/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$r/etc/group"
    tar --numeric-owner --owner=0 --group=0 -C "$r" -c . | d import --change 'CMD ["sh"]' - "$TEST_IMAGE" >/dev/null || return 1
    rm -rf "$r"
}

# rig_fail_logs: the daemons' log tails, for a failed run.
rig_fail_logs() {
    local f
    for f in "$S"/logs/*; do
        [ -s "$f" ] || continue
        echo "---- last lines of $f"; tail -n 25 "$f"
    done
}
