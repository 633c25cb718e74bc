//! The decision: what the gateway does with a request, whoever asks. The proxy runs it and
//! then forwards; `explain` and the `[[tests]]` of `check` run it and report. There is one,
//! so that what an operator is told can never drift from what the gateway does.
//!
//! ```text
//! limits ─► own endpoints ─► host + canonical target + route + readings (I4, I9)
//!        ─► authenticate (I1) ─► cross-site check (cookies) ─► rate limit ─► Decision
//! ```
//! then [`rewrite`]: strip, then inject (I2, I3, I10), the same for every caller.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use http::header::{HOST, HeaderValue};
use http::uri::PathAndQuery;
use http::{HeaderMap, Version};

use crate::auth::claims::Claims;
use crate::auth::{self, AuthError, Permit};
use crate::canonical::{TargetError, canonical_host, canonical_path};
use crate::csrf;
use crate::error::ProxyError;
use crate::identity::{self, Added, ClientInfo};
use crate::outcome::Outcome;
use crate::policy::{RouteAuth, TokenSource, Unauthenticated};
use crate::readings;
use crate::session;
use crate::snapshot::{ServerSettings, Snapshot};
use crate::upstream;

/// What the connection tells about a request.
pub struct Facts {
    /// It came over TLS.
    pub tls: bool,
    /// Its peer is in `trusted_proxies`.
    pub trusted: bool,
    /// Seconds since the epoch; `None`: read the clock if a credential needs it (a public
    /// request never does, and a clock read is not free).
    pub now: Option<u64>,
    /// Claims to take as verified instead of a credential: only `explain --claims` and
    /// `[[tests]]` set it, never the proxy.
    pub assumed: Option<Claims>,
    /// The identity of the connection's verified client certificate (`auth = "mtls"`).
    pub client_cert: Option<Arc<Claims>>,
    /// Where the request comes from, for rate limits: the connection's peer (the client
    /// address is worked out from it when a route has a limit). `None`: the request is not
    /// counted (`explain`, `[[tests]]`).
    pub peer: Option<std::net::IpAddr>,
}

/// What to do with the request.
pub enum Decision {
    /// One of the gateway's own endpoints (`/_portcullis/login`, the callback, logout,
    /// back-channel logout).
    Endpoint(session::Endpoint),
    /// A browser without a session on a session route: off to log in, and back to
    /// `return_to`.
    LogIn {
        return_to: PathAndQuery,
        /// The `Host` the browser addressed, as received.
        host_value: Option<HeaderValue>,
    },
    /// Forward to the route's upstream.
    Forward(Forward),
}

/// A request that may go to its route's upstream.
pub struct Forward {
    /// Index into `snapshot.routes.routes()`.
    pub route: usize,
    /// The canonical path (what was authorized) and the query as received.
    pub path_and_query: PathAndQuery,
    /// The `Host` the client addressed, as received (HTTP/2: its `:authority`).
    pub host_value: Option<HeaderValue>,
    /// The only ticket to the upstream (I1).
    pub permit: Permit,
}

/// What the decision learned on the way, for the decision log, metrics and `explain`.
#[derive(Default)]
pub struct Trace {
    /// Record timings and the path (the decision log is on: clock reads are not free).
    pub timed: bool,
    pub route: Option<usize>,
    pub path: Option<PathAndQuery>,
    pub outcome: Outcome,
    pub subject: Option<Arc<Claims>>,
    pub provider: Option<usize>,
    pub auth_us: u64,
    /// The cross-site check, when the credential was a cookie.
    pub csrf: Option<csrf::Verdict>,
}

impl Trace {
    fn fail(&mut self, error: ProxyError) -> ProxyError {
        self.outcome = error.outcome();
        error
    }
}

/// Decides what to do with the request in `parts` (its body is not looked at).
pub async fn decide(
    snapshot: &Snapshot,
    parts: &http::request::Parts,
    facts: &Facts,
    trace: &mut Trace,
) -> Result<Decision, ProxyError> {
    check_limits(parts, &snapshot.server).map_err(|e| trace.fail(e))?;

    // The gateway's own login endpoints come before the routes.
    if let Some(login) = &snapshot.login
        && let Some(endpoint) = canonical_path(parts.uri.path())
            .ok()
            .and_then(|path| login.endpoint(&path))
    {
        trace.outcome = Outcome::LoginEndpoint;
        return Ok(Decision::Endpoint(endpoint));
    }

    // 1-2. One canonical host and path, matched against the routes: what is matched is
    // what is forwarded (I4), every reading of it agrees (I9); no route, no upstream.
    let (index, path_and_query, host_value) = resolve(parts, snapshot, trace)?;
    if trace.timed {
        trace.path = Some(path_and_query.clone());
    }
    let route = &snapshot.routes.routes()[index];

    // 3. Authenticate: the permit is the only ticket to the upstream (I1).
    let auth_started = trace.timed.then(Instant::now);
    let permit = match (&facts.assumed, &route.auth) {
        (Some(claims), RouteAuth::Protected(policy)) => {
            auth::authorize_assumed_claims(policy, claims)
        }
        (None, _) | (Some(_), RouteAuth::Public) => {
            let ctx = auth::AuthContext {
                providers: &snapshot.providers,
                cache: &snapshot.token_cache,
                api_keys: snapshot.api_keys.as_ref(),
                client_cert: facts.client_cert.as_ref(),
                denylist: snapshot.denylist.as_deref(),
                login: snapshot.login.as_ref().map(|l| l as &dyn auth::Sessions),
                tls: facts.tls,
                now: match (&route.auth, facts.now) {
                    (_, Some(now)) => now,
                    (RouteAuth::Protected(_), None) => auth::unix_now(),
                    (RouteAuth::Public, None) => 0,
                },
            };
            auth::authenticate(&route.auth, &parts.headers, &ctx).await
        }
    };
    trace.auth_us = auth_started.map_or(0, |t| t.elapsed().as_micros() as u64);
    let permit = match permit {
        Err(AuthError::MissingCredential)
            if let (RouteAuth::Protected(policy), Some(_)) = (&route.auth, &snapshot.login)
                && policy.session
                && match policy.on_unauthenticated {
                    Unauthenticated::Negotiate => {
                        session::wants_redirect(&parts.method, &parts.headers)
                    }
                    Unauthenticated::Redirect => true,
                    Unauthenticated::Deny => false,
                } =>
        {
            // A browser without a session: off to log in, back to this very URL.
            trace.outcome = Outcome::LoginRedirect;
            return Ok(Decision::LogIn {
                return_to: path_and_query,
                host_value,
            });
        }
        Err(error) => return Err(trace.fail(error.into())),
        Ok(permit) => permit,
    };

    // 3b. A credential the browser attaches on its own (a cookie): a state-changing request
    // must come from a page of this origin, or one the config trusts (CSRF).
    if permit.ambient()
        && let RouteAuth::Protected(policy) = &route.auth
    {
        let own = request_origin(facts, &parts.headers, host_value.as_ref());
        // A WebSocket handshake is a GET that opens a channel both ways: checked as a
        // state-changing request (cross-site WebSocket hijacking; browsers send `Origin`).
        let method = if route.websocket.is_some() && upstream::upgrade::is_websocket_request(parts)
        {
            &http::Method::POST
        } else {
            &parts.method
        };
        let verdict = csrf::check(
            &policy.csrf,
            method,
            &parts.headers,
            own.as_ref(),
            &snapshot.server.trusted_origins,
        );
        trace.csrf = Some(verdict);
        if let csrf::Verdict::Refused(why) = verdict {
            tracing::debug!(reason = why, "cross-site request refused");
            return Err(trace.fail(ProxyError::CsrfRejected));
        }
    }
    // 3c. The route's rate limit, by identity or client address.
    if let (Some(limiter), Some(peer)) = (&route.rate_limit, facts.peer) {
        let client = crate::ratelimit::client_address(peer, facts.trusted, &parts.headers, |a| {
            snapshot.is_trusted(a)
        });
        let subject = permit
            .identity()
            .filter(|i| {
                limiter.spec().key != crate::ratelimit::KeyKind::ApiKey
                    || i.provider == auth::API_KEYS
            })
            .and_then(|i| i.claims.subject());
        // Boxed: the shared count's Redis call is a large future that only limited routes
        // need; unboxed it would enlarge every request's.
        let counted = Box::pin(limiter.count(limiter.key(subject, client), Instant::now()));
        if let Err(limited) = counted.await {
            return Err(trace.fail(ProxyError::RateLimited(limited)));
        }
    }
    trace.outcome = if permit.identity().is_some() {
        Outcome::Allowed
    } else {
        Outcome::Public
    };
    if trace.timed {
        trace.subject = permit.identity().map(|i| i.claims.clone());
        trace.provider = permit.identity().map(|i| i.provider);
    }
    Ok(Decision::Forward(Forward {
        route: index,
        path_and_query,
        host_value,
        permit,
    }))
}

/// Step 4 for a forwarded request (the parts of a [`Forward`]): strip, then inject (I2, I3,
/// I10). Rewrites the headers in `parts` and returns the fields to add after them (see
/// [`identity::strip_request`]). Takes the pieces rather than the `Forward`, so that the
/// proxy can move the path on to the upstream without copying it.
pub fn rewrite<'a>(
    snapshot: &'a Snapshot,
    route: usize,
    permit: &'a Permit,
    path_and_query: &PathAndQuery,
    host_value: Option<&HeaderValue>,
    parts: &mut http::request::Parts,
    client: &'a ClientInfo<'a>,
) -> Added<'a> {
    let route = &snapshot.routes.routes()[route];
    let sources: &[TokenSource] = match &route.auth {
        RouteAuth::Protected(policy) => &policy.sources,
        RouteAuth::Public => &[],
    };
    let added = identity::strip_request(
        &mut parts.headers,
        &snapshot.identity,
        permit,
        sources,
        client,
        identity::RouteRules {
            keep_method_override: route.allow_method_override,
            original_uri: route.forward_original_uri.then(|| path_and_query.as_str()),
            session_tokens: &route.session_tokens,
        },
    );
    if let Some(host) = &snapshot.upstreams[route.upstream].host {
        // `host`: the name the app knows itself by.
        parts.headers.insert(HOST, host.clone());
    } else if let Some(host_value) = host_value
        && !parts.headers.contains_key(HOST)
    {
        // HTTP/2 clients send :authority only; the app sees the host the client asked for.
        parts.headers.insert(HOST, host_value.clone());
    }
    added
}

/// 414 / 431 before any other work. hyper enforces larger hard caps itself (see
/// `server::conn::Builders`); these are the configured, JSON-answered ones.
fn check_limits(parts: &http::request::Parts, settings: &ServerSettings) -> Result<(), ProxyError> {
    let target = parts.uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    if target > settings.max_uri_bytes {
        return Err(ProxyError::UriTooLong);
    }
    if parts.headers.len() > settings.max_headers {
        return Err(ProxyError::HeadersTooLarge);
    }
    let bytes: usize = parts
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if bytes > settings.max_header_bytes {
        return Err(ProxyError::HeadersTooLarge);
    }
    Ok(())
}

/// Canonicalises the target and finds its route: (route index, path to forward, host as
/// received). Every other reading of the path a backend could make must land on a route
/// of the same policy (I9).
fn resolve(
    parts: &http::request::Parts,
    snapshot: &Snapshot,
    trace: &mut Trace,
) -> Result<(usize, PathAndQuery, Option<HeaderValue>), ProxyError> {
    let (host, host_value) = request_host(parts).map_err(|e| trace.fail(e.into()))?;
    let matched = readings::match_target(&snapshot.routes, &host, parts.uri.path(), &parts.method)
        .map_err(|refusal| trace.fail(refusal.into()))?;
    trace.route = Some(matched.index);
    let route = &snapshot.routes.routes()[matched.index];
    readings::agree(
        &snapshot.routes,
        &host,
        matched.matched(),
        &parts.method,
        snapshot.upstreams[route.upstream].path_semantics,
        route.policy,
    )
    .map_err(|_| trace.fail(ProxyError::AmbiguousPath))?;
    let unchanged = matches!(matched.path, Cow::Borrowed(_));
    let path_and_query = forwarded_path_and_query(&parts.uri, &matched.path, unchanged)
        .map_err(|e| trace.fail(e.into()))?;
    Ok((matched.index, path_and_query, host_value))
}

/// The host the client addressed, canonical for matching and as received for forwarding.
/// `Host` and the URI authority (absolute-form, HTTP/2 `:authority`) must agree.
pub fn request_host(
    parts: &http::request::Parts,
) -> Result<(Cow<'_, str>, Option<HeaderValue>), TargetError> {
    let mut hosts = parts.headers.get_all(HOST).iter();
    let header = hosts.next();
    if hosts.next().is_some() {
        return Err(TargetError::DuplicateHost);
    }
    let header_text = header
        .map(|h| h.to_str().map_err(|_| TargetError::InvalidHost))
        .transpose()?;
    let authority = parts.uri.authority().map(|a| a.as_str());
    match (header_text, authority) {
        (Some(h), Some(a)) => {
            let host = canonical_host(h)?;
            if host != canonical_host(a)? {
                return Err(TargetError::HostMismatch);
            }
            Ok((host, header.cloned()))
        }
        (Some(h), None) => Ok((canonical_host(h)?, header.cloned())),
        (None, Some(a)) => {
            let value = HeaderValue::from_str(a).map_err(|_| TargetError::InvalidHost)?;
            Ok((canonical_host(a)?, Some(value)))
        }
        (None, None) if parts.version == Version::HTTP_10 => Ok((Cow::Borrowed(""), None)),
        (None, None) => Err(TargetError::MissingHost),
    }
}

/// The canonical path plus the untouched query string. Reuses the request's own bytes when
/// canonicalisation changed nothing.
fn forwarded_path_and_query(
    uri: &http::Uri,
    path: &str,
    unchanged: bool,
) -> Result<PathAndQuery, TargetError> {
    if let (true, Some(pq)) = (unchanged, uri.path_and_query()) {
        return Ok(pq.clone());
    }
    let text = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    PathAndQuery::try_from(text).map_err(|_| TargetError::NotOriginForm)
}

/// The path the upstream receives for the authorized `path_and_query` on `route`: mapped
/// from the route's mount onto the upstream's `path_prefix` when either is configured
/// (`upstream::mapping`), else unchanged (and not copied).
pub fn upstream_target(
    snapshot: &Snapshot,
    route: usize,
    path_and_query: PathAndQuery,
) -> PathAndQuery {
    let route = &snapshot.routes.routes()[route];
    let prefix = snapshot.upstreams[route.upstream].mapping.prefix.as_deref();
    if prefix.is_none() && route.strip_prefix.is_none() {
        return path_and_query;
    }
    upstream::mapping::map_request(prefix.unwrap_or("/"), route.mount(), &path_and_query)
}

/// What an answer's rewrite needs (`upstream::mapping`), or `None` when the route's
/// upstream rewrites nothing in answers. Taken before the request's headers are rewritten.
/// `connection`: the request's [`Facts`] `tls` and `trusted` (the whole `Facts` would have
/// to live in the request's future until the answer came).
pub fn answer_rewrite<'a>(
    snapshot: &'a Snapshot,
    route: usize,
    connection: (bool, bool),
    headers: &HeaderMap,
    host: Option<&HeaderValue>,
) -> Option<(String, Option<&'a str>, &'a str)> {
    let route = &snapshot.routes.routes()[route];
    let mapping = &snapshot.upstreams[route.upstream].mapping;
    let prefix = mapping
        .prefix
        .as_deref()
        .or(route.strip_prefix.as_ref().map(|_| "/"));
    if !(mapping.rewrite_redirects || (mapping.rewrite_cookie_paths && prefix.is_some())) {
        return None;
    }
    let (scheme, host) = client_scheme_and_host(connection, headers, host)?;
    Some((format!("{scheme}://{host}"), prefix, route.mount()))
}

/// Whether the client's request came over TLS: the connection's, or, from a trusted proxy
/// that terminated TLS, what its `X-Forwarded-Proto` or `Forwarded: proto=` says (the first
/// value: the proxy nearest the client writes first). Decides the login's `redirect_uri`,
/// `Secure` and the `__Host-` prefix of the gateway's cookies, and the cross-site check's
/// own origin. From anyone else those fields are not believed.
pub fn client_tls(tls: bool, trusted: bool, headers: &HeaderMap) -> bool {
    if !trusted {
        return tls;
    }
    let first = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(str::trim)
    };
    let proto = first("x-forwarded-proto").or_else(|| {
        first("forwarded").and_then(|element| {
            element.split(';').find_map(|pair| {
                let (key, value) = pair.split_once('=')?;
                key.trim()
                    .eq_ignore_ascii_case("proto")
                    .then(|| value.trim().trim_matches('"'))
            })
        })
    });
    match proto {
        Some(p) if p.eq_ignore_ascii_case("https") => true,
        Some(p) if p.eq_ignore_ascii_case("http") => false,
        _ => tls,
    }
}

/// The scheme (TLS or not; a trusted proxy's `X-Forwarded-Proto`) and host (`Host`; a
/// trusted proxy's `X-Forwarded-Host`) the client addressed, as it wrote them.
fn client_scheme_and_host<'h>(
    (tls, trusted): (bool, bool),
    headers: &'h HeaderMap,
    host: Option<&'h HeaderValue>,
) -> Option<(&'static str, &'h str)> {
    let forwarded = |name: &str| {
        trusted
            .then(|| headers.get(name))
            .flatten()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(str::trim)
    };
    let scheme = match forwarded("x-forwarded-proto") {
        Some(proto) if proto.eq_ignore_ascii_case("https") => "https",
        Some(proto) if proto.eq_ignore_ascii_case("http") => "http",
        _ if tls => "https",
        _ => "http",
    };
    let host = forwarded("x-forwarded-host").or_else(|| host.and_then(|h| h.to_str().ok()))?;
    Some((scheme, host))
}

/// The origin the client addressed: its scheme (TLS or not; a trusted proxy's
/// `X-Forwarded-Proto`) and host (`Host`; a trusted proxy's `X-Forwarded-Host`).
pub fn request_origin(
    facts: &Facts,
    headers: &HeaderMap,
    host: Option<&HeaderValue>,
) -> Option<csrf::Origin> {
    let (scheme, host) = client_scheme_and_host((facts.tls, facts.trusted), headers, host)?;
    csrf::Origin::of(scheme, host)
}
