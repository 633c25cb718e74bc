#!/usr/bin/env bash
# WebSocket through the gateway against nginx's WebSocket proxy, interleaved rounds on the
# pinned setup: each proxy on CPU 0 (one worker), the echo app and the load client (node,
# the `ws` package) on CPU 1. A round is SECONDS of ping-pong on CONNS sockets with
# BYTES-byte binary messages; it reports round trips a second and the proxy's CPU per round
# trip (two messages through the proxy). The load client is the bottleneck of both rows, so
# the CPU column is the comparison.
#
#   bash benches/load/ws.sh [--rounds N] [--seconds S] [--conns C] [--bytes B] [BIN]
#
# Needs nginx, node with npm (the `ws` package is installed into benches/load/ws), taskset.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
rounds=6 secs=5 conns=32 bytes=128
while [ $# -gt 0 ]; do
    case $1 in
        --rounds) rounds=$2; shift 2 ;;
        --seconds) secs=$2; shift 2 ;;
        --conns) conns=$2; shift 2 ;;
        --bytes) bytes=$2; shift 2 ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
        *) break ;;
    esac
done
bin=${1:-$root/target/release/portcullis}
for c in nginx node npm taskset curl; do
    command -v "$c" >/dev/null || { echo "missing $c" >&2; exit 1; }
done
[ -x "$bin" ] || { echo "missing $bin: bash scripts/pgo-build.sh or cargo build --release" >&2; exit 1; }
[ -d "$here/ws/node_modules/ws" ] || (cd "$here/ws" && npm ci --no-audit --no-fund >/dev/null)
source "$here/lib.sh"

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -f "$work/nginx-proxy.pid" ] && kill "$(cat "$work/nginx-proxy.pid")" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
port_app=18781 port_gw=18791 port_nginx=18792

taskset -c 1 node "$here/ws/ws.mjs" serve $port_app & pids+=($!)
cat > "$work/gw.toml" <<TOML
[server]
http = "127.0.0.1:$port_gw"
watch_config = false
[upstreams.app]
url = "http://127.0.0.1:$port_app"
[[routes]]
name = "ws"
path_prefix = "/"
upstream = "app"
auth = "public"
websocket = true
TOML
RUST_LOG=warn taskset -c 0 "$bin" serve --config "$work/gw.toml" --workers 1 > "$work/gw.log" 2>&1 &
pid_a=$!; pids+=($pid_a)
cat > "$work/nginx-proxy.conf" <<NGINX
worker_processes 1;
worker_cpu_affinity 01;
pid $work/nginx-proxy.pid;
error_log $work/nginx-proxy-error.log;
events { worker_connections 4096; }
http { access_log off;
  server { listen 127.0.0.1:$port_nginx;
    location / { proxy_pass http://127.0.0.1:$port_app; proxy_http_version 1.1;
      proxy_set_header Upgrade \$http_upgrade; proxy_set_header Connection "upgrade";
      proxy_read_timeout 600s; } } }
NGINX
nginx -c "$work/nginx-proxy.conf"
sleep 0.5
pid_b=$(pgrep -P "$(cat "$work/nginx-proxy.pid")" | head -1)
# Listening is enough (the echo app answers only WebSocket handshakes).
for port in $port_gw $port_nginx; do
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.1
    done
done

# round PID PORT: "round_trips_per_s cpu_us_per_round_trip"
round() {
    local pid=$1 port=$2 u0 s0 u1 s1 out n elapsed
    read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$pid/stat")
    out=$(taskset -c 1 node "$here/ws/ws.mjs" load "ws://127.0.0.1:$port/echo" "$conns" "$secs" "$bytes")
    read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$pid/stat")
    n=$(awk '{print $2}' <<<"$out"); elapsed=$(awk '{print $4}' <<<"$out")
    awk -v n="$n" -v t="$elapsed" -v c=$((u1 + s1 - u0 - s0)) -v hz="$(getconf CLK_TCK)" \
        'BEGIN {printf "%.0f %.2f\n", n / t, c * 1e6 / hz / n}'
}
echo "A gateway ($bin) against B nginx, WebSocket ping-pong, $conns sockets, $bytes-byte messages, $rounds rounds of ${secs}s"
results=()
for i in $(seq 1 "$rounds"); do
    if [ $((i % 2)) -eq 1 ]; then order="a b"; else order="b a"; fi
    for side in $order; do
        if [ "$side" = a ]; then r=$(round "$pid_a" $port_gw); else r=$(round "$pid_b" $port_nginx); fi
        echo "round $i $side: $r" | awk '{printf "round %s %s %8d round trips/s %6.2f us CPU/round trip\n", $2, toupper($3), $4, $5}'
        results+=("$side $r")
    done
done
printf '%s\n' "${results[@]}" | awk '
    { rate[$1] += $2; cpu[$1] += $3; n[$1]++ }
    END { printf "mean A %d round trips/s %.2f us; mean B %d round trips/s %.2f us; A/B rate %.2fx, CPU per round trip %.2fx\n",
          rate["a"] / n["a"], cpu["a"] / n["a"], rate["b"] / n["b"], cpu["b"] / n["b"],
          (rate["a"] / n["a"]) / (rate["b"] / n["b"]), (cpu["a"] / n["a"]) / (cpu["b"] / n["b"]) }'
