//! The request handler: one flat list of steps from a client request to a response.
//!
//! ```text
//! snapshot ─► canonicalize ─► route ─► authenticate ─► rewrite headers ─► forward ─► log
//! ```
//! Every failure is a [`ProxyError`], turned into a response by the one mapping in
//! `error.rs`. The snapshot is loaded once, so a request sees one config from start to end.

use std::borrow::Cow;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{HOST, HeaderValue, SET_COOKIE};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::auth::{self, AuthError};
use crate::canonical::{TargetError, canonical_host, canonical_path};
use crate::csrf;
use crate::identity::{self, ClientInfo};
use crate::policy::{RouteAuth, Unauthenticated};
use crate::readings;
use crate::session;
use crate::snapshot::{SharedSnapshot, Snapshot};
/// What a request handler knows about its connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: std::net::SocketAddr,
    pub tls: bool,
    /// The peer address as a header value, formatted once per connection.
    pub peer_header: http::HeaderValue,
}

use crate::error;
pub use crate::error::ProxyError;
pub use crate::upstream::ResponseBody;
use crate::upstream::{self, body};

/// What the access log line reports about one request, filled in as the steps run.
#[derive(Default)]
struct Record {
    path: Option<PathAndQuery>,
    route: Option<usize>,
    subject: Option<Arc<auth::claims::Claims>>,
    auth: &'static str,
    provider: Option<usize>,
    auth_us: u64,
    upstream_started: Option<Instant>,
    /// Time the steps (only when the decision log is on: clock reads are not free).
    timed: bool,
}

/// Entry point for every request on every listener.
///
/// Not an `async fn`: the request is split before the future is made, so that its parts
/// live in one slot of the future (an `async fn` keeps its argument and what is moved out
/// of it side by side), and the steps below borrow them in place.
pub fn handle(
    request: Request<Incoming>,
    conn: ConnInfo,
    shared: SharedSnapshot,
) -> impl Future<Output = Result<Response<ResponseBody>, Infallible>> + Send {
    let (mut parts, body) = request.into_parts();
    async move {
        let snapshot = shared.load_full();
        let method = parts.method.clone();
        let raw_path = tracing::enabled!(target: "portcullis::access", tracing::Level::INFO)
            .then(|| parts.uri.path().to_owned());
        let started = raw_path.as_ref().map(|_| Instant::now());
        let mut record = Record {
            timed: started.is_some(),
            ..Record::default()
        };

        let response = match process(&mut parts, body, &conn, &snapshot, &mut record).await {
            Ok(response) => response,
            Err(error) => {
                record.auth = match (&error, record.auth) {
                    (ProxyError::Denied(_), _) | (_, "") => error.reason(),
                    (_, outcome) => outcome,
                };
                match error.rendering().blame {
                    error::Blame::Upstream => tracing::warn!(%error, "upstream error"),
                    error::Blame::Client => tracing::debug!(%error, "request refused"),
                }
                error.into_response().map(Either::Right)
            }
        };
        let status = response.status().as_u16();
        let route = record.route.map(|i| &snapshot.routes.routes()[i]);
        let outcome = if record.auth.is_empty() {
            "other"
        } else {
            record.auth
        };
        snapshot.metrics.record(
            route.map_or(&snapshot.unrouted, |r| &r.metrics),
            &method,
            status,
            outcome,
        );
        if let Some(raw_path) = raw_path {
            // The decision log: one line per request, never a credential.
            let path = record.path.as_ref().map_or(raw_path.as_str(), |p| p.path());
            let upstream_us = record
                .upstream_started
                .map_or(0, |t| t.elapsed().as_micros() as u64);
            tracing::info!(
                target: "portcullis::access",
                method = %method,
                path,
                route = route.map_or("-", |r| &*r.name),
                status,
                decision = decision(status, outcome),
                reason = outcome,
                provider = record.provider.map_or("-", |p| &*snapshot.providers[p].name),
                sub = record.subject.as_ref().and_then(|c| c.subject()).unwrap_or("-"),
                peer = %conn.peer.ip(),
                auth_us = record.auth_us,
                upstream_us,
                latency_us = started.map_or(0, |t| t.elapsed().as_micros() as u64),
            );
        }
        Ok(response)
    }
}

/// Borrows the request's parts (see [`handle`]).
async fn process(
    parts: &mut http::request::Parts,
    body: Incoming,
    conn: &ConnInfo,
    snapshot: &Snapshot,
    record: &mut Record,
) -> Result<Response<ResponseBody>, ProxyError> {
    check_limits(parts, &snapshot.server)?;

    // The gateway's own login endpoints come before the routes.
    if let Some(login) = &snapshot.login
        && let Some(endpoint) = canonical_path(parts.uri.path())
            .ok()
            .and_then(|path| login.endpoint(&path))
    {
        record.auth = "login_endpoint";
        // Boxed, like the login redirect below: rare, and large futures that would
        // otherwise make every request's future larger.
        return Box::pin(login_endpoint(endpoint, login, parts, body, conn, snapshot))
            .await
            .map(|response| response.map(Either::Right));
    }

    // 1-2. One canonical host and path, matched against the routes: what is matched is
    // what is forwarded (I4); no route, no upstream.
    let (index, path_and_query, host_value) = resolve(parts, snapshot)?;
    if record.timed {
        record.path = Some(path_and_query.clone());
    }
    record.route = Some(index);
    let route = &snapshot.routes.routes()[index];

    // 3. Authenticate: the permit is the only ticket to the upstream (I1).
    let auth_started = record.timed.then(Instant::now);
    let ctx = auth::AuthContext {
        providers: &snapshot.providers,
        cache: &snapshot.token_cache,
        login: snapshot.login.as_ref().map(|l| l as &dyn auth::Sessions),
        tls: conn.tls,
        now: auth::unix_now(),
    };
    let permit = auth::authenticate(&route.auth, &parts.headers, &ctx).await;
    record.auth_us = auth_started.map_or(0, |t| t.elapsed().as_micros() as u64);
    let mut permit = match permit {
        Err(AuthError::MissingCredential)
            if let (RouteAuth::Protected(policy), Some(login)) = (&route.auth, &snapshot.login)
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
            record.auth = "login_redirect";
            let host = host_value
                .as_ref()
                .and_then(|h| h.to_str().ok())
                .unwrap_or("");
            let routed_host = canonical_host(host).unwrap_or(Cow::Borrowed(""));
            let info = session::RequestInfo {
                host: &routed_host,
                authority: host,
                tls: conn.tls,
                query: None,
            };
            let response = Box::pin(login.start(&info, path_and_query.as_str(), ctx.now)).await?;
            return Ok(response.map(Either::Right));
        }
        other => other?,
    };
    // 3b. A credential the browser attaches on its own (a cookie): a state-changing request
    // must come from a page of this origin, or one the config trusts (CSRF).
    if permit.ambient()
        && let RouteAuth::Protected(policy) = &route.auth
    {
        let trusted = snapshot.is_trusted(conn.peer.ip());
        let own = request_origin(conn.tls, trusted, &parts.headers, host_value.as_ref());
        let verdict = csrf::check(
            &policy.csrf,
            &parts.method,
            &parts.headers,
            own.as_ref(),
            &snapshot.server.trusted_origins,
        );
        if let csrf::Verdict::Refused(why) = verdict {
            tracing::debug!(reason = why, "cross-site request refused");
            return Err(ProxyError::CsrfRejected);
        }
    }
    record.auth = if permit.identity().is_some() {
        "allowed"
    } else {
        "public"
    };
    record.subject = permit.identity().map(|i| i.claims.clone());
    record.provider = permit.identity().map(|i| i.provider);

    // 4. Strip, then inject (I2, I3).
    let sources = match &route.auth {
        RouteAuth::Protected(policy) => &policy.sources[..],
        RouteAuth::Public => &[],
    };
    let set_cookie = permit.take_set_cookie();
    // Steps 4 and 5 in one block: the upstream head is written before the future is made,
    // so what the rewrite borrows (and the permit) is not kept in this future.
    let forwarding = {
        let permit = permit;
        let client = ClientInfo {
            peer: conn.peer_header.clone(),
            tls: conn.tls,
            host: host_value.as_ref(),
            trusted: snapshot.is_trusted(conn.peer.ip()),
        };
        let added = identity::strip_request(
            &mut parts.headers,
            &snapshot.identity,
            &permit,
            sources,
            &client,
            identity::RouteRules {
                keep_method_override: route.allow_method_override,
                original_uri: route.forward_original_uri.then(|| path_and_query.as_str()),
            },
        );
        if let Some(host_value) = &host_value
            && !parts.headers.contains_key(HOST)
        {
            // HTTP/2 clients send :authority only; the app sees the host the client asked
            // for.
            parts.headers.insert(HOST, host_value.clone());
        }

        // 5. Forward and stream the answer back, the body bounded by the route's limit.
        let limit = route.max_body_size.or(snapshot.server.max_body_size);
        if let Some(limit) = limit
            && declared_length(&parts.headers).is_some_and(|len| len > limit)
        {
            return Err(ProxyError::PayloadTooLarge);
        }
        let body = body::RequestBody::new(body, limit, snapshot.server.request_body_timeout);
        record.upstream_started = record.timed.then(Instant::now);
        upstream::forward(
            &snapshot.upstreams[route.upstream],
            &permit,
            parts,
            &added,
            path_and_query,
            body,
        )
    };
    let mut response = forwarding.await?;
    if let Some(cookie) = set_cookie {
        // The renewed session cookie rides on the app's response, beside the app's own;
        // a shared cache must then never keep that response for someone else.
        response.headers_mut().append(SET_COOKIE, cookie);
        keep_out_of_shared_caches(response.headers_mut());
    }
    Ok(response)
}

/// Makes a response that carries a session cookie uncacheable by shared caches:
/// `Cache-Control: private` when the app sent no `Cache-Control`; otherwise `public` and
/// `s-maxage` are replaced by `private`, unless `private` or `no-store` is there already.
fn keep_out_of_shared_caches(headers: &mut http::HeaderMap) {
    use http::header::CACHE_CONTROL;
    static PRIVATE: HeaderValue = HeaderValue::from_static("private");
    let mut directives: Vec<String> = Vec::new();
    for value in headers.get_all(CACHE_CONTROL) {
        let text = String::from_utf8_lossy(value.as_bytes());
        directives.extend(
            text.split(',')
                .map(str::trim)
                .filter(|d| !d.is_empty())
                .map(str::to_owned),
        );
    }
    let name = |d: &str| {
        d.split('=')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase()
    };
    if directives
        .iter()
        .any(|d| matches!(name(d).as_str(), "private" | "no-store"))
    {
        return;
    }
    let mut kept: Vec<&str> = vec!["private"];
    kept.extend(
        directives
            .iter()
            .filter(|d| !matches!(name(d).as_str(), "public" | "s-maxage"))
            .map(String::as_str),
    );
    let value = HeaderValue::from_str(&kept.join(", ")).unwrap_or_else(|_| PRIVATE.clone());
    headers.insert(CACHE_CONTROL, value);
}

/// The origin the client addressed: its scheme (TLS or not; a trusted proxy's
/// `X-Forwarded-Proto`) and host (`Host`; a trusted proxy's `X-Forwarded-Host`).
fn request_origin(
    tls: bool,
    trusted: bool,
    headers: &http::HeaderMap,
    host: Option<&HeaderValue>,
) -> Option<csrf::Origin> {
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
    csrf::Origin::of(scheme, host)
}

/// Largest body the back-channel logout endpoint reads (a form with one JWT).
const MAX_LOGOUT_BODY: usize = 64 * 1024;

/// `/_portcullis/login`, the callback, logout and back-channel logout.
async fn login_endpoint(
    endpoint: session::Endpoint,
    login: &session::Login,
    parts: &http::request::Parts,
    body: Incoming,
    conn: &ConnInfo,
    snapshot: &Snapshot,
) -> Result<Response<Full<Bytes>>, ProxyError> {
    use session::{Endpoint, LoginError};
    let (host, host_value) = request_host(parts)?;
    let authority = host_value
        .as_ref()
        .and_then(|h| h.to_str().ok())
        .unwrap_or(&host);
    let info = session::RequestInfo {
        host: &host,
        authority,
        tls: conn.tls,
        query: parts.uri.query(),
    };
    let now = auth::unix_now();
    let get = matches!(parts.method, Method::GET | Method::HEAD);
    let post = parts.method == Method::POST;
    let response = match endpoint {
        Endpoint::Login if get => {
            let rd = info
                .query
                .and_then(|q| {
                    serde_urlencoded::from_str::<Vec<(String, String)>>(q)
                        .ok()?
                        .into_iter()
                        .find(|(k, _)| k == "rd")
                })
                .map_or_else(|| "/".to_owned(), |(_, v)| v);
            login.start(&info, &rd, now).await
        }
        Endpoint::Login => Err(LoginError::WrongMethod("GET")),
        Endpoint::Callback if get => {
            login
                .callback(&info, &parts.headers, &snapshot.providers, now)
                .await
        }
        Endpoint::Callback => Err(LoginError::WrongMethod("GET")),
        Endpoint::Logout if post && logout_forged(parts, conn, snapshot, &host_value) => {
            return Err(ProxyError::CsrfRejected);
        }
        Endpoint::Logout if get || post => login.logout(&info, &parts.headers, now).await,
        Endpoint::Logout => Err(LoginError::WrongMethod("GET or POST")),
        Endpoint::Backchannel if post => {
            let limited = http_body_util::Limited::new(body, MAX_LOGOUT_BODY);
            let collected = tokio::time::timeout(
                snapshot.server.request_body_timeout,
                http_body_util::BodyExt::collect(limited),
            )
            .await;
            let form = match collected {
                Ok(Ok(collected)) => collected.to_bytes(),
                Ok(Err(_)) => return Err(ProxyError::PayloadTooLarge),
                Err(_) => return Err(ProxyError::RequestBodyStalled),
            };
            login.backchannel(&form, &snapshot.providers, now).await
        }
        Endpoint::Backchannel => Err(LoginError::WrongMethod("POST")),
    };
    let event = match (endpoint, response.is_ok()) {
        (Endpoint::Callback, true) => Some("login"),
        (Endpoint::Callback, false) => Some("login_failed"),
        (Endpoint::Logout, true) => Some("logout"),
        (Endpoint::Backchannel, true) => Some("backchannel_logout"),
        (Endpoint::Backchannel, false) => Some("backchannel_refused"),
        _ => None,
    };
    if let Some(event) = event {
        snapshot.metrics.session_event(event);
    }
    Ok(response?)
}

/// A logout POST another site made the browser send (the session cookie is ambient): the
/// same rules as a route's default `csrf = "origin"`.
fn logout_forged(
    parts: &http::request::Parts,
    conn: &ConnInfo,
    snapshot: &Snapshot,
    host: &Option<HeaderValue>,
) -> bool {
    let trusted = snapshot.is_trusted(conn.peer.ip());
    let own = request_origin(conn.tls, trusted, &parts.headers, host.as_ref());
    csrf::check(
        &csrf::CsrfPolicy::default(),
        &parts.method,
        &parts.headers,
        own.as_ref(),
        &snapshot.server.trusted_origins,
    )
    .refused()
}

/// 414 / 431 before any other work. hyper enforces larger hard caps itself (see
/// `server::connection_builder`); these are the configured, JSON-answered ones.
fn check_limits(
    parts: &http::request::Parts,
    settings: &crate::snapshot::ServerSettings,
) -> Result<(), ProxyError> {
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

fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// The decision in one word, for the log.
fn decision(status: u16, outcome: &str) -> &'static str {
    match outcome {
        "allowed" => "allow",
        "public" => "public",
        _ if status < 400 => "allow",
        _ => "deny",
    }
}

/// Canonicalises the target and finds its route: (route index, path to forward, host as
/// received). Every other reading of the path a backend could make must land on a route
/// of the same policy (I9). Borrows of the request end here, before its headers are
/// rewritten.
fn resolve(
    parts: &http::request::Parts,
    snapshot: &Snapshot,
) -> Result<(usize, PathAndQuery, Option<HeaderValue>), ProxyError> {
    let (host, host_value) = request_host(parts)?;
    let (index, path) = readings::route_target(
        &snapshot.routes,
        &host,
        parts.uri.path(),
        &parts.method,
        |route| snapshot.upstreams[route.upstream].path_semantics,
    )?;
    let unchanged = matches!(path, Cow::Borrowed(_));
    let path_and_query = forwarded_path_and_query(&parts.uri, &path, unchanged)?;
    Ok((index, path_and_query, host_value))
}

/// The host the client addressed, canonical for matching and as received for forwarding.
/// `Host` and the URI authority (absolute-form, HTTP/2 `:authority`) must agree.
fn request_host(
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

#[cfg(test)]
mod tests {
    use super::keep_out_of_shared_caches;
    use http::HeaderMap;
    use http::header::CACHE_CONTROL;

    #[test]
    fn a_response_with_a_session_cookie_is_private() {
        for (sent, expected) in [
            (vec![], "private"),
            (vec!["public, max-age=3600"], "private, max-age=3600"),
            (vec!["max-age=60", "s-maxage=600"], "private, max-age=60"),
            (vec!["no-store"], "no-store"),
            (vec!["Private, max-age=5"], "Private, max-age=5"),
            (vec!["no-cache"], "private, no-cache"),
        ] {
            let mut headers = HeaderMap::new();
            for value in &sent {
                headers.append(CACHE_CONTROL, value.parse().unwrap());
            }
            keep_out_of_shared_caches(&mut headers);
            let got: Vec<_> = headers.get_all(CACHE_CONTROL).iter().collect();
            assert_eq!(got, [expected], "{sent:?}");
        }
    }
}
