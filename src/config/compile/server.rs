//! `[server]` and `[tls]`: listeners, limits, trusted proxies and origins, the certificate.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use crate::config::raw::*;
use crate::snapshot::ServerSettings;

use super::Compiler;

impl Compiler {
    pub(super) fn server(&mut self, raw: &RawServer) -> ServerSettings {
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
        let health = addr("server.health", &raw.health);
        if raw.http.is_none() && raw.https.is_none() {
            self.issue(
                "server",
                "no listener; set server.http = \"127.0.0.1:8080\" and/or server.https",
            );
        }
        let admin_token = self
            .secret_text(
                ("server.admin_token_env", raw.admin_token_env.as_deref()),
                ("server.admin_token_file", raw.admin_token_file.as_deref()),
            )
            .map(Arc::<str>::from);
        if let Some(token) = &admin_token
            && token.len() < 16
        {
            let key = if raw.admin_token_file.is_some() {
                "server.admin_token_file"
            } else {
                "server.admin_token_env"
            };
            self.issue(
                key,
                "the admin token is shorter than 16 characters; use e.g. `openssl rand -hex 32`",
            );
        }
        if let Some(addr) = admin
            && !addr.ip().is_loopback()
            && admin_token.is_none()
        {
            self.issue(
                "server.admin",
                format!("{addr} is not a loopback address: anyone who reaches it could reload the config and read the metrics; set server.admin_token_env (or admin_token_file), or listen on 127.0.0.1 (probes: server.health)"),
            );
        }
        ServerSettings {
            http,
            https,
            admin,
            admin_token,
            health,
            forward_auth: None,
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
            shutdown_delay: self.duration(
                "server.shutdown_delay",
                raw.shutdown_delay.as_ref(),
                Duration::ZERO,
            ),
            defer_accept: self.defer_accept(raw.defer_accept.as_ref()),
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
            request_id: raw.request_id.as_deref().and_then(|name| {
                let parsed = http::HeaderName::from_bytes(name.as_bytes()).ok();
                if parsed.is_none() {
                    self.issue(
                        "server.request_id",
                        format!(
                            "\"{name}\" is not a header field name; write e.g. \"X-Request-Id\""
                        ),
                    );
                }
                parsed
            }),
        }
    }

    /// `server.defer_accept`: whole seconds, since the kernel counts in seconds (a
    /// `"500ms"` would silently become 0 or 1).
    fn defer_accept(&mut self, raw: Option<&String>) -> Duration {
        let key = "server.defer_accept";
        let wait = self.duration(key, raw, Duration::from_secs(1));
        if wait.subsec_nanos() == 0 {
            return wait;
        }
        self.issue(
            key,
            "must be whole seconds (the kernel counts in seconds); write e.g. \"1s\" (the default), or \"0s\" to accept at once",
        );
        Duration::from_secs(1)
    }

    pub(super) fn trusted_origins(&mut self, raw: &[String]) -> Vec<crate::csrf::Origin> {
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

    pub(super) fn trusted_proxies(&mut self, raw: &[String]) -> Vec<IpNet> {
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

    /// `[forward_auth]`: its path, which must be the gateway's own (under `/_portcullis/`)
    /// and needs the front proxies listed in `server.trusted_proxies`: the description of
    /// the request is taken on the asker's word.
    pub(super) fn forward_auth(
        &mut self,
        raw: Option<&RawForwardAuth>,
        trusted_proxies: &[IpNet],
    ) -> Option<Box<str>> {
        let raw = raw?;
        let path = raw.path.as_deref().unwrap_or("/_portcullis/auth");
        let canonical = crate::canonical::canonical_path(path).ok();
        if canonical.as_deref() != Some(path)
            || !path.starts_with("/_portcullis/")
            || path.len() == "/_portcullis/".len()
        {
            self.issue(
                "forward_auth.path",
                format!("\"{path}\" must be a canonical path under /_portcullis/, e.g. \"/_portcullis/auth\" (the default)"),
            );
            return None;
        }
        if crate::session::LOGIN_PATHS.contains(&path) {
            self.issue(
                "forward_auth.path",
                format!("\"{path}\" is a login endpoint's; use \"/_portcullis/auth\""),
            );
            return None;
        }
        if trusted_proxies.is_empty() {
            self.issue(
                "forward_auth",
                "needs server.trusted_proxies: the addresses of the front proxies that ask (anyone else is refused, so with none the endpoint would refuse everyone)",
            );
            return None;
        }
        Some(path.into())
    }

    /// `[forward_auth] listen`.
    pub(super) fn forward_auth_listen(
        &mut self,
        raw: Option<&RawForwardAuth>,
    ) -> Option<SocketAddr> {
        let text = raw?.listen.as_ref()?;
        text.parse().map_err(|_| {
            self.issue(
                "forward_auth.listen",
                format!("\"{text}\" is not a listen address; write IP:PORT such as \"127.0.0.1:9091\""),
            );
        }).ok()
    }

    /// `[tls] client_ca` and friends; sets `client_cert_order` when client certificates are
    /// asked for.
    fn client_auth(&mut self, raw: &RawTls) -> Option<crate::tls::ClientAuth> {
        let ca = raw.client_ca.as_ref()?;
        let required = match raw.client_auth.as_deref() {
            None | Some("optional") => false,
            Some("required") => true,
            Some(other) => {
                self.issue(
                    "tls.client_auth",
                    format!(
                        "\"{other}\" is not a choice; use \"optional\" (default) or \"required\""
                    ),
                );
                false
            }
        };
        let mut order = Vec::new();
        match &raw.identity_from {
            None => order.extend(crate::auth::client_cert::DEFAULT_ORDER),
            Some(names) => {
                for (i, name) in names.items().into_iter().enumerate() {
                    match crate::auth::client_cert::NameKind::parse(name) {
                        Some(kind) if !order.contains(&kind) => order.push(kind),
                        _ => self.issue(
                            format!("tls.identity_from[{i}]"),
                            format!("\"{name}\": use \"san_uri\", \"san_email\", \"san_dns\" or \"cn\", each once"),
                        ),
                    }
                }
            }
        }
        self.client_cert_order = Some(order.into_boxed_slice());
        let crls = raw
            .client_crl
            .as_ref()
            .map(|c| c.items().into_iter().map(|file| self.path(file)).collect())
            .unwrap_or_default();
        Some(crate::tls::ClientAuth {
            ca: self.path(ca),
            required,
            crls,
        })
    }

    /// `[redis]`: the shared denylist (kept from the previous config when unchanged).
    pub(super) fn denylist(
        &mut self,
        raw: &RawRedis,
        kept: Option<std::sync::Arc<crate::revocation::Denylist>>,
    ) -> Option<std::sync::Arc<crate::revocation::Denylist>> {
        let url = self.redis_url(
            ("redis.url", "redis.url_env"),
            raw.url.as_ref(),
            raw.url_env.as_ref(),
            "required: url = \"redis://127.0.0.1:6379\" (or url_env)",
        )?;
        let timeout = self.period(
            "redis.timeout",
            raw.timeout.as_ref(),
            Duration::from_secs(2),
        );
        let prefix = raw.prefix.as_deref().unwrap_or("portcullis:");
        let ca = self.redis_ca("redis.ca_file", &url, raw.ca_file.as_ref());
        if let Some(kept) = kept
            && kept.link.settings == (url.clone(), prefix.into(), timeout)
            && ca.is_none()
        {
            return Some(kept);
        }
        match crate::redis_link::RedisLink::open(&url, ca, prefix, timeout) {
            Ok(link) => Some(std::sync::Arc::new(crate::revocation::Denylist::new(
                std::sync::Arc::new(link),
            ))),
            // The message never repeats the URL: it may carry a password.
            Err(message) => {
                self.issue("redis.url", message);
                None
            }
        }
    }

    pub(super) fn tls(
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
                let clients = self.client_auth(raw);
                if self.client_cert_order.is_none() && raw.client_ca.is_none() {
                    for (field, set) in [
                        ("client_auth", raw.client_auth.is_some()),
                        ("client_crl", raw.client_crl.is_some()),
                        ("identity_from", raw.identity_from.is_some()),
                    ] {
                        if set {
                            self.issue(
                                format!("tls.{field}"),
                                "only applies with client certificates; add client_ca = \"clients-ca.pem\" or remove it",
                            );
                        }
                    }
                }
                match crate::tls::server_config(&cert, &key, clients) {
                    Ok(config) => Some(config),
                    Err(message) => {
                        self.issue("tls", message);
                        None
                    }
                }
            }
        }
    }
}
