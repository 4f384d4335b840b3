#!/usr/bin/env bash
# A three-node Hearth cluster on one machine: etcd on its own loopback ports, three hearthd on
# 127.0.0.1, 127.0.0.2 and 127.0.0.3 (links under a cluster CA made by `hearthctl cluster ca`),
# then a short hearth-loadgen run against node 1 (devices whose accounts other nodes own are
# redirected there; sends to them are forwarded), its report, and everything stopped.
# Extra arguments go to hearth-loadgen. HEARTH_CLUSTER_DIR keeps the files (default: a temp
# dir, removed at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/install-etcd.sh

cargo build --release -p hearth-router -p hearth-ctl -p hearth-loadgen
bin="${CARGO_TARGET_DIR:-target}/release"

keep="${HEARTH_CLUSTER_DIR:-}"
dir="${keep:-$(mktemp -d -t hearth-cluster.XXXXXX)}"
mkdir -p "$dir"
pids=()
cleanup() {
  # Stop only what this script started, by pid: SIGTERM (hearthd drains), then SIGKILL.
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  [ -n "$keep" ] || rm -rf "$dir"
}
trap cleanup EXIT

etcd_client="http://127.0.0.1:${HEARTH_ETCD_PORT:-23791}"
etcd_peer="http://127.0.0.1:${HEARTH_ETCD_PEER_PORT:-23801}"
etcd --name demo --data-dir "$dir/etcd" \
  --listen-client-urls "$etcd_client" --advertise-client-urls "$etcd_client" \
  --listen-peer-urls "$etcd_peer" --initial-advertise-peer-urls "$etcd_peer" \
  --initial-cluster "demo=$etcd_peer" >"$dir/etcd.log" 2>&1 &
pids+=($!)

"$bin/hearthctl" cluster ca init --dir "$dir/ca" --cluster demo >/dev/null
for i in 1 2 3; do
  "$bin/hearthctl" cluster ca node --dir "$dir/ca" --cluster demo --id "$i" >/dev/null
done

node_config() { # id
  local i=$1
  cat <<EOF
listen = "127.0.0.$i:4433"
admin_listen = "127.0.0.$i:9090"
data_dir = "$dir/data$i"
EOF
  # Nodes 2 and 3 present node 1's development certificate and verify node 1's token key, so
  # one CA file and one token key serve the whole cluster.
  if [ "$i" != 1 ]; then
    cat <<EOF
tls_cert = "$dir/data1/dev-cert.pem"
tls_key = "$dir/data1/dev-key.pem"
token_key = "$dir/data1/token.key"
EOF
  fi
  cat <<EOF

# Loopback load: every device connects from one address, and each sends to many new
# recipients (the abuse signal's default is 50 an hour): raise those two limits.
[safety]
new_connections_per_ip_per_sec = 100000
new_connections_per_ip_burst = 100000
new_recipients_per_hour = 1000000

[cluster]
node_id = $i
name = "demo"
etcd_endpoints = ["$etcd_client"]
advertise_client = "127.0.0.$i:4433"
link_listen = "127.0.0.$i:4434"
advertise_link = "127.0.0.$i:4434"
initial_nodes = 3
ca_cert = "$dir/ca/ca.pem"
node_cert = "$dir/ca/n$i.pem"
node_key = "$dir/ca/n$i.key"
EOF
}

wait_http() { # url code seconds
  for _ in $(seq $(($3 * 10))); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$1" || true)" = "$2" ] && return 0
    sleep 0.1
  done
  echo "timed out waiting for $1 to answer $2" >&2
  return 1
}

for i in 1 2 3; do
  node_config "$i" >"$dir/n$i.toml"
  "$bin/hearthd" --config "$dir/n$i.toml" >"$dir/n$i.log" 2>&1 &
  pids+=($!)
  # Node 1 writes the certificate and token key the others use.
  [ "$i" = 1 ] && wait_http "http://127.0.0.1:9090/healthz" 200 30
done
for i in 1 2 3; do
  wait_http "http://127.0.0.$i:9090/readyz" 200 60
done
echo "cluster ready: nodes on 127.0.0.1-3:4433, etcd $etcd_client, files in $dir" >&2

"$bin/hearth-loadgen" --addr 127.0.0.1:4433 --ca "$dir/data1/dev-cert.pem" \
  --key "$dir/data1/token.key" --devices 200 --rate 2000 --duration 10s "$@"
