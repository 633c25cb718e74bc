//! The compiled route table: which route a (host, path, method) belongs to.
//!
//! Second step of the request path, after canonicalisation. Matching is pure and does not
//! allocate: a handful of hash lookups whatever the number of routes.
//!
//! The maps hash with FxHash rather than SipHash: their keys are the config's route paths
//! and hosts, so a client choosing lookup keys cannot make them collide (flooding needs
//! control of what is inserted), and SipHash of a path was a hundred instructions a lookup.
//!
//! Precedence (most specific wins, deterministic, independent of file order):
//! 1. host: exact host, then wildcard `*.suffix` (longest suffix first), then routes with no
//!    host; a group with no matching path falls through to the next group;
//! 2. path: exact `path`, then `path_prefix` from longest to shortest, on segment boundaries
//!    (`/api` matches `/api`, `/api/`, `/api/x`, never `/apix`);
//! 3. method: a route restricted to the request's method before an unrestricted one.
//!
//! Two routes with the same host, path and overlapping methods are a config error, so no
//! tie is ever decided by file order.
//!
//! Each route also carries a policy class: routes whose auth, requirements and header rules
//! are equal share one. Reading agreement (`readings.rs`) compares classes, since a backend
//! that reads a path differently only matters when it lands under another policy. When a
//! route path has upper-case letters, a second index over the lower-cased paths answers
//! the case-folded readings (IIS matches `/admin` to an `/Admin` resource).

use std::collections::HashMap;

use rustc_hash::FxHashMap;

use http::Method;

use crate::policy::RouteAuth;

/// One compiled route.
pub struct Route {
    pub name: Box<str>,
    pub host: HostMatch,
    pub path: PathMatch,
    /// `None`: every method.
    pub methods: Option<Box<[Method]>>,
    /// Index into `Snapshot::upstreams`.
    pub upstream: usize,
    pub auth: RouteAuth,
    /// Request body limit in bytes.
    pub max_body_size: Option<u64>,
    pub allow_encoded_slash: bool,
    /// `;params` in path segments are removed for matching and kept when forwarding.
    pub allow_path_params: bool,
    pub allow_method_override: bool,
    /// Send `X-Original-URL` with the canonical target.
    pub forward_original_uri: bool,
    /// `strip_prefix`: where the upstream is mounted, when not the whole matched path.
    pub strip_prefix: Option<Box<str>>,
    /// `websocket` and its limits: `None` when the route does not upgrade.
    pub websocket: Option<crate::policy::WebSocket>,
    /// Where a login session's tokens go to the app on this route.
    pub session_tokens: crate::policy::SessionTokenHeaders,
    /// `rate_limit`: shared with the same route of the next config when it is unchanged.
    pub rate_limit: Option<std::sync::Arc<crate::ratelimit::RateLimiter>>,
    /// Routes with equal policies share a class (set by [`RouteTable::new`]).
    pub policy: u32,
    pub metrics: crate::metrics::RouteMetrics,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostMatch {
    Any,
    Exact(Box<str>),
    /// Stored as the suffix with its leading dot (`.example.com`).
    Wildcard(Box<str>),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PathMatch {
    Exact(Box<str>),
    /// Without a trailing slash, except the root prefix `/`.
    Prefix(Box<str>),
}

impl Route {
    fn allows(&self, method: &Method) -> bool {
        self.methods.as_ref().is_none_or(|m| m.contains(method))
    }

    /// Where the route's upstream is mounted (see `upstream::mapping`): its `strip_prefix`,
    /// else its whole path.
    pub fn mount(&self) -> &str {
        match (&self.strip_prefix, &self.path) {
            (Some(mount), _) => mount,
            (None, PathMatch::Exact(path) | PathMatch::Prefix(path)) => path,
        }
    }
}

/// Routes of one host group, indexed by exact path and by prefix.
#[derive(Default)]
struct PathTable {
    exact: FxHashMap<Box<str>, Vec<usize>>,
    prefixes: FxHashMap<Box<str>, Vec<usize>>,
}

impl PathTable {
    fn find(&self, routes: &[Route], path: &str, method: &Method) -> Option<usize> {
        if let Some(found) = self
            .exact
            .get(path)
            .and_then(|c| first_allowing(routes, c, method))
        {
            return Some(found);
        }
        if self.prefixes.is_empty() {
            return None;
        }
        let mut candidate = match path.strip_suffix('/') {
            Some(trimmed) if !trimmed.is_empty() => trimmed,
            _ => path,
        };
        loop {
            if let Some(found) = self
                .prefixes
                .get(candidate)
                .and_then(|c| first_allowing(routes, c, method))
            {
                return Some(found);
            }
            if candidate == "/" {
                return None;
            }
            candidate = match candidate.rfind('/') {
                Some(0) | None => "/",
                Some(cut) => &candidate[..cut],
            };
        }
    }
}

fn first_allowing(routes: &[Route], candidates: &[usize], method: &Method) -> Option<usize> {
    candidates
        .iter()
        .copied()
        .find(|&i| routes[i].allows(method))
}

/// Routes by host group, then path.
#[derive(Default)]
struct Index {
    exact_hosts: FxHashMap<Box<str>, PathTable>,
    wildcard_hosts: FxHashMap<Box<str>, PathTable>,
    any_host: PathTable,
}

impl Index {
    /// The path table `route` belongs in, with `path` as its key.
    fn slot(&mut self, route: &Route, path: Box<str>, exact: bool) -> &mut Vec<usize> {
        let paths = match &route.host {
            HostMatch::Any => &mut self.any_host,
            HostMatch::Exact(h) => self.exact_hosts.entry(h.clone()).or_default(),
            HostMatch::Wildcard(s) => self.wildcard_hosts.entry(s.clone()).or_default(),
        };
        let map = if exact {
            &mut paths.exact
        } else {
            &mut paths.prefixes
        };
        map.entry(path).or_default()
    }

    fn find(&self, routes: &[Route], host: &str, path: &str, method: &Method) -> Option<usize> {
        if let Some(found) = self
            .exact_hosts
            .get(host)
            .and_then(|t| t.find(routes, path, method))
        {
            return Some(found);
        }
        if !self.wildcard_hosts.is_empty() {
            // Longest suffix first: for a.b.example.com try .b.example.com, then .example.com...
            let mut rest = host;
            while let Some(dot) = rest.find('.') {
                let suffix = &rest[dot..];
                if let Some(found) = self
                    .wildcard_hosts
                    .get(suffix)
                    .and_then(|t| t.find(routes, path, method))
                {
                    return Some(found);
                }
                rest = &suffix[1..];
            }
        }
        self.any_host.find(routes, path, method)
    }
}

/// All routes of a snapshot.
pub struct RouteTable {
    routes: Vec<Route>,
    index: Index,
    /// The same routes by lower-cased path, when some route path has upper-case letters.
    folded: Option<Index>,
    any_allows_encoded_slash: bool,
    any_allows_path_params: bool,
    exact_with_slash: bool,
    exact_without_slash: bool,
}

/// Two routes that can never be told apart (the later one would never match).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conflict {
    pub first: usize,
    pub second: usize,
}

impl RouteTable {
    /// Indexes `routes` and assigns their policy classes; fails on routes that match
    /// exactly the same requests.
    pub fn new(mut routes: Vec<Route>) -> Result<Self, Vec<Conflict>> {
        let exact_paths = routes.iter().filter_map(|r| match &r.path {
            PathMatch::Exact(p) if &**p != "/" => Some(p),
            _ => None,
        });
        let mut table = RouteTable {
            routes: Vec::new(),
            index: Index::default(),
            folded: None,
            any_allows_encoded_slash: routes.iter().any(|r| r.allow_encoded_slash),
            any_allows_path_params: routes.iter().any(|r| r.allow_path_params),
            exact_with_slash: exact_paths.clone().any(|p| p.ends_with('/')),
            exact_without_slash: exact_paths.clone().any(|p| !p.ends_with('/')),
        };
        let key = |route: &Route| match &route.path {
            PathMatch::Exact(p) => (p.clone(), true),
            PathMatch::Prefix(p) => (p.clone(), false),
        };
        let mut conflicts = Vec::new();
        for (index, route) in routes.iter().enumerate() {
            let (path, exact) = key(route);
            let slot = table.index.slot(route, path, exact);
            if let Some(&first) = slot.iter().find(|&&i| methods_overlap(&routes[i], route)) {
                conflicts.push(Conflict {
                    first,
                    second: index,
                });
                continue;
            }
            slot.push(index);
            // Restricted routes first; stable, so file order breaks no real ties.
            slot.sort_by_key(|&i| routes[i].methods.is_none());
        }
        if !conflicts.is_empty() {
            return Err(conflicts);
        }
        if routes
            .iter()
            .any(|r| key(r).0.bytes().any(|b| b.is_ascii_uppercase()))
        {
            // Routes that differ only in case share a slot here: the first that allows the
            // method answers, and a folded reading that lands on the other is refused.
            let mut folded = Index::default();
            for (index, route) in routes.iter().enumerate() {
                let (path, exact) = key(route);
                let slot = folded.slot(route, path.to_ascii_lowercase().into(), exact);
                slot.push(index);
                slot.sort_by_key(|&i| routes[i].methods.is_none());
            }
            table.folded = Some(folded);
        }
        // A rate limit is part of the policy: a reading that lands on a route with another
        // limit (or none) would escape it.
        type Class<'a> = (&'a RouteAuth, bool, Option<crate::ratelimit::Spec>);
        let mut classes: HashMap<Class<'_>, u32> = HashMap::new();
        let policies: Vec<u32> = routes
            .iter()
            .map(|r| {
                let next = classes.len() as u32;
                *classes
                    .entry((
                        &r.auth,
                        r.allow_method_override,
                        r.rate_limit.as_ref().map(|l| *l.spec()),
                    ))
                    .or_insert(next)
            })
            .collect();
        for (route, policy) in routes.iter_mut().zip(policies) {
            route.policy = policy;
        }
        table.routes = routes;
        Ok(table)
    }

    /// The route for a canonical host (lower-case, no port) and canonical path.
    pub fn find(&self, host: &str, path: &str, method: &Method) -> Option<&Route> {
        self.find_index(host, path, method).map(|i| &self.routes[i])
    }

    /// Like `find`, as an index into `routes()`.
    pub fn find_index(&self, host: &str, path: &str, method: &Method) -> Option<usize> {
        self.index.find(&self.routes, host, path, method)
    }

    /// Like `find_index` for a lower-cased path, matched against the lower-cased route
    /// paths (a case-insensitive app's reading).
    pub fn find_index_folded(&self, host: &str, path: &str, method: &Method) -> Option<usize> {
        self.folded
            .as_ref()
            .unwrap_or(&self.index)
            .find(&self.routes, host, path, method)
    }

    /// Whether some route lets `%2F` through (else such paths are refused before matching).
    pub fn any_allows_encoded_slash(&self) -> bool {
        self.any_allows_encoded_slash
    }

    /// Whether some route matches with `;params` removed.
    pub fn any_allows_path_params(&self) -> bool {
        self.any_allows_path_params
    }

    /// Some route path has upper-case letters: a case-folded reading can change the route
    /// of any path.
    pub fn fold_sensitive(&self) -> bool {
        self.folded.is_some()
    }

    /// Some exact route path (other than `/`) ends with `/`.
    pub fn has_exact_with_slash(&self) -> bool {
        self.exact_with_slash
    }

    /// Some exact route path does not end with `/`.
    pub fn has_exact_without_slash(&self) -> bool {
        self.exact_without_slash
    }

    /// Some exact routes (other than `/`): only they tell `/x` from `/x/`.
    pub fn has_exact(&self) -> bool {
        self.exact_with_slash || self.exact_without_slash
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}

fn methods_overlap(a: &Route, b: &Route) -> bool {
    match (&a.methods, &b.methods) {
        (None, None) => true,
        (Some(x), Some(y)) => x.iter().any(|m| y.contains(m)),
        // A restricted route and an unrestricted one coexist: the restricted one wins for
        // its methods, the other takes the rest.
        _ => false,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A table of public prefix routes named after their prefix.
    pub(crate) fn prefix_table(prefixes: &[&str]) -> RouteTable {
        let routes = prefixes
            .iter()
            .map(|p| route(p, HostMatch::Any, prefix(p), None))
            .collect();
        RouteTable::new(routes).unwrap_or_else(|_| panic!("conflict"))
    }

    fn route(name: &str, host: HostMatch, path: PathMatch, methods: Option<&[Method]>) -> Route {
        Route {
            name: name.into(),
            host,
            path,
            methods: methods.map(|m| m.to_vec().into_boxed_slice()),
            upstream: 0,
            auth: RouteAuth::Public,
            max_body_size: None,
            allow_encoded_slash: false,
            allow_path_params: false,
            allow_method_override: false,
            forward_original_uri: false,
            strip_prefix: None,
            websocket: None,
            rate_limit: None,
            session_tokens: Default::default(),
            policy: 0,
            metrics: crate::metrics::Metrics::new().route(name),
        }
    }

    fn prefix(p: &str) -> PathMatch {
        PathMatch::Prefix(p.into())
    }

    #[test]
    fn a_rate_limit_is_part_of_the_policy_class() {
        use crate::ratelimit::{KeyKind, RateLimiter, Spec};
        let limiter = |requests| {
            let spec = Spec {
                requests,
                per: std::time::Duration::from_secs(1),
                burst: requests,
                key: KeyKind::Ip,
                shared: false,
            };
            Some(std::sync::Arc::new(RateLimiter::new(spec, 10)))
        };
        let mut limited = route("limited", HostMatch::Any, prefix("/a"), None);
        limited.rate_limit = limiter(5);
        let mut same = route("same", HostMatch::Any, prefix("/b"), None);
        same.rate_limit = limiter(5);
        let mut other = route("other", HostMatch::Any, prefix("/c"), None);
        other.rate_limit = limiter(6);
        let open = route("open", HostMatch::Any, prefix("/d"), None);
        let table = RouteTable::new(vec![limited, same, other, open]).unwrap_or_else(|_| panic!());
        let class: Vec<u32> = table.routes().iter().map(|r| r.policy).collect();
        assert_eq!(class[0], class[1]);
        assert_ne!(class[0], class[2]);
        assert_ne!(class[0], class[3]);
        assert_ne!(class[2], class[3]);
    }

    fn table() -> RouteTable {
        RouteTable::new(vec![
            route("root", HostMatch::Any, prefix("/"), None),
            route("api", HostMatch::Any, prefix("/api"), None),
            route("api-v1", HostMatch::Any, prefix("/api/v1"), None),
            route(
                "api-post",
                HostMatch::Any,
                prefix("/api"),
                Some(&[Method::POST]),
            ),
            route(
                "exact",
                HostMatch::Any,
                PathMatch::Exact("/api/v1/x".into()),
                None,
            ),
            route(
                "crm",
                HostMatch::Exact("crm.example.com".into()),
                prefix("/api"),
                None,
            ),
            route(
                "wild",
                HostMatch::Wildcard(".example.com".into()),
                prefix("/api"),
                None,
            ),
            route(
                "wild2",
                HostMatch::Wildcard(".b.example.com".into()),
                prefix("/api"),
                None,
            ),
        ])
        .unwrap_or_else(|_| panic!("conflict"))
    }

    fn name<'a>(t: &'a RouteTable, host: &str, path: &str, m: Method) -> Option<&'a str> {
        t.find(host, path, &m).map(|r| &*r.name)
    }

    #[test]
    fn prefixes_match_on_segment_boundaries() {
        let t = table();
        assert_eq!(name(&t, "x", "/api", Method::GET), Some("api"));
        assert_eq!(name(&t, "x", "/api/", Method::GET), Some("api"));
        assert_eq!(name(&t, "x", "/api/z", Method::GET), Some("api"));
        assert_eq!(name(&t, "x", "/apix", Method::GET), Some("root"));
        assert_eq!(name(&t, "x", "/api/v1", Method::GET), Some("api-v1"));
        assert_eq!(name(&t, "x", "/api/v10", Method::GET), Some("api"));
        assert_eq!(name(&t, "x", "/", Method::GET), Some("root"));
    }

    #[test]
    fn exact_path_beats_longer_prefix() {
        let t = table();
        assert_eq!(name(&t, "x", "/api/v1/x", Method::GET), Some("exact"));
        assert_eq!(name(&t, "x", "/api/v1/x/", Method::GET), Some("api-v1"));
        assert_eq!(name(&t, "x", "/api/v1/x/y", Method::GET), Some("api-v1"));
    }

    #[test]
    fn method_restricted_route_only_matches_its_methods() {
        let t = table();
        assert_eq!(name(&t, "x", "/api/a", Method::POST), Some("api-post"));
        assert_eq!(name(&t, "x", "/api/a", Method::GET), Some("api"));
    }

    #[test]
    fn exact_host_beats_wildcard_beats_any() {
        let t = table();
        assert_eq!(
            name(&t, "crm.example.com", "/api/x", Method::GET),
            Some("crm")
        );
        assert_eq!(
            name(&t, "hr.example.com", "/api/x", Method::GET),
            Some("wild")
        );
        assert_eq!(
            name(&t, "a.b.example.com", "/api/x", Method::GET),
            Some("wild2")
        );
        assert_eq!(name(&t, "example.com", "/api/x", Method::GET), Some("api"));
        assert_eq!(
            name(&t, "crm.example.com", "/other", Method::GET),
            Some("root")
        );
    }

    #[test]
    fn nothing_matches_without_a_catch_all() {
        let t = RouteTable::new(vec![route("api", HostMatch::Any, prefix("/api"), None)])
            .unwrap_or_else(|_| panic!("conflict"));
        assert_eq!(name(&t, "x", "/", Method::GET), None);
        assert_eq!(name(&t, "x", "/apix", Method::GET), None);
        assert_eq!(name(&t, "x", "/other/api", Method::GET), None);
    }

    #[test]
    fn identical_routes_conflict() {
        let conflicts = RouteTable::new(vec![
            route(
                "a",
                HostMatch::Any,
                prefix("/api"),
                Some(&[Method::GET, Method::POST]),
            ),
            route("b", HostMatch::Any, prefix("/api"), Some(&[Method::POST])),
            route("c", HostMatch::Any, prefix("/api"), Some(&[Method::PUT])),
            route("d", HostMatch::Any, prefix("/api"), None),
            route("e", HostMatch::Any, prefix("/api"), None),
        ])
        .err()
        .expect("conflicts");
        assert_eq!(
            conflicts,
            vec![
                Conflict {
                    first: 0,
                    second: 1
                },
                Conflict {
                    first: 3,
                    second: 4
                }
            ]
        );
    }
}
