#!/usr/bin/env bash
# vm-many.sh - many devices on one daemon, in the qemu VM (tests/vm/many-guest.sh):
# the daemon's threads, sockets and RSS with N devices mapped (idle, mapped,
# after an 8 MiB prefill of each, after fio), and the aggregate 4k randread of
# the N devices at QD8 each against one device at the same total depth, in the
# same boot, alternating which goes first, and the same two layouts on ublk null
# devices (the ceiling: what N fio jobs on N devices cost whatever serves them),
# and "spread": the one-device layout (2 jobs) with each job over all N devices.
# Prints the figures and the ratios, and the CPU per I/O of each run (daemon,
# store, the rest — fio and the kernel outside those two — and the whole guest).
#
# Usage: bash bench/vm-many.sh [--devices N] [--runtime SECS] [--rounds R] [--fio-thread] [--sheep PREFIX] [--perf] [--out DIR]
#   --fio-thread: fio's jobs are threads of one process (fio --thread) in every
#   layout, instead of one process per job.
#   --sheep PREFIX: against a real sheep in the guest (PREFIX/sbin/sheep, PREFIX/bin/dog:
#   a sheep 1.0 you built, tests/README.md) instead of the embedded store.
#   --perf: also profile the daemon in round 1 of each sheepdev layout (the host's perf,
#   Debian's linux-perf, copied into the guest): DIR/perf-{one,spread,many}.txt, and the
#   kernel call chains of the hottest symbols in DIR/perf-{one,spread,many}-callers.txt.
# Env: SHEEPDEV_BIN (the binary; default: cargo build --release), SHEEPDEV_VM_SKIP_SETUP=1,
#      run-vm.sh's SHEEPDEV_VM_* variables.
# The VM is qemu TCG with 2 vCPUs: absolute IOPS say nothing about hardware; the
# ratio many/one is the figure.
set -euo pipefail
cd "$(dirname "$0")/.."
n=32 runtime=10 rounds=2 out="" jobs=process
sheep=() sheepbins=() perf=()
while [ $# -gt 0 ]; do
    case $1 in
        --devices) n=$2; shift 2 ;;
        --runtime) runtime=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --fio-thread) jobs=thread; shift ;;
        --perf)
            p=$(command -v perf) || { echo "vm-many: --perf: no perf on this host (apt-get install linux-perf)" >&2; exit 2; }
            sheepbins+=(--bin "$p"); perf=(--perf); shift ;;
        --sheep)
            for b in sbin/sheep bin/dog; do [ -x "$2/$b" ] || { echo "vm-many: --sheep $2: no executable $b" >&2; exit 2; }; sheepbins+=(--bin "$2/$b"); done
            sheep=(--sheep); shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "vm-many: unknown argument $1" >&2; exit 2 ;;
    esac
done
for v in "$n" "$runtime" "$rounds"; do
    [[ $v =~ ^[1-9][0-9]*$ ]] || { echo "vm-many: counts and seconds are positive whole numbers" >&2; exit 2; }
done
[ "$runtime" -ge 4 ] || { echo "vm-many: --runtime is at least 4 s (the steady-state window is 2 s shorter)" >&2; exit 2; }
if [ -n "${SHEEPDEV_BIN:-}" ]; then bin=$SHEEPDEV_BIN; else
    echo "== cargo build --release"; cargo build --release; bin=target/release/sheepdev; fi
[ "${SHEEPDEV_VM_SKIP_SETUP:-0}" = 1 ] || bash tests/vm/setup-host.sh
out=${out:-target/bench-vm/many-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out"
timeout=$(( 300 + n * 6 + rounds * 6 * (runtime + 8) ))
echo "== $n devices in the VM (guest /out: $out)"
SHEEPDEV_VM_MEM=${SHEEPDEV_VM_MEM:-3072} bash tests/vm/run-vm.sh --quiet --timeout "$timeout" --bin "$bin" ${sheepbins[@]+"${sheepbins[@]}"} \
    --out "$out" tests/vm/many-guest.sh ${sheep[@]+"${sheep[@]}"} ${perf[@]+"${perf[@]}"} "$n" "$runtime" "$rounds" "$jobs"
cat "$out/many.txt"
awk -v n="$n" -v secs="$((runtime + 2))" '
    /^ticks_per_s/ { tps = $2 }
    /^cpus/ { cpus = $2 }
    /^iops_/ { io[substr($1, 6)] = $2 }
    /^cpu_/ { k = substr($1, 5); cd[k] = $3; cs[k] = $5; ca[k] = $7; cw[k] = $9 }
    /^iops_many_r/ { m[substr($1, 12)] = $2 }
    /^iops_one_r/ { o[substr($1, 11)] = $2 }
    /^iops_nullmany_r/ { nm[substr($1, 16)] = $2 }
    /^iops_nullone_r/ { no[substr($1, 15)] = $2 }
    /^iops_spread_r/ { sp[substr($1, 14)] = $2 }
    /^iops_nullspread_r/ { nsp[substr($1, 18)] = $2 }
    /^rss_kib_after_fio/ { rss = $2 }
    /^win_/ { k = substr($1, 5); wd[k] = $3; ws[k] = $5; wa[k] = $7; wt[k] = $9 }
    END {
        for (r in m) printf "round %s: sheepdev many/one = %.2f; null devices many/one = %.2f; spread/one: sheepdev %.2f, null devices %.2f\n", r, m[r] / o[r], nm[r] / no[r], sp[r] / o[r], nsp[r] / no[r]
        # CPU per I/O, ramp included (the ramp runs at about the measured rate).
        for (k in cd) if (io[k] > 0) {
            f = 1e6 / tps / (io[k] * secs)
            # rest: fio and the kernel outside the daemon and the store (what the load itself costs).
            printf "cpu per I/O, %s: daemon %.1f us, store %.1f us, rest %.1f us, whole guest %.1f us; daemon sleeps per 100 I/Os %.1f\n", k, cd[k] * f, cs[k] * f, (ca[k] - cd[k] - cs[k]) * f, ca[k] * f, 100 * cw[k] / (io[k] * secs)
        }
        # Over the steady state alone. When the guest is busy all the time, IOPS go as the
        # inverse of its CPU per I/O; "bound": many/one if the daemon cost no more per I/O
        # for N devices than for one (everything else as measured).
        for (k in wd) if (io[k] > 0) {
            f = 1e6 / tps / (io[k] * wt[k]); g[k] = wa[k] * f; dd[k] = wd[k] * f
            printf "steady state, cpu per I/O, %s: daemon %.1f us, store %.1f us, rest %.1f us, whole guest %.1f us (guest busy %.0f %%)\n", k, wd[k] * f, ws[k] * f, (wa[k] - wd[k] - ws[k]) * f, g[k], 100 * wa[k] / (tps * wt[k] * cpus)
        }
        for (r in m) if (("many_r" r) in g && ("one_r" r) in g)
            printf "round %s, steady state: many/one %.2f measured; one/many guest CPU per I/O %.2f; bound with the daemon at the one-device cost per I/O %.2f\n", r, m[r] / o[r], g["one_r" r] / g["many_r" r], g["one_r" r] / (g["many_r" r] - dd["many_r" r] + dd["one_r" r])
        printf "RSS after fio: %.1f MiB (goal: <= %d MiB = 128 + 2 x %d devices)\n", rss / 1024, 128 + 2 * n, n
    }' "$out/many.txt"
