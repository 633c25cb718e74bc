//! Browser sessions: OpenID Connect login (authorization code + PKCE), sealed session
//! cookies, logout and back-channel logout.
//!
//! ```text
//! browser ─► session route, no session ─► 302 to the IdP   (state, nonce, PKCE S256 sealed
//!                                                            in a 10-minute login cookie)
//! IdP ─► redirect_path?code&state ─► state checked, marked used ─► code exchanged (client
//!        secret, code_verifier) ─► ID token verified with the provider's keys (iss, aud =
//!        client_id, azp, exp, nonce) ─► session stored ─► 302 to the original URL
//! later requests ─► session cookie opened ─► session loaded ─► identity headers
//! ```
//! Protocol choice: the `openidconnect` crate was evaluated and not used. It brings its own
//! JOSE and crypto stack (RustCrypto), while the gateway already verifies JWTs with aws-lc-rs
//! against provider keys that refresh, rotate and are guarded against kid storms; an ID
//! token is one more JWT for that verifier. What remains is small and pinned by tests: an
//! authorization URL, one form POST, PKCE (a SHA-256), and the nonce check. Cookies are
//! sealed with aws-lc-rs AES-256-GCM (`cookie.rs`) rather than the `cookie` crate's private
//! jar, which would add RustCrypto's AES-GCM beside aws-lc.

pub mod cookie;
mod endpoints;
mod lookup;
mod memo;
pub mod redirect;
pub mod states;
pub mod store;

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue, LOCATION, SET_COOKIE};
use http::{HeaderMap, Response, StatusCode};
use http_body_util::Full;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::auth::claims::Claims;
use crate::auth::remote::Remote;
use cookie::CookieKeys;
use store::Store;
pub use store::{OPENED_CACHE_SIZE, Opened};

/// The gateway's own endpoints (besides the configurable `redirect_path`).
pub const LOGIN_PATH: &str = "/_portcullis/login";
pub const LOGOUT_PATH: &str = "/_portcullis/logout";
pub const BACKCHANNEL_PATH: &str = "/_portcullis/backchannel-logout";
pub const DEFAULT_REDIRECT_PATH: &str = "/_portcullis/callback";
/// All of them, with the default callback.
pub const LOGIN_PATHS: [&str; 4] = [
    LOGIN_PATH,
    LOGOUT_PATH,
    BACKCHANNEL_PATH,
    DEFAULT_REDIRECT_PATH,
];
/// How long a browser has to come back from the IdP.
const LOGIN_TTL: u64 = 600;
/// Claims that are protocol plumbing, not identity: not kept in the session.
const PROTOCOL_CLAIMS: [&str; 4] = ["nonce", "at_hash", "c_hash", "s_hash"];
const BACKCHANNEL_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// The compiled `[login]` table.
pub struct Login {
    /// Index into `Snapshot::providers`: its keys verify ID and logout tokens.
    pub provider: usize,
    pub issuer: Box<str>,
    /// The provider's discovery and key fetching: the login endpoints come from the same
    /// discovery document, through the same HTTP client.
    pub remote: Arc<Remote>,
    pub client_id: Box<str>,
    pub client_secret: Option<Secret>,
    pub redirect_path: Box<str>,
    /// Absolute callback URL when the gateway sits behind something that changes host or
    /// scheme; otherwise built from the request's scheme and host.
    pub redirect_url: Option<Box<str>>,
    pub scopes: Box<str>,
    pub cookie_name: Box<str>,
    pub login_cookie_name: Box<str>,
    /// `Secure` on the cookies: None means "when the request came over TLS".
    pub cookie_secure: Option<bool>,
    pub keys: CookieKeys,
    pub store: Store,
    /// Seconds.
    pub idle_timeout: u64,
    pub lifetime: u64,
    pub allowed_redirect_hosts: Box<[Box<str>]>,
    pub post_logout_redirect_url: Option<Box<str>>,
    /// States already used at the callback (replay guard); in Redis when the store is.
    pub used_states: Arc<states::UsedStates>,
    /// `store = "cookie"`: sessions already opened, by SHA-256 of the cookie value, so a
    /// browser's next requests skip the decryption and JSON parsing. An entry only answers
    /// while its session needs no write (no touch, no refresh); bounded, and short-lived
    /// since a touch is due within 60 s anyway.
    pub opened: moka::sync::Cache<[u8; 32], Arc<Opened>>,
    /// Names `opened` in the workers' memos (`memo`): a new cache, a new id.
    pub opened_id: u64,
    /// Some route forwards the session's access token / ID token: sessions keep them.
    pub keep_access_token: bool,
    pub keep_id_token: bool,
}

/// A client secret; deliberately not `Debug`.
pub struct Secret(pub Box<str>);

/// What the browser carries between the redirect to the IdP and the callback.
#[derive(Serialize, Deserialize)]
struct LoginState {
    state: String,
    nonce: String,
    verifier: String,
    return_to: String,
    redirect_uri: String,
    created: u64,
}

/// Why a login, logout or session lookup failed. Rendered by `crate::error`.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("login state missing, forged, expired or already used")]
    InvalidState,
    #[error("the IdP refused the login: {0}")]
    Refused(String),
    #[error("the ID token was refused: {0}")]
    InvalidIdToken(String),
    #[error("IdP unavailable: {0}")]
    IdpUnavailable(String),
    #[error(
        "the session would need a {0}-byte cookie (limit 4096); use store = \"memory\" or \"redis\""
    )]
    SessionTooLarge(usize),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("logout token refused: {0}")]
    InvalidLogoutToken(String),
    #[error(
        "back-channel logout needs a server-side session store (store = \"memory\" or \"redis\")"
    )]
    NeedsServerStore,
    #[error("this endpoint takes {0}")]
    WrongMethod(&'static str),
    #[error("too many logins in progress to remember their states")]
    Busy,
}

/// A gateway endpoint, recognised by its exact (canonical) path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Login,
    Callback,
    Logout,
    Backchannel,
}

/// The request facts the login flows need.
pub struct RequestInfo<'a> {
    /// Canonical host as routed (no port), and the Host value as received (with port).
    pub host: &'a str,
    pub authority: &'a str,
    pub tls: bool,
    pub query: Option<&'a str>,
}

impl Login {
    pub fn endpoint(&self, canonical_path: &str) -> Option<Endpoint> {
        match canonical_path {
            p if p == &*self.redirect_path => Some(Endpoint::Callback),
            LOGIN_PATH => Some(Endpoint::Login),
            LOGOUT_PATH => Some(Endpoint::Logout),
            BACKCHANNEL_PATH => Some(Endpoint::Backchannel),
            _ => None,
        }
    }

    /// Every name the gateway's cookies can have (with and without a `__Host-` prefix):
    /// these never reach an upstream.
    pub fn own_cookie_names(&self) -> Vec<Box<str>> {
        let mut names = Vec::new();
        for name in [&self.cookie_name, &self.login_cookie_name] {
            for secure in [true, false] {
                let n: Box<str> = cookie::cookie_name(name, secure).into();
                if !names.contains(&n) {
                    names.push(n);
                }
            }
        }
        names
    }

    fn secure(&self, tls: bool) -> bool {
        self.cookie_secure.unwrap_or(tls)
    }

    /// The tokens a request of `session` carries to routes that forward them.
    fn tokens_of(&self, session: &store::Session) -> Option<Arc<crate::auth::SessionTokens>> {
        if !self.keep_access_token && !self.keep_id_token {
            return None;
        }
        let value = |token: &Option<String>, kept: bool| {
            token
                .as_deref()
                .filter(|_| kept)
                .and_then(|t| HeaderValue::from_str(t).ok())
        };
        Some(Arc::new(crate::auth::SessionTokens {
            access: value(&session.access_token, self.keep_access_token),
            id: value(&session.id_token, self.keep_id_token),
        }))
    }

    /// Keeps what the token response brought that the sessions keep.
    fn keep_tokens(
        &self,
        session: &mut store::Session,
        access: Option<String>,
        expires_in: Option<u64>,
        now: u64,
    ) {
        if self.keep_access_token && access.is_some() {
            session.access_token = access;
            session.access_exp = expires_in.map(|seconds| now + seconds);
        }
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    id_token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// Whether an unauthenticated request should be sent to log in rather than get a 401:
/// a browser navigation (GET/HEAD, accepts HTML, not XHR/fetch).
pub fn wants_redirect(method: &http::Method, headers: &HeaderMap) -> bool {
    let navigation = matches!(*method, http::Method::GET | http::Method::HEAD);
    let accepts_html = headers
        .get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/html"));
    let xhr = headers
        .get("x-requested-with")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"xmlhttprequest"));
    let scripted = headers
        .get("sec-fetch-mode")
        .is_some_and(|v| matches!(v.as_bytes(), b"cors" | b"no-cors" | b"same-origin"));
    navigation && accepts_html && !xhr && !scripted
}

fn identity_claims(claims: Claims) -> Map<String, Value> {
    let mut map = claims.as_map().clone();
    for name in PROTOCOL_CLAIMS {
        map.remove(name);
    }
    map
}

/// 32 random bytes, base64url: state, nonce, PKCE verifier, session id.
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).expect("the system random source works");
    URL_SAFE_NO_PAD.encode(bytes)
}

fn redirect<const N: usize>(location: &str, cookies: [HeaderValue; N]) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::FOUND;
    let headers = response.headers_mut();
    // Locations are built from validated or IdP-configured URLs; one that is not a valid
    // header value falls back to the root.
    headers.insert(
        LOCATION,
        HeaderValue::from_str(location).unwrap_or(HeaderValue::from_static("/")),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    for cookie in cookies {
        headers.append(SET_COOKIE, cookie);
    }
    response
}

fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    query.map_or_else(Vec::new, |q| form::urlencoded_pairs(q.as_bytes()))
}

/// Error text from the IdP or a client, safe for a log line: short, printable ASCII.
fn printable(text: &str) -> String {
    text.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(100)
        .collect()
}

/// `application/x-www-form-urlencoded`, both ways.
mod form {
    pub fn urlencoded_pairs(input: &[u8]) -> Vec<(String, String)> {
        serde_urlencoded::from_bytes::<Vec<(String, String)>>(input).unwrap_or_default()
    }

    pub fn encode(text: &str) -> String {
        let encoded = serde_urlencoded::to_string([("", text)]).unwrap_or_default();
        encoded.trim_start_matches('=').to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::credential::tests::headers;
    use crate::auth::jwt::Provider;
    use std::time::Duration;

    #[test]
    fn only_browser_navigations_are_redirected() {
        let html = "text/html,application/xhtml+xml,*/*;q=0.8";
        let get = http::Method::GET;
        assert!(wants_redirect(&get, &headers(&[("accept", html)])));
        assert!(wants_redirect(
            &http::Method::HEAD,
            &headers(&[("accept", html)])
        ));
        assert!(!wants_redirect(
            &http::Method::POST,
            &headers(&[("accept", html)])
        ));
        assert!(!wants_redirect(
            &get,
            &headers(&[("accept", "application/json")])
        ));
        assert!(!wants_redirect(&get, &headers(&[])));
        assert!(!wants_redirect(
            &get,
            &headers(&[("accept", html), ("x-requested-with", "XMLHttpRequest")])
        ));
        assert!(!wants_redirect(
            &get,
            &headers(&[("accept", html), ("sec-fetch-mode", "cors")])
        ));
        assert!(wants_redirect(
            &get,
            &headers(&[("accept", html), ("sec-fetch-mode", "navigate")])
        ));
    }

    #[test]
    fn client_credentials_are_form_encoded_for_basic_auth() {
        assert_eq!(form::encode("a b:c/d"), "a+b%3Ac%2Fd");
        assert_eq!(form::encode("plain"), "plain");
    }

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn login() -> (Login, Vec<Provider>) {
        let key = crate::auth::keys::VerifyKey::new(
            None,
            jsonwebtoken::AlgorithmFamily::Hmac,
            jsonwebtoken::DecodingKey::from_secret(SECRET.as_bytes()),
            "test".into(),
        );
        let provider = Provider::with_static_keys(
            "idp",
            "https://idp",
            &["api"],
            &[jsonwebtoken::Algorithm::HS256],
            vec![key],
        );
        let remote = Remote::new(
            "idp",
            "https://idp",
            &[jsonwebtoken::Algorithm::HS256],
            crate::auth::remote::RemoteSource::Discovery("https://idp".into()),
            crate::auth::remote::RefreshSettings {
                refresh_interval: Duration::from_secs(300),
                min_refresh_interval: Duration::from_secs(30),
                fetch_timeout: Duration::from_secs(1),
                require_keys_at_start: false,
            },
            reqwest::Client::new(),
            Vec::new(),
            provider.keys.clone(),
        );
        let login = Login {
            provider: 0,
            issuer: "https://idp".into(),
            remote: Arc::new(remote),
            client_id: "gateway".into(),
            client_secret: None,
            redirect_path: DEFAULT_REDIRECT_PATH.into(),
            redirect_url: None,
            scopes: "openid".into(),
            cookie_name: "s".into(),
            login_cookie_name: "s-login".into(),
            cookie_secure: None,
            keys: CookieKeys::parse("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=").unwrap(),
            store: Store::Cookie,
            idle_timeout: 60,
            lifetime: 600,
            allowed_redirect_hosts: Box::default(),
            post_logout_redirect_url: None,
            used_states: Arc::new(states::UsedStates::new(10)),
            opened: moka::sync::Cache::new(10),
            opened_id: store::next_opened_id(),
            keep_access_token: false,
            keep_id_token: false,
        };
        (login, vec![provider])
    }

    fn id_token(claims: Value) -> String {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn an_id_token_must_be_for_this_client_and_this_login() {
        let (login, providers) = login();
        let now = 1_000_000;
        let good = serde_json::json!({
            "iss": "https://idp", "aud": "gateway", "sub": "alice", "nonce": "n1",
            "iat": now, "exp": now + 60,
        });
        let with = |change: Value| {
            let mut claims = good.clone();
            for (k, v) in change.as_object().unwrap() {
                if v.is_null() {
                    claims.as_object_mut().unwrap().remove(k);
                } else {
                    claims[k] = v.clone();
                }
            }
            id_token(claims)
        };
        let accept = async |token: &str| login.accept_id_token(token, "n1", &providers, now).await;
        assert!(accept(&id_token(good.clone())).await.is_ok());
        let several = serde_json::json!({"aud": ["gateway", "other"], "azp": "gateway"});
        assert!(
            accept(&with(several)).await.is_ok(),
            "several audiences, azp is us"
        );
        for (change, why) in [
            (serde_json::json!({"nonce": "n2"}), "another login's nonce"),
            (serde_json::json!({"nonce": null}), "no nonce"),
            (
                serde_json::json!({"aud": "api"}),
                "an access-token audience, not the client",
            ),
            (
                serde_json::json!({"aud": ["gateway", "other"]}),
                "several audiences, no azp",
            ),
            (
                serde_json::json!({"aud": ["gateway", "other"], "azp": "other"}),
                "azp is another client",
            ),
            (serde_json::json!({"iss": "https://evil"}), "another issuer"),
            (serde_json::json!({"exp": now - 100}), "expired"),
            (serde_json::json!({"exp": null}), "no exp"),
        ] {
            assert!(
                matches!(
                    accept(&with(change)).await,
                    Err(LoginError::InvalidIdToken(_))
                ),
                "{why}"
            );
        }
        let forged = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &good,
            &jsonwebtoken::EncodingKey::from_secret(b"another-secret-another-secret-32"),
        )
        .unwrap();
        assert!(accept(&forged).await.is_err(), "signed with another key");
    }

    #[test]
    fn protocol_claims_are_not_kept() {
        let claims: Claims =
            serde_json::from_str(r#"{"sub":"a","nonce":"n","at_hash":"h","email":"e"}"#).unwrap();
        let kept = identity_claims(claims);
        assert_eq!(kept.len(), 2);
        assert!(kept.contains_key("sub") && kept.contains_key("email"));
    }
}
