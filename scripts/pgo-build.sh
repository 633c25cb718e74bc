#!/usr/bin/env bash
# The release binary with profile-guided optimisation (PGO). An instrumented build serves a
# training load in front of a local nginx: the public route, a Bearer JWT of each algorithm
# (one token repeated and 2,000 distinct ones), a JWT in a cookie, rejected and missing
# tokens, an unknown route, request bodies, new connections, TLS, and HTTP/2. rustc then
# builds target/release/portcullis again from the same sources with the profile it wrote,
# laid out and inlined for the paths a gateway runs. README "Performance" has what it buys;
# the Dockerfile builds this way, and the load benchmarks are measured on this binary.
#
#   bash scripts/pgo-build.sh          # -> target/release/portcullis
#   bash scripts/pgo-build.sh --lean   # the same, and the instrumented build (1.3 GB,
#                                      # target/pgo-gen) is removed once its profile is
#                                      # merged: for CI and image builds on small disks
#
# The training load doubles as a smoke test: every step checks the status it expects.
# Needs rustup (it adds the llvm-tools component, for llvm-profdata), wrk, h2load, nginx,
# curl and python3 with `cryptography`; installs the Debian packages that are missing or
# says what they are. Loopback only; two release builds and about a minute of load.
set -euo pipefail
cd "$(dirname "$0")/.."
lean=0
case "${1:-}" in
    --lean) lean=1 ;;
    "") ;;
    *) echo "usage: bash scripts/pgo-build.sh [--lean]" >&2; exit 2 ;;
esac
root=$PWD

command -v cargo >/dev/null 2>&1 || { echo "missing: cargo (https://rustup.rs)" >&2; exit 1; }
missing=()
need() { command -v "$1" >/dev/null 2>&1 || missing+=("$2"); }
need wrk wrk
need h2load nghttp2-client
need nginx nginx
need curl curl
need python3 python3
python3 -c 'import cryptography' 2>/dev/null || missing+=(python3-cryptography)
source scripts/lib.sh
install_packages ${missing[@]+"${missing[@]}"}

# llvm-profdata must come with the rustc that builds (the profile format follows its LLVM).
profdata="$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin/llvm-profdata"
if [ ! -x "$profdata" ]; then
    rustup component add llvm-tools >&2 || {
        echo "missing: llvm-profdata of this toolchain (rustup component add llvm-tools)" >&2
        exit 1
    }
fi

work=$(mktemp -d)
data=$root/target/pgo-data
gw_pid=""
trap cleanup_work EXIT
rm -rf "$data"
mkdir -p "$data" "$work/build"

echo "== 1/3 instrumented build (target/pgo-gen)" >&2
# Build scripts are instrumented too; their profiles go to $work and are dropped.
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$data" LLVM_PROFILE_FILE="$work/build/%p.profraw" \
    cargo build --release --locked --bin portcullis --target-dir "$root/target/pgo-gen"

echo "== 2/3 training load" >&2
read -r port_up port_gw port_tls < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])')
upstream_nginx "$work" "$port_up"
secret=pgo-training-secret-of-32-bytes-xx
gateway_toml "$port_gw" "$port_up" "https = \"127.0.0.1:$port_tls\"" > "$work/gw.toml"
cat >> "$work/gw.toml" <<TOML
[tls]
cert = "$root/config/dev/tls.crt"
key = "$root/config/dev/tls.key"
TOML
many=2000
python3 scripts/tokens.py hs256 "$secret" $many > "$work/hs.txt"
for alg in rs256 es256 eddsa; do python3 scripts/tokens.py $alg "$work" $many > "$work/$alg.txt"; done
jwt_route_toml rs RS256 "$work/rs.pub.pem" >> "$work/gw.toml"
jwt_route_toml es ES256 "$work/es.pub.pem" >> "$work/gw.toml"
jwt_route_toml ed EdDSA "$work/ed.pub.pem" >> "$work/gw.toml"
cookie_route_toml rs >> "$work/gw.toml"
cat > "$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = string.rep("x", 16384)
wrk.headers["Content-Type"] = "application/octet-stream"
LUA

http=http://127.0.0.1:$port_gw https=https://127.0.0.1:$port_tls
fail() { echo "pgo-build: $*" >&2; tail -20 "$work/gw.log" >&2; exit 1; }
# serve BIN: starts the gateway on the training config and waits until it answers.
serve() {
    LOAD_SECRET=$secret RUST_LOG=warn "$1" serve --config "$work/gw.toml" > "$work/gw.log" 2>&1 &
    gw_pid=$!
    wait_ready "$http/plain/" || fail "$1 does not answer on $http"
}
# stop: SIGTERM, and the gateway must drain and exit 0 (the profile is written at exit).
stop() {
    kill -TERM "$gw_pid"
    wait "$gw_pid" || fail "the gateway did not exit cleanly"
    gw_pid=""
}
# status URL WANT [curl args]: one request answers WANT.
status() {
    local url=$1 want=$2 got
    shift 2
    got=$(curl -sk -o /dev/null -w '%{http_code}' "$@" "$url")
    [ "$got" = "$want" ] || fail "$url answered $got, want $want"
}
# load WHAT URL ok|rejected [wrk options] [-- script args]: 2 s of wrk; every answer 2xx,
# or none. WHAT names the step (tokens stay out of the output).
load() {
    local what=$1 url=$2 want=$3 opts=() out n bad
    shift 3
    while [ $# -gt 0 ] && [ "$1" != -- ]; do opts+=("$1"); shift; done
    out=$(wrk -t1 -c16 -d2s "${opts[@]}" "$url" "$@")
    n=$(awk '/requests in/ {print $1}' <<<"$out")
    bad=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' <<<"$out")
    [ "${n:-0}" -gt 0 ] || fail "$what: no answers from $url"
    case $want in
        ok) [ -z "$bad" ] || fail "$what: $bad of $n answers from $url were not 2xx" ;;
        rejected) [ "$bad" = "$n" ] || fail "$what: only ${bad:-0} of $n answers from $url were rejections" ;;
    esac
    printf '  %-34s %8d requests\n' "$what" "$n" >&2
}
bearer() { echo "Authorization: Bearer $1"; }
# tampered TOKEN: the token with one signature character changed (not the last one, whose
# low bits may be padding), so it fails the signature check itself.
tampered() {
    local t=$1 c=${1: -10:1}
    [ "$c" = A ] && c=B || c=A
    echo "${t:0:${#t}-10}$c${t: -9}"
}
first() { head -1 "$work/$1.txt"; }

LLVM_PROFILE_FILE="$data/portcullis-%p.profraw" serve "$root/target/pgo-gen/release/portcullis"
status "$http/plain/" 200
load "public" "$http/plain/" ok
load "public, 16 KiB bodies" "$http/plain/" ok -s "$work/post.lua"
load "public, new connections" "$http/plain/" ok -H "Connection: close"
load "no route" "$http/nowhere" rejected
status "$http/nowhere" 404
for pair in hs:hs rs:rs256 es:es256 ed:eddsa; do
    route=${pair%%:*} file=${pair#*:}
    tok=$(first "$file")
    status "$http/$route/" 200 -H "$(bearer "$tok")"
    status "$http/$route/" 401 -H "$(bearer "$(tampered "$tok")")"
    load "$file, one token" "$http/$route/" ok -H "$(bearer "$tok")"
    load "$file, $many tokens" "$http/$route/" ok -s scripts/stream_tokens.lua -- "$work/$file.txt" 1
    load "$file, bad signature" "$http/$route/" rejected -H "$(bearer "$(tampered "$tok")")"
done
load "no token" "$http/rs/" rejected
cookie="Cookie: theme=dark; session=$(first rs256); lang=en"
status "$http/cookie/" 200 -H "$cookie"
load "rs256 in a cookie" "$http/cookie/" ok -H "$cookie"
load "TLS public" "$https/plain/" ok
load "TLS rs256" "$https/rs/" ok -H "$(bearer "$(first rs256)")"
load "TLS public, new connections" "$https/plain/" ok -H "Connection: close"
# h2 URL [h2load options]: 20,000 requests over HTTP/2 (TLS, ALPN h2), every answer 2xx.
h2() {
    local url=$1 out
    shift
    out=$(h2load -n 20000 -c 4 -m 16 "$@" "$url")
    grep -q "status codes: 20000 2xx" <<<"$out" || fail "HTTP/2 $url: $(grep 'status codes' <<<"$out")"
    printf '  %-34s %8d requests\n' "HTTP/2 $url" 20000 >&2
}
h2 "$https/plain/"
h2 "$https/rs/" -H "authorization: Bearer $(first rs256)"

stop
ls "$data"/portcullis-*.profraw >/dev/null 2>&1 || fail "the instrumented gateway wrote no profile"
"$profdata" merge -o "$data/portcullis.profdata" "$data"/portcullis-*.profraw
rm -f "$data"/portcullis-*.profraw
[ "$lean" = 0 ] || rm -rf "$root/target/pgo-gen"

echo "== 3/3 optimised build (target/release)" >&2
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$data/portcullis.profdata" \
    cargo build --release --locked --bin portcullis

# The optimised binary answers as the instrumented one did.
serve "$root/target/release/portcullis"
tok=$(first rs256)
status "$http/plain/" 200
status "$http/rs/" 200 -H "$(bearer "$tok")"
status "$http/rs/" 401 -H "$(bearer "$(tampered "$tok")")"
status "$http/rs/" 401
status "$http/nowhere" 404
status "$https/cookie/" 200 -H "$cookie"
load "optimised build, public" "$http/plain/" ok
load "optimised build, rs256" "$http/rs/" ok -H "$(bearer "$tok")"
stop
"$root/target/release/portcullis" --version | grep -q "profile-guided" \
    || fail "the optimised binary does not say it is profile-guided (portcullis --version)"
echo "built target/release/portcullis with the profile $data/portcullis.profdata" >&2
