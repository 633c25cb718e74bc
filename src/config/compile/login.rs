//! `[login]`: the OIDC client, its cookies and its session store.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use super::Compiler;
use crate::auth::jwt::Provider;
use crate::canonical::canonical_path;
use crate::config::raw::{RawLogin, RawProvider, RawScopes};
use crate::session::cookie::CookieKeys;
use crate::session::store::{MemoryStore, RedisStore, Store};
use crate::session::{self, Login, Secret};
use crate::snapshot::Snapshot;

impl Compiler {
    pub(super) fn login(
        &mut self,
        raw: Option<&RawLogin>,
        raw_providers: &BTreeMap<String, RawProvider>,
        providers: &HashMap<String, usize>,
        compiled: &[Provider],
        previous: Option<&Snapshot>,
    ) -> Option<Login> {
        let raw = raw?;
        let before = self.issues.len();
        let provider = match providers.get(&raw.provider) {
            None => {
                self.issue(
                    "login.provider",
                    format!(
                        "no provider named \"{}\"; define [providers.{}] with discovery = \"https://your-idp\"",
                        raw.provider, raw.provider
                    ),
                );
                None
            }
            Some(&index) => Some(index),
        };
        let raw_provider = raw_providers.get(&raw.provider);
        let discovery = raw_provider.and_then(|p| p.discovery.clone());
        if raw_provider.is_some() && discovery.is_none() {
            self.issue(
                "login.provider",
                format!(
                    "provider \"{}\" has no discovery URL; login needs the IdP's endpoints, so set providers.{}.discovery",
                    raw.provider, raw.provider
                ),
            );
        }
        if raw.client_id.is_empty() {
            self.issue(
                "login.client_id",
                "must not be empty; use the client id registered at the IdP",
            );
        }
        let client_secret = self
            .secret_text(
                ("login.client_secret_env", raw.client_secret_env.as_deref()),
                (
                    "login.client_secret_file",
                    raw.client_secret_file.as_deref(),
                ),
            )
            .map(|s| Secret(s.into()));
        let keys_text = self.secret_text(
            ("login.cookie_keys_env", raw.cookie_keys_env.as_deref()),
            ("login.cookie_keys_file", raw.cookie_keys_file.as_deref()),
        );
        let keys = match keys_text.map(|t| CookieKeys::parse(&t)) {
            Some(Ok(keys)) => Some(keys),
            Some(Err(message)) => {
                let key = if raw.cookie_keys_env.is_some() {
                    "login.cookie_keys_env"
                } else {
                    "login.cookie_keys_file"
                };
                self.issue(key, message);
                None
            }
            None => {
                if raw.cookie_keys_env.is_none() && raw.cookie_keys_file.is_none() {
                    self.issue(
                        "login.cookie_keys_env",
                        "required: the keys that seal session cookies; export PORTCULLIS_COOKIE_KEYS=$(openssl rand -base64 32) and set cookie_keys_env = \"PORTCULLIS_COOKIE_KEYS\" (or cookie_keys_file)",
                    );
                }
                None
            }
        };
        let redirect_path = raw
            .redirect_path
            .clone()
            .unwrap_or_else(|| session::DEFAULT_REDIRECT_PATH.to_owned());
        let canonical = canonical_path(&redirect_path).ok().map(|p| p.into_owned());
        if canonical.as_deref() != Some(redirect_path.as_str()) || !redirect_path.starts_with('/') {
            self.issue(
                "login.redirect_path",
                "must be a plain absolute path such as /_portcullis/callback",
            );
        } else if [
            session::LOGIN_PATH,
            session::LOGOUT_PATH,
            session::BACKCHANNEL_PATH,
        ]
        .contains(&redirect_path.as_str())
        {
            self.issue(
                "login.redirect_path",
                "is one of the gateway's other endpoints; pick another path",
            );
        }
        if let Some(url) = &raw.redirect_url {
            self.remote_url("login.redirect_url", url);
        }
        if let Some(url) = &raw.post_logout_redirect_url {
            self.remote_url("login.post_logout_redirect_url", url);
        }
        let scopes = match &raw.scopes {
            None => "openid email profile".to_owned(),
            Some(RawScopes::Text(text)) => text.split_whitespace().collect::<Vec<_>>().join(" "),
            Some(RawScopes::List(list)) => list.join(" "),
        };
        if !scopes.split(' ').any(|s| s == "openid") {
            self.issue(
                "login.scopes",
                "must include \"openid\" (an OpenID Connect login)",
            );
        }
        let cookie_name = raw
            .cookie_name
            .clone()
            .unwrap_or_else(|| "__Host-portcullis".to_owned());
        let valid_name = !cookie_name.is_empty()
            && cookie_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !valid_name {
            self.issue(
                "login.cookie_name",
                "use letters, digits, '-', '_' or '.' (e.g. \"__Host-portcullis\")",
            );
        }
        let idle = self.duration(
            "login.idle_timeout",
            raw.idle_timeout.as_ref(),
            Duration::from_secs(2 * 3600),
        );
        let lifetime = self.duration(
            "login.lifetime",
            raw.lifetime.as_ref(),
            Duration::from_secs(12 * 3600),
        );
        for (key, value) in [("login.idle_timeout", idle), ("login.lifetime", lifetime)] {
            if value.as_secs() == 0 {
                self.issue(
                    key,
                    "must be at least 1s (sessions are kept in whole seconds)",
                );
            }
        }
        let store = self.session_store(raw, idle, lifetime, previous);
        self.login_token_headers = crate::policy::SessionTokenHeaders {
            access: raw
                .forward_access_token
                .as_deref()
                .and_then(|name| self.token_header("login.forward_access_token", name)),
            id: raw
                .forward_id_token
                .as_deref()
                .and_then(|name| self.token_header("login.forward_id_token", name)),
        };
        if self.issues.len() != before || discovery.is_none() {
            return None;
        }
        // A provider with `discovery` always has its remote part.
        let remote = compiled.get(provider?)?.remote.clone()?;
        let previous_login = previous.and_then(|p| p.login.as_ref());
        Some(Login {
            provider: provider?,
            issuer: raw_provider?.issuer.as_str().into(),
            remote,
            client_id: raw.client_id.as_str().into(),
            client_secret,
            redirect_path: redirect_path.into(),
            redirect_url: raw.redirect_url.as_deref().map(Into::into),
            scopes: scopes.into(),
            login_cookie_name: format!("{cookie_name}-login").into(),
            cookie_name: cookie_name.into(),
            cookie_secure: raw.cookie_secure,
            keys: keys?,
            store: store?,
            idle_timeout: idle.as_secs(),
            lifetime: lifetime.as_secs(),
            allowed_redirect_hosts: raw
                .allowed_redirect_hosts
                .iter()
                .map(|h| h.to_ascii_lowercase().into())
                .collect(),
            post_logout_redirect_url: raw.post_logout_redirect_url.as_deref().map(Into::into),
            // Kept across reloads, so a reload does not reopen the replay window.
            used_states: previous_login.map_or_else(
                || Arc::new(session::states::UsedStates::new(100_000)),
                |p| p.used_states.clone(),
            ),
            opened: moka::sync::Cache::builder()
                .max_capacity(session::OPENED_CACHE_SIZE)
                .time_to_live(Duration::from_secs(60))
                .build(),
            opened_id: session::store::next_opened_id(),
            // Set once the routes are compiled (`compile`).
            keep_access_token: false,
            keep_id_token: false,
        })
    }

    fn session_store(
        &mut self,
        raw: &RawLogin,
        idle: Duration,
        lifetime: Duration,
        previous: Option<&Snapshot>,
    ) -> Option<Store> {
        let redis_only = [
            ("redis_url", raw.redis_url.is_some()),
            ("redis_url_env", raw.redis_url_env.is_some()),
            ("redis_prefix", raw.redis_prefix.is_some()),
            ("redis_ca_file", raw.redis_ca_file.is_some()),
            ("redis_timeout", raw.redis_timeout.is_some()),
        ];
        let kind = raw.store.as_deref().unwrap_or("cookie");
        if kind != "redis" {
            for (field, set) in redis_only {
                if set {
                    self.issue(
                        format!("login.{field}"),
                        "only applies to store = \"redis\"",
                    );
                }
            }
        }
        if kind != "memory" && raw.max_sessions.is_some() {
            self.issue("login.max_sessions", "only applies to store = \"memory\"");
        }
        match kind {
            "cookie" => Some(Store::Cookie),
            "memory" => {
                let max = raw.max_sessions.unwrap_or(100_000);
                // A reload keeps the sessions unless the bounds changed.
                let kept = previous
                    .and_then(|p| p.login.as_ref())
                    .and_then(|l| match &l.store {
                        Store::Memory(m) if m.settings == (max, idle) => Some(m.clone()),
                        _ => None,
                    });
                Some(Store::Memory(
                    kept.unwrap_or_else(|| Arc::new(MemoryStore::new(max, idle))),
                ))
            }
            "redis" => {
                let url = self.redis_url(
                    ("login.redis_url", "login.redis_url_env"),
                    raw.redis_url.as_ref(),
                    raw.redis_url_env.as_ref(),
                    "required with store = \"redis\", e.g. redis_url = \"redis://127.0.0.1:6379\"",
                )?;
                let timeout = self.period(
                    "login.redis_timeout",
                    raw.redis_timeout.as_ref(),
                    Duration::from_secs(2),
                );
                let prefix = raw.redis_prefix.as_deref().unwrap_or("portcullis:");
                let ca = self.redis_ca("login.redis_ca_file", &url, raw.redis_ca_file.as_ref());
                match RedisStore::new(&url, ca, prefix, timeout, lifetime.as_secs()) {
                    Ok(store) => Some(Store::Redis(Arc::new(store))),
                    // The URL may carry a password: the message never repeats it.
                    Err(message) => {
                        let key = if raw.redis_url.is_some() {
                            "login.redis_url"
                        } else {
                            "login.redis_url_env"
                        };
                        self.issue(key, message);
                        None
                    }
                }
            }
            other => {
                self.issue(
                    "login.store",
                    format!("\"{other}\" is not a store; use \"cookie\", \"memory\" or \"redis\""),
                );
                None
            }
        }
    }

    /// A secret from an env var or a file (first line), for keys named by `env` / `file`.
    pub(super) fn secret_text(
        &mut self,
        env: (&str, Option<&str>),
        file: (&str, Option<&str>),
    ) -> Option<String> {
        match (env.1, file.1) {
            (Some(_), Some(_)) => {
                self.issue(
                    file.0,
                    format!("set either {} or {}, not both", env.0, file.0),
                );
                None
            }
            (Some(var), None) => match std::env::var(var) {
                Ok(value) if !value.trim().is_empty() => Some(value.trim().to_owned()),
                _ => {
                    self.issue(
                        env.0,
                        format!("environment variable {var} is not set (or empty); export it before starting"),
                    );
                    None
                }
            },
            (None, Some(name)) => {
                let path = self.path(name);
                match std::fs::read_to_string(&path) {
                    Ok(text) if !text.trim().is_empty() => Some(text.trim().to_owned()),
                    Ok(_) => {
                        self.issue(file.0, format!("{} is empty", path.display()));
                        None
                    }
                    Err(e) => {
                        self.issue(file.0, format!("cannot read {}: {e}", path.display()));
                        None
                    }
                }
            }
            (None, None) => None,
        }
    }
}
