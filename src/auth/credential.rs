//! Finding the credential a route accepts in the request headers.
//!
//! Ambiguity is never resolved in the client's favour (invariant I10): two `Authorization`
//! headers, two cookies of the configured name (across all `Cookie` headers, as HTTP/2
//! splits them), or two of the route's sources carrying different tokens are refused
//! instead of picking one. `Authorization: Bearer` is read strictly: the scheme in any
//! case, one space, a token68; any other spacing is refused, never read as "no Bearer
//! token" (which would let a cookie source answer instead).

use http::HeaderMap;
use http::header::{AUTHORIZATION, COOKIE};

pub use crate::policy::TokenSource;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("more than one credential, carrying different tokens")]
    Ambiguous,
    #[error("the Bearer token is not a token68")]
    MalformedBearer,
    #[error("the Authorization header is not `Bearer`, one space, a token")]
    MalformedAuthorization,
}

/// A credential as found in the headers (see [`find_credential`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found<'h> {
    bytes: &'h [u8],
    /// A Bearer token whose RFC 6750 form has not been checked yet.
    unchecked_bearer: bool,
    /// For a cookie: where its `name=value` is (see [`rewrite_cookies_around`]).
    spot: Option<CookieSpot>,
}

/// Where a cookie credential was found: the `header`-th `Cookie` field (in
/// `HeaderMap::get_all` order), its `name=value` at bytes `start..end` (without the spaces
/// and `;` around it). The rewrite that drops it before forwarding skips those bytes instead
/// of reading the session JWT a second time (see [`rewrite_cookies_around`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CookieSpot {
    header: usize,
    start: usize,
    end: usize,
}

impl<'h> Found<'h> {
    /// The credential's bytes as sent: what the verified-token cache is keyed by.
    pub fn bytes(&self) -> &'h [u8] {
        self.bytes
    }

    /// Where a cookie credential is in the `Cookie` fields; `None` for a Bearer token.
    pub fn spot(&self) -> Option<CookieSpot> {
        self.spot
    }

    /// The credential as text; a Bearer token that is not an RFC 6750 b64token is refused.
    ///
    /// Only a verified-token cache miss needs it: a hit is keyed by the SHA-256 of bytes
    /// that were a whole verified JWT (base64url and dots only, a subset of b64token), so
    /// these bytes are those and the check would only read all ~700 of them again.
    pub fn text(&self) -> Result<&'h str, CredentialError> {
        if self.unchecked_bearer && !is_b64token(self.bytes) {
            // Spacing is a malformed header (400), other bytes a malformed token (401).
            if self.bytes.iter().any(|&b| b == b' ' || b == b'\t') {
                return Err(CredentialError::MalformedAuthorization);
            }
            return Err(CredentialError::MalformedBearer);
        }
        std::str::from_utf8(self.bytes).map_err(|_| CredentialError::MalformedBearer)
    }
}

/// Finds the token of the first source (in configured order) that is present.
/// Returns the index of that source and the token text.
pub fn find_token<'h>(
    headers: &'h HeaderMap,
    sources: &[TokenSource],
) -> Result<Option<(usize, &'h str)>, CredentialError> {
    find_credential(headers, sources)?
        .map(|(index, found)| found.text().map(|token| (index, token)))
        .transpose()
}

/// [`find_token`] for the request path: the Bearer token's form is checked by
/// [`Found::text`], when the token is not a verified-token cache hit. The first source (in
/// the route's order) that is present answers; any later source that is present too must
/// carry the same token, else the request is ambiguous.
pub fn find_credential<'h>(
    headers: &'h HeaderMap,
    sources: &[TokenSource],
) -> Result<Option<(usize, Found<'h>)>, CredentialError> {
    let mut first: Option<(usize, Found<'h>)> = None;
    for (index, source) in sources.iter().enumerate() {
        let found = match source {
            TokenSource::Bearer => bearer_token(headers)?,
            TokenSource::Cookie(name) => cookie_found(headers, name)?.map(|(value, spot)| Found {
                bytes: value,
                unchecked_bearer: false,
                spot: Some(spot),
            }),
        };
        match (&first, found) {
            (None, Some(found)) => first = Some((index, found)),
            (Some((_, kept)), Some(other)) if kept.bytes != other.bytes => {
                return Err(CredentialError::Ambiguous);
            }
            _ => {}
        }
    }
    Ok(first)
}

/// The token of an `Authorization: Bearer` header; `None` when there is no Authorization
/// header or it uses another scheme (e.g. the app's own Basic auth). The scheme is the
/// text up to the first space or tab; a `Bearer` scheme must be followed by exactly one
/// space and a token without spaces ([`Found::text`] checks the token68 form).
fn bearer_token(headers: &HeaderMap) -> Result<Option<Found<'_>>, CredentialError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(CredentialError::Ambiguous);
    }
    let bytes = value.as_bytes();
    let end = bytes
        .iter()
        .position(|&b| b == b' ' || b == b'\t')
        .unwrap_or(bytes.len());
    if !bytes[..end].eq_ignore_ascii_case(b"bearer") {
        return Ok(None);
    }
    // One space, then a token that neither starts nor ends with white space (inner white
    // space fails the token68 check, as a malformed header).
    let token = match &bytes[end..] {
        [b' ', token @ ..] => token,
        _ => return Err(CredentialError::MalformedAuthorization),
    };
    match (token.first(), token.last()) {
        (Some(first), Some(last))
            if !matches!(first, b' ' | b'\t') && !matches!(last, b' ' | b'\t') =>
        {
            Ok(Some(Found {
                bytes: token,
                unchecked_bearer: true,
                spot: None,
            }))
        }
        _ => Err(CredentialError::MalformedAuthorization),
    }
}

/// RFC 6750 b64token bytes: ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/". Compares
/// only, no table and no branch, so a run of them compiles to vector code.
#[inline(always)]
fn is_b64token_byte(b: u8) -> bool {
    ((b | 0x20).wrapping_sub(b'a') < 26)
        | (b.wrapping_sub(b'0') < 10)
        | (b == b'-')
        | (b == b'.')
        | (b == b'_')
        | (b == b'~')
        | (b == b'+')
        | (b == b'/')
}

/// RFC 6750 b64token: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
/// A signed JWT is several hundred bytes and this runs on every request that carries one:
/// the bytes are checked 64 at a time without an early exit inside a block.
fn is_b64token(token: &[u8]) -> bool {
    let body_len = token.iter().rposition(|&b| b != b'=').map_or(0, |i| i + 1);
    body_len > 0
        && token[..body_len]
            .chunks(64)
            .all(|block| block.iter().fold(true, |ok, &b| ok & is_b64token_byte(b)))
}

/// The bytes of a header that [`http::HeaderValue::to_str`] accepts (every byte visible
/// ASCII or a tab), else `None`. The same test without a branch per byte, so that the
/// compiler checks a block of bytes at a time: a `Cookie` header holding a session JWT is
/// read twice per request, to find the token and to forward the other cookies.
fn header_text(value: &http::HeaderValue) -> Option<&[u8]> {
    let bytes = value.as_bytes();
    let visible = bytes.chunks(64).all(|block| {
        block.iter().fold(true, |ok, &b| {
            ok & ((b.wrapping_sub(b' ') < 0x5f) | (b == b'\t'))
        })
    });
    visible.then_some(bytes)
}

/// The cookies of one `Cookie` header: its `;`-separated pieces with the spaces around them
/// trimmed, each as (name, value) split at the first `=` (a piece without one is all name,
/// value `None`). A `;` is looked for with [`find_byte`]; the `=` with a plain loop, since it
/// ends the (short) name.
fn cookies(header: &[u8]) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> {
    let mut rest = Some(header);
    std::iter::from_fn(move || {
        let current = rest?;
        let piece = match find_byte(b';', current) {
            Some(at) => {
                rest = Some(&current[at + 1..]);
                &current[..at]
            }
            None => {
                rest = None;
                current
            }
        };
        let piece = trim_spaces(piece);
        Some(match piece.iter().position(|&b| b == b'=') {
            Some(at) => (&piece[..at], Some(&piece[at + 1..])),
            None => (piece, None),
        })
    })
}

/// The first `byte` in `haystack`: `memchr`'s vector search where it is long (a session JWT
/// is hundreds of bytes without a `;`), a plain loop where it is shorter than one vector and
/// the search would cost less than `memchr`'s dispatch.
#[inline]
fn find_byte(byte: u8, haystack: &[u8]) -> Option<usize> {
    if haystack.len() < 32 {
        haystack.iter().position(|&b| b == byte)
    } else {
        memchr::memchr(byte, haystack)
    }
}

fn trim_spaces(mut bytes: &[u8]) -> &[u8] {
    while let [b' ', rest @ ..] = bytes {
        bytes = rest;
    }
    while let [rest @ .., b' '] = bytes {
        bytes = rest;
    }
    bytes
}

/// The value of cookie `name` across every `Cookie` header (without surrounding quotes).
pub fn cookie_value<'h>(
    headers: &'h HeaderMap,
    name: &str,
) -> Result<Option<&'h str>, CredentialError> {
    // Visible ASCII (`header_text`), so always UTF-8.
    Ok(cookie_found(headers, name)?.and_then(|(value, _)| std::str::from_utf8(value).ok()))
}

/// [`cookie_value`] as bytes, and where the cookie is: what a credential is taken from (its
/// text is needed only when the verified-token cache does not know it).
fn cookie_found<'h>(
    headers: &'h HeaderMap,
    name: &str,
) -> Result<Option<(&'h [u8], CookieSpot)>, CredentialError> {
    let mut found = None;
    for (index, header) in headers.get_all(COOKIE).iter().enumerate() {
        let Some(text) = header_text(header) else {
            continue;
        };
        for (key, value) in cookies(text) {
            let Some(value) = value else {
                continue;
            };
            if key == name.as_bytes() {
                if found.is_some() {
                    return Err(CredentialError::Ambiguous);
                }
                // `key` and `value` are slices of `text`: their offsets in it.
                let start = key.as_ptr() as usize - text.as_ptr() as usize;
                let end = value.as_ptr() as usize + value.len() - text.as_ptr() as usize;
                let spot = CookieSpot {
                    header: index,
                    start,
                    end,
                };
                let unquoted = value
                    .strip_prefix(b"\"")
                    .and_then(|v| v.strip_suffix(b"\""))
                    .unwrap_or(value);
                found = Some((unquoted, spot));
            }
        }
    }
    Ok(found)
}

/// Rewrites the `Cookie` headers without cookie `name`, joining what remains into one
/// header (HTTP/1 upstreams expect a single `Cookie` line). Removes the header when nothing
/// is left.
pub fn remove_cookie(headers: &mut HeaderMap, name: &str) {
    remove_cookies(headers, |n| n == name.as_bytes());
}

/// [`remove_cookie`] for every cookie whose name `doomed` picks. Leaves the headers
/// untouched (no rewrite, no allocation) when no such cookie is present.
pub fn remove_cookies(headers: &mut HeaderMap, doomed: impl Fn(&[u8]) -> bool) {
    // A header that is not text is dropped by the rewrite below, like a doomed cookie.
    let present = headers.get_all(COOKIE).iter().any(|header| {
        header_text(header).is_none_or(|text| cookies(text).any(|(name, _)| doomed(name)))
    });
    if present {
        rewrite_cookies(headers, doomed);
    }
}

/// [`remove_cookies`] when a doomed cookie is known to be there (the one a credential was
/// taken from): the rewrite without the pass that looks for one. That pass reads the whole
/// header, session JWT included, so it is worth skipping on every cookie-authenticated request.
pub fn rewrite_cookies(headers: &mut HeaderMap, doomed: impl Fn(&[u8]) -> bool) {
    rewrite(headers, None, doomed);
}

/// [`rewrite_cookies`] for the request whose credential, cookie `name` (one of those `doomed`
/// picks), was found at `spot`: the same fields, but the credential's own bytes (a session
/// JWT, most of the header) are skipped instead of read again. The pass that found it read
/// that field's text already. Where the spot does not hold `name=` (the fields changed since),
/// or there is none, the field is read whole, as [`rewrite_cookies`] does.
pub fn rewrite_cookies_around(
    headers: &mut HeaderMap,
    spot: Option<CookieSpot>,
    name: &[u8],
    doomed: impl Fn(&[u8]) -> bool,
) {
    rewrite(headers, spot.map(|spot| (spot, name)), doomed);
}

/// [`rewrite_cookies_around`], or [`rewrite_cookies`] without a spot.
fn rewrite(
    headers: &mut HeaderMap,
    around: Option<(CookieSpot, &[u8])>,
    doomed: impl Fn(&[u8]) -> bool,
) {
    let mut kept: Vec<u8> = Vec::new();
    let mut fields = 0;
    for (index, header) in headers.get_all(COOKIE).iter().enumerate() {
        fields += 1;
        let bytes = header.as_bytes();
        let spot = around.filter(|&(spot, name)| {
            index == spot.header
                && bytes.get(spot.start..spot.end).is_some_and(|piece| {
                    piece.get(..name.len()) == Some(name) && piece.get(name.len()) == Some(&b'=')
                })
        });
        if let Some((spot, _)) = spot {
            let room = bytes.len() - (spot.end - spot.start);
            keep_cookies(&mut kept, &bytes[..spot.start], room, &doomed);
            keep_cookies(&mut kept, &bytes[spot.end..], room, &doomed);
        } else if let Some(text) = header_text(header) {
            keep_cookies(&mut kept, text, text.len(), &doomed);
        }
    }
    replace_cookies(headers, kept, fields);
}

/// Appends the cookies of `text` that `doomed` does not pick to `kept`, `; `-separated.
/// `room`: what to reserve when `kept` gets its first cookie (for the usual single `Cookie`
/// field, one allocation and no regrowth).
fn keep_cookies(kept: &mut Vec<u8>, text: &[u8], room: usize, doomed: &impl Fn(&[u8]) -> bool) {
    for (name, value) in cookies(text) {
        if (name.is_empty() && value.is_none()) || doomed(name) {
            continue;
        }
        if kept.is_empty() {
            kept.reserve_exact(room);
        } else {
            kept.extend_from_slice(b"; ");
        }
        kept.extend_from_slice(name);
        if let Some(value) = value {
            kept.push(b'=');
            kept.extend_from_slice(value);
        }
    }
}

/// The `fields` `Cookie` fields replaced by one holding `kept`, or by none when it is empty.
/// The usual single field is overwritten in place: one lookup, where removing it and
/// inserting the new one took two.
fn replace_cookies(headers: &mut HeaderMap, kept: Vec<u8>, fields: usize) {
    let value = (!kept.is_empty())
        .then(|| http::HeaderValue::from_maybe_shared(bytes::Bytes::from(kept)).ok())
        .flatten();
    match value {
        Some(value) if fields == 1 => {
            if let Some(field) = headers.get_mut(COOKIE) {
                *field = value;
            }
        }
        // `insert` drops every value the name had.
        Some(value) => {
            headers.insert(COOKIE, value);
        }
        None => {
            headers.remove(COOKIE);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use http::HeaderValue;

    /// A header map from (name, value) pairs, repeated names appended.
    pub(crate) fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    const BEARER: &[TokenSource] = &[TokenSource::Bearer];

    #[test]
    fn a_quoted_cookie_value_loses_its_quotes_only() {
        let value = |header: &str| {
            let map = headers(&[("cookie", header)]);
            cookie_value(&map, "a").map(|v| v.map(str::to_owned))
        };
        assert_eq!(value("x=1; a=\"tok\"; b=2"), Ok(Some("tok".into())));
        assert_eq!(value("a=\"\""), Ok(Some("".into())));
        assert_eq!(value("a=\""), Ok(Some("\"".into())));
        assert_eq!(value("a=\"tok"), Ok(Some("\"tok".into())));
        assert_eq!(
            value(" a = 1"),
            Ok(None),
            "a space before `=` is part of the name"
        );
        assert_eq!(value("a=1;a=2"), Err(CredentialError::Ambiguous));
    }

    #[test]
    fn header_text_is_to_str() {
        for b in 0..=255u8 {
            for at in [0, 1, 63, 64, 65, 699] {
                let mut bytes = vec![b'a'; 700];
                bytes[at] = b;
                let Ok(value) = HeaderValue::from_bytes(&bytes) else {
                    continue;
                };
                assert_eq!(
                    header_text(&value),
                    value.to_str().ok().map(str::as_bytes),
                    "byte {b:#x} at {at}"
                );
            }
        }
        assert_eq!(header_text(&HeaderValue::from_static("")), Some(&b""[..]));
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        for v in [
            "Bearer abc.def.ghi",
            "bearer abc.def.ghi",
            "BEARER abc.def.ghi",
        ] {
            let h = headers(&[("authorization", v)]);
            assert_eq!(find_token(&h, BEARER), Ok(Some((0, "abc.def.ghi"))), "{v}");
        }
    }

    #[test]
    fn bearer_spacing_is_strict() {
        for v in [
            "Bearer",
            "Bearer ",
            "Bearer  abc",
            "Bearer\tabc",
            "Bearer abc ",
            "Bearer abc\t",
            "Bearer \tabc",
            "bearer\t abc",
            "Bearer a b",
        ] {
            let h = headers(&[("authorization", v)]);
            assert_eq!(
                find_token(&h, BEARER),
                Err(CredentialError::MalformedAuthorization),
                "{v:?}"
            );
        }
        // A malformed Bearer header is never read as "no Bearer token": the cookie source
        // after it does not answer instead.
        let sources = [TokenSource::Bearer, TokenSource::Cookie("at".into())];
        let h = headers(&[("authorization", "Bearer\tx"), ("cookie", "at=y")]);
        assert_eq!(
            find_token(&h, &sources),
            Err(CredentialError::MalformedAuthorization)
        );
        let h = headers(&[("authorization", "Bearer a%b")]);
        assert_eq!(
            find_token(&h, BEARER),
            Err(CredentialError::MalformedBearer)
        );
    }

    #[test]
    fn other_schemes_are_not_ours() {
        let h = headers(&[("authorization", "Basic dXNlcjpwYXNz")]);
        assert_eq!(find_token(&h, BEARER), Ok(None));
        assert_eq!(find_token(&HeaderMap::new(), BEARER), Ok(None));
    }

    #[test]
    fn malformed_and_ambiguous_bearer_is_refused() {
        let h = headers(&[("authorization", "Bearer")]);
        assert_eq!(
            find_token(&h, BEARER),
            Err(CredentialError::MalformedAuthorization)
        );
        let h = headers(&[("authorization", "Bearer a!b")]);
        assert_eq!(
            find_token(&h, BEARER),
            Err(CredentialError::MalformedBearer)
        );
        let h = headers(&[("authorization", "Bearer a"), ("authorization", "Bearer b")]);
        assert_eq!(find_token(&h, BEARER), Err(CredentialError::Ambiguous));
    }

    #[test]
    fn cookies_are_found_across_headers_and_duplicates_refused() {
        let src = [TokenSource::Cookie("at".into())];
        let h = headers(&[("cookie", "a=1; at=tok"), ("cookie", "b=2")]);
        assert_eq!(find_token(&h, &src), Ok(Some((0, "tok"))));
        let h = headers(&[("cookie", "a=1; at=tok"), ("cookie", "at=other")]);
        assert_eq!(find_token(&h, &src), Err(CredentialError::Ambiguous));
        let h = headers(&[("cookie", "xat=tok; at_=x")]);
        assert_eq!(find_token(&h, &src), Ok(None));
    }

    #[test]
    fn sources_are_tried_in_order_and_must_agree() {
        let src = [TokenSource::Bearer, TokenSource::Cookie("at".into())];
        let h = headers(&[("cookie", "at=b"), ("authorization", "Bearer b")]);
        assert_eq!(find_token(&h, &src), Ok(Some((0, "b"))));
        let h = headers(&[("cookie", "at=c")]);
        assert_eq!(find_token(&h, &src), Ok(Some((1, "c"))));
        // Two sources, two different tokens: which one the app believes is anyone's guess.
        let h = headers(&[("cookie", "at=c"), ("authorization", "Bearer b")]);
        assert_eq!(find_token(&h, &src), Err(CredentialError::Ambiguous));
        let two = [
            TokenSource::Cookie("a".into()),
            TokenSource::Cookie("b".into()),
        ];
        let h = headers(&[("cookie", "a=1; b=2")]);
        assert_eq!(find_token(&h, &two), Err(CredentialError::Ambiguous));
        let h = headers(&[("cookie", "a=1; b=\"1\"")]);
        assert_eq!(find_token(&h, &two), Ok(Some((0, "1"))));
    }

    #[test]
    fn removing_a_cookie_keeps_the_others() {
        let mut h = headers(&[("cookie", "a=1; at=tok"), ("cookie", "b=2")]);
        remove_cookie(&mut h, "at");
        assert_eq!(h.get_all(COOKIE).iter().count(), 1);
        assert_eq!(h.get(COOKIE).unwrap(), "a=1; b=2");
        let mut h = headers(&[("cookie", "at=tok")]);
        remove_cookie(&mut h, "at");
        assert!(h.get(COOKIE).is_none());
    }

    /// The rules spelled out on text: the reference for the one-pass parser.
    fn reference_bearer(value: &HeaderValue) -> Result<Option<String>, CredentialError> {
        let Ok(value) = value.to_str() else {
            // Not text: the scheme is read from the bytes; only a Bearer one is refused.
            let bytes = value.as_bytes();
            let end = bytes
                .iter()
                .position(|&b| b == b' ' || b == b'\t')
                .unwrap_or(bytes.len());
            return if bytes[..end].eq_ignore_ascii_case(b"bearer") {
                let token = &bytes[end..];
                let spaced = token.first() != Some(&b' ')
                    || token.len() < 2
                    || token[1..].iter().any(|&b| b == b' ' || b == b'\t');
                Err(if spaced {
                    CredentialError::MalformedAuthorization
                } else {
                    CredentialError::MalformedBearer
                })
            } else {
                Ok(None)
            };
        };
        let (scheme, rest) = match value.find([' ', '\t']) {
            Some(at) => (&value[..at], &value[at..]),
            None => (value, ""),
        };
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Ok(None);
        }
        let Some(token) = rest.strip_prefix(' ') else {
            return Err(CredentialError::MalformedAuthorization);
        };
        if token.is_empty() || token.contains([' ', '\t']) {
            return Err(CredentialError::MalformedAuthorization);
        }
        let body = token.trim_end_matches('=');
        let valid = !body.is_empty()
            && body
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b));
        if !valid {
            return Err(CredentialError::MalformedBearer);
        }
        Ok(Some(token.to_owned()))
    }

    #[test]
    fn every_byte_at_every_block_position_is_judged_like_the_text_rules() {
        // The check runs in 64-byte blocks: a bad byte must be caught in any block, at
        // either end of one, and in the short last block.
        let valid = |b: u8| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b);
        for position in [0, 1, 62, 63, 64, 65, 127, 128, 190, 199] {
            for b in 0..=255u8 {
                let mut token = vec![b'a'; 200];
                token[position] = b;
                let expected = valid(b) || (b == b'=' && position == 199);
                assert_eq!(is_b64token(&token), expected, "byte {b} at {position}");
            }
        }
        assert!(is_b64token(b"abc=="));
        assert!(!is_b64token(b"=="));
        assert!(!is_b64token(b""));
        assert!(!is_b64token(b"ab=c"));
    }

    /// The `str` version the byte parser replaced: the oracle for the proptest below.
    fn reference_cookie_value(
        headers: &HeaderMap,
        name: &str,
    ) -> Result<Option<String>, CredentialError> {
        let mut found = None;
        for header in headers.get_all(COOKIE) {
            let Ok(text) = header.to_str() else { continue };
            for pair in text.split(';') {
                let Some((key, value)) = pair.trim_matches(' ').split_once('=') else {
                    continue;
                };
                if key == name {
                    if found.is_some() {
                        return Err(CredentialError::Ambiguous);
                    }
                    let value = value
                        .strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .unwrap_or(value);
                    found = Some(value.to_owned());
                }
            }
        }
        Ok(found)
    }

    fn reference_rewrite(headers: &HeaderMap, name: &str) -> Option<String> {
        let mut kept = String::new();
        for header in headers.get_all(COOKIE) {
            let Ok(text) = header.to_str() else { continue };
            for pair in text.split(';') {
                let pair = pair.trim_matches(' ');
                let key = pair.split_once('=').map_or(pair, |(k, _)| k);
                if pair.is_empty() || key == name {
                    continue;
                }
                if !kept.is_empty() {
                    kept.push_str("; ");
                }
                kept.push_str(pair);
            }
        }
        (!kept.is_empty()).then_some(kept)
    }

    proptest::proptest! {
        #[test]
        fn the_cookie_parser_agrees_with_the_str_version(
            values in proptest::collection::vec("[ab=; \"\u{e9}]{0,24}", 1..3),
            name in proptest::prop_oneof!["a", "b", "ab"],
        ) {
            let mut map = HeaderMap::new();
            for value in &values {
                map.append(COOKIE, HeaderValue::from_str(value).unwrap());
            }
            let ours = cookie_value(&map, &name).map(|v| v.map(str::to_owned));
            proptest::prop_assert_eq!(ours, reference_cookie_value(&map, &name));
            let expected = reference_rewrite(&map, &name);
            // A header that is not text counts as holding a doomed cookie.
            let present = values.iter().any(|v| {
                !v.is_ascii()
                    || v.split(';').any(|p| {
                        let p = p.trim_matches(' ');
                        p.split_once('=').map_or(p, |(k, _)| k) == name
                    })
            });
            remove_cookie(&mut map, &name);
            let after: Vec<String> =
                map.get_all(COOKIE).iter().map(|v| v.to_str().unwrap().to_owned()).collect();
            if present {
                proptest::prop_assert_eq!(after, expected.into_iter().collect::<Vec<_>>());
            } else {
                proptest::prop_assert_eq!(after, values, "rewritten without need");
            }
        }

        #[test]
        fn the_rewrite_around_the_found_cookie_agrees_with_the_full_rewrite(
            before in "[ab=; \"]{0,12}",
            token in "[a-z0-9._\"-]{0,30}",
            after in "[ab=; \"]{0,12}",
            other in proptest::option::of("[ab=; \"\u{e9}]{0,16}"),
            other_first in proptest::bool::ANY,
            lead in proptest::prop_oneof!["", ";", ";  "],
            trail in proptest::prop_oneof!["", ";", " ;"],
            name in proptest::prop_oneof!["a", "b", "ab"],
            also in proptest::prop_oneof!["", "a", "b"],
        ) {
            // One field holds `name=token` among arbitrary cookies (first, last, in the
            // middle, or alone); maybe a second field.
            let held = format!("{before}{lead}{name}={token}{trail}{after}");
            let mut fields = vec![held];
            if let Some(other) = other {
                fields.insert(if other_first { 0 } else { 1 }, other);
            }
            let mut map = HeaderMap::new();
            for field in &fields {
                map.append(COOKIE, HeaderValue::from_str(field).unwrap());
            }
            let Ok(Some((_, spot))) = cookie_found(&map, &name) else {
                // Ambiguous (the name is also in `before`, `after` or `other`): no credential.
                return Ok(());
            };
            // The credential's cookie, and maybe an own cookie of the gateway's.
            let doomed = |n: &[u8]| n == name.as_bytes() || (!also.is_empty() && n == also.as_bytes());
            let mut full = map.clone();
            rewrite_cookies(&mut full, doomed);
            let mut around = map.clone();
            rewrite_cookies_around(&mut around, Some(spot), name.as_bytes(), doomed);
            let text = |m: &HeaderMap| -> Vec<Vec<u8>> {
                m.get_all(COOKIE).iter().map(|v| v.as_bytes().to_vec()).collect()
            };
            proptest::prop_assert_eq!(text(&around), text(&full), "{:?}", fields);
            let forwarded = text(&around);
            proptest::prop_assert!(
                !forwarded.iter().any(|f| cookies(f).any(|(n, _)| n == name.as_bytes())),
                "the credential's cookie was forwarded: {:?}",
                forwarded
            );
        }

        #[test]
        fn one_pass_bearer_agrees_with_the_text_rules(
            scheme in proptest::prop_oneof!["Bearer", "bearer", "BEARER", "Basic", "Bearerx", ""],
            spaces in proptest::prop_oneof![proptest::strategy::Just(" "), proptest::strategy::Just(""), proptest::strategy::Just("  "), proptest::strategy::Just("\t"), proptest::strategy::Just(" \t")],
            token in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::sample::select(b"aZ09-._~+/= \t\"%".to_vec()),
                    proptest::num::u8::ANY
                ],
                0..40,
            ),
        ) {
            let mut bytes = scheme.as_bytes().to_vec();
            bytes.extend(spaces.as_bytes());
            bytes.extend(&token);
            let Ok(value) = HeaderValue::from_bytes(&bytes) else {
                return Ok(());
            };
            let mut map = HeaderMap::new();
            map.insert(AUTHORIZATION, value.clone());
            let fast = bearer_token(&map)
                .and_then(|found| found.map(|f| f.text().map(str::to_owned)).transpose());
            proptest::prop_assert_eq!(fast, reference_bearer(&value), "{:?}", value);
        }

    }

    #[test]
    fn a_spot_that_no_longer_holds_the_cookie_falls_back_to_reading_the_field() {
        let map = headers(&[("cookie", "x=1; session=tok.en.sig; y=2")]);
        let (_, spot) = cookie_found(&map, "session").unwrap().unwrap();
        let doomed = |n: &[u8]| n == b"session";
        let forwarded = |map: &HeaderMap| map.get(COOKIE).map(|v| v.to_str().unwrap().to_owned());
        let mut around = map.clone();
        rewrite_cookies_around(&mut around, Some(spot), b"session", doomed);
        assert_eq!(forwarded(&around).as_deref(), Some("x=1; y=2"));
        // The field changed after the spot was taken: it is read whole, not cut at the spot.
        let mut changed = headers(&[("cookie", "session=tok.en.sig; x=1; y=22222")]);
        rewrite_cookies_around(&mut changed, Some(spot), b"session", doomed);
        assert_eq!(forwarded(&changed).as_deref(), Some("x=1; y=22222"));
        // The spot names a field that is not there any more.
        let mut fewer = headers(&[("cookie", "x=1; session=tok.en.sig; y=2")]);
        let other_field = CookieSpot { header: 1, ..spot };
        rewrite_cookies_around(&mut fewer, Some(other_field), b"session", doomed);
        assert_eq!(forwarded(&fewer).as_deref(), Some("x=1; y=2"));
    }

    #[test]
    fn token_sources_parse() {
        assert_eq!(TokenSource::parse("bearer"), Some(TokenSource::Bearer));
        assert_eq!(
            TokenSource::parse("cookie:session"),
            Some(TokenSource::Cookie("session".into()))
        );
        assert_eq!(TokenSource::parse("cookie:"), None);
        assert_eq!(TokenSource::parse("cookie:a b"), None);
        assert_eq!(TokenSource::parse("header:x"), None);
    }
}
