//! THE mapping from every way a request can fail to the status and body the client gets.
//!
//! One exhaustive `match` with no wildcard: adding an error variant does not compile until
//! it has a status, and each mapping is pinned by a test below. Bodies are a fixed JSON
//! shape, `{"error": "...", "status": N}`, that never echoes request data (I7).

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use http::{Response, StatusCode};
use http_body_util::Full;

use crate::auth::AuthError;
use crate::auth::credential::CredentialError;
use crate::canonical::TargetError;
use crate::outcome::Outcome;
use crate::session::LoginError;

/// Everything that can stop a request before or while forwarding.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("bad request target: {0}")]
    BadTarget(#[from] TargetError),
    #[error("no route matches")]
    NoRoute,
    #[error("a backend could read the path as another route's (reading agreement)")]
    AmbiguousPath,
    #[error("a cookie-authenticated request came from another site (CSRF)")]
    CsrfRejected,
    #[error("request target longer than the limit")]
    UriTooLong,
    #[error("request headers larger than the limit")]
    HeadersTooLarge,
    #[error("request body larger than the route's limit")]
    PayloadTooLarge,
    #[error("the client stopped sending its request body")]
    RequestBodyStalled,
    #[error("denied: {0}")]
    Denied(#[from] AuthError),
    #[error("upstream unreachable: {0}")]
    UpstreamUnavailable(String),
    #[error("upstream timed out")]
    UpstreamTimeout,
    #[error("upstream TLS failed: {0}")]
    UpstreamTls(String),
    #[error("upstream failed: {0}")]
    UpstreamFailed(String),
    #[error("login: {0}")]
    Login(#[from] LoginError),
    /// Over the route's `rate_limit`.
    #[error("rate limit: retry in {:?}", .0.retry_after)]
    RateLimited(crate::ratelimit::Limited),
    /// A forward-auth request from a peer that is not a trusted proxy.
    #[error("forward-auth request from a peer not in server.trusted_proxies")]
    ForwardAuthUntrusted,
    /// A forward-auth request that does not describe one request.
    #[error("forward-auth request refused: {0}")]
    ForwardAuthMalformed(&'static str),
}

/// Where the fault lies: picks the log level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    Client,
    Upstream,
}

static CHALLENGE: HeaderValue = HeaderValue::from_static(r#"Bearer realm="portcullis""#);
static CHALLENGE_INVALID_TOKEN: HeaderValue =
    HeaderValue::from_static(r#"Bearer realm="portcullis", error="invalid_token""#);
static CHALLENGE_INVALID_REQUEST: HeaderValue =
    HeaderValue::from_static(r#"Bearer realm="portcullis", error="invalid_request""#);
static CHALLENGE_INSUFFICIENT_SCOPE: HeaderValue =
    HeaderValue::from_static(r#"Bearer realm="portcullis", error="insufficient_scope""#);
static JSON: HeaderValue = HeaderValue::from_static("application/json");

/// How one error looks on the wire.
#[derive(Debug, PartialEq, Eq)]
pub struct Rendering {
    pub status: StatusCode,
    /// The `error` field of the body.
    pub code: &'static str,
    pub challenge: Option<&'static HeaderValue>,
    pub blame: Blame,
}

impl From<crate::readings::Refusal> for ProxyError {
    fn from(refusal: crate::readings::Refusal) -> Self {
        use crate::readings::Refusal;
        match refusal {
            Refusal::Target(e) => ProxyError::BadTarget(e),
            Refusal::NoRoute => ProxyError::NoRoute,
            Refusal::Ambiguous => ProxyError::AmbiguousPath,
        }
    }
}

impl ProxyError {
    pub fn rendering(&self) -> Rendering {
        use AuthError as A;
        let (status, code, challenge, blame) = match self {
            ProxyError::BadTarget(_) => {
                (StatusCode::BAD_REQUEST, "bad_request", None, Blame::Client)
            }
            ProxyError::NoRoute => (StatusCode::NOT_FOUND, "not_found", None, Blame::Client),
            ProxyError::AmbiguousPath => (
                StatusCode::BAD_REQUEST,
                "ambiguous_path",
                None,
                Blame::Client,
            ),
            ProxyError::CsrfRejected => {
                (StatusCode::FORBIDDEN, "csrf_rejected", None, Blame::Client)
            }
            ProxyError::RateLimited(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                None,
                Blame::Client,
            ),
            ProxyError::UriTooLong => (
                StatusCode::URI_TOO_LONG,
                "uri_too_long",
                None,
                Blame::Client,
            ),
            ProxyError::HeadersTooLarge => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
                None,
                Blame::Client,
            ),
            ProxyError::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                None,
                Blame::Client,
            ),
            ProxyError::RequestBodyStalled => (
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                None,
                Blame::Client,
            ),
            ProxyError::Denied(A::MissingCredential) => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                Some(&CHALLENGE),
                Blame::Client,
            ),
            ProxyError::Denied(A::BadCredential(CredentialError::Ambiguous)) => (
                StatusCode::BAD_REQUEST,
                "ambiguous_credential",
                Some(&CHALLENGE_INVALID_REQUEST),
                Blame::Client,
            ),
            ProxyError::Denied(A::BadCredential(CredentialError::MalformedAuthorization)) => (
                StatusCode::BAD_REQUEST,
                "invalid_request",
                Some(&CHALLENGE_INVALID_REQUEST),
                Blame::Client,
            ),
            ProxyError::Denied(A::BadCredential(CredentialError::MalformedBearer))
            | ProxyError::Denied(A::UnknownApiKey)
            | ProxyError::Denied(A::InactiveToken)
            | ProxyError::Denied(A::Revoked)
            | ProxyError::Denied(A::InvalidToken(_)) => (
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                Some(&CHALLENGE_INVALID_TOKEN),
                Blame::Client,
            ),
            ProxyError::Denied(A::MissingScope) | ProxyError::Denied(A::ClaimMismatch) => (
                StatusCode::FORBIDDEN,
                "insufficient_scope",
                Some(&CHALLENGE_INSUFFICIENT_SCOPE),
                Blame::Client,
            ),
            ProxyError::UpstreamUnavailable(_) | ProxyError::UpstreamFailed(_) => (
                StatusCode::BAD_GATEWAY,
                "bad_gateway",
                None,
                Blame::Upstream,
            ),
            ProxyError::UpstreamTls(_) => (
                StatusCode::BAD_GATEWAY,
                "upstream_tls",
                None,
                Blame::Upstream,
            ),
            ProxyError::UpstreamTimeout => (
                StatusCode::GATEWAY_TIMEOUT,
                "gateway_timeout",
                None,
                Blame::Upstream,
            ),
            ProxyError::Denied(A::SessionUnavailable) | ProxyError::Login(LoginError::Store(_)) => {
                (
                    StatusCode::BAD_GATEWAY,
                    "session_store_unavailable",
                    None,
                    Blame::Upstream,
                )
            }
            ProxyError::Login(LoginError::InvalidState) => (
                StatusCode::BAD_REQUEST,
                "invalid_login_state",
                None,
                Blame::Client,
            ),
            ProxyError::Login(LoginError::Refused(_))
            | ProxyError::Login(LoginError::InvalidIdToken(_)) => (
                StatusCode::UNAUTHORIZED,
                "login_failed",
                None,
                Blame::Client,
            ),
            ProxyError::Denied(A::IntrospectionUnavailable) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "idp_unavailable",
                None,
                Blame::Upstream,
            ),
            ProxyError::Login(LoginError::IdpUnavailable(_)) => (
                StatusCode::BAD_GATEWAY,
                "idp_unavailable",
                None,
                Blame::Upstream,
            ),
            ProxyError::Login(LoginError::SessionTooLarge(_)) => (
                StatusCode::BAD_GATEWAY,
                "session_too_large",
                None,
                Blame::Upstream,
            ),
            ProxyError::Login(LoginError::InvalidLogoutToken(_))
            | ProxyError::Login(LoginError::NeedsServerStore) => (
                StatusCode::BAD_REQUEST,
                "invalid_logout_token",
                None,
                Blame::Client,
            ),
            ProxyError::Login(LoginError::WrongMethod(_)) => {
                (StatusCode::BAD_REQUEST, "bad_request", None, Blame::Client)
            }
            ProxyError::Login(LoginError::Busy) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "login_busy",
                None,
                Blame::Upstream,
            ),
            ProxyError::ForwardAuthUntrusted => (
                StatusCode::FORBIDDEN,
                "forward_auth_untrusted",
                None,
                Blame::Client,
            ),
            ProxyError::ForwardAuthMalformed(_) => (
                StatusCode::BAD_REQUEST,
                "invalid_forward_auth_request",
                None,
                Blame::Client,
            ),
        };
        Rendering {
            status,
            code,
            challenge,
            blame,
        }
    }

    /// The outcome recorded in the access log and metrics (never sent to the client).
    pub fn outcome(&self) -> Outcome {
        match self {
            ProxyError::BadTarget(_) => Outcome::BadTarget,
            ProxyError::NoRoute => Outcome::NoRoute,
            ProxyError::AmbiguousPath => Outcome::AmbiguousPath,
            ProxyError::CsrfRejected => Outcome::CsrfRejected,
            ProxyError::RateLimited(_) => Outcome::RateLimited,
            ProxyError::UriTooLong => Outcome::UriTooLong,
            ProxyError::HeadersTooLarge => Outcome::HeadersTooLarge,
            ProxyError::PayloadTooLarge => Outcome::PayloadTooLarge,
            ProxyError::RequestBodyStalled => Outcome::RequestBodyStalled,
            ProxyError::Denied(e) => e.outcome(),
            ProxyError::UpstreamUnavailable(_) => Outcome::UpstreamUnavailable,
            ProxyError::UpstreamTimeout => Outcome::UpstreamTimeout,
            ProxyError::UpstreamTls(_) => Outcome::UpstreamTls,
            ProxyError::UpstreamFailed(_) => Outcome::UpstreamFailed,
            ProxyError::Login(e) => match e {
                LoginError::InvalidState => Outcome::InvalidLoginState,
                LoginError::Refused(_) => Outcome::LoginRefused,
                LoginError::InvalidIdToken(_) => Outcome::InvalidIdToken,
                LoginError::IdpUnavailable(_) => Outcome::IdpUnavailable,
                LoginError::SessionTooLarge(_) => Outcome::SessionTooLarge,
                LoginError::Store(_) => Outcome::SessionStoreUnavailable,
                LoginError::InvalidLogoutToken(_) => Outcome::InvalidLogoutToken,
                LoginError::NeedsServerStore => Outcome::BackchannelNeedsServerStore,
                LoginError::WrongMethod(_) => Outcome::WrongMethod,
                LoginError::Busy => Outcome::LoginBusy,
            },
            ProxyError::ForwardAuthUntrusted | ProxyError::ForwardAuthMalformed(_) => {
                Outcome::ForwardAuthRefused
            }
        }
    }

    pub fn into_response(&self) -> Response<Full<Bytes>> {
        let r = self.rendering();
        let body = format!(r#"{{"error":"{}","status":{}}}"#, r.code, r.status.as_u16());
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = r.status;
        response.headers_mut().insert(CONTENT_TYPE, JSON.clone());
        if let Some(challenge) = r.challenge {
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, challenge.clone());
        }
        if let ProxyError::RateLimited(limited) = self {
            rate_limit_fields(limited, response.headers_mut());
        }
        response
    }
}

/// `Retry-After` and the `RateLimit-*` fields of a 429 (the field set of
/// draft-ietf-httpapi-ratelimit-headers-06, the one most clients read; `RateLimit-Policy`
/// with the window in seconds and the burst).
fn rate_limit_fields(limited: &crate::ratelimit::Limited, headers: &mut http::HeaderMap) {
    let retry = limited.retry_after_secs();
    let spec = &limited.spec;
    let number = |n: u64| HeaderValue::from(n);
    headers.insert(http::header::RETRY_AFTER, number(retry));
    headers.insert("ratelimit-limit", number(u64::from(spec.requests)));
    headers.insert("ratelimit-remaining", number(0));
    headers.insert("ratelimit-reset", number(retry));
    if let Ok(policy) = HeaderValue::from_str(&format!(
        "{};w={};burst={}",
        spec.requests,
        spec.per.as_secs_f64(),
        spec.burst
    )) {
        headers.insert("ratelimit-policy", policy);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::jwt::JwtError;

    fn status(e: ProxyError) -> (u16, &'static str, Option<&'static str>) {
        let r = e.rendering();
        (
            r.status.as_u16(),
            r.code,
            r.challenge.map(|c| c.to_str().unwrap()),
        )
    }

    #[test]
    fn every_error_has_its_status() {
        let bearer = Some(r#"Bearer realm="portcullis""#);
        let invalid = Some(r#"Bearer realm="portcullis", error="invalid_token""#);
        let scope = Some(r#"Bearer realm="portcullis", error="insufficient_scope""#);
        assert_eq!(
            status(ProxyError::BadTarget(TargetError::EncodedSlash)),
            (400, "bad_request", None)
        );
        assert_eq!(status(ProxyError::NoRoute), (404, "not_found", None));
        let limited = crate::ratelimit::Limited {
            retry_after: std::time::Duration::from_millis(1500),
            spec: crate::ratelimit::Spec {
                requests: 10,
                per: std::time::Duration::from_secs(60),
                burst: 20,
                key: crate::ratelimit::KeyKind::Ip,
                shared: false,
            },
        };
        assert_eq!(
            status(ProxyError::RateLimited(limited)),
            (429, "rate_limited", None)
        );
        let response = ProxyError::RateLimited(limited).into_response();
        assert_eq!(response.headers()["retry-after"], "2");
        assert_eq!(response.headers()["ratelimit-policy"], "10;w=60;burst=20");
        assert_eq!(
            status(ProxyError::ForwardAuthUntrusted),
            (403, "forward_auth_untrusted", None)
        );
        assert_eq!(
            status(ProxyError::ForwardAuthMalformed("x")),
            (400, "invalid_forward_auth_request", None)
        );
        assert_eq!(status(ProxyError::UriTooLong), (414, "uri_too_long", None));
        assert_eq!(
            status(ProxyError::HeadersTooLarge),
            (431, "headers_too_large", None)
        );
        assert_eq!(
            status(ProxyError::PayloadTooLarge),
            (413, "payload_too_large", None)
        );
        assert_eq!(
            status(ProxyError::RequestBodyStalled),
            (408, "request_timeout", None)
        );
        assert_eq!(
            status(AuthError::MissingCredential.into()),
            (401, "unauthorized", bearer)
        );
        let invalid_request = Some(r#"Bearer realm="portcullis", error="invalid_request""#);
        assert_eq!(
            status(AuthError::BadCredential(CredentialError::Ambiguous).into()),
            (400, "ambiguous_credential", invalid_request)
        );
        assert_eq!(
            status(AuthError::BadCredential(CredentialError::MalformedAuthorization).into()),
            (400, "invalid_request", invalid_request)
        );
        assert_eq!(
            status(ProxyError::AmbiguousPath),
            (400, "ambiguous_path", None)
        );
        assert_eq!(
            status(AuthError::BadCredential(CredentialError::MalformedBearer).into()),
            (401, "invalid_token", invalid)
        );
        for e in [
            JwtError::Expired,
            JwtError::BadSignature,
            JwtError::UnknownKey,
            JwtError::Malformed,
        ] {
            assert_eq!(
                status(AuthError::InvalidToken(e).into()),
                (401, "invalid_token", invalid)
            );
        }
        assert_eq!(
            status(AuthError::MissingScope.into()),
            (403, "insufficient_scope", scope)
        );
        assert_eq!(
            status(AuthError::ClaimMismatch.into()),
            (403, "insufficient_scope", scope)
        );
        assert_eq!(
            status(ProxyError::UpstreamUnavailable("x".into())),
            (502, "bad_gateway", None)
        );
        assert_eq!(
            status(ProxyError::UpstreamFailed("x".into())),
            (502, "bad_gateway", None)
        );
        assert_eq!(
            status(ProxyError::UpstreamTls("x".into())),
            (502, "upstream_tls", None)
        );
        assert_eq!(
            status(ProxyError::UpstreamTimeout),
            (504, "gateway_timeout", None)
        );
        let store = || crate::session::store::StoreError("down".into());
        assert_eq!(
            status(AuthError::IntrospectionUnavailable.into()),
            (503, "idp_unavailable", None)
        );
        assert_eq!(
            status(AuthError::InactiveToken.into()),
            (401, "invalid_token", invalid)
        );
        assert_eq!(
            status(AuthError::SessionUnavailable.into()),
            (502, "session_store_unavailable", None)
        );
        for (error, expected) in [
            (
                LoginError::Store(store()),
                (502, "session_store_unavailable", None),
            ),
            (LoginError::InvalidState, (400, "invalid_login_state", None)),
            (LoginError::Refused("x".into()), (401, "login_failed", None)),
            (
                LoginError::InvalidIdToken("x".into()),
                (401, "login_failed", None),
            ),
            (
                LoginError::IdpUnavailable("x".into()),
                (502, "idp_unavailable", None),
            ),
            (
                LoginError::SessionTooLarge(5000),
                (502, "session_too_large", None),
            ),
            (
                LoginError::InvalidLogoutToken("x".into()),
                (400, "invalid_logout_token", None),
            ),
            (
                LoginError::NeedsServerStore,
                (400, "invalid_logout_token", None),
            ),
            (LoginError::WrongMethod("POST"), (400, "bad_request", None)),
            (LoginError::Busy, (503, "login_busy", None)),
        ] {
            assert_eq!(status(ProxyError::Login(error)), expected);
        }
    }

    #[test]
    fn bodies_are_fixed_json() {
        let response = ProxyError::NoRoute.into_response();
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        let body = response.into_body();
        let bytes = futures_body(body);
        assert_eq!(bytes, r#"{"error":"not_found","status":404}"#);
    }

    fn futures_body(body: Full<Bytes>) -> String {
        use http_body_util::BodyExt;
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let bytes = rt.block_on(body.collect()).unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }
}
