//! Body wrappers on the streaming path: nothing is buffered, every stall is bounded.
//!
//! - [`RequestBody`]: the client's body on its way upstream. Trailers are dropped (a client
//!   could otherwise smuggle an identity header past the rewrite in them: I2); it is cut
//!   with [`BodyTooLarge`] past the route's limit, and with [`BodyStalled`] when the client
//!   sends nothing for `request_body_timeout` (I6).
//! - [`UpstreamBody`]: the upstream's answer on its way back, cut with [`BodyStalled`] when
//!   the upstream sends nothing for its `body_timeout`: the client sees a truncated stream,
//!   never a hang.
//!
//! The stall timer is created only the first time a body is not immediately ready, so a
//! small response that arrives in one piece costs no timer.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use super::exchange::{Exchange, SendBody};
use super::pool::BoxError;

/// The request body went over the route's `max_body_size`.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the route's limit")]
pub struct BodyTooLarge;

/// A body sent nothing for longer than its idle limit.
#[derive(Debug, thiserror::Error)]
#[error("body stalled for longer than its idle timeout")]
pub struct BodyStalled;

/// Fails a body that stays pending for longer than `idle`.
struct StallTimer {
    idle: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl StallTimer {
    fn new(idle: Duration) -> Self {
        StallTimer {
            idle,
            timer: None,
            armed: false,
        }
    }

    /// Called when the body is pending: true when the stall limit has passed.
    fn stalled(&mut self, cx: &mut Context<'_>) -> bool {
        let deadline = Instant::now() + self.idle;
        let timer = match (&mut self.timer, self.armed) {
            (Some(timer), true) => timer,
            (Some(timer), false) => {
                timer.as_mut().reset(deadline);
                timer
            }
            (None, _) => self
                .timer
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        self.armed = true;
        timer.as_mut().poll(cx).is_ready()
    }

    fn progressed(&mut self) {
        self.armed = false;
    }
}

/// The client's request body, forwarded upstream.
pub struct RequestBody {
    inner: Incoming,
    remaining: Option<u64>,
    stall: StallTimer,
}

impl RequestBody {
    pub fn new(inner: Incoming, limit: Option<u64>, idle: Duration) -> Self {
        RequestBody {
            inner,
            remaining: limit,
            stall: StallTimer::new(idle),
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => frame,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending if this.stall.stalled(cx) => {
                    return Poll::Ready(Some(Err(Box::new(BodyStalled))));
                }
                Poll::Pending => return Poll::Pending,
            };
            this.stall.progressed();
            if frame.is_trailers() {
                continue;
            }
            if let (Some(remaining), Some(data)) = (this.remaining.as_mut(), frame.data_ref()) {
                let len = data.len() as u64;
                if len > *remaining {
                    return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                }
                *remaining -= len;
            }
            return Poll::Ready(Some(Ok(frame)));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The upstream's response body, streamed to the client. It reads from the upstream
/// connection (see [`super::pool`]), which goes back to the pool once the body has ended
/// cleanly; dropped half-way, it closes the connection.
pub struct UpstreamBody<B: SendBody = RequestBody> {
    exchange: Box<Exchange<B>>,
    stall: StallTimer,
    /// A failure held back for one poll (see `fail`).
    failure: Option<BoxError>,
    failed: bool,
}

impl<B: SendBody> UpstreamBody<B> {
    pub fn new(mut exchange: Box<Exchange<B>>, idle: Duration) -> Self {
        if exchange.is_end_stream() {
            // No body at all (204, 304, HEAD, zero length): hyper never polls this one.
            exchange.finish();
        }
        UpstreamBody {
            exchange,
            stall: StallTimer::new(idle),
            failure: None,
            failed: false,
        }
    }

    /// The answer broke off: the connection is closed, and the failure is told at the next
    /// poll. The connection is read in this task, so the failure can come in the same poll
    /// as the head and the first bytes; hyper drops what it has not flushed when a body
    /// fails, and one `Pending` lets it flush first. The client then gets the head and a
    /// visibly truncated body, as when the failure comes later.
    fn fail<T>(&mut self, failure: BoxError, cx: &mut Context<'_>) -> Poll<T> {
        self.failed = true;
        self.exchange.close();
        self.failure = Some(failure);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl<B: SendBody> Body for UpstreamBody<B> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(failure) = this.failure.take() {
            return Poll::Ready(Some(Err(failure)));
        }
        if this.failed {
            return Poll::Ready(None);
        }
        match this.exchange.poll_data(cx) {
            Poll::Ready(Some(Ok(data))) => {
                this.stall.progressed();
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(Err(e))) => this.fail(Box::new(e), cx),
            Poll::Pending if this.stall.stalled(cx) => this.fail(Box::new(BodyStalled), cx),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failure.is_none() && (self.failed || self.exchange.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        match self.exchange.remaining() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}
