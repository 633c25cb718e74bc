//! Identity and forwarding headers: strip every spoofed spelling, inject exactly one.

use jsonwebtoken::Algorithm;
use serde_json::json;

use crate::support::*;

/// Sends `extra_headers` (raw lines) with a valid token or none, returns what the upstream saw.
async fn send_raw(
    gw: &Gateway,
    upstream: &Upstream,
    path: &str,
    token: bool,
    extra_headers: &str,
) -> Seen {
    let auth = if token {
        format!("Authorization: Bearer {}\r\n", valid_token())
    } else {
        String::new()
    };
    let before = upstream.count();
    let answer = raw_request(
        gw.http,
        format!("GET {path} HTTP/1.1\r\nHost: t\r\n{auth}{extra_headers}Connection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
    assert_eq!(upstream.count(), before + 1);
    upstream.last()
}

const SPOOFS: &[&str] = &[
    "X-Auth-User: mallory\r\n",
    "x-auth-user: mallory\r\n",
    "X-AUTH-USER: mallory\r\n",
    "X_Auth_User: mallory\r\n",
    "x_auth_user: mallory\r\n",
    "X-Auth-User: mallory\r\nX-Auth-User: eve\r\n",
    "X-Auth-User: mallory\r\nX_Auth_User: eve\r\n",
    "X-Auth-Groups: admins\r\nX_AUTH_EMAIL: boss@example.com\r\n",
];

#[tokio::test]
async fn spoofed_identity_headers_never_reach_the_upstream_on_public_routes() {
    let upstream = Upstream::start().await;
    let gw = Gateway::standard(&upstream).await;
    for spoof in SPOOFS {
        let seen = send_raw(&gw, &upstream, "/public", false, spoof).await;
        for name in [
            "x-auth-user",
            "x_auth_user",
            "x-auth-groups",
            "x-auth-email",
            "x_auth_email",
        ] {
            assert!(
                seen.header_values(name).is_empty(),
                "{spoof:?} leaked {name}"
            );
        }
    }
}

#[tokio::test]
async fn authenticated_requests_carry_exactly_the_verified_identity() {
    let upstream = Upstream::start().await;
    let gw = Gateway::standard(&upstream).await;
    for spoof in SPOOFS {
        let seen = send_raw(&gw, &upstream, "/api", true, spoof).await;
        assert_eq!(
            seen.header_values("x-auth-user"),
            vec!["alice"],
            "{spoof:?}"
        );
        assert_eq!(
            seen.header_values("x-auth-email"),
            vec!["alice@example.com"],
            "{spoof:?}"
        );
        assert_eq!(
            seen.header_values("x-auth-groups"),
            vec!["eng,ops"],
            "{spoof:?}"
        );
        assert!(seen.header_values("x_auth_user").is_empty());
        assert!(seen.header_values("x_auth_email").is_empty());
    }
}

#[tokio::test]
async fn connection_header_cannot_remove_injected_identity() {
    let upstream = Upstream::start().await;
    let gw = Gateway::standard(&upstream).await;
    let token = valid_token();
    let answer = raw_request(
        gw.http,
        format!("GET /api HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\nX-Auth-User: mallory\r\nConnection: close, X-Auth-User, X-Auth-Email, X-Custom\r\nX-Custom: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Authorization: Basic eA==\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
    let seen = upstream.last();
    assert_eq!(seen.header_values("x-auth-user"), vec!["alice"]);
    assert_eq!(
        seen.header_values("x-auth-email"),
        vec!["alice@example.com"]
    );
    for hop in ["x-custom", "keep-alive", "te", "proxy-authorization"] {
        assert!(seen.header_values(hop).is_empty(), "{hop} was forwarded");
    }
}

#[tokio::test]
async fn identity_headers_in_request_trailers_are_dropped() {
    let upstream = Upstream::start().await;
    let gw = Gateway::standard(&upstream).await;
    let answer = raw_request(
        gw.http,
        b"POST /public HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nTrailer: X-Auth-User\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\nX-Auth-User: mallory\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
    let seen = upstream.last();
    assert_eq!(seen.body_len, 5);
    assert!(
        seen.trailers.is_none(),
        "trailers reached the upstream: {:?}",
        seen.trailers
    );
    assert!(seen.header_values("x-auth-user").is_empty());
}

#[tokio::test]
async fn missing_claims_mean_absent_headers_and_values_cannot_smuggle_structure() {
    let upstream = Upstream::start().await;
    let gw = Gateway::standard(&upstream).await;
    let token = token(
        Algorithm::RS256,
        &claims(json!({"email": null, "groups": ["eng,admins", "ops", "a\u{0}b"]})),
    );
    let response = client()
        .get(gw.url("/api"))
        .bearer_auth(token)
        .header("x-auth-email", "boss@example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = upstream.last();
    assert!(seen.header_values("x-auth-email").is_empty());
    // Every group, none split or dropped: the ones a header cannot carry as they are come
    // RFC 8187-encoded.
    assert_eq!(
        seen.header_values("x-auth-groups"),
        vec!["UTF-8''eng%2Cadmins,ops,UTF-8''a%00b"]
    );
}

#[tokio::test]
async fn forwarded_headers_from_untrusted_clients_are_rewritten() {
    let upstream = Upstream::start().await;
    let gw = Gateway::standard(&upstream).await;
    let seen = send_raw(
        &gw,
        &upstream,
        "/public",
        false,
        "X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.test\r\nForwarded: for=6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\n",
    )
    .await;
    assert_eq!(seen.header_values("x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(seen.header_values("x-real-ip"), vec!["127.0.0.1"]);
    assert_eq!(seen.header_values("x-forwarded-proto"), vec!["http"]);
    assert_eq!(seen.header_values("x-forwarded-host"), vec!["t"]);
    assert!(seen.header_values("forwarded").is_empty());
    // The client's Host is preserved.
    assert_eq!(seen.header_values("host"), vec!["t"]);
}

#[tokio::test]
async fn forwarded_headers_from_trusted_proxies_are_appended_to() {
    let upstream = Upstream::start().await;
    let text = config(upstream.addr, ROUTES).replace(
        "https = \"127.0.0.1:0\"",
        "https = \"127.0.0.1:0\"\ntrusted_proxies = [\"127.0.0.0/8\"]",
    );
    let gw = Gateway::start(&text).await;
    let seen = send_raw(
        &gw,
        &upstream,
        "/public",
        false,
        "X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: app.example.com\r\nForwarded: for=203.0.113.7\r\n",
    )
    .await;
    assert_eq!(
        seen.header_values("x-forwarded-for"),
        vec!["203.0.113.7, 127.0.0.1"]
    );
    assert_eq!(seen.header_values("x-forwarded-proto"), vec!["https"]);
    assert_eq!(
        seen.header_values("x-forwarded-host"),
        vec!["app.example.com"]
    );
    assert_eq!(seen.header_values("forwarded"), vec!["for=203.0.113.7"]);
}

/// `server.request_id`: the upstream and the client see the same id; a client's own is
/// replaced unless it comes from a trusted proxy; refused requests carry one too.
#[tokio::test]
async fn request_ids_are_kept_from_trusted_proxies_and_made_for_everyone_else() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config_with(
        &upstream,
        "request_id = \"X-Request-Id\"\ntrusted_proxies = [\"127.0.0.1/32\"]",
        "",
    ))
    .await;
    let from = |source: &str| {
        reqwest::Client::builder()
            .local_address(Some(source.parse().unwrap()))
            .build()
            .unwrap()
    };
    // From the trusted proxy: its id goes through.
    let response = from("127.0.0.1")
        .get(gw.url("/public/a"))
        .header("x-request-id", "lb-7f3a")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "lb-7f3a");
    assert_eq!(upstream.last().header_values("x-request-id"), ["lb-7f3a"]);
    // From anyone else: replaced, the same new id on both sides.
    let response = from("127.0.0.2")
        .get(gw.url("/public/b"))
        .header("x-request-id", "lb-7f3a")
        .send()
        .await
        .unwrap();
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_ne!(id, "lb-7f3a");
    assert_eq!(
        upstream.last().header_values("x-request-id"),
        std::slice::from_ref(&id)
    );
    // Two requests, two ids; a refusal carries one as well.
    let again = from("127.0.0.2")
        .get(gw.url("/public/b"))
        .send()
        .await
        .unwrap();
    assert_ne!(again.headers()["x-request-id"].to_str().unwrap(), id);
    let refused = from("127.0.0.2")
        .get(gw.url("/api/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    assert_eq!(refused.headers()["x-request-id"].len(), 36);
}
