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
use crate::auth::credential;
use crate::auth::jwt::{self, JwtError, Provider};
use crate::auth::keys::{self, OidcEndpoints, Remote};
use cookie::CookieKeys;
use store::{Session, Store};

/// The gateway's own endpoints (besides the configurable `redirect_path`).
pub const LOGIN_PATH: &str = "/_portcullis/login";
pub const LOGOUT_PATH: &str = "/_portcullis/logout";
pub const BACKCHANNEL_PATH: &str = "/_portcullis/backchannel-logout";
pub const DEFAULT_REDIRECT_PATH: &str = "/_portcullis/callback";
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
}

/// What a request needs from a cookie-store session that was opened before.
pub struct Opened {
    claims: Arc<Claims>,
    expires: u64,
    last_seen: u64,
    id_exp: u64,
    refreshable: bool,
}

/// Entries of `Login::opened` at most.
pub const OPENED_CACHE_SIZE: u64 = 50_000;

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

use crate::auth::SessionFound as Found;

impl crate::auth::Sessions for Login {
    fn provider(&self) -> usize {
        self.provider
    }

    fn find<'a>(
        &'a self,
        headers: &'a HeaderMap,
        tls: bool,
        providers: &'a [Provider],
        now: u64,
    ) -> std::pin::Pin<
        Box<dyn Future<Output = Result<Option<Found>, crate::auth::SessionError>> + Send + 'a>,
    > {
        Box::pin(async move { Ok(self.find_session(headers, tls, providers, now).await?) })
    }
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

    /// The IdP's login endpoints (from the provider's discovery).
    async fn endpoints(&self) -> Result<Arc<OidcEndpoints>, LoginError> {
        self.remote
            .oidc_endpoints()
            .await
            .map_err(|e| LoginError::IdpUnavailable(e.to_string()))
    }

    fn redirect_uri(&self, request: &RequestInfo<'_>) -> String {
        match &self.redirect_url {
            Some(url) => url.to_string(),
            None => {
                let scheme = if request.tls { "https" } else { "http" };
                format!("{scheme}://{}{}", request.authority, self.redirect_path)
            }
        }
    }

    /// The 302 to the IdP that starts a login and comes back to `return_to` (validated).
    pub async fn start(
        &self,
        request: &RequestInfo<'_>,
        return_to: &str,
        now: u64,
    ) -> Result<Response<Full<Bytes>>, LoginError> {
        // Its callback could not be remembered (see `states`): say so now, not after the
        // user typed a password at the IdP.
        if !matches!(self.store, Store::Redis(_)) && self.used_states.is_full(now) {
            return Err(LoginError::Busy);
        }
        let endpoints = self.endpoints().await?;
        let state = random_token();
        let nonce = random_token();
        let verifier = random_token();
        let challenge = URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            verifier.as_bytes(),
        ));
        let redirect_uri = self.redirect_uri(request);
        let mut location = reqwest::Url::parse(&endpoints.authorization_endpoint)
            .map_err(|e| LoginError::IdpUnavailable(format!("authorization_endpoint: {e}")))?;
        location
            .query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.client_id)
            .append_pair("redirect_uri", &redirect_uri)
            .append_pair("scope", &self.scopes)
            .append_pair("state", &state)
            .append_pair("nonce", &nonce)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        let login = LoginState {
            state,
            nonce,
            verifier,
            return_to: redirect::safe_return(return_to, request.host, &self.allowed_redirect_hosts),
            redirect_uri,
            created: now,
        };
        let secure = self.secure(request.tls);
        let name = cookie::cookie_name(&self.login_cookie_name, secure);
        let sealed = self.keys.seal(
            name,
            &serde_json::to_vec(&login).expect("login state serialises"),
        );
        let set = cookie::set_cookie(name, &sealed, Some(LOGIN_TTL), secure);
        Ok(redirect(location.as_str(), [set]))
    }

    /// The IdP sent the browser back: check state, exchange the code, verify the ID token,
    /// create the session, and send the browser where it was going.
    pub async fn callback(
        &self,
        request: &RequestInfo<'_>,
        headers: &HeaderMap,
        providers: &[Provider],
        now: u64,
    ) -> Result<Response<Full<Bytes>>, LoginError> {
        let params = query_pairs(request.query);
        let param = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let secure = self.secure(request.tls);
        let login_name = cookie::cookie_name(&self.login_cookie_name, secure);
        let login: LoginState = credential::cookie_value(headers, login_name)
            .ok()
            .flatten()
            .and_then(|value| self.keys.open(login_name, value))
            .and_then(|plain| serde_json::from_slice(&plain).ok())
            .ok_or(LoginError::InvalidState)?;
        let state_ok = param("state").is_some_and(|s| {
            aws_lc_rs::constant_time::verify_slices_are_equal(s.as_bytes(), login.state.as_bytes())
                .is_ok()
        });
        if !state_ok || now >= login.created + LOGIN_TTL {
            return Err(LoginError::InvalidState);
        }
        self.consume_state(&login.state, now).await?;
        if let Some(error) = param("error") {
            return Err(LoginError::Refused(printable(error)));
        }
        // RFC 9207: an IdP that names itself in the response must be ours (mix-up defence).
        if param("iss").is_some_and(|iss| iss != &*self.issuer) {
            return Err(LoginError::Refused(
                "the response names another issuer".into(),
            ));
        }
        let code = param("code").ok_or_else(|| LoginError::Refused("no code".into()))?;
        let endpoints = self.endpoints().await?;
        let tokens = self
            .token_request(
                &endpoints.token_endpoint,
                &[
                    ("grant_type", "authorization_code"),
                    ("code", code),
                    ("redirect_uri", &login.redirect_uri),
                    ("code_verifier", &login.verifier),
                ],
            )
            .await?;
        let id_token = tokens.id_token.ok_or_else(|| {
            LoginError::InvalidIdToken("the token response has no id_token".into())
        })?;
        let claims = self
            .accept_id_token(&id_token, &login.nonce, providers, now)
            .await?;
        let session = Session {
            id_exp: claims.get("exp").and_then(Value::as_u64).unwrap_or(now),
            claims: identity_claims(claims),
            created: now,
            last_seen: now,
            expires: now + self.lifetime,
            refresh_token: tokens.refresh_token,
            id_token: self.store.is_server_side().then_some(id_token),
        };
        let session_cookie = self.issue(None, &session, secure).await?;
        let sub = session.claims.get("sub").and_then(|v| v.as_str());
        tracing::info!(
            target: "portcullis::access",
            sub = sub.unwrap_or("-"),
            store = self.store.kind(),
            "login"
        );
        Ok(redirect(
            &login.return_to,
            [session_cookie, cookie::clear_cookie(login_name, secure)],
        ))
    }

    /// The ID token of a code exchange: verified, and carrying the nonce this browser's
    /// login sent (an ID token minted for another login is refused).
    async fn accept_id_token(
        &self,
        id_token: &str,
        nonce: &str,
        providers: &[Provider],
        now: u64,
    ) -> Result<Claims, LoginError> {
        let claims = self.verify_id_token(id_token, providers, now).await?;
        let nonce_ok = claims
            .get("nonce")
            .and_then(Value::as_str)
            .is_some_and(|n| n == nonce);
        if !nonce_ok {
            return Err(LoginError::InvalidIdToken("nonce does not match".into()));
        }
        Ok(claims)
    }

    /// Marks a state used; a second callback with it is refused.
    async fn consume_state(&self, state: &str, now: u64) -> Result<(), LoginError> {
        let key = URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            state.as_bytes(),
        ));
        let fresh = match &self.store {
            Store::Redis(redis) => redis.claim_once(&key, LOGIN_TTL).await?,
            Store::Cookie | Store::Memory(_) => self
                .used_states
                .claim(&key, now, LOGIN_TTL)
                .map_err(|states::Full| LoginError::Busy)?,
        };
        if fresh {
            Ok(())
        } else {
            Err(LoginError::InvalidState)
        }
    }

    /// Stores the session (server-side stores: under `id`, or a new id) and returns the
    /// `Set-Cookie` that carries it.
    async fn issue(
        &self,
        id: Option<&str>,
        session: &Session,
        secure: bool,
    ) -> Result<HeaderValue, LoginError> {
        let name = cookie::cookie_name(&self.cookie_name, secure);
        let value = if self.store.is_server_side() {
            let new_id;
            let id = match id {
                Some(id) => id,
                None => {
                    new_id = random_token();
                    &new_id
                }
            };
            let ttl = self
                .idle_timeout
                .min(session.expires.saturating_sub(session.last_seen));
            self.store.save(id, session, ttl).await?;
            self.keys.seal(name, id.as_bytes())
        } else {
            let plain = serde_json::to_vec(session).expect("sessions serialise");
            self.keys.seal(name, &plain)
        };
        let max_age = session.expires.saturating_sub(session.last_seen);
        let set = cookie::set_cookie(name, &value, Some(max_age), secure);
        if set.len() > cookie::MAX_COOKIE_BYTES {
            return Err(LoginError::SessionTooLarge(set.len()));
        }
        Ok(set)
    }

    /// The session of this request, if it has a valid one. A cookie that does not open,
    /// an expired or idle session, or a session deleted by a logout is `None`.
    pub async fn find_session(
        &self,
        headers: &HeaderMap,
        tls: bool,
        providers: &[Provider],
        now: u64,
    ) -> Result<Option<Found>, LoginError> {
        let secure = self.secure(tls);
        let name = cookie::cookie_name(&self.cookie_name, secure);
        let Some(value) = credential::cookie_value(headers, name).ok().flatten() else {
            return Ok(None);
        };
        let touch_every = (self.idle_timeout / 10).clamp(1, 60);
        let cache_key = (!self.store.is_server_side()).then(|| {
            let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, value.as_bytes());
            <[u8; 32]>::try_from(digest.as_ref()).expect("SHA-256 is 32 bytes")
        });
        if let Some(key) = &cache_key
            && let Some(opened) = self.opened.get(key)
            && now < opened.expires
            && now < opened.last_seen + touch_every
            && !(opened.refreshable && now + 30 >= opened.id_exp)
        {
            return Ok(Some(Found {
                claims: opened.claims.clone(),
                set_cookie: None,
            }));
        }
        let Some(plain) = self.keys.open(name, value) else {
            return Ok(None);
        };
        let (id, session) = if self.store.is_server_side() {
            let Ok(id) = String::from_utf8(plain) else {
                return Ok(None);
            };
            let session = self.store.load(&id, now).await?;
            (Some(id), session)
        } else {
            (None, serde_json::from_slice::<Session>(&plain).ok())
        };
        let Some(mut session) = session else {
            return Ok(None);
        };
        // A session from another IdP (the login provider was changed) is no session here.
        let foreign = session.issuer() != &*self.issuer;
        if foreign || now >= session.expires || now >= session.last_seen + self.idle_timeout {
            if let Some(id) = &id {
                self.store.delete(id).await?;
            }
            return Ok(None);
        }
        let mut changed = false;
        if session.refresh_token.is_some() && now + 30 >= session.id_exp {
            match self.refresh(&mut session, providers, now).await {
                Ok(()) => changed = true,
                Err(LoginError::IdpUnavailable(error)) => {
                    tracing::warn!(%error, "session refresh failed; keeping the session for now");
                }
                Err(error) => {
                    // Another request (or instance) may have refreshed first with a rotating
                    // refresh token: then the stored session is already renewed.
                    if let Some(id) = &id
                        && let Some(current) = self.store.load(id, now).await?
                        && current.refresh_token != session.refresh_token
                    {
                        session = current;
                    } else {
                        tracing::info!(%error, "session refresh refused; the session ends");
                        if let Some(id) = &id {
                            self.store.delete(id).await?;
                        }
                        return Ok(None);
                    }
                }
            }
        }
        // Idle tracking without a write per request: at most one per touch interval.
        if now >= session.last_seen + touch_every {
            session.last_seen = now;
            changed = true;
        }
        let set_cookie = if changed {
            Some(self.issue(id.as_deref(), &session, secure).await?)
        } else {
            None
        };
        let claims = Arc::new(Claims::from_map(session.claims));
        if let (Some(key), false) = (cache_key, changed) {
            let opened = Opened {
                claims: claims.clone(),
                expires: session.expires,
                last_seen: session.last_seen,
                id_exp: session.id_exp,
                refreshable: session.refresh_token.is_some(),
            };
            self.opened.insert(key, Arc::new(opened));
        }
        Ok(Some(Found { claims, set_cookie }))
    }

    /// Renews the session with its refresh token before the ID token expires.
    async fn refresh(
        &self,
        session: &mut Session,
        providers: &[Provider],
        now: u64,
    ) -> Result<(), LoginError> {
        let endpoints = self.endpoints().await?;
        let refresh_token = session.refresh_token.clone().unwrap_or_default();
        let tokens = self
            .token_request(
                &endpoints.token_endpoint,
                &[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", &refresh_token),
                ],
            )
            .await?;
        if let Some(id_token) = tokens.id_token {
            let claims = self.verify_id_token(&id_token, providers, now).await?;
            let same_subject = claims.get("sub") == session.claims.get("sub");
            if !same_subject {
                return Err(LoginError::InvalidIdToken(
                    "a refreshed ID token names another subject".into(),
                ));
            }
            session.id_exp = claims.get("exp").and_then(Value::as_u64).unwrap_or(now);
            session.claims = identity_claims(claims);
            if self.store.is_server_side() {
                session.id_token = Some(id_token);
            }
        } else {
            session.id_exp = now + tokens.expires_in.unwrap_or(300);
        }
        if let Some(rotated) = tokens.refresh_token {
            session.refresh_token = Some(rotated);
        }
        Ok(())
    }

    /// POST to the token endpoint with the client's credentials.
    async fn token_request(
        &self,
        url: &str,
        form: &[(&str, &str)],
    ) -> Result<TokenResponse, LoginError> {
        let mut request = self
            .remote
            .http()
            .post(url)
            .header("accept", "application/json");
        let mut fields: Vec<(&str, &str)> = form.to_vec();
        match &self.client_secret {
            // client_secret_basic: both parts form-urlencoded first (RFC 6749 2.3.1).
            Some(secret) => {
                let user = form::encode(&self.client_id);
                let password = form::encode(&secret.0);
                request = request.basic_auth(user, Some(password));
            }
            None => fields.push(("client_id", &self.client_id)),
        }
        let response = request
            .form(&fields)
            .send()
            .await
            .map_err(|e| LoginError::IdpUnavailable(crate::telemetry::error_chain(&e)))?;
        let status = response.status();
        if status.is_client_error() {
            #[derive(Deserialize)]
            struct OAuthError {
                error: String,
            }
            let body = keys::bounded_body(response, url).await.unwrap_or_default();
            let error = serde_json::from_slice::<OAuthError>(&body)
                .map_or_else(|_| format!("HTTP {status}"), |e| printable(&e.error));
            return Err(LoginError::Refused(format!("token endpoint: {error}")));
        }
        if !status.is_success() {
            return Err(LoginError::IdpUnavailable(format!("{url}: HTTP {status}")));
        }
        let body = keys::bounded_body(response, url)
            .await
            .map_err(|e| LoginError::IdpUnavailable(e.to_string()))?;
        serde_json::from_slice(&body)
            .map_err(|e| LoginError::IdpUnavailable(format!("{url}: not a token response: {e}")))
    }

    /// An ID token (or logout token): the provider's keys and allow-list, its issuer,
    /// `aud` containing our client id, `azp` our client id when there are several
    /// audiences, and `exp`.
    async fn verify_id_token(
        &self,
        token: &str,
        providers: &[Provider],
        now: u64,
    ) -> Result<Claims, LoginError> {
        jwt::verify_for_client(token, self.provider, providers, &self.client_id, now)
            .await
            .map_err(|e: JwtError| LoginError::InvalidIdToken(e.to_string()))
    }

    /// Clears the session everywhere it is kept and sends the browser to the IdP's
    /// end-session endpoint (or back to `rd`).
    pub async fn logout(
        &self,
        request: &RequestInfo<'_>,
        headers: &HeaderMap,
        now: u64,
    ) -> Result<Response<Full<Bytes>>, LoginError> {
        let secure = self.secure(request.tls);
        let name = cookie::cookie_name(&self.cookie_name, secure);
        let mut id_token = None;
        if self.store.is_server_side()
            && let Some(id) = credential::cookie_value(headers, name)
                .ok()
                .flatten()
                .and_then(|v| self.keys.open(name, v))
                .and_then(|plain| String::from_utf8(plain).ok())
        {
            if let Some(session) = self.store.load(&id, now).await? {
                id_token = session.id_token;
            }
            self.store.delete(&id).await?;
        }
        let params = query_pairs(request.query);
        let rd = params
            .iter()
            .find(|(k, _)| k == "rd")
            .map_or("/", |(_, v)| v.as_str());
        let back = redirect::safe_return(rd, request.host, &self.allowed_redirect_hosts);
        let end_session = match self.endpoints().await {
            Ok(endpoints) => endpoints.end_session_endpoint.clone(),
            Err(error) => {
                tracing::warn!(%error, "logout without the IdP's end_session_endpoint");
                None
            }
        };
        let location = match end_session.and_then(|u| reqwest::Url::parse(&u).ok()) {
            Some(mut url) => {
                {
                    let mut query = url.query_pairs_mut();
                    query.append_pair("client_id", &self.client_id);
                    if let Some(hint) = &id_token {
                        query.append_pair("id_token_hint", hint);
                    }
                    if let Some(after) = &self.post_logout_redirect_url {
                        query.append_pair("post_logout_redirect_uri", after);
                    }
                }
                url.to_string()
            }
            None => back,
        };
        tracing::info!(target: "portcullis::access", store = self.store.kind(), "logout");
        Ok(redirect(&location, [cookie::clear_cookie(name, secure)]))
    }

    /// OIDC Back-Channel Logout 1.0: the IdP POSTs a signed logout token naming `sid`
    /// and/or `sub`; every matching server-side session ends.
    pub async fn backchannel(
        &self,
        form: &[u8],
        providers: &[Provider],
        now: u64,
    ) -> Result<Response<Full<Bytes>>, LoginError> {
        let bad = |why: &str| LoginError::InvalidLogoutToken(why.to_owned());
        let token = form::urlencoded_pairs(form)
            .into_iter()
            .find(|(k, _)| k == "logout_token")
            .map(|(_, v)| v)
            .ok_or_else(|| bad("no logout_token"))?;
        let claims = self
            .verify_id_token(&token, providers, now)
            .await
            .map_err(|e| LoginError::InvalidLogoutToken(e.to_string()))?;
        let is_logout = claims
            .get("events")
            .and_then(Value::as_object)
            .is_some_and(|events| events.contains_key(BACKCHANNEL_EVENT));
        if !is_logout {
            return Err(bad("not a back-channel logout event"));
        }
        if claims.get("nonce").is_some() {
            return Err(bad("a logout token must not carry a nonce"));
        }
        let sid = claims.get("sid").and_then(Value::as_str);
        let sub = claims.get("sub").and_then(Value::as_str);
        if sid.is_none() && sub.is_none() {
            return Err(bad("names neither sid nor sub"));
        }
        if !self.store.is_server_side() {
            return Err(LoginError::NeedsServerStore);
        }
        let ended = self.store.delete_matching(&self.issuer, sid, sub).await?;
        tracing::info!(target: "portcullis::access", ended, "back-channel logout");
        let mut response = Response::new(Full::new(Bytes::new()));
        response
            .headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Ok(response)
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    id_token: Option<String>,
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
            crate::auth::keys::RemoteSource::Discovery("https://idp".into()),
            crate::auth::keys::RefreshSettings {
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
