# bench/lib.sh — helpers the benchmark scripts share (sourced, not run).

# median_json JQ-EXPR FILE...: the median of JQ-EXPR over the JSON files
# (null values skipped; null when there is none).
median_json() {
  local expr=$1
  shift
  [ $# -eq 0 ] && { echo null; return; }
  jq -s "map($expr) | map(select(. != null)) | sort |
    if length == 0 then null
    elif length % 2 == 1 then .[length/2|floor]
    else (.[length/2 - 1] + .[length/2]) / 2 end" "$@"
}

# fmt VALUE DECIMALS: a number with DECIMALS decimals, "–" for null.
fmt() {
  if [ "$1" = null ]; then echo "–"; else printf "%.${2}f" "$1"; fi
}

# build_release: builds broadcast-server and load-test in release mode and
# sets REL (the binaries' folder), LOADTEST, and REV (the git revision, with
# -dirty when server, protocol or load-test have uncommitted changes).
build_release() {
  echo "== building (release)" >&2
  cargo build --release -p server -p load-test >&2
  REL=$ROOT/target/release
  LOADTEST=$REL/load-test
  REV=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
  if [ -n "$(git status --porcelain -- server protocol load-test 2>/dev/null)" ]; then
    REV="$REV-dirty"
  fi
}

# start_ws_server LOG CMD...: runs CMD in the background (stdout to LOG.out,
# stderr to LOG.err) and waits up to 10 s for the ws:// URL it prints; sets
# SERVER_PID and SERVER_URL. Returns 1 if it exits or prints none by then.
start_ws_server() {
  local log=$1
  shift
  : >"$log.out"
  RUST_LOG=${RUST_LOG:-warn} "$@" >"$log.out" 2>"$log.err" &
  SERVER_PID=$!
  SERVER_URL=""
  for _ in $(seq 200); do
    SERVER_URL=$(grep -o 'ws://[^ ]*' "$log.out" | head -1 || true)
    [ -n "$SERVER_URL" ] && return 0
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.05
  done
  return 1
}

# ---- redis-server and nodes on 127.0.0.1 at ports of our choosing (rolling.sh,
# presence.sh). Every process started is appended to PIDS; kill_all stops them.

PIDS=()

# free_port: a TCP port on 127.0.0.1 that is free now.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# start_redis LOG: a fresh redis-server without persistence; sets REDIS_PORT and REDIS_PID.
start_redis() {
  REDIS_PORT=$(free_port)
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >"$1" 2>&1 &
  REDIS_PID=$!
  PIDS+=("$REDIS_PID")
  for _ in $(seq 200); do
    redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "redis-server did not start; see $1" >&2
  return 1
}

# start_node_at PORT METRICS_PORT LOG ARGS...: broadcast-server on 127.0.0.1:PORT
# with /metrics on METRICS_PORT; returns once /readyz answers 200 (the cluster
# is up); sets NODE_PID.
start_node_at() {
  local port=$1 mport=$2 log=$3
  shift 3
  RUST_LOG=${RUST_LOG:-warn} "$REL/broadcast-server" start --host 127.0.0.1 --port "$port" \
    --metrics-addr "127.0.0.1:$mport" "$@" >>"$log" 2>&1 &
  NODE_PID=$!
  PIDS+=("$NODE_PID")
  for _ in $(seq 400); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/readyz")" = 200 ] && return 0
    kill -0 "$NODE_PID" 2>/dev/null || break
    sleep 0.05
  done
  echo "node on port $port did not become ready; see $log" >&2
  return 1
}

# metric METRICS_PORT NAME: the value of an unlabelled metric (empty if unreachable).
metric() {
  curl -s "http://127.0.0.1:$1/metrics" 2>/dev/null | awk -v n="$2" '$1 == n {print $2; exit}'
}

# cpu_ticks PID: its utime + stime in clock ticks.
cpu_ticks() {
  awk '{print $14 + $15}' "/proc/$1/stat"
}

# stop_pid PID: SIGTERM, wait up to 60 s, then SIGKILL.
stop_pid() {
  kill -TERM "$1" 2>/dev/null || return 0
  for _ in $(seq 600); do
    kill -0 "$1" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

# kill_all: SIGKILL every process in PIDS (an EXIT trap).
kill_all() {
  for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  PIDS=()
}
