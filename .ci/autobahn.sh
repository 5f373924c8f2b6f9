#!/usr/bin/env bash
# .ci/autobahn.sh - WebSocket conformance job: the Autobahn|Testsuite
# "fuzzingclient" cases against broadcast-server in --echo mode.
#
# The original autobahntestsuite (wstest) is Python-2.7-only, which this image
# does not have. kosoku (PyPI, pinned below) runs Autobahn's own case files on
# Python 3 and writes the same report format (index.json + per-case files).
#
# Steps: install kosoku into a cached venv; build the release server; start it
# on a free loopback port (--port 0, URL read from its "listening" line); run
# the cases under `timeout`; summarise (.ci/autobahn-summary.py); stop the
# server with SIGTERM and require exit status 0.
#
# Case selection:
#   * all cases, including 9.* (large messages up to 16 MiB and fragmented
#     ones - hence --max-message-size 16777216). Measured on the 2-core CI
#     image against the release server: the 54 cases of 9.* take ~5 s and
#     sections 1-10 ~15-17 s, so nothing is cut from 9.*.
#   * 12.* and 13.* - permessage-deflate (RFC 7692): 216 cases of 1000
#     compressed messages each (16 B to 128 KiB, some auto-fragmented), with
#     every offer variant of 13.*. Nothing is excluded: 517 cases, run as
#     two kosoku processes at once (12.*, and the rest): 304 s measured on the
#     2 shared cores, against 886 s for one process.
#
# Exit: 0 = no failed case; 1 = some case failed (behavior FAILED or unknown,
# or closing behavior FAILED), or the server did not exit 0 on SIGTERM;
# 2 = set-up / run error (install, build, server start, kosoku crash/timeout).
#
# Environment (all optional):
#   AUTOBAHN_CASES      comma-separated ids/globs to run        (default '*')
#   AUTOBAHN_EXCLUDE    comma-separated ids/globs to skip       (default none)
#   AUTOBAHN_OUT        report directory                        (default target/autobahn)
#   AUTOBAHN_TIMEOUT    seconds before the kosoku run is killed (default 1200)
#   AUTOBAHN_JOBS       1: one kosoku run; 2 (default): the whole suite as two
#                       runs at once (12.* and the rest), reports merged
#   AUTOBAHN_SERVER_BIN use this server binary instead of building ours; it is
#                       started with the same arguments (for developing this job)
#   KOSOKU_VENV         venv cache (default ~/.cache/broadcast-server/kosoku-$KOSOKU_VERSION)
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
export PATH="$HOME/.cargo/bin:$PATH"

KOSOKU_VERSION=0.1.0
CASES=${AUTOBAHN_CASES:-*}
EXCLUDE=${AUTOBAHN_EXCLUDE-}
OUT=${AUTOBAHN_OUT:-$ROOT/target/autobahn}
RUN_TIMEOUT=${AUTOBAHN_TIMEOUT:-1200}
JOBS=${AUTOBAHN_JOBS:-2}
VENV=${KOSOKU_VENV:-$HOME/.cache/broadcast-server/kosoku-$KOSOKU_VERSION}
START_WAIT=30          # seconds for the server to print its listening line
STOP_WAIT=15           # seconds for the server to exit after SIGTERM
# With the default selection the pinned kosoku runs exactly this many cases;
# fewer means cases silently went missing.
DEFAULT_CASE_COUNT=517

# --max-message-rate 0: cases 9.7.* and 9.8.* send 1000 messages back to back
# on one connection; conformance is not about abuse limits.
# --compression-min-size 0: every echoed message goes back compressed. (kosoku
# hands a case the text messages it received uncompressed on a compressing
# connection as str, which 12.*/13.* then fail to hash: an artefact of its
# Python 3 port, not of the server; and compressing all of them tests more.)
SERVER_ARGS=(start --host 127.0.0.1 --port 0 --echo
             --max-message-size 16777216 --max-backlog 67108864
             --max-message-rate 0 --compression-min-size 0)

log() { echo "autobahn: $*"; }
die() { echo "autobahn: ERROR: $*" >&2; exit 2; }

# ------------------------------------------------------------------ kosoku
install_kosoku() {
    log "installing kosoku==$KOSOKU_VERSION into $VENV"
    rm -rf "$VENV"
    mkdir -p "$(dirname "$VENV")"
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
        "kosoku==$KOSOKU_VERSION"
    "$VENV/bin/kosoku" --help >/dev/null
    echo "kosoku==$KOSOKU_VERSION" > "$VENV/.installed"
}
if [[ "$(cat "$VENV/.installed" 2>/dev/null || true)" != "kosoku==$KOSOKU_VERSION" ]] ||
   ! "$VENV/bin/kosoku" --help >/dev/null 2>&1; then
    install_kosoku || die "could not install kosoku==$KOSOKU_VERSION"
else
    log "kosoku==$KOSOKU_VERSION already installed in $VENV"
fi

# ------------------------------------------------------------------ server binary
if [[ -n ${AUTOBAHN_SERVER_BIN:-} ]]; then
    BIN=$AUTOBAHN_SERVER_BIN
    log "using AUTOBAHN_SERVER_BIN=$BIN (not building)"
else
    LOCKED=()
    [[ -f Cargo.lock ]] && LOCKED=(--locked)
    # The same command as test.sh's build phase, so that it is a no-op there
    # and we test the very binary CI built: `-p server` alone would resolve
    # features differently (no workspace-wide unification) and rebuild tokio,
    # hyper, ... into a different binary.
    log "building the workspace (release)"
    cargo build "${LOCKED[@]}" --workspace --release || die "cargo build failed"
    BIN=$ROOT/target/release/broadcast-server
fi
[[ -x $BIN ]] || die "server binary $BIN not found"

# ------------------------------------------------------------------ start server
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
# Remove the previous run's report so a stale index.json can never be read.
find "$OUT" -mindepth 1 -maxdepth 1 \( -name '*.json' -o -name '*.html' -o -name '*.log' \) -delete
rm -rf "$OUT/part1" "$OUT/part2"

SERVER_PID=
stop_server() {   # SIGTERM, wait up to STOP_WAIT, then SIGKILL. Sets SERVER_RC.
    SERVER_RC=
    [[ -n $SERVER_PID ]] || return 0
    if kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        local i
        for ((i = 0; i < STOP_WAIT * 10; i++)); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$SERVER_PID" 2>/dev/null; then
            echo "autobahn: server did not exit ${STOP_WAIT}s after SIGTERM; killing it" >&2
            kill -KILL "$SERVER_PID" 2>/dev/null || true
        fi
    fi
    SERVER_RC=0
    wait "$SERVER_PID" 2>/dev/null || SERVER_RC=$?
    SERVER_PID=
}
trap 'stop_server' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log "starting $BIN ${SERVER_ARGS[*]}"
# Create the logs first: the background child opens them only when it runs.
: >"$OUT/server-stdout.log"
: >"$OUT/server-stderr.log"
"$BIN" "${SERVER_ARGS[@]}" >"$OUT/server-stdout.log" 2>"$OUT/server-stderr.log" </dev/null &
SERVER_PID=$!

server_logs() {
    echo "---- server stdout (tail) ----" >&2; tail -20 "$OUT/server-stdout.log" >&2 || true
    echo "---- server stderr (tail) ----" >&2; tail -20 "$OUT/server-stderr.log" >&2 || true
}
URL=
for ((i = 0; i < START_WAIT * 10; i++)); do
    URL=$(sed -nE '/^broadcast-server listening on ws:\/\/127\.0\.0\.1:[0-9]+\/ws[[:space:]]*$/{s/^.* on (ws:[^[:space:]]+).*$/\1/p;q}' \
          "$OUT/server-stdout.log" || true)
    [[ -n $URL ]] && break
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        server_logs
        die "server exited before it was listening"
    fi
    sleep 0.1
done
[[ -n $URL ]] || { server_logs; die "no 'broadcast-server listening on ws://...' line within ${START_WAIT}s"; }
log "server pid $SERVER_PID listening on $URL"

# ------------------------------------------------------------------ run the cases
split() { tr ', ' '\n\n' <<<"$1" | sed '/^$/d'; }
ARGS=()
while read -r c; do ARGS+=(-i "$c"); done < <(split "$CASES")
while read -r c; do ARGS+=(-x "$c"); done < <(split "$EXCLUDE")
[[ ${#ARGS[@]} -gt 0 && " ${ARGS[*]} " == *" -i "* ]] || die "empty case list"

EXPECT=
[[ $CASES == '*' && -z $EXCLUDE ]] && EXPECT=$DEFAULT_CASE_COUNT

# kosoku prints nothing until the end; its own exit code is 1 when any case is
# not OK/NON-STRICT/INFORMATIONAL in *both* verdicts (stricter than our rule),
# so the verdict is taken from index.json below, not from rc.
run_kosoku() {   # URL DIR ARGS...: one kosoku run writing its report into DIR
    local url=$1 dir=$2
    shift 2
    mkdir -p "$dir"
    timeout -k 10 "$RUN_TIMEOUT" "$VENV/bin/kosoku" "$url" "$@" -o "$dir" >"$dir/kosoku.log" 2>&1
}
start=$(date +%s)
rc=0
if [[ $JOBS -ge 2 && -n $EXPECT ]]; then
    # The whole suite in two runs at once: 12.* (the slowest section) and
    # the rest. Each case echoes 1000 messages one at a time, so a run
    # alternates between kosoku's CPU and the server's; two runs keep both
    # cores busy. Their reports are merged into one. Each run is in a
    # channel of its own (/ws/NAME): with --echo a message reaches every
    # member of its channel, so the runs must not share one.
    log "running kosoku in 2 parts (-i 12.* | -i * -x 12.*; timeout ${RUN_TIMEOUT}s), report: $OUT"
    run_kosoku "$URL/autobahn-12" "$OUT/part1" -i '12.*' &
    part1=$!
    rc2=0
    run_kosoku "$URL/autobahn" "$OUT/part2" -i '*' -x '12.*' || rc2=$?
    wait "$part1" || rc=$?
    [[ $rc -eq 0 || ( $rc -eq 1 && $rc2 -ne 0 ) ]] && rc=$rc2
    cat "$OUT/part1/kosoku.log" "$OUT/part2/kosoku.log" >"$OUT/kosoku.log"
    if [[ -s $OUT/part1/index.json && -s $OUT/part2/index.json ]]; then
        python3 - "$OUT" <<'PY' || die "could not merge the two reports"
import json, os, shutil, sys
out = sys.argv[1]
merged = {}
for part in ("part1", "part2"):
    d = os.path.join(out, part)
    with open(os.path.join(d, "index.json"), encoding="utf-8") as f:
        for agent, cases in json.load(f).items():
            merged.setdefault(agent, {}).update(cases)
    for name in os.listdir(d):
        if name.endswith((".json", ".html")) and name != "index.json":
            shutil.move(os.path.join(d, name), os.path.join(out, name))
with open(os.path.join(out, "index.json"), "w", encoding="utf-8") as f:
    json.dump(merged, f)
PY
    fi
else
    log "running kosoku ${ARGS[*]} (timeout ${RUN_TIMEOUT}s), report: $OUT"
    run_kosoku "$URL" "$OUT" "${ARGS[@]}" || rc=$?
fi
elapsed=$(( $(date +%s) - start ))
log "kosoku finished in ${elapsed}s (exit $rc)"

if [[ $rc -eq 124 || $rc -eq 137 ]]; then
    tail -20 "$OUT/kosoku.log" >&2
    die "kosoku run killed after ${RUN_TIMEOUT}s (AUTOBAHN_TIMEOUT)"
fi
if [[ ! -s $OUT/index.json || ( $rc -ne 0 && $rc -ne 1 ) ]]; then
    tail -30 "$OUT/kosoku.log" >&2
    server_logs
    die "kosoku did not produce a report (exit $rc); log: $OUT/kosoku.log"
fi

# ------------------------------------------------------------------ stop server
stop_server
if [[ $SERVER_RC -ne 0 ]]; then
    server_logs
    log "server exit status after SIGTERM: $SERVER_RC (expected 0)"
else
    log "server stopped cleanly on SIGTERM (exit 0)"
fi

# ------------------------------------------------------------------ summary
summary_rc=0
python3 "$ROOT/.ci/autobahn-summary.py" "$OUT/index.json" \
    --elapsed "$elapsed" ${EXPECT:+--expect "$EXPECT"} || summary_rc=$?

[[ $summary_rc -le 1 ]] || die "summary failed (exit $summary_rc)"
if [[ $summary_rc -ne 0 || $SERVER_RC -ne 0 ]]; then
    [[ $SERVER_RC -eq 0 ]] || echo "autobahn: FAIL: server exited $SERVER_RC on SIGTERM"
    exit 1
fi
log "PASS"
