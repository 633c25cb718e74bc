//! Raw config to runtime types. All validation happens here, once, never per request.
//!
//! Each problem becomes a [`ConfigIssue`] naming its TOML key and the fix; compiling goes on
//! after a problem so that one run reports them all.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use arc_swap::ArcSwap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use http::header::HeaderName;
use http::{Method, Uri};
use ipnet::IpNet;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};

use super::duration;
use super::error::{ConfigError, ConfigIssue};
use super::raw::*;
use crate::auth::jwt::{Provider, VerifyKey};
use crate::auth::keys::{KeySet, RefreshSettings, Remote, RemoteSource};
use crate::canonical::{canonical_host, canonical_path};
use crate::csrf::CsrfPolicy;
use crate::identity::IdentityPolicy;
use crate::metrics::Metrics;
use crate::policy::{ClaimRequirement, Policy, RouteAuth, TokenSource, Unauthenticated};
use crate::readings::PathSemantics;
use crate::router::{HostMatch, PathMatch, Route, RouteTable};
use crate::snapshot::ServerSettings;
use crate::snapshot::Snapshot;
use crate::upstream::{PoolSettings, Upstream};

mod login;

const ALL_ALGORITHMS: &str =
    "HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA";

struct Compiler {
    base: PathBuf,
    issues: Vec<ConfigIssue>,
    metrics: Arc<Metrics>,
    /// A `[login]` table is present (routes may name "session").
    login_configured: bool,
}

/// What a new snapshot inherits from the one it replaces.
pub struct Inherited<'a> {
    pub metrics: Arc<Metrics>,
    pub previous: Option<&'a Snapshot>,
}

pub fn compile(
    raw: RawConfig,
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
    };
    let server = c.server(&raw.server);
    let trusted_proxies = c.trusted_proxies(&raw.server.trusted_proxies);
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
    let mut identity = c.identity(&raw.identity);
    if let Some(login) = &login {
        identity.set_own_cookies(login.own_cookie_names());
    }
    let rule_tests = c.rule_tests(&raw.tests);
    let routes = c.routes(&raw.routes, &provider_names, &upstream_names);
    identity.set_credential_sources(routes.iter().flat_map(|route| match &route.auth {
        RouteAuth::Protected(policy) => &policy.sources[..],
        RouteAuth::Public => &[],
    }));
    let routes = match RouteTable::new(routes) {
        Ok(table) => Some(table),
        Err(conflicts) => {
            for conflict in conflicts {
                let first = raw.routes[conflict.first].name.as_deref().unwrap_or("?");
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
        self.base.join(file)
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

    fn server(&mut self, raw: &RawServer) -> ServerSettings {
        let mut addr = |key: &str, value: &Option<String>| -> Option<SocketAddr> {
            let text = value.as_ref()?;
            match text.parse() {
                Ok(addr) => Some(addr),
                Err(_) => {
                    self.issue(
                        key,
                        format!("\"{text}\" is not a listen address; write IP:PORT such as \"127.0.0.1:8080\" or \"[::]:8443\""),
                    );
                    None
                }
            }
        };
        let http = addr("server.http", &raw.http);
        let https = addr("server.https", &raw.https);
        let admin = addr("server.admin", &raw.admin);
        if raw.http.is_none() && raw.https.is_none() {
            self.issue(
                "server",
                "no listener; set server.http = \"127.0.0.1:8080\" and/or server.https",
            );
        }
        ServerSettings {
            http,
            https,
            admin,
            watch_config: raw.watch_config.unwrap_or(true),
            header_read_timeout: self.period(
                "server.header_read_timeout",
                raw.header_read_timeout.as_ref(),
                Duration::from_secs(10),
            ),
            tls_handshake_timeout: self.period(
                "server.tls_handshake_timeout",
                raw.tls_handshake_timeout.as_ref(),
                Duration::from_secs(10),
            ),
            shutdown_grace: self.duration(
                "server.shutdown_grace",
                raw.shutdown_grace.as_ref(),
                Duration::from_secs(30),
            ),
            max_connections: self.positive("server.max_connections", raw.max_connections, 10_000),
            max_header_bytes: self
                .size("server.max_header_bytes", raw.max_header_bytes.as_ref())
                .unwrap_or(32 << 10) as usize,
            max_headers: self.positive("server.max_headers", raw.max_headers, 100),
            max_uri_bytes: self
                .size("server.max_uri_bytes", raw.max_uri_bytes.as_ref())
                .unwrap_or(8 << 10) as usize,
            max_body_size: self.size("server.max_body_size", raw.max_body_size.as_ref()),
            request_body_timeout: self.period(
                "server.request_body_timeout",
                raw.request_body_timeout.as_ref(),
                Duration::from_secs(30),
            ),
            http2_max_concurrent_streams: self.positive(
                "server.http2_max_concurrent_streams",
                raw.http2_max_concurrent_streams.map(|v| v as usize),
                100,
            ) as u32,
            client_write_timeout: self.period(
                "server.client_write_timeout",
                raw.client_write_timeout.as_ref(),
                Duration::from_secs(60),
            ),
            trusted_origins: self.trusted_origins(&raw.trusted_origins),
        }
    }

    fn trusted_origins(&mut self, raw: &[String]) -> Vec<crate::csrf::Origin> {
        let mut origins = Vec::new();
        for (i, text) in raw.iter().enumerate() {
            match crate::csrf::Origin::parse(text) {
                Some(origin) => origins.push(origin),
                None => self.issue(
                    format!("server.trusted_origins[{i}]"),
                    format!("\"{text}\" is not an origin; write scheme://host[:port], e.g. \"https://portal.example.com\" (no path)"),
                ),
            }
        }
        origins
    }

    fn rule_tests(&mut self, raw: &[RawRuleTest]) -> Vec<crate::snapshot::RuleTest> {
        let mut tests = Vec::new();
        for (i, t) in raw.iter().enumerate() {
            let key = format!("tests[{i}]");
            let Some(name) = t.name.clone() else {
                self.issue(
                    format!("{key}.name"),
                    "required; name the test for the report",
                );
                continue;
            };
            let Some((method, url)) = t.request.as_deref().and_then(|r| r.split_once(' ')) else {
                self.issue(
                    format!("{key}.request"),
                    "required: \"METHOD URL\", e.g. \"GET https://crm.example.com/api/x\"",
                );
                continue;
            };
            if t.expect_status.is_none() && t.expect_route.is_none() {
                self.issue(
                    key.as_str(),
                    "expects nothing; set expect_status and/or expect_route",
                );
                continue;
            }
            let claims = match &t.claims {
                None => None,
                Some(table) => match serde_json::to_value(table).and_then(serde_json::from_value) {
                    Ok(claims) => Some(claims),
                    Err(e) => {
                        self.issue(
                            format!("{key}.claims"),
                            format!("not usable as claims: {e}"),
                        );
                        continue;
                    }
                },
            };
            tests.push(crate::snapshot::RuleTest {
                name,
                method: method.to_owned(),
                url: url.trim().to_owned(),
                claims,
                expect_status: t.expect_status,
                expect_route: t.expect_route.clone(),
            });
        }
        tests
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

    fn trusted_proxies(&mut self, raw: &[String]) -> Vec<IpNet> {
        let mut nets = Vec::new();
        for (i, text) in raw.iter().enumerate() {
            match IpNet::from_str(text).or_else(|_| IpAddr::from_str(text).map(IpNet::from)) {
                Ok(net) => nets.push(net),
                Err(_) => self.issue(
                    format!("server.trusted_proxies[{i}]"),
                    format!("\"{text}\" is not an IP address or CIDR such as \"10.0.0.0/8\""),
                ),
            }
        }
        nets
    }

    fn tls(
        &mut self,
        raw: Option<&RawTls>,
        https: bool,
    ) -> Option<std::sync::Arc<rustls::ServerConfig>> {
        match (raw, https) {
            (None, false) => None,
            (None, true) => {
                self.issue("tls", "server.https is set but [tls] is missing; add [tls] with cert and key PEM files");
                None
            }
            (Some(_), false) => {
                self.issue("tls", "[tls] is set but server.https is not; add server.https = \"127.0.0.1:8443\" or remove [tls]");
                None
            }
            (Some(raw), true) => {
                let (cert, key) = (self.path(&raw.cert), self.path(&raw.key));
                match crate::tls::server_config(&cert, &key) {
                    Ok(config) => Some(config),
                    Err(message) => {
                        self.issue("tls", message);
                        None
                    }
                }
            }
        }
    }

    fn providers(
        &mut self,
        raw: &BTreeMap<String, RawProvider>,
    ) -> (HashMap<String, usize>, Vec<Provider>) {
        let mut names = HashMap::new();
        let mut providers = Vec::new();
        for (name, raw) in raw {
            if let Some(provider) = self.provider(name, raw) {
                names.insert(name.clone(), providers.len());
                providers.push(provider);
            } else {
                // Keep the name known so routes naming it do not report a second error.
                names.insert(name.clone(), usize::MAX);
            }
        }
        (names, providers)
    }

    fn provider(&mut self, name: &str, raw: &RawProvider) -> Option<Provider> {
        let key = format!("providers.{name}");
        let before = self.issues.len();
        if raw.issuer.is_empty() {
            self.issue(
                format!("{key}.issuer"),
                "must not be empty; set the exact iss value of the tokens",
            );
        }
        if raw.audiences.is_empty() {
            self.issue(
                format!("{key}.audiences"),
                "required; list the aud values this gateway accepts, e.g. audiences = [\"crm\"] \
                 (a token minted for another application must not pass)",
            );
        }
        let mut algorithms = Vec::new();
        for (i, alg) in raw.algorithms.iter().enumerate() {
            match Algorithm::from_str(alg) {
                Ok(a) if !algorithms.contains(&a) => algorithms.push(a),
                Ok(_) => self.issue(
                    format!("{key}.algorithms[{i}]"),
                    format!("\"{alg}\" is listed twice"),
                ),
                Err(_) => self.issue(
                    format!("{key}.algorithms[{i}]"),
                    format!("\"{alg}\" is not a supported algorithm; use one of {ALL_ALGORITHMS}"),
                ),
            }
        }
        if raw.algorithms.is_empty() {
            self.issue(
                format!("{key}.algorithms"),
                format!("required; list the algorithms this issuer signs with, e.g. [\"RS256\"] (from {ALL_ALGORITHMS})"),
            );
        }
        let leeway = self.duration(
            &format!("{key}.leeway"),
            raw.leeway.as_ref(),
            Duration::from_secs(30),
        );
        let mut keys = Vec::new();
        for (i, entry) in raw.public_keys.iter().enumerate() {
            let (file, kid) = match entry {
                RawPublicKey::Path(file) => (file, None),
                RawPublicKey::Detailed(k) => (&k.file, k.kid.as_deref()),
            };
            match self.public_key(file) {
                Ok((family, key_material)) => keys.push(VerifyKey::new(
                    kid.map(Into::into),
                    family,
                    key_material,
                    file.clone(),
                )),
                Err(message) => self.issue(format!("{key}.public_keys[{i}]"), message),
            }
        }
        let uses_hmac = algorithms
            .iter()
            .any(|a| a.family() == AlgorithmFamily::Hmac);
        let secret_key = match (&raw.hmac_secret_env, &raw.hmac_secret_file) {
            (Some(_), Some(_)) => {
                self.issue(format!("{key}.hmac_secret_file"), "set either hmac_secret_env or hmac_secret_file, not both");
                None
            }
            (Some(var), None) => Some((
                format!("{key}.hmac_secret_env"),
                format!("${var}"),
                std::env::var(var).map_err(|_| {
                    format!("environment variable {var} is not set (or not UTF-8); export it before starting")
                }),
            )),
            (None, Some(file)) => {
                let path = self.path(file);
                let secret = std::fs::read_to_string(&path)
                    .map(|s| s.strip_suffix('\n').map(|s| s.strip_suffix('\r').unwrap_or(s)).unwrap_or(&s).to_owned())
                    .map_err(|e| format!("cannot read {}: {e}", path.display()));
                Some((format!("{key}.hmac_secret_file"), file.clone(), secret))
            }
            (None, None) => None,
        };
        match (secret_key, uses_hmac) {
            (Some((secret_key, origin, Ok(secret))), true) => {
                let needed = algorithms
                    .iter()
                    .filter_map(|a| match a {
                        Algorithm::HS256 => Some(32),
                        Algorithm::HS384 => Some(48),
                        Algorithm::HS512 => Some(64),
                        _ => None,
                    })
                    .max()
                    .unwrap_or(32);
                if secret.len() < needed {
                    self.issue(
                        secret_key,
                        format!(
                            "the secret in {origin} is {} bytes; the listed HMAC algorithms need at least {needed} (RFC 7518 section 3.2)",
                            secret.len()
                        ),
                    );
                } else {
                    keys.push(VerifyKey::new(
                        None,
                        AlgorithmFamily::Hmac,
                        DecodingKey::from_secret(secret.as_bytes()),
                        origin,
                    ));
                }
            }
            (Some((secret_key, _, Err(message))), true) => self.issue(secret_key, message),
            (Some((secret_key, _, _)), false) => self.issue(
                secret_key,
                "set, but no HS256/HS384/HS512 in algorithms; add one or remove the secret",
            ),
            (None, true) => self.issue(
                format!("{key}.hmac_secret_env"),
                "algorithms lists an HMAC algorithm; name the environment variable (or hmac_secret_file) holding the secret",
            ),
            (None, false) => {}
        }
        if let Some(file) = &raw.jwks_file {
            let path = self.path(file);
            let loaded = std::fs::read(&path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))
                .and_then(|body| crate::auth::keys::parse_jwks(&body, &algorithms, file));
            match loaded {
                Ok((jwks, _)) if jwks.is_empty() => self.issue(
                    format!("{key}.jwks_file"),
                    format!(
                        "{} has no key usable with algorithms {:?}",
                        path.display(),
                        algorithms
                    ),
                ),
                Ok((jwks, _)) => keys.extend(jwks),
                Err(message) => self.issue(format!("{key}.jwks_file"), message),
            }
        }
        let remote_source = match (&raw.jwks_url, &raw.discovery) {
            (Some(_), Some(_)) => {
                self.issue(
                    format!("{key}.discovery"),
                    "set either discovery or jwks_url, not both",
                );
                None
            }
            (Some(url), None) => self
                .remote_url(&format!("{key}.jwks_url"), url)
                .map(RemoteSource::Jwks),
            (None, Some(url)) => self
                .remote_url(&format!("{key}.discovery"), url)
                .map(RemoteSource::Discovery),
            (None, None) => None,
        };
        if remote_source.is_none() {
            for alg in &algorithms {
                let family = alg.family();
                if family != AlgorithmFamily::Hmac && !keys.iter().any(|k| k.family == family) {
                    self.issue(
                        format!("{key}.algorithms"),
                        format!("{alg:?} is listed but no key of the provider is {} (public_keys, jwks_file, jwks_url or discovery)", family_name(family)),
                    );
                }
            }
        }
        let refresh = RefreshSettings {
            refresh_interval: self.period(
                &format!("{key}.refresh_interval"),
                raw.refresh_interval.as_ref(),
                Duration::from_secs(300),
            ),
            min_refresh_interval: self.period(
                &format!("{key}.min_refresh_interval"),
                raw.min_refresh_interval.as_ref(),
                Duration::from_secs(30),
            ),
            fetch_timeout: self.period(
                &format!("{key}.fetch_timeout"),
                raw.fetch_timeout.as_ref(),
                Duration::from_secs(10),
            ),
            require_keys_at_start: raw.require_keys_at_start,
        };
        let cache_ttl = self.duration(
            &format!("{key}.cache_ttl"),
            raw.cache_ttl.as_ref(),
            Duration::from_secs(300),
        );
        let http = remote_source
            .as_ref()
            .and_then(|_| self.idp_client(&key, raw.ca_file.as_deref(), &refresh));
        if self.issues.len() != before {
            return None;
        }
        let static_keys: Vec<Arc<VerifyKey>> = keys.into_iter().map(Arc::new).collect();
        let key_set = Arc::new(ArcSwap::from_pointee(KeySet {
            keys: static_keys.clone(),
            fetched_at: None,
        }));
        let remote = remote_source.zip(http).map(|(source, http)| {
            Arc::new(Remote::new(
                name,
                &raw.issuer,
                &algorithms,
                source,
                refresh,
                http,
                static_keys,
                key_set.clone(),
            ))
        });
        Some(Provider {
            name: name.into(),
            issuer: raw.issuer.as_str().into(),
            audiences: raw.audiences.iter().map(|a| a.as_str().into()).collect(),
            algorithms: algorithms.into(),
            keys: key_set,
            remote,
            leeway: leeway.as_secs(),
            cache_ttl,
        })
    }

    fn remote_url(&mut self, key: &str, url: &str) -> Option<String> {
        match url.parse::<Uri>() {
            Ok(uri)
                if matches!(uri.scheme_str(), Some("https" | "http"))
                    && uri.authority().is_some() =>
            {
                Some(url.to_owned())
            }
            _ => {
                self.issue(key, format!("\"{url}\" is not an http(s) URL"));
                None
            }
        }
    }

    /// The HTTPS client for one IdP: rustls (aws-lc-rs) with the system roots plus `ca_file`.
    fn idp_client(
        &mut self,
        key: &str,
        ca_file: Option<&str>,
        refresh: &RefreshSettings,
    ) -> Option<reqwest::Client> {
        let mut builder = reqwest::Client::builder()
            .timeout(refresh.fetch_timeout)
            .connect_timeout(refresh.fetch_timeout)
            .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")));
        if let Some(file) = ca_file {
            let path = self.path(file);
            let certs = std::fs::read(&path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))
                .and_then(|pem| {
                    reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                        format!("{} is not a PEM certificate bundle: {e}", path.display())
                    })
                });
            match certs {
                Ok(certs) => {
                    for cert in certs {
                        builder = builder.add_root_certificate(cert);
                    }
                }
                Err(message) => {
                    self.issue(format!("{key}.ca_file"), message);
                    return None;
                }
            }
        }
        match builder.build() {
            Ok(client) => Some(client),
            Err(e) => {
                self.issue(key, format!("cannot build the IdP client: {e}"));
                None
            }
        }
    }

    fn public_key(&self, file: &str) -> Result<(AlgorithmFamily, DecodingKey), String> {
        let path = self.path(file);
        let pem =
            std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if pem.windows(11).any(|w| w == b"PRIVATE KEY") {
            return Err(format!(
                "{} holds a private key; give the public key instead (openssl pkey -in KEY -pubout)",
                path.display()
            ));
        }
        DecodingKey::from_rsa_pem(&pem)
            .map(|k| (AlgorithmFamily::Rsa, k))
            .or_else(|_| DecodingKey::from_ec_pem(&pem).map(|k| (AlgorithmFamily::Ec, k)))
            .or_else(|_| DecodingKey::from_ed_pem(&pem).map(|k| (AlgorithmFamily::Ed, k)))
            .map_err(|_| {
                format!(
                    "{} is not a PEM public key (RSA, EC P-256/P-384 or Ed25519)",
                    path.display()
                )
            })
    }

    fn upstreams(
        &mut self,
        raw: &BTreeMap<String, RawUpstream>,
    ) -> (HashMap<String, usize>, Vec<Upstream>) {
        let mut names = HashMap::new();
        let mut upstreams = Vec::new();
        for (name, raw) in raw {
            let key = format!("upstreams.{name}");
            let timeout = self.period(
                &format!("{key}.timeout"),
                raw.timeout.as_ref(),
                Duration::from_secs(30),
            );
            let body_timeout = self.period(
                &format!("{key}.body_timeout"),
                raw.body_timeout.as_ref(),
                Duration::from_secs(60),
            );
            let pool = PoolSettings {
                connect_timeout: self.period(
                    &format!("{key}.connect_timeout"),
                    raw.connect_timeout.as_ref(),
                    Duration::from_secs(5),
                ),
                max_idle: raw.pool_max_idle.unwrap_or(256),
                idle_timeout: self.duration(
                    &format!("{key}.pool_idle_timeout"),
                    raw.pool_idle_timeout.as_ref(),
                    Duration::from_secs(90),
                ),
            };
            let path_semantics = match raw.path_semantics.as_deref() {
                None => PathSemantics::Strict,
                Some(text) => PathSemantics::parse(text).unwrap_or_else(|| {
                    self.issue(
                        format!("{key}.path_semantics"),
                        format!("\"{text}\" is not one of \"strict\", \"servlet\", \"iis\""),
                    );
                    PathSemantics::Strict
                }),
            };
            let upstream = match (&raw.url, raw.builtin.as_deref()) {
                (Some(url), None) => self
                    .upstream_url(&key, url)
                    .map(|a| Upstream::http(name, a, (timeout, body_timeout), pool, &self.metrics)),
                (None, Some("echo")) => Some(Upstream::echo(name, &self.metrics)),
                (None, Some(other)) => {
                    self.issue(
                        format!("{key}.builtin"),
                        format!("\"{other}\" is not a built-in upstream; the only one is \"echo\""),
                    );
                    None
                }
                (Some(_), Some(_)) => {
                    self.issue(key.as_str(), "set either url or builtin, not both");
                    None
                }
                (None, None) => {
                    self.issue(
                        key.as_str(),
                        "needs url = \"http://host:port\" (or builtin = \"echo\")",
                    );
                    None
                }
            };
            let upstream = upstream.map(|mut u| {
                u.path_semantics = path_semantics;
                u
            });
            names.insert(
                name.clone(),
                upstream.as_ref().map_or(usize::MAX, |_| upstreams.len()),
            );
            upstreams.extend(upstream);
        }
        (names, upstreams)
    }

    fn upstream_url(&mut self, key: &str, url: &str) -> Option<http::uri::Authority> {
        let key = format!("{key}.url");
        let Ok(uri) = url.parse::<Uri>() else {
            self.issue(
                key,
                format!("\"{url}\" is not a URL; write http://host:port"),
            );
            return None;
        };
        if uri.scheme_str() != Some("http") {
            self.issue(
                key,
                format!("\"{url}\": only http:// upstreams are supported for now"),
            );
            return None;
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            self.issue(
                key,
                format!("\"{url}\" has a path or query; give only http://host:port (request paths are forwarded as they are)"),
            );
            return None;
        }
        uri.authority().cloned().or_else(|| {
            self.issue(key, format!("\"{url}\" has no host"));
            None
        })
    }

    fn identity(&mut self, raw: &RawIdentity) -> IdentityPolicy {
        const RESERVED: &[&str] = &[
            "host",
            "authorization",
            "cookie",
            "content-length",
            "content-type",
            "transfer-encoding",
            "connection",
            "te",
            "trailer",
            "upgrade",
            "keep-alive",
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "forwarded",
            "x-real-ip",
        ];
        let mut headers = Vec::new();
        let mut seen = HashSet::new();
        for (header, claim) in &raw.headers {
            let key = format!("identity.headers.\"{header}\"");
            let Ok(name) = HeaderName::from_bytes(header.as_bytes()) else {
                self.issue(key, "is not a valid header name");
                continue;
            };
            if header.contains('_') {
                self.issue(
                    key,
                    "use '-' instead of '_' (both spellings are stripped from clients either way)",
                );
                continue;
            }
            if RESERVED.contains(&name.as_str()) {
                self.issue(
                    key,
                    "is a header the gateway manages itself; pick another name such as X-Auth-User",
                );
                continue;
            }
            if !seen.insert(name.clone()) {
                self.issue(key, "is listed twice (header names are case-insensitive)");
                continue;
            }
            if claim.is_empty() {
                self.issue(key, "needs the name of a claim, e.g. \"sub\"");
                continue;
            }
            headers.push((name, claim.as_str().into()));
        }
        IdentityPolicy::new(headers)
    }

    fn routes(
        &mut self,
        raw: &[RawRoute],
        providers: &HashMap<String, usize>,
        upstreams: &HashMap<String, usize>,
    ) -> Vec<Route> {
        let mut routes = Vec::new();
        let mut names: HashMap<&str, usize> = HashMap::new();
        for (i, raw_route) in raw.iter().enumerate() {
            let key = format!("routes[{i}]");
            if let Some(name) = raw_route.name.as_deref()
                && let Some(first) = names.insert(name, i)
            {
                self.issue(
                    format!("{key}.name"),
                    format!(
                        "\"{name}\" is already the name of routes[{first}]; names must be unique"
                    ),
                );
            }
            if let Some(route) = self.route(&key, raw_route, providers, upstreams) {
                routes.push(route);
            }
        }
        routes
    }

    fn route(
        &mut self,
        key: &str,
        raw: &RawRoute,
        providers: &HashMap<String, usize>,
        upstreams: &HashMap<String, usize>,
    ) -> Option<Route> {
        let before = self.issues.len();
        let name = match raw.name.as_deref() {
            Some(n) if !n.is_empty() => n,
            _ => {
                self.issue(
                    format!("{key}.name"),
                    "required; give the route a unique name for logs and metrics",
                );
                ""
            }
        };
        let host = self.route_host(key, raw.host.as_deref());
        let path = self.route_path(key, raw);
        let methods = self.route_methods(key, raw.methods.as_deref());
        let upstream = match raw.upstream.as_deref() {
            None => {
                self.issue(
                    format!("{key}.upstream"),
                    "required; name one of the [upstreams.NAME] tables",
                );
                None
            }
            Some(u) => {
                match upstreams.get(u) {
                    Some(&index) => Some(index),
                    None => {
                        let mut known: Vec<&str> = upstreams.keys().map(String::as_str).collect();
                        known.sort_unstable();
                        self.issue(
                        format!("{key}.upstream"),
                        format!("no upstream named \"{u}\"; define [upstreams.{u}] or use one of: {}", known.join(", ")),
                    );
                        None
                    }
                }
            }
        };
        let auth = self.route_auth(key, raw, providers);
        let max_body_size = self.size(&format!("{key}.max_body_size"), raw.max_body_size.as_ref());
        if self.issues.len() != before {
            return None;
        }
        Some(Route {
            name: name.into(),
            host: host?,
            path: path?,
            methods: methods?,
            upstream: upstream.filter(|&u| u != usize::MAX)?,
            auth: auth?,
            max_body_size,
            allow_encoded_slash: raw.allow_encoded_slash,
            allow_path_params: raw.allow_path_params,
            allow_method_override: raw.allow_method_override,
            forward_original_uri: raw.forward_original_uri,
            policy: 0,
            metrics: self.metrics.route(name),
        })
    }

    fn route_host(&mut self, key: &str, host: Option<&str>) -> Option<HostMatch> {
        let Some(host) = host else {
            return Some(HostMatch::Any);
        };
        let (wildcard, bare) = match host.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, host),
        };
        let plain = !bare.contains('*') && (bare.starts_with('[') || !bare.contains(':'));
        match canonical_host(bare) {
            Ok(h) if plain => Some(if wildcard {
                HostMatch::Wildcard(format!(".{h}").into())
            } else {
                HostMatch::Exact(h.into())
            }),
            _ => {
                self.issue(
                    format!("{key}.host"),
                    format!("\"{host}\" is not a host; write \"crm.example.com\" or \"*.example.com\" (no port, no scheme)"),
                );
                None
            }
        }
    }

    fn route_path(&mut self, key: &str, raw: &RawRoute) -> Option<PathMatch> {
        let (field, value, exact) = match (&raw.path, &raw.path_prefix) {
            (Some(p), None) => ("path", p, true),
            (None, Some(p)) => ("path_prefix", p, false),
            (Some(_), Some(_)) => {
                self.issue(key, "set either path (exact) or path_prefix, not both");
                return None;
            }
            (None, None) => {
                self.issue(
                    key,
                    "needs path_prefix (e.g. \"/api\"; \"/\" for every path) or an exact path",
                );
                return None;
            }
        };
        match canonical_path(value) {
            Ok(canonical) if canonical == *value => {}
            Ok(canonical) => {
                self.issue(
                    format!("{key}.{field}"),
                    format!("\"{value}\" is not in canonical form; requests are matched as \"{canonical}\", write that"),
                );
                return None;
            }
            Err(e) => {
                self.issue(
                    format!("{key}.{field}"),
                    format!("\"{value}\": {e}; paths start with '/'"),
                );
                return None;
            }
        }
        if let Some(problem) = reading_hazard(value) {
            self.issue(format!("{key}.{field}"), format!("\"{value}\" {problem}"));
            return None;
        }
        Some(if exact {
            PathMatch::Exact(value.as_str().into())
        } else {
            let trimmed = match value.strip_suffix('/') {
                Some(t) if !t.is_empty() => t,
                _ => value,
            };
            PathMatch::Prefix(trimmed.into())
        })
    }

    fn route_methods(
        &mut self,
        key: &str,
        methods: Option<&[String]>,
    ) -> Option<Option<Box<[Method]>>> {
        let Some(methods) = methods else {
            return Some(None);
        };
        if methods.is_empty() {
            self.issue(
                format!("{key}.methods"),
                "is empty, so the route would never match; list methods or remove the key",
            );
            return None;
        }
        let mut parsed = Vec::new();
        for (i, m) in methods.iter().enumerate() {
            match Method::from_bytes(m.as_bytes()) {
                Ok(method) if m.bytes().all(|b| !b.is_ascii_lowercase()) => parsed.push(method),
                _ => {
                    self.issue(
                        format!("{key}.methods[{i}]"),
                        format!("\"{m}\" is not a method; methods are upper-case, e.g. \"GET\""),
                    );
                    return None;
                }
            }
        }
        Some(Some(parsed.into()))
    }

    fn route_auth(
        &mut self,
        key: &str,
        raw: &RawRoute,
        providers: &HashMap<String, usize>,
    ) -> Option<RouteAuth> {
        let modes: Vec<&str> = match &raw.auth {
            None => {
                self.issue(
                    format!("{key}.auth"),
                    "required (there is no default); set auth = \"jwt\" to demand a token, \"session\" for a browser login, or \"public\"",
                );
                return None;
            }
            Some(RawAuth::One(mode)) => vec![mode.as_str()],
            Some(RawAuth::Many(modes)) => modes.iter().map(String::as_str).collect(),
        };
        let known = ["public", "jwt", "session"];
        if let Some(other) = modes.iter().find(|m| !known.contains(m)) {
            self.issue(
                format!("{key}.auth"),
                format!(
                    "\"{other}\" is not an auth mode; use \"public\", \"jwt\", \"session\" or [\"jwt\", \"session\"]"
                ),
            );
            return None;
        }
        let duplicated = modes
            .iter()
            .enumerate()
            .any(|(i, m)| modes[..i].contains(m));
        if modes.is_empty() || duplicated || (modes.contains(&"public") && modes.len() > 1) {
            self.issue(
                format!("{key}.auth"),
                "list \"jwt\" and/or \"session\" once each; \"public\" stands alone",
            );
            return None;
        }
        if modes == ["public"] {
            let protected_only = [
                ("providers", raw.providers.is_some()),
                ("token_sources", raw.token_sources.is_some()),
                ("require", raw.require.is_some()),
                ("forward_token", raw.forward_token),
                ("on_unauthenticated", raw.on_unauthenticated.is_some()),
                ("csrf", raw.csrf.is_some()),
                ("csrf_allow_same_site", raw.csrf_allow_same_site),
                ("csrf_unsafe_methods", raw.csrf_unsafe_methods.is_some()),
            ];
            for (field, set) in protected_only {
                if set {
                    self.issue(
                        format!("{key}.{field}"),
                        "only applies to protected routes (auth = \"jwt\" or \"session\"); remove it from this public route",
                    );
                }
            }
            return Some(RouteAuth::Public);
        }
        let jwt = modes.contains(&"jwt");
        let session = modes.contains(&"session");
        if session && !self.login_configured {
            self.issue(
                format!("{key}.auth"),
                "names \"session\" but there is no [login] table (the OpenID Connect client that creates sessions); add one or use auth = \"jwt\"",
            );
        }
        if !jwt {
            for (field, set) in [
                ("providers", raw.providers.is_some()),
                ("token_sources", raw.token_sources.is_some()),
                ("forward_token", raw.forward_token),
            ] {
                if set {
                    self.issue(
                        format!("{key}.{field}"),
                        "only applies to JWTs; add \"jwt\" to auth or remove it",
                    );
                }
            }
        }
        let on_unauthenticated = match raw.on_unauthenticated.as_deref() {
            None => Unauthenticated::Negotiate,
            Some(_) if !session => {
                self.issue(
                    format!("{key}.on_unauthenticated"),
                    "only applies to session routes; add \"session\" to auth or remove it",
                );
                Unauthenticated::Deny
            }
            Some("redirect") => Unauthenticated::Redirect,
            Some("deny") => Unauthenticated::Deny,
            Some(other) => {
                self.issue(
                    format!("{key}.on_unauthenticated"),
                    format!("\"{other}\" is not a choice; use \"redirect\" or \"deny\" (or remove it: browsers are redirected, API calls get 401)"),
                );
                Unauthenticated::Deny
            }
        };
        let csrf = self.route_csrf(key, raw);
        let mut policy = self.jwt_policy(key, raw, providers, jwt)?;
        policy.jwt = jwt;
        policy.session = session;
        policy.on_unauthenticated = on_unauthenticated;
        policy.csrf = csrf?;
        Some(RouteAuth::Protected(policy))
    }

    /// `csrf`, `csrf_allow_same_site`, `csrf_unsafe_methods` of a protected route.
    fn route_csrf(&mut self, key: &str, raw: &RawRoute) -> Option<CsrfPolicy> {
        let enabled = match raw.csrf.as_deref() {
            None | Some("origin") => true,
            Some("off") => false,
            Some(other) => {
                self.issue(
                    format!("{key}.csrf"),
                    format!("\"{other}\" is not a choice; use \"origin\" (the default) or \"off\""),
                );
                return None;
            }
        };
        let mut unsafe_methods = Vec::new();
        for (i, text) in raw.csrf_unsafe_methods.iter().flatten().enumerate() {
            match text.as_str() {
                "GET" => unsafe_methods.push(http::Method::GET),
                "HEAD" => unsafe_methods.push(http::Method::HEAD),
                "OPTIONS" => unsafe_methods.push(http::Method::OPTIONS),
                other => {
                    self.issue(
                        format!("{key}.csrf_unsafe_methods[{i}]"),
                        format!("\"{other}\": list GET, HEAD or OPTIONS (every other method is checked already)"),
                    );
                    return None;
                }
            }
        }
        Some(CsrfPolicy {
            enabled,
            allow_same_site: raw.csrf_allow_same_site,
            unsafe_methods: unsafe_methods.into(),
        })
    }

    fn jwt_policy(
        &mut self,
        key: &str,
        raw: &RawRoute,
        providers: &HashMap<String, usize>,
        jwt: bool,
    ) -> Option<Policy> {
        let before = self.issues.len();
        let mut indices = Vec::new();
        match &raw.providers {
            _ if !jwt => {}
            None if providers.is_empty() => {
                self.issue(
                    format!("{key}.auth"),
                    "is \"jwt\" but no [providers.NAME] is defined",
                );
            }
            None => {
                let mut all: Vec<usize> = providers.values().copied().collect();
                all.sort_unstable();
                indices = all;
            }
            Some(list) if list.is_empty() => {
                self.issue(
                    format!("{key}.providers"),
                    "is empty, so no token could pass; name providers or remove the key",
                );
            }
            Some(list) => {
                for (i, name) in list.iter().enumerate() {
                    match providers.get(name) {
                        Some(&index) => indices.push(index),
                        None => self.issue(
                            format!("{key}.providers[{i}]"),
                            format!("no provider named \"{name}\"; define [providers.{name}]"),
                        ),
                    }
                }
            }
        }
        let mut sources = Vec::new();
        let default_sources = if jwt {
            vec!["bearer".to_owned()]
        } else {
            Vec::new()
        };
        let specs = raw.token_sources.clone().unwrap_or(default_sources);
        if specs.is_empty() && jwt {
            self.issue(
                format!("{key}.token_sources"),
                "is empty; use [\"bearer\"] and/or [\"cookie:NAME\"]",
            );
        }
        for (i, spec) in specs.iter().enumerate() {
            match TokenSource::parse(spec) {
                Some(s) if sources.contains(&s) => {
                    self.issue(
                        format!("{key}.token_sources[{i}]"),
                        format!("\"{spec}\" is listed twice"),
                    );
                }
                Some(s) => sources.push(s),
                None => self.issue(
                    format!("{key}.token_sources[{i}]"),
                    format!("\"{spec}\" is not a token source; use \"bearer\" or \"cookie:NAME\""),
                ),
            }
        }
        let require = raw.require.as_ref();
        let scopes: Vec<Box<str>> = require.map_or(Vec::new(), |r| {
            r.scopes.iter().map(|s| s.as_str().into()).collect()
        });
        if scopes.iter().any(|s| s.is_empty() || s.contains(' ')) {
            self.issue(
                format!("{key}.require.scopes"),
                "scopes are single words without spaces",
            );
        }
        let mut claims = Vec::new();
        for (claim, values) in require.map(|r| &r.claims).into_iter().flatten() {
            let accepted: Vec<Box<str>> = match values {
                RawClaimValues::One(v) => vec![scalar(v)],
                RawClaimValues::Many(vs) => vs.iter().map(scalar).collect(),
            };
            if accepted.is_empty() {
                self.issue(
                    format!("{key}.require.claims.{claim}"),
                    "lists no accepted value, so the route would always deny",
                );
                continue;
            }
            claims.push(ClaimRequirement {
                name: claim.as_str().into(),
                accepted: accepted.into(),
            });
        }
        (self.issues.len() == before).then(|| Policy {
            jwt,
            session: false,
            on_unauthenticated: Unauthenticated::Negotiate,
            providers: indices.into_iter().filter(|&i| i != usize::MAX).collect(),
            sources: sources.into(),
            forward_token: raw.forward_token,
            scopes: scopes.into(),
            claims: claims.into(),
            csrf: CsrfPolicy::default(),
        })
    }
}

fn scalar(value: &RawScalar) -> Box<str> {
    match value {
        RawScalar::Str(s) => s.as_str().into(),
        RawScalar::Int(i) => i.to_string().into(),
        RawScalar::Bool(b) => b.to_string().into(),
    }
}

fn family_name(family: AlgorithmFamily) -> &'static str {
    match family {
        AlgorithmFamily::Hmac => "HMAC",
        AlgorithmFamily::Rsa => "RSA",
        AlgorithmFamily::Ec => "EC",
        AlgorithmFamily::Ed => "Ed25519",
    }
}

/// Why a canonical route path could not be told apart from other readings of it (see
/// `readings.rs`): a parameter, which servlet containers strip before matching, or an
/// escape of a visible character, which every backend decodes to that character.
fn reading_hazard(path: &str) -> Option<String> {
    if path.contains(';') {
        return Some(
            "contains ';': servlet containers remove ;parameters before matching, so this path \
             is the one without them; write that, and set allow_path_params = true if the \
             app uses them"
                .to_owned(),
        );
    }
    let bytes = path.as_bytes();
    let mut i = 0;
    while i + 2 < bytes.len() {
        if bytes[i] == b'%' {
            let text = &path[i + 1..i + 3];
            let value = u8::from_str_radix(text, 16).unwrap_or(0);
            if (0x21..0x7f).contains(&value) {
                return Some(format!(
                    "contains %{text}, which apps decode to '{}' before matching; write '{}'",
                    char::from(value),
                    char::from(value)
                ));
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    None
}
