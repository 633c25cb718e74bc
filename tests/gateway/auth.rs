//! Credentials: every 401/403 outcome, every algorithm, ambiguity, token sources.

use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::json;

use crate::support::*;

const INVALID: &str = r#"Bearer realm="portcullis", error="invalid_token""#;

async fn get_with_bearer(gw: &Gateway, path: &str, token: &str) -> reqwest::Response {
    client()
        .get(gw.url(path))
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap()
}

async fn assert_invalid_token(gw: &Gateway, token: &str, why: &str) {
    let response = get_with_bearer(gw, "/api/x", token).await;
    assert_eq!(response.headers()["www-authenticate"], INVALID, "{why}");
    assert_error(response, 401, "invalid_token").await;
}

#[tokio::test]
async fn no_credential_is_401_with_a_bearer_challenge() {
    let upstream = Upstream::start().await;
    let gw = Gateway::standard(&upstream).await;
    let response = client().get(gw.url("/api/x")).send().await.unwrap();
    assert_eq!(
        response.headers()["www-authenticate"],
        r#"Bearer realm="portcullis""#
    );
    assert_error(response, 401, "unauthorized").await;
    // Another scheme is not a Bearer credential.
    let response = client()
        .get(gw.url("/api/x"))
        .header("authorization", "Basic dXNlcjpwYXNz")
        .send()
        .await
        .unwrap();
    assert_error(response, 401, "unauthorized").await;
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn every_invalid_token_is_401_invalid_token_and_never_forwarded() {
    let upstream = Upstream::start().await;
    let gw = Gateway::standard(&upstream).await;
    let now = now();
    let rs = |extra| token(Algorithm::RS256, &claims(extra));
    let valid = valid_token();
    let (head, rest) = valid.split_once('.').unwrap();
    let (payload, signature) = rest.split_once('.').unwrap();
    let other_key = EncodingKey::from_rsa_pem(keys().rsa_other.serialize_pem().as_bytes()).unwrap();
    let b64 = |v: serde_json::Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let cases: Vec<(String, &str)> = vec![
        ("not-a-jwt".into(), "malformed"),
        ("a.b".into(), "two parts"),
        (format!("{valid}.x"), "four parts"),
        (
            format!("{head}.{payload}.{}", &signature[..signature.len() - 4]),
            "truncated signature",
        ),
        (
            format!(
                "{head}.{}.{signature}",
                b64(claims(json!({"sub": "admin"})))
            ),
            "tampered payload",
        ),
        (
            token_with(Algorithm::RS256, &claims(json!({})), None, &other_key),
            "wrong key",
        ),
        (rs(json!({"exp": now - 3600})), "expired"),
        (rs(json!({"exp": null})), "no exp"),
        (rs(json!({"exp": "tomorrow"})), "exp not a number"),
        (rs(json!({"nbf": now + 3600})), "not yet valid"),
        (rs(json!({"iat": now + 3600})), "issued in the future"),
        (rs(json!({"iss": "https://evil.test"})), "wrong issuer"),
        (rs(json!({"iss": null})), "no issuer"),
        (rs(json!({"aud": "someone-else"})), "wrong audience"),
        (rs(json!({"aud": ["x", "y"]})), "wrong audience list"),
        (rs(json!({"aud": null})), "no audience"),
        (
            format!("{}.{payload}.", b64(json!({"alg": "none", "typ": "JWT"}))),
            "alg none",
        ),
        (
            format!(
                "{}.{payload}.{signature}",
                b64(json!({"alg": "RS256", "crit": ["exp"]}))
            ),
            "crit header",
        ),
        ("x".repeat(20_000), "too large"),
    ];
    for (token, why) in &cases {
        assert_invalid_token(&gw, token, why).await;
    }
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn the_token_header_never_widens_the_allow_list() {
    let upstream = Upstream::start().await;
    // Only RS256 allowed; the HMAC provider is not on this route.
    let gw = Gateway::start(&config(
        upstream.addr,
        r#"
[[routes]]
name = "rs-only"
path_prefix = "/api"
upstream = "app"
auth = "jwt"
providers = ["rsa"]
"#,
    ))
    .await;
    // HS256 token MACed with the RSA public key PEM (algorithm confusion).
    let public_pem = keys().rsa.public_key_pem();
    let confused = token_with(
        Algorithm::HS256,
        &claims(json!({})),
        None,
        &EncodingKey::from_secret(public_pem.as_bytes()),
    );
    assert_invalid_token(&gw, &confused, "HS256 with the RSA public key").await;
    // A correctly signed HS256 token is still refused on an RS-only route.
    assert_invalid_token(
        &gw,
        &token(Algorithm::HS256, &claims(json!({}))),
        "HS256 on RS route",
    )
    .await;
    // ES256 token on an RS-only route.
    assert_invalid_token(
        &gw,
        &token(Algorithm::ES256, &claims(json!({}))),
        "ES256 on RS route",
    )
    .await;
    assert_eq!(upstream.count(), 0);
    assert_eq!(
        get_with_bearer(&gw, "/api", &valid_token()).await.status(),
        200
    );
}

#[tokio::test]
async fn every_algorithm_verifies() {
    let upstream = Upstream::start().await;
    let gw = Gateway::standard(&upstream).await;
    use Algorithm::*;
    for alg in [
        HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA,
    ] {
        let sub = format!("user-{alg:?}");
        let token = token(alg, &claims(json!({ "sub": sub })));
        let response = get_with_bearer(&gw, "/api/alg", &token).await;
        assert_eq!(response.status(), 200, "{alg:?}");
        assert_eq!(upstream.last().header_values("x-auth-user"), vec![sub]);
    }
}

#[tokio::test]
async fn kid_binds_a_key_and_unknown_kids_are_refused() {
    let upstream = Upstream::start().await;
    let config_text = config(
        upstream.addr,
        r#"
[providers.bound]
issuer = "https://bound.test"
audiences = ["app"]
algorithms = ["RS256"]
public_keys = [{ file = "rsa.pub.pem", kid = "k1" }, { file = "rsa_other.pub.pem", kid = "k2" }]

[[routes]]
name = "bound"
path_prefix = "/bound"
upstream = "app"
auth = "jwt"
providers = ["bound"]
"#,
    );
    let gw = Gateway::start(&config_text).await;
    let claims = claims(json!({"iss": "https://bound.test"}));
    let main_key = signing_key(Algorithm::RS256);
    let other_key = EncodingKey::from_rsa_pem(keys().rsa_other.serialize_pem().as_bytes()).unwrap();
    assert_eq!(
        get_with_bearer(
            &gw,
            "/bound",
            &token_with(Algorithm::RS256, &claims, Some("k1"), &main_key)
        )
        .await
        .status(),
        200
    );
    assert_eq!(
        get_with_bearer(
            &gw,
            "/bound",
            &token_with(Algorithm::RS256, &claims, Some("k2"), &other_key)
        )
        .await
        .status(),
        200
    );
    // Without a kid, every key of the family is tried.
    assert_eq!(
        get_with_bearer(
            &gw,
            "/bound",
            &token_with(Algorithm::RS256, &claims, None, &other_key)
        )
        .await
        .status(),
        200
    );
    // A kid bound to another key does not verify; an unknown kid finds no key.
    assert_eq!(
        get_with_bearer(
            &gw,
            "/bound",
            &token_with(Algorithm::RS256, &claims, Some("k2"), &main_key)
        )
        .await
        .status(),
        401
    );
    assert_eq!(
        get_with_bearer(
            &gw,
            "/bound",
            &token_with(
                Algorithm::RS256,
                &claims,
                Some("../../etc/passwd"),
                &main_key
            )
        )
        .await
        .status(),
        401
    );
    assert_eq!(upstream.count(), 3);
}

#[tokio::test]
async fn unmet_requirements_are_403_insufficient_scope() {
    let upstream = Upstream::start().await;
    let gw = Gateway::standard(&upstream).await;
    let cases = [
        (json!({}), 403),
        (json!({"scope": "admin"}), 403),
        (json!({"role": "admin"}), 403),
        (json!({"scope": "read admin", "role": "guest"}), 403),
        (
            json!({"scope": "read admin", "role": ["guest", "owner"]}),
            200,
        ),
        (json!({"scp": ["admin"], "role": "admin"}), 200),
    ];
    for (extra, want) in cases {
        let response = get_with_bearer(
            &gw,
            "/admin",
            &token(Algorithm::RS256, &claims(extra.clone())),
        )
        .await;
        if want == 403 {
            assert_eq!(
                response.headers()["www-authenticate"],
                r#"Bearer realm="portcullis", error="insufficient_scope""#
            );
            assert_error(response, 403, "insufficient_scope").await;
        } else {
            assert_eq!(response.status(), 200, "{extra}");
        }
    }
    assert_eq!(upstream.count(), 2);
}

#[tokio::test]
async fn bearer_scheme_is_case_insensitive_but_ambiguity_is_refused() {
    let upstream = Upstream::start().await;
    let gw = Gateway::standard(&upstream).await;
    let token = valid_token();
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let response = client()
            .get(gw.url("/api"))
            .header("authorization", format!("{scheme} {token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{scheme}");
    }
    let served = upstream.count();
    // Two Authorization headers: refused, whatever the order or validity.
    let answer = raw_request(
        gw.http,
        format!("GET /api HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\nAuthorization: Bearer garbage\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&answer), 400, "{answer}");
    assert!(answer.contains(r#"error="invalid_request""#));
    // Two token cookies of the same name, even across two Cookie headers.
    let answer = raw_request(
        gw.http,
        format!("GET /cookie HTTP/1.1\r\nHost: t\r\nCookie: at={token}\r\nCookie: at={token}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&answer), 400, "{answer}");
    let answer = raw_request(
        gw.http,
        format!("GET /cookie HTTP/1.1\r\nHost: t\r\nCookie: at={token}; x=1; at=evil\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&answer), 400, "{answer}");
    assert_eq!(upstream.count(), served);
}

#[tokio::test]
async fn tokens_are_read_from_the_configured_sources_only() {
    let upstream = Upstream::start().await;
    let gw = Gateway::standard(&upstream).await;
    let token = valid_token();
    // /cookie reads cookie "at" only: a Bearer token does not count there.
    let response = client()
        .get(gw.url("/cookie"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let response = client()
        .get(gw.url("/cookie"))
        .header("cookie", format!("theme=dark; at={token}; lang=en"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // The consumed cookie is removed, the app's own cookies stay.
    assert_eq!(
        upstream.last().header_values("cookie"),
        vec!["theme=dark; lang=en"]
    );
    // /api reads Bearer only: a cookie does not count.
    let response = client()
        .get(gw.url("/api"))
        .header("cookie", format!("at={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    // /both: an invalid Bearer is not rescued by a valid cookie; two different tokens in
    // the route's two sources are refused as ambiguous (I10).
    let response = client()
        .get(gw.url("/both"))
        .bearer_auth("bad.bad.bad")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let response = client()
        .get(gw.url("/both"))
        .header("cookie", format!("at={token}"))
        .bearer_auth("bad.bad.bad")
        .send()
        .await
        .unwrap();
    assert_error(response, 400, "ambiguous_credential").await;
    // The same token in both: one credential, and neither copy reaches the app.
    let response = client()
        .get(gw.url("/both"))
        .header("cookie", format!("at={token}; theme=dark"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(upstream.last().header_values("authorization").is_empty());
    assert_eq!(upstream.last().header_values("cookie"), ["theme=dark"]);
    let response = client()
        .get(gw.url("/both"))
        .header("cookie", format!("at={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(upstream.last().header_values("cookie").is_empty());
}

#[tokio::test]
async fn the_consumed_credential_is_removed_unless_forward_token() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config(
        upstream.addr,
        r#"
[[routes]]
name = "strip"
path_prefix = "/strip"
upstream = "app"
auth = "jwt"

[[routes]]
name = "keep"
path_prefix = "/keep"
upstream = "app"
auth = "jwt"
forward_token = true
token_sources = ["cookie:at", "bearer"]

[[routes]]
name = "public"
path_prefix = "/public"
upstream = "app"
auth = "public"
"#,
    ))
    .await;
    let token = valid_token();
    client()
        .get(gw.url("/strip"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert!(upstream.last().header_values("authorization").is_empty());
    client()
        .get(gw.url("/keep"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        upstream.last().header_values("authorization"),
        vec![format!("Bearer {token}")]
    );
    client()
        .get(gw.url("/keep"))
        .header("cookie", format!("at={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        upstream.last().header_values("cookie"),
        vec![format!("at={token}")]
    );
    // Public routes consume nothing: the app's own Authorization passes.
    client()
        .get(gw.url("/public"))
        .header("authorization", "Basic dXNlcjpwYXNz")
        .send()
        .await
        .unwrap();
    assert_eq!(
        upstream.last().header_values("authorization"),
        vec!["Basic dXNlcjpwYXNz"]
    );
}

#[tokio::test]
async fn a_token_is_checked_on_every_request_not_per_connection() {
    let upstream = Upstream::start().await;
    let gw = Gateway::standard(&upstream).await;
    let token = valid_token();
    // Same keep-alive connection: a valid request, then one without a token.
    let answer = raw_request(
        gw.http,
        format!("GET /api/1 HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n\r\nGET /api/2 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    let statuses: Vec<&str> = answer.matches("HTTP/1.1 ").map(|_| "").collect();
    assert_eq!(statuses.len(), 2, "{answer}");
    assert!(answer.contains("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("HTTP/1.1 401"), "{answer}");
    assert_eq!(upstream.count(), 1);
    assert_eq!(upstream.last().path_and_query, "/api/1");
}
