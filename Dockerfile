# Multi-stage build: compile in the Rust image, run in a small Debian image as non-root.
FROM rust:1-bookworm AS build
WORKDIR /src
RUN apt-get update && apt-get install -y --no-install-recommends cmake clang && rm -rf /var/lib/apt/lists/*
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked --bin portcullis

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home portcullis
COPY --from=build /src/target/release/portcullis /usr/local/bin/portcullis
USER 10001
EXPOSE 8080 8443
ENTRYPOINT ["/usr/local/bin/portcullis"]
CMD ["serve", "--config", "/etc/portcullis/portcullis.toml"]
