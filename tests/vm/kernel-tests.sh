#!/usr/bin/env bash
# kernel-tests.sh - run the ublk data-plane scenarios (tests/vm/scenarios.sh)
# in the qemu VM: build sheepdev, boot the VM with it, run the scenarios,
# report.
#
# Usage: bash tests/vm/kernel-tests.sh [SCENARIO...]
#        SCENARIO: a number or a name of tests/vm/scenarios.sh (default: all)
#        bash tests/vm/kernel-tests.sh --faults [a b d e f]
#        the reliability scenarios of tests/vm/faults.sh instead (default: all);
#        their table (fault | longest write | bytes verified) is printed at the end;
#        they run `sheepdev fault-proxy`, so they build with `--features tools`
# Env:   SHEEPDEV_BIN            use this sheepdev binary, skip `cargo build --release`
#                                (with --faults: one built with `--features tools`)
#        SHEEPDEV_KT_OUT         where the guest's /out goes (default: a new
#                                /tmp/sheepdev-kt.XXXXXX, kept)
#        SHEEPDEV_KT_TIMEOUT     VM timeout in seconds (default 1800: all ten scenarios
#                                take ~9 min here when the host is slow)
#        SHEEPDEV_VM_SKIP_SETUP  1: do not run tests/vm/setup-host.sh first
#        SHEEPDEV_KT_SHEEP       a prefix holding a sheep 1.0 you built (sbin/sheep,
#                                bin/dog): the scenarios run against that real sheep
#                                in the guest instead of the embedded store
#                                (scenarios.sh --sheep; tests/README.md)
#        and run-vm.sh's SHEEPDEV_VM_* variables.
#
# The guest's busybox has sha256sum, blockdev, blkdiscard and fallocate, but
# its blkdiscard cannot zero (-z) and its fallocate cannot punch holes (-p),
# so util-linux's blkdiscard and fallocate are added with --bin (run-vm.sh
# copies their libraries) when the host has them.
#
# Exit status: 0 when every scenario passed; otherwise run-vm.sh's status
# (the guest script's, 124 timeout, 125 harness failure), after printing the
# guest log and the daemon/store logs.
set -euo pipefail
cd "$(dirname "$0")/../.."

# The fault scenarios need the tooling's fault proxy; the others run the product alone.
tools=()
if [ "${1:-}" = --faults ]; then tools=(--features tools); fi
if [ -n "${SHEEPDEV_BIN:-}" ]; then
    bin=$SHEEPDEV_BIN
    [ -x "$bin" ] || { echo "kernel-tests: SHEEPDEV_BIN=$bin is not an executable" >&2; exit 2; }
else
    echo "== cargo build --release ${tools[*]-}"
    cargo build --release ${tools[@]+"${tools[@]}"}
    bin=target/release/sheepdev
fi
if [ ${#tools[@]} -gt 0 ] && ! "$bin" fault-proxy --help >/dev/null 2>&1; then
    echo "kernel-tests: --faults needs \`sheepdev fault-proxy\`; $bin was built without it (cargo build --release --features tools)" >&2
    exit 2
fi
[ "${SHEEPDEV_VM_SKIP_SETUP:-0}" = 1 ] || bash tests/vm/setup-host.sh

guest=(tests/vm/scenarios.sh)
results=results.txt
log=scenarios.log
if [ "${1:-}" = --faults ]; then
    shift
    guest=(--file tests/vm/scenarios.sh:/root/scenarios.sh tests/vm/faults.sh)
    results=faults.txt
    log=faults.log
fi
out=${SHEEPDEV_KT_OUT:-$(mktemp -d /tmp/sheepdev-kt.XXXXXX)}
mkdir -p "$out"
extra=()
for t in /usr/sbin/blkdiscard /sbin/blkdiscard /usr/bin/fallocate /bin/fallocate; do
    if [ -x "$t" ] && "$t" --version 2>/dev/null | grep -q util-linux; then
        case " ${extra[*]-} " in *"/$(basename "$t") "*) continue ;; esac
        extra+=(--bin "$t")
    fi
done

backend=()
if [ -n "${SHEEPDEV_KT_SHEEP:-}" ]; then
    [ "${guest[0]}" = tests/vm/scenarios.sh ] || { echo "kernel-tests: SHEEPDEV_KT_SHEEP: the fault scenarios run on the embedded store only" >&2; exit 2; }
    for b in sbin/sheep bin/dog; do
        [ -x "$SHEEPDEV_KT_SHEEP/$b" ] || { echo "kernel-tests: SHEEPDEV_KT_SHEEP=$SHEEPDEV_KT_SHEEP has no executable $b" >&2; exit 2; }
        extra+=(--bin "$SHEEPDEV_KT_SHEEP/$b")
    done
    backend=(--sheep)
fi

echo "== VM scenarios ${*:-all} (sheepdev: $bin; backend: ${SHEEPDEV_KT_SHEEP:-embedded store}; guest /out: $out)"
start=$SECONDS
rc=0
bash tests/vm/run-vm.sh --quiet --timeout "${SHEEPDEV_KT_TIMEOUT:-1800}" --bin "$bin" ${extra[@]+"${extra[@]}"} \
    --out "$out" "${guest[@]}" ${backend[@]+"${backend[@]}"} "$@" || rc=$?

if [ "$rc" = 0 ]; then
    cat "$out/$results"
    echo "== kernel tests passed ($((SECONDS - start)) s; logs in $out)"
    exit 0
fi
# run-vm.sh --quiet has printed the whole console (the guest log, with the
# diagnostics scenarios.sh adds on failure: sheepdev list, serve.log and
# store.log tails, dmesg) above; sum up.
{
    echo "== kernel tests FAILED (status $rc after $((SECONDS - start)) s)"
    if [ -s "$out/$log" ]; then
        grep -E '^(FAIL:|scenarios: FAILED|MISMATCH:)' "$out/$log" || echo "(no FAIL line in the guest log)"
    else
        echo "(no guest log came back: see the console above)"
    fi
    if [ -s "$out/results.txt" ]; then echo "passed before that:"; cat "$out/results.txt"; fi
    echo "guest logs (scenarios.log, serve.log, store.log, diag.txt, fio-*.json): $out"
} >&2
exit "$rc"
