#!/usr/bin/env python3
"""Builds the .deb of one Berth package with dpkg-deb, from the same definition as the RPM.

    build-deb.py BIN [--version V] [--target TRIPLE] [--out DIR]

BIN is netplugin or volplugin. The files come from packaging/rpm/BIN.toml (the asset list
cargo-generate-rpm reads: same sources, destinations, modes; `config` assets become conffiles);
Debian-only keys (Depends with Debian names, section, description, unit names) come from
packaging/deb/BIN.toml; the maintainer scripts from packaging/deb/{postinst,prerm,postrm}.in.
The version defaults to the workspace's (Cargo.toml) and the Debian revision to the RPM
release, so both packages of one build carry the same version.

Asset handling follows cargo-generate-rpm: `*` in a source is a glob whose matches go into the
dest directory (dest ends with '/'); with --target, sources under target/release/ are read from
target/TRIPLE/release/.
"""
import argparse
import glob
import gzip
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def load(path):
    with open(os.path.join(ROOT, path), "rb") as f:
        return tomllib.load(f)


# Destinations that differ on Debian: zsh completions shipped by packages go to
# vendor-completions (Debian's zsh has it in $fpath; site-functions is EL's and Fedora's).
DEB_DEST = {"/usr/share/zsh/site-functions/": "/usr/share/zsh/vendor-completions/"}


def deb_dest(dest):
    for rpm_dir, deb_dir in DEB_DEST.items():
        if dest.startswith(rpm_dir):
            return deb_dir + dest[len(rpm_dir):]
    return dest


def expand_assets(assets, target):
    """(source path, dest path, mode, is_conffile) for every file, as cargo-generate-rpm does."""
    out = []
    for a in assets:
        if a.get("dir"):
            # An owned directory (cargo-generate-rpm's `dir = true`): dpkg records it anyway.
            out.append((None, a["dest"], int(a.get("mode", "755"), 8), False))
            continue
        src = a["source"]
        if target and src.startswith("target/release/"):
            src = f"target/{target}/release/" + src[len("target/release/"):]
        mode = int(a.get("mode", "644"), 8)
        config = bool(a.get("config", False))
        if "*" in src:
            matches = sorted(glob.glob(os.path.join(ROOT, src)))
            if not matches:
                sys.exit(f"build-deb: no file matches {src}")
            if not a["dest"].endswith("/"):
                sys.exit(f"build-deb: {src}: a glob needs a directory dest ending in /")
            for m in matches:
                out.append((m, a["dest"] + os.path.basename(m), mode, config))
        else:
            path = os.path.join(ROOT, src)
            if not os.path.isfile(path):
                sys.exit(f"build-deb: asset {src} is missing (build first)")
            dest = a["dest"] + os.path.basename(src) if a["dest"].endswith("/") else a["dest"]
            out.append((path, dest, mode, config))
    return out


# Sonames of the packages every Debian/Ubuntu has, and the package holding each.
SHLIB_PACKAGE = {
    "libc.so.6": "libc6", "libm.so.6": "libc6", "libdl.so.2": "libc6", "libpthread.so.0": "libc6",
    "librt.so.1": "libc6", "ld-linux-x86-64.so.2": "libc6", "libgcc_s.so.1": "libgcc-s1",
}


def shlib_depends(paths):
    """Depends for the ELF files among `paths`, as dpkg-shlibdeps would write them for glibc:
    libc6 (>= highest GLIBC_ symbol version), libgcc-s1. Any other library is an error: it
    would need a Depends of its own (packaging/check-glibc.sh fails on it too)."""
    deps = {}
    for path in paths:
        with open(path, "rb") as f:
            if f.read(4) != b"\x7fELF":
                continue
        dyn = subprocess.run(["objdump", "-p", path], capture_output=True, text=True, check=True).stdout
        syms = subprocess.run(["objdump", "-T", path], capture_output=True, text=True, check=True).stdout
        for lib in re.findall(r"^\s+NEEDED\s+(\S+)", dyn, re.M):
            if lib not in SHLIB_PACKAGE:
                sys.exit(f"build-deb: {path} needs {lib}: add its package to SHLIB_PACKAGE / Depends")
            deps.setdefault(SHLIB_PACKAGE[lib], None)
        versions = [tuple(int(x) for x in v.split(".")) for v in re.findall(r"GLIBC_([0-9][0-9.]*)", syms)]
        if versions:
            v = ".".join(map(str, max(versions)))
            cur = deps.get("libc6")
            if cur is None or tuple(map(int, cur.split("."))) < max(versions):
                deps["libc6"] = v
    return [f"{p} (>= {v})" if v else p for p, v in sorted(deps.items())]


def changelog(name, version, maintainer):
    date = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(int(os.environ.get("SOURCE_DATE_EPOCH", time.time()))))
    text = (f"{name} ({version}) unstable; urgency=medium\n\n"
            f"  * Built from the Berth repository; see its history for the changes.\n\n"
            f" -- {maintainer}  {date}\n")
    buf = io.BytesIO()
    # -9n as Debian policy asks: no name, no timestamp in the gzip header (reproducible).
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9, mtime=0, filename="") as g:
        g.write(text.encode())
    return buf.getvalue()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bin", choices=["netplugin", "volplugin"])
    ap.add_argument("--version", help="upstream version (default: [workspace.package] version)")
    ap.add_argument("--target", help="target triple the binaries were built for")
    ap.add_argument("--out", default=os.path.join(ROOT, "target", "deb"))
    ap.add_argument("--compress", default="xz", choices=["xz", "gzip"],
                    help="payload compression (tests use gzip: faster, same contents)")
    args = ap.parse_args()

    rpm = load(f"packaging/rpm/{args.bin}.toml")
    deb = load(f"packaging/deb/{args.bin}.toml")
    version = args.version or load("Cargo.toml")["workspace"]["package"]["version"]
    full_version = f"{version}-{rpm.get('release', '1')}"
    name = rpm["name"]
    maintainer = deb.get("maintainer", "Berth maintainers <berth@example.invalid>")

    files = [(src, deb_dest(dest), mode, config)
             for src, dest, mode, config in expand_assets(rpm["assets"], args.target)]
    with tempfile.TemporaryDirectory(prefix="berth-deb-") as tmp:
        os.chmod(tmp, 0o755)
        for src, dest, mode, _ in files:
            path = tmp + dest
            if src is None:
                os.makedirs(path, mode=mode, exist_ok=True)
                continue
            os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
            shutil.copyfile(src, path)
            os.chmod(path, mode)
        docdir = f"{tmp}/usr/share/doc/{name}"
        os.makedirs(docdir, exist_ok=True)
        with open(f"{docdir}/changelog.Debian.gz", "wb") as f:
            f.write(changelog(name, full_version, maintainer))
        os.chmod(f"{docdir}/changelog.Debian.gz", 0o644)
        for d, _, _ in os.walk(tmp):
            os.chmod(d, 0o755)

        control = os.path.join(tmp, "DEBIAN")
        os.makedirs(control)
        md5 = []
        size = 0
        for d, _, names in os.walk(tmp):
            if d.startswith(control):
                continue
            for n in sorted(names):
                p = os.path.join(d, n)
                size += os.path.getsize(p)
                with open(p, "rb") as f:
                    md5.append(f"{hashlib.md5(f.read()).hexdigest()}  {os.path.relpath(p, tmp)}")
        with open(f"{control}/md5sums", "w") as f:
            f.write("\n".join(sorted(md5, key=lambda l: l[34:])) + "\n")
        conffiles = [dest for _, dest, _, config in files if config]
        if conffiles:
            with open(f"{control}/conffiles", "w") as f:
                f.write("\n".join(conffiles) + "\n")
        description = deb["description"].strip("\n").splitlines()
        body = "\n".join(" " + (l if l.strip() else ".") for l in description)
        with open(f"{control}/control", "w") as f:
            f.write(
                f"Package: {name}\n"
                f"Version: {full_version}\n"
                f"Architecture: amd64\n"
                f"Maintainer: {maintainer}\n"
                f"Installed-Size: {(size + 1023) // 1024}\n"
                f"Depends: {', '.join(shlib_depends([src for src, _, _, _ in files if src]) + deb['depends'])}\n"
                f"Section: {deb.get('section', 'misc')}\n"
                f"Priority: {deb.get('priority', 'optional')}\n"
                f"Homepage: {rpm.get('url', 'https://example.invalid/berth')}\n"
                f"Description: {rpm['summary']}\n{body}\n"
            )
        for script in ("postinst", "prerm", "postrm"):
            with open(os.path.join(ROOT, f"packaging/deb/{script}.in")) as f:
                text = f.read()
            text = (text.replace("@PACKAGE@", name).replace("@SOCKET@", deb["socket"])
                    .replace("@SERVICE@", deb["service"]))
            with open(f"{control}/{script}", "w") as f:
                f.write(text)
            os.chmod(f"{control}/{script}", 0o755)
        for n in ("control", "md5sums", "conffiles"):
            if os.path.exists(f"{control}/{n}"):
                os.chmod(f"{control}/{n}", 0o644)

        os.makedirs(args.out, exist_ok=True)
        out = os.path.join(args.out, f"{name}_{full_version}_amd64.deb")
        subprocess.run(["dpkg-deb", "--root-owner-group", f"-Z{args.compress}", "--build", tmp, out],
                       check=True, stdout=subprocess.DEVNULL)
        print(out)


if __name__ == "__main__":
    main()
