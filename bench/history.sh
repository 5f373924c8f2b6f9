#!/usr/bin/env bash
# bench/history.sh — what history costs a single node at saturation: scenario
# 2a (one room of 100 subscribers, 4 publishers at max rate, 64 B) against the
# server on its default flags (history on: 100 messages per channel) and with
# --history-size 0, runs interleaved (on, off, on, off, ...) so that a busy
# machine weighs on both alike. Issue #14's target: on >= 0.9x off.
#
# Usage:   bash bench/history.sh
# Env:     BENCH_RUNS=5        runs per side (the file reports medians)
#          BENCH_DURATION=10s  publishing time
#          BENCH_SIZE=64       payload bytes
#          BENCH_OUT=DIR       results directory (default bench/results)
# Needs:   cargo, jq, Linux /proc. About 3 minutes with the defaults.
# Output:  bench/results/<date>-<rev>-history.md, and per run
#          <side>-<run>.json (load-test --json) in the folder of that name.
set -euo pipefail

RUNS=${BENCH_RUNS:-5}
DURATION=${BENCH_DURATION:-10s}
SIZE=${BENCH_SIZE:-64}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT_ROOT=${BENCH_OUT:-$ROOT/bench/results}
cd "$ROOT"
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
command -v jq >/dev/null || { echo "bench/history.sh: needs jq (apt-get install -y jq)" >&2; exit 2; }

build_release
NAME="$(date -u +%Y-%m-%d)-$REV-history"
OUT="$OUT_ROOT/$NAME"
mkdir -p "$OUT"
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
LT_ARGS="--clients 100 --publishers 4 --max-rate --window 64 --size $SIZE --duration $DURATION --drain 5s --no-progress"

for i in $(seq "$RUNS"); do
  for side in on off; do
    extra=""
    [ "$side" = off ] && extra="--history-size 0"
    log="$OUT/$side-$i.server.log"
    # shellcheck disable=SC2086
    RUST_LOG=warn "$REL/broadcast-server" start --host 127.0.0.1 --port 0 $extra >"$log" 2>&1 &
    pid=$!
    url=""
    for _ in $(seq 200); do
      url=$(grep -o 'ws://[^ ]*' "$log" | head -1 || true)
      [ -n "$url" ] && break
      sleep 0.05
    done
    [ -n "$url" ] || { echo "bench/history.sh: the server did not start" >&2; kill "$pid"; exit 1; }
    # shellcheck disable=SC2086
    "$LOADTEST" --url "$url" --server-pid "$pid" $LT_ARGS --json "$OUT/$side-$i.json" >"$OUT/$side-$i.txt" 2>&1
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
    echo "$side $i: $(jq -r '"\(.deliveries_per_s|floor) deliveries/s, server CPU \(.server.cpu_run_s) s, lost \(.lost)"' "$OUT/$side-$i.json")" >&2
  done
done
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

rate() { median_json '.deliveries_per_s' "$OUT"/"$1"-*.json; }
cpu() { median_json '.server.cpu_run_s * 1e6 / .delivered' "$OUT"/"$1"-*.json; }
lost() { jq -s 'map(.lost) | max' "$OUT"/"$1"-*.json; }
every() { jq -s -r 'map(.deliveries_per_s / 1e6 * 100 | floor / 100 | tostring + " M") | join(", ")' "$OUT"/"$1"-*.json; }
R_ON=$(rate on)
R_OFF=$(rate off)
C_ON=$(cpu on)
C_OFF=$(cpu off)
{
  echo "# History on vs off, scenario 2a, single node ($NAME)"
  echo
  echo "| | |"
  echo "| --- | --- |"
  echo "| git revision | $REV |"
  echo "| load average (1/5/15 min) | start $LOAD_START, end $LOAD_END |"
  echo "| runs | $RUNS per side, interleaved |"
  echo
  echo '```sh'
  echo "# on:  target/release/broadcast-server start --host 127.0.0.1 --port 0   (default flags: --history-size 100)"
  echo "# off: target/release/broadcast-server start --host 127.0.0.1 --port 0 --history-size 0"
  echo "target/release/load-test --url \$URL --server-pid \$PID $LT_ARGS --json \$SIDE-\$RUN.json"
  echo '```'
  echo
  echo "| side | deliveries/s (median) | every run | server CPU per delivery (median, µs) | loss (worst) |"
  echo "| --- | ---: | --- | ---: | ---: |"
  echo "| history on (default) | $(fmt "$R_ON" 0) | $(every on) | $(fmt "$C_ON" 3) | $(lost on) |"
  echo "| --history-size 0 | $(fmt "$R_OFF" 0) | $(every off) | $(fmt "$C_OFF" 3) | $(lost off) |"
  echo
  echo "- **on ÷ off, deliveries/s: $(fmt "$(jq -n "$R_ON / $R_OFF")" 2)** (target ≥ 0.9)"
  echo "- on ÷ off, server CPU per delivery: $(fmt "$(jq -n "$C_ON / $C_OFF")" 2)"
} >"$OUT_ROOT/$NAME.md"
cat "$OUT_ROOT/$NAME.md"
