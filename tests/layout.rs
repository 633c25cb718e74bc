//! The module graph stays acyclic: every `crate::` and `super::` path in `src/` (outside
//! test modules) is an edge from its file to the file of the module it names, and neither
//! the graph of files nor the graph of top-level modules may have a cycle. A newcomer can
//! then read the crate bottom up, and change a module knowing what can reach it. The
//! floors are drawn in README.md ("Layout").

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path (`["auth", "jwt"]`) -> source file, for every file under `src/` but the
/// binary's `main.rs`.
fn modules(root: &Path) -> BTreeMap<Vec<String>, PathBuf> {
    let mut out = BTreeMap::new();
    for path in rust_files(root) {
        let relative = path.strip_prefix(root).unwrap();
        let mut parts: Vec<String> = relative
            .iter()
            .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
            .collect();
        match parts.last().map(String::as_str) {
            Some("main") if parts.len() == 1 => continue,
            Some("lib") if parts.len() == 1 => parts.clear(),
            Some("mod") => {
                parts.pop();
            }
            _ => {}
        }
        out.insert(parts, path);
    }
    out
}

/// Every `.rs` file under `root`, at any depth.
fn rust_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out
}

/// The source without comments and without test modules (`#[cfg(test)]` to the end: test
/// modules come last in every file, which clippy's items-after-test-module enforces).
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) if !line[..at].contains('"') => &line[..at],
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every path a `crate::` or `super::` prefix starts, with `use` groups expanded:
/// `crate::a::{b, c::{self, D}}` gives `a::b`, `a::c`, `a::c::D`.
fn paths(code: &str, module: &[String], is_mod_file: bool) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if !code.is_char_boundary(i) {
            i += 1;
            continue;
        }
        let rest = &code[i..];
        let boundary = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        let base: Option<(Vec<String>, usize)> = if boundary && rest.starts_with("crate::") {
            Some((Vec::new(), "crate::".len()))
        } else if boundary && rest.starts_with("super::") {
            // `super` is the parent of the file's module (`a/b.rs` is a::b, `a/mod.rs` is a).
            let mut parent = module.to_vec();
            let mut skip = 0;
            while code[i + skip..].starts_with("super::") {
                parent.pop();
                skip += "super::".len();
            }
            Some((parent, skip))
        } else if boundary
            && is_mod_file
            && (rest.starts_with("use ") || rest.starts_with("pub use "))
        {
            // A folder's mod.rs naming its own submodules (`use keys::X;`).
            let skip = if rest.starts_with("use ") { 4 } else { 8 };
            let after = &code[i + skip..];
            let relative = after.strip_prefix("self::").unwrap_or(after);
            let own = !relative.starts_with("crate::")
                && !relative.starts_with("super::")
                && relative.contains("::");
            if own {
                Some((module.to_vec(), skip + (after.len() - relative.len())))
            } else {
                None
            }
        } else {
            None
        };
        match base {
            Some((prefix, skip)) => {
                let (tree, used) = use_tree(&code[i + skip..]);
                for mut path in tree {
                    let mut full = prefix.clone();
                    full.append(&mut path);
                    out.push(full);
                }
                i += skip + used.max(1);
            }
            None => i += rest.chars().next().map_or(1, char::len_utf8),
        }
    }
    out
}

/// Parses `a::b::{c, d::e}` or `a::b` at the start of `text`: the paths and the bytes used.
fn use_tree(text: &str) -> (Vec<Vec<String>>, usize) {
    let bytes = text.as_bytes();
    let mut i = 0;
    let mut prefix: Vec<String> = Vec::new();
    loop {
        let start = i;
        while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
            i += 1;
        }
        if i > start {
            prefix.push(text[start..i].to_owned());
        }
        if text[i..].starts_with("::{") {
            i += 3;
            let mut out = Vec::new();
            loop {
                while i < bytes.len() && (bytes[i] == b' ' || bytes[i] == b'\n' || bytes[i] == b',')
                {
                    i += 1;
                }
                if i >= bytes.len() || bytes[i] == b'}' {
                    i += 1;
                    break;
                }
                let (inner, used) = use_tree(&text[i..]);
                for path in inner {
                    let mut full = prefix.clone();
                    full.extend(path.into_iter().filter(|p| p != "self"));
                    out.push(full);
                }
                i += used.max(1);
            }
            return (out, i);
        }
        if text[i..].starts_with("::")
            && bytes
                .get(i + 2)
                .is_some_and(|b| b.is_ascii_alphabetic() || *b == b'_')
        {
            i += 2;
            continue;
        }
        return (vec![prefix], i);
    }
}

/// The module a path lands in: its longest prefix that is a module of the crate.
fn resolve(path: &[String], modules: &BTreeMap<Vec<String>, PathBuf>) -> Vec<String> {
    (0..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|prefix| modules.contains_key(prefix))
        .unwrap_or_default()
}

fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(node.to_owned(), 1);
        stack.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            match state.get(next).copied().unwrap_or(0) {
                1 => {
                    let from = stack.iter().position(|n| n == next).unwrap();
                    let mut cycle = stack[from..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(cycle) = visit(next, graph, state, stack) {
                        return Some(cycle);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(node.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in graph.keys() {
        if state.get(node).copied().unwrap_or(0) == 0 {
            let mut stack = Vec::new();
            if let Some(cycle) = visit(node, graph, &mut state, &mut stack) {
                return Some(cycle);
            }
        }
    }
    None
}

fn graphs() -> (
    BTreeMap<String, BTreeSet<String>>,
    BTreeMap<String, BTreeSet<String>>,
) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules = modules(&root);
    let name = |m: &[String]| {
        if m.is_empty() {
            "lib".to_owned()
        } else {
            m.join("::")
        }
    };
    let mut files: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut tops: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, file) in &modules {
        if module.is_empty() {
            // lib.rs declares every module and re-exports a few: it is the top floor.
            continue;
        }
        let is_mod_file = file.ends_with("mod.rs");
        let text = std::fs::read_to_string(file).unwrap();
        for path in paths(&code(&text), module, is_mod_file) {
            let target = resolve(&path, &modules);
            if target.is_empty() || target == *module {
                continue;
            }
            // A module's own submodules are below it (`pub mod x;` and `use x::...`).
            if target.starts_with(module) && !is_mod_file {
                continue;
            }
            files.entry(name(module)).or_default().insert(name(&target));
            if module[0] != target[0] {
                tops.entry(module[0].clone())
                    .or_default()
                    .insert(target[0].clone());
            }
        }
    }
    (files, tops)
}

#[test]
fn the_file_graph_has_no_cycle() {
    let (files, _) = graphs();
    assert!(
        files.len() > 25,
        "the parser found too few edges: {files:#?}"
    );
    if let Some(cycle) = find_cycle(&files) {
        panic!("import cycle between files: {}", cycle.join(" -> "));
    }
}

#[test]
fn the_top_level_module_graph_has_no_cycle() {
    let (_, tops) = graphs();
    if let Some(cycle) = find_cycle(&tops) {
        panic!(
            "import cycle between top-level modules: {}",
            cycle.join(" -> ")
        );
    }
}

#[test]
fn the_checker_sees_grouped_and_relative_imports() {
    let module = vec!["a".to_owned(), "b".to_owned()];
    let found = paths(
        "use crate::x::{y, z::{self, W}};\nuse super::c::D;\nlet v = crate::q::r();",
        &module,
        false,
    );
    let text: Vec<String> = found.iter().map(|p| p.join("::")).collect();
    assert_eq!(text, ["x::y", "x::z", "x::z::W", "a::c::D", "q::r"]);
    let mut graph = BTreeMap::new();
    graph.insert("a".to_owned(), BTreeSet::from(["b".to_owned()]));
    graph.insert("b".to_owned(), BTreeSet::from(["a".to_owned()]));
    assert_eq!(
        find_cycle(&graph),
        Some(vec!["a".into(), "b".into(), "a".into()])
    );
}

/// `unsafe` stays in one place: `server::sockopt`'s `setsockopt` (`TCP_DEFER_ACCEPT`, which
/// no safe crate sets). lib.rs can only `deny(unsafe_code)`, which an `#[allow]` anywhere
/// would lift, so this test holds the line: one `unsafe` block and one `allow(unsafe_code)`,
/// both in that file.
#[test]
fn unsafe_code_stays_in_the_one_socket_option() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut hits: Vec<(String, &str)> = Vec::new();
    for path in rust_files(&root) {
        let name = path.strip_prefix(&root).unwrap().display().to_string();
        // Test modules too: they are compiled under the same lint.
        let text = std::fs::read_to_string(&path).unwrap();
        for line in text.lines() {
            let line = match line.find("//") {
                Some(at) => &line[..at],
                None => line,
            };
            let words = line.split(|c: char| !(c.is_alphanumeric() || c == '_'));
            for word in words {
                match word {
                    "unsafe" => hits.push((name.clone(), "unsafe")),
                    "unsafe_code" if line.contains("allow") => {
                        hits.push((name.clone(), "allow(unsafe_code)"))
                    }
                    _ => {}
                }
            }
        }
    }
    hits.sort();
    assert_eq!(
        hits,
        [
            ("server/sockopt.rs".to_owned(), "allow(unsafe_code)"),
            ("server/sockopt.rs".to_owned(), "unsafe"),
        ],
        "unsafe code outside server::sockopt, or more of it there"
    );
}
