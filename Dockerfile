# Multi-stage build: compile in the Rust image, run in a small Debian image as non-root.
# The binary is built with profile-guided optimisation (scripts/pgo-build.sh: an instrumented
# build serves a minute of training load on loopback, then the optimised build; README,
# "Performance"). `docker build --build-arg PGO=0 .` builds plainly with cargo instead.
FROM rust:1-bookworm AS build
ARG PGO=1
WORKDIR /src
# cmake and clang build aws-lc; the rest is the training load's (scripts/pgo-build.sh).
RUN apt-get update && apt-get install -y --no-install-recommends cmake clang \
        wrk nghttp2-client nginx curl python3 python3-cryptography \
    && rm -rf /var/lib/apt/lists/*
RUN rustup component add llvm-tools
COPY Cargo.toml Cargo.lock build.rs ./
# Build settings (jemalloc's compiled-in options).
COPY .cargo ./.cargo
COPY src ./src
# Cargo.toml names the criterion benches, so cargo cannot read it without benches/ (the
# training load itself needs only scripts/ and the dev TLS certificate in config/dev/).
COPY benches ./benches
COPY scripts ./scripts
COPY config ./config
RUN if [ "$PGO" = 1 ]; then bash scripts/pgo-build.sh --lean; \
    else cargo build --release --locked --bin portcullis; fi

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home portcullis
COPY --from=build /src/target/release/portcullis /usr/local/bin/portcullis
# A harmless default (the echo on :8080, probes on :9902, no keys): mount your config here.
COPY config/container.toml /etc/portcullis/portcullis.toml
USER 10001
EXPOSE 8080 8443 9902
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s \
    CMD ["/usr/local/bin/portcullis", "health", "--url", "http://127.0.0.1:9902/readyz"]
ENTRYPOINT ["/usr/local/bin/portcullis"]
CMD ["serve", "--config", "/etc/portcullis/portcullis.toml"]
