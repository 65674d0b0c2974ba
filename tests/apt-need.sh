#!/usr/bin/env bash
# apt-need.sh PACKAGE...: install (as root, from the machine's own apt sources) those of the
# Debian packages that are not installed yet, saying which; nothing when all are there.
# Used by tests/all.sh and tests/demo.sh.
set -euo pipefail
need=()
for p in "$@"; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
[ ${#need[@]} -gt 0 ] || exit 0
echo "== installing ${need[*]} (apt-get)"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${need[@]}"
