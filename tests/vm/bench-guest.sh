#!/bin/sh
# shellcheck shell=dash disable=SC2015,SC3040
# bench-guest.sh - guest script (busybox sh, run with -e by run-vm.sh's
# /init): fio on a ublk null device (`sheepdev add --null`: every I/O
# completes at once, the ublk ceiling) and on a sheepdev device over the
# embedded store (--no-sync, objects on tmpfs), with the job files of
# bench/fio (run-vm.sh --file bench/fio:/bench/fio).
#
# Usage (guest): bench-guest.sh [--tcp] [--sheep] [--repeat N] [RUNTIME_S [JOB...]]
#   --tcp      the sheepdev device reaches the store over TCP (127.0.0.1:7000)
#              instead of the store's unix socket DIR/sock (the default: the store
#              is on this host, as a local sheep gateway would be)
#   --sheep    a real sheep (one node, local driver, -n, objects on tmpfs,
#              copies 1; sheep and dog from run-vm.sh --bin) instead of the
#              store; after the fio rounds, `sheepdev bench` in the guest against
#              that same sheep: the raw pipelined generator and the shards without
#              the kernel, at the fio jobs' depths (2 shards = 2 jobs), into
#              /out/bench/nokernel.txt
#   --repeat N run every job N times on each device (default 1), null first in
#              odd rounds and sheepdev first in even ones
#   RUNTIME_S  seconds per job (default 10; plus a 2 s ramp)
#   JOB        bench/fio job names (default: randread-4k-qd1 randread-4k-qd32
#              randwrite-4k-qd1 randwrite-4k-qd32)
# Host runner: bash bench/vm-fio.sh (builds, boots the VM, prints a table).
#
# Both devices: --queues 2, NUMJOBS=2, SIZE=128M per job. The sheepdev
# device is prefilled (bench/fio/prefill.fio, NUMJOBS*SIZE) before any job.
# fio's JSON goes to /out/bench/<null|sheepdev>/r<round>/<job>.json (the prefill's to
# /out/bench/prefill.json); after each job `sheepdev fio-report` prints that
# job's row (and fails the run if fio reported errors). The host makes the
# tables with `sheepdev fio-report --ceiling /out/bench/null/rN /out/bench/sheepdev/rN`.
# /out/bench.txt holds one "# ..." line describing the setup; this script's
# output goes to /out/bench.log, the daemon's and store's logs to /out.
set -eu

# Copy everything this script prints to /out/bench.log (ash has pipefail).
if [ -z "${BENCH_TEED:-}" ] && [ -d /out ]; then
    export BENCH_TEED=1
    set -o pipefail
    sh -e "$0" "$@" 2>&1 | tee /out/bench.log
    exit $?
fi

GATEWAY=unix
REPEAT=1
BACKEND=store
while [ $# -gt 0 ]; do
    case $1 in
        --tcp) GATEWAY=tcp; shift ;;
        --sheep) BACKEND=sheep; shift ;;
        --repeat) REPEAT=$2; shift 2 ;;
        *) break ;;
    esac
done
RUNTIME=${1:-10}
[ $# -gt 0 ] && shift
JOBS=${*:-randread-4k-qd1 randread-4k-qd32 randwrite-4k-qd1 randwrite-4k-qd32}
FIO_DIR=/bench/fio
ADDR=127.0.0.1:7000
QUEUES=2
SIZE=128M
RAMP=2
W=/tmp/bench
OUT=/out
T_CMD=120
STORE_PID=""
SERVE_PID=""

say() { echo "bench: $*"; }
fail() { echo "bench: FAIL: $*" >&2; exit 1; }

sd() { timeout "$T_CMD" sheepdev "$@"; }

# wait_for WHAT PID LOG CMD...: until CMD succeeds, at most 60 s, failing
# at once when PID has exited.
wait_for() {
    local what="$1" pid="$2" log="$3" i=0 rc=0
    shift 3
    while ! "$@" >/dev/null 2>&1; do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" || rc=$?; fail "$what exited (status $rc) before it was ready: $(cat "$log")"; }
        i=$((i + 1))
        [ $i -le 300 ] || fail "$what not ready after 60 s: $(cat "$log")"
        sleep 0.2
    done
    say "$what ready"
}

add_dev() { # ARGS...: sets DEV
    local rc=0
    sd add "$@" >"$W/add.out" 2>"$W/add.err" || rc=$?
    [ "$rc" = 0 ] || fail "sheepdev add $* exited $rc: $(cat "$W/add.err")"
    DEV=$(cat "$W/add.out")
    [ -b "$DEV" ] || fail "sheepdev add $* printed '$DEV', not a block device"
    say "sheepdev add $* -> $DEV"
}

# ticks: "ALL IDLE SERVE STORE" in clock ticks so far: every CPU's time and idle
# time (/proc/stat), the daemon's and the store's user + system time.
ticks() {
    local store_pids=$STORE_PID
    [ "$BACKEND" != sheep ] || store_pids=$(pidof sheep)
    echo "$(awk '/^cpu / { print $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9, $5 }' /proc/stat)" \
        "$(awk '{ print $14 + $15 }' "/proc/$SERVE_PID/stat")" \
        "$(for p in $store_pids; do cat "/proc/$p/stat"; done | awk '{ t += $14 + $15 } END { print t + 0 }')"
}

# run_job KIND DEV JOB ROUND: run bench/fio/JOB.fio on DEV into
# /out/bench/KIND/rROUND/JOB.json, print its row of `sheepdev fio-report`,
# and add a line to /out/cpu.txt: round, kind, job, IOPS, busy %, and the
# CPU time per I/O of the whole guest, the daemon and the store in µs
# (from the tick counts around fio, ramp included; IOPS from fio).
run_job() {
    local kind="$1" dev="$2" job="$3" round="$4" json rc=0 t0 t1
    mkdir -p "$OUT/bench/$kind/r$round"
    json=$OUT/bench/$kind/r$round/$job.json
    t0=$(ticks)
    DEV=$dev NUMJOBS=$QUEUES SIZE=$SIZE RUNTIME=$RUNTIME RAMP=$RAMP \
        fio --eta=never --output-format=json --output="$json" "$FIO_DIR/$job.fio" 2>"$W/fio.err" || rc=$?
    t1=$(ticks)
    if [ "$rc" != 0 ]; then
        cat "$W/fio.err" >&2
        sed '/^{/,$d' "$json" >&2 2>/dev/null || true
        fail "fio $job on $kind ($dev) exited $rc"
    fi
    sd fio-report "$json" >"$W/report.md" 2>"$W/report.err" || { cat "$W/report.md" >&2; fail "$kind $job: $(cat "$W/report.err")"; }
    say "round $round $kind: $(tail -n 1 "$W/report.md")"
    awk -v r="$round" -v k="$kind" -v j="$job" -v t0="$t0" -v t1="$t1" -v cpus="$(nproc)" '
        /"iops" :/ { gsub(/[",]/, "", $3); iops += $3 }
        END {
            split(t0, a, " "); split(t1, b, " ")
            all = b[1] - a[1]; busy = all - (b[2] - a[2])
            if (iops <= 0 || all <= 0) { printf "%s %s %s 0 - - - -\n", r, k, j; exit }
            # µs of CPU per I/O = share of all CPU time x CPUs / IOPS.
            per = cpus * 1e6 / iops / all
            printf "%s %s %s %.0f %.0f %.0f %.0f %.0f\n", r, k, j, iops, 100 * busy / all, busy * per, (b[3] - a[3]) * per, (b[4] - a[4]) * per
        }' "$json" >>"$OUT/cpu.txt"
}

cleanup() {
    local rc=$?
    set +e
    [ -n "$SERVE_PID" ] && for d in ${DEV_NULL:-} ${DEV_SD:-}; do timeout 30 sheepdev del "$d" --force; done
    [ "$BACKEND" != sheep ] || { cp "$W/store/sheep.log" "$OUT/" 2>/dev/null; kill -KILL $(pidof sheep) 2>/dev/null; }
    for p in $SERVE_PID $STORE_PID; do
        kill -TERM "$p" 2>/dev/null
        i=0; while kill -0 "$p" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.2; i=$((i + 1)); done
        kill -KILL "$p" 2>/dev/null
    done
    cp "$W/serve.log" "$W/store.log" "$OUT/" 2>/dev/null
    [ "$rc" = 0 ] || { say "FAILED (status $rc); serve.log:"; tail -n 40 "$W/serve.log"; }
    exit "$rc"
}

for j in prefill $JOBS; do
    [ -f "$FIO_DIR/$j.fio" ] || fail "$FIO_DIR/$j.fio missing (run-vm.sh --file bench/fio:/bench/fio)"
done
mkdir -p "$W" "$OUT/bench/null" "$OUT/bench/sheepdev"
: >"$OUT/bench.txt"
: >"$OUT/cpu.txt"
trap cleanup EXIT
say "kernel $(uname -r), $(nproc) cpus, $(fio --version), $(sheepdev --version); runtime ${RUNTIME}s + ramp ${RAMP}s; jobs: $JOBS; $BACKEND over $GATEWAY"

if [ "$BACKEND" = sheep ]; then
    mkdir -p "$W/store"
    sheep -f -n -c local -p "${ADDR##*:}" "$W/store" >"$W/store.log" 2>&1 &
    STORE_PID=$!
    wait_for "sheep" "$STORE_PID" "$W/store.log" timeout 10 dog node list -p "${ADDR##*:}"
    timeout 60 dog cluster format -p "${ADDR##*:}" -c 1 >>"$W/store.log" 2>&1 || fail "dog cluster format: $(cat "$W/store.log")"
else
    sheepdev store --dir "$W/store" --listen "$ADDR" --no-sync --fast-reads >"$W/store.log" 2>&1 &
    STORE_PID=$!
fi
wait_for "the $BACKEND" "$STORE_PID" "$W/store.log" timeout 10 sheepdev vdi -a "$ADDR" list
sheepdev serve >"$W/serve.log" 2>&1 &
SERVE_PID=$!
wait_for "sheepdev serve" "$SERVE_PID" "$W/serve.log" timeout 10 sheepdev list --json

sd vdi -a "$ADDR" create bench 1G >/dev/null || fail "sheepdev vdi create bench 1G failed"
add_dev --null 1G --queues "$QUEUES"
DEV_NULL=$DEV
if [ "$GATEWAY" = unix ]; then
    [ -S "$W/store/sock" ] || fail "the store has no unix socket $W/store/sock: $(cat "$W/store.log")"
    add_dev "unix:$W/store/sock" bench --queues "$QUEUES"
else
    add_dev "$ADDR" bench --queues "$QUEUES"
fi
DEV_SD=$DEV

say "prefill of $DEV_SD ($QUEUES x $SIZE)"
t0=$(date +%s)
DEV=$DEV_SD NUMJOBS=$QUEUES SIZE=$SIZE fio --eta=never --output-format=json --output="$OUT/bench/prefill.json" \
    "$FIO_DIR/prefill.fio" 2>"$W/fio.err" || { cat "$W/fio.err" >&2; fail "prefill of $DEV_SD failed"; }
say "prefill took $(( $(date +%s) - t0 )) s"

echo "# kernel $(uname -r), $(nproc) vCPUs, $(fio --version), numjobs=$QUEUES, queues=$QUEUES, runtime ${RUNTIME}s, $([ "$BACKEND" = sheep ] && echo "a real sheep ($(sheep -v 2>&1 | head -n 1), 1 node, -n, tmpfs)" || echo "the embedded store") reached over $GATEWAY, $REPEAT round(s)" >>"$OUT/bench.txt"
for job in $JOBS; do
    r=1
    while [ $r -le "$REPEAT" ]; do
        if [ $((r % 2)) = 1 ]; then
            run_job null "$DEV_NULL" "$job" $r
            run_job sheepdev "$DEV_SD" "$job" $r
        else
            run_job sheepdev "$DEV_SD" "$job" $r
            run_job null "$DEV_NULL" "$job" $r
        fi
        r=$((r + 1))
    done
done

for d in "$DEV_NULL" "$DEV_SD"; do
    sd del "$d" 2>"$W/del.err" || fail "sheepdev del $d failed: $(cat "$W/del.err")"
done
DEV_NULL="" DEV_SD=""
if [ "$BACKEND" = sheep ]; then
    # The same depths without the kernel: 2 shards = the fio jobs, against the same sheep,
    # over the same gateway as the device (its unix socket unless --tcp).
    depths=$(for j in $JOBS; do echo "${j##*-qd}"; done | sort -nu | tr "\n" , | sed "s/,$//")
    wl=$(for j in $JOBS; do echo "${j%-qd*}"; done | sort -u | tr "\n" , | sed "s/,$//")
    say "sheepdev bench (no kernel) against the same sheep: $wl at depths $depths, 2 shards, $REPEAT repeat(s)"
    target=$ADDR
    [ "$GATEWAY" != unix ] || target=unix:$W/store/sock
    timeout 1800 sheepdev bench -a "$target" --workloads "$wl" --depths "$depths" --shards 2 --seconds "$RUNTIME" \
        --size 256M --repeat "$REPEAT" >"$OUT/bench/nokernel.txt" 2>"$W/bench.err" ||
        { cat "$W/bench.err" >&2; fail "sheepdev bench against the sheep failed"; }
    cat "$OUT/bench/nokernel.txt"
fi
say "done"
