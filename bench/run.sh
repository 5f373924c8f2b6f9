#!/usr/bin/env bash
# bench/run.sh — the benchmark suite: broadcast-server ("ours") against
# baseline-server (tokio + tokio-tungstenite + one tokio::sync::broadcast
# channel, load-test/src/bin/baseline-server.rs), same machine, same load
# generator (load-test), same invocation.
#
# Usage:   bash bench/run.sh
# Env:     BENCH_RUNS=3        runs per scenario and server (the file reports medians)
#          BENCH_DURATION=10s  publishing time of scenarios 1, 2 and 5
#          BENCH_OUT=DIR       results directory (default bench/results)
# Needs:   cargo, jq, Linux /proc (the load generator reads the server's
#          CPU time and memory from /proc/PID). About 10 minutes with the defaults.
#
# It builds both servers and load-test in release mode, then for each
# scenario and each run starts a fresh server on 127.0.0.1 port 0 (so memory
# figures are clean), passes its PID to load-test --server-pid, and stops it
# with SIGTERM afterwards. Scenarios:
#   1  fan-out at fixed load: 1,000 subscribers, 1 publisher, 50 msg/s, 64 B
#   2  saturation: 100 subscribers, 4 publishers, --max-rate, 64 B and 4 KiB
#   3  idle memory: 10,000 idle connections (server RSS per connection)
#   4  connection storm: 10,000 clients at once (--ramp 0), then all drop
#   5  slow consumers: 10 % of 1,000 subscribers stop reading (50 msg/s of
#      16 KiB, so that the server's queue limit is reached within the run),
#      plus 5r: the same load with nobody slow, as the control
# Output: bench/results/<date>-<short git rev>.md (hardware, OS, toolchain,
# the exact commands, one table per scenario: ours, baseline, ratio), and
# next to it a directory of the same name with every run's JSON and, for the
# first run of each scenario and server, the HTML report with plots.
set -euo pipefail

RUNS=${BENCH_RUNS:-3}
DURATION=${BENCH_DURATION:-10s}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT_ROOT=${BENCH_OUT:-$ROOT/bench/results}
cd "$ROOT"

command -v jq >/dev/null || { echo "bench/run.sh: needs jq (apt-get install -y jq)" >&2; exit 2; }

echo "== building (release)" >&2
cargo build --release -p server -p load-test >&2

REL=$ROOT/target/release
LOADTEST=$REL/load-test
REV=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain -- server protocol load-test 2>/dev/null)" ]; then
  REV="$REV-dirty"
fi
STAMP=$(date -u +%Y-%m-%d)
NAME="$STAMP-$REV"
OUT="$OUT_ROOT/$NAME"
MD="$OUT_ROOT/$NAME.md"
mkdir -p "$OUT"
# Both servers and the generator may use every file descriptor the hard limit allows.
ulimit -n "$(ulimit -Hn)"
FD_LIMIT=$(ulimit -n)

# Ours runs with its abuse limits off: the benchmarks measure raw capacity
# (thousands of messages per second per publisher, 10,000 connections from
# 8 loopback addresses opened as fast as possible).
OURS_LIMITS_OFF="--max-message-rate 0 --max-connections-per-ip 0 --max-new-connections-per-sec 0"
declare -A SERVER_CMD=(
  [ours]="$REL/broadcast-server start --host 127.0.0.1 --port 0 $OURS_LIMITS_OFF"
  [baseline]="$REL/baseline-server --host 127.0.0.1 --port 0"
)
SERVER_PID=""
SERVER_URL=""

start_server() { # kind logfile
  local kind=$1 log=$2
  : >"$log.out"
  # shellcheck disable=SC2086
  RUST_LOG=warn ${SERVER_CMD[$kind]} >"$log.out" 2>"$log.err" &
  SERVER_PID=$!
  SERVER_URL=""
  for _ in $(seq 200); do
    SERVER_URL=$(grep -o 'ws://[^ ]*' "$log.out" | head -1 || true)
    [ -n "$SERVER_URL" ] && return 0
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.05
  done
  echo "bench/run.sh: $kind server did not start; see $log.err" >&2
  exit 1
}

stop_server() {
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  for _ in $(seq 100); do
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
}

# Scenario definitions: id, title, load-test arguments.
SCENARIOS=(s1 s2a s2b s3 s4 s5 s5r)
declare -A TITLE=(
  [s1]="1. Fan-out at fixed load: 1,000 subscribers, 1 publisher, 50 msg/s, 64 B, $DURATION"
  [s2a]="2a. Saturation: 100 subscribers, 4 publishers, --max-rate (window 64 each), 64 B, $DURATION"
  [s2b]="2b. Saturation: 100 subscribers, 4 publishers, --max-rate (window 64 each), 4 KiB, $DURATION"
  [s3]="3. Idle memory: 10,000 idle connections (ramp 2,000/s), held 5 s"
  [s4]="4. Connection storm: 10,000 clients at once (at most 1,000 handshakes in flight), held 2 s, then all drop (TCP close, no close handshake)"
  [s5]="5. Slow consumers: 1,000 subscribers of which 10 % never read, 1 publisher, 50 msg/s, 16 KiB, $DURATION"
  [s5r]="5r. Control for 5: the same load with no slow subscriber"
)
COMMON="--source-addrs 8 --no-progress"
declare -A ARGS=(
  [s1]="--clients 1000 --publishers 1 --rate 50 --size 64 --duration $DURATION --drain 5s"
  [s2a]="--clients 100 --publishers 4 --max-rate --window 64 --size 64 --duration $DURATION --drain 5s"
  [s2b]="--clients 100 --publishers 4 --max-rate --window 64 --size 4096 --duration $DURATION --drain 5s"
  [s3]="--clients 10000 --idle --ramp 2000 --settle 1s --duration 5s --after-close 2s"
  [s4]="--clients 10000 --idle --ramp 0 --storm-concurrency 1000 --settle 1s --duration 2s --abrupt-close --after-close 2s"
  [s5]="--clients 1000 --slow-fraction 0.1 --publishers 1 --rate 50 --size 16384 --duration $DURATION --drain 5s"
  [s5r]="--clients 1000 --publishers 1 --rate 50 --size 16384 --duration $DURATION --drain 5s"
)

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
T_START=$(date +%s)
for sc in "${SCENARIOS[@]}"; do
  for i in $(seq "$RUNS"); do
    for kind in ours baseline; do
      base="$OUT/$sc-$kind-$i"
      start_server "$kind" "$base.server"
      report=()
      [ "$i" = 1 ] && report=(--report "$base.html")
      echo "== $sc $kind run $i/$RUNS ($SERVER_URL, pid $SERVER_PID)" >&2
      rc=0
      # shellcheck disable=SC2086
      "$LOADTEST" --url "$SERVER_URL" --server-pid "$SERVER_PID" ${ARGS[$sc]} $COMMON \
        --json "$base.json" "${report[@]}" >"$base.txt" 2>&1 || rc=$?
      echo "$rc" >"$base.rc"
      stop_server
      rm -f "$base.server.out"
      [ -s "$base.server.err" ] || rm -f "$base.server.err"
      grep -E "deliveries/s|latency ms|slow sub|server RSS/|clients connected" "$base.txt" | sed 's/^/    /' >&2 || true
    done
  done
done
T_END=$(date +%s)
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# ---- results file ----------------------------------------------------------

# median SCENARIO KIND JQ-EXPR: median over the runs (null values skipped).
median() {
  local files=()
  for i in $(seq "$RUNS"); do
    [ -s "$OUT/$1-$2-$i.json" ] && files+=("$OUT/$1-$2-$i.json")
  done
  [ ${#files[@]} -eq 0 ] && { echo null; return; }
  jq -s "map($3) | map(select(. != null)) | sort |
    if length == 0 then null
    elif length % 2 == 1 then .[length/2|floor]
    else (.[length/2 - 1] + .[length/2]) / 2 end" "${files[@]}"
}
# worst SCENARIO KIND JQ-EXPR: the maximum over the runs.
worst() {
  local files=()
  for i in $(seq "$RUNS"); do
    [ -s "$OUT/$1-$2-$i.json" ] && files+=("$OUT/$1-$2-$i.json")
  done
  [ ${#files[@]} -eq 0 ] && { echo null; return; }
  jq -s "map($3) | max" "${files[@]}"
}
fmt() { # value decimals
  if [ "$1" = null ]; then echo "–"; else printf "%.${2}f" "$1"; fi
}
ratio() { # ours baseline
  if [ "$1" = null ] || [ "$2" = null ] || [ "$(jq -n "$2 == 0")" = true ]; then
    echo "–"
  else
    printf "%.2f" "$(jq -n "$1 / $2")"
  fi
}
# row LABEL SCENARIO JQ-EXPR DECIMALS [worst]
row() {
  local agg=median
  [ "${5:-}" = worst ] && agg=worst
  local o b
  o=$($agg "$2" ours "$3")
  b=$($agg "$2" baseline "$3")
  echo "| $1 | $(fmt "$o" "$4") | $(fmt "$b" "$4") | $(ratio "$o" "$b") |"
}
val() { median "$1" "$2" "$3"; }
yesno() { if [ "$1" = true ]; then echo "**met**"; else echo "**not met**"; fi; }

CPU_MODEL=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
MEM=$(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)
OS=$(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME" || uname -s)

{
  echo "# Benchmark results $NAME"
  echo
  echo "Produced by \`bash bench/run.sh\` (BENCH_RUNS=$RUNS, BENCH_DURATION=$DURATION) on $(date -u '+%Y-%m-%d %H:%M UTC'), $(( (T_END - T_START) / 60 )) min $(( (T_END - T_START) % 60 )) s."
  echo "Each figure is the **median of $RUNS runs** (loss and errors: the worst run). Ratio = ours ÷ baseline:"
  echo "for latency and memory lower is better, for throughput and connect rate higher is better."
  echo
  echo "## Machine"
  echo
  echo "| | |"
  echo "| --- | --- |"
  echo "| cores (\`nproc\`) | $(nproc) |"
  echo "| CPU | $CPU_MODEL |"
  echo "| memory | $MEM |"
  echo "| OS / kernel | $OS / $(uname -r) |"
  echo "| rustc | $(rustc --version) |"
  echo "| git revision | $REV |"
  echo "| open files per process | $FD_LIMIT (hard limit; scenarios are sized under it: at most 10,000 connections per process) |"
  echo "| load average (1/5/15 min) | start $LOAD_START, end $LOAD_END |"
  echo
  echo "Servers and load generator share the machine (loopback). The load generator is"
  echo "one process: subscribers on a multi-thread tokio runtime (one worker per core),"
  echo "publishers on a runtime of their own. Figures are noisy when the machine is shared."
  echo
  echo "## Commands"
  echo
  echo '```sh'
  echo "cargo build --release -p server -p load-test"
  echo "ulimit -n $FD_LIMIT"
  echo "# ours:     ${SERVER_CMD[ours]#"$ROOT/"}"
  echo "# baseline: ${SERVER_CMD[baseline]#"$ROOT/"}"
  echo "# each run: a fresh server; URL and PID from its start; then"
  for sc in "${SCENARIOS[@]}"; do
    echo "target/release/load-test --url \$URL --server-pid \$PID ${ARGS[$sc]} $COMMON --json $sc-\$SERVER-\$RUN.json  # $sc"
  done
  echo '```'
  echo
  echo "## Results"
  echo

  echo "### ${TITLE[s1]}"
  echo
  echo "| metric | ours | baseline | ratio |"
  echo "| --- | ---: | ---: | ---: |"
  row "latency p50 (ms)" s1 .latency.p50_ms 3
  row "latency p90 (ms)" s1 .latency.p90_ms 3
  row "latency p99 (ms)" s1 .latency.p99_ms 3
  row "latency p99.9 (ms)" s1 .latency.p999_ms 3
  row "latency max (ms)" s1 .latency.max_ms 3
  row "loss ratio (worst run)" s1 .loss_ratio 6 worst
  row "errors (worst run)" s1 .errors 0 worst
  row "deliveries/s" s1 .deliveries_per_s 0
  row "server CPU (% of one core)" s1 .server.cpu_run_pct 0
  row "share of server CPU in the kernel (%)" s1 .server.cpu_run_kernel_pct 0
  row "load-test CPU (% of one core)" s1 .tool_cpu_run_pct 0
  echo

  for sc in s2a s2b; do
    echo "### ${TITLE[$sc]}"
    echo
    echo "| metric | ours | baseline | ratio |"
    echo "| --- | ---: | ---: | ---: |"
    row "**deliveries/s**" $sc .deliveries_per_s 0
    row "messages published/s" $sc .published_per_s 0
    row "latency p50 (ms)" $sc .latency.p50_ms 3
    row "latency p99 (ms)" $sc .latency.p99_ms 3
    row "loss ratio (worst run)" $sc .loss_ratio 6 worst
    row "errors (worst run)" $sc .errors 0 worst
    row "server CPU (% of one core)" $sc .server.cpu_run_pct 0
    row "load-test CPU (% of one core)" $sc .tool_cpu_run_pct 0
    row "server RSS peak (MiB)" $sc ".server.rss_peak_kib / 1024" 1
    echo
  done

  echo "### ${TITLE[s3]}"
  echo
  echo "| metric | ours | baseline | ratio |"
  echo "| --- | ---: | ---: | ---: |"
  row "**server RSS per connection (bytes)**" s3 .server.rss_per_connection_b 0
  row "server RSS before (MiB)" s3 ".server.rss_before_kib / 1024" 1
  row "server RSS with 10,000 idle (MiB)" s3 ".server.rss_idle_kib / 1024" 1
  row "server RSS after all closed (MiB)" s3 ".server.rss_after_close_kib / 1024" 1
  row "server CPU while idle (% of one core)" s3 .server.cpu_run_pct 1
  row "connections failed (worst run)" s3 .clients_failed 0 worst
  row "errors (worst run)" s3 .errors 0 worst
  echo

  echo "### ${TITLE[s4]}"
  echo
  echo "| metric | ours | baseline | ratio |"
  echo "| --- | ---: | ---: | ---: |"
  row "**connect rate (connections/s)**" s4 .connect_rate_per_s 0
  row "time to connect all (s)" s4 .connect_s 2
  row "connections failed (worst run)" s4 .clients_failed 0 worst
  row "server CPU while connecting (s)" s4 .server.cpu_connect_s 2
  row "server RSS per connection (bytes)" s4 .server.rss_per_connection_b 0
  row "server RSS peak (MiB)" s4 ".server.rss_peak_kib / 1024" 1
  row "server RSS after all dropped (MiB)" s4 ".server.rss_after_close_kib / 1024" 1
  row "kept after all dropped (MiB above before)" s4 "(.server.rss_after_close_kib - .server.rss_before_kib) / 1024" 1
  echo

  echo "### ${TITLE[s5]}"
  echo
  echo "Slow subscribers connect with a 16 KiB receive buffer and read nothing; when the run"
  echo "ends they read what is left to see how the server ended them: close 1013 (read"
  echo "at the end), 1006 (the server had already dropped the connection), or still open."
  echo "Latency and loss are over the 900 reading subscribers only."
  echo
  echo "| metric | ours | baseline | ratio |"
  echo "| --- | ---: | ---: | ---: |"
  row "fast: latency p50 (ms)" s5 .latency.p50_ms 3
  row "fast: latency p99 (ms)" s5 .latency.p99_ms 3
  row "fast: latency p99.9 (ms)" s5 .latency.p999_ms 3
  row "fast: loss ratio (worst run)" s5 .loss_ratio 6 worst
  row "fast: errors (worst run)" s5 .errors 0 worst
  row "slow: closed by the server (of 100)" s5 ".slow | (.closes | add // 0)" 0
  row "slow: of which close 1013" s5 '.slow.closes["1013"] // 0' 0
  row "slow: still open at the end" s5 .slow.still_open 0
  row "server CPU (% of one core)" s5 .server.cpu_run_pct 0
  row "server RSS peak (MiB)" s5 ".server.rss_peak_kib / 1024" 1
  row "control 5r: latency p99 (ms)" s5r .latency.p99_ms 3
  row "control 5r: loss ratio (worst run)" s5r .loss_ratio 6 worst
  echo

  # Targets (ours only, as the issue states them).
  d_o=$(val s2a ours .deliveries_per_s); d_b=$(val s2a baseline .deliveries_per_s)
  m_o=$(val s3 ours .server.rss_per_connection_b)
  p_o=$(val s1 ours .latency.p99_ms); p_b=$(val s1 baseline .latency.p99_ms)
  l1=$(worst s1 ours .lost)
  p5=$(val s5 ours .latency.p99_ms); l5=$(worst s5 ours .lost)
  echo "## Targets"
  echo
  echo "| target | figure | verdict |"
  echo "| --- | --- | --- |"
  echo "| 2 (64 B): deliveries/s ≥ 2 × baseline | $(fmt "$d_o" 0) vs 2 × $(fmt "$d_b" 0) | $(yesno "$(jq -n "$d_o != null and $d_b != null and $d_o >= 2 * $d_b")") |"
  echo "| 3: RSS per idle connection ≤ 4 KiB (aim 1.5 KiB) | $(fmt "$m_o" 0) B | $(yesno "$(jq -n "$m_o != null and $m_o <= 4096")")$( [ "$(jq -n "$m_o != null and $m_o <= 1536")" = true ] && echo ", aim met" ) |"
  echo "| 1: p99 ≤ ½ baseline's, zero loss | $(fmt "$p_o" 3) ms vs ½ × $(fmt "$p_b" 3) ms; lost $l1 | $(yesno "$(jq -n "$p_o != null and $p_b != null and $p_o <= $p_b / 2 and $l1 == 0")") |"
  echo "| 5: fast p99 ≤ 2 × scenario 1's p99, zero loss | $(fmt "$p5" 3) ms vs 2 × $(fmt "$p_o" 3) ms; lost $l5 | $(yesno "$(jq -n "$p5 != null and $p_o != null and $p5 <= 2 * $p_o and $l5 == 0")") |"
  echo
  echo "## Files"
  echo
  echo "\`$NAME/\`: per run \`<scenario>-<server>-<run>.json\` (load-test --json), \`.txt\` (its summary),"
  echo "\`.rc\` (its exit code: 1 when it saw loss or errors), and for run 1 \`.html\` (plots)."
} >"$MD"

echo "== wrote $MD" >&2
cat "$MD"
