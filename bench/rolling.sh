#!/usr/bin/env bash
# bench/rolling.sh — a rolling restart under load: two nodes joined through one
# redis-server, load-test subscribed and publishing through both, then node A
# restarted (SIGTERM, wait for its exit, start it again on the same port), then
# node B. Clients the drain closes (1012; 1001 with --drain-period 0) move to
# the other node and resume with ?since= (load-test does that with several --url).
#
# Usage:   bash bench/rolling.sh
# Env:     BENCH_CLIENTS=2000     v1 subscribers (half on each node)
#          BENCH_PUBLISHERS=4     publishers (half on each node), one channel
#          BENCH_RATE=40          messages/s over all publishers
#          BENCH_DRAIN=10         --drain-period of the "paced" mode, seconds
#          BENCH_JITTER=100ms     load-test --move-jitter
#          BENCH_LEAD=8           seconds from load-test's start to node A's SIGTERM
#          BENCH_NODE_ARGS=""     more flags for both nodes (e.g. "--history-size 1000")
#          BENCH_MODES="paced at-once"   paced: --drain-period BENCH_DRAIN;
#                                 at-once: --drain-period 0 (everyone at once)
#          BENCH_OUT=DIR          results directory (default bench/results)
# Needs:   cargo, jq, curl, redis-server. About 2 minutes with the defaults.
#
# Reported per mode: loss, duplicates and resumes not covered (0 expected), the
# worst delivery gap of a subscriber around its move, how long each drain took
# (SIGTERM to exit), and the connection rate the nodes absorbed: peak accepted
# connections per second (broadcast_connections_total from /metrics, sampled
# every 0.5 s) and peak moves per second as load-test counted them.
set -euo pipefail

CLIENTS=${BENCH_CLIENTS:-2000}
PUBLISHERS=${BENCH_PUBLISHERS:-4}
RATE=${BENCH_RATE:-40}
DRAIN=${BENCH_DRAIN:-10}
JITTER=${BENCH_JITTER:-100ms}
read -r -a MODES <<<"${BENCH_MODES:-paced at-once}"
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT_ROOT=${BENCH_OUT:-$ROOT/bench/results}
cd "$ROOT"
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

for tool in jq curl redis-server redis-cli; do
  command -v "$tool" >/dev/null || { echo "bench/rolling.sh: needs $tool" >&2; exit 2; }
done

build_release
NAME="$(date -u +%Y-%m-%d)-$REV-rolling"
OUT="$OUT_ROOT/$NAME"
MD="$OUT_ROOT/$NAME.md"
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)"
trap kill_all EXIT

# The timeline, from load-test's start: subscribers connect (about 1 s at
# --ramp 2000), LEAD s later node A restarts, GAP s after it is back node B
# does, and load-test publishes until TAIL s after that.
LEAD=${BENCH_LEAD:-8}
GAP=5
TAIL=6
DURATION=$((LEAD + 2 * (DRAIN + 3) + GAP + TAIL))
LOAD="--v1 --clients $CLIENTS --publishers $PUBLISHERS --rate $RATE --duration ${DURATION}s --move-jitter $JITTER --drain 10s --no-progress"

# restart NODE(A|B): SIGTERM, wait for the exit (its time in $OUT/$mode.NODE.drain_s), start again.
restart() {
  local node=$1 pid port mport
  if [ "$node" = A ]; then pid=$A_PID port=$A_PORT mport=$A_MPORT; else pid=$B_PID port=$B_PORT mport=$B_MPORT; fi
  local t0 t1
  t0=$(date +%s.%N)
  echo "   $(date -u +%T) SIGTERM node $node" >&2
  stop_pid "$pid"
  t1=$(date +%s.%N)
  jq -n "$t1 - $t0" >"$OUT/$mode.$node.drain_s"
  echo "   $(date -u +%T) node $node exited after $(printf %.2f "$(cat "$OUT/$mode.$node.drain_s")") s; starting it again" >&2
  start_node_at "$port" "$mport" "$OUT/$mode.node$node.log" "${NODE_ARGS[@]}"
  if [ "$node" = A ]; then A_PID=$NODE_PID; else B_PID=$NODE_PID; fi
}

# sample FILE: every 0.5 s, "time accepted_A accepted_B open_A open_B" until killed.
sample() {
  while :; do
    echo "$(date +%s.%N) $(metric "$A_MPORT" broadcast_connections_total) $(metric "$B_MPORT" broadcast_connections_total) $(metric "$A_MPORT" broadcast_connections_open) $(metric "$B_MPORT" broadcast_connections_open)" >>"$1"
    sleep 0.5
  done
}

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
T_START=$(date +%s)
for mode in "${MODES[@]}"; do
  case $mode in
    paced) period=$DRAIN ;;
    at-once) period=0 ;;
    *) echo "bench/rolling.sh: unknown mode $mode" >&2; exit 2 ;;
  esac
  echo "== $mode (--drain-period $period)" >&2
  start_redis "$OUT/$mode.redis.log"
  # shellcheck disable=SC2206
  NODE_ARGS=(--redis "redis://127.0.0.1:$REDIS_PORT" --drain-period "$period" ${BENCH_NODE_ARGS:-})
  A_PORT=$(free_port) A_MPORT=$(free_port) B_PORT=$(free_port) B_MPORT=$(free_port)
  start_node_at "$A_PORT" "$A_MPORT" "$OUT/$mode.nodeA.log" "${NODE_ARGS[@]}"
  A_PID=$NODE_PID
  start_node_at "$B_PORT" "$B_MPORT" "$OUT/$mode.nodeB.log" "${NODE_ARGS[@]}"
  B_PID=$NODE_PID
  : >"$OUT/$mode.samples"
  sample "$OUT/$mode.samples" &
  SAMPLER=$!
  PIDS+=("$SAMPLER")
  # shellcheck disable=SC2086
  "$LOADTEST" --url "ws://127.0.0.1:$A_PORT/ws" --url "ws://127.0.0.1:$B_PORT/ws" $LOAD \
    --json "$OUT/$mode.json" >"$OUT/$mode.txt" 2>&1 &
  LT=$!
  PIDS+=("$LT")
  sleep "$LEAD"
  date +%s.%N >"$OUT/$mode.restarts_from"
  restart A
  sleep "$GAP"
  restart B
  rc=0
  wait "$LT" || rc=$?
  kill "$SAMPLER" 2>/dev/null || true
  wait "$SAMPLER" 2>/dev/null || true
  stop_pid "$A_PID"
  stop_pid "$B_PID"
  stop_pid "$REDIS_PID"
  PIDS=()
  # Peak accepted connections per second on either node once the restarts
  # began (not the initial ramp): deltas between samples about 1 s apart (a
  # restarted node's counter starts again at 0).
  peak=$(awk -v from="$(cat "$OUT/$mode.restarts_from")" '
    $1 >= from { n++; t[n] = $1; a[n] = $2; b[n] = $3 }
    END {
      best = 0
      for (i = 1; i <= n; i++) {
        for (j = i + 1; j <= n && t[j] - t[i] < 0.99; j++) {}
        if (j > n) break
        dt = t[j] - t[i]
        if (a[i] != "" && a[j] != "" && a[j] >= a[i] && (a[j] - a[i]) / dt > best) best = (a[j] - a[i]) / dt
        if (b[i] != "" && b[j] != "" && b[j] >= b[i] && (b[j] - b[i]) / dt > best) best = (b[j] - b[i]) / dt
      }
      printf "%.0f", best
    }' "$OUT/$mode.samples")
  jq -n --arg mode "$mode" --argjson period "$period" --argjson rc "$rc" \
    --argjson drain_a "$(cat "$OUT/$mode.A.drain_s")" --argjson drain_b "$(cat "$OUT/$mode.B.drain_s")" \
    --argjson peak "$peak" --slurpfile lt "$OUT/$mode.json" \
    '{mode: $mode, drain_period_s: $period, load_test_rc: $rc, drain_a_s: $drain_a, drain_b_s: $drain_b,
      peak_accepted_per_s: $peak, published: $lt[0].published, lost: $lt[0].lost,
      duplicates: $lt[0].duplicates, errors: $lt[0].errors, latency: $lt[0].latency,
      moves: $lt[0].moves}' >"$OUT/$mode.summary.json"
  jq -c '{mode, drain_a_s, drain_b_s, peak_accepted_per_s, lost, duplicates, errors,
          sub_moves: .moves.subscriber_moves, pub_moves: .moves.publisher_moves,
          unrecovered: .moves.unrecovered, worst_gap_ms: .moves.worst_gap_ms,
          peak_moves_per_s: .moves.peak_per_s}' "$OUT/$mode.summary.json" | sed 's/^/   /' >&2
done
T_END=$(date +%s)
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

{
  echo "# Rolling restart $NAME"
  echo
  echo "Produced by \`bash bench/rolling.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC'), $(( (T_END - T_START) / 60 )) min $(( (T_END - T_START) % 60 )) s;"
  echo "one run per mode, on $(nproc) cores shared by redis-server, both nodes and load-test"
  echo "(git $REV; load average start $LOAD_START, end $LOAD_END)."
  echo
  echo '```sh'
  echo "redis-server --port \$REDIS_PORT --bind 127.0.0.1 --save '' --appendonly no"
  echo "target/release/broadcast-server start --host 127.0.0.1 --port \$PORT --metrics-addr 127.0.0.1:\$MPORT --redis redis://127.0.0.1:\$REDIS_PORT --drain-period \$P ${BENCH_NODE_ARGS:-}  # nodes A and B"
  echo "target/release/load-test --url ws://127.0.0.1:\$A/ws --url ws://127.0.0.1:\$B/ws $LOAD --json \$MODE.json"
  echo "# ${LEAD} s after load-test starts: SIGTERM A, wait for its exit, start it again; ${GAP} s later the same for B"
  echo '```'
  echo
  echo "| mode | drain A / B (s) | subscriber / publisher moves | recovered msgs | not covered | lost | duplicates | worst gap (ms) | gap p50 / p99 (ms) | peak accepted/s (/metrics) | peak moves/s (load-test) | delivery latency p50 / p99 (ms) |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
  for mode in "${MODES[@]}"; do
    jq -r '"| \(.mode) (--drain-period \(.drain_period_s)) | \(.drain_a_s * 100 | round / 100) / \(.drain_b_s * 100 | round / 100) | \(.moves.subscriber_moves) / \(.moves.publisher_moves) | \(.moves.recovered) | \(.moves.unrecovered) | \(.lost) | \(.duplicates) | \(.moves.worst_gap_ms | round) | \(.moves.gap.p50_ms | round) / \(.moves.gap.p99_ms | round) | \(.peak_accepted_per_s) | \(.moves.peak_per_s) | \(.latency.p50_ms | round) / \(.latency.p99_ms | round) |"' \
      "$OUT/$mode.summary.json"
  done
  echo
  echo "Each mode's load-test summary (\`.txt\`), JSON, node logs and /metrics samples are in \`$(basename "$OUT")/\`."
} >"$MD"
echo "== wrote ${MD#"$ROOT/"}" >&2
cat "$MD"
