//! Upstream connections: a keep-alive pool per upstream and worker thread, each connection
//! driven by the request that uses it (see `exchange`).
//!
//! - A request checks a connection out of the calling worker's idle list, or opens one;
//!   only that worker's requests use a list, so its lock is never contended.
//! - An idle connection is polled by nobody. It is checked (one read attempt, which costs
//!   no system call while the reactor has seen nothing on it) when it is checked out, and
//!   by a sweeper task that runs only while the worker has idle connections, which closes
//!   the dead ones and those idle for longer than `pool_idle_timeout`. Bytes found on an
//!   idle connection (a late body after `HEAD`, an answer nobody asked for) would be read as
//!   the next request's answer: that connection is closed and counted (I11).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use http::uri::Authority;
use prometheus_client::metrics::counter::Counter;
use tokio::net::TcpStream;
use tokio::time::Sleep;

use super::h1::FrameError;
use super::tls::{Stream, UpstreamTls};

/// An error on the way, boxed (a client body's, a connection's).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Connection settings of an HTTP upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSettings {
    pub connect_timeout: Duration,
    pub max_idle: usize,
    pub idle_timeout: Duration,
    /// Active checks of this target (several-target upstreams only).
    pub health_check: Option<super::state::HealthCheck>,
}

/// Why a request got no (complete) answer from the upstream. The texts name the upstream
/// and an OS error at most, never a header or a token (I7).
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("cannot connect to {authority}: {reason}")]
    Connect {
        authority: Authority,
        reason: String,
    },
    /// The TLS handshake failed (a certificate that does not verify, a protocol error).
    #[error("TLS with {authority} failed: {reason}")]
    Tls {
        authority: Authority,
        reason: String,
    },
    /// The request body failed on the client's side (too large, stalled, cut).
    #[error("the request body failed")]
    Body(#[source] BoxError),
    #[error("connection to the upstream failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the upstream closed the connection before answering")]
    Closed,
    #[error("no answer from the upstream within its timeout")]
    Timeout,
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// Bytes read from the upstream at a time, at least.
const READ_SIZE: usize = 16 * 1024;
/// A read buffer left larger than this by a big answer is not kept in the idle list.
const MAX_IDLE_BUFFER: usize = 64 * 1024;
/// Idle this long, a connection gives its buffers and its timer back at the next sweep
/// (see [`Conn::shed`]): after a burst, the idle lists (up to `pool_max_idle` a worker)
/// would otherwise keep a 16 KiB read buffer each, 8 MiB a worker at the default 256.
const SHED_AFTER: Duration = Duration::from_secs(1);

/// One HTTP/1.1 connection to the upstream, with its buffers (kept across requests).
pub(super) struct Conn {
    pub(super) io: Stream,
    pub(super) read: BytesMut,
    /// The write buffer of the last exchange, for the next one.
    pub(super) spare: Vec<u8>,
    /// The response timeout of the current exchange. One per connection, moved to a
    /// later deadline by each request: in tokio that costs an atomic store, where a new
    /// timer per request is an insertion into the timer wheel and a removal.
    pub(super) timer: Option<Pin<Box<Sleep>>>,
    /// When the timer was last armed (the last request was sent): the connection's idle
    /// time is counted from there when it goes back to the pool, a little early, which
    /// only ever closes it sooner, and saves a clock read per request.
    armed_at: Option<Instant>,
}

impl Conn {
    fn new(io: Stream) -> Self {
        Conn {
            io,
            read: BytesMut::new(),
            spare: Vec::new(),
            timer: None,
            armed_at: None,
        }
    }

    /// Reads what the upstream sent into `read`; `Ok(0)`: it closed the connection.
    pub(super) fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        if self.read.capacity() - self.read.len() < READ_SIZE / 4 {
            self.read.reserve(READ_SIZE);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read)
    }

    /// Sets the timer to `timeout` from now.
    pub(super) fn arm(&mut self, timeout: Duration) {
        let now = tokio::time::Instant::now();
        self.armed_at = Some(now.into_std());
        let deadline = now + timeout;
        match &mut self.timer {
            Some(timer) => timer.as_mut().reset(deadline),
            None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
    }

    /// The timer has gone off (registers `cx` to be woken when it does).
    pub(super) fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.timer
            .as_mut()
            .is_some_and(|timer| timer.as_mut().poll(cx).is_ready())
    }

    /// An idle connection is usable: nothing unread, and the upstream has not closed it.
    /// Bytes the upstream sent while nobody asked (a late body after a `HEAD`, bytes past
    /// the end of an answer) would be read as the next request's answer: such a connection
    /// is never used again, and counted in `unsolicited`. The probe reads into a few bytes
    /// of stack, not the read buffer: a connection that shed its buffer keeps none.
    fn alive(&mut self, unsolicited: &Counter) -> bool {
        if !self.read.is_empty() {
            unsolicited.inc();
            return false;
        }
        let mut probe = [0u8; 8];
        let mut probe = tokio::io::ReadBuf::new(&mut probe);
        let mut cx = Context::from_waker(Waker::noop());
        match tokio::io::AsyncRead::poll_read(Pin::new(&mut self.io), &mut cx, &mut probe) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) if probe.filled().is_empty() => false,
            Poll::Ready(Ok(())) => {
                unsolicited.inc();
                false
            }
        }
    }

    /// Gives back what an idle connection does not need to stay open: its read buffer
    /// (empty, or it would not be idle), its write buffer and its response timer. The next
    /// request on it allocates them again.
    fn shed(&mut self) {
        self.read = BytesMut::new();
        self.spare = Vec::new();
        self.timer = None;
    }
}

struct Idle {
    conn: Conn,
    since: Instant,
}

#[derive(Default)]
pub(super) struct Slot {
    /// Most recently used last: checkout takes the warmest connection.
    idle: Vec<Idle>,
    sweeping: bool,
}

/// The connections of one upstream: one idle list per worker thread. Only that worker's
/// requests use a list, so its lock is never contended.
pub struct Pool {
    authority: Authority,
    /// The address connected to, when the target's name was resolved for balancing (see
    /// `resolve`); `None`: the authority's host is connected to (resolved per connection).
    addr: Option<std::net::SocketAddr>,
    settings: PoolSettings,
    /// For an `https://` upstream.
    tls: Option<UpstreamTls>,
    pub(super) slots: Box<[Mutex<Slot>]>,
    /// Idle connections dropped for bytes nobody asked for
    /// (`upstream_errors_total{kind="unsolicited_bytes"}`).
    pub(super) unsolicited: Counter,
    /// Health and counts of this target (see `targets`); kept across reloads with the pool.
    pub state: super::state::TargetState,
}

impl Pool {
    pub fn new(
        authority: Authority,
        settings: PoolSettings,
        tls: Option<UpstreamTls>,
        workers: usize,
        unsolicited: Counter,
    ) -> Arc<Self> {
        Arc::new(Pool {
            authority,
            addr: None,
            settings,
            tls,
            slots: (0..workers).map(|_| Mutex::default()).collect(),
            unsolicited,
            state: Default::default(),
        })
    }

    /// A pool for one resolved address of this pool's target: the same name (for `Host`,
    /// SNI and logs), settings and TLS client (so sessions resume across addresses).
    pub fn at(&self, addr: std::net::SocketAddr) -> Arc<Self> {
        Arc::new(Pool {
            authority: self.authority.clone(),
            addr: Some(addr),
            settings: self.settings.clone(),
            tls: self.tls.clone(),
            slots: (0..self.slots.len()).map(|_| Mutex::default()).collect(),
            unsolicited: self.unsolicited.clone(),
            state: Default::default(),
        })
    }

    /// The resolved address this pool connects to (see [`Pool::at`]).
    pub fn addr(&self) -> Option<std::net::SocketAddr> {
        self.addr
    }

    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    pub fn settings(&self) -> &PoolSettings {
        &self.settings
    }

    pub fn tls(&self) -> Option<&UpstreamTls> {
        self.tls.as_ref()
    }

    /// A reload may keep this pool for `other`'s upstream: same target, settings and TLS,
    /// and the same resolved address.
    pub fn same_as(&self, other: &Pool) -> bool {
        self.same_target(other) && self.addr == other.addr
    }

    /// The same configured target (name, settings, TLS), whichever address it resolved to.
    pub fn same_target(&self, other: &Pool) -> bool {
        self.authority == other.authority
            && self.settings == other.settings
            && self.tls.as_ref().map(UpstreamTls::fingerprint)
                == other.tls.as_ref().map(UpstreamTls::fingerprint)
    }

    /// Opens a connection within `connect_timeout`, and before `deadline` when one is
    /// given (the attempts of one request on several targets share one). Boxed: most
    /// requests find one in the pool, and the future of a connect would otherwise enlarge
    /// every request's.
    pub(super) fn open(self: &Arc<Self>, deadline: Option<tokio::time::Instant>) -> Connecting {
        let pool = self.clone();
        Box::pin(async move { pool.connect(deadline).await })
    }

    pub(super) fn checkout(&self, worker: usize) -> Option<Conn> {
        loop {
            let idle = lock(&self.slots[worker]).idle.pop()?;
            let mut conn = idle.conn;
            if idle.since.elapsed() < self.settings.idle_timeout && conn.alive(&self.unsolicited) {
                return Some(conn);
            }
        }
    }

    async fn connect(&self, deadline: Option<tokio::time::Instant>) -> Result<Conn, SendError> {
        let failed = |reason: String| SendError::Connect {
            authority: self.authority.clone(),
            reason: match self.addr {
                Some(addr) => format!("(at {addr}) {reason}"),
                None => reason,
            },
        };
        let host = self.authority.host();
        // An IPv6 literal comes bracketed in an authority, not in a socket address.
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let default_port = if self.tls.is_some() { 443 } else { 80 };
        let port = self.authority.port_u16().unwrap_or(default_port);
        // One deadline for the TCP connect and the TLS handshake.
        let own = tokio::time::Instant::now() + self.settings.connect_timeout;
        let deadline = deadline.map_or(own, |d| d.min(own));
        let connecting = async {
            match self.addr {
                Some(addr) => TcpStream::connect(addr).await,
                None => TcpStream::connect((host, port)).await,
            }
        };
        let stream = tokio::time::timeout_at(deadline, connecting)
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
        let Some(tls) = &self.tls else {
            return Ok(Conn::new(Stream::Plain(stream)));
        };
        let tls_failed = |reason: String| SendError::Tls {
            authority: self.authority.clone(),
            reason,
        };
        let stream = tokio::time::timeout_at(deadline, tls.handshake(stream))
            .await
            .map_err(|_| {
                tls_failed(format!(
                    "no TLS handshake within {:?} (connect_timeout)",
                    self.settings.connect_timeout
                ))
            })?
            .map_err(|e| {
                if super::tls::is_tls_error(&e) {
                    tls_failed(crate::telemetry::error_chain(&e))
                } else {
                    failed(format!("during the TLS handshake: {e}"))
                }
            })?;
        Ok(Conn::new(stream))
    }

    /// Keeps `conn` for the next request of `worker`, if there is room.
    pub(super) fn put_back(self: &Arc<Self>, worker: usize, mut conn: Conn) {
        if conn.read.capacity() > MAX_IDLE_BUFFER {
            conn.read = BytesMut::new();
        }
        let start_sweeper = {
            let mut slot = lock(&self.slots[worker]);
            if slot.idle.len() >= self.settings.max_idle {
                return;
            }
            let since = conn.armed_at.unwrap_or_else(Instant::now);
            slot.idle.push(Idle { conn, since });
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
    pub(super) fn idle(&self, worker: usize) -> usize {
        lock(&self.slots[worker]).idle.len()
    }

    /// The bytes the idle connections of `worker` hold in buffers (capacity), and how many
    /// hold a timer.
    #[cfg(test)]
    pub(super) fn idle_holdings(&self, worker: usize) -> (usize, usize) {
        let slot = lock(&self.slots[worker]);
        let bytes = slot
            .idle
            .iter()
            .map(|i| i.conn.read.capacity() + i.conn.spare.capacity())
            .sum();
        let timers = slot.idle.iter().filter(|i| i.conn.timer.is_some()).count();
        (bytes, timers)
    }
}

fn lock(slot: &Mutex<Slot>) -> std::sync::MutexGuard<'_, Slot> {
    // The lists hold no invariant a panic could break half-way.
    slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Closes the idle connections of one worker that timed out or that the upstream closed;
/// ends when the list is empty (the next `put_back` starts another) or the pool is gone.
async fn sweep(pool: Weak<Pool>, worker: usize) {
    let period = match pool.upgrade() {
        Some(pool) => (pool.settings.idle_timeout / 2).clamp(MIN_SWEEP, MAX_SWEEP),
        None => return,
    };
    loop {
        tokio::time::sleep(period).await;
        let Some(pool) = pool.upgrade() else { return };
        let timeout = pool.settings.idle_timeout;
        let mut slot = lock(&pool.slots[worker]);
        let unsolicited = &pool.unsolicited;
        slot.idle.retain_mut(|idle| {
            let quiet = idle.since.elapsed();
            let keep = quiet < timeout && idle.conn.alive(unsolicited);
            if keep && quiet >= SHED_AFTER {
                idle.conn.shed();
            }
            keep
        });
        if slot.idle.is_empty() {
            slot.sweeping = false;
            return;
        }
    }
}

const MIN_SWEEP: Duration = Duration::from_millis(50);
const MAX_SWEEP: Duration = Duration::from_secs(5);

pub(super) type Connecting = Pin<Box<dyn Future<Output = Result<Conn, SendError>> + Send>>;
