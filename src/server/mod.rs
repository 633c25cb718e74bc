//! Listeners and connections: accept, TLS, HTTP/1.1 and HTTP/2 serving, graceful drain.
//!
//! First stage of the request path. The accept loop never dies on an accept error (it logs
//! and backs off, e.g. on EMFILE); each connection is its own task; TLS handshakes are bounded
//! in time; on shutdown, accepting stops at once and open connections get the configured
//! grace to finish their requests.

pub mod conn;
mod sockopt;

use crate::tls;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::proxy::ConnInfo;
use crate::snapshot::{ServerSettings, SharedSnapshot};

/// Already-bound listeners (tests bind 127.0.0.1:0 and pass them in).
#[derive(Default)]
pub struct Listeners {
    pub http: Option<TcpListener>,
    pub https: Option<TcpListener>,
    pub admin: Option<TcpListener>,
    /// The probe-only listener (`server.health`).
    pub health: Option<TcpListener>,
    /// The forward-auth listener (`[forward_auth] listen`).
    pub forward_auth: Option<TcpListener>,
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
        let (http, https) = (
            bind_one(settings.http, "http").await?,
            bind_one(settings.https, "https").await?,
        );
        for listener in [&http, &https].into_iter().flatten() {
            sockopt::defer_accept_or_warn(&socket2::SockRef::from(listener), settings.defer_accept);
        }
        Ok(Listeners {
            http,
            https,
            admin: bind_one(settings.admin, "admin").await?,
            health: bind_one(settings.health, "health").await?,
            forward_auth: bind_one(settings.forward_auth, "forward_auth.listen").await?,
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

    pub fn health_addr(&self) -> Option<SocketAddr> {
        self.health.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn forward_auth_addr(&self) -> Option<SocketAddr> {
        self.forward_auth.as_ref().and_then(|l| l.local_addr().ok())
    }
}

/// Listeners not yet registered with a runtime: one set per worker thread, all bound to the
/// same addresses with `SO_REUSEPORT`, so the kernel spreads connections over the workers.
pub struct StdListeners {
    http: Option<std::net::TcpListener>,
    https: Option<std::net::TcpListener>,
    admin: Option<std::net::TcpListener>,
    health: Option<std::net::TcpListener>,
    forward_auth: Option<std::net::TcpListener>,
}

impl StdListeners {
    /// `workers` sets for `settings`; the admin and health listeners go to the first set
    /// only.
    pub fn bind_per_worker(
        settings: &ServerSettings,
        workers: usize,
    ) -> io::Result<Vec<StdListeners>> {
        let mut sets: Vec<StdListeners> = (0..workers)
            .map(|_| StdListeners {
                http: None,
                https: None,
                admin: None,
                health: None,
                forward_auth: None,
            })
            .collect();
        for (addr, what) in [(settings.http, "http"), (settings.https, "https")] {
            let Some(mut addr) = addr else { continue };
            for (i, set) in sets.iter_mut().enumerate() {
                let listener = reuseport_listener(addr, settings.defer_accept).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("cannot listen on {addr} (server.{what}): {e}"),
                    )
                })?;
                if i == 0 {
                    // Port 0: the others join the port the first one got.
                    addr = listener.local_addr()?;
                }
                match what {
                    "http" => set.http = Some(listener),
                    _ => set.https = Some(listener),
                }
            }
        }
        for (addr, what) in [
            (settings.admin, "admin"),
            (settings.health, "health"),
            (settings.forward_auth, "forward_auth.listen"),
        ] {
            let Some(addr) = addr else { continue };
            let listener = std::net::TcpListener::bind(addr).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot listen on {addr} (server.{what}): {e}"),
                )
            })?;
            listener.set_nonblocking(true)?;
            match what {
                "admin" => sets[0].admin = Some(listener),
                "health" => sets[0].health = Some(listener),
                _ => sets[0].forward_auth = Some(listener),
            }
        }
        Ok(sets)
    }

    /// Registers the listeners with the calling thread's runtime.
    pub fn into_tokio(self) -> io::Result<Listeners> {
        let convert = |l: Option<std::net::TcpListener>| l.map(TcpListener::from_std).transpose();
        Ok(Listeners {
            http: convert(self.http)?,
            https: convert(self.https)?,
            admin: convert(self.admin)?,
            health: convert(self.health)?,
            forward_auth: convert(self.forward_auth)?,
        })
    }
}

/// A client listener: joins the others on `addr` (`SO_REUSEPORT`), and wakes its accept
/// loop only once a client has sent something (`server.defer_accept`, see `sockopt`).
fn reuseport_listener(addr: SocketAddr, defer: Duration) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    sockopt::defer_accept_or_warn(&socket, defer);
    Ok(socket.into())
}

/// Serves `listeners` with the config in `shared` until `shutdown` resolves, then drains.
pub async fn run(
    listeners: Listeners,
    shared: SharedSnapshot,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let slots = connection_slots(&shared);
    run_primary(listeners, shared, shutdown, slots).await
}

/// The semaphore behind `server.max_connections`, shared by every worker of a process.
pub fn connection_slots(shared: &SharedSnapshot) -> Arc<Semaphore> {
    Arc::new(Semaphore::new(shared.load().server.max_connections))
}

/// [`run`] for the first worker of a thread-per-core process, with the process-wide
/// connection limit.
pub async fn run_primary(
    mut listeners: Listeners,
    shared: SharedSnapshot,
    shutdown: impl Future<Output = ()> + Send + 'static,
    slots: Arc<Semaphore>,
) -> io::Result<()> {
    let settings = shared.load().server.clone();
    shared
        .load()
        .start_key_refresh()
        .await
        .map_err(io::Error::other)?;
    shared
        .load()
        .metrics
        .set_config_hash(&shared.load().config_hash);
    let draining = Arc::new(AtomicBool::new(false));
    let admin = listeners.admin.take().map(|l| {
        tokio::spawn(crate::admin::serve(
            l,
            shared.clone(),
            draining.clone(),
            crate::admin::Mode::Admin,
        ))
    });
    let health = listeners.health.take().map(|l| {
        tokio::spawn(crate::admin::serve(
            l,
            shared.clone(),
            draining.clone(),
            crate::admin::Mode::Probes,
        ))
    });
    let watcher = settings.watch_config.then(|| {
        tokio::spawn(crate::reload::watch(
            shared.clone(),
            Duration::from_secs(1),
            Duration::from_millis(500),
        ))
    });
    let forward_auth = listeners
        .forward_auth
        .take()
        .map(|l| tokio::spawn(serve_forward_auth(l, shared.clone())));
    let result = serve_listeners(listeners, shared, shutdown, draining, slots).await;
    for task in admin
        .into_iter()
        .chain(health)
        .chain(forward_auth)
        .chain(watcher)
    {
        task.abort();
    }
    result
}

/// The accept loop and drain of one worker of a thread-per-core process: like [`run`]
/// without the process-wide parts (key refresh, admin listener, file watch), which the
/// first worker runs.
pub async fn run_worker(
    listeners: Listeners,
    shared: SharedSnapshot,
    shutdown: impl Future<Output = ()> + Send + 'static,
    slots: Arc<Semaphore>,
) -> io::Result<()> {
    let draining = Arc::new(AtomicBool::new(false));
    serve_listeners(listeners, shared, shutdown, draining, slots).await
}

async fn serve_listeners(
    listeners: Listeners,
    shared: SharedSnapshot,
    shutdown: impl Future<Output = ()> + Send + 'static,
    draining: Arc<AtomicBool>,
    slots: Arc<Semaphore>,
) -> io::Result<()> {
    let settings = shared.load().server.clone();
    let metrics = shared.load().metrics.clone();
    for listener in [&listeners.http, &listeners.https].into_iter().flatten() {
        nodelay_for_accepted(listener)?;
    }
    let builders = Arc::new(conn::Builders::new(
        &settings,
        metrics.client_write_timeouts.clone(),
    ));
    let drain = conn::Drain::default();
    // The shutdown future (in the binary, two signal streams) waits in a task of its own,
    // and the accept loop watches a oneshot: polling the signal streams in the loop's two
    // selects cost 1.3k instructions a new connection, the oneshot a few dozen.
    // A dropped sender (the waiter ended without sending) stops too.
    let (stop_tx, mut stop) = tokio::sync::oneshot::channel::<()>();
    // Aborted when dropped: the waiter ends with the accept loop, also when the loop's
    // future is dropped rather than finished.
    // With `shutdown_delay`, the signal makes the process not ready at once (`/readyz`
    // answers 503) and the listeners keep accepting for the delay: a load balancer or the
    // endpoints controller stops sending new connections before they would be refused.
    let delay = settings.shutdown_delay;
    let not_ready = draining.clone();
    let waiter = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
        shutdown.await;
        if !delay.is_zero() {
            not_ready.store(true, Ordering::Relaxed);
            tracing::info!(
                delay_s = delay.as_secs_f64(),
                "not ready; accepting until the delay ends"
            );
            tokio::time::sleep(delay).await;
        }
        let _ = stop_tx.send(());
    }));
    // Beyond max_connections (process-wide), new connections wait in the kernel's listen
    // backlog: the process stays within its file-descriptor and memory budget.
    loop {
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => tokio::select! {
                _ = &mut stop => break,
                slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            },
        };
        let (accepted, tls) = tokio::select! {
            _ = &mut stop => break,
            accepted = accept(listeners.http.as_ref()) => (accepted, false),
            accepted = accept(listeners.https.as_ref()) => (accepted, true),
        };
        match accepted {
            Ok((stream, peer)) => {
                let conn = ConnInfo {
                    peer,
                    tls,
                    peer_header: crate::identity::peer_value(peer.ip()),
                    client_cert: None,
                };
                let task = serve_connection(
                    stream,
                    conn,
                    shared.clone(),
                    builders.clone(),
                    drain.watcher(),
                    metrics.parked_connections.clone(),
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
    drop(waiter);
    // Not ready any more (the admin listener says so until the drain ends), and no new
    // connections: the listeners close now.
    draining.store(true, Ordering::Relaxed);
    drop(listeners);
    let open = drain.open();
    tracing::info!(
        open_connections = open,
        grace_s = settings.shutdown_grace.as_secs(),
        "draining"
    );
    if tokio::time::timeout(settings.shutdown_grace, drain.drain())
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace elapsed with connections still open");
    }
    Ok(())
}

/// `[forward_auth] listen`: the forward-auth endpoint and nothing else (404), on the
/// bounded server of the side listeners, for the front proxy beside the gateway.
async fn serve_forward_auth(listener: TcpListener, shared: SharedSnapshot) {
    let header_timeout = shared.load().server.header_read_timeout;
    crate::admin::serve_http1(listener, header_timeout, move |request, peer| {
        let snapshot = shared.load_full();
        async move {
            let (parts, _body) = request.into_parts();
            if !crate::forward_auth::is_endpoint(&snapshot, &parts) {
                return crate::error::ProxyError::NoRoute.into_response();
            }
            let mut trace = crate::decide::Trace::default();
            crate::forward_auth::answer(&snapshot, &parts, peer.ip(), &mut trace).await
        }
    })
    .await;
}

/// `TCP_NODELAY` on a listening socket: Linux copies it to every connection accepted from
/// it, which saves a `setsockopt` a connection (elsewhere each connection sets its own).
fn nodelay_for_accepted(listener: &TcpListener) -> io::Result<()> {
    socket2::SockRef::from(listener)
        .set_tcp_nodelay(true)
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot set TCP_NODELAY on a listener: {e}"),
            )
        })
}

async fn accept(listener: Option<&TcpListener>) -> io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// One connection's work, boxed: a plain connection's future has no room for the TLS
/// handshake or the rustls state, which matters because it is what every idle connection
/// keeps (see `conn`).
fn serve_connection(
    stream: TcpStream,
    conn: ConnInfo,
    shared: SharedSnapshot,
    builders: Arc<conn::Builders>,
    stop: conn::Stop,
    parked: Gauge,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    // On Linux the listener's TCP_NODELAY is inherited (`nodelay_for_accepted`).
    #[cfg(not(target_os = "linux"))]
    let _ = stream.set_nodelay(true);
    let peer = conn.peer;
    if !conn.tls {
        // `map`, not an async block around it: an async block keeps its captured values
        // beside the future it awaits, and the task's future (what a parked connection
        // holds) would be twice the size.
        use futures_util::FutureExt;
        return Box::pin(
            conn::serve(stream, conn, shared, builders, stop, parked)
                .map(move |result| log_end(peer, result)),
        );
    }
    Box::pin(async move {
        let snapshot = shared.load();
        let timeout = snapshot.server.tls_handshake_timeout;
        let Some(config) = snapshot.tls.clone() else {
            return;
        };
        drop(snapshot);
        // Boxed: the handshake's state is large and needed only until it ends.
        match Box::pin(tls::handshake(stream, config, timeout)).await {
            // Boxed: rustls's state is 1.2 KiB, and the future would have room for it
            // several times over.
            Ok(stream) => {
                let mut conn = conn;
                if let Some(order) = &shared.load().client_cert_order {
                    // Verified by rustls in the handshake; its identity is read once.
                    conn.client_cert = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .and_then(|leaf| crate::auth::client_cert::identity(leaf, order));
                }
                let stream = Box::new(stream);
                // Boxed: this block keeps its captured values beside what it awaits (see
                // above), so the connection's state lives in a box of its own.
                let result =
                    Box::pin(conn::serve(stream, conn, shared, builders, stop, parked)).await;
                log_end(peer, result);
            }
            Err(error) => tracing::debug!(%peer, %error, "TLS handshake failed"),
        }
    })
}

fn log_end(peer: SocketAddr, result: Result<(), hyper::Error>) {
    if let Err(error) = result {
        tracing::debug!(%peer, %error, "connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `serve_connection` relies on (on Linux it no longer sets TCP_NODELAY itself):
    /// a connection accepted from a listener marked by `nodelay_for_accepted` has it, and
    /// one from an unmarked listener does not (so the check can tell).
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn accepted_connections_inherit_nodelay() {
        for marked in [true, false] {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            if marked {
                nodelay_for_accepted(&listener).unwrap();
            }
            let _client = TcpStream::connect(listener.local_addr().unwrap())
                .await
                .unwrap();
            let (accepted, _) = accept(Some(&listener)).await.unwrap();
            assert_eq!(accepted.nodelay().unwrap(), marked);
        }
    }
}
