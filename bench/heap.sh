#!/usr/bin/env bash
# bench/heap.sh — where an idle connection's bytes go (issue #17), from a heap
# profile: builds the server with dhat-rs as its allocator (`--features
# dhat-heap`, in target/dhat), opens N idle connections on its default flags,
# holds them, stops the server with SIGTERM, and lists the allocation sites
# live at the heap's peak per connection (bench/heap.py), each block rounded
# to jemalloc's size class.
#
# Usage:   bash bench/heap.sh [N]    (default 5,000; dhat records every
#                                    allocation's call stack, so it is slow)
# Output:  bench/results/<date>-<rev>-heap.md, and the profile in
#          target/dhat/dhat-heap.json
# Needs:   cargo, python3. About 3 minutes with the default.
set -euo pipefail
N=${1:-5000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
echo "== building with --features dhat-heap (target/dhat)" >&2
CARGO_TARGET_DIR=target/dhat cargo build --release -p server --features dhat-heap >&2
cargo build --release -p load-test >&2
ulimit -n "$(ulimit -Hn)"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
(cd "$WORK" && RUST_LOG=warn "$ROOT/target/dhat/release/broadcast-server" start --host 127.0.0.1 --port 0 \
  >"$WORK/out" 2>"$WORK/err") &
sleep 0.2
PID=$(pgrep -n -f "target/dhat/release/broadcast-server start") || { echo "bench/heap.sh: no server" >&2; exit 1; }
URL=
for _ in $(seq 400); do URL=$(grep -o 'ws://[^ ]*' "$WORK/out" | head -1 || true); [ -n "$URL" ] && break; sleep 0.05; done
[ -n "$URL" ] || { echo "bench/heap.sh: the server did not start; see $WORK/err" >&2; cat "$WORK/err" >&2; exit 1; }
echo "== load-test --url $URL --clients $N --idle --ramp 1000 --duration 5s" >&2
"$ROOT/target/release/load-test" --url "$URL" --server-pid "$PID" --clients "$N" --idle --ramp 1000 --duration 5s \
  --source-addrs 4 --no-progress >"$WORK/load.txt" 2>&1 || { cat "$WORK/load.txt" >&2; exit 1; }
grep -E "clients connected|RSS/connection" "$WORK/load.txt" >&2
kill -TERM "$PID"
for _ in $(seq 600); do [ -f "$WORK/dhat-heap.json" ] && ! kill -0 "$PID" 2>/dev/null && break; sleep 0.1; done
[ -f "$WORK/dhat-heap.json" ] || { echo "bench/heap.sh: no dhat-heap.json" >&2; exit 1; }
cp "$WORK/dhat-heap.json" "$ROOT/target/dhat/dhat-heap.json"
REV=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
[ -n "$(git status --porcelain -- server protocol 2>/dev/null)" ] && REV="$REV-dirty"
MD=${BENCH_OUT:-$ROOT/bench/results}/$(date -u +%Y-%m-%d)-$REV-heap.md
{
  echo "# Heap profile of idle connections: \`bash bench/heap.sh $N\`"
  echo
  echo "dhat-rs as the allocator (\`--features dhat-heap\`), server on its default flags, $N idle connections"
  echo "opened at 1,000/s by \`load-test --idle\`; the profile at the heap's peak. Profile: target/dhat/dhat-heap.json"
  echo "(view it with dhat's viewer, dh_view.html). load-test saw: $(grep -E 'RSS/connection' "$WORK/load.txt" | sed 's/^ *//')"
  echo "(RSS under dhat, which uses glibc's malloc, not jemalloc)."
  echo
  python3 "$ROOT/bench/heap.py" "$WORK/dhat-heap.json" "$N"
} >"$MD"
cat "$MD"
