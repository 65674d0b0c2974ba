#!/usr/bin/env bash
# setup-host.sh - prepare a Debian 12 (bookworm) host to run the sheepdev VM
# kernel tests (tests/vm/run-vm.sh).
#
# What it does (idempotent; every step prints one line):
#   1. apt-get installs the host tools the harness needs (qemu-system-x86,
#      busybox-static, fio, e2fsprogs, ...), skipping apt entirely when they
#      are all installed already.
#   2. Fetches Debian trixie's cloud kernel (linux-image-cloud-amd64, 6.12,
#      which ships ublk_drv.ko) with a PRIVATE apt configuration: its own
#      sources list, lists dir and archive cache under the cache dir, so the
#      host's apt state is never touched. The trixie Release file is verified
#      against the trixie keys of bookworm's debian-archive-keyring (no
#      [trusted=yes]).
#   3. Unpacks vmlinuz and the needed modules (ublk_drv, loop, virtio_blk,
#      null_blk, brd and whatever they depend on, decompressed) into
#      $CACHE/kernel/. A stamp records the package version; a rerun does
#      nothing unless --refresh is given.
#
# Usage: bash tests/vm/setup-host.sh [--refresh]
# Env:   SHEEPDEV_VM_CACHE   cache dir (default /var/cache/sheepdev-vm)
#        SHEEPDEV_VM_MIRROR  Debian mirror for trixie (default: the host's
#                            own Debian mirror, else http://deb.debian.org/debian)
set -euo pipefail

CACHE=${SHEEPDEV_VM_CACHE:-/var/cache/sheepdev-vm}
REFRESH=0
for arg in "$@"; do
    case $arg in
        --refresh) REFRESH=1 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "setup-host: unknown argument: $arg" >&2; exit 2 ;;
    esac
done

step() { echo "setup-host: $*"; }
die() { echo "setup-host: ERROR: $*" >&2; exit 1; }

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
KDIR=$CACHE/kernel
APTDIR=$CACHE/apt
mkdir -p "$CACHE"

if [ "$REFRESH" = 0 ] && [ -s "$KDIR/stamp" ] && [ -s "$KDIR/vmlinuz" ] && [ -s "$KDIR/modules.load" ]; then
    step "kernel already cached: $(cat "$KDIR/stamp") in $KDIR (use --refresh to refetch)"
    exit 0
fi

# The trixie keys must be in the keyring apt verifies against. bookworm's
# debian-archive-keyring >= 2023.3+deb12u1 ships them.
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
[ -s /usr/share/keyrings/debian-archive-trixie-stable.gpg ] ||
    die "debian-archive-keyring $(dpkg-query -W -f='${Version}' debian-archive-keyring) has no trixie keys; run 'apt-get update && apt-get install debian-archive-keyring' (or from bookworm-backports)"
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
echo "deb [signed-by=$KEYRING] $MIRROR trixie main" >"$APTDIR/sources.list"
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
step "apt-get update (private trixie list: $MIRROR trixie main, signed-by $KEYRING)"
apt-get "${APT_OPTS[@]}" update -qq >/dev/null

# linux-image-cloud-amd64 is a metapackage; find the real image package.
PKG=$(apt-cache "${APT_OPTS[@]}" depends linux-image-cloud-amd64 |
      awk '$1=="Depends:" && $2 ~ /^linux-image-[0-9].*-cloud-amd64$/ {print $2; exit}')
[ -n "$PKG" ] || die "could not resolve linux-image-cloud-amd64 in trixie"
VER=$(apt-cache "${APT_OPTS[@]}" show "$PKG" | awk '$1=="Version:" {print $2; exit}')
step "trixie cloud kernel package: $PKG $VER"

# apt-get download writes to the current directory; verified by hash from
# the signed Release file.
(cd "$APTDIR/archives" && apt-get "${APT_OPTS[@]}" download -qq "$PKG" >/dev/null)
DEB=$(ls -t "$APTDIR/archives/${PKG}_"*.deb | head -n1)
step "downloaded $(basename "$DEB") ($(du -h "$DEB" | cut -f1))"

# ---------------------------------------------------------------- step 3
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
dpkg-deb -x "$DEB" "$TMP/root"
VMLINUZ=$(ls "$TMP"/root/boot/vmlinuz-* | head -n1)
KVER=${VMLINUZ##*/vmlinuz-}
MODROOT=$TMP/root/usr/lib/modules/$KVER
[ -d "$MODROOT" ] || MODROOT=$TMP/root/lib/modules/$KVER
[ -d "$MODROOT/kernel" ] || die "no modules for $KVER in $DEB"

# The .deb ships no modules.dep (depmod runs in postinst), so dependencies
# are read from each module's own .modinfo section ("depends=a,b"), without
# needing kmod on the host.
modfile() { # module name -> path of its .ko* file ('-' and '_' are equivalent)
    find "$MODROOT/kernel" -regextype posix-extended \
        -regex ".*/${1//[-_]/[-_]}\.ko(\.(xz|zst|gz))?" -print -quit
}
modcat() { # decompress a module file to stdout
    case $1 in
        *.xz) xz -dc "$1" ;; *.zst) zstd -qdc "$1" ;; *.gz) gzip -dc "$1" ;; *) cat "$1" ;;
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
cp "$TMP/root/boot/config-$KVER" "$KDIR.new/config"
echo "$KVER" >"$KDIR.new/kernel-release"
echo "$PKG $VER" >"$KDIR.new/stamp"
rm -rf "$KDIR"
mv "$KDIR.new" "$KDIR"
kos=("$KDIR"/modules/*.ko)
step "unpacked kernel $KVER to $KDIR: vmlinuz + ${#kos[@]} modules (insmod at boot: $(tr '\n' ' ' <"$KDIR/modules.load" | sed 's/ $//'))"
# Keep only the newest .deb in the private archive cache.
find "$APTDIR/archives" -maxdepth 1 -name '*.deb' ! -path "$DEB" -delete
step "done: cache $CACHE"
