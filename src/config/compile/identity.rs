//! `[identity]`: the headers that carry the verified identity.

use std::collections::HashSet;

use http::header::HeaderName;

use crate::config::raw::*;
use std::time::Duration;

use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

use crate::assertion::{Algorithm, Assertion, Settings};
use crate::identity::IdentityPolicy;

use super::Compiler;

/// Header names the gateway manages itself.
const RESERVED: &[&str] = &[
    "host",
    "authorization",
    "cookie",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "te",
    "trailer",
    "upgrade",
    "keep-alive",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
    "x-real-ip",
];

impl Compiler {
    pub(super) fn identity(&mut self, raw: &RawIdentity) -> IdentityPolicy {
        let mut headers = Vec::new();
        let mut seen = HashSet::new();
        for (header, claim) in &raw.headers {
            let key = format!("identity.headers.\"{header}\"");
            let Ok(name) = HeaderName::from_bytes(header.as_bytes()) else {
                self.issue(key, "is not a valid header name");
                continue;
            };
            if header.contains('_') {
                self.issue(
                    key,
                    "use '-' instead of '_' (both spellings are stripped from clients either way)",
                );
                continue;
            }
            if RESERVED.contains(&name.as_str()) {
                self.issue(
                    key,
                    "is a header the gateway manages itself; pick another name such as X-Auth-User",
                );
                continue;
            }
            if !seen.insert(name.clone()) {
                self.issue(key, "is listed twice (header names are case-insensitive)");
                continue;
            }
            if claim.is_empty() {
                self.issue(key, "needs the name of a claim, e.g. \"sub\"");
                continue;
            }
            headers.push((name, claim.as_str().into()));
        }
        let assertion = raw.assertion.as_ref().and_then(|raw| {
            let claims = headers
                .iter()
                .map(|(_, claim): &(HeaderName, Box<str>)| claim.clone())
                .collect();
            self.assertion(raw, claims, &seen)
        });
        let mut policy = IdentityPolicy::new(headers);
        policy.set_assertion(assertion);
        policy
    }

    /// `[api_keys]`: the keys file, read now (and again at each reload).
    pub(super) fn api_keys(&mut self, raw: &RawApiKeys) -> Option<crate::auth::api_keys::ApiKeys> {
        let header = raw.header.as_deref().unwrap_or("X-API-Key");
        let header = match HeaderName::from_bytes(header.as_bytes()) {
            Ok(name) if !RESERVED.contains(&name.as_str()) && !header.contains('_') => name,
            _ => {
                self.issue(
                    "api_keys.header",
                    "must be a valid header name the gateway does not manage, with '-' not '_' (e.g. \"X-API-Key\")",
                );
                return None;
            }
        };
        let scheme = raw.scheme.as_deref().unwrap_or("ApiKey");
        if scheme.is_empty()
            || !scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            || scheme.eq_ignore_ascii_case("bearer")
            || scheme.eq_ignore_ascii_case("basic")
        {
            self.issue(
                "api_keys.scheme",
                "must be an Authorization scheme name other than Bearer and Basic (e.g. \"ApiKey\")",
            );
            return None;
        }
        let path = self.path(&raw.file);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) => {
                self.issue(
                    "api_keys.file",
                    format!("cannot read {}: {e}", path.display()),
                );
                return None;
            }
        };
        match crate::auth::api_keys::ApiKeys::parse(&text, header, scheme) {
            Ok(keys) => Some(keys),
            Err(message) => {
                self.issue("api_keys.file", format!("{}: {message}", path.display()));
                None
            }
        }
    }

    /// A header that carries a session token to the app: a valid name the gateway does
    /// not manage itself.
    pub(super) fn token_header(&mut self, key: &str, name: &str) -> Option<HeaderName> {
        match HeaderName::from_bytes(name.as_bytes()) {
            Ok(_) if name.contains('_') => {
                self.issue(key, "use '-' instead of '_'");
                None
            }
            Ok(header) if RESERVED.contains(&header.as_str()) => {
                self.issue(
                    key,
                    "is a header the gateway manages itself; use e.g. \"X-Forwarded-Access-Token\"",
                );
                None
            }
            Ok(header) => Some(header),
            Err(_) => {
                self.issue(key, "is not a valid header name");
                None
            }
        }
    }

    fn assertion(
        &mut self,
        raw: &RawAssertion,
        claims: Vec<Box<str>>,
        identity_headers: &HashSet<HeaderName>,
    ) -> Option<Assertion> {
        let before = self.issues.len();
        let header = raw.header.as_deref().unwrap_or("X-Auth-Assertion");
        let header = match HeaderName::from_bytes(header.as_bytes()) {
            Ok(name) if header.contains('_') => {
                self.issue("identity.assertion.header", "use '-' instead of '_'");
                name
            }
            Ok(name) if identity_headers.contains(&name) || RESERVED.contains(&name.as_str()) => {
                self.issue(
                    "identity.assertion.header",
                    "is already an identity header or a header the gateway manages; pick another name such as X-Auth-Assertion",
                );
                name
            }
            Ok(name) => name,
            Err(_) => {
                self.issue("identity.assertion.header", "is not a valid header name");
                HeaderName::from_static("x-auth-assertion")
            }
        };
        let algorithm = raw.algorithm.as_deref().unwrap_or("ES256");
        let algorithm = Algorithm::parse(algorithm).unwrap_or_else(|| {
            self.issue(
                "identity.assertion.algorithm",
                format!("\"{algorithm}\" is not offered; use \"ES256\" (default) or \"ES384\""),
            );
            Algorithm::Es256
        });
        let files: Vec<(String, &String)> = match (&raw.key_file, &raw.key_files) {
            (Some(file), None) => vec![("identity.assertion.key_file".into(), file)],
            (None, Some(files)) if !files.is_empty() => files
                .iter()
                .enumerate()
                .map(|(i, f)| (format!("identity.assertion.key_files[{i}]"), f))
                .collect(),
            _ => {
                self.issue(
                    "identity.assertion",
                    "needs exactly one of key_file = \"assertion.key\" or key_files = [\"new.key\", \"old.key\"] (an EC private key PEM, e.g. from `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256`)",
                );
                Vec::new()
            }
        };
        let mut keys = Vec::new();
        for (key, file) in files {
            let path = self.path(file);
            match PrivateKeyDer::from_pem_file(&path) {
                Ok(der) => keys.push(der.secret_der().to_vec()),
                Err(e) => self.issue(
                    key,
                    format!("cannot read a PEM private key from {}: {e}", path.display()),
                ),
            }
        }
        let lifetime = self.period(
            "identity.assertion.lifetime",
            raw.lifetime.as_ref(),
            Duration::from_secs(60),
        );
        if lifetime < Duration::from_secs(2) {
            self.issue(
                "identity.assertion.lifetime",
                "must be at least \"2s\" (assertions carry whole seconds and are reused for half their lifetime)",
            );
        }
        let issuer = raw.issuer.clone().unwrap_or_else(|| "portcullis".into());
        if issuer.is_empty() {
            self.issue("identity.assertion.issuer", "must not be empty");
        }
        let cache_size = raw.cache_size.unwrap_or(100_000);
        if self.issues.len() > before {
            return None;
        }
        match Assertion::new(Settings {
            header,
            algorithm,
            issuer,
            lifetime,
            claims,
            keys,
            cache_size,
        }) {
            Ok(assertion) => Some(assertion),
            Err(message) => {
                let key = if raw.key_file.is_some() {
                    "key_file"
                } else {
                    "key_files"
                };
                self.issue(format!("identity.assertion.{key}"), message);
                None
            }
        }
    }
}
