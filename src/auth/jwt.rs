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

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;

use super::claims::Claims;
use super::keys::KeySet;
pub use super::keys::VerifyKey;
use super::remote::Remote;
use crate::outcome::Outcome;

/// Tokens longer than this are refused before decoding (a bound on work per request).
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// A JWT issuer, compiled from `[providers.NAME]`.
pub struct Provider {
    pub name: Box<str>,
    pub issuer: Box<str>,
    pub audiences: Box<[Box<str>]>,
    pub algorithms: Box<[Algorithm]>,
    /// The keys in force; swapped whole when remote keys are refreshed.
    pub keys: Arc<ArcSwap<KeySet>>,
    /// Set when keys come from `jwks_url` or `discovery`.
    pub remote: Option<Arc<Remote>>,
    /// Seconds of clock skew allowed on `exp`, `nbf`, `iat`.
    pub leeway: u64,
    /// How long a verification may be reused from the token cache (zero: never).
    pub cache_ttl: Duration,
    /// `introspection`: opaque tokens (and with `introspect_jwts` every token) are asked
    /// about at the issuer's RFC 7662 endpoint.
    pub introspection: Option<Arc<super::introspect::Introspection>>,
}

impl Provider {
    /// A provider with a fixed key set.
    pub fn with_static_keys(
        name: &str,
        issuer: &str,
        audiences: &[&str],
        algorithms: &[Algorithm],
        keys: Vec<VerifyKey>,
    ) -> Self {
        Provider {
            name: name.into(),
            issuer: issuer.into(),
            audiences: audiences.iter().map(|a| (*a).into()).collect(),
            algorithms: algorithms.into(),
            keys: Arc::new(ArcSwap::from_pointee(KeySet {
                keys: keys.into_iter().map(Arc::new).collect(),
                fetched_at: None,
            })),
            remote: None,
            leeway: 30,
            cache_ttl: Duration::from_secs(300),
            introspection: None,
        }
    }

    /// False while a remote provider has never had a key.
    pub fn has_keys(&self) -> bool {
        !self.keys.load().keys.is_empty()
    }

    /// Ready to check tokens: it has keys, or it only introspects (no algorithms).
    pub fn ready(&self) -> bool {
        self.has_keys() || (self.introspection.is_some() && self.algorithms.is_empty())
    }
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
    #[error("a registered claim has the wrong JSON type")]
    ClaimType,
}

impl JwtError {
    /// The outcome of a request refused for it (logs and metrics).
    pub fn outcome(self) -> Outcome {
        match self {
            JwtError::TooLarge => Outcome::TooLarge,
            JwtError::Malformed => Outcome::Malformed,
            JwtError::UnsupportedCritical => Outcome::CritHeader,
            JwtError::UnknownIssuer => Outcome::UnknownIssuer,
            JwtError::AlgorithmNotAllowed => Outcome::AlgNotAllowed,
            JwtError::UnknownKey => Outcome::UnknownKid,
            JwtError::BadSignature => Outcome::BadSignature,
            JwtError::MissingExpiry => Outcome::MissingExp,
            JwtError::Expired => Outcome::Expired,
            JwtError::NotYetValid => Outcome::NotYetValid,
            JwtError::IssuedInFuture => Outcome::IatInFuture,
            JwtError::WrongAudience => Outcome::WrongAudience,
            JwtError::ClaimType => Outcome::ClaimType,
        }
    }
}

#[derive(Deserialize)]
struct JoseHeader {
    alg: Algorithm,
    kid: Option<String>,
    crit: Option<IgnoredAny>,
}

/// A token that verified: which provider and key accepted it, and its claims.
pub struct Verified {
    pub provider: usize,
    pub key_id: u64,
    /// `exp` plus the provider's leeway (seconds since the epoch).
    pub valid_until: f64,
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
    verify_with(token, allowed, providers, now, Audience::Provider)
}

/// Whose audience a token must name.
#[derive(Clone, Copy)]
enum Audience<'a> {
    /// One of the provider's `audiences` (access tokens).
    Provider,
    /// This OIDC client id (ID and logout tokens): `aud` contains it, and with several
    /// audiences `azp` must be it (OIDC Core 3.1.3.7).
    Client(&'a str),
}

/// An ID token or logout token for OIDC client `client_id`, from provider `index`: the
/// provider's keys and algorithm allow-list, its issuer, `exp`/`nbf`/`iat`, and the
/// client's audience. Returns the claims.
/// Like the access-token path, an unknown `kid` triggers one (rate-limited) key refetch.
pub async fn verify_for_client(
    token: &str,
    index: usize,
    providers: &[Provider],
    client_id: &str,
    now: u64,
) -> Result<Claims, JwtError> {
    verify_refreshing_with(token, &[index], providers, now, Audience::Client(client_id))
        .await
        .map(|v| v.claims)
}

fn verify_with(
    token: &str,
    allowed: &[usize],
    providers: &[Provider],
    now: u64,
    audience: Audience<'_>,
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
    check_claim_types(&claims)?;
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
            Ok(key_id) => {
                let valid_until = validate_claims(provider, &claims, now, audience)?;
                return Ok(Verified {
                    provider: index,
                    key_id,
                    valid_until,
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
        JwtError::TooLarge
        | JwtError::Malformed
        | JwtError::UnsupportedCritical
        | JwtError::UnknownIssuer
        | JwtError::MissingExpiry
        | JwtError::Expired
        | JwtError::NotYetValid
        | JwtError::IssuedInFuture
        | JwtError::WrongAudience
        | JwtError::ClaimType => 0,
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

/// Returns the id of the key that verified the signature.
fn verify_signature(
    provider: &Provider,
    header: &JoseHeader,
    message: &str,
    signature: &str,
) -> Result<u64, JwtError> {
    let keys = provider.keys.load();
    let kid = header.kid.as_deref();
    // A token with a kid: the keys bound to that kid, then the unbound keys. Without a kid:
    // every key of the algorithm's family. Never a key of another family, nor a JWKS key
    // declared for another algorithm.
    let candidates = keys.keys.iter().filter(|k| k.accepts(header.alg));
    let bound = candidates
        .clone()
        .filter(|k| kid.is_some() && k.kid.as_deref() == kid);
    let rest = candidates.filter(|k| kid.is_none() || k.kid.is_none());
    // The largest signature is RSA-8192's 1024 bytes: decode on the stack.
    let mut buffer = [0u8; 1024];
    let decoded = URL_SAFE_NO_PAD
        .decode_slice(signature, &mut buffer)
        .map_err(|_| JwtError::Malformed)?;
    let signature = &buffer[..decoded];
    let mut tried_any = false;
    for key in bound.chain(rest) {
        tried_any = true;
        if key.verify(header.alg, message.as_bytes(), signature) {
            return Ok(key.id);
        }
    }
    Err(if tried_any {
        JwtError::BadSignature
    } else {
        JwtError::UnknownKey
    })
}

/// Returns `exp` plus leeway: until when the token stays valid.
fn validate_claims(
    provider: &Provider,
    claims: &Claims,
    now: u64,
    audience: Audience<'_>,
) -> Result<f64, JwtError> {
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
    let accepted = |aud: &str| match audience {
        Audience::Provider => provider.audiences.iter().any(|a| &**a == aud),
        Audience::Client(client) => aud == client,
    };
    let mut audience_ok = match claims.get("aud") {
        Some(Value::String(aud)) => accepted(aud),
        Some(Value::Array(auds)) => auds.iter().filter_map(Value::as_str).any(accepted),
        _ => false,
    };
    if let (Audience::Client(client), Some(Value::Array(auds))) = (audience, claims.get("aud"))
        && auds.len() > 1
    {
        audience_ok &= claims.get("azp").and_then(Value::as_str) == Some(client);
    }
    if !audience_ok {
        return Err(JwtError::WrongAudience);
    }
    Ok(exp + leeway)
}

/// [`verify`], and when no key matched, one refetch of the keys of the remote providers
/// that could have issued the token (rate-limited and single-flight in `remote::Remote`).
pub async fn verify_refreshing(
    token: &str,
    allowed: &[usize],
    providers: &[Provider],
    now: u64,
) -> Result<Verified, JwtError> {
    verify_refreshing_with(token, allowed, providers, now, Audience::Provider).await
}

async fn verify_refreshing_with(
    token: &str,
    allowed: &[usize],
    providers: &[Provider],
    now: u64,
    audience: Audience<'_>,
) -> Result<Verified, JwtError> {
    let first = verify_with(token, allowed, providers, now, audience);
    if first.as_ref().err() != Some(&JwtError::UnknownKey) {
        return first;
    }
    let Some((kid, issuer)) = kid_and_issuer(token) else {
        return first;
    };
    let mut refreshed = false;
    for &index in allowed {
        let provider = &providers[index];
        if let (Some(remote), true) = (&provider.remote, *provider.issuer == *issuer) {
            refreshed |= remote.refresh_for_unknown_kid(&kid).await;
        }
    }
    if refreshed {
        verify_with(token, allowed, providers, now, audience)
    } else {
        first
    }
}

/// The token's `kid` ("" when absent) and `iss`, unverified: only to pick whom to ask.
fn kid_and_issuer(token: &str) -> Option<(String, String)> {
    let mut parts = token.split('.');
    let header: JoseHeader = decode_json(parts.next()?).ok()?;
    let claims: Claims = decode_json(parts.next()?).ok()?;
    let issuer = claims.get("iss")?.as_str()?.to_owned();
    Some((header.kid.unwrap_or_default(), issuer))
}

/// A NumericDate claim: absent is `None`; present, it is a number
/// ([`check_claim_types`]).
fn numeric_date(value: Option<&Value>) -> Result<Option<f64>, JwtError> {
    match value {
        None => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or(JwtError::ClaimType),
    }
}

/// The registered claims (RFC 7519 section 4.1) have one JSON type each: `iss`, `sub`,
/// `jti` a string, `aud` a string or an array of strings, `exp`, `nbf`, `iat` a number.
/// Anything else is refused before it is read: an array `sub` would reach the app as a
/// joined list, a string `exp` would be skipped as "no expiry" by a lenient reader.
pub fn check_claim_types(claims: &Claims) -> Result<(), JwtError> {
    let string = |name| matches!(claims.get(name), None | Some(Value::String(_)));
    let number = |name| matches!(claims.get(name), None | Some(Value::Number(_)));
    let audience = match claims.get("aud") {
        None | Some(Value::String(_)) => true,
        Some(Value::Array(items)) => items.iter().all(Value::is_string),
        Some(_) => false,
    };
    let typed = ["iss", "sub", "jti"].into_iter().all(string)
        && ["exp", "nbf", "iat"].into_iter().all(number)
        && audience;
    if typed {
        Ok(())
    } else {
        Err(JwtError::ClaimType)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// A JSON value of each type, tagged with its type's name.
    fn any_json() -> impl Strategy<Value = (&'static str, Value)> {
        prop_oneof![
            Just(("null", Value::Null)),
            any::<bool>().prop_map(|b| ("bool", json!(b))),
            any::<i64>().prop_map(|n| ("number", json!(n))),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| ("number", json!(f))),
            "[a-z]{0,8}".prop_map(|s| ("string", json!(s))),
            prop::collection::vec("[a-z]{0,4}", 0..3).prop_map(|v| ("strings", json!(v))),
            prop::collection::vec(any::<i32>(), 1..3).prop_map(|v| ("array", json!(v))),
            Just(("array", json!(["a", 1]))),
            Just(("array", json!([["a"]]))),
            Just(("object", json!({"a": "b"}))),
        ]
    }

    proptest! {
        /// Every registered claim with every JSON type: accepted exactly when the type is
        /// the claim's own, whatever the other claims hold.
        #[test]
        fn registered_claims_have_their_type(
            claim in prop::sample::select(vec!["iss", "sub", "jti", "aud", "exp", "nbf", "iat"]),
            (kind, value) in any_json(),
        ) {
            let mut map = serde_json::Map::new();
            map.insert("iss".into(), json!("https://issuer"));
            map.insert("exp".into(), json!(1));
            map.insert(claim.to_owned(), value);
            let expected = match claim {
                "iss" | "sub" | "jti" => kind == "string",
                "aud" => kind == "string" || kind == "strings",
                _ => kind == "number",
            };
            let verdict = check_claim_types(&Claims::from_map(map));
            prop_assert_eq!(verdict.is_ok(), expected, "{} as {}", claim, kind);
            if !expected {
                prop_assert_eq!(verdict, Err(JwtError::ClaimType));
            }
        }
    }

    #[test]
    fn unregistered_claims_may_be_anything() {
        let claims = Claims::from_map(
            json!({"groups": {"a": 1}, "role": [1, "x"], "email": null})
                .as_object()
                .unwrap()
                .clone(),
        );
        assert_eq!(check_claim_types(&claims), Ok(()));
    }
}
