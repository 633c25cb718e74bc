//! Header rewrite between authorization and forwarding: strip, then inject.
//!
//! On every request, on every route (public ones too), in this order:
//! 1. hop-by-hop headers and every header named in `Connection` are removed;
//! 2. every configured identity header is removed in all its spellings (`X-Auth-User`,
//!    `x-auth-user`, `X_Auth_User`, duplicates): invariant I2;
//! 3. every credential source the config names is removed (`Authorization: Bearer` where
//!    some route reads Bearer tokens, each `cookie:NAME`, the gateway's own cookies),
//!    except the credential that was verified where the route forwards it (I10); headers
//!    that name another path (`X-Original-URL`, `X-Rewrite-URL`, ...) are removed too, as
//!    IIS, Symfony and Zend route by them (I9);
//! 4. `X-Forwarded-*`, `Forwarded` and `X-Real-IP` are rewritten (kept and appended to only
//!    for peers in `trusted_proxies`);
//! 5. the verified identity is injected, one header each (I3). Step 1 ran before, so a
//!    `Connection: X-Auth-User` from the client cannot remove what we inject.

use std::net::IpAddr;

use http::HeaderMap;
use http::header::{AUTHORIZATION, CONNECTION, HeaderName, HeaderValue};
use serde_json::Value;

use crate::assertion::Assertion;
use crate::auth::credential;
use crate::auth::{Consumed, Identity, Permit, SessionTokens};
use crate::policy::{SessionTokenHeaders, TokenSource};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
/// Headers that make frameworks (Rails, Laravel, Spring, Express) treat a POST or GET as
/// another method: an allowed GET would become a DELETE at the app.
static METHOD_OVERRIDES: [HeaderName; 3] = [
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-method-override"),
    HeaderName::from_static("x-http-method"),
];
static HTTP: HeaderValue = HeaderValue::from_static("http");
static HTTPS: HeaderValue = HeaderValue::from_static("https");

/// Compiled `[identity]`.
pub struct IdentityPolicy {
    /// Header to set -> claim it carries.
    inject: Box<[(HeaderName, Box<str>)]>,
    /// The gateway's own cookies (session, login state): removed on every route.
    own_cookies: Box<[Box<str>]>,
    /// Every `cookie:NAME` token source of any route: removed on every route, except the
    /// verified one where its route forwards it.
    credential_cookies: Box<[Box<str>]>,
    /// Some route reads Bearer tokens: `Authorization: Bearer` is removed on every route,
    /// except where it was verified and is forwarded.
    strip_bearer: bool,
    /// `[identity] assertion`: its header is an identity header too (stripped, I2).
    assertion: Option<Assertion>,
    /// Headers that carry a login session's tokens (`forward_access_token`, ...), and the
    /// usual names of those: stripped from every client request.
    token_headers: Box<[HeaderName]>,
    /// `[api_keys]`: its header and its `Authorization` scheme, removed on every route
    /// (I10: a key never reaches an app).
    api_key_source: Option<(HeaderName, Box<str>)>,
}

impl IdentityPolicy {
    /// The identity fields for `identity`: one per configured claim it has (the names are
    /// distinct, config checks it).
    pub fn for_each_field(
        &self,
        identity: &Identity,
        mut field: impl FnMut(&HeaderName, &HeaderValue),
    ) {
        for (header, claim) in self.inject.iter() {
            if let Some(value) = identity.claims.get(claim).and_then(header_value) {
                field(header, &value);
            }
        }
    }

    pub fn set_own_cookies(&mut self, names: Vec<Box<str>>) {
        self.own_cookies = names.into_boxed_slice();
    }

    /// The token sources the routes name (see the fields).
    pub fn set_credential_sources<'a>(&mut self, sources: impl Iterator<Item = &'a TokenSource>) {
        let mut cookies: Vec<Box<str>> = Vec::new();
        for source in sources {
            match source {
                TokenSource::Bearer => self.strip_bearer = true,
                TokenSource::Cookie(name) if !cookies.contains(name) => cookies.push(name.clone()),
                TokenSource::Cookie(_) => {}
            }
        }
        self.credential_cookies = cookies.into_boxed_slice();
    }

    /// `headers`: (header name, claim name). Names must be valid header names.
    pub fn new(headers: Vec<(HeaderName, Box<str>)>) -> Self {
        IdentityPolicy {
            inject: headers.into_boxed_slice(),
            own_cookies: Box::default(),
            credential_cookies: Box::default(),
            strip_bearer: false,
            assertion: None,
            token_headers: Box::default(),
            api_key_source: None,
        }
    }

    pub fn set_api_key_source(&mut self, header: HeaderName, scheme: Box<str>) {
        self.api_key_source = Some((header, scheme));
    }

    pub fn set_token_headers(&mut self, names: Vec<HeaderName>) {
        self.token_headers = names.into_boxed_slice();
    }

    pub fn set_assertion(&mut self, assertion: Option<Assertion>) {
        self.assertion = assertion;
    }

    /// `[identity] assertion`, when configured.
    pub fn assertion(&self) -> Option<&Assertion> {
        self.assertion.as_ref()
    }

    /// An identity header (or the assertion's) in one of its spellings.
    fn is_identity_header(&self, name: &str) -> bool {
        self.inject.iter().any(|(h, _)| same_header(h, name))
            || self.token_headers.iter().any(|h| same_header(h, name))
            || self
                .api_key_source
                .as_ref()
                .is_some_and(|(h, _)| same_header(h, name))
            || self
                .assertion
                .as_ref()
                .is_some_and(|a| same_header(a.header(), name))
    }

    pub fn headers(&self) -> impl Iterator<Item = (&HeaderName, &str)> {
        self.inject.iter().map(|(h, c)| (h, &**c))
    }
}

/// True when `received` is `configured` or a spelling of it with `_` for `-`. Names arrive
/// lower-cased (HTTP/1 parsing and HTTP/2 both); `_` is the one spelling that differs and
/// that CGI-style apps (PHP, Rails behind nginx, Apache) read as `-`.
fn same_header(configured: &HeaderName, received: &str) -> bool {
    same_name(configured.as_str(), received)
}

fn same_name(configured: &str, received: &str) -> bool {
    let configured = configured.as_bytes();
    configured.len() == received.len()
        && configured
            .iter()
            .zip(received.bytes())
            .all(|(a, b)| *a == b || (*a == b'-' && b == b'_'))
}

/// What the connection and request tell about the client, for `X-Forwarded-*`.
pub struct ClientInfo<'a> {
    /// The peer's address as a header value (`peer_value`), made once per connection.
    pub peer: HeaderValue,
    pub tls: bool,
    /// The host the client addressed (its `Host` / `:authority`), as received.
    pub host: Option<&'a HeaderValue>,
    /// The peer is in `trusted_proxies`.
    pub trusted: bool,
}

impl ClientInfo<'_> {
    fn proto(&self) -> &'static HeaderValue {
        if self.tls { &HTTPS } else { &HTTP }
    }
}

/// What the route adds to or keeps in the request besides identity (its header rules).
#[derive(Clone, Copy)]
pub struct RouteRules<'u, 's> {
    /// Keep `X-HTTP-Method-Override` and friends (`allow_method_override`).
    pub keep_method_override: bool,
    /// The canonical target, sent as `X-Original-URL` (`forward_original_uri`).
    pub original_uri: Option<&'u str>,
    /// Where a login session's tokens go (`forward_access_token`, `forward_id_token`).
    pub session_tokens: &'s SessionTokenHeaders,
}

static NO_TOKENS: SessionTokenHeaders = SessionTokenHeaders {
    access: None,
    id: None,
};

impl Default for RouteRules<'_, '_> {
    fn default() -> Self {
        RouteRules {
            keep_method_override: false,
            original_uri: None,
            session_tokens: &NO_TOKENS,
        }
    }
}

/// Steps 1 to 5 above, on the request headers about to be forwarded.
pub fn rewrite_request(
    headers: &mut HeaderMap,
    policy: &IdentityPolicy,
    permit: &Permit,
    sources: &[TokenSource],
    client: &ClientInfo<'_>,
    rules: RouteRules<'_, '_>,
) {
    strip_request(headers, policy, permit, sources, client, rules).append_to(headers);
}

/// [`rewrite_request`] for the request path: steps 1 to 3 (and step 4 for a trusted peer)
/// on `headers`; the fields steps 4 and 5 add come back as [`Added`], which the upstream
/// encoder writes after the request's own fields instead of inserting them into the map
/// first. Every name in [`Added`] is one this function has just removed from `headers`
/// (identity headers by configuration, forwarding headers of an untrusted peer, the
/// path-naming headers), so writing them after the map is the same request as inserting
/// them into it.
pub fn strip_request<'a>(
    headers: &mut HeaderMap,
    policy: &'a IdentityPolicy,
    permit: &'a Permit,
    sources: &[TokenSource],
    client: &'a ClientInfo<'a>,
    rules: RouteRules<'_, 'a>,
) -> Added<'a> {
    // Steps 1-2 (and the method overrides, the path-naming headers, and untrusted
    // forwarding headers) in one pass over the header names: a handful of byte comparisons
    // per header instead of a hash lookup per name we might remove.
    let strip_forwarded = !client.trusted;
    let keep_method_override = rules.keep_method_override;
    let authorization = remove_where(headers, |name| {
        policy.is_identity_header(name)
            || names_a_path(name)
            || (!keep_method_override && METHOD_OVERRIDES.iter().any(|h| same_header(h, name)))
            || (strip_forwarded && FORWARDING.iter().any(|f| same_name(f, name)))
    });
    // Step 3: the verified credential, and every other source the config names.
    let (consumed_cookie, kept_cookie) = match permit.consumed() {
        Consumed::None => (None, None),
        Consumed::Authorization => {
            headers.remove(AUTHORIZATION);
            (None, None)
        }
        Consumed::Cookie { source, spot } => match sources.get(source) {
            Some(TokenSource::Cookie(name)) => (Some((&**name, spot)), None),
            Some(TokenSource::Bearer) | None => (None, None),
        },
        Consumed::Kept { source } => match sources.get(source) {
            Some(TokenSource::Cookie(name)) => (None, Some(&**name)),
            Some(TokenSource::Bearer) | None => (None, None),
        },
    };
    if authorization && let Some((_, scheme)) = &policy.api_key_source {
        remove_scheme(headers, scheme);
    }
    if authorization
        && policy.strip_bearer
        && permit.consumed() != Consumed::Authorization
        && !matches!(
            (permit.consumed(), permit.consumed_source(sources)),
            (Consumed::Kept { .. }, Some(TokenSource::Bearer))
        )
    {
        remove_bearer(headers);
    }
    let doomed = |name: &[u8]| {
        consumed_cookie.is_some_and(|(consumed, _)| consumed.as_bytes() == name)
            || policy.own_cookies.iter().any(|own| own.as_bytes() == name)
            || (kept_cookie.is_none_or(|kept| kept.as_bytes() != name)
                && policy
                    .credential_cookies
                    .iter()
                    .any(|c| c.as_bytes() == name))
    };
    if let Some((consumed, spot)) = consumed_cookie {
        // The credential came from a cookie: it is there, rewrite at once, around it.
        credential::rewrite_cookies_around(headers, spot, consumed.as_bytes(), doomed);
    } else if !policy.own_cookies.is_empty() || !policy.credential_cookies.is_empty() {
        credential::remove_cookies(headers, doomed);
    }
    let forwarded = if client.trusted {
        append_forwarded(headers, client);
        None
    } else {
        Some(client)
    };
    Added {
        forwarded,
        original_uri: rules
            .original_uri
            .and_then(|target| HeaderValue::from_str(target).ok()),
        identity: permit.identity().map(|identity| (policy, identity)),
        tokens: rules
            .session_tokens
            .any()
            .then(|| permit.identity().and_then(|i| i.tokens.as_deref()))
            .flatten()
            .map(|tokens| (rules.session_tokens, tokens)),
        assertion: None,
    }
}

/// Removes `Authorization` when its scheme is Bearer (another scheme, such as the app's own
/// Basic auth, is not a credential the gateway reads).
fn remove_bearer(headers: &mut HeaderMap) {
    let bearer = headers.get_all(AUTHORIZATION).iter().any(|value| {
        let bytes = value.as_bytes();
        let end = bytes
            .iter()
            .position(|&b| b == b' ' || b == b'\t')
            .unwrap_or(bytes.len());
        bytes[..end].eq_ignore_ascii_case(b"bearer")
    });
    if bearer {
        headers.remove(AUTHORIZATION);
    }
}

/// Removes `Authorization` when one of its fields uses `scheme` (an API key).
fn remove_scheme(headers: &mut HeaderMap, scheme: &str) {
    let found = headers
        .get_all(AUTHORIZATION)
        .iter()
        .any(|value| crate::auth::api_keys::scheme_value(value.as_bytes(), scheme).is_some());
    if found {
        headers.remove(AUTHORIZATION);
    }
}

/// Headers by which IIS (URL Rewrite), Symfony, Zend, Laravel, Spring and Envoy-fronted apps
/// take the request's path from somewhere else than the request line.
const PATH_HEADERS: [&str; 8] = [
    "x-original-url",
    "x-rewrite-url",
    "x-original-uri",
    "x-forwarded-uri",
    "x-forwarded-path",
    "x-forwarded-prefix",
    "x-envoy-original-path",
    "x-http-destination",
];

fn names_a_path(name: &str) -> bool {
    // All start with "x-" (or "x_"): most names are ruled out by their first byte.
    name.as_bytes().first() == Some(&b'x') && PATH_HEADERS.iter().any(|p| same_name(p, name))
}

static X_ORIGINAL_URL: HeaderName = HeaderName::from_static("x-original-url");

/// The fields steps 4 and 5 add to a request (see [`strip_request`]).
pub struct Added<'a> {
    /// An untrusted peer: its forwarding fields were all removed, ours are added.
    forwarded: Option<&'a ClientInfo<'a>>,
    /// `X-Original-URL` with the canonical target (`forward_original_uri`).
    original_uri: Option<HeaderValue>,
    identity: Option<(&'a IdentityPolicy, &'a Identity)>,
    /// A login session's tokens, on a route that forwards them.
    tokens: Option<(&'a SessionTokenHeaders, &'a SessionTokens)>,
    /// `[identity] assertion` for this request (see [`Added::assert`]).
    assertion: Option<HeaderValue>,
}

impl Added<'_> {
    /// Signs the identity assertion, when one is configured and the request carries an
    /// identity: for a `method` request of `target` (as the app receives it) at the
    /// upstream named `audience`.
    pub fn assert(&mut self, audience: &str, method: &http::Method, target: &str, now: u64) {
        if let Some((policy, identity)) = self.identity
            && let Some(assertion) = &policy.assertion
        {
            self.assertion = assertion.assert(&identity.claims, audience, method, target, now);
        }
    }

    /// Calls `field` for each field, in the order they are added.
    pub fn for_each(&self, mut field: impl FnMut(&HeaderName, &HeaderValue)) {
        if let Some(client) = self.forwarded {
            field(&X_FORWARDED_FOR, &client.peer);
            field(&X_REAL_IP, &client.peer);
            field(&X_FORWARDED_PROTO, client.proto());
            if let Some(host) = client.host {
                field(&X_FORWARDED_HOST, host);
            }
        }
        if let Some(target) = &self.original_uri {
            field(&X_ORIGINAL_URL, target);
        }
        if let Some((policy, identity)) = self.identity {
            policy.for_each_field(identity, &mut field);
            if let (Some(assertion), Some(value)) = (&policy.assertion, &self.assertion) {
                field(assertion.header(), value);
            }
        }
        if let Some((headers, tokens)) = self.tokens {
            if let (Some(name), Some(value)) = (&headers.access, &tokens.access) {
                field(name, value);
            }
            if let (Some(name), Some(value)) = (&headers.id, &tokens.id) {
                field(name, value);
            }
        }
    }

    /// Adds the fields to `headers` (which no longer holds any of these names).
    pub fn append_to(&self, headers: &mut HeaderMap) {
        self.for_each(|name, value| {
            headers.append(name.clone(), value.clone());
        });
    }
}

/// Hop-by-hop headers (RFC 9110 section 7.6.1, plus the legacy `Proxy-Connection`). An
/// upstream's answer loses the same ones where its head is parsed (`upstream::h1`).
pub(crate) const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
];

/// Forwarding headers a client outside `trusted_proxies` may not set.
const FORWARDING: [&str; 5] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
    "x-real-ip",
];

/// Removes the hop-by-hop headers, the headers `doomed` selects, and every header the
/// `Connection` header names. Returns whether the request has an `Authorization` field (seen in the same pass, so the
/// credential strip needs no lookup of its own when there is none).
fn remove_where(headers: &mut HeaderMap, doomed: impl Fn(&str) -> bool) -> bool {
    // Usually empty (clients do not send identity fields): no allocation then.
    let mut names: Vec<HeaderName> = Vec::new();
    let mut connection = false;
    let mut authorization = false;
    let mut close_field = false;
    for name in headers.keys() {
        if *name == CONNECTION {
            // Found in the same pass over the names: no second lookup for `Connection`.
            connection = true;
        } else if *name == AUTHORIZATION {
            authorization = true;
        } else if HOP_BY_HOP.contains(&name.as_str()) || doomed(name.as_str()) {
            names.push(name.clone());
        } else if name.as_str() == "close" {
            close_field = true;
        }
    }
    for name in names {
        headers.remove(name);
    }
    if !connection {
        return authorization;
    }
    // The fields `Connection` names, removed by their text: a lookup by `&str` makes no
    // `HeaderName` (which allocates for a name that is not a standard one, and
    // `keep-alive` and `close` are not). Browsers send `Connection: keep-alive` on every
    // HTTP/1.1 request, so this is a common path. The values are shared `Bytes`: taking
    // them out costs no copy. Not through `entry`: it makes room for an insert first, and
    // the map hyper builds for a request is full, so it was reallocated for every request
    // that sent `Connection` (0.9k instructions).
    let mut listed = headers.get_all(CONNECTION).iter();
    let first = listed.next().cloned();
    let more: Vec<HeaderValue> = listed.cloned().collect();
    headers.remove(CONNECTION);
    for value in first.iter().chain(&more) {
        for token in value.as_bytes().split(|&b| b == b',') {
            // Invalid names cannot be fields of the map: a lookup by them finds nothing.
            // `close` and `keep-alive`, nearly every token sent, name no field left: the
            // hop-by-hop fields went in the pass above, and a field called `close` is
            // looked up only when that pass saw one. (A lookup by text parses the name
            // first: 0.9k instructions a request that says `Connection: close`.)
            if let Ok(token) = std::str::from_utf8(token.trim_ascii())
                && !token.is_empty()
                && !HOP_BY_HOP
                    .iter()
                    .any(|gone| token.eq_ignore_ascii_case(gone))
                && (close_field || !token.eq_ignore_ascii_case("close"))
            {
                headers.remove(token);
            }
        }
    }
    authorization
}

/// Step 4 for a peer in `trusted_proxies`: its forwarding fields are kept, the peer is
/// appended to `X-Forwarded-For`, and what it did not send is filled in.
fn append_forwarded(headers: &mut HeaderMap, client: &ClientInfo<'_>) {
    let peer = client.peer.clone();
    let chain = join_values(headers, &X_FORWARDED_FOR);
    let forwarded_for = match chain {
        Some(mut chain) => {
            chain.push_str(", ");
            chain.push_str(peer.to_str().unwrap_or_default());
            HeaderValue::from_str(&chain).unwrap_or(peer.clone())
        }
        None => peer.clone(),
    };
    headers.insert(X_FORWARDED_FOR.clone(), forwarded_for);
    if !headers.contains_key(&X_REAL_IP) {
        headers.insert(X_REAL_IP.clone(), peer);
    }
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO.clone(), client.proto().clone());
    }
    if let (false, Some(host)) = (headers.contains_key(&X_FORWARDED_HOST), client.host) {
        headers.insert(X_FORWARDED_HOST.clone(), host.clone());
    }
}

fn join_values(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let mut joined: Option<String> = None;
    for value in headers.get_all(name) {
        let Ok(text) = value.to_str() else { continue };
        match &mut joined {
            Some(j) => {
                j.push_str(", ");
                j.push_str(text);
            }
            None => joined = Some(text.to_owned()),
        }
    }
    joined
}

/// The peer address as `X-Forwarded-For` / `X-Real-IP` carry it (IPv4-mapped IPv6 as IPv4).
/// Made once per connection: an IPv4 address is written digit by digit, because
/// `to_string` (the formatting machinery and a growing `String`) was 1.5k instructions, a
/// tenth of what a new connection's request costs in user space.
pub fn peer_value(peer: IpAddr) -> HeaderValue {
    let v4 = match peer {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4,
            None => {
                return HeaderValue::try_from(v6.to_string())
                    .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
            }
        },
    };
    let mut text = [0u8; 15];
    let mut len = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text[len] = b'.';
            len += 1;
        }
        if octet >= 100 {
            text[len] = b'0' + octet / 100;
            len += 1;
        }
        if octet >= 10 {
            text[len] = b'0' + octet / 10 % 10;
            len += 1;
        }
        text[len] = b'0' + octet % 10;
        len += 1;
    }
    HeaderValue::from_bytes(&text[..len]).expect("digits and dots are a valid header value")
}

/// The header value for a claim, or `None` when the claim has no value a header can carry.
///
/// One rule, so that a value is never trimmed, dropped in part or split (docs/security.md):
/// - a string, number or boolean is its text (numbers in their JSON spelling), sent as it
///   is when it is *plain*: visible ASCII and inner spaces only, no leading or trailing
///   space, not starting with `UTF-8''`;
/// - any other text is sent RFC 8187-style, `UTF-8''` then the UTF-8 bytes with every byte
///   outside RFC 8187's attr-char percent-encoded (`"José "` is `UTF-8''Jos%C3%A9%20`), so
///   a reader knows from the prefix to decode it;
/// - an array is its elements, each by the rule above, joined with `,`; an element holding
///   a `,` is always encoded (`["eng,admins"]` is `UTF-8''eng%2Cadmins`, never two groups);
///   an array with an element that is not a string, number or boolean (an object, an
///   array, null) gives no header at all: a group list is whole or absent, never partial;
/// - objects, null and empty arrays give no header.
pub fn header_value(claim: &Value) -> Option<HeaderValue> {
    let mut out = String::new();
    match claim {
        Value::Array(items) if !items.is_empty() => {
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_claim_text(&mut out, &scalar_text(item)?, true);
            }
        }
        scalar => push_claim_text(&mut out, &scalar_text(scalar)?, false),
    }
    HeaderValue::from_maybe_shared(bytes::Bytes::from(out)).ok()
}

/// The prefix of an encoded value (RFC 8187's ext-value with charset UTF-8, no language).
pub const ENCODED_PREFIX: &str = "UTF-8''";

/// Appends `text` by the rule of [`header_value`]; `in_list`: a `,` must be encoded too.
fn push_claim_text(out: &mut String, text: &str, in_list: bool) {
    let bytes = text.as_bytes();
    let plain = !text.starts_with(ENCODED_PREFIX)
        && bytes.first() != Some(&b' ')
        && bytes.last() != Some(&b' ')
        && bytes
            .iter()
            .all(|&b| (b' '..=b'~').contains(&b) && !(in_list && b == b','));
    if plain {
        out.push_str(text);
        return;
    }
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push_str(ENCODED_PREFIX);
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
}

fn scalar_text(value: &Value) -> Option<std::borrow::Cow<'_, str>> {
    match value {
        Value::String(s) => Some(s.as_str().into()),
        Value::Bool(b) => Some(if *b { "true" } else { "false" }.into()),
        Value::Number(n) => Some(n.to_string().into()),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::claims::Claims;
    use serde_json::json;
    use std::net::{Ipv4Addr, Ipv6Addr};

    proptest::proptest! {
        /// The hand-written IPv4 text is exactly std's, for every address, plain or
        /// IPv4-mapped.
        #[test]
        fn peer_value_writes_ipv4_as_std_does(bits: u32) {
            let v4 = Ipv4Addr::from(bits);
            let text = v4.to_string();
            proptest::prop_assert_eq!(peer_value(IpAddr::V4(v4)), text.as_str());
            let mapped = IpAddr::V6(v4.to_ipv6_mapped());
            proptest::prop_assert_eq!(peer_value(mapped), text.as_str());
        }
    }

    #[test]
    fn peer_value_edges() {
        for (addr, text) in [
            ("0.0.0.0", "0.0.0.0"),
            ("255.255.255.255", "255.255.255.255"),
            ("10.0.100.9", "10.0.100.9"),
            ("::1", "::1"),
            ("2001:db8::7", "2001:db8::7"),
            ("::ffff:192.0.2.10", "192.0.2.10"),
        ] {
            assert_eq!(peer_value(addr.parse().unwrap()), text, "{addr}");
        }
        assert_eq!(
            peer_value(IpAddr::V6(Ipv6Addr::LOCALHOST)),
            Ipv6Addr::LOCALHOST.to_string().as_str()
        );
    }

    fn policy() -> IdentityPolicy {
        IdentityPolicy::new(vec![
            (HeaderName::from_static("x-auth-user"), "sub".into()),
            (HeaderName::from_static("x-auth-groups"), "groups".into()),
        ])
    }

    fn client() -> ClientInfo<'static> {
        ClientInfo {
            peer: peer_value("10.1.2.3".parse().unwrap()),
            tls: true,
            host: None,
            trusted: false,
        }
    }

    fn permit(claims: Value) -> Permit {
        Permit::with_claims(
            serde_json::from_value::<Claims>(claims).unwrap(),
            Consumed::Authorization,
        )
    }

    fn rewrite(pairs: &[(&str, &str)], permit: &Permit, client: &ClientInfo<'_>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (k, v) in pairs {
            headers.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                // Bytes, not text: a value may carry obs-text, as hyper lets it.
                HeaderValue::from_bytes(v.as_bytes()).unwrap(),
            );
        }
        rewrite_request(
            &mut headers,
            &policy(),
            permit,
            &[TokenSource::Bearer],
            client,
            RouteRules::default(),
        );
        headers
    }

    #[test]
    fn spoofed_identity_is_replaced_by_the_verified_one() {
        let h = rewrite(
            &[
                ("x-auth-user", "mallory"),
                ("x-auth-user", "eve"),
                ("x_auth_user", "mallory"),
                ("X_AUTH_GROUPS", "admins"),
                ("connection", "x-auth-user, x-auth-groups"),
                ("authorization", "Bearer t"),
            ],
            &permit(json!({"sub": "alice"})),
            &client(),
        );
        let users: Vec<_> = h.get_all("x-auth-user").iter().collect();
        assert_eq!(users, vec!["alice"]);
        assert!(h.get("x_auth_user").is_none());
        assert!(h.get("x-auth-groups").is_none());
        assert!(h.get("x_auth_groups").is_none());
        assert!(h.get("authorization").is_none());
        assert!(h.get("connection").is_none());
    }

    #[test]
    fn fields_named_in_connection_are_removed_case_blind() {
        let h = rewrite(
            &[
                ("connection", "keep-alive, X-Legacy-Hop,,  "),
                ("connection", "UPGRADE-ME, bad token, caf\u{e9}"),
                ("keep-alive", "timeout=5"),
                ("x-legacy-hop", "1"),
                ("upgrade-me", "2"),
                ("x-kept", "3"),
                ("bad", "4"),
            ],
            &permit(json!({})),
            &client(),
        );
        for gone in ["connection", "keep-alive", "x-legacy-hop", "upgrade-me"] {
            assert!(h.get(gone).is_none(), "{gone} should be gone");
        }
        assert_eq!(h.get("x-kept").unwrap(), "3");
        // "bad token" is not a field name: it removes nothing, not even `bad`.
        assert_eq!(h.get("bad").unwrap(), "4");
    }

    /// `close` is looked up as a field only when the request has one by that name (the
    /// shortcut for the common token must not keep a field the token names).
    #[test]
    fn a_field_named_close_goes_when_connection_names_it() {
        for (connection, kept) in [("Close", false), ("keep-alive", true)] {
            let h = rewrite(
                &[("connection", connection), ("close", "1"), ("x-kept", "2")],
                &permit(json!({})),
                &client(),
            );
            assert_eq!(h.get("close").is_some(), kept, "Connection: {connection}");
            assert_eq!(h.get("x-kept").unwrap(), "2");
            assert!(h.get("connection").is_none());
        }
    }

    #[test]
    fn method_overrides_are_removed() {
        let h = rewrite(
            &[
                ("x-http-method-override", "DELETE"),
                ("X_HTTP_Method_Override", "DELETE"),
                ("x-method-override", "PUT"),
                ("x-http-method", "PATCH"),
                ("x-http-methods", "kept"),
            ],
            &permit(json!({})),
            &client(),
        );
        let names: Vec<&str> = h
            .keys()
            .map(|k| k.as_str())
            .filter(|k| k.contains("method"))
            .collect();
        assert_eq!(names, vec!["x-http-methods"]);
    }

    #[test]
    fn forwarded_headers_from_untrusted_peers_are_replaced() {
        let h = rewrite(
            &[
                ("x-forwarded-for", "1.1.1.1"),
                ("x-forwarded-proto", "http"),
                ("forwarded", "for=1.1.1.1"),
                ("x-real-ip", "1.1.1.1"),
            ],
            &permit(json!({})),
            &client(),
        );
        assert_eq!(h.get("x-forwarded-for").unwrap(), "10.1.2.3");
        assert_eq!(h.get("x-real-ip").unwrap(), "10.1.2.3");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "https");
        assert!(h.get("forwarded").is_none());
    }

    #[test]
    fn forwarded_headers_from_trusted_peers_are_appended_to() {
        let trusted = ClientInfo {
            trusted: true,
            ..client()
        };
        let h = rewrite(
            &[
                ("x-forwarded-for", "1.1.1.1"),
                ("x-forwarded-proto", "http"),
                ("forwarded", "for=1.1.1.1"),
            ],
            &permit(json!({})),
            &trusted,
        );
        assert_eq!(h.get("x-forwarded-for").unwrap(), "1.1.1.1, 10.1.2.3");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "http");
        assert_eq!(h.get("forwarded").unwrap(), "for=1.1.1.1");
    }

    #[test]
    fn every_added_field_was_stripped_first() {
        // Added fields are written after the map without looking into it: each name must
        // be gone from the map, whatever spelling the client used.
        let mut headers = HeaderMap::new();
        for name in [
            "x-forwarded-for",
            "x_forwarded_for",
            "x-real-ip",
            "x-forwarded-proto",
            "x-forwarded-host",
            "x-auth-user",
            "x_auth_user",
            "x-auth-groups",
        ] {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static("spoofed"),
            );
        }
        let host = HeaderValue::from_static("app.example");
        let client = ClientInfo {
            host: Some(&host),
            ..client()
        };
        let permit = permit(json!({"sub": "alice", "groups": ["eng"]}));
        let policy = policy();
        let added = strip_request(
            &mut headers,
            &policy,
            &permit,
            &[],
            &client,
            RouteRules::default(),
        );
        let mut names = Vec::new();
        added.for_each(|name, value| {
            assert!(!headers.contains_key(name), "{name} still in the map");
            assert_ne!(value, "spoofed");
            names.push(name.as_str().to_owned());
        });
        assert_eq!(
            names,
            [
                "x-forwarded-for",
                "x-real-ip",
                "x-forwarded-proto",
                "x-forwarded-host",
                "x-auth-user",
                "x-auth-groups"
            ]
        );
        assert!(headers.is_empty(), "{headers:?}");
    }

    #[test]
    fn claim_values_cannot_smuggle_structure() {
        let value = |v: Value| header_value(&v).map(|h| h.to_str().unwrap().to_owned());
        assert_eq!(value(json!("alice")).unwrap(), "alice");
        assert_eq!(value(json!("Doe, John")).unwrap(), "Doe, John");
        assert_eq!(value(json!(42)).unwrap(), "42");
        assert_eq!(value(json!(true)).unwrap(), "true");
        assert_eq!(value(json!(["eng", "ops"])).unwrap(), "eng,ops");
        assert_eq!(
            value(json!(["eng,admins", "ops"])).unwrap(),
            "UTF-8''eng%2Cadmins,ops"
        );
        assert_eq!(
            value(json!("alice\r\nX-Auth-User: admin")).unwrap(),
            "UTF-8''alice%0D%0AX-Auth-User%3A%20admin"
        );
        assert_eq!(value(json!(" alice")).unwrap(), "UTF-8''%20alice");
        assert_eq!(value(json!("alice ")).unwrap(), "UTF-8''alice%20");
        assert_eq!(value(json!("Jos\u{e9}")).unwrap(), "UTF-8''Jos%C3%A9");
        assert_eq!(value(json!("UTF-8''x")).unwrap(), "UTF-8''UTF-8%27%27x");
        assert_eq!(value(json!("")).unwrap(), "");
        // A group list is whole or absent.
        assert_eq!(value(json!(["a\nb", "ops", {"x": 1}])), None);
        assert_eq!(value(json!(["ops", null])), None);
        assert_eq!(value(json!([])), None);
        assert_eq!(value(json!({"a": 1})), None);
        assert_eq!(value(json!(null)), None);
    }

    /// What an app does with the header: split a list on `,`, decode each element that
    /// carries the prefix.
    fn read_back(header: &str) -> Vec<String> {
        header
            .split(',')
            .map(|element| match element.strip_prefix(ENCODED_PREFIX) {
                None => element.to_owned(),
                Some(encoded) => {
                    let bytes = encoded.as_bytes();
                    let mut out = Vec::new();
                    let mut i = 0;
                    while i < bytes.len() {
                        if bytes[i] == b'%' {
                            out.push(u8::from_str_radix(&encoded[i + 1..i + 3], 16).unwrap());
                            i += 3;
                        } else {
                            out.push(bytes[i]);
                            i += 1;
                        }
                    }
                    String::from_utf8(out).unwrap()
                }
            })
            .collect()
    }

    proptest::proptest! {
        /// Every string list comes back exactly, element by element, from the one header.
        #[test]
        fn a_claim_list_reads_back_exactly(items in proptest::collection::vec("\\PC{0,6}|[ ,%'a-z]{0,6}", 1..4)) {
            let header = header_value(&json!(items)).expect("a list of strings is carried");
            let text = header.to_str().expect("visible ASCII");
            proptest::prop_assert_eq!(read_back(text), items);
        }

        #[test]
        fn a_claim_string_reads_back_exactly(item in "\\PC{0,8}|[ ,%'a-zU8F-]{0,8}") {
            let header = header_value(&json!(item)).expect("a string is carried");
            let text = header.to_str().expect("visible ASCII");
            // A single value is not a list: only an encoded one is decoded.
            let back = match text.strip_prefix(ENCODED_PREFIX) {
                Some(_) => read_back(&text.replace(',', "%2C")).concat(),
                None => text.to_owned(),
            };
            proptest::prop_assert_eq!(back, item);
        }
    }

    #[test]
    fn headers_that_name_another_path_are_removed_in_every_spelling() {
        let names = [
            "x-original-url",
            "X-Original-URL",
            "x_original_url",
            "x-rewrite-url",
            "x_rewrite_url",
            "x-original-uri",
            "x-forwarded-uri",
            "x-forwarded-path",
            "x-forwarded-prefix",
            "x_forwarded_prefix",
            "x-envoy-original-path",
            "x-http-destination",
        ];
        let pairs: Vec<(&str, &str)> = names.iter().map(|n| (*n, "/admin")).collect();
        let mut with_dupes = pairs.clone();
        with_dupes.extend(pairs.iter().copied());
        for trusted in [false, true] {
            let client = ClientInfo {
                trusted,
                ..client()
            };
            let h = rewrite(&with_dupes, &permit(json!({})), &client);
            for name in names {
                assert!(h.get(name).is_none(), "{name} kept (trusted: {trusted})");
            }
        }
        // A route that asks for it gets the canonical target, once.
        let mut headers = HeaderMap::new();
        headers.append("x-original-url", HeaderValue::from_static("/admin"));
        let rules = RouteRules {
            original_uri: Some("/public/x?y=1"),
            ..RouteRules::default()
        };
        rewrite_request(
            &mut headers,
            &policy(),
            &permit(json!({})),
            &[],
            &client(),
            rules,
        );
        let values: Vec<_> = headers.get_all("x-original-url").iter().collect();
        assert_eq!(values, ["/public/x?y=1"]);
    }

    /// The request headers after the rewrite for a permit that consumed `consumed` of the
    /// route's `sources`, with `bearer` and cookies `at` and `alt` named in the config.
    fn rewrite_credentials(pairs: &[(&str, &str)], consumed: Consumed) -> HeaderMap {
        let mut policy = policy();
        let named = [
            TokenSource::Bearer,
            TokenSource::Cookie("at".into()),
            TokenSource::Cookie("alt".into()),
        ];
        policy.set_credential_sources(named.iter());
        policy.set_own_cookies(vec!["__Host-portcullis".into()]);
        let mut headers = HeaderMap::new();
        for (k, v) in pairs {
            headers.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let permit = Permit::with_claims(
            serde_json::from_value::<Claims>(json!({"sub": "alice"})).unwrap(),
            consumed,
        );
        let sources = [TokenSource::Bearer, TokenSource::Cookie("at".into())];
        rewrite_request(
            &mut headers,
            &policy,
            &permit,
            &sources,
            &client(),
            RouteRules::default(),
        );
        headers
    }

    #[test]
    fn only_the_verified_credential_can_reach_the_app() {
        let all = [
            ("authorization", "Bearer alice-token"),
            (
                "cookie",
                "at=forged; alt=forged2; app=1; __Host-portcullis=s",
            ),
        ];
        let cookie = |h: &HeaderMap| {
            h.get(http::header::COOKIE)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        // Bearer verified, not forwarded: no credential at all reaches the app.
        let h = rewrite_credentials(&all, Consumed::Authorization);
        assert!(h.get(AUTHORIZATION).is_none());
        assert_eq!(cookie(&h).as_deref(), Some("app=1"));
        // Bearer verified and forwarded: it alone.
        let h = rewrite_credentials(&all, Consumed::Kept { source: 0 });
        assert_eq!(h.get(AUTHORIZATION).unwrap(), "Bearer alice-token");
        assert_eq!(cookie(&h).as_deref(), Some("app=1"));
        // Cookie `at` verified and forwarded: it alone; the Bearer header goes.
        let h = rewrite_credentials(&all, Consumed::Kept { source: 1 });
        assert!(h.get(AUTHORIZATION).is_none());
        assert_eq!(cookie(&h).as_deref(), Some("at=forged; app=1"));
        // No credential verified (public route, session): every named source goes, and
        // another scheme (the app's own Basic auth) stays.
        let h = rewrite_credentials(&all, Consumed::None);
        assert!(h.get(AUTHORIZATION).is_none());
        assert_eq!(cookie(&h).as_deref(), Some("app=1"));
        let h = rewrite_credentials(&[("authorization", "Basic dTpw")], Consumed::None);
        assert_eq!(h.get(AUTHORIZATION).unwrap(), "Basic dTpw");
        let h = rewrite_credentials(&[("authorization", "bearer\tx")], Consumed::None);
        assert!(h.get(AUTHORIZATION).is_none());
    }

    #[test]
    fn missing_claims_mean_absent_headers() {
        let h = rewrite(
            &[("x-auth-groups", "admins")],
            &permit(json!({"sub": "alice"})),
            &client(),
        );
        assert!(h.get("x-auth-groups").is_none());
    }
}
