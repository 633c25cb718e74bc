//! The login flows' endpoints: the redirect to the IdP, the callback, logout and
//! back-channel logout, and the IdP requests behind them (token endpoint, ID tokens).

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::header::{CACHE_CONTROL, HeaderValue};
use http::{HeaderMap, Response};
use http_body_util::Full;
use serde::Deserialize;
use serde_json::Value;

use super::cookie::{self};
use super::store::{Session, Store};
use crate::auth::claims::Claims;
use crate::auth::credential;
use crate::auth::jwt::{self, JwtError, Provider};
use crate::auth::remote::{self, OidcEndpoints};

use super::*;

impl Login {
    /// The IdP's login endpoints (from the provider's discovery).
    pub(super) async fn endpoints(&self) -> Result<Arc<OidcEndpoints>, LoginError> {
        self.remote
            .oidc_endpoints()
            .await
            .map_err(|e| LoginError::IdpUnavailable(e.to_string()))
    }

    pub(super) fn redirect_uri(&self, request: &RequestInfo<'_>) -> String {
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
        let mut session = Session {
            id: Some(random_token()),
            id_exp: claims.get("exp").and_then(Value::as_u64).unwrap_or(now),
            claims: identity_claims(claims),
            created: now,
            last_seen: now,
            expires: now + self.lifetime,
            refresh_token: tokens.refresh_token,
            id_token: (self.store.is_server_side() || self.keep_id_token).then_some(id_token),
            access_token: None,
            access_exp: None,
        };
        self.keep_tokens(&mut session, tokens.access_token, tokens.expires_in, now);
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
    pub(super) async fn accept_id_token(
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
    pub(super) async fn consume_state(&self, state: &str, now: u64) -> Result<(), LoginError> {
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

    /// POST to the token endpoint with the client's credentials.
    pub(super) async fn token_request(
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
            let body = remote::bounded_body(response, url)
                .await
                .unwrap_or_default();
            let error = serde_json::from_slice::<OAuthError>(&body)
                .map_or_else(|_| format!("HTTP {status}"), |e| printable(&e.error));
            return Err(LoginError::Refused(format!("token endpoint: {error}")));
        }
        if !status.is_success() {
            return Err(LoginError::IdpUnavailable(format!("{url}: HTTP {status}")));
        }
        let body = remote::bounded_body(response, url)
            .await
            .map_err(|e| LoginError::IdpUnavailable(e.to_string()))?;
        serde_json::from_slice(&body)
            .map_err(|e| LoginError::IdpUnavailable(format!("{url}: not a token response: {e}")))
    }

    /// An ID token (or logout token): the provider's keys and allow-list, its issuer,
    /// `aud` containing our client id, `azp` our client id when there are several
    /// audiences, and `exp`.
    pub(super) async fn verify_id_token(
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
        denylist: Option<&crate::revocation::Denylist>,
        now: u64,
    ) -> Result<Response<Full<Bytes>>, LoginError> {
        let secure = self.secure(request.tls);
        let name = cookie::cookie_name(&self.cookie_name, secure);
        let mut id_token = None;
        if !self.store.is_server_side()
            && let Some(denylist) = denylist
            && let Some(session) = credential::cookie_value(headers, name)
                .ok()
                .flatten()
                .and_then(|v| self.keys.open(name, v))
                .and_then(|plain| serde_json::from_slice::<Session>(&plain).ok())
            && let Some(id) = &session.id
        {
            // A cookie session lives in the browser: ending it everywhere means telling
            // every instance not to take it any more, until it would have ended anyway.
            let revoked = denylist
                .revoke(
                    crate::revocation::Kind::Session,
                    "",
                    id,
                    session.expires,
                    now,
                )
                .await;
            if let Err(error) = revoked {
                tracing::warn!(%error, "logout: the session could not be revoked on the other instances");
            }
        }
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
        denylist: Option<&crate::revocation::Denylist>,
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
        let ended = if self.store.is_server_side() {
            self.store.delete_matching(&self.issuer, sid, sub).await?
        } else if let Some(denylist) = denylist {
            // Cookie sessions: every instance refuses those of this IdP session (or
            // subject) that began before now, for as long as one can live.
            use crate::revocation::Kind;
            for (kind, value) in [
                (Kind::Sid, sid),
                (Kind::Sub, sid.is_none().then_some(sub).flatten()),
            ] {
                if let Some(value) = value {
                    denylist
                        .revoke(kind, &self.issuer, value, now + self.lifetime, now)
                        .await
                        .map_err(|e| LoginError::Store(crate::session::store::StoreError(e)))?;
                }
            }
            0
        } else {
            return Err(LoginError::NeedsServerStore);
        };
        tracing::info!(target: "portcullis::access", ended, "back-channel logout");
        let mut response = Response::new(Full::new(Bytes::new()));
        response
            .headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Ok(response)
    }
}
