#!/usr/bin/env bash
# bench/run.sh — the benchmark suite: broadcast-server ("ours") against
# baseline-server (tokio + tokio-tungstenite + one tokio::sync::broadcast
# channel, load-test/src/bin/baseline-server.rs), same machine, same load
# generator (load-test), same invocation.
#
# Usage:   bash bench/run.sh
# Env:     BENCH_RUNS=3        runs per scenario and server (the file reports medians)
#          BENCH_DURATION=10s  publishing time of scenarios 1, 2, 5, 6 and 7
#          BENCH_SCENARIOS="s6 s7"  run only these (default: all; ids below)
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
#   6  overload: 1,000 subscribers, 30 publishers at 900 msg/s each (27,000
#      msg/s, far above what fan-out can deliver), 64 B; server on its
#      DEFAULT flags: memory bound, nobody closed, nothing lost
#   7  flood fairness: 200 subscribers, one publisher writing as fast as TCP
#      takes (--flooders 1) and one at 50 msg/s, 64 B; DEFAULT flags: the
#      50 msg/s publisher's own latency, and the server's (/metrics)
#   8  many small rooms: 10,000 subscribers in 1,000 channels of 10
#      (--channels 1000), 100 publishers (one per channel) at --max-rate,
#      64 B; ours only (the baseline has no channels): server CPU per
#      delivery against scenario 2a's (one room of 100) in the same run,
#      plus 8r: one room of 10 with 1 publisher, the control with the
#      fan-out and window of one of 8's channels and no channels at all
#   9  compression (permessage-deflate), ours only, DEFAULT flags, each run
#      with load-test --compression ("on": subscribers and the publisher
#      offer it) and without ("off": no offer): 9 saturation, 100
#      subscribers, 1 publisher, --max-rate, 4 KiB of JSON (--payload
#      json); 9s the same with 64 B messages (under --compression-min-size:
#      nothing is compressed); 9m memory, 2,000 idle subscribers (RSS per
#      connection, negotiated or not). The broadcast_deflate_* counters are
#      read from /metrics after each run (one fresh server per run).
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
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

command -v jq >/dev/null || { echo "bench/run.sh: needs jq (apt-get install -y jq)" >&2; exit 2; }

build_release
STAMP=$(date -u +%Y-%m-%d)
NAME="$STAMP-$REV"
OUT="$OUT_ROOT/$NAME"
MD="$OUT_ROOT/$NAME.md"
mkdir -p "$OUT"
# Both servers and the generator may use every file descriptor the hard limit allows.
ulimit -n "$(ulimit -Hn)"
FD_LIMIT=$(ulimit -n)

# Ours runs on its default flags in every scenario: a benchmark must never
# need to switch a default off (the abuse limits are off by default; flow
# control is always on).
OURS_DEFAULT="$REL/broadcast-server start --host 127.0.0.1 --port 0"
declare -A SERVER_CMD=(
  [ours]="$OURS_DEFAULT"
  [baseline]="$REL/baseline-server --host 127.0.0.1 --port 0"
  [on]="$OURS_DEFAULT"
  [off]="$OURS_DEFAULT"
)
server_cmd() { # kind scenario
  echo "${SERVER_CMD[$1]}"
}
SERVER_PID=""
SERVER_URL=""

start_server() { # kind scenario logfile
  # shellcheck disable=SC2046
  start_ws_server "$3" $(server_cmd "$1" "$2") && return 0
  echo "bench/run.sh: $1 server did not start; see $3.err" >&2
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
ALL_SCENARIOS=(s1 s2a s2b s3 s4 s5 s5r s6 s7 s8 s8r s9 s9s s9m)
read -r -a SCENARIOS <<<"${BENCH_SCENARIOS:-${ALL_SCENARIOS[*]}}"
for sc in "${SCENARIOS[@]}"; do
  [[ " ${ALL_SCENARIOS[*]} " == *" $sc "* ]] || { echo "bench/run.sh: unknown scenario $sc (${ALL_SCENARIOS[*]})" >&2; exit 2; }
done
ran() { [[ " ${SCENARIOS[*]} " == *" $1 "* ]]; }
declare -A TITLE=(
  [s1]="1. Fan-out at fixed load: 1,000 subscribers, 1 publisher, 50 msg/s, 64 B, $DURATION"
  [s2a]="2a. Saturation: 100 subscribers, 4 publishers, --max-rate (window 64 each), 64 B, $DURATION"
  [s2b]="2b. Saturation: 100 subscribers, 4 publishers, --max-rate (window 64 each), 4 KiB, $DURATION"
  [s3]="3. Idle memory: 10,000 idle connections (ramp 2,000/s), held 5 s"
  [s4]="4. Connection storm: 10,000 clients at once (at most 1,000 handshakes in flight), held 2 s, then all drop (TCP close, no close handshake)"
  [s5]="5. Slow consumers: 1,000 subscribers of which 10 % never read, 1 publisher, 50 msg/s, 16 KiB, $DURATION"
  [s5r]="5r. Control for 5: the same load with no slow subscriber"
  [s6]="6. Overload: 1,000 subscribers, 30 publishers at 900 msg/s each (27,000 msg/s), 64 B, $DURATION, default server flags"
  [s7]="7. Flood fairness: 200 subscribers, 1 publisher as fast as TCP allows + 1 at 50 msg/s, 64 B, $DURATION, default server flags"
  [s8]="8. Many small rooms: 10,000 subscribers in 1,000 channels of 10, 100 publishers at --max-rate (window 64 each), 64 B, $DURATION, ours only"
  [s8r]="8r. Control for 8: one room of 10 subscribers, 1 publisher at --max-rate (window 64), 64 B, $DURATION, ours only: the fan-out and window of each of 8's channels, without channels"
  [s9]="9. Compression: 100 subscribers, 1 publisher, --max-rate (window 64), 4 KiB JSON, $DURATION, default server flags, load-test --compression vs no offer"
  [s9s]="9s. Compression, small messages: the same with 64 B JSON (under --compression-min-size 256)"
  [s9m]="9m. Compression, memory: 2,000 idle subscribers (ramp 2,000/s), held 3 s, negotiated vs not"
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
  [s6]="--clients 1000 --publishers 30 --rate 27000 --size 64 --duration $DURATION --drain 120s --drain-quiet 5s --after-close 10s"
  [s7]="--clients 200 --publishers 1 --rate 50 --flooders 1 --size 64 --duration $DURATION --drain 120s --drain-quiet 5s --after-close 10s"
  [s8]="--clients 10000 --channels 1000 --publishers 100 --max-rate --window 64 --size 64 --duration $DURATION --drain 10s"
  [s8r]="--clients 10 --publishers 1 --max-rate --window 64 --size 64 --duration $DURATION --drain 5s"
  [s9]="--clients 100 --publishers 1 --max-rate --window 64 --size 4096 --payload json --duration $DURATION --drain 5s"
  [s9s]="--clients 100 --publishers 1 --max-rate --window 64 --size 64 --payload json --duration $DURATION --drain 5s"
  [s9m]="--clients 2000 --idle --ramp 2000 --settle 1s --duration 3s --after-close 1s"
)
# The two sides of each scenario: ours and the baseline, or for the
# compression scenarios ours twice, with and without the offer.
declare -A KINDS=([s9]="on off" [s9s]="on off" [s9m]="on off")
declare -A KIND_ARGS=([on]="--compression" [off]="")
kinds() { echo "${KINDS[$1]:-ours baseline}"; }
# Scenarios the baseline cannot run (it has no channels).
declare -A OURS_ONLY=([s8]=1 [s8r]=1)
# Ours serves /metrics on its main port: the server-side latency histogram
# and the flow-control counters (the baseline has none).
declare -A WITH_METRICS=([s6]=1 [s7]=1 [s9]=1 [s9s]=1)

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
T_START=$(date +%s)
for sc in "${SCENARIOS[@]}"; do
  for i in $(seq "$RUNS"); do
    for kind in $(kinds "$sc"); do
      [ "$kind" = baseline ] && [ -n "${OURS_ONLY[$sc]:-}" ] && continue
      base="$OUT/$sc-$kind-$i"
      start_server "$kind" "$sc" "$base.server"
      report=()
      [ "$i" = 1 ] && report=(--report "$base.html")
      metrics_url=${SERVER_URL/#ws:/http:}
      metrics_url="${metrics_url%/ws}/metrics"
      if [ "$kind" != baseline ] && [ -n "${WITH_METRICS[$sc]:-}" ]; then
        report+=(--metrics "$metrics_url")
      fi
      echo "== $sc $kind run $i/$RUNS ($SERVER_URL, pid $SERVER_PID)" >&2
      rc=0
      # shellcheck disable=SC2086
      "$LOADTEST" --url "$SERVER_URL" --server-pid "$SERVER_PID" ${ARGS[$sc]} ${KIND_ARGS[$kind]:-} $COMMON \
        --json "$base.json" "${report[@]}" >"$base.txt" 2>&1 || rc=$?
      echo "$rc" >"$base.rc"
      if [ -n "${KINDS[$sc]:-}" ] && [ -s "$base.json" ]; then
        # The server's permessage-deflate counters over the run (a fresh
        # server per run), as .deflate in the run's JSON.
        deflate=$(curl -fsS "$metrics_url" | awk '
          $1 == "broadcast_deflate_messages_total" { m = $2 }
          $1 == "broadcast_deflate_bytes_before_total" { b = $2 }
          $1 == "broadcast_deflate_bytes_after_total" { a = $2 }
          END { printf "{\"messages\": %d, \"bytes_before\": %d, \"bytes_after\": %d}", m, b, a }')
        jq --argjson d "$deflate" '. + {deflate: $d}' "$base.json" >"$base.json.tmp" && mv "$base.json.tmp" "$base.json"
      fi
      stop_server
      rm -f "$base.server.out"
      [ -s "$base.server.err" ] || rm -f "$base.server.err"
      grep -E "deliveries/s|latency ms|slow sub|server RSS|clients connected|server closes|lost|drain took|paused" "$base.txt" | sed 's/^/    /' >&2 || true
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
  median_json "$3" "${files[@]}"
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
ratio() { # ours baseline
  if [ "$1" = null ] || [ "$2" = null ] || [ "$(jq -n "$2 == 0")" = true ]; then
    echo "–"
  else
    printf "%.2f" "$(jq -n "$1 / $2")"
  fi
}
# row LABEL SCENARIO JQ-EXPR DECIMALS [worst]: ours, baseline, ratio (for
# the compression scenarios: on, off, on ÷ off).
row() {
  local agg=median
  [ "${5:-}" = worst ] && agg=worst
  local o b a z
  read -r a z <<<"$(kinds "$2")"
  o=$($agg "$2" "$a" "$3")
  b=$($agg "$2" "$z" "$3")
  echo "| $1 | $(fmt "$o" "$4") | $(fmt "$b" "$4") | $(ratio "$o" "$b") |"
}
val() { median "$1" "$2" "$3"; }
# codes SCENARIO KIND: the server's close codes over all runs, "1013: 5, 1008: 1" or "none".
codes() {
  local files=()
  for i in $(seq "$RUNS"); do
    [ -s "$OUT/$1-$2-$i.json" ] && files+=("$OUT/$1-$2-$i.json")
  done
  [ ${#files[@]} -eq 0 ] && { echo "–"; return; }
  jq -rs '[.[].server_closes | to_entries[]] | group_by(.key)
    | map("\(.[0].key): \(map(.value) | add)") | join(", ")
    | if . == "" then "none" else . end' "${files[@]}"
}
# quot A B: A ÷ B, null when either is null or B is 0.
quot() {
  if [ "$1" = null ] || [ "$2" = null ] || [ "$(jq -n "$2 == 0")" = true ]; then
    echo null
  else
    jq -n "$1 / $2"
  fi
}
yesno() { if [ "$1" = true ]; then echo "**met**"; else echo "**not met**"; fi; }

CPU_MODEL=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
MEM=$(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)
OS=$(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME" || uname -s)

{
  echo "# Benchmark results $NAME"
  echo
  echo "Produced by \`bash bench/run.sh\` (BENCH_RUNS=$RUNS, BENCH_DURATION=$DURATION) on $(date -u '+%Y-%m-%d %H:%M UTC'), $(( (T_END - T_START) / 60 )) min $(( (T_END - T_START) % 60 )) s."
  echo "Each figure is the **median of $RUNS runs** (loss and errors: the worst run). Ratio = ours ÷ baseline (scenario 9: on ÷ off):"
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
  echo "publishers on a runtime of their own (flooders on another). Figures are noisy when the machine is shared."
  echo
  echo "## Commands"
  echo
  echo '```sh'
  echo "cargo build --release -p server -p load-test"
  echo "ulimit -n $FD_LIMIT"
  echo "# ours:     ${SERVER_CMD[ours]#"$ROOT/"}"
  echo "# baseline: ${SERVER_CMD[baseline]#"$ROOT/"}"
  echo "# ours runs on its default flags in every scenario"
  echo "# each run: a fresh server; URL and PID from its start; then"
  for sc in "${SCENARIOS[@]}"; do
    m=""
    [ -n "${WITH_METRICS[$sc]:-}" ] && m=" [ours: --metrics http://\$HOST:\$PORT/metrics]"
    if [ -n "${KINDS[$sc]:-}" ]; then
      echo "target/release/load-test --url \$URL --server-pid \$PID ${ARGS[$sc]} [on: --compression] $COMMON --metrics http://\$HOST:\$PORT/metrics --json $sc-\$SIDE-\$RUN.json  # $sc, ours only; then curl /metrics for broadcast_deflate_*"
    else
      echo "target/release/load-test --url \$URL --server-pid \$PID ${ARGS[$sc]} $COMMON$m --json $sc-\$SERVER-\$RUN.json  # $sc"
    fi
  done
  echo '```'
  echo
  echo "## Results"
  echo

  if ran s1; then
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
  fi

  for sc in s2a s2b; do
    ran $sc || continue
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

  if ran s3; then
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
  fi

  if ran s4; then
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
  fi

  if ran s5; then
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
  fi

  if ran s6; then
  echo "### ${TITLE[s6]}"
  echo
  echo "Each publisher has its own schedule (900 msg/s); a message's latency is from the"
  echo "time it was due, so a publisher held back by the server (flow control) shows it as"
  echo "latency, and \"published\" counts only what the publishers got into their sockets."
  echo "Loss: every message published must reach all 1,000 subscribers (after a drain of up"
  echo "to 120 s, ended once nothing arrives for 5 s). RSS after: 10 s after the last client left."
  echo
  echo "| metric | ours | baseline | ratio |"
  echo "| --- | ---: | ---: | ---: |"
  row "**server RSS high-water (MiB)**" s6 ".server.rss_peak_kib / 1024" 1
  row "server RSS before, idle (MiB)" s6 ".server.rss_before_kib / 1024" 1
  row "server RSS 10 s after all left (MiB)" s6 ".server.rss_after_close_kib / 1024" 1
  row "clients closed by the server (worst run)" s6 ".server_closes | add // 0" 0 worst
  echo "| close codes (all runs) | $(codes s6 ours) | $(codes s6 baseline) | |"
  row "lost (worst run)" s6 .lost 0 worst
  row "loss ratio (worst run)" s6 .loss_ratio 6 worst
  row "messages scheduled" s6 .scheduled 0
  row "messages published" s6 .published 0
  row "slowest publisher: messages sent (each owes 900 per second)" s6 ".classes.paced.sent_min" 0
  row "fastest publisher: messages sent" s6 ".classes.paced.sent_max" 0
  row "**deliveries/s**" s6 .deliveries_per_s 0
  row "e2e latency p50 (ms)" s6 .latency.p50_ms 1
  row "e2e latency p99 (ms)" s6 .latency.p99_ms 1
  row "drain took (s)" s6 .drain_used_s 1
  row "server latency p50 (ms, /metrics bucket bound)" s6 .server_metrics.latency_p50_ms 3
  row "server latency p99 (ms, /metrics bucket bound)" s6 .server_metrics.latency_p99_ms 3
  row "publishers paused for fan-out (s, summed)" s6 '.server_metrics.publisher_paused_s.fanout' 1
  row "publishers paused by rate limit (s, summed)" s6 '.server_metrics.publisher_paused_s.rate_limit' 1
  row "connections aborted after the close timeout (/metrics)" s6 .server_metrics.aborted 0
  row "server CPU (% of one core)" s6 .server.cpu_run_pct 0
  echo
  fi

  if ran s7; then
  echo "### ${TITLE[s7]}"
  echo
  echo "The flooder writes 256-message batches back to back, so only TCP push-back slows it."
  echo "The 50 msg/s publisher's latency is from its schedule; the server's own latency is"
  echo "the p50/p99 of its \`broadcast_delivery_latency_seconds\` histogram over the run"
  echo "(bucket upper bounds; \"–\" for the baseline, which has no /metrics)."
  echo
  echo "| metric | ours | baseline | ratio |"
  echo "| --- | ---: | ---: | ---: |"
  row "**50 msg/s publisher: e2e latency p50 (ms)**" s7 .classes.paced.latency.p50_ms 1
  row "**50 msg/s publisher: e2e latency p99 (ms)**" s7 .classes.paced.latency.p99_ms 1
  row "50 msg/s publisher: lost (worst run)" s7 .classes.paced.lost 0 worst
  row "flooder: messages published" s7 .classes.flood.published 0
  row "flooder: msg/s" s7 .classes.flood.published_per_s 0
  row "flooder: e2e latency p50 (ms)" s7 .classes.flood.latency.p50_ms 1
  row "flooder: e2e latency p99 (ms)" s7 .classes.flood.latency.p99_ms 1
  row "flooder: lost (worst run)" s7 .classes.flood.lost 0 worst
  row "clients closed by the server (worst run)" s7 ".server_closes | add // 0" 0 worst
  echo "| close codes (all runs) | $(codes s7 ours) | $(codes s7 baseline) | |"
  row "**server RSS high-water (MiB)**" s7 ".server.rss_peak_kib / 1024" 1
  row "server RSS 10 s after all left (MiB)" s7 ".server.rss_after_close_kib / 1024" 1
  row "server latency p50 (ms, /metrics)" s7 .server_metrics.latency_p50_ms 3
  row "**server latency p99 (ms, /metrics)**" s7 .server_metrics.latency_p99_ms 3
  row "flooder paused for fan-out (s)" s7 '.server_metrics.publisher_paused_s.fanout' 1
  row "paused by rate limit (s)" s7 '.server_metrics.publisher_paused_s.rate_limit' 1
  row "deliveries/s" s7 .deliveries_per_s 0
  row "drain took (s)" s7 .drain_used_s 1
  row "connections aborted after the close timeout (/metrics)" s7 .server_metrics.aborted 0
  row "server CPU (% of one core)" s7 .server.cpu_run_pct 0
  echo
  fi

  if ran s8; then
  echo "### ${TITLE[s8]}"
  echo
  echo "| metric | ours |"
  echo "| --- | ---: |"
  echo "| **deliveries/s** | $(fmt "$(val s8 ours .deliveries_per_s)" 0) |"
  echo "| messages published/s | $(fmt "$(val s8 ours .published_per_s)" 0) |"
  echo "| latency p50 / p99 (ms) | $(fmt "$(val s8 ours .latency.p50_ms)" 3) / $(fmt "$(val s8 ours .latency.p99_ms)" 3) |"
  echo "| loss ratio (worst run) | $(fmt "$(worst s8 ours .loss_ratio)" 6) |"
  echo "| **server CPU per delivery (µs)** | $(fmt "$(val s8 ours '.server.cpu_run_s * 1e6 / .delivered')" 3) |"
  if ran s8r; then
    echo "| 8r, one room of 10: server CPU per delivery (µs) | $(fmt "$(val s8r ours '.server.cpu_run_s * 1e6 / .delivered')" 3) |"
    echo "| **8 ÷ 8r** (what channels cost at the same fan-out) | $(fmt "$(quot "$(val s8 ours '.server.cpu_run_s * 1e6 / .delivered')" "$(val s8r ours '.server.cpu_run_s * 1e6 / .delivered')")" 2) × |"
  fi
  if ran s2a; then
    echo "| 8 ÷ 2a (one room of 100: ten times the fan-out) | $(fmt "$(quot "$(val s8 ours '.server.cpu_run_s * 1e6 / .delivered')" "$(val s2a ours '.server.cpu_run_s * 1e6 / .delivered')")" 2) × |"
  fi
  echo "| server CPU (% of one core) | $(fmt "$(val s8 ours .server.cpu_run_pct)" 0) |"
  echo "| server RSS peak (MiB) | $(fmt "$(val s8 ours '.server.rss_peak_kib / 1024')" 1) |"
  echo
  fi

  for sc in s9 s9s; do
    ran $sc || continue
    echo "### ${TITLE[$sc]}"
    echo
    echo "Both sides run ours on its default flags (\`--compression on\`, \`--compression-min-size 256\`);"
    echo "\"on\": load-test --compression (subscribers offer permessage-deflate and inflate each message's"
    echo "24-byte header; the publisher offers it too and sends uncompressed), \"off\": no offer. Wire bytes:"
    echo "what the subscribers read from their sockets (frame headers included) per delivery."
    echo
    echo "| metric | on | off | ratio on ÷ off |"
    echo "| --- | ---: | ---: | ---: |"
    row "**wire bytes per delivery**" $sc .wire.bytes_per_delivery 1
    row "**server CPU per delivery (µs)**" $sc '.server.cpu_run_s * 1e6 / .delivered' 3
    row "**deliveries/s**" $sc .deliveries_per_s 0
    row "loss ratio (worst run)" $sc .loss_ratio 6 worst
    row "errors (worst run)" $sc .errors 0 worst
    row "subscribers that negotiated it" $sc .wire.negotiated 0
    row "messages published" $sc .published 0
    row "server: messages compressed (broadcast_deflate_messages_total)" $sc .deflate.messages 0
    row "server: compressed ÷ published" $sc 'if .published > 0 then .deflate.messages / .published else null end' 3
    row "server: deflate ratio (bytes before ÷ after)" $sc 'if .deflate.bytes_after > 0 then .deflate.bytes_before / .deflate.bytes_after else null end' 2
    row "latency p50 (ms)" $sc .latency.p50_ms 3
    row "latency p99 (ms)" $sc .latency.p99_ms 3
    row "server CPU (% of one core)" $sc .server.cpu_run_pct 0
    row "load-test CPU (% of one core)" $sc .tool_cpu_run_pct 0
    echo
  done

  if ran s9m; then
  echo "### ${TITLE[s9m]}"
  echo
  echo "Subscribers promise \`client_no_context_takeover\` and send nothing, so the server keeps no"
  echo "inflater for them; the deflater is per shard, not per connection."
  echo
  echo "| metric | on | off | ratio on ÷ off |"
  echo "| --- | ---: | ---: | ---: |"
  row "**server RSS per connection (bytes)**" s9m .server.rss_per_connection_b 0
  row "subscribers that negotiated it" s9m .wire.negotiated 0
  row "server RSS with 2,000 idle (MiB)" s9m ".server.rss_idle_kib / 1024" 1
  row "connections failed (worst run)" s9m .clients_failed 0 worst
  echo
  fi

  # Targets (ours only, as the issue states them).
  echo "## Targets"
  echo
  echo "| target | figure | verdict |"
  echo "| --- | --- | --- |"
  if ran s2a; then
    d_o=$(val s2a ours .deliveries_per_s); d_b=$(val s2a baseline .deliveries_per_s)
    echo "| 2 (64 B): deliveries/s ≥ 2 × baseline | $(fmt "$d_o" 0) vs 2 × $(fmt "$d_b" 0) | $(yesno "$(jq -n "$d_o != null and $d_b != null and $d_o >= 2 * $d_b")") |"
  fi
  if ran s3; then
    m_o=$(val s3 ours .server.rss_per_connection_b)
    echo "| 3: RSS per idle connection ≤ 4 KiB (aim 1.5 KiB) | $(fmt "$m_o" 0) B | $(yesno "$(jq -n "$m_o != null and $m_o <= 4096")")$( [ "$(jq -n "$m_o != null and $m_o <= 1536")" = true ] && echo ", aim met" ) |"
  fi
  if ran s1; then
    p_o=$(val s1 ours .latency.p99_ms); p_b=$(val s1 baseline .latency.p99_ms)
    l1=$(worst s1 ours .lost)
    echo "| 1: p99 ≤ ½ baseline's, zero loss | $(fmt "$p_o" 3) ms vs ½ × $(fmt "$p_b" 3) ms; lost $l1 | $(yesno "$(jq -n "$p_o != null and $p_b != null and $p_o <= $p_b / 2 and $l1 == 0")") |"
    if ran s5; then
      p5=$(val s5 ours .latency.p99_ms); l5=$(worst s5 ours .lost)
      echo "| 5: fast p99 ≤ 2 × scenario 1's p99, zero loss | $(fmt "$p5" 3) ms vs 2 × $(fmt "$p_o" 3) ms; lost $l5 | $(yesno "$(jq -n "$p5 != null and $p_o != null and $p5 <= 2 * $p_o and $l5 == 0")") |"
    fi
  fi
  if ran s6; then
    # Memory and closes: the worst run; the after/idle ratio: each run's own.
    h6=$(worst s6 ours ".server.rss_peak_kib / 1024")
    c6=$(worst s6 ours ".server_closes | add // 0")
    l6=$(worst s6 ours .lost)
    a6=$(worst s6 ours "if .server.rss_after_close_kib == null then null else .server.rss_after_close_kib / .server.rss_before_kib end")
    echo "| 6: RSS high-water ≤ 64 MiB (worst run) | $(fmt "$h6" 1) MiB | $(yesno "$(jq -n "$h6 != null and $h6 <= 64")") |"
    echo "| 6: no client closed (worst run) | $c6 closed | $(yesno "$(jq -n "$c6 == 0")") |"
    echo "| 6: zero loss (worst run) | lost $l6 | $(yesno "$(jq -n "$l6 == 0")") |"
    echo "| 6: RSS 10 s after ≤ 2 × idle (worst run) | $(fmt "$a6" 2) × | $(yesno "$(jq -n "$a6 != null and $a6 <= 2")") |"
  fi
  if ran s7; then
    l7=$(worst s7 ours .lost)
    c7=$(worst s7 ours ".server_closes | add // 0")
    h7=$(worst s7 ours ".server.rss_peak_kib / 1024")
    p7=$(val s7 ours .classes.paced.latency.p99_ms)
    q7=$(val s7 ours .server_metrics.latency_p99_ms)
    n7=$(val s7 ours .server_metrics.latency_observations)
    echo "| 7: zero loss, both publishers (worst run) | lost $l7 | $(yesno "$(jq -n "$l7 == 0")") |"
    echo "| 7: no client closed (worst run) | $c7 closed | $(yesno "$(jq -n "$c7 == 0")") |"
    echo "| 7: RSS high-water ≤ 64 MiB (worst run) | $(fmt "$h7" 1) MiB | $(yesno "$(jq -n "$h7 != null and $h7 <= 64")") |"
    echo "| 7: 50 msg/s publisher's e2e p99 ≤ 500 ms | $(fmt "$p7" 1) ms | $(yesno "$(jq -n "$p7 != null and $p7 <= 500")") |"
    echo "| 7: server-added p99 (/metrics) ≤ 50 ms | $(fmt "$q7" 1) ms (null: above the largest bucket; $(fmt "$n7" 0) observations) | $(yesno "$(jq -n "$q7 != null and $q7 <= 50")") |"
  fi
  if ran s8 && ran s2a; then
    c8=$(val s8 ours '.server.cpu_run_s * 1e6 / .delivered')
    c2=$(val s2a ours '.server.cpu_run_s * 1e6 / .delivered')
    l8=$(worst s8 ours .lost)
    echo "| 8: CPU per delivery ≤ 1.5 × one room's (2a), zero loss | $(fmt "$c8" 3) µs vs 1.5 × $(fmt "$c2" 3) µs; lost $l8 | $(yesno "$(jq -n "$c8 != null and $c2 != null and $c8 <= 1.5 * $c2 and $l8 == 0")") |"
  fi
  if ran s9; then
    w9=$(quot "$(val s9 on .wire.bytes_per_delivery)" "$(val s9 off .wire.bytes_per_delivery)")
    c9=$(quot "$(val s9 on '.server.cpu_run_s * 1e6 / .delivered')" "$(val s9 off '.server.cpu_run_s * 1e6 / .delivered')")
    l9=$(jq -n "[$(worst s9 on .lost), $(worst s9 off .lost)] | max")
    k9=$(val s9 on 'if .published > 0 then .deflate.messages / .published else null end')
    echo "| 9: wire bytes per delivery on ≤ 0.35 × off | $(fmt "$w9" 2) × | $(yesno "$(jq -n "$w9 != null and $w9 <= 0.35")") |"
    echo "| 9: server CPU per delivery on ≤ 1.3 × off | $(fmt "$c9" 2) × | $(yesno "$(jq -n "$c9 != null and $c9 <= 1.3")") |"
    echo "| 9: no loss, either side (worst run) | lost $l9 | $(yesno "$(jq -n "$l9 == 0")") |"
    echo "| 9: compressed once per message (compressed ÷ published ≈ 1) | $(fmt "$k9" 3) | $(yesno "$(jq -n "$k9 != null and $k9 >= 0.99 and $k9 <= 1.01")") |"
  fi
  if ran s9s; then
    k9s=$(worst s9s on .deflate.messages)
    c9s=$(quot "$(val s9s on '.server.cpu_run_s * 1e6 / .delivered')" "$(val s9s off '.server.cpu_run_s * 1e6 / .delivered')")
    echo "| 9s: 64 B: nothing compressed (worst run) | $k9s compressed | $(yesno "$(jq -n "$k9s != null and $k9s == 0")") |"
    echo "| 9s: 64 B: CPU per delivery on ≈ off (within ±20 %) | $(fmt "$c9s" 2) × | $(yesno "$(jq -n "$c9s != null and $c9s >= 0.8 and $c9s <= 1.2")") |"
  fi
  echo
  echo "## Files"
  echo
  echo "\`$NAME/\`: per run \`<scenario>-<server>-<run>.json\` (load-test --json), \`.txt\` (its summary),"
  echo "\`.rc\` (its exit code: 1 when it saw loss or errors), and for run 1 \`.html\` (plots)."
} >"$MD"

echo "== wrote $MD" >&2
cat "$MD"
