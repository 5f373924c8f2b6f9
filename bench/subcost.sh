#!/usr/bin/env bash
# Idle memory per broadcast.v2 subscription: starts the release server on
# 127.0.0.1, opens N v2 connections (default 10,000) that each subscribe to K
# of 1,000 channels, and prints the server's RSS growth per connection
# (bench/subcost.py, Python 3 standard library only). The cost of an extra
# subscription is the difference between two K, divided by their difference:
#   bash bench/subcost.sh 1; bash bench/subcost.sh 10   # (B(10) - B(1)) / 9
set -euo pipefail
K=${1:?usage: subcost.sh K [N]}; N=${2:-10000}
BIN=${BIN:-target/release/broadcast-server}
ulimit -n "$(ulimit -Hn)"
OUT=$(mktemp)
trap 'rm -f "$OUT"' EXIT
RUST_LOG=warn "$BIN" start --host 127.0.0.1 --port 0 > "$OUT" 2>/dev/null &
PID=$!
URL=
for _ in $(seq 200); do URL=$(grep -o 'ws://[^ ]*' "$OUT" | head -1 || true); [ -n "$URL" ] && break; sleep 0.05; done
PORT=$(echo "$URL" | sed -E 's#ws://[^:]+:([0-9]+).*#\1#')
python3 "$(dirname "$0")/subcost.py" 127.0.0.1 "$PORT" "$PID" "$N" "$K"
kill -TERM "$PID"; wait "$PID" 2>/dev/null || true
