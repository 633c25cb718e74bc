//! Reading agreement (invariant I9): the other ways a backend can read the path that was
//! authorized, and the check that each of them lands on a route with the same policy.
//!
//! Sits right after routing. The gateway matches the canonical path (`canonical.rs`), but
//! the app behind it runs its own reading of the bytes it receives: Tomcat, Jetty and
//! Spring strip `;params` from every segment; IIS, ASP.NET and Express match without case;
//! WSGI servers and nginx locations decode `%2F`; IIS and some PHP stacks decode twice;
//! Spring and Express treat `/x/` as `/x`. Each of those readings is computed here and
//! matched against the same route table; when one selects a route with another policy (or
//! no route), the request is refused with 400 `ambiguous_path` before anything is sent.
//!
//! | reading | made by | `strict` | `servlet` | `iis` |
//! |---|---|---|---|---|
//! | `;params` removed from each segment | Tomcat, Jetty, Spring, WebLogic | yes | yes | no |
//! | ASCII case folded | IIS, ASP.NET, Express (default) | yes | no | yes |
//! | percent-decoded once (`%2F` splits segments, `%3B` becomes `;`) | almost every stack | yes | yes | yes |
//! | decoded a second time (`%252e` becomes `.`) | IIS, some PHP and CGI stacks | yes | no | yes |
//! | decoded `\` read as `/` | IIS, Windows stacks | yes | no | yes |
//! | trailing slash added or removed | Spring (before 6), Express (non-strict) | yes | yes | yes |
//!
//! Readings combine (a decoded `%3B` is then a parameter to strip; a decoded path is then
//! folded), so every combination of the readings that apply is checked. None is computed
//! unless the path holds a byte that can change one (`;`, `%`, an upper-case letter), or
//! the route table makes a trailing slash or case matter (exact routes, upper-case route
//! paths): an ordinary lower-case path costs one pass over its bytes.

use std::borrow::Cow;
use std::ops::ControlFlow;

use http::Method;

use crate::canonical::{TargetError, canonical_path, canonical_path_keeping_encoded_slash};
use crate::router::{Route, RouteTable};

/// Why a request target has no route to forward to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not a path that can be put in one canonical form (400).
    Target(TargetError),
    /// No route matches (404).
    NoRoute,
    /// Some backend would read it as a path under another policy (400 `ambiguous_path`).
    Ambiguous,
}

/// Steps 1 and 2 of the request path for `raw_path` (the path of the request target, as
/// received) on `host` (canonical): its route, as an index into `routes.routes()`, and
/// the path to forward, after checking every reading of it (I9). `semantics` tells how the
/// app behind a route reads paths (its upstream's `path_semantics`).
///
/// The forwarded path is the canonical one (I4), with one exception: a route with
/// `allow_path_params` is matched by the path without `;params` (what the servlet
/// container behind it routes by) and the path goes on with them.
pub fn route_target<'p>(
    routes: &RouteTable,
    host: &str,
    raw_path: &'p str,
    method: &Method,
    semantics: impl Fn(&Route) -> PathSemantics,
) -> Result<(usize, Cow<'p, str>), Refusal> {
    let matched = match_target(routes, host, raw_path, method)?;
    let route = &routes.routes()[matched.index];
    agree(
        routes,
        host,
        matched.matched(),
        method,
        semantics(route),
        route.policy,
    )
    .map_err(|Unreadable| Refusal::Ambiguous)?;
    Ok((matched.index, matched.path))
}

/// A request target matched to its route, before the readings are checked.
pub struct Matched<'p> {
    pub index: usize,
    /// The canonical path: what is forwarded.
    pub path: Cow<'p, str>,
    /// The path without `;params`, when a route with `allow_path_params` was matched by it.
    pub stripped: Option<String>,
}

impl Matched<'_> {
    /// The path the route was matched by: the one whose readings must agree.
    pub fn matched(&self) -> &str {
        self.stripped.as_deref().unwrap_or(&self.path)
    }
}

/// [`route_target`] without the reading check: the route the canonical path (or, for a
/// route with `allow_path_params`, the path without parameters) selects.
pub fn match_target<'p>(
    routes: &RouteTable,
    host: &str,
    raw_path: &'p str,
    method: &Method,
) -> Result<Matched<'p>, Refusal> {
    let find = |path: &str| routes.find_index(host, path, method);
    let (path, found) = match canonical_path(raw_path) {
        Ok(path) => {
            let found = find(&path);
            (path, found)
        }
        // `%2F` passes only on routes that opted in; for all others it stays a 400.
        Err(TargetError::EncodedSlash) if routes.any_allows_encoded_slash() => {
            let path = canonical_path_keeping_encoded_slash(raw_path).map_err(Refusal::Target)?;
            match find(&path) {
                Some(index) if routes.routes()[index].allow_encoded_slash => (path, Some(index)),
                _ => return Err(Refusal::Target(TargetError::EncodedSlash)),
            }
        }
        Err(e) => return Err(Refusal::Target(e)),
    };
    let mut stripped = None;
    let mut found = found;
    if routes.any_allows_path_params()
        && let Some(without) = strip_params(&path)
    {
        let without = without.map_err(|Unreadable| Refusal::Ambiguous)?;
        if let Some(index) = find(&without)
            && routes.routes()[index].allow_path_params
        {
            found = Some(index);
            stripped = Some(without);
        }
    }
    let index = found.ok_or(Refusal::NoRoute)?;
    Ok(Matched {
        index,
        path,
        stripped,
    })
}

/// How the app behind an upstream reads paths: `[upstreams.NAME] path_semantics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PathSemantics {
    /// Every reading in the table above (the default: the app is unknown).
    #[default]
    Strict,
    /// Servlet containers (Tomcat, Jetty, Spring): parameters stripped, decoded once,
    /// trailing slash; case-sensitive.
    Servlet,
    /// IIS and ASP.NET: case folded, decoded twice, `\` as `/`, trailing slash; no
    /// parameters.
    Iis,
}

impl PathSemantics {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "strict" => Some(PathSemantics::Strict),
            "servlet" => Some(PathSemantics::Servlet),
            "iis" => Some(PathSemantics::Iis),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PathSemantics::Strict => "strict",
            PathSemantics::Servlet => "servlet",
            PathSemantics::Iis => "iis",
        }
    }

    fn params(self) -> bool {
        matches!(self, PathSemantics::Strict | PathSemantics::Servlet)
    }

    fn fold(self) -> bool {
        matches!(self, PathSemantics::Strict | PathSemantics::Iis)
    }

    /// Decoded twice, and a decoded `\` read as `/`.
    fn windows(self) -> bool {
        matches!(self, PathSemantics::Strict | PathSemantics::Iis)
    }
}

/// A path that some backend reads as escaping the root or holding a NUL: no route can be
/// said to own it, so it is refused like a disagreement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unreadable;

/// One reading of the path, as `explain` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    /// What was done to the authorized path, e.g. "decoded once, parameters removed".
    pub label: String,
    /// The path read (lower-cased readings are matched against the lower-cased routes).
    pub path: String,
    /// The route it selects, as an index into the table's routes.
    pub route: Option<usize>,
    /// It selects a route with the authorized route's policy.
    pub agrees: bool,
}

/// Bytes that can change a reading: `%`, `;` and upper-case letters.
const TRIGGER: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = matches!(b as u8, b'%' | b';' | b'A'..=b'Z');
        b += 1;
    }
    table
};

/// Whether any reading of `path` can differ from it for this table and semantics (the
/// fast path: false for an ordinary lower-case path on a table of prefixes).
pub fn needs_check(table: &RouteTable, path: &str, semantics: PathSemantics) -> bool {
    path.bytes().any(|b| TRIGGER[usize::from(b)])
        || (semantics.fold() && table.fold_sensitive())
        || slash_matters(table, path)
}

/// Toggling the trailing slash changes a match only where exact routes are: a prefix
/// matches `/api` and `/api/` alike.
fn slash_matters(table: &RouteTable, path: &str) -> bool {
    path != "/"
        && if path.ends_with('/') {
            table.has_exact_without_slash()
        } else {
            table.has_exact_with_slash()
        }
}

/// Checks that every reading of `path` (the authorized canonical path) selects a route
/// whose policy is `policy`, on `host` for `method`.
pub fn agree(
    table: &RouteTable,
    host: &str,
    path: &str,
    method: &Method,
    semantics: PathSemantics,
    policy: u32,
) -> Result<(), Unreadable> {
    if !needs_check(table, path, semantics) {
        return Ok(());
    }
    let mut agreed = true;
    visit(table, host, path, method, semantics, |_, _, found| {
        agreed = found.is_some_and(|i| table.routes()[i].policy == policy);
        if agreed {
            ControlFlow::Continue(())
        } else {
            ControlFlow::Break(())
        }
    })?;
    if agreed { Ok(()) } else { Err(Unreadable) }
}

/// Every reading of `path` with the route it selects, for `explain`.
pub fn list(
    table: &RouteTable,
    host: &str,
    path: &str,
    method: &Method,
    semantics: PathSemantics,
    policy: u32,
) -> Result<Vec<Reading>, Unreadable> {
    let mut readings = Vec::new();
    if !needs_check(table, path, semantics) {
        return Ok(readings);
    }
    visit(
        table,
        host,
        path,
        method,
        semantics,
        |label, reading, route| {
            readings.push(Reading {
                label: label.text(),
                path: reading.to_owned(),
                route,
                agrees: route.is_some_and(|i| table.routes()[i].policy == policy),
            });
            ControlFlow::Continue(())
        },
    )?;
    Ok(readings)
}

/// `path` with the parameters of each segment removed (`/a;x/b;y=1` is `/a/b`), dot
/// segments resolved again: what a servlet container routes by. `None` when nothing was
/// removed.
pub fn strip_params(path: &str) -> Option<Result<String, Unreadable>> {
    if !path.contains(';') {
        return None;
    }
    Some(normalize(path.as_bytes(), Steps::PARAMS, false).map(|(text, _)| text))
}

/// What one reading does to the path.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Steps(u8);

impl Steps {
    const PARAMS: Steps = Steps(1);
    const FOLD: Steps = Steps(2);
    const SLASH: Steps = Steps(4);

    fn has(self, step: Steps) -> bool {
        self.0 & step.0 != 0
    }
}

/// What was done to the path for one reading (made into text only for `explain`).
#[derive(Clone, Copy)]
struct Label {
    level: &'static str,
    steps: Steps,
}

impl Label {
    fn text(self) -> String {
        let mut parts: Vec<&str> = Vec::new();
        if !self.level.is_empty() {
            parts.push(self.level);
        }
        if self.steps.has(Steps::PARAMS) {
            parts.push("parameters removed");
        }
        if self.steps.has(Steps::FOLD) {
            parts.push("case folded");
        }
        if self.steps.has(Steps::SLASH) {
            parts.push("trailing slash toggled");
        }
        parts.join(", ")
    }
}

/// Calls `f` with every reading of `path` other than itself: what was done, the path
/// read, and the route it selects on `host` for `method` (a folded reading is matched
/// against the folded route paths).
///
/// A reading with its trailing slash toggled counts only where it selects an exact route:
/// on a prefix it selects what the same reading without the toggle selects (prefixes
/// match `/api` and `/api/` alike), and an exact route is the one thing a trailing slash
/// can move a path onto or off. So an exact `path = "/x"` inside a parent of another
/// policy serves `/x`, and `/x/` (which Spring and Express serve as `/x`) is refused.
fn visit(
    table: &RouteTable,
    host: &str,
    path: &str,
    method: &Method,
    semantics: PathSemantics,
    mut f: impl FnMut(Label, &str, Option<usize>) -> ControlFlow<()>,
) -> Result<(), Unreadable> {
    // The decoding levels: as matched, decoded once, decoded twice (each only when the
    // level before held an escape, so that it can differ).
    let mut levels: Vec<(Cow<'_, [u8]>, &'static str)> = vec![(Cow::Borrowed(path.as_bytes()), "")];
    if path.contains('%') {
        let once = decode(path.as_bytes())?;
        let again = semantics.windows() && has_escape(&once);
        levels.push((Cow::Owned(once), "decoded once"));
        if again {
            let twice = decode(&levels[1].0)?;
            levels.push((Cow::Owned(twice), "decoded twice"));
        }
    }
    let fold_always = semantics.fold() && table.fold_sensitive();
    // Only exact routes tell `/x` from `/x/`.
    let slash = table.has_exact();
    for (level, (bytes, level_label)) in levels.iter().enumerate() {
        let decoded = level > 0;
        let params = semantics.params() && bytes.contains(&b';');
        let fold = semantics.fold() && (fold_always || bytes.iter().any(u8::is_ascii_uppercase));
        for mask in 0..8u8 {
            let steps = Steps(mask);
            if (steps.has(Steps::PARAMS) && !params)
                || (steps.has(Steps::FOLD) && !fold)
                || (steps.has(Steps::SLASH) && !slash)
                || (!decoded && mask == 0)
            {
                continue;
            }
            let backslash = decoded && semantics.windows();
            let (text, _) = normalize(bytes, steps, backslash)?;
            let folded = steps.has(Steps::FOLD);
            if text == path && !(folded && table.fold_sensitive()) {
                continue;
            }
            let found = if folded {
                table.find_index_folded(host, &text, method)
            } else {
                table.find_index(host, &text, method)
            };
            let exact = found.is_some_and(|i| {
                matches!(table.routes()[i].path, crate::router::PathMatch::Exact(_))
            });
            if steps.has(Steps::SLASH) && !exact {
                continue;
            }
            let label = Label {
                level: level_label,
                steps,
            };
            if f(label, &text, found).is_break() {
                return Ok(());
            }
        }
    }
    Ok(())
}

fn has_escape(bytes: &[u8]) -> bool {
    bytes
        .windows(3)
        .any(|w| w[0] == b'%' && w[1].is_ascii_hexdigit() && w[2].is_ascii_hexdigit())
}

/// Decodes every valid `%XX` once; a `%` that starts no escape stays as it is. A NUL is
/// unreadable (C-based stacks end the path there).
fn decode(bytes: &[u8]) -> Result<Vec<u8>, Unreadable> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).and_then(|b| hex(*b)),
                bytes.get(i + 2).and_then(|b| hex(*b)),
            )
        {
            let value = hi << 4 | lo;
            if value == 0 {
                return Err(Unreadable);
            }
            out.push(value);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    Ok(out)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// A reading of `bytes` as a path a route can be matched against: split into segments on
/// `/` (and `\` when `backslash`), parameters removed if asked, `.` and `..` resolved,
/// empty segments collapsed, case folded if asked, the trailing slash toggled if asked.
/// Bytes outside visible ASCII are written as `%XX` (as canonical paths and route paths
/// carry them); a `%` stays itself, so a later decoding level can read it. Returns the
/// text and whether it ends with a slash.
fn normalize(bytes: &[u8], steps: Steps, backslash: bool) -> Result<(String, bool), Unreadable> {
    let mut segments: Vec<&[u8]> = Vec::new();
    let mut trailing = false;
    let body = bytes.strip_prefix(b"/").unwrap_or(bytes);
    let mut rest = Some(body);
    while let Some(current) = rest {
        let end = current
            .iter()
            .position(|&b| b == b'/' || (backslash && b == b'\\'));
        let mut segment = match end {
            Some(at) => {
                rest = Some(&current[at + 1..]);
                &current[..at]
            }
            None => {
                rest = None;
                current
            }
        };
        let last = rest.is_none();
        if steps.has(Steps::PARAMS)
            && let Some(at) = segment.iter().position(|&b| b == b';')
        {
            segment = &segment[..at];
        }
        match segment {
            b"" | b"." => trailing = last,
            b".." => {
                segments.pop().ok_or(Unreadable)?;
                trailing = last;
            }
            _ => {
                segments.push(segment);
                trailing = false;
            }
        }
    }
    if steps.has(Steps::SLASH) {
        trailing = !trailing;
    }
    let mut out = String::with_capacity(bytes.len() + 1);
    for segment in &segments {
        out.push('/');
        for &b in *segment {
            let b = if steps.has(Steps::FOLD) {
                b.to_ascii_lowercase()
            } else {
                b
            };
            if (0x21..0x7f).contains(&b) {
                out.push(char::from(b));
            } else {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                out.push('%');
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0xf)]));
            }
        }
    }
    if segments.is_empty() || trailing {
        out.push('/');
    }
    Ok((out, trailing))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(path: &str, steps: Steps, backslash: bool) -> String {
        normalize(path.as_bytes(), steps, backslash).unwrap().0
    }

    #[test]
    fn parameters_are_removed_per_segment() {
        assert_eq!(norm("/admin;x/users", Steps::PARAMS, false), "/admin/users");
        assert_eq!(norm("/a;b=1;c/d;e", Steps::PARAMS, false), "/a/d");
        assert_eq!(norm("/a/..;x/b", Steps::PARAMS, false), "/b");
        assert_eq!(norm("/a;x", Steps(0), false), "/a;x");
        assert_eq!(strip_params("/x;jsessionid=1/y"), Some(Ok("/x/y".into())));
        assert_eq!(strip_params("/x/y"), None);
        assert_eq!(strip_params("/;x/..;y/.."), Some(Err(Unreadable)));
    }

    #[test]
    fn decoding_splits_and_escapes_come_back() {
        let once = decode(b"/files/admin%2Fsecret").unwrap();
        assert_eq!(
            norm(std::str::from_utf8(&once).unwrap(), Steps(0), false),
            "/files/admin/secret"
        );
        let once = decode(b"/public/%252e%252e/api").unwrap();
        assert_eq!(once, b"/public/%2e%2e/api");
        let twice = decode(&once).unwrap();
        assert_eq!(normalize(&twice, Steps(0), true).unwrap().0, "/api");
        assert_eq!(normalize(b"/a\\..\\b", Steps(0), true).unwrap().0, "/b");
        assert_eq!(normalize(b"/a\\b", Steps(0), false).unwrap().0, "/a\\b");
        // Bytes outside visible ASCII are written as escapes again; `%` stays itself.
        assert_eq!(
            normalize(b"/caf\xc3\xa9 x%", Steps(0), false).unwrap().0,
            "/caf%C3%A9%20x%"
        );
        assert_eq!(decode(b"/a%00"), Err(Unreadable));
        assert_eq!(decode(b"/a%zz%4").unwrap(), b"/a%zz%4");
        assert_eq!(normalize(b"/..", Steps(0), false), Err(Unreadable));
    }

    #[test]
    fn fold_and_slash() {
        assert_eq!(norm("/ADMIN/Users", Steps::FOLD, false), "/admin/users");
        assert_eq!(norm("/x", Steps::SLASH, false), "/x/");
        assert_eq!(norm("/x/", Steps::SLASH, false), "/x");
        assert_eq!(norm("/", Steps(0), false), "/");
    }

    #[test]
    fn semantics_parse_and_print() {
        for s in [
            PathSemantics::Strict,
            PathSemantics::Servlet,
            PathSemantics::Iis,
        ] {
            assert_eq!(PathSemantics::parse(s.as_str()), Some(s));
        }
        assert_eq!(PathSemantics::parse("tomcat"), None);
    }
}

/// Invariant I9 against independent models of what real backends do with the raw bytes.
#[cfg(test)]
mod agreement {
    use super::*;
    use crate::policy::{Policy, RouteAuth, TokenSource, Unauthenticated};
    use crate::router::{HostMatch, PathMatch};
    use proptest::prelude::*;

    fn protected(scope: &str) -> RouteAuth {
        RouteAuth::Protected(Policy {
            jwt: true,
            session: false,
            api_key: false,
            mtls: false,
            on_unauthenticated: Unauthenticated::Negotiate,
            providers: Box::new([0]),
            sources: Box::new([TokenSource::Bearer]),
            forward_token: false,
            scopes: Box::new([scope.into()]),
            claims: Box::new([]),
            csrf: crate::csrf::CsrfPolicy::default(),
        })
    }

    fn route(name: &str, path: PathMatch, auth: RouteAuth, encoded_slash: bool) -> Route {
        Route {
            name: name.into(),
            host: HostMatch::Any,
            path,
            methods: None,
            upstream: 0,
            auth,
            max_body_size: None,
            allow_encoded_slash: encoded_slash,
            allow_path_params: false,
            allow_method_override: false,
            forward_original_uri: false,
            strip_prefix: None,
            websocket: None,
            rate_limit: None,
            session_tokens: Default::default(),
            policy: 0,
            metrics: crate::metrics::Metrics::new().route(name),
        }
    }

    /// Public parents over protected children, an exact path, an upper-case route path
    /// and an encoded-slash route: every place a reading can change the route.
    fn table() -> RouteTable {
        let prefix = |p: &str| PathMatch::Prefix(p.into());
        RouteTable::new(vec![
            route("root", prefix("/"), RouteAuth::Public, false),
            route("public", prefix("/public"), RouteAuth::Public, false),
            route("admin", prefix("/admin"), protected("admin"), false),
            route("files", prefix("/files"), RouteAuth::Public, true),
            route(
                "files-admin",
                prefix("/files/admin"),
                protected("admin"),
                false,
            ),
            route(
                "exact",
                PathMatch::Exact("/x".into()),
                protected("x"),
                false,
            ),
            route("reports", prefix("/Reports"), protected("reports"), false),
        ])
        .unwrap_or_else(|_| panic!("conflict"))
    }

    /// Decodes every valid `%XX` once (what a backend's URL decoder does).
    fn decode_all(bytes: &[u8]) -> Vec<u8> {
        decode(bytes).unwrap_or_else(|_| bytes.to_vec())
    }

    /// Resolves `.` and `..` the way a backend normalises a decoded path (segments split
    /// on `/`, and on `\` for Windows stacks), writing bytes outside visible ASCII as
    /// escapes so the result compares with route paths. `None`: the backend refuses it.
    fn resolve(bytes: &[u8], backslash: bool, params: bool) -> Option<String> {
        if bytes.contains(&0) {
            return None;
        }
        let mut segments: Vec<Vec<u8>> = Vec::new();
        let mut trailing = false;
        let text: Vec<u8> = bytes
            .iter()
            .map(|&b| if backslash && b == b'\\' { b'/' } else { b })
            .collect();
        let parts: Vec<&[u8]> = text.split(|&b| b == b'/').skip(1).collect();
        for (i, part) in parts.iter().enumerate() {
            let part: &[u8] = if params {
                part.split(|&b| b == b';').next().unwrap_or_default()
            } else {
                part
            };
            let last = i + 1 == parts.len();
            match part {
                b"" | b"." => trailing = last,
                b".." => {
                    segments.pop()?;
                    trailing = last;
                }
                _ => {
                    segments.push(part.to_vec());
                    trailing = false;
                }
            }
        }
        let mut out = String::new();
        for segment in &segments {
            out.push('/');
            for &b in segment {
                if (0x21..0x7f).contains(&b) {
                    out.push(char::from(b));
                } else {
                    out.push_str(&format!("%{b:02X}"));
                }
            }
        }
        if segments.is_empty() || trailing {
            out.push('/');
        }
        Some(out)
    }

    fn toggle_slash(path: &str) -> String {
        match path.strip_suffix('/') {
            Some(p) if !p.is_empty() => p.to_owned(),
            Some(_) => path.to_owned(),
            None => format!("{path}/"),
        }
    }

    /// What each backend runs for the path it receives: (backend, path, case-insensitive).
    fn backend_readings(raw: &str) -> Vec<(&'static str, String, bool)> {
        let bytes = raw.as_bytes();
        let once = decode_all(bytes);
        let twice = decode_all(&once);
        let mut out = Vec::new();
        // Tomcat: ;params removed from the raw segments, then decoded, then normalised.
        let stripped: Vec<u8> = {
            let mut v = Vec::new();
            for (i, part) in bytes.split(|&b| b == b'/').enumerate() {
                if i > 0 {
                    v.push(b'/');
                }
                v.extend(part.split(|&b| b == b';').next().unwrap_or_default());
            }
            v
        };
        if let Some(p) = resolve(&decode_all(&stripped), false, false) {
            out.push(("tomcat", p.clone(), false));
            out.push(("spring/", toggle_slash(&p), false));
        }
        // Spring on a decoded path: a decoded %3B is a parameter too.
        if let Some(p) = resolve(&once, false, true) {
            out.push(("spring-decoded", p.clone(), false));
            out.push(("spring-decoded/", toggle_slash(&p), false));
        }
        // nginx location / WSGI: decoded once (%2F splits), normalised.
        if let Some(p) = resolve(&once, false, false) {
            out.push(("wsgi", p, false));
        }
        // IIS: decoded twice, `\` as `/`, case-insensitive.
        if let Some(p) = resolve(&twice, true, false) {
            out.push(("iis", p.to_ascii_lowercase(), true));
            out.push(("iis/", toggle_slash(&p.to_ascii_lowercase()), true));
        }
        // Express: case-insensitive, trailing slash optional, on the raw path.
        if let Some(p) = resolve(bytes, false, false) {
            out.push(("express", p.to_ascii_lowercase(), true));
            out.push(("express/", toggle_slash(&p.to_ascii_lowercase()), true));
        }
        out
    }

    /// Paths built from the pieces that change readings.
    fn raw_path() -> impl Strategy<Value = String> {
        let piece = prop::sample::select(vec![
            "admin",
            "Admin",
            "ADMIN",
            "public",
            "files",
            "x",
            "X",
            "reports",
            "Reports",
            "a",
            "..",
            ".",
            "",
            ";x",
            "admin;x",
            "%2e%2e",
            "%252e%252e",
            "%2F",
            "%252F",
            "%3B",
            "%253B",
            "%5C",
            "%255C",
            "%41dmin",
            "%2541dmin",
            "%25",
            "a%20b",
            "%C3%A9",
        ]);
        (prop::collection::vec(piece, 1..6), any::<bool>()).prop_map(|(pieces, slash)| {
            let mut path = format!("/{}", pieces.join("/"));
            if slash {
                path.push('/');
            }
            path
        })
    }

    #[test]
    fn every_route_path_stays_reachable() {
        let table = table();
        for path in [
            "/",
            "/public",
            "/public/",
            "/admin",
            "/admin/Users",
            "/files",
            "/files/a%2Fb",
            "/files/admin",
            "/x",
            "/Reports",
            "/Reports/Q1",
            "/other/Page",
        ] {
            let routed = route_target(&table, "h", path, &Method::GET, |_| PathSemantics::Strict);
            assert!(routed.is_ok(), "{path}: {routed:?}");
        }
        for (path, refusal) in [
            ("/x/", Refusal::Ambiguous),
            ("/reports", Refusal::Ambiguous),
            ("/ADMIN", Refusal::Ambiguous),
            (
                "/public/admin%2Fx",
                Refusal::Target(TargetError::EncodedSlash),
            ),
        ] {
            let routed = route_target(&table, "h", path, &Method::GET, |_| PathSemantics::Strict);
            assert_eq!(routed.err(), Some(refusal), "{path}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(8192))]

        /// Whatever the gateway forwards, every backend runs under the policy that was
        /// authorized; what the gateway refuses never reaches one.
        #[test]
        fn every_backend_reading_lands_on_the_authorized_policy(raw in raw_path()) {
            let table = table();
            let method = Method::GET;
            let Ok((index, forwarded)) =
                route_target(&table, "h", &raw, &method, |_| PathSemantics::Strict)
            else {
                return Ok(());
            };
            let policy = table.routes()[index].policy;
            // What is forwarded is what was routed (I4).
            prop_assert_eq!(table.find_index("h", &forwarded, &method), Some(index));
            // Backends read the bytes they receive: the forwarded path.
            for (backend, path, folded) in backend_readings(&forwarded) {
                let found = if folded {
                    table.find_index_folded("h", &path, &method)
                } else {
                    table.find_index("h", &path, &method)
                };
                // A trailing-slash-tolerant backend maps a toggled path onto a handler
                // only where that handler is an exact path; under a prefix both forms
                // are the same subtree.
                let exact = found.is_some_and(|i| matches!(table.routes()[i].path, PathMatch::Exact(_)));
                if backend.ends_with('/') && !exact {
                    continue;
                }
                let name = |i: Option<usize>| i.map(|i| table.routes()[i].name.to_string());
                prop_assert_eq!(
                    found.map(|i| table.routes()[i].policy),
                    Some(policy),
                    "{} reads {} as {} ({:?}), authorized as {:?}",
                    backend, raw, path, name(found), name(Some(index))
                );
            }
        }
    }
}
