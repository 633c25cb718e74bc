//! Several instances of one app: which target a request goes to, which ones are out.
//!
//! - **Balancing**: `round_robin` (a counter per worker, so no cache line is shared between
//!   cores) or `least_requests` (two random choices, the one with fewer requests in
//!   flight). A target that is ejected or failing its health check is skipped; when every
//!   target is out, they are all tried anyway (a target may have come back; the answer is
//!   502 `upstream_unavailable` within `connect_timeout` when none has).
//! - **Failing over**: a target that refuses the connection (or its TLS handshake fails)
//!   has been sent nothing, so the request goes to the next target, whatever its method.
//! - **Passive ejection**: `eject_after` consecutive failures (no connection, a broken
//!   answer, or an answer of 502) take a target out for `eject_for`.
//! - **Active health checks**: a `GET health_check.path` on a new connection every
//!   `interval`, run by one task per target on the first worker; `unhealthy` consecutive
//!   failures mark the target down and `healthy` consecutive successes (2xx or 3xx within
//!   `timeout`) mark it up again. Targets start up. The task is in `health`, the state
//!   of a target in `state`.
//!
//! A single-target upstream does none of this: its one pool is used as before.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use super::pool::Pool;
pub use super::state::{Balance, Ejection, HealthCheck, TargetState};

/// A counter on a cache line of its own.
#[repr(align(64))]
#[derive(Default)]
struct Padded(AtomicUsize);

/// The targets of one upstream.
pub struct TargetSet {
    pub pools: Box<[Arc<Pool>]>,
    pub balance: Balance,
    pub ejection: Ejection,
    /// Round robin: one counter per worker. Least requests: the random state per worker.
    counters: Box<[Padded]>,
}

impl TargetSet {
    pub fn new(pools: Vec<Arc<Pool>>, balance: Balance, ejection: Ejection) -> Self {
        TargetSet {
            pools: pools.into(),
            balance,
            ejection,
            counters: (0..crate::worker::MAX_WORKERS)
                .map(|i| Padded(AtomicUsize::new(i.wrapping_mul(0x9E37_79B9) | 1)))
                .collect(),
        }
    }

    /// The target for the next request (an index into `pools`).
    pub fn pick(&self) -> usize {
        let n = self.pools.len();
        if n == 1 {
            return 0;
        }
        let counter = &self.counters[crate::worker::worker_id() % self.counters.len()].0;
        match self.balance {
            Balance::RoundRobin => {
                // Only this worker writes its counter: a load and a store, no locked add.
                let start = counter.load(Relaxed);
                counter.store(start.wrapping_add(1), Relaxed);
                (0..n)
                    .map(|i| (start + i) % n)
                    .find(|&i| self.pools[i].state.available())
                    .unwrap_or(start % n)
            }
            Balance::LeastRequests => {
                // xorshift: enough randomness to spread choices, no shared state.
                let mut x = counter.load(Relaxed);
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                counter.store(x, Relaxed);
                let a = x % n;
                let b = (a + 1 + (x >> 16) % (n - 1)) % n;
                let load = |i: usize| {
                    let state = &self.pools[i].state;
                    (!state.available(), state.in_flight.load(Relaxed))
                };
                if load(b) < load(a) { b } else { a }
            }
        }
    }

    /// After `tried` (a bit per target) failed to connect: the next target to try, the
    /// available ones first. `None` when every target has been tried.
    pub fn next_after(&self, current: usize, tried: u64) -> Option<usize> {
        let n = self.pools.len().min(64);
        let untried = |i: &usize| tried & (1 << i) == 0;
        let order = (1..n).map(|k| (current + k) % n);
        order
            .clone()
            .filter(untried)
            .find(|&i| self.pools[i].state.available())
            .or_else(|| order.clone().find(untried))
    }
}
