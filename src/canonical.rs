//! Canonical form of the request target: the one path and host that are both matched
//! against routes and forwarded upstream (invariant I4).
//!
//! Sits first in the request path, before routing. A request whose path or host cannot be
//! put in one unambiguous form is refused with 400 instead of guessed at: every known
//! auth-proxy bypass came from the proxy and the app disagreeing about what a path means.
//!
//! Path rules (RFC 3986 section 6.2.2 plus refusals):
//! - percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded; other
//!   percent-encodings are kept, with upper-case hex;
//! - `.` and `..` segments are resolved, empty segments (`//`) collapsed, a trailing `/` kept;
//! - refused: `%2F` (encoded `/`), `\` and `%5C`, `%00`, malformed `%` escapes, encodings that
//!   do not decode to UTF-8, a `..` that would climb above `/`, and `.`/`..` segments carrying
//!   path parameters (`..;x`), which Tomcat and Jetty resolve as `..` (the classic
//!   `/public/..;/admin` bypass).
//!
//! The common path (no `%`, no `\`, no `//`, no `/.`) is returned borrowed, without allocating.

use std::borrow::Cow;

/// Why a request target was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("the path does not start with '/'")]
    NotOriginForm,
    #[error("the path contains an encoded '/' (%2F)")]
    EncodedSlash,
    #[error("the path contains a backslash")]
    Backslash,
    #[error("the path contains an encoded NUL (%00)")]
    EncodedNul,
    #[error("the path contains a malformed percent-escape")]
    BadPercentEscape,
    #[error("the path contains a character that must be percent-encoded")]
    InvalidCharacter,
    #[error("the path does not decode to UTF-8")]
    InvalidUtf8,
    #[error("the path climbs above the root with '..'")]
    EscapesRoot,
    #[error("a '.' or '..' segment carries path parameters")]
    DotSegmentWithParams,
    #[error("the request has no host")]
    MissingHost,
    #[error("the request has more than one Host header")]
    DuplicateHost,
    #[error("the Host header is not a valid host")]
    InvalidHost,
    #[error("the Host header and the request target name different hosts")]
    HostMismatch,
}

/// Returns the canonical form of `raw` (the path part of the request target, without query).
pub fn canonical_path(raw: &str) -> Result<Cow<'_, str>, TargetError> {
    canonicalize(raw, false)
}

/// Like [`canonical_path`], but `%2F` is kept (encoded, upper-case) inside its segment
/// instead of refused: for routes with `allow_encoded_slash`.
pub fn canonical_path_keeping_encoded_slash(raw: &str) -> Result<Cow<'_, str>, TargetError> {
    canonicalize(raw, true)
}

fn canonicalize(raw: &str, keep_encoded_slash: bool) -> Result<Cow<'_, str>, TargetError> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(TargetError::NotOriginForm);
    }
    if is_plainly_canonical(bytes) {
        return Ok(Cow::Borrowed(raw));
    }
    canonicalize_slow(raw, keep_encoded_slash).map(Cow::Owned)
}

/// True when no rule above can change or refuse the path.
fn is_plainly_canonical(bytes: &[u8]) -> bool {
    let mut prev = 0u8;
    for &b in bytes {
        match b {
            b'%' | b'\\' => return false,
            b if !(0x21..0x7f).contains(&b) => return false,
            b'/' | b'.' if prev == b'/' => return false,
            _ => {}
        }
        prev = b;
    }
    true
}

fn canonicalize_slow(raw: &str, keep_encoded_slash: bool) -> Result<String, TargetError> {
    let mut segments: Vec<String> = Vec::new();
    let mut trailing_slash = false;
    let mut saw_high_byte = false;
    let mut parts = raw[1..].split('/').peekable();
    while let Some(part) = parts.next() {
        let is_last = parts.peek().is_none();
        let segment = decode_segment(part, keep_encoded_slash, &mut saw_high_byte)?;
        check_dot_params(&segment)?;
        if keep_encoded_slash && segment.contains("%2F") {
            // An app that decodes %2F would see these pieces as segments: none may be a dot
            // segment, or `/public/..%2Fadmin` becomes `/admin` behind our back.
            if segment
                .split("%2F")
                .any(|piece| check_dot_params(piece).is_err() || matches!(piece, "." | ".."))
            {
                return Err(TargetError::EncodedSlash);
            }
        }
        match segment.as_str() {
            "" | "." => trailing_slash = is_last,
            ".." => {
                segments.pop().ok_or(TargetError::EscapesRoot)?;
                trailing_slash = is_last;
            }
            _ => {
                segments.push(segment);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(raw.len());
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if segments.is_empty() || trailing_slash {
        out.push('/');
    }
    if saw_high_byte {
        check_utf8(&out)?;
    }
    Ok(out)
}

/// Decodes unreserved escapes, normalises the others to upper-case hex, refuses the
/// characters that would change the path's structure at the app.
fn decode_segment(
    part: &str,
    keep_encoded_slash: bool,
    saw_high_byte: &mut bool,
) -> Result<String, TargetError> {
    let bytes = part.as_bytes();
    let mut out = String::with_capacity(part.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => return Err(TargetError::Backslash),
            b'%' => {
                let hi = bytes.get(i + 1).and_then(|b| hex_value(*b));
                let lo = bytes.get(i + 2).and_then(|b| hex_value(*b));
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(TargetError::BadPercentEscape);
                };
                let value = hi << 4 | lo;
                match value {
                    0 => return Err(TargetError::EncodedNul),
                    b'/' if !keep_encoded_slash => return Err(TargetError::EncodedSlash),
                    b'\\' => return Err(TargetError::Backslash),
                    v if is_unreserved(v) => out.push(char::from(v)),
                    v => {
                        *saw_high_byte |= v >= 0x80;
                        out.push('%');
                        out.push(char::from(HEX_UPPER[usize::from(v >> 4)]));
                        out.push(char::from(HEX_UPPER[usize::from(v & 0xf)]));
                    }
                }
                i += 3;
            }
            b if !(0x21..0x7f).contains(&b) => return Err(TargetError::InvalidCharacter),
            _ => {
                // Copy the run up to the next byte that needs a look (all ASCII here).
                let run = bytes[i..]
                    .iter()
                    .position(|&b| matches!(b, b'%' | b'\\') || !(0x21..0x7f).contains(&b))
                    .map_or(bytes.len(), |n| i + n);
                out.push_str(&part[i..run]);
                i = run;
            }
        }
    }
    Ok(out)
}

/// `..;jsessionid=x` is `..` to a servlet container: refuse rather than disagree.
fn check_dot_params(segment: &str) -> Result<(), TargetError> {
    let before_params = segment
        .split_once(';')
        .map(|(head, _)| head)
        .or_else(|| segment.split_once("%3B").map(|(head, _)| head));
    match before_params {
        Some("." | "..") => Err(TargetError::DotSegmentWithParams),
        _ => Ok(()),
    }
}

fn check_utf8(canonical: &str) -> Result<(), TargetError> {
    let bytes = canonical.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            // Escapes in canonical output are always well-formed.
            decoded.push(
                hex_value(bytes[i + 1]).unwrap_or(0) << 4 | hex_value(bytes[i + 2]).unwrap_or(0),
            );
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    std::str::from_utf8(&decoded).map_err(|_| TargetError::InvalidUtf8)?;
    Ok(())
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Normalises a host as it appears in `Host` or the URI authority: the port and a trailing
/// dot are dropped and letters lower-cased. Borrowed when nothing changes.
///
/// Accepted: letters, digits, `-._` and the `[]:` of IPv6 literals, then an optional port of
/// at most five digits. One pass over the bytes (every request runs this on its `Host`);
/// `tests::reference_host` is the plain spelling it is checked against.
pub fn canonical_host(authority: &str) -> Result<Cow<'_, str>, TargetError> {
    let bytes = authority.as_bytes();
    let mut upper = false;
    let mut last_colon = None;
    let mut first_close = None;
    for (i, &b) in bytes.iter().enumerate() {
        match HOST_BYTES[usize::from(b)] {
            HostByte::Plain => {}
            HostByte::Upper => upper = true,
            HostByte::Colon => last_colon = Some(i),
            HostByte::Close => {
                first_close.get_or_insert(i);
            }
            HostByte::Invalid => return Err(TargetError::InvalidHost),
        }
    }
    // Every byte is allowed; what is left is where the host ends and the port begins.
    let host = if bytes.first() == Some(&b'[') {
        let end = first_close.ok_or(TargetError::InvalidHost)?;
        let rest = &authority[end + 1..];
        if !(rest.is_empty() || valid_port(rest.strip_prefix(':'))) {
            return Err(TargetError::InvalidHost);
        }
        &authority[..=end]
    } else {
        match last_colon {
            None => authority,
            Some(i) if valid_port(Some(&authority[i + 1..])) => &authority[..i],
            Some(_) => return Err(TargetError::InvalidHost),
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        return Err(TargetError::InvalidHost);
    }
    // A port is digits only and a bracket's tail is `:` and digits: any upper-case letter
    // seen is in the host.
    if upper {
        Ok(Cow::Owned(host.to_ascii_lowercase()))
    } else {
        Ok(Cow::Borrowed(host))
    }
}

#[derive(Clone, Copy)]
enum HostByte {
    Plain,
    Upper,
    Colon,
    Close,
    Invalid,
}

const HOST_BYTES: [HostByte; 256] = {
    let mut table = [HostByte::Invalid; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = match c {
            b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'[' => HostByte::Plain,
            b'A'..=b'Z' => HostByte::Upper,
            b':' => HostByte::Colon,
            b']' => HostByte::Close,
            _ => HostByte::Invalid,
        };
        b += 1;
    }
    table
};

fn valid_port(port: Option<&str>) -> bool {
    matches!(port, Some(p) if p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> String {
        canonical_path(raw)
            .unwrap_or_else(|e| panic!("{raw}: {e}"))
            .into_owned()
    }

    #[test]
    fn plain_paths_are_borrowed() {
        for p in ["/", "/api", "/api/x", "/api/x/", "/a.b/c..d", "/x;y=1"] {
            assert!(matches!(canonical_path(p), Ok(Cow::Borrowed(_))), "{p}");
        }
    }

    #[test]
    fn dot_segments_and_slashes_resolve() {
        assert_eq!(ok("/a/./b"), "/a/b");
        assert_eq!(ok("/a/../b"), "/b");
        assert_eq!(ok("/a/b/.."), "/a/");
        assert_eq!(ok("/a/b/."), "/a/b/");
        assert_eq!(ok("//a///b//"), "/a/b/");
        assert_eq!(ok("/a/.."), "/");
        assert_eq!(ok("/."), "/");
        assert_eq!(ok("/public/../admin"), "/admin");
        assert_eq!(ok("/.well-known/x"), "/.well-known/x");
        assert_eq!(ok("/a/..b"), "/a/..b");
    }

    #[test]
    fn unreserved_escapes_decode_and_others_normalise() {
        assert_eq!(ok("/%61pi"), "/api");
        assert_eq!(ok("/a%2e/b"), "/a./b");
        assert_eq!(ok("/x/%2e%2E/api"), "/api");
        assert_eq!(ok("/a%20b"), "/a%20b");
        assert_eq!(ok("/a%3fb%3b"), "/a%3Fb%3B");
        assert_eq!(ok("/caf%C3%A9"), "/caf%C3%A9");
    }

    #[test]
    fn structure_changing_input_is_refused() {
        let cases = [
            ("/a%2Fb", TargetError::EncodedSlash),
            ("/a%2fb", TargetError::EncodedSlash),
            ("/a\\b", TargetError::Backslash),
            ("/a%5Cb", TargetError::Backslash),
            ("/a%00", TargetError::EncodedNul),
            ("/a%zz", TargetError::BadPercentEscape),
            ("/a%2", TargetError::BadPercentEscape),
            ("/a%", TargetError::BadPercentEscape),
            ("/..", TargetError::EscapesRoot),
            ("/a/../..", TargetError::EscapesRoot),
            ("/%2e%2e/x", TargetError::EscapesRoot),
            ("/public/..;/admin", TargetError::DotSegmentWithParams),
            ("/public/.;x/admin", TargetError::DotSegmentWithParams),
            ("/public/..%3Bx/admin", TargetError::DotSegmentWithParams),
            ("/%C3%28", TargetError::InvalidUtf8),
            ("/%FF", TargetError::InvalidUtf8),
            ("/..\u{7}/\u{4e4}7", TargetError::InvalidCharacter),
            ("/a b", TargetError::InvalidCharacter),
            ("/caf\u{e9}", TargetError::InvalidCharacter),
            ("*", TargetError::NotOriginForm),
            ("", TargetError::NotOriginForm),
        ];
        for (raw, want) in cases {
            assert_eq!(canonical_path(raw), Err(want), "{raw}");
        }
    }

    #[test]
    fn encoded_slashes_can_be_kept() {
        let keep = |raw| {
            canonical_path_keeping_encoded_slash(raw)
                .unwrap()
                .into_owned()
        };
        assert_eq!(keep("/files/a%2fb"), "/files/a%2Fb");
        assert_eq!(keep("/files/a%2Fb/../c"), "/files/c");
        for sneaky in [
            "/x/%2e%2e%2f",
            "/x/..%2Fadmin",
            "/x/a%2F..%2F..",
            "/x/.%2Fa",
            "/x/a%2F..;b",
        ] {
            assert_eq!(
                canonical_path_keeping_encoded_slash(sneaky),
                Err(TargetError::EncodedSlash),
                "{sneaky}"
            );
        }
        assert_eq!(
            canonical_path_keeping_encoded_slash("/a%5C"),
            Err(TargetError::Backslash)
        );
    }

    #[test]
    fn canonicalising_twice_changes_nothing() {
        for raw in [
            "/a/./b/../c//d/",
            "/%61%62%2e/x",
            "/a%3fb",
            "/x/y/..",
            "/caf%c3%a9/",
        ] {
            let once = ok(raw);
            assert_eq!(ok(&once), once, "{raw}");
        }
    }

    #[test]
    fn hosts_normalise() {
        assert_eq!(
            canonical_host("CRM.Example.com").unwrap(),
            "crm.example.com"
        );
        assert_eq!(
            canonical_host("crm.example.com.:8443").unwrap(),
            "crm.example.com"
        );
        assert_eq!(canonical_host("[::1]:8080").unwrap(), "[::1]");
        assert_eq!(canonical_host("127.0.0.1").unwrap(), "127.0.0.1");
        assert!(matches!(
            canonical_host("crm.example.com"),
            Ok(Cow::Borrowed(_))
        ));
        for bad in [
            "",
            ":80",
            "a b",
            "user@host",
            "host:port",
            "host:123456",
            "[::1",
            "a/b",
        ] {
            assert_eq!(canonical_host(bad), Err(TargetError::InvalidHost), "{bad}");
        }
    }

    /// The rules of [`canonical_host`] spelled step by step, as they were before it became
    /// one pass: the property test below holds the two to the same answers.
    pub(super) fn reference_host(authority: &str) -> Result<Cow<'_, str>, TargetError> {
        if authority.contains('@') {
            return Err(TargetError::InvalidHost);
        }
        let host = if authority.starts_with('[') {
            let end = authority.find(']').ok_or(TargetError::InvalidHost)?;
            let rest = &authority[end + 1..];
            if !(rest.is_empty() || valid_port(rest.strip_prefix(':'))) {
                return Err(TargetError::InvalidHost);
            }
            &authority[..=end]
        } else {
            match authority.rsplit_once(':') {
                None => authority,
                Some((host, port)) if valid_port(Some(port)) => host,
                Some(_) => return Err(TargetError::InvalidHost),
            }
        };
        let host = host.strip_suffix('.').unwrap_or(host);
        if host.is_empty() {
            return Err(TargetError::InvalidHost);
        }
        let valid = host.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'[' | b']' | b':')
        });
        if !valid {
            return Err(TargetError::InvalidHost);
        }
        if host.bytes().any(|b| b.is_ascii_uppercase()) {
            Ok(Cow::Owned(host.to_ascii_lowercase()))
        } else {
            Ok(Cow::Borrowed(host))
        }
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use crate::router::tests::prefix_table;
    use proptest::prelude::*;

    /// Paths built from the pieces attackers combine.
    fn raw_path() -> impl Strategy<Value = String> {
        let piece = prop::sample::select(vec![
            "a", "b", "api", "admin", "..", ".", "", "%2e", "%2E%2e", "%2e.", "%41", "%61pi",
            "%2F", "%5C", ";x", "..;", ".;a", "%00", "%C3%A9", "%FF", "~", "%25", "a%20b", "%3B",
        ]);
        prop::collection::vec(piece, 0..8).prop_map(|pieces| format!("/{}", pieces.join("/")))
    }

    /// Authorities built from the pieces that decide where a host ends.
    fn raw_authority() -> impl Strategy<Value = String> {
        let piece = prop::sample::select(vec![
            "a", "B", "crm", "Example", ".", "-", "_", ":", "::1", "[", "]", "[::1]", "@", "8080",
            "123456", "1", "", " ", "/", "%", "\u{e9}", "0x", "~", "*",
        ]);
        prop::collection::vec(piece, 0..7).prop_map(|pieces| pieces.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn one_pass_host_agrees_with_the_reference(raw in raw_authority()) {
            let fast = canonical_host(&raw);
            prop_assert_eq!(&fast, &super::tests::reference_host(&raw), "{:?}", raw);
            // Borrowed exactly when nothing had to be lower-cased.
            if let Ok(host) = fast {
                prop_assert_eq!(matches!(host, Cow::Borrowed(_)), !raw.bytes().any(|b| b.is_ascii_uppercase()));
            }
        }

        #[test]
        fn canonicalising_is_idempotent(raw in raw_path()) {
            if let Ok(once) = canonical_path(&raw) {
                let twice = canonical_path(&once).expect("a canonical path is valid");
                prop_assert_eq!(twice.as_ref(), once.as_ref());
                prop_assert!(!once.contains("//"));
                prop_assert!(!once.split('/').any(|s| s == "." || s == ".."));
            }
        }

        #[test]
        fn the_chosen_route_is_a_segment_prefix_of_the_forwarded_path(raw in raw_path()) {
            let table = prefix_table(&["/", "/a", "/a/b", "/api", "/admin"]);
            if let Ok(path) = canonical_path(&raw) {
                let route = table.find("h", &path, &http::Method::GET).expect("/ matches all");
                let crate::router::PathMatch::Prefix(prefix) = &route.path else { unreachable!() };
                let prefix: &str = prefix;
                // The prefix holds on segment boundaries of the canonical (= forwarded) path.
                prop_assert!(
                    prefix == "/" || path == prefix || path.starts_with(&format!("{prefix}/")),
                    "{} routed to {}", path, prefix
                );
                // And the same route would be chosen for the forwarded path itself.
                let again = table.find("h", &path, &http::Method::GET).unwrap();
                prop_assert_eq!(&again.name, &route.name);
            }
        }

        #[test]
        fn dot_dot_never_reaches_a_narrower_prefix_than_the_canonical_form(raw in raw_path()) {
            let table = prefix_table(&["/", "/a", "/a/b", "/admin"]);
            if let Ok(path) = canonical_path(&raw) {
                let route = table.find("h", &path, &http::Method::GET).unwrap();
                // A textual prefix of the raw path that the canonical path does not have
                // must never be the route: `/a/b/../x` is not under /a/b.
                if raw.starts_with("/a/b/") && !path.starts_with("/a/b") {
                    prop_assert_ne!(&*route.name, "/a/b");
                }
            }
        }
    }
}
