#!/usr/bin/env bash
# setup-host.sh - prepare a Debian 12 (bookworm) host to run the sheepdev VM
# kernel tests (tests/vm/run-vm.sh).
#
# What it does (idempotent; every step prints one line):
#   1. apt-get installs the host tools the harness needs (qemu-system-x86,
#      busybox-static, fio, e2fsprogs, ...), skipping apt entirely when they
#      are all installed already.
#   2. Fetches a Debian cloud kernel with a PRIVATE apt configuration: its own
#      sources list, lists dir and archive cache under the cache dir, so the
#      host's apt state is never touched. The Release file is verified
#      against the trixie keys of bookworm's debian-archive-keyring (no
#      [trusted=yes]). Two kernels (--kernel):
#        stable     trixie's linux-image-cloud-amd64 (6.12, which ships
#                   ublk_drv.ko): one package. Cache: $CACHE/kernel/.
#        backports  trixie-backports' linux-image-cloud-amd64 (7.x): from
#                   6.19 the image package is empty and depends on
#                   linux-binary-<abi> (vmlinuz), linux-modules-<abi> (the
#                   modules) and linux-base-<abi> (config, modules.builtin),
#                   which are all fetched. Only a kernel whose packages are all
#                   in the suite is taken (6.18-7.1 lost theirs), else the
#                   highest complete 7.x. Cache: $CACHE/kernel-backports/.
#   3. Unpacks vmlinuz and the needed modules (ublk_drv, loop, virtio_blk,
#      null_blk, brd and whatever they depend on, decompressed) into the
#      kernel's cache dir. A stamp records the package version; a rerun does
#      nothing unless --refresh is given.
#
# Usage: bash tests/vm/setup-host.sh [--kernel stable|backports] [--refresh]
# Env:   SHEEPDEV_VM_CACHE   cache dir (default /var/cache/sheepdev-vm)
#        SHEEPDEV_VM_KERNEL  stable (default) or backports; --kernel wins
#        SHEEPDEV_VM_MIRROR  Debian mirror for trixie and trixie-backports
#                            (default: the host's own Debian mirror, else
#                            http://deb.debian.org/debian)
set -euo pipefail

CACHE=${SHEEPDEV_VM_CACHE:-/var/cache/sheepdev-vm}
KERNEL=${SHEEPDEV_VM_KERNEL:-stable}
REFRESH=0
while [ $# -gt 0 ]; do
    case $1 in
        --refresh) REFRESH=1; shift ;;
        --kernel) [ $# -ge 2 ] || { echo "setup-host: --kernel wants stable or backports" >&2; exit 2; }
                  KERNEL=$2; shift 2 ;;
        --kernel=*) KERNEL=${1#*=}; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "setup-host: unknown argument: $1" >&2; exit 2 ;;
    esac
done

step() { echo "setup-host: $*"; }
die() { echo "setup-host: ERROR: $*" >&2; exit 1; }

# Per kernel: the suite, where the kernel is unpacked (run-vm.sh reads the
# same dirs) and the private apt state (one per suite, so neither run drops
# the other's lists or .debs). stable keeps the original paths.
# SUITEKEY: the key that signs the suite (trixie: the release key;
# trixie-backports: the automatic archive key).
case $KERNEL in
    stable)    SUITE=trixie           SUITEKEY=trixie-stable    KDIR=$CACHE/kernel           APTDIR=$CACHE/apt ;;
    backports) SUITE=trixie-backports SUITEKEY=trixie-automatic KDIR=$CACHE/kernel-backports APTDIR=$CACHE/apt-backports ;;
    *) echo "setup-host: --kernel (or SHEEPDEV_VM_KERNEL) wants stable or backports, got '$KERNEL'" >&2; exit 2 ;;
esac
# backports: the oldest upstream major taken (the 6.x backports are either
# not installable any more or, 6.17, not wanted).
BACKPORTS_MIN_MAJOR=7

[ "$(id -u)" = 0 ] || die "must run as root (apt-get install)"

# Modules for the guest (their dependencies are added automatically).
# AUTOLOAD_MODULES are insmod'ed by the guest init at boot; EXTRA_MODULES are
# only copied to /lib/modules/ in the guest for tests to insmod themselves
# (null_blk and brd create devices as soon as they load).
AUTOLOAD_MODULES=(ublk_drv loop virtio_blk)
EXTRA_MODULES=(null_blk brd)

# ---------------------------------------------------------------- step 1
# Host packages. ipxe-qemu/seabios come in as qemu dependencies; recommends
# (GUI, OVMF, ...) are not needed for a -nographic TCG guest.
HOST_PKGS=(qemu-system-x86 busybox-static fio e2fsprogs xz-utils cpio
           debian-archive-keyring gpgv apt coreutils util-linux tar)
missing=()
for p in "${HOST_PKGS[@]}"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    step "host packages already installed: ${HOST_PKGS[*]}"
else
    step "apt-get update (host lists)"
    apt-get update -qq >/dev/null
    step "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# ---------------------------------------------------------------- step 2
mkdir -p "$CACHE"

if [ "$REFRESH" = 0 ] && [ -s "$KDIR/stamp" ] && [ -s "$KDIR/vmlinuz" ] && [ -s "$KDIR/modules.load" ]; then
    step "kernel already cached: $(cat "$KDIR/stamp") in $KDIR (use --refresh to refetch)"
    exit 0
fi

# The trixie keys must be in the keyring apt verifies against. bookworm's
# debian-archive-keyring >= 2023.3+deb12u1 ships them.
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
[ -s "/usr/share/keyrings/debian-archive-$SUITEKEY.gpg" ] ||
    die "debian-archive-keyring $(dpkg-query -W -f='${Version}' debian-archive-keyring) has no trixie keys ($SUITEKEY); run 'apt-get update && apt-get install debian-archive-keyring' (or from bookworm-backports)"
step "trixie signing keys present in $KEYRING ($(dpkg-query -W -f='${Version}' debian-archive-keyring))"

# Use the same Debian mirror as the host (deb822 or one-line format).
host_mirror() { # first .../debian URI of the host's sources (deb822 or one-line)
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] && awk 'tolower($1)=="uris:" {for (i=2;i<=NF;i++) if ($i ~ /\/debian\/?$/) {print $i; exit}}' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] && awk '$1=="deb" {for (i=2;i<=NF;i++) if ($i ~ /^[a-z+]+:\/\/.*\/debian\/?$/) {print $i; exit}}' "$f"
    done
    return 0
}
MIRROR=${SHEEPDEV_VM_MIRROR:-$(host_mirror | awk 'NR==1')}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
MIRROR=${MIRROR%/}

# Private apt: own sources list, no sources.list.d, no host preferences, own
# lists/cache/archives. Only this directory is written.
mkdir -p "$APTDIR/lists/partial" "$APTDIR/archives/partial" "$APTDIR/cache" "$APTDIR/empty.d"
# apt downloads as the unprivileged _apt user where it can write.
if id _apt >/dev/null 2>&1; then chown _apt "$APTDIR/lists/partial" "$APTDIR/archives" "$APTDIR/archives/partial"; fi
echo "deb [signed-by=$KEYRING] $MIRROR $SUITE main" >"$APTDIR/sources.list"
APT_OPTS=(
    -o "Dir::Etc::SourceList=$APTDIR/sources.list"
    -o "Dir::Etc::SourceParts=$APTDIR/empty.d"
    -o "Dir::Etc::Preferences=$APTDIR/empty.d/none"
    -o "Dir::Etc::PreferencesParts=$APTDIR/empty.d"
    -o "Dir::State::Lists=$APTDIR/lists"
    -o "Dir::Cache=$APTDIR/cache"
    -o "Dir::Cache::Archives=$APTDIR/archives"
    -o "APT::Architecture=amd64"
    -o "APT::Architectures=amd64"
    -o "Acquire::Languages=none"
    -o "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false"
)
step "apt-get update (private $SUITE list: $MIRROR $SUITE main, signed-by $KEYRING)"
apt-get "${APT_OPTS[@]}" update -qq >/dev/null
acache() { apt-cache "${APT_OPTS[@]}" "$@"; }
# (The filters below read all of apt-cache's output: one that stops early, like
# grep -q, can kill apt-cache with SIGPIPE, which pipefail turns into a failure.)

candidate() { # package -> its candidate version in the private lists, or nothing
    acache policy "$1" 2>/dev/null | awk '$1=="Candidate:" && $2!="(none)" && !n++ {print $2}'
}
parts() { # PKG VER -> "name=version" of the split-out packages the image depends on
    # (6.19+: linux-binary-<abi>, linux-modules-<abi>, linux-base-<abi>); nothing for
    # an image that holds the kernel itself (6.12 in trixie)
    acache show "$1=$2" 2>/dev/null | awk '$1=="Depends:" && !n++ {sub(/^Depends: */, ""); print}' |
        tr ',' '\n' | sed -nE 's/^ *(linux-(base|binary|modules)-[0-9][^ ]*-cloud-amd64) \(= ([^)]*)\).*/\1=\3/p'
}
missing_parts() { # PKG VER -> the split-out packages that are not in the lists at that version
    local p
    # apt-cache show prints nothing (status 0) for a name only referenced.
    for p in $(parts "$1" "$2"); do
        acache show "$p" 2>/dev/null | awk -v want="Version: ${p#*=}" '$0==want {f=1} END {exit !f}' ||
            printf '%s ' "${p%%=*}"
    done
}

# linux-image-cloud-amd64 is a metapackage; find the real image package.
META=$(acache depends linux-image-cloud-amd64 |
       awk '$1=="Depends:" && $2 ~ /^linux-image-[0-9].*-cloud-amd64$/ && !n++ {print $2}')
[ -n "$META" ] || die "could not resolve linux-image-cloud-amd64 in $SUITE"
PKG='' VER=''
if [ "$KERNEL" = stable ]; then
    PKG=$META
    VER=$(candidate "$PKG")
else
    # The metapackage's kernel if it is complete and new enough, else the
    # highest versioned image that is.
    for c in "$META" $(acache pkgnames linux-image- | grep -E '^linux-image-[0-9]+\.[0-9][^-]*-cloud-amd64$' |
                       grep -vxF "$META" | sort -rV); do
        v=$(candidate "$c") up=${c#linux-image-} why=
        if [ -z "$v" ]; then why="has no version"
        elif [ "${up%%.*}" -lt "$BACKPORTS_MIN_MAJOR" ]; then why="is older than ${BACKPORTS_MIN_MAJOR}.x"
        else
            miss=$(missing_parts "$c" "$v")
            [ -z "$miss" ] || why="is not installable (no ${miss% } in $SUITE)"
        fi
        if [ -z "$why" ]; then PKG=$c VER=$v; break; fi
        [ "$c" != "$META" ] || step "linux-image-cloud-amd64 -> $c $v $why: taking the highest installable ${BACKPORTS_MIN_MAJOR}.x or later"
    done
    [ -n "$PKG" ] || die "no installable linux-image-*-cloud-amd64 of ${BACKPORTS_MIN_MAJOR}.x or later in $SUITE"
fi
[ -n "$VER" ] || die "no version of $PKG in $SUITE"
miss=$(missing_parts "$PKG" "$VER")
[ -z "$miss" ] || die "$PKG $VER is not installable: no ${miss% } in $SUITE"
mapfile -t PARTS < <(parts "$PKG" "$VER")
if [ ${#PARTS[@]} -eq 0 ]; then
    step "$SUITE cloud kernel package: $PKG $VER"
else
    step "$SUITE cloud kernel package: $PKG $VER, split into: ${PARTS[*]%%=*}"
fi

# apt-get download writes to the current directory; verified by hash from
# the signed Release file.
(cd "$APTDIR/archives" && apt-get "${APT_OPTS[@]}" download -qq "$PKG=$VER" ${PARTS[@]+"${PARTS[@]}"} >/dev/null)
DEBS=() got=()
for p in "$PKG=$VER" ${PARTS[@]+"${PARTS[@]}"}; do
    v=${p#*=}
    deb=$APTDIR/archives/${p%%=*}_${v//:/%3a}_amd64.deb
    [ -s "$deb" ] || die "apt-get download left no $deb"
    DEBS+=("$deb") got+=("$(basename "$deb") ($(du -h "$deb" | cut -f1))")
done
step "downloaded $(printf '%s, ' "${got[@]}" | sed 's/, $//')"

# ---------------------------------------------------------------- step 3
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
for deb in "${DEBS[@]}"; do dpkg-deb -x "$deb" "$TMP/root"; done
# 6.12: /boot/vmlinuz-<kver> and /boot/config-<kver>; the split 7.x packages:
# /usr/lib/modules/<kver>/vmlinuz and .../config.
VMLINUZ=$(find "$TMP/root" \( -path "$TMP/root/boot/vmlinuz-*" -o -path "$TMP/root/usr/lib/modules/*/vmlinuz" \
              -o -path "$TMP/root/lib/modules/*/vmlinuz" \) -type f -print -quit)
[ -n "$VMLINUZ" ] || die "no vmlinuz in ${DEBS[*]##*/}"
case $VMLINUZ in
    */boot/vmlinuz-*) KVER=${VMLINUZ##*/vmlinuz-} ;;
    *) KVER=$(basename "$(dirname "$VMLINUZ")") ;;
esac
MODROOT=$TMP/root/usr/lib/modules/$KVER
[ -d "$MODROOT" ] || MODROOT=$TMP/root/lib/modules/$KVER
[ -d "$MODROOT/kernel" ] || die "no modules for $KVER in ${DEBS[*]##*/}"
CONFIG=$TMP/root/boot/config-$KVER
[ -f "$CONFIG" ] || CONFIG=$MODROOT/config
[ -f "$CONFIG" ] || die "no kernel config for $KVER in ${DEBS[*]##*/}"

# The .deb ships no modules.dep (depmod runs in postinst), so dependencies
# are read from each module's own .modinfo section ("depends=a,b"), without
# needing kmod on the host.
modfile() { # module name -> path of its .ko* file ('-' and '_' are equivalent)
    find "$MODROOT/kernel" -regextype posix-extended \
        -regex ".*/${1//[-_]/[-_]}\.ko(\.(xz|zst|gz))?" -print -quit
}
modcat() { # decompress a module file to stdout
    case $1 in
        *.xz) xz -dc "$1" ;; *.gz) gzip -dc "$1" ;;
        *.zst) command -v zstd >/dev/null || die "$1 is zstd-compressed: apt-get install zstd"
               zstd -qdc "$1" ;;
        *) cat "$1" ;;
    esac
}
declare -A seen=() depsof=()
order=()
resolve() { # $1 = module name; appends it to $order after its dependencies
    local name=${1//-/_} f deps d
    [ -n "${seen[$name]:-}" ] && return 0
    seen[$name]=1
    f=$(modfile "$name")
    if [ -z "$f" ]; then
        grep -qE "/${name//_/[-_]}\.ko$" "$MODROOT/modules.builtin" && {
            step "module $name is built into $KVER"; return 0; }
        die "module $name not found in $KVER"
    fi
    deps=$(modcat "$f" | tr '\0' '\n' | sed -n 's/^depends=//p' | head -n1)
    depsof[$f]=""
    for d in ${deps//,/ }; do
        resolve "$d"
        depsof[$f]+=" ${d//-/_}.ko"
    done
    order+=("$f")
}
for name in "${AUTOLOAD_MODULES[@]}"; do resolve "$name"; done
nload=${#order[@]}
for name in "${EXTRA_MODULES[@]}"; do resolve "$name"; done

rm -rf "$KDIR.new"
mkdir -p "$KDIR.new/modules"
cp "$VMLINUZ" "$KDIR.new/vmlinuz"
: >"$KDIR.new/modules.load"
: >"$KDIR.new/modules/modules.dep"  # for busybox modprobe in the guest
i=0
for f in "${order[@]}"; do
    base=${f##*/}; base=${base%.ko*}.ko
    modcat "$f" >"$KDIR.new/modules/$base"
    echo "$base:${depsof[$f]}" >>"$KDIR.new/modules/modules.dep"
    [ $i -lt "$nload" ] && echo "$base" >>"$KDIR.new/modules.load"
    i=$((i + 1))
done
cp "$CONFIG" "$KDIR.new/config"
echo "$KVER" >"$KDIR.new/kernel-release"
if [ ${#PARTS[@]} -eq 0 ]; then
    echo "$PKG $VER" >"$KDIR.new/stamp"
else
    echo "$PKG $VER (${PARTS[*]%%=*})" >"$KDIR.new/stamp"
fi
rm -rf "$KDIR"
mv "$KDIR.new" "$KDIR"
kos=("$KDIR"/modules/*.ko)
step "unpacked kernel $KVER to $KDIR: vmlinuz + ${#kos[@]} modules (insmod at boot: $(tr '\n' ' ' <"$KDIR/modules.load" | sed 's/ $//'))"
# Keep only this kernel's .debs in the private archive cache.
keep=()
for deb in "${DEBS[@]}"; do keep+=(! -path "$deb"); done
find "$APTDIR/archives" -maxdepth 1 -name '*.deb' "${keep[@]}" -delete
step "done: cache $CACHE"
