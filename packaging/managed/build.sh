#!/usr/bin/env bash
# build.sh: builds the managed-plugin bundles (for `docker plugin create NAME DIR`) into
# target/managed/berth-vol/ and target/managed/berth-net/: config.json (packaging/managed/*/)
# and a rootfs with only what each daemon needs:
#   berth-net: /usr/bin/netplugin and its libraries (glibc);
#   berth-vol: /usr/bin/volplugin and the tools it runs (mkfs.xfs, xfs_admin + xfs_db, xfs_growfs, resize2fs, e2fsck and the
#              /bin/sh it runs under, mkfs.ext4, lvm, thin_check), each with its ldd libraries,
#              plus /etc/mke2fs.conf and /etc/lvm/lvm.conf;
# then runs check-bundle.py on both. The tools and libraries are this Debian's (the builder's);
# the daemons are the glibc-2.28 builds of packaging/build-bins.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
TRIPLE=x86_64-unknown-linux-gnu
OUT=target/managed
[ -x "target/$TRIPLE/release/netplugin" ] && [ -x "target/$TRIPLE/release/volplugin" ] \
    || bash packaging/build-bins.sh
for t in mkfs.xfs xfs_db xfs_growfs mkfs.ext4 resize2fs e2fsck lvm thin_check; do
    command -v "$t" >/dev/null || PATH=/usr/sbin:/sbin:$PATH command -v "$t" >/dev/null || {
        echo "build.sh: $t missing: apt-get install xfsprogs e2fsprogs lvm2 thin-provisioning-tools" >&2; exit 1; }
done
export PATH=/usr/sbin:/usr/bin:/sbin:/bin

# skeleton ROOT: a merged-/usr tree (bin, sbin, lib, lib64 are links into usr/, as on Debian 12
# and EL 9), with the mount points the runtime and config.json need.
skeleton() {
    local r=$1
    mkdir -p "$r"/usr/{bin,sbin,lib,lib64} "$r"/{dev,proc,sys,etc,tmp,run/docker/plugins,run/berth}
    for d in bin sbin lib lib64; do ln -sfn "usr/$d" "$r/$d"; done
    chmod 1777 "$r/tmp"
}
# add_file ROOT HOSTPATH [DEST]: copies a file (dereferenced) to ROOT/DEST (default: same path).
add_file() {
    local r=$1 src=$2 dest=${3:-$2}
    mkdir -p "$r$(dirname "$dest")"
    cp -L --preserve=mode "$src" "$r$dest"
}
# add_elf ROOT HOSTPATH [DEST]: the file plus every library ldd resolves for it, and the loader.
add_elf() {
    local r=$1 src=$2 dest=${3:-$2} lib
    add_file "$r" "$src" "$dest"
    ldd "$src" | awk '/=> \// { print $3 } /^\t\// { print $1 }' | while read -r lib; do
        [ -e "$r$lib" ] || add_file "$r" "$lib"
    done
}

rm -rf "$OUT"
mkdir -p "$OUT"

# berth-net
r=$OUT/berth-net/rootfs
skeleton "$r"
cp packaging/managed/berth-net/config.json "$OUT/berth-net/"
add_elf "$r" "target/$TRIPLE/release/netplugin" /usr/bin/netplugin
mkdir -p "$r/var/lib/berth/net" "$r/var/run/openvswitch"
: > "$r/var/run/docker.sock"

# berth-vol
r=$OUT/berth-vol/rootfs
skeleton "$r"
cp packaging/managed/berth-vol/config.json "$OUT/berth-vol/"
add_elf "$r" "target/$TRIPLE/release/volplugin" /usr/bin/volplugin
# Tools land in /usr/sbin whatever the builder's layout; multi-call binaries (mke2fs as
# mkfs.ext4, pdata_tools as thin_check) are copied under the name they are called by.
for t in mkfs.xfs xfs_db xfs_growfs mkfs.ext4 resize2fs e2fsck lvm thin_check; do
    add_elf "$r" "$(command -v "$t")" "/usr/sbin/$t"
done
add_file "$r" "$(command -v xfs_admin)" /usr/sbin/xfs_admin   # a shell script: runs xfs_db
add_elf "$r" "$(readlink -f /bin/sh)" /usr/bin/sh
add_file "$r" /etc/mke2fs.conf
[ -f /etc/lvm/lvm.conf ] && add_file "$r" /etc/lvm/lvm.conf
mkdir -p "$r/var/lib/berth/vol" "$r/mnt/volumes" "$r/sys/fs/cgroup" "$r/run/lvm" "$r/var/run"
: > "$r/var/run/docker.sock"

for b in berth-net berth-vol; do
    echo "$OUT/$b: $(find "$OUT/$b/rootfs" -type f | wc -l) files, $(du -sh "$OUT/$b/rootfs" | cut -f1)"
done
python3 packaging/managed/check-bundle.py "$OUT/berth-vol" "$OUT/berth-net"
