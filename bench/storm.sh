#!/usr/bin/env bash
# bench/storm.sh — the recovery storm of issue #14: 10,000 subscribers, each
# about 100 messages behind, reconnect at once with ?since= their last
# position; how long until all have recovered, the server's CPU and peak RSS
# over that span, and zero gaps.
#
# Usage:   bash bench/storm.sh
# Env:     STORM_CLIENTS=10000  subscribers (broadcast.v1: positions come in its events)
#          STORM_RATE=20        msg/s of the one publisher; the subscribers
#          STORM_OUTAGE=5s      stay away this long, so rate x outage behind
#                               (a slow rate, so that on 2 cores load-test
#                               keeps up before the wave: 10,000 x 100 msg/s
#                               of v1 JSON is more than it reads there)
#          BENCH_OUT=DIR        results directory (default bench/results)
# Needs:   cargo, jq, Linux /proc, a file limit above STORM_CLIENTS (ulimit -Hn).
#
# How: one server (history of 1,000 messages per channel, so 100 behind is
# well inside it; every other flag default) and load-test as a separate
# process. The subscribers connect (a connection storm, --ramp 0), the
# publisher starts; after one period every subscriber drops its TCP connection
# (no close handshake), stays away for the outage while publishing goes on,
# then all connect again at the same instant with ?since=
# (--reconnect-together). load-test samples the server's /proc from that
# instant until every one of them had its replay ("recovery storm" line, and
# .resume.storm in the JSON). The run fails on any gap or duplicate.
# Output: bench/results/<date>-<rev>-storm.json and .md (command, figures).
set -euo pipefail

CLIENTS=${STORM_CLIENTS:-10000}
RATE=${STORM_RATE:-20}
OUTAGE=${STORM_OUTAGE:-5s}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT_ROOT=${BENCH_OUT:-$ROOT/bench/results}
cd "$ROOT"
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
command -v jq >/dev/null || { echo "bench/storm.sh: needs jq (apt-get install -y jq)" >&2; exit 2; }

build_release
mkdir -p "$OUT_ROOT"
LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
NAME="$(date -u +%Y-%m-%d)-$REV-storm"
JSON="$OUT_ROOT/$NAME.json"
MD="$OUT_ROOT/$NAME.md"
ulimit -n "$(ulimit -Hn)"

LOG=$(mktemp -d)
SERVER_CMD="$REL/broadcast-server start --host 127.0.0.1 --port 0 --history-size 1000"
# shellcheck disable=SC2086
RUST_LOG=warn $SERVER_CMD >"$LOG/out" 2>"$LOG/err" &
PID=$!
trap 'kill -TERM $PID 2>/dev/null || true; wait $PID 2>/dev/null || true; rm -rf "$LOG"' EXIT
URL=""
for _ in $(seq 200); do
  URL=$(grep -o 'ws://[^ ]*' "$LOG/out" | head -1 || true)
  [ -n "$URL" ] && break
  kill -0 "$PID" 2>/dev/null || { cat "$LOG/err" >&2; exit 1; }
  sleep 0.05
done
[ -n "$URL" ] || { echo "bench/storm.sh: the server did not start" >&2; exit 1; }

# The wave comes after one period (the outage + 50 ms); publishing ends when
# the outage does, so each subscriber is rate x outage behind when it comes
# back. Before the wave the subscribers get about as many messages live.
OUTAGE_S=$(awk -v o="${OUTAGE%s}" 'BEGIN { print o + 0 }')
EVERY=$(awk -v o="$OUTAGE_S" 'BEGIN { printf "%.3fs", o + 0.05 }')
DURATION=$(awk -v o="$OUTAGE_S" 'BEGIN { printf "%.3fs", 2 * o + 0.05 }')
ARGS=(--url "$URL" --v1 --clients "$CLIENTS" --publishers 1 --rate "$RATE" --size 64
  --duration "$DURATION" --reconnect-every "$EVERY" --reconnect-together --outage "$OUTAGE"
  --ramp 0 --drain 60s --server-pid "$PID" --no-progress)
echo "== $SERVER_CMD" >&2
echo "== target/release/load-test ${ARGS[*]}" >&2
set +e
"$LOADTEST" "${ARGS[@]}" --json "$JSON" | tee "$LOG/summary"
CODE=${PIPESTATUS[0]}
set -e

jq -r '
  def mib: . / 1024 | . * 10 | round / 10;
  .resume as $r |
  "| subscribers in the wave | \($r.storm.subscribers) |",
  "| messages behind (mean) | \(if $r.reconnects > 0 then ($r.recovered / $r.reconnects | . * 10 | round / 10) else "-" end) |",
  "| **time until all recovered (s)** | **\($r.storm.all_recovered_s | . * 1000 | round / 1000)** (complete: \($r.storm.complete)) |",
  "| time to recover p50 / p99 / max (ms) | \($r.time_to_recover.p50_ms | round) / \($r.time_to_recover.p99_ms | round) / \($r.time_to_recover.max_ms | round) |",
  "| server CPU over the storm | \($r.storm.server_cpu_s | . * 100 | round / 100) s (\($r.storm.server_cpu_pct | round) % of one core) |",
  "| server peak RSS (MiB) | \($r.storm.server_rss_peak_kib | mib) |",
  "| resumes: reconnects / failed / not covered | \($r.reconnects) / \($r.failures) / \($r.unrecovered) |",
  "| messages recovered | \($r.recovered) |",
  "| **gaps / duplicates / reordered** | **\(.lost) / \(.duplicates) / \(.reordered)** |",
  "| errors | \(.errors) |"
' "$JSON" >"$LOG/table"
{
  echo "# Recovery storm ($NAME)"
  echo
  echo "$(nproc) cores, $(uname -sr), load average before the run $LOAD (the machine is shared), load-test exit status $CODE."
  echo
  echo '```sh'
  echo "$SERVER_CMD"
  echo "target/release/load-test ${ARGS[*]/#$URL/\$URL} --json storm.json"
  echo '```'
  echo
  echo "| figure | value |"
  echo "| --- | --- |"
  cat "$LOG/table"
} >"$MD"
cat "$MD"
exit "$CODE"
