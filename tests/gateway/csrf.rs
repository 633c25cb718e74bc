//! Cross-site request forgery (#25) on real sockets with the recording upstream: the
//! header matrix (method x credential source x Sec-Fetch-Site x Origin), trusted proxies,
//! trusted origins and the route settings. The browser itself: `browser.rs`.

use crate::support::*;

const ROUTES: &str = r#"
[[routes]]
name = "app"
path_prefix = "/"
upstream = "app"
auth = "jwt"
providers = ["rsa"]
token_sources = ["bearer", "cookie:access_token"]

[[routes]]
name = "siblings"
path_prefix = "/siblings"
upstream = "app"
auth = "jwt"
providers = ["rsa"]
token_sources = ["cookie:access_token"]
csrf_allow_same_site = true

[[routes]]
name = "legacy"
path_prefix = "/legacy"
upstream = "app"
auth = "jwt"
providers = ["rsa"]
token_sources = ["cookie:access_token"]
csrf_unsafe_methods = ["GET"]

[[routes]]
name = "nocsrf"
path_prefix = "/nocsrf"
upstream = "app"
auth = "jwt"
providers = ["rsa"]
token_sources = ["cookie:access_token"]
csrf = "off"

[[routes]]
name = "public"
path_prefix = "/public"
upstream = "app"
auth = "public"
"#;

fn gateway_config(upstream: &Upstream, trusted_proxy: bool) -> String {
    let mut server = String::from("trusted_origins = [\"https://portal.example.com\"]");
    if trusted_proxy {
        server.push_str("\ntrusted_proxies = [\"127.0.0.1/32\"]");
    }
    config(upstream.addr, ROUTES).replace(
        "https = \"127.0.0.1:0\"",
        &format!("https = \"127.0.0.1:0\"\n{server}"),
    )
}

/// The rules of the issue, spelled out: is this request refused?
fn refused(
    method: &str,
    cookie: bool,
    site: Option<&str>,
    origin: Option<&str>,
    own: &str,
) -> bool {
    if !cookie || matches!(method, "GET" | "HEAD" | "OPTIONS") {
        return false;
    }
    let trusted = origin == Some("https://portal.example.com");
    match site {
        Some("same-origin" | "none") => false,
        Some(_) => !trusted,
        None => match origin {
            None => false,
            Some(origin) => origin != own && !trusted,
        },
    }
}

async fn send(gw: &Gateway, method: &str, path: &str, credential: &str, extra: &str) -> String {
    raw_request(
        gw.http,
        format!(
            "{method} {path} HTTP/1.1\r\nHost: t\r\n{credential}{extra}Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
}

#[tokio::test]
async fn the_header_matrix() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&gateway_config(&upstream, false)).await;
    let token = valid_token();
    let mut checked = 0;
    for method in ["POST", "PUT", "PATCH", "DELETE", "GET"] {
        for cookie in [false, true] {
            let credential = if cookie {
                format!("Cookie: access_token={token}\r\n")
            } else {
                format!("Authorization: Bearer {token}\r\n")
            };
            for site in [
                None,
                Some("same-origin"),
                Some("none"),
                Some("same-site"),
                Some("cross-site"),
            ] {
                for origin in [
                    None,
                    Some("http://t"),
                    Some("https://t"),
                    Some("http://t:8080"),
                    Some("https://evil.example"),
                    Some("https://portal.example.com"),
                    Some("null"),
                ] {
                    let mut extra = String::new();
                    if let Some(site) = site {
                        extra.push_str(&format!("Sec-Fetch-Site: {site}\r\n"));
                    }
                    if let Some(origin) = origin {
                        extra.push_str(&format!("Origin: {origin}\r\n"));
                    }
                    let before = upstream.count();
                    let answer = send(&gw, method, "/transfer", &credential, &extra).await;
                    let expect_refused = refused(method, cookie, site, origin, "http://t");
                    let case = format!("{method} cookie={cookie} {site:?} {origin:?}");
                    if expect_refused {
                        assert_eq!(raw_status(&answer), 403, "{case}: {answer}");
                        assert!(
                            answer.contains(r#"{"error":"csrf_rejected","status":403}"#),
                            "{case}"
                        );
                        assert_eq!(upstream.count(), before, "{case}: reached the app");
                    } else {
                        assert_eq!(raw_status(&answer), 200, "{case}: {answer}");
                        assert_eq!(upstream.count(), before + 1, "{case}");
                        assert_eq!(upstream.last().header_values("x-auth-user"), ["alice"]);
                    }
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 350);
    let metrics = gw.shared.load().render_metrics();
    assert!(
        metrics.contains(r#"portcullis_auth_decisions_total{route="app",outcome="csrf_rejected"}"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_issue_case_and_public_routes() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&gateway_config(&upstream, false)).await;
    let token = valid_token();
    let forged = "Origin: https://evil.example\r\nSec-Fetch-Site: cross-site\r\n";
    let answer = send(
        &gw,
        "POST",
        "/transfer",
        &format!("Cookie: access_token={token}\r\n"),
        forged,
    )
    .await;
    assert_eq!(raw_status(&answer), 403, "{answer}");
    // No ambient credential: nothing to forge.
    let answer = send(
        &gw,
        "POST",
        "/transfer",
        &format!("Authorization: Bearer {token}\r\n"),
        forged,
    )
    .await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
    let answer = send(&gw, "POST", "/public/x", "", forged).await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
    // An unauthenticated forged request is a plain 401.
    let answer = send(&gw, "POST", "/transfer", "", forged).await;
    assert_eq!(raw_status(&answer), 401, "{answer}");
    assert_eq!(upstream.count(), 2);
}

#[tokio::test]
async fn route_settings_same_site_unsafe_gets_and_off() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&gateway_config(&upstream, false)).await;
    let cookie = format!("Cookie: access_token={}\r\n", valid_token());
    let status = |answer: String| raw_status(&answer);
    // Sibling subdomains where the route allows them; cross-site still refused.
    let same_site = "Sec-Fetch-Site: same-site\r\nOrigin: https://other.t\r\n";
    let cross_site = "Sec-Fetch-Site: cross-site\r\nOrigin: https://evil.example\r\n";
    assert_eq!(
        status(send(&gw, "POST", "/siblings/x", &cookie, same_site).await),
        200
    );
    assert_eq!(
        status(send(&gw, "POST", "/siblings/x", &cookie, cross_site).await),
        403
    );
    assert_eq!(
        status(send(&gw, "POST", "/transfer", &cookie, same_site).await),
        403
    );
    // A legacy app that changes state on GET: refused when the browser marks it cross-site.
    assert_eq!(
        status(send(&gw, "GET", "/legacy/delete?id=1", &cookie, cross_site).await),
        403
    );
    assert_eq!(
        status(
            send(
                &gw,
                "GET",
                "/legacy/delete?id=1",
                &cookie,
                "Sec-Fetch-Site: same-origin\r\n"
            )
            .await
        ),
        200
    );
    assert_eq!(
        status(send(&gw, "GET", "/legacy/delete?id=1", &cookie, "").await),
        200
    );
    assert_eq!(
        status(send(&gw, "GET", "/transfer", &cookie, cross_site).await),
        200
    );
    // Off: the operator's choice (check warns about it).
    assert_eq!(
        status(send(&gw, "POST", "/nocsrf/x", &cookie, cross_site).await),
        200
    );
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_scheme_and_host_are_the_origin() {
    let upstream = Upstream::start().await;
    let cookie = format!("Cookie: access_token={}\r\n", valid_token());
    let proxied = "X-Forwarded-Proto: https\r\nX-Forwarded-Host: app.example.com\r\n";
    let from = |origin: &str| format!("{proxied}Origin: {origin}\r\n");
    // A trusted peer (the TLS-terminating proxy): its scheme and host are the request's.
    let gw = Gateway::start(&gateway_config(&upstream, true)).await;
    let status = |answer: String| raw_status(&answer);
    assert_eq!(
        status(send(&gw, "POST", "/x", &cookie, &from("https://app.example.com")).await),
        200
    );
    assert_eq!(
        status(send(&gw, "POST", "/x", &cookie, &from("http://t")).await),
        403
    );
    drop(gw);
    // From an untrusted peer the same headers count for nothing.
    let gw = Gateway::start(&gateway_config(&upstream, false)).await;
    assert_eq!(
        status(send(&gw, "POST", "/x", &cookie, &from("https://app.example.com")).await),
        403
    );
    assert_eq!(
        status(send(&gw, "POST", "/x", &cookie, &from("http://t")).await),
        200
    );
}

#[tokio::test]
async fn check_warns_and_explain_prints_the_verdict() {
    let upstream = Upstream::start().await;
    let dir = fixture_dir();
    let file = dir.path().join("portcullis.toml");
    std::fs::write(&file, gateway_config(&upstream, false)).unwrap();
    let bin = env!("CARGO_BIN_EXE_portcullis");
    let check = std::process::Command::new(bin)
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&check.stdout).into_owned()
        + &String::from_utf8_lossy(&check.stderr);
    assert!(
        out.contains("route \"nocsrf\" takes a cookie credential and has csrf = \"off\""),
        "{out}"
    );
    let explain = |headers: &[&str]| {
        let mut command = std::process::Command::new(bin);
        command.args(["explain", "--config"]).arg(&file).args([
            "POST",
            "http://t/siblings/x",
            "--claims",
            r#"{"sub":"alice"}"#,
        ]);
        for header in headers {
            command.args(["--header", header]);
        }
        String::from_utf8_lossy(&command.output().unwrap().stdout).into_owned()
    };
    let out = explain(&["Sec-Fetch-Site: cross-site", "Origin: https://evil.example"]);
    assert!(
        out.contains("csrf:       REFUSED (Sec-Fetch-Site: cross-site)"),
        "{out}"
    );
    assert!(
        out.contains("decision:   DENY 403 (csrf_rejected)"),
        "{out}"
    );
    let out = explain(&["Sec-Fetch-Site: same-site"]);
    assert!(
        out.contains("csrf:       allowed (Sec-Fetch-Site: same-site, allowed on this route)"),
        "{out}"
    );
    assert!(out.contains("decision:   ALLOW 200"), "{out}");
    let out = explain(&["Origin: https://portal.example.com"]);
    assert!(
        out.contains("csrf:       allowed (Origin is in trusted_origins)"),
        "{out}"
    );
}
