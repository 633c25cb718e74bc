//! One client connection after accept (and TLS): HTTP/2 or HTTP/1.1, and idle HTTP/1
//! connections parked without their buffers.
//!
//! hyper's HTTP/1 server keeps an 8 KiB read buffer, an 8 KiB write buffer and its
//! dispatcher state for the whole life of a connection, idle or not: with 10,000 idle
//! keep-alive clients that is most of the process's memory. Here a connection that has been
//! quiet for [`PARK_AFTER`] is taken back from hyper at a request boundary
//! ([`hyper::server::conn::http1::Connection::into_parts`]) and waits for its next byte
//! holding only the socket; the next request gets a fresh hyper connection. A connection
//! is parked only when that is provably lossless:
//! - no request is being served and no response body is still being written (counted from
//!   the service call to the drop of the response body);
//! - the last request had no body (a body hyper might still be draining must never be read
//!   as the next request head; hyper 1.x closes a connection whose request body was left
//!   unread, and this check keeps parking safe if it ever drains instead);
//! - hyper's last read found the socket empty, and everything it wrote has been flushed
//!   (hyper flushes the socket only once its own write buffer is empty);
//! - nothing moved for a whole [`PARK_AFTER`];
//! - no byte of a next request head has been read (a slow sender keeps hyper and its
//!   header timeout; a partial pipelined head found at park time resumes at once, and that
//!   connection is never parked again, so no sender can restart its header timeout by
//!   pausing).
//!
//! The header read timeout is the connection's own ([`HeaderWait`]), not hyper's: hyper
//! makes a new timer for every request head it waits for, and a timer per request was
//! about 5% of a proxied request's instructions. One timer per connection, moved on only
//! when it fires, runs both the header timeout and the park check. It is armed, with the
//! connection's waiter on the drain signal, the first time the connection waits with no
//! request in flight: a connection whose request is there when it is accepted and that
//! closes after the answer (`Connection: close`) never needs either.
//!
//! A parked connection keeps the keep-alive bound: it is closed `header_read_timeout` minus
//! [`PARK_AFTER`] after it parked, that is between `header_read_timeout` and one
//! [`PARK_AFTER`] more after its last request, and at once on shutdown.
//! Protocol detection is the connection's first read, bounded by `header_read_timeout` (a
//! client that connects and never sends is cut): up to [`FIRST_READ`] bytes, which usually
//! hold the whole first request head, handed to hyper as they are. Reading only the 24
//! bytes of the HTTP/2 preface cost every new connection a second `recv` for the rest of
//! the head, and hyper a reallocation of its read buffer (8 KiB copied) to fit it.

use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use hyper::Request;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;

use crate::proxy::ConnInfo;
use crate::snapshot::ServerSettings;
use crate::snapshot::SharedSnapshot;
use crate::upstream::ResponseBody;

/// Quiet time after which an idle HTTP/1 connection is parked (between one and two of
/// these after its last byte). Long enough that a busy keep-alive client never pays for a
/// new hyper connection; short enough that a burst's memory comes back within seconds.
pub const PARK_AFTER: Duration = Duration::from_secs(1);

const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The most a connection's first read takes: hyper's own first read buffer is this size, so
/// what it gets from the first read fits without growing it.
const FIRST_READ: usize = 8 * 1024;

/// The per-worker HTTP builders, configured from `[server]`.
pub struct Builders {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    header_read_timeout: Duration,
    /// How often an HTTP/1 connection's check timer fires (see `serve_http1`).
    check_period: Duration,
    /// Checks per park check: the park check runs every [`PARK_AFTER`].
    park_every: u32,
    /// `client_write_timeout`, and the counter of connections it closed.
    write_timeout: Duration,
    write_timeouts: Counter,
    /// How long an upgraded connection lives on once the server stops.
    shutdown_grace: Duration,
}

/// hyper's own limits are hard caps set above the configured ones, which `proxy` checks and
/// answers with JSON (hyper answers a bare 431/414 past its caps).
///
/// HTTP/1: the header read timeout runs whenever the connection waits for a request head,
/// so it bounds idle keep-alive time as well as slow senders (see [`HeaderWait`]). HTTP/2: bounded concurrent
/// streams, bounded pending/errored resets (the rapid-reset guard), keep-alive pings that
/// drop dead peers.
impl Builders {
    pub fn new(settings: &ServerSettings, write_timeouts: Counter) -> Self {
        let hard_header_bytes = (settings.max_header_bytes + settings.max_uri_bytes) * 2;
        let mut http1 = http1::Builder::new();
        // No timer for hyper: the header read timeout is the connection's own check
        // (`serve_http1`), which costs no timer per request.
        http1
            .header_read_timeout(None)
            .max_headers(settings.max_headers * 2)
            .max_buf_size(hard_header_bytes.max(64 * 1024));
        // One timer per HTTP/1 connection, moved on only when it fires, runs the header
        // timeout and the park check. It fires every PARK_AFTER, or a fraction of it for a
        // header timeout under 4 s (checked at least four times).
        let park_every = PARK_AFTER
            .as_nanos()
            .div_ceil((settings.header_read_timeout / 4).max(MIN_CHECK).as_nanos())
            .clamp(1, PARK_AFTER.as_nanos() / MIN_CHECK.as_nanos()) as u32;
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(settings.http2_max_concurrent_streams)
            .max_pending_accept_reset_streams(20)
            .max_local_error_reset_streams(1024)
            .max_header_list_size(u32::try_from(hard_header_bytes).unwrap_or(u32::MAX))
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10));
        Builders {
            http1,
            http2,
            header_read_timeout: settings.header_read_timeout,
            check_period: PARK_AFTER / park_every,
            park_every,
            write_timeout: settings.client_write_timeout,
            write_timeouts,
            shutdown_grace: settings.shutdown_grace,
        }
    }

    fn write_stall(&self) -> WriteStall {
        WriteStall::new(self.write_timeout, self.write_timeouts.clone())
    }
}

/// A client socket the parked state can wait on without reading from it.
pub trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Whether the end of a connection writes something of its own before the socket is
    /// closed (TLS: its `close_notify`). Plain TCP is closed without a `shutdown` first:
    /// `close` sends the FIN after what is queued, as `shutdown` would (nginx closes the
    /// same way), and the connection is dropped whole instead of taken apart.
    const SHUTS_DOWN: bool;

    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl ClientIo for TcpStream {
    const SHUTS_DOWN: bool = false;

    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        TcpStream::poll_read_ready(self, cx)
    }
}

/// hyper's last read returned pending, so rustls held no unread plaintext: new input
/// arrives as new bytes on the socket.
impl ClientIo for Box<TlsStream<TcpStream>> {
    const SHUTS_DOWN: bool = true;

    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_ref().0.poll_read_ready(cx)
    }
}

/// The shutdown signal every connection watches; [`Drain`] is its sending side.
pub type Stop = watch::Receiver<bool>;

/// Tells connections to finish and counts the ones still open.
pub struct Drain(watch::Sender<bool>);

impl Default for Drain {
    fn default() -> Self {
        Drain(watch::channel(false).0)
    }
}

impl Drain {
    pub fn watcher(&self) -> Stop {
        self.0.subscribe()
    }

    pub fn open(&self) -> usize {
        self.0.receiver_count()
    }

    /// Signals every connection and waits until all have ended.
    pub async fn drain(self) {
        self.0.send_replace(true);
        self.0.closed().await;
    }
}

/// Serves one connection until it ends.
pub async fn serve<I: ClientIo>(
    mut io: I,
    conn: ConnInfo,
    shared: SharedSnapshot,
    builders: Arc<Builders>,
    stop: Stop,
    parked: Gauge,
) -> Result<(), hyper::Error> {
    // `stop` itself lives as long as the connection: the drain counts receivers (the one
    // inside `stopped` is gone as soon as the signal came).
    let mut stop_signal = Box::pin(stopped(stop.clone()));
    let sniffed = tokio::select! {
        // The first bytes first: they are nearly always there (`server.defer_accept`), and
        // then the stop signal is not polled, which would register a waiter.
        biased;
        sniffed = tokio::time::timeout(builders.header_read_timeout, sniff(&mut io)) => sniffed,
        () = &mut stop_signal => return Ok(()),
    };
    let Ok(Ok((prefix, h2))) = sniffed else {
        // Closed, failed or silent before a request: nothing to answer.
        return Ok(());
    };
    let activity = Arc::new(Activity::default());
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |request: Request<Incoming>| {
            let guard = activity.begin(request.body().is_end_stream());
            // Boxed: hyper moves the service future into place for every request, and the
            // handler's is kilobytes; moving a pointer is cheaper than copying it.
            Served {
                response: Box::pin(crate::proxy::handle(request, conn.clone(), shared.clone())),
                guard: Some(guard),
            }
        })
    };
    let io = ConnIo::new(io, prefix, activity.clone(), builders.write_stall());
    if h2 {
        // Boxed here and below: the task's future stays small (what a parked connection
        // keeps), the hyper state lives only while it serves.
        let mut connection = Box::pin(builders.http2.serve_connection(TokioIo::new(io), service));
        let mut stopping = false;
        return poll_fn(|cx| {
            if !stopping && stop_signal.as_mut().poll(cx).is_ready() {
                stopping = true;
                connection.as_mut().graceful_shutdown();
            }
            connection.as_mut().poll(cx)
        })
        .await;
    }
    let signals = Signals {
        stop: stop_signal,
        watch: &stop,
    };
    // Boxed: awaited inline, it would sit beside this function's own state (its arguments,
    // the sniffing) for the connection's whole life, parked or not.
    let served = Box::pin(serve_http1(
        io, service, &builders, signals, activity, parked,
    ))
    .await;
    drop(stop);
    served
}

/// HTTP/1: hyper serves while requests come; an idle connection parks (module docs).
/// The drain signal of one connection: `stop` resolves when the drain starts; `watch` tells
/// cheaply whether it may have (an atomic load), so the connection's task polls `stop` (a
/// lock and a waiter registration) only then, and once to register.
struct Signals<'a, F> {
    stop: Pin<Box<F>>,
    watch: &'a Stop,
}

impl<F: Future<Output = ()>> Signals<'_, F> {
    fn may_have_stopped(&self) -> bool {
        // A dropped sender (the server is gone) stops too.
        self.watch.has_changed().unwrap_or(true)
    }
}

async fn serve_http1<I, S>(
    mut io: ConnIo<I>,
    mut service: S,
    builders: &Builders,
    mut signals: Signals<'_, impl Future<Output = ()>>,
    activity: Arc<Activity>,
    parked: Gauge,
) -> Result<(), hyper::Error>
where
    I: ClientIo,
    S: hyper::service::HttpService<Incoming, ResBody = Tracked<ResponseBody>> + Unpin,
    S::Future: Unpin,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // The header timeout already closes a connection that stays idle for less than two
    // park checks; parking it first would only cost a new hyper connection.
    let mut may_park = builders.header_read_timeout > 2 * PARK_AFTER;
    let period = builders.check_period;
    // One wait for the life of the connection: a park and its wake-up do not start it
    // again, only a request does. A TLS client trickling the bytes of an incomplete record
    // wakes a parked connection but gives hyper nothing to read, so it parks again: were
    // the wait started anew at each wake-up, it would hold the connection forever.
    let mut wait = HeaderWait::new(&activity, period, builders.header_read_timeout);
    loop {
        let mut connection = Box::new(builders.http1.serve_connection(TokioIo::new(io), service));
        let mut check: Option<Pin<Box<tokio::time::Sleep>>> = None;
        let mut checks = 0u32;
        let mut seen = activity.ticks.load(Ordering::Relaxed);
        let mut stopping = false;
        let outcome = poll_fn(|cx| {
            // Checked by an atomic load on every wake-up; polled (a lock and a waiter) only
            // when it may have fired, or to register below.
            if !stopping && signals.may_have_stopped() && signals.stop.as_mut().poll(cx).is_ready()
            {
                stopping = true;
                Pin::new(&mut *connection).graceful_shutdown();
            }
            // Without hyper's shutdown of the socket: a connection that ends with a 101 is
            // taken back and spliced (`upstream::upgrade`); any other end is shut below.
            if let Poll::Ready(result) = connection.poll_without_shutdown(cx) {
                return Poll::Ready(Some(result));
            }
            // Armed the first time the connection waits with no request in flight. Until
            // then nothing needs a wake-up of its own: a request in flight ends by waking
            // this task (its response is written in that poll), the drain is seen by the
            // load above before the response head goes out, and neither the header
            // timeout nor the park check counts while a request is in flight. A new
            // connection whose request is there at once (`defer_accept`) and that closes
            // after its answer never arms: no timer, no waiter (about 1.5k instructions).
            // Once armed, the stop signal and the timer keep this task's waker (the task,
            // hence its waker, never changes): they are polled again only when they may
            // be ready, not on each of the three or four wake-ups of a request.
            let check = match &mut check {
                Some(check) if !check.is_elapsed() => return Poll::Pending,
                Some(check) => check,
                None if activity.in_flight.load(Ordering::Relaxed) > 0 => {
                    return Poll::Pending;
                }
                None => {
                    if !stopping && signals.stop.as_mut().poll(cx).is_ready() {
                        stopping = true;
                        Pin::new(&mut *connection).graceful_shutdown();
                        // Polled again (hyper may close at once now it is idle) or, should it
                        // not, woken as soon as it can.
                        cx.waker().wake_by_ref();
                    }
                    check.insert(Box::pin(tokio::time::sleep(period)))
                }
            };
            // A fired timer has given its waker away: after a reset it is polled again.
            while check.as_mut().poll(cx).is_ready() {
                if wait.timed_out(&activity) {
                    // Closed without an answer, as an idle keep-alive connection is.
                    return Poll::Ready(Some(Ok(())));
                }
                checks = checks.wrapping_add(1);
                if may_park && !stopping && checks.is_multiple_of(builders.park_every) {
                    let now = activity.ticks.load(Ordering::Relaxed);
                    if now == seen && activity.idle() {
                        return Poll::Ready(None);
                    }
                    seen = now;
                }
                check.as_mut().reset(Instant::now() + period);
            }
            Poll::Pending
        })
        .await;
        if let Some(result) = outcome {
            result?;
            let upgraded = activity
                .upgrade
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .take()
                .and_then(|handoff| handoff.take());
            if upgraded.is_none() && !I::SHUTS_DOWN {
                // Dropped whole: the socket is closed, nothing taken apart.
                return Ok(());
            }
            let hyper::server::conn::http1::Parts { io, read_buf, .. } = (*connection).into_parts();
            let io = io.into_inner();
            let ConnIo {
                inner: mut client,
                prefix,
                ..
            } = io;
            let Some(upgraded) = upgraded else {
                // What hyper would have done at the end, bounded: a client that reads
                // nothing cannot hold the task with a TLS close_notify. Tried once first:
                // it almost always completes at once, and a timer costs a new connection
                // hundreds of instructions.
                let mut shutdown = std::pin::pin!(client.shutdown());
                let first =
                    std::future::poll_fn(|cx| Poll::Ready(shutdown.as_mut().poll(cx))).await;
                if first.is_pending() {
                    let _ = tokio::time::timeout(builders.write_timeout, shutdown).await;
                }
                return Ok(());
            };
            // Bytes the client sent after its handshake (its first frames), in order.
            let client_read = if prefix.is_empty() {
                read_buf
            } else {
                let mut both = BytesMut::from(&prefix[..]);
                both.extend_from_slice(&read_buf);
                both.freeze()
            };
            // On shutdown it lives on for shutdown_grace, as a request in flight would.
            let grace = builders.shutdown_grace;
            let ending = async {
                if !stopping {
                    signals.stop.as_mut().await;
                }
                tokio::time::sleep(grace).await;
            };
            // Boxed: few connections upgrade, and inline the splice's state would enlarge
            // every connection's future (2.5 KiB of its 4 KiB).
            let end = Box::pin(crate::upstream::upgrade::splice(
                client,
                client_read,
                upgraded,
                ending,
            ))
            .await;
            tracing::debug!(end = end.as_str(), "upgraded connection ended");
            return Ok(());
        }
        drop(check);
        // In a block of its own: the emptied box is freed here, not after the park.
        let hyper::server::conn::http1::Parts {
            io: parked_io,
            read_buf,
            service: parked_service,
            ..
        } = {
            let connection = connection;
            (*connection).into_parts()
        };
        service = parked_service;
        io = parked_io.into_inner();
        debug_assert!(io.prefix.is_empty(), "a pending read consumed the prefix");
        if !read_buf.is_empty() {
            // A partial pipelined head that came with the last request (a partial head read
            // later is `unparsed` and never parks): resume at once and never park again, so
            // the header timeout can start again once at most.
            io = ConnIo::new(io.inner, read_buf, activity.clone(), builders.write_stall());
            may_park = false;
            continue;
        }
        // An empty `Bytes` that still holds hyper's whole read buffer: the point of parking.
        drop(read_buf);
        io.prefix = Bytes::new();
        parked.inc();
        let parked_at = Instant::now();
        let woken = park(&io.inner, wait.remaining(), &mut signals.stop).await;
        wait.add(parked_at.elapsed());
        parked.dec();
        if !woken {
            if I::SHUTS_DOWN {
                let _ = io.inner.shutdown().await;
            }
            return Ok(());
        }
    }
}

/// Waits for the next byte of a parked connection: true when there is one to serve.
/// `remaining`: what is left of the connection's header wait.
async fn park<I: ClientIo>(
    io: &I,
    remaining: Duration,
    stop: &mut Pin<Box<impl Future<Output = ()>>>,
) -> bool {
    tokio::select! {
        ready = poll_fn(|cx| io.poll_read_ready(cx)) => ready.is_ok(),
        () = tokio::time::sleep(remaining) => false,
        () = stop.as_mut() => false,
    }
}

async fn stopped(mut stop: Stop) {
    // A dropped sender (the server is gone) stops too.
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Reads until the bytes are, or cannot be, the HTTP/2 preface: every byte read (the first
/// read takes up to [`FIRST_READ`], so usually the whole first head), and whether they
/// start with the preface.
async fn sniff<I: AsyncRead + Unpin>(io: &mut I) -> io::Result<(Bytes, bool)> {
    let mut buf = BytesMut::with_capacity(FIRST_READ);
    loop {
        if io.read_buf(&mut buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let compared = buf.len().min(H2_PREFACE.len());
        if buf[..compared] != H2_PREFACE[..compared] {
            return Ok((buf.freeze(), false));
        }
        if compared == H2_PREFACE.len() {
            return Ok((buf.freeze(), true));
        }
    }
}

/// What the park check needs to know about a connection. One task touches it (hyper polls
/// the service, the body and the socket from the connection's task), so relaxed atomics
/// are only there to make it `Sync`.
struct Activity {
    /// Bumped by every read or write that moved bytes and every request: the park check
    /// compares two readings a [`PARK_AFTER`] apart.
    ticks: AtomicU64,
    /// Requests begun on this connection (the header timeout's count starts again on one).
    requests: AtomicU64,
    /// Requests whose response body has not been dropped yet.
    in_flight: AtomicU32,
    /// The last request came with a body, which hyper may still be reading or draining.
    body_pending: AtomicBool,
    /// Bytes read since the last request began: the start of a next request head (the last
    /// request had no body), which the header timeout is already timing.
    unparsed: AtomicU64,
    /// hyper's last read found nothing to read.
    read_waiting: AtomicBool,
    /// The last write-side call was a completed flush (hyper flushes the socket only once
    /// its write buffer is empty).
    flushed: AtomicBool,
    /// The app side of a WebSocket this connection is becoming (after hyper wrote the 101).
    upgrade: std::sync::Mutex<Option<crate::upstream::upgrade::Handoff>>,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            ticks: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
            body_pending: AtomicBool::new(false),
            unparsed: AtomicU64::new(0),
            read_waiting: AtomicBool::new(false),
            flushed: AtomicBool::new(true),
            upgrade: std::sync::Mutex::new(None),
        }
    }
}

impl Activity {
    /// A request begins; it is in flight until the returned guard (held by its response
    /// body) is dropped.
    fn begin(self: &Arc<Self>, bodiless: bool) -> InFlight {
        self.ticks.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.body_pending.store(!bodiless, Ordering::Relaxed);
        self.unparsed.store(0, Ordering::Relaxed);
        InFlight(self.clone())
    }

    fn idle(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0
            && !self.body_pending.load(Ordering::Relaxed)
            && self.unparsed.load(Ordering::Relaxed) == 0
            && self.read_waiting.load(Ordering::Relaxed)
            && self.flushed.load(Ordering::Relaxed)
    }
}

/// Shortest interval between two checks of a connection (a header timeout of a few
/// milliseconds is checked this often).
const MIN_CHECK: Duration = Duration::from_millis(10);

/// The header read timeout of an HTTP/1 connection, counted in checks instead of a timer
/// per request (hyper's own starts one for every request head it waits for).
///
/// The connection waits for a head when no request is in flight (from the service call
/// until its response body is dropped). A check adds its period to the wait when no
/// request was in flight at this check or the one before, and no request began in between;
/// anything else starts the count again. So the connection is closed between
/// `header_read_timeout` and two periods more after its last response went out (one, after
/// it connected), however slowly a partial head trickles in. The period is at most a
/// quarter of the timeout and at most [`PARK_AFTER`].
struct HeaderWait {
    period: Duration,
    timeout: Duration,
    requests: u64,
    busy: bool,
    waited: Duration,
}

impl HeaderWait {
    fn new(activity: &Activity, period: Duration, timeout: Duration) -> Self {
        HeaderWait {
            period,
            timeout,
            requests: activity.requests.load(Ordering::Relaxed),
            busy: false,
            waited: Duration::ZERO,
        }
    }

    fn timed_out(&mut self, activity: &Activity) -> bool {
        let requests = activity.requests.load(Ordering::Relaxed);
        let busy = activity.in_flight.load(Ordering::Relaxed) > 0;
        if busy || self.busy || requests != self.requests {
            self.waited = Duration::ZERO;
        } else {
            self.waited += self.period;
        }
        self.requests = requests;
        self.busy = busy;
        self.waited >= self.timeout
    }

    /// What is left of the wait.
    fn remaining(&self) -> Duration {
        self.timeout.saturating_sub(self.waited)
    }

    /// Time spent parked counts as waiting (no request can have begun meanwhile).
    fn add(&mut self, waited: Duration) {
        self.waited += waited;
    }
}

/// `client_write_timeout`: the longest a write to the client may make no progress. A
/// client that stops reading a large answer would otherwise hold its connection, a
/// connection slot and an upstream connection for as long as it likes. Armed when a write
/// finds the socket full, disarmed by any write that moves bytes; when it fires the write
/// fails, hyper closes the connection, and the response body (with its upstream
/// connection) is dropped.
struct WriteStall {
    timeout: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    armed: bool,
    timeouts: Counter,
}

impl WriteStall {
    fn new(timeout: Duration, timeouts: Counter) -> Self {
        WriteStall {
            timeout,
            timer: None,
            armed: false,
            timeouts,
        }
    }

    fn check<T>(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if result.is_ready() {
            self.armed = false;
            return result;
        }
        if !self.armed {
            self.armed = true;
            let deadline = Instant::now() + self.timeout;
            match &mut self.timer {
                Some(timer) => timer.as_mut().reset(deadline),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        let fired = self
            .timer
            .as_mut()
            .is_some_and(|timer| timer.as_mut().poll(cx).is_ready());
        if fired {
            self.timeouts.inc();
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client read nothing for client_write_timeout",
            )));
        }
        Poll::Pending
    }
}

/// Counts a request as in flight until its response body is dropped (written out, or
/// abandoned with the connection).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that holds its request's [`InFlight`].
/// The service's future: the handler's answer, its body tracked, and an upgraded
/// connection's app side kept for the connection (see `upstream::upgrade`). A named
/// future, `Unpin`, so that the HTTP/1 connection can be polled without its shutdown.
struct Served<F> {
    response: Pin<Box<F>>,
    guard: Option<InFlight>,
}

impl<F> Future for Served<F>
where
    F: Future<Output = Result<hyper::Response<ResponseBody>, std::convert::Infallible>>,
{
    type Output = Result<hyper::Response<Tracked<ResponseBody>>, std::convert::Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Ok(mut response) = std::task::ready!(self.response.as_mut().poll(cx));
        let guard = self.guard.take().expect("Served polled after it completed");
        if response.status() == hyper::StatusCode::SWITCHING_PROTOCOLS
            && let Some(handoff) = response
                .extensions_mut()
                .remove::<crate::upstream::upgrade::Handoff>()
        {
            *guard
                .0
                .upgrade
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(handoff);
        }
        Poll::Ready(Ok(response.map(|body| Tracked { body, guard })))
    }
}

pub struct Tracked<B> {
    body: B,
    #[allow(dead_code, reason = "held for its Drop")]
    guard: InFlight,
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The client socket as hyper sees it: bytes read ahead (protocol detection, or a partial
/// head from before a park) first, and every call noted in [`Activity`].
struct ConnIo<I> {
    inner: I,
    prefix: Bytes,
    activity: Arc<Activity>,
    stall: WriteStall,
}

impl<I> ConnIo<I> {
    fn new(inner: I, prefix: Bytes, activity: Arc<Activity>, stall: WriteStall) -> Self {
        activity
            .unparsed
            .fetch_add(prefix.len() as u64, Ordering::Relaxed);
        ConnIo {
            inner,
            prefix,
            activity,
            stall,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for ConnIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.prefix.is_empty() {
            // Counted as unparsed when the prefix was set.
            // Once the last piece is split off, the prefix holds nothing of the first
            // read's buffer (`split_to` of the whole leaves an empty `Bytes`).
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            this.activity.read_waiting.store(false, Ordering::Relaxed);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        let waiting = result.is_pending();
        this.activity.read_waiting.store(waiting, Ordering::Relaxed);
        if !waiting {
            let n = (buf.filled().len() - before) as u64;
            this.activity.ticks.fetch_add(1, Ordering::Relaxed);
            this.activity.unparsed.fetch_add(n, Ordering::Relaxed);
        }
        result
    }
}

impl<I: AsyncWrite + Unpin> ConnIo<I> {
    fn wrote(&self, result: &Poll<io::Result<usize>>) {
        self.activity.flushed.store(false, Ordering::Relaxed);
        if result.is_ready() {
            self.activity.ticks.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for ConnIo<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(&result);
        self.stall.check(cx, result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(&result);
        self.stall.check(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        if matches!(result, Poll::Ready(Ok(()))) {
            self.activity.flushed.store(true, Ordering::Relaxed);
        }
        self.stall.check(cx, result)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sniff_tells_the_h2_preface_from_http1() {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let (bytes, h2) = sniff(&mut server).await.unwrap();
        assert!(!h2);
        // The first read takes what is there, not just the preface's length.
        assert_eq!(&bytes[..], b"GET / HTTP/1.1\r\n");

        let (mut client, mut server) = tokio::io::duplex(64);
        // The preface in two pieces, split inside the matching part.
        client.write_all(&H2_PREFACE[..5]).await.unwrap();
        let task = tokio::spawn(async move { sniff(&mut server).await });
        tokio::task::yield_now().await;
        client.write_all(&H2_PREFACE[5..]).await.unwrap();
        let (bytes, h2) = task.await.unwrap().unwrap();
        assert!(h2);
        assert_eq!(&bytes[..], H2_PREFACE);

        // The preface and the client's first frame in one read: every byte is kept.
        let (mut client, mut server) = tokio::io::duplex(64);
        let settings = [0u8, 0, 0, 4, 0, 0, 0, 0, 0];
        client
            .write_all(&[&H2_PREFACE[..], &settings].concat())
            .await
            .unwrap();
        let (bytes, h2) = sniff(&mut server).await.unwrap();
        assert!(h2);
        assert_eq!(&bytes[..], [&H2_PREFACE[..], &settings].concat());

        // "PRI" that turns out not to be the preface is HTTP/1 with every byte kept.
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"PRI * HTTP/1.1\r\n").await.unwrap();
        let (bytes, h2) = sniff(&mut server).await.unwrap();
        assert!(!h2);
        assert_eq!(&bytes[..], b"PRI * HTTP/1.1\r\n");

        let (client, mut server) = tokio::io::duplex(64);
        drop(client);
        assert!(sniff(&mut server).await.is_err());
    }

    fn stall() -> WriteStall {
        WriteStall::new(Duration::from_secs(60), Counter::default())
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_without_progress_fails_after_the_timeout() {
        let (mut client, server) = tokio::io::duplex(16);
        let timeouts = Counter::default();
        let mut io = ConnIo::new(
            server,
            Bytes::new(),
            Arc::new(Activity::default()),
            WriteStall::new(Duration::from_secs(5), timeouts.clone()),
        );
        // Progress keeps it going, however slow.
        for _ in 0..3 {
            io.write_all(&[b'x'; 16]).await.unwrap();
            tokio::time::sleep(Duration::from_secs(4)).await;
            let mut buf = [0u8; 16];
            client.read_exact(&mut buf).await.unwrap();
        }
        assert_eq!(timeouts.get(), 0);
        // A reader that stops: the write fails once the timeout has passed, not before.
        io.write_all(&[b'x'; 16]).await.unwrap();
        let started = Instant::now();
        let error = io.write_all(b"more").await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert_eq!(timeouts.get(), 1);
    }

    #[tokio::test]
    async fn the_prefix_is_read_first_and_its_buffer_let_go() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut first = BytesMut::with_capacity(FIRST_READ);
        first.extend_from_slice(b"abcdef");
        let prefix = first.freeze();
        let witness = prefix.clone();
        let mut io = ConnIo::new(server, prefix, Arc::new(Activity::default()), stall());
        client.write_all(b"gh").await.unwrap();
        // A reader with less room than the prefix gets it in pieces, in order.
        let mut small = [0u8; 4];
        assert_eq!(io.read(&mut small).await.unwrap(), 4);
        assert_eq!(&small, b"abcd");
        assert!(!witness.is_unique(), "the rest of the prefix is still held");
        let mut rest = [0u8; 16];
        let n = io.read(&mut rest).await.unwrap();
        assert_eq!(&rest[..n], b"ef");
        // The last piece taken, the connection no longer holds the first read's buffer.
        assert!(witness.is_unique());
        let n = io.read(&mut rest).await.unwrap();
        assert_eq!(&rest[..n], b"gh");
    }

    #[test]
    fn idle_needs_every_condition() {
        let activity = Arc::new(Activity::default());
        activity.read_waiting.store(true, Ordering::Relaxed);
        assert!(activity.idle());
        let guard = activity.begin(true);
        assert!(!activity.idle(), "a request in flight");
        drop(guard);
        assert!(activity.idle());
        drop(activity.begin(false));
        assert!(!activity.idle(), "the last request had a body");
        drop(activity.begin(true));
        assert!(activity.idle());
        activity.flushed.store(false, Ordering::Relaxed);
        assert!(!activity.idle(), "unflushed output");
        activity.flushed.store(true, Ordering::Relaxed);
        activity.unparsed.store(3, Ordering::Relaxed);
        assert!(!activity.idle(), "part of a next head read");
        drop(activity.begin(true));
        assert!(activity.idle());
        activity.read_waiting.store(false, Ordering::Relaxed);
        assert!(!activity.idle(), "input not read yet");
    }

    /// A real hyper HTTP/1 connection on an in-memory pipe of `capacity` bytes, tracked like
    /// a client connection; `answer` is the response body's size.
    fn tracked_connection(
        capacity: usize,
        answer: usize,
    ) -> (tokio::io::DuplexStream, Arc<Activity>) {
        let (client, server) = tokio::io::duplex(capacity);
        let activity = Arc::new(Activity::default());
        let service = {
            let activity = activity.clone();
            hyper::service::service_fn(move |request: Request<Incoming>| {
                let guard = activity.begin(request.body().is_end_stream());
                // Answers at once, without reading the request body.
                let body = http_body_util::Full::new(Bytes::from(vec![b'x'; answer]));
                async move {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Tracked { body, guard }))
                }
            })
        };
        let io = ConnIo::new(server, Bytes::new(), activity.clone(), stall());
        tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(io), service));
        (client, activity)
    }

    async fn settle() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    #[tokio::test]
    async fn an_answer_waiting_in_hyper_is_not_idle() {
        // One frame of 256 KiB: hyper takes the whole body at once (the request is no
        // longer in flight) and holds what the 4 KiB pipe cannot take.
        let (mut client, activity) = tracked_connection(4096, 256 * 1024);
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        settle().await;
        assert_eq!(activity.in_flight.load(Ordering::Relaxed), 0);
        assert!(!activity.idle(), "idle with output still in hyper's buffer");
        let mut answer = Vec::new();
        while !answer.ends_with(&[b'x'; 64]) || answer.len() < 256 * 1024 {
            let mut buf = [0u8; 65536];
            let n = client.read(&mut buf).await.unwrap();
            answer.extend_from_slice(&buf[..n]);
        }
        settle().await;
        assert!(activity.idle(), "everything sent and nothing to read");
    }

    #[tokio::test]
    async fn a_request_body_hyper_may_still_drain_is_not_idle() {
        let (mut client, activity) = tracked_connection(65536, 10);
        // The head and part of the body in one write: read before the request begins.
        client
            .write_all(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nXXXXX")
            .await
            .unwrap();
        settle().await;
        let mut buf = [0u8; 4096];
        let n = client.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        settle().await;
        assert_eq!(activity.in_flight.load(Ordering::Relaxed), 0);
        assert_eq!(activity.unparsed.load(Ordering::Relaxed), 0);
        assert!(!activity.idle(), "idle inside a request body");
    }
}
