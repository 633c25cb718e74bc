//! `[[routes]] rate_limit`: requests per identity (or client address) and route, counted
//! by this instance.
//!
//! The algorithm is GCRA (the generic cell rate algorithm, the one behind `governor` and
//! Redis's `CL.THROTTLE`): each key keeps one number, the theoretical arrival time (TAT) of
//! its next request. A request at `t` is let through when `TAT - t <= tolerance`, and then
//! moves TAT on by one emission interval (`per / requests`); `tolerance` is
//! `(burst - 1)` intervals, so a quiet key may send `burst` requests at once and then
//! `requests` per `per`. One `u64` per key, no timer, no background task.
//!
//! The keys live in a `DashMap` (sharded locks: two requests of different keys seldom meet).
//! It is bounded: a key whose TAT has passed is the same as an absent one, so when the map
//! holds more than `max_keys` those are dropped; if that is not enough (a flood of distinct
//! keys that each sent a request within the last interval), the least limited keys go
//! next, which at worst gives them a fresh allowance. The sweep runs on the request that
//! crosses the bound, one at a time, and takes a few milliseconds for 100k keys.

use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;

/// What a route's requests are counted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// The verified identity's `sub` (the client address when it has none).
    Subject,
    /// The client's address (from `X-Forwarded-For` when the peer is a trusted proxy).
    Ip,
    /// The API key's identity (its entry's `sub`); requests without a key by address.
    ApiKey,
}

impl KeyKind {
    pub fn name(self) -> &'static str {
        match self {
            KeyKind::Subject => "sub",
            KeyKind::Ip => "ip",
            KeyKind::ApiKey => "api_key",
        }
    }
}

/// The configured limit, comparable (equal specs are one policy class for reading
/// agreement).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Spec {
    pub requests: u32,
    pub per: Duration,
    pub burst: u32,
    pub key: KeyKind,
    /// Counted in the `[redis]` Redis, across instances (`shared = "redis"`).
    pub shared: bool,
}

impl Spec {
    /// `100 per 1s (burst 200) by sub`.
    pub fn describe(&self) -> String {
        format!(
            "{} per {} (burst {}) by {}{}",
            self.requests,
            humantime::format_duration(self.per),
            self.burst,
            self.key.name(),
            if self.shared { ", shared in Redis" } else { "" }
        )
    }
}

/// A refused request: when to come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    /// Until the next request would be let through.
    pub retry_after: Duration,
    pub spec: Spec,
}

impl Limited {
    /// Whole seconds for `Retry-After`, rounded up (a client that waits that long is let
    /// through).
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after.as_nanos().div_ceil(1_000_000_000) as u64
    }
}

/// One route's limiter.
pub struct RateLimiter {
    spec: Spec,
    /// Nanoseconds between two requests at the sustained rate.
    interval: u64,
    /// How far TAT may run ahead of now: `(burst - 1) * interval`.
    tolerance: u64,
    /// Key -> TAT, in nanoseconds since `epoch`.
    tats: DashMap<u128, u64>,
    epoch: Instant,
    max_keys: usize,
    /// Keys added since the last sweep counted exactly (`DashMap::len` locks every shard).
    approx_len: AtomicUsize,
    sweeping: AtomicBool,
    /// Hashes `sub` values into keys: random per process, so nobody can aim two subjects
    /// at one key.
    hasher: RandomState,
    /// `shared = "redis"`: the count across instances.
    shared: Option<SharedCount>,
}

/// The GCRA of [`RateLimiter`], run in Redis by a script: one round trip per request, the
/// clock Redis's own (`TIME`), so instances with skewed clocks agree. The key's TAT lives
/// in `{prefix}rl:{route}:{key}` and expires when it has passed.
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local ahead = tat - now
if ahead > tolerance then
  return ahead - tolerance
end
local new = tat + interval
redis.call('SET', KEYS[1], new, 'PX', math.floor((new - now) / 1000) + 1)
return 0
"#;

/// How long a request waits for the shared count before it falls back to this instance's.
const SHARED_BUDGET: Duration = Duration::from_millis(50);

struct SharedCount {
    link: std::sync::Arc<crate::redis_link::RedisLink>,
    script: redis::Script,
    /// `{prefix}rl:{route}:`.
    key_prefix: Box<str>,
}

impl RateLimiter {
    pub fn new(spec: Spec, max_keys: usize) -> RateLimiter {
        let interval = (spec.per.as_nanos() / u128::from(spec.requests.max(1))).max(1) as u64;
        RateLimiter {
            spec,
            interval,
            tolerance: interval.saturating_mul(u64::from(spec.burst.max(1) - 1)),
            tats: DashMap::new(),
            epoch: Instant::now(),
            max_keys: max_keys.max(1),
            approx_len: AtomicUsize::new(0),
            sweeping: AtomicBool::new(false),
            hasher: RandomState::new(),
            shared: None,
        }
    }

    /// `shared = "redis"`: counts in `link`'s Redis under the route's name.
    pub fn with_shared(
        mut self,
        link: std::sync::Arc<crate::redis_link::RedisLink>,
        route: &str,
    ) -> RateLimiter {
        self.shared = Some(SharedCount {
            key_prefix: format!("{}rl:{route}:", link.prefix).into(),
            link,
            script: redis::Script::new(GCRA),
        });
        self
    }

    /// Counts a request: in Redis when the limit is shared and Redis answers within 50 ms,
    /// else here (the per-instance limit is the fallback).
    pub async fn count(&self, key: u128, now: Instant) -> Result<(), Limited> {
        if let Some(shared) = &self.shared {
            match tokio::time::timeout(SHARED_BUDGET, self.count_shared(shared, key)).await {
                Ok(Ok(verdict)) => return verdict,
                Ok(Err(error)) => {
                    tracing::debug!(%error, "shared rate limit unavailable; counting here")
                }
                Err(_) => tracing::debug!("shared rate limit slow; counting here"),
            }
        }
        self.check(key, now)
    }

    async fn count_shared(
        &self,
        shared: &SharedCount,
        key: u128,
    ) -> Result<Result<(), Limited>, String> {
        let mut conn = shared
            .link
            .ready_connection()
            .ok_or("no connection to Redis yet")?;
        let micros = |ns: u64| ns.div_ceil(1000);
        let wait: u64 = shared
            .script
            .key(format!("{}{key:032x}", shared.key_prefix))
            .arg(micros(self.interval))
            .arg(micros(self.tolerance))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| {
                shared.link.failed();
                e.to_string()
            })?;
        Ok(if wait == 0 {
            Ok(())
        } else {
            Err(Limited {
                retry_after: Duration::from_micros(wait),
                spec: self.spec,
            })
        })
    }

    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    /// Configured alike: a reload keeps the state of an unchanged limit.
    pub fn same_settings(&self, other: &RateLimiter) -> bool {
        self.spec == other.spec
            && self.max_keys == other.max_keys
            && match (&self.shared, &other.shared) {
                (None, None) => true,
                (Some(a), Some(b)) => {
                    std::sync::Arc::ptr_eq(&a.link, &b.link) && a.key_prefix == b.key_prefix
                }
                _ => false,
            }
    }

    /// The key of a request by its subject (`None`: the address is used) and client address.
    pub fn key(&self, subject: Option<&str>, client: IpAddr) -> u128 {
        match (self.spec.key, subject) {
            (KeyKind::Subject | KeyKind::ApiKey, Some(sub)) if self.shared.is_some() => {
                // Shared: every instance must name the subject's count alike.
                let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, sub.as_bytes());
                u128::from_be_bytes(digest.as_ref()[..16].try_into().expect("16 of 32 bytes"))
            }
            (KeyKind::Subject | KeyKind::ApiKey, Some(sub)) => {
                // 128 bits from two seeded hashes: a collision would merge two users.
                let low = self.hasher.hash_one((0u8, sub));
                let high = self.hasher.hash_one((1u8, sub));
                u128::from(high) << 64 | u128::from(low)
            }
            // Addresses are their own keys (IPv4 as IPv4-mapped IPv6). On a `sub` route an
            // identity without `sub` is counted by address: that such a key equals some
            // subject's hash is as likely as a 128-bit collision, and not steerable.
            _ => match client {
                IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
                IpAddr::V6(v6) => u128::from(v6),
            },
        }
    }

    /// Counts a request of `key` at `now`: `Ok` lets it through, `Err` says when to retry.
    pub fn check(&self, key: u128, now: Instant) -> Result<(), Limited> {
        let t = now.saturating_duration_since(self.epoch).as_nanos() as u64;
        let refused = {
            let mut added = false;
            let mut tat = self.tats.entry(key).or_insert_with(|| {
                added = true;
                0
            });
            let arrival = (*tat).max(t);
            let ahead = arrival - t;
            if ahead > self.tolerance {
                Some(ahead - self.tolerance)
            } else {
                *tat = arrival + self.interval;
                if added && self.approx_len.fetch_add(1, Ordering::Relaxed) >= self.max_keys {
                    drop(tat);
                    self.sweep(t);
                }
                None
            }
        };
        match refused {
            None => Ok(()),
            Some(wait) => Err(Limited {
                retry_after: Duration::from_nanos(wait),
                spec: self.spec,
            }),
        }
    }

    /// Keys held now (exact; locks every shard: for tests and metrics, not the hot path).
    pub fn len(&self) -> usize {
        self.tats.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tats.is_empty()
    }

    /// Drops keys until at most 90% of `max_keys` remain: first those whose TAT passed
    /// (a full allowance, the same as absent), then the least limited.
    fn sweep(&self, t: u64) {
        if self.sweeping.swap(true, Ordering::Acquire) {
            return;
        }
        let target = self.max_keys / 10 * 9;
        // Thresholds: passed, then within a quarter, half, all of the tolerance ahead, then
        // everything.
        let span = self.tolerance + self.interval;
        for cut in [t, t + span / 4, t + span / 2, t + span, u64::MAX] {
            self.tats.retain(|_, tat| *tat > cut);
            if self.tats.len() <= target {
                break;
            }
        }
        self.approx_len.store(self.tats.len(), Ordering::Relaxed);
        self.sweeping.store(false, Ordering::Release);
    }
}

/// The client's address: the peer's, or, when the peer is a trusted proxy, the last
/// address in `X-Forwarded-For` that is not one of the trusted proxies (the nearest client
/// a trusted hop vouches for; the left part of the list is whatever the client wrote).
pub fn client_address(
    peer: IpAddr,
    trusted: bool,
    headers: &http::HeaderMap,
    is_trusted: impl Fn(IpAddr) -> bool,
) -> IpAddr {
    if !trusted {
        return peer;
    }
    let mut client = peer;
    let values: Vec<&http::HeaderValue> = headers.get_all("x-forwarded-for").iter().collect();
    for value in values.iter().rev() {
        let Ok(text) = value.to_str() else {
            return client;
        };
        for hop in text.rsplit(',') {
            let Ok(address) = hop.trim().parse::<IpAddr>() else {
                return client;
            };
            client = address;
            if !is_trusted(address) {
                return client;
            }
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(requests: u32, per_ms: u64, burst: u32, max_keys: usize) -> RateLimiter {
        RateLimiter::new(
            Spec {
                requests,
                per: Duration::from_millis(per_ms),
                burst,
                key: KeyKind::Subject,
                shared: false,
            },
            max_keys,
        )
    }

    #[test]
    fn lets_a_burst_through_then_the_sustained_rate() {
        let l = limiter(10, 1000, 3, 100);
        let key = l.key(Some("alice"), "192.0.2.1".parse().unwrap());
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.check(key, t0).is_ok());
        }
        let refused = l.check(key, t0).unwrap_err();
        // The next slot is one interval (100 ms) after the burst's first.
        assert_eq!(refused.retry_after, Duration::from_millis(100));
        assert_eq!(refused.retry_after_secs(), 1);
        // After the retry time, exactly one more; a refused request does not count.
        let later = t0 + Duration::from_millis(100);
        assert!(l.check(key, later).is_ok());
        assert!(l.check(key, later).is_err());
        // Another key has its own allowance.
        let bob = l.key(Some("bob"), "192.0.2.1".parse().unwrap());
        assert!(l.check(bob, later).is_ok());
        // A full second of quiet restores the burst, not more.
        let quiet = later + Duration::from_secs(1);
        for _ in 0..3 {
            assert!(l.check(key, quiet).is_ok());
        }
        assert!(l.check(key, quiet).is_err());
    }

    #[test]
    fn sustained_rate_over_a_long_run_is_the_configured_one() {
        let l = limiter(100, 1000, 1, 10);
        let key = 7;
        let t0 = Instant::now();
        // A request every millisecond for 10 s: 100 per second get through, plus the first.
        let allowed = (0..10_000)
            .filter(|ms| l.check(key, t0 + Duration::from_millis(*ms)).is_ok())
            .count();
        assert_eq!(allowed, 1000);
    }

    #[test]
    fn stays_bounded_under_a_flood_of_distinct_keys() {
        let l = limiter(1, 60_000, 1, 1000);
        let t0 = Instant::now();
        let noisy = l.key(Some("noisy"), "192.0.2.1".parse().unwrap());
        assert!(l.check(noisy, t0).is_ok());
        for i in 0..100_000u128 {
            let _ = l.check(i, t0 + Duration::from_millis(1));
            assert!(l.len() <= 1001, "{} keys held", l.len());
        }
        // Keys whose allowance is back are dropped first, at the first sweep.
        let l = limiter(1000, 1000, 1, 1000);
        for i in 0..999u128 {
            assert!(l.check(i, t0).is_ok());
        }
        let later = t0 + Duration::from_secs(5);
        assert!(l.check(5000, later).is_ok());
        assert!(l.check(5001, later).is_ok());
        assert!(l.len() <= 3, "{}", l.len());
    }

    #[test]
    fn subjects_and_addresses_never_share_a_key() {
        let l = limiter(1, 1000, 1, 10);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert_ne!(l.key(Some("192.0.2.1"), ip), l.key(None, ip));
        assert_ne!(l.key(Some("a"), ip), l.key(Some("b"), ip));
        assert_eq!(
            l.key(Some("a"), ip),
            l.key(Some("a"), "192.0.2.2".parse().unwrap())
        );
        let by_ip = RateLimiter::new(
            Spec {
                key: KeyKind::Ip,
                shared: false,
                ..*l.spec()
            },
            10,
        );
        assert_eq!(by_ip.key(Some("a"), ip), by_ip.key(Some("b"), ip));
    }

    #[test]
    fn the_client_address_comes_from_trusted_hops_only() {
        let trusted_net: ipnet::IpNet = "10.0.0.0/8".parse().unwrap();
        let is_trusted = |a: IpAddr| trusted_net.contains(&a);
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            "198.51.100.9, 203.0.113.7, 10.0.0.2".parse().unwrap(),
        );
        assert_eq!(
            client_address(peer, true, &headers, is_trusted),
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
        // An untrusted peer's header is not believed.
        assert_eq!(client_address(peer, false, &headers, is_trusted), peer);
        // Garbage stops the walk at the last good hop.
        headers.insert("x-forwarded-for", "nonsense, 10.0.0.3".parse().unwrap());
        assert_eq!(
            client_address(peer, true, &headers, is_trusted),
            "10.0.0.3".parse::<IpAddr>().unwrap()
        );
    }
}
