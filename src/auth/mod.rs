//! Route policy to decision: the third step of the request path.
//!
//! `authenticate` is the only place a [`Permit`] is made, and the forwarder takes nothing
//! else: a request reaches an upstream only with a permit produced for that same request
//! (invariant I1). A permit is either public (the route needs no credential) or carries a
//! verified [`Identity`].

pub mod api_keys;
pub mod cache;
pub mod claims;
pub mod client_cert;
pub mod credential;
pub mod introspect;
pub mod jwt;
pub mod keys;
pub mod remote;
pub mod verifier;

use std::sync::Arc;

use http::HeaderMap;

use crate::outcome::Outcome;

pub use crate::policy::{Policy, RouteAuth, TokenSource, Unauthenticated};
use cache::TokenCache;
use claims::Claims;
use credential::CredentialError;
use jwt::{JwtError, Provider};

/// `Identity::provider` of an identity an API key vouched for (no provider did).
pub const API_KEYS: usize = usize::MAX;
/// `Identity::provider` of an identity a client certificate vouched for.
pub const CLIENT_CERT: usize = usize::MAX - 1;

/// A verified principal.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Index into `Snapshot::providers`.
    pub provider: usize,
    pub claims: Arc<Claims>,
    /// A login session's tokens, kept for routes that forward them (`forward_access_token`,
    /// `forward_id_token`); `None` for every other credential.
    pub tokens: Option<Arc<SessionTokens>>,
}

/// The IdP's tokens of a login session, as header values. `Debug` leaves them out (I7).
pub struct SessionTokens {
    pub access: Option<http::HeaderValue>,
    pub id: Option<http::HeaderValue>,
}

impl std::fmt::Debug for SessionTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionTokens")
            .field("access", &self.access.as_ref().map(|_| "<redacted>"))
            .field("id", &self.id.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Which credential was verified, so that it is removed before forwarding, or kept where
/// the route forwards it (every other configured credential source is removed: I10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consumed {
    /// No credential of a token source (public routes, sessions).
    None,
    /// `Authorization: Bearer`, removed.
    Authorization,
    /// Verified and forwarded (`forward_token`): `source` indexes the route's token sources.
    Kept { source: usize },
    /// A cookie: `source` indexes the route's token sources (a `cookie:NAME` source); `spot`
    /// is where the cookie was found, so the rewrite need not read the token again.
    Cookie {
        source: usize,
        spot: Option<credential::CookieSpot>,
    },
}

/// Permission to forward one request. Only `authenticate` constructs one.
#[derive(Debug)]
pub struct Permit {
    identity: Option<Identity>,
    consumed: Consumed,
    /// The credential came from a cookie (a session or a `cookie:NAME` source): the
    /// browser attaches it to requests other sites make it send (see `csrf`).
    ambient: bool,
    /// A renewed session cookie to send with the response. Boxed: rare, and the permit
    /// travels by value through the decision (every byte of it is copied per request).
    set_cookie: Option<Box<http::HeaderValue>>,
    /// A session's absolute end (seconds since the epoch).
    session_expires: Option<u64>,
}

impl Permit {
    /// The renewed session cookie, if the session was touched or refreshed.
    pub fn take_set_cookie(&mut self) -> Option<http::HeaderValue> {
        self.set_cookie.take().map(|cookie| *cookie)
    }

    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref()
    }

    /// When the credential stops being valid (seconds since the epoch): a session's end,
    /// a token's `exp`. `None` on public routes.
    pub fn expires_at(&self) -> Option<u64> {
        self.session_expires.or_else(|| {
            self.identity
                .as_ref()
                .and_then(|i| i.claims.get("exp"))
                .and_then(|exp| exp.as_u64())
        })
    }

    /// The credential came from a cookie, which browsers send on their own.
    pub fn ambient(&self) -> bool {
        self.ambient
    }

    /// The credential that was verified, and whether it is forwarded.
    pub fn consumed(&self) -> Consumed {
        self.consumed
    }

    /// The token source of the verified credential, when it came from one.
    pub fn consumed_source<'s>(&self, sources: &'s [TokenSource]) -> Option<&'s TokenSource> {
        match self.consumed {
            Consumed::None => None,
            Consumed::Authorization => Some(&TokenSource::Bearer),
            Consumed::Cookie { source, .. } | Consumed::Kept { source } => sources.get(source),
        }
    }

    /// For the criterion benches of the header rewrite only: compiled in with the
    /// `bench-internals` feature, never in a normal build.
    #[cfg(feature = "bench-internals")]
    #[doc(hidden)]
    pub fn bench_with_claims(claims: Claims) -> Permit {
        Permit {
            identity: Some(Identity {
                provider: 0,
                claims: Arc::new(claims),
                tokens: None,
            }),
            consumed: Consumed::Authorization,
            ambient: false,
            set_cookie: None,
            session_expires: None,
        }
    }

    #[cfg(test)]
    pub(crate) fn with_claims(claims: Claims, consumed: Consumed) -> Permit {
        Permit {
            identity: Some(Identity {
                provider: 0,
                claims: Arc::new(claims),
                tokens: None,
            }),
            consumed,
            ambient: false,
            set_cookie: None,
            session_expires: None,
        }
    }
}

/// Why a request was denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no credential")]
    MissingCredential,
    #[error(transparent)]
    BadCredential(#[from] CredentialError),
    #[error(transparent)]
    InvalidToken(#[from] JwtError),
    #[error("a required scope is missing")]
    MissingScope,
    #[error("a required claim does not hold")]
    ClaimMismatch,
    #[error("the session store is unavailable")]
    SessionUnavailable,
    #[error("an API key that is not in the keys file")]
    UnknownApiKey,
    #[error("the issuer's introspection says the token is not active")]
    InactiveToken,
    #[error("the issuer's introspection endpoint did not answer")]
    IntrospectionUnavailable,
    #[error("the token was revoked")]
    Revoked,
}

impl AuthError {
    /// The outcome of a request refused for it (logs and metrics).
    pub fn outcome(self) -> Outcome {
        match self {
            AuthError::MissingCredential => Outcome::Missing,
            AuthError::BadCredential(CredentialError::Ambiguous) => Outcome::AmbiguousCredential,
            AuthError::BadCredential(CredentialError::MalformedBearer) => {
                Outcome::MalformedCredential
            }
            AuthError::BadCredential(CredentialError::MalformedAuthorization) => {
                Outcome::MalformedAuthorization
            }
            AuthError::InvalidToken(e) => e.outcome(),
            AuthError::MissingScope => Outcome::InsufficientScope,
            AuthError::ClaimMismatch => Outcome::ClaimMismatch,
            AuthError::SessionUnavailable => Outcome::SessionStoreUnavailable,
            AuthError::UnknownApiKey => Outcome::UnknownApiKey,
            AuthError::InactiveToken => Outcome::InactiveToken,
            AuthError::IntrospectionUnavailable => Outcome::IdpUnavailable,
            AuthError::Revoked => Outcome::Revoked,
        }
    }
}

/// An error of a session store or of the IdP behind a session, as text for the log.
pub type SessionError = Box<dyn std::error::Error + Send + Sync>;

/// A session found for a request, and the renewed cookie to send back when it was touched.
pub struct SessionFound {
    pub claims: Arc<Claims>,
    /// The session's tokens, when the config forwards them.
    pub tokens: Option<Arc<SessionTokens>>,
    /// The session's id and start, for the revocation denylist.
    pub id: Option<Arc<str>>,
    pub created: u64,
    pub set_cookie: Option<http::HeaderValue>,
    /// The session's absolute end (seconds since the epoch).
    pub expires: u64,
}

/// Browser sessions as `authenticate` needs them. Implemented by `session::Login`: auth
/// owns the question and session answers it, so that auth never imports session (which
/// builds on auth's JWT verification).
pub trait Sessions: Send + Sync {
    /// Index into `Snapshot::providers`: the provider that vouched for the sessions.
    fn provider(&self) -> usize;

    /// The session of this request, if it has a valid one. Boxed: a lookup can refresh the
    /// session at the IdP, a large future that requests without a session never carry.
    fn find<'a>(
        &'a self,
        headers: &'a HeaderMap,
        tls: bool,
        providers: &'a [Provider],
        now: u64,
    ) -> std::pin::Pin<
        Box<dyn Future<Output = Result<Option<SessionFound>, SessionError>> + Send + 'a>,
    >;
}

/// What `authenticate` consults besides the route's policy.
pub struct AuthContext<'a> {
    pub providers: &'a [Provider],
    pub cache: &'a TokenCache,
    /// The `[login]` client, when sessions are configured.
    pub login: Option<&'a dyn Sessions>,
    /// `[api_keys]`, when configured.
    pub api_keys: Option<&'a api_keys::ApiKeys>,
    /// The identity of the connection's verified client certificate, if it presented one.
    pub client_cert: Option<&'a Arc<Claims>>,
    /// `[redis]`: revocations in force.
    pub denylist: Option<&'a crate::revocation::Denylist>,
    /// The request came over TLS (picks the session cookie's name).
    pub tls: bool,
    pub now: u64,
}

/// Decides whether the request with these headers may pass the route's policy.
pub async fn authenticate(
    policy: &RouteAuth,
    headers: &HeaderMap,
    ctx: &AuthContext<'_>,
) -> Result<Permit, AuthError> {
    let policy = match policy {
        RouteAuth::Public => {
            return Ok(Permit {
                identity: None,
                consumed: Consumed::None,
                ambient: false,
                set_cookie: None,
                session_expires: None,
            });
        }
        RouteAuth::Protected(policy) => policy,
    };
    // A JWT first when the route takes one and the request carries one: a present but
    // bad token is refused, never silently replaced by a session.
    if policy.jwt
        && let Some((source, found)) = credential::find_credential(headers, &policy.sources)?
    {
        let identity = match introspecting(policy, ctx.providers, found.bytes()) {
            // Opaque: the issuer's introspection endpoint says who it is.
            Some(provider) => {
                let token = found.text()?;
                let introspection = ctx.providers[provider]
                    .introspection
                    .as_ref()
                    .expect("introspecting() picks a provider with introspection");
                let claims = Box::pin(introspection.check(token, ctx.now))
                    .await
                    .map_err(refused)?;
                Identity {
                    provider,
                    claims,
                    tokens: None,
                }
            }
            None => {
                let identity =
                    verify_cached(found, policy, ctx.providers, ctx.cache, ctx.now).await?;
                // A verified JWT of a provider that also introspects JWTs: revoked ones fail.
                if let Some(introspection) = ctx.providers[identity.provider]
                    .introspection
                    .as_ref()
                    .filter(|i| i.introspect_jwts)
                {
                    Box::pin(introspection.check(found.text()?, ctx.now))
                        .await
                        .map_err(refused)?;
                }
                identity
            }
        };
        if token_revoked(ctx, &identity.claims) {
            return Err(AuthError::Revoked);
        }
        check_requirements(policy, &identity.claims)?;
        let consumed = match (&policy.sources[source], policy.forward_token) {
            (_, true) => Consumed::Kept { source },
            (TokenSource::Bearer, false) => Consumed::Authorization,
            (TokenSource::Cookie(_), false) => Consumed::Cookie {
                source,
                spot: found.spot(),
            },
        };
        return Ok(Permit {
            identity: Some(identity),
            consumed,
            ambient: matches!(policy.sources[source], TokenSource::Cookie(_)),
            set_cookie: None,
            session_expires: None,
        });
    }
    // Then an API key, when the route takes one and the request presents one: an unknown
    // key is refused, never replaced by a session.
    if policy.api_key
        && let Some(keys) = ctx.api_keys
        && let Some(presented) = keys.presented(headers)?
    {
        let claims = keys.verify(presented).ok_or(AuthError::UnknownApiKey)?;
        check_requirements(policy, &claims)?;
        return Ok(Permit {
            identity: Some(Identity {
                provider: API_KEYS,
                claims,
                tokens: None,
            }),
            // Every API key source is stripped on every route (I10).
            consumed: Consumed::None,
            ambient: false,
            set_cookie: None,
            session_expires: None,
        });
    }
    // Then the connection's client certificate (rustls verified it in the handshake).
    if policy.mtls
        && let Some(claims) = ctx.client_cert
    {
        check_requirements(policy, claims)?;
        return Ok(Permit {
            identity: Some(Identity {
                provider: CLIENT_CERT,
                claims: claims.clone(),
                tokens: None,
            }),
            consumed: Consumed::None,
            // Browsers present a certificate on their own: cross-site requests are checked.
            ambient: true,
            set_cookie: None,
            session_expires: None,
        });
    }
    if policy.session
        && let Some(login) = ctx.login
    {
        let found = login
            .find(headers, ctx.tls, ctx.providers, ctx.now)
            .await
            .map_err(|error| {
                tracing::warn!(%error, "session lookup failed; denying");
                AuthError::SessionUnavailable
            })?;
        if let Some(found) = found
            && !ctx
                .denylist
                .is_some_and(|list| session_revoked(list, &found, ctx.now))
        {
            check_requirements(policy, &found.claims)?;
            return Ok(Permit {
                identity: Some(Identity {
                    provider: login.provider(),
                    claims: found.claims,
                    tokens: found.tokens,
                }),
                // The session cookie is one of the gateway's own: always stripped.
                consumed: Consumed::None,
                ambient: true,
                set_cookie: found.set_cookie.map(Box::new),
                session_expires: Some(found.expires),
            });
        }
    }
    Err(AuthError::MissingCredential)
}

/// The provider that introspects `token` on this route: the route's first provider with
/// `introspection` when the token is opaque (not a JWT). `None`: verify it as a JWT.
fn introspecting(policy: &Policy, providers: &[Provider], token: &[u8]) -> Option<usize> {
    if !introspect::is_opaque(token) {
        return None;
    }
    policy
        .providers
        .iter()
        .copied()
        .find(|&p| providers[p].introspection.is_some())
}

fn refused(refusal: introspect::Refusal) -> AuthError {
    match refusal {
        introspect::Refusal::Inactive => AuthError::InactiveToken,
        introspect::Refusal::Unavailable => AuthError::IntrospectionUnavailable,
    }
}

/// A session ended elsewhere: by its id (a logout), or by its IdP session or subject
/// (back-channel logout) when it began before that.
fn session_revoked(list: &crate::revocation::Denylist, found: &SessionFound, now: u64) -> bool {
    use crate::revocation::Kind;
    if list.is_empty() {
        return false;
    }
    let issuer = found
        .claims
        .get("iss")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    let claim = |name| found.claims.get(name).and_then(|v| v.as_str());
    found
        .id
        .as_deref()
        .is_some_and(|id| list.is_revoked(Kind::Session, "", id, 0, now))
        || claim("sid")
            .is_some_and(|sid| list.is_revoked(Kind::Sid, issuer, sid, found.created, now))
        || claim("sub")
            .is_some_and(|sub| list.is_revoked(Kind::Sub, issuer, sub, found.created, now))
}

/// A JWT revoked by its `jti` (admin `POST /revoke`).
fn token_revoked(ctx: &AuthContext<'_>, claims: &Claims) -> bool {
    ctx.denylist.is_some_and(|list| {
        !list.is_empty()
            && claims
                .get("jti")
                .and_then(|v| v.as_str())
                .is_some_and(|jti| {
                    list.is_revoked(crate::revocation::Kind::Jti, "", jti, 0, ctx.now)
                })
    })
}

fn check_requirements(policy: &Policy, claims: &Claims) -> Result<(), AuthError> {
    if !claims.has_scopes(&policy.scopes) {
        return Err(AuthError::MissingScope);
    }
    if !policy.claims.iter().all(|r| r.holds(claims)) {
        return Err(AuthError::ClaimMismatch);
    }
    Ok(())
}

/// For `explain --claims` and `[[tests]]` only: the route's requirements checked against
/// claims that were *not* verified here (the proxy never sets `decide::Facts::assumed`).
/// The claims stand for the route's first credential: a session on a session-only route,
/// else the first token source, so the cross-site check applies as it would.
pub(crate) fn authorize_assumed_claims(
    policy: &Policy,
    claims: &Claims,
) -> Result<Permit, AuthError> {
    check_requirements(policy, claims)?;
    Ok(Permit {
        identity: Some(Identity {
            provider: policy.providers.first().copied().unwrap_or(0),
            claims: Arc::new(claims.clone()),
            tokens: None,
        }),
        consumed: Consumed::None,
        ambient: (!policy.jwt && policy.session)
            || (policy.jwt && matches!(policy.sources.first(), Some(TokenSource::Cookie(_)))),
        set_cookie: None,
        session_expires: None,
    })
}

/// The token's identity from the cache when a still-valid verification is there, else from
/// a full verification (which is then cached).
async fn verify_cached(
    found: credential::Found<'_>,
    policy: &Policy,
    providers: &[Provider],
    cache: &TokenCache,
    now: u64,
) -> Result<Identity, AuthError> {
    let key = match cache.lookup(found.bytes(), now) {
        Ok(hit)
            if policy.providers.contains(&hit.provider)
                && (now as f64) < hit.valid_until
                && providers[hit.provider].keys.load().contains_key(hit.key_id) =>
        {
            return Ok(Identity {
                provider: hit.provider,
                claims: hit.claims.clone(),
                tokens: None,
            });
        }
        // A hit this route cannot use (another provider, a rotated key, past `exp`) is
        // verified again in full; the digest is worked out for the insert.
        Ok(_) => TokenCache::key(found.bytes()),
        Err(key) => key,
    };
    // A miss: the token's form is checked now (a hit's bytes passed it when they were
    // verified).
    let token = found.text()?;
    // Boxed: a miss can wait on a key refetch, whose state would otherwise sit in every
    // request's future (moved on each poll set-up) although hits never need it.
    let verified = Box::pin(jwt::verify_refreshing(
        token,
        &policy.providers,
        providers,
        now,
    ))
    .await?;
    let claims = Arc::new(verified.claims);
    let ttl = providers[verified.provider].cache_ttl;
    if !ttl.is_zero() {
        let cached = cache::Cached::new(
            verified.provider,
            verified.key_id,
            verified.valid_until,
            claims.clone(),
        );
        cache.insert(found.bytes(), key, cached, now, ttl);
    }
    Ok(Identity {
        provider: verified.provider,
        claims,
        tokens: None,
    })
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
