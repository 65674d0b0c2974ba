#!/usr/bin/env bash
# Host test for sheepdev's Prometheus metrics and dashboards/sheepdev.json, no kernel needed:
#   1. runs `sheepdev bench --metrics-addr 127.0.0.1:PORT` (embedded store, real shards) as load;
#   2. runs Debian's prometheus (1 s scrapes) against it and against a local
#      prometheus-node-exporter (diskstats only), all on 127.0.0.1 free ports, temp storage;
#   3. once Prometheus holds >= 15 s of samples under load, evaluates EVERY expression of the
#      dashboard (panel targets and label_values variables) at one instant: each must succeed
#      with a non-empty result; every metric name the dashboard uses must be served;
#   4. `promtool check metrics` on sheepdev's /metrics must print nothing.
# Prints `prometheus: N expressions OK, M metrics checked` at the end.
#
# Usage: bash tests/prometheus/run.sh
# Needs: apt-get install prometheus prometheus-node-exporter (prometheus brings promtool),
#        python3, curl.
# Environment:
#   SHEEPDEV_BIN=path        the binary to test, built with `--features tools` (default:
#                            cargo build --release --features tools, target/release/sheepdev)
#   SHEEPDEV_PLOT=out.png    also wait for the bench to end and plot the main panels over the
#                            run (tests/prometheus/plot.py; needs `pip install matplotlib`)
#   SHEEPDEV_BENCH_ARGS="…"  replaces the bench's load flags (default below)
#   SHEEPDEV_PROM_TARGET=host:port   check an exporter that is already running (a daemon
#                            started with --metrics-addr) instead of starting a bench
#   SHEEPDEV_PROM_KEEP=1     keep the temp dir (logs, TSDB, scraped /metrics)
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=tests/prometheus
DASHBOARD=${SHEEPDEV_DASHBOARD:-dashboards/sheepdev.json}
PROMETHEUS=${PROMETHEUS:-/usr/bin/prometheus}
PROMTOOL=${PROMTOOL:-/usr/bin/promtool}
NODE_EXPORTER=${NODE_EXPORTER:-/usr/bin/prometheus-node-exporter}
# ~35 s of shard load (8 points x 4 s after a 256 MiB prefill); randrw-64k keeps reads and
# writes live together. No raw-protocol points: they drive no shard, so no shard metrics.
BENCH_ARGS=${SHEEPDEV_BENCH_ARGS:---seconds 4 --depths 8,32 --shards 1,2 --size 256M --workloads randrw-64k,randwrite-4k --no-raw}
MIN_SAMPLES=15      # seconds of 1 s scrapes before the dashboard is evaluated
t0=$(date +%s)

for b in "$PROMETHEUS" "$PROMTOOL" "$NODE_EXPORTER"; do
    [[ -x $b ]] || { echo "prometheus test: $b missing (apt-get install prometheus prometheus-node-exporter)" >&2; exit 1; }
done
for c in curl python3; do
    command -v "$c" >/dev/null || { echo "prometheus test: needs $c" >&2; exit 1; }
done

TMP=$(mktemp -d /tmp/sheepdev-prom.XXXXXX)
PIDS=()
cleanup() {
    local rc=$?
    # Only the processes this script started, each by its own pid.
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ $rc -ne 0 ]]; then
        for f in "$TMP"/*.log; do
            [[ -s $f ]] || continue
            echo "---- tail of $(basename "$f")" >&2; tail -n 25 "$f" >&2
        done
    fi
    if [[ -n ${SHEEPDEV_PROM_KEEP:-} ]]; then echo "prometheus test: kept $TMP" >&2; else rm -rf "$TMP"; fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fail() { echo "prometheus test: FAIL: $*" >&2; exit 1; }

# Three distinct free ports on 127.0.0.1 (the kernel picks them; the sockets close at once).
read -r PROM_PORT NODE_PORT SD_PORT < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(3)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')

# Polls CMD every 0.5 s for at most SECS seconds.
wait_for() {
    local secs=$1 what=$2; shift 2
    local deadline=$(( $(date +%s) + secs ))
    until "$@" >/dev/null 2>&1; do
        (( $(date +%s) < deadline )) || fail "timed out after ${secs}s waiting for $what"
        sleep 0.5
    done
}

# True when the instant query, evaluated at time $AT, has a non-empty result.
has_data() {
    curl -fsS -m 5 -G "$PROM/api/v1/query" --data-urlencode "query=$1" --data-urlencode "time=$AT" |
        python3 -c 'import json,sys; d=json.load(sys.stdin); sys.exit(0 if d["status"]=="success" and d["data"]["result"] else 1)'
}
# ---- the binary (before anything runs: a build can take minutes)
if [[ -z ${SHEEPDEV_PROM_TARGET:-} ]]; then
    if [[ -z ${SHEEPDEV_BIN:-} ]]; then
        echo "== cargo build --release --features tools"
        cargo build --release --features tools --bin sheepdev 2>&1 | tail -n 5
        SHEEPDEV_BIN=target/release/sheepdev
    fi
    [[ -x $SHEEPDEV_BIN ]] || fail "$SHEEPDEV_BIN is not an executable"
    "$SHEEPDEV_BIN" bench --help | grep -q -- '--metrics-addr' \
        || fail "$SHEEPDEV_BIN bench has no --metrics-addr (or no bench: cargo build --release --features tools)"
fi

# ---- what Prometheus scrapes as sheepdev
SD_TARGET=${SHEEPDEV_PROM_TARGET:-127.0.0.1:$SD_PORT}
BENCH_PID=
bench_alive() { [[ -z $BENCH_PID ]] || kill -0 "$BENCH_PID" 2>/dev/null || fail "sheepdev bench exited early"; }

# ---- node_exporter: diskstats (the Kernel row) and nothing else heavy
NODE_TARGET=127.0.0.1:$NODE_PORT
"$NODE_EXPORTER" --web.listen-address="$NODE_TARGET" --collector.disable-defaults \
    --collector.diskstats --log.level=warn >"$TMP/node_exporter.log" 2>&1 &
PIDS+=("$!")

# ---- Prometheus, 1 s scrapes, temp TSDB
cat >"$TMP/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: sheepdev
    static_configs: [{targets: ['$SD_TARGET']}]
  - job_name: node
    static_configs: [{targets: ['$NODE_TARGET']}]
EOF
"$PROMTOOL" check config "$TMP/prometheus.yml" >/dev/null
PROM=http://127.0.0.1:$PROM_PORT
"$PROMETHEUS" --config.file="$TMP/prometheus.yml" --storage.tsdb.path="$TMP/tsdb" \
    --web.listen-address="127.0.0.1:$PROM_PORT" --log.level=warn >"$TMP/prometheus.log" 2>&1 &
PIDS+=("$!")

wait_for 60 "Prometheus on $PROM" curl -fsS -m 2 "$PROM/-/ready"
# Prometheus applies its targets on a 5 s tick after start: wait for its first scrape, so
# that the bench's first point is in the TSDB too.
first_scrape() { AT=$(date +%s); has_data 'up{job="node"} == 1'; }
wait_for 30 "Prometheus' first scrape" first_scrape

# ---- the sheepdev exporter under load
# Started once Prometheus is up, so that it sees the whole run.
RUN_START=$(date +%s)
if [[ -z ${SHEEPDEV_PROM_TARGET:-} ]]; then
    echo "== sheepdev bench --metrics-addr $SD_TARGET $BENCH_ARGS"
    # TMPDIR: the embedded store's directory goes under $TMP, removed even when the bench
    # is killed before it could clean up.
    mkdir "$TMP/bench-tmp"
    # shellcheck disable=SC2086 # BENCH_ARGS is a flag list
    TMPDIR=$TMP/bench-tmp "$SHEEPDEV_BIN" bench --metrics-addr "$SD_TARGET" $BENCH_ARGS >"$TMP/bench.log" 2>&1 &
    BENCH_PID=$!
    PIDS+=("$BENCH_PID")
fi

scrape_ok() { bench_alive; curl -fsS -m 2 "http://$1/metrics" -o /dev/null; }
wait_for 120 "sheepdev /metrics on $SD_TARGET" scrape_ok "$SD_TARGET"
wait_for 30 "node_exporter /metrics on $NODE_TARGET" scrape_ok "$NODE_TARGET"

# Picks a new instant AT and checks it: MIN_SAMPLES scrapes of both targets, a device, and
# (when this script drives the bench) I/O in the rate window - the bench removes a point's
# series when the point ends, so the instant must not fall between two points. Every
# dashboard expression is then evaluated at that same AT.
ready() {
    bench_alive
    # 2 s back: every scrape stamped before AT (1 s interval and timeout) is already stored,
    # so the later queries see exactly what this check saw.
    AT=$(( $(date +%s) - 2 ))
    has_data "min(sum_over_time(up{job=\"sheepdev\"}[1m])) >= $MIN_SAMPLES and min(up{job=\"sheepdev\"}) == 1" &&
    has_data "min(sum_over_time(up{job=\"node\"}[1m])) >= $MIN_SAMPLES and min(up{job=\"node\"}) == 1" &&
    has_data "sheepdev_device_info{job=\"sheepdev\"}" &&
    { [[ -z $BENCH_PID ]] || has_data "sum(rate(sheepdev_io_requests_total{job=\"sheepdev\"}[5s])) > 0"; }
}
echo "== waiting for ${MIN_SAMPLES}s of samples"
wait_for 120 "${MIN_SAMPLES}s of samples under load" ready

# The exporters' text as scraped now (the bench may end soon after).
curl -fsS -m 5 "http://$SD_TARGET/metrics" -o "$TMP/sheepdev.prom"
curl -fsS -m 5 "http://$NODE_TARGET/metrics" -o "$TMP/node.prom"

echo "== promtool check metrics (sheepdev /metrics)"
if ! "$PROMTOOL" check metrics <"$TMP/sheepdev.prom" >"$TMP/promtool.out" 2>&1 || [[ -s $TMP/promtool.out ]]; then
    cat "$TMP/promtool.out" >&2
    fail "promtool check metrics complained about sheepdev's /metrics"
fi

echo "== every dashboard expression at $AT"
# Template variables as Grafana would substitute them:
#   $instance: the sheepdev target, regex-escaped as Grafana does for a =~ matcher;
#   $device:   All (.*) - bench mode has one device, "bench";
#   $node:     the node_exporter target (its own instance, not sheepdev's);
#   $disk:     .* instead of the default ublkb.* - this host maps no ublk devices, so any
#              disk node_exporter reports proves the Kernel row's queries;
#   $__rate_interval: 5s (4 x the 1 s scrape interval, plus one).
python3 "$HERE/dashboard.py" check --dashboard "$DASHBOARD" --prom "$PROM" --time "$AT" \
    --var "instance=$(python3 "$HERE/dashboard.py" regex "$SD_TARGET")" \
    --var 'device=.*' \
    --var "node=$(python3 "$HERE/dashboard.py" regex "$NODE_TARGET")" \
    --var 'disk=.*' \
    --var '__rate_interval=5s' \
    --metrics "$TMP/sheepdev.prom" --metrics "$TMP/node.prom" \
    ${SHEEPDEV_BIN:+--binary "$SHEEPDEV_BIN"} \
    --counts "$TMP/counts" ${SHEEPDEV_PROM_VERBOSE:+-v} \
    || fail "dashboard expressions (above)"
read -r N_EXPR N_METRICS <"$TMP/counts"

if [[ -n ${SHEEPDEV_PLOT:-} ]]; then
    if [[ -n $BENCH_PID ]]; then
        echo "== waiting for the bench to finish (for the plot)"
        wait_for 300 "the bench to finish" bash -c "! kill -0 $BENCH_PID"
        wait "$BENCH_PID" || fail "sheepdev bench failed (see the bench log)"
        keep=(); for pid in "${PIDS[@]}"; do [[ $pid == "$BENCH_PID" ]] || keep+=("$pid"); done
        PIDS=("${keep[@]}"); BENCH_PID=
    fi
    echo "== plot -> $SHEEPDEV_PLOT"
    python3 "$HERE/plot.py" --dashboard "$DASHBOARD" --prom "$PROM" \
        --start "$RUN_START" --end "$(date +%s)" \
        --instance "$(python3 "$HERE/dashboard.py" regex "$SD_TARGET")" "$SHEEPDEV_PLOT"
fi

echo "prometheus: $N_EXPR expressions OK, $N_METRICS metrics checked ($(( $(date +%s) - t0 ))s)"
