#!/usr/bin/env bash
# Soak test: a real hearthd on loopback (durability sync), CONNECTIONS devices connected through
# hearth-loadgen with steady 1:1 traffic for DURATION, the node's RSS sampled every SAMPLE
# seconds from /proc. Prints a table of the samples and a verdict. Not run in CI.
#
#   benches/soak/run.sh                         # 20,000 connections, 1,000 sends/s, 10 minutes
#   CONNECTIONS=2000 DURATION=2m benches/soak/run.sh
#
# Settings (environment): CONNECTIONS (20000), RATE sends/s (1000), DURATION (10m, loadgen
# syntax), SAMPLE seconds (10), CONNECT_RATE handshakes/s (2000), SOURCE_IPS (4), SIZE payload
# bytes (512), OUT directory (a new temp dir; kept, with samples.csv, hearthd.log,
# loadgen.json and loadgen.txt).
#
# Verdict. The steady samples are those taken while at least 99% of CONNECTIONS are open. The
# first third of them is warm-up (allocator arenas, RocksDB memtables and caches filling). Over
# the last third, a least-squares line through RSS gives a slope; extrapolated over one hour it
# must stay below FLAT_PCT_PER_HOUR (default 5) percent of that third's mean RSS: FLAT (exit 0),
# else GROWING (exit 2). Too few steady samples (fewer than 6) is INCONCLUSIVE (exit 3);
# a setup failure exits 1.
set -euo pipefail
cd "$(dirname "$0")/../.."

CONNECTIONS=${CONNECTIONS:-20000}
RATE=${RATE:-1000}
DURATION=${DURATION:-10m}
SAMPLE=${SAMPLE:-10}
CONNECT_RATE=${CONNECT_RATE:-2000}
SOURCE_IPS=${SOURCE_IPS:-4}
SIZE=${SIZE:-512}
FLAT_PCT_PER_HOUR=${FLAT_PCT_PER_HOUR:-5}
OUT=${OUT:-$(mktemp -d /tmp/hearth-soak.XXXXXX)}
mkdir -p "$OUT"

target=${CARGO_TARGET_DIR:-target}
cargo build --release -q -p hearth-router -p hearth-loadgen
hearthd="$target/release/hearthd"
loadgen="$target/release/hearth-loadgen"

# The node: loopback, rate limits and abuse throttling off (every simulated device writes to
# strangers far faster than a person would), everything else at its defaults.
cat > "$OUT/hearthd.toml" <<EOF
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
data_dir = "$OUT/data"
[safety]
per_device_per_sec = 0
per_pair_per_sec = 0
recipient_bytes_per_sec = 0
new_connections_per_ip_per_sec = 0
group_fanout_per_sender_per_sec = 0
sealed_per_recipient_per_sec = 0
throttled_per_sec = 0
EOF

"$hearthd" --config "$OUT/hearthd.toml" --log warn > "$OUT/hearthd.out" 2> "$OUT/hearthd.log" &
node_pid=$!
loadgen_pid=""
cleanup() {
  [ -n "$loadgen_pid" ] && kill "$loadgen_pid" 2>/dev/null || true
  kill -TERM "$node_pid" 2>/dev/null || true
  wait "$node_pid" 2>/dev/null || true
}
trap cleanup EXIT

# hearthd prints "hearthd listening: quic=ADDR admin=http://ADDR" once it serves.
for _ in $(seq 300); do
  grep -q "hearthd listening" "$OUT/hearthd.out" 2>/dev/null && break
  kill -0 "$node_pid" 2>/dev/null || { echo "hearthd exited; see $OUT/hearthd.log" >&2; exit 1; }
  sleep 0.1
done
quic_addr=$(sed -n 's/.*quic=\([^ ]*\).*/\1/p' "$OUT/hearthd.out")
admin_addr=$(sed -n 's|.*admin=http://\([^ ]*\).*|\1|p' "$OUT/hearthd.out")
[ -n "$quic_addr" ] && [ -n "$admin_addr" ] || { echo "hearthd did not start; see $OUT/hearthd.log" >&2; exit 1; }

"$loadgen" --addr "$quic_addr" --ca "$OUT/data/dev-cert.pem" --key "$OUT/data/token.key" \
  --admin "$admin_addr" --devices "$CONNECTIONS" --rate "$RATE" --duration "$DURATION" \
  --size "$SIZE" --connect-rate "$CONNECT_RATE" --source-ips "$SOURCE_IPS" --no-progress \
  --json-file "$OUT/loadgen.json" > "$OUT/loadgen.txt" 2>&1 &
loadgen_pid=$!

rss_mib() { awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$node_pid/status"; }
connections() {
  curl -fsS "http://$admin_addr/metrics" | awk '$1 == "hearth_connections" { print $2 }'
}

echo "t_s,rss_mib,connections" > "$OUT/samples.csv"
start=$(date +%s)
echo "soak: $CONNECTIONS connections, $RATE sends/s for $DURATION; node pid $node_pid; output in $OUT"
printf '%8s %10s %12s\n' "t (s)" "RSS (MiB)" "connections"
while kill -0 "$loadgen_pid" 2>/dev/null; do
  t=$(( $(date +%s) - start ))
  r=$(rss_mib); c=$(connections || echo 0)
  echo "$t,$r,$c" >> "$OUT/samples.csv"
  printf '%8s %10s %12s\n' "$t" "$r" "$c"
  sleep "$SAMPLE"
done
set +e
wait "$loadgen_pid"
loadgen_rc=$?
set -e
loadgen_pid=""
echo
echo "hearth-loadgen exited $loadgen_rc; its summary ($OUT/loadgen.txt):"
grep -E "delivered|lost|duplicated|errors|p99|connect|result" "$OUT/loadgen.txt" | head -20 || true
echo

# Verdict over the steady samples.
awk -F, -v want="$CONNECTIONS" -v pct="$FLAT_PCT_PER_HOUR" '
  NR > 1 && $3 >= 0.99 * want { n++; t[n] = $1; r[n] = $2 }
  END {
    if (n < 6) { printf "verdict: INCONCLUSIVE (%d steady samples, need 6)\n", n; exit 3 }
    from = n - int(n / 3) + 1
    m = 0; st = 0; sr = 0
    for (i = from; i <= n; i++) { m++; st += t[i]; sr += r[i] }
    mt = st / m; mr = sr / m; num = 0; den = 0
    for (i = from; i <= n; i++) { num += (t[i] - mt) * (r[i] - mr); den += (t[i] - mt) ^ 2 }
    slope = den > 0 ? num / den : 0
    per_hour = slope * 3600
    printf "steady samples: %d (t=%ds..%ds), RSS %.1f MiB at the first, %.1f MiB at the last; warm-up: the first %d; judged: the last %d\n", n, t[1], t[n], r[1], r[n], int(n / 3), m
    printf "last third (t=%ds..%ds): mean RSS %.1f MiB, slope %.3f MiB/min (%.1f MiB/h = %.2f%% of the mean per hour; limit %s%%)\n", t[from], t[n], mr, slope * 60, per_hour, 100 * per_hour / mr, pct
    if (per_hour < pct / 100 * mr) { print "verdict: FLAT"; exit 0 }
    print "verdict: GROWING"; exit 2
  }' "$OUT/samples.csv"
