//! Each worker thread's memo of the sessions it answered last from a cache of opened
//! sessions (`Login::opened` for `store = "cookie"`, `RedisStore::opened` for `"redis"`), in
//! front of that cache: a browser's next request on the same worker is found by comparing
//! its cookie with the one in the slot, without the SHA-256 of the cookie and the shared
//! lookup. The token cache's memo slots (`auth::cache::MemoSlots`), with these keys:
//!
//! - 64 slots a worker, picked by the cookie's last bytes; a slot holds one
//!   cookie value (a credential, in memory only, like the token memo's tokens) and is
//!   compared with any client's in a time that depends on the length only.
//! - A slot answers only for the cache that filled it (`owner`, from
//!   `store::next_opened_id`: a reload builds a new cache)
//!   and only at the `generation` it was filled at: the Redis store moves its generation at
//!   every session end it hears and every (re)subscription, so an end anywhere empties
//!   every worker's memo at once (coarse, and free on the request path: one load). The
//!   cookie store has no ends (generation 0); its entries, like the cache's, answer only
//!   while their session needs no write (`still_fresh`), at most a touch interval (≤ 60 s).
//! - Filled from a hit of the shared cache with the generation read before that lookup:
//!   an end heard in between moves the generation past the slot's.

use std::cell::RefCell;
use std::sync::Arc;

use super::store::Opened;
#[cfg(test)]
use super::store::next_opened_id as next_owner;
use crate::auth::cache::MemoSlots;

/// Longer cookie values are not kept (they still are in the shared cache, as a digest).
const MEMO_MAX_COOKIE: usize = 4096;

thread_local! {
    /// The worker's memo; allocated on the first session the thread remembers.
    static MEMO: RefCell<MemoSlots<Arc<Opened>>> = const { RefCell::new(MemoSlots::new()) };
}

/// The session this worker last saw with `cookie`, if `owner`'s cache gave it at
/// `generation`.
pub fn get(owner: u64, generation: u64, cookie: &[u8]) -> Option<Arc<Opened>> {
    MEMO.with_borrow(|memo| memo.get(owner, generation, cookie).cloned())
}

/// Remembers that `owner`'s cache gave `opened` for `cookie` at `generation` (read before
/// the lookup).
pub fn put(owner: u64, generation: u64, cookie: &[u8], opened: &Arc<Opened>) {
    if cookie.len() <= MEMO_MAX_COOKIE {
        MEMO.with_borrow_mut(|memo| memo.put(owner, generation, cookie, opened.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opened(created: u64) -> Arc<Opened> {
        Arc::new(Opened {
            claims: Arc::new(crate::auth::claims::Claims::from_map(Default::default())),
            id: None,
            created,
            tokens: None,
            expires: u64::MAX,
            last_seen: 0,
            token_exp: u64::MAX,
            refreshable: false,
            end_key: [0; 32],
        })
    }

    #[test]
    fn a_slot_answers_only_its_cookie_owner_and_generation() {
        let owner = next_owner();
        put(owner, 7, b"cookie-a", &opened(1));
        assert_eq!(get(owner, 7, b"cookie-a").map(|o| o.created), Some(1));
        // Another cookie (same length, and one that may share the slot), another cache,
        // a moved generation: nothing.
        assert!(get(owner, 7, b"cookie-b").is_none());
        assert!(get(next_owner(), 7, b"cookie-a").is_none());
        assert!(get(owner, 8, b"cookie-a").is_none());
        // A cookie that lands in the same slot replaces it.
        put(owner, 7, b"cookie-a", &opened(2));
        assert_eq!(get(owner, 7, b"cookie-a").map(|o| o.created), Some(2));
        // Too long to keep.
        let long = vec![b'x'; MEMO_MAX_COOKIE + 1];
        put(owner, 7, &long, &opened(3));
        assert!(get(owner, 7, &long).is_none());
    }

    #[test]
    fn the_memo_is_per_thread() {
        let owner = next_owner();
        put(owner, 0, b"cookie-t", &opened(1));
        let elsewhere = std::thread::spawn(move || get(owner, 0, b"cookie-t").is_some());
        assert!(!elsewhere.join().unwrap());
        assert!(get(owner, 0, b"cookie-t").is_some());
    }
}
