#!/usr/bin/env bash
# verify-units.sh DEB...: systemd-analyze verify on every unit the packages install, in a scratch
# root made of the packages' files (so ExecStart= finds the real binaries) plus this machine's
# system units (sockets.target, docker.service, ...). Twice: with Open vSwitch's Debian units
# present, and with every openvswitch*/ovs* unit removed, which is also what an EL host without
# the Debian names (or without OVS) looks like to the After=/Wants= lines.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 DEB..." >&2; exit 2; }
command -v systemd-analyze >/dev/null || { echo "verify-units: apt-get install systemd" >&2; exit 2; }
R=$(mktemp -d /tmp/berth-verify-units.XXXXXX)
trap 'rm -rf "$R"' EXIT
for deb in "$@"; do dpkg-deb -x "$deb" "$R"; done
mkdir -p "$R/lib/systemd"
cp -a /lib/systemd/system "$R/lib/systemd/"
units=$(cd "$R" && ls usr/lib/systemd/system/berth-* | sed 's|^|/|')
rc=0
for variant in with-ovs-units without-ovs-units; do
    if [ "$variant" = without-ovs-units ]; then
        rm -f "$R"/lib/systemd/system/openvswitch* "$R"/lib/systemd/system/ovs*
    fi
    # verify exits non-zero on any problem and prints it; systemd 252 prints nothing when clean.
    if out=$(systemd-analyze verify --root="$R" $units 2>&1) && [ -z "$out" ]; then
        echo "systemd-analyze verify ($variant): ok: $(echo $units | xargs -n1 basename | tr '\n' ' ')"
    else
        echo "systemd-analyze verify ($variant): FAIL"; echo "$out"; rc=1
    fi
done
# Control: the same call must catch a broken unit (a verify that passes everything proves nothing).
first=$(echo $units | cut -d' ' -f1)
printf '[Service]\nExecStart=/usr/bin/berth-no-such-binary\nNoSuchKey=1\n' >"$R$(dirname "$first")/berth-broken-control.service"
if systemd-analyze verify --root="$R" "$(dirname "$first")/berth-broken-control.service" >/dev/null 2>&1; then
    echo "systemd-analyze verify: FAIL: did not report a broken unit"; rc=1
else
    echo "systemd-analyze verify: control ok (a broken unit is reported)"
fi
exit $rc
