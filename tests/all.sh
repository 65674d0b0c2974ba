#!/usr/bin/env bash
# Every test sheepdev has: the cargo suites (unit, property, conformance against the
# embedded store, CLI, no-kernel shards, allocations), the dashboard against a real
# Prometheus, and the kernel scenarios in a qemu VM (this machine has no ublk_drv; on a
# host that has it, `cargo test --test kernel -- --ignored` runs the same scenarios directly).
# Usage, as root on a fresh Debian 12 machine (installs what is missing):  bash tests/all.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests need: a C toolchain for glommio's liburing, libclang for
# libublk's bindgen, a real Prometheus (promtool included) and node_exporter, and the
# DejaVu font that `sheepdev bench --plot` draws its text with.
need=()
for p in build-essential pkg-config libclang-dev curl prometheus prometheus-node-exporter fonts-dejavu-core; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${need[@]}"
fi

echo "== cargo test (unit, property, conformance, cli, shards, allocations)"
cargo test --release --all-targets 2>&1

echo "== Prometheus metrics and the Grafana dashboard (a real Prometheus scraping sheepdev bench)"
SHEEPDEV_BIN=target/release/sheepdev bash tests/prometheus/run.sh

echo "== kernel harness: VM smoke (ublk_drv, io_uring, ext4); installs qemu and the VM kernel if missing"
bash tests/vm/setup-host.sh
bash tests/vm/run-vm.sh --quiet --timeout 300 tests/vm/smoke.sh

echo "== kernel scenarios in the VM (ext4, fio verify, snapshots, clone COW, discard, bad input)"
SHEEPDEV_BIN=target/release/sheepdev SHEEPDEV_VM_SKIP_SETUP=1 bash tests/vm/kernel-tests.sh
echo "== all tests passed"
