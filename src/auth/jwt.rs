//! JWT verification against compiled providers.
//!
//! Order of checks, cheapest and least trusting first:
//! 1. shape: size bound, exactly three base64url parts (strict: no padding, canonical bits);
//! 2. JOSE header: `alg` must parse, `crit` is refused (we understand no extension), `jku`,
//!    `x5u`, `jwk` and `x5c` are ignored: keys only ever come from the config;
//! 3. the payload's `iss` selects the route's provider(s) before any signature work;
//! 4. `alg` must be on that provider's allow-list (from config, never from the token);
//! 5. keys: the one(s) bound to the token's `kid`, else the provider's unbound keys of the
//!    algorithm's family only (an RSA key is never used as an HMAC secret);
//! 6. signature, then `exp` (required), `nbf`, `iat`, `aud` with the provider's leeway.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;

use super::claims::Claims;

/// Tokens longer than this are refused before decoding (a bound on work per request).
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// A JWT issuer, compiled from `[providers.NAME]`.
pub struct Provider {
    pub name: Box<str>,
    pub issuer: Box<str>,
    pub audiences: Box<[Box<str>]>,
    pub algorithms: Box<[Algorithm]>,
    pub keys: Vec<VerifyKey>,
    /// Seconds of clock skew allowed on `exp`, `nbf`, `iat`.
    pub leeway: u64,
}

/// A verification key. Deliberately not `Debug`: an HMAC secret must never be printed.
pub struct VerifyKey {
    /// When set, the key only verifies tokens carrying this `kid`.
    pub kid: Option<Box<str>>,
    pub family: AlgorithmFamily,
    pub key: DecodingKey,
    /// Where the key came from (a file, an env var name), for `check` and logs.
    pub origin: String,
}

/// Why a token was refused. Logged at debug; clients only ever see `invalid_token`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("token larger than {MAX_TOKEN_LEN} bytes")]
    TooLarge,
    #[error("token is not a well-formed JWS compact serialisation")]
    Malformed,
    #[error("token header has a crit parameter")]
    UnsupportedCritical,
    #[error("token issuer is not accepted on this route")]
    UnknownIssuer,
    #[error("token algorithm is not on the provider's allow-list")]
    AlgorithmNotAllowed,
    #[error("no key matches the token's kid and algorithm")]
    UnknownKey,
    #[error("token signature does not verify")]
    BadSignature,
    #[error("token has no exp claim")]
    MissingExpiry,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet (nbf)")]
    NotYetValid,
    #[error("token was issued in the future (iat)")]
    IssuedInFuture,
    #[error("token audience is not accepted")]
    WrongAudience,
}

impl JwtError {
    /// Short stable name for logs and metrics.
    pub fn reason(self) -> &'static str {
        match self {
            JwtError::TooLarge => "too_large",
            JwtError::Malformed => "malformed",
            JwtError::UnsupportedCritical => "crit_header",
            JwtError::UnknownIssuer => "unknown_issuer",
            JwtError::AlgorithmNotAllowed => "alg_not_allowed",
            JwtError::UnknownKey => "unknown_kid",
            JwtError::BadSignature => "bad_signature",
            JwtError::MissingExpiry => "missing_exp",
            JwtError::Expired => "expired",
            JwtError::NotYetValid => "not_yet_valid",
            JwtError::IssuedInFuture => "iat_in_future",
            JwtError::WrongAudience => "wrong_audience",
        }
    }
}

#[derive(Deserialize)]
struct JoseHeader {
    alg: Algorithm,
    kid: Option<String>,
    crit: Option<IgnoredAny>,
}

/// A token that verified: which provider accepted it and its claims.
pub struct Verified {
    pub provider: usize,
    pub claims: Claims,
}

/// Verifies `token` against the providers with indices `allowed` (the route's providers).
/// `now` is seconds since the Unix epoch.
pub fn verify(
    token: &str,
    allowed: &[usize],
    providers: &[Provider],
    now: u64,
) -> Result<Verified, JwtError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(JwtError::TooLarge);
    }
    let (message, signature) = token.rsplit_once('.').ok_or(JwtError::Malformed)?;
    let (header_b64, payload_b64) = message.split_once('.').ok_or(JwtError::Malformed)?;
    if header_b64.is_empty() || payload_b64.contains('.') || signature.is_empty() {
        return Err(JwtError::Malformed);
    }
    let header: JoseHeader = decode_json(header_b64)?;
    if header.crit.is_some() {
        return Err(JwtError::UnsupportedCritical);
    }
    let claims: Claims = decode_json(payload_b64)?;
    let issuer = claims
        .get("iss")
        .and_then(Value::as_str)
        .ok_or(JwtError::UnknownIssuer)?;

    let mut outcome = Err(JwtError::UnknownIssuer);
    for &index in allowed {
        let provider = &providers[index];
        if &*provider.issuer != issuer {
            continue;
        }
        if !provider.algorithms.contains(&header.alg) {
            outcome = Err(most_specific(outcome.err(), JwtError::AlgorithmNotAllowed));
            continue;
        }
        match verify_signature(provider, &header, message, signature) {
            Ok(()) => {
                validate_claims(provider, &claims, now)?;
                return Ok(Verified {
                    provider: index,
                    claims,
                });
            }
            // Keep the most informative failure: a bad signature beats "no key", which
            // beats "algorithm not allowed", which beats "unknown issuer".
            Err(e) => outcome = Err(most_specific(outcome.err(), e)),
        }
    }
    outcome
}

fn most_specific(previous: Option<JwtError>, new: JwtError) -> JwtError {
    let rank = |e: JwtError| match e {
        JwtError::BadSignature => 3,
        JwtError::UnknownKey => 2,
        JwtError::AlgorithmNotAllowed => 1,
        _ => 0,
    };
    match previous {
        Some(p) if rank(p) >= rank(new) => p,
        _ => new,
    }
}

fn decode_json<T: serde::de::DeserializeOwned>(part: &str) -> Result<T, JwtError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| JwtError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| JwtError::Malformed)
}

fn verify_signature(
    provider: &Provider,
    header: &JoseHeader,
    message: &str,
    signature: &str,
) -> Result<(), JwtError> {
    let family = header.alg.family();
    let kid = header.kid.as_deref();
    // A token with a kid: the keys bound to that kid, then the unbound keys. Without a kid:
    // every key of the algorithm's family. Never a key of another family.
    let candidates = provider.keys.iter().filter(|k| k.family == family);
    let bound = candidates
        .clone()
        .filter(|k| kid.is_some() && k.kid.as_deref() == kid);
    let rest = candidates.filter(|k| kid.is_none() || k.kid.is_none());
    let mut tried_any = false;
    for key in bound.chain(rest) {
        tried_any = true;
        if jsonwebtoken::crypto::verify(signature, message.as_bytes(), &key.key, header.alg)
            .unwrap_or(false)
        {
            return Ok(());
        }
    }
    Err(if tried_any {
        JwtError::BadSignature
    } else {
        JwtError::UnknownKey
    })
}

fn validate_claims(provider: &Provider, claims: &Claims, now: u64) -> Result<(), JwtError> {
    let now = now as f64;
    let leeway = provider.leeway as f64;
    let exp = numeric_date(claims.get("exp"))?.ok_or(JwtError::MissingExpiry)?;
    if now >= exp + leeway {
        return Err(JwtError::Expired);
    }
    if let Some(nbf) = numeric_date(claims.get("nbf"))?
        && now + leeway < nbf
    {
        return Err(JwtError::NotYetValid);
    }
    if let Some(iat) = numeric_date(claims.get("iat"))?
        && iat > now + leeway
    {
        return Err(JwtError::IssuedInFuture);
    }
    let accepted = |aud: &str| provider.audiences.iter().any(|a| &**a == aud);
    let audience_ok = match claims.get("aud") {
        Some(Value::String(aud)) => accepted(aud),
        Some(Value::Array(auds)) => auds.iter().filter_map(Value::as_str).any(accepted),
        _ => false,
    };
    if !audience_ok {
        return Err(JwtError::WrongAudience);
    }
    Ok(())
}

/// A NumericDate claim: absent is `None`, present but not a number is malformed.
fn numeric_date(value: Option<&Value>) -> Result<Option<f64>, JwtError> {
    match value {
        None => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or(JwtError::Malformed),
    }
}
