//! `[providers.NAME] introspection`: tokens that are not JWTs (opaque access tokens),
//! checked at the issuer's RFC 7662 introspection endpoint.
//!
//! - The request: `POST url` with `token=...&token_type_hint=access_token`, the gateway
//!   authenticated as `client_id` with HTTP Basic (client_secret_basic).
//! - The answer: `active = false` is 401. An active token's `exp` (when given) must be in
//!   the future, `iss` (when given) the provider's `issuer`, and `aud` (when given) must name
//!   one of its `audiences`; its members become the identity's claims (`sub`, `scope`,
//!   `client_id`, ...), which `[routes.require]` and the identity headers then use.
//! - The cache: by SHA-256 of the token (the token itself is never kept), bounded; an
//!   active answer for `cache_ttl` but never past its `exp`, an inactive one for
//!   `negative_ttl`. Concurrent requests with the same token wait for one introspection
//!   (single-flight, moka's `try_get_with`).
//! - Failure: the endpoint unreachable, slow (`fetch_timeout`), or answering anything but a
//!   JSON object with a boolean `active` is 503 `idp_unavailable` for a token not in the
//!   cache: never an allow.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use super::claims::Claims;

/// Compiled `introspection = { ... }` of one provider.
pub struct Introspection {
    url: reqwest::Url,
    client_id: String,
    secret: String,
    http: reqwest::Client,
    issuer: Box<str>,
    audiences: Box<[Box<str>]>,
    leeway: u64,
    cache_ttl: Duration,
    negative_ttl: Duration,
    /// Also ask about JWTs this provider verified (`introspect_jwts`): revocation.
    pub introspect_jwts: bool,
    answers: moka::future::Cache<[u8; 32], Answer>,
}

/// What the endpoint said about a token, and until when that may be reused (seconds since
/// the epoch).
#[derive(Clone)]
enum Answer {
    Active { claims: Arc<Claims>, until: u64 },
    Inactive { until: u64 },
}

/// Why an introspected token does not pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `active = false`, or an active answer whose `exp`, `iss` or `aud` does not fit.
    Inactive,
    /// The endpoint could not answer.
    Unavailable,
}

/// Settings of [`Introspection::new`].
pub struct Settings {
    pub url: reqwest::Url,
    pub client_id: String,
    pub secret: String,
    pub http: reqwest::Client,
    pub issuer: Box<str>,
    pub audiences: Box<[Box<str>]>,
    pub leeway: u64,
    pub cache_ttl: Duration,
    pub negative_ttl: Duration,
    pub cache_size: u64,
    pub introspect_jwts: bool,
}

impl Introspection {
    pub fn new(s: Settings) -> Introspection {
        Introspection {
            url: s.url,
            client_id: s.client_id,
            secret: s.secret,
            http: s.http,
            issuer: s.issuer,
            audiences: s.audiences,
            leeway: s.leeway,
            negative_ttl: s.negative_ttl,
            answers: moka::future::Cache::builder()
                .max_capacity(s.cache_size)
                // The longest any answer may live; each also carries its own end.
                .time_to_live(s.cache_ttl.max(s.negative_ttl).max(Duration::from_secs(1)))
                .build(),
            cache_ttl: s.cache_ttl,
            introspect_jwts: s.introspect_jwts,
        }
    }

    /// The identity of `token` at `now` (seconds since the epoch).
    pub async fn check(&self, token: &str, now: u64) -> Result<Arc<Claims>, Refusal> {
        let key = cache_key(token);
        if let Some(answer) = self.answers.get(&key).await {
            let until = match &answer {
                Answer::Active { until, .. } | Answer::Inactive { until } => *until,
            };
            if now < until {
                return verdict(answer);
            }
            self.answers.invalidate(&key).await;
        }
        // One introspection per token at a time; an error is not cached.
        let answer = self
            .answers
            .try_get_with(key, self.ask(token, now))
            .await
            .map_err(|_: Arc<Refusal>| Refusal::Unavailable)?;
        verdict(answer)
    }

    /// For the criterion bench only: puts an active answer for `token` in the cache.
    #[cfg(feature = "bench-internals")]
    #[doc(hidden)]
    pub async fn bench_prime(&self, token: &str, claims: Claims, until: u64) {
        let key = cache_key(token);
        let claims = Arc::new(claims);
        self.answers
            .insert(key, Answer::Active { claims, until })
            .await;
    }

    async fn ask(&self, token: &str, now: u64) -> Result<Answer, Refusal> {
        let response = self
            .http
            .post(self.url.clone())
            .basic_auth(&self.client_id, Some(&self.secret))
            .header(http::header::ACCEPT, "application/json")
            .form(&[("token", token), ("token_type_hint", "access_token")])
            .send()
            .await
            .map_err(|error| {
                tracing::warn!(url = %self.url, error = %error, "introspection failed");
                Refusal::Unavailable
            })?;
        if !response.status().is_success() {
            tracing::warn!(url = %self.url, status = response.status().as_u16(), "introspection refused");
            return Err(Refusal::Unavailable);
        }
        let body: Map<String, Value> = response.json().await.map_err(|error| {
            tracing::warn!(url = %self.url, %error, "introspection answer is not a JSON object");
            Refusal::Unavailable
        })?;
        Ok(self.judge(body, now))
    }

    /// An answer's meaning (see the module docs).
    fn judge(&self, mut body: Map<String, Value>, now: u64) -> Answer {
        let inactive = Answer::Inactive {
            until: now + self.negative_ttl.as_secs(),
        };
        if body.get("active") != Some(&Value::Bool(true)) {
            return inactive;
        }
        let exp = body.get("exp").and_then(Value::as_u64);
        if exp.is_some_and(|exp| exp + self.leeway <= now) {
            return inactive;
        }
        if body
            .get("iss")
            .is_some_and(|iss| iss.as_str() != Some(&*self.issuer))
        {
            tracing::debug!("introspection: another issuer");
            return inactive;
        }
        let audience_fits = |aud: &Value| match aud {
            Value::String(one) => self.audiences.iter().any(|a| **a == **one),
            Value::Array(many) => many
                .iter()
                .filter_map(Value::as_str)
                .any(|one| self.audiences.iter().any(|a| **a == *one)),
            _ => false,
        };
        if body.get("aud").is_some_and(|aud| !audience_fits(aud)) {
            tracing::debug!("introspection: not for this audience");
            return inactive;
        }
        body.remove("active");
        let until = (now + self.cache_ttl.as_secs()).min(exp.unwrap_or(u64::MAX));
        Answer::Active {
            claims: Arc::new(Claims::from_map(body)),
            until,
        }
    }
}

fn verdict(answer: Answer) -> Result<Arc<Claims>, Refusal> {
    match answer {
        Answer::Active { claims, .. } => Ok(claims),
        Answer::Inactive { .. } => Err(Refusal::Inactive),
    }
}

/// The cache's key of `token`: its SHA-256 (the token itself is never kept).
fn cache_key(token: &str) -> [u8; 32] {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes())
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

/// A token that is not a JWS compact serialisation (three dot-separated parts): an opaque
/// token for introspection.
pub fn is_opaque(token: &[u8]) -> bool {
    token.iter().filter(|&&b| b == b'.').count() != 2
}

#[cfg(test)]
mod tests {
    use super::*;

    fn introspection() -> Introspection {
        Introspection::new(Settings {
            url: "http://127.0.0.1:9/introspect".parse().unwrap(),
            client_id: "gw".into(),
            secret: "s".into(),
            http: reqwest::Client::new(),
            issuer: "https://idp".into(),
            audiences: vec!["crm".into()].into(),
            leeway: 30,
            cache_ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(5),
            cache_size: 10,
            introspect_jwts: false,
        })
    }

    fn judge(body: Value) -> Result<(Arc<Claims>, u64), u64> {
        match introspection().judge(body.as_object().unwrap().clone(), 1000) {
            Answer::Active { claims, until } => Ok((claims, until)),
            Answer::Inactive { until } => Err(until),
        }
    }

    #[test]
    fn an_answer_is_active_only_when_it_says_so_and_fits() {
        let (claims, until) = judge(serde_json::json!({"active": true, "sub": "a", "scope": "x y", "iss": "https://idp", "aud": ["crm"], "exp": 1030})).unwrap();
        assert_eq!(claims.subject(), Some("a"));
        assert!(claims.get("active").is_none());
        // Cached no longer than the token lives.
        assert_eq!(until, 1030);
        assert_eq!(judge(serde_json::json!({"active": true})).unwrap().1, 1060);
        for refused in [
            serde_json::json!({"active": false, "sub": "a"}),
            serde_json::json!({"active": "true"}),
            serde_json::json!({"sub": "a"}),
            serde_json::json!({"active": true, "exp": 900}),
            serde_json::json!({"active": true, "iss": "https://other"}),
            serde_json::json!({"active": true, "aud": "erp"}),
            serde_json::json!({"active": true, "aud": ["erp", 7]}),
        ] {
            // Refusals are cached briefly.
            assert_eq!(judge(refused.clone()).err(), Some(1005), "{refused}");
        }
    }

    #[test]
    fn opaque_means_not_three_parts() {
        assert!(is_opaque(b"2YotnFZFEjr1zCsicMWpAA"));
        assert!(is_opaque(b"a.b"));
        assert!(!is_opaque(b"a.b.c"));
    }
}
