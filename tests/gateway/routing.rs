//! Routing: deny by default, most specific wins, canonical paths matched and forwarded.

use crate::support::*;

#[tokio::test]
async fn no_route_is_404_and_the_upstream_is_never_contacted() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config(
        upstream.addr,
        r#"
[[routes]]
name = "api"
path_prefix = "/api"
upstream = "app"
auth = "public"
"#,
    ))
    .await;
    for path in ["/", "/apix", "/other/api", "/ap"] {
        let response = client().get(gw.url(path)).send().await.unwrap();
        assert_error(response, 404, "not_found").await;
    }
    assert_eq!(upstream.count(), 0);
    let response = client().get(gw.url("/api/x")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(upstream.count(), 1);
}

const SPECIFICITY: &str = r#"
[[routes]]
name = "any-root"
path_prefix = "/"
upstream = "app"
auth = "public"

[[routes]]
name = "any-api"
path_prefix = "/api"
upstream = "app"
auth = "public"

[[routes]]
name = "any-api-v1"
path_prefix = "/api/v1"
upstream = "app"
auth = "public"

[[routes]]
name = "exact"
path = "/api/v1/status"
upstream = "app"
auth = "public"

[[routes]]
name = "api-delete"
path_prefix = "/api"
methods = ["DELETE"]
upstream = "app"
auth = "jwt"

[[routes]]
name = "wild"
host = "*.example.com"
path_prefix = "/api"
upstream = "app"
auth = "jwt"

[[routes]]
name = "crm"
host = "CRM.example.com"
path_prefix = "/api"
upstream = "app"
auth = "jwt"
providers = ["rsa"]
"#;

/// Which route took the request, told by its auth: public routes answer 200 without a
/// token; jwt routes answer 401.
async fn status(gw: &Gateway, method: reqwest::Method, host: &str, path: &str) -> u16 {
    client()
        .request(method, gw.url(path))
        .header("host", host)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn most_specific_route_wins_by_host_then_path_then_method() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config(upstream.addr, SPECIFICITY)).await;
    use reqwest::Method as M;
    // Exact host (case-insensitive, port and trailing dot ignored) over wildcard over none.
    assert_eq!(status(&gw, M::GET, "crm.example.com", "/api/x").await, 401);
    assert_eq!(
        status(&gw, M::GET, "CRM.Example.COM.:8080", "/api/x").await,
        401
    );
    assert_eq!(status(&gw, M::GET, "hr.example.com", "/api/x").await, 401);
    assert_eq!(status(&gw, M::GET, "example.com", "/api/x").await, 200);
    assert_eq!(status(&gw, M::GET, "other.test", "/api/x").await, 200);
    // A host group with no matching path falls through to less specific groups.
    assert_eq!(status(&gw, M::GET, "crm.example.com", "/home").await, 200);
    // Method-restricted routes only take their methods.
    assert_eq!(status(&gw, M::DELETE, "other.test", "/api/x").await, 401);
    assert_eq!(status(&gw, M::POST, "other.test", "/api/x").await, 200);
    let public_requests = upstream.count();
    assert_eq!(public_requests, 4);
    // Exact path over longer prefix: both public, so look at what the upstream saw.
    assert_eq!(
        status(&gw, M::GET, "other.test", "/api/v1/status").await,
        200
    );
    assert_eq!(upstream.last().path_and_query, "/api/v1/status");
}

#[tokio::test]
async fn the_canonical_path_is_matched_and_forwarded() {
    let upstream = Upstream::start().await;
    let gw = Gateway::standard(&upstream).await;
    // Each of these resolves to /api/... (protected), never to the public sibling.
    let cases = [
        ("/public/../api/x", "/api/x"),
        ("/public/%2e%2e/api/x", "/api/x"),
        ("//api//x", "/api/x"),
        ("/public/./../api/x", "/api/x"),
        ("/%61pi/x", "/api/x"),
    ];
    for (raw, canonical) in cases {
        let answer = raw_request(
            gw.http,
            format!("GET {raw} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(
            raw_status(&answer),
            401,
            "{raw} must reach the protected route"
        );
        let answer = raw_request(
            gw.http,
            format!("GET {raw}?q=%2F..%2F HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n", valid_token()).as_bytes(),
        )
        .await;
        assert_eq!(raw_status(&answer), 200, "{raw}");
        // The upstream gets the canonical path and the query untouched.
        assert_eq!(
            upstream.last().path_and_query,
            format!("{canonical}?q=%2F..%2F")
        );
    }
}

#[tokio::test]
async fn ambiguous_paths_are_400_and_never_forwarded() {
    let upstream = Upstream::start().await;
    let gw = Gateway::standard(&upstream).await;
    for raw in [
        "/public/..%2Fapi/x",
        "/public%2F..%2Fapi",
        "/public/%5C../api",
        "/public/..\\api",
        "/public/%00",
        "/..",
        "/public/../../api",
        "/public/..;/api/x",
        "/public/%zz",
        "/public/%C3%28",
    ] {
        let answer = raw_request(
            gw.http,
            format!("GET {raw} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(raw_status(&answer), 400, "{raw}: {answer}");
        assert!(
            answer.contains(r#"{"error":"bad_request","status":400}"#),
            "{answer}"
        );
    }
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn the_query_string_never_takes_part_in_matching() {
    let upstream = Upstream::start().await;
    let gw = Gateway::standard(&upstream).await;
    let response = client().get(gw.url("/public?x=/api")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let response = client().get(gw.url("/api?x=/public")).send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(upstream.last().path_and_query, "/public?x=/api");
}

#[tokio::test]
async fn host_must_be_present_single_and_consistent() {
    let upstream = Upstream::start().await;
    let gw = Gateway::standard(&upstream).await;
    let cases: [&[u8]; 4] = [
        b"GET /public HTTP/1.1\r\nConnection: close\r\n\r\n",
        b"GET /public HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
        b"GET http://a.test/public HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n",
        b"GET /public HTTP/1.1\r\nHost: a b\r\nConnection: close\r\n\r\n",
    ];
    for request in cases {
        let answer = raw_request(gw.http, request).await;
        assert_eq!(
            raw_status(&answer),
            400,
            "{}",
            String::from_utf8_lossy(request)
        );
    }
    assert_eq!(upstream.count(), 0);
    let answer = raw_request(
        gw.http,
        b"GET http://a.test/public HTTP/1.1\r\nHost: A.test:80\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&answer), 200);
    assert_eq!(upstream.last().path_and_query, "/public");
    assert_eq!(upstream.last().header_values("host"), vec!["A.test:80"]);
}
