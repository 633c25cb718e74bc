#!/usr/bin/env bash
# The whole test suite, on a fresh machine. Installs what the tests need, or says exactly
# what is missing. Used by README.md and .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo >/dev/null 2>&1 || {
    echo "missing: cargo (install Rust with rustup, https://rustup.rs)" >&2
    exit 1
}

# The login tests run a real OpenID provider (the pinned npm package oidc-provider, under
# Node.js) and a real redis-server (redis-cli makes the test Redis Cluster); the browser test drives Debian's headless Chromium with
# the pinned playwright-core. Install what is missing, or say exactly what it is.
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
[ -x "${CHROMIUM:-/usr/bin/chromium}" ] || missing+=(chromium)
# The forward-auth tests run nginx (Debian's, with auth_request), Traefik and Caddy.
command -v nginx >/dev/null 2>&1 || missing+=(nginx)
# ingress-nginx's configuration escapes the sign-in target with set-misc's set_escape_uri.
[ -f /usr/lib/nginx/modules/ngx_http_set_misc_module.so ] || missing+=(libnginx-mod-http-set-misc)
command -v unzip >/dev/null 2>&1 || missing+=(unzip)
command -v python3 >/dev/null 2>&1 || missing+=(python3 python3-pip)
source scripts/lib.sh
install_packages ${missing[@]+"${missing[@]}"}
npm ci --prefix tests/support/oidc --no-audit --no-fund --loglevel=error
npm ci --prefix tests/support/browser --no-audit --no-fund --loglevel=error
front_proxies
manifest_validator

# Unit and property tests, end-to-end tests (real sockets on 127.0.0.1:0, real TLS, a real
# recording upstream, a real JWKS/discovery server), CLI tests against the built binary,
# the login flows against the OpenID provider and Redis, and the benches compiled and run
# once in test mode.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --locked --all-targets "$@" 2>&1 | tee "$log"

# One closing line over all test binaries.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "summary: %d passed, %d failed\n", p, f }' "$log"
