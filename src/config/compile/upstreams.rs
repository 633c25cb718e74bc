//! `[upstreams.NAME]`: the apps behind the gateway.

use std::collections::{BTreeMap, HashMap};

use std::time::Duration;

use http::Uri;

use crate::config::raw::*;
use crate::readings::PathSemantics;
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

    pub(super) fn upstream_url(&mut self, key: &str, url: &str) -> Option<http::uri::Authority> {
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
}
