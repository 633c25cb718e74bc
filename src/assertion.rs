//! `[identity] assertion`: a short-lived JWT the gateway signs for each forwarded,
//! authenticated request, so that the app can check the identity it is handed even when
//! something else on its network can reach it and send `X-Auth-User` itself.
//!
//! The token (one header, `X-Auth-Assertion` by default):
//! - header: `alg` (ES256 or ES384), `typ = "JWT"`, `kid` (the RFC 7638 thumbprint of the
//!   public key);
//! - claims: `iss` (the configured issuer), `aud` (the upstream's name), `sub` and each
//!   claim the `[identity] headers` map (as the identity holds them), `htm` (the method)
//!   and `rth`, the base64url SHA-256 of `METHOD SP TARGET` where TARGET is the path and
//!   query exactly as the app receives them: an assertion lifted from one request does not
//!   fit another path or method. A hash, not the target itself, so that a long query does
//!   not make the field too large for the app's header limit (Tomcat's is 8 KiB);
//! - `iat`, `exp = iat + lifetime`.
//!
//! The public keys are served as a JWKS at [`JWKS_PATH`] on the listeners and the admin
//! listener; `key_files = [new, old]` rotates (the first signs, all are published).
//!
//! Signing costs one ECDSA signature (about 20 µs); the hot path reuses a signature for
//! the same (identity, upstream, method, target) for half the lifetime, so the app always
//! receives one valid for at least half of it. The cache is keyed by the SHA-256 of every
//! claim but the times: two requests share a signature only when they would be asserted
//! the same way.

use std::cell::RefCell;
use std::time::Duration;

use aws_lc_rs::digest;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, EcdsaSigningAlgorithm, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};

use crate::auth::claims::Claims;

/// Where the public keys are served (on the listeners and the admin listener).
pub const JWKS_PATH: &str = "/.well-known/portcullis/jwks.json";

/// Claims the assertion sets itself; an identity claim of one of these names is not copied.
pub const RESERVED: [&str; 8] = ["iss", "aud", "iat", "exp", "nbf", "jti", "htm", "rth"];

/// The signing algorithms offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Es256,
    Es384,
}

impl Algorithm {
    pub fn parse(name: &str) -> Option<Algorithm> {
        match name {
            "ES256" => Some(Algorithm::Es256),
            "ES384" => Some(Algorithm::Es384),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Es256 => "ES256",
            Algorithm::Es384 => "ES384",
        }
    }

    fn signing(self) -> &'static EcdsaSigningAlgorithm {
        match self {
            Algorithm::Es256 => &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            Algorithm::Es384 => &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
        }
    }

    fn curve(self) -> &'static str {
        match self {
            Algorithm::Es256 => "P-256",
            Algorithm::Es384 => "P-384",
        }
    }
}

/// One key: it signs (the first) or is only published (the others, during a rotation).
struct Key {
    pair: EcdsaKeyPair,
    /// base64url of the token header naming this key.
    header: Box<str>,
}

/// What a reused signature is kept as.
type Signatures = moka::sync::Cache<[u8; 32], HeaderValue>;

/// Compiled `[identity] assertion`.
pub struct Assertion {
    header: HeaderName,
    algorithm: Algorithm,
    /// `"iss":"...",` ready to write.
    issuer_claim: Box<str>,
    lifetime: u64,
    /// The identity claims carried: `sub` and the mapped ones, without [`RESERVED`].
    claims: Box<[Box<str>]>,
    keys: Box<[Key]>,
    /// The served JWKS document.
    jwks: Bytes,
    cache: Signatures,
    rng: SystemRandom,
}

/// Settings of [`Assertion::new`].
pub struct Settings {
    pub header: HeaderName,
    pub algorithm: Algorithm,
    pub issuer: String,
    pub lifetime: Duration,
    /// Claim names the identity headers carry (`sub` is always added).
    pub claims: Vec<Box<str>>,
    /// Private keys, DER (PKCS#8 or SEC1): the first signs.
    pub keys: Vec<Vec<u8>>,
    /// Reused signatures kept at most.
    pub cache_size: u64,
}

impl Assertion {
    /// Builds the signer; the error names the key (by position) that does not fit.
    pub fn new(settings: Settings) -> Result<Assertion, String> {
        let algorithm = settings.algorithm;
        let mut keys = Vec::with_capacity(settings.keys.len());
        let mut jwks = Vec::with_capacity(settings.keys.len());
        let mut kids: Vec<String> = Vec::new();
        for (i, der) in settings.keys.iter().enumerate() {
            let pair =
                EcdsaKeyPair::from_private_key_der(algorithm.signing(), der).map_err(|e| {
                    format!(
                        "key {} is not an EC {} private key (PKCS#8 or SEC1 PEM): {e}",
                        i + 1,
                        algorithm.curve()
                    )
                })?;
            let jwk = public_jwk(algorithm, pair.public_key().as_ref());
            let kid = jwk["kid"].as_str().unwrap_or_default().to_owned();
            if kids.contains(&kid) {
                return Err(format!("key {} is listed twice", i + 1));
            }
            kids.push(kid.clone());
            let header = serde_json::json!({"alg": algorithm.name(), "typ": "JWT", "kid": kid});
            keys.push(Key {
                pair,
                header: B64.encode(header.to_string()).into(),
            });
            jwks.push(jwk);
        }
        if keys.is_empty() {
            return Err("needs a key".into());
        }
        let mut claims: Vec<Box<str>> = vec!["sub".into()];
        for claim in settings.claims {
            if !claims.contains(&claim) && !RESERVED.contains(&&*claim) {
                claims.push(claim);
            }
        }
        let lifetime = settings.lifetime.as_secs().max(1);
        Ok(Assertion {
            header: settings.header,
            algorithm,
            issuer_claim: format!(r#""iss":{},"#, serde_json::Value::from(settings.issuer)).into(),
            lifetime,
            claims: claims.into_boxed_slice(),
            keys: keys.into_boxed_slice(),
            jwks: Bytes::from(serde_json::json!({ "keys": jwks }).to_string()),
            cache: moka::sync::Cache::builder()
                .max_capacity(settings.cache_size)
                // Reused for half the lifetime: the app gets at least half of it.
                .time_to_live(Duration::from_millis(lifetime * 500))
                .build(),
            rng: SystemRandom::new(),
        })
    }

    /// The header it travels in (stripped from every client request, I2).
    pub fn header(&self) -> &HeaderName {
        &self.header
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub fn lifetime_secs(&self) -> u64 {
        self.lifetime
    }

    /// The assertion of `claims` for a `method` request of `target` (the path and query the
    /// app receives) at the upstream named `audience`, at `now` (seconds since the epoch).
    /// `None` only when signing failed (the request then goes without one and the app, which
    /// requires it, refuses).
    pub fn assert(
        &self,
        claims: &Claims,
        audience: &str,
        method: &Method,
        target: &str,
        now: u64,
    ) -> Option<HeaderValue> {
        BUFFER.with_borrow_mut(|body| {
            body.clear();
            self.write_claims(body, claims, audience, method, target);
            let key: [u8; 32] = digest::digest(&digest::SHA256, body)
                .as_ref()
                .try_into()
                .expect("SHA-256 is 32 bytes");
            if let Some(signed) = self.cache.get(&key) {
                return Some(signed);
            }
            let signed = self.sign(body, now)?;
            self.cache.insert(key, signed.clone());
            Some(signed)
        })
    }

    /// Every claim but the times, as `"name":value,` pairs (the last without the comma).
    fn write_claims(
        &self,
        body: &mut Vec<u8>,
        claims: &Claims,
        audience: &str,
        method: &Method,
        target: &str,
    ) {
        body.extend_from_slice(self.issuer_claim.as_bytes());
        body.extend_from_slice(br#""aud":"#);
        let _ = serde_json::to_writer(&mut *body, audience);
        for name in self.claims.iter() {
            if let Some(value) = claims.get(name) {
                body.push(b',');
                let _ = serde_json::to_writer(&mut *body, &**name);
                body.push(b':');
                let _ = serde_json::to_writer(&mut *body, value);
            }
        }
        body.extend_from_slice(br#","htm":"#);
        let _ = serde_json::to_writer(&mut *body, method.as_str());
        body.extend_from_slice(br#","rth":""#);
        let binding = request_binding(method, target);
        body.extend_from_slice(binding.as_bytes());
        body.push(b'"');
    }

    fn sign(&self, body: &[u8], now: u64) -> Option<HeaderValue> {
        let key = &self.keys[0];
        let mut payload = Vec::with_capacity(body.len() + 48);
        payload.push(b'{');
        payload.extend_from_slice(body);
        payload.extend_from_slice(
            format!(r#","iat":{now},"exp":{}}}"#, now + self.lifetime).as_bytes(),
        );
        let mut token = String::with_capacity(key.header.len() + payload.len() * 4 / 3 + 140);
        token.push_str(&key.header);
        token.push('.');
        B64.encode_string(&payload, &mut token);
        let signature = key.pair.sign(&self.rng, token.as_bytes()).ok()?;
        token.push('.');
        B64.encode_string(signature.as_ref(), &mut token);
        HeaderValue::from_maybe_shared(Bytes::from(token)).ok()
    }

    /// `GET` (or `HEAD`) of [`JWKS_PATH`]: the public keys. Other methods: 405.
    pub fn jwks_response(&self, method: &Method) -> Response<http_body_util::Full<Bytes>> {
        let mut response = if method == Method::GET || method == Method::HEAD {
            let mut response = Response::new(http_body_util::Full::new(self.jwks.clone()));
            response.headers_mut().insert(
                http::header::CACHE_CONTROL,
                // Short: a rotation is a reload away; apps refetch on an unknown kid anyway.
                HeaderValue::from_static("public, max-age=60"),
            );
            response
        } else {
            let mut response = Response::new(http_body_util::Full::new(Bytes::from_static(
                br#"{"error":"method_not_allowed","status":405}"#,
            )));
            *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            response
                .headers_mut()
                .insert(http::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            response
        };
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }

    /// The served JWKS document.
    pub fn jwks(&self) -> &Bytes {
        &self.jwks
    }
}

thread_local! {
    /// The claims of the request being asserted: written and hashed per request, so kept.
    static BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// `rth`: base64url SHA-256 of `METHOD SP TARGET`.
pub fn request_binding(method: &Method, target: &str) -> String {
    let mut context = digest::Context::new(&digest::SHA256);
    context.update(method.as_str().as_bytes());
    context.update(b" ");
    context.update(target.as_bytes());
    B64.encode(context.finish())
}

/// The public JWK of an uncompressed EC point (`0x04 || X || Y`), with its RFC 7638
/// thumbprint as `kid`.
fn public_jwk(algorithm: Algorithm, point: &[u8]) -> serde_json::Value {
    let coordinates = &point[1..];
    let (x, y) = coordinates.split_at(coordinates.len() / 2);
    let (x, y) = (B64.encode(x), B64.encode(y));
    let crv = algorithm.curve();
    // RFC 7638: the required members, in lexicographic order, no whitespace.
    let canonical = format!(r#"{{"crv":"{crv}","kty":"EC","x":"{x}","y":"{y}"}}"#);
    let kid = B64.encode(digest::digest(&digest::SHA256, canonical.as_bytes()));
    serde_json::json!({
        "kty": "EC",
        "crv": crv,
        "x": x,
        "y": y,
        "use": "sig",
        "alg": algorithm.name(),
        "kid": kid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation, decode, decode_header, jwk::JwkSet};

    fn pkcs8(algorithm: Algorithm) -> Vec<u8> {
        EcdsaKeyPair::generate_pkcs8(algorithm.signing(), &SystemRandom::new())
            .unwrap()
            .as_ref()
            .to_vec()
    }

    fn assertion(algorithm: Algorithm, keys: Vec<Vec<u8>>) -> Assertion {
        Assertion::new(Settings {
            header: HeaderName::from_static("x-auth-assertion"),
            algorithm,
            issuer: "portcullis-test".into(),
            lifetime: Duration::from_secs(60),
            claims: vec!["email".into(), "groups".into(), "exp".into()],
            keys,
            cache_size: 100,
        })
        .unwrap()
    }

    fn claims() -> Claims {
        Claims::from_map(
            serde_json::json!({"sub": "alice", "email": "a@x", "groups": ["a", "b"], "exp": 9, "secret": "s"})
                .as_object()
                .unwrap()
                .clone(),
        )
    }

    fn verify(a: &Assertion, token: &str, alg: jsonwebtoken::Algorithm) -> serde_json::Value {
        let set: JwkSet = serde_json::from_slice(a.jwks()).unwrap();
        let kid = decode_header(token).unwrap().kid.unwrap();
        let jwk = set.find(&kid).expect("the kid is published");
        let mut validation = Validation::new(alg);
        validation.set_audience(&["crm"]);
        validation.set_issuer(&["portcullis-test"]);
        decode::<serde_json::Value>(token, &DecodingKey::from_jwk(jwk).unwrap(), &validation)
            .unwrap()
            .claims
    }

    #[test]
    fn verifies_with_the_published_key_and_binds_the_request() {
        for (alg, jwt_alg) in [
            (Algorithm::Es256, jsonwebtoken::Algorithm::ES256),
            (Algorithm::Es384, jsonwebtoken::Algorithm::ES384),
        ] {
            let a = assertion(alg, vec![pkcs8(alg)]);
            let now = crate::auth::unix_now();
            let token = a
                .assert(&claims(), "crm", &Method::GET, "/a?b=1", now)
                .unwrap();
            let got = verify(&a, token.to_str().unwrap(), jwt_alg);
            assert_eq!(got["sub"], "alice");
            assert_eq!(got["email"], "a@x");
            assert_eq!(got["groups"], serde_json::json!(["a", "b"]));
            assert_eq!(got["htm"], "GET");
            assert_eq!(got["rth"], request_binding(&Method::GET, "/a?b=1"));
            assert_ne!(got["rth"], request_binding(&Method::GET, "/a?b=2"));
            assert_ne!(got["rth"], request_binding(&Method::POST, "/a?b=1"));
            assert_eq!(got["iat"], now);
            assert_eq!(got["exp"], now + 60);
            // Unmapped claims stay out; a reserved name is the assertion's own.
            assert!(got.get("secret").is_none());
        }
    }

    #[test]
    fn reuses_a_signature_only_for_the_same_assertion() {
        let a = assertion(Algorithm::Es256, vec![pkcs8(Algorithm::Es256)]);
        let now = crate::auth::unix_now();
        let first = a.assert(&claims(), "crm", &Method::GET, "/a", now).unwrap();
        // ECDSA signatures are randomized: equal tokens mean a reused one.
        assert_eq!(
            a.assert(&claims(), "crm", &Method::GET, "/a", now + 1),
            Some(first.clone())
        );
        for other in [
            a.assert(&claims(), "crm", &Method::GET, "/b", now),
            a.assert(&claims(), "crm", &Method::PUT, "/a", now),
            a.assert(&claims(), "erp", &Method::GET, "/a", now),
        ] {
            assert_ne!(other, Some(first.clone()));
        }
        let mut bob = claims().as_map().clone();
        bob.insert("sub".into(), "bob".into());
        let bob = a.assert(&Claims::from_map(bob), "crm", &Method::GET, "/a", now);
        assert_ne!(bob, Some(first));
    }

    #[test]
    fn rotation_publishes_every_key_and_signs_with_the_first() {
        let (new, old) = (pkcs8(Algorithm::Es256), pkcs8(Algorithm::Es256));
        let a = assertion(Algorithm::Es256, vec![new.clone(), old.clone()]);
        let set: JwkSet = serde_json::from_slice(a.jwks()).unwrap();
        assert_eq!(set.keys.len(), 2);
        let token = a.assert(&claims(), "crm", &Method::GET, "/", 1).unwrap();
        let kid = decode_header(token.to_str().unwrap()).unwrap().kid.unwrap();
        let only_new = assertion(Algorithm::Es256, vec![new]);
        let new_set: JwkSet = serde_json::from_slice(only_new.jwks()).unwrap();
        assert_eq!(new_set.keys[0].common.key_id.as_deref(), Some(&*kid));
        assert!(
            Assertion::new(Settings {
                header: HeaderName::from_static("x-a"),
                algorithm: Algorithm::Es256,
                issuer: "i".into(),
                lifetime: Duration::from_secs(60),
                claims: vec![],
                keys: vec![old.clone(), old],
                cache_size: 1,
            })
            .is_err()
        );
    }

    #[test]
    fn refuses_a_key_of_another_curve() {
        let error = Assertion::new(Settings {
            header: HeaderName::from_static("x-a"),
            algorithm: Algorithm::Es256,
            issuer: "i".into(),
            lifetime: Duration::from_secs(60),
            claims: vec![],
            keys: vec![pkcs8(Algorithm::Es384)],
            cache_size: 1,
        })
        .err()
        .unwrap();
        assert!(error.contains("P-256"), "{error}");
    }

    #[test]
    fn the_kid_is_the_rfc7638_thumbprint() {
        // RFC 7638's own example is RSA; this checks the EC member order against a JWK
        // thumbprint computed independently by jsonwebtoken.
        let a = assertion(Algorithm::Es256, vec![pkcs8(Algorithm::Es256)]);
        let set: JwkSet = serde_json::from_slice(a.jwks()).unwrap();
        let jwk = &set.keys[0];
        assert_eq!(
            jwk.common.key_id.as_deref().unwrap(),
            jwk.thumbprint(jsonwebtoken::jwk::ThumbprintHash::SHA256)
                .unwrap()
        );
    }
}
