#!/bin/sh
# shellcheck shell=dash disable=SC2015,SC3040
# batch-guest.sh - guest script (busybox sh, run with -e by run-vm.sh's /init):
# UBLK_F_BATCH_IO on against off, one boot: two ublk null devices on libublk's own queue
# loop (`sheepdev batch-null --batch on|off`, 2 queues x depth 128, each tag its own
# buffer), then 4k fio jobs (io_uring, direct, 2 jobs) on each, ROUNDS rounds alternating
# which device goes first, with the CPU each run cost its server.
# Usage (guest): batch-guest.sh RUNTIME_S ROUNDS
# Host runner: bash bench/vm-batch.sh. Leaves /out/batch.txt ("key value" lines).
set -eu
RUNTIME=${1:-6}
ROUNDS=${2:-3}
OUT=/out
mkdir -p "$OUT/fio"
R=$OUT/batch.txt
: >"$R"
say() { echo "batch: $*"; }
rec() { echo "$*" >>"$R"; say "$*"; }
die() { say "FAIL: $*"; exit 1; }
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
rec "ticks_per_s $(getconf CLK_TCK 2>/dev/null || echo 100)"
rec "kernel $(uname -r)"
start() { # MODE: start a null device, set DEV and PID
    rm -f "/tmp/stop-$1"
    sheepdev batch-null --batch "$1" --stop "/tmp/stop-$1" >"/tmp/dev-$1" 2>"$OUT/batch-null-$1.log" &
    eval "PID_$1=$!"
    i=0
    while [ ! -s "/tmp/dev-$1" ]; do i=$((i+1)); [ $i -lt 100 ] || die "batch-null --batch $1 not up: $(cat "$OUT/batch-null-$1.log")"; sleep 0.2; done
    i=0
    while [ ! -b "$(cat "/tmp/dev-$1")" ]; do i=$((i+1)); [ $i -lt 50 ] || die "no block device $(cat "/tmp/dev-$1")"; sleep 0.1; done
    eval "DEV_$1=$(cat "/tmp/dev-$1")"
}
start on
start off
iops() { tr -d ' \n' <"$1" | sed 's/.*"jobs":\[//' |
    awk '{ r = $0; sub(/.*"read":\{"io_bytes":[0-9]*,"io_kbytes":[0-9]*,"bw_bytes":[0-9]*,"bw":[0-9]*,"iops":/, "", r); sub(/[,}].*/, "", r);
           w = $0; sub(/.*"write":\{"io_bytes":[0-9]*,"io_kbytes":[0-9]*,"bw_bytes":[0-9]*,"bw":[0-9]*,"iops":/, "", w); sub(/[,}].*/, "", w);
           print r + w }'; }
run() { # MODE JOB RW QD ROUND
    local dev pid t0
    eval "dev=\$DEV_$1 pid=\$PID_$1"
    t0=$(ticks "$pid")
    fio --name="$2" --filename="$dev" --ioengine=io_uring --direct=1 --rw="$3" --bs=4k --iodepth="$4" \
        --numjobs=2 --group_reporting --time_based --runtime="$RUNTIME" --ramp_time=2 --size=512M \
        --norandommap --randrepeat=0 --output-format=json --output="$OUT/fio/$1-$2-r$5.json" >/dev/null 2>&1 ||
        die "fio $2 on $1 failed"
    rec "cpu_$1_$2_r$5 server $(($(ticks "$pid") - t0))"
    rec "iops_$1_$2_r$5 $(iops "$OUT/fio/$1-$2-r$5.json")"
}
r=1
while [ $r -le "$ROUNDS" ]; do
    for j in randread-qd1:randread:1 randread-qd32:randread:32 randwrite-qd32:randwrite:32; do
        name=${j%%:*}; rest=${j#*:}; rw=${rest%%:*}; qd=${rest#*:}
        if [ $((r % 2)) = 1 ]; then run on "$name" "$rw" "$qd" $r; run off "$name" "$rw" "$qd" $r
        else run off "$name" "$rw" "$qd" $r; run on "$name" "$rw" "$qd" $r; fi
    done
    r=$((r + 1))
done
touch /tmp/stop-on /tmp/stop-off
wait "$PID_on" || die "batch-null --batch on exited with an error: $(cat "$OUT/batch-null-on.log")"
wait "$PID_off" || die "batch-null --batch off exited with an error: $(cat "$OUT/batch-null-off.log")"
say "done"
