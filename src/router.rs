//! The compiled route table: which route a (host, path, method) belongs to.
//!
//! Second step of the request path, after canonicalisation. Matching is pure and does not
//! allocate: a handful of hash lookups whatever the number of routes.
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

use std::collections::HashMap;

use http::Method;

use crate::auth::RouteAuth;

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
    pub allow_method_override: bool,
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
}

/// Routes of one host group, indexed by exact path and by prefix.
#[derive(Default)]
struct PathTable {
    exact: HashMap<Box<str>, Vec<usize>>,
    prefixes: HashMap<Box<str>, Vec<usize>>,
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

/// All routes of a snapshot.
pub struct RouteTable {
    routes: Vec<Route>,
    exact_hosts: HashMap<Box<str>, PathTable>,
    wildcard_hosts: HashMap<Box<str>, PathTable>,
    any_host: PathTable,
    any_allows_encoded_slash: bool,
}

/// Two routes that can never be told apart (the later one would never match).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conflict {
    pub first: usize,
    pub second: usize,
}

impl RouteTable {
    /// Indexes `routes`; fails on routes that match exactly the same requests.
    pub fn new(routes: Vec<Route>) -> Result<Self, Vec<Conflict>> {
        let mut table = RouteTable {
            routes: Vec::new(),
            exact_hosts: HashMap::new(),
            wildcard_hosts: HashMap::new(),
            any_host: PathTable::default(),
            any_allows_encoded_slash: routes.iter().any(|r| r.allow_encoded_slash),
        };
        let mut conflicts = Vec::new();
        for (index, route) in routes.iter().enumerate() {
            let paths = match &route.host {
                HostMatch::Any => &mut table.any_host,
                HostMatch::Exact(h) => table.exact_hosts.entry(h.clone()).or_default(),
                HostMatch::Wildcard(s) => table.wildcard_hosts.entry(s.clone()).or_default(),
            };
            let (map, key) = match &route.path {
                PathMatch::Exact(p) => (&mut paths.exact, p),
                PathMatch::Prefix(p) => (&mut paths.prefixes, p),
            };
            let slot = map.entry(key.clone()).or_default();
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
        table.routes = routes;
        Ok(table)
    }

    /// The route for a canonical host (lower-case, no port) and canonical path.
    pub fn find(&self, host: &str, path: &str, method: &Method) -> Option<&Route> {
        self.find_index(host, path, method).map(|i| &self.routes[i])
    }

    /// Like `find`, as an index into `routes()`.
    pub fn find_index(&self, host: &str, path: &str, method: &Method) -> Option<usize> {
        if let Some(found) = self
            .exact_hosts
            .get(host)
            .and_then(|t| t.find(&self.routes, path, method))
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
                    .and_then(|t| t.find(&self.routes, path, method))
                {
                    return Some(found);
                }
                rest = &suffix[1..];
            }
        }
        self.any_host.find(&self.routes, path, method)
    }

    /// Whether some route lets `%2F` through (else such paths are refused before matching).
    pub fn any_allows_encoded_slash(&self) -> bool {
        self.any_allows_encoded_slash
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
            allow_method_override: false,
            metrics: crate::metrics::Metrics::new().route(name),
        }
    }

    fn prefix(p: &str) -> PathMatch {
        PathMatch::Prefix(p.into())
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
