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
use tokio::net::{TcpListener, TcpStream};

use crate::snapshot::SharedSnapshot;

/// Already-bound listeners (tests bind 127.0.0.1:0 and pass them in).
#[derive(Default)]
pub struct Listeners {
    pub http: Option<TcpListener>,
    pub https: Option<TcpListener>,
}

impl Listeners {
    /// Binds the addresses of `[server]`.
    pub async fn bind(http: Option<SocketAddr>, https: Option<SocketAddr>) -> io::Result<Self> {
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
            http: bind_one(http, "http").await?,
            https: bind_one(https, "https").await?,
        })
    }

    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https.as_ref().and_then(|l| l.local_addr().ok())
    }
}

/// What a request handler knows about its connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
}

/// Serves `listeners` with the config in `shared` until `shutdown` resolves, then drains.
pub async fn run(
    listeners: Listeners,
    shared: SharedSnapshot,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let settings = shared.load().server.clone();
    let builder = Arc::new(connection_builder(&settings));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (accepted, tls) = tokio::select! {
            () = &mut shutdown => break,
            accepted = accept(listeners.http.as_ref()) => (accepted, false),
            accepted = accept(listeners.https.as_ref()) => (accepted, true),
        };
        match accepted {
            Ok((stream, peer)) => {
                let conn = ConnInfo { peer, tls };
                tokio::spawn(serve_connection(
                    stream,
                    conn,
                    shared.clone(),
                    builder.clone(),
                    graceful.watcher(),
                ));
            }
            Err(error) => {
                // Out of file descriptors and similar: keep the process up, retry shortly.
                tracing::error!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
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
    pub header_read_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    pub shutdown_grace: Duration,
}

fn connection_builder(settings: &ServerSettings) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
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
    let service = service_fn(move |request| crate::proxy::handle(request, conn, shared.clone()));
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
                tracing::debug!(peer = %conn.peer, %error, "TLS handshake failed");
                return;
            }
        },
    };
    if let Err(error) = result {
        tracing::debug!(peer = %conn.peer, %error, "connection ended with an error");
    }
}
