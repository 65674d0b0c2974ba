#!/bin/sh
# shellcheck shell=dash disable=SC2015,SC3040
# zc-guest.sh - guest script (busybox sh, run with -e by run-vm.sh's /init):
# zero copy on against off, in one boot, on the embedded store (--no-sync
# --fast-reads, objects on tmpfs) reached over TCP (127.0.0.1:7000: SEND_ZC
# needs TCP; a unix socket sends kernel pages with WRITE_FIXED instead).
# Two VDIs of SIZE x 2, one mapped with --zero-copy on and one with
# --zero-copy off (2 queues each), both prefilled; then every job of
# bench/fio (run-vm.sh --file bench/fio:/bench/fio) on both devices, ROUNDS
# rounds, alternating which device goes first. Then the daemon's RSS with a
# device of depth 128 x max-io 512K x 2 queues under fio bs=512k iodepth=128 x
# 2 jobs: zero copy first (on a fresh daemon), then copy mode.
# Usage (guest): zc-guest.sh [--sheep] RUNTIME_S ROUNDS JOB...
#   --sheep  a real sheep (one node, local driver, -n, objects in RAM, copies 1;
#            sheep and dog from run-vm.sh --bin) instead of the embedded store
# Host runner: bash bench/vm-zc.sh. Leaves /out/zc.txt (one figure per line,
# "key value"), /out/fio/*.json, serve.log, store.log.
set -eu
BACKEND=store
[ "${1:-}" != --sheep ] || { BACKEND=sheep; shift; }
RUNTIME=${1:-8}
ROUNDS=${2:-2}
shift 2 || true
JOBS=${*:-randread-4k-qd1 randread-4k-qd32 randwrite-4k-qd1 randwrite-4k-qd32 seqread-1m seqwrite-1m}
OUT=/out
FIO_DIR=/bench/fio
SIZE=256M
mkdir -p "$OUT/fio"
R=$OUT/zc.txt
: >"$R"
say() { echo "zc: $*"; }
rec() { echo "$*" >>"$R"; say "$*"; }
die() { say "FAIL: $*"; exit 1; }
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
busy() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }
mkdir -p /tmp/store
if [ "$BACKEND" = sheep ]; then
    sheep -f -n -c local -p 7000 /tmp/store >"$OUT/store.log" 2>&1 &
    STP=$!
    i=0
    while ! timeout 10 dog node list -p 7000 >/dev/null 2>&1; do i=$((i+1)); [ $i -lt 100 ] || die "sheep not up: $(cat "$OUT/store.log")"; sleep 0.2; done
    timeout 60 dog cluster format -p 7000 -c 1 >>"$OUT/store.log" 2>&1 || die "dog cluster format: $(cat "$OUT/store.log")"
else
    sheepdev store --dir /tmp/store --listen 127.0.0.1:7000 --no-sync --fast-reads >"$OUT/store.log" 2>&1 &
    STP=$!
fi
i=0
while ! sheepdev vdi --connect-timeout 1 list >/dev/null 2>&1; do i=$((i+1)); [ $i -lt 100 ] || die "the $BACKEND is not up"; sleep 0.2; done
rec "backend $BACKEND$([ "$BACKEND" = sheep ] && echo " ($(sheep -v 2>&1 | head -n 1), 1 node, -n, copies 1)")"
serve() {
    sheepdev serve --metrics-addr off >>"$OUT/serve.log" 2>&1 &
    SP=$!
    i=0
    while ! sheepdev list --json >/dev/null 2>&1; do i=$((i+1)); [ $i -lt 150 ] || die "serve not up: $(cat "$OUT/serve.log")"; sleep 0.2; done
}
serve
GW=127.0.0.1:7000
rec "ticks_per_s $(getconf CLK_TCK 2>/dev/null || echo 100)"
rec "kernel $(uname -r)"
rec "zero_copy $(sheepdev features | tail -1)"
sheepdev vdi create zon 512M >/dev/null
sheepdev vdi create zoff 512M >/dev/null
on=$(sheepdev add "$GW" zon --queues 2 --zero-copy on) || die "add --zero-copy on failed"
off=$(sheepdev add "$GW" zoff --queues 2 --zero-copy off)
sheepdev list --json | tr -d ' \n' | grep -q '"auto_buf_reg"' || die "the --zero-copy on device has no auto_buf_reg"
for d in $on $off; do
    DEV=$d NUMJOBS=2 SIZE=$SIZE fio --eta=never --output-format=json --output="$OUT/fio/prefill-${d#/dev/}.json" "$FIO_DIR/prefill.fio" >/dev/null
done
run() { # MODE DEV JOB ROUND
    local d0 a0 rc=0
    d0=$(ticks "$SP") a0=$(busy)
    DEV=$2 NUMJOBS=2 SIZE=$SIZE RUNTIME=$RUNTIME RAMP=2 fio --eta=never --output-format=json \
        --output="$OUT/fio/$1-$3-r$4.json" "$FIO_DIR/$3.fio" 2>"$OUT/fio/$1-$3-r$4.err" || rc=$?
    [ $rc = 0 ] || die "fio $3 on $1 exited $rc: $(cat "$OUT/fio/$1-$3-r$4.err")"
    rec "cpu_$1_$3_r$4 daemon $(($(ticks "$SP") - d0)) all $(($(busy) - a0))"
    rec "iops_$1_$3_r$4 $(tr -d ' \n' <"$OUT/fio/$1-$3-r$4.json" | sed 's/.*"jobs":\[//' |
        awk '{ r = $0; sub(/.*"read":\{"io_bytes":[0-9]*,"io_kbytes":[0-9]*,"bw_bytes":[0-9]*,"bw":[0-9]*,"iops":/, "", r); sub(/[,}].*/, "", r);
               w = $0; sub(/.*"write":\{"io_bytes":[0-9]*,"io_kbytes":[0-9]*,"bw_bytes":[0-9]*,"bw":[0-9]*,"iops":/, "", w); sub(/[,}].*/, "", w);
               print r + w }')"
}
r=1
while [ $r -le "$ROUNDS" ]; do
    for j in $JOBS; do
        if [ $((r % 2)) = 1 ]; then run on "$on" "$j" $r; run off "$off" "$j" $r
        else run off "$off" "$j" $r; run on "$on" "$j" $r; fi
    done
    r=$((r + 1))
done
rec "threads_after_jobs $(ls "/proc/$SP/task" | wc -l) ($(cat /proc/$SP/task/*/comm | sort | uniq -c | tr -s ' \n' ' '))"
sheepdev del "$on" >/dev/null
sheepdev del "$off" >/dev/null
# The store keeps objects in the guest's RAM: make room for the RSS runs.
sheepdev vdi delete zon >/dev/null
sheepdev vdi delete zoff >/dev/null
# RSS at depth 128 x 512K x 2 queues: zero copy on a fresh daemon, then copy mode.
kill -TERM "$SP"; wait "$SP" || true
serve
rss() { awk -v k="$1" '$1 == k":" { print $2 }' "/proc/$SP/status"; }
rec "rss_kib_fresh $(rss VmRSS)"
for mode in on off; do
    v=zrss$mode
    sheepdev vdi create "$v" 512M >/dev/null
    d=$(sheepdev add "$GW" "$v" --queues 2 --depth 128 --max-io 512K --zero-copy $mode)
    fio --name=rss --filename="$d" --ioengine=io_uring --direct=1 --rw=randwrite --bs=512k \
        --iodepth=128 --numjobs=2 --size=256M --offset_increment=256M --time_based --runtime=6 \
        --eta=never >"$OUT/fio/rss-$mode.out" 2>&1 || { tail -15 "$OUT/fio/rss-$mode.out"; tail -20 "$OUT/serve.log"; die "fio rss run ($mode) failed"; }
    rec "rss_kib_after_$mode $(rss VmRSS)"
    rec "hwm_kib_after_$mode $(rss VmHWM)"
    sheepdev del "$d" >/dev/null
    sheepdev vdi delete "$v" >/dev/null
done
kill -TERM "$SP"
say "done"
