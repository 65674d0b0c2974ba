#!/usr/bin/env bash
# The main job on the embedded store: the VDI `linux` as /dev/ublkbN, mkfs'd, mounted,
# snapshotted and mapped again. On a host with ublk_drv (as root) it runs here; elsewhere
# it boots the qemu VM from tests/vm (installing qemu and the VM kernel on first use).
# Usage: bash tests/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# What building sheepdev needs on a fresh Debian machine: a C toolchain (glommio's liburing)
# and libclang (libublk's bindgen).
bash tests/apt-need.sh build-essential pkg-config libclang-dev
echo "== building sheepdev (cargo build --release; a few minutes the first time, one line per crate)"
cargo build --release
if [ "$(id -u)" = 0 ] && { [ -e /dev/ublk-control ] || modprobe ublk_drv 2>/dev/null; } && [ -e /dev/ublk-control ]; then
  echo "== ublk_drv is here: running the demo on this host"
  PATH="$PWD/target/release:$PATH" sh tests/demo-guest.sh
else
  echo "== no ublk_drv on this host: running the demo in the qemu VM (tests/vm)"
  bash tests/vm/setup-host.sh
  bash tests/vm/run-vm.sh --timeout 600 --bin target/release/sheepdev tests/demo-guest.sh 2>&1 | grep -v '^\[ *[0-9.]*\]'
fi
