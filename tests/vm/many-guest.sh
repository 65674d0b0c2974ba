#!/bin/sh
# shellcheck shell=dash disable=SC2015,SC3040
# many-guest.sh - guest script (busybox sh, run with -e by run-vm.sh's /init):
# many devices on one daemon. Maps N devices (default 32) over the embedded store
# (--no-sync --fast-reads, objects on tmpfs, the store's unix socket), each with
# 8 MiB prefilled by 1 MiB writes, and measures in one boot:
#   - the daemon's threads, sockets and RSS: idle, with the N devices mapped,
#     after the prefill, after the fio runs;
#   - 4k randread, io_uring, direct, every device at QD8 at once (one fio, N
#     jobs, group_reporting), against one device of N x 8 MiB at the same total
#     depth (2 jobs x QD 4N), alternating which goes first, ROUNDS rounds; and
#     the same two fio layouts on ublk null devices (N of them against one),
#     the ceiling: what N fio jobs on N devices cost the guest and the kernel
#     whatever serves them;
#   - "spread": the one-device layout (2 jobs x QD 4N) with each job over all N
#     devices (fio's file list, QD8 per device on average), so that N devices
#     and one differ in nothing but the devices (not in fio's N jobs);
#   - the CPU each fio run cost the daemon, the store and the whole guest
#     (clock ticks from /proc, ramp included), to tell where a many/one gap goes;
#     and the same over fio's steady state alone (win_*: setup and ramp left out).
# Usage (guest): many-guest.sh [--sheep] [--perf] [N [RUNTIME_S [ROUNDS [JOBS]]]]
#   --sheep  a real sheep (one node, local driver, -n, objects on tmpfs, copies 1,
#            over TCP; sheep and dog from run-vm.sh --bin) instead of the embedded store
#   --perf   profile the daemon (perf from run-vm.sh --bin; cpu-clock samples, TCG has
#            no PMU) during round 1 of the three sheepdev layouts, after fio's ramp:
#            /out/perf-LAYOUT.txt, the symbols and objects by share of samples, and
#            /out/perf-LAYOUT-callers.txt, the kernel call chains of the hottest ones
#   JOBS: "process" (fio's default, one process per job) or "thread" (fio
#   --thread: the jobs are threads of one fio process) for every layout.
# Host runner: bash bench/vm-many.sh. Leaves /out/many.txt (the figures, one per
# line, "key value") and /out/fio/*.json, serve.log, store.log.
set -eu
BACKEND=store PERF=0
while :; do
    case ${1:-} in
        --sheep) BACKEND=sheep; shift ;;
        --perf) PERF=1; shift ;;
        *) break ;;
    esac
done
[ "$PERF" = 0 ] || echo 0 >/proc/sys/kernel/kptr_restrict 2>/dev/null || true # kernel symbols for perf
N=${1:-32}
RUNTIME=${2:-10}
ROUNDS=${3:-2}
JOBS=${4:-process}
OUT=/out
[ "$RUNTIME" -ge 4 ] || { echo "many: RUNTIME_S is at least 4 (the steady-state window)"; exit 2; }
mkdir -p "$OUT/fio"
R=$OUT/many.txt
: >"$R"
say() { echo "many: $*"; }
rec() { echo "$*" >>"$R"; say "$*"; }
mkdir -p /tmp/store
if [ "$BACKEND" = sheep ]; then
    sheep -f -n -c local -p 7000 /tmp/store >"$OUT/store.log" 2>&1 &
    STP=$!
    i=0
    while ! timeout 10 dog node list -p 7000 >/dev/null 2>&1; do i=$((i+1)); [ $i -lt 100 ] || { say "sheep not up"; cat "$OUT/store.log"; exit 1; }; sleep 0.2; done
    timeout 60 dog cluster format -p 7000 -c 1 >>"$OUT/store.log" 2>&1 || { say "dog cluster format failed"; cat "$OUT/store.log"; exit 1; }
    GW=127.0.0.1:7000
else
    sheepdev store --dir /tmp/store --listen 127.0.0.1:7000 --no-sync --fast-reads >"$OUT/store.log" 2>&1 &
    STP=$!
    GW=unix:/tmp/store/sock
fi
i=0
while ! sheepdev vdi --connect-timeout 1 list >/dev/null 2>&1; do i=$((i+1)); [ $i -lt 100 ] || { say "the $BACKEND is not up"; exit 1; }; sleep 0.2; done
sheepdev serve --metrics-addr off >"$OUT/serve.log" 2>&1 &
SP=$!
i=0
while ! sheepdev list --json >/dev/null 2>&1; do i=$((i+1)); [ $i -lt 150 ] || { say "serve not up"; cat "$OUT/serve.log"; exit 1; }; sleep 0.2; done
snap() { # LABEL
    local t s r
    t=$(ls "/proc/$SP/task" | wc -l)
    s=$(ls -l "/proc/$SP/fd" 2>/dev/null | grep -c 'socket:' || true)
    r=$(awk '/^VmRSS/ { print $2 }' "/proc/$SP/status")
    rec "threads_$1 $t"
    rec "sockets_$1 $s"
    rec "rss_kib_$1 $r"
}
# CPU clock ticks (user + system) of a process, and of the whole guest but idle and iowait.
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
busy() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }
# Context switches (voluntary and not) of every thread of a process: its sleeps and wake-ups.
switches() { cat /proc/"$1"/task/*/status | awk '/^(non)?voluntary_ctxt_switches/ { n += $2 } END { print n }'; }
# The ticks of a fio run's steady state only, as win_LABEL (from 3 s after fio starts, past
# its setup and ramp, for RUNTIME - 2 s): "daemon D store S all A secs T".
window() { # LABEL
    local d0 s0 a0
    sleep 3
    d0=$(ticks "$SP") s0=$(ticks "$STP") a0=$(busy)
    sleep $((RUNTIME - 2))
    rec "win_$1 daemon $(($(ticks "$SP") - d0)) store $(($(ticks "$STP") - s0)) all $(($(busy) - a0)) secs $((RUNTIME - 2))"
}
# Run "$@" (one fio) and record, as cpu_LABEL, the ticks it cost the daemon, the store and
# the guest, and the daemon's context switches: "daemon D store S all A switches W"; and,
# from window, the same over its steady state.
costed() { # LABEL CMD...
    local l=$1 d0 s0 a0 w0 wp
    shift
    window "$l" &
    wp=$!
    d0=$(ticks "$SP") s0=$(ticks "$STP") a0=$(busy) w0=$(switches "$SP")
    case $PERF:$l in
        1:many_r1|1:one_r1|1:spread_r1)
            (sleep 2; exec perf record -q -g -e cpu-clock -F 1000 -p "$SP" -o "/tmp/perf-${l%_r1}.data" -- sleep "$RUNTIME") \
                >"$OUT/perf-record-${l%_r1}.log" 2>&1 &
            "$@"
            wait $! || say "perf record for $l failed: $(cat "$OUT/perf-record-${l%_r1}.log")" ;;
        *) "$@" ;;
    esac
    rec "cpu_$l daemon $(($(ticks "$SP") - d0)) store $(($(ticks "$STP") - s0)) all $(($(busy) - a0)) switches $(($(switches "$SP") - w0))"
    wait "$wp"
}
rec "ticks_per_s $(getconf CLK_TCK 2>/dev/null || echo 100)"
rec "kernel $(uname -r)"
rec "backend $BACKEND$([ "$BACKEND" = sheep ] && echo " ($(sheep -v 2>&1 | head -n 1), 1 node, -n, copies 1, TCP)")"
rec "cpus $(nproc)"
rec "devices $N"
snap idle
devs=""
i=0
while [ $i -lt "$N" ]; do
    sheepdev vdi create "m$i" 64M >/dev/null
    d=$(sheepdev add "$GW" "m$i")
    devs="$devs $d"
    i=$((i + 1))
done
snap mapped
sheepdev vdi create one "$((N * 8))M" >/dev/null
one=$(sheepdev add "$GW" one --depth "$((N * 4 > 128 ? N * 4 : 128))")
for d in $devs; do dd if=/dev/urandom of="$d" bs=1M count=8 oflag=direct 2>/dev/null; done
snap prefilled
dd if=/dev/urandom of="$one" bs=1M count="$((N * 8))" oflag=direct 2>/dev/null
COMMON="--ioengine=io_uring --direct=1 --rw=randread --bs=4k --time_based --runtime=$RUNTIME --ramp_time=2 --group_reporting --output-format=json"
case $JOBS in
    thread) COMMON="$COMMON --thread" ;;
    process) ;;
    *) say "jobs: process or thread, not $JOBS"; exit 2 ;;
esac
rec "fio_jobs $JOBS"
many() { # ROUND [null]
    local args="" i=0 d list=$devs
    [ -z "${2:-}" ] || list=$nulls
    for d in $list; do args="$args --name=d$i --filename=$d --size=8M --iodepth=8"; i=$((i + 1)); done
    # shellcheck disable=SC2086
    costed "${2:-}many_r$1" fio $COMMON --output="$OUT/fio/${2:-}many-r$1.json" $args
}
single() { # ROUND [null]
    local f=$one
    [ -z "${2:-}" ] || f=$onenull
    costed "${2:-}one_r$1" fio $COMMON --output="$OUT/fio/${2:-}one-r$1.json" --name=one --filename="$f" --size="$((N * 4))M" \
        --offset_increment="$((N * 4))M" --numjobs=2 --iodepth="$((N * 4))"
}
spread() { # ROUND [null]: the "one" layout (2 jobs x QD 4N) with each job over all N devices
    local files="" d list=$devs
    [ -z "${2:-}" ] || list=$nulls
    for d in $list; do files="$files${files:+:}$d"; done
    costed "${2:-}spread_r$1" fio $COMMON --output="$OUT/fio/${2:-}spread-r$1.json" --name=spread \
        --filename="$files" --filesize=8M --numjobs=2 --iodepth="$((N * 4))"
}
iops() { tr -d ' \n' <"$1" | sed 's/.*"read":{"io_bytes":[0-9]*,"io_kbytes":[0-9]*,"bw_bytes":[0-9]*,"bw":[0-9]*,"iops":\([0-9.]*\).*/\1/'; }
r=1
while [ $r -le "$ROUNDS" ]; do
    if [ $((r % 2)) = 1 ]; then many $r; single $r; spread $r; else spread $r; single $r; many $r; fi
    rec "iops_many_r$r $(iops "$OUT/fio/many-r$r.json")"
    rec "iops_one_r$r $(iops "$OUT/fio/one-r$r.json")"
    rec "iops_spread_r$r $(iops "$OUT/fio/spread-r$r.json")"
    r=$((r + 1))
done
snap after_fio
# The ceiling: the same layouts on null devices (the sheep devices stay mapped).
nulls=""
i=0
while [ $i -lt "$N" ]; do nulls="$nulls $(sheepdev add --null 64M)"; i=$((i + 1)); done
onenull=$(sheepdev add --null "$((N * 8))M" --depth "$((N * 4 > 128 ? N * 4 : 128))")
r=1
while [ $r -le "$ROUNDS" ]; do
    if [ $((r % 2)) = 1 ]; then many $r null; single $r null; spread $r null; else spread $r null; single $r null; many $r null; fi
    rec "iops_nullmany_r$r $(iops "$OUT/fio/nullmany-r$r.json")"
    rec "iops_nullone_r$r $(iops "$OUT/fio/nullone-r$r.json")"
    rec "iops_nullspread_r$r $(iops "$OUT/fio/nullspread-r$r.json")"
    r=$((r + 1))
done
for d in $nulls $onenull; do sheepdev del "$d" >/dev/null; done
if [ "$PERF" = 1 ]; then
    for l in one spread many; do
        [ -s "/tmp/perf-$l.data" ] || { say "no profile of $l"; continue; }
        { perf report -i "/tmp/perf-$l.data" --stdio --no-children --sort dso -g none 2>&1 | grep -v '^#' | grep . | head -n 8
          perf report -i "/tmp/perf-$l.data" --stdio --no-children --sort sym -g none 2>&1 | grep -E '^# Samples|^ ' | head -n 60
        } >"$OUT/perf-$l.txt"
        # Who calls the kernel's hot symbols (kernel stacks; user code has no frame pointers).
        perf report -i "/tmp/perf-$l.data" --stdio --no-children --sort sym -g caller,0.5,callee,function,percent \
            --percent-limit 1.5 2>&1 | grep -v '^#' | head -n 600 >"$OUT/perf-$l-callers.txt"
        rec "perf_$l $(grep -m1 '^# Samples' "$OUT/perf-$l.txt" | sed 's/^# //')"
    done
fi
sheepdev del one >/dev/null
i=0
while [ $i -lt "$N" ]; do sheepdev del "m$i" >/dev/null; i=$((i + 1)); done
snap deleted
kill -TERM "$SP"
say "done"
