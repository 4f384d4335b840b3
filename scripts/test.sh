#!/usr/bin/env bash
# The test command: installs build dependencies if missing, then runs every test of the
# workspace in release mode (one build of RocksDB serves tests, benches and binaries).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/install-etcd.sh
cargo test --release --workspace "$@"
