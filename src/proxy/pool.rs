//! Upstream connections: a keep-alive pool per upstream and worker thread, each connection
//! driven by the request that uses it.
//!
//! hyper-util's pooled client runs every upstream connection as a task of its own and hands
//! each request to it over a channel, through a pool keyed by a hashed URI authority. On a
//! small proxied request that came to about a fifth of the gateway's user-space instructions
//! (see the README, "Where the time goes"). Here a connection (hyper's HTTP/1 `SendRequest`
//! and `Connection`) is owned by whoever uses it:
//!
//! - [`Pool::send`] checks a connection out of the calling worker's idle list (or opens one)
//!   and polls its `Connection` beside the response future, in the request's own task;
//! - the response body ([`Lease`], held by `UpstreamBody`) keeps polling it while the answer
//!   streams, and gives it back when the answer ended cleanly;
//! - an idle connection is polled by nobody. It is checked (one poll, which also notices an
//!   upstream that closed it) when it is checked out, and by a sweeper task that runs only
//!   while the worker has idle connections, which closes the dead ones and those idle for
//!   longer than `pool_idle_timeout`.
//!
//! A request is never sent twice: hyper gives a request back only when not one byte of it
//! was written (the connection was found closed first), and only then is it retried, on
//! another connection, as hyper-util's client did.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use http::uri::Authority;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::body::BoxError;
use super::upstream::PoolSettings;

/// What a pool can send: the gateway sends `RequestBody`; the unit tests send plain bodies.
pub trait SendBody: http_body::Body<Data: Send, Error: Into<BoxError>> + Send + 'static {}
impl<B> SendBody for B where B: http_body::Body<Data: Send, Error: Into<BoxError>> + Send + 'static {}

/// Why a request got no answer from the upstream.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("cannot connect to {authority}: {reason}")]
    Connect {
        authority: Authority,
        reason: String,
    },
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

type Driver<B> = http1::Connection<TokioIo<TcpStream>, B>;

/// One HTTP/1.1 connection to the upstream.
struct Conn<B: SendBody> {
    sender: http1::SendRequest<B>,
    /// `None` once the connection has finished (closed or failed). Boxed: hyper's state is
    /// large, and a `Conn` moves with the request's future.
    driver: Option<Pin<Box<Driver<B>>>>,
}

impl<B: SendBody> Conn<B> {
    /// Drives the connection; false once it has finished.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        if let Some(driver) = &mut self.driver
            && driver.as_mut().poll(cx).is_ready()
        {
            self.driver = None;
        }
        self.driver.is_some()
    }

    /// Polled once without a waker: true when the connection is open and waits for a request.
    fn reusable(&mut self) -> bool {
        self.drive(&mut Context::from_waker(Waker::noop())) && self.sender.is_ready()
    }
}

struct Idle<B: SendBody> {
    conn: Conn<B>,
    since: Instant,
}

struct Slot<B: SendBody> {
    /// Most recently used last: checkout takes the warmest connection.
    idle: Vec<Idle<B>>,
    sweeping: bool,
}

impl<B: SendBody> Default for Slot<B> {
    fn default() -> Self {
        Slot {
            idle: Vec::new(),
            sweeping: false,
        }
    }
}

/// The connections of one upstream: one idle list per worker thread. Only that worker's
/// requests use a list, so its lock is never contended.
pub struct Pool<B: SendBody> {
    authority: Authority,
    settings: PoolSettings,
    slots: Box<[Mutex<Slot<B>>]>,
}

impl<B: SendBody> Pool<B> {
    pub fn new(authority: Authority, settings: PoolSettings, workers: usize) -> Arc<Self> {
        Arc::new(Pool {
            authority,
            settings,
            slots: (0..workers).map(|_| Mutex::default()).collect(),
        })
    }

    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    pub fn settings(&self) -> &PoolSettings {
        &self.settings
    }

    /// Sends `request` (origin-form target) on a pooled or new connection of the calling
    /// worker, and drives that connection until the response head has arrived.
    pub async fn send(
        self: &Arc<Self>,
        mut request: Request<B>,
    ) -> Result<(Response<Incoming>, Lease<B>), SendError> {
        let worker = crate::server::worker_id() % self.slots.len();
        loop {
            let (mut conn, reused) = match self.checkout(worker) {
                Some(conn) => (conn, true),
                None => (self.connect().await?, false),
            };
            let response = conn.sender.try_send_request(request);
            let mut response = std::pin::pin!(response);
            let result = std::future::poll_fn(|cx| {
                conn.drive(cx);
                response.as_mut().poll(cx)
            })
            .await;
            match result {
                Ok(response) => {
                    let lease = Lease {
                        conn: Some(conn),
                        pool: self.clone(),
                        worker,
                    };
                    return Ok((response, lease));
                }
                Err(mut e) => match e.take_message() {
                    // Not one byte was written: the pooled connection had closed. A new
                    // connection that fails the same way is an upstream failure.
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(e.into_error().into()),
                },
            }
        }
    }

    fn checkout(&self, worker: usize) -> Option<Conn<B>> {
        loop {
            let idle = lock(&self.slots[worker]).idle.pop()?;
            let mut conn = idle.conn;
            if idle.since.elapsed() < self.settings.idle_timeout && conn.reusable() {
                return Some(conn);
            }
        }
    }

    async fn connect(&self) -> Result<Conn<B>, SendError> {
        let failed = |reason: String| SendError::Connect {
            authority: self.authority.clone(),
            reason,
        };
        let host = self.authority.host();
        // An IPv6 literal comes bracketed in an authority, not in a socket address.
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let port = self.authority.port_u16().unwrap_or(80);
        let stream = tokio::time::timeout(
            self.settings.connect_timeout,
            TcpStream::connect((host, port)),
        )
        .await
        .map_err(|_| {
            failed(format!(
                "no answer within {:?}",
                self.settings.connect_timeout
            ))
        })?
        .map_err(|e| failed(e.to_string()))?;
        stream
            .set_nodelay(true)
            .map_err(|e| failed(e.to_string()))?;
        let (sender, driver) = http1::handshake(TokioIo::new(stream)).await?;
        Ok(Conn {
            sender,
            driver: Some(Box::pin(driver)),
        })
    }

    /// Keeps `conn` for the next request of `worker`, if it is reusable and there is room.
    fn put_back(self: &Arc<Self>, worker: usize, mut conn: Conn<B>) {
        if !conn.reusable() {
            return;
        }
        let start_sweeper = {
            let mut slot = lock(&self.slots[worker]);
            if slot.idle.len() >= self.settings.max_idle {
                return;
            }
            slot.idle.push(Idle {
                conn,
                since: Instant::now(),
            });
            !std::mem::replace(&mut slot.sweeping, true)
        };
        if start_sweeper {
            // Called from the worker's runtime: the body is dropped by the client
            // connection's task. Without a runtime (never on the request path) the list is
            // still swept at the next checkout.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(sweep(Arc::downgrade(self), worker));
            } else {
                lock(&self.slots[worker]).sweeping = false;
            }
        }
    }

    #[cfg(test)]
    fn idle(&self, worker: usize) -> usize {
        lock(&self.slots[worker]).idle.len()
    }
}

fn lock<B: SendBody>(slot: &Mutex<Slot<B>>) -> std::sync::MutexGuard<'_, Slot<B>> {
    // The lists hold no invariant a panic could break half-way.
    slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Closes the idle connections of one worker that timed out or that the upstream closed;
/// ends when the list is empty (the next `put_back` starts another) or the pool is gone.
async fn sweep<B: SendBody>(pool: Weak<Pool<B>>, worker: usize) {
    let period = match pool.upgrade() {
        Some(pool) => (pool.settings.idle_timeout / 2).clamp(MIN_SWEEP, MAX_SWEEP),
        None => return,
    };
    loop {
        tokio::time::sleep(period).await;
        let Some(pool) = pool.upgrade() else { return };
        let timeout = pool.settings.idle_timeout;
        let mut slot = lock(&pool.slots[worker]);
        slot.idle
            .retain_mut(|idle| idle.since.elapsed() < timeout && idle.conn.reusable());
        if slot.idle.is_empty() {
            slot.sweeping = false;
            return;
        }
    }
}

const MIN_SWEEP: Duration = Duration::from_millis(50);
const MAX_SWEEP: Duration = Duration::from_secs(5);

/// A connection lent to one response: polled while its body streams, given back to the pool
/// when the body has ended cleanly, closed when the response is dropped half-way.
pub struct Lease<B: SendBody> {
    conn: Option<Conn<B>>,
    pool: Arc<Pool<B>>,
    worker: usize,
}

impl<B: SendBody> Lease<B> {
    /// Drives the connection (it feeds the response body); false once it has finished.
    pub fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        self.conn.as_mut().is_some_and(|conn| conn.drive(cx))
    }

    /// The response body has been read to its end: the connection may serve another request.
    pub fn release(mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.put_back(self.worker, conn);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::proxy::body::UpstreamBody;

    /// A raw upstream that answers every request head with `answer`. It counts the
    /// connections it accepted and those that ended (the peer closed them), and closes a
    /// connection itself after `answers_per_conn` answers.
    struct RawUpstream {
        authority: Authority,
        accepted: Arc<AtomicUsize>,
        ended: Arc<AtomicUsize>,
    }

    async fn raw_upstream(answer: &'static [u8], answers_per_conn: usize) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority = listener.local_addr().unwrap().to_string().parse().unwrap();
        let (accepted, ended) = (Arc::<AtomicUsize>::default(), Arc::<AtomicUsize>::default());
        let (a, e) = (Arc::clone(&accepted), Arc::clone(&ended));
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                a.fetch_add(1, Ordering::SeqCst);
                let e = e.clone();
                tokio::spawn(async move {
                    let (mut seen, mut served, mut buf) = (Vec::new(), 0, [0u8; 4096]);
                    while served < answers_per_conn {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => {
                                e.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            seen.drain(..end + 4);
                            stream.write_all(answer).await.unwrap();
                            served += 1;
                        }
                    }
                });
            }
        });
        RawUpstream {
            authority,
            accepted,
            ended,
        }
    }

    const SIZED: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
    const CHUNKED: &[u8] =
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    const NO_BODY: &[u8] = b"HTTP/1.1 204 No Content\r\n\r\n";
    const BIG: &[u8] = {
        const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 200000\r\n\r\n";
        const LEN: usize = HEAD.len() + 200_000;
        const fn big() -> [u8; LEN] {
            let mut out = [b'x'; LEN];
            let mut i = 0;
            while i < HEAD.len() {
                out[i] = HEAD[i];
                i += 1;
            }
            out
        }
        &big()
    };

    fn pool(
        upstream: &RawUpstream,
        idle_timeout: Duration,
        max_idle: usize,
    ) -> Arc<Pool<Empty<Bytes>>> {
        let settings = PoolSettings {
            connect_timeout: Duration::from_secs(2),
            max_idle,
            idle_timeout,
        };
        Pool::new(upstream.authority.clone(), settings, 1)
    }

    fn get() -> Request<Empty<Bytes>> {
        Request::builder()
            .uri("/")
            .header("host", "upstream")
            .body(Empty::new())
            .unwrap()
    }

    /// Sends a GET and reads the whole answer the way the gateway does (through
    /// `UpstreamBody`, which drives and then releases the connection).
    async fn fetch(pool: &Arc<Pool<Empty<Bytes>>>) -> (u16, Bytes) {
        let (response, lease) = pool.send(get()).await.unwrap();
        let status = response.status().as_u16();
        let body = UpstreamBody::new(response.into_body(), lease, Duration::from_secs(5));
        (status, body.collect().await.unwrap().to_bytes())
    }

    async fn eventually(what: &str, check: impl Fn() -> bool) {
        for _ in 0..200 {
            if check() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{what}");
    }

    #[tokio::test]
    async fn a_connection_is_reused_after_each_complete_answer() {
        for (answer, status, body) in [
            (SIZED, 200, &b"hello"[..]),
            (CHUNKED, 200, b"hello"),
            (NO_BODY, 204, b""),
            (BIG, 200, &BIG[BIG.len() - 200_000..]),
        ] {
            let upstream = raw_upstream(answer, usize::MAX).await;
            let pool = pool(&upstream, Duration::from_secs(60), 8);
            for _ in 0..5 {
                assert_eq!(fetch(&pool).await, (status, Bytes::from_static(body)));
            }
            assert_eq!(upstream.accepted.load(Ordering::SeqCst), 1, "{status}");
            assert_eq!(pool.idle(0), 1);
        }
    }

    #[tokio::test]
    async fn an_answer_dropped_half_way_closes_its_connection() {
        let upstream = raw_upstream(BIG, usize::MAX).await;
        let pool = pool(&upstream, Duration::from_secs(60), 8);
        let (response, lease) = pool.send(get()).await.unwrap();
        let mut body = UpstreamBody::new(response.into_body(), lease, Duration::from_secs(5));
        body.frame().await.unwrap().unwrap();
        drop(body);
        assert_eq!(pool.idle(0), 0);
        eventually("the upstream saw the close", || {
            upstream.ended.load(Ordering::SeqCst) == 1
        })
        .await;
        assert_eq!(fetch(&pool).await.0, 200);
        assert_eq!(upstream.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_while_idle_is_not_used() {
        // Keep-alive answers, but the upstream hangs up after each one.
        let upstream = raw_upstream(SIZED, 1).await;
        let pool = pool(&upstream, Duration::from_secs(60), 8);
        for round in 1..=3 {
            assert_eq!(fetch(&pool).await.0, 200);
            eventually("the upstream closed", || {
                upstream.accepted.load(Ordering::SeqCst) == round
            })
            .await;
            // Let the FIN arrive before the next checkout.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(upstream.accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn idle_connections_are_closed_after_the_idle_timeout() {
        let upstream = raw_upstream(SIZED, usize::MAX).await;
        let pool = pool(&upstream, Duration::from_millis(200), 8);
        assert_eq!(fetch(&pool).await.0, 200);
        assert_eq!(pool.idle(0), 1);
        eventually("the idle connection was closed", || {
            upstream.ended.load(Ordering::SeqCst) == 1
        })
        .await;
        assert_eq!(pool.idle(0), 0);
        // The next request opens a new one, and the sweeper starts again.
        assert_eq!(fetch(&pool).await.0, 200);
        assert_eq!(upstream.accepted.load(Ordering::SeqCst), 2);
        eventually("the second idle connection was closed", || {
            upstream.ended.load(Ordering::SeqCst) == 2
        })
        .await;
    }

    #[tokio::test]
    async fn the_idle_list_keeps_at_most_max_idle_connections() {
        let upstream = raw_upstream(SIZED, usize::MAX).await;
        let pool = pool(&upstream, Duration::from_secs(60), 1);
        let (first, second) = (
            pool.send(get()).await.unwrap(),
            pool.send(get()).await.unwrap(),
        );
        assert_eq!(upstream.accepted.load(Ordering::SeqCst), 2);
        for (response, lease) in [first, second] {
            let body = UpstreamBody::new(response.into_body(), lease, Duration::from_secs(5));
            body.collect().await.unwrap();
        }
        assert_eq!(pool.idle(0), 1);
        eventually("the extra connection was closed", || {
            upstream.ended.load(Ordering::SeqCst) == 1
        })
        .await;
    }

    #[tokio::test]
    async fn an_unreachable_upstream_is_a_connect_error() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let authority: Authority = closed.local_addr().unwrap().to_string().parse().unwrap();
        drop(closed);
        let settings = PoolSettings {
            connect_timeout: Duration::from_secs(2),
            max_idle: 8,
            idle_timeout: Duration::from_secs(60),
        };
        let pool: Arc<Pool<Empty<Bytes>>> = Pool::new(authority, settings, 1);
        match pool.send(get()).await {
            Err(SendError::Connect { .. }) => {}
            other => panic!("{:?}", other.map(|(response, _)| response.status())),
        }
    }
}
