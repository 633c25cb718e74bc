//! The request handler: one flat list of steps from a client request to a response.
//!
//! ```text
//! snapshot ─► decide (limits, route, readings, authenticate, csrf) ─► rewrite headers
//!          ─► forward ─► log
//! ```
//! The decision is `decide.rs`'s, the same one `explain` and `[[tests]]` report. Every
//! failure is a [`ProxyError`], turned into a response by the one mapping in `error.rs`.
//! The snapshot is loaded once, so a request sees one config from start to end.

use std::borrow::Cow;
use std::convert::Infallible;
use std::time::Instant;

use bytes::Bytes;
use http::header::{HeaderValue, SET_COOKIE};
use http::{Method, Request, Response};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::auth;
use crate::canonical::canonical_host;
use crate::csrf;
use crate::decide::{self, Decision, Facts, Trace, request_host};
use crate::error;
pub use crate::error::ProxyError;
use crate::identity::ClientInfo;
use crate::outcome::Outcome;
use crate::session;
use crate::snapshot::{SharedSnapshot, Snapshot};
pub use crate::upstream::ResponseBody;
use crate::upstream::{self, body};

/// What a request handler knows about its connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: std::net::SocketAddr,
    pub tls: bool,
    /// The peer address as a header value, formatted once per connection.
    pub peer_header: http::HeaderValue,
    /// The identity of the client certificate verified in the TLS handshake.
    pub client_cert: Option<std::sync::Arc<crate::auth::claims::Claims>>,
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
        let mut trace = Trace {
            timed: started.is_some(),
            ..Trace::default()
        };
        let mut upstream_started = None;
        let request_id = snapshot
            .server
            .request_id
            .as_ref()
            .map(|name| (name, request_id(&mut parts.headers, name, &conn, &snapshot)));

        let processed = process(
            &mut parts,
            body,
            &conn,
            &snapshot,
            &mut trace,
            &mut upstream_started,
        );
        let mut response = match processed.await {
            Ok(response) => response,
            Err(error) => {
                // A failure after the decision (the upstream, the body) keeps the decision's
                // outcome; a request that failed before one gets the failure's.
                if trace.outcome == Outcome::Other {
                    trace.outcome = error.outcome();
                }
                match error.rendering().blame {
                    error::Blame::Upstream => tracing::warn!(%error, "upstream error"),
                    error::Blame::Client => tracing::debug!(%error, "request refused"),
                }
                error.into_response().map(Either::Right)
            }
        };
        if let Some((name, id)) = &request_id {
            response.headers_mut().insert(*name, id.clone());
        }
        let status = response.status().as_u16();
        let route = trace.route.map(|i| &snapshot.routes.routes()[i]);
        snapshot.metrics.record(
            route.map_or(&snapshot.unrouted, |r| &r.metrics),
            &method,
            status,
            trace.outcome,
        );
        if let Some(raw_path) = raw_path {
            // The decision log: one line per request, never a credential.
            let path = trace.path.as_ref().map_or(raw_path.as_str(), |p| p.path());
            let upstream_us =
                upstream_started.map_or(0, |t: Instant| t.elapsed().as_micros() as u64);
            tracing::info!(
                target: "portcullis::access",
                method = %method,
                path,
                route = route.map_or("-", |r| &*r.name),
                status,
                decision = trace.outcome.decision(status),
                reason = trace.outcome.as_label(),
                provider = trace.provider.map_or("-", |p| snapshot.provider_name(p)),
                sub = trace.subject.as_ref().and_then(|c| c.subject()).unwrap_or("-"),
                peer = %conn.peer.ip(),
                auth_us = trace.auth_us,
                upstream_us,
                latency_us = started.map_or(0, |t| t.elapsed().as_micros() as u64),
                request_id = request_id
                    .as_ref()
                    .and_then(|(_, id)| id.to_str().ok())
                    .unwrap_or("-"),
            );
        }
        Ok(response)
    }
}

/// The request's id in field `name` (`server.request_id`): a trusted proxy's, when it
/// sent one that is short printable text, else a new UUID v4. Set on the request (so the
/// upstream gets it, and a client's own is replaced) and returned for the answer.
fn request_id(
    headers: &mut http::HeaderMap,
    name: &http::HeaderName,
    conn: &ConnInfo,
    snapshot: &Snapshot,
) -> HeaderValue {
    let kept = snapshot.is_trusted(conn.peer.ip()).then(|| {
        let mut values = headers.get_all(name).iter();
        match (values.next(), values.next()) {
            (Some(value), None)
                if !value.is_empty()
                    && value.len() <= 200
                    && value.as_bytes().iter().all(|b| b.is_ascii_graphic()) =>
            {
                Some(value.clone())
            }
            _ => None,
        }
    });
    let id = kept.flatten().unwrap_or_else(|| {
        let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let text = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut text);
        HeaderValue::from_str(text).expect("a UUID is a field value")
    });
    headers.insert(name.clone(), id.clone());
    id
}

/// Borrows the request's parts (see [`handle`]).
async fn process(
    parts: &mut http::request::Parts,
    body: Incoming,
    conn: &ConnInfo,
    snapshot: &Snapshot,
    trace: &mut Trace,
    upstream_started: &mut Option<Instant>,
) -> Result<Response<ResponseBody>, ProxyError> {
    // 1-3. The decision: the same one explain and [[tests]] report.
    if let Some(assertion) = snapshot.identity.assertion()
        && parts.uri.path() == crate::assertion::JWKS_PATH
    {
        // The gateway's own endpoint, before the routes: the keys apps verify with.
        trace.outcome = Outcome::GatewayEndpoint;
        return Ok(assertion.jwks_response(&parts.method).map(Either::Right));
    }
    let trusted = snapshot.is_trusted(conn.peer.ip());
    if crate::forward_auth::is_endpoint(snapshot, parts) {
        // A front proxy asks about a request it holds: the same decision, answered
        // instead of forwarded. Boxed: rare on a gateway that proxies.
        let answer = Box::pin(crate::forward_auth::answer(
            snapshot,
            parts,
            conn.peer.ip(),
            trace,
        ));
        return Ok(answer.await.map(Either::Right));
    }
    let facts = Facts {
        tls: decide::client_tls(conn.tls, trusted, &parts.headers),
        trusted,
        now: None,
        assumed: None,
        client_cert: conn.client_cert.clone(),
        peer: Some(conn.peer.ip()),
    };
    // What the answer's rewrite needs of the facts, kept instead of them.
    let connection = (facts.tls, facts.trusted);
    // Taken apart in the pattern: the decision is large, and a binding of it is a copy.
    let (index, path_and_query, host_value, mut permit) =
        match decide::decide(snapshot, parts, &facts, trace).await? {
            Decision::Forward(decide::Forward {
                route,
                path_and_query,
                host_value,
                permit,
            }) => (route, path_and_query, host_value, permit),
            Decision::Endpoint(endpoint) => {
                // decide names an endpoint only when there is a [login]; without one, fail closed.
                let Some(login) = &snapshot.login else {
                    return Err(ProxyError::NoRoute);
                };
                // Boxed, like the login redirect below: rare, and large futures that would
                // otherwise make every request's future larger.
                return Box::pin(login_endpoint(endpoint, login, parts, body, conn, snapshot))
                    .await
                    .map(|response| response.map(Either::Right));
            }
            Decision::LogIn {
                return_to,
                host_value,
            } => {
                let Some(login) = &snapshot.login else {
                    return Err(ProxyError::NoRoute);
                };
                let host = host_value
                    .as_ref()
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or("");
                let routed_host = canonical_host(host).unwrap_or(Cow::Borrowed(""));
                let info = session::RequestInfo {
                    host: &routed_host,
                    authority: host,
                    tls: facts.tls,
                    query: None,
                };
                let now = auth::unix_now();
                let response = Box::pin(login.start(&info, return_to.as_str(), now)).await?;
                return Ok(response.map(Either::Right));
            }
        };
    let route = &snapshot.routes.routes()[index];
    // A WebSocket handshake on a route that allows it: the limits of the connection it
    // becomes (the credential's expiry is read now, before the permit goes).
    let websocket = route
        .websocket
        .filter(|_| upstream::upgrade::is_websocket_request(parts))
        .map(|ws| upstream::upgrade::Limits {
            idle: ws.idle_timeout,
            lifetime: ws.max_lifetime,
            expires_at: ws.close_on_expiry.then(|| permit.expires_at()).flatten(),
        });

    // 4-5. Strip, then inject (I2, I3, I10), and forward, the answer streamed back, the
    // body bounded by the route's limit. In one block: the upstream head is written before
    // the future is made, so what the rewrite borrows (and the permit) is not kept in it.
    let set_cookie = permit.take_set_cookie();
    let forwarding = {
        let permit = permit;
        let client = ClientInfo {
            peer: conn.peer_header.clone(),
            tls: conn.tls,
            host: host_value.as_ref(),
            trusted,
        };
        let mut added = decide::rewrite(
            snapshot,
            index,
            &permit,
            &path_and_query,
            host_value.as_ref(),
            parts,
            &client,
        );
        let target = decide::upstream_target(snapshot, index, path_and_query);
        if snapshot.identity.assertion().is_some() {
            let upstream = &snapshot.upstreams[route.upstream];
            added.assert(
                &upstream.name,
                &parts.method,
                target.as_str(),
                auth::unix_now(),
            );
        }
        if websocket.is_some() {
            // The client's `Upgrade` and `Connection` were removed with the other hop-by-hop
            // fields; the gateway asks the app for the one upgrade the route allows.
            parts
                .headers
                .insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
            parts.headers.insert(
                http::header::CONNECTION,
                HeaderValue::from_static("upgrade"),
            );
        }
        let limit = route.max_body_size.or(snapshot.server.max_body_size);
        if let Some(limit) = limit
            && declared_length(&parts.headers).is_some_and(|len| len > limit)
        {
            return Err(ProxyError::PayloadTooLarge);
        }
        let body = body::RequestBody::new(body, limit, snapshot.server.request_body_timeout);
        *upstream_started = trace.timed.then(Instant::now);
        upstream::forward(
            &snapshot.upstreams[route.upstream],
            &permit,
            parts,
            &added,
            target,
            body,
        )
    };
    let mut response = forwarding.await?;
    // Only answers that carry a field to rewrite pay for it. The request's headers were
    // rewritten by now, but what the client's origin is read from is not: a trusted
    // proxy's forwarding fields stay first, and `Host` is `host_value`.
    if upstream::mapping::has_rewritable(response.headers())
        && let Some((origin, prefix, mount)) = decide::answer_rewrite(
            snapshot,
            index,
            connection,
            &parts.headers,
            host_value.as_ref(),
        )
    {
        let public = upstream::mapping::Public {
            origin: &origin,
            prefix,
            mount,
        };
        upstream::mapping::rewrite_answer(
            &snapshot.upstreams[route.upstream].mapping,
            &public,
            response.headers_mut(),
        );
    }
    if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
        // `h1` accepts a 101 only to the websocket handshake sent above.
        let (Some(limits), Some(handoff)) = (
            websocket,
            response.extensions().get::<upstream::upgrade::Handoff>(),
        ) else {
            return Err(ProxyError::UpstreamFailed("an unexpected 101".into()));
        };
        handoff.set_limits(limits);
        let headers = response.headers_mut();
        headers.insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(
            http::header::CONNECTION,
            HeaderValue::from_static("upgrade"),
        );
    }
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
    let trusted = snapshot.is_trusted(conn.peer.ip());
    let info = session::RequestInfo {
        host: &host,
        authority,
        tls: decide::client_tls(conn.tls, trusted, &parts.headers),
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
        Endpoint::Logout if get || post => {
            login
                .logout(&info, &parts.headers, snapshot.denylist.as_deref(), now)
                .await
        }
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
            login
                .backchannel(
                    &form,
                    &snapshot.providers,
                    snapshot.denylist.as_deref(),
                    now,
                )
                .await
        }
        Endpoint::Backchannel => Err(LoginError::WrongMethod("POST")),
    };
    let event = match (endpoint, response.is_ok()) {
        (Endpoint::Callback, true) => Some("login"),
        (Endpoint::Callback, false) => Some("login_failed"),
        (Endpoint::Logout, true) => Some("logout"),
        (Endpoint::Backchannel, true) => Some("backchannel_logout"),
        (Endpoint::Backchannel, false) => Some("backchannel_refused"),
        (Endpoint::Login, _) | (Endpoint::Logout, false) => None,
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
    let facts = Facts {
        tls: decide::client_tls(conn.tls, trusted, &parts.headers),
        trusted,
        now: None,
        assumed: None,
        client_cert: None,
        peer: None,
    };
    let own = decide::request_origin(&facts, &parts.headers, host.as_ref());
    csrf::check(
        &csrf::CsrfPolicy::default(),
        &parts.method,
        &parts.headers,
        own.as_ref(),
        &snapshot.server.trusted_origins,
    )
    .refused()
}

fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
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
