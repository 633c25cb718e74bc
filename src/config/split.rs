//! Big configs: the `[[routes]]` tables parsed one at a time.
//!
//! toml builds the whole document's tree before it deserialises anything: about 3 KiB a
//! route, 300 MiB at the peak for a 100,000-route file. A file with at least
//! [`SPLIT_FROM`] `[[routes]]` headers and a plain shape is cut at its table headers
//! instead: each route's lines are parsed alone into a [`RawRoute`], and the rest of the
//! file (every other table, in order) as one document.
//!
//! The cut is only a way to use less memory, never a second reading of the file:
//! - a file it does not fit is parsed whole: a multi-line string (whose lines could look
//!   like headers), a header it does not read as plainly `[name]` or `[[name]]` followed by
//!   nothing or a comment, any other header naming `routes` (`[routes.x]`, `[[routes.x]]`,
//!   a quoted `"routes"`), a `routes` key outside the route tables;
//! - any error in any piece makes it parse the file whole, so errors (and their line
//!   numbers) are exactly those of the whole-file parse. A line mistaken for a header (a
//!   line of a multi-line array that starts with `[`) leaves its piece unbalanced, which
//!   is such an error.
//!
//! A test parses generated files both ways and compares the results.

use super::raw::{RawConfig, RawRoute};

/// Route tables from which a file is cut (below, the whole-file parse costs little).
pub const SPLIT_FROM: usize = 1000;

/// The file's config, by pieces when it fits (module docs), whole otherwise.
pub fn parse(text: &str) -> Result<RawConfig, toml::de::Error> {
    if let Some(raw) = by_pieces(text, SPLIT_FROM) {
        return Ok(raw);
    }
    toml::from_str(text)
}

/// A table header line: `[name]` or `[[name]]` (the name trimmed), then nothing or a
/// comment. `None`: not a header line, or one this reader does not take as plain.
fn header(line: &str) -> Option<(bool, &str)> {
    let line = line.trim();
    let (array, inner) = match line.strip_prefix("[[") {
        Some(inner) => (true, inner),
        None => (false, line.strip_prefix('[')?),
    };
    let close = if array { "]]" } else { "]" };
    let end = inner.find(close)?;
    let after = inner[end + close.len()..].trim_start();
    if !(after.is_empty() || after.starts_with('#')) {
        return None;
    }
    Some((array, inner[..end].trim()))
}

/// The file by pieces, if it has `from` route tables or more and fits (module docs).
fn by_pieces(text: &str, from: usize) -> Option<RawConfig> {
    if text.matches("[[routes]]").count() < from || text.contains("\"\"\"") || text.contains("'''")
    {
        return None;
    }
    // The lines outside route tables, and each route table's lines (after its header).
    let mut rest = String::new();
    let mut routes: Vec<&str> = Vec::new();
    let mut route: Option<usize> = None;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        if line.trim_start().starts_with('[') {
            let (array, name) = header(line)?;
            if let Some(from) = route.take() {
                routes.push(&text[from..start]);
            }
            let unquoted = name.trim_start_matches(['"', '\'']);
            if array && name == "routes" {
                route = Some(offset);
                continue;
            }
            if unquoted.starts_with("routes") {
                return None;
            }
        } else if route.is_none() && line.trim_start().starts_with("routes") {
            // A `routes` key (an inline array, a dotted key) in another table or at the top.
            return None;
        }
        if route.is_none() {
            rest.push_str(line);
            if !line.ends_with('\n') {
                rest.push('\n');
            }
        }
    }
    if let Some(from) = route {
        routes.push(&text[from..]);
    }
    let mut raw: RawConfig = toml::from_str(&rest).ok()?;
    if !raw.routes.is_empty() {
        return None;
    }
    raw.routes = routes
        .into_iter()
        .map(|piece| toml::from_str::<RawRoute>(piece).ok().map(Box::new))
        .collect::<Option<Vec<_>>>()?;
    Some(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config of `routes` route tables in the shapes operators write (comments, blank
    /// lines, inline tables, arrays over several lines, tables after the routes), with
    /// `extra` appended to route `at`.
    fn config(routes: usize, at: usize, extra: &str) -> String {
        let mut text = String::from(
            "# a big intranet\n[server]\nhttp = \"127.0.0.1:0\"\n\n\
             [providers.dev]\nissuer = \"https://issuer.example\"\naudiences = [\"a\"]\n\
             algorithms = [\"RS256\"]\njwks_url = \"https://issuer.example/jwks\"\n\n\
             [upstreams.app]\nurl = \"http://127.0.0.1:9\"\n\n",
        );
        for i in 0..routes {
            text.push_str(&format!(
                "[[routes]]   # route {i}\nname = \"r{i}\"\nhost = \"app{}.example\"\n\
                 path_prefix = \"/svc{i}\"\nupstream = \"app\"\n",
                i % 7
            ));
            match i % 4 {
                0 => text.push_str("auth = \"public\"\n"),
                1 => text.push_str("auth = \"jwt\"\nrequire = { scopes = [\"read\"] }\n"),
                2 => text.push_str("auth = [\n  \"jwt\",\n]\nmethods = [\"GET\", \"HEAD\"]\n"),
                _ => text.push_str("auth = \"jwt\"\n\n# the next one\n"),
            }
            if i == at {
                text.push_str(extra);
            }
            if i == routes / 2 {
                // A table between route tables.
                text.push_str("[identity.headers]\n\"X-Auth-User\" = \"sub\"\n");
            }
        }
        text.push_str("\n[tls]\ncert = \"a.crt\"\nkey = \"a.key\"\n");
        text
    }

    fn both(text: &str) -> (String, String) {
        let whole: Result<RawConfig, _> = toml::from_str(text);
        let pieces = by_pieces(text, 1)
            .ok_or(())
            .or_else(|()| toml::from_str(text));
        (
            format!("{:?}", whole.map_err(|e| e.to_string())),
            format!("{:?}", pieces.map_err(|e| e.to_string())),
        )
    }

    #[test]
    fn a_big_file_is_cut_and_reads_as_the_whole_file_does() {
        let text = config(SPLIT_FROM + 10, usize::MAX, "");
        assert!(
            by_pieces(&text, SPLIT_FROM).is_some(),
            "the plain big file is cut"
        );
        let (whole, pieces) = both(&text);
        assert!(
            whole.starts_with("Ok("),
            "{}",
            &whole[..200.min(whole.len())]
        );
        assert_eq!(whole, pieces);
    }

    #[test]
    fn what_the_cut_does_not_fit_is_read_whole_with_the_same_result_and_errors() {
        let n = SPLIT_FROM + 3;
        for (extra, cut) in [
            // Errors: a route key misspelt, a bad value, a duplicate key, a table twice.
            ("pathprefix = \"/x\"\n", false),
            ("upstream = 3\n", false),
            ("name = \"again\"\n", false),
            ("[tls]\ncert = \"b\"\n", false),
            // Shapes it leaves to the whole parse.
            ("[routes.require]\nscopes = [\"x\"]\n", false),
            ("note = \"\"\"\n[[routes]]\n\"\"\"\n", false),
            ("[ [routes] ]\n", false),
            ("methods = [\n[\"GET\"],\n]\n", false),
            // Fine either way.
            ("# [[routes]] in a comment\n", true),
            ("on_unauthenticated = \"[x]\"\n", true),
        ] {
            let text = config(n, 5, extra);
            assert_eq!(by_pieces(&text, SPLIT_FROM).is_some(), cut, "cut {extra:?}");
            let (whole, pieces) = both(&text);
            assert_eq!(whole, pieces, "with {extra:?}");
        }
    }

    #[test]
    fn a_small_file_is_read_whole() {
        assert!(by_pieces(&config(SPLIT_FROM - 1, usize::MAX, ""), SPLIT_FROM).is_none());
    }

    /// Route keys a generated route table picks from (each at most once).
    const ROUTE_KEYS: &[&str] = &[
        "name = \"a\"\n",
        "host = \"x.example\"\n",
        "path_prefix = \"/p\"\n",
        "upstream = \"app\"\n",
        "auth = [\n  \"jwt\",\n]\n",
        "methods = [\"GET\"]\n",
        "rate_limit = { requests = 1, per = \"1s\" }\n",
        "# a comment\n\n",
    ];
    /// What a generated file may go wrong with (rarely picked).
    const FAULTS: &[&str] = &[
        "pathprefix = \"/typo\"\n",
        "[routes.require]\nscopes = [\"s\"]\n",
        "note = \"\"\"\n[[routes]]\n\"\"\"\n",
        "[\"GET\"],\n",
        "routes = []\n",
        "[tls]\ncert = \"c\"\nkey = \"k\"\n",
        "name = \"a\"\n",
        "[[routes.x]]\n",
    ];

    /// A file from blocks: route tables (header variants, a subset of the keys, in an
    /// order from `bits`), other tables, and now and then a fault.
    fn generated(blocks: &[(u8, u16)]) -> String {
        let mut text = String::from(
            "[server]\nhttp = \"127.0.0.1:0\"\n[upstreams.app]\nurl = \"http://127.0.0.1:9\"\n",
        );
        for &(kind, bits) in blocks {
            match kind {
                0..=8 => {
                    text.push_str(
                        ["[[routes]]\n", "[[routes]]  # r\n", "[[ routes ]]\n"]
                            [usize::from(bits) % 3],
                    );
                    let start = usize::from(bits >> 2) % ROUTE_KEYS.len();
                    for k in 0..ROUTE_KEYS.len() {
                        if bits & (1 << (8 + k % 8)) != 0 {
                            text.push_str(ROUTE_KEYS[(start + k) % ROUTE_KEYS.len()]);
                        }
                    }
                }
                9 => text.push_str("[identity.headers]\n\"X-User\" = \"sub\"\n"),
                10 => text.push_str("[upstreams.other]\nurl = \"http://127.0.0.1:9\"\n"),
                _ => text.push_str(FAULTS[usize::from(bits) % FAULTS.len()]),
            }
        }
        text
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]
        /// Whatever the file, cutting never changes the result or the error.
        #[test]
        fn the_cut_reads_any_file_as_the_whole_parse_does(
            blocks in proptest::collection::vec((0u8..12, proptest::prelude::any::<u16>()), 0..10),
        ) {
            let text = generated(&blocks);
            let (whole, pieces) = both(&text);
            proptest::prop_assert_eq!(whole, pieces, "{}", text);
        }
    }

    /// The generator makes both files the cut takes and files it leaves whole, valid and
    /// not: otherwise the property above would compare the whole parse with itself.
    #[test]
    fn the_generated_files_exercise_both_ways() {
        use proptest::strategy::{Strategy, ValueTree};
        let strategy = proptest::collection::vec((0u8..12, proptest::prelude::any::<u16>()), 0..10);
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let (mut cut, mut whole_ok, mut whole_err) = (0, 0, 0);
        for _ in 0..512 {
            let text = generated(&strategy.new_tree(&mut runner).unwrap().current());
            match (
                by_pieces(&text, 1).is_some(),
                toml::from_str::<RawConfig>(&text).is_ok(),
            ) {
                (true, _) => cut += 1,
                (false, true) => whole_ok += 1,
                (false, false) => whole_err += 1,
            }
        }
        assert!(
            cut > 50 && whole_ok > 10 && whole_err > 50,
            "cut {cut}, whole ok {whole_ok}, whole err {whole_err}"
        );
    }

    #[test]
    fn headers_are_read_plainly_or_not_at_all() {
        assert_eq!(header("[[routes]]"), Some((true, "routes")));
        assert_eq!(header("  [[ routes ]]  # x\n"), Some((true, "routes")));
        assert_eq!(header("[tls]\n"), Some((false, "tls")));
        assert_eq!(header("[\"a.b\"]"), Some((false, "\"a.b\"")));
        assert_eq!(header("[1, 2],"), None);
        assert_eq!(header("[[routes]] x = 1"), None);
        assert_eq!(header("[unclosed"), None);
    }
}
