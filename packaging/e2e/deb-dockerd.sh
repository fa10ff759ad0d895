# deb-dockerd.sh V1DIR V2DIR: run by packaging/test-deb-dockerd.sh through packaging/e2e/ns-run.sh
# (inside new pid + mount + net + UTS namespaces, /etc /usr /var copy-on-write). The .deb life
# cycle with a real dockerd: see test-deb-dockerd.sh's header for what is checked.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=rig.sh
source "$HERE/rig.sh"
V1DIR=$1 V2DIR=$2
PKGS=(berth-volplugin berth-netplugin)
V1=$(dpkg-deb -f "$V1DIR"/berth-volplugin_*.deb Version)
V2=$(dpkg-deb -f "$V2DIR"/berth-volplugin_*.deb Version)
NET=dbnet SUBNET=10.231.40.0/24 DBIP=10.231.40.10 VLAN=140
trap 'rc=$?; [ "$rc" = 0 ] || rig_fail_logs' EXIT
# Times of the test's events, to line up with the daemons' logs (KEEP=1 keeps them).
ev() { echo "$(date +%s.%N) $*" >>"$S/events.log"; }

rig_ns || { echo "namespace setup failed"; exit 1; }
step "rig: private Open vSwitch (netdev datapath) in this network namespace"
rig_ovs || { rig_fail_logs; exit 1; }
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' && { echo "$p already installed"; exit 1; }
done
# What the overlays hold before the packages: compared with what they hold after the purge.
# Entries of the upper dirs as paths of the root ("./etc/upper/berth/x" -> "/etc/berth/x"), less
# the directories that exist in the real root too (copy-ups, not new).
upper_list() {
    local p top
    (cd "$S/ovl" && find ./*/upper -mindepth 1 | sed 's|^\./\([a-z]*\)/upper|/\1|' | sort) | while read -r p; do
        top=${p#/}; top=${top%%/*}
        if [ -d "$S/lower$p" ] && [ ! -L "$S/lower$p" ] && [ -d "$S/ovl/$top/upper${p#/"$top"}" ]; then continue; fi
        echo "$p"
    done
}
upper_list >"$S/upper-before.txt"

step "install $V1 (dpkg -i)"
check "dpkg -i V1" dpkg -i "$V1DIR"/berth-volplugin_*.deb "$V1DIR"/berth-netplugin_*.deb </dev/null >"$S/logs/dpkg-i1.log" 2>&1
for p in "${PKGS[@]}"; do
    check "$p $V1 installed" test "$(dpkg-query -W -f='${Status} ${Version}' "$p")" = "install ok installed $V1"
done
for u in berth-vol berth-net; do
    check "$u.socket enabled by the postinst" test -L "/etc/systemd/system/sockets.target.wants/$u.socket"
done
# The admin's configuration, as ops set it: no OVS kernel module here, so the netdev datapath;
# metrics on other ports. Must survive the upgrade and be what the upgraded daemons run with.
cat >>/etc/berth/netplugin.toml <<'EOF'
# local settings (test-deb-dockerd.sh)
datapath = "netdev"
metrics = "127.0.0.1:19473"
EOF
echo 'metrics = "127.0.0.1:19474"  # local setting (test-deb-dockerd.sh)' >>/etc/berth/volplugin.toml

unit_key() { sed -n "s/^$2=//p" "/usr/lib/systemd/system/$1" | tail -n 1; }
running_from() { local p; for p in /proc/[0-9]*; do [ "$(readlink "$p/exe" 2>/dev/null)" = "$1" ] && echo "${p#/proc/}"; done; }
export -f running_from
# activate vol|net: what systemd does for berth-X.socket at boot and berth-X.service on the first
# connection, from the installed unit files: ListenStream=, ExecStart=, RuntimeDirectory=,
# StateDirectory= (+Mode). Sets ${X}_APID (the activator, later svc.sh holding the socket).
activate() {
    local u=berth-$1 sock exec_ rd sd sm
    sock=$(unit_key "$u.socket" ListenStream); exec_=$(unit_key "$u.service" ExecStart)
    rd=$(unit_key "$u.service" RuntimeDirectory); sd=$(unit_key "$u.service" StateDirectory)
    sm=$(unit_key "$u.service" StateDirectoryMode)
    mkdir -p "/run/$rd" "/var/lib/$sd" "$(dirname "$sock")"
    chmod "${sm:-0755}" "/var/lib/$sd"
    rm -f "$S/$1.pid"
    # shellcheck disable=SC2086 # ExecStart= is a command line
    systemd-socket-activate -l "$sock" -- bash "$HERE/svc.sh" "$S/$1.pid" $exec_ >>"$S/logs/$u.log" 2>&1 &
    eval "${1}_APID=$!"
    wait_for 10 test -S "$sock"
}
svc_pid() { cat "$S/$1.pid" 2>/dev/null; }
exe() { readlink "/proc/$1/exe" 2>/dev/null; }
export -f exe

step "boot order: the plugin sockets (sockets.target), then dockerd (Before=docker.service)"
check "berth-vol.socket listening" activate vol
check "berth-net.socket listening" activate net
rig_docker || { echo "dockerd did not start"; exit 1; }
check "dockerd up, neither daemon started yet" test -z "$(running_from /usr/bin/volplugin)$(running_from /usr/bin/netplugin)"

step "dockerd's first calls start the daemons (socket activation)"
check "docker volume create -d berth-vol (dockerd calls while only the socket exists)" \
    d volume create -d berth-vol -o size=64M -o fs=ext4 dbdata
VPID=$(svc_pid vol)
check "volplugin started by that call: pid ${VPID:-none} runs /usr/bin/volplugin, child of the activator $vol_APID" \
    bash -c "[ '$(exe "$VPID")' = /usr/bin/volplugin ] && [ \"\$(ps -o ppid= -p '$VPID' | tr -d ' ')\" = '$vol_APID' ]"
check "docker network create -d berth-net --ipam-driver berth-net" \
    d network create -d berth-net --ipam-driver berth-net --subnet "$SUBNET" -o "vlan=$VLAN" "$NET"
NPID=$(svc_pid net)
check "netplugin started by that call: pid ${NPID:-none} runs /usr/bin/netplugin" test "$(exe "$NPID")" = /usr/bin/netplugin
check "volume listed with its driver" bash -c "d volume ls --format '{{.Driver}} {{.Name}}' | grep -qx 'berth-vol dbdata'"
check "network listed with its driver" bash -c "d network inspect -f '{{.Driver}} {{.IPAM.Driver}}' $NET | grep -qx 'berth-net berth-net'"

step "a database container (berth volume + berth network) and a client streaming to it"
# db: a TCP server writing what it receives into the volume (its stdin never ends: busybox nc
# closes the connection at EOF on stdin), and a writer of its own (IO).
check "docker run db" d run -d --name db --network "$NET" --ip "$DBIP" -v dbdata:/data --stop-timeout 1 "$TEST_IMAGE" \
    sh -c 'i=0; while :; do i=$((i+1)); echo $i >>/data/io.log; sleep 0.1; done & sleep 100000 | nc -l -p 5000 >/data/stream.log'
MP=$(d volume inspect -f '{{.Mountpoint}}' dbdata)
check "volume mounted at $MP" mountpoint -q "$MP"
check "db listens on 5000" wait_for 10 bash -c "d exec db netstat -ltn | grep -q ':5000 '"
# app: one TCP connection sending a line every 0.1 s, and pings every 0.2 s, for the whole test.
ev app-start
check "docker run app" d run -d --name app --network "$NET" --stop-timeout 1 "$TEST_IMAGE" \
    sh -c "ping -i 0.2 $DBIP >/tmp/ping.log 2>&1 & i=0; while :; do i=\$((i+1)); echo \$i; sleep 0.1; done | nc $DBIP 5000"
lines() { wc -l <"$MP/$1" 2>/dev/null || echo 0; }
check "the stream arrives in the volume" wait_for 15 bash -c "[ \$(wc -l <'$MP/stream.log') -ge 10 ]"
ping_seqs() { d exec app cat /tmp/ping.log | sed -n 's/.*seq=\([0-9]*\).*/\1/p'; }

step "upgrade to $V2 (dpkg -i) while the containers run"
io0=$(lines io.log) st0=$(lines stream.log) ps0=$(ping_seqs | tail -n 1)
# No --force-conf*: a locally edited conffile the package did not change must not prompt
# (stdin is /dev/null: a prompt would fail the install).
ev dpkg-i2
check "dpkg -i V2" dpkg -i "$V2DIR"/berth-volplugin_*.deb "$V2DIR"/berth-netplugin_*.deb </dev/null >"$S/logs/dpkg-i2.log" 2>&1
for p in "${PKGS[@]}"; do
    check "$p $V2 installed" test "$(dpkg-query -W -f='${Status} ${Version}' "$p")" = "install ok installed $V2"
done
check "config kept: local edits in /etc/berth/*.toml" bash -c \
    "grep -qx 'datapath = \"netdev\"' /etc/berth/netplugin.toml && grep -q '^metrics = \"127.0.0.1:19474\"' /etc/berth/volplugin.toml"
check "no .dpkg-new/.dpkg-old/.dpkg-dist left in /etc/berth" bash -c '! ls /etc/berth/*.dpkg-* >/dev/null 2>&1'
check "the old daemons still run the replaced (deleted) binaries" bash -c \
    "exe $VPID | grep -q '(deleted)' && exe $NPID | grep -q '(deleted)'"
# The postinst's try-restart, done by what holds the sockets (svc.sh, systemd's stand-in), in two
# halves so that dockerd's calls land in the gap for sure: the old daemons stopped, the sockets
# still bound; calls made then must wait, not fail, and be answered by the new daemons.
ev stop
kill -USR1 "$vol_APID" "$net_APID"
check "old daemons stopped, sockets still held" \
    wait_for 30 bash -c "! kill -0 $VPID 2>/dev/null && ! kill -0 $NPID 2>/dev/null && [ ! -s $S/vol.pid ] && [ ! -s $S/net.pid ]"
d volume ls -q >"$S/gap-vol.out" 2>&1 &
Q1=$!
d network create -d berth-net --ipam-driver berth-net --subnet 10.231.41.0/24 -o vlan=141 net2 >"$S/gap-net.out" 2>&1 &
Q2=$!
sleep 2
check "with no daemon running, dockerd's calls wait on the sockets (still pending after 2 s)" \
    bash -c "kill -0 $Q1 && kill -0 $Q2 && [ -z \"\$(running_from /usr/bin/volplugin)\$(running_from /usr/bin/netplugin)\" ]"
ev start
kill -USR2 "$vol_APID" "$net_APID"
wait "$Q1"; q1=$?
wait "$Q2"; q2=$?
check "docker volume ls made in the gap answered by the new volplugin: $(tr '\n' ' ' <"$S/gap-vol.out")" \
    bash -c "[ $q1 = 0 ] && grep -qx dbdata '$S/gap-vol.out'"
check "docker network create made in the gap answered by the new netplugin: $(tr '\n' ' ' <"$S/gap-net.out" | cut -c1-80)" test "$q2" = 0
wait_for 10 bash -c "[ -s $S/vol.pid ] && [ -s $S/net.pid ]"
VPID2=$(svc_pid vol) NPID2=$(svc_pid net)
check "volplugin restarted onto the new binary (pid $VPID -> $VPID2)" bash -c "[ $VPID2 != $VPID ] && [ '$(exe "$VPID2")' = /usr/bin/volplugin ]"
check "netplugin restarted onto the new binary (pid $NPID -> $NPID2)" bash -c "[ $NPID2 != $NPID ] && [ '$(exe "$NPID2")' = /usr/bin/netplugin ]"
for b in volplugin netplugin; do
    pid=$VPID2; [ $b = netplugin ] && pid=$NPID2
    check "$b runs the file V2 installed (same inode as /usr/bin/$b)" test "$(stat -L -c %i "/proc/$pid/exe")" = "$(stat -c %i /usr/bin/$b)"
done
check "the upgraded netplugin runs with the kept config (metrics on 127.0.0.1:19473)" \
    wait_for 10 bash -c "curl -sf --max-time 2 http://127.0.0.1:19473/metrics | grep -q '^berth_net'"
check "the upgraded volplugin runs with the kept config (metrics on 127.0.0.1:19474)" \
    wait_for 10 bash -c "curl -sf --max-time 2 http://127.0.0.1:19474/metrics | grep -q '^berth_vol'"
check "state kept: the volume is still mounted" mountpoint -q "$MP"
check "state kept: the volume, as the new volplugin reports it" bash -c "d volume inspect -f '{{.Driver}} {{.Mountpoint}}' dbdata | grep -qx 'berth-vol $MP'"
ev new-container
check "state kept: a new container joins $NET through the new netplugin and reaches db" \
    d run --rm --network "$NET" "$TEST_IMAGE" ping -c 2 -W 5 "$DBIP"
check "state kept: $DBIP is still db's (a second container cannot take it)" \
    bash -c "! d run --rm --network $NET --ip $DBIP $TEST_IMAGE true >/dev/null 2>&1"
sleep 2
ev end
if [ "$fail" != 0 ]; then d ps -a; for c in db app; do echo "-- docker logs $c"; d logs --tail 10 $c; done; fi
io1=$(lines io.log) st1=$(lines stream.log) ps1=$(ping_seqs | tail -n 1)
# Lines are 1..N with no gap or repeat: nothing lost, one TCP connection throughout.
check "IO continued: db's writer $io0 -> $io1 lines, no line lost" bash -c "[ $io1 -gt $io0 ] && cd '$MP' && awk '\$1 != NR {bad=1; exit} END {exit bad}' io.log"
check "TCP continued: one connection, $st0 -> $st1 lines, contiguous" bash -c "[ $st1 -gt $st0 ] && cd '$MP' && awk '\$1 != NR {bad=1; exit} END {exit bad}' stream.log"
check "the client's connection never closed (app still running)" test "$(d inspect -f '{{.State.Running}}' app)" = true
lost=$(ping_seqs | awk -v from="$ps0" '$1 >= from {if (seen && $1 != prev + 1) gap += $1 - prev - 1; seen = 1; prev = $1} END {print gap + 0}')
check "ping continued: seq $ps0 -> $ps1, $lost lost across the upgrade" bash -c "[ ${ps1:-0} -gt ${ps0:-0} ] && [ $lost = 0 ]"

step "remove (dpkg -r) and purge (dpkg -P)"
check "docker rm -f app db (dockerd unmounts and leaves through the plugins)" d rm -f app db
check "volume unmounted" bash -c "! mountpoint -q '$MP'"
check "docker network rm net2" d network rm net2
# prerm's `systemctl stop berth-*.socket berth-*.service` (no systemd here: done by hand, as a
# systemd host does at that point).
kill -TERM "$vol_APID" "$net_APID"; wait "$vol_APID" "$net_APID" 2>/dev/null
check "the daemons stopped" test -z "$(running_from /usr/bin/volplugin)$(running_from /usr/bin/netplugin)"
check "dpkg -r" dpkg -r "${PKGS[@]}" </dev/null >"$S/logs/dpkg-r.log" 2>&1
check "dpkg -r keeps the conffiles" test -f /etc/berth/volplugin.toml -a -f /etc/berth/netplugin.toml
check "dpkg -P" dpkg -P "${PKGS[@]}" </dev/null >"$S/logs/dpkg-p.log" 2>&1
for f in /usr/bin/volplugin /usr/bin/netplugin /usr/lib/systemd/system/berth-vol.socket /usr/lib/systemd/system/berth-net.service \
         /etc/berth /etc/systemd/system/sockets.target.wants/berth-vol.socket /usr/share/doc/berth-netplugin \
         /usr/share/man/man1/volplugin.1.gz /var/lib/systemd/deb-systemd-helper-enabled/sockets.target.wants/berth-net.socket; do
    check "gone: $f" test ! -e "$f"
done
check "volumes kept on disk: meta.redb and the image of dbdata" bash -c \
    "test -s /var/lib/berth/vol/meta.redb && ls /var/lib/berth/vol/images | grep -q dbdata"
check "network state kept on disk: state.redb" test -s /var/lib/berth/net/state.redb
# Nothing else left: every file the overlays hold now that they did not hold before the install
# is dpkg's own bookkeeping (its database, log, man-db's index); a whiteout (char device) would
# be a file of this machine deleted.
upper_list >"$S/upper-after.txt"
left=$(comm -13 "$S/upper-before.txt" "$S/upper-after.txt" | grep -vE \
    '^/var/(lib/dpkg/(status|status-old|available|available-old|lock|lock-frontend|triggers/(File|Lock|Unincorp))|log/dpkg\.log|cache/man/.*)$')
check "nothing else left in /etc /usr /var${left:+: $(echo $left)}" test -z "$left"
check "dpkg's database has no berth package left" bash -c "! grep -q '^Package: berth-' /var/lib/dpkg/status && ! ls /var/lib/dpkg/info | grep -q '^berth-'"

step "reinstall $V2: the volume and the network come back with their data"
check "dpkg -i V2" dpkg -i "$V2DIR"/berth-volplugin_*.deb "$V2DIR"/berth-netplugin_*.deb </dev/null >"$S/logs/dpkg-i3.log" 2>&1
activate vol; activate net
check "docker volume ls lists dbdata again (berth-vol)" bash -c "d volume ls --format '{{.Driver}} {{.Name}}' | grep -qx 'berth-vol dbdata'"
check "dbdata still holds what db wrote before the upgrade" bash -c \
    "d run --rm -v dbdata:/data $TEST_IMAGE sh -c 'head -n 1 /data/stream.log; wc -l < /data/io.log' | tr '\n' ' ' | grep -qE '^1 [0-9]+ \$'"
# The first call netplugin gets here is a CreateEndpoint (as when dockerd restarts containers
# right after boot): it arrives within milliseconds of the start, often before netplugin's
# OVSDB client has connected; netplugin waits for that first connection (it used to fail the
# call at once with "Open vSwitch is not reachable": 1 in 20 activations).
check "the first call after activation, a container start on $NET, succeeds" \
    d run --rm --network "$NET" "$TEST_IMAGE" true
check "a container joins $NET with $DBIP (released by db's removal, network known to netplugin)" \
    wait_for 10 d run --rm --network "$NET" --ip "$DBIP" "$TEST_IMAGE" ip -o addr show eth0
kill -TERM "$vol_APID" "$net_APID"; wait "$vol_APID" "$net_APID" 2>/dev/null

rig_summary test-deb-dockerd
