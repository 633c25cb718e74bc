//! `rate_limit`: the cost of counting one request (an existing key, a new key), and the
//! memory of the key map under a flood of distinct keys (printed first: RSS after 1M
//! distinct keys with the default bound of 100k keys, and with a bound of 1M).
//!
//! cargo bench --bench rate_limit

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis::ratelimit::{KeyKind, RateLimiter, Spec};

fn spec() -> Spec {
    Spec {
        requests: 100,
        per: Duration::from_secs(1),
        burst: 200,
        key: KeyKind::Subject,
        shared: false,
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn flood(max_keys: usize) {
    let before = rss_kib();
    let limiter = RateLimiter::new(spec(), max_keys);
    let now = Instant::now();
    let started = Instant::now();
    for i in 0..1_000_000u64 {
        let key = limiter.key(Some(&format!("user-{i}")), "192.0.2.1".parse().unwrap());
        let _ = limiter.check(key, now);
    }
    println!(
        "1M distinct keys, max_keys {max_keys}: {} keys held, RSS +{} MiB, {:.0} ns a request",
        limiter.len(),
        rss_kib().saturating_sub(before) / 1024,
        started.elapsed().as_nanos() as f64 / 1e6
    );
}

fn bench(c: &mut Criterion) {
    flood(100_000);
    flood(1_000_000);
    let mut group = c.benchmark_group("rate_limit");
    let limiter = RateLimiter::new(spec(), 100_000);
    let key = limiter.key(Some("alice"), "192.0.2.1".parse().unwrap());
    // Spread over time so that the key is let through at the sustained rate.
    group.bench_function("check/same_key", |b| {
        b.iter(|| limiter.check(std::hint::black_box(key), Instant::now()))
    });
    group.bench_function("key/sub", |b| {
        b.iter(|| {
            limiter.key(
                Some(std::hint::black_box("alice@example.com")),
                "192.0.2.1".parse().unwrap(),
            )
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
