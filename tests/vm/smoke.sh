#!/bin/sh
# smoke.sh - guest script (busybox sh, run with -e by run-vm.sh's /init) that
# proves the VM harness works:
#   1. ublk_drv is loaded and /dev/ublk-control exists;
#   2. io_uring works: fio --ioengine=io_uring on a tmpfs file for 2 s;
#   3. ext4 works: mkfs.ext4 + mount + write + umount + e2fsck -fn, on
#      /dev/vda when run-vm.sh got --disk, else on a loop device over a
#      file in tmpfs (RAM);
#   4. if run-vm.sh got --out, leaves a file in /out for the host.
# Prints "SMOKE OK" at the end.
#
# Run: bash tests/vm/run-vm.sh tests/vm/smoke.sh
#      bash tests/vm/run-vm.sh --disk 1G --out /tmp/smoke-out tests/vm/smoke.sh
set -eu

step() { echo "smoke: $*"; }

# 1. ublk
grep -q '^ublk_drv ' /proc/modules
[ -c /dev/ublk-control ]
step "ublk_drv loaded, /dev/ublk-control present ($(uname -r))"

# 2. io_uring through fio
fio --name=uring --filename=/tmp/fio.dat --size=64M --ioengine=io_uring \
    --rw=randrw --bs=4k --iodepth=16 --direct=0 --time_based --runtime=2 \
    --eta=never --output=/tmp/fio.out
grep -E 'read:|write:' /tmp/fio.out
grep -q 'ioengine=io_uring' /tmp/fio.out
rm -f /tmp/fio.dat
step "fio io_uring ran 2 s"

# 3. ext4
if [ -b /dev/vda ]; then
    dev=/dev/vda
else
    truncate -s 256M /tmp/ext4.img
    dev=$(losetup -f)
    losetup "$dev" /tmp/ext4.img
fi
mkfs.ext4 -q -F "$dev"
mkdir -p /mnt/ext4
mount -t ext4 "$dev" /mnt/ext4
dd if=/dev/urandom of=/mnt/ext4/data bs=1M count=16 2>/dev/null
sum=$(sha256sum /mnt/ext4/data | cut -d' ' -f1)
umount /mnt/ext4
e2fsck -fn "$dev"
mount -t ext4 -o ro "$dev" /mnt/ext4
[ "$(sha256sum /mnt/ext4/data | cut -d' ' -f1)" = "$sum" ]
umount /mnt/ext4
[ "$dev" = /dev/vda ] || { losetup -d "$dev"; rm -f /tmp/ext4.img; }
step "ext4 on $dev: mkfs, mount, 16 MiB written and read back, e2fsck -fn clean"

# 4. /out (copied back only when run-vm.sh has --out)
cp /tmp/fio.out /out/fio.out
echo "SMOKE OK $(uname -r)" >/out/smoke.txt

echo "SMOKE OK"
