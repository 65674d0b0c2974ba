#!/bin/sh
# shellcheck shell=dash disable=SC2015,SC2012,SC2010,SC2013,SC3040
# scenarios.sh - guest script (busybox sh, run with -e by run-vm.sh's /init):
# the kernel-test scenarios of sheepdev's ublk data plane.
#
# It starts the embedded store (--locking --no-sync, on tmpfs) and
# `sheepdev serve`, waits for both with bounded loops, runs the scenarios,
# checks that `sheepdev list --json` shows no device left, and stops both.
#
#   1 ext4        add linux -> mkfs.ext4 -> files + sha256sums -> e2fsck -fn
#                 -> del -> add again -> checksums match
#   2 fio-verify  fio randrw 4k then 64k, iodepth 32, numjobs = queues = 2,
#                 direct, io_uring (else libaio), verify=crc32c, verify_fatal;
#                 the device reaches the store through its unix socket DIR/sock
#   3 snapshots   A -> snapshot s -> B; linux:s --read-only reads A and
#                 refuses writes; linux:s writable (rebase) reads A, takes C;
#                 the previous working VDI is kept as a snapshot reading B;
#                 s still reads A; then s by its id (linux:N): vdi read, add
#                 --read-only and writable add (rebase by id) read A
#   4 clone-cow   clone linux:s child; child and linux:s --read-only mapped at
#                 once; writes to child (partial and whole objects) leave the
#                 parent untouched
#   5 discard     discard of whole 4 MiB objects (owned, and shared with a
#                 snapshot) reads zeros; flush; write-zeroes (partial and
#                 whole objects) reads zeros; all of it survives del + add;
#                 the snapshot is untouched
#   6 bad-input   add of a missing VDI / tag / snapshot id, a second exclusive
#                 add, del of unknown devices: non-zero, one line on stderr,
#                 nothing left behind
#   7 recovery    add rec (user recovery) -> ext4 + files -> fio randwrite with
#                 crc32c verify on a file in it -> kill -9 the daemon mid-fio ->
#                 a read issued while no daemon runs waits -> serve again
#                 re-attaches -> fio verifies clean; prints how long I/O
#                 stalled. Then SIGTERM (the daemon exits, the device stays),
#                 the store down too: the next serve leaves it orphaned,
#                 `sheepdev recover` re-attaches it once the store is back;
#                 e2fsck -fn clean, every file reads back the same; last, an
#                 orphaned (quiesced) device is removed by del
#   8 many-devices eight devices at once on the daemon's core threads: fio
#                 crc32c verify on all of them, kill -9 the daemon mid-fio,
#                 serve again re-attaches all eight, every fio verifies clean;
#                 daemon threads stay at most cores + 6; every core's loop
#                 counters (/metrics) count the I/O
#   9 resize      ext4 on a 256M VDI; a shrink and a bad size are refused;
#                 with UPDATE_SIZE (6.16+): `sheepdev resize` to 640M under fio
#                 randwrite crc32c verify on the mounted ext4, the device grows
#                 live, online resize2fs; without it: the VDI grows, the command
#                 says the device needs a re-add, del + add gives 640M, offline
#                 resize2fs. Then e2fsck -fn clean and every file the same
#  10 restart     fio randwrite crc32c verify on a device across two SIGTERM
#                 + serve restarts (two per mode), with `serve --quiesce auto` (each exit
#                 quiesces the device where the kernel has QUIESCE) and again
#                 with --quiesce off; fio's longest write for each goes to
#                 /out/restart.txt
#  11 zero-copy   where the kernel has zero copy (AUTO_BUF_REG, 6.16+): a
#                 default add is zero copy; --zero-copy on passes fio crc32c
#                 verify at 4k and 1M, seq 1M write+verify and ext4 + fsck;
#                 4k writes + verify (16M) are served unregistered (user copy)
#                 and the 1M requests after them registered again (/metrics),
#                 with no kernel WARNING; --zero-copy off copies; --own-buffers with
#                 on is refused. Without it: on is refused, auto copies
#
# Each scenario prints "SCENARIO <n> <name>: PASS", or "FAIL: SCENARIO ..."
# with what differed and the script exits non-zero (logs and diagnostics
# follow). Scenarios make what they need when run alone.
#
# Usage (host): bash tests/vm/kernel-tests.sh [SCENARIO...]
#   or: bash tests/vm/run-vm.sh --quiet --timeout 900 --bin target/release/sheepdev \
#         --out DIR tests/vm/scenarios.sh [SCENARIO...]
# SCENARIO is a number (1-11) or a name (ext4, fio-verify, ...); default: all.
#
# Guest tools: busybox, fio, mkfs.ext4, e2fsck (run-vm.sh), sheepdev (--bin).
# util-linux blkdiscard and fallocate (kernel-tests.sh adds them with --bin)
# are used when present, by full path (this busybox sh runs its own applet
# for a bare name even when PATH has another binary first): busybox
# blkdiscard has no -z (write zeroes) and busybox fallocate no -p. Without
# them, write-zeroes is replaced by writing zeros (said in the log).
#
# Leaves under /out: scenarios.log (this script's output), results.txt (the
# PASS lines), serve.log, store.log, fio-*.json, and diag.txt on failure.
set -eu

# Copy everything this script prints to /out/scenarios.log (busybox ash has
# pipefail, so the pipeline's status is the script's).
if [ -z "${SCENARIOS_TEED:-}" ] && [ -d /out ] && [ "${SCENARIOS_SOURCE_ONLY:-0}" != 1 ]; then
    export SCENARIOS_TEED=1
    set -o pipefail
    sh -e "$0" "$@" 2>&1 | tee /out/scenarios.log
    exit $?
fi

ADDR=127.0.0.1:7000
STORE_DIR=/tmp/store
SOCK=${SHEEPDEV_CONTROL:-/run/sheepdev/control.sock}
W=/tmp/scenarios           # scratch files (tmpfs)
OUT=/out
MIB=1048576
GIB=1073741824
T_CMD=120                  # bound for one sheepdev command (TCG is slow)
T_READY=60                 # bound for the store / serve to come up
S2_SIZE_4K=32M             # fio scenario: bytes per job, 4k run (~8 s here)
S2_SIZE_64K=128M           # fio scenario: bytes per job, 64k run (~12 s here)

SCEN="setup"
BACKEND=${BACKEND:-store}    # store, or sheep with --sheep (a real sheep in the guest)
STEP=""
STORE_PID=""
SERVE_PID=""

say() { echo "scenarios: $*"; }
step() { STEP=$*; echo "  [$SCEN] $*"; }
fail() {
    echo "FAIL: SCENARIO $SCEN: $*" >&2
    exit 1
}
begin() { SCEN="$1 $2"; STEP=""; say "--- SCENARIO $1 $2"; T0=$(date +%s); }
pass() {
    check_sheep_alive
    echo "SCENARIO $SCEN: PASS ($(( $(date +%s) - T0 )) s)"
    echo "SCENARIO $SCEN: PASS" >>"$OUT/results.txt"
    SCEN="between scenarios"
}

# ------------------------------------------------------------ JSON (busybox awk)
# json_flat < JSON: one line per scalar, "PATH<TAB>VALUE", PATH like
# [0].device or .jobs[1].read.clat_ns.percentile.99.000000. Lines before the
# first one starting with [ or { (fio's warnings in --output) are skipped.
# Strings keep their escapes; numbers are printed as written.
json_flat() {
    awk '
    function path(   k, p) {
        p = ""
        for (k = 1; k <= d; k++) p = p (ty[k] == "a" ? "[" ix[k] "]" : "." ky[k])
        return p
    }
    !started && /^[ \t]*[\[{]/ { started = 1 }
    started { buf = buf $0 "\n" }
    END {
        n = length(buf); i = 1; d = 0; want_key = 0
        while (i <= n) {
            c = substr(buf, i, 1)
            if (c == " " || c == "\t" || c == "\n" || c == "\r" || c == ":") { i++; continue }
            if (c == "{") { d++; ty[d] = "o"; ky[d] = ""; want_key = 1; i++; continue }
            if (c == "[") { d++; ty[d] = "a"; ix[d] = 0; want_key = 0; i++; continue }
            if (c == "}" || c == "]") { d--; want_key = 0; i++; if (d == 0) break; continue }
            if (c == ",") { if (ty[d] == "a") ix[d]++; else want_key = 1; i++; continue }
            if (c == "\"") {
                s = ""; j = i + 1
                while (j <= n) {
                    ch = substr(buf, j, 1)
                    if (ch == "\\") { s = s substr(buf, j, 2); j += 2; continue }
                    if (ch == "\"") break
                    s = s ch; j++
                }
                i = j + 1
                if (ty[d] == "o" && want_key) { ky[d] = s; want_key = 0 }
                else print path() "\t" s
                continue
            }
            j = i
            while (j <= n && index(",]} \t\n\r", substr(buf, j, 1)) == 0) j++
            print path() "\t" substr(buf, i, j - i)
            i = j
        }
    }'
}

# json_is_array FILE: the file holds a JSON array (possibly empty).
json_is_array() { [ "$(tr -d ' \t\r\n' <"$1" | cut -c1)" = "[" ]; }

# ------------------------------------------------------------ sheepdev wrappers
sd() { timeout "$T_CMD" sheepdev "$@"; }
vdi() { timeout "$T_CMD" sheepdev vdi -a "$ADDR" "$@"; }

# run DESC CMD...: CMD must succeed; its stdout goes to $W/run.out.
run() {
    local desc="$1" rc=0; shift
    "$@" >"$W/run.out" 2>"$W/run.err" || rc=$?
    [ "$rc" = 0 ] || fail "$desc: '$*' exited $rc: $(head -c 2000 "$W/run.err")"
}

# The `sheepdev list --json` array, checked, in $W/list.json.
list_json() {
    local rc=0
    sd list --json >"$W/list.json" 2>"$W/list.err" || rc=$?
    [ "$rc" = 0 ] || fail "sheepdev list --json exited $rc: $(cat "$W/list.err")"
    json_is_array "$W/list.json" || fail "sheepdev list --json is not a JSON array: $(head -c 500 "$W/list.json")"
}
# Number of mapped devices.
list_count() {
    list_json
    json_flat <"$W/list.json" | grep -c '^\[[0-9]*\]\.device	' || true
}
# One line per mapping: "device id vdi snapshot read_only state".
list_rows() {
    list_json
    json_flat <"$W/list.json" | awk -F'\t' '
        match($1, /^\[[0-9]+\]\./) {
            i = substr($1, 2, RLENGTH - 3); k = substr($1, RLENGTH + 1); v[i, k] = $2
            if (i + 1 > n) n = i + 1
        }
        END { for (i = 0; i < n; i++) print v[i, "device"], v[i, "id"], v[i, "vdi"], v[i, "snapshot"], "ro=" v[i, "read_only"], v[i, "state"] }'
}
# list_get DEVICE FIELD: FIELD of DEVICE's entry in `sheepdev list --json`.
list_get() {
    list_json
    json_flat <"$W/list.json" | awk -F'\t' -v dev="$1" -v f="$2" '
        match($1, /^\[[0-9]+\]\./) {
            i = substr($1, 2, RLENGTH - 3); k = substr($1, RLENGTH + 1); v[i, k] = $2
            if (k == "device" && $2 == dev) hit = i
        }
        END { if (hit != "") print v[hit, f] }'
}
expect_count() { # N WHY
    local n
    n=$(list_count)
    [ "$n" = "$1" ] || fail "$2: sheepdev list shows $n devices, expected $1: $(list_rows | tr '\n' ';')"
}

# One line per VDI from `sheepdev vdi list --json`: "name snap_id snapshot tag vid"
# (tag "-" when empty), sorted.
vdi_rows() {
    local rc=0
    vdi list --json >"$W/vdis.json" 2>"$W/vdis.err" || rc=$?
    [ "$rc" = 0 ] || fail "sheepdev vdi list --json exited $rc: $(cat "$W/vdis.err")"
    json_is_array "$W/vdis.json" || fail "sheepdev vdi list --json is not a JSON array"
    json_flat <"$W/vdis.json" | awk -F'\t' '
        match($1, /^\[[0-9]+\]\./) {
            i = substr($1, 2, RLENGTH - 3); k = substr($1, RLENGTH + 1); v[i, k] = $2
            if (i + 1 > n) n = i + 1
        }
        END { for (i = 0; i < n; i++) print v[i, "name"], v[i, "snap_id"], v[i, "snapshot"], (v[i, "tag"] == "" ? "-" : v[i, "tag"]), v[i, "vid"] }' | sort
}
vdi_exists() { vdi_rows | grep -q "^$1 [0-9]* false "; }             # working VDI NAME
snap_exists() { vdi_rows | grep -q "^$1 [0-9]* true $2 "; }          # NAME TAG
ensure_vdi() { # NAME SIZE: create the working VDI if missing
    vdi_exists "$1" && return 0
    step "sheepdev vdi create $1 $2"
    run "create VDI $1" vdi create "$1" "$2"
}

# add_dev ARGS...: `sheepdev add ARGS`, which must print one /dev/ublkbN line
# and return with the device usable. Sets DEV and SYS (its
# /sys/dev/block/MAJ:MIN directory).
add_dev() {
    local rc=0
    sd add "$@" >"$W/add.out" 2>"$W/add.err" || rc=$?
    [ "$rc" = 0 ] || fail "sheepdev add $* exited $rc: $(head -c 2000 "$W/add.err")"
    [ "$(awk 'END { print NR }' "$W/add.out")" = 1 ] ||
        fail "sheepdev add $* printed not exactly one line on stdout: $(head -c 500 "$W/add.out")"
    DEV=$(cat "$W/add.out")
    case $DEV in /dev/ublkb[0-9]*) ;; *) fail "sheepdev add $* printed '$DEV', not /dev/ublkbN" ;; esac
    [ -b "$DEV" ] || fail "sheepdev add $* returned $DEV but it is not a block device"
    # its sysfs directory, found by device number
    mm=$(stat -L -c '%t %T' "$DEV")
    SYS=/sys/dev/block/$((0x${mm% *})):$((0x${mm#* }))
    [ -d "$SYS/queue" ] || fail "no $SYS/queue for $DEV"
    # usable now: a direct read of the first 4 KiB must work at once
    dd if="$DEV" of=/dev/null bs=4096 count=1 iflag=direct status=none 2>"$W/add.err" ||
        fail "sheepdev add $* returned $DEV but reading it fails: $(cat "$W/add.err")"
    step "add $* -> $DEV"
}
# del_dev ARGS... [-- DEVICE]: `sheepdev del ARGS` must succeed; DEVICE (if
# given) must be gone afterwards (bounded wait).
del_dev() {
    local args="" gone="" rc=0 i
    while [ $# -gt 0 ]; do
        if [ "$1" = "--" ]; then gone=$2; break; fi
        args="$args $1"; shift
    done
    # shellcheck disable=SC2086
    sd del $args >"$W/del.out" 2>"$W/del.err" || rc=$?
    [ "$rc" = 0 ] || fail "sheepdev del$args exited $rc: $(head -c 2000 "$W/del.err")"
    if [ -n "$gone" ]; then
        i=0
        while [ -e "$gone" ]; do
            i=$((i + 1))
            [ $i -le 50 ] || fail "sheepdev del$args returned but $gone still exists after 10 s"
            sleep 0.2
        done
    fi
    step "del$args"
}
check_size() { # DEV BYTES
    local got
    got=$(blockdev --getsize64 "$1")
    [ "$got" = "$2" ] || fail "$1 is $got bytes, expected $2"
}
sysq() { cat "$SYS/queue/$1" 2>/dev/null || echo "?"; } # ATTR of the last added device

# expect_fail WANT DESC ARGS...: `sheepdev ARGS` must exit non-zero (not by
# the timeout), print nothing on stdout and exactly one line on stderr that
# contains WANT (when WANT is not empty).
expect_fail() {
    local want="$1" desc="$2" rc=0 lines; shift 2
    sd "$@" >"$W/ef.out" 2>"$W/ef.err" || rc=$?
    [ "$rc" != 0 ] || fail "$desc: 'sheepdev $*' succeeded (stdout: $(head -c 300 "$W/ef.out"))"
    [ "$rc" != 124 ] && [ "$rc" != 143 ] || fail "$desc: 'sheepdev $*' did not finish within $T_CMD s"
    lines=$(awk 'END { print NR }' "$W/ef.err")
    [ "$lines" = 1 ] || fail "$desc: 'sheepdev $*' printed $lines lines on stderr, expected 1: $(head -c 1000 "$W/ef.err")"
    [ ! -s "$W/ef.out" ] || fail "$desc: 'sheepdev $*' failed but printed on stdout: $(head -c 300 "$W/ef.out")"
    if [ -n "$want" ] && ! grep -qF "$want" "$W/ef.err"; then
        fail "$desc: 'sheepdev $*' stderr lacks '$want': $(cat "$W/ef.err")"
    fi
    step "$desc: exit $rc: $(cat "$W/ef.err")"
}

# ------------------------------------------------------------ data helpers
# pattern LETTER MIB [BASE]: MIB MiB of 16-byte lines "<L><14-digit n>\n",
# n counting from BASE (default 0): every line tells what and where it is.
# (seq | sed: several times faster than an awk loop under TCG.)
pattern() {
    local first=$((100000000000000 + ${3:-0}))
    seq "$first" $((first + $2 * 65536 - 1)) | sed "s/^1/$1/"
}
zeros() { dd if=/dev/zero bs=65536 count=$(($1 / 65536)) status=none; } # BYTES (64 KiB multiple)
# dev_read DEV OFF LEN FILE / dev_write DEV OFF FILE: O_DIRECT, 64 KiB units.
dev_read() {
    dd if="$1" of="$4" bs=65536 skip=$(($2 / 65536)) count=$(($3 / 65536)) iflag=direct status=none ||
        fail "reading $(($3 / 1024)) KiB at $2 of $1 failed"
}
dev_write() {
    dd if="$3" of="$1" bs=65536 seek=$(($2 / 65536)) oflag=direct conv=notrunc,fsync status=none ||
        fail "writing $3 at $2 of $1 failed"
}
# put FILE OFF SRC: overwrite FILE at OFF (64 KiB multiple) with SRC.
put() { dd if="$3" of="$1" bs=65536 seek=$(($2 / 65536)) conv=notrunc status=none; }
# check_same WHAT EXPECTED ACTUAL: byte-equal, else show the first difference.
check_same() {
    local off
    cmp -s "$2" "$3" && return 0
    echo "MISMATCH: $1" >&2
    cmp "$2" "$3" >&2 || true
    off=$(cmp "$2" "$3" 2>/dev/null | sed -n 's/.* char \([0-9]*\),.*/\1/p')
    if [ -n "$off" ]; then
        off=$(( (off - 1) / 16 * 16 ))
        echo "  expected at byte $off:" >&2
        dd if="$2" bs=16 skip=$((off / 16)) count=4 status=none | od -A n -c >&2
        echo "  got:" >&2
        dd if="$3" bs=16 skip=$((off / 16)) count=4 status=none | od -A n -c >&2
    fi
    echo "  sizes: expected $(wc -c <"$2"), got $(wc -c <"$3")" >&2
    fail "$1: data differs"
}
# check_dev WHAT DEV OFF EXPECTED_FILE: DEV at OFF reads EXPECTED_FILE.
check_dev() {
    dev_read "$2" "$3" "$(wc -c <"$4")" "$W/got"
    check_same "$1" "$4" "$W/got"
}
# vdi_write SPEC OFF FILE: `sheepdev vdi write SPEC --offset OFF < FILE`.
vdi_write() {
    local rc=0
    vdi write "$1" --offset "$2" <"$3" >"$W/run.out" 2>"$W/run.err" || rc=$?
    [ "$rc" = 0 ] || fail "sheepdev vdi write $1 --offset $2 < $3 exited $rc: $(cat "$W/run.err")"
}
# check_vdi WHAT SPEC OFF EXPECTED_FILE: `sheepdev vdi read SPEC` likewise.
check_vdi() {
    run "vdi read $2" vdi read "$2" --offset "$3" --length "$(wc -c <"$4")"
    check_same "$1" "$4" "$W/run.out"
}

# util_linux NAME: full path of util-linux's NAME (added with run-vm.sh
# --bin), or fail. A full path is needed: this busybox's sh runs its own
# applet for a bare name even when PATH finds another binary first.
util_linux() {
    local p
    for p in /usr/local/bin /usr/local/sbin /usr/sbin /usr/bin; do
        if [ -x "$p/$1" ] && "$p/$1" --version 2>/dev/null | grep -q util-linux; then
            echo "$p/$1"
            return 0
        fi
    done
    return 1
}

# ------------------------------------------------------------ store and daemon
start_store() {
    if [ "$BACKEND" = sheep ]; then
        start_sheep
        return
    fi
    say "starting sheepdev store --dir $STORE_DIR --listen $ADDR --locking --no-sync"
    sheepdev store --dir "$STORE_DIR" --listen "$ADDR" --locking --no-sync >"$W/store.log" 2>&1 &
    STORE_PID=$!
    wait_ready "sheepdev store" sheepdev vdi -a "$ADDR" --connect-timeout 1 list
    say "store ready (pid $STORE_PID)"
}
# The store's (or sheep's) logs, for a failure message.
store_diag() {
    cat "$W/store.log"
    [ "$BACKEND" != sheep ] || tail -n 20 "$STORE_DIR/sheep.log"
}
# wait_ready WHAT CMD...: until CMD succeeds (10 s a try), at most T_READY s;
# fails at once when the store (STORE_PID) has exited.
wait_ready() {
    local what="$1" i=0 rc=0
    shift
    while ! timeout 10 "$@" >/dev/null 2>&1; do
        kill -0 "$STORE_PID" 2>/dev/null || { wait "$STORE_PID" || rc=$?;
            fail "$what exited (status $rc) before it was ready: $(store_diag)"; }
        i=$((i + 1))
        [ $i -le $((T_READY * 5)) ] || fail "$what not ready after $T_READY s: $(store_diag)"
        sleep 0.2
    done
}
# --sheep: a real sheep (one node, local cluster driver, no sync, objects on
# tmpfs, its unix socket at STORE_DIR/sock like the store's), formatted with
# locking on the first start; the guest needs sheep and dog (--bin). A
# developer's run: tests/README.md. CI runs the embedded store.
start_sheep() {
    say "starting sheep -f -n -c local -p ${ADDR##*:} $STORE_DIR ($(sheep -v 2>&1 | head -n 1))"
    mkdir -p "$STORE_DIR"
    sheep -f -n -c local -p "${ADDR##*:}" "$STORE_DIR" >"$W/store.log" 2>&1 &
    STORE_PID=$!
    wait_ready sheep dog node list -p "${ADDR##*:}"
    if [ ! -e "$W/sheep.formatted" ]; then
        timeout 60 dog cluster format -p "${ADDR##*:}" -c 1 -l >>"$W/store.log" 2>&1 || fail "dog cluster format failed: $(cat "$W/store.log")"
        : >"$W/sheep.formatted"
    fi
    wait_ready "sheep (serving VDIs)" sheepdev vdi -a "$ADDR" --connect-timeout 1 list
    say "sheep ready (pid $STORE_PID)"
}
# Stops the store; a real sheep is killed (-9, every process of it), as a
# crashed node would be.
stop_store() {
    local i=0
    if [ "$BACKEND" = sheep ]; then
        [ -n "$STORE_PID" ] || return 0
        kill -KILL $(pidof sheep) 2>/dev/null || true
        wait "$STORE_PID" 2>/dev/null || true
        while pidof sheep >/dev/null; do i=$((i + 1)); [ $i -le 100 ] || break; sleep 0.1; done
        STORE_PID=""
        return 0
    fi
    stop_pid "sheepdev store" "$STORE_PID"
    STORE_PID=""
}
# Every sheep must still be running (a client of ours must never crash one).
check_sheep_alive() {
    [ "$BACKEND" = sheep ] || return 0
    kill -0 "$STORE_PID" 2>/dev/null && timeout 10 dog node list -p "${ADDR##*:}" >/dev/null 2>&1 ||
        fail "sheep died: $(tail -n 30 "$STORE_DIR/sheep.log" 2>&1)"
}
start_serve() {
    local i=0
    say "starting sheepdev serve (control socket $SOCK)"
    # shellcheck disable=SC2086
    sheepdev serve ${SERVE_ARGS:-} >>"$W/serve.log" 2>&1 &
    SERVE_PID=$!
    while ! timeout 10 sheepdev list --json >/dev/null 2>&1; do
        kill -0 "$SERVE_PID" 2>/dev/null || { wait "$SERVE_PID" || i=$?; SERVE_PID="";
            fail "sheepdev serve exited (status $i) before it was ready: $(cat "$W/serve.log")"; }
        i=$((i + 1))
        [ $i -le $((T_READY * 5)) ] ||
            fail "sheepdev serve not ready after $T_READY s (socket $SOCK: $([ -S "$SOCK" ] && echo present || echo absent)): $(cat "$W/serve.log")"
        sleep 0.2
    done
    say "serve ready (pid $SERVE_PID)"
}
stop_pid() { # NAME PID: SIGTERM, bounded wait, then SIGKILL
    local i=0
    [ -n "$2" ] || return 0
    kill -0 "$2" 2>/dev/null || return 0
    kill -TERM "$2" 2>/dev/null || true
    while kill -0 "$2" 2>/dev/null; do
        i=$((i + 1))
        if [ $i -gt 100 ]; then
            say "WARNING: $1 (pid $2) still running 20 s after SIGTERM; SIGKILL"
            kill -KILL "$2" 2>/dev/null || true
            break
        fi
        sleep 0.2
    done
    wait "$2" 2>/dev/null || true
}

save_logs() {
    cp "$W/store.log" "$W/serve.log" "$OUT/" 2>/dev/null || true
    [ "$BACKEND" != sheep ] || cp "$STORE_DIR/sheep.log" "$OUT/" 2>/dev/null || true
    cp "$W"/fio-*.json "$OUT/" 2>/dev/null || true
}
on_exit() {
    local rc=$? id
    set +e
    if [ "$rc" != 0 ]; then
        {
            echo "scenarios: FAILED with status $rc in SCENARIO $SCEN, step: $STEP"
            echo "--- sheepdev list --json"; timeout 15 sheepdev list --json 2>&1 | head -c 3000; echo
            echo "--- ublk devices"; ls -l /dev/ublk* 2>&1
            echo "--- mounts"; grep -E 'ublk|/mnt/' /proc/mounts
            echo "--- serve.log (tail)"; tail -n 60 "$W/serve.log" 2>&1
            echo "--- store.log (tail)"; tail -n 30 "$W/store.log" 2>&1
            [ "$BACKEND" != sheep ] || { echo "--- sheep.log (tail)"; tail -n 30 "$STORE_DIR/sheep.log" 2>&1; }
            echo "--- dmesg (tail)"; dmesg | tail -n 40
        } >"$W/diag.txt" 2>&1
        cat "$W/diag.txt" >&2
        cp "$W/diag.txt" "$OUT/" 2>/dev/null
        # clean up what is left: mounts, then mappings
        for m in $(awk '$2 ~ /^\/mnt\/s[0-9]/ { print $2 }' /proc/mounts); do umount "$m"; done
        if [ -n "$SERVE_PID" ] && kill -0 "$SERVE_PID" 2>/dev/null; then
            for id in $(timeout 15 sheepdev list --json 2>/dev/null | json_flat | awk -F'\t' '$1 ~ /^\[[0-9]+\]\.id$/ { print $2 }'); do
                timeout 30 sheepdev del --id "$id" --force || echo "scenarios: cleanup: del --id $id --force failed"
            done
        fi
    fi
    stop_pid "sheepdev serve" "$SERVE_PID"
    stop_store
    save_logs
    exit "$rc"
}

# ------------------------------------------------------------ 1 ext4
s1_ext4() {
    local d
    begin 1 ext4
    ensure_vdi linux 1G
    add_dev "$ADDR" linux
    d=$DEV
    check_size "$d" "$GIB"
    step "mkfs.ext4 $d (discard $(sysq discard_max_bytes), logical block $(sysq logical_block_size))"
    run "mkfs.ext4 on $d" mkfs.ext4 -q -F "$d"
    mkdir -p /mnt/s1
    run "mount $d" mount -t ext4 "$d" /mnt/s1
    step "writing files"
    echo "sheepdev scenario 1" >/mnt/s1/small.txt
    head -c 4097 /dev/urandom >/mnt/s1/page-plus-one
    head -c 1000003 /dev/urandom >/mnt/s1/odd-1m
    head -c $((3 * MIB)) /dev/urandom >/mnt/s1/rand-3m
    mkdir -p /mnt/s1/dir/sub
    head -c $((9 * MIB + 12345)) /dev/urandom >/mnt/s1/dir/sub/rand-9m
    pattern P 2 >/mnt/s1/dir/pattern-2m
    : >/mnt/s1/dir/empty
    (cd /mnt/s1 && find . -type f | sort | xargs sha256sum) >"$W/s1.sums"
    sync
    run "umount after writing" umount /mnt/s1
    step "e2fsck -fn $d"
    e2fsck -fn "$d" >"$W/fsck.out" 2>&1 || { cat "$W/fsck.out" >&2; fail "e2fsck -fn $d: filesystem not clean (above)"; }
    del_dev linux -- "$d"
    expect_count 0 "after del linux"
    add_dev "$ADDR" linux
    d=$DEV
    run "mount $d again" mount -t ext4 "$d" /mnt/s1
    (cd /mnt/s1 && find . -type f | sort | xargs sha256sum) >"$W/s1.sums2"
    if ! cmp -s "$W/s1.sums" "$W/s1.sums2"; then
        diff "$W/s1.sums" "$W/s1.sums2" >&2 || true
        fail "checksums after del + add differ (above: - before, + after)"
    fi
    step "$(wc -l <"$W/s1.sums") files read back with the same sha256"
    run "umount" umount /mnt/s1
    del_dev linux -- "$d"
    expect_count 0 "after the last del"
    pass
}

# ------------------------------------------------------------ 2 fio-verify
fio_engine() {
    if fio --name=probe --filename="$W/probe" --size=256k --bs=4k --rw=read \
        --ioengine=io_uring --output="$W/probe.out" >/dev/null 2>&1; then
        echo io_uring
    else
        echo libaio
    fi
    rm -f "$W/probe"
}
# s2_verify DEV BS SIZE: fio randrw crc32c verify on DEV, 2 jobs at QD32, SIZE per job.
s2_verify() {
    local d=$1 bs=$2 size=$3 eng rc i err dir v
    eng=$(fio_engine)
    step "fio randrw bs=$bs iodepth=32 numjobs=2 size=$size/job ioengine=$eng direct=1 verify=crc32c"
    rc=0
    # Each job has its own region (offset_increment = size), so the two
    # writers never overwrite each other's blocks; fio still warns about
    # "multiple writers" (a static check), which is expected.
    fio --name="verify-$bs" --filename="$d" --ioengine="$eng" --direct=1 \
        --rw=randrw --bs="$bs" --iodepth=32 --numjobs=2 \
        --size="$size" --offset_increment="$size" \
        --verify=crc32c --verify_fatal=1 --do_verify=1 \
        --eta=never --output-format=json --output="$W/fio-s2-$bs.json" 2>"$W/fio-s2-$bs.err" || rc=$?
    if [ "$rc" != 0 ] || grep -qiE 'verify.*fail|bad magic|bad header' "$W/fio-s2-$bs.err"; then
        cat "$W/fio-s2-$bs.err" >&2
        sed '/^{/,$d' "$W/fio-s2-$bs.json" | head -40 >&2 # fio's messages before the JSON
        fail "fio bs=$bs exited $rc (verify errors above)"
    fi
    json_flat <"$W/fio-s2-$bs.json" >"$W/fio.flat"
    for i in 0 1; do
        err=$(awk -F'\t' -v p=".jobs[$i].error" '$1 == p { print $2 }' "$W/fio.flat")
        [ "$err" = 0 ] || fail "fio bs=$bs job $i: error=$err"
        for dir in read write; do
            v=$(awk -F'\t' -v p=".jobs[$i].$dir.io_bytes" '$1 == p { print $2 }' "$W/fio.flat")
            [ -n "$v" ] && [ "$v" -gt 0 ] || fail "fio bs=$bs job $i did no $dir I/O (io_bytes=$v)"
        done
    done
    step "fio bs=$bs: $(awk -F'\t' '$1 ~ /^\.jobs\[[01]\]\.(read|write)\.(iops|io_bytes)$/ { sub(/^\.jobs/, "", $1); printf "%s=%s ", $1, $2 }' "$W/fio.flat")"
}
s2_fio() {
    local d bs size q f
    begin 2 fio-verify
    ensure_vdi linux 1G
    [ -S "$STORE_DIR/sock" ] || fail "the store has no unix socket $STORE_DIR/sock"
    add_dev "unix:$STORE_DIR/sock" linux --queues 2
    d=$DEV
    sd list | grep -q "unix:$STORE_DIR/sock" || fail "sheepdev list does not show the gateway unix:$STORE_DIR/sock: $(sd list)"
    check_size "$d" "$GIB"
    q=$(ls "$SYS/mq" | wc -l)
    [ "$q" = 2 ] || fail "$d has $q hardware queues in $SYS/mq, expected 2 (--queues 2)"
    q=$(list_get "$d" queues)
    [ "$q" = 2 ] || fail "sheepdev list --json says queues=$q for $d, expected 2"
    for bs in 4k 64k; do
        if [ $bs = 4k ]; then size=$S2_SIZE_4K; else size=$S2_SIZE_64K; fi
        s2_verify "$d" $bs "$size"
    done
    del_dev "$d" -- "$d"
    expect_count 0 "after del"
    # The same with each tag's own buffer (add --own-buffers): no NEED_GET_DATA, no pool.
    add_dev "unix:$STORE_DIR/sock" linux --queues 2 --own-buffers
    d=$DEV
    f=$(sd list --json | tr -d ' \n' | grep -o '"features":\[[^]]*\]' | head -1)
    case $f in
        *need_get_data*|*user_copy*) fail "an --own-buffers device was made with $f" ;;
    esac
    step "--own-buffers: $f"
    s2_verify "$d" 4k "$S2_SIZE_4K"
    del_dev "$d" -- "$d"
    expect_count 0 "after del (--own-buffers)"
    pass
}

# ------------------------------------------------------------ 3 snapshots
# check_snapshot SPEC FILE LABEL: the snapshot SPEC reads FILE at 0, through
# `sheepdev vdi read` and through a read-only mapping (added, checked, removed).
check_snapshot() {
    local d
    check_vdi "sheepdev vdi read $1 ($3) reads $(basename "$2")" "$1" 0 "$2"
    add_dev "$ADDR" "$1" --read-only
    d=$DEV
    check_dev "$1 --read-only reads $(basename "$2")" "$d" 0 "$2"
    del_dev "$1" -- "$d"
}
# one_more_snapshot BEFORE AFTER WHAT: AFTER (vdi_rows) has exactly one more
# snapshot of linux than BEFORE.
one_more_snapshot() {
    [ "$(echo "$2" | grep -c '^linux [0-9]* true ')" = $(($(echo "$1" | grep -c '^linux [0-9]* true ') + 1)) ] ||
        fail "$3 should add exactly one snapshot of linux: before: $(echo "$1" | tr '\n' ';') after: $(echo "$2" | tr '\n' ';')"
}
s3_snapshots() {
    local d before after old rc sid
    begin 3 snapshots
    ensure_vdi linux 1G
    ! snap_exists linux s || fail "linux:s exists already; this scenario makes it (run it on a fresh store)"
    pattern A 1 >"$W/A"; pattern B 1 >"$W/B"; pattern C 1 >"$W/C"
    add_dev "$ADDR" linux
    d=$DEV
    dev_write "$d" 0 "$W/A"
    check_dev "linux reads A back" "$d" 0 "$W/A"
    del_dev linux -- "$d"

    step "sheepdev vdi snapshot linux --tag s"
    run "vdi snapshot" vdi snapshot linux --tag s
    add_dev "$ADDR" linux
    d=$DEV
    check_dev "working linux right after the snapshot reads A" "$d" 0 "$W/A"
    dev_write "$d" 0 "$W/B"
    check_dev "linux reads B back" "$d" 0 "$W/B"
    del_dev linux -- "$d"

    # --read-only maps the snapshot itself and creates nothing
    before=$(vdi_rows)
    add_dev "$ADDR" linux:s --read-only
    d=$DEV
    check_size "$d" "$GIB"
    step "linux:s --read-only: blockdev --getro=$(blockdev --getro "$d"), list read_only=$(list_get "$d" read_only)"
    check_dev "linux:s --read-only reads A" "$d" 0 "$W/A"
    rc=0
    dd if="$W/C" of="$d" bs=65536 oflag=direct conv=notrunc,fsync status=none 2>"$W/dd.err" || rc=$?
    [ "$rc" != 0 ] || fail "a write to the read-only mapping of linux:s succeeded"
    step "write to the read-only device refused: $(head -n1 "$W/dd.err")"
    check_dev "linux:s --read-only still reads A after the refused write" "$d" 0 "$W/A"
    del_dev linux:s -- "$d"
    after=$(vdi_rows)
    if [ "$before" != "$after" ]; then
        printf 'before:\n%s\nafter:\n%s\n' "$before" "$after" >&2
        fail "add linux:s --read-only changed the VDI list"
    fi

    # writable linux:s: rebase; the working VDI (B) becomes a snapshot
    add_dev "$ADDR" linux:s
    d=$DEV
    check_size "$d" "$GIB"
    check_dev "writable linux:s (new working linux) reads A" "$d" 0 "$W/A"
    dev_write "$d" 0 "$W/C"
    check_dev "new working linux reads C back" "$d" 0 "$W/C"
    del_dev linux -- "$d"
    after=$(vdi_rows)
    step "VDIs now: $(echo "$after" | tr '\n' ';')"
    old=$(echo "$after" | awk '$1 == "linux" && $3 == "true" && $4 != "s" { if ($2 + 0 > m) m = $2 + 0 } END { if (m) print m }')
    [ -n "$old" ] || fail "no untagged snapshot of linux after the rebase: $(echo "$after" | tr '\n' ';')"
    one_more_snapshot "$before" "$after" "the rebase"
    [ "$(echo "$after" | grep -c '^linux [0-9]* false ')" = 1 ] || fail "not exactly one working linux after the rebase"
    step "previous working VDI kept as linux:$old"
    check_snapshot "linux:$old" "$W/B" "the previous working VDI"
    check_vdi "the tagged snapshot linux:s still reads A" linux:s 0 "$W/A"
    check_vdi "the working linux reads C" linux 0 "$W/C"

    # The tagged snapshot by its id, linux:N: lookups by id with a tagged
    # snapshot among the candidates (a name-only lookup by id crashes a real
    # sheep 1.0 there; the store refuses it).
    sid=$(vdi_rows | awk '$1 == "linux" && $4 == "s" { print $2 }')
    [ -n "$sid" ] || fail "no snapshot id for linux:s: $(vdi_rows | tr '\n' ';')"
    step "linux:s is linux:$sid"
    check_snapshot "linux:$sid" "$W/A" "linux:s by id"
    before=$(vdi_rows)
    add_dev "$ADDR" "linux:$sid"
    d=$DEV
    check_dev "writable linux:$sid (rebase by id: a new working linux) reads A" "$d" 0 "$W/A"
    del_dev linux -- "$d"
    after=$(vdi_rows)
    one_more_snapshot "$before" "$after" "the rebase by id (the working VDI, C, kept)"
    check_vdi "the working linux reads A after the rebase by id" linux 0 "$W/A"
    check_vdi "the tagged snapshot linux:s still reads A" linux:s 0 "$W/A"
    expect_count 0 "after the scenario"
    pass
}

# ------------------------------------------------------------ 4 clone-cow
s4_clone() {
    local dc dp idp len
    begin 4 clone-cow
    ensure_vdi linux 1G
    if ! snap_exists linux s; then # alone: make linux:s with known bytes
        step "making linux:s (pattern A at 0)"
        pattern A 1 >"$W/A"
        vdi_write linux 0 "$W/A"
        run "vdi snapshot" vdi snapshot linux --tag s
    fi
    len=$((16 * MIB)) # objects 0-3
    run "vdi read linux:s" vdi read linux:s --length $len
    cp "$W/run.out" "$W/orig"
    step "sheepdev vdi clone linux:s child"
    run "vdi clone" vdi clone linux:s child
    add_dev "$ADDR" child
    dc=$DEV
    add_dev "$ADDR" linux:s --read-only
    dp=$DEV
    [ "$dc" != "$dp" ] || fail "child and linux:s got the same device $dc"
    check_size "$dc" "$GIB"
    check_size "$dp" "$GIB"
    expect_count 2 "child and linux:s mapped"
    check_dev "child reads the parent's bytes before any write" "$dc" 0 "$W/orig"
    check_dev "linux:s reads its bytes" "$dp" 0 "$W/orig"
    # partial object (64 KiB at 128 KiB, object 0) and whole object (object 2)
    pattern D 1 >"$W/D1"; head -c 65536 "$W/D1" >"$W/D"
    pattern E 4 524288 >"$W/E"
    dev_write "$dc" $((128 * 1024)) "$W/D"
    dev_write "$dc" $((8 * MIB)) "$W/E"
    cp "$W/orig" "$W/exp"
    put "$W/exp" $((128 * 1024)) "$W/D"
    put "$W/exp" $((8 * MIB)) "$W/E"
    check_dev "child reads its writes over the parent's bytes" "$dc" 0 "$W/exp"
    check_dev "the parent device still reads the original bytes" "$dp" 0 "$W/orig"
    check_vdi "sheepdev vdi read linux:s still reads the original bytes" linux:s 0 "$W/orig"
    idp=$(list_get "$dp" id)
    [ -n "$idp" ] || fail "no id for $dp in sheepdev list --json"
    del_dev "$dc" -- "$dc"
    expect_count 1 "after del $dc"
    del_dev --id "$idp" -- "$dp"
    expect_count 0 "after del --id $idp"
    check_vdi "sheepdev vdi read child reads the child's writes" child 0 "$W/exp"
    pass
}

# ------------------------------------------------------------ 5 discard
s5_discard() {
    local d bd="" bdz="" fap="" ul dmax wzmax rc
    begin 5 discard
    ensure_vdi linux 1G
    # blkdiscard: util-linux (has -z and -f) if kernel-tests.sh added it,
    # else busybox (discard only).
    if ul=$(util_linux blkdiscard); then
        bd="$ul -f"; bdz="$ul -f -z"
    else
        bd="blkdiscard"
    fi
    # util-linux fallocate -p on a block device is REQ_OP_WRITE_ZEROES with
    # no fallback (BLKDEV_ZERO_NOFALLBACK): it proves the op reaches sheepdev.
    fap=$(util_linux fallocate) || fap=""
    step "tools: discard '$bd', write-zeroes '${bdz:-none: zeros are written instead}', fallocate -p: ${fap:-absent}"

    # Region [4M, 24M) = objects 1-5: pattern P, kept by snapshot d5, so they
    # start shared with it.
    pattern P 20 262144 >"$W/P"
    vdi_write linux $((4 * MIB)) "$W/P"
    run "vdi snapshot linux --tag d5" vdi snapshot linux --tag d5
    add_dev "$ADDR" linux
    d=$DEV
    dmax=$(sysq discard_max_bytes)
    wzmax=$(sysq write_zeroes_max_bytes)
    step "$d: discard_max_bytes=$dmax discard_granularity=$(sysq discard_granularity) write_zeroes_max_bytes=$wzmax write_cache=$(sysq write_cache)"
    [ "$dmax" != "?" ] && [ "$dmax" -gt 0 ] || fail "$d does not advertise discard (queue/discard_max_bytes=$dmax)"

    # objects 1-4 rewritten through the device (now the working VDI's own)
    pattern E 16 262144 >"$W/E"
    dev_write "$d" $((4 * MIB)) "$W/E"
    cp "$W/E" "$W/exp"; dd if="$W/P" bs=65536 skip=256 status=none >>"$W/exp" # + P for object 5
    check_dev "after writing E" "$d" $((4 * MIB)) "$W/exp"

    step "discard [8M,16M) (objects 2-3, own) and [20M,24M) (object 5, shared with d5)"
    rc=0; $bd -o $((8 * MIB)) -l $((8 * MIB)) "$d" 2>"$W/bd.err" || rc=$?
    [ "$rc" = 0 ] || fail "$bd -o 8M -l 8M $d exited $rc: $(cat "$W/bd.err")"
    rc=0; $bd -o $((20 * MIB)) -l $((4 * MIB)) "$d" 2>"$W/bd.err" || rc=$?
    [ "$rc" = 0 ] || fail "$bd -o 20M -l 4M $d exited $rc: $(cat "$W/bd.err")"
    zeros $((8 * MIB)) >"$W/z8"; zeros $((4 * MIB)) >"$W/z4"
    put "$W/exp" $((4 * MIB)) "$W/z8"      # device [8M,16M)
    put "$W/exp" $((16 * MIB)) "$W/z4"     # device [20M,24M)
    check_dev "discarded ranges read zeros, the rest E" "$d" $((4 * MIB)) "$W/exp"

    step "flush: sync, blockdev --flushbufs"
    sync
    run "blockdev --flushbufs $d" blockdev --flushbufs "$d"

    # write zeroes: part of object 1 ([4M+64K, +128K)) and all of object 4
    zeros 131072 >"$W/z128k"
    if [ -n "$bdz" ]; then
        step "write-zeroes with $bdz: [4M+64K,+128K) and [16M,20M)"
        rc=0; $bdz -o $((4 * MIB + 65536)) -l 131072 "$d" 2>"$W/bd.err" || rc=$?
        [ "$rc" = 0 ] || fail "$bdz -o 4M+64K -l 128K exited $rc: $(cat "$W/bd.err")"
        rc=0; $bdz -o $((16 * MIB)) -l $((4 * MIB)) "$d" 2>"$W/bd.err" || rc=$?
        [ "$rc" = 0 ] || fail "$bdz -o 16M -l 4M exited $rc: $(cat "$W/bd.err")"
    else
        # No tool here sends WRITE_ZEROES (busybox blkdiscard has no -z,
        # busybox fallocate only preallocates): write zeros instead.
        step "no write-zeroes tool: writing zeros to [4M+64K,+128K) and [16M,20M)"
        dev_write "$d" $((4 * MIB + 65536)) "$W/z128k"
        dev_write "$d" $((16 * MIB)) "$W/z4"
    fi
    put "$W/exp" 65536 "$W/z128k"
    put "$W/exp" $((12 * MIB)) "$W/z4"
    if [ -n "$fap" ]; then
        if [ "$wzmax" != "?" ] && [ "$wzmax" -gt 0 ]; then
            step "fallocate -p (REQ_OP_WRITE_ZEROES, no fallback) [5M,6M)"
            rc=0; "$fap" -p -o $((5 * MIB)) -l $MIB "$d" 2>"$W/fa.err" || rc=$?
            [ "$rc" = 0 ] || fail "fallocate -p -o 5M -l 1M $d exited $rc (write_zeroes_max_bytes=$wzmax): $(cat "$W/fa.err")"
            zeros $MIB >"$W/z1"
            put "$W/exp" $MIB "$W/z1"
        else
            say "NOTE: $d does not advertise WRITE_ZEROES (write_zeroes_max_bytes=$wzmax): the kernel zeroes by writing zero pages, the op itself is not exercised"
        fi
    fi
    check_dev "write-zeroes ranges read zeros" "$d" $((4 * MIB)) "$W/exp"
    sync
    del_dev linux -- "$d"

    add_dev "$ADDR" linux
    d=$DEV
    check_dev "everything survives del + add" "$d" $((4 * MIB)) "$W/exp"
    del_dev linux -- "$d"
    check_vdi "sheepdev vdi read linux agrees" linux $((4 * MIB)) "$W/exp"
    check_vdi "the snapshot linux:d5 is untouched" linux:d5 $((4 * MIB)) "$W/P"
    expect_count 0 "after the scenario"
    pass
}

# ------------------------------------------------------------ 6 bad-input
s6_bad_input() {
    local d n0 rows0 nodes0
    begin 6 bad-input
    ensure_vdi linux 1G
    n0=$(list_count)
    rows0=$(vdi_rows)
    nodes0=$(ls /dev | grep -c '^ublk[bc][0-9]' || true)
    expect_fail "no vdi found" "add of a missing VDI" add "$ADDR" nosuchvdi
    expect_fail "no such snapshot tag or id" "add of a missing tag" add "$ADDR" linux:nosuchtag
    expect_fail "no such snapshot tag or id" "add of a missing tag, read-only" add "$ADDR" linux:nosuchtag --read-only
    expect_fail "" "add of a missing snapshot id" add "$ADDR" linux:9999
    expect_count "$n0" "after the failed adds"
    [ "$(vdi_rows)" = "$rows0" ] || fail "the failed adds changed the VDI list: $(vdi_rows | tr '\n' ';')"
    [ "$(ls /dev | grep -c '^ublk[bc][0-9]' || true)" = "$nodes0" ] ||
        fail "the failed adds left ublk device nodes: $(ls /dev | grep '^ublk' | tr '\n' ' ')"

    add_dev "$ADDR" linux
    d=$DEV
    expect_fail "in use" "a second exclusive add of linux" add "$ADDR" linux
    expect_count $((n0 + 1)) "after the refused second add"
    dd if="$d" of=/dev/null bs=65536 count=16 iflag=direct status=none ||
        fail "$d no longer reads after the refused second add"
    expect_fail "" "del of an unknown device" del /dev/ublkb999
    expect_fail "" "del of an unknown id" del --id 999
    expect_fail "" "del of an unmapped VDI" del nosuchvdi
    expect_count $((n0 + 1)) "after the failed dels"
    del_dev linux -- "$d"
    expect_count "$n0" "after del linux"
    [ "$(vdi_rows)" = "$rows0" ] || fail "the VDI list changed: $(vdi_rows | tr '\n' ';')"
    pass
}

# ------------------------------------------------------------ 7 recovery
# uptime_cs: the uptime in centiseconds (busybox date has no sub-second format).
uptime_cs() { awk '{ split($1, a, "."); print a[1] * 100 + a[2] }' /proc/uptime; }
cs_to_s() { awk -v c="$1" 'BEGIN { printf "%.2f", c / 100 }'; }
# s7_wait_state DEV STATE SECS: `sheepdev list` shows DEV in STATE within SECS.
s7_wait_state() {
    local i=0 st
    while :; do
        st=$(list_get "$1" state)
        [ "$st" = "$2" ] && return 0
        i=$((i + 1))
        [ $i -le $(($3 * 5)) ] || fail "$1 is '$st' in sheepdev list after $3 s, expected $2; serve.log: $(tail -n 5 "$W/serve.log" | tr '\n' ';')"
        sleep 0.2
    done
}
# s7_writes DEV: writes completed on DEV so far (/sys/block/NAME/stat field 5).
s7_writes() { awk '{ print $5 }' "/sys/block/${1#/dev/}/stat"; }
s7_sums() { (cd /mnt/s7 && find . -type f ! -name fio.dat | sort | xargs sha256sum); }
s7_recovery() {
    local d eng rc i w0 fio_pid probe_pid t_kill t_live t_probe v size=64M
    begin 7 recovery
    ensure_vdi rec 1G
    add_dev "$ADDR" rec --queues 2
    d=$DEV
    v=$(list_get "$d" recoverable)
    [ "$v" = true ] || fail "$d was not created with user recovery (sheepdev list: recoverable=$v)"
    run "mkfs.ext4 on $d" mkfs.ext4 -q -F "$d"
    mkdir -p /mnt/s7
    run "mount $d" mount -t ext4 "$d" /mnt/s7
    head -c $((5 * MIB + 7)) /dev/urandom >/mnt/s7/rand-5m
    pattern R 2 >/mnt/s7/pattern-2m
    echo "sheepdev scenario 7" >/mnt/s7/small.txt
    s7_sums >"$W/s7.sums"
    sync

    eng=$(fio_engine)
    step "fio randwrite bs=4k iodepth=32 size=$size ioengine=$eng direct=1 verify=crc32c on /mnt/s7/fio.dat; kill -9 the daemon mid-fio"
    w0=$(s7_writes "$d")
    fio --name=recovery --filename=/mnt/s7/fio.dat --size="$size" --ioengine="$eng" --direct=1 \
        --rw=randwrite --bs=4k --iodepth=32 --verify=crc32c --verify_fatal=1 --do_verify=1 \
        --eta=never --output-format=json --output="$W/fio-s7.json" 2>"$W/fio-s7.err" &
    fio_pid=$!
    i=0
    while [ $(($(s7_writes "$d") - w0)) -lt 2000 ]; do
        kill -0 "$fio_pid" 2>/dev/null || fail "fio ended before the kill (wrote $(($(s7_writes "$d") - w0)) requests): raise its size"
        i=$((i + 1))
        [ $i -le 600 ] || fail "fio wrote only $(($(s7_writes "$d") - w0)) requests to $d in 120 s"
        sleep 0.2
    done
    t_kill=$(uptime_cs)
    kill -KILL "$SERVE_PID"
    wait "$SERVE_PID" 2>/dev/null || true
    SERVE_PID=""
    kill -0 "$fio_pid" 2>/dev/null || fail "fio ended right at the kill: raise its size"
    step "killed the daemon after $(($(s7_writes "$d") - w0)) writes; fio still running"
    # A read issued while no daemon runs (at 700 MiB, past what ext4 wrote): it must wait.
    (
        rc=0
        dd if="$d" of=/dev/null bs=4096 count=1 skip=$((700 * 256)) iflag=direct 2>"$W/probe.err" || rc=$?
        echo "$rc $(uptime_cs)" >"$W/probe.t"
    ) &
    probe_pid=$!
    [ -b "$d" ] || fail "$d vanished when its daemon was killed"
    sleep 1
    echo "=== scenario 7: serve again after kill -9" >>"$W/serve.log"
    start_serve
    s7_wait_state "$d" live 90
    t_live=$(uptime_cs)
    wait "$probe_pid" || true
    read -r rc t_probe <"$W/probe.t" || fail "the probe read left no result"
    [ "$rc" = 0 ] || fail "a read issued while no daemon ran failed (dd exited $rc): $(cat "$W/probe.err")"
    grep -q "re-attached $d (rec)" "$W/serve.log" || fail "serve.log does not say it re-attached $d"
    rc=0
    wait "$fio_pid" || rc=$?
    if [ "$rc" != 0 ] || grep -qiE 'verify.*fail|bad magic|bad header|crc32c' "$W/fio-s7.err"; then
        cat "$W/fio-s7.err" >&2
        sed '/^{/,$d' "$W/fio-s7.json" | head -40 >&2
        fail "fio across the daemon's kill -9 exited $rc (verify errors above)"
    fi
    json_flat <"$W/fio-s7.json" >"$W/fio.flat"
    v=$(awk -F'\t' '$1 == ".jobs[0].error" { print $2 }' "$W/fio.flat")
    [ "$v" = 0 ] || fail "fio across the kill: error=$v"
    v=$(awk -F'\t' '$1 == ".jobs[0].read.io_bytes" { print $2 }' "$W/fio.flat")
    [ -n "$v" ] && [ "$v" -gt 0 ] || fail "fio did not verify anything (read io_bytes=$v)"
    v=$(awk -F'\t' '$1 == ".jobs[0].write.clat_ns.max" { printf "%.2f", $2 / 1e9 }' "$W/fio.flat")
    step "I/O stalled $(cs_to_s $((t_probe - t_kill))) s (kill -9 to the completion of a read issued while no daemon ran, 1 s of it before serve was started again; list showed the device live $(cs_to_s $((t_live - t_kill))) s after the kill); fio's slowest write ${v} s; verify errors: 0"
    echo "SCENARIO 7 recovery: kill -9 stall $(cs_to_s $((t_probe - t_kill))) s, fio max write latency ${v} s, verify errors 0" >>"$OUT/recovery.txt"

    step "SIGTERM: the daemon exits 0 and leaves $d"
    kill -TERM "$SERVE_PID"
    i=0
    while kill -0 "$SERVE_PID" 2>/dev/null; do
        i=$((i + 1))
        [ $i -le 150 ] || fail "sheepdev serve still runs 30 s after SIGTERM"
        sleep 0.2
    done
    rc=0
    wait "$SERVE_PID" || rc=$?
    SERVE_PID=""
    [ "$rc" = 0 ] || fail "sheepdev serve exited $rc on SIGTERM"
    grep -q "SIGTERM: exiting; 1 device(s) stay in the kernel" "$W/serve.log" || fail "serve.log does not say it left the device: $(tail -n 3 "$W/serve.log")"
    [ -b "$d" ] || fail "$d vanished when its daemon exited on SIGTERM"
    step "the store stops too; a file written now waits in sync"
    stop_store
    pattern D 1 >"$W/D"
    t_kill=$(uptime_cs)
    (
        rc=0
        cp "$W/D" /mnt/s7/written-while-down && sync || rc=$?
        echo "$rc $(uptime_cs)" >"$W/probe.t"
    ) &
    probe_pid=$!
    echo "=== scenario 7: serve again after SIGTERM, store down" >>"$W/serve.log"
    start_serve
    s7_wait_state "$d" orphaned 60
    step "re-attach failed with the store down: $(grep "cannot re-attach $d" "$W/serve.log" | tail -n 1)"
    expect_fail "" "recover while the store is down" recover "$d"
    [ "$(list_get "$d" state)" = orphaned ] || fail "$d is '$(list_get "$d" state)' after the failed recover, expected orphaned"
    start_store
    run "sheepdev recover $d" sd recover "$d"
    [ "$(cat "$W/run.out")" = "$d" ] || fail "sheepdev recover $d printed '$(cat "$W/run.out")'"
    [ "$(list_get "$d" state)" = live ] || fail "$d is '$(list_get "$d" state)' after sheepdev recover"
    wait "$probe_pid" || true
    read -r rc t_probe <"$W/probe.t" || fail "the held write left no result"
    [ "$rc" = 0 ] || fail "the write + sync issued while no daemon ran failed ($rc)"
    step "the held write + sync completed $(cs_to_s $((t_probe - t_kill))) s after it began (daemon and store were down)"
    expect_fail "already served" "recover of a live device" recover "$d"

    run "umount" umount /mnt/s7
    step "e2fsck -fn $d"
    e2fsck -fn "$d" >"$W/fsck.out" 2>&1 || { cat "$W/fsck.out" >&2; fail "e2fsck -fn $d after the restarts: filesystem not clean (above)"; }
    run "mount $d again" mount -t ext4 "$d" /mnt/s7
    s7_sums >"$W/s7.sums2"
    grep -v written-while-down "$W/s7.sums2" >"$W/s7.sums3"
    if ! cmp -s "$W/s7.sums" "$W/s7.sums3"; then
        diff "$W/s7.sums" "$W/s7.sums3" >&2 || true
        fail "files differ after the restarts (above: - before, + after)"
    fi
    check_same "the file written while no daemon ran" "$W/D" /mnt/s7/written-while-down
    run "umount" umount /mnt/s7

    step "an orphaned device (SIGTERM, store down, serve again) is removed by del"
    stop_pid "sheepdev serve" "$SERVE_PID"
    SERVE_PID=""
    stop_store
    echo "=== scenario 7: serve again after SIGTERM, store down, then del" >>"$W/serve.log"
    start_serve
    s7_wait_state "$d" orphaned 60
    del_dev "$d" -- "$d"
    step "del of the orphaned device: $(tr '\n' ' ' <"$W/del.err")"
    start_store
    expect_count 0 "after the scenario"
    pass
}

# s8: eight devices on the daemon's core threads at once (one shard per core serves
# queue q of every device): fio crc32c verify on all of them together, the daemon
# killed -9 in the middle, serve again re-attaches all eight, every fio verifies clean;
# the daemon's threads stay cores + a fixed few however many devices it serves.
S8_N=8
s8_threads() { ls "/proc/$SERVE_PID/task" | wc -l; }
s8_many() {
    local i d devs="" pids="" rc eng w0 t0 n cores
    begin 8 many-devices
    cores=$(nproc)
    eng=$(fio_engine)
    i=0
    while [ $i -lt $S8_N ]; do
        ensure_vdi "many$i" 256M
        add_dev "$ADDR" "many$i"
        devs="$devs $DEV"
        i=$((i + 1))
    done
    n=$(s8_threads)
    step "$S8_N devices mapped:$devs; daemon threads: $n ($cores cores)"
    [ "$n" -le $((cores + 6)) ] || fail "the daemon runs $n threads for $S8_N devices on $cores cores (expected at most cores + 6)"
    step "fio randwrite bs=4k iodepth=8 size=24M verify=crc32c on each of the $S8_N devices at once; kill -9 the daemon mid-fio"
    i=0
    for d in $devs; do
        fio --name="many$i" --filename="$d" --ioengine="$eng" --direct=1 \
            --rw=randwrite --bs=4k --iodepth=8 --size=24M \
            --verify=crc32c --verify_fatal=1 --do_verify=1 \
            --eta=never --output-format=json --output="$W/fio-s8-$i.json" 2>"$W/fio-s8-$i.err" &
        pids="$pids $!"
        i=$((i + 1))
    done
    w0=0
    for d in $devs; do w0=$((w0 + $(s7_writes "$d"))); done
    t0=0
    while :; do
        n=0
        for d in $devs; do n=$((n + $(s7_writes "$d"))); done
        [ $((n - w0)) -ge 4000 ] && break
        t0=$((t0 + 1))
        [ $t0 -le 600 ] || fail "the $S8_N fio jobs wrote only $((n - w0)) requests in 120 s"
        sleep 0.2
    done
    kill -KILL "$SERVE_PID"
    wait "$SERVE_PID" 2>/dev/null || true
    SERVE_PID=""
    step "killed the daemon after $((n - w0)) writes over the $S8_N devices"
    for p in $pids; do kill -0 "$p" 2>/dev/null || fail "a fio job ended right at the kill: raise its size"; done
    sleep 1
    echo "=== scenario 8: serve again after kill -9" >>"$W/serve.log"
    start_serve
    for d in $devs; do s7_wait_state "$d" live 120; done
    n=$(s8_threads)
    step "all $S8_N re-attached; daemon threads: $n"
    [ "$n" -le $((cores + 6)) ] || fail "after re-attaching, the daemon runs $n threads (expected at most cores + 6)"
    i=0
    for p in $pids; do
        rc=0
        wait "$p" || rc=$?
        if [ "$rc" != 0 ] || grep -qiE 'verify.*fail|bad magic|bad header|crc32c' "$W/fio-s8-$i.err"; then
            cat "$W/fio-s8-$i.err" >&2
            fail "fio on many$i across the daemon's kill -9 exited $rc (verify errors above)"
        fi
        json_flat <"$W/fio-s8-$i.json" >"$W/fio.flat"
        rc=$(awk -F'\t' '$1 == ".jobs[0].read.io_bytes" { print $2 }' "$W/fio.flat")
        [ -n "$rc" ] && [ "$rc" -gt 0 ] || fail "fio on many$i verified nothing (read io_bytes=$rc)"
        i=$((i + 1))
    done
    step "every fio verified clean across the kill"
    sleep 1.5 # each core publishes its loop counters every second
    w0=$(wget -qO- http://127.0.0.1:9477/metrics | awk -v cores="$cores" '
        /^sheepdev_core_ring_enters_total\{/ { match($0, /core="[0-9]+"/); e[substr($0, RSTART + 6, RLENGTH - 7)] = $NF }
        /^sheepdev_core_ring_completions_total\{/ { match($0, /core="[0-9]+"/); c[substr($0, RSTART + 6, RLENGTH - 7)] = $NF }
        END { for (k = 0; k < cores; k++) { if (!(e[k] > 0 && c[k] > 0)) { print "core " k ": enters " e[k] + 0 ", completions " c[k] + 0; exit }
              printf "core %d %d/%d ", k, c[k], e[k] } }')
    case $w0 in *": enters"*) fail "a core's loop counters are missing or zero in /metrics after the I/O ($w0)" ;; esac
    step "core loops (completions/enters): $w0"
    i=0
    for d in $devs; do
        del_dev "many$i" -- "$d"
        i=$((i + 1))
    done
    expect_count 0 "after the scenario"
    pass
}

# ------------------------------------------------------------ 9 resize
# features_has NAME: the running kernel's ublk driver has feature NAME
# (`sheepdev features --json`).
features_has() {
    sd features --json >"$W/features.json" 2>"$W/features.err" || fail "sheepdev features --json: $(cat "$W/features.err")"
    json_flat <"$W/features.json" >"$W/features.flat"
    # (the keys of each row come in any order)
    awk -F'\t' -v want="$1" '
        { k = $1; sub(/\.[a-z]+$/, "", k) }
        $1 ~ /\.name$/ && $2 == want { row = k }
        $1 ~ /\.kernel$/ { kernel[k] = $2 }
        END { exit (row != "" && kernel[row] == "true") ? 0 : 1 }' "$W/features.flat"
}
s9_sums() { (cd /mnt/s9 && find . -type f ! -name fio.dat | sort | xargs sha256sum); }
s9_resize() {
    local d rc eng pid mode
    begin 9 resize
    eng=$(fio_engine)
    ensure_vdi grow 256M
    add_dev "$ADDR" grow
    d=$DEV
    check_size "$d" $((256 * MIB))
    run "mkfs.ext4 on $d" mkfs.ext4 -q -F "$d"
    mkdir -p /mnt/s9
    run "mount $d" mount -t ext4 "$d" /mnt/s9
    head -c $((5 * MIB + 7)) /dev/urandom >/mnt/s9/rand-5m
    pattern P 1 >/mnt/s9/pattern-1m
    s9_sums >"$W/s9.sums"
    step "shrinking is refused with one line"
    rc=0
    sd resize grow 128M >"$W/run.out" 2>"$W/run.err" || rc=$?
    [ "$rc" != 0 ] || fail "sheepdev resize grow 128M (a shrink) succeeded"
    [ "$(wc -l <"$W/run.err")" = 1 ] && grep -q 'shrink' "$W/run.err" || fail "the refused shrink said: $(cat "$W/run.err")"
    rc=0
    sd resize grow 300M+1 >"$W/run.out" 2>"$W/run.err" || rc=$?
    [ "$rc" != 0 ] || fail "sheepdev resize to a bad size succeeded"
    check_size "$d" $((256 * MIB))
    if features_has update_size; then
        mode=live
        step "UPDATE_SIZE: grow $d 256M -> 640M under fio randwrite verify=crc32c on ext4, then resize2fs online"
        fio --name=s9 --filename=/mnt/s9/fio.dat --ioengine="$eng" --direct=1 --rw=randwrite \
            --bs=4k --iodepth=16 --size=48M --verify=crc32c --verify_fatal=1 --do_verify=1 \
            --eta=never --output="$W/fio-s9.out" 2>"$W/fio-s9.err" &
        pid=$!
        sleep 3
        kill -0 "$pid" 2>/dev/null || fail "fio ended before the resize: raise its size"
        run "sheepdev resize grow 640M" sd resize grow 640M
        [ "$(cat "$W/run.out")" = "$d $((640 * MIB))" ] || fail "sheepdev resize printed '$(cat "$W/run.out")'"
        check_size "$d" $((640 * MIB))
        run "resize2fs $d (online, mounted)" resize2fs "$d"
        rc=0
        wait "$pid" || rc=$?
        if [ "$rc" != 0 ] || grep -qiE 'verify.*fail|bad magic|bad header|crc32c' "$W/fio-s9.err"; then
            cat "$W/fio-s9.err" >&2
            fail "fio across the online resize exited $rc (verify errors above)"
        fi
        head -c $((220 * MIB)) /dev/zero >/mnt/s9/big || fail "writing 220 MiB into the grown filesystem failed"
        rm /mnt/s9/big
        run "umount" umount /mnt/s9
    else
        mode=re-add
        step "no UPDATE_SIZE on $(uname -r): the VDI grows, the device says it needs a re-add"
        run "sheepdev resize grow 640M" sd resize grow 640M
        grep -q 'UPDATE_SIZE' "$W/run.err" || fail "sheepdev resize did not say the device keeps its size: $(cat "$W/run.err")"
        check_size "$d" $((256 * MIB))
        run "umount" umount /mnt/s9
        del_dev grow -- "$d"
        add_dev "$ADDR" grow
        d=$DEV
        check_size "$d" $((640 * MIB))
        e2fsck -fy "$d" >"$W/fsck.out" 2>&1 || { cat "$W/fsck.out" >&2; fail "e2fsck -fy $d before resize2fs"; }
        run "resize2fs $d (offline)" resize2fs "$d"
    fi
    step "e2fsck -fn $d"
    e2fsck -fn "$d" >"$W/fsck.out" 2>&1 || { cat "$W/fsck.out" >&2; fail "e2fsck -fn $d after the resize: not clean (above)"; }
    run "mount $d" mount -t ext4 "$d" /mnt/s9
    s9_sums >"$W/s9.sums2"
    cmp -s "$W/s9.sums" "$W/s9.sums2" || fail "files changed across the resize"
    blocks=$(df -k /mnt/s9 | awk 'NR == 2 { print $2 }')
    [ "$blocks" -gt $((500 * 1024)) ] || fail "the filesystem has $blocks KiB after resize2fs, expected about 640 MiB"
    run "umount" umount /mnt/s9
    del_dev grow -- "$d"
    step "grown $mode; ext4 ${blocks} KiB, fsck clean, files intact"
    expect_count 0 "after the scenario"
    pass
}

# ------------------------------------------------------------ 10 restart
# s10_round MODE DEV: fio randwrite verify on DEV across two SIGTERM + serve
# restarts with `serve --quiesce MODE`; sets S10_MAX (fio's longest write, ms)
# and S10_Q (how many "quiesced in" lines the exits logged).
s10_round() {
    local mode=$1 d=$2 eng pid n rc q0
    eng=$(fio_engine)
    q0=$(grep -c 'quiesced in' "$W/serve.log" || true)
    fio --name=s10 --filename="$d" --ioengine="$eng" --direct=1 --rw=randwrite --bs=4k \
        --iodepth=4 --size=64M --verify=crc32c --verify_fatal=1 --do_verify=1 \
        --eta=never --output-format=json --output="$W/fio-s10-$mode.json" 2>"$W/fio-s10.err" &
    pid=$!
    n=0
    while [ $n -lt 2 ]; do
        sleep 2
        kill -0 "$pid" 2>/dev/null || fail "fio ended before restart $((n + 1)) (--quiesce $mode): raise its size"
        kill -TERM "$SERVE_PID"
        wait "$SERVE_PID" || fail "sheepdev serve exited non-zero on SIGTERM (--quiesce $mode)"
        SERVE_ARGS="--quiesce $mode" start_serve
        s7_wait_state "$d" live 60
        n=$((n + 1))
    done
    rc=0
    wait "$pid" || rc=$?
    if [ "$rc" != 0 ] || grep -qiE 'verify.*fail|bad magic|bad header|crc32c' "$W/fio-s10.err"; then
        cat "$W/fio-s10.err" >&2
        fail "fio across two restarts with --quiesce $mode exited $rc (verify errors above)"
    fi
    json_flat <"$W/fio-s10-$mode.json" >"$W/fio.flat"
    S10_MAX=$(awk -F'\t' '$1 == ".jobs[0].write.clat_ns.max" { printf "%d", $2 / 1000000 }' "$W/fio.flat")
    S10_Q=$(( $(grep -c 'quiesced in' "$W/serve.log" || true) - q0 ))
}
s10_restart() {
    local d qa qo ma mo
    begin 10 restart
    ensure_vdi rst 256M
    add_dev "$ADDR" rst
    d=$DEV
    step "fio randwrite 4k QD4 verify=crc32c on $d across two SIGTERM + serve restarts, --quiesce auto"
    stop_pid "sheepdev serve" "$SERVE_PID"
    SERVE_ARGS="--quiesce auto" start_serve
    s7_wait_state "$d" live 60
    s10_round auto "$d"
    ma=$S10_MAX qa=$S10_Q
    step "the same with --quiesce off"
    stop_pid "sheepdev serve" "$SERVE_PID"
    SERVE_ARGS="--quiesce off" start_serve
    s7_wait_state "$d" live 60
    s10_round off "$d"
    mo=$S10_MAX qo=$S10_Q
    [ "$qo" = 0 ] || fail "--quiesce off quiesced $qo times"
    if features_has quiesce; then
        [ "$qa" = 2 ] || fail "--quiesce auto on a kernel with QUIESCE quiesced $qa of 2 exits: $(grep -i quiesc "$W/serve.log" | tail -n 3)"
    else
        [ "$qa" = 0 ] || fail "--quiesce auto quiesced $qa times on a kernel without QUIESCE"
    fi
    step "longest write across the restarts: quiesce auto $ma ms ($qa quiesced exits), off $mo ms; fio verified clean both times"
    echo "s10 $(uname -r) quiesce_auto_max_ms $ma quiesced $qa quiesce_off_max_ms $mo" >>"$OUT/restart.txt"
    stop_pid "sheepdev serve" "$SERVE_PID"
    start_serve
    s7_wait_state "$d" live 60
    del_dev rst -- "$d"
    expect_count 0 "after the scenario"
    pass
}

# ------------------------------------------------------------ main
# ------------------------------------------------------------ 11 zero copy
# features_of DEV: the "features" list sheepdev list --json shows for DEV.
features_of() {
    sd list --json | tr -d ' \n' | grep -o "\"device\":\"$1\"[^}]*" | grep -o '"features":\[[^]]*\]' | head -1
}
# s11_zc N: read the zero-copy path counters of /metrics (one device mapped) into
# S11_PAGESN and S11_UNREGN; s11_paths: all three, for a message.
S11_SMALL=8192 # 16 MiB of 4k writes and the reads that verify them
s11_paths() {
    wget -qO- http://127.0.0.1:9477/metrics | awk '/^sheepdev_zero_copy_requests_total/ {
        match($0, /path="[a-z]*"/); p = substr($0, RSTART + 6, RLENGTH - 7); s[p] += $NF }
        END { printf "pages %d copied %d unregistered %d", s["pages"], s["copied"], s["unregistered"] }'
}
s11_zc() {
    local p
    sleep 1 # the shard publishes every 250 ms
    p=$(s11_paths)
    eval "S11_PAGES$1=$(echo "$p" | awk '{ print $2 }') S11_UNREG$1=$(echo "$p" | awk '{ print $6 }')"
}
s11_zero_copy() {
    local d f usable reads warns
    begin 11 zero-copy
    ensure_vdi linux 1G
    sd features --json >"$W/features.json" || fail "sheepdev features --json failed"
    usable=$(json_flat <"$W/features.json" | awk -F'\t' '$1 == ".zero_copy.usable" { print $2 }')
    reads=$(json_flat <"$W/features.json" | awk -F'\t' '$1 == ".zero_copy.ring_reads" { print $2 }')
    step "zero copy on this kernel: usable=$usable ring_reads=$reads ($(sd features | tail -1))"
    if ! grep -q '"auto_buf_reg"' "$W/features.json" || [ "$usable" != true ]; then
        # No zero copy here (6.12): `on` is refused in one line, `auto` copies as before.
        expect_fail "no zero copy" "add --zero-copy on without zero copy" add "$ADDR" linux --zero-copy on
        add_dev "$ADDR" linux
        f=$(features_of "$DEV")
        case $f in *auto_buf_reg*) fail "a device was made with auto_buf_reg on a kernel without zero copy: $f" ;; esac
        step "--zero-copy auto without zero copy: $f"
        s2_verify "$DEV" 4k "$S2_SIZE_4K"
        del_dev "$DEV" -- "$DEV"
        expect_count 0 "after del"
        pass
        return
    fi
    [ "$reads" = true ] || fail "zero copy is usable but the ring cannot READ_FIXED a socket on $(uname -r)"
    # The default (auto) takes it, so every other scenario on this kernel runs zero copy.
    add_dev "$ADDR" linux --queues 2
    f=$(features_of "$DEV")
    case $f in *auto_buf_reg*user_copy*|*user_copy*auto_buf_reg*) ;; *) fail "a default add on a kernel with zero copy made $f" ;; esac
    case $f in *need_get_data*) fail "a zero-copy device also has need_get_data: $f" ;; esac
    step "default add: $f"
    del_dev "$DEV" -- "$DEV"
    # --zero-copy on: crc32c verify with reads and writes, small and large requests.
    add_dev "$ADDR" linux --queues 2 --zero-copy on
    d=$DEV
    warns=$(dmesg | grep -c "WARNING:" || true)
    s2_verify "$d" 4k "$S2_SIZE_4K"
    s2_verify "$d" 1M "$S2_SIZE_64K"
    # Registering follows the requests (zero_copy::Registering): after a run of small requests a
    # queue stops having its requests registered (they are copied: "unregistered"), and the
    # first large requests turn it back on ("pages"). The slack: two queues x (the window of
    # 2 x depth small requests + one request per tag that was already told not to register).
    # The small run: 4k writes of 16 MiB, then fio reads them all back and verifies them.
    s11_zc 0
    step "fio randwrite 4k 16M + crc32c verify, iodepth 32 (zero copy): $S11_SMALL requests"
    fio --name=zc-small --filename="$d" --ioengine="$(fio_engine)" --direct=1 --rw=randwrite --bs=4k \
        --iodepth=32 --size=16M --verify=crc32c --verify_fatal=1 --do_verify=1 \
        --eta=never >"$W/fio-s11-small.out" 2>&1 ||
        { tail -20 "$W/fio-s11-small.out" >&2; fail "fio randwrite 4k verify on a zero-copy device failed"; }
    s11_zc 1
    [ $((S11_UNREG1 - S11_UNREG0)) -ge $((S11_SMALL - 2 * (2 * 128 + 128))) ] ||
        fail "of $S11_SMALL 4k requests only $((S11_UNREG1 - S11_UNREG0)) were served unregistered ($(s11_paths))"
    step "4k requests: $((S11_UNREG1 - S11_UNREG0)) of $S11_SMALL unregistered"
    # Sequential 1M writes then reads back through the page-cache-free path, verified.
    step "fio seq write+verify bs=1M iodepth=8 (zero copy)"
    fio --name=zc-seq --filename="$d" --ioengine="$(fio_engine)" --direct=1 --rw=write --bs=1M \
        --iodepth=8 --size=256M --verify=crc32c --verify_fatal=1 --do_verify=1 \
        --eta=never >"$W/fio-s11-seq.out" 2>&1 || { tail -20 "$W/fio-s11-seq.out" >&2; fail "fio seq 1M verify failed"; }
    # 256 MiB written and read back in requests of at most 512 KiB: 1024 or more large ones.
    s11_zc 2
    [ $((S11_PAGES2 - S11_PAGES1)) -ge $((1024 - 2 * 128)) ] ||
        fail "of 1024+ large requests after small ones only $((S11_PAGES2 - S11_PAGES1)) were on their pages ($(s11_paths))"
    step "1M requests after them: $((S11_PAGES2 - S11_PAGES1)) on their pages ($(s11_paths))"
    [ "$(dmesg | grep -c "WARNING:" || true)" = "$warns" ] || fail "the kernel warned while zero copy ran: $(dmesg | grep -A5 "WARNING:" | tail -6)"
    # ext4 on it: mkfs, files, fsck.
    step "mkfs.ext4 + files + fsck on a zero-copy device"
    mkfs.ext4 -q -F "$d" >"$W/mkfs11.out" 2>&1 || fail "mkfs.ext4 on $d: $(tail -3 "$W/mkfs11.out")"
    mkdir -p /mnt/s11 && mount "$d" /mnt/s11 || fail "mount $d"
    dd if=/dev/urandom of=/mnt/s11/a bs=1M count=32 status=none
    cp /mnt/s11/a /mnt/s11/b && sync
    cmp /mnt/s11/a /mnt/s11/b || fail "copy on a zero-copy ext4 differs"
    umount /mnt/s11
    echo 3 >/proc/sys/vm/drop_caches
    e2fsck -fn "$d" >"$W/fsck11.out" 2>&1 || fail "fsck of a zero-copy ext4: $(tail -5 "$W/fsck11.out")"
    del_dev "$d" -- "$d"
    # --zero-copy off on the same kernel copies (need_get_data), and --own-buffers excludes on.
    add_dev "$ADDR" linux --zero-copy off
    f=$(features_of "$DEV")
    case $f in *auto_buf_reg*) fail "--zero-copy off made $f" ;; esac
    step "--zero-copy off: $f"
    del_dev "$DEV" -- "$DEV"
    expect_fail "exclude each other" "add --own-buffers --zero-copy on" add "$ADDR" linux --own-buffers --zero-copy on
    expect_count 0 "after del"
    pass
}

ALL="1:ext4 2:fio-verify 3:snapshots 4:clone-cow 5:discard 6:bad-input 7:recovery 8:many-devices 9:resize 10:restart 11:zero-copy"
[ "${SCENARIOS_SOURCE_ONLY:-0}" = 1 ] && return 0 2>/dev/null

BACKEND=store
if [ "${1:-}" = --sheep ]; then
    BACKEND=sheep
    shift
    command -v sheep >/dev/null && command -v dog >/dev/null || { echo "--sheep: sheep and dog are not in the guest (run-vm.sh --bin)" >&2; exit 2; }
fi
pick=""
[ $# -gt 0 ] || set -- all
for a in "$@"; do
    found=""
    for s in $ALL; do
        case $a in
            all|"${s%%:*}"|"${s#*:}") pick="$pick ${s%%:*}"; found=1 ;;
        esac
    done
    [ -n "$found" ] || { echo "usage: scenarios.sh [--sheep] [all|SCENARIO...], SCENARIO one of: $ALL" >&2; exit 2; }
done

mkdir -p "$W" "$OUT"
: >"$OUT/results.txt"
trap on_exit EXIT
say "kernel $(uname -r), $(nproc) cpus; $(sheepdev --version); backend: $BACKEND; scenarios:$pick"
command -v sheepdev >/dev/null || fail "sheepdev is not in the guest (run-vm.sh --bin target/release/sheepdev)"
start_store
start_serve
expect_count 0 "right after serve started"
for n in $pick; do
    case $n in
        1) s1_ext4 ;;
        2) s2_fio ;;
        3) s3_snapshots ;;
        4) s4_clone ;;
        5) s5_discard ;;
        6) s6_bad_input ;;
        7) s7_recovery ;;
        8) s8_many ;;
        9) s9_resize ;;
        10) s10_restart ;;
        11) s11_zero_copy ;;
    esac
done
SCEN="end"
expect_count 0 "at the end"
left=$(ls /dev | grep '^ublkb' || true)
[ -z "$left" ] || fail "block devices left after every del: $left"
say "all scenarios passed:$pick"
