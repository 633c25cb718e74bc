//! Limits, timeouts and upstream faults: every stall is bounded, nothing hangs.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

#[tokio::test]
async fn bodies_over_the_route_limit_are_413() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config_with(
        &upstream,
        "",
        r#"
[[routes]]
name = "small"
path_prefix = "/small"
upstream = "app"
auth = "public"
max_body_size = "1KiB"
"#,
    ))
    .await;
    // Declared too large: refused before the upstream is contacted.
    let response = client()
        .post(gw.url("/small"))
        .body(vec![b'x'; 2000])
        .send()
        .await
        .unwrap();
    assert_error(response, 413, "payload_too_large").await;
    assert_eq!(upstream.count(), 0);
    // Chunked, discovered while streaming: 413, and the upstream never gets a whole body.
    let answer = raw_request(
        gw.http,
        format!("POST /small HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n800\r\n{}\r\n800\r\n{}\r\n0\r\n\r\n", "x".repeat(0x800), "y".repeat(0x800)).as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&answer), 413, "{answer}");
    assert!(upstream.requests().iter().all(|s| s.body_len < 0x1000));
    // Within the limit: passes; other routes have no limit.
    let response = client()
        .post(gw.url("/small"))
        .body(vec![b'x'; 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = client()
        .post(gw.url("/public"))
        .body(vec![b'x'; 100_000])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(upstream.last().body_len, 100_000);
}

#[tokio::test]
async fn a_slowloris_client_is_cut() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config_with(&upstream, "header_read_timeout = \"1s\"", "")).await;
    let mut stream = TcpStream::connect(gw.http).await.unwrap();
    let started = Instant::now();
    // One byte every 300 ms, never finishing the head.
    let drip = async {
        for byte in b"GET /public HTTP/1.1\r\nHost: t\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaa".iter() {
            if stream.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), drip).await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the connection was not cut"
    );
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config_with(&upstream, "header_read_timeout = \"1s\"", "")).await;
    let mut stream = TcpStream::connect(gw.http).await.unwrap();
    stream
        .write_all(b"GET /public HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let (answer, closed) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let closed = closed.expect("an idle keep-alive connection stayed open");
    assert!(
        closed >= Duration::from_millis(900) && closed < Duration::from_millis(2500),
        "closed after {closed:?}, header_read_timeout is 1 s"
    );
}

#[tokio::test]
async fn a_client_that_connects_and_never_sends_is_cut() {
    let upstream = Upstream::start().await;
    // Accepted at once (no defer_accept), so the head timeout alone is measured.
    let gw = Gateway::start(&config_with(
        &upstream,
        "header_read_timeout = \"1s\"\ndefer_accept = \"0s\"",
        "",
    ))
    .await;
    let mut stream = TcpStream::connect(gw.http).await.unwrap();
    let (answer, closed) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    assert_eq!(answer, "");
    let closed = closed.expect("a silent connection stayed open");
    assert!(
        closed >= Duration::from_millis(900) && closed < Duration::from_secs(3),
        "closed after {closed:?}, header_read_timeout is 1 s"
    );
}

/// `defer_accept` (default 1 s): a client that says nothing waits in the kernel, not
/// accepted, so it holds no connection slot; when the wait ends it is accepted and
/// `header_read_timeout` cuts it. With `"0s"` it is accepted at once and holds the slot.
#[tokio::test]
async fn a_silent_client_waits_in_the_kernel_until_defer_accept_ends() {
    let upstream = Upstream::start().await;
    for (defer, slot_taken) in [("", false), ("defer_accept = \"0s\"", true)] {
        let server = format!("header_read_timeout = \"1s\"\nmax_connections = 1\n{defer}");
        let gw = Gateway::start(&config_with(&upstream, &server, "")).await;
        let started = std::time::Instant::now();
        let mut silent = TcpStream::connect(gw.http).await.unwrap();
        let mut talking = TcpStream::connect(gw.http).await.unwrap();
        talking
            .write_all(b"GET /public HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let served = tokio::time::timeout(Duration::from_millis(500), talking.read(&mut buf)).await;
        match served {
            Ok(read) => {
                let n = read.unwrap();
                assert!(
                    !slot_taken,
                    "{defer}: served while the silent client held the slot"
                );
                assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{defer}");
            }
            Err(_) => assert!(slot_taken, "{defer}: the silent client held the only slot"),
        }
        let (answer, _) = read_until_closed(&mut silent, Duration::from_secs(6)).await;
        assert_eq!(answer, "", "{defer}");
        let closed = started.elapsed();
        // Deferred: accepted about 1 s after the handshake, then cut 1 s later.
        let (at_least, below) = if slot_taken {
            (Duration::from_millis(900), Duration::from_secs(3))
        } else {
            (Duration::from_millis(1800), Duration::from_secs(5))
        };
        assert!(
            closed >= at_least && closed < below,
            "{defer}: the silent client was closed after {closed:?}"
        );
    }
}

#[tokio::test]
async fn a_client_that_stops_sending_its_body_gets_408() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config_with(&upstream, "request_body_timeout = \"1s\"", "")).await;
    let mut stream = TcpStream::connect(gw.http).await.unwrap();
    stream
        .write_all(b"POST /public HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    let (answer, _) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#"{"error":"request_timeout","status":408}"#));
}

#[tokio::test]
async fn a_silent_tls_client_is_cut_after_the_handshake_timeout() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config_with(
        &upstream,
        "tls_handshake_timeout = \"1s\"\ndefer_accept = \"0s\"",
        "",
    ))
    .await;
    let mut stream = TcpStream::connect(gw.https.unwrap()).await.unwrap();
    let (_, closed) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    let closed = closed.expect("the silent TLS connection stayed open");
    assert!(
        closed >= Duration::from_millis(900) && closed < Duration::from_secs(4),
        "{closed:?}"
    );
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_and_the_process_stays_healthy() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config_with(&upstream, "max_connections = 2", "")).await;
    let mut first = TcpStream::connect(gw.http).await.unwrap();
    let mut second = TcpStream::connect(gw.http).await.unwrap();
    for stream in [&mut first, &mut second] {
        stream
            .write_all(b"GET /public HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = stream.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    }
    // Both slots are taken by keep-alive connections: a third waits in the backlog.
    let mut third = TcpStream::connect(gw.http).await.unwrap();
    third
        .write_all(b"GET /public HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    assert!(
        tokio::time::timeout(Duration::from_millis(500), third.read(&mut buf))
            .await
            .is_err(),
        "a connection beyond max_connections was served"
    );
    drop(first);
    let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
}

/// A gateway with the routes of `upstream`, and `/bad` on the misbehaving upstream (timeouts
/// of 1 s).
async fn gateway_with_bad_upstream(upstream: &Upstream) -> Gateway {
    let bad = bad_upstream().await;
    let text = config_with(
        upstream,
        "",
        r#"
[upstreams.bad]
url = "http://BAD"
timeout = "1s"
body_timeout = "1s"

[[routes]]
name = "bad"
path_prefix = "/bad"
upstream = "bad"
auth = "public"
"#,
    )
    .replace("BAD", &bad.to_string());
    Gateway::start(&text).await
}

#[tokio::test]
async fn upstream_faults_are_502_or_a_cut_stream_never_a_hang() {
    let upstream = Upstream::start().await;
    let gw = gateway_with_bad_upstream(&upstream).await;
    // An unusual reason phrase is passed on.
    let answer = raw_request(gw.http, b"GET /bad/reason HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert!(
        answer.starts_with("HTTP/1.1 200 Fine Thanks\r\n"),
        "{answer}"
    );
    // Interim answers are dropped; the final one is passed on.
    let response = client().get(gw.url("/bad/interim")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(!response.headers().contains_key("link"));
    assert_eq!(response.text().await.unwrap(), "ok");
    for path in [
        "/bad/close",
        "/bad/garbage",
        "/bad/switch",
        "/bad/two-lengths",
        "/bad/huge-head",
    ] {
        let response = client().get(gw.url(path)).send().await.unwrap();
        assert_error(response, 502, "bad_gateway").await;
    }
    // Headers were sent: the client gets them and then a truncated body, promptly.
    for path in ["/bad/truncate", "/bad/stall-body", "/bad/bad-chunk"] {
        let started = Instant::now();
        let response = client().get(gw.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let body = tokio::time::timeout(Duration::from_secs(5), response.bytes())
            .await
            .expect("hung");
        assert!(
            body.is_err(),
            "{path}: a truncated body must not look complete"
        );
        assert!(started.elapsed() < Duration::from_secs(4), "{path}");
    }
}

#[tokio::test]
async fn an_upstream_that_takes_no_request_body_is_504_not_a_hang() {
    let upstream = Upstream::start().await;
    let gw = gateway_with_bad_upstream(&upstream).await;
    let stream = TcpStream::connect(gw.http).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    // 64 MiB, more than the sockets between here and the upstream can hold.
    let sender = tokio::spawn(async move {
        let head = b"POST /bad/silent HTTP/1.1\r\nHost: t\r\nContent-Length: 67108864\r\n\r\n";
        write.write_all(head).await?;
        let chunk = vec![b'x'; 64 << 10];
        for _ in 0..1024 {
            write.write_all(&chunk).await?;
        }
        std::io::Result::Ok(())
    });
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(6), read.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) => panic!("no answer: the gateway hung on an upstream that reads nothing"),
        }
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
    // The upstream's timeout is 1 s: it counts from the last byte it took.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    sender.abort();
}

#[tokio::test]
async fn an_upload_slower_than_the_upstream_timeout_is_not_cut() {
    // The upstream timeout (1 s) counts from the end of the request body.
    let upstream = Upstream::start().await;
    let gw = Gateway::standard(&upstream).await;
    let mut stream = TcpStream::connect(gw.http).await.unwrap();
    stream
        .write_all(b"POST /public/upload HTTP/1.1\r\nHost: t\r\nContent-Length: 30\r\n\r\n")
        .await
        .unwrap();
    for _ in 0..3 {
        stream.write_all(b"0123456789").await.unwrap();
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    let mut buf = [0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("answered")
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(upstream.last().body_len, 30);
}

#[tokio::test]
async fn a_client_framing_error_does_not_reuse_the_upstream_connection() {
    let upstream = Upstream::start().await;
    let gw = Gateway::standard(&upstream).await;
    let client = client();
    assert_eq!(
        client
            .get(gw.url("/public/1"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        upstream
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    // A chunked body with an invalid chunk size, mid-request.
    let answer = raw_request(
        gw.http,
        b"POST /public/2 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
    )
    .await;
    assert!(!answer.contains("HTTP/1.1 200"), "{answer}");
    let response = client.get(gw.url("/public/3")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(upstream.last().path_and_query, "/public/3");
    assert_eq!(upstream.last().body_len, 0);
    assert_eq!(
        upstream
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        2,
        "the connection that carried the broken body was reused"
    );
}

#[tokio::test]
async fn encoded_slashes_pass_only_where_a_route_opts_in() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config_with(
        &upstream,
        "",
        r#"
[[routes]]
name = "objects"
path_prefix = "/objects"
upstream = "app"
auth = "public"
allow_encoded_slash = true
allow_method_override = true
"#,
    ))
    .await;
    let answer = raw_request(
        gw.http,
        get_raw("/objects/a%2fb/c", "X-HTTP-Method-Override: PUT\r\n").as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
    let seen = upstream.last();
    assert_eq!(seen.path_and_query, "/objects/a%2Fb/c");
    assert_eq!(seen.header_values("x-http-method-override"), vec!["PUT"]);
    for refused in [
        "/public/a%2Fb",
        "/objects/..%2Fapi",
        "/objects/x/..%2F..%2Fapi",
        "/nowhere/a%2Fb",
    ] {
        let answer = raw_request(gw.http, get_raw(refused, "").as_bytes()).await;
        assert_eq!(raw_status(&answer), 400, "{refused}");
    }
    assert_eq!(upstream.count(), 1);
}

fn get_raw(path: &str, headers: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\n{headers}Connection: close\r\n\r\n")
}
