//! `[providers.NAME]`: issuers, algorithm allow-lists, static and remote keys.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arc_swap::ArcSwap;
use std::str::FromStr;
use std::time::Duration;

use http::Uri;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};

use crate::auth::jwt::{Provider, VerifyKey};
use crate::auth::keys::KeySet;
use crate::auth::remote::{RefreshSettings, Remote, RemoteSource};
use crate::config::raw::*;

use super::Compiler;

const ALL_ALGORITHMS: &str =
    "HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA";

impl Compiler {
    pub(super) fn providers(
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

    pub(super) fn provider(&mut self, name: &str, raw: &RawProvider) -> Option<Provider> {
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
        if raw.algorithms.is_empty() && raw.introspection.is_none() {
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
        let introspection = self.introspection(&key, raw, &refresh, leeway);
        if raw.introspect_jwts && raw.introspection.is_none() {
            self.issue(
                format!("{key}.introspect_jwts"),
                "needs introspection = { url = ..., client_id = ..., client_secret_env = ... }",
            );
        }
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
            introspection,
        })
    }

    /// `introspection = { ... }` of a provider.
    fn introspection(
        &mut self,
        key: &str,
        raw: &RawProvider,
        refresh: &RefreshSettings,
        leeway: Duration,
    ) -> Option<Arc<crate::auth::introspect::Introspection>> {
        let spec = raw.introspection.as_ref()?;
        let field = format!("{key}.introspection");
        let before = self.issues.len();
        let url = self
            .remote_url(&format!("{field}.url"), &spec.url)
            .and_then(|url| url.parse::<reqwest::Url>().ok());
        if spec.client_id.is_empty() {
            self.issue(
                format!("{field}.client_id"),
                "must name the gateway's client at the issuer",
            );
        }
        let secret = match (&spec.client_secret_env, &spec.client_secret_file) {
            (None, None) => {
                self.issue(
                    format!("{field}.client_secret_env"),
                    "the endpoint needs the gateway's client secret: set client_secret_env or client_secret_file",
                );
                None
            }
            (env, file) => self.secret_text(
                (&format!("{field}.client_secret_env"), env.as_deref()),
                (&format!("{field}.client_secret_file"), file.as_deref()),
            ),
        };
        let cache_ttl = self.duration(
            &format!("{field}.cache_ttl"),
            spec.cache_ttl.as_ref(),
            Duration::from_secs(60),
        );
        let negative_ttl = self.duration(
            &format!("{field}.negative_ttl"),
            spec.negative_ttl.as_ref(),
            Duration::from_secs(10),
        );
        let cache_size = self.positive(
            &format!("{field}.cache_size"),
            spec.cache_size.map(|n| n as usize),
            100_000,
        ) as u64;
        let http = self.idp_client(key, raw.ca_file.as_deref(), refresh);
        if self.issues.len() != before {
            return None;
        }
        Some(Arc::new(crate::auth::introspect::Introspection::new(
            crate::auth::introspect::Settings {
                url: url?,
                client_id: spec.client_id.clone(),
                secret: secret?,
                http: http?,
                issuer: raw.issuer.as_str().into(),
                audiences: raw.audiences.iter().map(|a| a.as_str().into()).collect(),
                leeway: leeway.as_secs(),
                cache_ttl,
                negative_ttl,
                cache_size,
                introspect_jwts: raw.introspect_jwts,
            },
        )))
    }

    pub(super) fn remote_url(&mut self, key: &str, url: &str) -> Option<String> {
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
    pub(super) fn idp_client(
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

    pub(super) fn public_key(&self, file: &str) -> Result<(AlgorithmFamily, DecodingKey), String> {
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
}

fn family_name(family: AlgorithmFamily) -> &'static str {
    match family {
        AlgorithmFamily::Hmac => "HMAC",
        AlgorithmFamily::Rsa => "RSA",
        AlgorithmFamily::Ec => "EC",
        AlgorithmFamily::Ed => "Ed25519",
    }
}
