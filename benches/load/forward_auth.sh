#!/usr/bin/env bash
# Forward-auth against nginx + Lua, interleaved rounds on the pinned setup (#22): the same
# RS256 Bearer token (repeated: the gateway's cache hit; the Lua verifier checks the
# signature every time, as lua-resty-jwt does) through
#   A: nginx with auth_request to the gateway's [forward_auth] endpoint (the documented
#      snippet, config/front-proxies/nginx.conf, addresses filled in), and
#   B: nginx verifying the JWT itself in Lua (the shared harness's LuaJIT-FFI verifier,
#      ../shared/bench/conf/jwt_ffi.lua, Debian's libnginx-mod-http-lua).
# A's nginx and gateway (one worker each) and B's nginx share CPU 0; wrk and the upstream
# nginx run on CPU 1. Prints every round, the mean requests a second of each side and their
# ratio, and the CPU a request (A: nginx and gateway together).
#
#   bash benches/load/forward_auth.sh [--rounds N] [--seconds S] [BIN]
#
# Needs nginx (auth_request), libnginx-mod-http-lua, lua-cjson, wrk, taskset, python3 with
# `cryptography`; installs the Debian packages that are missing. Loopback only.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
rounds=6 secs=5
while [ $# -gt 0 ]; do
    case $1 in
        --rounds) rounds=$2; shift 2 ;;
        --seconds) secs=$2; shift 2 ;;
        *) break ;;
    esac
done
bin=${1:-$root/target/release/portcullis}
[ -x "$bin" ] || { echo "missing $bin: bash scripts/pgo-build.sh or cargo build --release" >&2; exit 1; }
lua_lib=${BENCH_DIR:-$root/../shared/bench}/conf/jwt_ffi.lua
[ -f "$lua_lib" ] || { echo "missing $lua_lib (the shared peer harness)" >&2; exit 1; }
source "$here/lib.sh"
missing=()
[ -f /usr/lib/nginx/modules/ngx_http_lua_module.so ] || missing+=(libnginx-mod-http-lua)
[ -f /usr/lib/x86_64-linux-gnu/lua/5.1/cjson.so ] || missing+=(lua-cjson)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
install_packages ${missing[@]+"${missing[@]}"}

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for f in "$work"/*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
read -r port_up port_gw port_a port_b < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])')

upstream_nginx "$work" "$port_up"
taskset -p -c 1 "$(cat "$work/nginx.pid")" >/dev/null
for w in $(pgrep -P "$(cat "$work/nginx.pid")"); do taskset -p -c 1 "$w" >/dev/null; done

# One RS256 token and its key, for both sides.
mkdir -p "$work/keys"
python3 "$root/scripts/tokens.py" rs256 "$work/keys" 1 > "$work/rs.txt"
python3 "$root/scripts/tokens.py" es256 "$work/keys" 1 > /dev/null
cp "$work/keys/rs.pub.pem" "$work/keys/rs256.pub.pem"
cp "$work/keys/es.pub.pem" "$work/keys/es256.pub.pem"
token=$(head -1 "$work/rs.txt")

# The gateway: forward-auth for nginx on loopback, the RS256 route.
{
    gateway_toml "$port_gw" "$port_up" 'trusted_proxies = ["127.0.0.1/32"]'
    jwt_route_toml rs RS256 "$work/keys/rs.pub.pem"
    printf '[forward_auth]\n'
} > "$work/gw.toml"
LOAD_SECRET=unused-secret-of-32-bytes-xxxxxxxx RUST_LOG=warn taskset -c 0 "$bin" serve \
    --config "$work/gw.toml" --workers 1 > "$work/gw.log" 2>&1 &
pid_gw=$!; pids+=("$pid_gw")

# A: the documented snippet with the addresses filled in.
sed -e "s/portcullis:9000/127.0.0.1:$port_gw/g" -e "s/app:8080/127.0.0.1:$port_up/g" \
    -e "s/listen 80;/listen 127.0.0.1:$port_a;/" "$root/config/front-proxies/nginx.conf" \
    > "$work/site-a.conf"
cat > "$work/nginx-a.conf" <<NGINX
worker_processes 1;
worker_cpu_affinity 01;
pid $work/nginx-a.pid;
error_log $work/nginx-a.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000; include $work/site-a.conf; }
NGINX
nginx -c "$work/nginx-a.conf"

# B: nginx verifying in Lua, like the shared harness's lua-jwt-rs256 row.
mkdir -p "$work/conf"
cp "$lua_lib" "$work/conf/jwt_ffi.lua"
cat > "$work/nginx-b.conf" <<NGINX
load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;
worker_processes 1;
worker_cpu_affinity 01;
pid $work/nginx-b.pid;
error_log $work/nginx-b.err;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    lua_package_path "$work/conf/?.lua;;";
    lua_package_cpath "/usr/lib/x86_64-linux-gnu/lua/5.1/?.so;;";
    init_worker_by_lua_block { require("jwt_ffi").init("$work/keys", "unused") }
    upstream up { server 127.0.0.1:$port_up; keepalive 128; }
    server {
        listen 127.0.0.1:$port_b;
        proxy_http_version 1.1;
        set \$jwt_sub "";
        location /rs { access_by_lua_block { require("jwt_ffi").verify("RS256", "bearer") }
            proxy_set_header Connection ""; proxy_set_header X-Auth-User \$jwt_sub; proxy_pass http://up; }
    }
}
NGINX
# nginx's worker (user nobody) reads the Lua module and the keys.
chmod -R a+rX "$work"
nginx -c "$work/nginx-b.conf"
sleep 0.5
for port in $port_a $port_b; do
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" "http://127.0.0.1:$port/rs/")
    [ "$code" = 200 ] || { echo "port $port answered $code, not 200" >&2; cat "$work"/*.err "$work/gw.log" >&2; exit 1; }
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/rs/")
    [ "$code" = 401 ] || { echo "port $port answered $code without a token, not 401" >&2; exit 1; }
done
pid_a=$(pgrep -P "$(cat "$work/nginx-a.pid")" | head -1)
pid_b=$(pgrep -P "$(cat "$work/nginx-b.pid")" | head -1)

cpu_ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo $t; }
# round PORT PIDS...: "req/s cpu_us_per_request"
round() {
    local port=$1; shift
    taskset -c 1 wrk -t1 -c64 -d1s -H "Authorization: Bearer $token" "http://127.0.0.1:$port/rs/" >/dev/null
    local c0 c1 n
    c0=$(cpu_ticks "$@")
    n=$(taskset -c 1 wrk -t1 -c64 -d"${secs}s" -H "Authorization: Bearer $token" "http://127.0.0.1:$port/rs/" |
        awk '/requests in/ {print $1}')
    c1=$(cpu_ticks "$@")
    awk -v n="$n" -v s="$secs" -v c=$((c1 - c0)) -v hz="$(getconf CLK_TCK)" \
        'BEGIN {printf "%.0f %.1f\n", n / s, c * 1e6 / hz / n}'
}
echo "A nginx auth_request -> Portcullis forward-auth ($bin) against B nginx + Lua JWT; RS256, one token; $rounds rounds of ${secs}s, pinned"
results=()
for i in $(seq 1 "$rounds"); do
    if [ $((i % 2)) -eq 1 ]; then order="a b"; else order="b a"; fi
    for side in $order; do
        if [ "$side" = a ]; then r=$(round $port_a "$pid_a" "$pid_gw"); else r=$(round $port_b "$pid_b"); fi
        echo "round $i $side: $r" | awk '{printf "round %s %s %8d req/s %6.1f us CPU/req\n", $2, toupper($3), $4, $5}'
        results+=("$side $r")
    done
done
printf '%s\n' "${results[@]}" | awk '
    { rate[$1] += $2; cpu[$1] += $3; n[$1]++ }
    END { printf "mean A %d req/s %.1f us; mean B %d req/s %.1f us; A/B req/s %.2fx, CPU per request %.2fx\n",
          rate["a"] / n["a"], cpu["a"] / n["a"], rate["b"] / n["b"], cpu["b"] / n["b"],
          (rate["a"] / n["a"]) / (rate["b"] / n["b"]), (cpu["a"] / n["a"]) / (cpu["b"] / n["b"]) }'
