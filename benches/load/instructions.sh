#!/usr/bin/env bash
# User-space instructions per proxied request, under callgrind: a count that does not move
# with the VM's noise, so a change worth 5% shows up where wrk's ±10-25% hides it.
#
#   bash benches/load/instructions.sh [BIN]     # default target/release/portcullis
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
# Needs valgrind, nginx, wrk, python3, curl (apt-get install valgrind nginx wrk).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
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

measure() { # measure LABEL PATH [header]
    local label=$1 path=$2; shift 2
    LOAD_SECRET=$secret RUST_LOG=warn valgrind --tool=callgrind \
        --callgrind-out-file="$work/cg.%p" "$bin" serve --config "$work/gw.toml" --workers 1 \
        > "$work/gw.log" 2>&1 &
    local vg=$!
    echo $vg > "$work/vg.pid"
    wait_ready "http://127.0.0.1:$port_gw/plain/" || { echo "the gateway did not start" >&2; exit 1; }
    wrk -t1 -c16 -d3s "$@" "http://127.0.0.1:$port_gw$path" > /dev/null
    callgrind_control -z $vg > /dev/null 2>&1
    local n
    n=$(wrk -t1 -c16 -d6s "$@" "http://127.0.0.1:$port_gw$path" | awk '/requests in/ {print $1}')
    callgrind_control -d $vg > /dev/null 2>&1
    kill $vg; wait $vg 2>/dev/null || true
    local ir
    ir=$(callgrind_annotate "$(ls "$work"/cg.$vg.* | head -1)" | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
    rm -f "$work"/cg.*
    printf '%-28s %8d requests  %7d instructions/request\n' "$label" "$n" $((ir / n))
}
measure "public route" /plain/
measure "HS256 Bearer, cache hit" /hs/ -H "Authorization: Bearer $token"
measure "public, new connection each" /plain/ -H "Connection: close"
