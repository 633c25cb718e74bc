//! Idle HTTP/1 connections parked without their buffers (`server::conn`): they park, wake
//! for their next request intact, keep the keep-alive bound and the drain, and never park
//! when that could lose a byte or read one the wrong way.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

fn parked(gw: &Gateway) -> i64 {
    gw.shared.load().metrics.parked_connections.get()
}

/// Waits up to `within` for the parked gauge to read `want`.
async fn parked_within(gw: &Gateway, want: i64, within: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < within {
        if parked(gw) == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    parked(gw) == want
}

/// A raw HTTP/1.1 client connection that reads responses one at a time.
struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn connect(gw: &Gateway) -> Raw {
        Raw {
            stream: TcpStream::connect(gw.http).await.unwrap(),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    async fn get(&mut self, path: &str) -> String {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .await;
        self.response().await
    }

    /// One whole response (Content-Length or chunked); more bytes stay for the next.
    async fn response(&mut self) -> String {
        tokio::time::timeout(Duration::from_secs(10), async {
            let mut from = 0;
            loop {
                if let Some(len) = complete_response(&self.buf, from) {
                    let response = self.buf.drain(..len).collect::<Vec<u8>>();
                    return String::from_utf8_lossy(&response).into_owned();
                }
                from = self.buf.len();
                let mut chunk = [0u8; 16384];
                let n = self.stream.read(&mut chunk).await.unwrap();
                assert!(
                    n > 0,
                    "closed mid-response: {:?}",
                    String::from_utf8_lossy(&self.buf)
                );
                self.buf.extend_from_slice(&chunk[..n]);
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no whole response within 10 s; got {} bytes",
                self.buf.len()
            )
        })
    }
}

/// The length of the first whole response in `buf`, if it is all there; `from`: where new
/// bytes start (the chunked-end search resumes there).
fn complete_response(buf: &[u8], from: usize) -> Option<usize> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    if head.contains("transfer-encoding: chunked") {
        let start = from.saturating_sub(5).max(head_end);
        let end = buf[start..].windows(5).position(|w| w == b"0\r\n\r\n")?;
        return Some(start + end + 5);
    }
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map_or(0, |v| v.trim().parse().unwrap());
    (buf.len() >= head_end + length).then_some(head_end + length)
}

/// The header timeout runs only while a connection waits for a request head: an answer
/// that takes longer than it to stream is not cut, and its connection serves the next one.
#[tokio::test]
async fn a_request_slower_than_the_header_timeout_keeps_its_connection() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config_with(&upstream, "header_read_timeout = \"1s\"", "")).await;
    let mut conn = Raw::connect(&gw).await;
    let started = Instant::now();
    let answer = conn.get("/public/drip/2500").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("second"), "{answer}");
    assert!(started.elapsed() >= Duration::from_millis(2500));
    assert!(conn.get("/public").await.starts_with("HTTP/1.1 200"));
    assert_eq!(upstream.count(), 2);
    // And once idle, the timeout holds again.
    let (rest, closed) = read_until_closed(&mut conn.stream, Duration::from_secs(5)).await;
    assert_eq!(rest, "");
    let closed = closed.expect("an idle connection stayed open");
    assert!(
        closed >= Duration::from_millis(900) && closed < Duration::from_millis(2500),
        "closed after {closed:?} idle, header_read_timeout is 1 s"
    );
}

#[tokio::test]
async fn an_idle_connection_parks_and_serves_its_next_requests() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config_with(&upstream, "header_read_timeout = \"30s\"", "")).await;
    let mut conn = Raw::connect(&gw).await;
    assert!(conn.get("/public/one").await.starts_with("HTTP/1.1 200"));
    assert!(
        parked_within(&gw, 1, Duration::from_secs(4)).await,
        "an idle connection was not parked"
    );

    let answer = conn.get("/public/two").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#""path":"/public/two""#), "{answer}");
    assert_eq!(
        parked(&gw),
        0,
        "a connection serving a request is not parked"
    );

    // Parked again, then two pipelined requests in one write.
    assert!(parked_within(&gw, 1, Duration::from_secs(4)).await);
    conn.send(b"GET /public/three HTTP/1.1\r\nHost: t\r\n\r\nGET /public/four HTTP/1.1\r\nHost: t\r\n\r\n")
        .await;
    assert!(conn.response().await.contains(r#""path":"/public/three""#));
    assert!(conn.response().await.contains(r#""path":"/public/four""#));
    let paths: Vec<String> = upstream
        .requests()
        .into_iter()
        .map(|s| s.path_and_query)
        .collect();
    assert_eq!(
        paths,
        [
            "/public/one",
            "/public/two",
            "/public/three",
            "/public/four"
        ]
    );
    assert_eq!(gw.shared.load().metrics.connections.get(), 1);
}

#[tokio::test]
async fn a_parked_connection_is_closed_at_the_keep_alive_limit() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config_with(&upstream, "header_read_timeout = \"3s\"", "")).await;
    let mut conn = Raw::connect(&gw).await;
    assert!(conn.get("/public").await.starts_with("HTTP/1.1 200"));
    let idle_since = Instant::now();
    assert!(parked_within(&gw, 1, Duration::from_millis(2500)).await);
    let (rest, closed) = read_until_closed(&mut conn.stream, Duration::from_secs(8)).await;
    assert_eq!(rest, "");
    assert!(
        closed.is_some(),
        "a parked connection outlived its keep-alive limit"
    );
    let idle = idle_since.elapsed();
    assert!(
        idle >= Duration::from_millis(2800) && idle <= Duration::from_secs(5),
        "closed after {idle:?} idle, header_read_timeout is 3 s"
    );
    assert!(parked_within(&gw, 0, Duration::from_secs(1)).await);
}

#[tokio::test]
async fn a_response_still_streaming_is_never_parked() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config_with(&upstream, "header_read_timeout = \"30s\"", "")).await;
    let mut conn = Raw::connect(&gw).await;
    // The upstream sends "first", then nothing for 2.5 s: long enough for two park checks
    // with no byte moving on the client connection.
    conn.send(b"GET /public/drip/2500 HTTP/1.1\r\nHost: t\r\n\r\n")
        .await;
    let reading = tokio::spawn(async move { conn.response().await });
    tokio::time::sleep(Duration::from_millis(2300)).await;
    assert_eq!(parked(&gw), 0, "parked while a response was streaming");
    let answer = reading.await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains("first") && answer.contains("second"),
        "{answer}"
    );
}

#[tokio::test]
async fn an_unread_request_body_is_never_read_as_a_request() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config_with(&upstream, "header_read_timeout = \"30s\"", "")).await;
    let mut conn = Raw::connect(&gw).await;
    // A POST refused before its body is read (no token: 401), whose body's tail is a
    // request; the client pauses inside the body for longer than two park checks.
    let body = b"XXXXXGET /public/smuggled HTTP/1.1\r\nHost: t\r\n\r\n";
    conn.send(
        format!(
            "POST /api/x HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await;
    conn.send(&body[..5]).await;
    assert!(conn.response().await.starts_with("HTTP/1.1 401"));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(parked(&gw), 0, "parked with a request body unread");
    let _ = conn.stream.write_all(&body[5..]).await;
    let _ = read_until_closed(&mut conn.stream, Duration::from_secs(1)).await;
    assert_eq!(upstream.count(), 0, "{:?}", upstream.requests());
}

#[tokio::test]
async fn a_partial_request_head_keeps_its_header_timer() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config_with(&upstream, "header_read_timeout = \"3s\"", "")).await;
    let mut conn = Raw::connect(&gw).await;
    assert!(conn.get("/public").await.starts_with("HTTP/1.1 200"));
    let idle_since = Instant::now();
    // The start of a next head, then silence.
    conn.send(b"GET /public/partial HTTP/1.1\r\nHo").await;
    let (answer, closed) = read_until_closed(&mut conn.stream, Duration::from_secs(8)).await;
    let idle = idle_since.elapsed();
    assert!(closed.is_some(), "a partial head was waited on forever");
    assert!(
        idle <= Duration::from_millis(3900),
        "a partial head got a fresh header timer: closed after {idle:?}; {answer}"
    );
    assert_eq!(upstream.count(), 1);

    // The same pause inside a head on a new connection (the bytes protocol detection read).
    let mut conn = Raw::connect(&gw).await;
    conn.send(b"GET /public/par").await;
    let started = Instant::now();
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(parked(&gw), 0);
    conn.send(b"tial HTTP/1.1\r\nHost: t\r\n\r\n").await;
    let answer = conn.response().await;
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(answer.contains(r#""path":"/public/partial""#), "{answer}");
}

/// A gateway whose header timer, drain grace and upstream timeout outlast the test: any
/// prompt close is the drain's doing.
async fn draining_gateway(upstream: &Upstream) -> Gateway {
    let server = "header_read_timeout = \"30s\"\nshutdown_grace = \"20s\"";
    let text = config_with(upstream, server, "").replace("timeout = \"1s\"", "timeout = \"10s\"");
    Gateway::start(&text).await
}

#[tokio::test]
async fn shutdown_closes_parked_connections_at_once() {
    let upstream = Upstream::start().await;
    let mut gw = draining_gateway(&upstream).await;
    let mut conn = Raw::connect(&gw).await;
    assert!(conn.get("/public").await.starts_with("HTTP/1.1 200"));
    assert!(parked_within(&gw, 1, Duration::from_secs(4)).await);
    let started = Instant::now();
    gw.begin_stop();
    let (_, closed) = read_until_closed(&mut conn.stream, Duration::from_secs(3)).await;
    assert!(closed.is_some(), "a parked connection held the drain");
    gw.stopped(Duration::from_secs(3)).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn shutdown_closes_a_busy_connection_right_after_its_answer() {
    let upstream = Upstream::start().await;
    let mut gw = draining_gateway(&upstream).await;
    let mut conn = Raw::connect(&gw).await;
    // The answer streams for 800 ms; the drain starts in the middle of it.
    conn.send(b"GET /public/drip/800 HTTP/1.1\r\nHost: t\r\n\r\n")
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    gw.begin_stop();
    let (answer, closed) = read_until_closed(&mut conn.stream, Duration::from_secs(5)).await;
    assert!(
        answer.contains("second"),
        "the answer in flight was cut: {answer}"
    );
    // Closed as soon as the answer ended (about 600 ms from here), not kept alive until the
    // idle connection would park (1-2 s later).
    let closed = closed.expect("the connection stayed open");
    assert!(
        closed < Duration::from_millis(1400),
        "closed after {closed:?}"
    );
    gw.stopped(Duration::from_secs(3)).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(3));
}

/// The drain begins while the upstream has not answered yet (the connection has armed no
/// waiter on the drain signal then): the answer still says `Connection: close`, and the
/// connection ends right after it.
#[tokio::test]
async fn a_drain_during_a_request_makes_its_answer_the_last() {
    let upstream = Upstream::start().await;
    let mut gw = draining_gateway(&upstream).await;
    let mut conn = Raw::connect(&gw).await;
    // The upstream answers after 3 s; the drain starts 300 ms in.
    conn.send(b"GET /public/slow HTTP/1.1\r\nHost: t\r\n\r\n")
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.begin_stop();
    let (answer, closed) = read_until_closed(&mut conn.stream, Duration::from_secs(6)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let head = answer
        .split("\r\n\r\n")
        .next()
        .unwrap()
        .to_ascii_lowercase();
    assert!(head.contains("\r\nconnection: close"), "{head}");
    let closed = closed.expect("the connection stayed open");
    assert!(closed < Duration::from_secs(5), "closed after {closed:?}");
    gw.stopped(Duration::from_secs(3)).await.unwrap();
}

#[tokio::test]
async fn tls_connections_park_and_http2_ones_do_not() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config_with(&upstream, "header_read_timeout = \"30s\"", "")).await;
    let client = tls_client(&gw, false);
    for round in 0..2 {
        let response = client
            .get(gw.https_url(&format!("/public/tls{round}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.version(), reqwest::Version::HTTP_11);
        assert_eq!(parked(&gw), 0);
        assert!(parked_within(&gw, 1, Duration::from_secs(4)).await);
    }
    // One connection all along: the parked one woke for the second request.
    assert_eq!(gw.shared.load().metrics.connections.get(), 1);
    drop(client);
    assert!(parked_within(&gw, 0, Duration::from_secs(2)).await);

    let client = tls_client(&gw, true);
    for _ in 0..2 {
        let response = client.get(gw.https_url("/public/h2")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.version(), reqwest::Version::HTTP_2);
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(parked(&gw), 0, "an HTTP/2 connection was parked");
    }
}

#[tokio::test]
async fn a_client_that_stops_reading_gets_its_whole_response() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config_with(&upstream, "header_read_timeout = \"30s\"", "")).await;
    // A small receive window, and no reading for 2.5 s: part of each answer waits in the
    // kernel's buffers (where parking loses nothing), part in the gateway (where it would).
    for size in [1 << 20, 6 << 20] {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(65536).unwrap();
        let mut conn = Raw {
            stream: socket.connect(gw.http).await.unwrap(),
            buf: Vec::new(),
        };
        let request = format!("GET /public/download/{size} HTTP/1.1\r\nHost: t\r\n\r\n");
        conn.send(request.as_bytes()).await;
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let answer = conn.response().await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{}", &answer[..100]);
        assert_eq!(answer.matches('x').count(), size);
        // And the connection is still good.
        assert!(conn.get("/public/after").await.starts_with("HTTP/1.1 200"));
    }
}
