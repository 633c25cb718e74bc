//! Prometheus metrics (prometheus-client), served by the admin listener at `/metrics`.
//!
//! The request path only ever touches atomics: per-route counters are looked up once per
//! route and label combination and kept in the route (`RouteMetrics`), the upstream latency
//! histogram is a lock-free [`AtomicHistogram`] (prometheus-client's own histogram takes a
//! lock per observation). The registry lives as long as the process: a reload compiles new
//! routes against the same `Metrics`, so counters continue across reloads.
//!
//! Gauges that describe the current config (provider key age, JWKS fetches, token-cache
//! hits) are read from the snapshot at scrape time.

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub method: &'static str,
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthLabels {
    pub route: String,
    pub outcome: &'static str,
}

use crate::outcome::Outcome;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamErrorLabels {
    pub upstream: String,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SessionLabels {
    pub event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConfigLabels {
    pub hash: String,
}

/// Method classes: reads, writes, everything else.
pub const METHOD_CLASSES: [&str; 3] = ["read", "write", "other"];
/// Status classes.
pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    auth: Family<AuthLabels, Counter>,
    upstream_latency: Family<UpstreamLabels, AtomicHistogram>,
    upstream_errors: Family<UpstreamErrorLabels, Counter>,
    pub connections: Gauge,
    /// Idle HTTP/1 connections parked without hyper's buffers (see `server::conn`).
    pub parked_connections: Gauge,
    /// Connections closed because the client read nothing for `client_write_timeout`.
    pub client_write_timeouts: Counter,
    /// Client connections upgraded to WebSocket and spliced to the app.
    pub upgraded_connections: Gauge,
    reloads: Family<ResultLabels, Counter>,
    config: Family<ConfigLabels, Gauge>,
    sessions: Family<SessionLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("portcullis");
        let requests = Family::<RequestLabels, Counter>::default();
        let auth = Family::<AuthLabels, Counter>::default();
        let upstream_latency = Family::<UpstreamLabels, AtomicHistogram>::new_with_constructor(
            AtomicHistogram::default,
        );
        let upstream_errors = Family::<UpstreamErrorLabels, Counter>::default();
        let connections = Gauge::default();
        let parked_connections = Gauge::default();
        let client_write_timeouts = Counter::default();
        let upgraded_connections = Gauge::default();
        let reloads = Family::<ResultLabels, Counter>::default();
        let config = Family::<ConfigLabels, Gauge>::default();
        let sessions = Family::<SessionLabels, Counter>::default();
        registry.register(
            "session_events",
            "Browser-session events: login, login_failed, logout, backchannel_logout, backchannel_refused",
            sessions.clone(),
        );
        registry.register(
            "requests",
            "Requests by route, method class and status class",
            requests.clone(),
        );
        registry.register(
            "auth_decisions",
            "Auth decisions by route and outcome",
            auth.clone(),
        );
        registry.register(
            "upstream_latency_seconds",
            "Time to the upstream's response head",
            upstream_latency.clone(),
        );
        registry.register(
            "upstream_errors",
            "Upstream failures by kind",
            upstream_errors.clone(),
        );
        registry.register(
            "active_connections",
            "Open client connections",
            connections.clone(),
        );
        registry.register(
            "parked_connections",
            "Idle HTTP/1 client connections parked without per-connection buffers",
            parked_connections.clone(),
        );
        registry.register(
            "client_write_timeouts",
            "Client connections closed because a write made no progress for client_write_timeout",
            client_write_timeouts.clone(),
        );
        registry.register(
            "upgraded_connections",
            "Client connections upgraded to WebSocket and spliced to the app",
            upgraded_connections.clone(),
        );
        registry.register(
            "config_reloads",
            "Config reloads by result",
            reloads.clone(),
        );
        registry.register(
            "config_info",
            "The loaded config's hash (value 1)",
            config.clone(),
        );
        Metrics {
            registry,
            requests,
            auth,
            upstream_latency,
            upstream_errors,
            connections,
            parked_connections,
            client_write_timeouts,
            upgraded_connections,
            reloads,
            config,
            sessions,
        }
    }

    /// One login, logout or back-channel logout (rare: not on the per-request path).
    pub fn session_event(&self, event: &'static str) {
        self.sessions.get_or_create(&SessionLabels { event }).inc();
    }

    pub fn route(&self, name: &str) -> RouteMetrics {
        RouteMetrics {
            name: name.into(),
            counters: OnceLock::new(),
        }
    }

    /// Records one finished request on `route`.
    pub fn record(
        &self,
        route: &RouteMetrics,
        method: &http::Method,
        status: u16,
        outcome: Outcome,
    ) {
        let m = match *method {
            http::Method::GET | http::Method::HEAD | http::Method::OPTIONS => 0,
            http::Method::POST | http::Method::PUT | http::Method::PATCH | http::Method::DELETE => {
                1
            }
            _ => 2,
        };
        let s = usize::from((status / 100).clamp(1, 5) - 1);
        let counters = route.counters.get_or_init(|| {
            Box::new(RouteCounters {
                requests: Default::default(),
                auth: std::array::from_fn(|_| OnceLock::new()),
            })
        });
        counters.requests[m * 5 + s]
            .get_or_init(|| {
                self.requests
                    .get_or_create(&RequestLabels {
                        route: route.name.to_string(),
                        method: METHOD_CLASSES[m],
                        status: STATUS_CLASSES[s],
                    })
                    .clone()
            })
            .inc();
        let outcome = outcome.metric();
        counters.auth[outcome.index()]
            .get_or_init(|| {
                self.auth
                    .get_or_create(&AuthLabels {
                        route: route.name.to_string(),
                        outcome: outcome.as_label(),
                    })
                    .clone()
            })
            .inc();
    }

    /// The latency histogram of one upstream (kept by the compiled upstream).
    pub fn upstream_latency(&self, upstream: &str) -> AtomicHistogram {
        self.upstream_latency
            .get_or_create(&UpstreamLabels {
                upstream: upstream.to_owned(),
            })
            .clone()
    }

    pub fn upstream_error(&self, upstream: &str, kind: &'static str) {
        self.upstream_error_counter(upstream, kind).inc();
    }

    /// The counter behind `upstream_errors_total{upstream, kind}`, for a caller that counts
    /// without a `Metrics` at hand (the pool).
    pub fn upstream_error_counter(&self, upstream: &str, kind: &'static str) -> Counter {
        self.upstream_errors
            .get_or_create(&UpstreamErrorLabels {
                upstream: upstream.to_owned(),
                kind,
            })
            .clone()
    }

    pub fn reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.reloads.get_or_create(&ResultLabels { result }).inc();
    }

    pub fn set_config_hash(&self, hash: &str) {
        self.config.clear();
        self.config
            .get_or_create(&ConfigLabels {
                hash: hash.to_owned(),
            })
            .set(1);
    }

    /// The registry in Prometheus text format, plus `extra` lines (without `# EOF`).
    pub fn render(&self, extra: &str) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, &self.registry);
        out.push_str(extra);
        out.push_str("# EOF\n");
        out
    }
}

/// Counters of one route, resolved on first use: a route never asked costs its name and
/// a pointer (a 100,000-route config would otherwise hold 100 MiB of empty counter slots).
pub struct RouteMetrics {
    name: Box<str>,
    counters: OnceLock<Box<RouteCounters>>,
}

struct RouteCounters {
    requests: [OnceLock<Counter>; 15],
    auth: [OnceLock<Counter>; Outcome::ALL.len()],
}

/// Bucket bounds in seconds, from 100 µs to 30 s.
const BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0, 30.0,
];

/// A histogram of atomics: observations never take a lock.
#[derive(Clone, Default, Debug)]
pub struct AtomicHistogram {
    inner: std::sync::Arc<HistogramInner>,
}

#[derive(Default, Debug)]
struct HistogramInner {
    /// Per bucket (not cumulative); the last one is +Inf.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl AtomicHistogram {
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let index = BUCKETS
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(BUCKETS.len());
        self.inner.buckets[index].fetch_add(1, Ordering::Relaxed);
        self.inner.count.fetch_add(1, Ordering::Relaxed);
        self.inner.sum_nanos.fetch_add(
            u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(BUCKETS.len() + 1);
        for (i, bound) in BUCKETS.iter().chain(std::iter::once(&f64::MAX)).enumerate() {
            cumulative += self.inner.buckets[i].load(Ordering::Relaxed);
            buckets.push((*bound, cumulative));
        }
        let sum = self.inner.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, cumulative, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Appends one gauge or counter family in Prometheus text format.
pub fn write_family(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    samples: &[(String, f64)],
) {
    let _ = writeln!(out, "# HELP portcullis_{name} {help}.");
    let _ = writeln!(out, "# TYPE portcullis_{name} {kind}");
    for (labels, value) in samples {
        let suffix = if kind == "counter" { "_total" } else { "" };
        let _ = writeln!(out, "portcullis_{name}{suffix}{labels} {value}");
    }
}
