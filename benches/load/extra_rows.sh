#!/usr/bin/env bash
# Rows the shared peer table does not have, measured in one run against one nginx upstream:
#   - HS256 and EdDSA with 10,000 distinct tokens (every request a cache miss at first);
#   - TLS: keep-alive req/s, and handshakes/s (a new TLS connection per request), beside
#     nginx terminating TLS in front of the same upstream;
#   - scaling: the public route with --workers 1 and --workers 2;
#   - the public route's p99 against the upstream's own (direct) p99.
# All processes share the machine's cores (no pinning); loopback only; ~2 min.
#
#   bash benches/load/extra_rows.sh [path/to/portcullis]     (ROW_SECONDS=10 by default)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=${1:-$root/target/release/portcullis}
secs=${ROW_SECONDS:-10}
for c in wrk nginx python3 curl; do
    command -v "$c" >/dev/null || { echo "missing $c (apt-get install wrk nginx python3 curl)" >&2; exit 1; }
done
[ -x "$bin" ] || { echo "missing $bin: bash scripts/pgo-build.sh (the shipped build) or cargo build --release" >&2; exit 1; }
source "$here/lib.sh"

work=$(mktemp -d)
gw_pid=""
trap cleanup_work EXIT
port_up=18481; port_tls_nginx=18482; port_nginx=18483; port_gw=18491; port_gw_tls=18492
cp "$root/config/dev/tls.crt" "$root/config/dev/tls.key" "$work/"
cat > "$work/nginx.conf" <<NGINX
worker_processes auto;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  upstream app { server 127.0.0.1:$port_up; keepalive 64; }
  server { listen 127.0.0.1:$port_up; location / { return 200 "ok user=\$http_x_auth_user\n"; } }
  server { listen 127.0.0.1:$port_nginx;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; } }
  server { listen 127.0.0.1:$port_tls_nginx ssl; ssl_certificate $work/tls.crt; ssl_certificate_key $work/tls.key;
    ssl_session_cache shared:SSL:1m;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
NGINX
nginx -c "$work/nginx.conf"

secret=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
python3 "$here/../../scripts/tokens.py" hs256 "$secret" 10000 > "$work/hs.txt"
python3 "$here/../../scripts/tokens.py" eddsa "$work" 10000 > "$work/ed.txt"
{
    gateway_toml $port_gw $port_up "https = \"127.0.0.1:$port_gw_tls\"
token_cache_size = 50000"
    cat <<TOML
[tls]
cert = "tls.crt"
key = "tls.key"
TOML
    jwt_route_toml ed EdDSA ed.pub.pem
} > "$work/gw.toml"

start_gateway() {
    LOAD_SECRET=$secret RUST_LOG=warn "$bin" serve --config "$work/gw.toml" --workers "$1" > "$work/gw.log" 2>&1 &
    gw_pid=$!
    wait_ready "http://127.0.0.1:$port_gw/plain/" && return
    echo "the gateway did not start:" >&2; cat "$work/gw.log" >&2; exit 1
}
stop_gateway() { kill "$gw_pid"; wait "$gw_pid" 2>/dev/null || true; gw_pid=""; }

# row NAME URL [wrk options...] [-- script args...]: one wrk run, one table line.
row() {
    local name=$1 url=$2; shift 2
    local opts=() script_args=()
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do opts+=("$1"); shift; done
    [ $# -gt 0 ] && { shift; script_args=(-- "$@"); }
    local out
    out=$(wrk -t2 -c64 -d"${secs}s" --latency "${opts[@]}" "$url" "${script_args[@]}" 2>&1)
    local rps p50 p99 errors
    rps=$(awk '/Requests\/sec/ {printf "%.0f", $2}' <<<"$out")
    p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
    p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
    errors=$(awk '/Non-2xx|Socket errors/ {printf "%s ", $0}' <<<"$out")
    printf "%-44s %10s %10s %10s  %s\n" "$name" "$rps" "$p50" "$p99" "$errors"
    echo "$rps" > "$work/rps-$(tr -c 'a-z0-9' _ <<<"$name")"
}
rps_of() { cat "$work/rps-$(tr -c 'a-z0-9' _ <<<"$1")"; }
lua=${BENCH_DIR:-$root/../shared/bench}/lib/many_tokens.lua
[ -f "$lua" ] || { echo "missing $lua (the shared peer harness)" >&2; exit 1; }

printf "%-44s %10s %10s %10s\n" "row (wrk -t2 -c64, ${secs}s, shared cores)" "req/s" "p50" "p99"
row "direct to upstream" "http://127.0.0.1:$port_up/plain/"
start_gateway 2
row "portcullis public route" "http://127.0.0.1:$port_gw/plain/"
row "portcullis HS256, 10k distinct tokens" "http://127.0.0.1:$port_gw/hs/" -s "$lua" -- "$work/hs.txt" bearer 2
row "portcullis EdDSA, 10k distinct tokens" "http://127.0.0.1:$port_gw/ed/" -s "$lua" -- "$work/ed.txt" bearer 2
row "nginx plain proxy, new connection per request" "http://127.0.0.1:$port_nginx/plain/" -H "Connection: close"
row "portcullis public, new connection per request" "http://127.0.0.1:$port_gw/plain/" -H "Connection: close"
row "nginx TLS proxy, keep-alive" "https://127.0.0.1:$port_tls_nginx/plain/"
row "portcullis TLS public route, keep-alive" "https://127.0.0.1:$port_gw_tls/plain/"
row "nginx TLS, new connection per request" "https://127.0.0.1:$port_tls_nginx/plain/" -H "Connection: close"
row "portcullis TLS, new connection per request" "https://127.0.0.1:$port_gw_tls/plain/" -H "Connection: close"
stop_gateway
start_gateway 1
row "portcullis public route, --workers 1" "http://127.0.0.1:$port_gw/plain/"
stop_gateway
echo
python3 - "$(rps_of "portcullis public route")" "$(rps_of "portcullis public route, --workers 1")" \
    "$(rps_of "portcullis TLS public route, keep-alive")" "$(rps_of "nginx TLS proxy, keep-alive")" \
    "$(rps_of "portcullis TLS, new connection per request")" "$(rps_of "nginx TLS, new connection per request")" <<'PY'
import sys
two, one, tls, nginx_tls, hs, nginx_hs = (float(x) for x in sys.argv[1:])
print(f"scaling: 2 workers / 1 worker = {two / one:.2f}x")
print(f"TLS keep-alive: {tls / nginx_tls:.2f}x nginx; handshakes/s: {hs:.0f} vs nginx {nginx_hs:.0f} ({hs / nginx_hs:.2f}x)")
PY
