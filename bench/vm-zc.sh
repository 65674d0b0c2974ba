#!/usr/bin/env bash
# vm-zc.sh - zero copy on against off in the qemu VM (tests/vm/zc-guest.sh), on a
# kernel with zero copy (trixie-backports' cloud kernel; the default here): every
# bench/fio job on a --zero-copy on device and a --zero-copy off device of the same
# daemon, same boot, alternating which goes first, the embedded store over TCP;
# prints each job's IOPS and the ratio on/off per round and their median, the
# daemon's CPU per I/O, and the daemon's RSS at depth 128 x 512K x 2 queues.
#
# Usage: bash bench/vm-zc.sh [--runtime SECS] [--rounds R] [--out DIR] [--sheep PREFIX] [JOB...]
#   --sheep PREFIX  against a real sheep in the guest (PREFIX/sbin/sheep, PREFIX/bin/dog: a
#        sheep 1.0 you built, tests/README.md) instead of the embedded store
#   JOB  bench/fio job names (default: randread-4k-qd1 randread-4k-qd32
#        randwrite-4k-qd1 randwrite-4k-qd32 seqread-1m seqwrite-1m)
# Env: SHEEPDEV_BIN (the binary; default: cargo build --release),
#      SHEEPDEV_VM_SKIP_SETUP=1, SHEEPDEV_VM_KERNEL (default backports),
#      run-vm.sh's other SHEEPDEV_VM_* variables.
# The VM is qemu TCG with 2 vCPUs: absolute IOPS say nothing about hardware; the
# ratio on/off, measured in the same boot, is the figure.
set -euo pipefail
cd "$(dirname "$0")/.."
runtime=8 rounds=3 out=""
jobs=() sheep=() sheepbins=()
while [ $# -gt 0 ]; do
    case $1 in
        --sheep)
            for b in sbin/sheep bin/dog; do [ -x "$2/$b" ] || { echo "vm-zc: --sheep $2: no executable $b" >&2; exit 2; }; sheepbins+=(--bin "$2/$b"); done
            sheep=(--sheep); shift 2 ;;
        --runtime) runtime=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) echo "vm-zc: unknown argument $1" >&2; exit 2 ;;
        *) [ -f "bench/fio/$1.fio" ] || { echo "vm-zc: no job bench/fio/$1.fio" >&2; exit 2; }
           jobs+=("$1"); shift ;;
    esac
done
for v in "$runtime" "$rounds"; do
    [[ $v =~ ^[1-9][0-9]*$ ]] || { echo "vm-zc: counts and seconds are positive whole numbers" >&2; exit 2; }
done
export SHEEPDEV_VM_KERNEL=${SHEEPDEV_VM_KERNEL:-backports}
if [ -n "${SHEEPDEV_BIN:-}" ]; then bin=$SHEEPDEV_BIN; else
    echo "== cargo build --release"; cargo build --release; bin=target/release/sheepdev; fi
[ "${SHEEPDEV_VM_SKIP_SETUP:-0}" = 1 ] || bash tests/vm/setup-host.sh
out=${out:-target/bench-vm/zc-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out"
n=${#jobs[@]}; [ "$n" -gt 0 ] || n=6
timeout=$(( 400 + rounds * n * 2 * (runtime + 8) ))
echo "== zero copy on vs off in the VM (kernel: $SHEEPDEV_VM_KERNEL; guest /out: $out)"
SHEEPDEV_VM_MEM=${SHEEPDEV_VM_MEM:-3072} bash tests/vm/run-vm.sh --quiet --timeout "$timeout" --bin "$bin" ${sheepbins[@]+"${sheepbins[@]}"} \
    --file bench/fio:/bench/fio --out "$out" tests/vm/zc-guest.sh ${sheep[@]+"${sheep[@]}"} "$runtime" "$rounds" ${jobs[@]+"${jobs[@]}"}
grep -E '^(kernel|backend|zero_copy) ' "$out/zc.txt"
awk -v secs="$((runtime + 2))" -v who=daemon -f bench/onoff.awk "$out/zc.txt"
awk '/^(rss|hwm)_kib/ { mem[$1] = $2 }
    END { printf "\ndaemon RSS: fresh %.1f MiB; after depth 128 x 512K x 2 queues under fio: zero copy %.1f MiB (peak %.1f), then copy mode %.1f MiB (peak %.1f)\n",
            mem["rss_kib_fresh"] / 1024, mem["rss_kib_after_on"] / 1024, mem["hwm_kib_after_on"] / 1024, mem["rss_kib_after_off"] / 1024, mem["hwm_kib_after_off"] / 1024 }' "$out/zc.txt"
