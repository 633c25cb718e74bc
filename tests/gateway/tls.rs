//! TLS termination: HTTP/1.1 and HTTP/2 (ALPN) on the TLS listener, h2c on the plain one.

use crate::support::*;

#[tokio::test]
async fn https_serves_http1_and_http2() {
    let upstream = Upstream::start().await;
    let gw = Gateway::standard(&upstream).await;
    for (http2, version) in [
        (false, reqwest::Version::HTTP_11),
        (true, reqwest::Version::HTTP_2),
    ] {
        let client = tls_client(&gw, http2);
        let response = client
            .get(gw.https_url("/api/tls"))
            .bearer_auth(valid_token())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.version(), version);
        let seen = upstream.last();
        assert_eq!(seen.header_values("x-auth-user"), vec!["alice"]);
        assert_eq!(seen.header_values("x-forwarded-proto"), vec!["https"]);
        // HTTP/2 has no Host header: the app still gets the host the client asked for.
        assert_eq!(
            seen.header_values("host"),
            vec![format!("localhost:{}", gw.https.unwrap().port())]
        );
        let response = client.get(gw.https_url("/api/tls")).send().await.unwrap();
        assert_eq!(response.status(), 401);
    }
}

#[tokio::test]
async fn h2_prior_knowledge_works_on_the_plain_listener() {
    let upstream = Upstream::start().await;
    let gw = Gateway::standard(&upstream).await;
    let client = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let response = client.get(gw.url("/public/h2c")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(upstream.last().path_and_query, "/public/h2c");
}

#[tokio::test]
async fn a_client_that_never_finishes_the_handshake_does_not_block_others() {
    let upstream = Upstream::start().await;
    let gw = Gateway::standard(&upstream).await;
    // Open a TCP connection to the TLS port and say nothing.
    let _silent = tokio::net::TcpStream::connect(gw.https.unwrap())
        .await
        .unwrap();
    let client = tls_client(&gw, false);
    let response = client.get(gw.https_url("/public")).send().await.unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn a_rapid_reset_flood_is_cut_and_the_gateway_stays_healthy() {
    let upstream = Upstream::start().await;
    let gw = Gateway::standard(&upstream).await;
    let tcp = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    let (mut h2, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    let mut sent = 0;
    for i in 0..10_000 {
        let request = http::Request::get(format!("http://t/public/{i}"))
            .body(())
            .unwrap();
        let Ok(ready) = h2.ready().await else { break };
        h2 = ready;
        let Ok((_response, mut stream)) = h2.send_request(request, false) else {
            break;
        };
        stream.send_reset(h2::Reason::CANCEL);
        sent += 1;
    }
    let ended = tokio::time::timeout(std::time::Duration::from_secs(5), connection).await;
    eprintln!(
        "rapid reset: {sent} streams sent before the connection ended: {ended:?}; upstream saw {}",
        upstream.count()
    );
    // The gateway ends the connection (GOAWAY / close): an open connection after the flood
    // would time out here. The resets never turned into upstream work.
    assert!(
        matches!(ended, Ok(Ok(Err(_)))),
        "the flood connection was not cut: {ended:?}"
    );
    assert!(
        upstream.count() < 100,
        "{} upstream requests from reset streams",
        upstream.count()
    );
    // A fresh client is served normally.
    let response = client().get(gw.url("/public/after")).send().await.unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn the_server_picks_aes_128_gcm_even_when_the_client_prefers_aes_256() {
    // The key schedule then runs on SHA-256 (hardware on current CPUs) instead of SHA-384.
    let upstream = Upstream::start().await;
    let gw = Gateway::standard(&upstream).await;
    let mut roots = rustls::RootCertStore::empty();
    use rustls_pki_types::pem::PemObject;
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(keys().tls_cert_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    // rustls clients, like OpenSSL and browsers on AES hardware, list AES-256 first.
    assert_eq!(
        provider.cipher_suites[0].suite(),
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384
    );
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(gw.https.unwrap())
        .await
        .unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let (_, session) = tls.get_ref();
    assert_eq!(
        session.negotiated_cipher_suite().unwrap().suite(),
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
    );
}

#[tokio::test]
async fn tls_sessions_resume_by_ticket_and_a_reload_with_the_same_certificate_keeps_them() {
    use rustls::HandshakeKind::{Full, Resumed};
    let upstream = Upstream::start().await;
    let text = crate::operations::with_admin(config_with(&upstream, "", ""), "");
    let gw = Gateway::start(&text).await;
    let https = gw.https.unwrap();
    let client = resuming_tls_client();
    let (status, kind) = tls_get(https, client.clone(), "/public/x").await;
    assert_eq!((status.as_str(), kind), ("HTTP/1.1 200 OK", Full));
    for _ in 0..3 {
        let (status, kind) = tls_get(https, client.clone(), "/public/x").await;
        assert_eq!((status.as_str(), kind), ("HTTP/1.1 200 OK", Resumed));
    }
    let reload = crate::support::client()
        .post(gw.admin_url("/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(reload.status(), 200);
    let (status, kind) = tls_get(https, client.clone(), "/public/x").await;
    assert_eq!(
        (status.as_str(), kind),
        ("HTTP/1.1 200 OK", Resumed),
        "a reload with the same certificate ends no TLS session"
    );
    // Another client, or a ticket the gateway never issued, gets a full handshake.
    let (_, kind) = tls_get(https, resuming_tls_client(), "/public/x").await;
    assert_eq!(kind, Full);
}
