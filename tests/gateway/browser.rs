//! A real browser against the cross-site request check (#25): Debian's headless Chromium,
//! driven by `tests/support/browser/csrf.mjs` (playwright-core), logs in through the test
//! OpenID provider, then sends state-changing requests to a session route from the
//! gateway's own page and from a page of another origin. This is also the browser-driven
//! test of the login flow itself.

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support::oidc::*;
use crate::support::*;

fn browser_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/support/browser")
}

/// Serves `html` to every request, on 127.0.0.1 with another port than the gateway's: another
/// origin, the same site (as a sibling subdomain is), so the browser does send the
/// gateway's `SameSite=Lax` session cookie with its requests.
async fn page_server(html: String) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let html = html.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{html}",
                    html.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn a_real_browser_logs_in_and_another_origin_cannot_post_with_its_session() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).is_file(),
        "the browser test needs Chromium at {chromium} (Debian: apt-get install chromium; \
         or set CHROMIUM); scripts/test.sh installs it"
    );
    assert!(
        browser_dir().join("node_modules/playwright-core").is_dir(),
        "the browser test needs playwright-core: run `npm ci --prefix tests/support/browser` \
         (scripts/test.sh does it)"
    );
    let upstream = Upstream::start().await;
    let idp = OidcIdp::start().await;
    let keys_dir = tempfile::tempdir().unwrap();
    let mut text = config(upstream.addr, SESSION_ROUTES);
    text.push_str(&login_config(
        &idp,
        "browser",
        keys_dir.path(),
        &[COOKIE_KEY_A],
        "",
    ));
    let gateway = Gateway::start(&text).await;
    idp.register("browser", &[&gateway]).await;
    let origin = format!("http://{}", gateway.http);
    let evil = page_server(format!(
        r#"<!doctype html><title>another site</title>
<form id="f" method="POST" action="{origin}/app/evil-form"><input name="amount" value="1000000"></form>
<script>
fetch("{origin}/app/evil-fetch", {{method: "POST", mode: "no-cors", credentials: "include", body: "amount=1000000"}})
  .finally(() => document.getElementById("f").submit());
</script>"#
    ))
    .await;

    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new("node")
            .arg(browser_dir().join("csrf.mjs"))
            .args([&origin, &evil])
            .env("CHROMIUM", &chromium)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the browser run took over 2 minutes")
    .expect("cannot run node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let seen: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|_| {
        panic!(
            "no result from the browser: {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    assert!(seen.get("error").is_none(), "{seen:#}");
    // The login round trip, in a real browser.
    assert_eq!(seen["login"], "/app/home", "{seen:#}");
    assert!(
        seen["cookies"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c == "portcullis:Lax"),
        "{seen:#}"
    );
    // The gateway's own page: both reach the app with the identity.
    assert_eq!(seen["sameOriginFetch"], 200, "{seen:#}");
    assert_eq!(seen["sameOriginForm"], "/app/own-form", "{seen:#}");
    for path in ["/app/own-fetch", "/app/own-form"] {
        let request = upstream
            .requests()
            .into_iter()
            .find(|r| r.path_and_query == path)
            .unwrap_or_else(|| panic!("{path} did not reach the app"));
        assert_eq!(request.method, "POST");
        assert_eq!(request.header_values("x-auth-user"), ["alice"]);
    }
    // The other origin's page: the browser sent the session cookie (same site), the
    // gateway refused both, and the app received neither.
    assert_eq!(
        seen["crossOriginForm"],
        serde_json::json!({"error": "csrf_rejected", "status": 403}),
        "{seen:#}"
    );
    assert!(
        !upstream
            .requests()
            .iter()
            .any(|r| r.path_and_query.starts_with("/app/evil")),
        "a cross-origin request reached the app"
    );
    let metrics = gateway.shared.load().render_metrics();
    assert!(
        metrics
            .contains(r#"portcullis_auth_decisions_total{route="app",outcome="csrf_rejected"} 2"#),
        "{metrics}"
    );
}
