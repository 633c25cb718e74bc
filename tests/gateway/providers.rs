//! Providers that survive key rotation: JWKS and discovery against a real IdP server,
//! the unknown-kid guard, the last good key set, and the verified-token cache.

use std::sync::atomic::Ordering;
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::json;

use crate::support::*;

/// A gateway with one remote provider `idp` (extra provider keys in `provider_extra`) on
/// `/idp`, plus the standard routes.
/// `idp_config` for keys from `idp`'s JWKS URL, with more provider `settings`.
fn jwks_config(upstream: &Upstream, idp: &Idp, settings: &str) -> String {
    idp_config(
        upstream,
        &format!(
            "issuer = \"{}\"\njwks_url = \"{}\"\n{settings}",
            idp.issuer(),
            idp.jwks_url()
        ),
    )
}

fn idp_config(upstream: &Upstream, provider: &str) -> String {
    config(
        upstream.addr,
        &format!(
            r#"{ROUTES}
[providers.idp]
algorithms = ["RS256", "ES256"]
audiences = ["{AUDIENCE}"]
{provider}

[[routes]]
name = "idp"
path_prefix = "/idp"
upstream = "app"
auth = "jwt"
providers = ["idp"]
"#
        ),
    )
}

fn idp_token(idp: &Idp, kid: &str, sub: &str, key: &EncodingKey) -> String {
    token_with(
        Algorithm::RS256,
        &claims(json!({"iss": idp.issuer(), "sub": sub})),
        Some(kid),
        key,
    )
}

fn other_rsa() -> EncodingKey {
    EncodingKey::from_rsa_pem(keys().rsa_other.serialize_pem().as_bytes()).unwrap()
}

/// The status of a GET of `path` with `token` as Bearer credential.
async fn status_at(gw: &Gateway, path: &str, token: &str) -> u16 {
    client()
        .get(gw.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn status(gw: &Gateway, token: &str) -> u16 {
    status_at(gw, "/idp/x", token).await
}

#[tokio::test]
async fn rotation_is_a_non_event() {
    let upstream = Upstream::start().await;
    let idp = Idp::start(vec![jwk(Algorithm::RS256, "k1")]).await;
    let gw = Gateway::start(&jwks_config(
        &upstream,
        &idp,
        "refresh_interval = \"1s\"\nmin_refresh_interval = \"300ms\"",
    ))
    .await;
    let main_key = signing_key(Algorithm::RS256);
    let old = idp_token(&idp, "k1", "alice", &main_key);
    assert_eq!(status(&gw, &old).await, 200);
    // The IdP publishes a new key: the first token carrying its kid triggers a refetch.
    tokio::time::sleep(Duration::from_millis(400)).await;
    idp.set_keys(vec![
        jwk(Algorithm::RS256, "k1"),
        jwk_of(&other_rsa(), Algorithm::RS256, "k2"),
    ]);
    let new = idp_token(&idp, "k2", "bob", &other_rsa());
    assert_eq!(
        status(&gw, &new).await,
        200,
        "a token signed with a freshly published key"
    );
    assert_eq!(upstream.last().header_values("x-auth-user"), vec!["bob"]);
    // The old key is withdrawn: after the next background refresh its tokens fail, even
    // the one that is in the verified-token cache.
    idp.set_keys(vec![jwk_of(&other_rsa(), Algorithm::RS256, "k2")]);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        status(&gw, &old).await,
        401,
        "a cached token of a removed key still passed"
    );
    assert_eq!(status(&gw, &new).await, 200);
}

#[tokio::test]
async fn a_flood_of_unknown_kids_costs_the_idp_at_most_one_fetch_per_interval() {
    let upstream = Upstream::start().await;
    let idp = Idp::start(vec![jwk(Algorithm::RS256, "k1")]).await;
    let gw = Gateway::start(&jwks_config(
        &upstream,
        &idp,
        "min_refresh_interval = \"30s\"",
    ))
    .await;
    let at_start = idp.fetches();
    assert_eq!(at_start, 1);
    let attacker = other_rsa();
    let client = client();
    let mut requests = Vec::new();
    for i in 0..1000 {
        let token = idp_token(&idp, &format!("forged-{i}"), "mallory", &attacker);
        let request = client.get(gw.url("/idp/x")).bearer_auth(token).send();
        requests.push(tokio::spawn(request));
        if requests.len() == 50 {
            for r in requests.drain(..) {
                assert_eq!(r.await.unwrap().unwrap().status(), 401);
            }
        }
    }
    for r in requests {
        assert_eq!(r.await.unwrap().unwrap().status(), 401);
    }
    let during = idp.fetches() - at_start;
    assert!(
        during <= 1,
        "{during} JWKS fetches for 1000 unknown kids within one interval"
    );
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn an_idp_outage_or_garbage_keeps_the_last_good_keys() {
    let upstream = Upstream::start().await;
    let idp = Idp::start(vec![jwk(Algorithm::RS256, "k1")]).await;
    let gw = Gateway::start(&jwks_config(
        &upstream,
        &idp,
        "refresh_interval = \"300ms\"\nmin_refresh_interval = \"300ms\"",
    ))
    .await;
    let key = signing_key(Algorithm::RS256);
    for (i, mode) in [
        IdpMode::Down,
        IdpMode::Garbage,
        IdpMode::WrongContent,
        IdpMode::Huge,
    ]
    .into_iter()
    .enumerate()
    {
        idp.set_mode(mode);
        let fetches = idp.fetches();
        tokio::time::sleep(Duration::from_millis(1000)).await;
        if mode != IdpMode::Down {
            assert!(idp.fetches() > fetches, "{mode:?}: no refresh happened");
        }
        // A token never seen before (so not from the cache) still verifies.
        let token = idp_token(&idp, "k1", &format!("user{i}"), &key);
        assert_eq!(status(&gw, &token).await, 200, "{mode:?}");
    }
    let snapshot = gw.shared.load();
    let provider = snapshot
        .providers
        .iter()
        .find(|p| &*p.name == "idp")
        .unwrap();
    let remote = provider.remote.as_ref().unwrap();
    assert!(remote.stats.failures.load(Ordering::Relaxed) >= 4);
    idp.set_mode(IdpMode::Normal);
}

#[tokio::test]
async fn discovery_finds_the_keys_and_an_issuer_mismatch_refuses_to_start() {
    let upstream = Upstream::start().await;
    let idp = Idp::start(vec![jwk(Algorithm::RS256, "k1")]).await;
    let gw = Gateway::start(&idp_config(
        &upstream,
        &format!(
            "issuer = \"{}\"\ndiscovery = \"{}\"",
            idp.issuer(),
            idp.issuer()
        ),
    ))
    .await;
    assert_eq!(idp.discovery_fetches.load(Ordering::SeqCst), 1);
    let token = idp_token(&idp, "k1", "alice", &signing_key(Algorithm::RS256));
    assert_eq!(status(&gw, &token).await, 200);

    idp.state.lock().unwrap().issuer = "https://impostor.example".into();
    let error = Gateway::try_start(&idp_config(
        &upstream,
        &format!(
            "issuer = \"{}\"\ndiscovery = \"{}\"",
            idp.issuer(),
            idp.issuer()
        ),
    ))
    .await
    .err()
    .expect("an issuer mismatch must refuse to start");
    assert!(
        error.contains("providers.idp") && error.contains("impostor.example"),
        "{error}"
    );
}

#[tokio::test]
async fn require_keys_at_start_refuses_to_start_without_keys_but_the_default_starts() {
    let upstream = Upstream::start().await;
    let idp = Idp::start(vec![jwk(Algorithm::RS256, "k1")]).await;
    idp.set_mode(IdpMode::Down);
    let provider = format!(
        "issuer = \"{}\"\njwks_url = \"{}\"\nmin_refresh_interval = \"300ms\"\nfetch_timeout = \"500ms\"",
        idp.issuer(),
        idp.jwks_url()
    );
    let error = Gateway::try_start(&idp_config(
        &upstream,
        &format!("{provider}\nrequire_keys_at_start = true"),
    ))
    .await
    .err()
    .expect("no keys and require_keys_at_start: no start");
    assert!(error.contains("providers.idp"), "{error}");
    // Without the flag it starts; its tokens are denied until the IdP is back.
    let gw = Gateway::start(&idp_config(&upstream, &provider)).await;
    let token = idp_token(&idp, "k1", "alice", &signing_key(Algorithm::RS256));
    assert_eq!(status(&gw, &token).await, 401);
    assert!(
        !gw.shared
            .load()
            .providers
            .iter()
            .find(|p| &*p.name == "idp")
            .unwrap()
            .has_keys()
    );
    idp.set_mode(IdpMode::Normal);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        status(&gw, &token).await,
        200,
        "keys arrived with the retry"
    );
}

#[tokio::test]
async fn cache_control_max_age_shortens_the_refresh() {
    let upstream = Upstream::start().await;
    let idp = Idp::start(vec![jwk(Algorithm::RS256, "k1")]).await;
    idp.state.lock().unwrap().max_age = Some(1);
    let _gw = Gateway::start(&jwks_config(
        &upstream,
        &idp,
        "refresh_interval = \"1h\"\nmin_refresh_interval = \"500ms\"",
    ))
    .await;
    tokio::time::sleep(Duration::from_millis(2600)).await;
    let fetches = idp.fetches();
    assert!(
        (2..=4).contains(&fetches),
        "{fetches} fetches in 2.6 s with max-age=1"
    );
}

#[tokio::test]
async fn jwks_files_choose_keys_by_kid_and_alg() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let jwks = json!({"keys": [jwk(Algorithm::RS256, "r1"), jwk(Algorithm::ES256, "e1")]});
    let file = dir.path().join("keys.json");
    std::fs::write(&file, jwks.to_string()).unwrap();
    let gw = Gateway::start(&idp_config(
        &upstream,
        &format!(
            "issuer = \"https://file.test\"\njwks_file = \"{}\"",
            file.display()
        ),
    ))
    .await;
    let claims = claims(json!({"iss": "https://file.test"}));
    let rs = token_with(
        Algorithm::RS256,
        &claims,
        Some("r1"),
        &signing_key(Algorithm::RS256),
    );
    let es = token_with(
        Algorithm::ES256,
        &claims,
        Some("e1"),
        &signing_key(Algorithm::ES256),
    );
    let es_no_kid = token_with(
        Algorithm::ES256,
        &claims,
        None,
        &signing_key(Algorithm::ES256),
    );
    let wrong_kid = token_with(
        Algorithm::RS256,
        &claims,
        Some("e1"),
        &signing_key(Algorithm::RS256),
    );
    assert_eq!(status(&gw, &rs).await, 200);
    assert_eq!(status(&gw, &es).await, 200);
    assert_eq!(status(&gw, &es_no_kid).await, 200);
    assert_eq!(
        status(&gw, &wrong_kid).await,
        401,
        "an RS256 token named an EC key's kid"
    );
}

/// The counts of the gateway's verified-token cache (misses are full verifications).
fn cache_counts(gw: &Gateway) -> (u64, u64) {
    let snapshot = gw.shared.load_full();
    let cache = &snapshot.token_cache;
    (
        cache.misses.load(Ordering::Relaxed),
        cache.hits.load(Ordering::Relaxed),
    )
}

#[tokio::test]
async fn the_token_cache_verifies_once_and_never_widens_a_route() {
    let upstream = Upstream::start().await;
    let gw = Gateway::standard(&upstream).await;
    let valid = valid_token();
    for _ in 0..5 {
        assert_eq!(status_at(&gw, "/api", &valid).await, 200);
    }
    assert_eq!(cache_counts(&gw), (1, 4), "(verifications, cache hits)");
    // An ES256 token verified (and cached) on /api by provider "ec" must not pass /admin,
    // which only accepts provider "rsa", even with the right scope and role.
    let es = token(
        Algorithm::ES256,
        &claims(json!({"scope": "admin", "role": "admin"})),
    );
    assert_eq!(status_at(&gw, "/api", &es).await, 200);
    assert_eq!(status_at(&gw, "/admin", &es).await, 401);
    // Failures are not cached as successes.
    let bad = format!("{valid}x");
    for _ in 0..2 {
        assert_eq!(status_at(&gw, "/api", &bad).await, 401);
    }
}

#[tokio::test]
async fn an_expired_token_is_refused_even_after_it_was_cached() {
    let upstream = Upstream::start().await;
    let text = config(upstream.addr, ROUTES)
        .replace("[providers.rsa]\n", "[providers.rsa]\nleeway = \"0s\"\n");
    let gw = Gateway::start(&text).await;
    let token = token(Algorithm::RS256, &claims(json!({"exp": now() + 2})));
    assert_eq!(status_at(&gw, "/api", &token).await, 200);
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert_eq!(status_at(&gw, "/api", &token).await, 401);
}

#[tokio::test]
async fn cache_ttl_bounds_a_verification_and_a_zero_size_cache_keeps_none() {
    let upstream = Upstream::start().await;
    let text = config(upstream.addr, ROUTES)
        .replace("[providers.rsa]\n", "[providers.rsa]\ncache_ttl = \"1s\"\n");
    let gw = Gateway::start(&text).await;
    let valid = valid_token();
    for _ in 0..3 {
        assert_eq!(status_at(&gw, "/api", &valid).await, 200);
    }
    assert_eq!(cache_counts(&gw), (1, 2), "(verifications, cache hits)");
    // Past cache_ttl the token is verified again, although it is far from `exp` and was
    // just used on this very thread (the worker's memo answers only while the entry lives).
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(status_at(&gw, "/api", &valid).await, 200);
    assert_eq!(
        cache_counts(&gw),
        (2, 2),
        "a verification outlived cache_ttl"
    );

    let text =
        config(upstream.addr, ROUTES).replace("[server]\n", "[server]\ntoken_cache_size = 0\n");
    let gw = Gateway::start(&text).await;
    for _ in 0..3 {
        assert_eq!(status_at(&gw, "/api", &valid).await, 200);
    }
    assert_eq!(
        cache_counts(&gw),
        (3, 0),
        "token_cache_size = 0 remembered a token"
    );
}

#[tokio::test]
async fn https_to_the_idp_trusts_the_ca_file_and_only_then() {
    let upstream = Upstream::start().await;
    let idp = Idp::start_with(vec![jwk(Algorithm::RS256, "k1")], true).await;
    assert!(idp.jwks_url().starts_with("https://"));
    let provider = format!(
        "issuer = \"{}\"\njwks_url = \"{}\"\nrequire_keys_at_start = true\nfetch_timeout = \"2s\"\nmin_refresh_interval = \"300ms\"",
        idp.issuer(),
        idp.jwks_url()
    );
    // Not signed by a system root: no keys, no start.
    let error = Gateway::try_start(&idp_config(&upstream, &provider))
        .await
        .err()
        .expect("untrusted IdP");
    assert!(error.contains("providers.idp"), "{error}");
    // With the test CA (the self-signed certificate itself) as ca_file.
    let gw = Gateway::start(&idp_config(
        &upstream,
        &format!("{provider}\nca_file = \"tls.crt\""),
    ))
    .await;
    let token = idp_token(&idp, "k1", "alice", &signing_key(Algorithm::RS256));
    assert_eq!(status(&gw, &token).await, 200);
}
