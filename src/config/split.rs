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
    if let Some(raw) = by_pieces(text) {
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

fn by_pieces(text: &str) -> Option<RawConfig> {
    if text.matches("[[routes]]").count() < SPLIT_FROM
        || text.contains("\"\"\"")
        || text.contains("'''")
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
        let pieces = parse(text);
        (
            format!("{:?}", whole.map_err(|e| e.to_string())),
            format!("{:?}", pieces.map_err(|e| e.to_string())),
        )
    }

    #[test]
    fn a_big_file_is_cut_and_reads_as_the_whole_file_does() {
        let text = config(SPLIT_FROM + 10, usize::MAX, "");
        assert!(by_pieces(&text).is_some(), "the plain big file is cut");
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
            assert_eq!(by_pieces(&text).is_some(), cut, "cut {extra:?}");
            let (whole, pieces) = both(&text);
            assert_eq!(whole, pieces, "with {extra:?}");
        }
    }

    #[test]
    fn a_small_file_is_read_whole() {
        assert!(by_pieces(&config(SPLIT_FROM - 1, usize::MAX, "")).is_none());
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
