//! Logging: `tracing` with an env filter (`RUST_LOG`, default `info`), text or JSON lines.
//!
//! The access log is target `portcullis::access` at info, one line per request. Nothing in
//! the gateway logs header values, tokens, cookies or secrets; the fields are the method,
//! canonical path (never the query, which can carry tokens), route, status, auth outcome,
//! subject, peer and latency.

use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.with_ansi(false).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
}

/// An error and all its causes on one line (`a: b: c`): hyper and reqwest put the useful
/// part (`connection refused`, `UnknownIssuer`) in the sources.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
