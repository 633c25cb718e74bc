//! Legacy-grade request security (#19): every reading of a path a legacy backend can make
//! lands on the authorized route (I9), one credential per request (I10), typed claims
//! carried faithfully, and connections that cannot be held or poisoned (I11). Raw sockets
//! where a client library would normalise the bytes; the recording upstream everywhere.

use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::Algorithm;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

/// The shipped default config's routes (`config/portcullis.toml`) in front of the
/// recording upstream: `/public` public, `/admin` any token with scope `admin`, everything
/// else any token, as Bearer or in cookie `access_token`.
const DEFAULT_ROUTES: &str = r#"
[[routes]]
name = "public"
path_prefix = "/public"
upstream = "app"
auth = "public"

[[routes]]
name = "admin"
path_prefix = "/admin"
upstream = "app"
auth = "jwt"
[routes.require]
scopes = ["admin"]

[[routes]]
name = "app"
path_prefix = "/"
upstream = "app"
auth = "jwt"
providers = ["rsa"]
token_sources = ["bearer", "cookie:access_token"]
"#;

fn get(path: &str, headers: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\n{headers}Connection: close\r\n\r\n")
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}\r\n")
}

fn admin_token() -> String {
    token(Algorithm::RS256, &claims(json!({"scope": "admin"})))
}

/// The JSON error code of a raw answer.
fn error_code(answer: &str) -> String {
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

async fn expect(gw: &Gateway, raw: &str, status: u16, code: &str) {
    let answer = raw_request(gw.http, raw.as_bytes()).await;
    assert_eq!(raw_status(&answer), status, "{raw:?}: {answer}");
    if !code.is_empty() {
        assert_eq!(error_code(&answer), code, "{raw:?}: {answer}");
    }
}

#[tokio::test]
async fn the_issue_table_every_reading_of_admin_is_refused_with_a_plain_token() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config(upstream.addr, DEFAULT_ROUTES)).await;
    let alice = bearer(&valid_token());
    expect(&gw, &get("/admin/users", &alice), 403, "insufficient_scope").await;
    for path in [
        // Tomcat, Jetty, Spring strip the parameter: /admin/users.
        "/admin;x/users",
        "/admin;jsessionid=1/users",
        // IIS, ASP.NET, Express match without case.
        "/ADMIN/users",
        "/Admin/users",
        // Decoded once, then a parameter: /admin;x/users, then /admin/users.
        "/admin%3Bx/users",
        "/admin%3bx/users",
        // Decoded twice.
        "/public/%252e%252e/admin/users",
        "/public/..%252Fadmin/users",
        "/public/..%255Cadmin/users",
        "/%2541dmin/users",
        // Combinations: folded after decoding, parameter after folding.
        "/ADMIN;x/users",
        "/%41DMIN%3Bx/users",
    ] {
        expect(&gw, &get(path, &alice), 400, "ambiguous_path").await;
    }
    // The same token with the admin scope reaches /admin as it always did.
    expect(&gw, &get("/admin/users", &bearer(&admin_token())), 200, "").await;
    assert_eq!(upstream.count(), 1);
    assert_eq!(upstream.last().path_and_query, "/admin/users");
}

#[tokio::test]
async fn ordinary_requests_still_pass_on_the_default_routes() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config(upstream.addr, DEFAULT_ROUTES)).await;
    let alice = bearer(&valid_token());
    let admin = bearer(&admin_token());
    for (path, auth) in [
        ("/", &alice),
        ("/hello", &alice),
        ("/hello/", &alice),
        ("/hello?name=World&x=%2F", &alice),
        ("/reports/Q1%202026.pdf", &alice),
        ("/Reports/Q1.pdf", &alice),
        ("/caf%C3%A9/men%C3%BC", &alice),
        ("/search?q=a;b&sort=Name", &alice),
        ("/static/app.js?v=1.2.3", &alice),
        ("/app/page;jsessionid=ABC123", &alice),
        ("/100%25/done", &alice),
        ("/public/", &alice),
        ("/public/Readme.md", &alice),
        ("/public/docs/", &alice),
        ("/public/a%20b?c=d", &alice),
        ("/admin/", &admin),
        ("/admin/Users/42", &admin),
    ] {
        let answer = raw_request(gw.http, get(path, auth).as_bytes()).await;
        assert_eq!(raw_status(&answer), 200, "{path}: {answer}");
        assert_eq!(upstream.last().path_and_query, path, "{path}");
    }
}

#[tokio::test]
async fn encoded_slashes_exact_paths_and_parameters_read_as_the_app_reads_them() {
    let upstream = Upstream::start().await;
    let routes = r#"
[[routes]]
name = "files"
path_prefix = "/files"
upstream = "app"
auth = "public"
allow_encoded_slash = true

[[routes]]
name = "files-admin"
path_prefix = "/files/admin"
upstream = "app"
auth = "jwt"

[[routes]]
name = "root"
path_prefix = "/"
upstream = "app"
auth = "public"

[[routes]]
name = "exact"
path = "/x"
upstream = "app"
auth = "jwt"

[[routes]]
name = "shop"
path_prefix = "/shop"
upstream = "app"
auth = "jwt"
allow_path_params = true
"#;
    let gw = Gateway::start(&config(upstream.addr, routes)).await;
    let alice = bearer(&valid_token());
    // A WSGI app or an nginx location decodes %2F: /files/admin/secret is protected.
    expect(
        &gw,
        &get("/files/admin%2Fsecret", ""),
        400,
        "ambiguous_path",
    )
    .await;
    expect(&gw, &get("/files/a%2Fb", ""), 200, "").await;
    assert_eq!(upstream.last().path_and_query, "/files/a%2Fb");
    // Spring and Express serve /x/ as /x.
    expect(&gw, &get("/x/", ""), 400, "ambiguous_path").await;
    expect(&gw, &get("/x", ""), 401, "unauthorized").await;
    expect(&gw, &get("/x", &alice), 200, "").await;
    // A servlet app's ;jsessionid: matched without it, forwarded with it.
    expect(&gw, &get("/shop;jsessionid=AB12/cart", ""), 401, "").await;
    expect(&gw, &get("/shop;jsessionid=AB12/cart", &alice), 200, "").await;
    assert_eq!(upstream.last().path_and_query, "/shop;jsessionid=AB12/cart");
    assert_eq!(upstream.last().header_values("x-auth-user"), ["alice"]);
    // Without the opt-in, a parameter that changes the route is refused.
    expect(
        &gw,
        &get("/files;x/admin/secret", ""),
        400,
        "ambiguous_path",
    )
    .await;
}

#[tokio::test]
async fn path_semantics_narrow_the_readings_to_the_apps_own() {
    let upstream = Upstream::start().await;
    let alice = bearer(&valid_token());
    let with = |semantics: &str| {
        config(upstream.addr, DEFAULT_ROUTES).replace(
            "timeout = \"1s\"",
            &format!("timeout = \"1s\"\npath_semantics = \"{semantics}\""),
        )
    };
    // A servlet container is case-sensitive: /ADMIN is not /admin there.
    let gw = Gateway::start(&with("servlet")).await;
    expect(&gw, &get("/ADMIN/users", &alice), 200, "").await;
    assert_eq!(upstream.last().path_and_query, "/ADMIN/users");
    expect(&gw, &get("/admin;x/users", &alice), 400, "ambiguous_path").await;
    drop(gw);
    // IIS keeps ;x in the segment, but folds case and decodes twice.
    let gw = Gateway::start(&with("iis")).await;
    expect(&gw, &get("/admin;x/users", &alice), 200, "").await;
    assert_eq!(upstream.last().path_and_query, "/admin;x/users");
    expect(&gw, &get("/ADMIN/users", &alice), 400, "ambiguous_path").await;
    expect(
        &gw,
        &get("/public/%252e%252e/admin", &alice),
        400,
        "ambiguous_path",
    )
    .await;
    drop(gw);
    let invalid = with("tomcat");
    let error = Gateway::try_start(&invalid).await.err().expect("refused");
    assert!(error.contains("upstreams.app.path_semantics"), "{error}");
}

#[tokio::test]
async fn headers_that_name_another_path_never_reach_the_app() {
    let upstream = Upstream::start().await;
    let routes = r#"
[[routes]]
name = "legacy"
path_prefix = "/legacy"
upstream = "app"
auth = "public"
forward_original_uri = true
"#;
    let gw = Gateway::start(&config_with(&upstream, "", routes)).await;
    let names = [
        "X-Original-URL",
        "X-Rewrite-URL",
        "X-Original-URI",
        "X-Forwarded-Uri",
        "X-Forwarded-Path",
        "X-Forwarded-Prefix",
        "X-Envoy-Original-Path",
        "X-HTTP-Destination",
    ];
    for name in names {
        for spelling in [
            name.to_owned(),
            name.to_ascii_lowercase(),
            name.replace('-', "_"),
        ] {
            let headers = format!("{spelling}: /admin\r\n{spelling}: /admin/x\r\n");
            expect(&gw, &get("/public/x", &headers), 200, "").await;
            let seen = upstream.last();
            for other in names {
                assert!(
                    seen.header_values(other).is_empty()
                        && seen.header_values(&other.replace('-', "_")).is_empty(),
                    "{spelling} reached the app as {other}"
                );
            }
        }
    }
    // A route that asks for it gets the verified target, once.
    expect(
        &gw,
        &get("/legacy/./a?b=1", "X-Original-URL: /admin\r\n"),
        200,
        "",
    )
    .await;
    assert_eq!(
        upstream.last().header_values("x-original-url"),
        ["/legacy/a?b=1"]
    );
}

#[tokio::test]
async fn a_credential_that_was_not_verified_never_reaches_the_app() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config(upstream.addr, DEFAULT_ROUTES)).await;
    let forged = token(
        Algorithm::RS256,
        &claims(json!({"sub": "admin", "scope": "admin"})),
    )
    .replace('.', ".x");
    // The route reads Bearer and the cookie: two different tokens are ambiguous.
    expect(
        &gw,
        &get(
            "/hello",
            &format!(
                "{}Cookie: access_token={forged}\r\n",
                bearer(&valid_token())
            ),
        ),
        400,
        "ambiguous_credential",
    )
    .await;
    expect(
        &gw,
        &get(
            "/hello",
            &format!(
                "Cookie: access_token={}; access_token={forged}\r\n",
                valid_token()
            ),
        ),
        400,
        "ambiguous_credential",
    )
    .await;
    // /admin reads Bearer only: the cookie is not its credential, and is removed.
    expect(
        &gw,
        &get(
            "/admin/x",
            &format!(
                "{}Cookie: theme=dark; access_token={forged}\r\n",
                bearer(&admin_token())
            ),
        ),
        200,
        "",
    )
    .await;
    let seen = upstream.last();
    assert_eq!(seen.header_values("cookie"), ["theme=dark"]);
    assert!(seen.header_values("authorization").is_empty());
    // Public routes forward no credential the config names, and the app's own Basic auth.
    expect(
        &gw,
        &get(
            "/public/x",
            &format!(
                "{}Cookie: access_token={forged}; lang=en\r\n",
                bearer(&forged)
            ),
        ),
        200,
        "",
    )
    .await;
    let seen = upstream.last();
    assert!(seen.header_values("authorization").is_empty());
    assert_eq!(seen.header_values("cookie"), ["lang=en"]);
    expect(
        &gw,
        &get("/public/x", "Authorization: Basic dTpw\r\n"),
        200,
        "",
    )
    .await;
    assert_eq!(
        upstream.last().header_values("authorization"),
        ["Basic dTpw"]
    );
    assert_eq!(upstream.count(), 3);
}

#[tokio::test]
async fn a_forwarded_token_is_the_only_credential_forwarded() {
    let upstream = Upstream::start().await;
    let routes = r#"
[[routes]]
name = "passthrough"
path_prefix = "/pass"
upstream = "app"
auth = "jwt"
forward_token = true
"#;
    let gw = Gateway::start(&config_with(&upstream, "", routes)).await;
    let token = valid_token();
    // /cookie reads cookie `at`; /pass reads and forwards Bearer.
    expect(
        &gw,
        &get(
            "/pass/x",
            &format!("{}Cookie: at=forged; x=1\r\n", bearer(&token)),
        ),
        200,
        "",
    )
    .await;
    let seen = upstream.last();
    assert_eq!(
        seen.header_values("authorization"),
        [format!("Bearer {token}")]
    );
    assert_eq!(seen.header_values("cookie"), ["x=1"]);
    expect(
        &gw,
        &get(
            "/cookie/x",
            &format!("Authorization: Bearer forged\r\nCookie: at={token}\r\n"),
        ),
        200,
        "",
    )
    .await;
    let seen = upstream.last();
    assert!(seen.header_values("authorization").is_empty());
    assert!(seen.header_values("cookie").is_empty());
}

#[tokio::test]
async fn authorization_is_parsed_strictly() {
    let upstream = Upstream::start().await;
    let gw = Gateway::standard(&upstream).await;
    let token = valid_token();
    for header in [
        format!("Authorization: Bearer\t{token}\r\n"),
        format!("Authorization: Bearer  {token}\r\n"),
        format!("Authorization: bearer \t{token}\r\n"),
        format!("Authorization: Bearer {token} x\r\n"),
        "Authorization: Bearer\r\n".to_owned(),
    ] {
        expect(&gw, &get("/api", &header), 400, "invalid_request").await;
        // Never a silent fallback to the cookie source (refused as malformed, or as a
        // second credential that differs from the cookie's).
        let both = format!("{header}Cookie: at={token}\r\n");
        expect(&gw, &get("/both", &both), 400, "").await;
    }
    // HTTP/2 carries the value exactly, trailing white space included.
    let client = tls_client(&gw, true);
    let response = client
        .get(gw.https_url("/api"))
        .header("authorization", format!("Bearer {token} "))
        .send()
        .await
        .unwrap();
    assert_error(response, 400, "invalid_request").await;
    expect(&gw, &get("/api", &bearer(&token)), 200, "").await;
    assert_eq!(upstream.count(), 1);
}

#[tokio::test]
async fn registered_claims_of_the_wrong_type_are_refused_and_any_exp_is_safe() {
    let upstream = Upstream::start().await;
    let gw = Gateway::standard(&upstream).await;
    for extra in [
        json!({"sub": ["alice", "admin"]}),
        json!({"sub": 42}),
        json!({"iss": [ISSUER]}),
        json!({"aud": [AUDIENCE, 7]}),
        json!({"exp": (now() + 60).to_string()}),
        json!({"nbf": [0]}),
        json!({"iat": true}),
        json!({"jti": {"id": 1}}),
    ] {
        let token = token(Algorithm::RS256, &claims(extra));
        expect(&gw, &get("/api", &bearer(&token)), 401, "invalid_token").await;
    }
    assert_eq!(upstream.count(), 0);
    // A validly signed token with an absurd expiry is accepted and cached, never a panic.
    for exp in [json!(1e300), json!(1.7976931348623157e308), json!(u64::MAX)] {
        let token = token(Algorithm::RS256, &claims(json!({"exp": exp})));
        for _ in 0..2 {
            expect(&gw, &get("/api", &bearer(&token)), 200, "").await;
        }
    }
    expect(&gw, &get("/api", &bearer(&valid_token())), 200, "").await;
}

#[tokio::test]
async fn a_tls_client_trickling_an_incomplete_record_is_cut_at_the_header_timeout() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config_with(&upstream, "header_read_timeout = \"3s\"", "")).await;
    let mut tls = tls_connect(&gw).await;
    tls.write_all(b"GET /public/x HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tls.read(&mut answer).await.unwrap();
    assert!(answer[..n].starts_with(b"HTTP/1.1 200"));
    // Now the raw socket: the header of a 16 KiB application-data record, then a byte
    // every 300 ms. No plaintext ever arrives, and no request head.
    let started = Instant::now();
    let (tcp, _) = tls.get_mut();
    tcp.write_all(&[0x17, 0x03, 0x03, 0x40, 0x00])
        .await
        .unwrap();
    let closed = loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if tcp.write_all(b"x").await.is_err() {
            break Some(started.elapsed());
        }
        let mut probe = [0u8; 64];
        match tokio::time::timeout(Duration::from_millis(1), tcp.read(&mut probe)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break Some(started.elapsed()),
            _ => {}
        }
        if started.elapsed() > Duration::from_secs(15) {
            break None;
        }
    };
    let closed = closed.expect("the trickling TLS client was never cut");
    assert!(closed < Duration::from_secs(6), "cut after {closed:?}");
}

async fn tls_connect(gw: &Gateway) -> tokio_rustls::client::TlsStream<TcpStream> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(keys().tls_cert_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(gw.https.unwrap()).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await.unwrap()
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_after_the_write_timeout() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config_with(&upstream, "client_write_timeout = \"1s\"", "")).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(65536).unwrap();
    let mut stream = socket.connect(gw.http).await.unwrap();
    let size = 64 << 20;
    stream
        .write_all(format!("GET /public/download/{size} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (got, closed) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert!(closed.is_some(), "the connection was held open");
    assert!(got.len() < size, "the whole answer went out");
    assert!(gw.shared.load().metrics.client_write_timeouts.get() >= 1);
    let metrics = gw.shared.load().render_metrics();
    assert!(
        metrics.contains("portcullis_client_write_timeouts_total 1"),
        "{metrics}"
    );
    // The gateway serves on.
    let response = client().get(gw.url("/public/after")).send().await.unwrap();
    assert_eq!(response.status(), 200);
}

/// An upstream speaking raw HTTP/1.1 by the request line: `HEAD /late` is answered with a
/// head and then, 100 ms later, a whole forged response; `GET /extra` with its answer and a
/// forged response in the same write; `POST /early` with the head and a first chunk at
/// once, the last chunk 600 ms later, never reading the body; `GET /smuggled` (a request
/// that can only come from an unread body) with the forged response, 200 ms late; any
/// other request with `ok` (keep-alive).
async fn poisoning_upstream() -> std::net::SocketAddr {
    const FORGED: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nSECRET";
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let end = loop {
                        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break end + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end);
                    let line = head.lines().next().unwrap_or_default().to_owned();
                    let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec();
                    let written = if line.starts_with("HEAD /late") {
                        let _ = stream
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n")
                            .await;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        stream.write_all(FORGED).await
                    } else if line.starts_with("GET /extra") {
                        stream.write_all(&[&ok[..], FORGED].concat()).await
                    } else if line.starts_with("POST /early") {
                        let _ = stream
                            .write_all(
                                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n",
                            )
                            .await;
                        tokio::time::sleep(Duration::from_millis(600)).await;
                        stream.write_all(b"0\r\n\r\n").await
                    } else if line.starts_with("GET /smuggled") {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        stream.write_all(FORGED).await
                    } else {
                        stream.write_all(&ok).await
                    };
                    if written.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn bytes_the_upstream_sends_unasked_never_reach_another_client() {
    let addr = poisoning_upstream().await;
    let gw = Gateway::start(&config(
        addr,
        r#"
[[routes]]
name = "all"
path_prefix = "/"
upstream = "app"
auth = "public"
"#,
    ))
    .await;
    let http = client();
    let next = || async {
        client()
            .get(gw.url("/next"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    // A late body after HEAD: the pooled connection holds a forged answer.
    let response = http.head(gw.url("/late")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..3 {
        assert_eq!(next().await, "ok");
    }
    // Extra bytes right after an answer.
    let body = http
        .get(gw.url("/extra"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "ok");
    for _ in 0..3 {
        assert_eq!(next().await, "ok");
    }
    let metrics = gw.shared.load().render_metrics();
    assert!(
        metrics.contains(
            r#"portcullis_upstream_errors_total{upstream="app",kind="unsolicited_bytes"} 2"#
        ),
        "{metrics}"
    );
    // An answer whose head came while the request body was still being sent: the app may
    // never have read that body, and here reads it as a request. Its connection is not
    // reused, so the answer to that request cannot reach the next client.
    let smuggled = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut raw = TcpStream::connect(gw.http).await.unwrap();
    raw.write_all(
        format!(
            "POST /early HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            smuggled.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    raw.write_all(&smuggled[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    raw.write_all(&smuggled[10..]).await.unwrap();
    let (answer, _) = read_until_closed(&mut raw, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("ok"), "{answer}");
    for _ in 0..3 {
        assert_eq!(next().await, "ok");
    }
}

/// An upstream that answers the first request on each connection and then closes the
/// connection on the next one without answering (the race with an idle close). Counts
/// requests by method.
async fn closing_upstream() -> (std::net::SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                for round in 0.. {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        let mut chunk = [0u8; 4096];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&buf).into_owned();
                    buf.clear();
                    log.lock()
                        .unwrap()
                        .push(head.split(' ').next().unwrap_or_default().to_owned());
                    if round > 0 {
                        return;
                    }
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .await;
                }
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn put_and_delete_are_never_sent_twice_once_written() {
    let (addr, seen) = closing_upstream().await;
    let gw = Gateway::start(&config(
        addr,
        r#"
[[routes]]
name = "all"
path_prefix = "/"
upstream = "app"
auth = "public"
"#,
    ))
    .await;
    let http = client();
    for (method, again) in [
        (reqwest::Method::GET, true),
        (reqwest::Method::PUT, false),
        (reqwest::Method::DELETE, false),
        (reqwest::Method::OPTIONS, true),
    ] {
        // Fills the pool with a connection the upstream will drop at its next request.
        let warm = http.get(gw.url("/warm")).send().await.unwrap();
        assert_eq!(warm.text().await.unwrap(), "ok");
        seen.lock().unwrap().clear();
        let response = http
            .request(method.clone(), gw.url("/x"))
            .send()
            .await
            .unwrap();
        let sent: Vec<String> = seen.lock().unwrap().clone();
        let times = sent.iter().filter(|m| **m == method.as_str()).count();
        if again {
            assert_eq!(response.status(), 200, "{method}");
            assert_eq!(times, 2, "{method} goes again on a fresh connection");
        } else {
            assert_eq!(response.status(), 502, "{method}");
            assert_eq!(times, 1, "{method} was sent twice");
        }
    }
}

/// The shipped default config itself (`config/portcullis.toml`, its echo upstream and dev
/// key), on free ports: ordinary browser and API requests pass as they did.
#[tokio::test]
async fn the_shipped_default_config_still_serves_ordinary_requests() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(repo.join("config/portcullis.toml"))
        .unwrap()
        .replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace("127.0.0.1:8443", "127.0.0.1:0")
        .replace("\"dev/", &format!("\"{}/config/dev/", repo.display()));
    let gw = Gateway::start(&text).await;
    let key = std::fs::read(repo.join("config/dev/signing.key.pem")).unwrap();
    let claims = json!({
        "iss": "https://portcullis.dev.local", "aud": "echo", "sub": "alice",
        "iat": now(), "exp": now() + 600, "scope": "admin",
    });
    let token = token_with(
        Algorithm::RS256,
        &claims,
        Some("dev-1"),
        &jsonwebtoken::EncodingKey::from_rsa_pem(&key).unwrap(),
    );
    let http = client();
    for path in [
        "/",
        "/hello",
        "/hello/",
        "/hello?name=World&redirect=%2Fhome",
        "/reports/Q1%202026.pdf",
        "/Reports/Q1.pdf",
        "/caf%C3%A9/men%C3%BC",
        "/app/page;jsessionid=ABC123",
        "/static/app.js?v=1.2.3",
        "/public/",
        "/public/Readme.md",
        "/admin/",
        "/admin/users/42",
    ] {
        for cookie in [false, true] {
            let mut request = http.get(gw.url(path));
            request = if cookie && !path.starts_with("/admin") {
                request.header("cookie", format!("access_token={token}"))
            } else {
                request.bearer_auth(&token)
            };
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200, "{path} (cookie: {cookie})");
            let echo: serde_json::Value = response.json().await.unwrap();
            let sent = path.split('?').next().unwrap();
            assert_eq!(echo["path"], sent, "{path}");
        }
    }
    // A browser's form POST from the gateway's own page, with the cookie.
    let response = http
        .post(gw.url("/transfer"))
        .header("cookie", format!("access_token={token}"))
        .header("origin", format!("http://{}", gw.http))
        .header("sec-fetch-site", "same-origin")
        .form(&[("amount", "1")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}
