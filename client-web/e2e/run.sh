#!/usr/bin/env bash
# End-to-end test of the browser client (client-web) against the real server.
#
#   bash client-web/e2e/run.sh
#
# On a fresh Debian 12 machine it installs what it needs: Chromium (apt), Node
# and npm (apt, if missing), the wasm32 Rust target, and the npm packages
# (`npm ci`, from package-lock.json). It builds the server in release mode
# (which builds and embeds the browser client) and runs test.mjs against it.
# Set BROADCAST_SERVER=/path/to/broadcast-server to test a prebuilt binary
# instead. Screenshots land in client-web/e2e/artifacts/.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
export PATH="$HOME/.cargo/bin:$PATH"

as_root() {
    if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

apt_updated=
apt_install() {
    if [[ -z $apt_updated ]]; then
        as_root apt-get update
        apt_updated=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@"
}

start=$(date +%s)
if [[ ! -x /usr/bin/chromium ]]; then
    echo "== installing chromium"
    apt_install chromium
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "== installing nodejs and npm"
    apt_install nodejs npm
fi

if ! command -v openssl >/dev/null; then
    echo "== installing openssl"
    apt_install openssl
fi
# A self-signed certificate for the https:// / wss:// step.
tls_dir=$(mktemp -d)
trap 'rm -rf "$tls_dir"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
    -keyout "$tls_dir/key.pem" -out "$tls_dir/cert.pem" 2>/dev/null
export E2E_TLS_DIR=$tls_dir

echo "== npm ci (client-web/e2e)"
(cd "$here" && npm ci --no-audit --no-fund --loglevel=error)

if [[ -n ${BROADCAST_SERVER:-} ]]; then
    server=$BROADCAST_SERVER
else
    if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
        echo "== rustup target add wasm32-unknown-unknown"
        rustup target add wasm32-unknown-unknown
    fi
    echo "== cargo build --release -p server"
    locked=()
    [[ -f $root/Cargo.lock ]] && locked=(--locked)
    (cd "$root" && cargo build --release "${locked[@]}" -p server --bin broadcast-server)
    server=$root/target/release/broadcast-server
fi
echo "== set-up took $(( $(date +%s) - start )) s"

echo "== browser test ($server)"
node "$here/test.mjs" "$server"
