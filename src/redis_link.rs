//! A link to Redis: one URL, a standalone server, a Sentinel-watched primary or a
//! cluster, with a multiplexed connection per worker thread, made on first use and remade
//! after a failure. Used by the session store, the revocation denylist and the shared rate
//! limits.
//!
//! URLs:
//! - `redis://[[user]:password@]host:port[/db]`, `rediss://...` (TLS): one server; the
//!   connection manager reconnects to it after a failure;
//! - `redis+sentinel://[[user]:password@]host:port[,host:port...]/SERVICE[/db]` (and
//!   `rediss+sentinel://`, TLS to the primary): the sentinels are asked for the primary of
//!   SERVICE at the first use and again after any failed command, so a failover is followed
//!   within one failed request per worker. The password is the primary's;
//! - `redis+cluster://[[user]:password@]host:port[,host:port...]` (and `rediss+cluster://`):
//!   a Redis Cluster, found from any of the seed nodes named; commands go to the node that
//!   owns their key and follow `MOVED`/`ASK` redirections and topology changes. A cluster
//!   has only database 0, so the URL has no `/db`. Every command the gateway sends touches
//!   one key (or one key per pipeline), so no key needs a hash tag.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::worker::{MAX_WORKERS, worker_id};

enum Source {
    Direct(redis::Client),
    Sentinel(tokio::sync::Mutex<redis::sentinel::SentinelClient>),
    Cluster {
        client: redis::cluster::ClusterClient,
        /// Each seed node on its own, for pub/sub: a message published on any node of a
        /// cluster reaches the subscribers of every node.
        seeds: Box<[redis::Client]>,
        /// The seed to subscribe at next (the next one after a failure).
        next_seed: AtomicUsize,
    },
}

/// A connection to a server or to a cluster; `redis` commands, pipelines and scripts run
/// on either.
#[derive(Clone)]
pub enum Connection {
    Server(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Server(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Server(c) => c.req_packed_commands(cmd, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Server(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

/// See the module docs.
pub struct RedisLink {
    source: Source,
    pub timeout: Duration,
    pub prefix: Box<str>,
    /// One connection per worker (a shared multiplexed connection would be one more point
    /// of contention between the workers).
    connections: Box<[ArcSwapOption<Connection>]>,
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
            Some((scheme @ ("redis+cluster" | "rediss+cluster"), rest)) => {
                cluster(scheme, rest, ca, timeout)?
            }
            _ => Source::Direct(server(url, ca).map_err(|e| {
                format!(
                    "not a Redis URL ({}); use redis://[[user]:password@]host:port[/db], \
                         rediss://…, redis+sentinel://host:port[,host:port]/SERVICE or \
                         redis+cluster://host:port[,host:port]",
                    e.category()
                )
            })?),
        };
        Ok(RedisLink {
            source,
            timeout,
            prefix: prefix.into(),
            connections: (0..MAX_WORKERS).map(|_| ArcSwapOption::empty()).collect(),
            settings: (url.to_owned(), prefix.into(), timeout),
        })
    }

    /// A client of one server to talk to now: the primary with Sentinel, a seed node of a
    /// cluster (for pub/sub).
    pub async fn client(&self) -> Result<redis::Client, String> {
        match &self.source {
            Source::Direct(client) => Ok(client.clone()),
            Source::Cluster {
                seeds, next_seed, ..
            } => Ok(seeds[next_seed.load(Ordering::Relaxed) % seeds.len()].clone()),
            Source::Sentinel(sentinel) => {
                let mut sentinel = sentinel.lock().await;
                tokio::time::timeout(self.timeout, sentinel.async_get_client())
                    .await
                    .map_err(|_| "the sentinels did not answer in time".to_owned())?
                    .map_err(|e| format!("no primary from the sentinels: {e}"))
            }
        }
    }

    /// The messages published on `channel`, from a subscription at `client()` (a message
    /// published on any node of a cluster reaches every node); the stream ends when the
    /// subscription breaks.
    pub async fn subscribe(
        &self,
        channel: String,
    ) -> Result<impl futures_util::Stream<Item = redis::Msg> + Send + Unpin + use<>, String> {
        let client = self.client().await?;
        let mut pubsub = tokio::time::timeout(self.timeout, client.get_async_pubsub())
            .await
            .map_err(|_| "connect timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        tokio::time::timeout(self.timeout, pubsub.subscribe(channel))
            .await
            .map_err(|_| "subscribe timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        Ok(Box::pin(pubsub.into_on_message()))
    }

    /// This worker's connection, made now if there is none.
    pub async fn connection(&self) -> Result<Connection, String> {
        let slot = &self.connections[worker_id()];
        if let Some(conn) = slot.load_full() {
            return Ok((*conn).clone());
        }
        if let Source::Cluster { client, .. } = &self.source {
            // The cluster connection has its own timeouts (see `cluster`); this one bounds
            // finding the slot map.
            let conn = tokio::time::timeout(self.timeout, client.get_async_connection())
                .await
                .map_err(|_| "the cluster did not answer in time".to_owned())?
                .map_err(|e| format!("cannot connect to the Redis cluster: {e}"))?;
            let conn = Connection::Cluster(conn);
            slot.store(Some(Arc::new(conn.clone())));
            return Ok(conn);
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
        let conn = Connection::Server(conn);
        slot.store(Some(Arc::new(conn.clone())));
        Ok(conn)
    }

    /// This worker's connection when it is made; otherwise `None` at once, and it is
    /// being made (for callers that must not wait: the request path).
    pub fn ready_connection(self: &Arc<Self>) -> Option<Connection> {
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
    /// standalone server's connection manager reconnects on its own, and so does a
    /// cluster connection (and it refreshes the slot map).
    pub fn failed(&self) {
        if matches!(self.source, Source::Sentinel(_)) {
            self.connections[worker_id()].store(None);
        }
    }

    /// The subscription failed: with a cluster, the next one goes to the next seed node
    /// (this one may be down).
    pub fn subscription_failed(&self) {
        if let Source::Cluster { next_seed, .. } = &self.source {
            next_seed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn server(url: &str, ca: Option<Vec<u8>>) -> redis::RedisResult<redis::Client> {
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
}

/// The `[[user]:password@]host:port[,host:port...]` of the Sentinel and cluster URLs; `bad`
/// makes the error.
fn hosts(list: &str, bad: &dyn Fn(&str) -> String) -> Result<Vec<(String, u16)>, String> {
    let mut hosts = Vec::new();
    for host in list.split(',') {
        let (name, port) = host
            .rsplit_once(':')
            .ok_or_else(|| bad("a host without a port"))?;
        let port: u16 = port.parse().map_err(|_| bad("a port is not a number"))?;
        let name = name.trim_start_matches('[').trim_end_matches(']');
        if name.is_empty() {
            return Err(bad("a port without a host"));
        }
        hosts.push((name.to_owned(), port));
    }
    Ok(hosts)
}

/// `redis+cluster://[[user]:password@]h:p[,h:p]`.
fn cluster(
    scheme: &str,
    rest: &str,
    ca: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<Source, String> {
    let bad = |why: &str| {
        format!("not a cluster URL ({why}): write redis+cluster://host:port[,host:port]")
    };
    let (userinfo, list) = match rest.rsplit_once('@') {
        Some((userinfo, list)) => (Some(userinfo), list),
        None => (None, rest),
    };
    let list = list.strip_suffix('/').unwrap_or(list);
    if list.contains('/') {
        return Err(bad("a cluster has only database 0: drop the /db"));
    }
    let tls = scheme.starts_with("rediss");
    let urls: Vec<String> = hosts(list, &bad)?
        .into_iter()
        .map(|(name, port)| {
            let name = if name.contains(':') {
                format!("[{name}]")
            } else {
                name
            };
            let userinfo = userinfo.map(|u| format!("{u}@")).unwrap_or_default();
            let scheme = if tls { "rediss" } else { "redis" };
            format!("{scheme}://{userinfo}{name}:{port}")
        })
        .collect();
    let seeds = urls
        .iter()
        .map(|url| server(url, ca.clone()))
        .collect::<Result<Box<[_]>, _>>()
        .map_err(|e| bad(e.category()))?;
    let mut builder = redis::cluster::ClusterClientBuilder::new(urls)
        .connection_timeout(timeout)
        .response_timeout(timeout)
        .retries(1);
    if let Some(root_cert) = ca.filter(|_| tls) {
        builder = builder.certs(redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(root_cert),
        });
    }
    Ok(Source::Cluster {
        client: builder.build().map_err(|e| bad(e.category()))?,
        seeds,
        next_seed: AtomicUsize::new(0),
    })
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
    let (list, path) = rest.split_once('/').ok_or_else(|| bad("no service name"))?;
    let mut segments = path.split('/');
    let service = segments
        .next()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| bad("no service name"))?;
    let db: Option<i64> = match segments.next() {
        None | Some("") => None,
        Some(db) => Some(db.parse().map_err(|_| bad("the db is not a number"))?),
    };
    let sentinels: Vec<_> = hosts(list, &bad)?
        .into_iter()
        .map(|(name, port)| redis::ConnectionAddr::Tcp(name, port))
        .collect();
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

    #[test]
    fn cluster_urls_parse_and_bad_ones_say_how_to_write_them() {
        let d = Duration::from_secs(1);
        for good in [
            "redis+cluster://127.0.0.1:7000",
            "redis+cluster://127.0.0.1:7000,127.0.0.1:7001/",
            "redis+cluster://:pw@127.0.0.1:7000,[::1]:7001",
            "redis+cluster://user:pw@127.0.0.1:7000",
            "rediss+cluster://127.0.0.1:7000",
        ] {
            assert!(RedisLink::open(good, None, "p:", d).is_ok(), "{good}");
        }
        for bad in [
            "redis+cluster://127.0.0.1",
            "redis+cluster://127.0.0.1:7000/2",
            "redis+cluster://127.0.0.1:x",
            "redis+cluster://:7000",
            "redis+cluster://",
        ] {
            let error = RedisLink::open(bad, None, "p:", d).err().unwrap();
            assert!(
                error.contains("redis+cluster://host:port"),
                "{bad}: {error}"
            );
            assert!(!error.contains("127.0.0.1"), "the URL was echoed: {error}");
        }
        let error = RedisLink::open("mysql://x:pw@h/", None, "p:", d)
            .err()
            .unwrap();
        assert!(error.contains("redis+cluster://"), "{error}");
        assert!(!error.contains("pw"), "{error}");
    }
}
