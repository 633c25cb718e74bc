//! The gateway's own cookies: sealed with AES-256-GCM (aws-lc-rs, the one crypto provider
//! of the process) under a list of keys, the first of which seals and all of which open, so
//! a key can be rotated without logging everybody out.
//!
//! A sealed value is `base64url(version ‖ nonce ‖ ciphertext ‖ tag)`. The cookie's name is
//! the associated data: a value sealed for the login cookie does not open as a session
//! cookie. Anything that does not open (tampered, truncated, another key, another name) is
//! "no cookie", never an error a client can probe.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderValue;

const VERSION: u8 = 1;
/// Browsers keep at most 4096 bytes per cookie, name and attributes included.
pub const MAX_COOKIE_BYTES: usize = 4096;

/// The sealing keys, compiled from `cookie_keys_env` / `cookie_keys_file`.
pub struct CookieKeys {
    keys: Vec<LessSafeKey>,
}

/// Shows how many keys, never a key.
impl std::fmt::Debug for CookieKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CookieKeys({} keys)", self.keys.len())
    }
}

impl CookieKeys {
    /// Each key is 32 bytes, given in base64 (standard or URL-safe, padded or not).
    pub fn parse(text: &str) -> Result<CookieKeys, String> {
        let mut keys = Vec::new();
        for (i, item) in text
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .enumerate()
        {
            let bytes = decode_any_base64(item).ok_or_else(|| {
                format!(
                    "key {} is not base64; make one with `openssl rand -base64 32`",
                    i + 1
                )
            })?;
            if bytes.len() != 32 {
                return Err(format!(
                    "key {} is {} bytes, AES-256-GCM needs exactly 32; make one with `openssl rand -base64 32`",
                    i + 1,
                    bytes.len()
                ));
            }
            let key = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| "unusable key")?;
            keys.push(LessSafeKey::new(key));
        }
        if keys.is_empty() {
            return Err("no key; give at least one (`openssl rand -base64 32`)".into());
        }
        Ok(CookieKeys { keys })
    }

    /// Seals `plain` for cookie `name` under the first key.
    pub fn seal(&self, name: &str, plain: &[u8]) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).expect("the system random source works");
        let mut buffer = Vec::with_capacity(1 + NONCE_LEN + plain.len() + 16);
        buffer.push(VERSION);
        buffer.extend_from_slice(&nonce);
        let mut sealed = plain.to_vec();
        self.keys[0]
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                &mut sealed,
            )
            .expect("AES-GCM seals any length a cookie can have");
        buffer.extend_from_slice(&sealed);
        URL_SAFE_NO_PAD.encode(buffer)
    }

    /// Opens a value sealed for cookie `name` under any of the keys.
    pub fn open(&self, name: &str, value: &str) -> Option<Vec<u8>> {
        if value.len() > MAX_COOKIE_BYTES {
            return None;
        }
        let raw = URL_SAFE_NO_PAD.decode(value).ok()?;
        let (&version, rest) = raw.split_first()?;
        if version != VERSION || rest.len() < NONCE_LEN + 16 {
            return None;
        }
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
        self.keys.iter().find_map(|key| {
            let mut buffer = sealed.to_vec();
            key.open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                &mut buffer,
            )
            .ok()
            .map(|plain| plain.to_vec())
        })
    }
}

fn decode_any_base64(text: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE};
    [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(text).ok())
}

/// How the gateway's cookies are written: `HttpOnly`, `SameSite=Lax`, `Path=/`, and
/// `Secure` on TLS. On plain HTTP a `__Host-`/`__Secure-` name loses its prefix, because
/// browsers refuse such cookies without `Secure`.
pub fn cookie_name(configured: &str, secure: bool) -> &str {
    if secure {
        configured
    } else {
        configured
            .strip_prefix("__Host-")
            .or_else(|| configured.strip_prefix("__Secure-"))
            .unwrap_or(configured)
    }
}

/// A `Set-Cookie` value; `max_age` None makes a browser-session cookie.
pub fn set_cookie(name: &str, value: &str, max_age: Option<u64>, secure: bool) -> HeaderValue {
    let mut text = format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax");
    if let Some(age) = max_age {
        text.push_str(&format!("; Max-Age={age}"));
    }
    if secure {
        text.push_str("; Secure");
    }
    HeaderValue::try_from(text).expect("cookie names and base64url values are header-safe")
}

/// A `Set-Cookie` that deletes cookie `name`.
pub fn clear_cookie(name: &str, secure: bool) -> HeaderValue {
    let mut text = format!("{name}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0");
    if secure {
        text.push_str("; Secure");
    }
    HeaderValue::try_from(text).expect("cookie names are header-safe")
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    const K2: &str = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";

    #[test]
    fn a_sealed_value_opens_only_with_its_name_and_a_listed_key() {
        let keys = CookieKeys::parse(K1).unwrap();
        let sealed = keys.seal("s", b"alice");
        assert_eq!(keys.open("s", &sealed).as_deref(), Some(&b"alice"[..]));
        assert_eq!(keys.open("other", &sealed), None, "name is bound");
        let other = CookieKeys::parse(K2).unwrap();
        assert_eq!(
            other.open("s", &sealed),
            None,
            "another key does not open it"
        );
    }

    #[test]
    fn rotation_seals_with_the_first_and_opens_with_all() {
        let old = CookieKeys::parse(K1).unwrap();
        let sealed_old = old.seal("s", b"x");
        let rotated = CookieKeys::parse(&format!("{K2}, {K1}")).unwrap();
        assert_eq!(rotated.open("s", &sealed_old).as_deref(), Some(&b"x"[..]));
        let sealed_new = rotated.seal("s", b"y");
        assert_eq!(old.open("s", &sealed_new), None, "the new first key seals");
        assert!(
            CookieKeys::parse(K2)
                .unwrap()
                .open("s", &sealed_new)
                .is_some()
        );
    }

    #[test]
    fn every_flipped_bit_is_refused() {
        let keys = CookieKeys::parse(K1).unwrap();
        let raw = URL_SAFE_NO_PAD.decode(keys.seal("s", b"alice")).unwrap();
        for i in 0..raw.len() {
            let mut bad = raw.clone();
            bad[i] ^= 1;
            assert_eq!(
                keys.open("s", &URL_SAFE_NO_PAD.encode(&bad)),
                None,
                "byte {i}"
            );
        }
        assert_eq!(keys.open("s", ""), None);
        assert_eq!(keys.open("s", "not base64!"), None);
    }

    #[test]
    fn keys_must_be_32_bytes_of_base64() {
        assert!(CookieKeys::parse("").unwrap_err().contains("no key"));
        assert!(
            CookieKeys::parse("c2hvcnQ=")
                .unwrap_err()
                .contains("exactly 32")
        );
        assert!(CookieKeys::parse("***").unwrap_err().contains("not base64"));
    }

    #[test]
    fn prefixed_names_lose_the_prefix_without_tls() {
        assert_eq!(cookie_name("__Host-portcullis", true), "__Host-portcullis");
        assert_eq!(cookie_name("__Host-portcullis", false), "portcullis");
        assert_eq!(cookie_name("sess", false), "sess");
        let v = set_cookie("__Host-p", "v", Some(60), true);
        assert_eq!(
            v.to_str().unwrap(),
            "__Host-p=v; Path=/; HttpOnly; SameSite=Lax; Max-Age=60; Secure"
        );
    }
}
