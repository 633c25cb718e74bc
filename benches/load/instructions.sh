#!/usr/bin/env bash
# User-space instructions per proxied request, under callgrind: a count that does not move
# with the VM's noise, so a change worth 5% shows up where wrk's ±10-25% hides it.
#
#   bash benches/load/instructions.sh [BIN]           # default target/release/portcullis
#   bash benches/load/instructions.sh --floor [BIN]   # the same against nginx and the floor
#
# Runs the gateway (one worker) under valgrind --tool=callgrind in front of a local nginx,
# warms up, zeroes the counters, sends wrk -c16 for 6 s, and divides the instructions by the
# requests wrk completed. Rows: the public route and a cached HS256 Bearer token (one token
# repeated: the worker's memo answers it; a token that misses the memo is hashed with
# SHA-256, which runs without SHA-NI under valgrind and would over-weight the digest), and
# the public route with `Connection: close` (a new connection per request: accept, first
# read, a new hyper connection, close). The
# kernel's share (about half the CPU) is not counted: compare builds with this, and compare
# with nginx with the load harness.
#
# --floor: where the gateway's count sits between its parts. Four servers, each on keep-alive
# and on a new connection per request: nginx answering the request itself (the upstream's
# `return 200`), `benches/floor.rs` answering the same with hyper and tokio and nothing else
# (built here with `cargo bench --no-run`), nginx proxying to the upstream, and the gateway's
# public route. The floor's count is what any server on hyper and tokio pays; a proxy's
# count minus its own server's floor is what its proxying costs.
# Needs valgrind, nginx, wrk, python3, curl (apt-get install valgrind nginx wrk).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
floor=false
[ "${1:-}" = --floor ] && { floor=true; shift; }
bin=${1:-$root/target/release/portcullis}
source "$here/lib.sh"
for c in valgrind callgrind_annotate callgrind_control nginx wrk python3 curl; do
    command -v "$c" >/dev/null || { echo "missing $c (apt-get install valgrind nginx wrk)" >&2; exit 1; }
done
[ -x "$bin" ] || { echo "missing $bin: bash scripts/pgo-build.sh (the shipped build) or cargo build --release" >&2; exit 1; }

work=$(mktemp -d)
trap 'kill $(cat "$work"/*.pid 2>/dev/null) 2>/dev/null || true; rm -rf "$work"' EXIT
port_up=18581; port_gw=18591
upstream_nginx "$work" $port_up
secret=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
gateway_toml $port_gw $port_up > "$work/gw.toml"
token=$(python3 "$here/../../scripts/tokens.py" hs256 "$secret" 1)

# callgrind_rate LABEL READY_URL URL [WRK ARGS...]: the server $vg runs under callgrind; once
# READY_URL answers 2xx, warms it up on URL, counts 6 s of wrk, stops it, prints the
# instructions per request.
callgrind_rate() {
    local label=$1 ready=$2 url=$3; shift 3
    echo $vg > "$work/vg.pid"
    wait_ready "$ready" || { echo "$label: no answer from $ready" >&2; exit 1; }
    wrk -t1 -c16 -d3s "$@" "$url" > /dev/null
    callgrind_control -z $vg > /dev/null 2>&1
    local n
    n=$(wrk -t1 -c16 -d6s "$@" "$url" | awk '/requests in/ {print $1}')
    callgrind_control -d $vg > /dev/null 2>&1
    kill $vg; wait $vg 2>/dev/null || true
    rm -f "$work/vg.pid"
    local ir
    ir=$(callgrind_annotate "$(ls "$work"/cg.$vg.* | head -1)" | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
    rm -f "$work"/cg.*
    printf '%-44s %8d requests  %7d instructions/request\n' "$label" "$n" $((ir / n))
}

# An array, not a function: `$!` of a function run in the background is its subshell's.
callgrind=(valgrind --tool=callgrind --callgrind-out-file="$work/cg.%p")

measure() { # measure LABEL PATH [header]
    local label=$1 path=$2; shift 2
    LOAD_SECRET=$secret RUST_LOG=warn "${callgrind[@]}" "$bin" serve --config "$work/gw.toml" \
        --workers 1 > "$work/gw.log" 2>&1 &
    vg=$!
    callgrind_rate "$label" "http://127.0.0.1:$port_gw/plain/" "http://127.0.0.1:$port_gw$path" "$@"
}

if ! $floor; then
    measure "public route" /plain/
    measure "HS256 Bearer, cache hit" /hs/ -H "Authorization: Bearer $token"
    measure "public, new connection each" /plain/ -H "Connection: close"
    exit 0
fi

floor_bin=$(cd "$root" && cargo bench --bench floor --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("executable") and m["target"]["name"] == "floor": print(m["executable"])')
[ -x "$floor_bin" ] || { echo "could not build benches/floor.rs (cargo bench --bench floor --no-run)" >&2; exit 1; }
port_self=18601; port_floor=18611; port_np=18621
cat > "$work/self.conf" <<NGINX
worker_processes 1; daemon off; master_process off;
pid $work/nginx-self.pid;
error_log $work/nginx-self-error.log;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$port_self; location / { return 200 "ok user=\$http_x_auth_user\n"; } } }
NGINX
nginx_proxy_conf "$work" $port_np $port_up "daemon off; master_process off;" > "$work/np.conf"
for each in "" close; do
    args=(); suffix="keep-alive"
    [ -n "$each" ] && { args=(-H "Connection: close"); suffix="new connection each"; }
    "${callgrind[@]}" nginx -c "$work/self.conf" > /dev/null 2>&1 & vg=$!
    callgrind_rate "nginx answering, $suffix" "http://127.0.0.1:$port_self/plain/" "http://127.0.0.1:$port_self/plain/" "${args[@]}"
    "${callgrind[@]}" "$floor_bin" $port_floor > /dev/null 2>&1 & vg=$!
    callgrind_rate "hyper + tokio floor, $suffix" "http://127.0.0.1:$port_floor/plain/" "http://127.0.0.1:$port_floor/plain/" "${args[@]}"
    "${callgrind[@]}" nginx -c "$work/np.conf" > /dev/null 2>&1 & vg=$!
    callgrind_rate "nginx proxying, $suffix" "http://127.0.0.1:$port_np/plain/" "http://127.0.0.1:$port_np/plain/" "${args[@]}"
    measure "gateway public route, $suffix" /plain/ "${args[@]}"
done
