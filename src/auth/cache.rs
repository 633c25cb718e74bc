//! The verified-token cache: a token that verified once is not verified again until it
//! expires.
//!
//! - Keyed by the SHA-256 of the whole token, never the token itself: a collision would
//!   let one token borrow another's identity, so the hash must be cryptographic.
//! - Holds the verified claims, the provider and the id of the key that verified them; a hit
//!   counts only on a route that accepts that provider, while that key is still in the
//!   provider's key set (a key removed by rotation invalidates what it verified) and before
//!   `exp` (with the provider's leeway).
//! - Entries live until min(exp, the provider's `cache_ttl`); the cache holds at most
//!   `server.token_cache_size` entries (TinyLFU admission, LRU eviction).
//! - Only successes are cached; a failed token is verified again every time.
//!
//! moka rather than dashmap: it is bounded with a real eviction policy and per-entry expiry,
//! and its reads take no global lock (sharded hash table, lock-free read path; writes go
//! through a buffered, amortised policy update). dashmap would need a hand-written eviction
//! scheme on top.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use moka::Expiry;

use super::claims::Claims;

/// What a cached verification remembers.
pub struct Cached {
    pub provider: usize,
    pub key_id: u64,
    /// `exp` plus the provider's leeway, in seconds since the epoch.
    pub valid_until: f64,
    pub claims: Arc<Claims>,
    ttl: Duration,
}

impl Cached {
    pub fn new(provider: usize, key_id: u64, valid_until: f64, claims: Arc<Claims>) -> Self {
        Cached {
            provider,
            key_id,
            valid_until,
            claims,
            ttl: Duration::ZERO,
        }
    }
}

struct PerEntryTtl;

impl Expiry<[u8; 32], Arc<Cached>> for PerEntryTtl {
    fn expire_after_create(
        &self,
        _: &[u8; 32],
        value: &Arc<Cached>,
        _: Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// The cache's hasher. Its keys are SHA-256 digests already: their first eight bytes are as
/// uniform as a hash gets, and no client can choose them (that would take a SHA-256
/// pre-image), so SipHash's flooding protection (std's default) buys nothing here and a
/// second hash of 32 bytes per lookup is saved.
#[derive(Clone, Copy, Default)]
pub struct DigestHash;

impl std::hash::BuildHasher for DigestHash {
    type Hasher = DigestHasher;

    fn build_hasher(&self) -> DigestHasher {
        DigestHasher(0)
    }
}

/// See [`DigestHash`]: folds the bytes it is given eight at a time; the length prefix a
/// slice hashes first is ignored (keys all have 32 bytes).
pub struct DigestHasher(u64);

impl std::hash::Hasher for DigestHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(word);
        }
    }

    fn write_usize(&mut self, _len: usize) {}

    fn finish(&self) -> u64 {
        self.0
    }
}

pub struct TokenCache {
    entries: moka::sync::Cache<[u8; 32], Arc<Cached>, DigestHash>,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
}

impl TokenCache {
    pub fn new(size: u64) -> Self {
        TokenCache {
            entries: moka::sync::Cache::builder()
                .max_capacity(size)
                .expire_after(PerEntryTtl)
                .build_with_hasher(DigestHash),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    pub fn key(token: &[u8]) -> [u8; 32] {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token);
        let mut key = [0u8; 32];
        key.copy_from_slice(digest.as_ref());
        key
    }

    pub fn get(&self, key: &[u8; 32]) -> Option<Arc<Cached>> {
        let found = self.entries.get(key);
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Remembers a verification for min(`exp`, `ttl`) from `now`.
    pub fn insert(&self, key: [u8; 32], mut cached: Cached, now: u64, ttl: Duration) {
        let remaining = (cached.valid_until - now as f64).max(0.0);
        cached.ttl = ttl.min(Duration::from_secs_f64(remaining));
        if !cached.ttl.is_zero() {
            self.entries.insert(key, Arc::new(cached));
        }
    }

    pub fn len(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.entry_count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;

    #[test]
    fn the_digest_hash_depends_on_every_key_byte() {
        let hash = |key: [u8; 32]| DigestHash.hash_one(key);
        let base = TokenCache::key(b"a.b.c");
        assert_eq!(hash(base), hash(base));
        for i in 0..32 {
            let mut key = base;
            key[i] ^= 1;
            assert_ne!(hash(key), hash(base), "byte {i} did not count");
        }
    }
}
