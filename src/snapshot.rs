//! The immutable compiled config, and the one `ArcSwap` that holds the current one.
//!
//! Everything a request consults (routes, providers and their keys, upstream clients,
//! identity policy, trusted proxies, TLS config) lives in one `Snapshot`, loaded once per
//! request, so a request never sees half of one config and half of another.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use ipnet::IpNet;

use crate::auth::cache::TokenCache;
use crate::auth::jwt::Provider;
use crate::identity::IdentityPolicy;
use crate::metrics::{Metrics, RouteMetrics, write_family};
use crate::router::RouteTable;
use crate::upstream::Upstream;

/// The config in force.
pub type SharedSnapshot = Arc<ArcSwap<Snapshot>>;

pub struct Snapshot {
    pub server: ServerSettings,
    pub routes: RouteTable,
    pub providers: Vec<Provider>,
    pub upstreams: Vec<Upstream>,
    pub identity: IdentityPolicy,
    /// `[login]`: browser sessions through an OpenID provider.
    pub login: Option<crate::session::Login>,
    pub trusted_proxies: Vec<IpNet>,
    /// The files the config names (certificates, keys, secrets), watched with it.
    pub files: Vec<PathBuf>,
    /// `[tls] client_ca` set: which name of a client certificate is its `sub`.
    pub client_cert_order: Option<Box<[crate::auth::client_cert::NameKind]>>,
    /// `[redis]`: the shared revocation denylist.
    pub denylist: Option<Arc<crate::revocation::Denylist>>,
    /// `[api_keys]`: the keys of `auth = "api_key"` routes.
    pub api_keys: Option<crate::auth::api_keys::ApiKeys>,
    /// `[forward_auth] path`: the forward-auth endpoint on the listeners (`forward_auth`).
    pub forward_auth: Option<Box<str>>,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Verified tokens of this config (a new config starts with an empty cache).
    pub token_cache: TokenCache,
    /// The file this was compiled from.
    pub source: PathBuf,
    /// Short hash of the file's text.
    pub config_hash: String,
    /// Process-wide metrics (shared by every snapshot of this process).
    pub metrics: Arc<Metrics>,
    /// Counters for requests that matched no route.
    pub unrouted: RouteMetrics,
    /// `[[tests]]`, run by `check`.
    pub rule_tests: Vec<RuleTest>,
    /// Set once the remote key refresh of this snapshot was started.
    pub key_refresh_started: std::sync::atomic::AtomicBool,
}

/// A compiled `[[tests]]` table.
pub struct RuleTest {
    pub name: String,
    pub method: String,
    pub url: String,
    pub claims: Option<crate::auth::claims::Claims>,
    pub expect_status: Option<u16>,
    pub expect_route: Option<String>,
    pub expect_upstream_target: Option<String>,
}

impl Snapshot {
    pub fn shared(self) -> SharedSnapshot {
        Arc::new(ArcSwap::from_pointee(self))
    }

    /// Starts fetching the keys of remote providers and keeps them fresh while this snapshot
    /// lives. Fails only for providers with `require_keys_at_start` that got no key in time,
    /// or whose discovery document names another issuer.
    ///
    /// Also starts resolving the upstreams' target names and their health checks (on the calling
    /// runtime, the first worker's).
    pub async fn start_key_refresh(&self) -> Result<(), String> {
        if self
            .key_refresh_started
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return Ok(());
        }
        for upstream in &self.upstreams {
            upstream.start_tasks();
        }
        if let Some(denylist) = &self.denylist {
            denylist.start();
            // The shared rate limits must not wait for a connection on a request.
            let _ = denylist.link.ready_connection();
        }
        for provider in &self.providers {
            if let Some(remote) = &provider.remote {
                let settings = remote.settings();
                let deadline = if settings.require_keys_at_start {
                    settings.fetch_timeout * 3 + settings.min_refresh_interval
                } else {
                    // Discovery and JWKS: two requests.
                    settings.fetch_timeout * 2
                };
                crate::auth::remote::start(remote, deadline)
                    .await
                    .map_err(|e| format!("providers.{}: {e}", provider.name))?;
            }
        }
        Ok(())
    }

    /// `/metrics`: the registry plus what describes this config right now.
    pub fn render_metrics(&self) -> String {
        let mut extra = String::new();
        let now = tokio::time::Instant::now();
        let mut ages = Vec::new();
        let mut fetches = Vec::new();
        for provider in &self.providers {
            let Some(remote) = &provider.remote else {
                continue;
            };
            let label = format!("{{provider=\"{}\"}}", provider.name);
            let age = provider
                .keys
                .load()
                .fetched_at
                .map_or(-1.0, |t| now.duration_since(t).as_secs_f64());
            ages.push((label.clone(), age));
            let attempts = remote
                .stats
                .attempts
                .load(std::sync::atomic::Ordering::Relaxed);
            let failures = remote
                .stats
                .failures
                .load(std::sync::atomic::Ordering::Relaxed);
            fetches.push((
                format!("{{provider=\"{}\",result=\"ok\"}}", provider.name),
                (attempts - failures) as f64,
            ));
            fetches.push((
                format!("{{provider=\"{}\",result=\"failed\"}}", provider.name),
                failures as f64,
            ));
        }
        write_family(
            &mut extra,
            "jwks_key_age_seconds",
            "gauge",
            "Seconds since the provider's keys were fetched (-1: never)",
            &ages,
        );
        write_family(
            &mut extra,
            "jwks_fetches",
            "counter",
            "JWKS fetches by provider and result",
            &fetches,
        );
        let cache = &self.token_cache;
        let lookups = [
            (
                "{result=\"hit\"}".to_owned(),
                cache.hits.load(std::sync::atomic::Ordering::Relaxed) as f64,
            ),
            (
                "{result=\"miss\"}".to_owned(),
                cache.misses.load(std::sync::atomic::Ordering::Relaxed) as f64,
            ),
        ];
        write_family(
            &mut extra,
            "token_cache_lookups",
            "counter",
            "Verified-token cache lookups (this config)",
            &lookups,
        );
        write_family(
            &mut extra,
            "token_cache_entries",
            "gauge",
            "Verified tokens cached",
            &[(String::new(), cache.len() as f64)],
        );
        if let Some(denylist) = &self.denylist {
            write_family(
                &mut extra,
                "revocation_synced",
                "gauge",
                "1 while the revocation denylist is in step with Redis, 0 while Redis is unreachable",
                &[(String::new(), f64::from(u8::from(denylist.synced())))],
            );
            write_family(
                &mut extra,
                "revocations",
                "gauge",
                "Revocations in force on this instance",
                &[(String::new(), denylist.len() as f64)],
            );
        }
        let mut healthy = Vec::new();
        let (mut requests, mut errors, mut ejections) = (Vec::new(), Vec::new(), Vec::new());
        for upstream in &self.upstreams {
            let Some(targets) = upstream.targets() else {
                continue;
            };
            for pool in targets.pools.iter() {
                // A named target resolved for balancing: a series per address.
                let label = match pool.addr() {
                    None => format!(
                        "{{upstream=\"{}\",target=\"{}\"}}",
                        upstream.name,
                        pool.authority()
                    ),
                    Some(addr) => format!(
                        "{{upstream=\"{}\",target=\"{}\",address=\"{addr}\"}}",
                        upstream.name,
                        pool.authority()
                    ),
                };
                let state = &pool.state;
                let count = |c: &std::sync::atomic::AtomicU64| {
                    c.load(std::sync::atomic::Ordering::Relaxed) as f64
                };
                healthy.push((label.clone(), f64::from(u8::from(state.available()))));
                if targets.pools.len() == 1 {
                    continue;
                }
                requests.push((label.clone(), count(&state.requests)));
                errors.push((label.clone(), count(&state.errors)));
                ejections.push((label, count(&state.ejections)));
            }
        }
        write_family(
            &mut extra,
            "upstream_target_healthy",
            "gauge",
            "1 while a target takes requests (passes its health checks, not ejected)",
            &healthy,
        );
        for (name, help, values) in [
            (
                "upstream_target_requests",
                "Requests sent to a target of a several-target upstream",
                &requests,
            ),
            (
                "upstream_target_errors",
                "Failed requests (no connection, a broken answer, a 502) by target",
                &errors,
            ),
            (
                "upstream_target_ejections",
                "Times a target was taken out after consecutive failures",
                &ejections,
            ),
        ] {
            write_family(&mut extra, name, "counter", help, values);
        }
        self.metrics.render(&extra)
    }

    /// Whether `peer` is one of `server.trusted_proxies`.
    /// The name of what vouched for an identity (`Identity::provider`): a provider's name,
    /// or `api_keys`.
    pub fn provider_name(&self, provider: usize) -> &str {
        match provider {
            crate::auth::API_KEYS => "api_keys",
            crate::auth::CLIENT_CERT => "client_cert",
            _ => self.providers.get(provider).map_or("-", |p| &*p.name),
        }
    }

    pub fn is_trusted(&self, peer: IpAddr) -> bool {
        !self.trusted_proxies.is_empty() && self.trusted_proxies.iter().any(|n| n.contains(&peer))
    }
}

/// Connection-level settings from `[server]`.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    /// `request_id`: the field carrying each request's id (see `proxy::request_id`).
    pub request_id: Option<http::HeaderName>,
    /// `admin_token_env` / `admin_token_file`: required by the admin endpoints but health.
    pub admin_token: Option<Arc<str>>,
    /// `health`: the probe-only listener.
    pub health: Option<SocketAddr>,
    /// `[forward_auth] listen`: a listener for the forward-auth endpoint alone.
    pub forward_auth: Option<SocketAddr>,
    pub watch_config: bool,
    pub header_read_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    pub shutdown_grace: Duration,
    /// Accepting on after the shutdown signal, not ready (see `server::serve_listeners`).
    pub shutdown_delay: Duration,
    /// `TCP_DEFER_ACCEPT` on the client listeners, whole seconds (see `server::sockopt`).
    pub defer_accept: Duration,
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_uri_bytes: usize,
    pub max_body_size: Option<u64>,
    pub request_body_timeout: Duration,
    pub http2_max_concurrent_streams: u32,
    /// Longest time a write to the client may make no progress.
    pub client_write_timeout: Duration,
    /// Origins allowed to send cookie-authenticated unsafe requests (`csrf`).
    pub trusted_origins: Vec<crate::csrf::Origin>,
}
