#!/usr/bin/env bash
# Simulated cache and branch misses per proxied request, the gateway's public route against
# nginx's plain proxy, each with one worker under valgrind's cachegrind (--cache-sim=yes
# --branch-sim=yes; the caches modelled are this machine's). Cachegrind cannot zero its
# counters mid-run, so each proxy runs twice, with 2 s and with 2 + 8 s of wrk -c16, and a
# request's cost is the difference of the two runs' totals over the difference of their
# requests (start-up and shutdown cancel out). For questions instructions.sh cannot answer:
# why two builds, or two proxies, with the same instruction count differ in time. A model,
# not the CPU: atomics, TLB misses and the like are not in it.
#
#   bash benches/load/cachesim.sh [--close] [BIN]   # default target/release/portcullis; ~3 minutes
#
# --close: every request asks `Connection: close`, so each is a new connection (accept,
# the first read, a new hyper connection, close).
#
# Prints, per request: Ir (instructions), I1mr (L1 instruction misses), D1mr / D1mw (L1
# data read / write misses), DLmr / DLmw (last level), Bcm / Bim (mispredicted conditional /
# indirect branches). Needs valgrind, nginx, wrk, python3, curl.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
close=()
[ "${1:-}" != --close ] || { close=(-H "Connection: close"); shift; }
bin=${1:-$root/target/release/portcullis}
source "$here/lib.sh"
for c in valgrind nginx wrk python3 curl; do
    command -v "$c" >/dev/null || { echo "missing $c (apt-get install valgrind nginx wrk)" >&2; exit 1; }
done
[ -x "$bin" ] || { echo "missing $bin: bash scripts/pgo-build.sh (the shipped build) or cargo build --release" >&2; exit 1; }

work=$(mktemp -d)
trap 'for f in "$work"/*.pid; do kill "$(cat "$f")" 2>/dev/null || true; done; sleep 0.5; rm -rf "$work"' EXIT
port_up=18781 port_proxy=18791
upstream_nginx "$work" $port_up
LOAD_SECRET=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
export LOAD_SECRET
gateway_toml $port_proxy $port_up > "$work/gw.toml"
nginx_proxy_conf "$work" $port_proxy $port_up "daemon off; master_process off;" > "$work/proxy.conf"

# run gateway|nginx SECONDS: prints "requests <cachegrind summary counts>" for one run.
run() {
    local who=$1 secs=$2 out=$work/cg.out vg n m=0
    rm -f "$out"
    if [ "$who" = gateway ]; then
        RUST_LOG=warn valgrind --tool=cachegrind --cache-sim=yes --branch-sim=yes \
            --cachegrind-out-file="$out" "$bin" serve --config "$work/gw.toml" --workers 1 \
            > "$work/vg.log" 2>&1 &
    else
        valgrind --tool=cachegrind --cache-sim=yes --branch-sim=yes \
            --cachegrind-out-file="$out" nginx -c "$work/proxy.conf" > "$work/vg.log" 2>&1 &
    fi
    vg=$!
    wait_ready "http://127.0.0.1:$port_proxy/plain/" || { echo "nothing answers on $port_proxy" >&2; exit 1; }
    n=$(wrk -t1 -c16 -d2s "${close[@]}" "http://127.0.0.1:$port_proxy/plain/" | awk '/requests in/ {print $1}')
    [ "$secs" = 0 ] || m=$(wrk -t1 -c16 -d"${secs}s" "${close[@]}" "http://127.0.0.1:$port_proxy/plain/" | awk '/requests in/ {print $1}')
    # The gateway drains on SIGTERM; nginx without a master stops gracefully on SIGQUIT.
    if [ "$who" = gateway ]; then kill -TERM $vg; else kill -QUIT $vg; fi
    wait $vg 2>/dev/null || true
    [ -s "$out" ] || { echo "cachegrind wrote nothing for $who:" >&2; tail "$work/vg.log" >&2; exit 1; }
    echo "$((n + m)) $(awk '/^summary:/ {$1 = ""; print}' "$out")"
}
for who in gateway nginx; do
    short=$(run $who 0)
    long=$(run $who 8)
    python3 - "$who" "$short" "$long" <<'PY'
import sys
who, short, long = sys.argv[1], [int(x) for x in sys.argv[2].split()], [int(x) for x in sys.argv[3].split()]
names = "Ir I1mr ILmr Dr D1mr DLmr Dw D1mw DLmw Bc Bcm Bi Bim".split()
n = long[0] - short[0]
per = dict(zip(names, ((b - a) / n for a, b in zip(short[1:], long[1:]))))
print(f"{who:8} {n:6d} requests  " + "  ".join(
    f"{k} {per[k]:.0f}" for k in "Ir I1mr D1mr D1mw DLmr DLmw Bcm Bim".split()))
PY
done
