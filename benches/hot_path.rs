//! The per-request steps without the network: route matching (10 / 100 / 1,000 routes; and
//! 10 / 1k / 10k / 100k routes over up to 1,000 hosts, `route_match_hosts`),
//! path canonicalisation, the whole target step with reading agreement (`route_target`:
//! an ordinary path, one with upper-case letters, one with `;` and `%`), and the identity
//! header rewrite on a realistic header map, up to the upstream head it ends in.
//!
//! cargo bench --bench hot_path

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use portcullis::Snapshot;
use portcullis::canonical::canonical_path;
use portcullis::identity::{RouteRules, rewrite_request, strip_request};
use portcullis::readings::{PathSemantics, route_target};
use portcullis::upstream::h1::encode_request_head;

/// A config with `n` routes over a few hosts and nested prefixes, compiled like any other.
fn snapshot_with_routes(n: usize) -> Snapshot {
    let mut text = String::from(
        "[server]\nhttp = \"127.0.0.1:0\"\n[upstreams.app]\nbuiltin = \"echo\"\n[identity]\nheaders = { \"X-Auth-User\" = \"sub\", \"X-Auth-Email\" = \"email\", \"X-Auth-Groups\" = \"groups\" }\n",
    );
    for i in 0..n {
        let host = match i % 4 {
            0 => String::new(),
            1 => format!("host = \"app{}.example.com\"\n", i % 50),
            2 => format!("host = \"*.tenant{}.example.com\"\n", i % 20),
            _ => format!("host = \"api{}.example.com\"\n", i % 30),
        };
        text.push_str(&format!(
            "[[routes]]\nname = \"r{i}\"\n{host}path_prefix = \"/svc{}/v{}/items{i}\"\nupstream = \"app\"\nauth = \"public\"\n",
            i % 7,
            i % 3
        ));
    }
    text.push_str(
        "[[routes]]\nname = \"root\"\npath_prefix = \"/\"\nupstream = \"app\"\nauth = \"public\"\n",
    );
    portcullis::config::load_str(&text, "bench.toml".into()).unwrap_or_else(|e| panic!("{e}"))
}

fn routing(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_match");
    for n in [10, 100, 1000] {
        let snapshot = snapshot_with_routes(n);
        let hit = format!(
            "/svc{}/v{}/items{}/orders/42",
            (n - 1) % 7,
            (n - 1) % 3,
            n - 1
        );
        group.bench_with_input(BenchmarkId::new("deep_hit", n), &n, |b, _| {
            b.iter(|| {
                snapshot
                    .routes
                    .find_index(
                        "x.tenant3.example.com",
                        std::hint::black_box(&hit),
                        &Method::GET,
                    )
                    .unwrap()
            })
        });
        group.bench_with_input(BenchmarkId::new("fallback_to_root", n), &n, |b, _| {
            b.iter(|| {
                snapshot
                    .routes
                    .find_index(
                        "app7.example.com",
                        std::hint::black_box("/static/css/site.css"),
                        &Method::GET,
                    )
                    .unwrap()
            })
        });
    }
    group.finish();
}

/// `n` routes over `n / 10` hosts, at least 1 and at most 1,000 (an intranet's rule set: each
/// host ten to a hundred prefixes, exact paths and method-restricted routes, every tenth host
/// a wildcard; every size gets the same mix of request shapes), and 4,096 requests that hit them, spread over the hosts (`spread_hits`: each
/// match reads parts of the tables no other recent match read, so at 100k routes it pays
/// for memory; `hot_hits` repeats 16 of them).
fn snapshot_over_hosts(n: usize) -> (Snapshot, Vec<(String, String)>) {
    let hosts = (n / 10).clamp(1, 1000);
    let mut text =
        String::from("[server]\nhttp = \"127.0.0.1:0\"\n[upstreams.app]\nbuiltin = \"echo\"\n");
    let host_of = |h: usize| {
        if h % 10 == 9 {
            format!("*.zone{h}.corp.example")
        } else {
            format!("app{h}.corp.example")
        }
    };
    for i in 0..n {
        let (h, k) = (i % hosts, i / hosts);
        let path = if k.is_multiple_of(3) {
            format!("path = \"/svc{k}/status\"")
        } else {
            format!("path_prefix = \"/svc{k}\"")
        };
        let methods = if k % 7 == 1 {
            "methods = [\"GET\", \"HEAD\"]\n"
        } else {
            ""
        };
        text.push_str(&format!(
            "[[routes]]\nname = \"r{i}\"\nhost = \"{}\"\n{path}\n{methods}upstream = \"app\"\nauth = \"public\"\n",
            host_of(h)
        ));
    }
    let snapshot =
        portcullis::config::load_str(&text, "bench.toml".into()).unwrap_or_else(|e| panic!("{e}"));
    let per_host = n.div_ceil(hosts);
    let requests = (0..4096usize)
        .map(|j| {
            let h = (j * 7919) % hosts;
            let k = (j * 104_729) % per_host;
            let host = host_of(h).replace('*', "www");
            let path = if k.is_multiple_of(3) {
                format!("/svc{k}/status")
            } else {
                format!("/svc{k}/orders/42")
            };
            (host, path)
        })
        .collect();
    (snapshot, requests)
}

fn routing_over_hosts(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_match_hosts");
    // 100k routes take seconds to compile in a test-mode (unoptimised) run of the benches.
    let sizes: &[usize] = if std::env::args().any(|a| a == "--bench") {
        &[10, 1_000, 10_000, 100_000]
    } else {
        &[10, 1_000]
    };
    for &n in sizes {
        let (snapshot, requests) = snapshot_over_hosts(n);
        for (host, path) in &requests {
            assert!(
                snapshot
                    .routes
                    .find_index(host, path, &Method::GET)
                    .is_some(),
                "{host}{path} matches no route"
            );
        }
        // The same 16 requests over and over: what the matching itself costs at each size,
        // with the tables it reads in the caches.
        let mut next = 0usize;
        group.bench_with_input(BenchmarkId::new("hot_hits", n), &n, |b, _| {
            b.iter(|| {
                let (host, path) = &requests[next % 16];
                next = next.wrapping_add(1);
                snapshot
                    .routes
                    .find_index(host, std::hint::black_box(path), &Method::GET)
            })
        });
        let mut next = 0usize;
        group.bench_with_input(BenchmarkId::new("spread_hits", n), &n, |b, _| {
            b.iter(|| {
                let (host, path) = &requests[next % requests.len()];
                next = next.wrapping_add(1);
                snapshot
                    .routes
                    .find_index(host, std::hint::black_box(path), &Method::GET)
            })
        });
    }
    group.finish();
}

fn canonicalisation(c: &mut Criterion) {
    let mut group = c.benchmark_group("canonical_path");
    for (name, path) in [
        ("plain", "/api/v1/customers/12345/orders"),
        (
            "dot_segments",
            "/api/v1/./customers/../customers/12345//orders",
        ),
        ("percent", "/api/v1/customers/%41%42%43/na%20me/orders"),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| canonical_path(std::hint::black_box(path)).unwrap())
        });
    }
    group.finish();
}

fn target(c: &mut Criterion) {
    let snapshot = snapshot_with_routes(100);
    let mut group = c.benchmark_group("route_target");
    for (name, path) in [
        ("plain", "/svc1/v2/items99/orders/42"),
        ("upper_case", "/svc1/v2/items99/Orders/42"),
        (
            "params_and_escapes",
            "/svc1/v2/items99;jsessionid=AB/orders%20x/42",
        ),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                route_target(
                    &snapshot.routes,
                    "x.tenant3.example.com",
                    std::hint::black_box(path),
                    &Method::GET,
                    |_| PathSemantics::Strict,
                )
                .unwrap()
            })
        });
    }
    group.finish();
}

fn header_rewrite(c: &mut Criterion) {
    let snapshot = snapshot_with_routes(10);
    let mut headers = HeaderMap::new();
    for (k, v) in [
        ("host", "app.example.com"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
        ),
        (
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        ),
        ("accept-language", "en-US,en;q=0.9"),
        ("accept-encoding", "gzip, deflate, br"),
        ("cookie", "theme=dark; JSESSIONID=0123456789ABCDEF; lang=en"),
        (
            "authorization",
            "Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2ln",
        ),
        ("connection", "keep-alive"),
        ("x-auth-user", "mallory"),
        ("x-request-id", "4bf92f3577b34da6a3ce929d0e0e4736"),
    ] {
        headers.append(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    let claims =
        serde_json::json!({"sub": "alice", "email": "alice@example.com", "groups": ["eng", "ops"]});
    let permit =
        portcullis::auth::Permit::bench_with_claims(serde_json::from_value(claims).unwrap());
    let client = portcullis::identity::ClientInfo {
        peer: portcullis::identity::peer_value("10.1.2.3".parse().unwrap()),
        tls: true,
        host: None,
        trusted: false,
    };
    // Both variants end with the upstream head encoded, as the request path does: the map
    // rewrite (what `explain` runs) encodes the map alone, the request path's strip writes
    // its added fields with the head.
    c.bench_function("identity_rewrite_then_encode", |b| {
        let mut out = Vec::with_capacity(2048);
        b.iter_batched(
            || headers.clone(),
            |mut h| {
                rewrite_request(
                    &mut h,
                    &snapshot.identity,
                    &permit,
                    &[],
                    &client,
                    RouteRules::default(),
                );
                out.clear();
                encode_request_head(&Method::GET, "/app", &h, |_| {}, (true, None), &mut out);
                h
            },
            criterion::BatchSize::SmallInput,
        )
    });
    c.bench_function("identity_strip_and_encode", |b| {
        let mut out = Vec::with_capacity(2048);
        b.iter_batched(
            || headers.clone(),
            |mut h| {
                let added = strip_request(
                    &mut h,
                    &snapshot.identity,
                    &permit,
                    &[],
                    &client,
                    RouteRules::default(),
                );
                out.clear();
                let extra =
                    |field: &mut dyn FnMut(&HeaderName, &HeaderValue)| added.for_each(field);
                encode_request_head(&Method::GET, "/app", &h, extra, (true, None), &mut out);
                h
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

criterion_group!(
    benches,
    routing,
    routing_over_hosts,
    canonicalisation,
    target,
    header_rewrite
);
criterion_main!(benches);
