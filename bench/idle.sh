#!/usr/bin/env bash
# bench/idle.sh — what idle connections cost (issue #17): memory per
# connection at 19,000 connections, a storm of 19,000 at once, and the CPU the
# server spends holding 19,000 silent connections with keepalive on.
#
# Usage:   bash bench/idle.sh
# Env:     BENCH_CLIENTS=19000    connections (this machine allows 20,000 open
#                                 files per process: load-test and the server
#                                 are separate processes)
#          BENCH_HOLD=60s         how long the CPU scenario holds them
#          BENCH_OUT=DIR          results directory (default bench/results)
# Needs:   cargo, jq, Linux /proc. About 2 minutes with the defaults.
#
# The server runs on its default flags (keepalive: a client silent for half
# of --idle-timeout 60 s is pinged, so a 60 s hold sees one ping sweep per
# connection), fresh for each scenario, on 127.0.0.1 port 0:
#   i1  memory: BENCH_CLIENTS idle connections opened at 2,000/s, held 5 s;
#       RSS growth ÷ connections, and RSS 12 s after they all closed (jemalloc
#       returns freed memory on a 10 s decay)
#   i2  storm: BENCH_CLIENTS connections at once (--ramp 0, at most 1,000
#       handshakes in flight), held 2 s, then all closed; accepted, failed,
#       the time to connect them all, and RSS after they left
#   i3  idle CPU: BENCH_CLIENTS connections held BENCH_HOLD with no traffic;
#       server CPU over the hold (the ping sweep is the only work)
set -euo pipefail

CLIENTS=${BENCH_CLIENTS:-19000}
HOLD=${BENCH_HOLD:-60s}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT_ROOT=${BENCH_OUT:-$ROOT/bench/results}
cd "$ROOT"
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
command -v jq >/dev/null || { echo "bench/idle.sh: needs jq (apt-get install -y jq)" >&2; exit 2; }

build_release
ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" -le "$((CLIENTS + 100))" ]; then
  echo "bench/idle.sh: $CLIENTS connections need more than $(ulimit -n) open files per process" >&2
  exit 2
fi
NAME="$(date -u +%Y-%m-%d)-$REV-idle"
OUT="$OUT_ROOT/$NAME"
MD="$OUT_ROOT/$NAME.md"
mkdir -p "$OUT"

COMMON="--source-addrs 8 --no-progress --settle 1s"
declare -A ARGS=(
  [i1]="--clients $CLIENTS --idle --ramp 2000 --duration 5s --after-close 12s"
  [i2]="--clients $CLIENTS --idle --ramp 0 --storm-concurrency 1000 --duration 2s --after-close 12s"
  [i3]="--clients $CLIENTS --idle --ramp 2000 --duration $HOLD"
)
SERVER="$REL/broadcast-server start --host 127.0.0.1 --port 0"

run() { # scenario
  local sc=$1 log=$OUT/$1 url pid
  # shellcheck disable=SC2086
  start_ws_server "$log" $SERVER || { echo "bench/idle.sh: the server did not start; see $log.err" >&2; exit 1; }
  url=$SERVER_URL pid=$SERVER_PID
  echo "== $sc: load-test --url $url --server-pid $pid ${ARGS[$sc]} $COMMON" >&2
  # shellcheck disable=SC2086
  "$LOADTEST" --url "$url" --server-pid "$pid" ${ARGS[$sc]} $COMMON --json "$log.json" >"$log.txt" 2>&1 || true
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

for sc in i1 i2 i3; do run "$sc"; done

v() { jq -r "$2" "$OUT/$1.json"; }
{
  echo "# Idle connections: $NAME"
  echo
  echo "Server on its default flags; load-test beside it on the same $(nproc) cores; \`bash bench/idle.sh\`."
  echo "Per-run JSON and summaries: \`$NAME/\`."
  echo
  echo "| scenario | measure | value |"
  echo "| --- | --- | ---: |"
  echo "| i1: $CLIENTS idle, 2,000/s | connected / failed | $(v i1 .clients_connected) / $(v i1 .clients_failed) |"
  echo "| | **RSS per connection (B)** | $(fmt "$(v i1 .server.rss_per_connection_b)" 0) |"
  echo "| | RSS before / idle / after close (MiB) | $(fmt "$(v i1 '.server.rss_before_kib / 1024')" 1) / $(fmt "$(v i1 '.server.rss_idle_kib / 1024')" 1) / $(fmt "$(v i1 '(.server.rss_after_close_kib // null) | if . then . / 1024 else null end')" 1) |"
  echo "| i2: $CLIENTS at once | connected / failed | $(v i2 .clients_connected) / $(v i2 .clients_failed) |"
  echo "| | **time to connect all (s)** | $(fmt "$(v i2 .connect_s)" 2) ($(fmt "$(v i2 .connect_rate_per_s)" 0)/s) |"
  echo "| | connect latency p50 / p99 (ms) | $(fmt "$(v i2 .connect_latency.p50_ms)" 1) / $(fmt "$(v i2 .connect_latency.p99_ms)" 1) |"
  echo "| | RSS peak / after all left (MiB) | $(fmt "$(v i2 '.server.rss_peak_kib / 1024')" 1) / $(fmt "$(v i2 '(.server.rss_after_close_kib // null) | if . then . / 1024 else null end')" 1) |"
  echo "| i3: $CLIENTS held $HOLD, keepalive on | connected / failed | $(v i3 .clients_connected) / $(v i3 .clients_failed) |"
  echo "| | **server CPU over the hold (s, % of one core)** | $(fmt "$(v i3 .server.cpu_run_s)" 3) s, $(fmt "$(v i3 .server.cpu_run_pct)" 2) % |"
  echo "| | server closes during the hold | $(v i3 '.server_closes | to_entries | map("\(.key): \(.value)") | join(", ") | if . == "" then "none" else . end') |"
} >"$MD"
cat "$MD"
