#!/usr/bin/env bash
# test-rpm.sh DIR_V1 DIR_V2: checks the RPMs with rpm -qp and installs, upgrades and erases them in
# scratch roots with rpm --root (Debian's rpm; as root). DIR_V1 holds berth-{net,vol}plugin RPMs,
# DIR_V2 the same packages with a higher version (packaging/check.sh builds both).
#
# Metadata (rpm -qp): Requires with EL names and no GLIBC_ symbol version above 2.28; Provides;
# the config file flagged %config(noreplace); docs flagged %doc; the file list; the scriptlets.
# Scratch roots (rpm --root runs the scriptlets chrooted into the root):
#   A: /bin/sh and systemctl (copied with their libraries, no systemd running, as in an image
#      build): install enables the socket (a sockets.target.wants link), an upgrade keeps an
#      edited config file and the enablement, erase disables, removes every packaged file and
#      leaves the state dir alone;
#   B: /bin/sh only (no systemctl at all): install, upgrade and erase still succeed.
set -uo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 2 ] || { echo "usage: $0 DIR_V1 DIR_V2" >&2; exit 2; }
V1DIR=$1 V2DIR=$2
[ "$(id -u)" = 0 ] || { echo "test-rpm.sh: needs root (chroot scriptlets, mknod)" >&2; exit 2; }
command -v rpm >/dev/null || { echo "test-rpm.sh: apt-get install rpm" >&2; exit 2; }

pass=0 fail=0
ok() { echo "  ok: $*"; pass=$((pass + 1)); }
bad() { echo "  FAIL: $*"; fail=$((fail + 1)); }
check() { local what=$1; shift; if "$@"; then ok "$what"; else bad "$what"; fi; }
step() { echo "== $*"; }
S=$(mktemp -d /tmp/berth-test-rpm.XXXXXX)
trap 'rm -rf "$S"' EXIT

declare -A UNIT=([berth-netplugin]=berth-net [berth-volplugin]=berth-vol)
declare -A BIN=([berth-netplugin]=netplugin [berth-volplugin]=volplugin)
declare -A REQ=([berth-netplugin]="openvswitch" [berth-volplugin]="lvm2 device-mapper-persistent-data xfsprogs e2fsprogs")

for pkg in berth-netplugin berth-volplugin; do
    rpmf=$(ls "$V1DIR/$pkg"-[0-9]*.rpm)
    step "rpm -qp $(basename "$rpmf")"
    rpm -qp --requires "$rpmf" >"$S/req" 2>&1
    rpm -qp --provides "$rpmf" >"$S/prov" 2>&1
    rpm -qp --scripts "$rpmf" >"$S/scripts" 2>&1
    rpm -qp --configfiles "$rpmf" >"$S/conf" 2>&1
    rpm -qp --list "$rpmf" >"$S/list" 2>&1
    rpm -qp --qf '[%{FILEFLAGS:fflags} %{FILEMODES:perms} %{FILENAMES}\n]' "$rpmf" >"$S/flags" 2>&1
    echo "  requires: $(tr '\n' ' ' <"$S/req")"
    echo "  provides: $(tr '\n' ' ' <"$S/prov")"
    for r in ${REQ[$pkg]}; do check "Requires $r" grep -qx "$r" "$S/req"; done
    glibc=$(grep -oE 'GLIBC_[0-9.]+' "$S/req" | sed 's/GLIBC_//' | sort -V | tail -n1)
    check "highest GLIBC_ in Requires is ${glibc:-none} (<= 2.28)" \
        test "$(printf '%s\n2.28\n' "${glibc:-0}" | sort -V | tail -n1)" = 2.28
    check "no Requires on a library outside glibc" \
        bash -c "! grep -E '^lib[^ ]*\.so' '$S/req' | grep -vE '^(libc|libm|libgcc_s|libpthread|libdl|librt|ld-linux-x86-64)\.so'"
    check "Provides $pkg" grep -q "^$pkg = " "$S/prov"
    check "config file /etc/berth/${BIN[$pkg]}.toml" grep -qx "/etc/berth/${BIN[$pkg]}.toml" "$S/conf"
    check "%config(noreplace) flag (cn)" grep -qE "^cn +-rw-r--r-- /etc/berth/${BIN[$pkg]}.toml$" "$S/flags"
    check "%doc flag on the docs" grep -qE "^d +-rw-r--r-- /usr/share/doc/$pkg/docs/operations.md$" "$S/flags"
    check "binary /usr/bin/${BIN[$pkg]} mode 755" grep -qE "^ +-rwxr-xr-x /usr/bin/${BIN[$pkg]}$" "$S/flags"
    for f in "/usr/lib/systemd/system/${UNIT[$pkg]}.socket" "/usr/lib/systemd/system/${UNIT[$pkg]}.service" \
             "/usr/share/doc/$pkg/README.md" "/usr/share/doc/$pkg/copyright"; do
        check "file $f" grep -qx "$f" "$S/list"
    done
    for f in "/usr/share/man/man1/${BIN[$pkg]}.1.gz" "/usr/share/man/man1/${BIN[$pkg]}-serve.1.gz" \
             "/usr/share/bash-completion/completions/${BIN[$pkg]}" "/usr/share/zsh/site-functions/_${BIN[$pkg]}" \
             "/usr/share/fish/vendor_completions.d/${BIN[$pkg]}.fish"; do
        check "file $f" grep -qx "$f" "$S/list"
    done
    check "man pages flagged %doc" grep -qE "^d +-rw-r--r-- /usr/share/man/man1/${BIN[$pkg]}.1.gz$" "$S/flags"
    check "postinstall enables the socket" grep -q "systemctl enable ${UNIT[$pkg]}.socket" "$S/scripts"
    check "preuninstall disables on erase" grep -q "disable ${UNIT[$pkg]}.service ${UNIT[$pkg]}.socket" "$S/scripts"
    check "postuninstall try-restarts the service on upgrade" grep -q "try-restart ${UNIT[$pkg]}.service" "$S/scripts"
    check "no scriptlet removes state" bash -c "! grep -E 'rm .*(/var/lib/berth|-r)' '$S/scripts'"
done

# copy_elf ROOT PATH: a binary and its ldd libraries into ROOT at the same paths.
copy_elf() {
    local r=$1 f=$2 lib
    mkdir -p "$r$(dirname "$f")"; cp -L "$f" "$r$f"
    for lib in $(ldd "$f" | awk '/=> \// { print $3 } /^\t\// { print $1 }'); do
        [ -e "$r$lib" ] || { mkdir -p "$r$(dirname "$lib")"; cp -L "$lib" "$r$lib"; }
    done
}
mkroot() { # mkroot DIR with-systemctl|sh-only
    local r=$1
    mkdir -p "$r"/usr/{bin,sbin,lib,lib64} "$r"/{dev,etc,tmp,var/lib,run}
    for d in bin sbin lib lib64; do ln -sfn "usr/$d" "$r/$d"; done
    mknod -m 666 "$r/dev/null" c 1 3
    copy_elf "$r" "$(readlink -f /bin/sh)"; ln -sfn "$(basename "$(readlink -f /bin/sh)")" "$r/usr/bin/sh"
    copy_elf "$r" "$(command -v rmdir)"   # coreutils: on every EL host
    [ "$2" = with-systemctl ] && copy_elf "$r" "$(command -v systemctl)"
    rpm --root "$r" --initdb
}
rpmi() { local r=$1; shift; rpm --root "$r" --nodeps "$@" >>"$S/rpm.log" 2>&1; }

step "scratch root A: sh + systemctl, no systemd running"
A=$S/rootA; mkroot "$A" with-systemctl
check "rpm --root -i (V1)" rpmi "$A" -i "$V1DIR"/berth-netplugin-[0-9]*.rpm "$V1DIR"/berth-volplugin-[0-9]*.rpm
for pkg in berth-netplugin berth-volplugin; do
    b=${BIN[$pkg]} u=${UNIT[$pkg]}
    for f in /usr/bin/$b /usr/lib/systemd/system/$u.socket /usr/lib/systemd/system/$u.service \
             /etc/berth/$b.toml /usr/share/doc/$pkg/README.md /usr/share/doc/$pkg/docs/volumes.md \
             /usr/share/man/man1/$b.1.gz /usr/share/bash-completion/completions/$b \
             /usr/share/zsh/site-functions/_$b /usr/share/fish/vendor_completions.d/$b.fish; do
        check "A: $f installed" test -f "$A$f"
    done
    check "A: $b.1.gz is gzip and roff (.TH)" bash -c "gzip -t '$A/usr/share/man/man1/$b.1.gz' && zcat '$A/usr/share/man/man1/$b.1.gz' | grep -q '^\.TH $b 1'"
    check "A: %post enabled $u.socket" test -L "$A/etc/systemd/system/sockets.target.wants/$u.socket"
    check "A: the service itself not enabled (socket activation)" test ! -e "$A/etc/systemd/system/multi-user.target.wants/$u.service"
done
mkdir -p "$A/var/lib/berth/vol/images" "$A/var/lib/berth/net"
echo data >"$A/var/lib/berth/vol/images/v1.img"; echo db >"$A/var/lib/berth/net/state.redb"
echo '# local edit' >>"$A/etc/berth/volplugin.toml"
check "rpm --root -U (V2)" rpmi "$A" -U "$V2DIR"/berth-netplugin-[0-9]*.rpm "$V2DIR"/berth-volplugin-[0-9]*.rpm
check "A: upgraded to $(rpm --root "$A" -q berth-volplugin)" bash -c "rpm --root '$A' -q berth-volplugin | grep -qv '$(rpm -qp --qf %{VERSION} "$V1DIR"/berth-volplugin-[0-9]*.rpm)-'"
check "A: edited config kept, no .rpmnew/.rpmsave" bash -c "grep -q '# local edit' '$A/etc/berth/volplugin.toml' && ! ls '$A'/etc/berth/*.rpm* 2>/dev/null"
check "A: socket still enabled after the upgrade" test -L "$A/etc/systemd/system/sockets.target.wants/berth-vol.socket"
check "rpm --root -e" rpmi "$A" -e berth-netplugin berth-volplugin
check "A: %preun disabled the sockets" bash -c "! ls '$A'/etc/systemd/system/sockets.target.wants/berth-* 2>/dev/null"
left=$(cd "$A" && find usr etc \( -path '*berth*' -o -name '*netplugin*' -o -name '*volplugin*' \) ! -path etc/berth ! -name '*.rpmsave' 2>/dev/null)
check "A: no packaged file or directory left${left:+: $left}" test -z "$left"
check "A: the edited config saved as .rpmsave (rpm's rule for modified config), alone in /etc/berth" \
    test "$(ls -A "$A/etc/berth")" = volplugin.toml.rpmsave
check "A: state dirs untouched" bash -c "[ -f '$A/var/lib/berth/vol/images/v1.img' ] && [ -f '$A/var/lib/berth/net/state.redb' ]"

step "scratch root B: /bin/sh only, no systemctl"
B=$S/rootB; mkroot "$B" sh-only
check "B: rpm --root -i (V1)" rpmi "$B" -i "$V1DIR"/berth-netplugin-[0-9]*.rpm "$V1DIR"/berth-volplugin-[0-9]*.rpm
check "B: rpm --root -U (V2)" rpmi "$B" -U "$V2DIR"/berth-netplugin-[0-9]*.rpm "$V2DIR"/berth-volplugin-[0-9]*.rpm
check "B: rpm --root -e" rpmi "$B" -e berth-netplugin berth-volplugin
left=$(cd "$B" && find usr etc -path '*berth*' 2>/dev/null)
check "B: nothing named berth left (config unedited: no .rpmsave)${left:+: $left}" test -z "$left"
check "B: no scriptlet error in rpm's output" bash -c "! grep -iE 'scriptlet failed|error' '$S/rpm.log'"
[ "$fail" -eq 0 ] || { echo "--- rpm output"; cat "$S/rpm.log"; }

echo "test-rpm: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
