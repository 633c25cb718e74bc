//! Upstreams as legacy apps are: HTTPS apps with a private CA, a name other than their
//! address, a client certificate to present; real TLS on both sides, certificates made by
//! `support::pki` at test time.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use crate::operations::{sample, scrape, with_admin};
use crate::support::pki::{Ca, server_config};
use crate::support::*;

/// The standard config with upstream `app` at `https://{addr}` and `extra` keys under it.
fn https_config(addr: SocketAddr, extra: &str) -> String {
    let text = config(addr, ROUTES);
    let plain = format!("url = \"http://{addr}\"");
    assert!(text.contains(&plain));
    with_admin(
        text.replace(&plain, &format!("url = \"https://{addr}\"\n{extra}")),
        "",
    )
}

#[tokio::test]
async fn an_https_app_with_a_private_ca_is_reached_and_its_sessions_resumed() {
    let files = tempfile::tempdir().unwrap();
    let ca = Ca::new("Intranet CA");
    let app = Upstream::start_tls(server_config(&ca.leaf(&["127.0.0.1"]), None)).await;
    let ca_file = ca.write(files.path(), "ca.pem");
    // No idle connections kept: every request opens (and resumes) a TLS connection.
    let gw = Gateway::start(&https_config(
        app.addr,
        &format!("ca_file = \"{ca_file}\"\npool_max_idle = 0"),
    ))
    .await;
    let c = client();
    for i in 0..3 {
        let response = c
            .get(gw.url(&format!("/api/orders/{i}")))
            .bearer_auth(valid_token())
            .header("X-Auth-User", "mallory")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["path"], format!("/api/orders/{i}"));
        let seen = app.last();
        assert_eq!(seen.header_values("x-auth-user"), ["alice"]);
    }
    assert_eq!(app.count(), 3);
    assert_eq!(app.handshakes.load(std::sync::atomic::Ordering::SeqCst), 3);
    // Every connection after the first resumed a session of an earlier one.
    assert!(
        app.resumed.load(std::sync::atomic::Ordering::SeqCst) >= 2,
        "resumed {} of 3",
        app.resumed.load(std::sync::atomic::Ordering::SeqCst)
    );

    // Kept alive, the TLS connection carries the next requests (a POST with a body too).
    let gw2 = Gateway::start(&https_config(app.addr, &format!("ca_file = \"{ca_file}\""))).await;
    let before = app.handshakes.load(std::sync::atomic::Ordering::SeqCst);
    // An app slow to read a large upload: TLS holds some of the body while the socket is
    // full, and must still send all of it.
    for _ in 0..3 {
        let response = c
            .post(gw2.url("/public/lazy-reader"))
            .body(vec![b'x'; 8_000_000])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["body_len"], 8_000_000);
    }
    assert_eq!(
        app.handshakes.load(std::sync::atomic::Ordering::SeqCst),
        before + 1
    );
}

#[tokio::test]
async fn an_app_whose_certificate_does_not_verify_is_502_upstream_tls_and_sees_nothing() {
    let files = tempfile::tempdir().unwrap();
    let ca = Ca::new("Intranet CA");
    let app = Upstream::start_tls(server_config(&ca.leaf(&["127.0.0.1"]), None)).await;
    let other = Ca::new("Some other CA").write(files.path(), "other.pem");
    let gw = Gateway::start(&https_config(app.addr, &format!("ca_file = \"{other}\""))).await;
    let c = client();
    let response = c.get(gw.url("/public/x")).send().await.unwrap();
    assert_error(response, 502, "upstream_tls").await;
    assert_eq!(app.count(), 0);
    let samples = scrape(&c, &gw).await;
    assert_eq!(
        sample(
            &samples,
            r#"portcullis_upstream_errors_total{upstream="app",kind="tls"}"#
        ),
        1.0
    );

    // A plain-HTTP app named https:// does not speak TLS: upstream_tls too, not a hang.
    let plain = Upstream::start().await;
    let gw = Gateway::start(&https_config(plain.addr, &format!("ca_file = \"{other}\""))).await;
    let response = c.get(gw.url("/public/x")).send().await.unwrap();
    assert_error(response, 502, "upstream_tls").await;
}

#[tokio::test]
async fn server_name_picks_the_name_verified_and_sent() {
    let files = tempfile::tempdir().unwrap();
    let ca = Ca::new("Intranet CA");
    // The certificate names the app, not its address.
    let app = Upstream::start_tls(server_config(&ca.leaf(&["crm.corp.internal"]), None)).await;
    let ca_file = ca.write(files.path(), "ca.pem");
    let c = client();

    let by_address =
        Gateway::start(&https_config(app.addr, &format!("ca_file = \"{ca_file}\""))).await;
    let response = c.get(by_address.url("/public/x")).send().await.unwrap();
    assert_error(response, 502, "upstream_tls").await;

    let wrong = Gateway::start(&https_config(
        app.addr,
        &format!("ca_file = \"{ca_file}\"\nserver_name = \"erp.corp.internal\""),
    ))
    .await;
    let response = c.get(wrong.url("/public/x")).send().await.unwrap();
    assert_error(response, 502, "upstream_tls").await;
    assert_eq!(app.count(), 0);

    let named = Gateway::start(&https_config(
        app.addr,
        &format!("ca_file = \"{ca_file}\"\nserver_name = \"crm.corp.internal\""),
    ))
    .await;
    let response = c.get(named.url("/public/x")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(app.count(), 1);
    // The Host the app receives is still the client's (server_name is TLS only).
    assert_eq!(app.last().header_values("host"), [named.http.to_string()]);
}

#[tokio::test]
async fn an_app_that_requires_a_client_certificate_gets_the_gateways() {
    let files = tempfile::tempdir().unwrap();
    let ca = Ca::new("Intranet CA");
    let clients = Ca::new("Gateway clients CA");
    let app = Upstream::start_tls(server_config(&ca.leaf(&["127.0.0.1"]), Some(&clients))).await;
    let ca_file = ca.write(files.path(), "ca.pem");
    let c = client();

    let anonymous =
        Gateway::start(&https_config(app.addr, &format!("ca_file = \"{ca_file}\""))).await;
    let response = c.get(anonymous.url("/public/x")).send().await.unwrap();
    assert_error(response, 502, "upstream_tls").await;

    // A certificate from a CA the app does not trust is refused as well.
    let (stranger_cert, stranger_key) = Ca::new("Stranger")
        .leaf(&["gw"])
        .write(files.path(), "stranger");
    let stranger = Gateway::start(&https_config(
        app.addr,
        &format!("ca_file = \"{ca_file}\"\nclient_cert = \"{stranger_cert}\"\nclient_key = \"{stranger_key}\""),
    ))
    .await;
    let response = c.get(stranger.url("/public/x")).send().await.unwrap();
    assert_error(response, 502, "upstream_tls").await;
    assert_eq!(app.count(), 0);

    let (cert, key) = clients
        .leaf(&["gw.corp.internal"])
        .write(files.path(), "gw");
    let gw = Gateway::start(&https_config(
        app.addr,
        &format!("ca_file = \"{ca_file}\"\nclient_cert = \"{cert}\"\nclient_key = \"{key}\""),
    ))
    .await;
    let response = c.get(gw.url("/public/x")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(app.count(), 1);
}

#[tokio::test]
async fn a_reload_reads_ca_file_again() {
    let files = tempfile::tempdir().unwrap();
    let ca = Ca::new("Intranet CA");
    let app = Upstream::start_tls(server_config(&ca.leaf(&["127.0.0.1"]), None)).await;
    // The file first holds the wrong CA (as before a rotation reached this gateway).
    let ca_file = Ca::new("Old CA").write(files.path(), "ca.pem");
    let gw = Gateway::start(&https_config(app.addr, &format!("ca_file = \"{ca_file}\""))).await;
    let c = client();
    let response = c.get(gw.url("/public/x")).send().await.unwrap();
    assert_error(response, 502, "upstream_tls").await;

    std::fs::write(&ca_file, ca.pem()).unwrap();
    let response = c.post(gw.admin_url("/reload")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let response = c.get(gw.url("/public/x")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(app.count(), 1);
}

/// The log line of a failed handshake names the reason (and the upstream), nothing more.
#[test]
fn the_log_names_why_an_apps_certificate_was_refused() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ca = Ca::new("Intranet CA");
    let app = rt.block_on(Upstream::start_tls(server_config(
        &ca.leaf(&["127.0.0.1"]),
        None,
    )));
    let dir = tempfile::tempdir().unwrap();
    let other = Ca::new("Other CA").write(dir.path(), "other.pem");
    let file = dir.path().join("serve.toml");
    let text = format!(
        "[server]\nhttp = \"127.0.0.1:0\"\nwatch_config = false\n[upstreams.crm]\nurl = \"https://{}\"\nca_file = \"{other}\"\n[[routes]]\nname = \"all\"\npath_prefix = \"/\"\nupstream = \"crm\"\nauth = \"public\"\n",
        app.addr
    );
    std::fs::write(&file, text).unwrap();
    let mut child = crate::cli::portcullis()
        .args(["serve", "--log-format", "json", "--config"])
        .arg(&file)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = std::sync::mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let next = || {
        lines
            .recv_timeout(Duration::from_secs(10))
            .expect("a log line")
    };
    let startup: serde_json::Value = serde_json::from_str(&next()).unwrap();
    let http = startup["http"]
        .as_str()
        .unwrap()
        .trim_start_matches("Some(")
        .trim_end_matches(')')
        .to_owned();
    let status = rt.block_on(async {
        client()
            .get(format!("http://{http}/x"))
            .header("Authorization", "Bearer secret-token-value")
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(status, 502);
    let mut found = None;
    for _ in 0..20 {
        let line = next();
        if line.contains("upstream error") {
            found = Some(line);
            break;
        }
    }
    let _ = child.kill();
    let line = found.expect("an upstream error line");
    assert!(line.contains("invalid peer certificate"), "{line}");
    assert!(line.contains("UnknownIssuer"), "{line}");
    assert!(line.contains(&app.addr.to_string()), "{line}");
    assert!(!line.contains("secret-token-value"), "{line}");
    let _ = child.wait();
}

// ---------------------------------------------------------------------------------------
// Sub-paths: an app mounted under a prefix, its Host, its redirects and cookies.

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The standard config, upstream `app` with `upstream_extra`, and `routes` in front.
fn mapped_config(app: &Upstream, upstream_extra: &str, routes: &str) -> String {
    let text = config(app.addr, routes);
    let plain = format!("url = \"http://{}\"", app.addr);
    text.replace(&plain, &format!("{plain}\n{upstream_extra}"))
}

const CRM_ROUTES: &str = r#"
[[routes]]
name = "crm"
path_prefix = "/crm"
upstream = "app"
auth = "public"

[[routes]]
name = "crm-admin"
path_prefix = "/crm/admin"
upstream = "app"
auth = "jwt"
strip_prefix = "/crm"
"#;

#[tokio::test]
async fn an_app_under_a_prefix_sees_its_own_paths_and_the_browser_only_public_ones() {
    let app = Upstream::start().await;
    let gw = Gateway::start(&mapped_config(&app, "path_prefix = \"/\"", CRM_ROUTES)).await;
    let c = no_redirects();
    for (public, expected) in [
        ("/crm/orders/1?x=1", "/orders/1?x=1"),
        ("/crm", "/"),
        ("/crm/", "/"),
    ] {
        let response = c.get(gw.url(public)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{public}");
        assert_eq!(app.last().path_and_query, expected, "{public}");
    }
    // The nested route strips only the mount: the app's /admin, under its policy.
    let response = c.get(gw.url("/crm/admin/users")).send().await.unwrap();
    assert_eq!(response.status(), 401);
    let response = c
        .get(gw.url("/crm/admin/users"))
        .bearer_auth(valid_token())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(app.last().path_and_query, "/admin/users");

    // The app redirects to its internal origin and sets cookies for its root.
    let internal = format!("http://{}/login?next=%2F", app.addr);
    let response = c
        .get(gw.url(&format!("/crm/redirect?to={}", urlencode(&internal))))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 302);
    let public = format!("http://{}/crm/login?next=%2F", gw.http);
    assert_eq!(response.headers()["location"], public.as_str());
    assert_eq!(
        response.headers()["refresh"],
        format!("0; url={public}").as_str()
    );
    let cookies: Vec<_> = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        cookies,
        [
            "JSESSIONID=abc; Path=/crm; HttpOnly",
            "prefs=1; Path=/crm/reports"
        ]
    );
    // A root-relative redirect is the app's own too; a third party's is left alone.
    for (to, expected) in [
        ("/home".to_owned(), "/crm/home".to_owned()),
        (
            "https://idp.example.com/auth".to_owned(),
            "https://idp.example.com/auth".to_owned(),
        ),
        (
            format!("http://{}/x", gw.http),
            format!("http://{}/x", gw.http),
        ),
    ] {
        let response = c
            .get(gw.url(&format!("/crm/redirect?to={}", urlencode(&to))))
            .send()
            .await
            .unwrap();
        assert_eq!(response.headers()["location"], expected.as_str(), "{to}");
    }
}

#[tokio::test]
async fn the_app_can_be_sent_its_own_host_and_its_redirects_still_come_back_public() {
    let app = Upstream::start().await;
    let gw = Gateway::start(&mapped_config(
        &app,
        "host = \"crm.corp.internal:8080\"",
        ROUTES,
    ))
    .await;
    let c = no_redirects();
    let response = c.get(gw.url("/public/x")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let seen = app.last();
    assert_eq!(seen.header_values("host"), ["crm.corp.internal:8080"]);
    assert_eq!(
        seen.header_values("x-forwarded-host"),
        [gw.http.to_string()]
    );
    assert_eq!(seen.path_and_query, "/public/x");
    // It builds absolute URLs from the name it was sent, by either scheme.
    for to in [
        "http://crm.corp.internal:8080/login",
        "https://crm.corp.internal:8080/login",
    ] {
        let response = c
            .get(gw.url(&format!("/public/redirect?to={}", urlencode(to))))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.headers()["location"],
            format!("http://{}/login", gw.http).as_str(),
            "{to}"
        );
        // Without a path mapping, cookie paths are the app's already.
        assert_eq!(
            response.headers()["set-cookie"],
            "JSESSIONID=abc; Path=/; HttpOnly"
        );
    }
}

#[tokio::test]
async fn rewriting_answers_can_be_turned_off() {
    let app = Upstream::start().await;
    let gw = Gateway::start(&mapped_config(
        &app,
        "path_prefix = \"/\"\nrewrite_redirects = false\nrewrite_cookie_paths = false",
        CRM_ROUTES,
    ))
    .await;
    let internal = format!("http://{}/login", app.addr);
    let response = no_redirects()
        .get(gw.url(&format!("/crm/redirect?to={}", urlencode(&internal))))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["location"], internal.as_str());
    assert_eq!(
        response.headers()["set-cookie"],
        "JSESSIONID=abc; Path=/; HttpOnly"
    );
    assert_eq!(
        app.last().path_and_query,
        format!("/redirect?to={}", urlencode(&internal))
    );
}

fn urlencode(text: &str) -> String {
    serde_urlencoded::to_string([("x", text)]).unwrap()[2..].to_owned()
}

/// `check` runs `expect_upstream_target`, and `explain` shows the mapped target.
#[test]
fn check_and_explain_show_the_path_the_app_receives() {
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/examples/legacy-apps.toml");
    let out = crate::cli::portcullis()
        .args(["explain", "--config"])
        .arg(&example)
        .args([
            "GET",
            "https://portal.example.com/crm/admin/users?x=1",
            "--claims",
            r#"{"sub":"root","scope":"crm.admin"}"#,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("upstream tomcat would receive /admin/users?x=1 with:"),
        "{text}"
    );
    assert!(text.contains("  host: crm.corp.internal"), "{text}");

    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("dev")).unwrap();
    for file in ["signing.pub.pem", "tls.crt"] {
        std::fs::copy(
            example.parent().unwrap().join("../dev").join(file),
            dir.path().join("dev").join(file),
        )
        .unwrap();
    }
    let wrong = std::fs::read_to_string(&example)
        .unwrap()
        .replace("../dev/", "dev/")
        .replace(
            "expect_upstream_target = \"/admin/users\"",
            "expect_upstream_target = \"/users\"",
        );
    let file = dir.path().join("wrong.toml");
    std::fs::write(&file, wrong).unwrap();
    let out = crate::cli::portcullis()
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("upstream target /admin/users, expected /users"),
        "{text}"
    );
}

// ---------------------------------------------------------------------------------------
// Several instances of one app.

/// The standard config (with the admin listener), upstream `app` replaced by `targets`
/// and `extra` keys.
fn targets_config(primary: &Upstream, targets: &[&Upstream], extra: &str) -> String {
    let text = config(primary.addr, ROUTES);
    let plain = format!("url = \"http://{}\"", primary.addr);
    let list: Vec<String> = targets
        .iter()
        .map(|t| format!("\"http://{}\"", t.addr))
        .collect();
    with_admin(
        text.replace(&plain, &format!("targets = [{}]\n{extra}", list.join(", "))),
        "",
    )
}

#[tokio::test]
async fn requests_are_spread_over_the_targets_in_turn() {
    let (a, b) = (Upstream::start().await, Upstream::start().await);
    let gw = Gateway::start(&targets_config(&a, &[&a, &b], "")).await;
    let c = client();
    for _ in 0..10 {
        let response = c.get(gw.url("/public/x")).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
    assert_eq!((a.count(), b.count()), (5, 5));
    let samples = scrape(&c, &gw).await;
    for t in [&a, &b] {
        let label = format!("{{upstream=\"app\",target=\"{}\"}}", t.addr);
        assert_eq!(
            sample(
                &samples,
                &format!("portcullis_upstream_target_requests_total{label}")
            ),
            5.0
        );
        assert_eq!(
            sample(
                &samples,
                &format!("portcullis_upstream_target_healthy{label}")
            ),
            1.0
        );
    }
}

#[tokio::test]
async fn a_target_that_dies_under_load_costs_no_request_and_is_used_again_when_back() {
    let (a, b) = (Upstream::start().await, Upstream::start().await);
    let gw = Gateway::start(&targets_config(
        &a,
        &[&a, &b],
        "eject_after = 1\neject_for = \"300ms\"",
    ))
    .await;
    let c = client();
    let url = gw.url("/public/load");
    // Eight clients, GETs back to back, while one instance dies and comes back.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (c, url, stop) = (c.clone(), url.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                match c.get(&url).send().await {
                    Ok(r) if r.status() == 200 => ok += 1,
                    Ok(r) => failed.push(r.status().to_string()),
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (ok, failed)
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let before = a.count();
    assert!(before > 10, "{before}");
    a.stop();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let during = a.count();
    a.restart().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (mut ok, mut failed) = (0, Vec::new());
    for client in clients {
        let (o, f) = client.await.unwrap();
        ok += o;
        failed.extend(f);
    }
    // Requests on a dying instance's connections went again or elsewhere: none failed.
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 100, "{ok}");
    // Back, it takes requests again.
    assert!(a.count() > during + 10, "{} after {during}", a.count());
    let samples = scrape(&c, &gw).await;
    let label = format!("{{upstream=\"app\",target=\"{}\"}}", a.addr);
    assert!(
        sample(
            &samples,
            &format!("portcullis_upstream_target_ejections_total{label}")
        ) >= 1.0
    );
    assert!(
        sample(
            &samples,
            &format!("portcullis_upstream_target_errors_total{label}")
        ) >= 1.0
    );
}

#[tokio::test]
async fn health_checks_take_a_target_out_and_bring_it_back() {
    let (a, b) = (Upstream::start().await, Upstream::start().await);
    let gw = Gateway::start(&targets_config(
        &a,
        &[&a, &b],
        "eject_after = 0\nhealth_check = { path = \"/health\", interval = \"100ms\", timeout = \"500ms\", healthy = 2, unhealthy = 2 }",
    ))
    .await;
    let c = client();
    let label = format!("{{upstream=\"app\",target=\"{}\"}}", a.addr);
    let healthy = |samples: &[(String, f64)]| {
        sample(
            samples,
            &format!("portcullis_upstream_target_healthy{label}"),
        )
    };
    let eventually = |want: f64| {
        let (c, gw) = (&c, &gw);
        async move {
            for _ in 0..50 {
                if healthy(&scrape(c, gw).await) == want {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("target health never became {want}");
        }
    };
    eventually(1.0).await;
    // The checks reach the app as GETs of the path, with the target as Host.
    let check = a
        .requests()
        .into_iter()
        .find(|s| s.path_and_query == "/health")
        .expect("a health check");
    assert_eq!(check.method, "GET");
    assert_eq!(check.header_values("host"), [a.addr.to_string()]);
    a.stop();
    eventually(0.0).await;
    // Out: it is not even tried (no passive ejection here, so a try would count as an
    // error of that target before going to the other).
    let errors = format!("portcullis_upstream_target_errors_total{label}");
    let errors_before = sample(&scrape(&c, &gw).await, &errors);
    let before = b.count();
    for _ in 0..6 {
        assert_eq!(
            c.get(gw.url("/public/x")).send().await.unwrap().status(),
            200
        );
    }
    assert!(b.count() >= before + 6);
    assert_eq!(sample(&scrape(&c, &gw).await, &errors), errors_before);
    a.restart().await;
    eventually(1.0).await;
}

#[tokio::test]
async fn with_every_target_down_the_answer_is_502_at_once() {
    let (a, b) = (Upstream::start().await, Upstream::start().await);
    let gw = Gateway::start(&targets_config(&a, &[&a, &b], "")).await;
    a.stop();
    b.stop();
    let c = client();
    for _ in 0..3 {
        let started = std::time::Instant::now();
        let response = c.get(gw.url("/public/x")).send().await.unwrap();
        assert_error(response, 502, "bad_gateway").await;
        // Refused connections fail at once (connect_timeout is 5 s here).
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
    // Back, they serve again (ejected ones are tried when nothing else is left).
    a.restart().await;
    let response = c.get(gw.url("/public/x")).send().await.unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn least_requests_keeps_requests_off_a_target_that_is_stuck() {
    // One instance never answers (the timeout is 1 s); with round robin every other
    // request would wait for it, with least_requests only a first one does.
    let stuck = bad_upstream().await;
    let good = Upstream::start().await;
    let text = config(good.addr, ROUTES).replace(
        &format!("url = \"http://{}\"", good.addr),
        &format!(
            "targets = [\"http://{stuck}\", \"http://{}\"]\nbalance = \"least_requests\"\neject_after = 0",
            good.addr
        ),
    );
    let gw = Gateway::start(&text).await;
    let c = client();
    let mut requests = Vec::new();
    for _ in 0..20 {
        let (c, url) = (c.clone(), gw.url("/public/silent"));
        requests.push(tokio::spawn(async move {
            c.get(url).send().await.unwrap().status().as_u16()
        }));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut statuses = Vec::new();
    for r in requests {
        statuses.push(r.await.unwrap());
    }
    let stuck_ones = statuses.iter().filter(|&&s| s != 200).count();
    assert!(stuck_ones <= 1, "{statuses:?}");
    assert_eq!(good.count(), 20 - stuck_ones);
}

#[tokio::test]
async fn a_target_that_never_answers_the_handshake_leaves_time_for_the_next() {
    // The stuck target takes the TCP connection and never answers the TLS handshake.
    let stuck = bad_upstream().await;
    let files = tempfile::tempdir().unwrap();
    let ca = Ca::new("Intranet CA");
    let good = Upstream::start_tls(server_config(&ca.leaf(&["127.0.0.1"]), None)).await;
    let ca_file = ca.write(files.path(), "ca.pem");
    let text = config(good.addr, ROUTES).replace(
        &format!("url = \"http://{}\"", good.addr),
        &format!(
            "targets = [\"https://{stuck}\", \"https://{}\"]\nca_file = \"{ca_file}\"\nconnect_timeout = \"2s\"\neject_after = 0",
            good.addr
        ),
    );
    let gw = Gateway::start(&text).await;
    let c = client();
    for _ in 0..4 {
        let started = std::time::Instant::now();
        let response = c.get(gw.url("/public/x")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        // Half of connect_timeout for the stuck one, the rest for the good one.
        assert!(
            started.elapsed() < Duration::from_millis(1900),
            "{:?}",
            started.elapsed()
        );
    }
    assert_eq!(good.count(), 4);
}

#[tokio::test]
async fn a_named_target_is_resolved_and_each_address_is_a_target() {
    let app = Upstream::start().await;
    let port = app.addr.port();
    // `localhost` resolves (the system's resolver: /etc/hosts) to 127.0.0.1, where the app
    // is; a name that never resolves stays in the set, connecting by name, and fails over.
    let text = targets_config(&app, &[&app], "").replace(
        &format!("targets = [\"http://{}\"]", app.addr),
        &format!(
            "targets = [\"http://localhost:{port}\", \"http://no-such-host.invalid:{port}\"]\ndns_refresh = \"200ms\"\neject_after = 1"
        ),
    );
    assert!(text.contains("localhost"), "{text}");
    let gw = Gateway::start(&text).await;
    let c = client();
    let resolved = format!(
        "portcullis_upstream_target_healthy{{upstream=\"app\",target=\"localhost:{port}\",address=\"127.0.0.1:{port}\"}}"
    );
    let mut samples = Vec::new();
    for _ in 0..50 {
        samples = scrape(&c, &gw).await;
        if samples.iter().any(|(name, _)| *name == resolved) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(sample(&samples, &resolved), 1.0, "{samples:?}");
    // The unresolvable name is one target, without an address.
    let unresolved = format!(
        "portcullis_upstream_target_healthy{{upstream=\"app\",target=\"no-such-host.invalid:{port}\"}}"
    );
    assert!(
        samples.iter().any(|(name, _)| *name == unresolved),
        "{samples:?}"
    );
    for _ in 0..6 {
        let response = c.get(gw.url("/public/x")).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
    assert_eq!(app.count(), 6);
    // Connected by address, the request still carries the client's Host (the default).
    assert_eq!(
        app.last().header_values("host"),
        [gw.url("/")
            .trim_start_matches("http://")
            .trim_end_matches('/')]
    );
}

#[tokio::test]
async fn with_dns_refresh_zero_a_name_stays_one_target_resolved_per_connection() {
    let app = Upstream::start().await;
    let port = app.addr.port();
    let text = targets_config(&app, &[&app], "").replace(
        &format!("targets = [\"http://{}\"]", app.addr),
        &format!("url = \"http://localhost:{port}\"\ndns_refresh = \"0s\""),
    );
    assert!(text.contains("localhost"), "{text}");
    let gw = Gateway::start(&text).await;
    let c = client();
    for _ in 0..3 {
        let response = c.get(gw.url("/public/x")).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
    // Give a resolver (if one ran) time to swap in the address.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let samples = scrape(&c, &gw).await;
    let by_name = format!(
        "portcullis_upstream_target_healthy{{upstream=\"app\",target=\"localhost:{port}\"}}"
    );
    assert_eq!(sample(&samples, &by_name), 1.0, "{samples:?}");
    assert!(
        !samples.iter().any(|(name, _)| name.contains("address=")),
        "{samples:?}"
    );
}

#[test]
fn a_target_listed_twice_is_refused() {
    let dir = fixture_dir();
    let twice = config("127.0.0.1:9".parse().unwrap(), ROUTES).replace(
        "url = \"http://127.0.0.1:9\"",
        "targets = [\"http://127.0.0.1:9\", \"http://127.0.0.1:9\"]",
    );
    assert!(twice.contains("targets"), "{twice}");
    let path = dir.path().join("twice.toml");
    std::fs::write(&path, twice).unwrap();
    let out = crate::cli::portcullis()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("upstreams.app.targets[1]") && stderr.contains("a second time"),
        "{stderr}"
    );
}
