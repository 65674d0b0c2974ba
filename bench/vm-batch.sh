#!/usr/bin/env bash
# vm-batch.sh - UBLK_F_BATCH_IO on against off in the qemu VM (tests/vm/batch-guest.sh)
# on trixie-backports' kernel (7.x has batch I/O): two ublk null devices on libublk's own
# queue loop, the same in everything but batching (`sheepdev batch-null`), 4k fio at QD1
# and QD32, same boot, alternating which goes first; prints IOPS on/off per round, the
# medians, and each server's CPU per I/O. What it measures is the kernel interface itself
# (no sheep behind the null devices): the most batching the queue commands can give.
#
# Usage: bash bench/vm-batch.sh [--runtime SECS] [--rounds R] [--out DIR]
# Env: SHEEPDEV_BIN (a binary built with --features tools; default: build it),
#      SHEEPDEV_VM_SKIP_SETUP=1, SHEEPDEV_VM_KERNEL (default backports).
set -euo pipefail
cd "$(dirname "$0")/.."
runtime=6 rounds=3 out=""
while [ $# -gt 0 ]; do
    case $1 in
        --runtime) runtime=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "vm-batch: unknown argument $1" >&2; exit 2 ;;
    esac
done
for v in "$runtime" "$rounds"; do
    [[ $v =~ ^[1-9][0-9]*$ ]] || { echo "vm-batch: counts and seconds are positive whole numbers" >&2; exit 2; }
done
export SHEEPDEV_VM_KERNEL=${SHEEPDEV_VM_KERNEL:-backports}
if [ -n "${SHEEPDEV_BIN:-}" ]; then bin=$SHEEPDEV_BIN; else
    echo "== cargo build --release --features tools"; cargo build --release --features tools; bin=target/release/sheepdev; fi
[ "${SHEEPDEV_VM_SKIP_SETUP:-0}" = 1 ] || bash tests/vm/setup-host.sh
out=${out:-target/bench-vm/batch-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out"
timeout=$(( 300 + rounds * 6 * (runtime + 6) ))
echo "== batch I/O on vs off in the VM (kernel: $SHEEPDEV_VM_KERNEL; guest /out: $out)"
bash tests/vm/run-vm.sh --quiet --timeout "$timeout" --bin "$bin" --out "$out" tests/vm/batch-guest.sh "$runtime" "$rounds"
grep '^kernel ' "$out/batch.txt"
awk -v secs="$((runtime + 2))" -v who=server -f bench/onoff.awk "$out/batch.txt"
