//! The config file: `raw` (serde shape), `compile` (validation into a [`Snapshot`]),
//! `error` (issues located by TOML key).
//!
//! Relative file paths in the config resolve against the config file's folder.

mod compile;
pub mod duration;
mod error;
pub mod raw;
pub mod size;
mod split;

use std::path::PathBuf;
use std::sync::Arc;

use crate::metrics::Metrics;

pub use error::{ConfigError, ConfigIssue};

use crate::snapshot::Snapshot;

/// Reads, parses, validates and compiles `path`.
pub fn load(path: PathBuf) -> Result<Snapshot, ConfigError> {
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
        path: path.clone(),
        source,
    })?;
    load_str(&text, path)
}

/// Like [`load`] for text already in memory; `path` locates relative files and errors.
pub fn load_str(text: &str, path: PathBuf) -> Result<Snapshot, ConfigError> {
    let inherited = compile::Inherited {
        metrics: Arc::new(Metrics::new()),
        previous: None,
    };
    load_inheriting(text, path, inherited)
}

/// Loads `path` again to replace `previous`: same metrics, pooled connections kept for
/// upstreams that did not change.
pub fn load_next(path: PathBuf, previous: &Snapshot) -> Result<Snapshot, ConfigError> {
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
        path: path.clone(),
        source,
    })?;
    let inherited = compile::Inherited {
        metrics: previous.metrics.clone(),
        previous: Some(previous),
    };
    load_inheriting(&text, path, inherited)
}

fn load_inheriting(
    text: &str,
    path: PathBuf,
    inherited: compile::Inherited<'_>,
) -> Result<Snapshot, ConfigError> {
    let raw: raw::RawConfig = split::parse(text).map_err(|e| ConfigError::Syntax {
        path: path.clone(),
        message: e.to_string().trim_end().to_owned(),
    })?;
    compile::compile(raw, path, config_hash(text), inherited)
}

/// First 16 hex digits of the SHA-256 of the file: names a config in metrics and logs.
fn config_hash(text: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests;
