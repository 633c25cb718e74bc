//! Keeping a provider's keys fresh when they come from an IdP (`jwks_url`, `discovery`),
//! and the IdP's login endpoints from the same discovery document.
//!
//! Fetching is guarded against both failure modes IdP users keep reporting:
//! - **401 storms after rotation**: keys refresh in the background before they go stale
//!   (`refresh_interval`, shortened by the JWKS response's `Cache-Control: max-age` but never
//!   below `min_refresh_interval`), and a token with an unknown `kid` triggers a refetch;
//! - **IdP overload**: such refetches happen at most once per `min_refresh_interval` per
//!   provider, concurrent misses wait for the one fetch in flight (single-flight), and a kid
//!   still unknown afterwards is remembered (negative cache, bounded) until the next allowed
//!   refetch. A failed fetch keeps the last good set.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use jsonwebtoken::Algorithm;
use tokio::time::Instant;

use super::keys::{KeySet, VerifyKey, parse_jwks};

/// Bodies larger than this from an IdP are refused (a bound on memory per fetch).
pub const MAX_IDP_BODY: usize = 1 << 20;
/// Unknown kids remembered per provider at most.
const MAX_UNKNOWN_KIDS: usize = 1024;

/// Where remote keys come from.
#[derive(Debug, Clone)]
pub enum RemoteSource {
    Jwks(String),
    /// The issuer's base URL or its `.well-known/openid-configuration` document.
    Discovery(String),
}

/// Refresh settings of a remote provider.
#[derive(Debug, Clone)]
pub struct RefreshSettings {
    pub refresh_interval: Duration,
    pub min_refresh_interval: Duration,
    pub fetch_timeout: Duration,
    pub require_keys_at_start: bool,
}

/// The endpoints a browser login needs, from the provider's discovery document.
#[derive(Debug)]
pub struct OidcEndpoints {
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub end_session_endpoint: Option<String>,
}

/// Counters for metrics and tests.
#[derive(Default)]
pub struct FetchStats {
    pub attempts: AtomicU64,
    pub failures: AtomicU64,
}

struct FetchState {
    /// When the last fetch (of any kind) started.
    last_attempt: Option<Instant>,
    /// The JWKS URL, once discovery found it.
    jwks_url: Option<String>,
}

/// The remote side of a provider: fetches, rotation, the unknown-kid guard.
pub struct Remote {
    provider: Box<str>,
    issuer: Box<str>,
    allowed: Box<[Algorithm]>,
    source: RemoteSource,
    settings: RefreshSettings,
    http: reqwest::Client,
    static_keys: Vec<Arc<VerifyKey>>,
    keys: Arc<ArcSwap<KeySet>>,
    /// Single-flight: whoever holds it fetches; others wait, then see the result.
    state: tokio::sync::Mutex<FetchState>,
    /// kid -> when it was found unknown after a fetch.
    unknown_kids: Mutex<HashMap<Box<str>, Instant>>,
    /// Set by a successful discovery that names the login endpoints.
    endpoints: ArcSwapOption<OidcEndpoints>,
    pub stats: FetchStats,
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{0}")]
    Transport(String),
    #[error("{0}")]
    Invalid(String),
    /// Discovery names another issuer: a configuration error, not an outage.
    #[error("{0}")]
    IssuerMismatch(String),
}

impl Remote {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        provider: &str,
        issuer: &str,
        allowed: &[Algorithm],
        source: RemoteSource,
        settings: RefreshSettings,
        http: reqwest::Client,
        static_keys: Vec<Arc<VerifyKey>>,
        keys: Arc<ArcSwap<KeySet>>,
    ) -> Self {
        Remote {
            provider: provider.into(),
            issuer: issuer.into(),
            allowed: allowed.into(),
            source,
            settings,
            http,
            static_keys,
            keys,
            state: tokio::sync::Mutex::new(FetchState {
                last_attempt: None,
                jwks_url: None,
            }),
            unknown_kids: Mutex::new(HashMap::new()),
            endpoints: ArcSwapOption::empty(),
            stats: FetchStats::default(),
        }
    }

    pub fn settings(&self) -> &RefreshSettings {
        &self.settings
    }

    /// The client that talks to this IdP (its `ca_file`, its `fetch_timeout`).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The login endpoints of the discovery document; when no discovery has succeeded yet,
    /// one fetch now (single-flight with the key refresh).
    pub async fn oidc_endpoints(&self) -> Result<Arc<OidcEndpoints>, FetchError> {
        if let Some(endpoints) = self.endpoints.load_full() {
            return Ok(endpoints);
        }
        let fetched = self.fetch().await;
        match (self.endpoints.load_full(), fetched) {
            (Some(endpoints), _) => Ok(endpoints),
            (None, Err(error)) => Err(error),
            (None, Ok(_)) => Err(FetchError::Invalid(format!(
                "provider {}: no discovery document with authorization_endpoint and token_endpoint",
                self.provider
            ))),
        }
    }

    /// Called for a token whose `kid` no key has. Returns true when a refetch brought a key
    /// with that kid, so the token deserves a second verification.
    pub async fn refresh_for_unknown_kid(&self, kid: &str) -> bool {
        if self.recently_unknown(kid) {
            return false;
        }
        let mut state = self.state.lock().await;
        // Another request may have fetched while this one waited.
        if self.keys.load().knows_kid(kid) {
            return true;
        }
        let allowed = state
            .last_attempt
            .is_none_or(|t| t.elapsed() >= self.settings.min_refresh_interval);
        if allowed && self.fetch_locked(&mut state).await.is_ok() && self.keys.load().knows_kid(kid)
        {
            return true;
        }
        self.remember_unknown(kid);
        false
    }

    fn recently_unknown(&self, kid: &str) -> bool {
        let unknown = self.unknown_kids.lock().unwrap_or_else(|e| e.into_inner());
        unknown
            .get(kid)
            .is_some_and(|t| t.elapsed() < self.settings.min_refresh_interval)
    }

    fn remember_unknown(&self, kid: &str) {
        let mut unknown = self.unknown_kids.lock().unwrap_or_else(|e| e.into_inner());
        if unknown.len() >= MAX_UNKNOWN_KIDS {
            let window = self.settings.min_refresh_interval;
            unknown.retain(|_, t| t.elapsed() < window);
            if unknown.len() >= MAX_UNKNOWN_KIDS {
                unknown.clear();
            }
        }
        unknown.insert(kid.into(), Instant::now());
    }

    /// Fetches now (waiting for a fetch in flight instead of starting a second one).
    pub async fn fetch(&self) -> Result<Duration, FetchError> {
        let mut state = self.state.lock().await;
        self.fetch_locked(&mut state).await
    }

    /// Returns how long until the next scheduled refresh.
    async fn fetch_locked(&self, state: &mut FetchState) -> Result<Duration, FetchError> {
        state.last_attempt = Some(Instant::now());
        self.stats.attempts.fetch_add(1, Ordering::Relaxed);
        let result = self.fetch_keys(state).await;
        match &result {
            Ok(_) => {}
            Err(error) => {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(provider = %self.provider, %error, "key fetch failed; keeping the last good keys");
            }
        }
        result
    }

    async fn fetch_keys(&self, state: &mut FetchState) -> Result<Duration, FetchError> {
        let jwks_url = match (&self.source, &state.jwks_url) {
            (RemoteSource::Jwks(url), _) => url.clone(),
            (RemoteSource::Discovery(_), Some(url)) => url.clone(),
            (RemoteSource::Discovery(base), None) => {
                let url = self.discover(base).await?;
                state.jwks_url = Some(url.clone());
                url
            }
        };
        let (body, max_age) = self.get(&jwks_url).await?;
        let (remote_keys, skipped) =
            parse_jwks(&body, &self.allowed, &jwks_url).map_err(FetchError::Invalid)?;
        if remote_keys.is_empty() {
            return Err(FetchError::Invalid(format!(
                "{jwks_url} has no usable key ({})",
                skipped.join("; ")
            )));
        }
        if !skipped.is_empty() {
            tracing::debug!(provider = %self.provider, skipped = %skipped.join("; "), "JWKS keys skipped");
        }
        // Keep the key objects (and ids) of keys that did not change, so cached
        // verifications stay valid across refreshes; new material gets new ids.
        let previous = self.keys.load();
        let mut keys = self.static_keys.clone();
        let kept_before = keys.len();
        for key in remote_keys {
            let same = previous.keys[kept_before.min(previous.keys.len())..]
                .iter()
                .find(|old| old.kid == key.kid && old.alg == key.alg && same_material(old, &key));
            keys.push(same.cloned().unwrap_or_else(|| Arc::new(key)));
        }
        let count = keys.len() - kept_before;
        self.keys.store(Arc::new(KeySet {
            keys,
            fetched_at: Some(Instant::now()),
        }));
        self.unknown_kids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        tracing::info!(provider = %self.provider, keys = count, url = %jwks_url, "keys fetched");
        let next = max_age.unwrap_or(self.settings.refresh_interval).clamp(
            self.settings.min_refresh_interval,
            self.settings
                .refresh_interval
                .max(self.settings.min_refresh_interval),
        );
        Ok(next)
    }

    async fn discover(&self, base: &str) -> Result<String, FetchError> {
        const WELL_KNOWN: &str = "/.well-known/openid-configuration";
        let url = if base.ends_with(WELL_KNOWN) {
            base.to_owned()
        } else {
            format!("{}{WELL_KNOWN}", base.trim_end_matches('/'))
        };
        let (body, _) = self.get(&url).await?;
        #[derive(serde::Deserialize)]
        struct Discovery {
            issuer: String,
            jwks_uri: String,
            #[serde(default)]
            authorization_endpoint: Option<String>,
            #[serde(default)]
            token_endpoint: Option<String>,
            #[serde(default)]
            end_session_endpoint: Option<String>,
        }
        let doc: Discovery = serde_json::from_slice(&body).map_err(|e| {
            FetchError::Invalid(format!("{url} is not an OpenID configuration: {e}"))
        })?;
        if doc.issuer != *self.issuer {
            return Err(FetchError::IssuerMismatch(format!(
                "{url} names issuer \"{}\" but the provider's issuer is \"{}\"; set issuer to the IdP's exact value",
                doc.issuer, self.issuer
            )));
        }
        if let (Some(authorization_endpoint), Some(token_endpoint)) =
            (doc.authorization_endpoint, doc.token_endpoint)
        {
            self.endpoints.store(Some(Arc::new(OidcEndpoints {
                authorization_endpoint,
                token_endpoint,
                end_session_endpoint: doc.end_session_endpoint,
            })));
        }
        Ok(doc.jwks_uri)
    }

    /// GET with a timeout and a bounded body; returns the body and `Cache-Control: max-age`.
    async fn get(&self, url: &str) -> Result<(Vec<u8>, Option<Duration>), FetchError> {
        let transport = |e: reqwest::Error| {
            FetchError::Transport(format!("{url}: {}", crate::telemetry::error_chain(&e)))
        };
        let response = self
            .http
            .get(url)
            .timeout(self.settings.fetch_timeout)
            .send()
            .await
            .map_err(transport)?;
        if !response.status().is_success() {
            return Err(FetchError::Transport(format!(
                "{url}: HTTP {}",
                response.status()
            )));
        }
        let max_age = response
            .headers()
            .get(http::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(max_age);
        Ok((bounded_body(response, url).await?, max_age))
    }
}

/// An IdP response body, refused beyond `MAX_IDP_BODY` (a bound on memory per fetch).
pub async fn bounded_body(
    mut response: reqwest::Response,
    url: &str,
) -> Result<Vec<u8>, FetchError> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| {
        FetchError::Transport(format!("{url}: {}", crate::telemetry::error_chain(&e)))
    })? {
        if body.len() + chunk.len() > MAX_IDP_BODY {
            return Err(FetchError::Invalid(format!(
                "{url}: body larger than {MAX_IDP_BODY} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn same_material(a: &VerifyKey, b: &VerifyKey) -> bool {
    use jsonwebtoken::DecodingKeyKind as K;
    a.family == b.family
        && match (a.key.kind(), b.key.kind()) {
            (K::SecretOrDer(x), K::SecretOrDer(y)) => x == y,
            (K::RsaModulusExponent { n: n1, e: e1 }, K::RsaModulusExponent { n: n2, e: e2 }) => {
                n1 == n2 && e1 == e2
            }
            _ => false,
        }
}

fn max_age(cache_control: &str) -> Option<Duration> {
    cache_control.split(',').find_map(|directive| {
        let (name, value) = directive.trim().split_once('=')?;
        name.eq_ignore_ascii_case("max-age")
            .then(|| {
                value
                    .trim_matches('"')
                    .parse()
                    .ok()
                    .map(Duration::from_secs)
            })
            .flatten()
    })
}

/// Starts fetching: the first fetch (retried with backoff), then periodic refreshes, in a
/// task that ends when the provider is dropped (its snapshot replaced).
///
/// Waits for the first attempt (at most `deadline`): a discovery document naming another
/// issuer is a configuration error and fails the start; with `require_keys_at_start`, so
/// does having no key when the deadline passes. Otherwise an unreachable IdP only delays
/// this provider's tokens, never the start.
pub async fn start(remote: &Arc<Remote>, deadline: Duration) -> Result<(), FetchError> {
    let (outcomes_tx, mut outcomes) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(refresh_loop(Arc::downgrade(remote), outcomes_tx));
    let required = remote.settings.require_keys_at_start;
    let wait = async {
        while let Some(outcome) = outcomes.recv().await {
            match outcome {
                Ok(()) => return Ok(()),
                Err(FetchError::IssuerMismatch(m)) => return Err(FetchError::IssuerMismatch(m)),
                Err(_) if !required => return Ok(()),
                Err(_) => continue,
            }
        }
        Ok(())
    };
    match tokio::time::timeout(deadline, wait).await {
        Ok(result) => result,
        Err(_) if !required => Ok(()),
        Err(_) => Err(FetchError::Transport(format!(
            "no keys within {deadline:?} and require_keys_at_start is set"
        ))),
    }
}

async fn refresh_loop(
    weak: Weak<Remote>,
    outcomes: tokio::sync::mpsc::UnboundedSender<Result<(), FetchError>>,
) {
    let mut backoff = Duration::from_millis(250);
    loop {
        let Some(remote) = weak.upgrade() else { return };
        let wait = match remote.fetch().await {
            Ok(next) => {
                backoff = Duration::from_millis(250);
                let _ = outcomes.send(Ok(()));
                next
            }
            Err(FetchError::IssuerMismatch(message)) => {
                tracing::error!(provider = %remote.provider, %message, "discovery issuer mismatch; not retrying");
                let _ = outcomes.send(Err(FetchError::IssuerMismatch(message)));
                return;
            }
            Err(error) => {
                let _ = outcomes.send(Err(error));
                // Retry quickly while there are no keys at all, calmly once there are.
                let has_keys = remote.keys.load().fetched_at.is_some();
                let wait = if has_keys {
                    remote.settings.min_refresh_interval
                } else {
                    backoff
                };
                backoff = (backoff * 2).min(
                    remote
                        .settings
                        .min_refresh_interval
                        .max(Duration::from_secs(1)),
                );
                wait
            }
        };
        drop(remote);
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_is_read() {
        assert_eq!(
            max_age("public, max-age=600"),
            Some(Duration::from_secs(600))
        );
        assert_eq!(max_age("Max-Age=5"), Some(Duration::from_secs(5)));
        assert_eq!(max_age("no-cache"), None);
        assert_eq!(max_age("max-age=abc"), None);
    }
}
