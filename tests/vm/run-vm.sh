#!/usr/bin/env bash
# run-vm.sh - run a guest shell script inside a throwaway qemu (TCG) VM with
# a Debian cloud kernel (trixie's 6.12, or trixie-backports' 7.x with
# --kernel backports) and ublk_drv loaded.
#
# Usage:
#   bash tests/vm/run-vm.sh [options] GUEST_SCRIPT [ARG...]
# Options:
#   --kernel stable|backports
#                      the kernel setup-host.sh fetched with the same option
#                      (default stable: $CACHE/kernel; backports:
#                      $CACHE/kernel-backports; env SHEEPDEV_VM_KERNEL)
#   --timeout SECS     kill the VM after SECS seconds (default 600,
#                      env SHEEPDEV_VM_TIMEOUT)
#   --bin PATH         copy a host binary to /usr/local/bin/ in the guest,
#                      with the shared libraries ldd finds (repeatable)
#   --file HOST:GUEST  copy a host file or directory to GUEST (absolute
#                      path) in the guest (repeatable)
#   --disk SIZE|IMAGE  attach a virtio disk, /dev/vda in the guest: a fresh
#                      sparse raw disk of SIZE (e.g. 4G), or an existing raw
#                      IMAGE file (used in place, modified)
#   --out DIR          after the run, copy what the guest left under /out
#                      into host DIR (carried back as a tar written to a
#                      second virtio disk; also done when the script fails)
#   --append ARGS      extra kernel command line arguments
#   --quiet            print the console log only when the run fails
#
# The initramfs holds busybox (all applets), fio, mke2fs/mkfs.ext4, e2fsck, resize2fs,
# the --bin/--file items, and the kernel modules from setup-host.sh. Its
# /init mounts proc/sys/devtmpfs/tmpfs, brings up lo (127.0.0.1), loads
# ublk_drv, loop and virtio_blk, then runs `sh -e GUEST_SCRIPT ARG...` (cwd
# /root, stdin /dev/null, env SHEEPDEV_VM=1), prints the marker line
# SHEEPDEV-VM-EXIT=<rc> on the serial console, and powers off.
#
# Exit status: the guest script's exit status; 124 on timeout; 125 when the
# harness itself failed (kernel panic/oops/BUG, no exit marker, qemu error).
# Each of those failures prints a line starting with "run-vm: FAIL".
#
# Env: SHEEPDEV_VM_CACHE (default /var/cache/sheepdev-vm; filled by
#      setup-host.sh), SHEEPDEV_VM_KERNEL (stable or backports, default
#      stable), SHEEPDEV_VM_MEM (MiB, default 3072), SHEEPDEV_VM_CPUS
#      (default 2), SHEEPDEV_VM_TIMEOUT, SHEEPDEV_VM_OUT_SIZE (max size of
#      the /out tar, default 4G, sparse), SHEEPDEV_VM_ALLOW_OOPS=1 (do not
#      fail on a kernel Oops/BUG), SHEEPDEV_VM_KEEP=1 (keep the work dir with
#      initramfs, disks and console log), TMPDIR (where the work dir goes).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${SHEEPDEV_VM_CACHE:-/var/cache/sheepdev-vm}
KERNEL=${SHEEPDEV_VM_KERNEL:-stable}
MEM=${SHEEPDEV_VM_MEM:-3072}
CPUS=${SHEEPDEV_VM_CPUS:-2}
TIMEOUT=${SHEEPDEV_VM_TIMEOUT:-600}
OUT_SIZE=${SHEEPDEV_VM_OUT_SIZE:-4G}
MARKER=SHEEPDEV-VM-EXIT

log() { echo "run-vm: $*" >&2; }
die() { echo "run-vm: ERROR: $*" >&2; exit 125; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

# ---------------------------------------------------------------- arguments
BINS=() FILES=() DISK="" OUTDIR="" APPEND="" QUIET=0
while [ $# -gt 0 ]; do
    case $1 in
        --kernel)  KERNEL=$2; shift 2 ;;
        --timeout) TIMEOUT=$2; shift 2 ;;
        --bin)     BINS+=("$2"); shift 2 ;;
        --file)    FILES+=("$2"); shift 2 ;;
        --disk)    DISK=$2; shift 2 ;;
        --out)     OUTDIR=$2; shift 2 ;;
        --append)  APPEND=$2; shift 2 ;;
        --quiet)   QUIET=1; shift ;;
        -h|--help) usage; exit 0 ;;
        --) shift; break ;;
        -*) usage >&2; die "unknown option $1" ;;
        *) break ;;
    esac
done
[ $# -ge 1 ] || { usage >&2; die "missing GUEST_SCRIPT"; }
SCRIPT=$1; shift
[ -f "$SCRIPT" ] || die "guest script $SCRIPT not found"
[[ $TIMEOUT =~ ^[0-9]+$ ]] || die "--timeout wants whole seconds, got $TIMEOUT"
case $KERNEL in
    stable)    KDIR=$CACHE/kernel SETUP="bash $HERE/setup-host.sh" ;;
    backports) KDIR=$CACHE/kernel-backports SETUP="bash $HERE/setup-host.sh --kernel backports" ;;
    *) die "--kernel (or SHEEPDEV_VM_KERNEL) wants stable or backports, got '$KERNEL'" ;;
esac

for f in vmlinuz modules.load kernel-release; do
    [ -s "$KDIR/$f" ] || die "$KDIR/$f missing: run '$SETUP' first"
done
for t in qemu-system-x86_64 cpio ldd; do
    command -v "$t" >/dev/null || die "$t not found: run 'bash $HERE/setup-host.sh' first"
done
[ -x /bin/busybox ] || die "/bin/busybox missing: run 'bash $HERE/setup-host.sh' first"
KVER=$(cat "$KDIR/kernel-release")

WORK=$(mktemp -d "${TMPDIR:-/tmp}/sheepdev-vm.XXXXXX")
# shellcheck disable=SC2317,SC2329  # called through the trap
cleanup() {
    if [ "${SHEEPDEV_VM_KEEP:-0}" = 1 ]; then log "kept work dir $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
ROOT=$WORK/root

# ---------------------------------------------------------------- initramfs
# Merged-/usr layout like the host, so ldd's /lib/... paths land in usr/lib.
mkdir -p "$ROOT"/{usr/bin,usr/sbin,usr/lib,usr/lib64,usr/local/bin,etc,proc,sys,dev,tmp,run,root,out,guest}
ln -s usr/bin "$ROOT/bin"; ln -s usr/sbin "$ROOT/sbin"
ln -s usr/lib "$ROOT/lib"; ln -s usr/lib64 "$ROOT/lib64"
mknod -m 600 "$ROOT/dev/console" c 5 1   # the kernel opens it before /init
mknod -m 666 "$ROOT/dev/null" c 1 3

# busybox and a symlink per applet (host binaries copied later win).
cp /bin/busybox "$ROOT/usr/bin/busybox"
/bin/busybox --list-full | while read -r a; do
    [ -e "$ROOT/$a" ] || [ -L "$ROOT/$a" ] || ln -s /usr/bin/busybox "$ROOT/$a"
done

copy_libs() { # copy the shared libraries of ELF file $1 (no-op if static)
    local lib
    for lib in $(ldd "$1" 2>/dev/null | grep -oE '(^|[[:space:]])/[^[:space:]]+' || true); do
        [ -e "$ROOT$lib" ] && continue
        mkdir -p "$ROOT$(dirname "$lib")"
        cp -L "$lib" "$ROOT$lib"
    done
}
copy_bin() { # copy_bin HOST_PATH GUEST_PATH [ALIAS...] - binary, libs, aliases
    local src=$1 dst=$2 alias
    [ -f "$src" ] || die "binary $src not found"
    mkdir -p "$ROOT$(dirname "$dst")"
    rm -f "$ROOT$dst"; cp -L "$src" "$ROOT$dst"; chmod 755 "$ROOT$dst"
    copy_libs "$src"
    shift 2
    for alias in "$@"; do rm -f "$ROOT$alias"; ln -s "$(basename "$dst")" "$ROOT$alias"; done
}
copy_bin "$(command -v fio)" /usr/bin/fio
copy_bin /usr/sbin/mke2fs /usr/sbin/mke2fs /usr/sbin/mkfs.ext4 /usr/sbin/mkfs.ext3 /usr/sbin/mkfs.ext2
copy_bin /usr/sbin/e2fsck /usr/sbin/e2fsck /usr/sbin/fsck.ext4 /usr/sbin/fsck.ext3 /usr/sbin/fsck.ext2
copy_bin /usr/sbin/resize2fs /usr/sbin/resize2fs
[ -f /etc/mke2fs.conf ] && cp /etc/mke2fs.conf "$ROOT/etc/"
for b in ${BINS[@]+"${BINS[@]}"}; do copy_bin "$b" "/usr/local/bin/$(basename "$b")"; done
for spec in ${FILES[@]+"${FILES[@]}"}; do
    src=${spec%%:*} dst=${spec#*:}
    if [ "$src" = "$spec" ] || [[ $dst != /* ]]; then
        die "--file wants HOST:/ABS/GUEST/PATH, got $spec"
    fi
    [ -e "$src" ] || die "--file source $src not found"
    mkdir -p "$ROOT$(dirname "$dst")"
    cp -a "$src" "$ROOT$dst"
done

# Kernel modules, where busybox modprobe finds them.
mkdir -p "$ROOT/usr/lib/modules/$KVER"
cp "$KDIR"/modules/* "$ROOT/usr/lib/modules/$KVER/"
cp "$KDIR/modules.load" "$ROOT/etc/modules.load"

# Minimal /etc: localhost resolves through glibc's built-in files NSS.
printf '127.0.0.1\tlocalhost sheepdev-vm\n::1\tlocalhost ip6-localhost\n' >"$ROOT/etc/hosts"
printf 'passwd: files\ngroup: files\nhosts: files\n' >"$ROOT/etc/nsswitch.conf"
echo 'root:x:0:0:root:/root:/bin/sh' >"$ROOT/etc/passwd"
echo 'root:x:0:' >"$ROOT/etc/group"

# The guest script and its arguments (single-quoted for sh).
cp "$SCRIPT" "$ROOT/guest/script.sh"
q() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"; }
{
    printf 'exec /bin/sh -e /guest/script.sh'
    for a in "$@"; do printf ' %s' "$(q "$a")"; done
    echo
} >"$ROOT/guest/run"

cat >"$ROOT/init" <<'INIT'
#!/bin/sh
# PID 1 of the sheepdev test VM (written by tests/vm/run-vm.sh). Must never
# exit: that would panic the kernel. Ends with a poweroff.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TERM=dumb SHEEPDEV_VM=1
say() { echo "sheepdev-vm: $*"; }

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
ln -sf /proc/self/fd /dev/fd 2>/dev/null
ln -sf /proc/self/fd/0 /dev/stdin; ln -sf /proc/self/fd/1 /dev/stdout; ln -sf /proc/self/fd/2 /dev/stderr
hostname sheepdev-vm
ip link set lo up
for m in $(cat /etc/modules.load); do
    modprobe "${m%.ko}" || say "WARNING: modprobe ${m%.ko} failed"
done

# Disks are found by their virtio serial: sheepdev-disk (--disk, /dev/vda)
# and sheepdev-out (--out).
OUTDEV=
for b in /sys/block/vd*; do
    [ -e "$b/serial" ] || continue
    case $(cat "$b/serial") in
        sheepdev-out) OUTDEV=/dev/${b##*/} ;;
        sheepdev-disk) [ "${b##*/}" = vda ] || say "WARNING: --disk is /dev/${b##*/}, not /dev/vda" ;;
    esac
done

say "kernel $(uname -r), $(nproc) cpus, $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) MiB; running guest script"
cd /root
/bin/sh /guest/run </dev/null
rc=$?
say "guest script exited with status $rc"

if [ -n "$OUTDEV" ]; then
    if tar -cf "$OUTDEV" -C /out . ; then
        say "copied /out to the host disk ($(du -sk /out | cut -f1) KiB)"
    else
        say "ERROR: writing /out to $OUTDEV failed (larger than SHEEPDEV_VM_OUT_SIZE?)"
    fi
fi
sync
# Quiet the kernel so no printk splits the marker line.
echo 1 >/proc/sys/kernel/printk
echo
echo "SHEEPDEV-VM-EXIT=$rc"
poweroff -f
echo o >/proc/sysrq-trigger
while :; do sleep 60; done
INIT
chmod 755 "$ROOT/init"

# Uncompressed cpio: the kernel unpacks the ~90 MB in ~0.6 s of guest time;
# compressing would add host time plus slow decompression under TCG.
(cd "$ROOT" && find . -print0 | cpio --null -o -H newc --quiet) >"$WORK/initramfs.cpio"

# ---------------------------------------------------------------- qemu
# shellcheck disable=SC2054  # the commas are qemu option syntax
QEMU=(qemu-system-x86_64
    -accel tcg,thread=multi -cpu max -smp "$CPUS" -m "$MEM"
    -nodefaults -display none -no-reboot
    -chardev stdio,id=con,signal=off -serial chardev:con
    -kernel "$KDIR/vmlinuz" -initrd "$WORK/initramfs.cpio"
    # panic=-1: reboot (= exit, with -no-reboot) at once on a panic. The
    # watchdogs are off because TCG is slow enough to trip them falsely.
    -append "console=ttyS0 panic=-1 nowatchdog nosoftlockup rcupdate.rcu_cpu_stall_suppress=1 mitigations=off tsc=reliable no_timer_check $APPEND"
)
if [ -n "$DISK" ]; then
    if [[ $DISK =~ ^[0-9]+[KMGT]?$ ]]; then
        truncate -s "$DISK" "$WORK/disk.img"; DISKIMG=$WORK/disk.img
    else
        [ -f "$DISK" ] || die "--disk $DISK is neither a size nor an image file"
        DISKIMG=$DISK
    fi
    QEMU+=(-drive "file=$DISKIMG,if=none,id=disk,format=raw,cache=unsafe"
           -device "virtio-blk-pci,drive=disk,serial=sheepdev-disk")
fi
if [ -n "$OUTDIR" ]; then
    truncate -s "$OUT_SIZE" "$WORK/out.img"
    QEMU+=(-drive "file=$WORK/out.img,if=none,id=out,format=raw,cache=unsafe"
           -device "virtio-blk-pci,drive=out,serial=sheepdev-out")
fi

CONSOLE=$WORK/console.log
log "kernel $KVER ($KERNEL), initramfs $(du -h "$WORK/initramfs.cpio" | cut -f1), $CPUS cpus, $MEM MiB, timeout ${TIMEOUT}s, script $SCRIPT"
start=$(date +%s.%N)
# Kernel messages carry a "[    1.234567] " timestamp; matching it keeps the
# guest script's own output (which may say "BUG:") from counting.
KMSG='\[ *[0-9]+\.[0-9]{6}\] '
boot() {
    set +e
    if [ "$QUIET" = 1 ]; then
        timeout -k 10 "$TIMEOUT" "${QEMU[@]}" </dev/null 2>&1 | sed -u 's/\r$//' >"$CONSOLE"
    else
        timeout -k 10 "$TIMEOUT" "${QEMU[@]}" </dev/null 2>&1 | sed -u 's/\r$//' | tee "$CONSOLE"
    fi
    qrc=${PIPESTATUS[0]}
    set -e
}
boot
# TCG now and then oopses while the kernel patches its own code at boot (seen
# once in about a dozen boots: int3 in sched_clock_cpu, 2.5 s in). A kernel
# that died before the guest script started ran nothing of ours: boot once
# more. A panic or oops after the script started still fails the run below.
if ! grep -aq "running guest script" "$CONSOLE" &&
    grep -aqE "${KMSG}(Kernel panic|Oops:|BUG:|general protection fault)" "$CONSOLE"; then
    log "the kernel died at boot, before the guest script ran ($(grep -aE -m1 "${KMSG}(Kernel panic|Oops:|BUG:|general protection fault)" "$CONSOLE")); booting once more"
    cp "$CONSOLE" "$WORK/console-boot1.log"
    [ -z "$OUTDIR" ] || { rm -f "$WORK/out.img"; truncate -s "$OUT_SIZE" "$WORK/out.img"; }
    boot
fi
elapsed=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN {printf "%.1f", e - s}')

# ---------------------------------------------------------------- verdict
fail() { # fail STATUS MESSAGE
    [ "$QUIET" = 1 ] && cat "$CONSOLE" >&2
    log "FAIL: $2 (after ${elapsed}s)"
    exit "$1"
}
rc=$(grep -aoE "$MARKER=[0-9]+" "$CONSOLE" | tail -n1 | cut -d= -f2 || true)
# The guest's init prints "sheepdev-vm: kernel <uname -r>, ...".
booted=$(sed -n 's/^sheepdev-vm: kernel \([^ ,]*\),.*/\1/p' "$CONSOLE" | tail -n1)
if [ -n "$booted" ]; then
    log "booted kernel $booted ($KERNEL)"
    [ "$booted" = "$KVER" ] || log "WARNING: the guest runs $booted, $KDIR/kernel-release says $KVER"
fi

if [ -n "$OUTDIR" ]; then
    mkdir -p "$OUTDIR"
    if [ -n "$rc" ] && tar -xf "$WORK/out.img" -C "$OUTDIR" 2>"$WORK/tar.err"; then
        log "guest /out copied to $OUTDIR"
    else
        log "WARNING: no /out from the guest ($(head -c 200 "$WORK/tar.err" 2>/dev/null))"
    fi
fi

if [ "$qrc" = 124 ] || [ "$qrc" = 137 ]; then
    fail 124 "timeout: the VM ran past --timeout ${TIMEOUT}s"
fi
if grep -aqE "${KMSG}Kernel panic" "$CONSOLE"; then
    fail 125 "kernel panic: $(grep -aE -m1 "${KMSG}Kernel panic" "$CONSOLE")"
fi
OOPS="${KMSG}(Oops:|BUG:|general protection fault|kernel BUG at)"
if [ "${SHEEPDEV_VM_ALLOW_OOPS:-0}" != 1 ] && grep -aqE "$OOPS" "$CONSOLE"; then
    fail 125 "kernel oops/BUG (SHEEPDEV_VM_ALLOW_OOPS=1 to ignore): $(grep -aE -m1 "$OOPS" "$CONSOLE")"
fi
if grep -aqE "${KMSG}WARNING: " "$CONSOLE"; then
    log "note: the kernel printed a WARNING: $(grep -aE -m1 "${KMSG}WARNING: " "$CONSOLE")"
fi
if [ -z "$rc" ]; then
    fail 125 "no $MARKER line on the console (qemu exit status $qrc)"
fi
if [ "$rc" != 0 ]; then
    [ "$QUIET" = 1 ] && cat "$CONSOLE" >&2
    log "guest script $SCRIPT failed with status $rc (${elapsed}s)"
else
    log "guest script $SCRIPT passed (${elapsed}s)"
fi
exit "$rc"
