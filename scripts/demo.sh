#!/usr/bin/env bash
# The main job: an embedded single node (data in a temp folder, durability sync) under a short
# open-loop load, printing the latency report. Extra arguments go to hearth-loadgen.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo run --release -p hearth-loadgen -- --embedded --devices 200 --rate 5000 --duration 10s "$@"
