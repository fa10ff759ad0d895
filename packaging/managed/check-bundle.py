#!/usr/bin/env python3
"""Static checks of managed-plugin bundles (DIR/config.json + DIR/rootfs), no dockerd needed.

    check-bundle.py DIR...

For each bundle:
  - config.json is valid JSON with the fields Docker's plugin config needs, and the interface
    types and socket name of the daemon (berth-vol: docker.volumedriver/1.0 on berth-vol.sock;
    berth-net: docker.networkdriver/1.0 + docker.ipamdriver/1.0 on berth-net.sock);
  - every path the config names exists in the rootfs: the entrypoint (executable), the
    workdir, every mount destination, the propagatedMount, the PATH directories;
  - the tools the daemon runs are on that PATH in the rootfs (volplugin: mkfs.xfs, xfs_admin,
    xfs_db, mkfs.ext4, lvm, thin_check);
  - every ELF file's interpreter and DT_NEEDED libraries are in the rootfs, and every script's
    #! interpreter;
  - as root, each binary starts inside the rootfs (chroot; prints its version or help): the
    libraries are not only present but loadable.
Exits non-zero listing every failure.
"""
import json
import os
import re
import subprocess
import sys

EXPECT = {
    "berth-vol": {
        "types": ["docker.volumedriver/1.0"],
        "socket": "berth-vol.sock",
        "tools": ["mkfs.xfs", "xfs_admin", "xfs_db", "xfs_growfs", "mkfs.ext4", "resize2fs",
                  "e2fsck", "lvm", "thin_check"],
        "caps": ["CAP_SYS_ADMIN"],
        "propagated": True,
        "smoke": [["/usr/bin/volplugin", "--help"], ["/usr/sbin/mkfs.xfs", "-V"],
                  ["/usr/sbin/xfs_admin", "-V"], ["/usr/sbin/mkfs.ext4", "-V"],
                  ["/usr/sbin/lvm", "version"], ["/usr/sbin/thin_check", "-V"]],
    },
    "berth-net": {
        "types": ["docker.networkdriver/1.0", "docker.ipamdriver/1.0"],
        "socket": "berth-net.sock",
        "tools": [],
        "caps": ["CAP_NET_ADMIN"],
        "propagated": False,
        "smoke": [["/usr/bin/netplugin", "--help"]],
    },
}
LIBDIRS = ["/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu", "/usr/lib64", "/lib64",
           "/usr/lib", "/lib"]


def resolve(root, path, depth=0):
    """Host path of `path` inside `root`, following symlinks within the root (absolute links
    are relative to the root, as in a chroot). None when it does not exist."""
    if depth > 40:
        return None
    parts = [p for p in path.split("/") if p]
    cur = root
    for i, part in enumerate(parts):
        nxt = os.path.join(cur, part)
        if os.path.islink(nxt):
            target = os.readlink(nxt)
            rest = "/".join(parts[i + 1:])
            if target.startswith("/"):
                base = target
            else:
                base = os.path.join("/" + os.path.relpath(cur, root), target)
            return resolve(root, os.path.normpath(base + ("/" + rest if rest else "")), depth + 1)
        if not os.path.lexists(nxt):
            return None
        cur = nxt
    return cur


def elf_info(path):
    """(interpreter, [needed], [runpath dirs]) of an ELF file, or None when not ELF."""
    with open(path, "rb") as f:
        if f.read(4) != b"\x7fELF":
            return None
    out = subprocess.run(["objdump", "-p", path], capture_output=True, text=True).stdout
    needed = re.findall(r"^\s+NEEDED\s+(\S+)", out, re.M)
    runpath = []
    for m in re.findall(r"^\s+(?:RUNPATH|RPATH)\s+(\S+)", out, re.M):
        runpath += m.split(":")
    interp = None
    hdr = subprocess.run(["readelf", "-l", path], capture_output=True, text=True).stdout
    m = re.search(r"Requesting program interpreter: ([^\]]+)\]", hdr)
    if m:
        interp = m.group(1)
    return interp, needed, runpath


def check(bundle):
    errors = []
    name = os.path.basename(os.path.normpath(bundle))
    exp = EXPECT.get(name)
    if exp is None:
        return [f"{bundle}: unknown bundle name {name} (expected one of {list(EXPECT)})"]
    root = os.path.join(bundle, "rootfs")
    try:
        with open(os.path.join(bundle, "config.json")) as f:
            cfg = json.load(f)
    except (OSError, ValueError) as e:
        return [f"{bundle}/config.json: {e}"]

    for key in ("description", "entrypoint", "interface", "network", "linux", "mounts"):
        if key not in cfg:
            errors.append(f"config.json: no {key}")
    iface = cfg.get("interface", {})
    if iface.get("types") != exp["types"]:
        errors.append(f"interface.types {iface.get('types')} != {exp['types']}")
    if iface.get("socket") != exp["socket"]:
        errors.append(f"interface.socket {iface.get('socket')} != {exp['socket']}")
    if cfg.get("network", {}).get("type") != "host":
        errors.append("network.type is not host (the plugins work in the host namespace)")
    caps = cfg.get("linux", {}).get("capabilities", [])
    for c in exp["caps"]:
        if c not in caps:
            errors.append(f"linux.capabilities lacks {c}")
    for c in caps:
        if not re.fullmatch(r"CAP_[A-Z_]+", c):
            errors.append(f"linux.capabilities: {c} is not a capability name")
    ep = cfg.get("entrypoint", [])
    if not ep:
        errors.append("entrypoint is empty")
    else:
        p = resolve(root, ep[0])
        if not p or not os.path.isfile(p) or not os.access(p, os.X_OK):
            errors.append(f"entrypoint {ep[0]} is not an executable file in the rootfs")
        if "--plugin-dir" not in ep or ep[ep.index("--plugin-dir") + 1] != "/run/docker/plugins":
            errors.append("entrypoint must serve in /run/docker/plugins (where Docker looks for the socket)")
    if cfg.get("workdir") and not resolve(root, cfg["workdir"]):
        errors.append(f"workdir {cfg['workdir']} missing in the rootfs")
    for m in cfg.get("mounts", []):
        for key in ("destination", "type"):
            if key not in m:
                errors.append(f"mount {m.get('name')}: no {key}")
        if m.get("type") == "bind" and "rbind" not in m.get("options", []) and "bind" not in m.get("options", []):
            errors.append(f"mount {m.get('name')}: a bind mount needs the rbind option")
        if "destination" in m and not resolve(root, m["destination"]):
            errors.append(f"mount {m.get('name')}: destination {m['destination']} missing in the rootfs")
    prop = cfg.get("propagatedMount", "")
    if exp["propagated"]:
        if not prop:
            errors.append("no propagatedMount (volume mounts would not reach dockerd)")
        elif not resolve(root, prop) or not os.path.isdir(resolve(root, prop)):
            errors.append(f"propagatedMount {prop} is not a directory in the rootfs")
        elif "--mount-root" not in ep or ep[ep.index("--mount-root") + 1] != prop:
            errors.append(f"--mount-root in the entrypoint must be the propagatedMount {prop}")
    env = {e["name"]: e.get("value", "") for e in cfg.get("env", [])}
    path_dirs = env.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin").split(":")
    if exp["tools"]:
        if "PATH" not in env:
            errors.append("env has no PATH: the tools would be searched in the runtime's default")
        for d in env.get("PATH", "").split(":"):
            if not resolve(root, d):
                errors.append(f"PATH dir {d} missing in the rootfs")
    for tool in exp["tools"]:
        found = [d for d in path_dirs
                 if (p := resolve(root, f"{d}/{tool}")) and os.path.isfile(p) and os.access(p, os.X_OK)]
        if not found:
            errors.append(f"tool {tool} not found on PATH {':'.join(path_dirs)} in the rootfs")

    # Every ELF's loader and libraries, every script's interpreter.
    nfiles = 0
    for d, _, names in os.walk(root):
        for n in names:
            host = os.path.join(d, n)
            if os.path.islink(host) or not os.path.isfile(host):
                continue
            nfiles += 1
            rel = "/" + os.path.relpath(host, root)
            with open(host, "rb") as f:
                head = f.read(128)
            if head.startswith(b"#!"):
                interp = head[2:].split(b"\n")[0].split()[0].decode()
                if not resolve(root, interp):
                    errors.append(f"{rel}: interpreter {interp} missing in the rootfs")
                continue
            info = elf_info(host) if head.startswith(b"\x7fELF") else None
            if info is None:
                continue
            interp, needed, runpath = info
            if interp and not resolve(root, interp):
                errors.append(f"{rel}: loader {interp} missing in the rootfs")
            for lib in needed:
                if not any(resolve(root, f"{ld}/{lib}") for ld in runpath + LIBDIRS):
                    errors.append(f"{rel}: library {lib} missing in the rootfs")

    # Loadable, not just present: run each binary in the rootfs (needs root for chroot).
    if os.geteuid() == 0 and not errors:
        for argv in exp["smoke"]:
            r = subprocess.run(["chroot", root] + argv, capture_output=True, text=True,
                               env={"PATH": ":".join(path_dirs), "LVM_SUPPRESS_FD_WARNINGS": "1"})
            if r.returncode != 0:
                errors.append(f"chroot {root} {' '.join(argv)}: exit {r.returncode}: {(r.stderr or r.stdout).strip()[:200]}")
    print(f"{bundle}: {nfiles} files checked, " + ("ok" if not errors else f"{len(errors)} problem(s)"))
    return [f"{bundle}: {e}" for e in errors]


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    errors = []
    for b in sys.argv[1:]:
        errors += check(b)
    for e in errors:
        print("FAIL " + e)
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
