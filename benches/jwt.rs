//! Per-verification cost by algorithm: cold (full signature + claim checks) and cached (the
//! token-cache hit path: SHA-256 of the token, lookup, provider/key/expiry checks).
//!
//! And the identity assertion (`[identity] assertion`): a signature per new (identity,
//! upstream, method, target), and the reuse of one.
//!
//! cargo bench --bench jwt

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey, Header};
use portcullis::auth::cache::{Cached, TokenCache};
use portcullis::auth::jwt::{Provider, VerifyKey, verify};
use serde_json::json;

const SECRET: &[u8] = b"bench-secret-bench-secret-bench-secret!!";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// (signing key, verification key) for `alg`.
fn keys(alg: Algorithm) -> (EncodingKey, VerifyKey) {
    let (pair, family) = match alg {
        Algorithm::HS256 => {
            let key = VerifyKey::new(
                None,
                AlgorithmFamily::Hmac,
                DecodingKey::from_secret(SECRET),
                "bench".into(),
            );
            return (EncodingKey::from_secret(SECRET), key);
        }
        Algorithm::RS256 => (
            rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap(),
            AlgorithmFamily::Rsa,
        ),
        Algorithm::ES256 => (
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
            AlgorithmFamily::Ec,
        ),
        Algorithm::EdDSA => (
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap(),
            AlgorithmFamily::Ed,
        ),
        other => panic!("{other:?}"),
    };
    let private = pair.serialize_pem();
    let public = pair.public_key_pem();
    let (encoding, decoding) = match family {
        AlgorithmFamily::Rsa => (
            EncodingKey::from_rsa_pem(private.as_bytes()),
            DecodingKey::from_rsa_pem(public.as_bytes()),
        ),
        AlgorithmFamily::Ec => (
            EncodingKey::from_ec_pem(private.as_bytes()),
            DecodingKey::from_ec_pem(public.as_bytes()),
        ),
        _ => (
            EncodingKey::from_ed_pem(private.as_bytes()),
            DecodingKey::from_ed_pem(public.as_bytes()),
        ),
    };
    (
        encoding.unwrap(),
        VerifyKey::new(None, family, decoding.unwrap(), "bench".into()),
    )
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("verify");
    for alg in [
        Algorithm::HS256,
        Algorithm::RS256,
        Algorithm::ES256,
        Algorithm::EdDSA,
    ] {
        let (signing, verifying) = keys(alg);
        let providers = vec![Provider::with_static_keys(
            "p",
            "https://issuer.bench",
            &["app"],
            &[alg],
            vec![verifying],
        )];
        let claims = json!({
            "iss": "https://issuer.bench", "aud": "app", "sub": "alice", "exp": now() + 3600,
            "iat": now(), "email": "alice@example.com", "groups": ["eng", "ops"],
        });
        let token = jsonwebtoken::encode(&Header::new(alg), &claims, &signing).unwrap();
        let now = now();
        group.bench_function(format!("{alg:?}/cold"), |b| {
            b.iter(|| verify(std::hint::black_box(&token), &[0], &providers, now).unwrap())
        });
        let cache = TokenCache::new(100_000);
        let verified = verify(&token, &[0], &providers, now).unwrap();
        cache.insert(
            token.as_bytes(),
            TokenCache::key(token.as_bytes()),
            Cached::new(
                0,
                verified.key_id,
                verified.valid_until,
                Arc::new(verified.claims),
            ),
            now,
            Duration::from_secs(300),
        );
        let usable = |hit: &Cached| {
            hit.provider == 0
                && (now as f64) < hit.valid_until
                && providers[hit.provider].keys.load().contains_key(hit.key_id)
        };
        // The shared cache: SHA-256 of the token, then the moka lookup.
        group.bench_function(format!("{alg:?}/cached"), |b| {
            b.iter(|| {
                let hit = cache
                    .get(&TokenCache::key(std::hint::black_box(token.as_bytes())))
                    .unwrap();
                assert!(usable(&hit));
                hit
            })
        });
        // The request path's lookup: this thread's memo answers a repeated token.
        group.bench_function(format!("{alg:?}/memo"), |b| {
            b.iter(|| {
                let hit = cache
                    .lookup(std::hint::black_box(token.as_bytes()), now)
                    .unwrap();
                assert!(usable(&hit));
                hit
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("assertion");
    for alg in [
        portcullis::assertion::Algorithm::Es256,
        portcullis::assertion::Algorithm::Es384,
    ] {
        let curve = match alg {
            portcullis::assertion::Algorithm::Es256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            portcullis::assertion::Algorithm::Es384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        };
        let key = rcgen::KeyPair::generate_for(curve).unwrap().serialize_der();
        let assertion = portcullis::assertion::Assertion::new(portcullis::assertion::Settings {
            header: http::HeaderName::from_static("x-auth-assertion"),
            algorithm: alg,
            issuer: "portcullis".into(),
            lifetime: Duration::from_secs(60),
            claims: vec!["email".into(), "groups".into()],
            keys: vec![key],
            cache_size: 100_000,
        })
        .unwrap();
        let claims = portcullis::auth::claims::Claims::from_map(
            json!({"sub": "alice", "email": "alice@example.com", "groups": ["eng", "ops"]})
                .as_object()
                .unwrap()
                .clone(),
        );
        let now = now();
        let method = http::Method::GET;
        // A new target each time: the hash, a signature and the cache insert.
        let mut n = 0u64;
        group.bench_function(format!("{}/signed", alg.name()), |b| {
            b.iter(|| {
                n += 1;
                let target = format!("/orders/{n}");
                assertion
                    .assert(&claims, "crm", &method, &target, now)
                    .unwrap()
            })
        });
        // The same request again: the claims written and hashed, one cache lookup.
        group.bench_function(format!("{}/reused", alg.name()), |b| {
            b.iter(|| {
                assertion
                    .assert(
                        &claims,
                        "crm",
                        &method,
                        std::hint::black_box("/orders/1"),
                        now,
                    )
                    .unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
