#!/usr/bin/env bash
# fuzz/run.sh [SECONDS] [TARGET...] - run the protocol fuzz targets.
#
# Installs cargo-fuzz when missing (cargo install --locked, a pinned version),
# builds every target once (stable Rust acting as nightly through
# RUSTC_BOOTSTRAP=1, since cargo-fuzz passes -Z flags; AddressSanitizer on),
# then runs each target for SECONDS (default 60) with libFuzzer's
# -max_total_time, starting from and growing fuzz/corpus/<target>/. A crash,
# panic, leak or timeout stops the run with a non-zero exit; its input stays
# in fuzz/artifacts/<target>/ (reproduce with `cargo fuzz run <target>
# <file>`, same environment).
set -euo pipefail

cd "$(dirname "$0")"
export PATH="$HOME/.cargo/bin:$PATH"
# Stable rustc accepts the nightly-only flags cargo-fuzz passes
# (-Zsanitizer=address, -Cpasses=sancov-module needs no -Z) with this set.
export RUSTC_BOOTSTRAP=1
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

SECONDS_PER_TARGET=${1:-60}
shift || true
if ! [[ $SECONDS_PER_TARGET =~ ^[0-9]+$ ]] || [[ $SECONDS_PER_TARGET -eq 0 ]]; then
    echo "usage: fuzz/run.sh [SECONDS] [TARGET...]" >&2
    exit 2
fi

# The cargo-fuzz that a machine without one gets (CI: every run), pinned so
# that runs are reproducible. One already installed is used as it is.
CARGO_FUZZ_VERSION=0.13.2
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi
installed=$(cargo fuzz --version)
if [[ $installed != "cargo-fuzz $CARGO_FUZZ_VERSION" ]]; then
    echo "note: using the installed $installed (CI installs $CARGO_FUZZ_VERSION)"
fi
# The fuzz crate's Cargo.lock is committed: build exactly what it says.
cargo fetch --locked

if [[ $# -gt 0 ]]; then
    TARGETS=("$@")
else
    mapfile -t TARGETS < <(cargo fuzz list)
fi

# The toolchain is whatever rustup's default is (stable 1.95 here);
# RUSTC_BOOTSTRAP makes it accept the flags.
BUILD=(cargo fuzz build --release --debug-assertions)
echo "== building ${TARGETS[*]}"
"${BUILD[@]}"

failed=()
for t in "${TARGETS[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    echo "== $t: ${SECONDS_PER_TARGET}s (corpus/$t: $(find "corpus/$t" -type f | wc -l) inputs)"
    # -timeout: one input taking over 10 s is a hang, reported as a crash.
    # -rss_limit_mb: the inputs are small; a runaway allocation is a bug.
    # -max_len: headers are 14 bytes, names 32 characters; events and UTF-8
    #  messages get room for fragments and escapes.
    if ! cargo fuzz run --release --debug-assertions "$t" "corpus/$t" -- \
        -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 \
        -max_len=4096 -print_final_stats=1; then
        echo "!! $t failed; its input is in fuzz/artifacts/$t/:"
        ls -l "artifacts/$t"
        failed+=("$t")
    fi
done

if [[ ${#failed[@]} -gt 0 ]]; then
    echo "FUZZ FAILED: ${failed[*]}"
    exit 1
fi
echo "fuzz: ${#TARGETS[@]} targets, ${SECONDS_PER_TARGET}s each, no crash"
