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
//! - In front of it, each worker thread keeps a memo of the last tokens it saw hit or verify
//!   ([`MEMO_SLOTS`] slots, one per token, picked by the token's last bytes): a token repeated
//!   on that worker (a client on a keep-alive connection, a browser's cookie) is found by a
//!   plain comparison with the stored token, without the SHA-256 and the shared lookup. These
//!   slots do hold tokens, at most 64 per worker (the shared cache never does); the
//!   comparison takes the same time wherever the tokens differ (slots are shared by every
//!   client of the worker), and a slot answers only for the cache that filled it (a reload
//!   starts a new cache), only until the entry's own expiry, and not at all when
//!   `token_cache_size` is 0.
//!
//! moka rather than dashmap: it is bounded with a real eviction policy and per-entry expiry,
//! and its reads take no global lock (sharded hash table, lock-free read path; writes go
//! through a buffered, amortised policy update). dashmap would need a hand-written eviction
//! scheme on top.

use std::cell::RefCell;
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
    /// When the entry's time in the cache ends, in whole seconds since the epoch, rounded so
    /// that the memo never keeps it longer than the shared cache does.
    expires_at: u64,
}

impl Cached {
    pub fn new(provider: usize, key_id: u64, valid_until: f64, claims: Arc<Claims>) -> Self {
        Cached {
            provider,
            key_id,
            valid_until,
            claims,
            ttl: Duration::ZERO,
            expires_at: 0,
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
    /// Tells this cache's memo slots from those of an earlier config's cache.
    id: u64,
    /// False when `token_cache_size` is 0: nothing is remembered, not even in the memo.
    memo: bool,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
}

/// Memo slots per worker thread (a power of two).
pub const MEMO_SLOTS: usize = 64;
/// Longer tokens are not kept in the memo (they still are in the shared cache, as a digest).
const MEMO_MAX_TOKEN: usize = 4096;

/// A worker's memo slots, this module's (tokens) and `session::memo`'s (session cookies):
/// [`MEMO_SLOTS`] slots picked by the key's last bytes, each holding one key and a value,
/// which answer only for the `owner` (a cache's id; 0: an empty slot) and `tag` that filled
/// them and for the same key bytes, compared in a time that depends on the length only.
/// Allocated on the first put.
pub(crate) struct MemoSlots<T> {
    slots: Vec<MemoSlot<T>>,
}

struct MemoSlot<T> {
    owner: u64,
    tag: u64,
    key: Vec<u8>,
    value: Option<T>,
}

impl<T> MemoSlots<T> {
    pub(crate) const fn new() -> Self {
        MemoSlots { slots: Vec::new() }
    }

    /// The value `owner` put for `key` at `tag`, if its slot still holds it.
    pub(crate) fn get(&self, owner: u64, tag: u64, key: &[u8]) -> Option<&T> {
        let slot = self.slots.get(slot_index(key))?;
        let value = slot.value.as_ref()?;
        (slot.owner == owner && slot.tag == tag && same_bytes(&slot.key, key)).then_some(value)
    }

    /// Puts `value` for `key` in its slot, in place of what the slot held.
    pub(crate) fn put(&mut self, owner: u64, tag: u64, key: &[u8], value: T) {
        if self.slots.is_empty() {
            self.slots.resize_with(MEMO_SLOTS, || MemoSlot {
                owner: 0,
                tag: 0,
                key: Vec::new(),
                value: None,
            });
        }
        let slot = &mut self.slots[slot_index(key)];
        slot.owner = owner;
        slot.tag = tag;
        slot.key.clear();
        slot.key.extend_from_slice(key);
        slot.value = Some(value);
    }
}

thread_local! {
    /// The worker's memo (module docs).
    static MEMO: RefCell<MemoSlots<Arc<Cached>>> = const { RefCell::new(MemoSlots::new()) };
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl TokenCache {
    pub fn new(size: u64) -> Self {
        TokenCache {
            entries: moka::sync::Cache::builder()
                .max_capacity(size)
                .expire_after(PerEntryTtl)
                .build_with_hasher(DigestHash),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            memo: size > 0,
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

    /// What the cache remembers of `token` at `now` (seconds since the epoch): this worker's
    /// memo first, then the shared cache by digest. A miss hands back the digest, for
    /// [`TokenCache::insert`] after the token verified.
    pub fn lookup(&self, token: &[u8], now: u64) -> Result<Arc<Cached>, [u8; 32]> {
        if let Some(hit) = self.memo_get(token, now) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(hit);
        }
        let key = Self::key(token);
        match self.get(&key) {
            Some(hit) => {
                self.memo_put(token, &hit);
                Ok(hit)
            }
            None => Err(key),
        }
    }

    /// The shared cache alone, by digest (counts a hit or a miss).
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

    /// Remembers a verification of `token` (whose digest is `key`) for min(`exp`, `ttl`)
    /// from `now`.
    pub fn insert(&self, token: &[u8], key: [u8; 32], mut cached: Cached, now: u64, ttl: Duration) {
        let remaining = (cached.valid_until - now as f64).max(0.0);
        // A validly signed token may carry any `exp` (1e300 is a JSON number): too large
        // for a `Duration` means "later than any ttl", never a panic.
        let until_exp = Duration::try_from_secs_f64(remaining).unwrap_or(Duration::MAX);
        cached.ttl = ttl.min(until_exp);
        // Both clocks read whole seconds: `now` + floor(ttl) ends before the shared entry
        // does (inserted at now + a fraction, for ttl).
        cached.expires_at = now.saturating_add(cached.ttl.as_secs());
        if !cached.ttl.is_zero() {
            let cached = Arc::new(cached);
            self.memo_put(token, &cached);
            self.entries.insert(key, cached);
        }
    }

    fn memo_get(&self, token: &[u8], now: u64) -> Option<Arc<Cached>> {
        MEMO.with_borrow(|memo| {
            memo.get(self.id, 0, token)
                .filter(|entry| now < entry.expires_at)
                .cloned()
        })
    }

    fn memo_put(&self, token: &[u8], entry: &Arc<Cached>) {
        if !self.memo || token.len() > MEMO_MAX_TOKEN {
            return;
        }
        MEMO.with_borrow_mut(|memo| memo.put(self.id, 0, token, entry.clone()));
    }

    pub fn len(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.entry_count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The memo slot of a token (or a session cookie): its last eight bytes (for a JWT,
/// signature bytes) and its length, mixed. A client who picks them only picks which slot it
/// evicts.
fn slot_index(token: &[u8]) -> usize {
    let tail = &token[token.len().saturating_sub(8)..];
    let mut word = [0u8; 8];
    word[..tail.len()].copy_from_slice(tail);
    let mixed = (u64::from_le_bytes(word) ^ token.len() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (mixed >> (64 - MEMO_SLOTS.trailing_zeros())) as usize
}

/// Equal contents, in a time that depends on the length only: a memo slot holds one
/// client's token and is compared with any client's.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u64;
    let (a_words, b_words) = (a.chunks_exact(8), b.chunks_exact(8));
    for (x, y) in a_words.remainder().iter().zip(b_words.remainder()) {
        diff |= u64::from(x ^ y);
    }
    for (x, y) in a_words.zip(b_words) {
        let word = |bytes: &[u8]| u64::from_ne_bytes(bytes.try_into().expect("eight bytes"));
        diff |= word(x) ^ word(y);
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;

    fn cached() -> Cached {
        Cached::new(0, 7, 2000.0, Arc::new(Claims::default()))
    }

    /// Caches `token` at `now` = 1000 for `ttl` seconds (valid until 2000).
    fn filled(size: u64, token: &[u8], ttl: u64) -> TokenCache {
        let cache = TokenCache::new(size);
        let key = TokenCache::key(token);
        cache.insert(token, key, cached(), 1000, Duration::from_secs(ttl));
        cache
    }

    #[test]
    fn a_repeated_token_is_answered_by_the_memo_until_its_entry_ends() {
        let token = b"header.payload.signature-bytes";
        let cache = filled(100, token, 10);
        let first = cache.lookup(token, 1000).expect("just inserted");
        assert_eq!(first.key_id, 7);
        let memo = cache.memo_get(token, 1009).expect("the memo holds it");
        assert!(Arc::ptr_eq(&first, &memo));
        assert!(
            cache.memo_get(token, 1010).is_none(),
            "past now + cache_ttl"
        );
        // Capped by `exp` as well: valid_until 2000 with a ttl of an hour ends at 2000.
        let cache = filled(100, token, 3600);
        assert!(cache.memo_get(token, 1999).is_some());
        assert!(cache.memo_get(token, 2000).is_none());
        // Hits from the memo are hits.
        let cache = filled(100, token, 10);
        for _ in 0..3 {
            assert!(cache.lookup(token, 1001).is_ok());
        }
        assert_eq!(cache.hits.load(Ordering::Relaxed), 3);
        assert_eq!(cache.misses.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn the_memo_compares_every_byte() {
        let token = b"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl".to_vec();
        let cache = filled(100, &token, 10);
        for i in 0..token.len() {
            let mut other = token.clone();
            other[i] ^= 0x01;
            // Same length; the same slot unless the flip is in the last eight bytes.
            assert!(
                cache.memo_get(&other, 1000).is_none(),
                "byte {i} did not count"
            );
            assert!(cache.lookup(&other, 1000).is_err(), "byte {i}");
        }
        let longer = [&token[..], b"x"].concat();
        assert!(cache.lookup(&longer, 1000).is_err());
        assert!(cache.lookup(&token[1..], 1000).is_err());
        assert!(cache.lookup(&token, 1000).is_ok());
    }

    #[test]
    fn the_memo_answers_only_for_the_cache_that_filled_it() {
        let token = b"a.b.c";
        let old = filled(100, token, 60);
        assert!(old.memo_get(token, 1000).is_some());
        // A reload's new cache, on the same thread: nothing remembered.
        let new = TokenCache::new(100);
        assert!(new.memo_get(token, 1000).is_none());
        assert!(new.lookup(token, 1000).is_err());
    }

    #[test]
    fn any_exp_is_capped_by_the_ttl_without_a_panic() {
        let cache = TokenCache::new(10);
        for valid_until in [1e300, f64::MAX, 1e19, f64::INFINITY] {
            let token = format!("t{valid_until}");
            let cached = Cached::new(0, 0, valid_until, Arc::new(Claims::default()));
            let key = TokenCache::key(token.as_bytes());
            cache.insert(
                token.as_bytes(),
                key,
                cached,
                1000,
                Duration::from_secs(300),
            );
            let hit = cache.lookup(token.as_bytes(), 1000).expect("cached");
            assert_eq!(hit.ttl, Duration::from_secs(300));
            assert_eq!(hit.expires_at, 1300);
        }
    }

    #[test]
    fn a_zero_size_cache_remembers_nothing() {
        let token = b"a.b.c";
        let cache = filled(0, token, 60);
        assert!(cache.memo_get(token, 1000).is_none());
        // A ttl of zero (cache_ttl = "0s", or `exp` already reached) neither.
        let cache = filled(100, token, 0);
        assert!(cache.memo_get(token, 1000).is_none());
        assert!(cache.lookup(token, 1000).is_err());
    }

    #[test]
    fn same_bytes_is_equality() {
        let base: Vec<u8> = (0..40).collect();
        for len in 0..base.len() {
            let a = &base[..len];
            assert!(same_bytes(a, a));
            assert!(!same_bytes(a, &base[..len + 1]));
            for i in 0..len {
                let mut b = a.to_vec();
                b[i] ^= 0x80;
                assert!(!same_bytes(a, &b), "len {len}, byte {i}");
            }
        }
    }

    #[test]
    fn slots_spread_and_stay_in_range() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..1000 {
            let index = slot_index(format!("token-{i}").as_bytes());
            assert!(index < MEMO_SLOTS);
            seen.insert(index);
        }
        assert_eq!(seen.len(), MEMO_SLOTS, "some slots never used");
        assert!(slot_index(b"") < MEMO_SLOTS);
    }

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
