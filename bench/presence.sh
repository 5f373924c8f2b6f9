#!/usr/bin/env bash
# bench/presence.sh — what cluster presence costs under churn: two nodes joined
# through one redis-server, BENCH_CLIENTS v1 clients on node A of which about
# BENCH_CLIENTS / BENCH_EVERY leave and join again every second (load-test
# --reconnect-every: each drops its connection once every BENCH_EVERY and
# resumes at once), and one v1 client on node B watching presence.
#
# Usage:   bash bench/presence.sh
# Env:     BENCH_CLIENTS=10000   clients on node A (one channel)
#          BENCH_EVERY=100       seconds between two reconnects of one client
#                                (churn: CLIENTS / EVERY joins and as many leaves per second)
#          BENCH_WINDOW=60       seconds measured, once all clients are connected
#          BENCH_OUT=DIR         results directory (default bench/results)
# Needs:   cargo, jq, curl, redis-server, redis-cli, Linux /proc. About 2 minutes.
#
# Reported over the window: joins per second on A (broadcast_connections_total),
# Redis commands per second by command (INFO commandstats, difference of the
# calls), the CPU of node A, node B and redis-server (/proc/PID/stat), and the
# presence messages node B received from the cluster per second
# (broadcast_cluster_presence_in_total) next to the presence events its client got.
set -euo pipefail

CLIENTS=${BENCH_CLIENTS:-10000}
EVERY=${BENCH_EVERY:-100}
WINDOW=${BENCH_WINDOW:-60}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT_ROOT=${BENCH_OUT:-$ROOT/bench/results}
cd "$ROOT"
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

for tool in jq curl redis-server redis-cli; do
  command -v "$tool" >/dev/null || { echo "bench/presence.sh: needs $tool" >&2; exit 2; }
done

build_release
NAME="$(date -u +%Y-%m-%d)-$REV-presence"
OUT="$OUT_ROOT/$NAME"
MD="$OUT_ROOT/$NAME.md"
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)"
trap kill_all EXIT
TCK=$(getconf CLK_TCK)

# Long enough to connect everyone (--ramp 2000/s), then the window, then a margin.
DURATION=$((CLIENTS / 2000 + WINDOW + 20))
LOAD_A="--v1 --clients $CLIENTS --idle --duration ${DURATION}s --reconnect-every ${EVERY}s --connect-timeout 30s --no-progress"
LOAD_B="--v1 --clients 1 --idle --duration ${DURATION}s --no-progress"

start_redis "$OUT/redis.log"
A_PORT=$(free_port) A_MPORT=$(free_port) B_PORT=$(free_port) B_MPORT=$(free_port)
start_node_at "$A_PORT" "$A_MPORT" "$OUT/nodeA.log" --redis "redis://127.0.0.1:$REDIS_PORT"
A_PID=$NODE_PID
start_node_at "$B_PORT" "$B_MPORT" "$OUT/nodeB.log" --redis "redis://127.0.0.1:$REDIS_PORT"
B_PID=$NODE_PID

# shellcheck disable=SC2086
"$LOADTEST" --url "ws://127.0.0.1:$B_PORT/ws" $LOAD_B --json "$OUT/watcher.json" >"$OUT/watcher.txt" 2>&1 &
WATCHER=$!
PIDS+=("$WATCHER")
# shellcheck disable=SC2086
"$LOADTEST" --url "ws://127.0.0.1:$A_PORT/ws" $LOAD_A --json "$OUT/churn.json" >"$OUT/churn.txt" 2>&1 &
CHURN=$!
PIDS+=("$CHURN")

echo "== connecting $CLIENTS clients to node A" >&2
for _ in $(seq 1200); do
  open=$(metric "$A_MPORT" broadcast_connections_open)
  [ "${open:-0}" -ge "$CLIENTS" ] && break
  sleep 0.1
done
# Let the first reconnects start (they are spread from the start of the run).
sleep 2

snapshot() { # PREFIX: counters and CPU ticks into PREFIX.*
  redis-cli -p "$REDIS_PORT" info commandstats >"$1.commandstats"
  {
    echo "{\"t\": $(date +%s.%N),"
    echo " \"accepted_a\": $(metric "$A_MPORT" broadcast_connections_total),"
    echo " \"presence_in_b\": $(metric "$B_MPORT" broadcast_cluster_presence_in_total),"
    echo " \"presence_in_a\": $(metric "$A_MPORT" broadcast_cluster_presence_in_total),"
    echo " \"cpu_a\": $(cpu_ticks "$A_PID"), \"cpu_b\": $(cpu_ticks "$B_PID"), \"cpu_redis\": $(cpu_ticks "$REDIS_PID")}"
  } >"$1.json"
}

echo "== measuring for $WINDOW s" >&2
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
snapshot "$OUT/before"
sleep "$WINDOW"
snapshot "$OUT/after"
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

rc=0
wait "$CHURN" || rc=$?
wait "$WATCHER" || true
stop_pid "$A_PID"
stop_pid "$B_PID"
stop_pid "$REDIS_PID"
PIDS=()

# Calls per command: "cmdstat_publish:calls=12,usec=..." -> {"publish": 12}
calls() {
  grep '^cmdstat_' "$1" | sed -E 's/^cmdstat_([^:]+):calls=([0-9]+).*/\1 \2/' |
    jq -R -s 'split("\n") | map(select(length > 0) | split(" ")) | map({(.[0]): (.[1] | tonumber)}) | add // {}'
}
calls "$OUT/before.commandstats" >"$OUT/before.calls.json"
calls "$OUT/after.commandstats" >"$OUT/after.calls.json"
jq -n --slurpfile b "$OUT/before.json" --slurpfile a "$OUT/after.json" \
  --slurpfile cb "$OUT/before.calls.json" --slurpfile ca "$OUT/after.calls.json" \
  --slurpfile w "$OUT/watcher.json" --argjson tck "$TCK" --argjson rc "$rc" \
  --argjson clients "$CLIENTS" --argjson every "$EVERY" '
  ($a[0].t - $b[0].t) as $dt |
  {
    clients: $clients, reconnect_every_s: $every, window_s: $dt, churn_rc: $rc,
    joins_per_s: (($a[0].accepted_a - $b[0].accepted_a) / $dt),
    presence_in_b_per_s: (($a[0].presence_in_b - $b[0].presence_in_b) / $dt),
    presence_in_a_per_s: (($a[0].presence_in_a - $b[0].presence_in_a) / $dt),
    cpu_pct: {
      node_a: (100 * ($a[0].cpu_a - $b[0].cpu_a) / $tck / $dt),
      node_b: (100 * ($a[0].cpu_b - $b[0].cpu_b) / $tck / $dt),
      redis: (100 * ($a[0].cpu_redis - $b[0].cpu_redis) / $tck / $dt)
    },
    redis_commands_per_s: ($ca[0] | to_entries | map({key, value: ((.value - ($cb[0][.key] // 0)) / $dt)})
      | map(select(.value > 0)) | from_entries),
    watcher_presence_events: $w[0].presence_events,
    watcher_presence_events_per_s: ($w[0].presence_events / $w[0].duration_s)
  }' >"$OUT/summary.json" 2>/dev/null || jq -n --slurpfile b "$OUT/before.json" --slurpfile a "$OUT/after.json" \
  '{before: $b[0], after: $a[0]}' >"$OUT/summary.json"
jq . "$OUT/summary.json" >&2

{
  echo "# Presence cost under churn $NAME"
  echo
  echo "Produced by \`bash bench/presence.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC') (git $REV), on $(nproc) cores shared by"
  echo "redis-server, both nodes and load-test; load average start $LOAD_START, end $LOAD_END."
  echo
  echo '```sh'
  echo "redis-server --port \$REDIS_PORT --bind 127.0.0.1 --save '' --appendonly no"
  echo "target/release/broadcast-server start --host 127.0.0.1 --port \$PORT --metrics-addr 127.0.0.1:\$MPORT --redis redis://127.0.0.1:\$REDIS_PORT   # nodes A and B"
  echo "target/release/load-test --url ws://127.0.0.1:\$A/ws $LOAD_A"
  echo "target/release/load-test --url ws://127.0.0.1:\$B/ws $LOAD_B"
  echo "# measured over $WINDOW s once all $CLIENTS clients are on A: INFO commandstats, /metrics, /proc/PID/stat"
  echo '```'
  echo
  jq -r '"| figure | value |\n| --- | ---: |\n" +
    "| clients on A | \(.clients) |\n" +
    "| joins/s on A (and as many leaves) | \(.joins_per_s | . * 10 | round / 10) |\n" +
    "| presence messages B received /s (`broadcast_cluster_presence_in_total`) | \(.presence_in_b_per_s | . * 100 | round / 100) |\n" +
    "| presence messages A received /s (B'"'"'s deltas, none expected) | \(.presence_in_a_per_s | . * 100 | round / 100) |\n" +
    "| presence events the client on B got /s | \(.watcher_presence_events_per_s | . * 100 | round / 100) |\n" +
    "| CPU node A / node B / redis-server (% of a core) | \(.cpu_pct.node_a * 10 | round / 10) / \(.cpu_pct.node_b * 10 | round / 10) / \(.cpu_pct.redis * 10 | round / 10) |"' \
    "$OUT/summary.json"
  echo
  echo "Redis commands per second over the window (\`info\`: this script's own two snapshots):"
  echo
  echo "| command | calls/s |"
  echo "| --- | ---: |"
  jq -r '.redis_commands_per_s | to_entries | sort_by(-.value) | .[] | "| \(.key) | \(.value * 10 | round / 10) |"' "$OUT/summary.json"
  echo
  echo "Raw figures: \`$(basename "$OUT")/summary.json\`; load-test summaries \`churn.txt\` and \`watcher.txt\`."
} >"$MD"
echo "== wrote ${MD#"$ROOT/"}" >&2
cat "$MD"
