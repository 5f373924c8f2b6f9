#!/usr/bin/env bash
# bench/uws.sh — ours against uWebSockets, the field's reference for memory
# and CPU (issue #17), with the same load generator on the same machine:
#   f1  fixed load (bench/run.sh scenario 1): 1,000 subscribers, 1 publisher,
#       50 msg/s, 64 B, 10 s; server CPU per delivery, latency, loss
#   s2  saturation (scenario 2a): 100 subscribers, 4 publishers, --max-rate
#       (window 64 each), 64 B, 8 s; deliveries/s and CPU per delivery
#   m1  idle memory (bench/idle.sh i1): 19,000 idle connections opened at
#       2,000/s, held 5 s; RSS growth ÷ connections
# Each scenario runs BENCH_RUNS times per server, the servers alternating
# (this machine is shared and noisy); the file reports medians. Servers:
#   ours   broadcast-server start on its default flags (--workers = cores)
#   ours1  the same with --workers 1 (one shard, as uWS has one thread)
#   uws    bench/uws/server.js: uWebSockets.js 20.30 under Node, publish to
#          one topic (the sender skipped), compression off
#
# Usage:   bash bench/uws.sh
# Env:     BENCH_RUNS=5  BENCH_SCENARIOS="f1 s2 m1"  BENCH_OUT=DIR
# Needs:   cargo, jq, node and npm (uWebSockets.js is installed from npm into
#          bench/uws/node_modules). About 8 minutes with the defaults.
set -euo pipefail

RUNS=${BENCH_RUNS:-5}
SCENARIOS=${BENCH_SCENARIOS:-f1 s2 m1}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT_ROOT=${BENCH_OUT:-$ROOT/bench/results}
cd "$ROOT"
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
for tool in jq node npm; do
  command -v "$tool" >/dev/null || { echo "bench/uws.sh: needs $tool" >&2; exit 2; }
done

build_release
if [ ! -d bench/uws/node_modules/@trufflesuite/uws-js-unofficial ]; then
  echo "== npm install (bench/uws)" >&2
  (cd bench/uws && npm install --no-audit --no-fund --loglevel error >&2)
fi
ulimit -n "$(ulimit -Hn)"
NAME="$(date -u +%Y-%m-%d)-$REV-uws"
OUT="$OUT_ROOT/$NAME"
MD="$OUT_ROOT/$NAME.md"
mkdir -p "$OUT"

declare -A SERVER=(
  [ours]="$REL/broadcast-server start --host 127.0.0.1 --port 0"
  [ours1]="$REL/broadcast-server start --host 127.0.0.1 --port 0 --workers 1"
  [uws]="node bench/uws/server.js 0"
)
declare -A ARGS=(
  [f1]="--clients 1000 --publishers 1 --rate 50 --size 64 --duration 10s --drain 5s"
  [s2]="--clients 100 --publishers 4 --max-rate --window 64 --size 64 --duration 8s --drain 5s"
  [m1]="--clients 19000 --idle --ramp 2000 --duration 5s --source-addrs 8 --settle 1s"
)
declare -A KINDS=([f1]="ours ours1 uws" [s2]="ours uws" [m1]="ours uws")

run() { # scenario kind run
  local sc=$1 kind=$2 i=$3 log=$OUT/$1-$2-$3 url pid
  # shellcheck disable=SC2086
  start_ws_server "$log" ${SERVER[$kind]} || { echo "bench/uws.sh: $kind did not start; see $log.err" >&2; exit 1; }
  url=$SERVER_URL pid=$SERVER_PID
  echo "== $sc $kind run $i: load-test --url $url ${ARGS[$sc]}" >&2
  # shellcheck disable=SC2086
  "$LOADTEST" --url "$url" --server-pid "$pid" ${ARGS[$sc]} --no-progress --json "$log.json" \
    >"$log.txt" 2>&1 || true
  stop_pid "$pid"
}

for sc in $SCENARIOS; do
  for i in $(seq "$RUNS"); do
    for kind in ${KINDS[$sc]}; do run "$sc" "$kind" "$i"; done
  done
done

m() { # scenario kind jq-expr decimals: the median over the runs
  # shellcheck disable=SC2046
  fmt "$(median_json "$3" $(ls "$OUT/$1-$2-"*.json 2>/dev/null))" "$4"
}
CPU='(.server.cpu_run_s * 1e6 / .delivered)'
{
  echo "# Ours against uWebSockets: $NAME"
  echo
  echo "\`bash bench/uws.sh\`, $RUNS runs per server alternating, medians. load-test beside the servers"
  echo "on the same $(nproc) cores ($(uname -r)). Per-run JSON and summaries: \`$NAME/\`."
  echo
  echo "- ours: \`broadcast-server start\` on its default flags; ours1: \`--workers 1\`"
  echo "- uws: \`node bench/uws/server.js\` (uWebSockets.js 20.30, Node $(node --version))"
  for sc in $SCENARIOS; do
    echo
    case $sc in
      f1)
        echo "## f1: fixed load: \`load-test ${ARGS[f1]}\`"
        echo
        echo "| server | CPU per delivery (µs) | in the kernel | p50 (ms) | p99 (ms) | lost |"
        echo "| --- | ---: | ---: | ---: | ---: | ---: |"
        for k in ${KINDS[f1]}; do
          echo "| $k | **$(m f1 "$k" "$CPU" 2)** | $(m f1 "$k" .server.cpu_run_kernel_pct 0) % | $(m f1 "$k" .latency.p50_ms 2) | $(m f1 "$k" .latency.p99_ms 2) | $(m f1 "$k" .lost 0) |"
        done
        ;;
      s2)
        echo "## s2: saturation: \`load-test ${ARGS[s2]}\`"
        echo
        echo "| server | deliveries/s | CPU per delivery (µs) | p50 (ms) | lost |"
        echo "| --- | ---: | ---: | ---: | ---: |"
        for k in ${KINDS[s2]}; do
          echo "| $k | **$(m s2 "$k" .deliveries_per_s 0)** | $(m s2 "$k" "$CPU" 3) | $(m s2 "$k" .latency.p50_ms 2) | $(m s2 "$k" .lost 0) |"
        done
        ;;
      m1)
        echo "## m1: idle memory: \`load-test ${ARGS[m1]}\`"
        echo
        echo "| server | connected | RSS per connection (B) | RSS before / idle (MiB) |"
        echo "| --- | ---: | ---: | ---: |"
        for k in ${KINDS[m1]}; do
          echo "| $k | $(m m1 "$k" .clients_connected 0) | **$(m m1 "$k" .server.rss_per_connection_b 0)** | $(m m1 "$k" '.server.rss_before_kib / 1024' 1) / $(m m1 "$k" '.server.rss_idle_kib / 1024' 1) |"
        done
        ;;
    esac
  done
} >"$MD"
cat "$MD"
