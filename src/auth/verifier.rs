//! Signature checks with keys parsed once, at load time.
//!
//! jsonwebtoken's `crypto::verify` re-parses the public key (and copies it) on every call;
//! on the hot path that is a third to a half of the cost of a verification. Here each key
//! is parsed once per algorithm it may verify (aws-lc-rs `ParsedPublicKey`, or an HMAC key
//! schedule), and a verification is one call into aws-lc.

use aws_lc_rs::signature::{self, ParsedPublicKey, VerificationAlgorithm};
use aws_lc_rs::{hmac, signature::UnparsedPublicKey};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind};

/// A key ready to verify one algorithm.
pub enum Prepared {
    Public(ParsedPublicKey),
    Hmac(Box<hmac::Key>),
}

impl Prepared {
    /// Verifies `signature` (already base64url-decoded) over `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        match self {
            Prepared::Public(key) => key.verify_sig(message, signature).is_ok(),
            Prepared::Hmac(key) => hmac::verify(key, message, signature).is_ok(),
        }
    }
}

/// Every algorithm of `family`.
pub fn algorithms_of(family: AlgorithmFamily) -> &'static [Algorithm] {
    use Algorithm::*;
    match family {
        AlgorithmFamily::Hmac => &[HS256, HS384, HS512],
        AlgorithmFamily::Rsa => &[RS256, RS384, RS512, PS256, PS384, PS512],
        AlgorithmFamily::Ec => &[ES256, ES384],
        AlgorithmFamily::Ed => &[EdDSA],
    }
}

/// Parses `key` for `alg`; `None` when the key cannot verify it (wrong curve, too small).
pub fn prepare(key: &DecodingKey, alg: Algorithm) -> Option<Prepared> {
    let hmac_alg = match alg {
        Algorithm::HS256 => Some(hmac::HMAC_SHA256),
        Algorithm::HS384 => Some(hmac::HMAC_SHA384),
        Algorithm::HS512 => Some(hmac::HMAC_SHA512),
        _ => None,
    };
    if let Some(hmac_alg) = hmac_alg {
        let DecodingKeyKind::SecretOrDer(secret) = key.kind() else {
            return None;
        };
        return Some(Prepared::Hmac(Box::new(hmac::Key::new(hmac_alg, secret))));
    }
    let verification: &'static dyn VerificationAlgorithm = match alg {
        Algorithm::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
        Algorithm::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &signature::RSA_PSS_2048_8192_SHA384,
        Algorithm::PS512 => &signature::RSA_PSS_2048_8192_SHA512,
        Algorithm::ES256 => &signature::ECDSA_P256_SHA256_FIXED,
        Algorithm::ES384 => &signature::ECDSA_P384_SHA384_FIXED,
        Algorithm::EdDSA => &signature::ED25519,
        _ => return None,
    };
    let der;
    let bytes: &[u8] = match key.kind() {
        DecodingKeyKind::SecretOrDer(bytes) => bytes,
        DecodingKeyKind::RsaModulusExponent { n, e } => {
            der = rsa_public_key_der(n, e);
            &der
        }
    };
    UnparsedPublicKey::new(verification, bytes)
        .parse()
        .ok()
        .map(Prepared::Public)
}

/// PKCS#1 `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }`.
fn rsa_public_key_der(n: &[u8], e: &[u8]) -> Vec<u8> {
    fn integer(out: &mut Vec<u8>, value: &[u8]) {
        let trimmed = match value.iter().position(|&b| b != 0) {
            Some(first) => &value[first..],
            None => &[0][..],
        };
        let pad = trimmed[0] & 0x80 != 0;
        out.push(0x02);
        length(out, trimmed.len() + usize::from(pad));
        if pad {
            out.push(0);
        }
        out.extend_from_slice(trimmed);
    }
    fn length(out: &mut Vec<u8>, len: usize) {
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let bytes = len.to_be_bytes();
            let first = bytes
                .iter()
                .position(|&b| b != 0)
                .unwrap_or(bytes.len() - 1);
            out.push(0x80 | (bytes.len() - first) as u8);
            out.extend_from_slice(&bytes[first..]);
        }
    }
    let mut body = Vec::with_capacity(n.len() + e.len() + 16);
    integer(&mut body, n);
    integer(&mut body, e);
    let mut der = Vec::with_capacity(body.len() + 8);
    der.push(0x30);
    length(&mut der, body.len());
    der.extend_from_slice(&body);
    der
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_integers_are_minimal_and_positive() {
        let der = rsa_public_key_der(&[0x00, 0x80, 0x01], &[0x01, 0x00, 0x01]);
        assert_eq!(
            der,
            vec![
                0x30, 0x0a, 0x02, 0x03, 0x00, 0x80, 0x01, 0x02, 0x03, 0x01, 0x00, 0x01
            ]
        );
        let long = rsa_public_key_der(&[0x7f; 256], &[3]);
        assert_eq!(&long[..4], &[0x30, 0x82, 0x01, 0x07]);
        assert_eq!(&long[4..8], &[0x02, 0x82, 0x01, 0x00]);
    }
}
