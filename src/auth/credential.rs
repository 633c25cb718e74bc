//! Finding the credential a route accepts in the request headers.
//!
//! Ambiguity is never resolved in the client's favour: two `Authorization` headers, or two
//! cookies of the configured name (across all `Cookie` headers, as HTTP/2 splits them), are
//! refused instead of picking one.

use http::HeaderMap;
use http::header::{AUTHORIZATION, COOKIE};

/// Where a route reads its token, from `token_sources`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `Authorization: Bearer <token>` (scheme case-insensitive, RFC 7235).
    Bearer,
    /// The value of the cookie with this name.
    Cookie(Box<str>),
}

impl TokenSource {
    pub fn parse(spec: &str) -> Option<Self> {
        match spec {
            "bearer" => Some(TokenSource::Bearer),
            _ => {
                let name = spec.strip_prefix("cookie:")?;
                is_cookie_name(name).then(|| TokenSource::Cookie(name.into()))
            }
        }
    }
}

impl std::fmt::Display for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSource::Bearer => f.write_str("bearer"),
            TokenSource::Cookie(name) => write!(f, "cookie:{name}"),
        }
    }
}

/// RFC 6265 cookie-name: an RFC 7230 token.
fn is_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("more than one credential of the same kind")]
    Ambiguous,
    #[error("the Authorization header is not a valid Bearer credential")]
    MalformedBearer,
}

/// A credential as found in the headers (see [`find_credential`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found<'h> {
    bytes: &'h [u8],
    /// A Bearer token whose RFC 6750 form has not been checked yet.
    unchecked_bearer: bool,
}

impl<'h> Found<'h> {
    /// The credential's bytes as sent: what the verified-token cache is keyed by.
    pub fn bytes(&self) -> &'h [u8] {
        self.bytes
    }

    /// The credential as text; a Bearer token that is not an RFC 6750 b64token is refused.
    ///
    /// Only a verified-token cache miss needs it: a hit is keyed by the SHA-256 of bytes
    /// that were a whole verified JWT (base64url and dots only, a subset of b64token), so
    /// these bytes are those and the check would only read all ~700 of them again.
    pub fn text(&self) -> Result<&'h str, CredentialError> {
        if self.unchecked_bearer && !is_b64token(self.bytes) {
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
/// [`Found::text`], when the token is not a verified-token cache hit.
pub fn find_credential<'h>(
    headers: &'h HeaderMap,
    sources: &[TokenSource],
) -> Result<Option<(usize, Found<'h>)>, CredentialError> {
    for (index, source) in sources.iter().enumerate() {
        let found = match source {
            TokenSource::Bearer => bearer_token(headers)?,
            TokenSource::Cookie(name) => cookie_value(headers, name)?.map(|value| Found {
                bytes: value.as_bytes(),
                unchecked_bearer: false,
            }),
        };
        if let Some(found) = found {
            return Ok(Some((index, found)));
        }
    }
    Ok(None)
}

/// The token of an `Authorization: Bearer` header; `None` when there is no Authorization
/// header or it uses another scheme (e.g. the app's own Basic auth). Its b64token form is
/// checked by [`Found::text`].
///
/// One pass over the bytes on the common path (`Bearer <b64token>`): every b64token byte is
/// visible ASCII, so a valid token makes the whole value valid text without a separate
/// `to_str` pass. Measured: this function was 3% of the CPU of a cached-RS256 run (three
/// passes over a 700-byte token, one of them a 6-way `contains` per byte).
fn bearer_token(headers: &HeaderMap) -> Result<Option<Found<'_>>, CredentialError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(CredentialError::Ambiguous);
    }
    let bytes = value.as_bytes();
    if let Some(space) = bytes.iter().position(|&b| b == b' ')
        && bytes[..space].eq_ignore_ascii_case(b"bearer")
    {
        let start = bytes[space..]
            .iter()
            .position(|&b| b != b' ')
            .map_or(bytes.len(), |i| space + i);
        return Ok(Some(Found {
            bytes: &bytes[start..],
            unchecked_bearer: true,
        }));
    }
    // Not "Bearer <...>": the rules of the text form, errors included.
    let value = value
        .to_str()
        .map_err(|_| CredentialError::MalformedBearer)?;
    if value.eq_ignore_ascii_case("bearer") {
        return Err(CredentialError::MalformedBearer);
    }
    Ok(None)
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

/// The value of cookie `name` across every `Cookie` header.
pub fn cookie_value<'h>(
    headers: &'h HeaderMap,
    name: &str,
) -> Result<Option<&'h str>, CredentialError> {
    let mut found = None;
    for header in headers.get_all(COOKIE) {
        let Ok(text) = header.to_str() else {
            continue;
        };
        for pair in text.split(';') {
            let Some((key, value)) = pair.trim_matches(' ').split_once('=') else {
                continue;
            };
            if key == name {
                if found.is_some() {
                    return Err(CredentialError::Ambiguous);
                }
                found = Some(
                    value
                        .strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .unwrap_or(value),
                );
            }
        }
    }
    Ok(found)
}

/// Rewrites the `Cookie` headers without cookie `name`, joining what remains into one
/// header (HTTP/1 upstreams expect a single `Cookie` line). Removes the header when nothing
/// is left.
pub fn remove_cookie(headers: &mut HeaderMap, name: &str) {
    remove_cookies(headers, |n| n == name);
}

/// [`remove_cookie`] for every cookie whose name `doomed` picks. Leaves the headers
/// untouched (no rewrite, no allocation) when no such cookie is present.
pub fn remove_cookies(headers: &mut HeaderMap, doomed: impl Fn(&str) -> bool) {
    fn name_of(pair: &str) -> &str {
        let pair = pair.trim_matches(' ');
        pair.split_once('=').map_or(pair, |(k, _)| k)
    }
    // A header that is not text is dropped by the rewrite below, like a doomed cookie.
    let present = headers.get_all(COOKIE).iter().any(|header| {
        header.to_str().map_or(true, |text| {
            text.split(';').any(|pair| doomed(name_of(pair)))
        })
    });
    if present {
        rewrite_cookies(headers, doomed);
    }
}

/// [`remove_cookies`] when a doomed cookie is known to be there (the one a credential was
/// taken from): the rewrite without the pass that looks for one. That pass reads the whole
/// header, session JWT included, so it is worth skipping on every cookie-authenticated request.
pub fn rewrite_cookies(headers: &mut HeaderMap, doomed: impl Fn(&str) -> bool) {
    let mut kept = String::new();
    for header in headers.get_all(COOKIE) {
        let Ok(text) = header.to_str() else {
            continue;
        };
        for pair in text.split(';') {
            let pair = pair.trim_matches(' ');
            let key = pair.split_once('=').map_or(pair, |(k, _)| k);
            if pair.is_empty() || doomed(key) {
                continue;
            }
            if !kept.is_empty() {
                kept.push_str("; ");
            }
            kept.push_str(pair);
        }
    }
    headers.remove(COOKIE);
    if !kept.is_empty()
        && let Ok(value) = http::HeaderValue::from_str(&kept)
    {
        headers.insert(COOKIE, value);
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
    fn bearer_scheme_is_case_insensitive() {
        for v in [
            "Bearer abc.def.ghi",
            "bearer abc.def.ghi",
            "BEARER  abc.def.ghi",
        ] {
            let h = headers(&[("authorization", v)]);
            assert_eq!(find_token(&h, BEARER), Ok(Some((0, "abc.def.ghi"))), "{v}");
        }
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
            Err(CredentialError::MalformedBearer)
        );
        let h = headers(&[("authorization", "Bearer a b")]);
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
    fn sources_are_tried_in_order() {
        let src = [TokenSource::Bearer, TokenSource::Cookie("at".into())];
        let h = headers(&[("cookie", "at=c"), ("authorization", "Bearer b")]);
        assert_eq!(find_token(&h, &src), Ok(Some((0, "b"))));
        let h = headers(&[("cookie", "at=c")]);
        assert_eq!(find_token(&h, &src), Ok(Some((1, "c"))));
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

    /// The text-form rules this file had before the one-pass version, kept as the reference.
    fn reference_bearer(value: &HeaderValue) -> Result<Option<String>, CredentialError> {
        let value = value
            .to_str()
            .map_err(|_| CredentialError::MalformedBearer)?;
        let Some((scheme, rest)) = value.split_once(' ') else {
            return if value.eq_ignore_ascii_case("bearer") {
                Err(CredentialError::MalformedBearer)
            } else {
                Ok(None)
            };
        };
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Ok(None);
        }
        let token = rest.trim_start_matches(' ');
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

    proptest::proptest! {
        #[test]
        fn one_pass_bearer_agrees_with_the_text_rules(
            scheme in proptest::prop_oneof!["Bearer", "bearer", "BEARER", "Basic", "Bearerx", ""],
            spaces in 0usize..3,
            token in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::sample::select(b"aZ09-._~+/= \t\"%".to_vec()),
                    proptest::num::u8::ANY
                ],
                0..40,
            ),
        ) {
            let mut bytes = scheme.as_bytes().to_vec();
            bytes.extend(std::iter::repeat_n(b' ', spaces));
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
