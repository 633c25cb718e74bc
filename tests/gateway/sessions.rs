//! Browser sessions against a real OpenID provider (`oidc-provider` under node) and a real
//! `redis-server`: login, PKCE/state/nonce, open redirects, cookies, stores, logout.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use jsonwebtoken::Algorithm;
use reqwest::Url;
use serde_json::json;

use crate::support::oidc::*;
use crate::support::*;

static NEXT_CLIENT: AtomicUsize = AtomicUsize::new(1);

struct Setup {
    upstream: Upstream,
    idp: OidcIdp,
    gateway: Gateway,
    client_id: String,
    browser: Browser,
    _keys_dir: tempfile::TempDir,
}

impl Setup {
    fn url(&self, path: &str) -> String {
        self.gateway.url(path)
    }

    /// Logs in at the IdP starting from `path`, stopping before the gateway's callback:
    /// returns the callback URL the IdP sent the browser to.
    async fn callback_url(&self, path: &str) -> Url {
        let pages = self
            .browser
            .login_until(&self.url(path), "alice", &is_callback)
            .await;
        let callback = pages.last().unwrap().location().unwrap();
        assert!(
            is_callback(&callback),
            "stopped before the callback: {callback}"
        );
        callback
    }

    /// The session cookie's name on the plain-HTTP listener (the `__Host-` prefix needs TLS).
    fn session_cookie(&self) -> Option<String> {
        self.browser.cookie(&self.url("/"), "portcullis")
    }
}

fn gateway_config(
    upstream: &Upstream,
    idp: &OidcIdp,
    client_id: &str,
    dir: &std::path::Path,
    keys: &[&str],
    extra: &str,
) -> String {
    let mut text = config(upstream.addr, SESSION_ROUTES);
    text.push_str(&login_config(idp, client_id, dir, keys, extra));
    text
}

async fn setup(extra: &str) -> Setup {
    setup_with(&[], extra).await
}

async fn setup_with(idp_env: &[(&str, &str)], extra: &str) -> Setup {
    let upstream = Upstream::start().await;
    let idp = OidcIdp::start_with(idp_env).await;
    let client_id = format!("portcullis-{}", NEXT_CLIENT.fetch_add(1, Ordering::Relaxed));
    let keys_dir = tempfile::tempdir().unwrap();
    let text = gateway_config(
        &upstream,
        &idp,
        &client_id,
        keys_dir.path(),
        &[COOKIE_KEY_A],
        extra,
    );
    let gateway = Gateway::start(&text).await;
    idp.register(&client_id, &[&gateway]).await;
    Setup {
        upstream,
        idp,
        gateway,
        client_id,
        browser: Browser::new(),
        _keys_dir: keys_dir,
    }
}

/// The last page must be the upstream's answer for `path`.
fn assert_upstream_page(pages: &[Page], path: &str) {
    let last = pages.last().unwrap();
    let trail: Vec<String> = pages
        .iter()
        .map(|p| format!("{} {}", p.status, p.url))
        .collect();
    assert_eq!(last.status, 200, "trail: {trail:#?}\nbody: {}", last.body);
    assert_eq!(last.json()["upstream"], "test", "{}", last.body);
    assert_eq!(last.json()["path"], path);
}

fn is_callback(url: &Url) -> bool {
    url.path() == "/_portcullis/callback"
}

fn query_param(url: &Url, name: &str) -> Option<String> {
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

#[tokio::test]
async fn a_browser_logs_in_and_the_upstream_sees_the_identity_but_no_gateway_cookie() {
    let s = setup("").await;
    s.browser
        .set_cookie(&s.url("/"), "app_session", "legacy-42");
    let pages = s
        .browser
        .visit_and_login(&s.url("/app/page?x=1"), "alice")
        .await;

    // 1. The gateway sent the browser to the IdP: code flow, PKCE S256, state, nonce.
    let to_idp = pages[0].location().unwrap();
    assert_eq!(pages[0].status, 302);
    assert!(
        to_idp
            .as_str()
            .starts_with(&format!("{}/auth?", s.idp.issuer))
    );
    let q: std::collections::HashMap<_, _> = to_idp.query_pairs().into_owned().collect();
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["client_id"], s.client_id);
    assert_eq!(q["redirect_uri"], s.url("/_portcullis/callback"));
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["code_challenge"].len(), 43);
    assert!(q["state"].len() >= 43 && q["nonce"].len() >= 43);
    assert_eq!(q["scope"], "openid email profile groups");

    // 2. Back at the callback: a session cookie, then the original URL.
    let callback = pages
        .iter()
        .find(|p| is_callback(&p.url))
        .expect("the callback was visited");
    assert_eq!(callback.status, 302);
    assert_eq!(callback.headers["location"], "/app/page?x=1");
    let set: Vec<String> = callback.set_cookies();
    let session = set
        .iter()
        .find(|c| c.starts_with("portcullis="))
        .expect("a session cookie");
    for attribute in ["Path=/", "HttpOnly", "SameSite=Lax", "Max-Age="] {
        assert!(session.contains(attribute), "{session} lacks {attribute}");
    }
    assert!(!session.contains("Secure"), "plain HTTP: no Secure flag");
    assert!(
        set.iter()
            .any(|c| c.starts_with("portcullis-login=;") && c.contains("Max-Age=0")),
        "the login cookie is cleared: {set:?}"
    );

    // 3. The app got the identity, its own cookie, and none of the gateway's; it was
    // reached once, after the login.
    assert_upstream_page(&pages, "/app/page?x=1");
    assert_eq!(s.upstream.count(), 1);
    let seen = s.upstream.last();
    assert_eq!(seen.header_values("x-auth-user"), ["alice"]);
    assert_eq!(seen.header_values("x-auth-email"), ["alice@example.com"]);
    assert_eq!(seen.header_values("x-auth-groups"), ["sales,staff"]);
    assert_eq!(seen.header_values("cookie"), ["app_session=legacy-42"]);

    let metrics = s.gateway.shared.load().render_metrics();
    assert!(
        metrics.contains("portcullis_session_events_total{event=\"login\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "portcullis_auth_decisions_total{route=\"app\",outcome=\"login_redirect\"} 1\n"
        ),
        "{metrics}"
    );

    // 4. The session holds: no more trips to the IdP.
    let again = s.browser.get(&s.url("/app/other")).await;
    assert_eq!(again.status, 200);
    assert_eq!(s.upstream.last().header_values("x-auth-user"), ["alice"]);
    assert_eq!(
        s.upstream.last().header_values("cookie"),
        ["app_session=legacy-42"]
    );

    // 5. A public route never sees the session cookie either, nor a spoofed identity.
    let open = s
        .browser
        .send(
            reqwest::Method::GET,
            Url::parse(&s.url("/open/x")).unwrap(),
            None,
            &[("x-auth-user", "admin")],
        )
        .await;
    assert_eq!(open.status, 200);
    let seen = s.upstream.last();
    assert_eq!(seen.header_values("cookie"), ["app_session=legacy-42"]);
    assert!(seen.header_values("x-auth-user").is_empty());
}

#[tokio::test]
async fn requests_that_are_not_browser_navigations_get_401_not_a_redirect() {
    let s = setup("").await;
    let http = client();
    type Case<'a> = (reqwest::Method, &'a str, Vec<(&'a str, &'a str)>);
    let cases: Vec<Case> = vec![
        (
            reqwest::Method::GET,
            "/app/x",
            vec![("accept", "application/json")],
        ),
        (reqwest::Method::GET, "/app/x", vec![]),
        (
            reqwest::Method::GET,
            "/app/x",
            vec![
                ("accept", "text/html"),
                ("x-requested-with", "XMLHttpRequest"),
            ],
        ),
        (
            reqwest::Method::GET,
            "/app/x",
            vec![("accept", "text/html"), ("sec-fetch-mode", "cors")],
        ),
        (
            reqwest::Method::POST,
            "/app/x",
            vec![("accept", "text/html")],
        ),
        // on_unauthenticated = "deny": even a navigation gets 401.
        (
            reqwest::Method::GET,
            "/deny/x",
            vec![("accept", "text/html")],
        ),
    ];
    for (method, path, headers) in cases {
        let mut request = http.request(method.clone(), s.url(path));
        for (k, v) in &headers {
            request = request.header(*k, *v);
        }
        let response = request.send().await.unwrap();
        assert_eq!(
            response.headers()["www-authenticate"],
            r#"Bearer realm="portcullis""#,
            "{method} {path} {headers:?}"
        );
        assert_error(response, 401, "unauthorized").await;
    }
    // A navigation is redirected.
    let page = s.browser.get(&s.url("/app/x")).await;
    assert_eq!(page.status, 302);
    assert!(page.location().unwrap().as_str().starts_with(&s.idp.issuer));
    assert_eq!(s.upstream.count(), 0);
}

#[tokio::test]
async fn a_mixed_route_takes_a_bearer_token_first_and_the_session_otherwise() {
    let s = setup("").await;
    // A JWT alone works on the mixed route.
    let token = token(Algorithm::RS256, &claims(json!({"sub": "api-client"})));
    let response = client()
        .get(s.url("/mixed/x"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        s.upstream.last().header_values("x-auth-user"),
        ["api-client"]
    );

    let pages = s.browser.visit_and_login(&s.url("/mixed/x"), "bob").await;
    assert_upstream_page(&pages, "/mixed/x");
    assert_eq!(s.upstream.last().header_values("x-auth-user"), ["bob"]);

    // Session and Bearer together: the token wins.
    let both = s
        .browser
        .send(
            reqwest::Method::GET,
            Url::parse(&s.url("/mixed/y")).unwrap(),
            None,
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await;
    assert_eq!(both.status, 200);
    assert_eq!(
        s.upstream.last().header_values("x-auth-user"),
        ["api-client"]
    );
    assert!(s.upstream.last().header_values("authorization").is_empty());

    // A bad token is refused, never silently replaced by the session.
    let count = s.upstream.count();
    let bad = s
        .browser
        .send(
            reqwest::Method::GET,
            Url::parse(&s.url("/mixed/y")).unwrap(),
            None,
            &[("authorization", "Bearer a.b.c")],
        )
        .await;
    assert_eq!(bad.status, 401);
    assert_eq!(s.upstream.count(), count);
}

#[tokio::test]
async fn claims_requirements_hold_for_sessions_too() {
    let s = setup("").await;
    // alice is in "sales": /staff passes.
    let pages = s.browser.visit_and_login(&s.url("/staff/x"), "alice").await;
    assert_upstream_page(&pages, "/staff/x");
    // bob is not: 403 after login, and the app never sees him there.
    let bob = Browser::new();
    let pages = bob.visit_and_login(&s.url("/staff/x"), "bob").await;
    let last = pages.last().unwrap();
    assert_eq!(last.status, 403, "{}", last.body);
    assert_eq!(last.json()["error"], "insufficient_scope");
    assert_eq!(s.upstream.count(), 1);
}

#[tokio::test]
async fn a_forged_missing_or_replayed_state_is_refused() {
    let s = setup("").await;
    let callback = s.callback_url("/app/x").await;
    let login_cookie = s
        .browser
        .cookie(&s.url("/"), "portcullis-login")
        .expect("a login cookie");

    // A forged state: refused before any code exchange.
    let mut forged = callback.clone();
    let pairs: Vec<(String, String)> = callback.query_pairs().into_owned().collect();
    forged.query_pairs_mut().clear();
    for (k, v) in &pairs {
        let v = if k == "state" {
            "forged".to_owned()
        } else {
            v.clone()
        };
        forged.query_pairs_mut().append_pair(k, &v);
    }
    let page = s
        .browser
        .send(reqwest::Method::GET, forged, None, &[])
        .await;
    assert_eq!(page.status, 400);
    assert_eq!(page.json()["error"], "invalid_login_state");

    // The same callback from a browser without the login cookie (a code injected into
    // someone else's browser): refused.
    let stranger = Browser::new();
    let page = stranger
        .send(reqwest::Method::GET, callback.clone(), None, &[])
        .await;
    assert_eq!(page.status, 400);
    assert_eq!(page.json()["error"], "invalid_login_state");

    // The real one works once.
    let page = s
        .browser
        .send(reqwest::Method::GET, callback.clone(), None, &[])
        .await;
    assert_eq!(page.status, 302, "{}", page.body);
    assert!(s.session_cookie().is_some());

    // Replayed with the same login cookie: refused.
    let replay = Browser::new();
    replay.set_cookie(&s.url("/"), "portcullis-login", &login_cookie);
    let page = replay.send(reqwest::Method::GET, callback, None, &[]).await;
    assert_eq!(page.status, 400);
    assert_eq!(page.json()["error"], "invalid_login_state");
    assert!(replay.cookie(&s.url("/"), "portcullis").is_none());
    assert_eq!(s.upstream.count(), 0);
}

#[tokio::test]
async fn a_code_from_another_login_fails_pkce() {
    // Code injection: the code of one login presented with another login's state and
    // cookie. The state matches, but the code was bound to the first login's PKCE
    // challenge, so the IdP refuses the exchange and no session is made.
    let s = setup("").await;
    let first_callback = s.callback_url("/app/one").await;
    let second_callback = s.callback_url("/app/two").await;
    let mut injected = Url::parse(&s.url("/_portcullis/callback")).unwrap();
    injected
        .query_pairs_mut()
        .append_pair("code", &query_param(&first_callback, "code").unwrap())
        .append_pair("state", &query_param(&second_callback, "state").unwrap())
        .append_pair("iss", &s.idp.issuer);
    let page = s
        .browser
        .send(reqwest::Method::GET, injected, None, &[])
        .await;
    assert_eq!(page.status, 401, "{}", page.body);
    assert_eq!(page.json()["error"], "login_failed");
    assert!(s.session_cookie().is_none());
    assert_eq!(s.upstream.count(), 0);
}

#[tokio::test]
async fn a_response_naming_another_issuer_is_refused() {
    // RFC 9207 mix-up defence: the IdP names itself in `iss`; another name is refused
    // before the code goes anywhere.
    let s = setup("").await;
    let callback = s.callback_url("/app/x").await;
    let iss = query_param(&callback, "iss");
    assert_eq!(
        iss.as_deref(),
        Some(s.idp.issuer.as_str()),
        "the IdP sends iss"
    );
    let mut mixed = Url::parse(&s.url("/_portcullis/callback")).unwrap();
    for (k, v) in callback.query_pairs() {
        let v = if k == "iss" {
            "https://evil.example".into()
        } else {
            v
        };
        mixed.query_pairs_mut().append_pair(&k, &v);
    }
    let page = s.browser.send(reqwest::Method::GET, mixed, None, &[]).await;
    assert_eq!(page.status, 401, "{}", page.body);
    assert_eq!(page.json()["error"], "login_failed");
    assert!(s.session_cookie().is_none());
}

#[tokio::test]
async fn return_urls_never_leave_for_a_foreign_host() {
    let s = setup(r#"allowed_redirect_hosts = ["sso.example.com"]"#).await;
    let cases = [
        ("/app/deep?q=1", "/app/deep?q=1"),
        ("//evil.example/x", "/"),
        ("https://evil.example/", "/"),
        ("/\\evil.example", "/"),
        ("/%2F%2Fevil.example", "/"),
        ("%2F%2Fevil.example", "/"),
        ("/%5Cevil.example", "/"),
        ("https://app@evil.example/", "/"),
        (
            "https://sso.example.com/home",
            "https://sso.example.com/home",
        ),
    ];
    for (i, (rd, expected)) in cases.iter().enumerate() {
        let browser = Browser::new();
        let mut start = Url::parse(&s.url("/_portcullis/login")).unwrap();
        start.query_pairs_mut().append_pair("rd", rd);
        // The first login signs in at the IdP; later browsers are new, so each logs in.
        let pages = browser
            .login_until(start.as_str(), "alice", &|u| {
                !u.as_str().starts_with("http://127.0.0.1")
            })
            .await;
        let callback = pages
            .iter()
            .find(|p| is_callback(&p.url))
            .unwrap_or_else(|| panic!("case {i}: no callback"));
        assert_eq!(callback.status, 302, "case {i}: {}", callback.body);
        assert_eq!(callback.headers["location"], *expected, "rd = {rd:?}");
    }
}

#[tokio::test]
async fn a_tampered_or_foreign_session_cookie_is_no_session() {
    let s = setup("").await;
    let pages = s.browser.visit_and_login(&s.url("/app/x"), "alice").await;
    assert_upstream_page(&pages, "/app/x");
    let good = s.session_cookie().unwrap();
    let count = s.upstream.count();

    let mut tampered = good.clone().into_bytes();
    let middle = tampered.len() / 2;
    tampered[middle] = if tampered[middle] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    // A session forged by someone holding another key, and a login-state value presented
    // as a session (same key, other cookie name).
    let forged_session = json!({
        "claims": {"iss": s.idp.issuer, "sub": "admin"},
        "created": now(), "last_seen": now(), "expires": now() + 3600, "id_exp": now() + 3600,
    })
    .to_string();
    let other_key = portcullis::session::cookie::CookieKeys::parse(COOKIE_KEY_B).unwrap();
    let sealed_elsewhere = other_key.seal("portcullis", forged_session.as_bytes());
    let right_key = portcullis::session::cookie::CookieKeys::parse(COOKIE_KEY_A).unwrap();
    let other_name = right_key.seal("portcullis-login", forged_session.as_bytes());
    // Sanity: the same forged session sealed with the right key and name does open, so
    // the refusals below are the key and name checks at work.
    let _ = right_key.seal("portcullis", forged_session.as_bytes());
    for value in [
        tampered.as_str(),
        sealed_elsewhere.as_str(),
        other_name.as_str(),
        "",
        "garbage",
        "A",
    ] {
        let b = Browser::new();
        b.set_cookie(&s.url("/"), "portcullis", value);
        let page = b.get(&s.url("/app/x")).await;
        assert_eq!(page.status, 302, "cookie {value:?} must mean: log in");
        assert!(page.location().unwrap().as_str().starts_with(&s.idp.issuer));
        let api = client()
            .get(s.url("/app/x"))
            .header("cookie", format!("portcullis={value}"))
            .send()
            .await
            .unwrap();
        assert_eq!(api.status(), 401);
    }
    assert_eq!(s.upstream.count(), count);
    // The untouched cookie still works.
    assert_eq!(s.browser.get(&s.url("/app/x")).await.status, 200);
}

#[tokio::test]
async fn cookie_keys_rotate_without_logging_anybody_out() {
    let s = setup("").await;
    let pages = s.browser.visit_and_login(&s.url("/app/x"), "alice").await;
    assert_upstream_page(&pages, "/app/x");
    let sealed_with_a = s.session_cookie().unwrap();

    // Another instance (same client) after rotation: B seals, A still opens.
    let dir = tempfile::tempdir().unwrap();
    let rotated = Gateway::start(&gateway_config(
        &s.upstream,
        &s.idp,
        &s.client_id,
        dir.path(),
        &[COOKIE_KEY_B, COOKIE_KEY_A],
        "",
    ))
    .await;
    let b = Browser::new();
    b.set_cookie(&rotated.url("/"), "portcullis", &sealed_with_a);
    let page = b.get(&rotated.url("/app/y")).await;
    assert_eq!(
        page.status, 200,
        "a cookie sealed with the old key still opens"
    );
    assert_eq!(s.upstream.last().header_values("x-auth-user"), ["alice"]);

    // Once A is retired, its cookies are no session.
    let dir2 = tempfile::tempdir().unwrap();
    let retired = Gateway::start(&gateway_config(
        &s.upstream,
        &s.idp,
        &s.client_id,
        dir2.path(),
        &[COOKIE_KEY_B],
        "",
    ))
    .await;
    let c = Browser::new();
    c.set_cookie(&retired.url("/"), "portcullis", &sealed_with_a);
    let page = c.get(&retired.url("/app/y")).await;
    assert_eq!(
        page.status, 302,
        "a cookie under a retired key means: log in"
    );

    // A login on the rotated instance seals with B, which the retired-A instance opens.
    let d = Browser::new();
    s.idp
        .register(&s.client_id, &[&s.gateway, &rotated, &retired])
        .await;
    let pages = d.visit_and_login(&rotated.url("/app/z"), "bob").await;
    assert_upstream_page(&pages, "/app/z");
    let sealed_with_b = d.cookie(&rotated.url("/"), "portcullis").unwrap();
    let e = Browser::new();
    e.set_cookie(&retired.url("/"), "portcullis", &sealed_with_b);
    assert_eq!(e.get(&retired.url("/app/z")).await.status, 200);
    let f = Browser::new();
    f.set_cookie(&s.url("/"), "portcullis", &sealed_with_b);
    assert_eq!(
        f.get(&s.url("/app/z")).await.status,
        302,
        "the A-only instance cannot open B"
    );
}

#[tokio::test]
async fn a_session_ends_at_its_lifetime_and_after_idling() {
    let s = setup(r#"lifetime = "3s""#).await;
    let pages = s.browser.visit_and_login(&s.url("/app/x"), "alice").await;
    assert_upstream_page(&pages, "/app/x");
    assert_eq!(s.browser.get(&s.url("/app/x")).await.status, 200);
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let count = s.upstream.count();
    let page = s.browser.get(&s.url("/app/x")).await;
    assert_eq!(page.status, 302, "past the lifetime: log in again");
    assert_eq!(s.upstream.count(), count);

    // Idle time is counted in whole seconds: 4 s idle, requests 2 s apart keep it alive
    // past its first 4 s, then 5 s of silence end it.
    let idle = setup(
        r#"idle_timeout = "4s"
store = "memory""#,
    )
    .await;
    let pages = idle
        .browser
        .visit_and_login(&idle.url("/app/x"), "alice")
        .await;
    assert_upstream_page(&pages, "/app/x");
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(2000)).await;
        assert_eq!(
            idle.browser.get(&idle.url("/app/x")).await.status,
            200,
            "activity keeps it"
        );
    }
    tokio::time::sleep(Duration::from_millis(5000)).await;
    assert_eq!(
        idle.browser.get(&idle.url("/app/x")).await.status,
        302,
        "idle too long"
    );
}

/// Two gateways with one client registration and one Redis (a server or a cluster): what
/// a load balancer sees.
struct TwoInstances<R = RedisServer> {
    redis: R,
    upstream: Upstream,
    idp: OidcIdp,
    one: Gateway,
    two: Gateway,
    client_id: &'static str,
    _dir: tempfile::TempDir,
}

async fn two_instances_on_one_redis(client_id: &'static str) -> TwoInstances {
    let redis = RedisServer::start().await;
    let url = redis.url();
    two_instances_on(redis, &url, client_id).await
}

async fn two_instances_on<R>(redis: R, url: &str, client_id: &'static str) -> TwoInstances<R> {
    let upstream = Upstream::start().await;
    let idp = OidcIdp::start().await;
    let extra = format!("store = \"redis\"\nredis_url = \"{url}\"");
    let dir = tempfile::tempdir().unwrap();
    let config = gateway_config(
        &upstream,
        &idp,
        client_id,
        dir.path(),
        &[COOKIE_KEY_A],
        &extra,
    );
    let one = Gateway::start(&config).await;
    let two = Gateway::start(&config).await;
    idp.register(client_id, &[&one, &two]).await;
    TwoInstances {
        redis,
        upstream,
        idp,
        one,
        two,
        client_id,
        _dir: dir,
    }
}

/// Asks `url` until the session is gone (302 to log in): a session cached by an instance
/// ends there when the news of its end arrives by pub/sub (at most 3 s); how long it took.
async fn until_logged_out(browser: &Browser, url: &str) -> Duration {
    let started = std::time::Instant::now();
    loop {
        let status = browser.get(url).await.status;
        if status == 302 {
            return started.elapsed();
        }
        assert_eq!(status, 200);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "the session never ended at {url}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// How many times Redis ran `command` (`INFO commandstats`).
async fn redis_calls(redis: &RedisServer, command: &str) -> u64 {
    let info = redis.command(&["INFO", "commandstats"]).await.unwrap();
    let needle = format!("cmdstat_{command}:calls=");
    info.split(&needle)
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

/// Asks `url` until a request costs no Redis GET: the instance subscribed to the ends of
/// sessions and cached this one (at most 3 s).
async fn until_cached(redis: &RedisServer, browser: &Browser, url: &str) {
    let started = std::time::Instant::now();
    loop {
        let before = redis_calls(redis, "get").await;
        assert_eq!(browser.get(url).await.status, 200);
        if redis_calls(redis, "get").await == before {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "the session is never cached"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn two_instances_share_sessions_and_logout_through_redis() {
    let TwoInstances {
        redis,
        upstream,
        idp,
        one,
        two,
        client_id,
        _dir,
    } = two_instances_on_one_redis("shared-client").await;

    let browser = Browser::new();
    let pages = browser.visit_and_login(&one.url("/app/x"), "alice").await;
    assert_upstream_page(&pages, "/app/x");
    let cookie = browser.cookie(&one.url("/"), "portcullis").unwrap();
    assert!(
        cookie.len() < 200,
        "a server-side session's cookie holds only an id"
    );
    let keys = redis.command(&["KEYS", "portcullis:s:*"]).await.unwrap();
    assert!(keys.starts_with("*1\r\n"), "one session in Redis: {keys:?}");

    // The other instance knows the session, and soon answers from its own cache.
    browser.set_cookie(&two.url("/"), "portcullis", &cookie);
    let page = browser.get(&two.url("/app/y")).await;
    assert_eq!(page.status, 200);
    assert_eq!(upstream.last().header_values("x-auth-user"), ["alice"]);
    until_cached(&redis, &browser, &two.url("/app/y")).await;
    let gets = redis_calls(&redis, "get").await;
    for _ in 0..5 {
        assert_eq!(browser.get(&two.url("/app/y")).await.status, 200);
    }
    assert_eq!(
        redis_calls(&redis, "get").await,
        gets,
        "a cached session cost a Redis GET"
    );
    // On the instance that will log out, the session is cached, and each connection's
    // worker has it in its memo (a browser a connection).
    until_cached(&redis, &browser, &one.url("/app/y")).await;
    let replay = |url: String| {
        let cookie = cookie.clone();
        async move {
            let browser = Browser::new();
            browser.set_cookie(&url, "portcullis", &cookie);
            browser.get(&url).await.status
        }
    };
    for _ in 0..8 {
        assert_eq!(replay(one.url("/app/y")).await, 200);
    }

    // Logout on one ends it on both, and sends the browser to the IdP's end_session.
    let page = browser.get(&one.url("/_portcullis/logout")).await;
    assert_eq!(page.status, 302);
    // On this instance at once, on every worker: no memo keeps the session (no wait for
    // the pub/sub message, which the other instance needs).
    for _ in 0..8 {
        assert_eq!(replay(one.url("/app/y")).await, 302);
    }
    let location = page.location().unwrap();
    assert!(
        location
            .as_str()
            .starts_with(&format!("{}/session/end?", idp.issuer)),
        "{location}"
    );
    let q: std::collections::HashMap<_, _> = location.query_pairs().into_owned().collect();
    assert_eq!(q["client_id"], client_id);
    assert!(q.contains_key("id_token_hint"));
    assert!(
        page.set_cookies()
            .iter()
            .any(|c| c.starts_with("portcullis=;") && c.contains("Max-Age=0"))
    );
    assert!(browser.cookie(&one.url("/"), "portcullis").is_none());
    // Ended on the other instance too, once the news reached its cache (pub/sub).
    let stale = Browser::new();
    stale.set_cookie(&two.url("/"), "portcullis", &cookie);
    let took = until_logged_out(&stale, &two.url("/app/y")).await;
    eprintln!("the logout reached the other instance's cache in {took:?}");
    let count = upstream.count();
    assert_eq!(stale.get(&two.url("/app/y")).await.status, 302);
    assert_eq!(upstream.count(), count);
    let keys = redis.command(&["KEYS", "portcullis:s:*"]).await.unwrap();
    assert!(
        keys.starts_with("*0\r\n"),
        "no session left in Redis: {keys:?}"
    );
}

/// The session cache answers only while it hears of every end: when its subscription
/// breaks, what it holds is forgotten (an end may have been missed meanwhile).
#[tokio::test]
async fn a_lost_subscription_empties_the_session_cache() {
    let TwoInstances {
        redis,
        upstream: _upstream,
        idp: _idp,
        one,
        two: _two,
        client_id: _,
        _dir,
    } = two_instances_on_one_redis("lost-subscription").await;
    let browser = Browser::new();
    let pages = browser.visit_and_login(&one.url("/app/x"), "alice").await;
    assert_upstream_page(&pages, "/app/x");
    until_cached(&redis, &browser, &one.url("/app/y")).await;
    // The subscription is cut, and the session ends in Redis with no message.
    let killed = redis
        .command(&["CLIENT", "KILL", "TYPE", "pubsub"])
        .await
        .unwrap();
    assert!(
        killed.starts_with(":") && !killed.starts_with(":0"),
        "{killed:?}"
    );
    let keys = redis.command(&["KEYS", "portcullis:s:*"]).await.unwrap();
    let key = keys
        .lines()
        .find(|l| l.starts_with("portcullis:s:"))
        .unwrap();
    redis.command(&["DEL", key]).await.unwrap();
    until_logged_out(&browser, &one.url("/app/y")).await;
}

#[tokio::test]
async fn back_channel_logout_from_the_idp_ends_the_sessions_everywhere() {
    let TwoInstances {
        redis,
        upstream,
        idp,
        one,
        two,
        client_id,
        _dir,
    } = two_instances_on_one_redis("bcl-client").await;

    let browser = Browser::new();
    let pages = browser.visit_and_login(&one.url("/app/x"), "alice").await;
    assert_upstream_page(&pages, "/app/x");
    let cookie = browser.cookie(&one.url("/"), "portcullis").unwrap();
    browser.set_cookie(&two.url("/"), "portcullis", &cookie);
    assert_eq!(browser.get(&two.url("/app/y")).await.status, 200);
    // Both instances hold it in their caches: the logout must reach them.
    until_cached(&redis, &browser, &one.url("/app/y")).await;
    until_cached(&redis, &browser, &two.url("/app/y")).await;

    // A forged logout token (signed by a key the IdP never used) ends nothing.
    let forged = token(
        Algorithm::RS256,
        &json!({
            "iss": idp.issuer, "aud": client_id, "iat": now(), "exp": now() + 60, "jti": "x",
            "sub": "alice",
            "events": {"http://schemas.openid.net/event/backchannel-logout": {}},
        }),
    );
    let response = client()
        .post(one.url("/_portcullis/backchannel-logout"))
        .form(&[("logout_token", forged.as_str())])
        .send()
        .await
        .unwrap();
    assert_error(response, 400, "invalid_logout_token").await;
    assert_eq!(browser.get(&two.url("/app/y")).await.status, 200);

    // The user signs out at the IdP: it POSTs a signed logout token naming the sid.
    let done = browser.logout_at_idp(&idp).await;
    assert!(done.status < 400, "{}", done.body);
    until_logged_out(&browser, &one.url("/app/y")).await;
    until_logged_out(&browser, &two.url("/app/y")).await;
    let count = upstream.count();
    assert_eq!(browser.get(&one.url("/app/y")).await.status, 302);
    assert_eq!(browser.get(&two.url("/app/y")).await.status, 302);
    assert_eq!(upstream.count(), count);
}

/// The session store on a Redis Cluster of three primaries, named by one seed node: the
/// sessions and their logout indexes live in different slots (and mostly on different
/// nodes), and every instance finds them all.
#[tokio::test]
async fn sessions_and_logouts_work_on_a_redis_cluster() {
    let cluster = RedisCluster::start(3).await;
    let url = cluster.url();
    let TwoInstances {
        redis: cluster,
        upstream,
        idp,
        one,
        two,
        _dir,
        ..
    } = two_instances_on(cluster, &url, "cluster-client").await;

    let mut browsers = Vec::new();
    for user in ["alice", "bob", "alice", "bob", "alice", "bob"] {
        let browser = Browser::new();
        let pages = browser.visit_and_login(&one.url("/app/x"), user).await;
        assert_upstream_page(&pages, "/app/x");
        let cookie = browser.cookie(&one.url("/"), "portcullis").unwrap();
        browser.set_cookie(&two.url("/"), "portcullis", &cookie);
        assert_eq!(browser.get(&two.url("/app/y")).await.status, 200);
        assert_eq!(upstream.last().header_values("x-auth-user"), [user]);
        browsers.push((user, browser));
    }
    let per_node = cluster.keys("portcullis:s:*").await;
    eprintln!("sessions per cluster node: {per_node:?}");
    assert_eq!(per_node.iter().sum::<usize>(), 6, "{per_node:?}");
    assert_eq!(
        cluster.keys("portcullis:sid:*").await.iter().sum::<usize>(),
        6
    );

    // The gateway's logout on one instance ends the session on the other.
    let (_, alice) = &browsers[0];
    let cookie = alice.cookie(&one.url("/"), "portcullis").unwrap();
    assert_eq!(alice.get(&one.url("/_portcullis/logout")).await.status, 302);
    let stale = Browser::new();
    stale.set_cookie(&two.url("/"), "portcullis", &cookie);
    until_logged_out(&stale, &two.url("/app/y")).await;

    // Back-channel logout (the sid index, then the session, in other slots) ends this
    // browser's session of bob's on both instances, and no other (bob's other logins
    // have other IdP sessions).
    let (_, bob) = &browsers[1];
    let done = bob.logout_at_idp(&idp).await;
    assert!(done.status < 400, "{}", done.body);
    until_logged_out(bob, &one.url("/app/y")).await;
    until_logged_out(bob, &two.url("/app/y")).await;
    for (user, browser) in &browsers[2..] {
        assert_eq!(browser.get(&two.url("/app/y")).await.status, 200, "{user}");
    }
    assert_eq!(
        cluster.keys("portcullis:s:*").await.iter().sum::<usize>(),
        4
    );
}

#[tokio::test]
async fn a_memory_store_session_ends_with_back_channel_logout_and_logout() {
    let s = setup(r#"store = "memory""#).await;
    let pages = s.browser.visit_and_login(&s.url("/app/x"), "alice").await;
    assert_upstream_page(&pages, "/app/x");
    let done = s.browser.logout_at_idp(&s.idp).await;
    assert!(done.status < 400, "{}", done.body);
    assert_eq!(s.browser.get(&s.url("/app/x")).await.status, 302);

    // Log in again; the gateway's own logout ends it too.
    let pages = s.browser.visit_and_login(&s.url("/app/x"), "alice").await;
    assert_upstream_page(&pages, "/app/x");
    let cookie = s.session_cookie().unwrap();
    // Another site cannot log the user out with a POST (the session cookie is ambient),
    // nor post to a session route with it.
    let forged = [
        ("origin", "https://evil.example"),
        ("sec-fetch-site", "cross-site"),
    ];
    for path in ["/_portcullis/logout", "/app/transfer"] {
        let url = Url::parse(&s.url(path)).unwrap();
        let page = s
            .browser
            .send(reqwest::Method::POST, url, Some(&[("a", "1")]), &forged)
            .await;
        assert_eq!(page.status, 403, "{path}: {}", page.body);
        assert_eq!(page.json()["error"], "csrf_rejected");
    }
    assert_eq!(
        s.browser.get(&s.url("/app/x")).await.status,
        200,
        "still logged in"
    );
    let page = s.browser.get(&s.url("/_portcullis/logout")).await;
    assert_eq!(page.status, 302);
    let replayed = Browser::new();
    replayed.set_cookie(&s.url("/"), "portcullis", &cookie);
    assert_eq!(
        replayed.get(&s.url("/app/x")).await.status,
        302,
        "the copied cookie is dead too"
    );
}

#[tokio::test]
async fn sessions_renew_with_the_refresh_token_after_the_id_token_expires() {
    // ID tokens live 4 s here; the session outlives them through refresh.
    let s = setup_with(&[("IDP_ID_TOKEN_TTL", "4")], r#"store = "memory""#).await;
    let pages = s.browser.visit_and_login(&s.url("/app/x"), "alice").await;
    assert_upstream_page(&pages, "/app/x");
    let grants = || async {
        client()
            .get(format!("{}/__test/stats", s.idp.issuer))
            .send()
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()["refresh_token"]
            .as_u64()
            .unwrap_or(0)
    };
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let page = s.browser.get(&s.url("/app/x")).await;
    assert_eq!(page.status, 200, "renewed, not sent to log in");
    assert!(grants().await >= 1, "the gateway used the refresh token");
    // The renewed session cookie rides on the app's answer: no shared cache may keep it.
    assert!(
        page.set_cookies()
            .iter()
            .any(|c| c.starts_with("portcullis=")),
        "{:?}",
        page.headers
    );
    assert_eq!(page.headers["cache-control"], "private");
    assert_eq!(s.upstream.last().header_values("x-auth-user"), ["alice"]);
}

#[tokio::test]
async fn the_login_endpoints_refuse_wrong_methods_and_bad_input() {
    let s = setup("").await;
    let http = client();
    let response = http
        .post(s.url("/_portcullis/callback"))
        .send()
        .await
        .unwrap();
    assert_error(response, 400, "bad_request").await;
    let response = http
        .get(s.url("/_portcullis/backchannel-logout"))
        .send()
        .await
        .unwrap();
    assert_error(response, 400, "bad_request").await;
    let response = http
        .get(s.url("/_portcullis/callback?code=x&state=y"))
        .send()
        .await
        .unwrap();
    assert_error(response, 400, "invalid_login_state").await;
    let response = http
        .post(s.url("/_portcullis/backchannel-logout"))
        .form(&[("logout_token", "not.a.jwt")])
        .send()
        .await
        .unwrap();
    assert_error(response, 400, "invalid_logout_token").await;
    let response = http
        .post(s.url("/_portcullis/backchannel-logout"))
        .body(vec![b'a'; 100 * 1024])
        .send()
        .await
        .unwrap();
    assert_error(response, 413, "payload_too_large").await;
    assert_eq!(s.upstream.count(), 0);
}

#[tokio::test]
async fn session_routes_without_a_login_table_are_a_config_error() {
    let upstream = Upstream::start().await;
    let error = Gateway::try_start(&config(upstream.addr, SESSION_ROUTES))
        .await
        .err()
        .expect("refused");
    assert!(error.contains("routes[0].auth"), "{error}");
    assert!(error.contains("[login]"), "{error}");
}

#[tokio::test]
async fn over_tls_the_cookies_are_secure_and_host_prefixed() {
    let s = setup("").await;
    let browser = Browser::tls(&s.gateway);
    let pages = browser
        .visit_and_login(&s.gateway.https_url("/app/secure"), "alice")
        .await;
    let first = &pages[0];
    assert_eq!(first.status, 302);
    let q: std::collections::HashMap<_, _> = first
        .location()
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect();
    assert_eq!(
        q["redirect_uri"],
        s.gateway.https_url("/_portcullis/callback")
    );
    let login_cookie = first.set_cookies().pop().unwrap();
    assert!(
        login_cookie.starts_with("__Host-portcullis-login="),
        "{login_cookie}"
    );
    assert!(login_cookie.ends_with("; Secure"), "{login_cookie}");
    let callback = pages.iter().find(|p| is_callback(&p.url)).unwrap();
    let session = callback
        .set_cookies()
        .into_iter()
        .find(|c| c.starts_with("__Host-portcullis="))
        .expect("a __Host- session cookie");
    assert!(
        session.contains("; Secure") && session.contains("Path=/"),
        "{session}"
    );
    assert_upstream_page(&pages, "/app/secure");
    assert!(s.upstream.last().header_values("cookie").is_empty());
    assert_eq!(s.upstream.last().header_values("x-auth-user"), ["alice"]);
}

#[tokio::test]
async fn claims_too_large_for_a_cookie_are_refused_clearly_and_fit_a_server_side_store() {
    let s = setup("").await;
    let pages = s.browser.visit_and_login(&s.url("/app/x"), "carol").await;
    let last = pages.last().unwrap();
    assert_eq!(last.status, 502, "{}", last.body);
    assert_eq!(last.json()["error"], "session_too_large");
    assert!(s.session_cookie().is_none());
    assert_eq!(s.upstream.count(), 0);

    let memory = setup(r#"store = "memory""#).await;
    let pages = memory
        .browser
        .visit_and_login(&memory.url("/app/x"), "carol")
        .await;
    assert_upstream_page(&pages, "/app/x");
    let groups = memory.upstream.last().header_values("x-auth-groups");
    assert_eq!(groups[0].split(',').count(), 200);
}

#[tokio::test]
async fn sessions_live_in_redis_over_tls() {
    let redis = RedisServer::start_tls().await;
    let upstream = Upstream::start().await;
    let idp = OidcIdp::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("redis-ca.pem");
    std::fs::write(&ca, &keys().tls_cert_pem).unwrap();
    let extra = format!(
        "store = \"redis\"\nredis_url = \"rediss://{}\"\nredis_ca_file = \"{}\"",
        redis.tls_addr.unwrap(),
        ca.display()
    );
    let gw = Gateway::start(&gateway_config(
        &upstream,
        &idp,
        "tls-redis",
        dir.path(),
        &[COOKIE_KEY_A],
        &extra,
    ))
    .await;
    idp.register("tls-redis", &[&gw]).await;
    let browser = Browser::new();
    let pages = browser.visit_and_login(&gw.url("/app/x"), "alice").await;
    assert_upstream_page(&pages, "/app/x");
    let keys = redis.command(&["KEYS", "portcullis:s:*"]).await.unwrap();
    assert!(
        keys.starts_with("*1\r\n"),
        "the session went to Redis over TLS: {keys:?}"
    );

    // Without the CA, the server's certificate is not trusted: the store is unavailable and
    // a request with a session cookie is denied, never let through.
    let untrusted = format!(
        "store = \"redis\"\nredis_url = \"rediss://{}\"",
        redis.tls_addr.unwrap()
    );
    let dir2 = tempfile::tempdir().unwrap();
    let gw2 = Gateway::start(&gateway_config(
        &upstream,
        &idp,
        "tls-redis",
        dir2.path(),
        &[COOKIE_KEY_A],
        &untrusted,
    ))
    .await;
    let cookie = browser.cookie(&gw.url("/"), "portcullis").unwrap();
    let response = client()
        .get(gw2.url("/app/x"))
        .header("cookie", format!("portcullis={cookie}"))
        .send()
        .await
        .unwrap();
    assert_error(response, 502, "session_store_unavailable").await;
}

#[tokio::test]
async fn memory_sessions_survive_a_reload_unless_the_store_bounds_change() {
    let s = setup(r#"store = "memory""#).await;
    let pages = s.browser.visit_and_login(&s.url("/app/x"), "alice").await;
    assert_upstream_page(&pages, "/app/x");
    portcullis::reload::reload(&s.gateway.shared).await.unwrap();
    assert_eq!(
        s.browser.get(&s.url("/app/x")).await.status,
        200,
        "kept across a reload"
    );

    // New bounds make a new store (documented): the old sessions are gone.
    let path = s.gateway.config_path();
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace(
            "store = \"memory\"",
            "store = \"memory\"\nmax_sessions = 10",
        ),
    )
    .unwrap();
    portcullis::reload::reload(&s.gateway.shared).await.unwrap();
    assert_eq!(s.browser.get(&s.url("/app/x")).await.status, 302);
}

#[tokio::test]
async fn a_public_client_logs_in_with_pkce_alone() {
    // No client secret configured: the gateway sends client_id in the token request and
    // relies on PKCE, which the IdP requires of public clients.
    let upstream = Upstream::start().await;
    let idp = OidcIdp::start().await;
    let dir = tempfile::tempdir().unwrap();
    let text = gateway_config(
        &upstream,
        &idp,
        "public-client",
        dir.path(),
        &[COOKIE_KEY_A],
        "",
    );
    let text: String = text
        .lines()
        .filter(|l| !l.starts_with("client_secret_file"))
        .map(|l| format!("{l}\n"))
        .collect();
    let gw = Gateway::start(&text).await;
    idp.register_with("public-client", &[&gw], "none").await;
    let browser = Browser::new();
    let pages = browser.visit_and_login(&gw.url("/app/x"), "bob").await;
    assert_upstream_page(&pages, "/app/x");
    assert_eq!(upstream.last().header_values("x-auth-user"), ["bob"]);
}

/// The IdP's userinfo answer for an access token: the IdP's own check that it is valid.
async fn userinfo(idp: &OidcIdp, access_token: &str) -> (u16, serde_json::Value) {
    let response = client()
        .get(format!("{}/me", idp.issuer))
        .bearer_auth(access_token)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

#[tokio::test]
async fn session_routes_send_the_idp_tokens_to_the_app_and_refresh_keeps_them_fresh() {
    // Tokens live 35 s at this IdP; the session (a cookie store) renews them 30 s before
    // they expire, so from 5 s on.
    let s = setup_with(
        &[("IDP_ID_TOKEN_TTL", "35")],
        r#"forward_access_token = "X-Forwarded-Access-Token"
forward_id_token = "X-Forwarded-Id-Token"

[[routes]]
name = "quiet"
path_prefix = "/quiet"
upstream = "app"
auth = "session"
forward_access_token = false
forward_id_token = false

[[routes]]
name = "own-header"
path_prefix = "/own"
upstream = "app"
auth = ["jwt", "session"]
providers = ["rsa"]
forward_access_token = "X-Idp-Token"
"#,
    )
    .await;
    let summaries = portcullis::check::route_summaries(&s.gateway.shared.load());
    let own = summaries
        .iter()
        .find(|l| l.starts_with("route own-header:"))
        .unwrap();
    assert!(
        own.ends_with(
            "; sends the session's access token in x-idp-token; sends the session's ID token in x-forwarded-id-token"
        ),
        "{own}"
    );
    let pages = s.browser.visit_and_login(&s.url("/app/x"), "alice").await;
    assert_upstream_page(&pages, "/app/x");
    let seen = s.upstream.last();
    let access = seen.header_values("x-forwarded-access-token");
    assert_eq!(access.len(), 1, "{:?}", seen.headers);
    // The IdP itself takes it: it is the session's real access token.
    let (status, info) = userinfo(&s.idp, &access[0]).await;
    assert_eq!(
        (status, info["sub"].as_str()),
        (200, Some("alice")),
        "{info}"
    );
    // The ID token is the IdP's, for this client.
    let id = seen.header_values("x-forwarded-id-token");
    assert_eq!(id.len(), 1);
    let payload = id[0].split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        (claims["sub"].as_str(), claims["aud"].as_str()),
        (Some("alice"), Some(&*s.client_id))
    );

    // A route that turns them off, one with its own header for the access token only,
    // and a public route: a client's own token headers never pass.
    s.browser.get(&s.url("/quiet/x")).await;
    let quiet = s.upstream.last();
    assert!(quiet.header_values("x-forwarded-access-token").is_empty());
    assert!(quiet.header_values("x-forwarded-id-token").is_empty());
    s.browser.get(&s.url("/own/x")).await;
    let own = s.upstream.last();
    assert_eq!(own.header_values("x-idp-token"), access);
    assert!(own.header_values("x-forwarded-access-token").is_empty());
    let forged = client()
        .get(s.url("/open/x"))
        .header("X-Forwarded-Access-Token", "forged")
        .header("X_Forwarded_Id_Token", "forged")
        .header("X-Idp-Token", "forged")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 200);
    let open = s.upstream.last();
    for name in [
        "x-forwarded-access-token",
        "x_forwarded_id_token",
        "x-idp-token",
    ] {
        assert!(open.header_values(name).is_empty(), "{name} passed");
    }
    // A Bearer JWT on the mixed route carries no session tokens.
    let bearer = client()
        .get(s.url("/own/x"))
        .bearer_auth(valid_token())
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), 200);
    assert!(s.upstream.last().header_values("x-idp-token").is_empty());

    // When the tokens near their expiry, the session is refreshed and the app gets the
    // new ones.
    tokio::time::sleep(Duration::from_millis(5500)).await;
    let page = s.browser.get(&s.url("/app/x")).await;
    assert_eq!(page.status, 200);
    let renewed = s.upstream.last().header_values("x-forwarded-access-token");
    assert_eq!(renewed.len(), 1);
    assert_ne!(
        renewed, access,
        "the old access token was sent after it expired"
    );
    assert_eq!(userinfo(&s.idp, &renewed[0]).await.0, 200);
    // The renewed tokens are what the session now holds: the next request sends them too.
    s.browser.get(&s.url("/app/y")).await;
    assert_eq!(
        s.upstream.last().header_values("x-forwarded-access-token"),
        renewed
    );
}

#[tokio::test]
async fn forwarding_session_tokens_on_a_route_without_sessions_is_a_config_error() {
    let upstream = Upstream::start().await;
    let idp = OidcIdp::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut text = config(
        upstream.addr,
        "[[routes]]\nname = \"api\"\npath_prefix = \"/api\"\nupstream = \"app\"\nauth = \"jwt\"\nforward_access_token = true\n",
    );
    text.push_str(&login_config(
        &idp,
        "c",
        dir.path(),
        &[COOKIE_KEY_A],
        "forward_id_token = \"Cookie\"",
    ));
    let error = Gateway::try_start(&text).await.err().unwrap();
    assert!(
        error.contains("routes[0].forward_access_token: only a session route"),
        "{error}"
    );
    assert!(
        error.contains("login.forward_id_token: is a header the gateway manages"),
        "{error}"
    );
}

#[tokio::test]
async fn sessions_survive_a_sentinel_failover_under_load() {
    use std::sync::Arc;
    let mut primary = RedisServer::start().await;
    let replica = RedisServer::start_replica_of(&primary).await;
    until_reply(&replica, &["INFO", "replication"], "master_link_status:up").await;
    let sentinel = RedisServer::start_sentinel(&primary, "sessions").await;
    // The sentinel has found the replica (from the primary's INFO).
    let replica_port = replica.addr.port().to_string();
    until_reply(
        &sentinel,
        &["SENTINEL", "replicas", "sessions"],
        &replica_port,
    )
    .await;

    let upstream = Upstream::start().await;
    let idp = OidcIdp::start().await;
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "store = \"redis\"\nredis_url = \"redis+sentinel://{}/sessions\"\nredis_timeout = \"1s\"",
        sentinel.addr
    );
    let text = gateway_config(
        &upstream,
        &idp,
        "failover-client",
        dir.path(),
        &[COOKIE_KEY_A],
        &extra,
    );
    let gw = Gateway::start(&text).await;
    idp.register("failover-client", &[&gw]).await;
    let mut browsers = Vec::new();
    for user in ["alice", "bob", "alice", "bob"] {
        let browser = Browser::new();
        let pages = browser.visit_and_login(&gw.url("/app/x"), user).await;
        assert_upstream_page(&pages, "/app/x");
        browsers.push(Arc::new(browser));
    }
    // Every session is on the replica too before the primary goes.
    let keys = primary.command(&["KEYS", "portcullis:s:*"]).await.unwrap();
    assert!(keys.starts_with("*4\r\n"), "{keys:?}");
    until_reply(&replica, &["KEYS", "portcullis:s:*"], "*4\r\n").await;

    // Load: each browser asks again and again; the primary is killed after a second.
    let started = std::time::Instant::now();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for browser in &browsers {
        let (browser, stop, url) = (browser.clone(), stop.clone(), gw.url("/app/y"));
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let status = browser.get(&url).await.status;
                seen.push((started.elapsed(), status));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            seen
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let killed_at = started.elapsed();
    primary.kill();
    // The sentinel promotes the replica...
    until_reply(
        &sentinel,
        &["SENTINEL", "get-master-addr-by-name", "sessions"],
        &replica_port,
    )
    .await;
    let promoted_at = started.elapsed();
    // ...and the load goes on a while on the new primary.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut seen: Vec<(Duration, u16)> = Vec::new();
    for task in tasks {
        seen.extend(task.await.unwrap());
    }
    seen.sort();
    // Errors only (502 session_store_unavailable), never a lost session (302 to log in).
    let lost = seen.iter().filter(|(_, s)| *s == 302).count();
    assert_eq!(lost, 0, "sessions lost: {seen:?}");
    assert!(seen.iter().all(|(_, s)| *s == 200 || *s == 502), "{seen:?}");
    let errors: Vec<Duration> = seen
        .iter()
        .filter(|(_, s)| *s == 502)
        .map(|(t, _)| *t)
        .collect();
    if let (Some(first), Some(last)) = (errors.first(), errors.last()) {
        assert!(
            *first >= killed_at,
            "an error before the primary went: {first:?}"
        );
        eprintln!(
            "failover: primary killed at {killed_at:?}, promoted at {promoted_at:?}; {} of {} requests \
             failed, from {first:?} to {last:?} (window {:?})",
            errors.len(),
            seen.len(),
            *last - *first
        );
        // After the last error, everything is served again.
        assert!(
            seen.iter()
                .filter(|(t, _)| t > last)
                .all(|(_, s)| *s == 200)
        );
    }
    // Every session is still there, on the new primary.
    for browser in &browsers {
        assert_eq!(browser.get(&gw.url("/app/z")).await.status, 200);
    }
    drop(sentinel);
}
