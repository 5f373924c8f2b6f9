#!/usr/bin/env bash
# .ci/test.sh - the project's whole test run (what CI runs via .ci/run).
#
#   1. set-up   : toolchain components/targets, Debian packages (idempotent;
#                 a no-op when everything is already there)
#   2. fmt      : cargo fmt --all --check
#   3. clippy   : cargo clippy --workspace --all-targets -- -D warnings
#   4. build    : cargo build --workspace --release (the conformance job uses
#                 target/release/broadcast-server)
#   5. test     : cargo test --workspace --no-fail-fast (every test binary
#                 runs, so one run shows all failures; still exits non-zero)
#   6. fuzz     : fuzz/run.sh 10 (every protocol fuzz target for 10 s; installs
#                 cargo-fuzz when missing; a crash fails the run)
#   7. browser  : client-web/e2e/run.sh (headless Chromium against the server)
#   8. autobahn : .ci/autobahn.sh (Autobahn|Testsuite cases against our server)
#
# Any failure stops the run with a non-zero exit. Works as root in a fresh
# clone with no stdin (CI=true) as well as on a developer machine.
set -euo pipefail

cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
export CARGO_INCREMENTAL=0        # CI builds from scratch; incremental only costs
export RUST_BACKTRACE=${RUST_BACKTRACE:-1}

T0=$(date +%s)
PHASE_NAMES=() PHASE_SECS=()
section() {
    echo
    echo "================================================================"
    echo "== $*"
    echo "================================================================"
}
# run_phase NAME CMD... : run a phase, time it, and record the timing.
run_phase() {
    local name=$1 start rc=0
    shift
    section "$name"
    start=$(date +%s)
    # A subshell with -e re-enabled: `"$@" || rc=$?` would switch errexit off
    # inside shell functions such as setup().
    set +e
    ( set -e; "$@" )
    rc=$?
    set -e
    PHASE_NAMES+=("$name") PHASE_SECS+=($(( $(date +%s) - start )))
    if [[ $rc -ne 0 ]]; then
        echo
        echo "!! phase '$name' failed (exit $rc)"
        print_timings
        exit "$rc"
    fi
}
print_timings() {
    local i
    echo
    echo "---- phase timings ----"
    for i in "${!PHASE_NAMES[@]}"; do
        printf '  %-12s %5ss\n' "${PHASE_NAMES[$i]}" "${PHASE_SECS[$i]}"
    done
    printf '  %-12s %5ss\n' total $(( $(date +%s) - T0 ))
}

# --locked once Cargo.lock is committed: CI must build exactly what was reviewed.
# Python websockets for the permessage-deflate interoperability test.
WEBSOCKETS_VERSION=15.0.1
LOCKED=()
[[ -f Cargo.lock ]] && LOCKED=(--locked)

# retry CMD...: network installs get a second chance before failing the run.
retry() {
    "$@" && return 0
    echo "retrying in 5s: $*"
    sleep 5
    "$@"
}

setup() {
    # Rust components. The machine's toolchain comes from rustup; fmt and
    # clippy are components that a minimal profile may lack.
    if ! cargo fmt --version >/dev/null 2>&1; then
        echo "installing rustup component rustfmt"
        retry rustup component add rustfmt
    fi
    if ! cargo clippy --version >/dev/null 2>&1; then
        echo "installing rustup component clippy"
        retry rustup component add clippy
    fi
    # client-web will be built for the browser.
    if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
        echo "installing rustup target wasm32-unknown-unknown"
        retry rustup target add wasm32-unknown-unknown
    fi

    # Debian packages: the image has most of these (coreutils' timeout for the
    # conformance job, gcc for crates that build C, g++ for libFuzzer in the
    # fuzz phase, make for jemalloc's C build, python3, git, systemd for
    # `systemd-analyze verify` of deploy/'s unit); redis-server
    # is for the cluster tests, which start their own on a free loopback port
    # (none on 6379 is needed or used). Install whatever is missing (apt-get
    # update first: the image has no lists).
    local missing=() cmd pkg
    for cmd in timeout:coreutils cc:gcc c++:g++ make:make systemd-analyze:systemd python3:python3 git:git redis-server:redis-server; do
        command -v "${cmd%%:*}" >/dev/null 2>&1 || missing+=("${cmd#*:}")
    done
    if [[ ${#missing[@]} -gt 0 ]]; then
        echo "installing Debian packages: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        retry apt-get update -q
        retry apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
    # python3 must be able to make a venv (the conformance job's kosoku).
    if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
        pkg=python3-venv
        echo "installing Debian package $pkg"
        export DEBIAN_FRONTEND=noninteractive
        retry apt-get update -q
        retry apt-get install -y -q --no-install-recommends "$pkg"
    fi

    # Python websockets for the permessage-deflate interoperability test
    # (server/tests/integration/compression.rs looks for it here), in a venv
    # of its own; kept while it holds the pinned version.
    local ws_venv=$HOME/.cache/broadcast-server/websockets-$WEBSOCKETS_VERSION
    if ! "$ws_venv/bin/python" -c "import sys, websockets; sys.exit(websockets.__version__ != '$WEBSOCKETS_VERSION')" >/dev/null 2>&1; then
        echo "installing websockets==$WEBSOCKETS_VERSION into $ws_venv"
        rm -rf "$ws_venv"
        mkdir -p "$(dirname "$ws_venv")"
        python3 -m venv "$ws_venv"
        retry "$ws_venv/bin/python" -m pip install -q --disable-pip-version-check "websockets==$WEBSOCKETS_VERSION"
    fi

    rustc --version
    cargo --version
    cargo fmt --version
    cargo clippy --version
    python3 --version
    if [[ ${#LOCKED[@]} -eq 0 ]]; then
        echo "note: no Cargo.lock yet, building without --locked"
    fi
}

run_phase setup    setup
run_phase fmt      cargo fmt --all --check -- --color never
run_phase clippy   cargo clippy "${LOCKED[@]}" --workspace --all-targets -- -D warnings
run_phase clippy-wasm cargo clippy "${LOCKED[@]}" --target wasm32-unknown-unknown -p client-web -- -D warnings
run_phase build    cargo build "${LOCKED[@]}" --workspace --release
# Tests run on the release build: it is already compiled (CI time), and the
# load and timing-sensitive tests see the code as it ships.
run_phase test     cargo test "${LOCKED[@]}" --workspace --release --no-fail-fast
# A short coverage-guided pass over the protocol decoders: from the committed
# corpus, it catches a regression on inputs that reached new code before
# (longer runs are for developers: fuzz/README.md). It grows fuzz/corpus/ in
# this checkout, which CI throws away.
run_phase fuzz     bash fuzz/run.sh 10
run_phase browser  env BROADCAST_SERVER="$PWD/target/release/broadcast-server" bash client-web/e2e/run.sh
# The conformance job uses the binary built above instead of building again.
run_phase autobahn env AUTOBAHN_SERVER_BIN="$PWD/target/release/broadcast-server" bash .ci/autobahn.sh

print_timings
echo
echo "ALL CHECKS PASSED"
