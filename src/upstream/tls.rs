//! TLS to the upstream (`https://` targets): rustls with the process's one crypto provider
//! (aws-lc-rs), the system's trusted roots plus the upstream's `ca_file`, the name to verify
//! and send as SNI (`server_name`, default the URL's host), an optional client certificate
//! (mTLS), ALPN `http/1.1`, and session resumption shared by all the pool's connections.
//!
//! There is no way to skip verification: an app with a private CA gets `ca_file`.
//!
//! Roots: the system's store (`rustls-native-certs`), not a bundle compiled into the binary
//! (`webpki-roots`). The CAs of the apps behind a gateway are mostly a company's own, which
//! operators install in the system store (`update-ca-certificates`) or name in `ca_file`;
//! a compiled-in Mozilla list cannot learn them and goes stale with the binary.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::ClientConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// What `[upstreams.NAME]` names for TLS, read from its files.
pub struct TlsSource<'a> {
    /// PEM certificates trusted in addition to the system's (`ca_file`).
    pub ca: Option<&'a [u8]>,
    /// PEM client certificate chain and private key (`client_cert`, `client_key`).
    pub client: Option<(&'a [u8], &'a [u8])>,
    /// The name the upstream's certificate must carry (`server_name`, else the URL's host).
    pub server_name: &'a str,
}

/// The TLS side of an `https://` upstream: one client config per upstream, so that the
/// pool's connections resume each other's sessions.
#[derive(Clone)]
pub struct UpstreamTls {
    connector: TlsConnector,
    server_name: ServerName<'static>,
    /// SHA-256 over everything `connector` was made from: a reload keeps the pool (its
    /// connections and its resumption cache) only when this is unchanged.
    fingerprint: [u8; 32],
}

impl UpstreamTls {
    /// Builds the client config. `system` is the system's roots (loaded once per config).
    /// Errors are sentences for the operator; the caller names the key.
    pub fn new(
        source: &TlsSource<'_>,
        system: &[CertificateDer<'static>],
    ) -> Result<Self, TlsIssue> {
        let server_name = ServerName::try_from(source.server_name)
            .map_err(|_| TlsIssue::ServerName(source.server_name.to_owned()))?
            .to_owned();
        let mut roots = rustls::RootCertStore::empty();
        // Unusable system roots are skipped, as every TLS client does.
        let _ = roots.add_parsable_certificates(system.iter().cloned());
        if let Some(pem) = source.ca {
            let certs = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| TlsIssue::Ca(format!("is not a PEM certificate bundle: {e}")))?;
            if certs.is_empty() {
                return Err(TlsIssue::Ca("holds no PEM certificate".into()));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| TlsIssue::Ca(format!("holds an unusable CA certificate: {e}")))?;
            }
        }
        if roots.is_empty() {
            return Err(TlsIssue::NoRoots);
        }
        let builder = ClientConfig::builder_with_provider(crate::tls::crypto_provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsIssue::Other(e.to_string()))?
            .with_root_certificates(roots);
        let mut config = match source.client {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = CertificateDer::pem_slice_iter(cert)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| {
                        TlsIssue::ClientCert(format!("is not a PEM certificate chain: {e}"))
                    })?;
                if chain.is_empty() {
                    return Err(TlsIssue::ClientCert("holds no PEM certificate".into()));
                }
                let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| {
                    TlsIssue::ClientKey(format!(
                        "is not a PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"
                    ))
                })?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| TlsIssue::ClientKey(format!("does not match client_cert: {e}")))?
            }
        };
        // The gateway's client speaks HTTP/1.1 (an app that would pick h2 must not).
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        // The default resumption store (256 sessions, tickets and session ids) is kept: one
        // per upstream, shared by its connections on every worker.

        let mut digest = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        for part in [
            source.server_name.as_bytes(),
            source.ca.unwrap_or_default(),
            source.client.map_or(&[][..], |c| c.0),
            source.client.map_or(&[][..], |c| c.1),
        ] {
            digest.update(&(part.len() as u64).to_le_bytes());
            digest.update(part);
        }
        for root in system {
            digest.update(root.as_ref());
        }
        let mut fingerprint = [0; 32];
        fingerprint.copy_from_slice(digest.finish().as_ref());
        Ok(UpstreamTls {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
            fingerprint,
        })
    }

    pub fn fingerprint(&self) -> &[u8; 32] {
        &self.fingerprint
    }

    /// The client handshake on a connected socket (the caller bounds it in time).
    pub(super) async fn handshake(&self, tcp: TcpStream) -> io::Result<Stream> {
        let tls = self
            .connector
            .connect(self.server_name.clone(), tcp)
            .await?;
        Ok(Stream::Tls(Box::new(tls)))
    }
}

/// Why an upstream's TLS settings cannot be used; the config compiler names the key.
#[derive(Debug)]
pub enum TlsIssue {
    ServerName(String),
    Ca(String),
    ClientCert(String),
    ClientKey(String),
    NoRoots,
    Other(String),
}

/// The system's trusted roots, as the operating system keeps them. Certificates it cannot
/// read are skipped (a partly broken store is normal); none at all is the caller's concern.
pub fn system_roots() -> Vec<CertificateDer<'static>> {
    rustls_native_certs::load_native_certs().certs
}

/// Whether an I/O error is a TLS failure (a certificate that does not verify, an alert from
/// the upstream, a record that is not TLS): those are `upstream_tls`, not a plain 502.
pub fn is_tls_error(error: &io::Error) -> bool {
    error
        .get_ref()
        .is_some_and(|inner| inner.is::<rustls::Error>())
}

/// A connection to the upstream: plain TCP or TLS over it.
pub enum Stream {
    Plain(TcpStream),
    // Boxed: the TLS state is large, and most upstreams are plain.
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    /// TLS may hold written bytes in its own buffer when the socket is full: the exchange
    /// flushes before it waits for the answer or for more of the request body.
    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(_) => Poll::Ready(Ok(())),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}
