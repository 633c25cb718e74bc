//! Forward-auth: the gateway decides, a front proxy forwards. nginx `auth_request`,
//! ingress-nginx `auth-url`, Traefik `ForwardAuth` and Caddy `forward_auth` send a request
//! to `[forward_auth] path` that describes the one they hold; the answer says whether it
//! may go on, and with which identity headers.
//!
//! - **Who may ask.** Only a peer in `server.trusted_proxies`: the description is taken on
//!   its word (a client that could reach the endpoint directly would describe any request
//!   it likes). Anyone else gets 403 `forward_auth_untrusted`, and a warning.
//! - **The description.** `X-Forwarded-Method`, `X-Forwarded-Proto`, `X-Forwarded-Host`,
//!   `X-Forwarded-Uri` (Traefik, Caddy), or `X-Original-Method` and `X-Original-URL` (a
//!   full URL; nginx, ingress-nginx), or, without either, the endpoint's path followed by
//!   the original target, with the original method, `Host` and `X-Forwarded-Proto`
//!   (Envoy `ext_authz` with `path_prefix`). The other fields (cookies, `Authorization`)
//!   are the original request's. One value each; a described request that is not one is
//!   400.
//! - **The decision** is [`decide::decide`], the proxy's own: the same canonicalisation,
//!   reading agreement, routes, credentials, CSRF check.
//! - **The answer.** 200 with the configured identity headers (and a renewed session's
//!   `Set-Cookie`) for the front proxy to copy onto the request; the decision's error
//!   otherwise (401 with `WWW-Authenticate`, 403, ...). A browser without a session on a
//!   session route is sent to `/_portcullis/login?rd=<the original path>`: a 302 for
//!   Traefik and Caddy, which pass the answer through; for nginx (which only passes 401 and
//!   403 on) a 401 with that `Location`, which the documented `error_page` turns into the
//!   redirect. nginx turns any other status into a 500, so in its dialect every refusal
//!   is a 401 or a 403.

use http::header::{CONTENT_TYPE, HOST, HeaderName, HeaderValue, LOCATION, SET_COOKIE};
use http::uri::PathAndQuery;
use http::{Method, Response, StatusCode, Uri};

use crate::decide::{self, Decision, Facts, Trace};
use crate::error::ProxyError;
use crate::outcome::Outcome;
use crate::snapshot::Snapshot;

/// Which front proxy's headers described the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// `X-Forwarded-*`: Traefik, Caddy. Any status is passed to the client.
    Forwarded,
    /// `X-Original-*`: nginx `auth_request`, ingress-nginx. Only 2xx, 401 and 403 mean
    /// something; anything else is a 500 there.
    Original,
    /// The endpoint's path followed by the original path, with the original method and
    /// `Host`: Envoy's `ext_authz` HTTP service (`path_prefix`). Any status is passed on.
    Prefixed,
}

static X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
static X_ORIGINAL_METHOD: HeaderName = HeaderName::from_static("x-original-method");
static X_ORIGINAL_URL: HeaderName = HeaderName::from_static("x-original-url");

/// The request a front proxy asks about, rebuilt from `parts` (the auth request): its
/// method, target and `Host` from the describing fields, the other fields as they came.
/// Returns it, whether it came over TLS, and the dialect.
pub fn described(
    parts: &http::request::Parts,
    endpoint: &str,
) -> Result<(http::request::Parts, bool, Dialect), ProxyError> {
    let headers = &parts.headers;
    let one = |name: &HeaderName| -> Result<Option<&str>, ProxyError> {
        let mut values = headers.get_all(name).iter();
        let Some(value) = values.next() else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err(ProxyError::ForwardAuthMalformed(
                "a describing field appears twice",
            ));
        }
        value
            .to_str()
            .map(Some)
            .map_err(|_| ProxyError::ForwardAuthMalformed("a describing field is not text"))
    };
    let (dialect, method, tls, host, target) = if let Some(url) = one(&X_ORIGINAL_URL)? {
        let uri: Uri = url.parse().map_err(|_| {
            ProxyError::ForwardAuthMalformed("X-Original-URL is not an absolute URL")
        })?;
        let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
            return Err(ProxyError::ForwardAuthMalformed(
                "X-Original-URL is not an absolute URL",
            ));
        };
        let tls = scheme_is_tls(scheme)?;
        let target = uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let method = one(&X_ORIGINAL_METHOD)?.unwrap_or("GET");
        (
            Dialect::Original,
            method,
            tls,
            authority.as_str().to_owned(),
            target,
        )
    } else if let Some(uri) = one(&X_FORWARDED_URI)? {
        let target = PathAndQuery::try_from(uri)
            .ok()
            .filter(|t| t.as_str().starts_with('/'))
            .ok_or(ProxyError::ForwardAuthMalformed(
                "X-Forwarded-Uri is not a path",
            ))?;
        let tls = match one(&X_FORWARDED_PROTO)? {
            Some(proto) => scheme_is_tls(proto)?,
            None => false,
        };
        // Caddy keeps the original Host; Traefik names it in X-Forwarded-Host.
        let host = match one(&X_FORWARDED_HOST)? {
            Some(host) => host.to_owned(),
            None => one(&HOST)?
                .ok_or(ProxyError::ForwardAuthMalformed("no X-Forwarded-Host"))?
                .to_owned(),
        };
        let method = one(&X_FORWARDED_METHOD)?.unwrap_or("GET");
        (Dialect::Forwarded, method, tls, host, target)
    } else if let Some(rest) = parts.uri.path().strip_prefix(endpoint)
        && rest.starts_with('/')
    {
        let text = match parts.uri.query() {
            Some(query) => format!("{rest}?{query}"),
            None => rest.to_owned(),
        };
        let target = PathAndQuery::try_from(text)
            .map_err(|_| ProxyError::ForwardAuthMalformed("the prefixed path is not a path"))?;
        let tls = match one(&X_FORWARDED_PROTO)? {
            Some(proto) => scheme_is_tls(proto)?,
            None => false,
        };
        let host = one(&HOST)?
            .ok_or(ProxyError::ForwardAuthMalformed("no Host"))?
            .to_owned();
        (Dialect::Prefixed, parts.method.as_str(), tls, host, target)
    } else {
        return Err(ProxyError::ForwardAuthMalformed(
            "neither X-Forwarded-Uri nor X-Original-URL, nor a path after the endpoint's",
        ));
    };
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| ProxyError::ForwardAuthMalformed("the method is not a token"))?;
    let host = HeaderValue::from_str(&host)
        .map_err(|_| ProxyError::ForwardAuthMalformed("the host is not a field value"))?;
    let mut request = http::Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = Uri::from(target);
    let fields = request.headers_mut();
    for (name, value) in headers {
        if !describes(name) {
            fields.append(name.clone(), value.clone());
        }
    }
    fields.insert(HOST, host);
    let (rebuilt, ()) = request.into_parts();
    Ok((rebuilt, tls, dialect))
}

fn scheme_is_tls(scheme: &str) -> Result<bool, ProxyError> {
    if scheme.eq_ignore_ascii_case("https") {
        Ok(true)
    } else if scheme.eq_ignore_ascii_case("http") {
        Ok(false)
    } else {
        Err(ProxyError::ForwardAuthMalformed(
            "the scheme is neither http nor https",
        ))
    }
}

/// The fields that describe the request (and the auth request's own forwarding fields):
/// not part of the request that is decided.
fn describes(name: &HeaderName) -> bool {
    [
        &X_FORWARDED_METHOD,
        &X_FORWARDED_PROTO,
        &X_FORWARDED_HOST,
        &X_FORWARDED_URI,
        &X_ORIGINAL_METHOD,
        &X_ORIGINAL_URL,
    ]
    .contains(&name)
        || name == HOST
        || name == http::header::CONTENT_LENGTH
        || name.as_str() == "x-forwarded-for"
        || name.as_str() == "x-real-ip"
        || name.as_str() == "forwarded"
}

/// Answers the forward-auth request in `parts` from a peer that `trusted` or not.
pub async fn answer(
    snapshot: &Snapshot,
    parts: &http::request::Parts,
    peer: std::net::IpAddr,
    trace: &mut Trace,
) -> Response<http_body_util::Full<bytes::Bytes>> {
    if !snapshot.is_trusted(peer) {
        trace.outcome = Outcome::ForwardAuthRefused;
        tracing::warn!("forward-auth request from a peer not in server.trusted_proxies; refused");
        return ProxyError::ForwardAuthUntrusted.into_response();
    }
    let endpoint = snapshot.forward_auth.as_deref().unwrap_or_default();
    let (request, tls, dialect) = match described(parts, endpoint) {
        Ok(described) => described,
        Err(error) => {
            trace.outcome = error.outcome();
            tracing::debug!(%error, "forward-auth request refused");
            return error.into_response();
        }
    };
    let facts = Facts {
        tls,
        // The rebuilt request holds no forwarding fields: its scheme is `tls`, its host
        // the described one.
        trusted: false,
        now: None,
        assumed: None,
        // The front proxy's connection is not the client's: no client certificate.
        client_cert: None,
        // Counted as the client the front proxy (trusted, checked above) names.
        peer: Some(crate::ratelimit::client_address(
            peer,
            true,
            &parts.headers,
            |a| snapshot.is_trusted(a),
        )),
    };
    let decision = decide::decide(snapshot, &request, &facts, trace).await;
    let mut response = match decision {
        Ok(Decision::Forward(mut forward)) => {
            let mut response = Response::new(http_body_util::Full::default());
            let headers = response.headers_mut();
            if let Some(identity) = forward.permit.identity() {
                snapshot.identity.for_each_field(identity, |name, value| {
                    headers.append(name.clone(), value.clone());
                });
                // A session's tokens, where the route forwards them.
                let route = &snapshot.routes.routes()[forward.route];
                if let Some(tokens) = &identity.tokens {
                    let wanted = &route.session_tokens;
                    for (name, value) in
                        [(&wanted.access, &tokens.access), (&wanted.id, &tokens.id)]
                    {
                        if let (Some(name), Some(value)) = (name, value) {
                            headers.append(name.clone(), value.clone());
                        }
                    }
                }
                if let Some(assertion) = snapshot.identity.assertion() {
                    // Bound to the described request: the front proxy forwards it to the
                    // app as it is (the route's upstream only names the audience).
                    let audience = &snapshot.upstreams[route.upstream].name;
                    if let Some(value) = assertion.assert(
                        &identity.claims,
                        audience,
                        &request.method,
                        forward.path_and_query.as_str(),
                        crate::auth::unix_now(),
                    ) {
                        headers.append(assertion.header().clone(), value);
                    }
                }
            }
            if let Some(cookie) = forward.permit.take_set_cookie() {
                headers.append(SET_COOKIE, cookie);
            }
            return response;
        }
        Ok(Decision::LogIn { return_to, .. }) => {
            let host = request.headers.get(HOST).and_then(|h| h.to_str().ok());
            let location = login_location(tls, host.unwrap_or(""), return_to.as_str());
            let status = match dialect {
                Dialect::Forwarded | Dialect::Prefixed => StatusCode::FOUND,
                Dialect::Original => StatusCode::UNAUTHORIZED,
            };
            let mut response =
                Response::new(http_body_util::Full::new(bytes::Bytes::from(format!(
                    r#"{{"error":"login_required","status":{}}}"#,
                    status.as_u16()
                ))));
            *response.status_mut() = status;
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            if let Ok(location) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(LOCATION, location);
            }
            return response;
        }
        Ok(Decision::Endpoint(_)) => {
            // The login endpoints are the gateway's to serve: a front proxy that asks
            // about them has them behind forward-auth, where a browser could never log in.
            tracing::warn!(
                "forward-auth asked about a /_portcullis/ endpoint; route that prefix to the gateway itself, without forward-auth"
            );
            trace.outcome = Outcome::ForwardAuthRefused;
            ProxyError::ForwardAuthMalformed("a /_portcullis/ endpoint").into_response()
        }
        Err(error) => error.into_response(),
    };
    if dialect == Dialect::Original
        && !matches!(
            response.status(),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
        )
    {
        // nginx makes a 500 of anything but 401 and 403: a refusal stays a refusal.
        *response.status_mut() = StatusCode::FORBIDDEN;
    }
    response
}

/// `/_portcullis/login?rd=<return_to>` on the origin the browser is on (the front proxy
/// routes `/_portcullis/` to the gateway). Absolute: Traefik resolves a relative
/// `Location` against the address it asked, which is the gateway's.
fn login_location(tls: bool, host: &str, return_to: &str) -> String {
    let scheme = if tls { "https" } else { "http" };
    let rd = url_escape(return_to);
    format!("{scheme}://{host}{}?rd={rd}", crate::session::LOGIN_PATH)
}

fn url_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Whether a request is for the forward-auth endpoint: `[forward_auth] path`, or a path
/// under it (Envoy's `path_prefix`).
pub fn is_endpoint(snapshot: &Snapshot, parts: &http::request::Parts) -> bool {
    snapshot.forward_auth.as_deref().is_some_and(|path| {
        parts
            .uri
            .path()
            .strip_prefix(path)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENDPOINT: &str = "/_portcullis/auth";

    fn parts(fields: &[(&str, &str)]) -> http::request::Parts {
        let mut request = http::Request::get(ENDPOINT);
        for (name, value) in fields {
            request = request.header(*name, *value);
        }
        request.body(()).unwrap().into_parts().0
    }

    #[test]
    fn traefik_and_nginx_describe_the_same_request() {
        let (traefik, tls, dialect) = described(
            &parts(&[
                ("host", "gateway:9000"),
                ("x-forwarded-method", "POST"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "app.example"),
                ("x-forwarded-uri", "/admin/users?x=1"),
                ("x-forwarded-for", "10.0.0.1"),
                ("cookie", "a=b"),
            ]),
            ENDPOINT,
        )
        .unwrap();
        assert_eq!(dialect, Dialect::Forwarded);
        assert!(tls);
        assert_eq!(traefik.method, Method::POST);
        assert_eq!(traefik.uri, "/admin/users?x=1");
        assert_eq!(traefik.headers["host"], "app.example");
        assert_eq!(traefik.headers["cookie"], "a=b");
        assert!(!traefik.headers.contains_key("x-forwarded-uri"));
        assert!(!traefik.headers.contains_key("x-forwarded-for"));

        let (nginx, tls, dialect) = described(
            &parts(&[
                ("host", "gateway:9000"),
                ("x-original-method", "POST"),
                ("x-original-url", "https://app.example/admin/users?x=1"),
                ("cookie", "a=b"),
            ]),
            ENDPOINT,
        )
        .unwrap();
        assert_eq!(dialect, Dialect::Original);
        assert!(tls);
        assert_eq!(nginx.method, traefik.method);
        assert_eq!(nginx.uri, traefik.uri);
        assert_eq!(nginx.headers, traefik.headers);

        let mut request = http::Request::post("/_portcullis/auth/admin/users?x=1")
            .header("host", "app.example")
            .header("x-forwarded-proto", "https")
            .header("content-length", "0")
            .header("cookie", "a=b");
        request = request.header("x-forwarded-for", "10.0.0.1");
        let (prefixed, _) = request.body(()).unwrap().into_parts();
        let (envoy, tls, dialect) = described(&prefixed, ENDPOINT).unwrap();
        assert_eq!(dialect, Dialect::Prefixed);
        assert!(tls);
        assert_eq!(envoy.method, traefik.method);
        assert_eq!(envoy.uri, traefik.uri);
        assert_eq!(envoy.headers, traefik.headers);
    }

    #[test]
    fn a_description_that_is_not_one_request_is_refused() {
        for fields in [
            &[][..],
            &[("x-forwarded-uri", "admin")],
            &[
                ("x-forwarded-uri", "/a"),
                ("x-forwarded-proto", "ftp"),
                ("x-forwarded-host", "h"),
            ],
            &[
                ("x-forwarded-uri", "/a"),
                ("x-forwarded-uri", "/b"),
                ("x-forwarded-host", "h"),
            ],
            &[
                ("x-forwarded-uri", "/a"),
                ("x-forwarded-method", "GE T"),
                ("x-forwarded-host", "h"),
            ],
            &[("x-original-url", "/relative")],
            &[
                ("x-original-url", "https://h/a"),
                ("x-original-method", "GET"),
                ("x-original-method", "POST"),
            ],
        ] {
            let outcome = described(&parts(fields), ENDPOINT);
            assert!(
                matches!(outcome, Err(ProxyError::ForwardAuthMalformed(_))),
                "{fields:?}"
            );
        }
    }

    #[test]
    fn the_login_location_carries_the_original_path() {
        assert_eq!(
            login_location(true, "app.example:8443", "/crm/a b?x=1&y=2"),
            "https://app.example:8443/_portcullis/login?rd=/crm/a%20b%3Fx%3D1%26y%3D2"
        );
    }
}
