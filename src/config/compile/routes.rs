//! `[[routes]]`: host, path, methods, upstream, auth policy and header rules.

use std::collections::HashMap;
use std::time::Duration;

use http::Method;

use crate::canonical::{canonical_host, canonical_path};
use crate::config::raw::*;
use crate::csrf::CsrfPolicy;
use crate::policy::{ClaimRequirement, Policy, RouteAuth, TokenSource, Unauthenticated};
use crate::router::{HostMatch, PathMatch, Route, RouteTable};
use crate::upstream::Upstream;

use super::Compiler;

impl Compiler {
    /// The compiled routes, and the name each raw route had (by index, for messages).
    /// Consumes the raw routes one at a time: each is freed once compiled, so a big file's
    /// parsed and compiled routes are not all in memory at once.
    #[allow(
        clippy::vec_box,
        reason = "each route is freed once compiled (doc above)"
    )]
    pub(super) fn routes(
        &mut self,
        raw: Vec<Box<RawRoute>>,
        providers: &HashMap<String, usize>,
        upstreams: &HashMap<String, usize>,
    ) -> (Vec<Route>, Vec<Option<String>>) {
        let mut routes = Vec::with_capacity(raw.len());
        let mut names_by_index = Vec::with_capacity(raw.len());
        let mut names: HashMap<String, usize> = HashMap::with_capacity(raw.len());
        for (i, mut raw_route) in raw.into_iter().enumerate() {
            let key = format!("routes[{i}]");
            if let Some(name) = raw_route.name.as_deref()
                && let Some(first) = names.insert(name.to_owned(), i)
            {
                self.issue(
                    format!("{key}.name"),
                    format!(
                        "\"{name}\" is already the name of routes[{first}]; names must be unique"
                    ),
                );
            }
            if let Some(route) = self.route(&key, &raw_route, providers, upstreams) {
                routes.push(route);
            }
            names_by_index.push(raw_route.name.take());
        }
        (routes, names_by_index)
    }

    pub(super) fn route(
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
        let websocket = self.route_websocket(key, raw);
        let rate_limit = self.route_rate_limit(key, raw, auth.as_ref());
        let session_tokens = self.route_session_tokens(key, raw, auth.as_ref());
        let strip_prefix = raw.strip_prefix.as_deref().and_then(|strip| {
            let field = format!("{key}.strip_prefix");
            let strip = self.mapped_prefix(&field, strip)?;
            let route_path = match path.as_ref()? {
                PathMatch::Exact(p) | PathMatch::Prefix(p) => p.clone(),
            };
            let under = &*strip == "/"
                || route_path
                    .strip_prefix(&*strip)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
            if !under {
                self.issue(
                    field,
                    format!("\"{strip}\" is not a leading part of the route's path \"{route_path}\" (whole segments)"),
                );
                return None;
            }
            Some(strip)
        });
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
            strip_prefix,
            websocket,
            rate_limit,
            session_tokens,
            policy: 0,
            metrics: self.metrics.route(name),
        })
    }

    pub(super) fn route_host(&mut self, key: &str, host: Option<&str>) -> Option<HostMatch> {
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

    pub(super) fn route_path(&mut self, key: &str, raw: &RawRoute) -> Option<PathMatch> {
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

    pub(super) fn route_methods(
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

    pub(super) fn route_auth(
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
        let known = ["public", "jwt", "session", "api_key", "mtls"];
        if let Some(other) = modes.iter().find(|m| !known.contains(m)) {
            self.issue(
                format!("{key}.auth"),
                format!(
                    "\"{other}\" is not an auth mode; use \"public\", \"jwt\", \"session\", \"api_key\", \"mtls\" or a list such as [\"jwt\", \"session\"]"
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
                "list \"jwt\", \"api_key\", \"mtls\" and \"session\" once each; \"public\" stands alone",
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
        let api_key = modes.contains(&"api_key");
        let mtls = modes.contains(&"mtls");
        if mtls && self.client_cert_order.is_none() {
            self.issue(
                format!("{key}.auth"),
                "names \"mtls\" but the HTTPS listener asks for no client certificate; set [tls] client_ca = \"clients-ca.pem\"",
            );
        }
        if api_key && !self.api_keys_configured {
            self.issue(
                format!("{key}.auth"),
                "names \"api_key\" but there is no [api_keys] table; add one with file = \"api-keys.toml\"",
            );
        }
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
        policy.api_key = api_key;
        policy.mtls = mtls;
        policy.on_unauthenticated = on_unauthenticated;
        policy.csrf = csrf?;
        Some(RouteAuth::Protected(policy))
    }

    /// `csrf`, `csrf_allow_same_site`, `csrf_unsafe_methods` of a protected route.
    pub(super) fn route_csrf(&mut self, key: &str, raw: &RawRoute) -> Option<CsrfPolicy> {
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

    pub(super) fn jwt_policy(
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
            api_key: false,
            mtls: false,
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

/// One route's region of the app's path space: the paths it forwards, as the app sees them.
struct AppRegion<'a> {
    /// Where the route's paths land in the app (its whole path, mapped).
    path: String,
    exact: bool,
    /// `(app prefix, mount)` when the route maps paths.
    mapping: Option<(&'a str, &'a str)>,
}

fn app_region<'a>(route: &'a Route, upstreams: &'a [Upstream]) -> AppRegion<'a> {
    let (path, exact) = match &route.path {
        PathMatch::Exact(p) => (&**p, true),
        PathMatch::Prefix(p) => (&**p, false),
    };
    let prefix = upstreams[route.upstream].mapping.prefix.as_deref();
    let mapping = (prefix.is_some() || route.strip_prefix.is_some())
        .then(|| (prefix.unwrap_or("/"), route.mount()));
    let path = match mapping {
        None => path.to_owned(),
        Some((prefix, mount)) => {
            let pq = http::uri::PathAndQuery::try_from(path).expect("a canonical route path");
            crate::upstream::mapping::map_request(prefix, mount, &pq)
                .path()
                .to_owned()
        }
    };
    AppRegion {
        path,
        exact,
        mapping,
    }
}

/// `path` lies in `region` (segment-wise for a prefix region).
fn in_region(path: &str, region: &AppRegion<'_>) -> bool {
    if region.exact {
        return path == region.path;
    }
    region.path == "/"
        || path
            .strip_prefix(region.path.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// A host a request matched by `route` could carry (for a lookup in the table).
fn some_host(route: &Route) -> String {
    match &route.host {
        HostMatch::Exact(h) => h.to_string(),
        HostMatch::Wildcard(suffix) => format!("x{suffix}"),
        HostMatch::Any => "portcullis.invalid".to_owned(),
    }
}

impl Compiler {
    /// Path mapping must not open a second door to a path of the app: when a route that
    /// maps paths (`path_prefix` on its upstream, or its `strip_prefix`) reaches a part of
    /// the app that another route of the same upstream guards with another policy, the
    /// public path that reaches it through the first must be routed to that policy too.
    /// Example: `/crm` (public) mapped onto the app's `/`, beside `/admin` (jwt) unmapped:
    /// `/crm/admin` would reach the app's `/admin` without a token.
    pub(super) fn mapping_exposures(&mut self, table: &RouteTable, upstreams: &[Upstream]) {
        let routes = table.routes();
        if !routes
            .iter()
            .any(|r| r.strip_prefix.is_some() || upstreams[r.upstream].mapping.prefix.is_some())
        {
            return;
        }
        let regions: Vec<AppRegion<'_>> = routes.iter().map(|r| app_region(r, upstreams)).collect();
        for (a, door) in routes.iter().enumerate() {
            for (b, guarded) in routes.iter().enumerate() {
                if a == b
                    || door.upstream != guarded.upstream
                    || door.policy == guarded.policy
                    || (regions[a].mapping.is_none() && regions[b].mapping.is_none())
                    || !in_region(&regions[b].path, &regions[a])
                {
                    continue;
                }
                // The public path that reaches the guarded part through the door route.
                let public = match regions[a].mapping {
                    None => regions[b].path.clone(),
                    Some((prefix, mount)) => {
                        let rest = if prefix == "/" {
                            regions[b].path.as_str()
                        } else {
                            &regions[b].path[prefix.len()..]
                        };
                        match (mount, rest) {
                            ("/", "") => "/".to_owned(),
                            ("/", rest) => rest.to_owned(),
                            (mount, "/") => mount.to_owned(),
                            (mount, rest) => format!("{mount}{rest}"),
                        }
                    }
                };
                let method = guarded
                    .methods
                    .as_ref()
                    .and_then(|m| m.first().cloned())
                    .unwrap_or(http::Method::GET);
                let Some(found) = table.find(&some_host(door), &public, &method) else {
                    continue;
                };
                if found.policy != guarded.policy {
                    self.issue(
                        format!("routes[{b}]"),
                        format!(
                            "the app's {} (guarded here) is also reachable as {public} through route \"{}\", \
                             which maps paths onto the same upstream under another policy; \
                             add a route for {public} with this route's policy, or change the mapping",
                            regions[b].path, found.name
                        ),
                    );
                }
            }
        }
    }
}

impl Compiler {
    /// `forward_access_token` / `forward_id_token` of a route, over the `[login]` default.
    fn route_session_tokens(
        &mut self,
        key: &str,
        raw: &RawRoute,
        auth: Option<&RouteAuth>,
    ) -> crate::policy::SessionTokenHeaders {
        let session = matches!(auth, Some(RouteAuth::Protected(p)) if p.session);
        let defaults = self.login_token_headers.clone();
        let mut one = |field: &str,
                       setting: Option<&RawForwardSetting>,
                       default: Option<http::HeaderName>,
                       usual: &'static str| {
            let field = format!("{key}.{field}");
            let wanted = match setting {
                None => return default.filter(|_| session),
                Some(RawForwardSetting::On(false)) => return None,
                Some(RawForwardSetting::On(true)) => {
                    default.unwrap_or(http::HeaderName::from_static(usual))
                }
                Some(RawForwardSetting::Header(name)) => self.token_header(&field, name)?,
            };
            if !session {
                self.issue(
                    field,
                    "only a session route has a login session's tokens to send; add \"session\" to auth or remove this",
                );
                return None;
            }
            Some(wanted)
        };
        crate::policy::SessionTokenHeaders {
            access: one(
                "forward_access_token",
                raw.forward_access_token.as_ref(),
                defaults.access,
                "x-forwarded-access-token",
            ),
            id: one(
                "forward_id_token",
                raw.forward_id_token.as_ref(),
                defaults.id,
                "x-forwarded-id-token",
            ),
        }
    }

    /// `rate_limit`: the limiter (a new one; `adopt_rate_limits` keeps the old state).
    fn route_rate_limit(
        &mut self,
        key: &str,
        raw: &RawRoute,
        auth: Option<&RouteAuth>,
    ) -> Option<std::sync::Arc<crate::ratelimit::RateLimiter>> {
        use crate::ratelimit::{KeyKind, RateLimiter, Spec};
        let limit = raw.rate_limit.as_ref()?;
        let field = format!("{key}.rate_limit");
        let before = self.issues.len();
        let requests = match limit.requests {
            Some(0) | None => {
                self.issue(
                    format!("{field}.requests"),
                    "needs the number of requests per `per`, at least 1 (e.g. requests = 100)",
                );
                1
            }
            Some(n) => n,
        };
        let per = self.period(
            &format!("{field}.per"),
            limit.per.as_ref(),
            Duration::from_secs(1),
        );
        let burst = match limit.burst {
            Some(0) => {
                self.issue(
                    format!("{field}.burst"),
                    "must be at least 1 (default: requests)",
                );
                1
            }
            Some(n) => n,
            None => requests,
        };
        let public = matches!(auth, Some(RouteAuth::Public));
        let kind = match limit.key.as_deref() {
            None if public => KeyKind::Ip,
            None | Some("sub") => KeyKind::Subject,
            Some("ip") => KeyKind::Ip,
            Some("api_key") => KeyKind::ApiKey,
            Some(other) => {
                self.issue(
                    format!("{field}.key"),
                    format!("\"{other}\" is not a key; use \"sub\" (the verified identity), \"api_key\" (the API key's identity) or \"ip\" (the client's address)"),
                );
                KeyKind::Ip
            }
        };
        if kind == KeyKind::ApiKey && !matches!(auth, Some(RouteAuth::Protected(p)) if p.api_key) {
            self.issue(
                format!("{field}.key"),
                "is \"api_key\" but the route takes no API key; add \"api_key\" to auth",
            );
        }
        if public && kind == KeyKind::Subject {
            self.issue(
                format!("{field}.key"),
                "a public route has no identity to count by; use key = \"ip\"",
            );
        }
        let max_keys = self.positive(&format!("{field}.max_keys"), limit.max_keys, 100_000);
        let shared = match limit.shared.as_deref() {
            None => None,
            Some("redis") => match &self.redis_link {
                Some(link) => Some(link.clone()),
                None => {
                    self.issue(
                        format!("{field}.shared"),
                        "is \"redis\" but there is no [redis] table; add one with url = \"redis://...\"",
                    );
                    None
                }
            },
            Some(other) => {
                self.issue(
                    format!("{field}.shared"),
                    format!(
                        "\"{other}\" is not a choice; use \"redis\" or remove it (per instance)"
                    ),
                );
                None
            }
        };
        if self.issues.len() != before {
            return None;
        }
        let spec = Spec {
            requests,
            per,
            burst,
            key: kind,
            shared: shared.is_some(),
        };
        let limiter = RateLimiter::new(spec, max_keys);
        let name = raw.name.as_deref().unwrap_or_default();
        Some(std::sync::Arc::new(match shared {
            Some(link) => limiter.with_shared(link, name),
            None => limiter,
        }))
    }

    /// `websocket` and its limits; the limits without `websocket = true` are a mistake.
    fn route_websocket(&mut self, key: &str, raw: &RawRoute) -> Option<crate::policy::WebSocket> {
        if !raw.websocket {
            for (field, set) in [
                ("max_upgraded_lifetime", raw.max_upgraded_lifetime.is_some()),
                ("upgraded_idle_timeout", raw.upgraded_idle_timeout.is_some()),
                ("close_on_expiry", raw.close_on_expiry.is_some()),
            ] {
                if set {
                    self.issue(
                        format!("{key}.{field}"),
                        "applies to upgraded connections only; set websocket = true on the route",
                    );
                }
            }
            return None;
        }
        Some(crate::policy::WebSocket {
            idle_timeout: self.period(
                &format!("{key}.upgraded_idle_timeout"),
                raw.upgraded_idle_timeout.as_ref(),
                std::time::Duration::from_secs(600),
            ),
            max_lifetime: self.period(
                &format!("{key}.max_upgraded_lifetime"),
                raw.max_upgraded_lifetime.as_ref(),
                std::time::Duration::from_secs(86_400),
            ),
            close_on_expiry: raw.close_on_expiry.unwrap_or(true),
        })
    }
}
