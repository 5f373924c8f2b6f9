#!/usr/bin/env bash
# bench/cluster.sh — what the Redis cluster costs: the same saturation load
# against one node holding every subscriber, and against two nodes joined
# through one redis-server that share them, in one invocation.
#
# Usage:   bash bench/cluster.sh
# Env:     BENCH_RUNS=3         runs per setup (the file reports medians)
#          BENCH_DURATION=10s   publishing time
#          BENCH_CLIENTS=200    subscribers (spread round-robin over the nodes)
#          BENCH_PUBLISHERS=4   publishers (round-robin over the nodes too)
#          BENCH_SIZE=64        payload bytes
#          BENCH_WORKERS_TWO=1  --workers of each node of the two-node setup
#                               (1: the two nodes together run as many shard
#                               threads as the single node's default on 2 cores)
#          BENCH_OUT=DIR        results directory (default bench/results)
#          BENCH_SETUPS="one one-redis two two-nohist"   which setups to run
# Needs:   cargo, jq, redis-server, Linux /proc. About 3 minutes with the defaults.
#
# Setups, each run with fresh processes on 127.0.0.1, ports chosen by the kernel:
#   one        one node, no --redis (the server as it is without a cluster)
#   one-redis  one node with --redis (what relaying every message costs a node)
#   two        two nodes, --redis on the same redis-server, subscribers and
#              publishers alternating between them (load-test --url A --url B);
#              default flags, so history is on: positions assigned in Redis by
#              the Lua script, messages kept in Redis streams
#   two-nohist the same with --history-size 0 (PUBLISH only, no positions)
# Reported: deliveries/s (all subscribers), the ratios two ÷ one (target ≥ 0.8)
# and two ÷ two-nohist (history in the cluster, target ≥ 0.6),
# and the CPU of redis-server and of each node over the load-test run, from
# /proc/PID/stat (utime + stime).
set -euo pipefail

RUNS=${BENCH_RUNS:-3}
DURATION=${BENCH_DURATION:-10s}
CLIENTS=${BENCH_CLIENTS:-200}
PUBLISHERS=${BENCH_PUBLISHERS:-4}
SIZE=${BENCH_SIZE:-64}
WORKERS_TWO=${BENCH_WORKERS_TWO:-1}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT_ROOT=${BENCH_OUT:-$ROOT/bench/results}
cd "$ROOT"
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

command -v jq >/dev/null || { echo "bench/cluster.sh: needs jq (apt-get install -y jq)" >&2; exit 2; }
command -v redis-server >/dev/null ||
  { echo "bench/cluster.sh: needs redis-server (apt-get install -y redis-server)" >&2; exit 2; }

build_release
NAME="$(date -u +%Y-%m-%d)-$REV-cluster"
OUT="$OUT_ROOT/$NAME"
MD="$OUT_ROOT/$NAME.md"
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)"
TCK=$(getconf CLK_TCK)

# Default flags (nothing switched off).
SERVER="$REL/broadcast-server start --host 127.0.0.1 --port 0"
LOAD="--clients $CLIENTS --publishers $PUBLISHERS --max-rate --window 64 --size $SIZE --duration $DURATION --drain 5s --source-addrs 8 --no-progress"

PIDS=()        # every process this script started and has not stopped yet
NODE_PIDS=()
NODE_URLS=()
REDIS_PID=""
REDIS_PORT=""

cleanup() {
  for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

start_redis() { # logfile
  REDIS_PORT=$(free_port)
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >"$1" 2>&1 &
  REDIS_PID=$!
  PIDS+=("$REDIS_PID")
  for _ in $(seq 200); do
    redis_up && return 0
    sleep 0.05
  done
  echo "bench/cluster.sh: redis-server did not start; see $1" >&2
  exit 1
}
redis_up() { (exec 3<>"/dev/tcp/127.0.0.1/$REDIS_PORT") 2>/dev/null; }

start_node() { # logfile extra-args...
  local log=$1
  shift
  : >"$log.out"
  # shellcheck disable=SC2086
  RUST_LOG=warn $SERVER "$@" >"$log.out" 2>"$log.err" &
  local pid=$!
  PIDS+=("$pid")
  local url=""
  for _ in $(seq 200); do
    url=$(grep -o 'ws://[^ ]*' "$log.out" | head -1 || true)
    [ -n "$url" ] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  [ -n "$url" ] || { echo "bench/cluster.sh: node did not start; see $log.err" >&2; exit 1; }
  NODE_PIDS+=("$pid")
  NODE_URLS+=("$url")
}

stop_all() {
  for pid in "${NODE_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${NODE_PIDS[@]}" ${REDIS_PID:+"$REDIS_PID"}; do
    for _ in $(seq 100); do
      kill -0 "$pid" 2>/dev/null || break
      [ "$pid" = "$REDIS_PID" ] && kill -TERM "$pid" 2>/dev/null
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  PIDS=()
  NODE_PIDS=()
  NODE_URLS=()
  REDIS_PID=""
}

read -r -a SETUPS <<<"${BENCH_SETUPS:-one one-redis two two-nohist}"
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
T_START=$(date +%s)
for i in $(seq "$RUNS"); do
  for setup in "${SETUPS[@]}"; do
    base="$OUT/$setup-$i"
    case $setup in
      one) start_node "$base.node0" ;;
      one-redis)
        start_redis "$base.redis.log"
        start_node "$base.node0" --redis "redis://127.0.0.1:$REDIS_PORT"
        ;;
      two)
        start_redis "$base.redis.log"
        start_node "$base.node0" --redis "redis://127.0.0.1:$REDIS_PORT" --workers "$WORKERS_TWO"
        start_node "$base.node1" --redis "redis://127.0.0.1:$REDIS_PORT" --workers "$WORKERS_TWO"
        ;;
      two-nohist)
        start_redis "$base.redis.log"
        for n in 0 1; do
          start_node "$base.node$n" --redis "redis://127.0.0.1:$REDIS_PORT" --workers "$WORKERS_TWO" \
            --history-size 0
        done
        ;;
    esac
    urls=()
    for u in "${NODE_URLS[@]}"; do urls+=(--url "$u"); done
    watched=("${NODE_PIDS[@]}" ${REDIS_PID:+"$REDIS_PID"})
    before=()
    for pid in "${watched[@]}"; do before+=("$(cpu_ticks "$pid")"); done
    t0=$(date +%s.%N)
    echo "== $setup run $i/$RUNS (${NODE_URLS[*]})" >&2
    rc=0
    # shellcheck disable=SC2086
    "$LOADTEST" "${urls[@]}" --server-pid "${NODE_PIDS[0]}" $LOAD --json "$base.json" \
      >"$base.txt" 2>&1 || rc=$?
    t1=$(date +%s.%N)
    {
      echo "{\"rc\": $rc, \"wall_s\": $(jq -n "$t1 - $t0"), \"cpu_s\": {"
      sep=""
      for k in "${!watched[@]}"; do
        pid=${watched[$k]}
        label="node$k"
        [ "$pid" = "$REDIS_PID" ] && label=redis
        echo "$sep\"$label\": $(jq -n "($(cpu_ticks "$pid") - ${before[$k]}) / $TCK")"
        sep=","
      done
      echo "}}"
    } >"$base.cpu.json"
    stop_all
    for f in "$base".node*.out "$base".node*.err "$base.redis.log"; do
      [ -s "$f" ] || rm -f "$f"
    done
    rm -f "$base".node*.out
    grep -E "deliveries/s" "$base.txt" | sed 's/^/    /' >&2 || true
    jq -c . "$base.cpu.json" | sed 's/^/    cpu: /' >&2
  done
done
T_END=$(date +%s)
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# ---- results file ----------------------------------------------------------

median_of() { # SETUP SUFFIX JQ-EXPR: median over the runs (nulls skipped)
  local files=()
  for i in $(seq "$RUNS"); do
    [ -s "$OUT/$1-$i.$2" ] && files+=("$OUT/$1-$i.$2")
  done
  median_json "$3" "${files[@]}"
}
runs_of() { # SETUP JQ-EXPR: every run's value
  local out=()
  for i in $(seq "$RUNS"); do
    out+=("$(fmt "$(jq "$2" "$OUT/$1-$i.json" 2>/dev/null || echo null)" 0)")
  done
  echo "${out[*]}"
}
pct() { # cpu seconds / wall seconds as % of one core
  if [ "$1" = null ] || [ "$2" = null ]; then echo "–"; else printf "%.0f" "$(jq -n "100 * $1 / $2")"; fi
}

ONE=$(median_of one json .deliveries_per_s)
ONE_R=$(median_of one-redis json .deliveries_per_s)
TWO=$(median_of two json .deliveries_per_s)
TWO_NH=$(median_of two-nohist json .deliveries_per_s)
RATIO_H=$(jq -n "if $TWO == null or $TWO_NH == null or $TWO_NH == 0 then null else $TWO / $TWO_NH end")
MET_H=$(jq -n "$RATIO_H != null and $RATIO_H >= 0.6")
RATIO=$(jq -n "if $ONE == null or $TWO == null or $ONE == 0 then null else $TWO / $ONE end")
RATIO_R=$(jq -n "if $ONE == null or $ONE_R == null or $ONE == 0 then null else $ONE_R / $ONE end")
MET=$(jq -n "$RATIO != null and $RATIO >= 0.8")
CPU_MODEL=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
OS=$(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME" || uname -s)

{
  echo "# Cluster benchmark $NAME"
  echo
  echo "Produced by \`bash bench/cluster.sh\` (BENCH_RUNS=$RUNS) on $(date -u '+%Y-%m-%d %H:%M UTC'), $(( (T_END - T_START) / 60 )) min $(( (T_END - T_START) % 60 )) s."
  echo "Each figure is the **median of $RUNS runs**."
  echo
  echo "| machine | |"
  echo "| --- | --- |"
  echo "| cores (\`nproc\`) | $(nproc) ($CPU_MODEL), shared by the nodes, redis-server and load-test |"
  echo "| OS / kernel | $OS / $(uname -r) |"
  echo "| rustc | $(rustc --version) |"
  echo "| redis-server | $(redis-server --version | grep -o 'v=[^ ]*') |"
  echo "| git revision | $REV |"
  echo "| load average (1/5/15 min) | start $LOAD_START, end $LOAD_END |"
  echo
  echo "## Commands"
  echo
  echo '```sh'
  echo "redis-server --port \$REDIS_PORT --bind 127.0.0.1 --save '' --appendonly no"
  echo "# one:       ${SERVER#"$ROOT/"}"
  echo "# one-redis: ${SERVER#"$ROOT/"} --redis redis://127.0.0.1:\$REDIS_PORT"
  echo "# two:       ${SERVER#"$ROOT/"} --redis redis://127.0.0.1:\$REDIS_PORT --workers $WORKERS_TWO   (twice)"
  echo "# two-nohist: the same with --history-size 0"
  echo "target/release/load-test --url \$NODE0 [--url \$NODE1] --server-pid \$NODE0_PID $LOAD --json \$SETUP-\$RUN.json"
  echo '```'
  echo
  echo "With two URLs, load-test puts subscriber i on URL i mod 2 and publisher p on URL p mod 2."
  echo "CPU is read from /proc/PID/stat (utime + stime) before and after each load-test run and"
  echo "given as % of one core over that run's wall time (connect, publish and drain)."
  echo
  echo "## Results: $CLIENTS subscribers, $PUBLISHERS publishers, --max-rate (window 64 each), $SIZE B, $DURATION"
  echo
  echo "| setup | deliveries/s (median) | every run | p50 / p99 latency (ms) | loss (worst) | node CPU % | redis-server CPU % |"
  echo "| --- | ---: | --- | ---: | ---: | ---: | ---: |"
  for setup in "${SETUPS[@]}"; do
    wall=$(median_of "$setup" cpu.json .wall_s)
    n0=$(median_of "$setup" cpu.json .cpu_s.node0)
    n1=$(median_of "$setup" cpu.json .cpu_s.node1)
    rd=$(median_of "$setup" cpu.json .cpu_s.redis)
    nodes_cpu=$(pct "$n0" "$wall")
    [ "$n1" != null ] && nodes_cpu="$nodes_cpu + $(pct "$n1" "$wall")"
    loss=$(for i in $(seq "$RUNS"); do jq .loss_ratio "$OUT/$setup-$i.json" 2>/dev/null || true; done |
      jq -s 'max')
    echo "| $setup | $(fmt "$(median_of "$setup" json .deliveries_per_s)" 0) | $(runs_of "$setup" .deliveries_per_s) | $(fmt "$(median_of "$setup" json .latency.p50_ms)" 2) / $(fmt "$(median_of "$setup" json .latency.p99_ms)" 2) | $(fmt "$loss" 6) | $nodes_cpu | $(pct "$rd" "$wall") |"
  done
  echo
  echo "- **two ÷ one: $(fmt "$RATIO" 2)** (target ≥ 0.8: $(if [ "$MET" = true ]; then echo met; else echo "**not met**"; fi))"
  echo "- one-redis ÷ one: $(fmt "$RATIO_R" 2) (the relay's cost on a single node)"
  echo "- **two ÷ two-nohist: $(fmt "$RATIO_H" 2)** (history in the cluster, target ≥ 0.6: $(if [ "$MET_H" = true ]; then echo met; else echo "**not met**"; fi))"
  echo
  echo "Every run's load-test summary (\`.txt\`), JSON and CPU figures are in \`$(basename "$OUT")/\`."
} >"$MD"

echo "== wrote ${MD#"$ROOT/"}" >&2
cat "$MD"
