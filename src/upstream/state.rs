//! The state of one target of an upstream (see `targets`): its health, its ejection, its
//! counts, and the settings that drive them.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

/// `balance`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    LeastRequests,
}

impl Balance {
    pub fn parse(text: &str) -> Option<Balance> {
        match text {
            "round_robin" => Some(Balance::RoundRobin),
            "least_requests" => Some(Balance::LeastRequests),
            _ => None,
        }
    }
}

/// `eject_after`, `eject_for`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ejection {
    pub after: u32,
    pub duration: Duration,
}

/// `health_check = { path, interval, timeout, healthy, unhealthy }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub path: http::uri::PathAndQuery,
    /// The `Host` of the checks: the upstream's `host`, else the target's address.
    pub host: Option<http::HeaderValue>,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy: u32,
    pub unhealthy: u32,
}

/// What one target has been through: its health, and the counts `/metrics` shows.
#[derive(Debug)]
pub struct TargetState {
    /// The active health check's verdict (true until a check says otherwise).
    healthy: AtomicBool,
    /// Consecutive passive failures.
    failures: AtomicU32,
    /// Out until this time (milliseconds on [`clock`]); 0: not ejected.
    ejected_until: AtomicU64,
    /// Requests sent and not yet answered in full (`least_requests` only).
    pub(super) in_flight: AtomicUsize,
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    pub ejections: AtomicU64,
    /// The health-check task was started.
    pub(super) checking: AtomicBool,
    /// The target's name was resolved and this pool (which connected by name) replaced by
    /// its addresses' (see `resolve`): its health checks end.
    retired: AtomicBool,
}

impl Default for TargetState {
    fn default() -> Self {
        TargetState {
            healthy: AtomicBool::new(true),
            failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            ejections: AtomicU64::new(0),
            checking: AtomicBool::new(false),
            retired: AtomicBool::new(false),
        }
    }
}

impl TargetState {
    /// Neither ejected nor failing its health check. Reads the clock only while ejected.
    pub fn available(&self) -> bool {
        if !self.healthy.load(Relaxed) {
            return false;
        }
        let until = self.ejected_until.load(Relaxed);
        until == 0 || clock() >= until
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(Relaxed)
    }

    /// The outcome of one request: consecutive failures eject the target.
    /// Returns true when this failure ejected it.
    pub fn record(&self, ok: bool, ejection: &Ejection) -> bool {
        self.requests.fetch_add(1, Relaxed);
        if ok {
            if self.failures.load(Relaxed) != 0 {
                self.failures.store(0, Relaxed);
            }
            return false;
        }
        self.errors.fetch_add(1, Relaxed);
        let failures = self.failures.fetch_add(1, Relaxed) + 1;
        if ejection.after == 0 || failures < ejection.after {
            return false;
        }
        self.failures.store(0, Relaxed);
        let until = clock() + ejection.duration.as_millis() as u64;
        self.ejected_until.store(until.max(1), Relaxed);
        self.ejections.fetch_add(1, Relaxed);
        true
    }

    pub(super) fn retire(&self) {
        self.retired.store(true, Relaxed);
    }

    pub(super) fn retired(&self) -> bool {
        self.retired.load(Relaxed)
    }

    pub(super) fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Relaxed);
        if healthy {
            // A target that passes its checks again is not kept out by an old ejection.
            self.ejected_until.store(0, Relaxed);
        }
    }
}

/// Milliseconds since the process's first look at the clock (never 0 once used).
fn clock() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(std::time::Instant::now);
    start.elapsed().as_millis() as u64 + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_failures_eject_and_a_success_resets_the_count() {
        let state = TargetState::default();
        let ejection = Ejection {
            after: 3,
            duration: Duration::from_secs(60),
        };
        assert!(!state.record(false, &ejection));
        assert!(!state.record(false, &ejection));
        assert!(!state.record(true, &ejection));
        assert!(!state.record(false, &ejection));
        assert!(!state.record(false, &ejection));
        assert!(state.available());
        assert!(state.record(false, &ejection));
        assert!(!state.available());
        assert_eq!(state.ejections.load(Relaxed), 1);
        assert_eq!(state.requests.load(Relaxed), 6);
        assert_eq!(state.errors.load(Relaxed), 5);
        // Passing health checks again lifts the ejection.
        state.set_healthy(true);
        assert!(state.available());
        // An ejection ends by itself.
        let short = Ejection {
            after: 1,
            duration: Duration::from_millis(0),
        };
        assert!(state.record(false, &short));
        assert!(state.available());
        // A failing health check keeps it out.
        state.set_healthy(false);
        assert!(!state.available());
    }
}
