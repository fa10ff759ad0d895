# Shared by the scripts that build Debian roots with mmdebstrap (scripts/fresh-root.sh, the
# fresh-machine check; scripts/docker26-root.sh, the Debian 13 root the Docker 26 test pass runs
# dockerd from). Source it; it defines functions only.
#
# Everything about reaching Debian's packages comes from this machine's own apt configuration,
# never from literals here: its sources (which mirrors), its Acquire:: options (e.g.
# Check-Valid-Until for a snapshot mirror) and its local CA certificates (a site's TLS-intercepting
# egress proxy). They describe this site's network, not the project.

# This machine's apt source files, one per line (one-line .list and deb822 .sources alike).
debian_apt_source_files() {
    local f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [ -s "$f" ] && printf '%s\n' "$f"
    done
    return 0
}

# The host names of URLs in the given apt source files (for a proxy allow list).
debian_apt_source_hosts() {
    grep -hoE '(https?)://[^/[:space:]]+' "$@" | sed -E 's#^https?://##' | sort -u
}

# This machine's Acquire:: settings, written to $1 (an apt.conf snippet; may be empty).
debian_acquire_conf() {
    cat /etc/apt/apt.conf /etc/apt/apt.conf.d/* 2>/dev/null | grep -E '^[[:space:]]*Acquire::' >"$1" || true
}

# The codename of this machine's Debian release (bookworm on Debian 12).
debian_host_codename() {
    . /etc/os-release && printf '%s\n' "${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}"
}

# Writes to $2 one-line apt sources for Debian release $1 (e.g. trixie), made from this machine's
# sources of its own release: every entry whose suite is the host's codename or one of its
# -updates/-security/-backports suites, with the codename replaced. Other archives (third-party
# repositories built for the host's release) are left out. Fails if none is found.
debian_sources_for() {
    local target=$1 out=$2 host f
    host=$(debian_host_codename)
    mapfile -t files < <(debian_apt_source_files)
    [ ${#files[@]} -gt 0 ] || { echo "no apt sources on this machine" >&2; return 1; }
    : >"$out"
    for f in "${files[@]}"; do
        case $f in
        *.sources)
            # deb822: stanzas separated by blank lines; Types/URIs/Suites/Components/Signed-By.
            awk -v host="$host" -v target="$target" '
                function flush(   n, i, s, parts, suf) {
                    if (types ~ /(^| )deb( |$)/ && uris != "" && suites != "") {
                        n = split(suites, parts, " ")
                        for (i = 1; i <= n; i++) {
                            s = parts[i]
                            if (s == host) suf = ""
                            else if (s ~ ("^" host "-(updates|security|backports)$")) suf = substr(s, length(host) + 1)
                            else continue
                            split(uris, u, " ")
                            opt = (signed != "") ? "[signed-by=" signed "] " : ""
                            for (j in u) print "deb " opt u[j] " " target suf " " comps
                        }
                    }
                    types = uris = suites = comps = signed = ""
                }
                /^[[:space:]]*#/ { next }
                /^[[:space:]]*$/ { flush(); next }
                { key = $1; sub(/:$/, "", key); $1 = ""; sub(/^ +/, "") }
                key == "Types" { types = $0 } key == "URIs" { uris = $0 }
                key == "Suites" { suites = $0 } key == "Components" { comps = $0 }
                key == "Signed-By" { signed = $0 }
                END { flush() }' "$f" >>"$out"
            ;;
        *)
            # one-line: deb [opts] URI SUITE COMPONENT...
            awk -v host="$host" -v target="$target" '
                $1 != "deb" { next }
                {
                    i = 2; opt = ""
                    if ($2 ~ /^\[/) { while ($i !~ /\]$/) { opt = opt $i " "; i++ } opt = opt $i " "; i++ }
                    uri = $i; s = $(i + 1)
                    if (s == host) suf = ""
                    else if (s ~ ("^" host "-(updates|security|backports)$")) suf = substr(s, length(host) + 1)
                    else next
                    line = "deb " opt uri " " target suf
                    for (k = i + 2; k <= NF; k++) line = line " " $k
                    print line
                }' "$f" >>"$out"
            ;;
        esac
    done
    [ -s "$out" ] || { echo "no Debian ($host) entries in this machine's apt sources" >&2; return 1; }
}

# This machine's local CA certificates, into the root $1 (no-op without any).
debian_copy_local_cas() {
    local root=$1
    compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null || return 0
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
    chroot "$root" update-ca-certificates >/dev/null 2>&1
}

# mmdebstrap a minbase root with a .deb cache that survives runs.
#   debian_mmdebstrap SUITE ROOT DEB_CACHE_DIR APT_CONF LOG INCLUDES SOURCES...
# INCLUDES is mmdebstrap's comma-separated --include list (may be empty); SOURCES are apt source
# files or mirror lines. Runs in a private mount namespace, bounded to 15 minutes.
debian_mmdebstrap() {
    local suite=$1 root=$2 cache=$3 aptconf=$4 log=$5 includes=$6
    shift 6
    local inc=()
    [ -n "$includes" ] && inc=(--include="$includes")
    mkdir -p "$cache"
    timeout --kill-after=30 900 unshare --mount --propagation private \
        mmdebstrap --mode=root --variant=minbase "${inc[@]}" \
        --aptopt="$aptconf" --skip=essential/unlink \
        --setup-hook='mkdir -p "$1"/var/cache/apt/archives' \
        --setup-hook="sync-in $cache /var/cache/apt/archives" \
        --customize-hook="sync-out /var/cache/apt/archives $cache" \
        --quiet "$suite" "$root" "$@" >"$log" 2>&1
}

# Keeps in DEB_CACHE_DIR only the .debs installed in ROOT (newer versions replace older ones).
#   debian_prune_deb_cache ROOT DEB_CACHE_DIR
debian_prune_deb_cache() {
    local root=$1 cache=$2 keep f
    keep=$(dpkg-query --admindir="$root/var/lib/dpkg" -W -f '${Package}_${Version}_${Architecture}.deb\n' | sed 's/:/%3a/')
    for f in "$cache"/*.deb; do
        [ -e "$f" ] || continue
        grep -qxF "${f##*/}" <<<"$keep" || rm -f "$f"
    done
}
