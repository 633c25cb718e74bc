#!/usr/bin/env bash
# The load harness: Portcullis beside nginx and HAProxy (and any other peer of
# ../shared/bench that is installed), in one run, on loopback only, bounded in time.
#
#   bash benches/load/run.sh            # both CPU setups, 5 s rows (about 9 min after the build,
#                                       # scripts/pgo-build.sh, about 11 min)
#   BIN=target/release/portcullis bash benches/load/run.sh   # measure an existing build
#   bash benches/load/run.sh --quick    # shared setup, 3 s rows (~4 min)
#   PEERS="direct nginx haproxy lua gateway" bash benches/load/run.sh
#   RUNS=3 bash benches/load/run.sh     # the peer matrix three times (about 6 min a run):
#                                       # one run puts each row through the VM's drift once
#
# Prints the peer table (req/s, p50/p99, CPU us/request of the proxy, ratios to direct
# and nginx) from ../shared/bench/run-peers.sh, the rows it lacks (extra_rows.sh: HS256 and
# EdDSA with distinct tokens, TLS keep-alive and handshakes/s beside nginx, 1 vs 2 workers),
# then two memory checks of our own:
#   - RSS with IDLE_CONNS (default 10000) idle keep-alive client connections;
#   - RSS across a 60 s run of MANY_TOKENS (default 1000000) distinct HS256 tokens, which must
#     stay flat because the verified-token cache is bounded (token_cache_size, here 50000).
# Needs wrk, nginx, haproxy, python3 (install with bash ../shared/bench/install-peers.sh).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bench=${BENCH_DIR:-$root/../shared/bench}
[ -f "$bench/run-peers.sh" ] || { echo "missing $bench/run-peers.sh (the shared peer harness)" >&2; exit 1; }
for c in wrk nginx python3 curl; do
    command -v "$c" >/dev/null || { echo "missing $c: run bash $bench/install-peers.sh" >&2; exit 1; }
done
quick=0; [ "${1:-}" = "--quick" ] && quick=1
source "$here/lib.sh"

cd "$root"
# The binary under test is the shipped build: PGO, as the Dockerfile makes it (about 11
# minutes). BIN=path skips the build and measures that binary instead.
if [ -n "${BIN:-}" ]; then
    bin=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
    [ -x "$bin" ] || { echo "BIN=$BIN is not an executable" >&2; exit 1; }
else
    bash "$root/scripts/pgo-build.sh"
    bin=$root/target/release/portcullis
fi
out=${OUT:-${TMPDIR:-/tmp}/portcullis-load/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out"

# 1. The peer table (SKIP_PEERS=1: only the memory checks).
peers=${PEERS:-"direct nginx haproxy gateway"}
if [ "${SKIP_PEERS:-0}" = 1 ]; then
    echo "peer table skipped (SKIP_PEERS=1)"
elif [ $quick = 1 ]; then
    bash "$bench/run-peers.sh" --quick --peers "$peers" --portcullis "$bin" --out "$out/peers"
else
    # 5 s rows, 2 s latency runs, 1 s warm-up: both setups in about 6 minutes.
    bash "$bench/run-peers.sh" --setups "shared pinned" --duration "${DURATION:-5}" \
        --lat-duration "${LAT_DURATION:-2}" --warmup "${WARMUP:-1}" --runs "${RUNS:-1}" \
        --peers "$peers" --portcullis "$bin" --out "$out/peers"
fi

# 2. The rows the peer table lacks (SKIP_EXTRA=1 skips them).
if [ "${SKIP_EXTRA:-0}" != 1 ]; then
    echo
    echo "== rows the peer table lacks"
    ROW_SECONDS=$([ $quick = 1 ] && echo 3 || echo 5) bash "$here/extra_rows.sh" "$bin"
fi

# 3 and 4. Memory, against a local nginx upstream.
work=$(mktemp -d)
trap 'kill $(cat "$work"/*.pid 2>/dev/null) 2>/dev/null || true; rm -rf "$work"' EXIT
port_up=18381; port_gw=18391; port_admin=18392
upstream_nginx "$work" $port_up 25000
secret=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
gateway_toml $port_gw $port_up "admin = \"127.0.0.1:$port_admin\"
header_read_timeout = \"300s\"
max_connections = 20000
token_cache_size = 50000" > "$work/gw.toml"
ulimit -n 65536 2>/dev/null || true
LOAD_SECRET=$secret RUST_LOG=warn "$bin" serve --config "$work/gw.toml" > "$work/gw.log" 2>&1 &
echo $! > "$work/gw.pid"
gw_pid=$(cat "$work/gw.pid")
wait_ready "http://127.0.0.1:$port_gw/plain/" || { echo "the gateway did not start" >&2; exit 1; }
rss() { awk '/VmRSS/ {print $2}' "/proc/$gw_pid/status"; }

idle=${IDLE_CONNS:-10000}
before=$(rss)
python3 "$here/idle_conns.py" 127.0.0.1 $port_gw "$idle" "$gw_pid" $port_admin > "$work/idle.txt"
echo
echo "== idle keep-alive connections"
echo "RSS before: $((before / 1024)) MiB; $(cat "$work/idle.txt")"

many=${MANY_TOKENS:-1000000}
python3 "$here/../../scripts/tokens.py" hs256 "$secret" "$many" > "$work/tokens.txt"
duration=$([ $quick = 1 ] && echo 10 || echo 60)
echo
echo "== $many distinct HS256 tokens for ${duration}s (token_cache_size 50000)"
timeout $((duration + 30)) wrk -t2 -c64 -d${duration}s -s "$here/../../scripts/stream_tokens.lua" \
    "http://127.0.0.1:$port_gw/hs/" -- "$work/tokens.txt" 2 > "$work/wrk-many.txt" &
wrk_pid=$!
samples=()
for _ in $(seq "$duration"); do sleep 1; samples+=("$(rss)"); done
wait $wrk_pid || true
grep -E "requests in|Requests/sec|Non-2xx" "$work/wrk-many.txt" || echo "wrk failed: $(cat "$work/wrk-many.txt")"
python3 - "${samples[@]}" <<'PY'
import sys
s = [int(x) for x in sys.argv[1:]]
third = max(1, len(s) // 3)
warm = s[third:]
lo, hi = min(warm), max(warm)
print(f"RSS after warm-up: min {lo/1024:.1f} MiB, max {hi/1024:.1f} MiB, spread {100*(hi-lo)/lo:.1f}% (target: within 10%)")
PY
echo
echo "results: $out"
