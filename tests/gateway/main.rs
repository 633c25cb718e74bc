//! End-to-end tests: the gateway in-process on 127.0.0.1:0, a real recording upstream, real
//! clients over real sockets (TLS included), and the binary for the CLI.

#[path = "../support/mod.rs"]
mod support;

mod api_keys;
mod assertion;
mod attacks;
mod auth;
mod browser;
mod cli;
mod csrf;
mod decision;
mod forward_auth;
mod headers;
mod introspection;
mod legacy;
mod limits;
mod mtls;
mod operations;
mod parking;
mod providers;
mod proxying;
mod ratelimit;
mod revocation;
mod routing;
mod sessions;
mod tls;
mod upstreams;
mod websocket;
