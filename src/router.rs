//! The compiled route table: which route a (host, path, method) belongs to.
//!
//! Second step of the request path, after canonicalisation. Matching is pure and does not
//! allocate: a handful of hash lookups whatever the number of routes. There is one host
//! table (and one of wildcard suffixes) and one flat table of every (host group, path),
//! each key inline in its slot up to 22 bytes; a host group records which path lengths it
//! has, so a prefix match probes only those. At 100k routes a match reads a host slot and
//! mostly one path slot (`docs/performance.md`, route matching).
//!
//! The tables hash with FxHash rather than SipHash: their keys are the config's route paths
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

use std::hash::Hasher;

use hashbrown::HashTable;
use rustc_hash::FxHasher;

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

/// A host or route path as a table key, kept inline up to 22 bytes: a hit then reads one
/// slot of the table and no string elsewhere in memory.
#[derive(Clone)]
enum Key {
    Inline { len: u8, bytes: [u8; INLINE_KEY] },
    Heap(Box<[u8]>),
}

const INLINE_KEY: usize = 22;

impl Key {
    fn new(text: &str) -> Key {
        let text = text.as_bytes();
        if text.len() <= INLINE_KEY {
            let mut bytes = [0; INLINE_KEY];
            bytes[..text.len()].copy_from_slice(text);
            Key::Inline {
                len: text.len() as u8,
                bytes,
            }
        } else {
            Key::Heap(text.into())
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            Key::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Key::Heap(bytes) => bytes,
        }
    }
}

fn key_hash(tag: u32, bytes: &[u8]) -> u64 {
    let mut hasher = FxHasher::default();
    hasher.write_u32(tag);
    hasher.write(bytes);
    hasher.finish()
}

/// One bit per standard method; every extension method shares [`OTHER`], and a route
/// restricted to extension methods is then asked itself.
fn method_bit(method: &Method) -> u16 {
    match method.as_str() {
        "GET" => 1,
        "HEAD" => 1 << 1,
        "POST" => 1 << 2,
        "PUT" => 1 << 3,
        "DELETE" => 1 << 4,
        "OPTIONS" => 1 << 5,
        "PATCH" => 1 << 6,
        "TRACE" => 1 << 7,
        "CONNECT" => 1 << 8,
        _ => OTHER,
    }
}

const OTHER: u16 = 1 << 9;
const ALL_METHODS: u16 = u16::MAX;

fn method_mask(route: &Route) -> u16 {
    match &route.methods {
        None => ALL_METHODS,
        Some(methods) => methods.iter().fold(0, |mask, m| mask | method_bit(m)),
    }
}

/// Bit `min(n, 63)`: path lengths in segments, so that a table is only asked for the lengths
/// it holds.
fn depth_bit(depth: usize) -> u64 {
    1 << depth.min(63)
}

/// A prefix's length in segments, from its number of `/`: one each, but `/` is 0.
fn prefix_depth(prefix: &str, slashes: usize) -> usize {
    slashes - usize::from(prefix == "/")
}

fn slashes(path: &str) -> usize {
    path.bytes().filter(|&b| b == b'/').count()
}

/// A host group (one exact host, one wildcard suffix, or no host): its id in path keys, and
/// which exact paths (by number of `/`) and prefixes (by segments, `/` being 0) it has.
#[derive(Clone, Copy, Default)]
struct Group {
    id: u32,
    exact_slashes: u64,
    prefix_depths: u64,
}

struct HostSlot {
    key: Key,
    group: Group,
}

/// The routes of one (host group, exact path or prefix): the first candidate inline
/// (method-restricted routes come first), the others, rarely any, in `Index::more`.
struct PathSlot {
    key: Key,
    /// `group id << 1 | exact`.
    tag: u32,
    route: u32,
    mask: u16,
    /// Index into `Index::more`, or `NO_MORE`.
    more: u32,
}

const NO_MORE: u32 = u32::MAX;

// One cache line holds a slot whole most of the time.
const _: () = assert!(std::mem::size_of::<PathSlot>() <= 40);
const _: () = assert!(std::mem::size_of::<HostSlot>() <= 48);

/// Routes by host group, then path: two small host tables and one flat table of every
/// (group, path), so that a match reads a host slot and, for each length the group has, one
/// path slot, wherever the routes sit in memory.
#[derive(Default)]
struct Index {
    hosts: HashTable<HostSlot>,
    /// Keyed by the suffix with its leading dot.
    wildcards: HashTable<HostSlot>,
    any_host: Group,
    paths: HashTable<PathSlot>,
    more: Vec<Box<[u32]>>,
    groups: u32,
}

impl Index {
    /// Room for `routes` paths from the start: growing by doubling would keep the old
    /// table and the new one at once, each rehash (the compile peak of a big config).
    fn with_capacity(routes: usize) -> Index {
        Index {
            paths: HashTable::with_capacity(routes),
            ..Index::default()
        }
    }

    /// Adds route `index` under `path`; with `check`, refuses it (naming the route it
    /// collides with) when a route of the same slot has an overlapping method.
    fn insert(
        &mut self,
        routes: &[Route],
        index: usize,
        path: &str,
        exact: bool,
        check: bool,
    ) -> Result<(), usize> {
        let route = &routes[index];
        let group = self.group(&route.host);
        if exact {
            group.exact_slashes |= depth_bit(slashes(path));
        } else {
            group.prefix_depths |= depth_bit(prefix_depth(path, slashes(path)));
        }
        let tag = group.id << 1 | u32::from(exact);
        let hash = key_hash(tag, path.as_bytes());
        let Index { paths, more, .. } = self;
        let eq = |s: &PathSlot| s.tag == tag && s.key.as_bytes() == path.as_bytes();
        let Some(slot) = paths.find_mut(hash, eq) else {
            let slot = PathSlot {
                key: Key::new(path),
                tag,
                route: index as u32,
                mask: method_mask(route),
                more: NO_MORE,
            };
            paths.insert_unique(hash, slot, |s| key_hash(s.tag, s.key.as_bytes()));
            return Ok(());
        };
        let mut candidates = vec![slot.route];
        if slot.more != NO_MORE {
            candidates.extend_from_slice(&more[slot.more as usize]);
        }
        if check {
            let overlapping = candidates
                .iter()
                .find(|&&i| methods_overlap(&routes[i as usize], route));
            if let Some(&first) = overlapping {
                return Err(first as usize);
            }
        }
        candidates.push(index as u32);
        // Restricted routes first; stable, so file order breaks no real ties.
        candidates.sort_by_key(|&i| routes[i as usize].methods.is_none());
        slot.route = candidates[0];
        slot.mask = method_mask(&routes[candidates[0] as usize]);
        let rest = candidates[1..].into();
        if slot.more == NO_MORE {
            slot.more = more.len() as u32;
            more.push(rest);
        } else {
            more[slot.more as usize] = rest;
        }
        Ok(())
    }

    fn group(&mut self, host: &HostMatch) -> &mut Group {
        let (table, name) = match host {
            HostMatch::Any => return &mut self.any_host,
            HostMatch::Exact(name) => (&mut self.hosts, name),
            HostMatch::Wildcard(suffix) => (&mut self.wildcards, suffix),
        };
        let hash = key_hash(0, name.as_bytes());
        let entry = table.entry(
            hash,
            |s| s.key.as_bytes() == name.as_bytes(),
            |s| key_hash(0, s.key.as_bytes()),
        );
        let slot = entry.or_insert_with(|| {
            self.groups += 1;
            HostSlot {
                key: Key::new(name),
                group: Group {
                    id: self.groups,
                    ..Group::default()
                },
            }
        });
        &mut slot.into_mut().group
    }

    fn shrink(&mut self) {
        let rehash = |s: &HostSlot| key_hash(0, s.key.as_bytes());
        self.hosts.shrink_to_fit(rehash);
        self.wildcards.shrink_to_fit(rehash);
        self.paths
            .shrink_to_fit(|s| key_hash(s.tag, s.key.as_bytes()));
        self.more.shrink_to_fit();
    }

    fn find(&self, routes: &[Route], host: &str, path: &str, method: &Method) -> Option<usize> {
        let request = Request {
            path,
            slashes: slashes(path),
            method,
            bit: method_bit(method),
        };
        if let Some(found) =
            host_group(&self.hosts, host).and_then(|group| self.find_in(routes, group, &request))
        {
            return Some(found);
        }
        if !self.wildcards.is_empty() {
            // Longest suffix first: for a.b.example.com try .b.example.com, then .example.com...
            let mut rest = host;
            while let Some(dot) = rest.find('.') {
                let suffix = &rest[dot..];
                if let Some(found) = host_group(&self.wildcards, suffix)
                    .and_then(|group| self.find_in(routes, group, &request))
                {
                    return Some(found);
                }
                rest = &suffix[1..];
            }
        }
        self.find_in(routes, &self.any_host, &request)
    }

    /// Within one host group: the exact path, then prefixes from the longest, on segment
    /// boundaries.
    fn find_in(&self, routes: &[Route], group: &Group, request: &Request) -> Option<usize> {
        let path = request.path;
        if group.exact_slashes & depth_bit(request.slashes) != 0
            && let Some(found) = self.find_slot(routes, group.id << 1 | 1, path, request)
        {
            return Some(found);
        }
        if group.prefix_depths == 0 {
            return None;
        }
        let mut candidate = match path.strip_suffix('/') {
            Some(trimmed) if !trimmed.is_empty() => trimmed,
            _ => path,
        };
        // The `/` in `candidate`, kept exact as it shrinks: each cut takes one away.
        let mut count = request.slashes - (path.len() - candidate.len());
        loop {
            debug_assert_eq!(count, slashes(candidate));
            if group.prefix_depths & depth_bit(prefix_depth(candidate, count)) != 0
                && let Some(found) = self.find_slot(routes, group.id << 1, candidate, request)
            {
                return Some(found);
            }
            if candidate == "/" {
                return None;
            }
            (candidate, count) = match candidate.rfind('/') {
                Some(0) | None => ("/", 1),
                Some(cut) => (&candidate[..cut], count - 1),
            };
        }
    }

    fn find_slot(&self, routes: &[Route], tag: u32, key: &str, request: &Request) -> Option<usize> {
        let slot = self.paths.find(key_hash(tag, key.as_bytes()), |s| {
            s.tag == tag && s.key.as_bytes() == key.as_bytes()
        })?;
        let first = slot.route as usize;
        if slot.mask & request.bit != 0
            && (request.bit != OTHER
                || slot.mask == ALL_METHODS
                || routes[first].allows(request.method))
        {
            return Some(first);
        }
        if slot.more == NO_MORE {
            return None;
        }
        self.more[slot.more as usize]
            .iter()
            .map(|&i| i as usize)
            .find(|&i| routes[i].allows(request.method))
    }
}

/// What a match needs of the request, worked out once for all the groups it asks.
struct Request<'a> {
    path: &'a str,
    slashes: usize,
    method: &'a Method,
    bit: u16,
}

fn host_group<'a>(table: &'a HashTable<HostSlot>, host: &str) -> Option<&'a Group> {
    table
        .find(key_hash(0, host.as_bytes()), |s| {
            s.key.as_bytes() == host.as_bytes()
        })
        .map(|s| &s.group)
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
            index: Index::with_capacity(routes.len()),
            folded: None,
            any_allows_encoded_slash: routes.iter().any(|r| r.allow_encoded_slash),
            any_allows_path_params: routes.iter().any(|r| r.allow_path_params),
            exact_with_slash: exact_paths.clone().any(|p| p.ends_with('/')),
            exact_without_slash: exact_paths.clone().any(|p| !p.ends_with('/')),
        };
        fn key(route: &Route) -> (&str, bool) {
            match &route.path {
                PathMatch::Exact(p) => (p, true),
                PathMatch::Prefix(p) => (p, false),
            }
        }
        let mut conflicts = Vec::new();
        for index in 0..routes.len() {
            let (path, exact) = key(&routes[index]);
            if let Err(first) = table.index.insert(&routes, index, path, exact, true) {
                conflicts.push(Conflict {
                    first,
                    second: index,
                });
            }
        }
        if !conflicts.is_empty() {
            return Err(conflicts);
        }
        table.index.shrink();
        if routes
            .iter()
            .any(|r| key(r).0.bytes().any(|b| b.is_ascii_uppercase()))
        {
            // Routes that differ only in case share a slot here: the first that allows the
            // method answers, and a folded reading that lands on the other is refused.
            let mut folded = Index::with_capacity(routes.len());
            for index in 0..routes.len() {
                let (path, exact) = key(&routes[index]);
                let lower = path.to_ascii_lowercase();
                // Unchecked (`check` false), so never refused: paths that differ only in
                // case are meant to share a slot here.
                let _ = folded.insert(&routes, index, &lower, exact, false);
            }
            folded.shrink();
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

    /// The most specific route by reading the precedence rules straight off every route:
    /// what the index must answer, however it is built.
    fn reference(
        routes: &[Route],
        host: &str,
        path: &str,
        method: &Method,
        fold: bool,
    ) -> Option<usize> {
        let key = |p: &str| {
            if fold {
                p.to_ascii_lowercase()
            } else {
                p.to_owned()
            }
        };
        let mut groups = vec![HostMatch::Exact(host.into())];
        let mut rest = host;
        while let Some(dot) = rest.find('.') {
            groups.push(HostMatch::Wildcard(rest[dot..].into()));
            rest = &rest[dot + 1..];
        }
        groups.push(HostMatch::Any);
        let allowing = |candidates: Vec<usize>| {
            candidates
                .into_iter()
                .filter(|&i| routes[i].allows(method))
                .min_by_key(|&i| (routes[i].methods.is_none(), i))
        };
        for group in &groups {
            let in_group = (0..routes.len()).filter(|&i| &routes[i].host == group);
            let exact = in_group
                .clone()
                .filter(|&i| matches!(&routes[i].path, PathMatch::Exact(p) if key(p) == path))
                .collect();
            if let Some(found) = allowing(exact) {
                return Some(found);
            }
            let mut prefixes: Vec<(usize, usize)> = in_group
                .filter_map(|i| match &routes[i].path {
                    PathMatch::Prefix(p) => {
                        let p = key(p);
                        let under = &*p == "/"
                            || path == p
                            || path.strip_prefix(&*p).is_some_and(|r| r.starts_with('/'));
                        under.then_some((p.len(), i))
                    }
                    PathMatch::Exact(_) => None,
                })
                .collect();
            prefixes.sort_by_key(|&(len, _)| std::cmp::Reverse(len));
            for same in prefixes.chunk_by(|a, b| a.0 == b.0) {
                if let Some(found) = allowing(same.iter().map(|&(_, i)| i).collect()) {
                    return Some(found);
                }
            }
        }
        None
    }

    /// The conflicts `RouteTable::new` must report: a route whose host, path and methods
    /// overlap an earlier accepted one (restricted routes first, then file order).
    fn reference_conflicts(routes: &[Route]) -> Vec<Conflict> {
        let mut accepted: Vec<usize> = Vec::new();
        let mut conflicts = Vec::new();
        for (i, route) in routes.iter().enumerate() {
            let mut same: Vec<usize> = accepted
                .iter()
                .copied()
                .filter(|&j| routes[j].host == route.host && routes[j].path == route.path)
                .collect();
            same.sort_by_key(|&j| routes[j].methods.is_none());
            match same
                .into_iter()
                .find(|&j| methods_overlap(&routes[j], route))
            {
                Some(first) => conflicts.push(Conflict { first, second: i }),
                None => accepted.push(i),
            }
        }
        conflicts
    }

    fn arb_path(
        max_depth: usize,
        empty_segments: bool,
    ) -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let segment = prop_oneof![
            // An empty segment (`//`): canonical paths have none, other readings may.
            Just(if empty_segments { "" } else { "b" }),
            Just("a"),
            Just("b"),
            Just("A"),
            Just("x"),
            Just("a-segment-long-enough-to-live-on-the-heap"),
        ];
        (
            proptest::collection::vec(segment, 0..=max_depth),
            any::<bool>(),
        )
            .prop_map(|(segments, slash)| {
                let mut path = String::new();
                for s in &segments {
                    path.push('/');
                    path.push_str(s);
                }
                if path.is_empty() || slash {
                    path.push('/');
                }
                path
            })
    }

    type Spec = (HostMatch, PathMatch, Option<Vec<Method>>);

    fn arb_spec() -> impl proptest::strategy::Strategy<Value = Spec> {
        use proptest::prelude::*;
        let host = prop_oneof![
            Just(HostMatch::Any),
            Just(HostMatch::Exact("a.example.com".into())),
            Just(HostMatch::Exact("b.a.example.com".into())),
            Just(HostMatch::Wildcard(".example.com".into())),
            Just(HostMatch::Wildcard(".a.example.com".into())),
        ];
        let methods = proptest::option::of(proptest::sample::subsequence(
            vec![
                Method::GET,
                Method::POST,
                Method::DELETE,
                Method::from_bytes(b"PROPFIND").unwrap(),
            ],
            1..=2,
        ));
        (host, arb_path(3, false), any::<bool>(), methods).prop_map(
            |(host, path, exact, methods)| {
                let path = match (exact, path.strip_suffix('/')) {
                    (true, _) => PathMatch::Exact(path.into()),
                    (false, Some(trimmed)) if !trimmed.is_empty() => {
                        PathMatch::Prefix(trimmed.into())
                    }
                    (false, _) => PathMatch::Prefix(path.into()),
                };
                (host, path, methods)
            },
        )
    }

    fn build(specs: &[Spec]) -> Vec<Route> {
        specs
            .iter()
            .enumerate()
            .map(|(i, (host, path, methods))| {
                route(
                    &format!("r{i}"),
                    host.clone(),
                    path.clone(),
                    methods.as_deref(),
                )
            })
            .collect()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// The index answers what the precedence rules say, for plain and case-folded
        /// readings, and reports exactly the conflicting routes.
        #[test]
        fn the_index_agrees_with_the_precedence_rules(
            specs in proptest::collection::vec(arb_spec(), 1..16),
            requests in proptest::collection::vec(
                (
                    proptest::sample::select(vec![
                        "a.example.com", "b.a.example.com", "c.b.a.example.com",
                        "c.example.com", "example.com", "other.org",
                    ]),
                    arb_path(5, true),
                    proptest::sample::select(vec![
                        Method::GET, Method::POST, Method::PUT,
                        Method::from_bytes(b"PROPFIND").unwrap(),
                        Method::from_bytes(b"MKCOL").unwrap(),
                    ]),
                ),
                32,
            ),
        ) {
            let routes = build(&specs);
            let conflicts = reference_conflicts(&routes);
            match RouteTable::new(build(&specs)) {
                Ok(_) => proptest::prop_assert!(conflicts.is_empty(), "{conflicts:?} not reported"),
                Err(found) => proptest::prop_assert_eq!(&found, &conflicts),
            }
            let accepted: Vec<Spec> = specs
                .into_iter()
                .enumerate()
                .filter(|(i, _)| !conflicts.iter().any(|c| c.second == *i))
                .map(|(_, spec)| spec)
                .collect();
            let accepted_routes = build(&accepted);
            let accepted = build(&accepted);
            let table = RouteTable::new(accepted_routes)
                .unwrap_or_else(|c| panic!("conflicts in a conflict-free table: {c:?}"));
            for (host, path, method) in &requests {
                proptest::prop_assert_eq!(
                    table.find_index(host, path, method),
                    reference(&accepted, host, path, method, false),
                    "{} {}{}", method, host, path
                );
                let lower = path.to_ascii_lowercase();
                proptest::prop_assert_eq!(
                    table.find_index_folded(host, &lower, method),
                    reference(&accepted, host, &lower, method, true),
                    "folded {} {}{}", method, host, lower
                );
            }
        }
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
