//! Listeners and connections: accept, TLS, HTTP/1.1 and HTTP/2 serving, graceful drain.
//!
//! First stage of the request path. The accept loop never dies on an accept error (it logs
//! and backs off, e.g. on EMFILE); each connection is its own task; TLS handshakes are bounded
//! in time; on shutdown, accepting stops at once and open connections get the configured
//! grace to finish their requests.

pub mod tls;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::snapshot::SharedSnapshot;

/// Already-bound listeners (tests bind 127.0.0.1:0 and pass them in).
#[derive(Default)]
pub struct Listeners {
    pub http: Option<TcpListener>,
    pub https: Option<TcpListener>,
    pub admin: Option<TcpListener>,
}

impl Listeners {
    /// Binds the addresses of `[server]`.
    pub async fn bind(settings: &ServerSettings) -> io::Result<Self> {
        async fn bind_one(addr: Option<SocketAddr>, what: &str) -> io::Result<Option<TcpListener>> {
            match addr {
                None => Ok(None),
                Some(addr) => TcpListener::bind(addr).await.map(Some).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("cannot listen on {addr} (server.{what}): {e}"),
                    )
                }),
            }
        }
        Ok(Listeners {
            http: bind_one(settings.http, "http").await?,
            https: bind_one(settings.https, "https").await?,
            admin: bind_one(settings.admin, "admin").await?,
        })
    }

    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }
}

/// What a request handler knows about its connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
    /// The peer address as a header value, formatted once per connection.
    pub peer_header: http::HeaderValue,
}

/// Serves `listeners` with the config in `shared` until `shutdown` resolves, then drains.
pub async fn run(
    mut listeners: Listeners,
    shared: SharedSnapshot,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let settings = shared.load().server.clone();
    shared
        .load()
        .start_key_refresh()
        .await
        .map_err(io::Error::other)?;
    let metrics = shared.load().metrics.clone();
    metrics.set_config_hash(&shared.load().config_hash);
    let draining = Arc::new(AtomicBool::new(false));
    let admin = listeners
        .admin
        .take()
        .map(|l| tokio::spawn(crate::admin::serve(l, shared.clone(), draining.clone())));
    let watcher = settings.watch_config.then(|| {
        tokio::spawn(crate::reload::watch(
            shared.clone(),
            Duration::from_secs(1),
            Duration::from_millis(500),
        ))
    });
    let builder = Arc::new(connection_builder(&settings));
    let graceful = GracefulShutdown::new();
    // Beyond max_connections, new connections wait in the kernel's listen backlog: the
    // process stays within its file-descriptor and memory budget.
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            () = &mut shutdown => break,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let (accepted, tls) = tokio::select! {
            () = &mut shutdown => break,
            accepted = accept(listeners.http.as_ref()) => (accepted, false),
            accepted = accept(listeners.https.as_ref()) => (accepted, true),
        };
        match accepted {
            Ok((stream, peer)) => {
                let conn = ConnInfo {
                    peer,
                    tls,
                    peer_header: crate::identity::peer_value(peer.ip()),
                };
                let task = serve_connection(
                    stream,
                    conn,
                    shared.clone(),
                    builder.clone(),
                    graceful.watcher(),
                );
                let metrics = metrics.clone();
                metrics.connections.inc();
                tokio::spawn(async move {
                    task.await;
                    metrics.connections.dec();
                    drop(slot);
                });
            }
            Err(error) => {
                // Out of file descriptors and similar: keep the process up, retry shortly.
                tracing::error!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    // Not ready any more (the admin listener says so until the drain ends), and no new
    // connections: the listeners close now.
    draining.store(true, Ordering::Relaxed);
    drop(listeners);
    let open = graceful.count();
    tracing::info!(
        open_connections = open,
        grace_s = settings.shutdown_grace.as_secs(),
        "draining"
    );
    if tokio::time::timeout(settings.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace elapsed with connections still open");
    }
    for task in admin.into_iter().chain(watcher) {
        task.abort();
    }
    Ok(())
}

async fn accept(listener: Option<&TcpListener>) -> io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// Connection-level settings from `[server]`.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub watch_config: bool,
    pub header_read_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    pub shutdown_grace: Duration,
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_uri_bytes: usize,
    pub max_body_size: Option<u64>,
    pub request_body_timeout: Duration,
    pub http2_max_concurrent_streams: u32,
}

/// hyper's own limits are hard caps set above the configured ones, which `proxy` checks and
/// answers with JSON (hyper answers a bare 431/414 past its caps).
///
/// HTTP/1: the header read timer starts whenever the connection waits for a request head,
/// so it bounds idle keep-alive time as well as slow senders. HTTP/2: bounded concurrent
/// streams, bounded pending/errored resets (the rapid-reset guard), keep-alive pings that
/// drop dead peers.
fn connection_builder(settings: &ServerSettings) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let hard_header_bytes = (settings.max_header_bytes + settings.max_uri_bytes) * 2;
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .max_headers(settings.max_headers * 2)
        .max_buf_size(hard_header_bytes.max(64 * 1024));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.http2_max_concurrent_streams)
        .max_pending_accept_reset_streams(20)
        .max_local_error_reset_streams(1024)
        .max_header_list_size(u32::try_from(hard_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    builder
}

async fn serve_connection(
    stream: TcpStream,
    conn: ConnInfo,
    shared: SharedSnapshot,
    builder: Arc<auto::Builder<TokioExecutor>>,
    watcher: Watcher,
) {
    let _ = stream.set_nodelay(true);
    let tls = if conn.tls {
        let snapshot = shared.load();
        let timeout = snapshot.server.tls_handshake_timeout;
        let Some(config) = snapshot.tls.clone() else {
            return;
        };
        Some((config, timeout))
    } else {
        None
    };
    let peer = conn.peer;
    let service =
        service_fn(move |request| crate::proxy::handle(request, conn.clone(), shared.clone()));
    let result = match tls {
        None => {
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            watcher.watch(connection.into_owned()).await
        }
        Some((config, timeout)) => match tls::handshake(stream, config, timeout).await {
            Ok(stream) => {
                let connection = builder.serve_connection(TokioIo::new(stream), service);
                watcher.watch(connection.into_owned()).await
            }
            Err(error) => {
                tracing::debug!(%peer, %error, "TLS handshake failed");
                return;
            }
        },
    };
    if let Err(error) = result {
        tracing::debug!(%peer, %error, "connection ended with an error");
    }
}
