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
