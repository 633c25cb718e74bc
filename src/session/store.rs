//! Where sessions live: in the cookie itself, in a bounded in-process map, or in Redis.
//!
//! - `cookie` (default): stateless; the sealed cookie carries the session. Nothing to share
//!   between instances, but a logout cannot reach a copy of the cookie kept elsewhere, and
//!   back-channel logout has nothing to delete.
//! - `memory`: the cookie carries a random id; sessions in a moka cache bounded by
//!   `max_sessions`, kept across reloads. One instance only.
//! - `redis`: the same, in Redis, so every instance behind a load balancer sees the same
//!   sessions and the same logouts. Each worker thread keeps one multiplexed connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One logged-in browser. `Debug` leaves the tokens out (I7).
#[derive(Clone, Serialize, Deserialize, PartialEq)]
pub struct Session {
    /// The identity: the verified ID token's claims (less the protocol ones).
    pub claims: Map<String, Value>,
    /// Made at login: what a logout revokes on every instance (`[redis]` denylist).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Seconds since the epoch.
    pub created: u64,
    pub last_seen: u64,
    /// The absolute end (`created + lifetime`).
    pub expires: u64,
    /// The ID token's `exp`: with a refresh token, the session is renewed before it.
    pub id_exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// Kept by the server-side stores as `id_token_hint` at logout, and by every store
    /// when a route forwards it (`forward_id_token`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
    /// The IdP's access token, kept when a route forwards it (`forward_access_token`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
    /// Its expiry (seconds since the epoch), from the token response's `expires_in`: with a
    /// refresh token, the session is renewed before it too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_exp: Option<u64>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("sub", &self.claim("sub"))
            .field("created", &self.created)
            .field("last_seen", &self.last_seen)
            .field("expires", &self.expires)
            .field("id_exp", &self.id_exp)
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "<redacted>"),
            )
            .field("id_token", &self.id_token.as_ref().map(|_| "<redacted>"))
            .field(
                "access_token",
                &self.access_token.as_ref().map(|_| "<redacted>"),
            )
            .field("access_exp", &self.access_exp)
            .finish()
    }
}

impl Session {
    /// Due for a refresh at `now`: it has a refresh token and its ID token (or its
    /// forwarded access token) expires within 30 s.
    pub fn due_for_refresh(&self, now: u64) -> bool {
        self.refresh_token.is_some()
            && (now + 30 >= self.id_exp || self.access_exp.is_some_and(|exp| now + 30 >= exp))
    }

    pub fn issuer(&self) -> &str {
        self.claims.get("iss").and_then(Value::as_str).unwrap_or("")
    }

    fn claim(&self, name: &str) -> Option<&str> {
        self.claims.get(name).and_then(Value::as_str)
    }

    /// Whether a back-channel logout naming `sid` and/or `sub` of `issuer` ends this one.
    pub fn matches(&self, issuer: &str, sid: Option<&str>, sub: Option<&str>) -> bool {
        self.issuer() == issuer
            && (sid.is_some() || sub.is_some())
            && sid.is_none_or(|s| self.claim("sid") == Some(s))
            && sub.is_none_or(|s| self.claim("sub") == Some(s))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("session store: {0}")]
pub struct StoreError(pub String);

pub enum Store {
    Cookie,
    Memory(Arc<MemoryStore>),
    Redis(Arc<RedisStore>),
}

impl Store {
    pub fn is_server_side(&self) -> bool {
        !matches!(self, Store::Cookie)
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Store::Cookie => "cookie",
            Store::Memory(_) => "memory",
            Store::Redis(_) => "redis",
        }
    }

    pub async fn load(&self, id: &str, now: u64) -> Result<Option<Session>, StoreError> {
        let session = match self {
            Store::Cookie => None,
            Store::Memory(m) => m.sessions.get(id).map(|s| (*s).clone()),
            Store::Redis(r) => r.load(id).await?,
        };
        Ok(session.filter(|s| now < s.expires))
    }

    /// Saves a session that must disappear after `ttl` without activity.
    pub async fn save(&self, id: &str, session: &Session, ttl: u64) -> Result<(), StoreError> {
        match self {
            Store::Cookie => Ok(()),
            Store::Memory(m) => {
                m.sessions.insert(id.into(), Arc::new(session.clone()));
                Ok(())
            }
            Store::Redis(r) => r.save(id, session, ttl).await,
        }
    }

    pub async fn delete(&self, id: &str) -> Result<(), StoreError> {
        match self {
            Store::Cookie => Ok(()),
            Store::Memory(m) => {
                m.sessions.invalidate(id);
                Ok(())
            }
            Store::Redis(r) => r.delete(id).await,
        }
    }

    /// Ends every session of `issuer` with this `sid` (and/or `sub`); returns how many.
    pub async fn delete_matching(
        &self,
        issuer: &str,
        sid: Option<&str>,
        sub: Option<&str>,
    ) -> Result<usize, StoreError> {
        match self {
            Store::Cookie => Ok(0),
            Store::Memory(m) => {
                let doomed: Vec<Arc<Box<str>>> = m
                    .sessions
                    .iter()
                    .filter(|(_, s)| s.matches(issuer, sid, sub))
                    .map(|(id, _)| id)
                    .collect();
                for id in &doomed {
                    m.sessions.invalidate(&***id);
                }
                Ok(doomed.len())
            }
            Store::Redis(r) => r.delete_matching(issuer, sid, sub).await,
        }
    }
}

/// What a request needs from a session that was opened before (cookie store: `Login::opened`;
/// Redis store: `RedisStore::opened`).
pub struct Opened {
    pub(super) claims: Arc<crate::auth::claims::Claims>,
    pub(super) id: Option<Arc<str>>,
    pub(super) created: u64,
    pub(super) tokens: Option<Arc<crate::auth::SessionTokens>>,
    pub(super) expires: u64,
    pub(super) last_seen: u64,
    /// The earliest of the ID token's and the forwarded access token's expiry.
    pub(super) token_exp: u64,
    pub(super) refreshable: bool,
    /// Redis store: the digest of the session id, which the news of its end names.
    pub(super) end_key: [u8; 32],
}

/// A new id for a cache of opened sessions, which names it in the workers' memos
/// (`memo`; ids start at 1, 0 marks an empty slot).
pub fn next_opened_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Entries of `Login::opened` at most.
pub const OPENED_CACHE_SIZE: u64 = 50_000;

/// Sessions of one process: bounded, idle entries dropped after `idle_timeout`.
pub struct MemoryStore {
    sessions: moka::sync::Cache<Box<str>, Arc<Session>>,
    /// What it was built with, so a reload keeps it only when nothing changed.
    pub settings: (u64, Duration),
}

impl MemoryStore {
    pub fn new(max_sessions: u64, idle_timeout: Duration) -> Self {
        MemoryStore {
            sessions: moka::sync::Cache::builder()
                .max_capacity(max_sessions)
                .time_to_idle(idle_timeout)
                .build(),
            settings: (max_sessions, idle_timeout),
        }
    }
}

/// Sessions in Redis under `{prefix}s:{id}`, with `{prefix}sid:…` / `{prefix}sub:…` sets
/// naming the sessions of an IdP session or subject for back-channel logout.
///
/// Sessions this instance opened are kept in `opened` (by SHA-256 of the cookie, each
/// entry naming the SHA-256 of its id) while a
/// subscription to `{prefix}session-ends` tells it of every session ended on any instance:
/// a browser's requests then cost no Redis round trip until the session's next touch. The
/// cache answers only while subscribed (`cache_ready`); a lost subscription empties it.
pub struct RedisStore {
    link: Arc<crate::redis_link::RedisLink>,
    prefix: Box<str>,
    /// The longest a session can live: the index sets expire after it.
    pub lifetime: u64,
    pub opened: moka::sync::Cache<[u8; 32], Arc<Opened>>,
    /// Names `opened` in the workers' memos (`memo`).
    pub opened_id: u64,
    /// Subscribed to the ends of sessions (and emptied `opened` when it subscribed).
    subscribed: AtomicBool,
    started: AtomicBool,
    /// Moves at every end heard and every (re)subscription: an entry loaded before a move
    /// is not cached (its session may have ended while it was being loaded).
    generation: AtomicU64,
}

impl RedisStore {
    /// `url`: `redis://`, `rediss://`, `redis+sentinel://` or `redis+cluster://` (see
    /// `redis_link`); `ca`: PEM
    /// roots to trust for TLS instead of the system's.
    pub fn new(
        url: &str,
        ca: Option<Vec<u8>>,
        prefix: &str,
        timeout: Duration,
        lifetime: u64,
    ) -> Result<Self, String> {
        Ok(RedisStore {
            link: Arc::new(crate::redis_link::RedisLink::open(
                url, ca, prefix, timeout,
            )?),
            prefix: prefix.into(),
            lifetime,
            opened: moka::sync::Cache::builder()
                .max_capacity(OPENED_CACHE_SIZE)
                .time_to_live(Duration::from_secs(60))
                .support_invalidation_closures()
                .build(),
            opened_id: next_opened_id(),
            subscribed: AtomicBool::new(false),
            started: AtomicBool::new(false),
            generation: AtomicU64::new(0),
        })
    }

    /// What names a session in the `session-ends` messages: the SHA-256 of its id.
    pub fn end_key(id: &str) -> [u8; 32] {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, id.as_bytes());
        digest.as_ref().try_into().expect("SHA-256 is 32 bytes")
    }

    /// The cache may answer (and be filled): subscribed to the ends of sessions. The first
    /// call starts the subscription.
    pub fn cache_ready(self: &Arc<Self>) -> bool {
        // A load first: this runs on every request of a session route, and a swap would
        // write the flag's cache line from every worker each time.
        if !self.started.load(Ordering::Relaxed) && !self.started.swap(true, Ordering::AcqRel) {
            self.start();
        }
        self.subscribed.load(Ordering::Acquire)
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Caches `opened` under `key` unless an end was heard since `generation` was read.
    /// An end heard during the insert itself (its eviction registered just before the
    /// entry went in, so it would not cover it) moves the generation too: checked again
    /// after, and the entry is taken back.
    pub fn remember(&self, key: [u8; 32], opened: Arc<Opened>, generation: u64) {
        if self.subscribed.load(Ordering::Acquire) && self.generation() == generation {
            self.opened.insert(key, opened);
            if self.generation() != generation {
                self.opened.invalidate(&key);
            }
        }
    }

    fn ends_channel(&self) -> String {
        format!("{}session-ends", self.prefix)
    }

    fn start(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(store) = weak.upgrade() else { return };
                if let Err(error) = store.follow_ends().await {
                    tracing::debug!(%error, "session cache: no subscription; retrying every second");
                }
                store.subscribed.store(false, Ordering::Release);
                store.forget(None);
                store.link.subscription_failed();
                drop(store);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    /// Subscribes, empties the cache (ends may have been missed before), then evicts each
    /// session whose end is published; returns when the subscription breaks.
    async fn follow_ends(&self) -> Result<(), String> {
        use futures_util::StreamExt;
        let mut messages = self.link.subscribe(self.ends_channel()).await?;
        self.forget(None);
        self.subscribed.store(true, Ordering::Release);
        while let Some(message) = messages.next().await {
            let payload: Vec<u8> = message.get_payload().unwrap_or_default();
            // Not ours to read: forget everything rather than keep a session too long.
            self.forget(<[u8; 32]>::try_from(payload.as_slice()).ok());
        }
        Err("the subscription ended".into())
    }

    /// Drops the cached entries of the session whose id digests to `end_key` (every
    /// cookie value it was seen with; `None`: every session); from now on `get` no longer
    /// returns them, and no worker's memo does.
    ///
    /// The generation moves before (a load under way is not cached: `remember`) and after
    /// (a worker that read the generation, then found the entry just before it was
    /// forgotten, filled its memo at a generation that is past).
    fn forget(&self, end_key: Option<[u8; 32]>) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        let dropped = end_key.is_some_and(|end_key| {
            self.opened
                .invalidate_entries_if(move |_, opened| opened.end_key == end_key)
                .is_ok()
        });
        if !dropped {
            self.opened.invalidate_all();
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Tells every instance (this one included) that session `id` ended.
    async fn announce_end(&self, conn: &mut crate::redis_link::Connection, id: &str) {
        let end_key = Self::end_key(id);
        self.forget(Some(end_key));
        let published = redis::cmd("PUBLISH")
            .arg(self.ends_channel())
            .arg(&end_key[..])
            .query_async::<()>(conn)
            .await;
        if let Err(error) = published {
            // Their caches answer until the session's next touch (60 s at most) unless
            // they lost their subscription too; the session is gone from Redis either way.
            tracing::warn!(%error, "could not announce a session's end to the other instances");
        }
    }

    async fn connection(&self) -> Result<crate::redis_link::Connection, StoreError> {
        self.link.connection().await.map_err(StoreError)
    }

    /// A command failed: the link may have to find the primary again (Sentinel).
    fn fail(&self, what: &str, error: redis::RedisError) -> StoreError {
        self.link.failed();
        StoreError(format!("{what}: {error}"))
    }

    fn session_key(&self, id: &str) -> String {
        format!("{}s:{id}", self.prefix)
    }

    /// Index keys are hashed: issuer and sid are client-influenced text of any length.
    fn index_key(&self, kind: &str, issuer: &str, value: &str) -> String {
        let digest = aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            format!("{issuer}\n{value}").as_bytes(),
        );
        let hex: String = digest.as_ref()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("{}{kind}:{hex}", self.prefix)
    }

    /// True the first time `key` is claimed within `ttl` seconds, by any instance.
    pub async fn claim_once(&self, key: &str, ttl: u64) -> Result<bool, StoreError> {
        let mut conn = self.connection().await?;
        let set: Option<String> = redis::cmd("SET")
            .arg(format!("{}state:{key}", self.prefix))
            .arg(1)
            .arg("NX")
            .arg("EX")
            .arg(ttl)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.fail("SET NX failed", e))?;
        Ok(set.is_some())
    }

    async fn load(&self, id: &str) -> Result<Option<Session>, StoreError> {
        let mut conn = self.connection().await?;
        let json: Option<String> = conn
            .get(self.session_key(id))
            .await
            .map_err(|e| self.fail("GET failed", e))?;
        // A record that does not parse is no session (fail closed), not an outage.
        Ok(json.and_then(|j| serde_json::from_str(&j).ok()))
    }

    /// The session and each of its index entries are written by their own command (or
    /// pipeline on one key), sent together: in a cluster they live on different nodes.
    async fn save(&self, id: &str, session: &Session, ttl: u64) -> Result<(), StoreError> {
        let conn = self.connection().await?;
        let json = serde_json::to_string(session).expect("sessions serialise");
        let mut pipes = vec![];
        let mut pipe = redis::pipe();
        pipe.set_ex(self.session_key(id), json, ttl.max(1)).ignore();
        pipes.push(pipe);
        let issuer = session.issuer();
        for kind in ["sid", "sub"] {
            if let Some(value) = session.claim(kind) {
                let key = self.index_key(kind, issuer, value);
                let mut pipe = redis::pipe();
                pipe.sadd(&key, id).ignore();
                pipe.expire(&key, self.lifetime as i64).ignore();
                pipes.push(pipe);
            }
        }
        futures_util::future::try_join_all(pipes.iter().map(|pipe| {
            let mut conn = conn.clone();
            async move { pipe.query_async::<()>(&mut conn).await }
        }))
        .await
        .map(drop)
        .map_err(|e| self.fail("SET failed", e))
    }

    async fn delete(&self, id: &str) -> Result<(), StoreError> {
        let mut conn = self.connection().await?;
        conn.del::<_, ()>(self.session_key(id))
            .await
            .map_err(|e| self.fail("DEL failed", e))?;
        self.announce_end(&mut conn, id).await;
        Ok(())
    }

    async fn delete_matching(
        &self,
        issuer: &str,
        sid: Option<&str>,
        sub: Option<&str>,
    ) -> Result<usize, StoreError> {
        let mut conn = self.connection().await?;
        let failed = |e: redis::RedisError| self.fail("logout failed", e);
        let (kind, value) = match (sid, sub) {
            (Some(sid), _) => ("sid", sid),
            (None, Some(sub)) => ("sub", sub),
            (None, None) => return Ok(0),
        };
        let index = self.index_key(kind, issuer, value);
        let ids: Vec<String> = conn.smembers(&index).await.map_err(failed)?;
        let mut ended = 0;
        for id in &ids {
            // With both sid and sub named, a session must match both.
            if let Some(session) = self.load(id).await?
                && session.matches(issuer, sid, sub)
            {
                conn.del::<_, ()>(self.session_key(id))
                    .await
                    .map_err(failed)?;
                self.announce_end(&mut conn, id).await;
                ended += 1;
            }
        }
        if sub.is_none() || sid.is_none() {
            conn.del::<_, ()>(&index).await.map_err(failed)?;
        }
        Ok(ended)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(sid: &str, sub: &str) -> Session {
        let claims = serde_json::json!({"iss": "https://idp", "sid": sid, "sub": sub});
        Session {
            claims: claims.as_object().unwrap().clone(),
            created: 0,
            last_seen: 0,
            expires: 100,
            id_exp: 50,
            id: None,
            refresh_token: None,
            id_token: None,
            access_token: None,
            access_exp: None,
        }
    }

    #[test]
    fn debug_output_never_shows_a_token() {
        let mut s = session("s1", "alice");
        s.refresh_token = Some("rt-secret".into());
        s.id_token = Some("id-secret".into());
        let shown = format!("{s:?}");
        assert!(
            shown.contains("alice") && shown.contains("<redacted>"),
            "{shown}"
        );
        assert!(!shown.contains("secret"), "{shown}");
    }

    #[test]
    fn logout_matching_needs_the_issuer_and_every_named_value() {
        let s = session("s1", "alice");
        assert!(s.matches("https://idp", Some("s1"), None));
        assert!(s.matches("https://idp", None, Some("alice")));
        assert!(s.matches("https://idp", Some("s1"), Some("alice")));
        assert!(!s.matches("https://idp", Some("s1"), Some("bob")));
        assert!(!s.matches("https://other", Some("s1"), None));
        assert!(
            !s.matches("https://idp", None, None),
            "naming nothing ends nothing"
        );
    }

    #[tokio::test]
    async fn memory_store_expires_at_the_absolute_end_and_ends_by_sid() {
        let store = Store::Memory(Arc::new(MemoryStore::new(10, Duration::from_secs(60))));
        store.save("a", &session("s1", "alice"), 60).await.unwrap();
        store.save("b", &session("s2", "alice"), 60).await.unwrap();
        assert!(store.load("a", 99).await.unwrap().is_some());
        assert!(
            store.load("a", 100).await.unwrap().is_none(),
            "past expires"
        );
        let ended = store
            .delete_matching("https://idp", Some("s1"), None)
            .await
            .unwrap();
        assert_eq!(ended, 1);
        assert!(store.load("a", 1).await.unwrap().is_none());
        assert!(store.load("b", 1).await.unwrap().is_some());
    }
}
