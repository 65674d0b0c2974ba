#!/usr/bin/env bash
# Every test sheepdev has: the cargo suites (unit, property, conformance against the
# embedded store, CLI, no-kernel shards) and the kernel scenarios in a qemu VM (this
# machine has no ublk_drv; on a host that has it, `cargo test --test kernel -- --ignored`
# runs the same scenarios directly).
# Usage: bash tests/all.sh        (as root on a fresh Debian 12 machine: .ci/run installs
#                                  what is missing; tests/vm/setup-host.sh fetches the VM kernel)
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo test (unit, property, conformance, cli)"
cargo test --release --all-targets 2>&1

echo "== Prometheus metrics and the Grafana dashboard (a real Prometheus scraping sheepdev bench)"
bash tests/prometheus/run.sh

echo "== kernel harness: VM smoke (ublk_drv, io_uring, ext4)"
bash tests/vm/setup-host.sh
bash tests/vm/run-vm.sh --quiet --timeout 300 tests/vm/smoke.sh

echo "== kernel scenarios in the VM (ext4, fio verify, snapshots, clone COW, discard, bad input)"
SHEEPDEV_BIN=target/release/sheepdev SHEEPDEV_VM_SKIP_SETUP=1 bash tests/vm/kernel-tests.sh
echo "== all tests passed"
