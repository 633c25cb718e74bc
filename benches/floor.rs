//! `floor`: hyper and tokio alone, answering every request with the upstream's answer ("ok
//! user=", 200, `text/plain`) and doing nothing else: no route, no credential, no upstream.
//! What any HTTP/1 server built on them pays for a connection and a request, the floor under
//! the gateway's own cost, for `benches/load/instructions.sh --floor` (it sets the floor
//! beside nginx answering the same thing itself, and each proxy beside its own server).
//!
//! Built as the gateway is: one current-thread tokio runtime, the same allocator with the
//! same compiled-in options (`.cargo/config.toml`), hyper's HTTP/1 connection with no timer,
//! listener `TCP_NODELAY` inherited by accepted sockets.
//!
//!   cargo bench --bench floor -- PORT     # serves 127.0.0.1:PORT until killed
//!
//! `cargo bench` without a port prints this help and does nothing; `cargo test` (no
//! arguments) checks the server against a client of its own, so the harness cannot rot.

use std::convert::Infallible;
use std::io::{Read, Write};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const BODY: &[u8] = b"ok user=\n";

fn main() {
    // Anything else on the line (cargo's `--bench`, a test filter) is not a port.
    let port = std::env::args().skip(1).find_map(|a| a.parse::<u16>().ok());
    match port {
        Some(port) => {
            let listener = std::net::TcpListener::bind(("127.0.0.1", port))
                .unwrap_or_else(|e| panic!("bind 127.0.0.1:{port}: {e}"));
            serve(listener)
        }
        None if std::env::args().any(|a| a == "--bench") => usage(),
        None => self_test(),
    }
}

fn usage() -> ! {
    eprintln!("usage: cargo bench --bench floor -- PORT (serves 127.0.0.1:PORT until killed)");
    std::process::exit(2)
}

fn serve(listener: std::net::TcpListener) -> ! {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async move {
        socket2::SockRef::from(&listener)
            .set_tcp_nodelay(true)
            .expect("TCP_NODELAY");
        listener.set_nonblocking(true).expect("non-blocking");
        let listener = TcpListener::from_std(listener).expect("a tokio listener");
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1.header_read_timeout(None);
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let connection = http1.serve_connection(
                TokioIo::new(stream),
                service_fn(|_: Request<hyper::body::Incoming>| async {
                    let mut response = Response::new(Full::new(Bytes::from_static(BODY)));
                    response.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("text/plain"),
                    );
                    Ok::<_, Infallible>(response)
                }),
            );
            tokio::spawn(connection);
        }
    })
}

/// `cargo test`: the server on 127.0.0.1:0, asked once with `Connection: close`: the answer
/// must be the upstream's, and the connection must end after it.
fn self_test() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let address = listener.local_addr().expect("an address");
    std::thread::spawn(move || serve(listener));
    let mut client = std::net::TcpStream::connect(address).expect("connect");
    client
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("a read timeout");
    client
        .write_all(b"GET /plain/ HTTP/1.1\r\nHost: floor\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut answer = Vec::new();
    // To the end: a server that kept the connection open would time this read out.
    client
        .read_to_end(&mut answer)
        .expect("an answer, then EOF");
    let answer = String::from_utf8(answer).expect("UTF-8");
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.contains("content-type: text/plain\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nok user=\n"), "{answer}");
    println!("floor: self-test passed");
}
