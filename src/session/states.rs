//! The login states already used at the callback: the replay guard of the local stores
//! (`store = "redis"` keeps them in Redis with `SET NX`).
//!
//! A state is remembered until its login could no longer complete anyway (`LOGIN_TTL`
//! after it was used), and never forgotten earlier: a cache with an eviction policy (moka,
//! as this was) can be made to drop a used state by a flood of fresh logins, and the
//! state's callback could then be replayed. When the bound is reached and nothing has
//! expired, new logins are refused (503 `login_busy`) instead.

use std::collections::HashMap;
use std::sync::Mutex;

/// The bound was reached: a new login cannot be remembered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

/// Used states by SHA-256 (base64url), with the time (seconds since the epoch) until which
/// each is kept. One lock: callbacks are rare next to requests, and never on their path.
pub struct UsedStates {
    entries: Mutex<HashMap<Box<str>, u64>>,
    max: usize,
}

impl UsedStates {
    pub fn new(max: usize) -> Self {
        UsedStates {
            entries: Mutex::new(HashMap::new()),
            max,
        }
    }

    /// Marks `key` used until `now + ttl`: `Ok(true)` the first time, `Ok(false)` when it
    /// was used before, `Err(Full)` when the bound is reached by states still in force.
    pub fn claim(&self, key: &str, now: u64, ttl: u64) -> Result<bool, Full> {
        let mut entries = self.lock();
        if entries.get(key).is_some_and(|&until| until > now) {
            return Ok(false);
        }
        if entries.len() >= self.max && !entries.contains_key(key) {
            entries.retain(|_, &mut until| until > now);
            if entries.len() >= self.max {
                return Err(Full);
            }
        }
        entries.insert(key.into(), now.saturating_add(ttl));
        Ok(true)
    }

    /// Whether a new state could not be remembered now (a login started now would fail at
    /// its callback).
    pub fn is_full(&self, now: u64) -> bool {
        let mut entries = self.lock();
        if entries.len() < self.max {
            return false;
        }
        entries.retain(|_, &mut until| until > now);
        entries.len() >= self.max
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, u64>> {
        // The map holds no invariant a panic could break half-way.
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_is_used_once() {
        let states = UsedStates::new(10);
        assert_eq!(states.claim("a", 100, 600), Ok(true));
        assert_eq!(states.claim("a", 200, 600), Ok(false));
        assert_eq!(states.claim("b", 200, 600), Ok(true));
    }

    #[test]
    fn a_flood_of_logins_cannot_push_a_used_state_out() {
        let states = UsedStates::new(3);
        assert_eq!(states.claim("used", 100, 600), Ok(true));
        assert_eq!(states.claim("x1", 101, 600), Ok(true));
        assert_eq!(states.claim("x2", 102, 600), Ok(true));
        assert!(states.is_full(103));
        // The flood is refused, not the used state forgotten.
        for i in 0..100 {
            assert_eq!(states.claim(&format!("flood{i}"), 103, 600), Err(Full));
        }
        assert_eq!(states.claim("used", 104, 600), Ok(false), "replay");
        // Once the states have run out their time, there is room again.
        assert!(!states.is_full(700));
        assert_eq!(states.claim("fresh", 701, 600), Ok(true));
        assert_eq!(
            states.claim("used", 701, 600),
            Ok(true),
            "expired with its login"
        );
    }
}
