//! A link to Redis: one URL, a standalone server or a Sentinel-watched primary, with a
//! multiplexed connection per worker thread, made on first use and remade after a failure.
//! Used by the session store, the revocation denylist and the shared rate limits.
//!
//! URLs:
//! - `redis://[[user]:password@]host:port[/db]`, `rediss://...` (TLS): one server; the
//!   connection manager reconnects to it after a failure;
//! - `redis+sentinel://[[user]:password@]host:port[,host:port...]/SERVICE[/db]` (and
//!   `rediss+sentinel://`, TLS to the primary): the sentinels are asked for the primary of
//!   SERVICE at the first use and again after any failed command, so a failover is followed
//!   within one failed request per worker. The password is the primary's.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::worker::{MAX_WORKERS, worker_id};

enum Source {
    Direct(redis::Client),
    Sentinel(tokio::sync::Mutex<redis::sentinel::SentinelClient>),
}

/// See the module docs.
pub struct RedisLink {
    source: Source,
    pub timeout: Duration,
    pub prefix: Box<str>,
    /// One connection per worker (a shared multiplexed connection would be one more point
    /// of contention between the workers).
    connections: Box<[ArcSwapOption<ConnectionManager>]>,
    /// What it was built from: a reload keeps it when these are unchanged.
    pub settings: (String, Box<str>, Duration),
}

impl RedisLink {
    /// `ca`: PEM roots to trust for TLS instead of the system's. The error never repeats
    /// the URL (it may carry a password).
    pub fn open(
        url: &str,
        ca: Option<Vec<u8>>,
        prefix: &str,
        timeout: Duration,
    ) -> Result<RedisLink, String> {
        let source = match url.split_once("://") {
            Some(("redis+sentinel" | "rediss+sentinel", rest)) => {
                Source::Sentinel(tokio::sync::Mutex::new(sentinel(url, rest, ca)?))
            }
            _ => Source::Direct(
                match ca {
                    None => redis::Client::open(url),
                    Some(root_cert) => redis::Client::build_with_tls(
                        url,
                        redis::TlsCertificates {
                            client_tls: None,
                            root_cert: Some(root_cert),
                        },
                    ),
                }
                .map_err(|e| format!("not a Redis URL: {}", e.category()))?,
            ),
        };
        Ok(RedisLink {
            source,
            timeout,
            prefix: prefix.into(),
            connections: (0..MAX_WORKERS).map(|_| ArcSwapOption::empty()).collect(),
            settings: (url.to_owned(), prefix.into(), timeout),
        })
    }

    /// A client of the server to talk to now (the primary, with Sentinel).
    pub async fn client(&self) -> Result<redis::Client, String> {
        match &self.source {
            Source::Direct(client) => Ok(client.clone()),
            Source::Sentinel(sentinel) => {
                let mut sentinel = sentinel.lock().await;
                tokio::time::timeout(self.timeout, sentinel.async_get_client())
                    .await
                    .map_err(|_| "the sentinels did not answer in time".to_owned())?
                    .map_err(|e| format!("no primary from the sentinels: {e}"))
            }
        }
    }

    /// This worker's connection, made now if there is none.
    pub async fn connection(&self) -> Result<ConnectionManager, String> {
        let slot = &self.connections[worker_id()];
        if let Some(conn) = slot.load_full() {
            return Ok((*conn).clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1);
        let conn = self
            .client()
            .await?
            .get_connection_manager_with_config(config)
            .await
            .map_err(|e| format!("cannot connect to Redis: {e}"))?;
        slot.store(Some(Arc::new(conn.clone())));
        Ok(conn)
    }

    /// This worker's connection when it is made; otherwise `None` at once, and it is
    /// being made (for callers that must not wait: the request path).
    pub fn ready_connection(self: &Arc<Self>) -> Option<ConnectionManager> {
        if let Some(conn) = self.connections[worker_id()].load_full() {
            return Some((*conn).clone());
        }
        let link = self.clone();
        tokio::spawn(async move {
            let _ = link.connection().await;
        });
        None
    }

    /// A command failed: with Sentinel, the next one asks the sentinels for the primary
    /// again (it may have moved; the old one answers `READONLY` or not at all). A
    /// standalone server's connection manager reconnects on its own.
    pub fn failed(&self) {
        if matches!(self.source, Source::Sentinel(_)) {
            self.connections[worker_id()].store(None);
        }
    }
}

/// `redis+sentinel://[[user]:password@]h:p[,h:p]/SERVICE[/db]`.
fn sentinel(
    url: &str,
    rest: &str,
    ca: Option<Vec<u8>>,
) -> Result<redis::sentinel::SentinelClient, String> {
    let bad = |why: &str| {
        format!(
            "not a Sentinel URL ({why}): write redis+sentinel://host:port[,host:port]/SERVICE[/db]"
        )
    };
    let (userinfo, rest) = match rest.rsplit_once('@') {
        Some((userinfo, rest)) => (Some(userinfo), rest),
        None => (None, rest),
    };
    let (hosts, path) = rest.split_once('/').ok_or_else(|| bad("no service name"))?;
    let mut segments = path.split('/');
    let service = segments
        .next()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| bad("no service name"))?;
    let db: Option<i64> = match segments.next() {
        None | Some("") => None,
        Some(db) => Some(db.parse().map_err(|_| bad("the db is not a number"))?),
    };
    let mut sentinels = Vec::new();
    for host in hosts.split(',') {
        let (name, port) = host
            .rsplit_once(':')
            .ok_or_else(|| bad("a sentinel without a port"))?;
        let port: u16 = port.parse().map_err(|_| bad("a port is not a number"))?;
        let name = name.trim_start_matches('[').trim_end_matches(']');
        sentinels.push(redis::ConnectionAddr::Tcp(name.to_owned(), port));
    }
    if sentinels.is_empty() {
        return Err(bad("no sentinel"));
    }
    let mut builder = redis::sentinel::SentinelClientBuilder::new(
        sentinels,
        service,
        redis::sentinel::SentinelServerType::Master,
    )
    .map_err(|e| bad(e.category()))?;
    if let Some(userinfo) = userinfo {
        let (user, password) = userinfo.split_once(':').unwrap_or(("", userinfo));
        if !user.is_empty() {
            builder = builder.set_client_to_redis_username(user);
        }
        if !password.is_empty() {
            builder = builder.set_client_to_redis_password(password);
        }
    }
    if let Some(db) = db {
        builder = builder.set_client_to_redis_db(db);
    }
    if url.starts_with("rediss+") {
        builder = builder.set_client_to_redis_tls_mode(redis::TlsMode::Secure);
        if let Some(root_cert) = ca {
            builder = builder.set_client_to_redis_certificates(redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(root_cert),
            });
        }
    }
    builder.build().map_err(|e| bad(e.category()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_urls_parse_and_bad_ones_say_how_to_write_them() {
        let d = Duration::from_secs(1);
        assert!(
            RedisLink::open(
                "redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/mymaster",
                None,
                "p:",
                d
            )
            .is_ok()
        );
        assert!(
            RedisLink::open(
                "redis+sentinel://:pw@127.0.0.1:26379/mymaster/2",
                None,
                "p:",
                d
            )
            .is_ok()
        );
        for bad in [
            "redis+sentinel://127.0.0.1:26379",
            "redis+sentinel://127.0.0.1:26379/",
            "redis+sentinel://127.0.0.1/mymaster",
            "redis+sentinel://127.0.0.1:x/mymaster",
            "redis+sentinel://127.0.0.1:1/m/db",
        ] {
            let error = RedisLink::open(bad, None, "p:", d).err().unwrap();
            assert!(
                error.contains("redis+sentinel://host:port"),
                "{bad}: {error}"
            );
            assert!(!error.contains("127.0.0.1"), "the URL was echoed: {error}");
        }
        assert!(RedisLink::open("redis://127.0.0.1:6379/0", None, "p:", d).is_ok());
    }
}
