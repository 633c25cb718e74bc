//! `handshakes`: a TLS 1.3 load client that opens a new connection for every request, with a
//! full handshake each time (`--full`, the default) or resuming by session ticket
//! (`--resume`), for the handshake rows of `benches/load/ab.sh --handshakes full|resumed`.
//!
//! wrk always resumes, and an OpenSSL client pays as much for a full handshake as the server
//! (X25519 and the check of the server's ECDSA signature), so on a 2-CPU machine it measures
//! itself. This client offers X25519 only (as wrk's OpenSSL 3.0 does: no hybrid group that one
//! side could pick and the other not) and **does not check the server's certificate or its
//! handshake signature**: its cost is the key exchange, and the server's cost (key exchange,
//! ECDSA signature, key schedule, the request) is what a run measures. A load tool only; never
//! copy its verifier anywhere.
//!
//!   cargo bench --bench handshakes -- [--full | --resume] [--connections N] [--seconds S] URL
//!
//! Prints `requests N errors E seconds S resumed R` (N: answers with a 2xx status; R: the
//! handshakes that resumed a session). Runs on one thread; pin it with taskset. `cargo bench`
//! without a URL prints this help and does nothing; `cargo test` (no arguments) checks the
//! client against a TLS server of its own, in both modes, so the harness cannot rot.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientConfig, Resumption};
use rustls::crypto::{CryptoProvider, aws_lc_rs};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, HandshakeKind, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

struct Args {
    resume: bool,
    connections: usize,
    seconds: f64,
    url: String,
}

fn usage() -> ! {
    let help = include_str!("handshakes.rs")
        .lines()
        .take_while(|l| l.starts_with("//!"))
        .map(|l| l.trim_start_matches("//!").strip_prefix(' ').unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    println!("{help}");
    std::process::exit(0)
}

fn args() -> Args {
    let mut args = Args {
        resume: false,
        connections: 64,
        seconds: 5.0,
        url: String::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--full" => args.resume = false,
            "--resume" => args.resume = true,
            "--connections" => {
                args.connections = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            "--seconds" => {
                args.seconds = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            "--bench" => {}
            "-h" | "--help" => usage(),
            url if url.starts_with("https://") => args.url = url.to_owned(),
            _ => usage(),
        }
    }
    if args.connections == 0 {
        usage()
    }
    args
}

/// Accepts any certificate and any handshake signature: see the module comment.
#[derive(Debug)]
struct NoCheck(Vec<SignatureScheme>);

impl ServerCertVerifier for NoCheck {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.clone()
    }
}

fn connector(resume: bool) -> TlsConnector {
    let provider = CryptoProvider {
        kx_groups: vec![aws_lc_rs::kx_group::X25519],
        ..aws_lc_rs::default_provider()
    };
    let schemes = provider
        .signature_verification_algorithms
        .supported_schemes();
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3 with aws-lc-rs")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoCheck(schemes)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    if !resume {
        config.resumption = Resumption::disabled();
    }
    TlsConnector::from(Arc::new(config))
}

/// One request on a new connection; true for a 2xx answer read to its end. Counts a resumed
/// handshake in `resumed`.
async fn one(
    tls: &TlsConnector,
    addr: &str,
    name: &ServerName<'static>,
    request: &[u8],
    resumed: &AtomicU64,
) -> std::io::Result<bool> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let mut stream = tls.connect(name.clone(), tcp).await?;
    if stream.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed) {
        resumed.fetch_add(1, Ordering::Relaxed);
    }
    stream.write_all(request).await?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let (head_end, length) = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(false);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            break (end + 4, length);
        }
    };
    let ok = buf.starts_with(b"HTTP/1.1 2");
    match length {
        Some(length) => {
            while buf.len() < head_end + length {
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    return Ok(false);
                }
                buf.extend_from_slice(&chunk[..n]);
            }
        }
        // No length: the body ends with the connection.
        None => while stream.read(&mut chunk).await? != 0 {},
    }
    // As wrk does: close_notify, then close, without waiting for the server's.
    let _ = stream.shutdown().await;
    Ok(ok)
}

struct Counts {
    requests: u64,
    errors: u64,
    seconds: f64,
    resumed: u64,
}

fn main() {
    let args = args();
    if args.url.is_empty() {
        if std::env::args().any(|a| a == "--bench") {
            usage()
        }
        return self_test();
    }
    let counts = load(&args);
    println!(
        "requests {} errors {} seconds {:.3} resumed {}",
        counts.requests, counts.errors, counts.seconds, counts.resumed
    );
}

/// `cargo test`: a TLS 1.3 server on 127.0.0.1:0 (a new certificate, tickets on) that
/// answers every connection once; the client must get answers, with no resumption in
/// `--full` and mostly resumed handshakes in `--resume`.
fn self_test() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let url = format!(
        "https://localhost:{}/",
        listener.local_addr().expect("an address").port()
    );
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("a certificate");
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let mut config =
        rustls::ServerConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .expect("the certificate");
    config.ticketer = aws_lc_rs::Ticketer::new().expect("a ticketer");
    let config = Arc::new(config);
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(mut tcp) = tcp else { continue };
            let config = config.clone();
            std::thread::spawn(move || {
                let mut conn = rustls::ServerConnection::new(config).expect("a TLS connection");
                let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match tls.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let _ = tls.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
                tls.conn.send_close_notify();
                let _ = tls.flush();
            });
        }
    });
    for resume in [false, true] {
        let counts = load(&Args {
            resume,
            connections: 4,
            seconds: 0.5,
            url: url.clone(),
        });
        assert!(
            counts.requests > 10 && counts.errors == 0,
            "resume {resume}: {} answers, {} errors",
            counts.requests,
            counts.errors
        );
        if resume {
            assert!(
                counts.resumed * 2 > counts.requests,
                "{} of {} resumed",
                counts.resumed,
                counts.requests
            );
        } else {
            assert_eq!(counts.resumed, 0, "a full-handshake run resumed");
        }
        println!(
            "handshakes self-test, resume {resume}: {} answers, {} resumed",
            counts.requests, counts.resumed
        );
    }
}

fn load(args: &Args) -> Counts {
    let rest = &args.url["https://".len()..];
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
    let addr = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:443")
    };
    let name = ServerName::try_from(host.to_owned()).expect("a host name or IP address in the URL");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n")
        .into_bytes();
    let done = Arc::new(AtomicU64::new(0));
    let resumed = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let started = Instant::now();
    runtime.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..args.connections {
            // A client config (and so a ticket store) per connection, as each of wrk's
            // connections keeps its own session.
            let tls = connector(args.resume);
            let (addr, name, request) = (addr.clone(), name.clone(), request.clone());
            let (done, failed, stop, resumed) = (done.clone(), failed.clone(), stop.clone(), resumed.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match one(&tls, &addr, &name, &request, &resumed).await {
                        Ok(true) => {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        answer => {
                            // The first failure says why (a load run stops on any).
                            if failed.fetch_add(1, Ordering::Relaxed) == 0 {
                                eprintln!("first failure: {answer:?} (Ok(false): no 2xx answer, or cut short)");
                            }
                        }
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_secs_f64(args.seconds)).await;
        stop.store(true, Ordering::Relaxed);
        for task in tasks {
            let _ = task.await;
        }
    });
    Counts {
        requests: done.load(Ordering::Relaxed),
        errors: failed.load(Ordering::Relaxed),
        seconds: started.elapsed().as_secs_f64(),
        resumed: resumed.load(Ordering::Relaxed),
    }
}
