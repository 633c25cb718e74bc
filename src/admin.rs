//! The admin listener (`server.admin`, off unless configured): health, readiness, metrics,
//! reload; and the probe-only listener (`server.health`): health and readiness alone.
//! With `server.admin_token_env` / `admin_token_file` every admin endpoint but the probes
//! requires `Authorization: Bearer TOKEN` (401 otherwise); `check` requires a token when the
//! admin address is not loopback.
//!
//! - `GET /healthz`: 200 while the process runs;
//! - `GET /readyz`: 200 when a config is loaded, every provider has keys and the process is
//!   not draining; 503 with the reasons otherwise;
//! - `GET /metrics`: Prometheus text format;
//! - `GET /.well-known/portcullis/jwks.json`: the identity assertion's public keys (no token
//!   needed: they are public);
//! - `POST /revoke`: `{"jti": "...", "exp": N}` refuses that JWT on every instance until
//!   `exp` (needs `[redis]`);
//! - `POST /reload`: reloads the config file; 200 with the new hash, or 400 with the same
//!   error `portcullis check` prints (the old config keeps serving).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::snapshot::SharedSnapshot;

/// Which endpoints a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// All of them (`server.admin`).
    Admin,
    /// `/healthz` and `/readyz` only (`server.health`).
    Probes,
}

/// Serves the endpoints of `mode` on `listener` until the process ends.
pub async fn serve(
    listener: TcpListener,
    shared: SharedSnapshot,
    draining: Arc<AtomicBool>,
    mode: Mode,
) {
    let header_timeout = shared.load().server.header_read_timeout;
    serve_http1(listener, header_timeout, move |request, _peer| {
        let (shared, draining) = (shared.clone(), draining.clone());
        async move { answer(request, &shared, &draining, mode).await }
    })
    .await;
}

/// Connections open at once on one of these small listeners; more wait in the backlog.
const MAX_CONNECTIONS: usize = 256;

/// The HTTP/1.1 server of the listeners beside the main ones (admin, probes, forward-auth):
/// `handler` answers each request, given the peer's address. Bounded as the main
/// listeners are (I11): a request head must arrive within `header_timeout` (an idle
/// keep-alive connection included), and at most [`MAX_CONNECTIONS`] are open.
pub async fn serve_http1<H, F>(listener: TcpListener, header_timeout: Duration, handler: H)
where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let slot = Arc::clone(&slots)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |request| {
                let answer = handler(request, peer);
                async move { Ok::<_, Infallible>(answer.await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(
    request: Request<Incoming>,
    shared: &SharedSnapshot,
    draining: &AtomicBool,
    mode: Mode,
) -> Response<Full<Bytes>> {
    let probe = matches!(request.uri().path(), "/healthz" | "/readyz");
    if mode == Mode::Admin && request.uri().path() == crate::assertion::JWKS_PATH {
        // Public keys: served without the admin token, so apps can fetch them here.
        let snapshot = shared.load();
        return match snapshot.identity.assertion() {
            Some(assertion) => assertion.jwks_response(request.method()),
            None => json(
                StatusCode::NOT_FOUND,
                serde_json::json!({"error": "not_found", "status": 404}),
            ),
        };
    }
    if !probe {
        if mode == Mode::Probes {
            return json(
                StatusCode::NOT_FOUND,
                serde_json::json!({"error": "not_found", "status": 404}),
            );
        }
        let token = shared.load().server.admin_token.clone();
        if let Some(token) = token
            && !bearer_is(request.headers(), &token)
        {
            let mut response = json(
                StatusCode::UNAUTHORIZED,
                serde_json::json!({"error": "unauthorized", "status": 401}),
            );
            response.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static(r#"Bearer realm="portcullis-admin""#),
            );
            return response;
        }
    }
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/healthz") => json(StatusCode::OK, serde_json::json!({"status": "ok"})),
        (&Method::GET, "/readyz") => {
            let snapshot = shared.load();
            let mut reasons: Vec<String> = snapshot
                .providers
                .iter()
                .filter(|p| !p.ready())
                .map(|p| format!("provider {} has no keys", p.name))
                .collect();
            if draining.load(Ordering::Relaxed) {
                reasons.push("draining".into());
            }
            if reasons.is_empty() {
                json(
                    StatusCode::OK,
                    serde_json::json!({"status": "ready", "config": snapshot.config_hash}),
                )
            } else {
                json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    serde_json::json!({"status": "not_ready", "reasons": reasons}),
                )
            }
        }
        (&Method::GET, "/metrics") => {
            let text = shared.load().render_metrics();
            let mut response = Response::new(Full::new(Bytes::from(text)));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            response
        }
        (&Method::POST, "/revoke") => revoke(request, shared).await,
        (&Method::POST, "/reload") => match crate::reload::reload(shared).await {
            Ok(hash) => json(
                StatusCode::OK,
                serde_json::json!({"status": "reloaded", "config": hash}),
            ),
            Err(error) => json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"error": error, "status": 400}),
            ),
        },
        _ => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "not_found", "status": 404}),
        ),
    }
}

/// `POST /revoke` with `{"jti": "...", "exp": 1767225600}`: the JWT with this `jti` is
/// refused on every instance until `exp` (the `[redis]` denylist).
async fn revoke(request: Request<Incoming>, shared: &SharedSnapshot) -> Response<Full<Bytes>> {
    use http_body_util::BodyExt;
    let error = |status: StatusCode, code: &str| {
        json(
            status,
            serde_json::json!({"error": code, "status": status.as_u16()}),
        )
    };
    let snapshot = shared.load_full();
    let Some(denylist) = snapshot.denylist.clone() else {
        return error(StatusCode::NOT_FOUND, "no_denylist");
    };
    let body = match http_body_util::Limited::new(request.into_body(), 4096)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
    };
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Revoke {
        jti: String,
        exp: u64,
    }
    let Ok(asked) = serde_json::from_slice::<Revoke>(&body) else {
        return error(StatusCode::BAD_REQUEST, "bad_request");
    };
    let now = crate::auth::unix_now();
    if asked.jti.is_empty() || asked.exp <= now {
        return error(StatusCode::BAD_REQUEST, "bad_request");
    }
    match denylist
        .revoke(crate::revocation::Kind::Jti, "", &asked.jti, asked.exp, now)
        .await
    {
        Ok(()) => {
            tracing::info!(until = asked.exp, "token revoked by jti");
            json(
                StatusCode::OK,
                serde_json::json!({"revoked": "jti", "until": asked.exp}),
            )
        }
        Err(message) => {
            tracing::warn!(error = %message, "revoke failed");
            error(StatusCode::SERVICE_UNAVAILABLE, "redis_unavailable")
        }
    }
}

/// `Authorization: Bearer <token>`, compared in constant time.
fn bearer_is(headers: &http::HeaderMap, token: &str) -> bool {
    // The scheme's name is case-insensitive (RFC 9110 11.1).
    let Some(given) = headers
        .get(http::header::AUTHORIZATION)
        .map(|v| v.as_bytes())
        .filter(|v| v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer "))
        .map(|v| &v[7..])
    else {
        return false;
    };
    let expected = token.as_bytes();
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}
