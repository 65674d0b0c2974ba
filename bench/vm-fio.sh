#!/usr/bin/env bash
# vm-fio.sh - fio in the qemu VM: a ublk null device (the ublk ceiling)
# against a sheepdev device on the embedded store, same jobs, same queues;
# prints the markdown table of `sheepdev fio-report --ceiling`: IOPS, MiB/s,
# p50/p99/p99.9 per job, each with its ratio to the null device.
#
# Usage: bash bench/vm-fio.sh [--runtime SECS] [--repeat N] [--out DIR] [--tcp] [--sheep PREFIX] [JOB...]
#   --runtime SECS  seconds per job (default 10, plus a 2 s ramp)
#   --repeat N      run every job N times on each device, alternating which
#                   goes first (default 1); prints a table per round, then
#                   each job's IOPS/ceiling per round and their median
#   --tcp           the sheepdev device reaches the store in the guest over TCP
#                   (default: the store's unix socket, as a sheep on the same
#                   host; TCP costs ~15 % of the 4k read IOPS in the VM)
#   --sheep PREFIX  the sheepdev device on a real sheep in the guest (PREFIX/sbin/sheep,
#                   PREFIX/bin/dog: a sheep 1.0 you built, tests/README.md) instead of
#                   the embedded store; then `sheepdev bench` in the guest gives the
#                   raw generator and the no-kernel shards against that sheep
#                   (bench/nokernel.txt)
#   --out DIR       where the guest's results go (default
#                   target/bench-vm/YYYYmmdd-HHMMSS): bench.txt (the
#                   setup line), bench.log (the guest's output),
#                   bench/<null|sheepdev>/r<round>/<job>.json (fio),
#                   cpu.txt (CPU per I/O of each run),
#                   bench/prefill.json, serve.log, store.log
#   JOB             bench/fio job names (default: randread-4k-qd1
#                   randread-4k-qd32 randwrite-4k-qd1 randwrite-4k-qd32)
# Env: SHEEPDEV_BIN (use this binary, built with `--features tools`; skip
#      `cargo build --release --features tools`),
#      SHEEPDEV_VM_SKIP_SETUP=1 (skip tests/vm/setup-host.sh), run-vm.sh's
#      SHEEPDEV_VM_* variables.
#
# The VM is qemu TCG (software CPU emulation) with 2 vCPUs: the absolute
# numbers say nothing about hardware; the ratio to the null device is the
# figure to watch.
set -euo pipefail
cd "$(dirname "$0")/.."

runtime=10 repeat=1 out="" jobs=() tcp=() sheep=() sheepbins=()
while [ $# -gt 0 ]; do
    case $1 in
        --runtime) runtime=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --repeat) repeat=$2; shift 2 ;;
        --tcp) tcp=(--tcp); shift ;;
        --sheep)
            for b in sbin/sheep bin/dog; do [ -x "$2/$b" ] || { echo "vm-fio: --sheep $2: no executable $b" >&2; exit 2; }; sheepbins+=(--bin "$2/$b"); done
            sheep=(--sheep); shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) echo "vm-fio: unknown option $1" >&2; exit 2 ;;
        *) jobs+=("$1"); shift ;;
    esac
done
[[ $runtime =~ ^[0-9]+$ ]] || { echo "vm-fio: --runtime wants whole seconds" >&2; exit 2; }
[[ $repeat =~ ^[1-9][0-9]?$ ]] || { echo "vm-fio: --repeat wants a count from 1 to 99" >&2; exit 2; }
for j in ${jobs[@]+"${jobs[@]}"}; do
    [ -f "bench/fio/$j.fio" ] || { echo "vm-fio: no job bench/fio/$j.fio" >&2; exit 2; }
done

# `fio-report` (here and in the guest) and `bench` (the guest, with --sheep) are tooling.
if [ -n "${SHEEPDEV_BIN:-}" ]; then
    bin=$SHEEPDEV_BIN
else
    echo "== cargo build --release --features tools"
    cargo build --release --features tools
    bin=target/release/sheepdev
fi
"$bin" fio-report --help >/dev/null 2>&1 ||
    { echo "vm-fio: $bin has no fio-report (cargo build --release --features tools)" >&2; exit 2; }
[ "${SHEEPDEV_VM_SKIP_SETUP:-0}" = 1 ] || bash tests/vm/setup-host.sh
out=${out:-target/bench-vm/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out"

n=${#jobs[@]}; [ "$n" -gt 0 ] || n=4
timeout=$(( 300 + 2 * n * repeat * (runtime + 20) ))
[ ${#sheep[@]} = 0 ] || timeout=$(( timeout + 2 * n * repeat * (runtime + 20) ))
echo "== fio in the VM: null vs sheepdev, ${runtime}s per job (guest /out: $out)"
bash tests/vm/run-vm.sh --quiet --timeout "$timeout" --bin "$bin" ${sheepbins[@]+"${sheepbins[@]}"} --file bench/fio:/bench/fio \
    --out "$out" tests/vm/bench-guest.sh ${tcp[@]+"${tcp[@]}"} ${sheep[@]+"${sheep[@]}"} --repeat "$repeat" "$runtime" ${jobs[@]+"${jobs[@]}"}

[ -s "$out/bench.txt" ] || { echo "vm-fio: no $out/bench.txt from the guest" >&2; exit 1; }
echo
sed -n 's/^# /Setup: qemu TCG, /p' "$out/bench.txt"
echo
ratios=$out/ratios.txt
: >"$ratios"
for ((r = 1; r <= repeat; r++)); do
    for k in null sheepdev; do
        [ -d "$out/bench/$k/r$r" ] || { echo "vm-fio: no $out/bench/$k/r$r from the guest" >&2; exit 1; }
    done
    [ "$repeat" = 1 ] || echo "Round $r ($([ $((r % 2)) = 1 ] && echo null || echo sheepdev) first):"
    "$bin" fio-report --ceiling "$out/bench/null/r$r" "$out/bench/sheepdev/r$r" >"$out/report-r$r.md"
    cat "$out/report-r$r.md"
    # job, round, IOPS/ceil (the 6th column of the table).
    awk -F'|' -v r="$r" 'NR > 2 { gsub(/ /, "", $2); gsub(/ /, "", $7); print $2, r, $7 }' "$out/report-r$r.md" >>"$ratios"
    echo
done
if [ "$repeat" -gt 1 ]; then
    echo "IOPS / ceiling per round, and the median:"
    echo
    echo "| job | rounds | median |"
    echo "|---|---|---:|"
    for job in $(awk '{print $1}' "$ratios" | sort -u); do
        mapfile -t v < <(awk -v j="$job" '$1 == j {print $3}' "$ratios" | sort -g)
        rounds=$(awk -v j="$job" '$1 == j {print $3}' "$ratios" | paste -sd ' ')
        k=${#v[@]}
        if ((k % 2)); then med=${v[k / 2]}; else med=$(awk -v a="${v[k / 2 - 1]}" -v b="${v[k / 2]}" 'BEGIN {printf "%.2f", (a + b) / 2}'); fi
        echo "| $job | $rounds | **$med** |"
    done
    echo
fi
if [ -s "$out/cpu.txt" ]; then
    echo "CPU per I/O (µs; the whole guest's busy time, the daemon's, the store's, over fio's"
    echo "run and ramp, divided by fio's I/Os; the null device has no store):"
    echo
    echo "| round | device | job | IOPS | busy % | all µs | daemon µs | store µs |"
    echo "|---:|---|---|---:|---:|---:|---:|---:|"
    awk '{ if ($2 == "null") $8 = "-"; printf "| %s | %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7, $8 }' "$out/cpu.txt"
    echo
fi
if [ -s "$out/bench/nokernel.txt" ]; then
    echo "No kernel, same guest, same sheep (sheepdev bench: shards vs the raw pipelined generator):"
    echo
    cat "$out/bench/nokernel.txt"
    echo
fi
echo "fio JSON and logs: $out"
