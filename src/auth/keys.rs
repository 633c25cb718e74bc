//! Verification keys of a provider: the set in force, and parsing them from a JWKS.
//!
//! Every provider holds its current [`KeySet`] in an `ArcSwap`: requests read it without a
//! lock; a refresh (`remote.rs`) builds a whole new set and swaps it in. Static keys (PEM
//! files, an HMAC secret, a local JWKS file) are part of every set; keys fetched from
//! `jwks_url` or through OIDC `discovery` are added to them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use tokio::time::Instant;

use super::verifier::{Prepared, algorithms_of, prepare};

static NEXT_KEY_ID: AtomicU64 = AtomicU64::new(1);

/// A verification key. Deliberately not `Debug`: an HMAC secret must never be printed.
pub struct VerifyKey {
    /// Unique in the process: cached verifications name the key that produced them.
    pub id: u64,
    /// When set, the key only verifies tokens carrying this `kid`.
    pub kid: Option<Box<str>>,
    pub family: AlgorithmFamily,
    /// For JWKS keys that declare `alg`: the only algorithm they verify.
    pub alg: Option<Algorithm>,
    pub key: DecodingKey,
    /// Where the key came from (a file, an env var name, a URL), for `check` and logs.
    pub origin: String,
    /// The key parsed once for each algorithm of its family it can verify.
    prepared: Vec<(Algorithm, Prepared)>,
}

impl VerifyKey {
    pub fn new(
        kid: Option<Box<str>>,
        family: AlgorithmFamily,
        key: DecodingKey,
        origin: String,
    ) -> Self {
        let prepared = algorithms_of(family)
            .iter()
            .filter_map(|&alg| prepare(&key, alg).map(|p| (alg, p)))
            .collect();
        VerifyKey {
            id: NEXT_KEY_ID.fetch_add(1, Ordering::Relaxed),
            kid,
            family,
            alg: None,
            key,
            origin,
            prepared,
        }
    }

    /// Whether this key may verify a token signed with `alg`.
    pub fn accepts(&self, alg: Algorithm) -> bool {
        self.family == alg.family() && self.alg.is_none_or(|a| a == alg)
    }

    /// Verifies a decoded `signature` over `message` for `alg`.
    pub fn verify(&self, alg: Algorithm, message: &[u8], signature: &[u8]) -> bool {
        self.accepts(alg)
            && self
                .prepared
                .iter()
                .find(|(a, _)| *a == alg)
                .is_some_and(|(_, key)| key.verify(message, signature))
    }
}

/// The keys a provider verifies with right now.
#[derive(Default)]
pub struct KeySet {
    pub keys: Vec<Arc<VerifyKey>>,
    /// When the remote part was last fetched successfully (None: never, or static only).
    pub fetched_at: Option<Instant>,
}

impl KeySet {
    pub fn contains_key(&self, id: u64) -> bool {
        self.keys.iter().any(|k| k.id == id)
    }

    pub fn knows_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }
}

/// Parses a JWKS document into keys the provider's allow-list can use. Keys that are not
/// for signatures, of an unsupported type, or whose `alg` is not allowed are skipped
/// (reported in the second value, for the log).
pub fn parse_jwks(
    body: &[u8],
    allowed: &[Algorithm],
    origin: &str,
) -> Result<(Vec<VerifyKey>, Vec<String>), String> {
    #[derive(serde::Deserialize)]
    struct RawSet {
        keys: Vec<serde_json::Value>,
    }
    let set: RawSet =
        serde_json::from_slice(body).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    for (i, raw) in set.keys.into_iter().enumerate() {
        match jwk_key(raw, allowed, origin) {
            Ok(key) => keys.push(key),
            Err(why) => skipped.push(format!("keys[{i}]: {why}")),
        }
    }
    Ok((keys, skipped))
}

fn jwk_key(
    raw: serde_json::Value,
    allowed: &[Algorithm],
    origin: &str,
) -> Result<VerifyKey, String> {
    let jwk: Jwk = serde_json::from_value(raw).map_err(|e| format!("unreadable key: {e}"))?;
    if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
        return Err("not a signature key (use)".into());
    }
    let family = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => AlgorithmFamily::Rsa,
        AlgorithmParameters::EllipticCurve(p)
            if matches!(p.curve, EllipticCurve::P256 | EllipticCurve::P384) =>
        {
            AlgorithmFamily::Ec
        }
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            AlgorithmFamily::Ed
        }
        // Symmetric keys never come from a JWKS endpoint we trust: it is public.
        _ => return Err("unsupported key type".into()),
    };
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(declared) => {
            let alg: Algorithm = declared
                .to_string()
                .parse()
                .map_err(|_| "unsupported alg")?;
            if !allowed.contains(&alg) || alg.family() != family {
                return Err(format!("alg {declared} is not on the allow-list"));
            }
            Some(alg)
        }
    };
    if !allowed.iter().any(|a| a.family() == family) {
        return Err("no allowed algorithm for this key type".into());
    }
    if let AlgorithmParameters::EllipticCurve(p) = &jwk.algorithm {
        let fits = |a: Algorithm| match p.curve {
            EllipticCurve::P256 => a == Algorithm::ES256,
            _ => a == Algorithm::ES384,
        };
        if alg.is_some_and(|a| !fits(a)) {
            return Err("curve does not match alg".into());
        }
    }
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("bad key material: {e}"))?;
    let mut key = VerifyKey::new(
        jwk.common.key_id.map(Into::into),
        family,
        key,
        origin.to_owned(),
    );
    key.alg = alg;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwks_keys_are_filtered_by_the_allow_list() {
        let jwks = br#"{"keys":[
            {"kty":"oct","k":"c2VjcmV0","kid":"sym"},
            {"kty":"RSA","use":"enc","kid":"enc","n":"sXch","e":"AQAB"},
            {"kty":"EC","crv":"P-256","kid":"ec","alg":"ES256","x":"MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4","y":"4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM"},
            {"kty":"weird","kid":"w"}
        ]}"#;
        let (keys, skipped) = parse_jwks(jwks, &[Algorithm::ES256], "test").unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("ec"));
        assert_eq!(skipped.len(), 3, "{skipped:?}");
        let (keys, _) = parse_jwks(jwks, &[Algorithm::RS256], "test").unwrap();
        assert!(
            keys.is_empty(),
            "an ES256 key must not be usable with an RS256-only provider"
        );
        assert!(parse_jwks(b"[]", &[Algorithm::ES256], "t").is_err());
    }
}
