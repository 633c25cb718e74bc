//! Credential extraction and JWT verification never panic on any header or token, and never
//! accept a token that was not signed by the configured key.
#![no_main]

use std::sync::OnceLock;

use http::{HeaderMap, HeaderValue, header};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use libfuzzer_sys::fuzz_target;
use portcullis::auth::credential::{TokenSource, find_token};
use portcullis::auth::jwt::{Provider, VerifyKey, verify};

fn providers() -> &'static [Provider] {
    static PROVIDERS: OnceLock<Vec<Provider>> = OnceLock::new();
    PROVIDERS.get_or_init(|| {
        vec![Provider::with_static_keys(
            "fuzz",
            "https://issuer.test",
            &["app"],
            &[Algorithm::HS256, Algorithm::RS256],
            vec![VerifyKey::new(
                None,
                AlgorithmFamily::Hmac,
                DecodingKey::from_secret(b"a secret the fuzzer has no way to guess 0123456789"),
                "fuzz".into(),
            )],
        )]
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(value) = HeaderValue::from_bytes(data) else { return };
    let mut headers = HeaderMap::new();
    headers.insert(header::AUTHORIZATION, value.clone());
    headers.insert(header::COOKIE, value);
    let sources = [TokenSource::Bearer, TokenSource::Cookie("at".into())];
    if let Ok(Some((_, token))) = find_token(&headers, &sources) {
        assert!(verify(token, &[0], providers(), 1_700_000_000).is_err());
    }
    if let Ok(text) = std::str::from_utf8(data) {
        assert!(verify(text, &[0], providers(), 1_700_000_000).is_err());
    }
});
