//! Upstreams: a pooled keep-alive HTTP/1.1 client per upstream, or the built-in echo.
//!
//! Last step of the request path. Bodies stream both ways (nothing is buffered), request
//! trailers are dropped (a client could otherwise smuggle an identity header past the
//! rewrite in them: I2), and every wait on the upstream is bounded (504 before the answer's
//! head, a cut body after it).

use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST, HeaderValue};
use http::uri::{Authority, PathAndQuery};
use http::{Response, Uri};
use http_body_util::{Either, Full};

pub mod body;
pub mod exchange;
pub mod h1;
pub mod health;
pub mod mapping;
pub mod pool;
pub mod resolve;
pub mod state;
pub mod targets;
pub mod tls;
pub mod upgrade;

use crate::auth::Permit;
use crate::error::ProxyError;
use crate::identity::Added;
use crate::metrics::{AtomicHistogram, Metrics};
use crate::telemetry::error_chain;
use arc_swap::ArcSwap;
use body::{BodyStalled, BodyTooLarge, RequestBody, UpstreamBody};
use exchange::Exchange;
pub use pool::PoolSettings;
use pool::{Pool, SendError};
use std::sync::Arc;
use targets::{Balance, Ejection, TargetSet};

/// The targets of an HTTP upstream: fixed (IP literals, or `dns_refresh = "0s"`), or
/// swapped by the resolution of their names. Only the latter costs a request an `ArcSwap`
/// load.
pub enum Targets {
    Fixed(Arc<TargetSet>),
    Resolved(Arc<ArcSwap<TargetSet>>),
}

impl Targets {
    /// The current set.
    pub fn current(&self) -> Arc<TargetSet> {
        match self {
            Targets::Fixed(set) => set.clone(),
            Targets::Resolved(shared) => shared.load_full(),
        }
    }

    /// The same kind of targets, now `set`.
    fn with(&self, set: TargetSet) -> Targets {
        match self {
            Targets::Fixed(_) => Targets::Fixed(Arc::new(set)),
            Targets::Resolved(_) => Targets::Resolved(Arc::new(ArcSwap::from_pointee(set))),
        }
    }
}

/// What the client receives: the upstream's streamed body, or a body we made.
pub type ResponseBody = Either<UpstreamBody, Full<Bytes>>;

/// Compiled `[upstreams.NAME]`.
pub struct Upstream {
    pub name: Box<str>,
    pub target: Target,
    /// Limit on each wait on the upstream before the response head (see `Pool::send`).
    pub timeout: Duration,
    /// Limit on the silence between two pieces of the response body.
    pub body_timeout: Duration,
    /// How the app reads paths (`path_semantics`): which readings must agree (I9).
    pub path_semantics: crate::readings::PathSemantics,
    /// `path_prefix`, `rewrite_redirects`, `rewrite_cookie_paths` (see `mapping`).
    pub mapping: mapping::Mapping,
    /// `host`: the `Host` the app receives instead of the client's.
    pub host: Option<HeaderValue>,
    latency: AtomicHistogram,
    metrics: Arc<Metrics>,
}

// A few per snapshot, never moved on the request path: size does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Target {
    Http {
        /// One pool per target: idle connections per worker thread (a request and its
        /// connection stay on one thread, thread-per-core). A target's pool is shared by
        /// the snapshots of a reload when the target did not change. Swapped when a
        /// target's name resolves to other addresses (see `resolve`).
        targets: Targets,
        /// The configured targets, a pool each: a named target's connects by name until
        /// the name is resolved, then its addresses' pools take its place in `targets`.
        configured: Box<[Arc<Pool>]>,
        /// `dns_refresh`: how often names are resolved again; zero: never (connect by name).
        dns_refresh: Duration,
        /// `Host` for a request that came without one (HTTP/1.0): the first target's.
        host: HeaderValue,
    },
    /// Answers with a JSON description of the request it would have received.
    Echo,
}

impl Upstream {
    /// An app at one or more `targets` (address, TLS), balanced by `balance`.
    pub fn http(
        name: &str,
        targets: Vec<(Authority, Option<tls::UpstreamTls>)>,
        (balance, ejection): (Balance, Ejection),
        timeouts: (Duration, Duration),
        pool: PoolSettings,
        metrics: &Arc<Metrics>,
    ) -> Self {
        let host = targets
            .first()
            .and_then(|(authority, _)| HeaderValue::from_str(authority.as_str()).ok())
            .unwrap_or_else(|| HeaderValue::from_static("localhost"));
        let unsolicited = metrics.upstream_error_counter(name, "unsolicited_bytes");
        let pools: Vec<Arc<Pool>> = targets
            .into_iter()
            .map(|(authority, tls)| {
                Pool::new(
                    authority,
                    pool.clone(),
                    tls,
                    crate::worker::MAX_WORKERS,
                    unsolicited.clone(),
                )
            })
            .collect();
        Upstream {
            name: name.into(),
            target: Target::Http {
                host,
                configured: pools.clone().into(),
                dns_refresh: Duration::ZERO,
                targets: Targets::Fixed(Arc::new(TargetSet::new(pools, balance, ejection))),
            },
            timeout: timeouts.0,
            body_timeout: timeouts.1,
            path_semantics: Default::default(),
            mapping: Default::default(),
            host: None,
            latency: metrics.upstream_latency(name),
            metrics: metrics.clone(),
        }
    }

    pub fn echo(name: &str, metrics: &Arc<Metrics>) -> Self {
        Upstream {
            name: name.into(),
            target: Target::Echo,
            timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(30),
            path_semantics: Default::default(),
            mapping: Default::default(),
            host: None,
            latency: metrics.upstream_latency(name),
            metrics: metrics.clone(),
        }
    }

    /// `dns_refresh`: resolve the targets' names this often, each address a target.
    pub fn resolve_every(mut self, every: Duration) -> Self {
        if let Target::Http {
            dns_refresh,
            targets,
            configured,
            ..
        } = &mut self.target
        {
            *dns_refresh = every;
            if let Targets::Fixed(set) = targets
                && !every.is_zero()
                && configured.iter().any(|p| resolve::name_of(p).is_some())
            {
                *targets = Targets::Resolved(Arc::new(ArcSwap::new(set.clone())));
            }
        }
        self
    }

    /// On reload: keep the pooled connections (and the health) of each target of the
    /// same upstream in the old config whose address, pool settings, health check and TLS
    /// settings (files included) did not change; for a named target, those of every
    /// address it resolved to.
    pub fn adopt_pool(&mut self, previous: &[Upstream]) {
        let Target::Http {
            targets,
            configured,
            dns_refresh,
            ..
        } = &mut self.target
        else {
            return;
        };
        let Some(old) = previous.iter().find_map(|old| match &old.target {
            Target::Http { targets: t, .. } if old.name == self.name => Some(t.current()),
            Target::Http { .. } | Target::Echo => None,
        }) else {
            return;
        };
        let resolving = !dns_refresh.is_zero();
        let mut pools = Vec::new();
        for pool in configured.iter() {
            let before = pools.len();
            pools.extend(
                old.pools
                    .iter()
                    .filter(|p| {
                        if resolving {
                            p.same_target(pool)
                        } else {
                            p.same_as(pool)
                        }
                    })
                    .cloned(),
            );
            if pools.len() == before {
                pools.push(pool.clone());
            }
        }
        let current = targets.current();
        *targets = targets.with(TargetSet::new(pools, current.balance, current.ejection));
    }

    /// Starts what keeps the targets current, on the calling runtime (the first worker's):
    /// the resolution of their names, and their health checks.
    pub fn start_tasks(&self) {
        let Target::Http {
            targets,
            configured,
            dns_refresh,
            ..
        } = &self.target
        else {
            return;
        };
        match targets {
            Targets::Resolved(shared) => resolve::start(
                &self.name,
                shared,
                configured,
                *dns_refresh,
                resolve::system(),
            ),
            Targets::Fixed(set) => set.start_health_checks(&self.name),
        }
    }

    pub fn describe(&self) -> String {
        match &self.target {
            Target::Http { configured, .. } => configured
                .iter()
                .map(|pool| match pool.tls() {
                    None => format!("http://{}", pool.authority()),
                    Some(_) => format!("https://{}", pool.authority()),
                })
                .collect::<Vec<_>>()
                .join(", "),
            Target::Echo => "builtin echo".to_owned(),
        }
    }

    /// The current targets, for metrics (none for built-in upstreams).
    pub fn targets(&self) -> Option<Arc<TargetSet>> {
        match &self.target {
            Target::Http { targets, .. } => Some(targets.current()),
            Target::Echo => None,
        }
    }
}

/// Sends the rewritten request (`parts` and the `added` fields, + `body`, for
/// `path_and_query`) upstream.
/// Takes the request's [`Permit`] as proof of authorization (I1): there is no way to call
/// it without one, and only `auth::authenticate` makes them.
///
/// The request is prepared (and its head encoded) before the returned future is first
/// polled: the future holds only what the wait for the answer needs, so it stays small.
pub fn forward<'a>(
    upstream: &'a Upstream,
    _permit: &Permit,
    parts: &mut http::request::Parts,
    added: &Added<'_>,
    path_and_query: PathAndQuery,
    body: RequestBody,
) -> impl Future<Output = Result<Response<ResponseBody>, ProxyError>> + Send + 'a {
    let sending = match &upstream.target {
        Target::Echo => {
            added.append_to(&mut parts.headers);
            // Boxed: the rare echo answer would otherwise size every request's future.
            Err(Box::new(echo(parts, &path_and_query)))
        }
        Target::Http { targets, host, .. } => {
            // Origin-form: the target as the upstream expects it from a gateway, not a proxy.
            parts.uri = Uri::from(path_and_query);
            if !parts.headers.contains_key(HOST) {
                parts.headers.insert(HOST, host.clone());
            }
            let loaded;
            let targets: &Arc<TargetSet> = match targets {
                Targets::Fixed(set) => set,
                Targets::Resolved(shared) => {
                    loaded = shared.load();
                    &loaded
                }
            };
            let index = targets.pick();
            let several = (targets.pools.len() > 1).then_some((targets, index));
            Ok(exchange::send(
                &targets.pools[index],
                parts,
                |field| added.for_each(field),
                body,
                upstream.timeout,
                several,
            ))
        }
    };
    let started = std::time::Instant::now();
    async move {
        match sending {
            Err(echo) => Ok(*echo),
            Ok(sending) => finish(upstream, sending.await, started),
        }
    }
}

fn finish(
    upstream: &Upstream,
    result: Result<Response<Box<Exchange<RequestBody>>>, SendError>,
    started: std::time::Instant,
) -> Result<Response<ResponseBody>, ProxyError> {
    let response = match result {
        Err(SendError::Body(e)) if caused_by::<BodyTooLarge>(&*e) => {
            return Err(ProxyError::PayloadTooLarge);
        }
        Err(SendError::Body(e)) if caused_by::<BodyStalled>(&*e) => {
            return Err(ProxyError::RequestBodyStalled);
        }
        Err(SendError::Timeout) => {
            upstream.metrics.upstream_error(&upstream.name, "timeout");
            return Err(ProxyError::UpstreamTimeout);
        }
        Err(e @ SendError::Connect { .. }) => {
            upstream.metrics.upstream_error(&upstream.name, "connect");
            return Err(ProxyError::UpstreamUnavailable(error_chain(&e)));
        }
        Err(e @ SendError::Tls { .. }) => {
            upstream.metrics.upstream_error(&upstream.name, "tls");
            return Err(ProxyError::UpstreamTls(error_chain(&e)));
        }
        // After the handshake: an alert (TLS 1.3 servers refuse a client certificate
        // only after the client's handshake is done), a bad record.
        Err(SendError::Io(e)) if tls::is_tls_error(&e) => {
            upstream.metrics.upstream_error(&upstream.name, "tls");
            return Err(ProxyError::UpstreamTls(error_chain(&e)));
        }
        Err(e) => {
            upstream.metrics.upstream_error(&upstream.name, "protocol");
            return Err(ProxyError::UpstreamFailed(error_chain(&e)));
        }
        Ok(answer) => answer,
    };
    upstream.latency.observe(started.elapsed());
    // Hop-by-hop fields were left out when the head was parsed (`h1`).
    let (mut parts, mut exchange) = response.into_parts();
    if parts.status == http::StatusCode::SWITCHING_PROTOCOLS {
        // Only ever the answer to a websocket handshake (`h1`): the connection is handed
        // to the client connection, with the limits the handler sets.
        let Some((io, read)) = exchange.into_upgraded() else {
            return Err(ProxyError::UpstreamFailed(
                "the upgraded connection is gone".into(),
            ));
        };
        parts
            .extensions
            .insert(upgrade::Handoff::new(upgrade::Upgraded {
                upstream: io,
                upstream_read: read,
                limits: upgrade::Limits {
                    idle: Duration::from_secs(600),
                    lifetime: Duration::from_secs(86_400),
                    expires_at: None,
                },
                gauge: upstream.metrics.upgraded_connections.clone(),
            }));
        return Ok(Response::from_parts(
            parts,
            Either::Right(Full::new(Bytes::new())),
        ));
    }
    Ok(Response::from_parts(
        parts,
        Either::Left(UpstreamBody::new(exchange, upstream.body_timeout)),
    ))
}

fn caused_by<E: std::error::Error + 'static>(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if e.is::<E>() {
            return true;
        }
        current = e.source();
    }
    false
}

/// The built-in echo upstream: method, path, query and headers as JSON.
fn echo(parts: &http::request::Parts, path_and_query: &PathAndQuery) -> Response<ResponseBody> {
    let mut headers = serde_json::Map::new();
    for name in parts.headers.keys() {
        let values: Vec<serde_json::Value> = parts
            .headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned().into())
            .collect();
        let value = match <[serde_json::Value; 1]>::try_from(values) {
            Ok([single]) => single,
            Err(many) => serde_json::Value::Array(many),
        };
        headers.insert(name.as_str().to_owned(), value);
    }
    let description = serde_json::json!({
        "method": parts.method.as_str(),
        "path": path_and_query.path(),
        "query": path_and_query.query(),
        "headers": headers,
    });
    let mut body = serde_json::to_vec_pretty(&description).unwrap_or_default();
    body.push(b'\n');
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(body))));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
