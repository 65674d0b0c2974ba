#!/usr/bin/env bash
# The main job on the embedded store, end to end, with nothing but this repository:
# start a store, create the VDI `linux`, write and read it back, snapshot it, clone the
# snapshot, and list everything. (Mapping it as /dev/ublkbN arrives with the data plane.)
# Usage: bash tests/demo.sh        env: SHEEPDEV_DEMO_PORT (default 7000)
set -euo pipefail
cd "$(dirname "$0")/.."
port=${SHEEPDEV_DEMO_PORT:-7000}
addr=127.0.0.1:$port

cargo build --release --quiet
bin=target/release/sheepdev
work=$(mktemp -d)
trap 'kill "$store_pid" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT

echo "== sheepdev store --dir $work/store --listen $addr"
"$bin" store --dir "$work/store" --listen "$addr" &
store_pid=$!
for _ in $(seq 50); do "$bin" vdi -a "$addr" list >/dev/null 2>&1 && break; sleep 0.1; done

run() { echo "\$ sheepdev $*"; "$bin" "$@"; }
run vdi -a "$addr" create linux 1G
head -c 64M /dev/urandom > "$work/data"
echo "\$ sheepdev vdi write linux < 64 MiB of random data"
"$bin" vdi -a "$addr" write linux < "$work/data"
run vdi -a "$addr" snapshot linux --tag base
echo "\$ sheepdev vdi write linux --offset 1M < 4 KiB of zeros"
head -c 4096 /dev/zero | "$bin" vdi -a "$addr" write linux --offset 1M
run vdi -a "$addr" clone linux:base linux-clone
"$bin" vdi -a "$addr" read linux:base --length 64M | cmp - "$work/data" && echo "linux:base reads back the 64 MiB written before the snapshot"
"$bin" vdi -a "$addr" read linux-clone --length 64M | cmp - "$work/data" && echo "linux-clone shares them"
"$bin" vdi -a "$addr" read linux --offset 1M --length 4K | cmp - <(head -c 4096 /dev/zero) && echo "linux has the new zeros at 1 MiB"
run vdi -a "$addr" list
echo "demo OK"
