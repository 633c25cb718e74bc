//! One request and its answer on one upstream connection, driven by the request's own task
//! (no connection task, no channel), speaking HTTP/1.1 through [`super::h1`].
//!
//! - [`send`] checks a connection out of the pool (or opens one), writes the request head
//!   and body, and reads until the response head.
//! - The response body ([`Exchange`], held by `UpstreamBody`) reads the rest. It also keeps
//!   sending the request body, for an upstream that answers while the upload goes on. Once
//!   the answer has ended where its framing said, with the whole request sent before its
//!   head arrived and no byte left over, the connection goes back to the pool. Any other end
//!   closes it (I11: a pooled connection carries exactly one answer per request).
//!
//! A request goes out a second time, on a fresh connection, only when a reused connection
//! failed before the first byte of an answer, and either not one byte of the request had
//! left, or the request is a GET, HEAD, OPTIONS or TRACE without a body (the race with an
//! upstream closing an idle connection, RFC 9112 §9.3.1; PUT and DELETE are not re-sent
//! once written, since a legacy app's are often not idempotent). Never on a new
//! connection, never after an answer began.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{Method, Response};
use tokio::io::AsyncWrite;

use super::h1::{self, Decoded, Decoder, FrameError, RequestFraming};
use super::pool::{BoxError, Conn, Connecting, Pool, SendError};
use super::targets::{Balance, TargetSet};
use std::sync::atomic::Ordering::Relaxed;

/// What an exchange can send: the gateway sends `RequestBody`; the unit tests send plain bodies.
pub trait SendBody:
    http_body::Body<Data = Bytes, Error: Into<BoxError>> + Send + Unpin + 'static
{
}
impl<B> SendBody for B where
    B: http_body::Body<Data = Bytes, Error: Into<BoxError>> + Send + Unpin + 'static
{
}

/// Request body bytes buffered before they are written.
const WRITE_BATCH: usize = 64 * 1024;

/// Sends the request (`parts.uri` is the origin-form target) on a pooled or new connection
/// of the calling worker; the future reads until the response head has arrived. The
/// answer's body is the [`Exchange`], which reads the rest.
///
/// The request head is encoded here, before the first poll, so the future holds bytes
/// and not the request: it is a few hundred bytes, moved and polled on every request.
/// The version in `parts` is not looked at: the upstream always gets HTTP/1.1.
///
/// `timeout` bounds each wait on the upstream before the answer's head: for it to take
/// more request bytes while it takes none, and for the head once the request has all
/// been sent. Waits on the client's body are bounded by the body (`RequestBody`).
///
/// `targets`: the upstream's targets and the one `pool` is, when there are several: a
/// target that cannot be connected to is then left for the next, and each outcome counts
/// towards the target's ejection (see `targets`).
pub fn send<B: SendBody>(
    pool: &Arc<Pool>,
    parts: &http::request::Parts,
    extra: impl FnOnce(&mut dyn FnMut(&HeaderName, &HeaderValue)),
    body: B,
    timeout: Duration,
    targets: Option<(&Arc<TargetSet>, usize)>,
) -> Sending<B> {
    let worker = crate::worker::worker_id() % pool.slots.len();
    let conn = pool.checkout(worker);
    start(pool, worker, conn, parts, extra, body, timeout, targets)
}

/// A health check: `GET path` on a new connection to `pool`'s target, `Connection: close`;
/// the answer's status, within `timeout`.
pub async fn probe(
    pool: &Arc<Pool>,
    path: &http::uri::PathAndQuery,
    host: &HeaderValue,
    timeout: Duration,
) -> Result<http::StatusCode, SendError> {
    let mut request = http::Request::new(());
    *request.uri_mut() = http::Uri::from(path.clone());
    let headers = request.headers_mut();
    headers.insert(http::header::HOST, host.clone());
    headers.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    headers.insert(
        http::header::USER_AGENT,
        HeaderValue::from_static("portcullis-health-check"),
    );
    let (parts, ()) = request.into_parts();
    let worker = crate::worker::worker_id() % pool.slots.len();
    let body = http_body_util::Empty::<Bytes>::new();
    let sending = start(pool, worker, None, &parts, |_| {}, body, timeout, None);
    let response = tokio::time::timeout(timeout, sending)
        .await
        .map_err(|_| SendError::Timeout)??;
    Ok(response.status())
}

#[allow(clippy::too_many_arguments)]
fn start<B: SendBody>(
    pool: &Arc<Pool>,
    worker: usize,
    mut conn: Option<Conn>,
    parts: &http::request::Parts,
    extra: impl FnOnce(&mut dyn FnMut(&HeaderName, &HeaderValue)),
    body: B,
    timeout: Duration,
    targets: Option<(&Arc<TargetSet>, usize)>,
) -> Sending<B> {
    let mut write = conn
        .as_mut()
        .map(|conn| std::mem::take(&mut conn.spare))
        .unwrap_or_default();
    write.clear();
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let (framing, upgrade) = h1::encode_request_head(
        &parts.method,
        target,
        &parts.headers,
        extra,
        (
            http_body::Body::is_end_stream(&body),
            http_body::Body::size_hint(&body).exact(),
        ),
        &mut write,
    );
    let reused = conn.is_some();
    // The attempts on several targets share one connect deadline.
    let deadline = targets
        .map(|(set, _)| tokio::time::Instant::now() + set.pools[0].settings().connect_timeout);
    let connecting = conn.is_none().then(|| {
        pool.open(share(
            deadline,
            targets.map_or(1, |(set, _)| set.pools.len()),
        ))
    });
    let counted = targets.is_some_and(|(set, _)| set.balance == Balance::LeastRequests);
    if counted {
        pool.state.in_flight.fetch_add(1, Relaxed);
    }
    Sending {
        exchange: Some(Box::new(Exchange {
            conn,
            pool: pool.clone(),
            worker,
            body: (framing != RequestFraming::Empty).then_some(body),
            framing,
            write,
            sent: 0,
            written: 0,
            wrote: false,
            request_done: false,
            write_error: None,
            answered: false,
            early: false,
            interim: 0,
            timeout,
            armed: false,
            decoder: Decoder::done(),
            keep_alive: false,
            counted,
            websocket: upgrade,
        })),
        connecting,
        targets: targets.map(|(set, current)| Failover {
            set: set.clone(),
            current,
            tried: 0,
            deadline,
        }),
        head_request: parts.method == Method::HEAD,
        // PUT and DELETE are idempotent in RFC 9110, but a legacy app's are often not
        // (a PUT that appends, a DELETE that logs): never sent twice.
        idempotent: matches!(
            parts.method,
            Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
        ),
        reused,
    }
}

/// The future of [`send`]: the response head, with the [`Exchange`] as its body.
pub struct Sending<B> {
    /// `None` once the answer has been handed out. Boxed: the response that carries it is
    /// moved through every layer of the request path, and a pointer is cheaper to move.
    exchange: Option<Box<Exchange<B>>>,
    /// A connection being opened: the first, or a fresh one to send the request again.
    connecting: Option<Connecting>,
    head_request: bool,
    idempotent: bool,
    /// The current connection came from the pool.
    reused: bool,
    /// Several targets: where this request is, and where it could go next.
    targets: Option<Failover>,
}

/// The part of what is left until `deadline` that one of `left` attempts may take: a
/// target that does not answer cannot use up the others' time.
fn share(deadline: Option<tokio::time::Instant>, left: usize) -> Option<tokio::time::Instant> {
    deadline.map(|deadline| {
        let now = tokio::time::Instant::now();
        now + deadline.saturating_duration_since(now) / left.max(1) as u32
    })
}

struct Failover {
    set: Arc<TargetSet>,
    /// The target `exchange.pool` is.
    current: usize,
    /// Targets that could not be connected to, a bit each.
    tried: u64,
    deadline: Option<tokio::time::Instant>,
}

impl Failover {
    /// Counts the outcome against the current target.
    fn record(&self, ok: bool) {
        let pool = &self.set.pools[self.current];
        if pool.state.record(ok, &self.set.ejection) {
            tracing::warn!(
                target = %pool.authority(),
                failures = self.set.ejection.after,
                out_for = ?self.set.ejection.duration,
                "upstream target ejected after consecutive failures"
            );
        }
    }
}

impl<B: SendBody> Future for Sending<B> {
    type Output = Result<Response<Box<Exchange<B>>>, SendError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let exchange = this
            .exchange
            .as_mut()
            .expect("Sending polled after it completed");
        loop {
            if let Some(connecting) = &mut this.connecting {
                match ready!(connecting.as_mut().poll(cx)) {
                    Ok(conn) => {
                        this.connecting = None;
                        exchange.conn = Some(conn);
                    }
                    Err(e) => {
                        this.connecting = None;
                        let Some(failover) = &mut this.targets else {
                            return Poll::Ready(Err(e));
                        };
                        failover.record(false);
                        // Nothing was sent: the next target may take it, whatever the method.
                        let next = match e {
                            SendError::Connect { .. } | SendError::Tls { .. } => {
                                failover.tried |= 1 << (failover.current % 64);
                                failover.set.next_after(failover.current, failover.tried)
                            }
                            _ => None,
                        };
                        let Some(next) = next else {
                            return Poll::Ready(Err(e));
                        };
                        let pool = failover.set.pools[next].clone();
                        if exchange.counted {
                            exchange.pool.state.in_flight.fetch_sub(1, Relaxed);
                            pool.state.in_flight.fetch_add(1, Relaxed);
                        }
                        failover.current = next;
                        // A warm connection of the next target if it has one.
                        match pool.checkout(exchange.worker) {
                            Some(conn) => {
                                exchange.conn = Some(conn);
                                this.reused = true;
                            }
                            None => {
                                let left =
                                    failover.set.pools.len() - failover.tried.count_ones() as usize;
                                this.connecting = Some(pool.open(share(failover.deadline, left)));
                            }
                        }
                        exchange.pool = pool;
                        continue;
                    }
                }
            }
            match ready!(exchange.poll_head(cx, this.head_request)) {
                Ok(head) => {
                    if let Some(failover) = &this.targets {
                        failover.record(head.status != http::StatusCode::BAD_GATEWAY);
                    }
                    let Some(mut exchange) = this.exchange.take() else {
                        unreachable!("checked above");
                    };
                    exchange.decoder = head.body;
                    exchange.keep_alive = head.keep_alive;
                    let mut response = Response::new(exchange);
                    *response.status_mut() = head.status;
                    *response.version_mut() = head.version;
                    *response.headers_mut() = head.headers;
                    if let Some(reason) = head.reason {
                        response.extensions_mut().insert(reason);
                    }
                    return Poll::Ready(Ok(response));
                }
                Err(e) if this.reused && exchange.replayable(&e, this.idempotent) => {
                    // The same bytes, from the start, on a fresh connection.
                    this.reused = false;
                    exchange.conn = None;
                    exchange.written = 0;
                    exchange.request_done = false;
                    exchange.write_error = None;
                    exchange.armed = false;
                    this.connecting = Some(exchange.pool.open(None));
                }
                Err(e) => {
                    if let Some(failover) = &this.targets {
                        failover.record(false);
                    }
                    return Poll::Ready(Err(e));
                }
            }
        }
    }
}

/// One request and its answer on one connection: the rest of the request body going out,
/// the response body coming in. The connection goes back to the pool when both ended
/// cleanly (see the module note); dropped half-way, the exchange closes it.
pub struct Exchange<B> {
    /// `None` once given back or closed.
    conn: Option<Conn>,
    pool: Arc<Pool>,
    worker: usize,
    /// The request body, `None` once it has all been taken.
    body: Option<B>,
    framing: RequestFraming,
    /// The request bytes to write: the head, then body pieces.
    write: Vec<u8>,
    /// Body bytes taken so far (checked against a `Content-Length`).
    sent: u64,
    /// Bytes of `write` already written.
    written: usize,
    /// Some byte of the request has reached the socket.
    wrote: bool,
    request_done: bool,
    /// Writing failed (the upstream may still answer, and often does: a 413, then close).
    write_error: Option<std::io::Error>,
    /// Some byte of an answer has arrived.
    answered: bool,
    /// The answer's head came before the whole request was sent: the connection is not
    /// reused (what the upstream made of the rest of the request is unknown).
    early: bool,
    /// Bytes of interim (1xx) heads dropped so far.
    interim: usize,
    /// How long the upstream may take to accept request bytes, and then to answer.
    timeout: Duration,
    /// The connection's timer runs for the current wait.
    armed: bool,
    decoder: Decoder,
    keep_alive: bool,
    /// Counted in its target's requests in flight (`least_requests`).
    counted: bool,
    /// The request asks for `Upgrade: websocket` (a `101` may answer it).
    websocket: bool,
}

impl<B> Drop for Exchange<B> {
    fn drop(&mut self) {
        if self.counted {
            self.pool.state.in_flight.fetch_sub(1, Relaxed);
        }
    }
}

impl<B: SendBody> Exchange<B> {
    /// Moves the request forward: takes body frames while there is room, writes what is
    /// buffered. Ready once it has all been written (or writing failed: see `write_error`);
    /// an error only when the request body itself failed.
    fn poll_request(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        let Some(conn) = &mut self.conn else {
            return Poll::Ready(Ok(()));
        };
        if self.request_done || self.write_error.is_some() {
            return Poll::Ready(Ok(()));
        }
        loop {
            while let Some(body) = &mut self.body
                && self.write.len() - self.written < WRITE_BATCH
            {
                let frame = match Pin::new(body).poll_frame(cx) {
                    Poll::Pending => break,
                    Poll::Ready(None) => {
                        self.body = None;
                        match self.framing {
                            RequestFraming::Length(len) if self.sent != len => {
                                return Poll::Ready(Err(SendError::Body(
                                    "the request body is shorter than its Content-Length".into(),
                                )));
                            }
                            RequestFraming::Chunked => {
                                compact(&mut self.write, &mut self.written);
                                self.write.extend_from_slice(h1::LAST_CHUNK);
                            }
                            _ => {}
                        }
                        break;
                    }
                    Poll::Ready(Some(Err(e))) => {
                        return Poll::Ready(Err(SendError::Body(e.into())));
                    }
                    Poll::Ready(Some(Ok(frame))) => frame,
                };
                // Trailers are dropped (RequestBody already drops the client's).
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                if data.is_empty() {
                    continue;
                }
                self.sent += data.len() as u64;
                if let RequestFraming::Length(len) = self.framing
                    && self.sent > len
                {
                    return Poll::Ready(Err(SendError::Body(
                        "the request body is longer than its Content-Length".into(),
                    )));
                }
                compact(&mut self.write, &mut self.written);
                if self.framing == RequestFraming::Chunked {
                    h1::encode_chunk(&data, &mut self.write);
                } else {
                    self.write.extend_from_slice(&data);
                }
            }
            if self.written == self.write.len() {
                // TLS may still hold some of it (a no-op on plain TCP).
                match Pin::new(&mut conn.io).poll_flush(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Pending => {
                        if !self.armed {
                            conn.arm(self.timeout);
                            self.armed = true;
                        }
                        return Poll::Pending;
                    }
                    Poll::Ready(Err(e)) => {
                        self.write_error = Some(e);
                        conn.arm(self.timeout);
                        self.armed = true;
                        return Poll::Ready(Ok(()));
                    }
                }
                if self.body.is_none() {
                    // All sent: the wait for the answer starts.
                    self.request_done = true;
                    conn.arm(self.timeout);
                    self.armed = true;
                    return Poll::Ready(Ok(()));
                }
                return Poll::Pending;
            }
            match Pin::new(&mut conn.io).poll_write(cx, &self.write[self.written..]) {
                Poll::Pending => {
                    // The upstream takes nothing: it has `timeout` to take more.
                    if !self.armed {
                        conn.arm(self.timeout);
                        self.armed = true;
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Ok(0)) => {
                    self.write_error = Some(std::io::ErrorKind::WriteZero.into());
                    conn.arm(self.timeout);
                    self.armed = true;
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Ok(n)) => {
                    self.written += n;
                    self.wrote = true;
                    self.armed = false;
                }
                Poll::Ready(Err(e)) => {
                    // The upstream may still answer (a 413, then a reset): it has
                    // `timeout` to.
                    self.write_error = Some(e);
                    conn.arm(self.timeout);
                    self.armed = true;
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }

    /// Sends the request and reads until the final response head.
    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        head_request: bool,
    ) -> Poll<Result<h1::Head, SendError>> {
        if let Poll::Ready(Err(e)) = self.poll_request(cx) {
            return Poll::Ready(Err(e));
        }
        let Some(conn) = &mut self.conn else {
            return Poll::Ready(Err(SendError::Closed));
        };
        loop {
            let filled = match conn.poll_fill(cx) {
                Poll::Ready(filled) => filled,
                Poll::Pending if self.armed && conn.expired(cx) => {
                    return Poll::Ready(Err(SendError::Timeout));
                }
                Poll::Pending => return Poll::Pending,
            };
            match filled {
                Ok(0) if conn.read.is_empty() && !self.answered => {
                    // A write error says more than the close it caused.
                    return Poll::Ready(Err(self
                        .write_error
                        .take()
                        .map_or(SendError::Closed, SendError::Io)));
                }
                Ok(0) => return Poll::Ready(Err(FrameError::Truncated.into())),
                Ok(_) => self.answered = true,
                Err(e) => return Poll::Ready(Err(e.into())),
            }
            if let Some(head) = h1::parse_response_head(
                &mut conn.read,
                head_request,
                &mut self.interim,
                self.websocket,
            )? {
                self.early = !self.request_done;
                return Poll::Ready(Ok(head));
            }
        }
    }

    /// The request may go out again on a fresh connection (see the module note).
    fn replayable(&self, error: &SendError, idempotent: bool) -> bool {
        matches!(error, SendError::Io(_) | SendError::Closed)
            && !self.answered
            && (!self.wrote || (idempotent && self.framing == RequestFraming::Empty))
    }

    /// The next piece of the response body; `None` at its end.
    pub fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, SendError>>> {
        // An upstream may answer while the upload goes on: keep it going.
        if let Poll::Ready(Err(e)) = self.poll_request(cx) {
            self.conn = None;
            return Poll::Ready(Some(Err(e)));
        }
        loop {
            let Some(conn) = &mut self.conn else {
                return Poll::Ready(None);
            };
            match self.decoder.decode(&mut conn.read) {
                Ok(Decoded::Data(data)) => {
                    if self.decoder.is_done() {
                        self.finish();
                    }
                    return Poll::Ready(Some(Ok(data)));
                }
                Ok(Decoded::End) => {
                    self.finish();
                    return Poll::Ready(None);
                }
                Ok(Decoded::NeedMore) => {}
                Err(e) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
            match ready!(conn.poll_fill(cx)) {
                Ok(0) => {
                    self.conn = None;
                    return Poll::Ready(match self.decoder.closed() {
                        Ok(()) => None,
                        Err(e) => Some(Err(e.into())),
                    });
                }
                Ok(_) => {}
                Err(e) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    /// The answer has ended: the connection goes back to the pool when it can carry the
    /// next request, and is closed otherwise.
    /// After a `101`: the connection, now the upgraded one's, and what the upstream sent
    /// after the head. Never goes back to the pool.
    pub fn into_upgraded(&mut self) -> Option<(super::tls::Stream, bytes::BytesMut)> {
        self.conn.take().map(|conn| (conn.io, conn.read))
    }

    pub fn finish(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        if self.keep_alive && self.request_done && !self.early && self.write_error.is_none() {
            if conn.read.is_empty() {
                conn.spare = std::mem::take(&mut self.write);
                self.pool.put_back(self.worker, conn);
            } else {
                // Bytes past the answer's end: nobody asked for them.
                self.pool.unsolicited.inc();
            }
        }
    }

    /// Closes the connection (the answer is abandoned).
    pub fn close(&mut self) {
        self.conn = None;
    }

    pub fn is_end_stream(&self) -> bool {
        self.decoder.is_done()
    }

    /// Body bytes still to come, when known.
    pub fn remaining(&self) -> Option<u64> {
        self.decoder.remaining()
    }
}

/// Drops the written prefix of a write buffer before more is appended.
fn compact(write: &mut Vec<u8>, written: &mut usize) {
    if *written > 0 {
        write.drain(..*written);
        *written = 0;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http::uri::Authority;
    use prometheus_client::metrics::counter::Counter;
    use tokio::net::TcpStream;

    use crate::upstream::pool::PoolSettings;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::upstream::body::UpstreamBody;
    use http::Request;

    fn send<B: SendBody>(pool: &Arc<Pool>, request: Request<B>) -> Sending<B> {
        let (parts, body) = request.into_parts();
        super::send(pool, &parts, |_| {}, body, Duration::from_secs(5), None)
    }

    /// A raw upstream that answers every request head with `answer`. It counts the
    /// connections it accepted and those that ended (the peer closed them), and closes a
    /// connection itself after `answers_per_conn` answers.
    struct RawUpstream {
        authority: Authority,
        accepted: Arc<AtomicUsize>,
        ended: Arc<AtomicUsize>,
    }

    async fn raw_upstream(answer: &'static [u8], answers_per_conn: usize) -> RawUpstream {
        let ended = Arc::<AtomicUsize>::default();
        let e = ended.clone();
        let (authority, accepted) = scripted(move |mut stream| {
            let e = e.clone();
            async move {
                let mut seen = Vec::new();
                for _ in 0..answers_per_conn {
                    if read_request(&mut stream, &mut seen).await.is_none() {
                        e.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                    stream.write_all(answer).await.unwrap();
                }
            }
        })
        .await;
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

    fn pool(upstream: &RawUpstream, idle_timeout: Duration, max_idle: usize) -> Arc<Pool> {
        let settings = PoolSettings {
            connect_timeout: Duration::from_secs(2),
            max_idle,
            idle_timeout,
            health_check: None,
        };
        Pool::new(
            upstream.authority.clone(),
            settings,
            None,
            1,
            Counter::default(),
        )
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
    async fn fetch(pool: &Arc<Pool>) -> (u16, Bytes) {
        let response = send(pool, get()).await.unwrap();
        let status = response.status().as_u16();
        let body = UpstreamBody::new(response.into_body(), Duration::from_secs(5));
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
        let response = send(&pool, get()).await.unwrap();
        let mut body = UpstreamBody::new(response.into_body(), Duration::from_secs(5));
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
            send(&pool, get()).await.unwrap(),
            send(&pool, get()).await.unwrap(),
        );
        assert_eq!(upstream.accepted.load(Ordering::SeqCst), 2);
        for response in [first, second] {
            let body = UpstreamBody::new(response.into_body(), Duration::from_secs(5));
            body.collect().await.unwrap();
        }
        assert_eq!(pool.idle(0), 1);
        eventually("the extra connection was closed", || {
            upstream.ended.load(Ordering::SeqCst) == 1
        })
        .await;
    }

    /// An idle connection gives its buffers and timer back after `SHED_AFTER` (at the
    /// sweeper's next round), stays open, and serves the next request.
    #[tokio::test]
    async fn idle_connections_give_their_buffers_back_and_still_serve() {
        let upstream = raw_upstream(SIZED, usize::MAX).await;
        let pool = pool(&upstream, Duration::from_millis(2500), 8);
        let response = send(&pool, get()).await.unwrap();
        let body = UpstreamBody::new(response.into_body(), Duration::from_secs(5));
        assert_eq!(&body.collect().await.unwrap().to_bytes()[..], b"hello");
        assert_eq!(pool.idle(0), 1);
        let (bytes, timers) = pool.idle_holdings(0);
        assert!(
            bytes >= 16 * 1024 && timers == 1,
            "fresh: {bytes} bytes, {timers} timers"
        );
        let started = std::time::Instant::now();
        while pool.idle_holdings(0) != (0, 0) {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "never shed: {:?}",
                pool.idle_holdings(0)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(pool.idle(0), 1, "shedding keeps the connection");
        let response = send(&pool, get()).await.unwrap();
        let body = UpstreamBody::new(response.into_body(), Duration::from_secs(5));
        assert_eq!(&body.collect().await.unwrap().to_bytes()[..], b"hello");
        assert_eq!(
            upstream.accepted.load(Ordering::SeqCst),
            1,
            "the same connection again"
        );
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
            health_check: None,
        };
        let pool = Pool::new(authority, settings, None, 1, Counter::default());
        match send(&pool, get()).await {
            Err(SendError::Connect { .. }) => {}
            other => panic!("{:?}", other.map(|response| response.status())),
        }
    }

    /// A body of fixed pieces; `exact`: the length it claims (`None`: unknown, it streams).
    struct Pieces {
        pieces: std::collections::VecDeque<Bytes>,
        exact: Option<u64>,
    }

    impl http_body::Body for Pieces {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            Poll::Ready(
                self.pieces
                    .pop_front()
                    .map(|p| Ok(http_body::Frame::data(p))),
            )
        }

        fn size_hint(&self) -> http_body::SizeHint {
            self.exact
                .map_or_else(Default::default, http_body::SizeHint::with_exact)
        }
    }

    fn post(pieces: &[&'static str], exact: Option<u64>) -> Request<Pieces> {
        Request::builder()
            .method("POST")
            .uri("/form")
            .header("host", "upstream")
            .body(Pieces {
                pieces: pieces
                    .iter()
                    .map(|p| Bytes::from_static(p.as_bytes()))
                    .collect(),
                exact,
            })
            .unwrap()
    }

    /// Reads one request (head, then its body by its framing) from `stream`; `None` when
    /// the peer closed first.
    async fn read_request(stream: &mut TcpStream, seen: &mut Vec<u8>) -> Option<Vec<u8>> {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&seen[..end]).to_lowercase();
                let body_end = if head.contains("transfer-encoding: chunked") {
                    seen.windows(5)
                        .position(|w| w == b"0\r\n\r\n")
                        .map(|at| at + 5)
                } else {
                    let len = head
                        .split("content-length: ")
                        .nth(1)
                        .map_or(0, |rest| rest.lines().next().unwrap().parse().unwrap());
                    Some(end + 4 + len).filter(|&total| seen.len() >= total)
                };
                if let Some(total) = body_end {
                    return Some(seen.drain(..total).collect());
                }
            }
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    }

    /// An upstream that runs `serve` on every connection it accepts; counts them.
    async fn scripted<F, Fut>(serve: F) -> (Authority, Arc<AtomicUsize>)
    where
        F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority = listener.local_addr().unwrap().to_string().parse().unwrap();
        let accepted = Arc::<AtomicUsize>::default();
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream));
            }
        });
        (authority, accepted)
    }

    fn settings() -> PoolSettings {
        PoolSettings {
            connect_timeout: Duration::from_secs(2),
            max_idle: 8,
            idle_timeout: Duration::from_secs(60),
            health_check: None,
        }
    }

    #[tokio::test]
    async fn a_request_dropped_unanswered_goes_again_only_when_that_is_safe() {
        // Each connection answers its first request; it reads the second, then hangs up
        // without a word: the race with an upstream closing an idle connection.
        let (authority, accepted) = scripted(|mut stream| async move {
            let mut seen = Vec::new();
            if read_request(&mut stream, &mut seen).await.is_some() {
                stream.write_all(SIZED).await.unwrap();
                read_request(&mut stream, &mut seen).await;
            }
        })
        .await;
        let pool = Pool::new(authority, settings(), None, 1, Counter::default());
        assert_eq!(fetch(&pool).await.0, 200);
        // A GET without a body, on the reused connection: sent again, on a new one.
        assert_eq!(fetch(&pool).await.0, 200);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        // A POST with a body: the upstream may have acted on it, so it is not sent again.
        match send(&pool, post(&["a=1"], Some(3))).await {
            Err(SendError::Closed) => {}
            other => panic!("{:?}", other.map(|response| response.status())),
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        // Nor is anything sent again on a connection that was new.
        let (authority, accepted) = scripted(|mut stream| async move {
            read_request(&mut stream, &mut Vec::new()).await;
        })
        .await;
        let pool = Pool::new(authority, settings(), None, 1, Counter::default());
        assert!(matches!(send(&pool, get()).await, Err(SendError::Closed)));
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn bytes_beyond_an_answer_keep_its_connection_out_of_the_pool() {
        // An answer followed by a second, unasked one, or framed by both a length and
        // chunks: either could answer the next request with the wrong bytes.
        const EXTRA: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello\
                               HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nSPOOF";
        const BOTH: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\
                              transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
        for answer in [EXTRA, BOTH] {
            let upstream = raw_upstream(answer, usize::MAX).await;
            let pool = pool(&upstream, Duration::from_secs(60), 8);
            for round in 1..=3 {
                assert_eq!(fetch(&pool).await, (200, Bytes::from_static(b"hello")));
                assert_eq!(pool.idle(0), 0);
                assert_eq!(upstream.accepted.load(Ordering::SeqCst), round);
            }
        }
    }

    #[tokio::test]
    async fn the_request_body_goes_out_with_its_length_or_in_chunks() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let (authority, _) = scripted(move |mut stream| {
            let tx = tx.clone();
            async move {
                let mut seen = Vec::new();
                while let Some(request) = read_request(&mut stream, &mut seen).await {
                    tx.send(String::from_utf8(request).unwrap()).unwrap();
                    stream.write_all(SIZED).await.unwrap();
                }
            }
        })
        .await;
        let pool = Pool::new(authority, settings(), None, 1, Counter::default());
        let cases = [
            (
                post(&["a=1&", "b=2"], Some(7)),
                "content-length: 7\r\n\r\na=1&b=2",
            ),
            (
                post(&["a=1&", "", "b=2"], None),
                "transfer-encoding: chunked\r\n\r\n4\r\na=1&\r\n3\r\nb=2\r\n0\r\n\r\n",
            ),
            (post(&[], Some(0)), "content-length: 0\r\n\r\n"),
        ];
        for (request, framing) in cases {
            let response = send(&pool, request).await.unwrap();
            let body = UpstreamBody::new(response.into_body(), Duration::from_secs(5));
            assert_eq!(body.collect().await.unwrap().to_bytes(), "hello");
            let expected = format!("POST /form HTTP/1.1\r\nhost: upstream\r\n{framing}");
            assert_eq!(rx.recv().await.unwrap(), expected);
        }
        // A body that says one length and brings another never goes out short or long.
        for (pieces, exact) in [(&["abcd"][..], 3), (&["ab"][..], 3)] {
            match send(&pool, post(pieces, Some(exact))).await {
                Err(SendError::Body(_)) => {}
                other => panic!("{:?}", other.map(|response| response.status())),
            }
        }
    }
}
