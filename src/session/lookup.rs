//! The session of a request: opened from its cookie, loaded from the store, refreshed
//! at the IdP when its ID token is about to expire, and touched (at most once per
//! `idle_timeout / 10`): what `authenticate` asks through `auth::Sessions`.

use std::sync::Arc;

use http::HeaderMap;
use http::header::HeaderValue;
use serde_json::Value;

use super::cookie::{self};
use super::memo;
use super::store::{RedisStore, Session};
use crate::auth::claims::Claims;
use crate::auth::credential;
use crate::auth::jwt::Provider;

use super::*;

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
    /// Stores the session (server-side stores: under `id`, or a new id) and returns the
    /// `Set-Cookie` that carries it.
    pub(super) async fn issue(
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
        // Sessions opened before, by the cookie: the cookie store's, or the Redis store's
        // while it hears of every session's end.
        let redis = match &self.store {
            Store::Redis(redis) if redis.cache_ready() => Some(redis),
            _ => None,
        };
        let cached = !self.store.is_server_side() || redis.is_some();
        // Read before any lookup: an end heard after it moves it (`memo`, `remember`).
        let (owner, generation) = match redis {
            Some(redis) => (redis.opened_id, redis.generation()),
            None => (self.opened_id, 0),
        };
        // This worker's memo first, then the shared cache by the cookie's digest.
        if cached
            && let Some(found) = still_fresh(
                memo::get(owner, generation, value.as_bytes()),
                now,
                touch_every,
            )
        {
            return Ok(Some(found));
        }
        let cache_key = cached.then(|| {
            let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, value.as_bytes());
            <[u8; 32]>::try_from(digest.as_ref()).expect("SHA-256 is 32 bytes")
        });
        if let Some(key) = &cache_key {
            let opened = match redis {
                Some(redis) => redis.opened.get(key),
                None => self.opened.get(key),
            };
            if let Some(opened) = &opened {
                memo::put(owner, generation, value.as_bytes(), opened);
            }
            if let Some(found) = still_fresh(opened, now, touch_every) {
                return Ok(Some(found));
            }
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
        if session.due_for_refresh(now) {
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
        let tokens = self.tokens_of(&session);
        let token_exp = session
            .access_exp
            .map_or(session.id_exp, |exp| exp.min(session.id_exp));
        let session_id: Option<Arc<str>> = session.id.as_deref().map(Into::into);
        let claims = Arc::new(Claims::from_map(session.claims));
        if let (Some(key), false) = (cache_key, changed) {
            let opened = Arc::new(Opened {
                claims: claims.clone(),
                id: session_id.clone(),
                created: session.created,
                tokens: tokens.clone(),
                expires: session.expires,
                last_seen: session.last_seen,
                token_exp,
                refreshable: session.refresh_token.is_some(),
                end_key: id.as_deref().map_or([0; 32], RedisStore::end_key),
            });
            match redis {
                Some(redis) => redis.remember(key, opened, generation),
                None => self.opened.insert(key, opened),
            }
        }
        Ok(Some(Found {
            claims,
            tokens,
            id: session_id,
            created: session.created,
            set_cookie,
            expires: session.expires,
        }))
    }

    /// Renews the session with its refresh token before the ID token expires.
    pub(super) async fn refresh(
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
            if self.store.is_server_side() || self.keep_id_token {
                session.id_token = Some(id_token);
            }
        } else {
            session.id_exp = now + tokens.expires_in.unwrap_or(300);
        }
        self.keep_tokens(session, tokens.access_token, tokens.expires_in, now);
        if let Some(rotated) = tokens.refresh_token {
            session.refresh_token = Some(rotated);
        }
        Ok(())
    }
}

/// A session opened before, while it needs no write: not ended, no touch due, no refresh
/// due.
fn still_fresh(opened: Option<Arc<Opened>>, now: u64, touch_every: u64) -> Option<Found> {
    let opened = opened?;
    let fresh = now < opened.expires
        && now < opened.last_seen + touch_every
        && !(opened.refreshable && now + 30 >= opened.token_exp);
    fresh.then(|| Found {
        claims: opened.claims.clone(),
        tokens: opened.tokens.clone(),
        id: opened.id.clone(),
        created: opened.created,
        set_cookie: None,
        expires: opened.expires,
    })
}
