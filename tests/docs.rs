//! Every TOML snippet of the docs parses, and every key in it is one the gateway knows: a
//! snippet is read into the config's own serde types (`deny_unknown_fields` on every
//! table), with a minimal `[server]` added where the snippet shows another part of the
//! file. A renamed or misspelled key in the docs fails here. A block that starts with
//! `[[keys]]` is an `[api_keys]` keys file and is read as one.

use std::path::{Path, PathBuf};

use portcullis::config::raw::RawConfig;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The ```toml blocks of a Markdown file, with the line each starts on.
fn toml_blocks(path: &Path) -> Vec<(usize, String)> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (number, line) in text.lines().enumerate() {
        match (&mut current, line.trim_start()) {
            (None, l) if l.starts_with("```toml") => current = Some((number + 1, String::new())),
            (Some(_), l) if l.starts_with("```") => blocks.extend(current.take()),
            (Some((_, block)), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

fn documents() -> Vec<PathBuf> {
    let mut docs = vec![root().join("README.md"), root().join("benches/README.md")];
    for entry in std::fs::read_dir(root().join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            docs.push(path);
        }
    }
    docs.sort();
    docs
}

#[test]
fn every_toml_snippet_of_the_docs_is_a_valid_config_fragment() {
    let mut checked = 0;
    let mut failures = Vec::new();
    for doc in documents() {
        for (line, block) in toml_blocks(&doc) {
            let name = format!("{}:{line}", doc.strip_prefix(root()).unwrap().display());
            if block.trim_start().starts_with("[[keys]]") {
                // An `[api_keys]` keys file, read as the gateway reads one.
                let header = http::HeaderName::from_static("x-api-key");
                match portcullis::auth::api_keys::ApiKeys::parse(&block, header, "ApiKey") {
                    Ok(_) => checked += 1,
                    Err(e) => failures.push(format!("{name}: not a keys file: {e}")),
                }
                continue;
            }
            let mut table: toml::Table = match toml::from_str(&block) {
                Ok(table) => table,
                Err(e) => {
                    failures.push(format!("{name}: not TOML: {e}"));
                    continue;
                }
            };
            table.entry("server").or_insert_with(|| {
                toml::Value::Table(toml::from_str("http = \"127.0.0.1:0\"").unwrap())
            });
            if let Err(e) = toml::from_str::<RawConfig>(&toml::to_string(&table).unwrap()) {
                failures.push(format!("{name}: {e}"));
            }
            checked += 1;
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(checked >= 6, "only {checked} snippets found");
}

#[test]
fn the_readme_stays_a_door() {
    let size = std::fs::metadata(root().join("README.md")).unwrap().len();
    assert!(
        size < 20 * 1024,
        "README.md is {size} bytes; reference detail goes to docs/"
    );
}

#[test]
fn docs_link_to_files_that_exist() {
    let mut missing = Vec::new();
    for doc in documents() {
        let text = std::fs::read_to_string(&doc).unwrap();
        let dir = doc.parent().unwrap();
        for piece in text.split("](").skip(1) {
            let Some(target) = piece.split(')').next() else {
                continue;
            };
            let file = target.split('#').next().unwrap_or_default();
            if file.is_empty() || file.starts_with("http") {
                continue;
            }
            if !dir.join(file).exists() {
                missing.push(format!("{}: {target}", doc.display()));
            }
        }
    }
    assert!(missing.is_empty(), "broken links:\n{}", missing.join("\n"));
}
