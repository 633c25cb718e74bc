#!/usr/bin/env bash
# Memory with many idle keep-alive connections: the gateway's RSS with 10,000 and with
# 100,000 idle HTTP/1 client connections (one request each, then silence), each count on a
# freshly started gateway in front of a local nginx. Targets (#24): 10k <= 64 MiB,
# 100k <= 400 MiB. Raises the fd limit to 250000 when it may (root with CAP_SYS_RESOURCE);
# where the hard limit is lower (containers), a count that does not fit is measured at the
# largest that does, and the line says so with the cost per connection. ~2 min.
#
#   bash benches/load/idle.sh [path/to/portcullis]      (COUNTS="10000 100000")
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=${1:-$root/target/release/portcullis}
for c in nginx python3 curl; do
    command -v "$c" >/dev/null || { echo "missing $c (apt-get install nginx python3 curl)" >&2; exit 1; }
done
[ -x "$bin" ] || { echo "missing $bin: cargo build --release" >&2; exit 1; }
ulimit -Hn 250000 2>/dev/null || true
ulimit -n "$(ulimit -Hn)"
limit=$(( $(ulimit -n) - 1000 ))
source "$here/../../scripts/lib.sh"
work=$(mktemp -d)
trap 'kill $(cat "$work"/*.pid 2>/dev/null) 2>/dev/null || true; rm -rf "$work"' EXIT
port_up=18581; port_gw=18591; port_admin=18592
upstream_nginx "$work" $port_up 25000
gateway_toml $port_gw $port_up "admin = \"127.0.0.1:$port_admin\"
header_read_timeout = \"300s\"
max_connections = 120000" > "$work/gw.toml"
for asked in ${COUNTS:-10000 100000}; do
    count=$asked
    if [ "$count" -gt "$limit" ]; then
        count=$limit
        echo "($asked connections need an fd limit above $(ulimit -n), which this machine does not allow; measuring $count)"
    fi
    LOAD_SECRET=$(printf "%064d" 0) RUST_LOG=warn "$bin" serve --config "$work/gw.toml" > "$work/gw.log" 2>&1 &
    echo $! > "$work/gw.pid"
    gw_pid=$(cat "$work/gw.pid")
    wait_ready "http://127.0.0.1:$port_gw/plain/" || { echo "the gateway did not start" >&2; cat "$work/gw.log" >&2; exit 1; }
    python3 "$here/idle_conns.py" 127.0.0.1 $port_gw "$count" "$gw_pid" $port_admin
    kill "$gw_pid"; wait "$gw_pid" 2>/dev/null || true; rm -f "$work/gw.pid"
done
