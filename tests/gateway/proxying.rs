//! Forwarding: pooled connections, streamed bodies both ways, 502/504, hop-by-hop.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;

use crate::support::*;

#[tokio::test]
async fn unreachable_upstream_is_502_json() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let gw = Gateway::start(&config(closed, ROUTES)).await;
    let started = Instant::now();
    let response = client().get(gw.url("/public")).send().await.unwrap();
    assert_error(response, 502, "bad_gateway").await;
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn slow_upstream_is_504_json_not_a_hang() {
    let upstream = Upstream::start().await;
    let gw = Gateway::standard(&upstream).await; // upstream timeout is 1s
    let response = tokio::time::timeout(
        Duration::from_secs(5),
        client().get(gw.url("/public/slow")).send(),
    )
    .await
    .expect("the gateway answered")
    .unwrap();
    assert_error(response, 504, "gateway_timeout").await;
}

#[tokio::test]
async fn upstream_connections_are_pooled_and_reused() {
    let upstream = Upstream::start().await;
    let gw = Gateway::standard(&upstream).await;
    let client = client();
    for i in 0..20 {
        let response = client
            .get(gw.url(&format!("/public/{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.bytes().await.unwrap();
    }
    assert_eq!(upstream.count(), 20);
    assert_eq!(
        upstream.connections.load(Ordering::SeqCst),
        1,
        "one pooled keep-alive connection"
    );
}

#[tokio::test]
async fn hop_by_hop_response_headers_are_removed() {
    let upstream = Upstream::start().await;
    let gw = Gateway::standard(&upstream).await;
    let response = client().get(gw.url("/public")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-upstream"], "test");
    assert!(response.headers().get("x-secret-hop").is_none());
}

/// Buffering a 1 GiB body would grow RSS by at least 1024 MiB; streaming grows it by a few
/// MiB. The margin absorbs the other tests of this binary running in parallel.
const MAX_GROWTH_MIB: u64 = 300;

/// The two 1 GiB tests measure the same process: one at a time.
static MEMORY_TESTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Samples the process RSS every 20 ms until dropped; returns the peak.
struct RssSampler {
    peak: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    fn start() -> Self {
        let peak = Arc::new(AtomicU64::new(rss_kib()));
        let p = peak.clone();
        let task = tokio::spawn(async move {
            loop {
                p.fetch_max(rss_kib(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        RssSampler { peak, task }
    }
    fn peak_kib(&self) -> u64 {
        self.task.abort();
        self.peak.load(Ordering::Relaxed)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1_gib_upload_streams_in_bounded_memory() {
    const TOTAL: u64 = 1 << 30;
    let _one_at_a_time = MEMORY_TESTS.lock().await;
    let upstream = Upstream::start().await;
    let gw = Gateway::standard(&upstream).await;
    let chunk = Bytes::from(vec![7u8; 256 * 1024]);
    let chunks = TOTAL / chunk.len() as u64;
    let body = futures_util::stream::iter(
        (0..chunks).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
    );
    let before = rss_kib();
    let sampler = RssSampler::start();
    let response = client()
        .post(gw.url("/public/upload"))
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(answer["body_len"], TOTAL);
    assert_eq!(upstream.last().body_len, TOTAL);
    let growth_mib = sampler.peak_kib().saturating_sub(before) / 1024;
    eprintln!("upload: RSS grew by {growth_mib} MiB");
    assert!(
        growth_mib < MAX_GROWTH_MIB,
        "RSS grew by {growth_mib} MiB while streaming 1 GiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1_gib_download_streams_in_bounded_memory() {
    const TOTAL: u64 = 1 << 30;
    let _one_at_a_time = MEMORY_TESTS.lock().await;
    let upstream = Upstream::start().await;
    let gw = Gateway::standard(&upstream).await;
    let before = rss_kib();
    let sampler = RssSampler::start();
    let response = client()
        .get(gw.url(&format!("/public/download/{TOTAL}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut stream = response.bytes_stream();
    let mut received = 0u64;
    while let Some(chunk) = stream.next().await {
        received += chunk.unwrap().len() as u64;
    }
    assert_eq!(received, TOTAL);
    let growth_mib = sampler.peak_kib().saturating_sub(before) / 1024;
    eprintln!("download: RSS grew by {growth_mib} MiB");
    assert!(
        growth_mib < MAX_GROWTH_MIB,
        "RSS grew by {growth_mib} MiB while streaming 1 GiB"
    );
}

#[tokio::test]
async fn the_builtin_echo_upstream_shows_what_an_app_would_receive() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config(
        upstream.addr,
        r#"
[[routes]]
name = "echo"
path_prefix = "/"
upstream = "echo"
auth = "jwt"
"#,
    ))
    .await;
    let response = client()
        .post(gw.url("/a/./b?x=1"))
        .bearer_auth(valid_token())
        .header("x-auth-user", "mallory")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let echo: serde_json::Value = response.json().await.unwrap();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/a/b");
    assert_eq!(echo["query"], "x=1");
    assert_eq!(echo["headers"]["x-auth-user"], "alice");
    assert!(echo["headers"].get("authorization").is_none());
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn shutdown_stops_accepting_and_returns() {
    let upstream = Upstream::start().await;
    let gw = Gateway::standard(&upstream).await;
    let addr = gw.http;
    assert_eq!(
        client()
            .get(gw.url("/public"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    gw.stop().await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );
}

/// A raw upstream: for each connection, answers every request head with `answer`, and hangs
/// up 10 ms after its `per_conn`th answer (keep-alive answers, no `Connection: close`: the
/// gateway has pooled the connection by then). With
/// `read_bodies` false it answers at the head, never reading a request body. Counts the
/// connections it accepted.
async fn raw_upstream(
    answer: &'static [u8],
    per_conn: usize,
    read_bodies: bool,
) -> (std::net::SocketAddr, Arc<AtomicU64>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut seen, mut served, mut buf) = (Vec::new(), 0, vec![0u8; 64 * 1024]);
                while served < per_conn {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                    if !read_bodies && seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        let _ = stream.write_all(answer).await;
                        // Stay open, reading nothing more, until the gateway closes.
                        let _ = stream.read(&mut [0u8; 1]).await;
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        return;
                    }
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        if stream.write_all(answer).await.is_err() {
                            return;
                        }
                        served += 1;
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn an_upstream_that_closes_idle_connections_costs_no_request() {
    // Every pooled connection is closed by the upstream after one answer: each next request
    // must notice it and use a new connection, never answer 502.
    let (addr, accepted) =
        raw_upstream(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", 1, true).await;
    let gw = Gateway::start(&config(addr, ROUTES)).await;
    let client = client();
    for i in 1..=5u64 {
        let response = client.get(gw.url("/public/x")).send().await.unwrap();
        assert_eq!(response.status(), 200, "request {i}");
        assert_eq!(response.text().await.unwrap(), "ok");
        // Let the upstream's FIN arrive while the connection is idle in the pool, as when
        // an upstream's keep-alive timeout closes it.
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(accepted.load(Ordering::SeqCst), i);
    }
}

#[tokio::test]
async fn an_answer_before_the_request_body_is_sent_does_not_hang_or_leak_into_the_next() {
    // The upstream refuses at the head and never reads the body, which is larger than what
    // the sockets can buffer.
    let (addr, accepted) = raw_upstream(
        b"HTTP/1.1 403 Forbidden\r\ncontent-length: 4\r\n\r\nnope",
        usize::MAX,
        false,
    )
    .await;
    let gw = Gateway::start(&config(addr, ROUTES)).await;
    let response = tokio::time::timeout(
        Duration::from_secs(10),
        client()
            .post(gw.url("/public/upload"))
            .body(vec![b'x'; 32 << 20])
            .send(),
    )
    .await
    .expect("the gateway answered");
    // Either the upstream's answer, or (when the client was still sending as the gateway
    // closed) a reset; never a hang and never a 200.
    if let Ok(response) = response {
        assert_eq!(response.status(), 403);
    }
    // The connection that carried the unfinished body is not reused (hyper would refuse a
    // request on it; the gateway must then take a new one, not fail).
    let response = client().get(gw.url("/public/next")).send().await.unwrap();
    assert_eq!(response.status(), 403);
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn the_upstream_always_gets_a_host() {
    let upstream = Upstream::start().await;
    let gw = Gateway::standard(&upstream).await;
    // HTTP/1.1 and HTTP/2 clients' hosts are forwarded as sent (routing tests); an HTTP/1.0
    // request may come without one, and the upstream then sees its own address.
    let answer = raw_request(gw.http, b"GET /public/old HTTP/1.0\r\n\r\n").await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
    let seen = upstream.last();
    assert_eq!(seen.path_and_query, "/public/old");
    assert_eq!(seen.header_values("host"), vec![upstream.addr.to_string()]);
}

#[tokio::test]
async fn an_upstream_named_by_host_name_is_resolved() {
    // `localhost` may resolve to ::1 first while the upstream listens on 127.0.0.1 only: the
    // addresses are tried in order.
    let upstream = Upstream::start().await;
    let text = config(upstream.addr, ROUTES).replace(
        &format!("http://{}", upstream.addr),
        &format!("http://localhost:{}", upstream.addr.port()),
    );
    assert!(text.contains("http://localhost:"));
    let gw = Gateway::start(&text).await;
    let response = client().get(gw.url("/public/named")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(upstream.last().path_and_query, "/public/named");
}
