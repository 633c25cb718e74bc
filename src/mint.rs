//! `portcullis token`: mints JWTs for local testing from a private key or HMAC secret.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use jsonwebtoken::{Algorithm, AlgorithmFamily, EncodingKey, Header};
use serde_json::{Map, Value};

/// What to put in the token.
#[derive(Debug, Default)]
pub struct MintRequest {
    pub key_file: Option<PathBuf>,
    pub secret_env: Option<String>,
    pub algorithm: Option<String>,
    pub kid: Option<String>,
    pub issuer: Option<String>,
    pub audiences: Vec<String>,
    pub subject: Option<String>,
    pub scopes: Vec<String>,
    /// `KEY=VALUE`; VALUE is JSON when it parses as JSON, else a string.
    pub claims: Vec<String>,
    pub lifetime: Duration,
    /// Take issuer, audience and algorithm defaults from this provider of a config file.
    pub config: Option<(PathBuf, String)>,
}

/// Returns the signed compact JWT, or a sentence saying what is wrong.
pub fn mint(request: &MintRequest, now: u64) -> Result<String, String> {
    let defaults = match &request.config {
        Some((file, provider)) => provider_defaults(file, provider)?,
        None => ProviderDefaults::default(),
    };
    let algorithm = match request
        .algorithm
        .as_deref()
        .or(defaults.algorithm.as_deref())
    {
        Some(name) => {
            Algorithm::from_str(name).map_err(|_| format!("unknown algorithm \"{name}\""))?
        }
        None if request.secret_env.is_some() => Algorithm::HS256,
        None => Algorithm::RS256,
    };
    let key = encoding_key(request, algorithm)?;

    let mut claims = Map::new();
    let issuer = request.issuer.clone().or(defaults.issuer);
    if let Some(iss) = issuer {
        claims.insert("iss".into(), iss.into());
    }
    let audiences = if request.audiences.is_empty() {
        defaults.audiences
    } else {
        request.audiences.clone()
    };
    match audiences.as_slice() {
        [] => {}
        [one] => {
            claims.insert("aud".into(), one.clone().into());
        }
        many => {
            claims.insert("aud".into(), many.to_vec().into());
        }
    }
    if let Some(sub) = &request.subject {
        claims.insert("sub".into(), sub.clone().into());
    }
    if !request.scopes.is_empty() {
        claims.insert("scope".into(), request.scopes.join(" ").into());
    }
    claims.insert("iat".into(), now.into());
    claims.insert("exp".into(), (now + request.lifetime.as_secs()).into());
    for pair in &request.claims {
        let (name, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("--claim \"{pair}\" is not KEY=VALUE"))?;
        let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
        claims.insert(name.to_owned(), value);
    }
    let mut header = Header::new(algorithm);
    header.kid = request.kid.clone().or(defaults.kid);
    jsonwebtoken::encode(&header, &claims, &key).map_err(|e| format!("cannot sign: {e}"))
}

fn encoding_key(request: &MintRequest, algorithm: Algorithm) -> Result<EncodingKey, String> {
    if algorithm.family() == AlgorithmFamily::Hmac {
        let var = request.secret_env.as_deref().ok_or(
            "HMAC algorithms need --secret-env VAR (the secret is never a command-line argument)",
        )?;
        let secret =
            std::env::var(var).map_err(|_| format!("environment variable {var} is not set"))?;
        return Ok(EncodingKey::from_secret(secret.as_bytes()));
    }
    let file = request
        .key_file
        .as_deref()
        .ok_or_else(|| format!("{algorithm:?} needs --key FILE (a PEM private key)"))?;
    let pem = std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let key = match algorithm.family() {
        AlgorithmFamily::Rsa => EncodingKey::from_rsa_pem(&pem),
        AlgorithmFamily::Ec => EncodingKey::from_ec_pem(&pem),
        AlgorithmFamily::Ed => EncodingKey::from_ed_pem(&pem),
        AlgorithmFamily::Hmac => unreachable!("handled above"),
    };
    key.map_err(|e| {
        format!(
            "{} is not a PEM private key for {algorithm:?}: {e}",
            file.display()
        )
    })
}

#[derive(Default)]
struct ProviderDefaults {
    issuer: Option<String>,
    audiences: Vec<String>,
    algorithm: Option<String>,
    kid: Option<String>,
}

fn provider_defaults(file: &Path, name: &str) -> Result<ProviderDefaults, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let raw: crate::config::raw::RawConfig =
        toml::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
    let providers: BTreeMap<_, _> = raw.providers.into_iter().collect();
    let provider = providers.get(name).ok_or_else(|| {
        let known: Vec<&str> = providers.keys().map(String::as_str).collect();
        format!(
            "{} has no provider \"{name}\" (it has: {})",
            file.display(),
            known.join(", ")
        )
    })?;
    Ok(ProviderDefaults {
        issuer: Some(provider.issuer.clone()),
        audiences: provider.audiences.first().cloned().into_iter().collect(),
        algorithm: provider.algorithms.first().cloned(),
        kid: provider.public_keys.iter().find_map(|k| match k {
            crate::config::raw::RawPublicKey::Detailed(k) => k.kid.clone(),
            crate::config::raw::RawPublicKey::Path(_) => None,
        }),
    })
}
