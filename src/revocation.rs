//! The shared denylist (`[redis]`): revocations that reach every instance, checked per
//! request without a Redis round trip.
//!
//! What can be revoked, and until when:
//! - a JWT by its `jti` (admin `POST /revoke`), until its `exp`;
//! - a login session by the gateway's session id (`POST /_portcullis/logout`), until the
//!   session's end: this is what ends a `store = "cookie"` session, which lives only in the
//!   browser, on every instance;
//! - the sessions of an IdP session (`sid`) or a subject (`sub`) by back-channel logout,
//!   until the longest a session can live; only sessions that began before the revocation
//!   are ended (a new login after it is not).
//!
//! How it travels: `revoke` adds `"{id} {revoked_at} {until}"` to the sorted set
//! `{prefix}revoked` (scored by `until`, so expired entries are cut by score) and publishes
//! the same on `{prefix}revocations`. One key, not a key per entry: a full read is one
//! command on one node, also in a Redis Cluster (where a `SCAN` would have to visit every
//! node), and a message published on any node of a cluster reaches every node. Every instance
//! keeps the unexpired entries in a local map: it reads them all at start, applies each
//! published one as it arrives, and reads them all again every 30 s and after a lost
//! connection (Redis pub/sub delivers at most once: a message sent while an instance was
//! disconnected is picked up by the next full read). A request is checked against the
//! local map only: when it is empty (no revocation in force, the usual case) that is one
//! atomic load; otherwise one SHA-256 and one map probe.
//!
//! Ids are SHA-256 digests of `kind`, the issuer and the value: Redis never holds a
//! session id or a `jti` in clear, and a key's length does not depend on client input.
//!
//! Redis down: the instance goes on with the entries it has (a revocation made meanwhile
//! reaches it when Redis is back); `revoke` fails (the admin endpoint answers 503, a logout
//! still clears the browser's cookie). `portcullis_revocation_synced` says 0 meanwhile.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use futures_util::StreamExt;

use crate::redis_link::RedisLink;

/// What a revocation names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Jti,
    Session,
    Sid,
    Sub,
}

impl Kind {
    fn tag(self) -> &'static str {
        match self {
            Kind::Jti => "jti",
            Kind::Session => "session",
            Kind::Sid => "sid",
            Kind::Sub => "sub",
        }
    }
}

/// One revocation in force (seconds since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    revoked_at: u64,
    until: u64,
}

/// The local copy of the denylist and its link to Redis.
pub struct Denylist {
    entries: DashMap<[u8; 16], Entry>,
    /// `entries.len()`, kept apart: the per-request check reads only this when it is 0.
    len: AtomicUsize,
    pub link: Arc<RedisLink>,
    synced: AtomicBool,
    started: AtomicBool,
}

impl Denylist {
    pub fn new(link: Arc<RedisLink>) -> Denylist {
        Denylist {
            entries: DashMap::new(),
            len: AtomicUsize::new(0),
            link,
            synced: AtomicBool::new(false),
            started: AtomicBool::new(false),
        }
    }

    /// Whether the local copy is in step with Redis (the last full read worked and the
    /// subscription is up).
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Relaxed)
    }

    /// Revocations in force here.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `value` (of `issuer`) is revoked at `now` for a credential issued at
    /// `issued_at` (a session's start; `0` when unknown, which any revocation covers).
    pub fn is_revoked(
        &self,
        kind: Kind,
        issuer: &str,
        value: &str,
        issued_at: u64,
        now: u64,
    ) -> bool {
        if self.len.load(Ordering::Relaxed) == 0 {
            return false;
        }
        self.entries
            .get(&id(kind, issuer, value))
            .is_some_and(|e| now < e.until && issued_at <= e.revoked_at)
    }

    /// Revokes `value` until `until`, on every instance.
    pub async fn revoke(
        &self,
        kind: Kind,
        issuer: &str,
        value: &str,
        until: u64,
        now: u64,
    ) -> Result<(), String> {
        if until <= now {
            return Ok(());
        }
        let id = id(kind, issuer, value);
        let hex = hex(&id);
        let entry = Entry {
            revoked_at: now,
            until,
        };
        self.insert(id, entry);
        let mut conn = self.link.connection().await?;
        let member = format!("{hex} {now} {until}");
        // Written, then published: two commands, as the channel is not in the key's slot
        // in a cluster.
        let written = redis::pipe()
            .cmd("ZADD")
            .arg(self.key())
            .arg(until)
            .arg(&member)
            .ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(self.key())
            .arg("-inf")
            .arg(now)
            .ignore()
            .query_async::<()>(&mut conn)
            .await;
        let published = match written {
            Ok(()) => {
                redis::cmd("PUBLISH")
                    .arg(self.channel())
                    .arg(&member)
                    .query_async::<()>(&mut conn)
                    .await
            }
            Err(e) => Err(e),
        };
        published.map_err(|e| {
            self.link.failed();
            format!("cannot write the revocation to Redis: {e}")
        })
    }

    #[cfg(feature = "bench-internals")]
    #[doc(hidden)]
    pub fn bench_insert(&self, kind: Kind, issuer: &str, value: &str, until: u64, now: u64) {
        self.insert(
            id(kind, issuer, value),
            Entry {
                revoked_at: now,
                until,
            },
        );
    }

    fn key(&self) -> String {
        format!("{}revoked", self.link.prefix)
    }

    fn channel(&self) -> String {
        format!("{}revocations", self.link.prefix)
    }

    fn insert(&self, id: [u8; 16], entry: Entry) {
        if self.entries.insert(id, entry).is_none() {
            self.len.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Starts the subscription and the periodic full reads, once; they end when the
    /// denylist is dropped (a reload that changed `[redis]`).
    pub fn start(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut first = true;
            loop {
                let Some(list) = weak.upgrade() else { return };
                // Logged when it stops working (or never did), not at every retry.
                if let Err(error) = list.follow().await {
                    list.link.subscription_failed();
                    if list.synced.swap(false, Ordering::Relaxed) || first {
                        tracing::warn!(%error, "revocation list: no Redis; retrying every second");
                    }
                }
                first = false;
                drop(list);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    /// Subscribes, reads everything, then applies messages, reading everything again
    /// every 30 s; returns on a Redis error.
    async fn follow(&self) -> Result<(), String> {
        let mut messages = self.link.subscribe(self.channel()).await?;
        loop {
            self.read_all().await?;
            self.synced.store(true, Ordering::Relaxed);
            let until = tokio::time::Instant::now() + Duration::from_secs(30);
            loop {
                match tokio::time::timeout_at(until, messages.next()).await {
                    Err(_) => break,
                    Ok(None) => return Err("the subscription ended".into()),
                    Ok(Some(message)) => {
                        let payload: String = message.get_payload().unwrap_or_default();
                        if let Some((id, entry)) = parse(&payload) {
                            self.insert(id, entry);
                        }
                    }
                }
            }
        }
    }

    /// Reads every revocation in Redis, and drops the expired local ones.
    async fn read_all(&self) -> Result<(), String> {
        let mut conn = self.link.connection().await?;
        let now = crate::auth::unix_now();
        let members: Vec<String> = redis::cmd("ZRANGE")
            .arg(self.key())
            .arg(format!("({now}"))
            .arg("+inf")
            .arg("BYSCORE")
            .query_async(&mut conn)
            .await
            .map_err(|e| {
                self.link.failed();
                e.to_string()
            })?;
        for member in &members {
            if let Some((id, entry)) = parse(member) {
                self.insert(id, entry);
            }
        }
        self.entries.retain(|_, e| e.until > now);
        self.len.store(self.entries.len(), Ordering::Relaxed);
        Ok(())
    }
}

fn parse(text: &str) -> Option<([u8; 16], Entry)> {
    let mut parts = text.split(' ');
    let hex = parts.next()?;
    let revoked_at = parts.next()?.parse().ok()?;
    let until = parts.next()?.parse().ok()?;
    if hex.len() != 32 {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, byte) in id.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some((id, Entry { revoked_at, until }))
}

fn id(kind: Kind, issuer: &str, value: &str) -> [u8; 16] {
    let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for part in [kind.tag(), issuer, value] {
        context.update(part.as_bytes());
        context.update(b"\n");
    }
    context.finish().as_ref()[..16]
        .try_into()
        .expect("16 of 32 bytes")
}

fn hex(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list() -> Denylist {
        Denylist::new(Arc::new(
            RedisLink::open(
                "redis://127.0.0.1:9",
                None,
                "p:",
                Duration::from_millis(100),
            )
            .unwrap(),
        ))
    }

    #[test]
    fn an_entry_covers_credentials_issued_before_it_until_it_ends() {
        let l = list();
        assert!(!l.is_revoked(Kind::Sub, "i", "alice", 0, 100));
        l.insert(
            id(Kind::Sub, "i", "alice"),
            Entry {
                revoked_at: 100,
                until: 200,
            },
        );
        assert!(l.is_revoked(Kind::Sub, "i", "alice", 50, 150));
        assert!(l.is_revoked(Kind::Sub, "i", "alice", 100, 150));
        // A session begun after the revocation, another issuer, kind or value: not revoked.
        assert!(!l.is_revoked(Kind::Sub, "i", "alice", 101, 150));
        assert!(!l.is_revoked(Kind::Sub, "j", "alice", 50, 150));
        assert!(!l.is_revoked(Kind::Sid, "i", "alice", 50, 150));
        assert!(!l.is_revoked(Kind::Sub, "i", "bob", 50, 150));
        // Over at `until`.
        assert!(!l.is_revoked(Kind::Sub, "i", "alice", 50, 200));
    }

    #[test]
    fn messages_round_trip_and_garbage_is_ignored() {
        let key = id(Kind::Jti, "", "abc");
        let text = format!("{} 5 9", hex(&key));
        assert_eq!(
            parse(&text),
            Some((
                key,
                Entry {
                    revoked_at: 5,
                    until: 9
                }
            ))
        );
        for bad in [
            "",
            "zz 1 2",
            "0123 1 2",
            &format!("{} x 2", hex(&key)),
            &format!("{} 1", hex(&key)),
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn revoking_without_redis_fails_but_applies_here() {
        let l = list();
        let error = l.revoke(Kind::Jti, "", "abc", 200, 100).await.unwrap_err();
        assert!(error.contains("Redis"), "{error}");
        assert!(l.is_revoked(Kind::Jti, "", "abc", 0, 150));
    }
}
