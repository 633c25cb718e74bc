//! TLS termination with rustls (aws-lc-rs, the one crypto provider of the process).

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// The process-wide crypto provider, shared by rustls and (through its own feature) by
/// jsonwebtoken.
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The provider for the TLS listener: the process provider with AES-128-GCM first.
///
/// TLS 1.3 with `TLS_AES_128_GCM_SHA256` runs its key schedule on SHA-256, which modern
/// x86 (SHA-NI) and ARMv8 CPUs compute in hardware, where `TLS_AES_256_GCM_SHA384` (the
/// first choice of most clients) runs SHA-512 in software. Measured here: SHA-512 was 24%
/// of the CPU of a handshake-bound run and fell to 6% as SHA-256; handshakes/s rose 11-19%
/// (wrk, new connection per request, one worker). Every suite left in the list is an AEAD
/// suite, and AES-128-GCM is TLS 1.3's mandatory-to-implement one.
fn listener_provider() -> rustls::crypto::CryptoProvider {
    let mut provider = (*crypto_provider()).clone();
    provider.cipher_suites.sort_by_key(|suite| {
        use rustls::CipherSuite as S;
        match suite.suite() {
            S::TLS13_AES_128_GCM_SHA256 => 0,
            S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 1,
            _ => 2,
        }
    });
    provider
}

/// `[tls] client_ca`, `client_auth`, `client_crl`: client certificates the listener asks
/// for.
pub struct ClientAuth {
    pub ca: std::path::PathBuf,
    pub required: bool,
    pub crls: Vec<std::path::PathBuf>,
}

/// Builds the server config from PEM files; ALPN offers h2 then http/1.1; the server's
/// cipher-suite order wins (see `listener_provider`).
/// Errors are sentences for the operator (the caller adds the config key).
pub fn server_config(
    cert: &Path,
    key: &Path,
    clients: Option<ClientAuth>,
) -> Result<Arc<ServerConfig>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("cannot read certificates from {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{} is not a PEM certificate chain: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        format!(
            "cannot read a PEM private key (PKCS#8, PKCS#1 or SEC1) from {}: {e}",
            key.display()
        )
    })?;
    let builder = ServerConfig::builder_with_provider(Arc::new(listener_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let identity = identity_digest(&certs, &key);
    let verifies_clients = clients.is_some();
    let builder = match clients {
        None => builder.with_no_client_auth(),
        Some(clients) => builder.with_client_cert_verifier(client_verifier(&clients)?),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate and key do not form a usable pair: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.ignore_client_order = true;
    config.ticketer = ticketer(identity, verifies_clients)?;
    // One ticket a handshake, as OpenSSL (nginx) sends after a resumption: each
    // connection leaves the client one ticket for the next, and the second ticket rustls
    // sends by default cost every handshake a sealing and a TLS record.
    config.send_tls13_tickets = 1;
    Ok(Arc::new(config))
}

/// Session resumption by stateless tickets (RFC 5077 construction: AES-256-CBC and
/// HMAC-SHA256 under random keys, rotated every 6 hours, tickets valid 12 hours), rather
/// than rustls' default 256-entry session cache behind a lock: no state per client, no
/// lock shared by the workers, and no resumption lost to a full cache. TLS 1.3 resumption
/// still runs an ECDHE exchange (rustls offers only `psk_dhe_ke`), so the traffic keys
/// stay forward-secret.
///
/// The ticket keys outlive a reload while the certificate and key are the same, so a
/// reload costs clients no full handshake. Not with client certificates: a resumed session
/// carries the certificate it began with, so a CRL or CA reload must end resumption (each
/// config then gets fresh keys). Keys never leave the process: behind a load balancer a
/// client resumes only on the instance that issued its ticket.
fn ticketer(identity: [u8; 32], verifies_clients: bool) -> Result<Ticketer, String> {
    /// The ticketer of the last config without client certificates, by server identity.
    static KEPT: std::sync::Mutex<Option<([u8; 32], Ticketer)>> = std::sync::Mutex::new(None);
    let make = || {
        rustls::crypto::aws_lc_rs::Ticketer::new()
            .map_err(|e| format!("cannot make TLS session ticket keys: {e}"))
    };
    if verifies_clients {
        return make();
    }
    let mut kept = KEPT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((digest, ticketer)) = &*kept
        && *digest == identity
    {
        return Ok(ticketer.clone());
    }
    let ticketer = make()?;
    *kept = Some((identity, ticketer.clone()));
    Ok(ticketer)
}

type Ticketer = Arc<dyn rustls::server::ProducesTickets>;

/// SHA-256 over the certificate chain and the key: the server identity tickets belong to.
fn identity_digest(certs: &[CertificateDer<'_>], key: &PrivateKeyDer<'_>) -> [u8; 32] {
    let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for cert in certs {
        context.update(&(cert.len() as u64).to_be_bytes());
        context.update(cert);
    }
    context.update(key.secret_der());
    context
        .finish()
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

/// The verifier of client certificates: chains to `ca`, not revoked by `crls`.
fn client_verifier(
    clients: &ClientAuth,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, String> {
    let mut roots = rustls::RootCertStore::empty();
    let cas: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&clients.ca)
        .map_err(|e| format!("cannot read client_ca {}: {e}", clients.ca.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| {
            format!(
                "client_ca {} is not PEM certificates: {e}",
                clients.ca.display()
            )
        })?;
    for ca in cas {
        roots
            .add(ca)
            .map_err(|e| format!("client_ca {}: {e}", clients.ca.display()))?;
    }
    if roots.is_empty() {
        return Err(format!(
            "client_ca {} holds no certificate",
            clients.ca.display()
        ));
    }
    let mut crls = Vec::new();
    for path in &clients.crls {
        let found: Vec<rustls_pki_types::CertificateRevocationListDer<'static>> =
            rustls_pki_types::CertificateRevocationListDer::pem_file_iter(path)
                .map_err(|e| format!("cannot read client_crl {}: {e}", path.display()))?
                .collect::<Result<_, _>>()
                .map_err(|e| format!("client_crl {} is not a PEM CRL: {e}", path.display()))?;
        if found.is_empty() {
            return Err(format!("client_crl {} holds no CRL", path.display()));
        }
        crls.extend(found);
    }
    let mut builder = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots.into(),
        crypto_provider(),
    )
    .with_crls(crls);
    if !clients.required {
        builder = builder.allow_unauthenticated();
    }
    builder
        .build()
        .map_err(|e| format!("client certificates: {e}"))
}

/// Runs the server handshake, bounded by `timeout`.
pub async fn handshake(
    stream: TcpStream,
    config: Arc<ServerConfig>,
    timeout: Duration,
) -> io::Result<TlsStream<TcpStream>> {
    tokio::time::timeout(timeout, TlsAcceptor::from(config).accept(stream))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))?
}
