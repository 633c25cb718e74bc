//! WebSocket: an HTTP/1.1 `Upgrade: websocket` on a route with `websocket = true`.
//!
//! The handshake is a request like any other on its route: decided, authenticated, its
//! identity headers stripped and injected, sent to the app with `Upgrade: websocket` and
//! `Connection: Upgrade` added back (the client's are hop-by-hop and always removed). When
//! the app answers `101` upgrading to `websocket`, the gateway answers the client `101`,
//! and once hyper has written it, the client connection and the app connection are
//! spliced (`server::conn`): bytes both ways through one fixed buffer per direction
//! (bounded memory, back pressure both ways), until either side closes, nothing moves for
//! `upgraded_idle_timeout`, `max_upgraded_lifetime` passes, or, with `close_on_expiry`,
//! the credential that opened it expires (the JWT's `exp`, the session's end). Then both
//! connections are closed.
//!
//! A `101` to a request that did not ask for `websocket` is a 502 (`h1`), and elsewhere
//! `Upgrade` keeps being removed: nothing is upgraded that the route did not allow.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, UPGRADE};
use http::{Method, Version};
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::tls::Stream;

/// Bytes buffered per direction of a spliced connection.
const SPLICE_BUFFER: usize = 16 * 1024;

/// The request asks to become a WebSocket: a GET in HTTP/1.1 with `Upgrade: websocket` and
/// `Connection: upgrade` (RFC 6455 §4.1). HTTP/2's extended CONNECT (RFC 8441) is not
/// offered: browsers then open an HTTP/1.1 connection for the WebSocket.
pub fn is_websocket_request(parts: &http::request::Parts) -> bool {
    parts.method == Method::GET
        && parts.version == Version::HTTP_11
        && has_token(&parts.headers, UPGRADE, "websocket")
        && has_token(&parts.headers, CONNECTION, "upgrade")
}

fn has_token(headers: &http::HeaderMap, name: http::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// How long an upgraded connection may live.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Nothing moved either way for this long: closed.
    pub idle: Duration,
    /// Closed this long after the upgrade, whatever happens.
    pub lifetime: Duration,
    /// Closed at this time (seconds since the epoch): the credential's expiry, with
    /// `close_on_expiry`.
    pub expires_at: Option<u64>,
}

/// What the handler hands to the client connection with its `101`: the app's side of the
/// upgraded connection. Travels in the response's extensions (which must be `Clone`),
/// taken out once by the connection.
#[derive(Clone)]
pub struct Handoff(Arc<Mutex<Option<Upgraded>>>);

pub struct Upgraded {
    pub upstream: Stream,
    /// What the app sent after its `101` head.
    pub upstream_read: BytesMut,
    pub limits: Limits,
    /// `portcullis_upgraded_connections`.
    pub gauge: Gauge,
}

impl Handoff {
    pub fn new(upgraded: Upgraded) -> Self {
        Handoff(Arc::new(Mutex::new(Some(upgraded))))
    }

    /// Sets the limits the route gives the upgraded connection.
    pub fn set_limits(&self, limits: Limits) {
        if let Some(upgraded) = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .as_mut()
        {
            upgraded.limits = limits;
        }
    }

    pub fn take(&self) -> Option<Upgraded> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
    }
}

/// Why a spliced connection ended (for the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Closed,
    Idle,
    Lifetime,
    Expired,
    Shutdown,
    Failed,
}

impl End {
    pub fn as_str(self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::Idle => "idle",
            End::Lifetime => "lifetime",
            End::Expired => "credential_expired",
            End::Shutdown => "shutdown",
            End::Failed => "failed",
        }
    }
}

/// Relays bytes between the client and the app until the connection ends (see the module
/// note); `client_read` is what the client sent after its request head.
/// `ending`: the server is stopping and the grace has passed.
pub async fn splice<C>(
    mut client: C,
    client_read: Bytes,
    upgraded: Upgraded,
    ending: impl Future<Output = ()>,
) -> End
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let Upgraded {
        mut upstream,
        upstream_read,
        limits,
        gauge,
    } = upgraded;
    gauge.inc();
    struct Dec(Gauge);
    impl Drop for Dec {
        fn drop(&mut self) {
            self.0.dec();
        }
    }
    let _dec = Dec(gauge);
    // Bytes moving bump a counter (no clock read per message); the idle watch looks at it
    // four times per `idle` and closes after four quiet looks in a row: within 1.25 times
    // `upgraded_idle_timeout` of the last byte.
    let moves = AtomicU64::new(0);
    let relay = async {
        if !client_read.is_empty() {
            upstream.write_all(&client_read).await?;
        }
        if !upstream_read.is_empty() {
            client.write_all(&upstream_read).await?;
        }
        let mut client = Moved {
            inner: &mut client,
            moves: &moves,
        };
        let mut upstream = Moved {
            inner: &mut upstream,
            moves: &moves,
        };
        tokio::io::copy_bidirectional_with_sizes(
            &mut client,
            &mut upstream,
            SPLICE_BUFFER,
            SPLICE_BUFFER,
        )
        .await
    };
    let idle = async {
        let look = (limits.idle / 4).max(Duration::from_millis(1));
        let (mut seen, mut quiet) = (moves.load(Relaxed), 0);
        loop {
            tokio::time::sleep(look).await;
            let now = moves.load(Relaxed);
            quiet = if now == seen { quiet + 1 } else { 0 };
            seen = now;
            if quiet >= 4 {
                return;
            }
        }
    };
    // One timer for the lifetime and the credential's expiry, whichever comes first.
    let expires_in = limits.expires_at.map(|at| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Duration::from_secs(at.saturating_sub(now))
    });
    let (end, why) = match expires_in {
        Some(expiry) if expiry < limits.lifetime => (expiry, End::Expired),
        _ => (limits.lifetime, End::Lifetime),
    };
    // Biased: most wake-ups are bytes to relay, polled first.
    tokio::select! {
        biased;
        result = relay => if result.is_ok() { End::Closed } else { End::Failed },
        () = idle => End::Idle,
        () = tokio::time::sleep(end) => why,
        () = ending => End::Shutdown,
    }
}

/// A side of the splice that counts the reads that moved bytes (for the idle watch).
struct Moved<'a, T> {
    inner: &'a mut T,
    moves: &'a AtomicU64,
}

impl<T> Moved<'_, T> {
    fn moved(&self) {
        // Only this task writes it: a load and a store, no locked add.
        self.moves
            .store(self.moves.load(Relaxed).wrapping_add(1), Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Moved<'_, T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = std::pin::Pin::new(&mut *self.inner).poll_read(cx, buf);
        if buf.filled().len() != before {
            self.moved();
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Moved<'_, T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut *self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, version: Version, fields: &[(&str, &str)]) -> http::request::Parts {
        let mut builder = http::Request::builder()
            .method(method)
            .version(version)
            .uri("/ws");
        for (name, value) in fields {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap().into_parts().0
    }

    #[test]
    fn only_a_websocket_handshake_is_one() {
        let handshake = [
            ("upgrade", "websocket"),
            ("connection", "keep-alive, Upgrade"),
        ];
        assert!(is_websocket_request(&request(
            Method::GET,
            Version::HTTP_11,
            &handshake
        )));
        assert!(is_websocket_request(&request(
            Method::GET,
            Version::HTTP_11,
            &[("upgrade", "WebSocket"), ("connection", "upgrade")]
        )));
        for (method, version, fields) in [
            (Method::POST, Version::HTTP_11, &handshake[..]),
            (Method::GET, Version::HTTP_10, &handshake[..]),
            (Method::GET, Version::HTTP_2, &handshake[..]),
            (
                Method::GET,
                Version::HTTP_11,
                &[("upgrade", "h2c"), ("connection", "upgrade")][..],
            ),
            (
                Method::GET,
                Version::HTTP_11,
                &[("upgrade", "websocket")][..],
            ),
            (
                Method::GET,
                Version::HTTP_11,
                &[("connection", "upgrade")][..],
            ),
        ] {
            assert!(
                !is_websocket_request(&request(method.clone(), version, fields)),
                "{method} {version:?} {fields:?}"
            );
        }
    }
}
