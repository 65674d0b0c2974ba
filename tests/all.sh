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
bash tests/apt-need.sh build-essential pkg-config libclang-dev curl prometheus prometheus-node-exporter fonts-dejavu-core

echo "== cargo test (unit, property, conformance, cli, shards, allocations)"
cargo test --release --all-targets 2>&1

# Two binaries for the scripts below: the product (the kernel scenarios), and the product
# plus the tooling they drive (`bench` for Prometheus, `fault-proxy` in the VM's fault
# scenarios), which a plain `cargo build --release` leaves out. `cargo test` builds only
# the latter (its self dev-dependency turns `tools` on); it is kept aside, checked, and a
# plain build makes the product, which also proves it builds without the tooling.
echo "== the tooling binary (target/tools/sheepdev, from cargo test), then cargo build --release"
mkdir -p target/tools
cp target/release/sheepdev target/tools/sheepdev
target/tools/sheepdev bench --help >/dev/null
cargo build --release 2>&1
if target/release/sheepdev bench --help >/dev/null 2>&1; then
  echo "target/release/sheepdev still has the tooling in it"; exit 1
fi

echo "== fuzzing response decoding and the connection demultiplexer, bounded (tests/fuzz/README.md)"
# cargo-fuzz needs nightly flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain take them.
cargo fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked
fuzz_log=$(mktemp)
for t in response:1000000 demux:100000; do
  name=${t%%:*} runs=${t##*:}
  if ! RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir tests/fuzz "$name" -- \
      -runs="$runs" -max_len=4096 -len_control=0 -print_final_stats=1 >"$fuzz_log" 2>&1; then
    tail -n 60 "$fuzz_log"
    echo "fuzz target $name failed; the input that did it is under tests/fuzz/artifacts/$name/"
    exit 1
  fi
  echo "$name: $(grep -E '^Done [0-9]+ runs' "$fuzz_log")"
done
rm -f "$fuzz_log"

echo "== Prometheus metrics and the Grafana dashboard (a real Prometheus scraping sheepdev bench)"
SHEEPDEV_BIN=target/tools/sheepdev bash tests/prometheus/run.sh

echo "== kernel harness: VM smoke (ublk_drv, io_uring, ext4); installs qemu and the VM kernel if missing"
bash tests/vm/setup-host.sh
bash tests/vm/run-vm.sh --quiet --timeout 300 tests/vm/smoke.sh

echo "== kernel scenarios in the VM (ext4, fio verify, snapshots, clone COW, discard, bad input, daemon kill -9 and recovery, 8 devices, resize, restart, zero copy refused)"
SHEEPDEV_BIN=target/release/sheepdev SHEEPDEV_VM_SKIP_SETUP=1 bash tests/vm/kernel-tests.sh

echo "== fault scenarios in the VM under fio verify + e2fsck (store restart, failover, live snapshots, resets, I/O timeout)"
SHEEPDEV_BIN=target/tools/sheepdev SHEEPDEV_VM_SKIP_SETUP=1 bash tests/vm/kernel-tests.sh --faults

# The VM matrix: trixie-backports' newest installable cloud kernel (7.x: UPDATE_SIZE, so
# scenario 9 grows a mounted device live; QUIESCE for scenario 10; zero copy, which
# `add --zero-copy auto` takes there, so every scenario and fault scenario below runs its
# devices from the requests' own pages, and scenario 11 checks that it does). Every
# scenario runs again there.
echo "== the kernel scenarios and the fault scenarios again on trixie-backports' kernel, zero copy (tests/vm/setup-host.sh --kernel backports)"
bash tests/vm/setup-host.sh --kernel backports
SHEEPDEV_VM_KERNEL=backports SHEEPDEV_BIN=target/release/sheepdev SHEEPDEV_VM_SKIP_SETUP=1 bash tests/vm/kernel-tests.sh
SHEEPDEV_VM_KERNEL=backports SHEEPDEV_BIN=target/tools/sheepdev SHEEPDEV_VM_SKIP_SETUP=1 bash tests/vm/kernel-tests.sh --faults
echo "== all tests passed"
