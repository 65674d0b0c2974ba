#!/bin/sh
# The main job, on a machine with ublk_drv (inside the VM, or a real host as root):
# an embedded store, the daemon, and the VDI `linux` as a disk you mkfs and mount; then a
# snapshot mapped read-only beside it, and everything removed again.
set -eu
port=${SHEEPDEV_DEMO_PORT:-7000}
addr=127.0.0.1:$port
work=$(mktemp -d)
export SHEEPDEV_CONTROL=$work/control.sock
say() { echo "\$ $*"; }

say sheepdev store --dir "$work/store" --listen "$addr" --no-sync
sheepdev store --dir "$work/store" --listen "$addr" --no-sync &
store=$!
say sheepdev serve --state-dir "$work/state"
sheepdev serve --state-dir "$work/state" &
daemon=$!
trap 'kill $daemon $store 2>/dev/null || true' EXIT
i=0; until sheepdev vdi -a "$addr" list >/dev/null 2>&1 && [ -S "$SHEEPDEV_CONTROL" ]; do
  i=$((i + 1)); [ $i -lt 100 ] || { echo "store or daemon did not start" >&2; exit 1; }; sleep 0.1
done

say sheepdev vdi create linux 1G; sheepdev vdi -a "$addr" create linux 1G
say sheepdev add "$addr" linux; dev=$(sheepdev add "$addr" linux); echo "$dev"
say mkfs.ext4 "$dev"; mkfs.ext4 -q "$dev"
mkdir -p "$work/mnt"; mount "$dev" "$work/mnt"
dd if=/dev/urandom of="$work/mnt/data" bs=1M count=32 2>/dev/null
echo "hello from sheepdev" > "$work/mnt/hello.txt"
sum=$(sha256sum "$work/mnt/data" | cut -d' ' -f1)
df -h "$work/mnt" | tail -1
umount "$work/mnt"
say e2fsck -fn "$dev"; e2fsck -fn "$dev" >/dev/null && echo "filesystem clean"
say sheepdev list; sheepdev list
say sheepdev del linux; sheepdev del linux

say sheepdev vdi snapshot linux --tag base; sheepdev vdi -a "$addr" snapshot linux --tag base
say sheepdev add "$addr" linux:base --read-only; snap=$(sheepdev add "$addr" linux:base --read-only)
mount -o ro,noload "$snap" "$work/mnt"
[ "$(sha256sum "$work/mnt/data" | cut -d' ' -f1)" = "$sum" ] && echo "snapshot linux:base: $(cat "$work/mnt/hello.txt"), 32 MiB file intact"
umount "$work/mnt"
say sheepdev del linux:base; sheepdev del linux:base
say sheepdev vdi list; sheepdev vdi -a "$addr" list
echo "demo OK"
