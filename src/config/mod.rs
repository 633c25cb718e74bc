//! The config file: `raw` (serde shape), `compile` (validation into a [`Snapshot`]),
//! `error` (issues located by TOML key).
//!
//! Relative file paths in the config resolve against the config file's folder.

mod compile;
pub mod duration;
mod error;
pub mod raw;
pub mod size;

use std::path::PathBuf;

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
    let raw: raw::RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
        path: path.clone(),
        message: e.to_string().trim_end().to_owned(),
    })?;
    compile::compile(raw, path)
}
