//! Raw config to runtime types. All validation happens here, once, never per request.
//!
//! Each problem becomes a [`ConfigIssue`] naming its TOML key and the fix; compiling goes on
//! after a problem so that one run reports them all.

use std::sync::Arc;

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::duration;
use super::error::{ConfigError, ConfigIssue};
use super::raw::*;
use crate::metrics::Metrics;
use crate::policy::RouteAuth;
use crate::router::RouteTable;
use crate::snapshot::Snapshot;

mod identity;
mod login;
mod providers;
mod routes;
mod rule_tests;
mod server;
mod upstreams;

struct Compiler {
    base: PathBuf,
    issues: Vec<ConfigIssue>,
    metrics: Arc<Metrics>,
    /// A `[login]` table is present (routes may name "session").
    login_configured: bool,
    /// An `[api_keys]` table is present (routes may name "api_key").
    api_keys_configured: bool,
    /// `[redis]`: the shared Redis, for `rate_limit.shared = "redis"`.
    redis_link: Option<Arc<crate::redis_link::RedisLink>>,
    /// `[tls] client_ca` is set (routes may name "mtls"): the `identity_from` order.
    client_cert_order: Option<Box<[crate::auth::client_cert::NameKind]>>,
    /// `[login] forward_access_token` / `forward_id_token`: the routes' default.
    login_token_headers: crate::policy::SessionTokenHeaders,
    /// The system's trusted roots, read at the first `https://` upstream of this config.
    system_roots: Option<Arc<[rustls_pki_types::CertificateDer<'static>]>>,
    /// Every file the config names (certificates, keys, CA bundles, secrets): the config
    /// watch reloads when one of them changes.
    files: std::cell::RefCell<Vec<PathBuf>>,
}

/// What a new snapshot inherits from the one it replaces.
pub struct Inherited<'a> {
    pub metrics: Arc<Metrics>,
    pub previous: Option<&'a Snapshot>,
}

pub fn compile(
    mut raw: RawConfig,
    source: PathBuf,
    config_hash: String,
    inherited: Inherited<'_>,
) -> Result<Snapshot, ConfigError> {
    let base = source.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut c = Compiler {
        base,
        issues: Vec::new(),
        metrics: inherited.metrics.clone(),
        login_configured: raw.login.is_some(),
        api_keys_configured: raw.api_keys.is_some(),
        client_cert_order: None,
        redis_link: None,
        login_token_headers: Default::default(),
        system_roots: None,
        files: Default::default(),
    };
    let mut server = c.server(&raw.server);
    let trusted_proxies = c.trusted_proxies(&raw.server.trusted_proxies);
    let forward_auth = c.forward_auth(raw.forward_auth.as_ref(), &trusted_proxies);
    server.forward_auth = c.forward_auth_listen(raw.forward_auth.as_ref());
    let tls = c.tls(raw.tls.as_ref(), server.https.is_some());
    let (provider_names, providers) = c.providers(&raw.providers);
    let (upstream_names, mut upstreams) = c.upstreams(&raw.upstreams);
    if let Some(previous) = inherited.previous {
        for upstream in &mut upstreams {
            upstream.adopt_pool(&previous.upstreams);
        }
    }
    let login = c.login(
        raw.login.as_ref(),
        &raw.providers,
        &provider_names,
        &providers,
        inherited.previous,
    );
    let mut login = login;
    let denylist = raw.redis.as_ref().and_then(|raw| {
        let kept = inherited.previous.and_then(|p| p.denylist.clone());
        c.denylist(raw, kept)
    });
    c.redis_link = denylist.as_ref().map(|d| d.link.clone());
    let api_keys = raw.api_keys.as_ref().and_then(|raw| c.api_keys(raw));
    let mut identity = c.identity(&raw.identity);
    if let Some(keys) = &api_keys {
        identity.set_api_key_source(keys.header().clone(), keys.scheme().into());
    }
    if let Some(login) = &login {
        identity.set_own_cookies(login.own_cookie_names());
    }
    let rule_tests = c.rule_tests(&raw.tests);
    let (mut routes, route_names) = c.routes(
        std::mem::take(&mut raw.routes),
        &provider_names,
        &upstream_names,
    );
    if let Some(previous) = inherited.previous {
        // An unchanged limit keeps its counts across the reload. By name through a map: a
        // search of the old routes for each new one made a 100k-route reload take minutes.
        let old_limits: std::collections::HashMap<&str, _> = previous
            .routes
            .routes()
            .iter()
            .filter_map(|old| Some((&*old.name, old.rate_limit.as_ref()?)))
            .collect();
        for route in &mut routes {
            if let Some(new) = &mut route.rate_limit
                && let Some(old) = old_limits.get(&*route.name)
                && new.same_settings(old)
            {
                *new = (*old).clone();
            }
        }
    }
    // The session-token headers: every configured one (and the usual names) is stripped
    // from clients; sessions keep the tokens some route forwards.
    let mut token_headers = vec![
        http::HeaderName::from_static("x-forwarded-access-token"),
        http::HeaderName::from_static("x-forwarded-id-token"),
    ];
    let configured = routes
        .iter()
        .map(|r| &r.session_tokens)
        .chain([&c.login_token_headers]);
    for headers in configured {
        for name in [&headers.access, &headers.id].into_iter().flatten() {
            if !token_headers.contains(name) {
                token_headers.push(name.clone());
            }
        }
    }
    identity.set_token_headers(token_headers);
    if let Some(login) = &mut login {
        login.keep_access_token = routes.iter().any(|r| r.session_tokens.access.is_some());
        login.keep_id_token = routes.iter().any(|r| r.session_tokens.id.is_some());
    }
    identity.set_credential_sources(routes.iter().flat_map(|route| match &route.auth {
        RouteAuth::Protected(policy) => &policy.sources[..],
        RouteAuth::Public => &[],
    }));
    let routes = match RouteTable::new(routes) {
        Ok(table) => {
            c.mapping_exposures(&table, &upstreams);
            Some(table)
        }
        Err(conflicts) => {
            for conflict in conflicts {
                let first = route_names
                    .get(conflict.first)
                    .and_then(Option::as_deref)
                    .unwrap_or("?");
                c.issue(
                    format!("routes[{}]", conflict.second),
                    format!(
                        "matches exactly the same host, path and methods as routes[{}] (\"{first}\"), \
                         so one of them could never match; change its host, path or methods, or merge them",
                        conflict.first
                    ),
                );
            }
            None
        }
    };
    match (routes, c.issues.is_empty()) {
        (Some(routes), true) => Ok(Snapshot {
            token_cache: crate::auth::cache::TokenCache::new(
                raw.server.token_cache_size.unwrap_or(100_000),
            ),
            server,
            routes,
            providers,
            upstreams,
            identity,
            login,
            trusted_proxies,
            forward_auth,
            denylist,
            api_keys,
            client_cert_order: c.client_cert_order.take(),
            files: c.files.take(),
            tls,
            source,
            config_hash,
            rule_tests,
            key_refresh_started: Default::default(),
            unrouted: inherited.metrics.route("-"),
            metrics: inherited.metrics,
        }),
        _ => Err(ConfigError::Invalid {
            path: source,
            issues: c.issues,
        }),
    }
}

impl Compiler {
    fn issue(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.issues.push(ConfigIssue::new(key, message));
    }

    fn path(&self, file: &str) -> PathBuf {
        let path = self.base.join(file);
        let mut files = self.files.borrow_mut();
        if !files.contains(&path) {
            files.push(path.clone());
        }
        path
    }

    fn duration(&mut self, key: &str, value: Option<&String>, default: Duration) -> Duration {
        match value.map(|v| duration::parse(v)) {
            None => default,
            Some(Ok(d)) => d,
            Some(Err(message)) => {
                self.issue(key, message);
                default
            }
        }
    }

    /// A timeout or interval: as [`Self::duration`], and never zero. A zero timeout would
    /// expire at once, every time (`header_read_timeout = "0s"` closes every connection
    /// before its first request), and a zero refresh interval would refetch keys in a loop.
    /// Keys where 0 means something (`leeway`, `shutdown_grace`, `cache_ttl`,
    /// `pool_idle_timeout`) use [`Self::duration`].
    fn period(&mut self, key: &str, value: Option<&String>, default: Duration) -> Duration {
        let period = self.duration(key, value, default);
        if !period.is_zero() {
            return period;
        }
        // Every default is whole seconds.
        debug_assert_eq!(default.subsec_nanos(), 0, "{key}");
        let example = default.as_secs();
        self.issue(
            key,
            format!("must be more than 0 (0 would expire at once, every time); write e.g. \"{example}s\" (the default)"),
        );
        default
    }

    /// A Redis URL given as `url` or through the environment variable `env` (exactly one;
    /// `keys`: their TOML keys); `missing` says what to write when neither is set.
    fn redis_url(
        &mut self,
        keys: (&str, &str),
        url: Option<&String>,
        env: Option<&String>,
        missing: &str,
    ) -> Option<String> {
        match (url, env) {
            (Some(url), None) => Some(url.clone()),
            (None, Some(var)) => std::env::var(var).ok().or_else(|| {
                self.issue(
                    keys.1,
                    format!("environment variable {var} is not set; export it before starting"),
                );
                None
            }),
            (Some(_), Some(_)) => {
                self.issue(
                    keys.0,
                    format!("set either {} or {}, not both", keys.0, keys.1),
                );
                None
            }
            (None, None) => {
                self.issue(keys.0, missing);
                None
            }
        }
    }

    /// The PEM CA bundle `file` trusted for a TLS (`rediss`) Redis `url`.
    fn redis_ca(&mut self, key: &str, url: &str, file: Option<&String>) -> Option<Vec<u8>> {
        let path = self.path(file?);
        match std::fs::read(&path) {
            Ok(pem) if url.starts_with("rediss") => Some(pem),
            Ok(_) => {
                self.issue(key, "only applies to TLS; use a rediss:// URL");
                None
            }
            Err(e) => {
                self.issue(key, format!("cannot read {}: {e}", path.display()));
                None
            }
        }
    }

    fn positive(&mut self, key: &str, value: Option<usize>, default: usize) -> usize {
        match value {
            None => default,
            Some(0) => {
                self.issue(key, "must be at least 1");
                default
            }
            Some(v) => v,
        }
    }

    fn size(&mut self, key: &str, value: Option<&RawSize>) -> Option<u64> {
        match value? {
            RawSize::Bytes(0) => None.or_else(|| {
                self.issue(key, "must be more than 0");
                None
            }),
            RawSize::Bytes(n) => Some(*n),
            RawSize::Text(text) => match super::size::parse(text) {
                Ok(n) => Some(n),
                Err(message) => {
                    self.issue(key, message);
                    None
                }
            },
        }
    }
}
