//! `[api_keys]`: static keys for machine clients (`auth = "api_key"`).
//!
//! The keys file holds no key, only the SHA-256 of each, with the identity it stands for:
//!
//! ```toml
//! [[keys]]
//! sha256 = "1pW0...base64url..."       # `portcullis api-key new` prints the key and this line
//! sub = "svc-batch"
//! scopes = ["crm.read"]
//! claims = { team = "billing" }        # optional, more claims for requirements and headers
//! ```
//!
//! Why SHA-256 and not Argon2 or bcrypt: the keys are 256 random bits made by `api-key new`,
//! so there is nothing to slow down a guess of (a slow hash protects low-entropy passwords),
//! while every request pays the hash. BLAKE3 would be a little faster but is one more
//! crypto crate beside aws-lc-rs. A leaked keys file gives away no key.
//!
//! The presented key is hashed first; the digest is looked up, and the stored digest is
//! compared in constant time. Nothing is compared with the key itself, so the time a
//! refusal takes says nothing about how close a guess was.

use std::collections::HashMap;
use std::sync::Arc;

use aws_lc_rs::digest;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use http::HeaderMap;
use http::header::{AUTHORIZATION, HeaderName};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::claims::Claims;
use super::credential::CredentialError;

/// The prefix of every key `api-key new` makes (greppable in leaked logs and repos).
pub const KEY_PREFIX: &str = "pck_";

/// Compiled `[api_keys]`.
pub struct ApiKeys {
    /// Where a key is read: this header...
    header: HeaderName,
    /// ...or `Authorization: <scheme> <key>`.
    scheme: Box<str>,
    keys: HashMap<[u8; 32], Arc<Claims>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    keys: Vec<RawKey>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    sha256: String,
    sub: String,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    claims: Map<String, Value>,
    /// A note for the operator (who holds it, when it was issued); not a claim.
    #[allow(dead_code)]
    note: Option<String>,
}

impl ApiKeys {
    /// Parses the keys file; errors name the entry (`keys[2].sha256: ...`).
    pub fn parse(text: &str, header: HeaderName, scheme: &str) -> Result<ApiKeys, String> {
        let raw: RawFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut keys = HashMap::with_capacity(raw.keys.len());
        for (i, key) in raw.keys.into_iter().enumerate() {
            let digest: [u8; 32] = B64
                .decode(key.sha256.trim())
                .ok()
                .and_then(|d| d.try_into().ok())
                .ok_or_else(|| {
                    format!("keys[{i}].sha256: not a base64url SHA-256 (43 characters, as `portcullis api-key new` prints)")
                })?;
            if key.sub.is_empty() {
                return Err(format!("keys[{i}].sub: must name the client"));
            }
            let mut claims = key.claims;
            for reserved in ["sub", "scope"] {
                if claims.contains_key(reserved) {
                    return Err(format!(
                        "keys[{i}].claims: \"{reserved}\" is set by the `{reserved}` key of the entry"
                    ));
                }
            }
            claims.insert("sub".into(), Value::String(key.sub));
            if !key.scopes.is_empty() {
                claims.insert("scope".into(), Value::String(key.scopes.join(" ")));
            }
            if keys
                .insert(digest, Arc::new(Claims::from_map(claims)))
                .is_some()
            {
                return Err(format!("keys[{i}].sha256: the same key is listed twice"));
            }
        }
        Ok(ApiKeys {
            header,
            scheme: scheme.into(),
            keys,
        })
    }

    pub fn header(&self) -> &HeaderName {
        &self.header
    }

    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key the request presents, if any: the header or `Authorization: <scheme> KEY`.
    /// Two different keys, or the header twice, are ambiguous.
    pub fn presented<'h>(
        &self,
        headers: &'h HeaderMap,
    ) -> Result<Option<&'h [u8]>, CredentialError> {
        let mut found: Option<&[u8]> = None;
        let mut values = headers.get_all(&self.header).iter();
        if let Some(value) = values.next() {
            if values.next().is_some() {
                return Err(CredentialError::Ambiguous);
            }
            found = Some(value.as_bytes());
        }
        for value in headers.get_all(AUTHORIZATION) {
            if let Some(key) = scheme_value(value.as_bytes(), &self.scheme) {
                match found {
                    Some(other) if other != key => return Err(CredentialError::Ambiguous),
                    _ => found = Some(key),
                }
            }
        }
        Ok(found)
    }

    /// The identity of a presented key, or `None` for a key not in the file.
    pub fn verify(&self, presented: &[u8]) -> Option<Arc<Claims>> {
        let digest = hash(presented);
        let (stored, claims) = self.keys.get_key_value(&digest)?;
        // The map found it by the digest; this confirms it without an early exit.
        same_digest(stored, &digest).then(|| claims.clone())
    }
}

/// `Authorization: <scheme> <value>` with the scheme matched case-insensitively.
pub fn scheme_value<'v>(value: &'v [u8], scheme: &str) -> Option<&'v [u8]> {
    let rest = value.get(scheme.len()..)?;
    (value[..scheme.len()].eq_ignore_ascii_case(scheme.as_bytes()) && rest.first() == Some(&b' '))
        .then(|| &rest[1..])
}

fn hash(key: &[u8]) -> [u8; 32] {
    digest::digest(&digest::SHA256, key)
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

/// Constant-time equality of two digests.
fn same_digest(a: &[u8; 32], b: &[u8; 32]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}

/// A new key and the `sha256` line of its entry.
pub fn new_key() -> (String, String) {
    let mut random = [0u8; 32];
    aws_lc_rs::rand::fill(&mut random).expect("the system RNG works");
    let key = format!("{KEY_PREFIX}{}", B64.encode(random));
    let digest = B64.encode(hash(key.as_bytes()));
    (key, digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(entries: &[(&str, &str)]) -> ApiKeys {
        let text: String = entries
            .iter()
            .map(|(key, sub)| {
                format!(
                    "[[keys]]\nsha256 = \"{}\"\nsub = \"{sub}\"\nscopes = [\"crm.read\", \"crm.write\"]\nclaims = {{ team = \"ops\" }}\n",
                    B64.encode(hash(key.as_bytes()))
                )
            })
            .collect();
        ApiKeys::parse(&text, HeaderName::from_static("x-api-key"), "ApiKey").unwrap()
    }

    #[test]
    fn a_listed_key_is_its_identity_and_nothing_else_is() {
        let (key, _) = new_key();
        let k = keys(&[(&key, "svc-batch")]);
        let claims = k.verify(key.as_bytes()).unwrap();
        assert_eq!(claims.subject(), Some("svc-batch"));
        assert_eq!(claims.get("scope").unwrap(), "crm.read crm.write");
        assert_eq!(claims.get("team").unwrap(), "ops");
        // A key sharing all but the last character, a prefix, an empty key: none.
        let mut near = key.clone().into_bytes();
        *near.last_mut().unwrap() ^= 1;
        assert!(k.verify(&near).is_none());
        assert!(k.verify(&key.as_bytes()[..key.len() - 1]).is_none());
        assert!(k.verify(b"").is_none());
    }

    #[test]
    fn the_comparison_is_of_digests_in_constant_time() {
        // `same_digest` must find a difference at any position (it does not stop at the
        // first one it meets; aws-lc's CRYPTO_memcmp) and report equality exactly.
        let a = hash(b"a");
        assert!(same_digest(&a, &a.clone()));
        for i in 0..32 {
            let mut b = a;
            b[i] ^= 0x80;
            assert!(!same_digest(&a, &b), "a difference at byte {i} was missed");
        }
        // And the map is keyed by digests: the presented key itself is never compared.
        let (key, line) = new_key();
        assert_eq!(B64.decode(line).unwrap(), hash(key.as_bytes()));
    }

    #[test]
    fn keys_come_from_the_header_or_the_authorization_scheme() {
        let k = keys(&[]);
        let mut headers = HeaderMap::new();
        assert_eq!(k.presented(&headers).unwrap(), None);
        headers.insert("x-api-key", "pck_a".parse().unwrap());
        assert_eq!(k.presented(&headers).unwrap(), Some(&b"pck_a"[..]));
        headers.insert(AUTHORIZATION, "apikey pck_a".parse().unwrap());
        assert_eq!(k.presented(&headers).unwrap(), Some(&b"pck_a"[..]));
        headers.insert(AUTHORIZATION, "ApiKey pck_b".parse().unwrap());
        assert!(k.presented(&headers).is_err());
        headers.remove("x-api-key");
        assert_eq!(k.presented(&headers).unwrap(), Some(&b"pck_b"[..]));
        headers.insert(AUTHORIZATION, "Bearer pck_b".parse().unwrap());
        assert_eq!(k.presented(&headers).unwrap(), None);
    }

    #[test]
    fn a_bad_file_names_the_entry() {
        let h = || HeaderName::from_static("x-api-key");
        let bad = |text: &str| ApiKeys::parse(text, h(), "ApiKey").err().unwrap();
        assert!(bad("[[keys]]\nsha256 = \"short\"\nsub = \"a\"\n").starts_with("keys[0].sha256"));
        let digest = B64.encode(hash(b"k"));
        assert!(
            bad(&format!("[[keys]]\nsha256 = \"{digest}\"\nsub = \"\"\n"))
                .starts_with("keys[0].sub")
        );
        assert!(bad(&format!(
            "[[keys]]\nsha256 = \"{digest}\"\nsub = \"a\"\n[[keys]]\nsha256 = \"{digest}\"\nsub = \"b\"\n"
        ))
        .starts_with("keys[1].sha256"));
        assert!(
            bad(&format!(
                "[[keys]]\nsha256 = \"{digest}\"\nsub = \"a\"\nclaims = {{ sub = \"x\" }}\n"
            ))
            .starts_with("keys[0].claims")
        );
        assert!(
            bad("[[keys]]\nsha256 = \"x\"\nsub = \"a\"\nsubject = \"typo\"\n").contains("subject")
        );
    }
}
