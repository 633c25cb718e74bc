//! What a route demands, as data: the compiled `auth`, `providers`, `token_sources`,
//! `require` and `csrf` keys of a route. A leaf of the module graph: the router holds it,
//! `auth` enforces it, `config` builds it, and none of them needs the others for that.
//! Equal policies are one policy class (`router`): reading agreement compares them.

use crate::csrf::CsrfPolicy;

/// What a route demands, compiled from `auth`, `providers`, `token_sources`, `require`.
/// Equal policies are one policy class (`router`): reading agreement compares them.
#[derive(Debug, PartialEq, Eq, Hash)]
pub enum RouteAuth {
    Public,
    Protected(Policy),
}

/// A protected route: which credentials it takes and what their claims must hold.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Policy {
    /// A JWT from `sources` is accepted (`auth` names `"jwt"`).
    pub jwt: bool,
    /// A login session is accepted (`auth` names `"session"`); tried when no JWT is present.
    pub session: bool,
    /// An `[api_keys]` key is accepted (`auth` names `"api_key"`); tried after a JWT, before
    /// a session.
    pub api_key: bool,
    /// A verified client certificate is accepted (`auth` names `"mtls"`); tried after an API
    /// key, before a session.
    pub mtls: bool,
    /// What a request without a credential gets on a session route.
    pub on_unauthenticated: Unauthenticated,
    /// Indices into `Snapshot::providers`.
    pub providers: Box<[usize]>,
    pub sources: Box<[TokenSource]>,
    pub forward_token: bool,
    pub scopes: Box<[Box<str>]>,
    pub claims: Box<[ClaimRequirement]>,
    /// Where a request authenticated by a cookie must come from (`csrf`, ...).
    pub csrf: CsrfPolicy,
}

/// The headers a route sends a login session's tokens in (`forward_access_token`,
/// `forward_id_token`); both `None` on most routes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionTokenHeaders {
    pub access: Option<http::HeaderName>,
    pub id: Option<http::HeaderName>,
}

impl SessionTokenHeaders {
    pub fn any(&self) -> bool {
        self.access.is_some() || self.id.is_some()
    }
}

/// `on_unauthenticated`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unauthenticated {
    /// Browser navigations are sent to log in, other requests get 401.
    Negotiate,
    Redirect,
    Deny,
}

/// Where a route reads its token, from `token_sources`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
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

/// One accepted value of a claim requirement. Numbers and booleans in tokens are compared
/// with their JSON spelling, so `claims = { level = 3 }` and `{ admin = true }` work.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClaimRequirement {
    pub name: Box<str>,
    pub accepted: Box<[Box<str>]>,
}

/// A route's `websocket = true` and the limits of its upgraded connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WebSocket {
    /// `upgraded_idle_timeout`: nothing moved either way for this long, closed.
    pub idle_timeout: std::time::Duration,
    /// `max_upgraded_lifetime`: closed this long after the upgrade.
    pub max_lifetime: std::time::Duration,
    /// `close_on_expiry`: closed when the credential that opened it expires.
    pub close_on_expiry: bool,
}
