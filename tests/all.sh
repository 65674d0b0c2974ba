#!/usr/bin/env bash
# Every test sheepdev has: the cargo suites (unit, property, conformance against the
# embedded store, CLI) and the kernel harness in a qemu VM.
# Usage: bash tests/all.sh        (as root on a fresh Debian 12 machine: .ci/run installs
#                                  what is missing; tests/vm/setup-host.sh fetches the VM kernel)
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo test (unit, property, conformance, cli)"
cargo test --release --all-targets 2>&1

echo "== kernel harness: VM smoke (ublk_drv, io_uring, ext4)"
bash tests/vm/setup-host.sh
bash tests/vm/run-vm.sh --quiet --timeout 300 tests/vm/smoke.sh
echo "== all tests passed"
