#!/usr/bin/env bash
# Interleaved A/B on the pinned setup: the proxy under test on CPU 0 (one worker), the
# upstream nginx and wrk on CPU 1, rounds alternating A and B (A B B A A B ...), so that
# this VM's drift (the same row moves 10-25% between runs minutes apart) falls on both
# sides alike. Prints every round, then the mean req/s and CPU µs per request of each side
# (split into user and kernel time, with the TCP segments a request costs the machine) and
# the ratio of the means with the median and range of the per-round ratios, and a 95%
# interval for the ratios' geometric mean (Student t; more rounds, a narrower interval).
#
#   bash benches/load/ab.sh [--rounds N] [--seconds S] [BIN_A [BIN_B]]
#   bash benches/load/ab.sh [--rounds N] [--seconds S] --auth rs256|hs256|cookie|session [BIN_A [BIN_B]]
#   bash benches/load/ab.sh [--rounds N] [--seconds S] [--auth ...] --against nginx|direct [BIN_A]
#   bash benches/load/ab.sh [--rounds N] [--seconds S] --tls [--auth ...] [--against nginx] [BIN_A [BIN_B]]
#   bash benches/load/ab.sh [--rounds N] [--seconds S] --close [--tls] [...]   # a new connection per request
#   bash benches/load/ab.sh [--rounds N] [--seconds S] --upstream https|two [--against nginx] [...]
#   bash benches/load/ab.sh [--rounds N] [--seconds S] --assertion --auth rs256 BIN BIN   # A signs, B does not
#   bash benches/load/ab.sh [--rounds N] [--seconds S] --h2 [--auth rs256] [--against nginx] [...]
#   bash benches/load/ab.sh [--rounds N] [--seconds S] --handshakes full|resumed [--against nginx] [...]
#
# A is the gateway's public route (BIN_A, default target/release/portcullis). B is nginx's
# plain keep-alive proxy, or the public route of a second build BIN_B (compare two builds).
# With --auth, A is one token repeated (the verified-token cache hit) on the same gateway:
# an RS256 Bearer token, an HS256 Bearer token, or an RS256 token in cookie "session"; B is
# that gateway's public route (issue #7's "cache hit >= 0.95x own public route" and
# "cookie within 5% of Bearer"; the CPU column is the one process, measured per round), or
# (--auth session) a login session of `[login] store = "redis"` (a redis-server on CPU 1,
# the session written into it and its cookie sealed by session_cookie.py: no IdP), or
# the same request to a second build BIN_B. --against nginx makes B nginx's plain proxy with
# --auth too ("cache hit >= 1.0x nginx"); --against direct makes B wrk straight to the
# upstream (the latency reference: p99 at most 1 ms above direct; B's CPU column is then the
# upstream's). Every round also records wrk's p99, and the summary gives each side's median.
# --tls: every side is asked over TLS on keep-alive connections (the gateway's https
# listener with config/dev's certificate; nginx's `listen ssl` with the same certificate,
# TLS 1.2 and 1.3 enabled, and its other defaults), for "TLS >= 1.0x nginx TLS proxy"; not
# with --against direct.
# --close: every request asks `Connection: close`, so each one is a new connection (with
# --tls, a handshake; wrk resumes TLS sessions): the cost of accepting, not of keep-alive.
# --upstream https: every proxy reaches the upstream over TLS (config/dev's certificate,
# verified by both: the gateway's ca_file, nginx's proxy_ssl_verify; sessions reused).
# --upstream two: the upstream listens on two ports, and every proxy balances round robin
# over the two (the gateway's targets, nginx's upstream block).
# --assertion: A's gateway signs the identity assertion ([identity] assertion, ES256, a new
# P-256 key), B's does not; with one build given twice, the cost of the assertion.
# --h2: HTTP/2 over TLS, loaded by h2load (8 connections, 100 streams each) instead of wrk;
# nginx's TLS listener gets `http2` (its defaults: 128 streams a connection); no p99.
# --handshakes full|resumed: TLS 1.3, a new connection per request, loaded by benches/
# handshakes.rs (64 connections, X25519, built once by `cargo bench --no-run`) instead of
# wrk: every handshake full (ECDSA P-256 certificate), or resumed by ticket. That client
# checks no certificate or signature, so the server, not the client, is what a round loads
# (wrk resumes always, and an OpenSSL client's full handshake costs as much as the server's);
# no p99.
# Defaults: 6 rounds of 5 s (about 2 minutes). Loopback only; needs wrk, nginx, taskset
# (and python3 with `cryptography` for --auth rs256/cookie).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
rounds=6 secs=5 auth="" against="" tls=0 close=() upstream_kind="" assertion=0 h2=0 handshakes=""
while [ $# -gt 0 ]; do
    case $1 in
        --rounds) rounds=$2; shift 2 ;;
        --seconds) secs=$2; shift 2 ;;
        --auth) auth=$2; shift 2 ;;
        --against) against=$2; shift 2 ;;
        --tls) tls=1; shift ;;
        --h2) h2=1 tls=1; shift ;;
        --close) close=(-H "Connection: close"); shift ;;
        --handshakes) handshakes=$2 tls=1; shift 2 ;;
        --upstream) upstream_kind=$2; shift 2 ;;
        --assertion) assertion=1; shift ;;
        -h|--help) sed -n '2,52p' "$0"; exit 0 ;;
        *) break ;;
    esac
done
bin_a=${1:-$root/target/release/portcullis}
bin_b=${2:-}
case $against in
    "") ;;
    nginx | direct) [ -z "$bin_b" ] || { echo "--against takes one build" >&2; exit 1; } ;;
    *) echo "--against takes nginx or direct, not $against" >&2; exit 1 ;;
esac
[ "$tls" = 0 ] || [ "$against" != direct ] || { echo "--tls compares two TLS proxies; the upstream has no TLS (drop --against direct)" >&2; exit 1; }
case $handshakes in
    "" | full | resumed) ;;
    *) echo "--handshakes takes full or resumed, not $handshakes" >&2; exit 1 ;;
esac
[ -z "$handshakes" ] || [ "$h2" = 0 ] || { echo "--handshakes and --h2 are different loads" >&2; exit 1; }
case $upstream_kind in
    "" | https | two) ;;
    *) echo "--upstream takes https or two, not $upstream_kind" >&2; exit 1 ;;
esac
[ -z "$upstream_kind" ] || [ "$against" != direct ] || { echo "--upstream compares proxies (drop --against direct)" >&2; exit 1; }
case $auth in
    "" | rs256 | hs256 | cookie | session) ;;
    *) echo "--auth takes rs256, hs256, cookie or session, not $auth" >&2; exit 1 ;;
esac
needs=(wrk nginx taskset curl)
[ "$h2" = 0 ] || needs+=(h2load)
for c in "${needs[@]}"; do
    command -v "$c" >/dev/null || { echo "missing $c (apt-get install wrk nginx util-linux curl)" >&2; exit 1; }
done
for b in "$bin_a" ${bin_b:+"$bin_b"}; do
    [ -x "$b" ] || { echo "missing $b: bash scripts/pgo-build.sh (the shipped build) or cargo build --release" >&2; exit 1; }
done
[ "$(nproc)" -ge 2 ] || { echo "needs 2 CPUs (proxy on one, upstream and wrk on the other)" >&2; exit 1; }
source "$here/lib.sh"
if [ -n "$handshakes" ]; then
    # The handshake client, built (release profile) once; its path from cargo's JSON lines.
    hs_client=$(cd "$root" && cargo bench --bench handshakes --no-run --message-format=json 2>/dev/null |
        python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "handshakes" and m.get("executable"):
        print(m["executable"])')
    [ -x "$hs_client" ] || { echo "could not build benches/handshakes.rs (cargo bench --bench handshakes --no-run)" >&2; exit 1; }
    hs_mode=--full
    [ "$handshakes" = full ] || hs_mode=--resume
fi

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for f in "$work"/nginx*.pid "$work"/redis.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
port_up=18681 port_a=18691 port_b=18692
# What wrk asks on each side: plain HTTP on port_a/port_b, or the TLS listeners (--tls).
scheme=http load_a=$port_a load_b=$port_b
if [ "$tls" = 1 ]; then
    scheme=https load_a=18693 load_b=18694
fi
cp "$root/config/dev/tls.crt" "$root/config/dev/tls.key" "$work/"
# --upstream: the upstream's other listeners, and how each proxy reaches it.
port_up_tls=18682 port_up2=18683 up_lines=""
case $upstream_kind in
    https)
        # An app certificate for localhost from a CA of its own (what both proxies trust).
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=load-ca \
            -keyout "$work/ca.key" -out "$work/ca.crt" 2>/dev/null
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
            -keyout "$work/app.key" -out "$work/app.csr" 2>/dev/null
        printf 'subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n' > "$work/app.ext"
        openssl x509 -req -in "$work/app.csr" -CA "$work/ca.crt" -CAkey "$work/ca.key" -CAcreateserial \
            -days 2 -extfile "$work/app.ext" -out "$work/app.crt" 2>/dev/null
        up_lines="listen 127.0.0.1:$port_up_tls ssl; ssl_certificate $work/app.crt; ssl_certificate_key $work/app.key;" ;;
    two) up_lines="listen 127.0.0.1:$port_up2;" ;;
esac
# gateway_upstream FILE: points the gateway config's upstream at the --upstream kind.
gateway_upstream() {
    case $upstream_kind in
        https) sed -i "s|^url = \"http://127.0.0.1:$port_up\"|url = \"https://127.0.0.1:$port_up_tls\"\nca_file = \"$work/ca.crt\"\nserver_name = \"localhost\"|" "$1" ;;
        two) sed -i "s|^url = \"http://127.0.0.1:$port_up\"|targets = [\"http://127.0.0.1:$port_up\", \"http://127.0.0.1:$port_up2\"]|" "$1" ;;
    esac
}
# nginx_upstream FILE: the same for nginx's proxy config.
nginx_upstream() {
    case $upstream_kind in
        https) sed -i -e "s|server 127.0.0.1:$port_up;|server 127.0.0.1:$port_up_tls;|" \
            -e "s|proxy_pass http://app;|proxy_pass https://app; proxy_ssl_session_reuse on; proxy_ssl_verify on; proxy_ssl_trusted_certificate $work/ca.crt; proxy_ssl_name localhost;|" "$1" ;;
        two) sed -i "s|server 127.0.0.1:$port_up;|server 127.0.0.1:$port_up; server 127.0.0.1:$port_up2;|" "$1" ;;
    esac
}

# The upstream, one worker on CPU 1 (wrk shares it, as in the peer harness's pinned setup).
upstream_nginx "$work" $port_up 1024 "$up_lines"
sleep 0.3
taskset -p -c 1 "$(cat "$work/nginx.pid")" >/dev/null
for w in $(pgrep -P "$(cat "$work/nginx.pid")"); do taskset -p -c 1 "$w" >/dev/null; done

secret=ab-load-test-secret-of-32-bytes-xx
cookie_key=$(python3 -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())')
port_redis=18699
if [ "$auth" = session ]; then
    command -v redis-server >/dev/null || { echo "--auth session needs redis-server (apt-get install redis-server)" >&2; exit 1; }
    taskset -c 1 redis-server --port $port_redis --bind 127.0.0.1 --save "" --appendonly no \
        --daemonize yes --pidfile "$work/redis.pid" --dir "$work" > /dev/null
fi
start_gateway() { # BIN PORT [TLS_PORT]: a gateway with one worker on CPU 0; prints its pid
    if [ -n "${3:-}" ]; then
        gateway_toml "$2" $port_up "https = \"127.0.0.1:$3\"" > "$work/gw-$2.toml"
        printf '[tls]\ncert = "%s"\nkey = "%s"\n' "$work/tls.crt" "$work/tls.key" >> "$work/gw-$2.toml"
    else
        gateway_toml "$2" $port_up > "$work/gw-$2.toml"
    fi
    gateway_upstream "$work/gw-$2.toml"
    if [ -f "$work/rs.pub.pem" ]; then
        jwt_route_toml rs RS256 "$work/rs.pub.pem" >> "$work/gw-$2.toml"
        cookie_route_toml rs >> "$work/gw-$2.toml"
    fi
    if [ "$auth" = session ]; then
        cat >> "$work/gw-$2.toml" <<TOML
# The IdP is never asked: the session needs no login, and no refresh within the run.
[providers.sso]
issuer = "https://issuer.load"
audiences = ["load"]
algorithms = ["RS256"]
discovery = "http://127.0.0.1:9/"
[login]
provider = "sso"
client_id = "load"
client_secret_env = "LOAD_SECRET"
cookie_keys_env = "LOAD_COOKIE_KEYS"
store = "redis"
redis_url = "redis://127.0.0.1:$port_redis"
[[routes]]
name = "session"
path_prefix = "/session"
upstream = "app"
auth = "session"
TOML
    fi
    if [ "$assertion" = 1 ] && [ "$2" = "$port_a" ]; then
        [ -f "$work/assertion.pem" ] ||
            openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/assertion.pem" 2>/dev/null
        printf '[identity.assertion]\nkey_file = "%s"\n' "$work/assertion.pem" >> "$work/gw-$2.toml"
    fi
    LOAD_SECRET=$secret LOAD_COOKIE_KEYS=$cookie_key RUST_LOG=warn taskset -c 0 "$1" serve --config "$work/gw-$2.toml" --workers 1 \
        > "$work/gw-$2.log" 2>&1 &
    echo $!
}
# What side A asks for: the public route, or a cached token (--auth).
path_a=/plain/ header_a=()
case $auth in
    hs256) path_a=/hs/ header_a=(-H "Authorization: Bearer $(python3 "$here/../../scripts/tokens.py" hs256 "$secret" 1)") ;;
    session) path_a=/session/ ;; # the cookie is made once the gateway and Redis run
    rs256 | cookie)
        token=$(python3 "$here/../../scripts/tokens.py" rs256 "$work" 1)
        if [ "$auth" = rs256 ]; then
            path_a=/rs/ header_a=(-H "Authorization: Bearer $token")
        else
            path_a=/cookie/ header_a=(-H "Cookie: theme=dark; session=$token; lang=en")
        fi ;;
esac
tls_port() { [ "$tls" = 1 ] && echo "$1"; return 0; }
pid_a=$(start_gateway "$bin_a" $port_a "$(tls_port $load_a)"); pids+=("$pid_a")
path_b=/plain/ header_b=()
if [ "$against" = direct ]; then
    port_b=$port_up load_b=$port_up
    pid_b=$(pgrep -P "$(cat "$work/nginx.pid")" | head -1)
    label_b="B straight to the upstream"
elif [ -n "$auth" ] && [ -z "$bin_b" ] && [ -z "$against" ]; then
    pid_b=$pid_a port_b=$port_a load_b=$load_a
    label_b="B public route of the same gateway"
elif [ -n "$bin_b" ]; then
    [ -z "$auth" ] || { path_b=$path_a header_b=("${header_a[@]}"); }
    pid_b=$(start_gateway "$bin_b" $port_b "$(tls_port $load_b)"); pids+=("$pid_b")
    label_b="B $path_b ($bin_b)"
else
    # With --tls, nginx also listens on load_b with TLS, its defaults, the same certificate.
    tls_lines="" h2_listen=""
    [ "$h2" = 0 ] || h2_listen=" http2"
    # ssl_protocols: nginx 1.22's default has no TLS 1.3 (1.23.4 added it), and a TLS 1.2
    # resumption skips the key exchange a TLS 1.3 one makes; both sides speak TLS 1.3 here.
    [ "$tls" = 0 ] || tls_lines="listen 127.0.0.1:$load_b ssl${h2_listen}; ssl_certificate $work/tls.crt; ssl_certificate_key $work/tls.key; ssl_protocols TLSv1.2 TLSv1.3;"
    nginx_proxy_conf "$work" $port_b $port_up "worker_cpu_affinity 01;" "$tls_lines" > "$work/nginx-proxy.conf"
    nginx_upstream "$work/nginx-proxy.conf"
    nginx -c "$work/nginx-proxy.conf"
    sleep 0.3
    pid_b=$(pgrep -P "$(cat "$work/nginx-proxy.pid")" | head -1)
    label_b="B nginx plain proxy"
fi
for port in $port_a $port_b; do
    wait_ready "http://127.0.0.1:$port/plain/" ||
        { echo "nothing answers on port $port:" >&2; cat "$work"/gw-*.log >&2; exit 1; }
done

if [ "$auth" = session ]; then
    header_a=(-H "Cookie: theme=dark; portcullis=$(python3 "$here/session_cookie.py" $port_redis "$cookie_key" https://issuer.load alice); lang=en")
    [ -z "$bin_b" ] || header_b=("${header_a[@]}")
fi
[ -z "$auth" ] || for port in $port_a ${bin_b:+$port_b}; do
    code=$(curl -s -o /dev/null -w '%{http_code}' "${header_a[@]}" "http://127.0.0.1:$port$path_a")
    [ "$code" = 200 ] || { echo "the $auth request got $code, not 200" >&2; cat "$work"/gw-*.log >&2; exit 1; }
done
[ "$tls" = 0 ] || for port in $load_a $load_b; do
    curl -skf -o /dev/null "https://127.0.0.1:$port/plain/" || { echo "nothing answers TLS on port $port" >&2; cat "$work"/gw-*.log >&2; exit 1; }
done

# client CMD...: runs the load client, prints its output, and leaves its CPU time (user +
# system, seconds) in $work/client-cpu. On this machine the client shares CPU 1 with the
# upstream: when its CPU per request is near 1 / req/s, the client, not the proxy, bounds a
# round's req/s (the proxy's CPU per request then says more).
client() {
    local TIMEFORMAT='%3U %3S' t
    { time "$@" > "$work/client-out"; } 2> "$work/client-time"
    cat "$work/client-out"
    t=$(tail -1 "$work/client-time")
    awk '{print $1 + $2}' <<<"$t" > "$work/client-cpu"
}
# round PID PORT PATH [wrk args]: prints "req/s cpu_us_per_request p99_ms user_us kernel_us
# segments client_us" for one warmed-up wrk run: the proxy's CPU per request, and its user
# and kernel parts; the TCP segments the whole machine sent per request (/proc/net/snmp
# OutSegs: each hop's data, plus any bare ACK or split write a proxy causes); the load
# client's CPU per request.
round() {
    [ "$h2" = 0 ] || { round_h2 "$@"; return; }
    [ -z "$handshakes" ] || { round_hs "$@"; return; }
    local pid=$1 port=$2 path=$3
    shift 3
    taskset -c 1 wrk -t1 -c64 -d1s "$@" "$scheme://127.0.0.1:$port$path" >/dev/null
    local u0 s0 u1 s1 g0 g1 n out p99
    read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$pid/stat")
    g0=$(out_segments)
    out=$(client taskset -c 1 wrk -t1 -c64 -d"${secs}s" --latency "$@" "$scheme://127.0.0.1:$port$path")
    read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$pid/stat")
    g1=$(out_segments)
    n=$(awk '/requests in/ {print $1}' <<<"$out")
    p99=$(awk '$1 == "99%" { v = $2 + 0; if ($2 ~ /us$/) v /= 1000; else if ($2 ~ /[0-9]s$/) v *= 1000; print v }' <<<"$out")
    awk -v n="$n" -v s="$secs" -v u=$((u1 - u0)) -v k=$((s1 - s0)) -v g=$((g1 - g0)) \
        -v hz="$(getconf CLK_TCK)" -v p="$p99" -v c="$(cat "$work/client-cpu")" \
        'BEGIN {printf "%.0f %.1f %.3f %.2f %.2f %.2f %.1f\n", n / s, (u + k) * 1e6 / hz / n, p,
                u * 1e6 / hz / n, k * 1e6 / hz / n, g / n, c * 1e6 / n}'
}
# round_h2 PID PORT PATH [-H header]: the same line for one h2load run (p99 0: h2load gives
# none).
round_h2() {
    local pid=$1 port=$2 path=$3
    shift 3
    local headers=() u0 s0 u1 s1 g0 g1 n out
    while [ $# -gt 0 ]; do
        [ "$1" = -H ] && headers+=(-H "$2")
        shift 2
    done
    taskset -c 1 h2load -c 8 -m 100 -D 1 "${headers[@]}" "https://127.0.0.1:$port$path" >/dev/null
    read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$pid/stat")
    g0=$(out_segments)
    out=$(client taskset -c 1 h2load -c 8 -m 100 -D "$secs" "${headers[@]}" "https://127.0.0.1:$port$path")
    read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$pid/stat")
    g1=$(out_segments)
    # Only 2xx answers count (a 401 or 502 would be cheap and fast).
    n=$(awk '/^status codes:/ {print $3}' <<<"$out")
    [ "${n:-0}" -gt 0 ] || { echo "h2load failed: $out" >&2; exit 1; }
    awk -v n="$n" -v s="$secs" -v u=$((u1 - u0)) -v k=$((s1 - s0)) -v g=$((g1 - g0)) \
        -v hz="$(getconf CLK_TCK)" -v c="$(cat "$work/client-cpu")" \
        'BEGIN {printf "%.0f %.1f 0 %.2f %.2f %.2f %.1f\n", n / s, (u + k) * 1e6 / hz / n,
                u * 1e6 / hz / n, k * 1e6 / hz / n, g / n, c * 1e6 / n}'
}
# round_hs PID PORT PATH: the same line for one run of the handshake client (p99 0).
round_hs() {
    local pid=$1 port=$2 path=$3 u0 s0 u1 s1 g0 g1 n e t out
    taskset -c 1 "$hs_client" $hs_mode --seconds 1 "https://127.0.0.1:$port$path" >/dev/null
    read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$pid/stat")
    g0=$(out_segments)
    out=$(client taskset -c 1 "$hs_client" $hs_mode --seconds "$secs" "https://127.0.0.1:$port$path")
    read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$pid/stat")
    g1=$(out_segments)
    read -r _ n _ e _ t _ r <<<"$out"
    [ "${n:-0}" -gt 0 ] && [ "${e:-1}" -eq 0 ] || { echo "handshake client failed: $out" >&2; exit 1; }
    # The mode asked is the mode measured: no resumption in a full run, nearly all resumed
    # in a resumed run (each connection's first handshake is full).
    if [ "$handshakes" = full ]; then
        [ "$r" -eq 0 ] || { echo "a full-handshake run resumed $r sessions: $out" >&2; exit 1; }
    else
        [ $((r * 100)) -ge $((n * 95)) ] || { echo "a resumed run resumed only $r of $n: $out" >&2; exit 1; }
    fi
    awk -v n="$n" -v s="$t" -v u=$((u1 - u0)) -v k=$((s1 - s0)) -v g=$((g1 - g0)) \
        -v hz="$(getconf CLK_TCK)" -v c="$(cat "$work/client-cpu")" \
        'BEGIN {printf "%.0f %.1f 0 %.2f %.2f %.2f %.1f\n", n / s, (u + k) * 1e6 / hz / n,
                u * 1e6 / hz / n, k * 1e6 / hz / n, g / n, c * 1e6 / n}'
}
# out_segments: the machine's TCP segments sent so far.
out_segments() {
    awk '/^Tcp:/ { if ($2 ~ /^[0-9]/) print $c; else for (i = 2; i <= NF; i++) if ($i == "OutSegs") c = i }' /proc/net/snmp
}

label_a="public route"
[ -z "$auth" ] || label_a="$auth token, cache hit, $path_a"
[ "$tls" = 0 ] || { label_a="$label_a over TLS"; label_b="$label_b over TLS"; }
[ "$h2" = 0 ] || { label_a="$label_a, HTTP/2 (h2load -c 8 -m 100)"; label_b="$label_b, HTTP/2"; }
[ -z "$handshakes" ] || { label_a="$label_a, a $handshakes handshake per request"; label_b="$label_b, a $handshakes handshake per request"; }
[ ${#close[@]} = 0 ] || { label_a="$label_a, a connection per request"; label_b="$label_b, a connection per request"; }
case $upstream_kind in
    https) label_a="$label_a, HTTPS upstream"; label_b="$label_b, HTTPS upstream" ;;
    two) label_a="$label_a, two upstream targets"; label_b="$label_b, two upstream targets" ;;
esac
echo "A $label_a ($bin_a) against $label_b; $rounds rounds of ${secs}s, pinned"
results=()
for i in $(seq 0 $((rounds - 1))); do
    # A B, B A, A B, ...: each round has one of each, in alternating order.
    if [ $((i % 2)) -eq 0 ]; then order="a b"; else order="b a"; fi
    for side in $order; do
        if [ "$side" = a ]; then
            r=$(round "$pid_a" $load_a "$path_a" "${header_a[@]}" "${close[@]}")
        else
            r=$(round "$pid_b" $load_b "$path_b" "${header_b[@]}" "${close[@]}")
        fi
        echo "round $((i + 1)) $side: $r" | awk '{printf "round %s %s %8d req/s %6.1f us/req (user %.2f, kernel %.2f)  p99 %.2f ms  %.2f segments/req  client %.1f us/req\n", $2, toupper($3), $4, $5, $7, $8, $6, $9, $10}'
        results+=("$((i + 1)) $side $r")
    done
done
printf '%s\n' "${results[@]}" | awk '
    function median(a, n) { return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
    function insert(a, k, v,  j) { for (j = k - 1; j >= 1 && a[j] > v; j--) a[j + 1] = a[j]; a[j + 1] = v }
    { rps[$1, $2] = $3; cpu[$1, $2] = $4; p99[$1, $2] = $5; n = $1
      user[$2] += $6; kernel[$2] += $7; segs[$2] += $8; client[$2] += $9 }
    # t(df): the 97.5% quantile of Student t (a few rounds give a wide interval, as they should).
    function t(df) {
        if (df > 30) return 1.96
        split("12.71 4.30 3.18 2.78 2.57 2.45 2.36 2.31 2.26 2.23 2.20 2.18 2.16 2.14 2.13 2.12 2.11 2.10 2.09 2.09 2.08 2.07 2.07 2.06 2.06 2.06 2.05 2.05 2.05 2.04", q, " ")
        return q[df]
    }
    # interval I: the geometric mean of the per-round ratios A/B of column I and its 95%
    # interval (Student t over the log ratios of the rounds).
    function interval(i,  k, l, m, v, h) {
        for (k = 1; k <= n; k++) if (col[k, "a", i] <= 0 || col[k, "b", i] <= 0) return "-"
        for (k = 1; k <= n; k++) { l[k] = log(col[k, "a", i] / col[k, "b", i]); m += l[k] / n }
        for (k = 1; k <= n; k++) v += (l[k] - m) ^ 2 / (n - 1)
        h = t(n - 1) * sqrt(v / n)
        return sprintf("%.2fx (95%% %.2f-%.2fx)", exp(m), exp(m - h), exp(m + h))
    }
    { for (i = 3; i <= 7; i++) col[$1, $2, i] = $i }
    END {
        for (i = 1; i <= n; i++) {
            insert(pa, i, p99[i, "a"]); insert(pb, i, p99[i, "b"])
            ra += rps[i, "a"]; rb += rps[i, "b"]; ca += cpu[i, "a"]; cb += cpu[i, "b"]
            insert(sorted, i, rps[i, "a"] / rps[i, "b"])
        }
        med = median(sorted, n)
        printf "mean A %d req/s %.1f us/req; mean B %d req/s %.1f us/req\n", ra / n, ca / n, rb / n, cb / n
        printf "A/B req/s %.2fx (median round %.2fx, rounds %.2f-%.2fx); CPU per request A/B %.2fx\n",
            ra / rb, med, sorted[1], sorted[n], ca / cb
        printf "p99, median of the rounds: A %.2f ms, B %.2f ms (A - B %+.2f ms)\n",
            median(pa, n), median(pb, n), median(pa, n) - median(pb, n)
        if (n >= 2) printf "interval: req/s %s, CPU per request %s, user %s, kernel %s\n",
            interval(3), interval(4), interval(6), interval(7)
        printf "CPU per request, user + kernel: A %.2f + %.2f us, B %.2f + %.2f us (A/B %.2fx user, %.2fx kernel); TCP segments per request: A %.2f, B %.2f\n",
            user["a"] / n, kernel["a"] / n, user["b"] / n, kernel["b"] / n,
            user["a"] / user["b"], kernel["a"] / kernel["b"], segs["a"] / n, segs["b"] / n
        printf "load client CPU per request (it shares CPU 1 with the upstream): A %.1f us, B %.1f us\n",
            client["a"] / n, client["b"] / n
    }'
