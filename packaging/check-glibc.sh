#!/usr/bin/env bash
# check-glibc.sh BINARY...: prints, for each ELF binary, the highest GLIBC_ symbol version it
# requires and the shared libraries it needs (DT_NEEDED), and fails when
#   - a binary requires a GLIBC_ version above $MAX_GLIBC (default 2.28: EL 8; EL 9 has 2.34),
#   - or needs a library outside the glibc set below, which every EL 8/9 and Debian/Ubuntu
#     host has under the same soname (anything else would need a Requires: of its own).
# Run in CI on the binaries that go into the packages (packaging/check.sh does).
set -euo pipefail
MAX_GLIBC=${MAX_GLIBC:-2.28}
# The sonames of glibc itself (the glibc package on EL, libc6 on Debian).
ALLOWED_NEEDED='^(libc\.so\.6|libm\.so\.6|libdl\.so\.2|libpthread\.so\.0|librt\.so\.1|libgcc_s\.so\.1|ld-linux-x86-64\.so\.2)$'

[ $# -ge 1 ] || { echo "usage: $0 BINARY..." >&2; exit 2; }
command -v objdump >/dev/null || { echo "check-glibc: objdump (binutils) is needed" >&2; exit 2; }

# version_gt A B: true when dotted version A > B.
version_gt() { [ "$1" != "$2" ] && [ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | tail -n1)" = "$1" ]; }

fail=0
for bin in "$@"; do
    if [ ! -f "$bin" ]; then echo "check-glibc: $bin: no such file" >&2; fail=1; continue; fi
    # Version references of the dynamic symbols (GLIBC_2.x, GLIBC_PRIVATE is never allowed).
    versions=$(objdump -T "$bin" | grep -oE 'GLIBC_[0-9A-Z_.]+' | sed 's/^GLIBC_//' | sort -uV || true)
    if [ -z "$versions" ]; then
        if objdump -p "$bin" | grep -q 'NEEDED'; then
            echo "$bin: dynamically linked but no GLIBC_ versions found" >&2; fail=1; continue
        fi
        echo "$bin: static (no GLIBC_ requirement)"; continue
    fi
    if grep -qx PRIVATE <<<"$versions"; then
        echo "$bin: FAIL: uses GLIBC_PRIVATE symbols (tied to one glibc build)"; fail=1
    fi
    highest=$(grep -v PRIVATE <<<"$versions" | tail -n1)
    needed=$(objdump -p "$bin" | awk '$1 == "NEEDED" { print $2 }' | tr '\n' ' ')
    status=ok
    version_gt "$highest" "$MAX_GLIBC" && { status="FAIL (above $MAX_GLIBC)"; fail=1; }
    echo "$bin: highest GLIBC_$highest: $status; NEEDED: ${needed:-none}"
    if [ "$status" != ok ]; then
        # Name the symbols that need more than the limit: they tell which code pulls them in.
        objdump -T "$bin" | grep -oE 'GLIBC_[0-9.]+\)? +[^ ]+$' | while read -r v sym; do
            v=${v#GLIBC_}; v=${v%)}
            if version_gt "$v" "$MAX_GLIBC"; then echo "    needs GLIBC_$v: $sym"; fi
        done || true
    fi
    for lib in $needed; do
        if ! [[ $lib =~ $ALLOWED_NEEDED ]]; then
            echo "$bin: FAIL: needs $lib, not part of glibc (the packages would have to require it)"; fail=1
        fi
    done
done
exit $fail
