//! RFC 7662 introspection: opaque tokens checked at the issuer's endpoint, against the real
//! OpenID provider (oidc-provider's /token/introspection) and against an endpoint that
//! fails, hangs, or answers slowly (single-flight).

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::support::oidc::*;
use crate::support::*;

/// Provider `opaque` (introspection only, answers cached `cache_ttl`) and routes `/read`
/// and `/write`.
fn provider(issuer: &str, url: &str, secret_file: &std::path::Path, cache_ttl: &str) -> String {
    format!(
        r#"
[providers.opaque]
issuer = "{issuer}"
audiences = ["crm"]
fetch_timeout = "1s"
introspection = {{ url = "{url}", client_id = "gateway", client_secret_file = {secret:?}, cache_ttl = "{cache_ttl}", negative_ttl = "2s" }}

[[routes]]
name = "read"
path_prefix = "/read"
upstream = "app"
auth = "jwt"
providers = ["opaque"]
[routes.require]
scopes = ["crm.read"]
claims = {{ client_id = "svc" }}

[[routes]]
name = "write"
path_prefix = "/write"
upstream = "app"
auth = "jwt"
providers = ["opaque", "rsa"]
[routes.require]
scopes = ["crm.write"]
"#,
        secret = secret_file.display().to_string()
    )
}

fn secret_file() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("introspection.secret");
    std::fs::write(&path, CLIENT_SECRET).unwrap();
    (dir, path)
}

async fn get(gw: &Gateway, path: &str, token: &str) -> reqwest::Response {
    client()
        .get(gw.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn opaque_tokens_of_the_real_provider_pass_until_revoked() {
    let idp = OidcIdp::start().await;
    idp.register_service("gateway", "crm.read").await;
    idp.register_service("svc", "crm.read crm.write").await;
    let (_dir, secret) = secret_file();
    let upstream = Upstream::start().await;
    let url = format!("{}/token/introspection", idp.issuer);
    let text = config(upstream.addr, &provider(&idp.issuer, &url, &secret, "1s"));
    let gw = Gateway::start(&text).await;

    let summaries = portcullis::check::route_summaries(&gw.shared.load());
    let read = summaries
        .iter()
        .find(|l| l.starts_with("route read:"))
        .unwrap();
    assert!(
        read.contains("jwt from bearer via opaque (opaque tokens introspected)"),
        "{read}"
    );
    let read_only = idp.service_token("svc", "crm.read").await;
    assert!(
        !read_only.contains('.'),
        "expected an opaque token: {read_only}"
    );
    let response = get(&gw, "/read/x", &read_only).await;
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    assert!(upstream.last().header_values("authorization").is_empty());
    // Its scope is checked like a JWT's: no crm.write.
    assert_error(
        get(&gw, "/write/x", &read_only).await,
        403,
        "insufficient_scope",
    )
    .await;
    let both = idp.service_token("svc", "crm.read crm.write").await;
    assert_eq!(get(&gw, "/write/x", &both).await.status(), 200);
    // A JWT on the same route still goes the signature's way.
    assert_eq!(
        get(
            &gw,
            "/write/x",
            &token(
                jsonwebtoken::Algorithm::RS256,
                &claims(serde_json::json!({"scope": "crm.write"}))
            )
        )
        .await
        .status(),
        200
    );
    // A token the issuer does not know: inactive.
    assert_error(
        get(&gw, "/read/x", "2YotnFZFEjr1zCsicMWpAA").await,
        401,
        "invalid_token",
    )
    .await;
    // Revoked at the issuer: refused once the cached answer (1 s) is over.
    idp.revoke("svc", &read_only).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_error(get(&gw, "/read/x", &read_only).await, 401, "invalid_token").await;
    gw.stop().await;
}

/// An introspection endpoint of our own: `mode` 0 answers active (after `delay`), 1 fails
/// with 500, 2 never answers, 3 answers inactive. Counts the requests.
struct Endpoint {
    url: String,
    mode: Arc<AtomicU8>,
    calls: Arc<AtomicUsize>,
}

async fn endpoint(delay: Duration) -> Endpoint {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/introspect", listener.local_addr().unwrap());
    let mode = Arc::new(AtomicU8::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    let (m, c) = (mode.clone(), calls.clone());
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (m, c) = (m.clone(), c.clone());
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let (m, c) = (m.clone(), c.clone());
                    async move {
                        c.fetch_add(1, Ordering::SeqCst);
                        // The gateway authenticates as its client.
                        let basic = request.headers()["authorization"]
                            .to_str()
                            .unwrap()
                            .to_owned();
                        assert!(basic.starts_with("Basic "), "{basic}");
                        let (status, body) = match m.load(Ordering::SeqCst) {
                            0 => {
                                tokio::time::sleep(delay).await;
                                (
                                    200,
                                    r#"{"active":true,"sub":"svc-1","scope":"crm.read crm.write","client_id":"svc"}"#,
                                )
                            }
                            1 => (500, "{}"),
                            2 => {
                                tokio::time::sleep(Duration::from_secs(3600)).await;
                                (200, "{}")
                            }
                            _ => (200, r#"{"active":false}"#),
                        };
                        Ok::<_, std::convert::Infallible>(
                            Response::builder()
                                .status(status)
                                .header("content-type", "application/json")
                                .body(Full::new(bytes::Bytes::from(body)))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Endpoint { url, mode, calls }
}

#[tokio::test]
async fn an_endpoint_that_fails_or_hangs_is_503_and_one_that_is_slow_is_asked_once() {
    let ep = endpoint(Duration::from_millis(300)).await;
    let (_dir, secret) = secret_file();
    let upstream = Upstream::start().await;
    let text = config(
        upstream.addr,
        &provider("https://idp.example", &ep.url, &secret, "60s"),
    );
    let gw = Gateway::start(&text).await;

    // Twenty concurrent requests with one new token: one introspection.
    let requests = (0..20).map(|_| get(&gw, "/read/x", "opaque-token-1"));
    for response in futures_util::future::join_all(requests).await {
        assert_eq!(response.status(), 200);
    }
    assert_eq!(ep.calls.load(Ordering::SeqCst), 1);
    assert_eq!(upstream.last().header_values("x-auth-user"), ["svc-1"]);
    // Cached: no new call within cache_ttl.
    assert_eq!(get(&gw, "/read/x", "opaque-token-1").await.status(), 200);
    assert_eq!(ep.calls.load(Ordering::SeqCst), 1);

    // The endpoint fails: a token not in the cache is 503, and the failure is not cached.
    ep.mode.store(1, Ordering::SeqCst);
    let before = upstream.count();
    assert_error(
        get(&gw, "/read/x", "opaque-token-2").await,
        503,
        "idp_unavailable",
    )
    .await;
    assert_error(
        get(&gw, "/read/x", "opaque-token-2").await,
        503,
        "idp_unavailable",
    )
    .await;
    assert_eq!(ep.calls.load(Ordering::SeqCst), 3);
    // It hangs: 503 after fetch_timeout, not a hung request.
    ep.mode.store(2, Ordering::SeqCst);
    let started = Instant::now();
    assert_error(
        get(&gw, "/read/x", "opaque-token-3").await,
        503,
        "idp_unavailable",
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        upstream.count(),
        before,
        "a request reached the app without an answer"
    );
    // Inactive answers are cached briefly (negative_ttl 2 s).
    ep.mode.store(3, Ordering::SeqCst);
    let calls = ep.calls.load(Ordering::SeqCst);
    assert_error(
        get(&gw, "/read/x", "opaque-token-4").await,
        401,
        "invalid_token",
    )
    .await;
    assert_error(
        get(&gw, "/read/x", "opaque-token-4").await,
        401,
        "invalid_token",
    )
    .await;
    assert_eq!(ep.calls.load(Ordering::SeqCst), calls + 1);
    gw.stop().await;
}

#[tokio::test]
async fn with_introspect_jwts_a_valid_jwt_the_issuer_calls_inactive_is_refused() {
    let ep = endpoint(Duration::ZERO).await;
    let (_dir, secret) = secret_file();
    let upstream = Upstream::start().await;
    let mut text = config(upstream.addr, &provider(ISSUER, &ep.url, &secret, "60s"));
    // The standard RS256 provider, introspecting its JWTs at the same endpoint.
    text = text.replace(
        "public_keys = [\"rsa.pub.pem\"]",
        &format!("public_keys = [\"rsa.pub.pem\"]\nintrospect_jwts = true\nintrospection = {{ url = \"{}\", client_id = \"gateway\", client_secret_file = {:?}, cache_ttl = \"0s\" }}", ep.url, secret.display().to_string()),
    );
    let gw = Gateway::start(&text).await;
    let jwt = token(
        jsonwebtoken::Algorithm::RS256,
        &claims(serde_json::json!({"scope": "crm.write"})),
    );
    assert_eq!(get(&gw, "/write/x", &jwt).await.status(), 200);
    assert_eq!(ep.calls.load(Ordering::SeqCst), 1);
    ep.mode.store(3, Ordering::SeqCst);
    assert_error(get(&gw, "/write/x", &jwt).await, 401, "invalid_token").await;
    gw.stop().await;
}
