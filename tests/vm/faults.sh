#!/bin/sh
# shellcheck shell=dash disable=SC2015,SC3040
# faults.sh - guest script (busybox sh, run with -e by run-vm.sh's /init): the
# reliability scenarios. Each maps a VDI, makes ext4 on it and runs fio on a
# file there with verify=crc32c + verify_fatal=1 while a fault happens; fio
# must finish with zero errors, e2fsck -fn must be clean, and the device must
# still be there (or, for the timeout scenario, fail with EIO and go away with
# del --force).
#
#   a store-restart  the store process is killed (-9) mid-fio and restarted
#   b failover       two gateways (fault proxies to one store); the one the
#                    device talks to is killed mid-fio
#   d live-snapshot  two snapshots taken by another process (sheepdev vdi
#                    snapshot) mid-fio; the table and the VDI lock follow the
#                    new working vid; a kill -9 of the daemon, and the new one
#                    re-attaches that vid; then the device is del'd and the
#                    new working VDI mapped again: same file checksum, fsck
#   e resets         a fault proxy resets every connection every 2 s
#   f io-timeout     the only gateway is gone for longer than --io-timeout 3:
#                    a write fails with EIO, del --force completes
#
# (c, daemon kill -9 and recovery, is scenario `recovery` of scenarios.sh.)
#
# Each writes a row "fault | stall | bytes verified" to /out/faults.txt: the
# stall is fio's largest write latency (the longest any write waited), the
# bytes are what fio's verify phase read back and checked.
#
# Usage (host): bash tests/vm/kernel-tests.sh --faults [a b d e f]
# Needs scenarios.sh at /root/scenarios.sh in the guest (its helpers are
# sourced) and sheepdev with the hidden `fault-proxy` subcommand.
set -eu

if [ -z "${FAULTS_TEED:-}" ] && [ -d /out ]; then
    export FAULTS_TEED=1
    set -o pipefail
    sh -e "$0" "$@" 2>&1 | tee /out/faults.log
    exit $?
fi

SCENARIOS_SOURCE_ONLY=1
# shellcheck source=tests/vm/scenarios.sh
. "${SCENARIOS_SH:-/root/scenarios.sh}"

FIO_SIZE=${FAULTS_FIO_SIZE:-32M}  # written then verified, per scenario
FIO_RATE=${FAULTS_FIO_RATE:-800}  # write IOPS cap: the fault lands mid-write
FAULT_AFTER=3                     # seconds into the write phase
PROXY_PIDS=""

# proxy PORT ARGS...: a fault proxy 127.0.0.1:PORT -> the store, logging to
# $W/proxy-PORT.log; sets PROXY_PID.
proxy() {
    local port=$1 i=0; shift
    sheepdev fault-proxy --listen "127.0.0.1:$port" --target "$ADDR" "$@" >"$W/proxy-$port.log" 2>&1 &
    PROXY_PID=$!
    PROXY_PIDS="$PROXY_PIDS $PROXY_PID"
    while ! timeout 10 sheepdev vdi -a "127.0.0.1:$port" --connect-timeout 1 list >/dev/null 2>&1; do
        kill -0 "$PROXY_PID" 2>/dev/null || fail "fault-proxy on $port exited: $(cat "$W/proxy-$port.log")"
        i=$((i + 1))
        [ $i -le 100 ] || fail "fault-proxy on $port not ready after 20 s: $(cat "$W/proxy-$port.log")"
        sleep 0.2
    done
}

# fio_fault NAME DEV FAULT_CMD: ext4 on DEV, fio randwrite 4k (iodepth 16,
# capped at FIO_RATE IOPS) with crc32c verify on a file there; FAULT_CMD runs
# FAULT_AFTER seconds into the write phase; then checks, sha256 of the file
# in $W/NAME.sum, umount, e2fsck -fn, and the faults.txt row.
fio_fault() {
    local name=$1 d=$2 inject=$3 mnt=/mnt/f-$1 eng rc=0 fpid err lat stall bytes
    step "mkfs.ext4 $d, mount"
    run "mkfs.ext4 $d" mkfs.ext4 -q -F "$d"
    mkdir -p "$mnt"
    run "mount $d" mount -t ext4 "$d" "$mnt"
    eng=$(fio_engine)
    step "fio randwrite 4k iodepth=16 size=$FIO_SIZE rate=$FIO_RATE/s verify=crc32c on $mnt/data"
    fio --name="$name" --filename="$mnt/data" --size="$FIO_SIZE" --rw=randwrite --bs=4k \
        --iodepth=16 --ioengine="$eng" --direct=1 --rate_iops=1000000,"$FIO_RATE" \
        --verify=crc32c --verify_fatal=1 --do_verify=1 \
        --eta=never --output-format=json --output="$W/fio-$name.json" 2>"$W/fio-$name.err" &
    fpid=$!
    sleep "$FAULT_AFTER"
    kill -0 "$fpid" 2>/dev/null || fail "fio ended before the fault was injected (lower FAULTS_FIO_RATE)"
    step "fault: $inject"
    $inject
    step "waiting for fio"
    wait "$fpid" || rc=$?
    if [ "$rc" != 0 ] || grep -qiE 'verify.*fail|bad magic|bad header|crc32c' "$W/fio-$name.err"; then
        cat "$W/fio-$name.err" >&2
        fail "fio exited $rc across the fault (errors above)"
    fi
    json_flat <"$W/fio-$name.json" >"$W/fio.flat"
    err=$(awk -F'\t' '$1 == ".jobs[0].error" { print $2 }' "$W/fio.flat")
    [ "$err" = 0 ] || fail "fio job error=$err"
    lat=$(awk -F'\t' '$1 == ".jobs[0].write.lat_ns.max" { print $2 }' "$W/fio.flat")
    bytes=$(awk -F'\t' '$1 == ".jobs[0].read.io_bytes" { print $2 }' "$W/fio.flat")
    [ -n "$bytes" ] && [ "$bytes" -gt 0 ] || fail "fio verified nothing (read io_bytes=$bytes)"
    stall=$(awk -v n="$lat" 'BEGIN { printf "%.2f s", n / 1e9 }')
    (cd "$mnt" && sha256sum data) >"$W/$name.sum"
    run "umount $mnt" umount "$mnt"
    step "e2fsck -fn $d"
    e2fsck -fn "$d" >"$W/fsck.out" 2>&1 || { cat "$W/fsck.out" >&2; fail "e2fsck -fn $d: not clean (above)"; }
    step "fio: longest write $stall, $bytes bytes verified, fsck clean"
    echo "$SCEN | $stall | $bytes" >>"$OUT/faults.txt"
}

# ------------------------------------------------------------ a store restart
fa_restart() {
    kill -KILL "$STORE_PID"
    wait "$STORE_PID" 2>/dev/null || true
    STORE_PID=""
    sleep 1
    start_store
}
fa() {
    begin a store-restart
    ensure_vdi fa 256M
    add_dev "$ADDR" fa --queues 2
    fio_fault fa "$DEV" fa_restart
    del_dev fa -- "$DEV"
    pass
}

# ------------------------------------------------------------ b failover
FB_DEAD=""
fb_kill() {
    kill -KILL "$FB_DEAD"
}
fb() {
    local p1 p2
    begin b failover
    ensure_vdi fb 256M
    proxy 7101; p1=$PROXY_PID
    proxy 7102; p2=$PROXY_PID
    add_dev -a 127.0.0.1:7101,127.0.0.1:7102 fb --queues 2
    FB_DEAD=$p1
    fio_fault fb "$DEV" fb_kill
    kill -0 "$p2" 2>/dev/null || fail "the second gateway died too"
    del_dev fb -- "$DEV"
    kill -TERM "$p2" 2>/dev/null || true
    pass
}

# ------------------------------------------------------------ d live snapshot
fd_snap() {
    run "snapshot fd (live1)" vdi snapshot fd -t live1
    sleep 1
    run "snapshot fd (live2)" vdi snapshot fd -t live2
}
fd() {
    local d n wv
    begin d live-snapshot
    ensure_vdi fd 256M
    add_dev "$ADDR" fd --queues 2
    d=$DEV
    fio_fault fd "$d" fd_snap
    snap_exists fd live1 && snap_exists fd live2 || fail "the snapshots are not listed: $(vdi_rows | tr '\n' ';')"
    n=$(grep -c 'live snapshot of vid' "$W/serve.log" || true)
    [ "$n" = 2 ] || fail "serve.log shows $n live snapshots followed, expected 2: $(tail -5 "$W/serve.log")"
    n=$(wget -qO- http://127.0.0.1:9477/metrics | awk '/^sheepdev_inode_reloads_total/ { s += $NF } END { print s + 0 }')
    [ "$n" = 2 ] || fail "sheepdev_inode_reloads_total sums to $n on /metrics, expected 2"
    wv=$(vdi_rows | awk '$1 == "fd" && $3 == "false" { print $5 }')
    [ "$(list_get "$d" vid)" = "$wv" ] || fail "sheepdev list says vid $(list_get "$d" vid), the working fd is $wv"
    step "the table follows the new working vid $wv; its lock moved with it"
    expect_fail "in use" "a second exclusive add of the followed VDI" add "$ADDR" fd
    step "kill -9 of the daemon after the snapshots; a new one re-attaches the new vid"
    kill -KILL "$SERVE_PID"
    wait "$SERVE_PID" 2>/dev/null || true
    SERVE_PID=""
    start_serve
    s7_wait_state "$d" live 90
    [ "$(list_get "$d" vid)" = "$wv" ] || fail "re-attached with vid $(list_get "$d" vid), not $wv"
    del_dev fd -- "$d"
    step "the new working VDI, mapped again, holds what the device wrote"
    add_dev "$ADDR" fd
    d=$DEV
    e2fsck -fn "$d" >"$W/fsck.out" 2>&1 || { cat "$W/fsck.out" >&2; fail "e2fsck -fn of the re-mapped working VDI: not clean"; }
    mkdir -p /mnt/f-fd
    run "mount again" mount -t ext4 -o ro "$d" /mnt/f-fd
    (cd /mnt/f-fd && sha256sum data) >"$W/fd.sum2"
    run "umount" umount /mnt/f-fd
    cmp -s "$W/fd.sum" "$W/fd.sum2" || fail "the file differs after del + add of the working VDI: $(cat "$W/fd.sum" "$W/fd.sum2")"
    del_dev fd -- "$d"
    pass
}

# ------------------------------------------------------------ e resets
fe_none() { :; }
fe() {
    local n
    begin e resets
    ensure_vdi fe 256M
    proxy 7103 --reset-every 2s
    add_dev -a 127.0.0.1:7103 fe --queues 2
    fio_fault fe "$DEV" fe_none
    n=$(grep -c -i 'reset' "$W/proxy-7103.log" || true)
    [ "$n" -ge 2 ] || fail "the proxy reset only $n times during fio: $(tail -5 "$W/proxy-7103.log")"
    step "$n connection resets during fio"
    del_dev fe -- "$DEV"
    kill -TERM "$PROXY_PID" 2>/dev/null || true
    pass
}

# ------------------------------------------------------------ f io-timeout
ff() {
    local d p t0 t1 eio rc=0
    begin f io-timeout
    ensure_vdi ff 64M
    proxy 7104; p=$PROXY_PID
    add_dev -a 127.0.0.1:7104 ff --io-timeout 3
    d=$DEV
    pattern F 1 >"$W/ff.in"
    run "write while the cluster is there" dd if="$W/ff.in" of="$d" bs=65536 oflag=direct conv=notrunc status=none
    kill -KILL "$p"
    wait "$p" 2>/dev/null || true
    step "gateway gone; a direct write must fail with EIO after about 3 s"
    t0=$(date +%s)
    timeout 60 dd if="$W/ff.in" of="$d" bs=65536 oflag=direct conv=notrunc status=none 2>"$W/ff.err" || rc=$?
    t1=$(date +%s)
    [ "$rc" != 0 ] || fail "a write with the cluster gone succeeded"
    [ "$rc" != 124 ] || fail "a write with the cluster gone hung past 60 s (--io-timeout 3)"
    grep -qi 'input/output error' "$W/ff.err" || fail "the write failed, but not with EIO: $(cat "$W/ff.err")"
    eio=$((t1 - t0))
    step "write failed after $eio s: $(head -1 "$W/ff.err")"
    t0=$(date +%s)
    del_dev "$d" --force -- "$d"
    t1=$(date +%s)
    step "del --force took $((t1 - t0)) s"
    echo "$SCEN | EIO after $eio s; del --force took $((t1 - t0)) s | -" >>"$OUT/faults.txt"
    pass
}

# ------------------------------------------------------------ main
FAULTS_ALL="a:store-restart b:failover d:live-snapshot e:resets f:io-timeout"
pick=""
[ $# -gt 0 ] || set -- all
for a in "$@"; do
    found=""
    for s in $FAULTS_ALL; do
        case $a in all|"${s%%:*}"|"${s#*:}") pick="$pick ${s%%:*}"; found=1 ;; esac
    done
    [ -n "$found" ] || { echo "usage: faults.sh [all|SCENARIO...], SCENARIO one of: $FAULTS_ALL" >&2; exit 2; }
done

fault_exit() {
    local rc=$? p
    for p in $PROXY_PIDS; do kill -KILL "$p" 2>/dev/null || true; done
    cp "$W"/proxy-*.log "$OUT/" 2>/dev/null || true
    (exit "$rc")
    on_exit
}
mkdir -p "$W" "$OUT"
: >"$OUT/results.txt"
echo "fault | longest write | bytes verified" >"$OUT/faults.txt"
trap fault_exit EXIT
say "kernel $(uname -r), $(nproc) cpus; $(sheepdev --version); fault scenarios:$pick"
start_store
start_serve
for n in $pick; do "f$n"; done
SCEN="end"
expect_count 0 "at the end"
say "all fault scenarios passed:$pick"
