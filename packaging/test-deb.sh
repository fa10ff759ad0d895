#!/usr/bin/env bash
# test-deb.sh: install, socket-activated start, upgrade while running, remove and purge of the
# berth-volplugin and berth-netplugin .debs on this machine (as root; no running systemd needed).
#
#  1. builds version V1 and a newer V2 of both .debs (packaging/build-deb.py; same binaries,
#     bumped version) unless DEB_V1_DIR/DEB_V2_DIR name prebuilt ones;
#  2. dpkg -i V1: files, conffiles, socket enabled (deb-systemd-helper), no daemon started;
#  3. each daemon under systemd-socket-activate on a private plugin socket: the client's call
#     arrives while only the activator listens, the call starts the daemon (/proc/PID/exe
#     changes from systemd-socket-activate to the packaged binary) and is answered;
#     volplugin creates and mounts a volume, a writer keeps writing into it; netplugin
#     allocates a pool and an address;
#  4. a local edit of both conffiles, then dpkg -i V2 while the daemons run: they keep serving,
#     the edit is kept; then the restart the package's postinst does on a systemd host
#     (try-restart of the service), done here by hand: stop the old daemon by pid, activate the
#     new one on the same socket path the same way. State kept: the volume is still listed and
#     mounted (and the writer never stopped), the address is still taken;
#  5. dpkg -r, then dpkg -P: every packaged file is gone (the conffiles after purge), nothing
#     named berth is left under /etc, /usr, /lib, /var/lib/systemd, /var/lib/dpkg/info; the
#     state dirs with the volume image stay on disk.
#
# Isolation: private --state-dir / --plugin-dir / --admin-socket, --metrics off, an OVSDB and a
# Docker socket path that do not exist: never /run/docker/plugins, the system OVS or a dockerd.
# Only processes this script started are stopped, by pid. It refuses to run when berth packages
# are installed already. Prints "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "test-deb.sh: needs root (dpkg -i)" >&2; exit 2; }
for t in dpkg-deb systemd-socket-activate curl deb-systemd-helper; do
    command -v "$t" >/dev/null || { echo "test-deb.sh: $t missing (apt-get install systemd curl init-system-helpers)" >&2; exit 2; }
done
TRIPLE=x86_64-unknown-linux-gnu
PKGS=(berth-volplugin berth-netplugin)
for p in "${PKGS[@]}"; do
    if dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -qv '^unknown\|not-installed'; then
        echo "test-deb.sh: $p is installed already; remove it first (dpkg -P $p)" >&2; exit 2
    fi
done
for f in /etc/berth/volplugin.toml /etc/berth/netplugin.toml; do
    [ -e "$f" ] && { echo "test-deb.sh: $f exists and is no package's; move it away first" >&2; exit 2; }
done

pass=0 fail=0
ok() { echo "  ok: $*"; pass=$((pass + 1)); }
bad() { echo "  FAIL: $*"; fail=$((fail + 1)); }
check() { local what=$1; shift; if "$@"; then ok "$what"; else bad "$what"; fi; }
step() { echo "== $*"; }

S=$(mktemp -d /tmp/berth-test-deb.XXXXXX)
chmod 0755 "$S"
PIDS=()
WRITER=
cleanup() {
    set +e
    [ -n "$WRITER" ] && kill "$WRITER" 2>/dev/null && wait "$WRITER" 2>/dev/null
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
    # Mounts the daemon left under our private state dir (volplugin's loop devices auto-clear).
    grep -o " $S/[^ ]*" /proc/self/mountinfo | sort -r | while read -r m; do umount -l "$m"; done
    for p in "${PKGS[@]}"; do
        dpkg-query -W "$p" >/dev/null 2>&1 && dpkg -P "$p" >/dev/null 2>&1
    done
    rm -rf "$S"
}
trap cleanup EXIT

V1=$(python3 -c 'import tomllib; print(tomllib.load(open("Cargo.toml","rb"))["workspace"]["package"]["version"])')
V2="$V1+upgrade1"
step "build V1 $V1 and V2 $V2"
if [ -n "${DEB_V1_DIR:-}" ] && [ -n "${DEB_V2_DIR:-}" ]; then
    cp "$DEB_V1_DIR"/berth-*.deb "$S/" ; mkdir -p "$S/v2"; cp "$DEB_V2_DIR"/berth-*.deb "$S/v2/"
    mkdir -p "$S/v1"; mv "$S"/berth-*.deb "$S/v1/"
else
    [ -x "target/$TRIPLE/release/volplugin" ] && [ -x "target/$TRIPLE/release/netplugin" ] \
        && [ -f target/pkg-gen/netplugin/man/netplugin.1.gz ] && [ -f target/pkg-gen/volplugin/man/volplugin.1.gz ] \
        || bash packaging/build-bins.sh
    for b in volplugin netplugin; do
        python3 packaging/build-deb.py "$b" --target "$TRIPLE" --version "$V1" --out "$S/v1" --compress gzip >/dev/null || exit 1
        python3 packaging/build-deb.py "$b" --target "$TRIPLE" --version "$V2" --out "$S/v2" --compress gzip >/dev/null || exit 1
    done
fi
ls "$S"/v1/*.deb "$S"/v2/*.deb

# Their Depends, from the packages themselves; apt only for what is missing.
missing=()
for deb in "$S"/v1/*.deb; do
    for d in $(dpkg-deb -f "$deb" Depends | sed 's/ *([^)]*)//g' | tr -d ' ' | tr ',' ' '); do
        dpkg-query -W -f='${Status}' "$d" 2>/dev/null | grep -q 'ok installed' || missing+=("$d")
    done
done
if [ ${#missing[@]} -gt 0 ]; then
    step "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || exit 1
fi

# What exists before, to compare after purge.
snapshot() { find /etc /usr /lib /var/lib/systemd /var/lib/dpkg/info -xdev 2>/dev/null | grep -i berth | sort; }
snapshot > "$S/before.txt"

step "install V1 (dpkg -i)"
check "dpkg -i V1" dpkg -i "$S"/v1/berth-volplugin_*.deb "$S"/v1/berth-netplugin_*.deb >"$S/dpkg-i1.log" 2>&1
for p in "${PKGS[@]}"; do
    check "$p $V1-1 installed" test "$(dpkg-query -W -f='${Status} ${Version}' "$p")" = "install ok installed $V1-1"
done
for f in /usr/bin/volplugin /usr/bin/netplugin \
         /usr/lib/systemd/system/berth-vol.socket /usr/lib/systemd/system/berth-vol.service \
         /usr/lib/systemd/system/berth-net.socket /usr/lib/systemd/system/berth-net.service \
         /etc/berth/volplugin.toml /etc/berth/netplugin.toml \
         /usr/share/doc/berth-volplugin/README.md /usr/share/doc/berth-netplugin/docs/operations.md \
         /usr/share/doc/berth-netplugin/copyright /usr/share/doc/berth-volplugin/changelog.Debian.gz; do
    check "installed $f" test -e "$f"
done
check "conffiles of berth-volplugin" bash -c "dpkg-query -W -f='\${Conffiles}' berth-volplugin | grep -q '/etc/berth/volplugin.toml'"
check "conffiles of berth-netplugin" bash -c "dpkg-query -W -f='\${Conffiles}' berth-netplugin | grep -q '/etc/berth/netplugin.toml'"
for u in berth-vol berth-net; do
    check "$u.socket enabled (sockets.target.wants link)" test -L "/etc/systemd/system/sockets.target.wants/$u.socket"
done
# Man pages, completions and --version (packaging/build-bins.sh generates them from the CLI).
man_ok() { # man_ok BIN: the page renders without groff warnings and names BIN-serve(1)
    local page=/usr/share/man/man1/$1.1.gz err
    err=$(LC_ALL=C MANWIDTH=80 man --warnings -l "$page" 2>&1 >/dev/null) || return 1
    [ -z "$err" ] || { echo "$err"; return 1; }
    LC_ALL=C MANWIDTH=80 man -l "$page" 2>/dev/null | grep -q "$1-serve(1)"
}
DOCS=()
for b in volplugin netplugin; do
    DOCS+=(/usr/share/man/man1/$b.1.gz /usr/share/man/man1/$b-serve.1.gz
           /usr/share/bash-completion/completions/$b /usr/share/zsh/vendor-completions/_$b
           /usr/share/fish/vendor_completions.d/$b.fish)
done
for f in "${DOCS[@]}"; do check "installed $f" test -s "$f"; done
for b in volplugin netplugin; do
    check "$b.1.gz is gzip and roff (.TH)" bash -c "gzip -t /usr/share/man/man1/$b.1.gz && zcat /usr/share/man/man1/$b.1.gz | grep -q '^\.TH $b 1'"
    # man -l renders the page as man(1) does (groff, --warnings); any warning fails the check.
    command -v man >/dev/null && check "man -l renders $b.1.gz without warnings, naming $b-serve(1)" man_ok "$b"
    check "bash completion of $b parses (bash -n) and completes $b" \
        bash -c "bash -n /usr/share/bash-completion/completions/$b && grep -q 'complete .* $b' /usr/share/bash-completion/completions/$b"
    check "$b --version: $(/usr/bin/$b --version)" bash -c "/usr/bin/$b --version | grep -qE '^$b $V1 \(git [^)]+\)\$'"
done
running_from() { local p; for p in /proc/[0-9]*; do [ "$(readlink "$p/exe" 2>/dev/null)" = "$1" ] && echo "${p#/proc/}"; done; }
check "no daemon started by the install (no systemd here)" test -z "$(running_from /usr/bin/volplugin)$(running_from /usr/bin/netplugin)"

mkdir -p "$S/plugins" "$S/run" "$S/ovs"
call() { # call SOCKET PATH [BODY]: POST like dockerd does; prints the body, fails on non-200.
    curl -sS --fail-with-body --max-time 60 --unix-socket "$1" -X POST \
        -H 'Content-Type: application/vnd.docker.plugins.v1.2+json' -d "${3:-{\}}" "http://plugin$2"
}
VOL_ARGS=(serve --state-dir "$S/vol-state" --plugin-dir "$S/plugins" --admin-socket "$S/run/volplugin.sock"
          --metrics off --docker-socket "$S/no-docker.sock")
NET_ARGS=(serve --state-dir "$S/net-state" --plugin-dir "$S/plugins" --admin-socket "$S/run/netplugin.sock"
          --metrics off --docker-socket "$S/no-docker.sock" --ovsdb "unix:$S/ovs/db.sock"
          --ovs-rundir "$S/ovs" --host-id berth-test-deb)
# activate BIN SOCKET ARGS...: systemd-socket-activate listening on SOCKET, running BIN at the
# first connection (it execs: the daemon keeps the activator's pid). Sets $APID.
activate() {
    local bin=$1 sock=$2; shift 2
    rm -f "$sock"
    systemd-socket-activate -l "$sock" -- "$bin" "$@" >>"$S/$(basename "$bin").log" 2>&1 &
    APID=$!
    PIDS+=("$APID")
    for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
}
exe() { readlink "/proc/$1/exe" 2>/dev/null; }

step "start through socket activation (V1)"
VS=$S/plugins/berth-vol.sock NS=$S/plugins/berth-net.sock
activate /usr/bin/volplugin "$VS" "${VOL_ARGS[@]}"; VPID=$APID
activate /usr/bin/netplugin "$NS" "${NET_ARGS[@]}"; NPID=$APID
check "berth-vol.sock listening, daemon not started yet" bash -c "[ -S '$VS' ] && [ \"\$(readlink /proc/$VPID/exe)\" != /usr/bin/volplugin ]"
check "berth-net.sock listening, daemon not started yet" bash -c "[ -S '$NS' ] && [ \"\$(readlink /proc/$NPID/exe)\" != /usr/bin/netplugin ]"
out=$(call "$VS" /Plugin.Activate) ; check "volplugin activated by the first call: $out" grep -q VolumeDriver <<<"$out"
check "volplugin now runs as pid $VPID ($(exe $VPID))" test "$(exe $VPID)" = /usr/bin/volplugin
out=$(call "$NS" /Plugin.Activate) ; check "netplugin activated by the first call: $out" grep -q IpamDriver <<<"$out"
check "netplugin now runs as pid $NPID ($(exe $NPID))" test "$(exe $NPID)" = /usr/bin/netplugin
out=$(call "$NS" /IpamDriver.GetCapabilities); check "IpamDriver.GetCapabilities: $out" grep -q RequiresMACAddress <<<"$out"
out=$(call "$NS" /NetworkDriver.GetCapabilities); check "NetworkDriver.GetCapabilities: $out" grep -q Scope <<<"$out"
out=$(call "$VS" /VolumeDriver.Create '{"Name":"pkgtest1","Opts":{"size":"64M","fs":"ext4"}}'); check "VolumeDriver.Create: $out" test $? -eq 0
out=$(call "$VS" /VolumeDriver.Mount '{"Name":"pkgtest1","ID":"c0ffee"}'); check "VolumeDriver.Mount: $out" test $? -eq 0
MP=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1]).get("Mountpoint",""))' "$out" 2>/dev/null)
check "volume mounted at $MP" mountpoint -q "$MP"
# IO that must continue across the upgrade: a writer appending a line every 0.1 s.
( i=0; while :; do i=$((i + 1)); echo "$i" >>"$MP/io.log"; sleep 0.1; done ) &
WRITER=$!
out=$(call "$NS" /IpamDriver.RequestPool '{"AddressSpace":"","Pool":"10.231.9.0/24","SubPool":"","Options":{},"V6":false}')
check "IpamDriver.RequestPool: $out" grep -q PoolID <<<"$out"
POOL=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["PoolID"])' "$out" 2>/dev/null)
out=$(call "$NS" /IpamDriver.RequestAddress "{\"PoolID\":\"$POOL\",\"Address\":\"10.231.9.50\",\"Options\":{}}")
check "IpamDriver.RequestAddress 10.231.9.50: $out" grep -q '10.231.9.50' <<<"$out"

step "upgrade to V2 (dpkg -i) while the daemons run"
for f in /etc/berth/volplugin.toml /etc/berth/netplugin.toml; do
    echo '# local edit by test-deb.sh: must survive the upgrade' >>"$f"
done
lines_before=$(wc -l <"$MP/io.log")
check "dpkg -i V2" dpkg -i --force-confdef --force-confold "$S"/v2/berth-volplugin_*.deb "$S"/v2/berth-netplugin_*.deb >"$S/dpkg-i2.log" 2>&1
for p in "${PKGS[@]}"; do
    check "$p $V2-1 installed" test "$(dpkg-query -W -f='${Status} ${Version}' "$p")" = "install ok installed $V2-1"
done
for f in /etc/berth/volplugin.toml /etc/berth/netplugin.toml; do
    check "local edit of $f kept" grep -q 'local edit by test-deb.sh' "$f"
done
check "no .dpkg-new/.dpkg-dist conffile left" bash -c '! ls /etc/berth/*.dpkg-* >/dev/null 2>&1'
out=$(call "$VS" /VolumeDriver.Get '{"Name":"pkgtest1"}'); check "old volplugin still serving during the upgrade" grep -q pkgtest1 <<<"$out"
out=$(call "$NS" /Plugin.Activate); check "old netplugin still serving during the upgrade" grep -q IpamDriver <<<"$out"
check "old daemons' binaries were replaced on disk" bash -c "readlink /proc/$VPID/exe | grep -q deleted && readlink /proc/$NPID/exe | grep -q deleted"

step "restart onto V2 (what the postinst's try-restart does under systemd)"
kill "$VPID" "$NPID"; wait "$VPID" "$NPID" 2>/dev/null
activate /usr/bin/volplugin "$VS" "${VOL_ARGS[@]}"; VPID=$APID
activate /usr/bin/netplugin "$NS" "${NET_ARGS[@]}"; NPID=$APID
out=$(call "$VS" /VolumeDriver.List); check "V2 volplugin activated by a call, lists the volume: $out" grep -q pkgtest1 <<<"$out"
check "V2 volplugin is the new binary" test "$(exe $VPID)" = /usr/bin/volplugin
out=$(call "$VS" /VolumeDriver.Get '{"Name":"pkgtest1"}'); check "volume still mounted with its mountpoint: $out" grep -q "$MP" <<<"$out"
check "volume mount untouched by the restart" mountpoint -q "$MP"
sleep 0.5
lines_after=$(wc -l <"$MP/io.log")
check "IO into the volume continued across upgrade and restart ($lines_before -> $lines_after lines)" \
    bash -c "kill -0 $WRITER && [ $lines_after -gt $lines_before ] && [ \"\$(tail -n1 '$MP/io.log')\" -ge $lines_after ]"
out=$(call "$NS" /Plugin.Activate); check "V2 netplugin activated by a call" grep -q IpamDriver <<<"$out"
check "V2 netplugin is the new binary" test "$(exe $NPID)" = /usr/bin/netplugin
out=$(curl -sS --max-time 60 --unix-socket "$NS" -X POST -d "{\"PoolID\":\"$POOL\",\"Address\":\"10.231.9.50\",\"Options\":{}}" http://plugin/IpamDriver.RequestAddress)
check "netplugin state kept: 10.231.9.50 is still taken ($out)" grep -q Err <<<"$out"
out=$(call "$NS" /IpamDriver.RequestAddress "{\"PoolID\":\"$POOL\",\"Address\":\"\",\"Options\":{}}")
check "and the pool still allocates: $out" grep -q '10.231.9.' <<<"$out"

step "stop the daemons, remove and purge"
kill "$WRITER"; wait "$WRITER" 2>/dev/null; WRITER=
out=$(call "$VS" /VolumeDriver.Unmount '{"Name":"pkgtest1","ID":"c0ffee"}'); check "VolumeDriver.Unmount" test $? -eq 0
check "volume unmounted" bash -c "! mountpoint -q '$MP'"
kill "$VPID" "$NPID"; wait "$VPID" "$NPID" 2>/dev/null
check "dpkg -r" dpkg -r "${PKGS[@]}" >"$S/dpkg-r.log" 2>&1
for f in /usr/bin/volplugin /usr/bin/netplugin /usr/lib/systemd/system/berth-vol.socket /usr/lib/systemd/system/berth-net.service /usr/share/doc/berth-volplugin; do
    check "removed: $f" test ! -e "$f"
done
for f in "${DOCS[@]}"; do check "removed: $f" test ! -e "$f"; done
check "dpkg -r keeps the conffiles (Debian policy)" test -f /etc/berth/volplugin.toml -a -f /etc/berth/netplugin.toml
check "socket disabled" test ! -e /etc/systemd/system/sockets.target.wants/berth-vol.socket
check "dpkg -P" dpkg -P "${PKGS[@]}" >"$S/dpkg-p.log" 2>&1
check "purge removed the conffiles and /etc/berth" test ! -e /etc/berth
snapshot > "$S/after.txt"
left=$(comm -13 "$S/before.txt" "$S/after.txt")
check "nothing named berth left under /etc /usr /lib /var/lib/systemd /var/lib/dpkg/info${left:+: $left}" test -z "$left"
check "volplugin state kept: meta.redb" test -s "$S/vol-state/meta.redb"
check "volplugin state kept: the volume's image ($(ls "$S/vol-state/images" 2>/dev/null | tr '\n' ' '))" \
    bash -c "ls '$S/vol-state/images' | grep -q pkgtest1"
check "netplugin state kept: state.redb" test -s "$S/net-state/state.redb"

echo "test-deb: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
