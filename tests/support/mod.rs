//! Real parts for the integration tests: keys generated at test time, a recording upstream
//! (a small hyper server), and the gateway itself on 127.0.0.1:0 listeners.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub mod oidc;
pub mod pki;

pub const ISSUER: &str = "https://issuer.test";
pub const AUDIENCE: &str = "app";
pub const HS_SECRET: &str = "test-hmac-secret-that-is-64-bytes-long-for-hs512-0123456789abcdef";

/// Key pairs, generated once per test binary.
pub struct Keys {
    pub rsa: rcgen::KeyPair,
    pub rsa_other: rcgen::KeyPair,
    pub ec256: rcgen::KeyPair,
    pub ec384: rcgen::KeyPair,
    pub ed: rcgen::KeyPair,
    pub tls_cert_pem: String,
    pub tls_key_pem: String,
}

pub fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let tls_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .unwrap();
        let cert = params.self_signed(&tls_key).unwrap();
        Keys {
            rsa: rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap(),
            rsa_other: rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap(),
            ec256: rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
            ec384: rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap(),
            ed: rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap(),
            tls_cert_pem: cert.pem(),
            tls_key_pem: tls_key.serialize_pem(),
        }
    })
}

/// Claims every valid test token has; `extra` overrides or adds.
pub fn claims(extra: Value) -> Value {
    let now = now();
    let mut base = json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": now, "exp": now + 3600,
        "email": "alice@example.com", "groups": ["eng", "ops"],
    });
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            base.as_object_mut().unwrap().remove(k);
        } else {
            base[k] = v.clone();
        }
    }
    base
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token signed with the test key of `alg`'s family.
pub fn token(alg: Algorithm, claims: &Value) -> String {
    token_with(alg, claims, None, &signing_key(alg))
}

pub fn signing_key(alg: Algorithm) -> EncodingKey {
    let k = keys();
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            EncodingKey::from_secret(HS_SECRET.as_bytes())
        }
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => EncodingKey::from_rsa_pem(k.rsa.serialize_pem().as_bytes()).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(k.ec256.serialize_pem().as_bytes()).unwrap(),
        Algorithm::ES384 => EncodingKey::from_ec_pem(k.ec384.serialize_pem().as_bytes()).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(k.ed.serialize_pem().as_bytes()).unwrap(),
        other => panic!("no test key for {other:?}"),
    }
}

pub fn token_with(alg: Algorithm, claims: &Value, kid: Option<&str>, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

/// A valid RS256 token for alice.
pub fn valid_token() -> String {
    token(Algorithm::RS256, &claims(json!({})))
}

// ---------------------------------------------------------------------------------------
// The recording upstream.

/// What the upstream received for one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body_len: u64,
    pub trailers: Option<HeaderMap>,
}

impl Seen {
    pub fn header_values(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }
}

/// A small hyper server that records every request and answers 200.
/// Paths: `/slow...` answers after 3 s; `/download/N` streams N bytes; `/drip/MS` streams
/// "first", pauses MS milliseconds, then "second"; anything else
/// answers a short JSON body after reading (and counting) the request body.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub connections: Arc<AtomicUsize>,
    /// HTTPS only: completed TLS handshakes, and those that resumed a session.
    pub handshakes: Arc<AtomicUsize>,
    pub resumed: Arc<AtomicUsize>,
    /// The accept loop and every connection's task (see `stop`).
    tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        Upstream::start_with(None).await
    }

    /// The recording upstream over TLS with `config` (see `pki`).
    pub async fn start_tls(config: Arc<rustls::ServerConfig>) -> Upstream {
        Upstream::start_with(Some(tokio_rustls::TlsAcceptor::from(config))).await
    }

    /// Kills the instance: its listener and every connection, at once (as a crash would).
    pub fn stop(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    /// A new instance on the address of a stopped one, sharing its records.
    pub async fn restart(&self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        let accept = tokio::spawn(accept_loop(
            listener,
            None,
            self.seen.clone(),
            self.connections.clone(),
            (self.handshakes.clone(), self.resumed.clone()),
            self.tasks.clone(),
        ));
        self.tasks.lock().unwrap().push(accept.abort_handle());
    }

    async fn start_with(acceptor: Option<tokio_rustls::TlsAcceptor>) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let handshakes = Arc::new(AtomicUsize::new(0));
        let resumed = Arc::new(AtomicUsize::new(0));
        let tasks = Arc::new(Mutex::new(Vec::new()));
        let accept = tokio::spawn(accept_loop(
            listener,
            acceptor,
            seen.clone(),
            connections.clone(),
            (handshakes.clone(), resumed.clone()),
            tasks.clone(),
        ));
        tasks.lock().unwrap().push(accept.abort_handle());
        Upstream {
            addr,
            seen,
            connections,
            handshakes,
            resumed,
            tasks,
        }
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the upstream received no request")
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<AtomicUsize>,
    (handshakes, resumed): (Arc<AtomicUsize>, Arc<AtomicUsize>),
    tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        connections.fetch_add(1, Ordering::SeqCst);
        let seen = seen.clone();
        let acceptor = acceptor.clone();
        let (handshakes, resumed) = (handshakes.clone(), resumed.clone());
        let task = tokio::spawn(async move {
            let service = service_fn(move |req| record(req, seen.clone()));
            let builder = hyper::server::conn::http1::Builder::new();
            match acceptor {
                None => {
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }
                Some(acceptor) => {
                    let Ok(stream) = acceptor.accept(stream).await else {
                        return;
                    };
                    handshakes.fetch_add(1, Ordering::SeqCst);
                    if stream.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                        resumed.fetch_add(1, Ordering::SeqCst);
                    }
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }
            }
        });
        let mut tasks = tasks.lock().unwrap();
        tasks.retain(|t| !t.is_finished());
        tasks.push(task.abort_handle());
    }
}

type UpBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn record(
    req: Request<Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> Result<Response<UpBody>, Infallible> {
    let (parts, mut body) = req.into_parts();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    if path_and_query.contains("/lazy-reader") {
        // Takes its time before reading the body: the sender's socket buffers fill up.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut body_len = 0u64;
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        match frame.into_data() {
            Ok(data) => body_len += data.len() as u64,
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    seen.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        path_and_query: path_and_query.clone(),
        headers: parts.headers.clone(),
        body_len,
        trailers,
    });
    if let Some((_, query)) = path_and_query.split_once("/redirect?") {
        // An app answering as legacy apps do: a redirect to `to` (often its own internal
        // origin), a session cookie for its root, and a Refresh to the same place.
        let to: String = serde_urlencoded::from_str::<Vec<(String, String)>>(query)
            .unwrap()
            .into_iter()
            .find(|(k, _)| k == "to")
            .map(|(_, v)| v)
            .unwrap();
        let mut response = Response::new(BodyExt::boxed(Full::new(Bytes::new())));
        *response.status_mut() = http::StatusCode::FOUND;
        let h = response.headers_mut();
        h.insert("location", to.parse().unwrap());
        h.insert("refresh", format!("0; url={to}").parse().unwrap());
        h.append(
            "set-cookie",
            "JSESSIONID=abc; Path=/; HttpOnly".parse().unwrap(),
        );
        h.append("set-cookie", "prefs=1; Path=/reports".parse().unwrap());
        return Ok(response);
    }
    if path_and_query.contains("/slow") {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    if let Some((_, ms)) = path_and_query.split_once("/drip/") {
        // "first", a pause of `ms` milliseconds, then "second".
        let pause = Duration::from_millis(ms.parse().unwrap());
        let body = StreamBody::new(futures_util::stream::unfold(0, move |step| async move {
            let data = match step {
                0 => "first",
                1 => {
                    tokio::time::sleep(pause).await;
                    "second"
                }
                _ => return None,
            };
            Some((
                Ok::<_, Infallible>(Frame::data(Bytes::from(data))),
                step + 1,
            ))
        }));
        return Ok(Response::new(BodyExt::boxed(body)));
    }
    if let Some((_, n)) = path_and_query.split_once("/download/") {
        let total: usize = n.parse().unwrap();
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let chunks = (0..total.div_ceil(chunk.len())).map(move |i| {
            let len = chunk.len().min(total - i * chunk.len());
            Ok::<_, Infallible>(Frame::data(chunk.slice(..len)))
        });
        let body = StreamBody::new(futures_util::stream::iter(chunks));
        return Ok(Response::new(BodyExt::boxed(body)));
    }
    let answer = json!({"upstream": "test", "path": path_and_query, "body_len": body_len});
    let mut response = Response::new(BodyExt::boxed(Full::new(Bytes::from(answer.to_string()))));
    response
        .headers_mut()
        .insert("x-upstream", "test".parse().unwrap());
    response
        .headers_mut()
        .insert("connection", "keep-alive, x-secret-hop".parse().unwrap());
    response
        .headers_mut()
        .insert("x-secret-hop", "1".parse().unwrap());
    Ok(response)
}

// ---------------------------------------------------------------------------------------
// The gateway.

/// A gateway running in this process on 127.0.0.1:0.
pub struct Gateway {
    pub shared: portcullis::SharedSnapshot,
    pub admin: Option<SocketAddr>,
    /// The probe-only listener (`server.health`).
    pub health: Option<SocketAddr>,
    /// The forward-auth listener (`[forward_auth] listen`).
    pub forward_auth: Option<SocketAddr>,
    pub http: SocketAddr,
    pub https: Option<SocketAddr>,
    pub dir: tempfile::TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

/// Files the configs can name: rsa.pub.pem, rsa_other.pub.pem, ec256.pub.pem, ec384.pub.pem,
/// ed.pub.pem, hs.secret, tls.crt, tls.key.
pub fn fixture_dir() -> tempfile::TempDir {
    let k = keys();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    write("rsa.pub.pem", &k.rsa.public_key_pem());
    write("rsa_other.pub.pem", &k.rsa_other.public_key_pem());
    write("ec256.pub.pem", &k.ec256.public_key_pem());
    write("ec384.pub.pem", &k.ec384.public_key_pem());
    write("ed.pub.pem", &k.ed.public_key_pem());
    write("hs.secret", &format!("{HS_SECRET}\n"));
    write("tls.crt", &k.tls_cert_pem);
    write("tls.key", &k.tls_key_pem);
    dir
}

/// The standard test config: providers `rsa` (RS*/PS*), `ec` (ES256/ES384), `ed` (EdDSA),
/// `hs` (HS*), all with issuer ISSUER and audience AUDIENCE, upstream `app` = the test
/// upstream, identity headers X-Auth-User/Email/Groups. `routes` is appended as is.
pub fn config(upstream: SocketAddr, routes: &str) -> String {
    format!(
        r#"
[server]
http = "127.0.0.1:0"
https = "127.0.0.1:0"

[tls]
cert = "tls.crt"
key = "tls.key"

[providers.rsa]
issuer = "{ISSUER}"
audiences = ["{AUDIENCE}", "other-app"]
algorithms = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"]
public_keys = ["rsa.pub.pem"]

[providers.ec]
issuer = "{ISSUER}"
audiences = ["{AUDIENCE}"]
algorithms = ["ES256", "ES384"]
public_keys = ["ec256.pub.pem", "ec384.pub.pem"]

[providers.ed]
issuer = "{ISSUER}"
audiences = ["{AUDIENCE}"]
algorithms = ["EdDSA"]
public_keys = ["ed.pub.pem"]

[providers.hs]
issuer = "{ISSUER}"
audiences = ["{AUDIENCE}"]
algorithms = ["HS256", "HS384", "HS512"]
hmac_secret_file = "hs.secret"

[upstreams.app]
url = "http://{upstream}"
timeout = "1s"

[upstreams.echo]
builtin = "echo"

[identity]
headers = {{ "X-Auth-User" = "sub", "X-Auth-Email" = "email", "X-Auth-Groups" = "groups" }}

{routes}
"#
    )
}

/// Routes most tests use: `/public` public, `/api` jwt (all providers), `/admin` jwt with
/// scope admin and role claim, `/cookie` jwt from cookie `at`, `/both` bearer + cookie.
pub const ROUTES: &str = r#"
[[routes]]
name = "public"
path_prefix = "/public"
upstream = "app"
auth = "public"

[[routes]]
name = "api"
path_prefix = "/api"
upstream = "app"
auth = "jwt"

[[routes]]
name = "admin"
path_prefix = "/admin"
upstream = "app"
auth = "jwt"
providers = ["rsa"]
[routes.require]
scopes = ["admin"]
claims = { role = ["owner", "admin"] }

[[routes]]
name = "cookie"
path_prefix = "/cookie"
upstream = "app"
auth = "jwt"
providers = ["rsa"]
token_sources = ["cookie:at"]

[[routes]]
name = "both"
path_prefix = "/both"
upstream = "app"
auth = "jwt"
token_sources = ["bearer", "cookie:at"]
"#;

impl Gateway {
    /// Starts the gateway on `config_text` (written into a fixture dir).
    pub async fn start(config_text: &str) -> Gateway {
        Gateway::try_start(config_text)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like `start`, but returns the error when the gateway refuses to start.
    pub async fn try_start(config_text: &str) -> Result<Gateway, String> {
        let dir = fixture_dir();
        let path: PathBuf = dir.path().join("portcullis.toml");
        std::fs::write(&path, config_text).unwrap();
        let snapshot = portcullis::config::load(path.clone()).map_err(|e| e.to_string())?;
        let listeners = portcullis::Listeners::bind(&snapshot.server).await.unwrap();
        let (http, https) = (listeners.http_addr().unwrap(), listeners.https_addr());
        let admin = listeners.admin_addr();
        let health = listeners.health_addr();
        let forward_auth = listeners.forward_auth_addr();
        let shared = snapshot.shared();
        let (tx, rx) = oneshot::channel::<()>();
        let mut task = tokio::spawn(portcullis::run(listeners, shared.clone(), async {
            let _ = rx.await;
        }));
        // `run` fetches remote keys before serving: wait until it serves or fails.
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if task.is_finished() {
                return match (&mut task).await {
                    Ok(Ok(())) => Err("run returned".into()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
            }
            // A target refused before routing: never reaches an upstream.
            let probe = raw_request(
                http,
                b"GET /%00 HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n",
            );
            if tokio::time::timeout(Duration::from_millis(300), probe)
                .await
                .is_ok_and(|a| a.starts_with("HTTP/1.1"))
            {
                break;
            }
        }
        Ok(Gateway {
            shared,
            admin,
            health,
            forward_auth,
            http,
            https,
            dir,
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    /// The standard config with `ROUTES` in front of `upstream`.
    pub async fn standard(upstream: &Upstream) -> Gateway {
        Gateway::start(&config(upstream.addr, ROUTES)).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    pub fn https_url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.https.unwrap().port())
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("portcullis.toml")
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin.expect("no admin listener"))
    }

    /// Starts the drain (like SIGTERM) without waiting; `stopped` waits for its end.
    pub fn begin_stop(&mut self) {
        let _ = self.shutdown.take().unwrap().send(());
    }

    pub async fn stopped(mut self, within: Duration) -> std::io::Result<()> {
        let task = self.task.take().unwrap();
        tokio::time::timeout(within, task)
            .await
            .expect("drain took too long")
            .unwrap()
    }

    /// Stops accepting and drains; returns when `run` returned.
    pub async fn stop(mut self) {
        let _ = self.shutdown.take().unwrap().send(());
        let task = self.task.take().unwrap();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// The standard config with `server_extra` lines under [server] and extra routes.
pub fn config_with(upstream: &Upstream, server_extra: &str, routes: &str) -> String {
    config(upstream.addr, &format!("{ROUTES}\n{routes}")).replace(
        "https = \"127.0.0.1:0\"",
        &format!("https = \"127.0.0.1:0\"\n{server_extra}"),
    )
}

/// Reads until the peer closes or `limit` passes; returns what came and when it ended.
pub async fn read_until_closed(
    stream: &mut tokio::net::TcpStream,
    limit: Duration,
) -> (String, Option<Duration>) {
    use tokio::io::AsyncReadExt;
    let started = std::time::Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return (
                    String::from_utf8_lossy(&out).into(),
                    Some(started.elapsed()),
                );
            }
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&out).into(), None),
        }
    }
}

/// A plain HTTP/1.1 client (no connection reuse surprises: one pool per test).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// A client trusting the test TLS certificate, resolving localhost to 127.0.0.1.
pub fn tls_client(gateway: &Gateway, http2_only: bool) -> reqwest::Client {
    let cert = reqwest::Certificate::from_pem(keys().tls_cert_pem.as_bytes()).unwrap();
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([cert])
        .resolve("localhost", gateway.https.unwrap());
    if http2_only {
        builder = builder.http2_prior_knowledge();
    } else {
        builder = builder.http1_only();
    }
    builder.build().unwrap()
}

/// Sends raw bytes on a fresh connection and returns everything the gateway answered
/// until it closed the connection or 2 s passed.
pub async fn raw_request(addr: SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The status code of the first response in a raw answer.
pub fn raw_status(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"))
}

/// Asserts a JSON error body of the given status.
pub async fn assert_error(response: reqwest::Response, status: u16, code: &str) {
    assert_eq!(response.status().as_u16(), status);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({"error": code, "status": status}));
}

/// Runs `f` with an executor for body streams.
pub fn executor() -> TokioExecutor {
    TokioExecutor::new()
}

// ---------------------------------------------------------------------------------------
// A misbehaving upstream, speaking raw TCP.

/// Answers by the last path segment: `close` closes without a word; `garbage` sends a non-HTTP
/// line; `truncate` promises 1000 body bytes, sends 10 and closes; `stall-body` sends the head
/// and 10 bytes, then goes silent for 10 s; `switch` (101), `two-lengths`, `huge-head` (70 KB),
/// `bad-chunk` (then silent), `silent` (reads nothing more, answers nothing), `reason` (a
/// custom reason phrase), `interim` (a 103 before the 200).
pub async fn bad_upstream() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head).into_owned();
                let path = text.split(' ').nth(1).unwrap_or("").to_owned();
                const PARTIAL: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789";
                // (what to send, then hold the connection silent for 10 s)
                let (answer, hold): (Vec<u8>, bool) = match path.rsplit('/').next().unwrap_or("") {
                    "garbage" => (b"I AM NOT HTTP\r\n\r\n".to_vec(), false),
                    "truncate" => (PARTIAL.to_vec(), false),
                    "stall-body" => (PARTIAL.to_vec(), true),
                    "switch" => (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n".to_vec(), false),
                    "two-lengths" => (
                        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!".to_vec(),
                        false,
                    ),
                    "huge-head" => (
                        format!("HTTP/1.1 200 OK\r\nX-Big: {}\r\n\r\n", "v".repeat(70 * 1024)).into_bytes(),
                        false,
                    ),
                    "bad-chunk" => (
                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n".to_vec(),
                        true,
                    ),
                    // Reads nothing more, answers nothing, keeps the connection open.
                    "silent" => (Vec::new(), true),
                    "reason" => (b"HTTP/1.1 200 Fine Thanks\r\nContent-Length: 2\r\n\r\nok".to_vec(), false),
                    "interim" => (
                        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                            .to_vec(),
                        false,
                    ),
                    // "close" and anything else: closed without a word.
                    _ => (Vec::new(), false),
                };
                let _ = stream.write_all(&answer).await;
                if hold {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                }
            });
        }
    });
    addr
}

// ---------------------------------------------------------------------------------------
// A real JWKS / OpenID discovery server whose key set the test changes.

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum IdpMode {
    Normal,
    /// Drops every connection without answering.
    Down,
    /// Answers the JWKS with invalid JSON.
    Garbage,
    /// Answers the JWKS with JSON that is not a key set.
    WrongContent,
    /// Answers the JWKS with a 5 MiB body.
    Huge,
}

pub struct IdpState {
    pub keys: Vec<Value>,
    pub mode: IdpMode,
    pub issuer: String,
    pub max_age: Option<u64>,
}

pub struct Idp {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<IdpState>>,
    pub jwks_fetches: Arc<AtomicUsize>,
    pub discovery_fetches: Arc<AtomicUsize>,
}

/// The public JWK of a test key, with `kid`.
pub fn jwk(alg: Algorithm, kid: &str) -> Value {
    jwk_of(&signing_key(alg), alg, kid)
}

pub fn jwk_of(key: &EncodingKey, alg: Algorithm, kid: &str) -> Value {
    let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(key, alg).unwrap();
    jwk.common.key_id = Some(kid.to_owned());
    serde_json::to_value(jwk).unwrap()
}

impl Idp {
    pub async fn start(keys: Vec<Value>) -> Idp {
        Idp::start_with(keys, false).await
    }

    /// With `tls`, the IdP serves HTTPS with the test certificate (for `ca_file`).
    pub async fn start_with(keys: Vec<Value>, tls: bool) -> Idp {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let scheme = if tls { "https" } else { "http" };
        let acceptor = tls.then(|| {
            let k = keys_pem_pair();
            let mut config = (*portcullis::tls::server_config(&k.0, &k.1, None).unwrap()).clone();
            config.alpn_protocols = vec![b"http/1.1".to_vec()]; // this IdP speaks HTTP/1.1 only
            tokio_rustls::TlsAcceptor::from(Arc::new(config))
        });
        let state = Arc::new(Mutex::new(IdpState {
            keys,
            mode: IdpMode::Normal,
            issuer: format!("{scheme}://{addr}"),
            max_age: None,
        }));
        let jwks_fetches = Arc::new(AtomicUsize::new(0));
        let discovery_fetches = Arc::new(AtomicUsize::new(0));
        let (st, jf, df) = (
            state.clone(),
            jwks_fetches.clone(),
            discovery_fetches.clone(),
        );
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (st, jf, df) = (st.clone(), jf.clone(), df.clone());
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (st, jf, df) = (st.clone(), jf.clone(), df.clone());
                        async move { idp_answer(req, addr, scheme, &st, &jf, &df) }
                    });
                    let builder = hyper::server::conn::http1::Builder::new();
                    match acceptor {
                        None => {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = builder
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await;
                            }
                        }
                    }
                });
            }
        });
        Idp {
            addr,
            state,
            jwks_fetches,
            discovery_fetches,
        }
    }

    pub fn jwks_url(&self) -> String {
        format!("{}/jwks", self.issuer())
    }

    /// The issuer the IdP was started with (its base URL).
    pub fn issuer(&self) -> String {
        let issuer = self.state.lock().unwrap().issuer.clone();
        if issuer.starts_with("http") && issuer.contains(&self.addr.to_string()) {
            issuer
        } else {
            format!("http://{}", self.addr)
        }
    }

    pub fn set_keys(&self, keys: Vec<Value>) {
        self.state.lock().unwrap().keys = keys;
    }

    pub fn set_mode(&self, mode: IdpMode) {
        self.state.lock().unwrap().mode = mode;
    }

    pub fn fetches(&self) -> usize {
        self.jwks_fetches.load(Ordering::SeqCst)
    }
}

fn idp_answer(
    req: Request<Incoming>,
    addr: SocketAddr,
    scheme: &str,
    state: &Mutex<IdpState>,
    jwks_fetches: &AtomicUsize,
    discovery_fetches: &AtomicUsize,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let state = state.lock().unwrap();
    if state.mode == IdpMode::Down {
        return Err(std::io::Error::other("down"));
    }
    let mut response = Response::new(Full::new(Bytes::new()));
    let body = match req.uri().path() {
        "/.well-known/openid-configuration" => {
            discovery_fetches.fetch_add(1, Ordering::SeqCst);
            json!({"issuer": state.issuer, "jwks_uri": format!("{scheme}://{addr}/jwks")})
                .to_string()
                .into_bytes()
        }
        "/jwks" => {
            jwks_fetches.fetch_add(1, Ordering::SeqCst);
            if let Some(max_age) = state.max_age {
                response.headers_mut().insert(
                    "cache-control",
                    format!("public, max-age={max_age}").parse().unwrap(),
                );
            }
            match state.mode {
                IdpMode::Garbage => b"{\"keys\": [".to_vec(),
                IdpMode::WrongContent => b"<html>maintenance</html>".to_vec(),
                IdpMode::Huge => {
                    let mut big = b"{\"keys\": [], \"pad\": \"".to_vec();
                    big.resize(5 << 20, b'a');
                    big
                }
                _ => json!({ "keys": state.keys }).to_string().into_bytes(),
            }
        }
        _ => {
            *response.status_mut() = http::StatusCode::NOT_FOUND;
            Vec::new()
        }
    };
    *response.body_mut() = Full::new(Bytes::from(body));
    Ok(response)
}

/// The test TLS certificate and key as files (kept for the life of the process).
fn keys_pem_pair() -> (PathBuf, PathBuf) {
    static FILES: OnceLock<(tempfile::TempDir, PathBuf, PathBuf)> = OnceLock::new();
    let (_, cert, key) = FILES.get_or_init(|| {
        let dir = fixture_dir();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        (dir, cert, key)
    });
    (cert.clone(), key.clone())
}

// ---------------------------------------------------------------------------------------
// A WebSocket app (tokio-tungstenite): records each handshake, echoes every message.

pub struct WsApp {
    pub addr: SocketAddr,
    /// The handshake requests it accepted: path and headers.
    pub handshakes: Arc<Mutex<Vec<(String, HeaderMap)>>>,
    /// Connections whose socket has ended.
    pub closed: Arc<AtomicUsize>,
}

impl WsApp {
    // tungstenite's handshake callback returns its error as a whole response.
    #[allow(clippy::result_large_err)]
    pub async fn start() -> WsApp {
        use futures_util::{SinkExt, StreamExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handshakes = Arc::new(Mutex::new(Vec::new()));
        let closed = Arc::new(AtomicUsize::new(0));
        let (seen, ended) = (handshakes.clone(), closed.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (seen, ended) = (seen.clone(), ended.clone());
                tokio::spawn(async move {
                    let record =
                        |request: &tokio_tungstenite::tungstenite::handshake::server::Request,
                         response| {
                            seen.lock()
                                .unwrap()
                                .push((request.uri().to_string(), request.headers().clone()));
                            Ok(response)
                        };
                    let config =
                        tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
                            .max_message_size(Some(16 << 20))
                            .max_frame_size(Some(16 << 20));
                    if let Ok(mut ws) = tokio_tungstenite::accept_hdr_async_with_config(
                        stream,
                        record,
                        Some(config),
                    )
                    .await
                    {
                        while let Some(Ok(message)) = ws.next().await {
                            if message.is_close() {
                                break;
                            }
                            if (message.is_text() || message.is_binary())
                                && ws.send(message).await.is_err()
                            {
                                break;
                            }
                        }
                    }
                    ended.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        WsApp {
            addr,
            handshakes,
            closed,
        }
    }

    pub fn handshakes(&self) -> Vec<(String, HeaderMap)> {
        self.handshakes.lock().unwrap().clone()
    }
}

pub type WsClient =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a WebSocket to `url` (`ws://...`) with extra handshake `headers`; the error is
/// the status the gateway answered instead of 101 (0 when there was no answer).
pub async fn ws_connect(url: &str, headers: &[(&str, &str)]) -> Result<WsClient, u16> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = url.into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(16 << 20))
        .max_frame_size(Some(16 << 20));
    match tokio_tungstenite::connect_async_with_config(request, Some(config), false).await {
        Ok((ws, response)) => {
            assert_eq!(response.status(), 101);
            Ok(ws)
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(_) => Err(0),
    }
}

/// A rustls client trusting the test certificate, with rustls' in-memory session store:
/// connections made with one config resume each other's sessions.
pub fn resuming_tls_client() -> std::sync::Arc<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(keys().tls_cert_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    std::sync::Arc::new(config)
}

/// One HTTP/1.1 `GET path` (Connection: close) over a new TLS connection to `addr`, read to
/// the end (TLS 1.3 tickets come after the handshake); the status line and how the
/// handshake went.
pub async fn tls_get(
    addr: SocketAddr,
    config: std::sync::Arc<rustls::ClientConfig>,
    path: &str,
) -> (String, rustls::HandshakeKind) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap();
    let kind = tls.get_ref().1.handshake_kind().unwrap();
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response);
    (text.lines().next().unwrap_or_default().to_owned(), kind)
}
