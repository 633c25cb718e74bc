//! `[upstreams.NAME]`: the apps behind the gateway.

use std::collections::{BTreeMap, HashMap};

use std::time::Duration;

use http::Uri;

use crate::canonical::canonical_path;
use crate::config::raw::*;
use crate::readings::PathSemantics;
use crate::upstream::mapping;
use crate::upstream::targets::{Balance, Ejection, HealthCheck};
use crate::upstream::tls::{TlsIssue, TlsSource, UpstreamTls, system_roots};
use crate::upstream::{PoolSettings, Upstream};

use super::Compiler;

impl Compiler {
    pub(super) fn upstreams(
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
                health_check: None,
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
            let mut own_origins = Vec::new();
            let urls: Option<Vec<(String, &String)>> = match (&raw.url, &raw.targets) {
                (Some(url), None) => Some(vec![(format!("{key}.url"), url)]),
                (None, Some(targets)) if !targets.is_empty() => Some(
                    targets
                        .iter()
                        .enumerate()
                        .map(|(i, url)| (format!("{key}.targets[{i}]"), url))
                        .collect(),
                ),
                (None, Some(_)) => {
                    self.issue(
                        format!("{key}.targets"),
                        "is empty; list the app's instances, e.g. [\"http://10.0.0.5:8080\"]",
                    );
                    None
                }
                (Some(_), Some(_)) => {
                    self.issue(
                        key.as_str(),
                        "set either url (one instance) or targets (several), not both",
                    );
                    None
                }
                (None, None) => None,
            };
            let several = self.several_targets(&key, raw);
            let mut pool = pool;
            pool.health_check = several.1.clone();
            let upstream = match (urls, raw.builtin.as_deref()) {
                (Some(urls), None) => {
                    let mut targets = Vec::new();
                    let mut schemes = Vec::new();
                    for (field, url) in urls {
                        let Some((authority, https)) = self.upstream_url(&field, url) else {
                            continue;
                        };
                        if targets.iter().any(|(a, _)| *a == authority) {
                            self.issue(
                                field.as_str(),
                                format!("lists {authority} a second time; name each instance once"),
                            );
                            continue;
                        }
                        let scheme = if https { "https" } else { "http" };
                        own_origins.push(mapping::origin_text(scheme, authority.as_str()));
                        schemes.push(https);
                        if let Some(tls) = self.upstream_tls(&key, raw, &authority, https) {
                            targets.push((authority, tls));
                        }
                    }
                    if schemes.iter().any(|&s| s != schemes[0]) {
                        self.issue(
                            format!("{key}.targets"),
                            "mixes http:// and https://; one upstream's instances speak the same protocol",
                        );
                    }
                    if let Some(check) = &mut pool.health_check {
                        check.host = raw
                            .host
                            .as_deref()
                            .and_then(|h| http::HeaderValue::from_str(h).ok());
                    }
                    let complete = targets.len() == schemes.len()
                        && raw
                            .targets
                            .as_ref()
                            .is_none_or(|t| t.len() == targets.len());
                    let dns_refresh = self.duration(
                        &format!("{key}.dns_refresh"),
                        raw.dns_refresh.as_ref(),
                        Duration::from_secs(5),
                    );
                    (complete && !targets.is_empty()).then(|| {
                        Upstream::http(
                            name,
                            targets,
                            several.0,
                            (timeout, body_timeout),
                            pool,
                            &self.metrics,
                        )
                        .resolve_every(dns_refresh)
                    })
                }
                (Some(_), Some(_)) => {
                    self.issue(key.as_str(), "set either url/targets or builtin, not both");
                    None
                }
                (None, _) if raw.url.is_some() || raw.targets.is_some() => None,
                (None, Some("echo")) => {
                    self.no_tls_keys(&key, raw, "builtin upstreams");
                    Some(Upstream::echo(name, &self.metrics))
                }
                (None, Some(other)) => {
                    self.issue(
                        format!("{key}.builtin"),
                        format!("\"{other}\" is not a built-in upstream; the only one is \"echo\""),
                    );
                    None
                }
                (None, None) => {
                    self.issue(
                        key.as_str(),
                        "needs url = \"http://host:port\" or \"https://host:port\" (or builtin = \"echo\")",
                    );
                    None
                }
            };
            let prefix = raw
                .path_prefix
                .as_deref()
                .and_then(|p| self.mapped_prefix(&format!("{key}.path_prefix"), p));
            let host = raw.host.as_deref().and_then(|host| {
                let value = http::uri::Authority::try_from(host)
                    .ok()
                    .filter(|a| !a.as_str().contains('@'))
                    .and_then(|a| http::HeaderValue::from_str(a.as_str()).ok());
                if value.is_none() {
                    self.issue(
                        format!("{key}.host"),
                        format!("\"{host}\" is not a host[:port] for the Host field"),
                    );
                }
                // The app builds its absolute URLs with the name it is sent, by either scheme.
                own_origins.push(mapping::origin_text("http", host));
                own_origins.push(mapping::origin_text("https", host));
                value
            });
            let upstream_mapping = mapping::Mapping {
                prefix,
                rewrite_redirects: raw.rewrite_redirects.unwrap_or(true),
                rewrite_cookie_paths: raw.rewrite_cookie_paths.unwrap_or(true),
                own_origins,
            };
            let upstream = upstream.map(|mut u| {
                u.path_semantics = path_semantics;
                u.mapping = upstream_mapping;
                u.host = host;
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

    /// A path prefix of a mapping (`path_prefix` of an upstream, `strip_prefix` of a route):
    /// canonical, without `;` or escapes, stored without a trailing slash (except `/`).
    pub(super) fn mapped_prefix(&mut self, key: &str, prefix: &str) -> Option<Box<str>> {
        let canonical = canonical_path(prefix).ok();
        if canonical.as_deref() != Some(prefix) || prefix.contains(['%', ';', '?', '#']) {
            self.issue(
                key,
                format!("\"{prefix}\" is not a plain canonical path; write it like \"/app\" (no dot segments, escapes, ';', '?' or '//')"),
            );
            return None;
        }
        Some(match prefix.strip_suffix('/') {
            Some(trimmed) if !trimmed.is_empty() => trimmed.into(),
            _ => prefix.into(),
        })
    }

    /// `balance`, `eject_after`, `eject_for` and `health_check` of an upstream.
    fn several_targets(
        &mut self,
        key: &str,
        raw: &RawUpstream,
    ) -> ((Balance, Ejection), Option<HealthCheck>) {
        let balance = match raw.balance.as_deref() {
            None => Balance::RoundRobin,
            Some(text) => Balance::parse(text).unwrap_or_else(|| {
                self.issue(
                    format!("{key}.balance"),
                    format!("\"{text}\" is not one of \"round_robin\", \"least_requests\""),
                );
                Balance::RoundRobin
            }),
        };
        let ejection = Ejection {
            after: raw.eject_after.unwrap_or(5),
            duration: self.period(
                &format!("{key}.eject_for"),
                raw.eject_for.as_ref(),
                Duration::from_secs(30),
            ),
        };
        let check = raw.health_check.as_ref().and_then(|check| {
            let field = format!("{key}.health_check");
            let path = match check.path.as_deref().map(http::uri::PathAndQuery::try_from) {
                Some(Ok(path)) if path.as_str().starts_with('/') => Some(path),
                Some(_) => {
                    self.issue(
                        format!("{field}.path"),
                        "is not a path; write it like \"/health\"",
                    );
                    None
                }
                None => {
                    self.issue(
                        format!("{field}.path"),
                        "required: the path each target answers with 2xx or 3xx, e.g. \"/health\"",
                    );
                    None
                }
            };
            let interval = self.period(
                &format!("{field}.interval"),
                check.interval.as_ref(),
                Duration::from_secs(5),
            );
            let timeout = self.period(
                &format!("{field}.timeout"),
                check.timeout.as_ref(),
                Duration::from_secs(2),
            );
            let [healthy, unhealthy] = [
                ("healthy", check.healthy, 2),
                ("unhealthy", check.unhealthy, 3),
            ]
            .map(|(name, value, default)| match value {
                Some(0) => {
                    self.issue(format!("{field}.{name}"), "must be at least 1");
                    default
                }
                value => value.unwrap_or(default),
            });
            Some(HealthCheck {
                path: path?,
                host: None,
                interval,
                timeout,
                healthy,
                unhealthy,
            })
        });
        ((balance, ejection), check)
    }

    /// The app's address and whether it speaks TLS (`https://`). `key` names the field.
    pub(super) fn upstream_url(
        &mut self,
        key: &str,
        url: &str,
    ) -> Option<(http::uri::Authority, bool)> {
        let key = key.to_owned();
        let Ok(uri) = url.parse::<Uri>() else {
            self.issue(
                key,
                format!("\"{url}\" is not a URL; write http://host:port or https://host:port"),
            );
            return None;
        };
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => {
                self.issue(
                    key,
                    format!("\"{url}\": the scheme must be http:// or https://"),
                );
                return None;
            }
        };
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            self.issue(
                key,
                format!("\"{url}\" has a path or query; give only scheme://host:port (request paths are forwarded as they are)"),
            );
            return None;
        }
        let authority = uri.authority().cloned().or_else(|| {
            self.issue(key.as_str(), format!("\"{url}\" has no host"));
            None
        })?;
        if authority.as_str().contains('@') {
            self.issue(
                key,
                format!("\"{url}\" has user information; give only scheme://host:port"),
            );
            return None;
        }
        Some((authority, https))
    }

    /// The TLS side of an `https://` upstream, from its keys and files; `Ok(None)` for
    /// `http://`. `None` when a key is wrong (the issue is recorded).
    fn upstream_tls(
        &mut self,
        key: &str,
        raw: &RawUpstream,
        authority: &http::uri::Authority,
        https: bool,
    ) -> Option<Option<UpstreamTls>> {
        if !https {
            self.no_tls_keys(key, raw, "http:// upstreams");
            return Some(None);
        }
        let read = |compiler: &mut Self, name: &str, file: &Option<String>| match file {
            None => Some(None),
            Some(file) => {
                let path = compiler.path(file);
                match std::fs::read(&path) {
                    Ok(bytes) => Some(Some(bytes)),
                    Err(e) => {
                        compiler.issue(
                            format!("{key}.{name}"),
                            format!("cannot read {}: {e}", path.display()),
                        );
                        None
                    }
                }
            }
        };
        let ca = read(self, "ca_file", &raw.ca_file)?;
        let cert = read(self, "client_cert", &raw.client_cert)?;
        let client_key = read(self, "client_key", &raw.client_key)?;
        let client = match (&cert, &client_key) {
            (Some(cert), Some(k)) => Some((cert.as_slice(), k.as_slice())),
            (None, None) => None,
            (Some(_), None) => {
                self.issue(
                    format!("{key}.client_key"),
                    "is required with client_cert (the certificate's private key, PEM)",
                );
                return None;
            }
            (None, Some(_)) => {
                self.issue(
                    format!("{key}.client_cert"),
                    "is required with client_key (the client certificate chain, PEM)",
                );
                return None;
            }
        };
        let host = authority.host();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let server_name = raw.server_name.as_deref().unwrap_or(host);
        let system = self
            .system_roots
            .get_or_insert_with(|| system_roots().into())
            .clone();
        let source = TlsSource {
            ca: ca.as_deref(),
            client,
            server_name,
        };
        match UpstreamTls::new(&source, &system) {
            Ok(tls) => Some(Some(tls)),
            Err(issue) => {
                let (field, message) = match issue {
                    TlsIssue::ServerName(name) => (
                        "server_name",
                        format!("\"{name}\" is not a DNS name or IP address"),
                    ),
                    TlsIssue::Ca(m) => ("ca_file", m),
                    TlsIssue::ClientCert(m) => ("client_cert", m),
                    TlsIssue::ClientKey(m) => ("client_key", m),
                    TlsIssue::NoRoots => (
                        "ca_file",
                        "is needed: the system has no trusted roots (install ca-certificates, or name the app's CA here)".to_owned(),
                    ),
                    TlsIssue::Other(m) => ("url", m),
                };
                self.issue(format!("{key}.{field}"), message);
                None
            }
        }
    }

    /// The TLS keys make sense on `https://` upstreams only: elsewhere they are a mistake.
    fn no_tls_keys(&mut self, key: &str, raw: &RawUpstream, what: &str) {
        for (field, set) in [
            ("ca_file", raw.ca_file.is_some()),
            ("server_name", raw.server_name.is_some()),
            ("client_cert", raw.client_cert.is_some()),
            ("client_key", raw.client_key.is_some()),
        ] {
            if set {
                self.issue(
                    format!("{key}.{field}"),
                    format!("applies to https:// upstreams only; {what} do not use TLS"),
                );
            }
        }
    }
}
