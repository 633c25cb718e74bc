#!/usr/bin/env bash
# The whole test suite, on a fresh machine. Installs what the tests need, or says exactly
# what is missing. Used by README.md and .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

need() {
    command -v "$1" >/dev/null 2>&1 && return 0
    echo "missing: $1 ($2)" >&2
    exit 1
}
need cargo "install Rust with rustup: https://rustup.rs"

# Unit tests, integration tests (real sockets on 127.0.0.1:0, real TLS, real upstreams),
# CLI tests against the built binary, doc tests.
cargo test --locked --all-targets "$@"
cargo test --locked --doc "$@"
