//! `auth = "mtls"`: the identity of a verified client certificate.
//!
//! rustls verifies the certificate during the handshake (`[tls] client_ca`, `client_crl`);
//! this reads the verified leaf once per connection and makes its identity:
//! - `sub`: the first of the names `[tls] identity_from` lists that the certificate has
//!   (default: a SAN URI, a SAN email, a SAN DNS name, the subject CN);
//! - `cn`, `email` (the first SAN email), `dns` and `uri` (the SANs, as lists) when present;
//! - `x5t#S256`: the certificate's SHA-256 thumbprint (RFC 8705), base64url.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::{Map, Value};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::claims::Claims;

/// A name of the certificate that `identity_from` may choose as `sub`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    SanUri,
    SanEmail,
    SanDns,
    Cn,
}

impl NameKind {
    pub fn parse(text: &str) -> Option<NameKind> {
        match text {
            "san_uri" => Some(NameKind::SanUri),
            "san_email" => Some(NameKind::SanEmail),
            "san_dns" => Some(NameKind::SanDns),
            "cn" => Some(NameKind::Cn),
            _ => None,
        }
    }
}

/// The default order of `identity_from`.
pub const DEFAULT_ORDER: [NameKind; 4] = [
    NameKind::SanUri,
    NameKind::SanEmail,
    NameKind::SanDns,
    NameKind::Cn,
];

/// The identity of a verified leaf certificate (DER); `None` when it cannot be parsed or
/// has none of the names `order` accepts.
pub fn identity(der: &[u8], order: &[NameKind]) -> Option<Arc<Claims>> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let mut uris = Vec::new();
    let mut emails = Vec::new();
    let mut dns = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(uri) => uris.push(uri.to_string()),
                GeneralName::RFC822Name(email) => emails.push(email.to_string()),
                GeneralName::DNSName(name) => dns.push(name.to_string()),
                _ => {}
            }
        }
    }
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned);
    let sub = order.iter().find_map(|kind| match kind {
        NameKind::SanUri => uris.first().cloned(),
        NameKind::SanEmail => emails.first().cloned(),
        NameKind::SanDns => dns.first().cloned(),
        NameKind::Cn => cn.clone(),
    })?;
    let mut claims = Map::new();
    claims.insert("sub".into(), Value::String(sub));
    if let Some(cn) = cn {
        claims.insert("cn".into(), Value::String(cn));
    }
    if let Some(email) = emails.first() {
        claims.insert("email".into(), Value::String(email.clone()));
    }
    for (name, list) in [("dns", dns), ("uri", uris)] {
        if !list.is_empty() {
            claims.insert(name.into(), list.into());
        }
    }
    let thumbprint = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    claims.insert("x5t#S256".into(), Value::String(B64.encode(thumbprint)));
    Some(Arc::new(Claims::from_map(claims)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};

    fn cert(cn: Option<&str>, sans: Vec<SanType>) -> Vec<u8> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        if let Some(cn) = cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        params.subject_alt_names = sans;
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn sub_is_the_first_name_the_order_accepts() {
        let der = cert(
            Some("Batch Service"),
            vec![
                SanType::Rfc822Name("batch@example.com".try_into().unwrap()),
                SanType::URI("spiffe://corp/batch".try_into().unwrap()),
                SanType::DnsName("batch.corp".try_into().unwrap()),
            ],
        );
        let claims = identity(&der, &DEFAULT_ORDER).unwrap();
        assert_eq!(claims.subject(), Some("spiffe://corp/batch"));
        assert_eq!(claims.get("email").unwrap(), "batch@example.com");
        assert_eq!(claims.get("cn").unwrap(), "Batch Service");
        assert_eq!(
            claims.get("dns").unwrap(),
            &serde_json::json!(["batch.corp"])
        );
        assert_eq!(claims.get("x5t#S256").unwrap().as_str().unwrap().len(), 43);
        let by_cn = identity(&der, &[NameKind::Cn]).unwrap();
        assert_eq!(by_cn.subject(), Some("Batch Service"));
        let by_email = identity(&der, &[NameKind::SanEmail, NameKind::Cn]).unwrap();
        assert_eq!(by_email.subject(), Some("batch@example.com"));
    }

    #[test]
    fn a_certificate_without_an_accepted_name_has_no_identity() {
        let der = cert(Some("only a cn"), vec![]);
        assert!(identity(&der, &[NameKind::SanEmail, NameKind::SanUri]).is_none());
        assert!(identity(b"not a certificate", &DEFAULT_ORDER).is_none());
    }
}
