//! `[[routes]] rate_limit`: 429 with `Retry-After` and `RateLimit-*` beyond the limit, per
//! identity or client address, counted in the metrics, kept across an unchanged reload.

use jsonwebtoken::Algorithm;
use serde_json::json;

use crate::operations::{sample, scrape, with_admin};
use crate::support::*;

const LIMITED: &str = r#"
[[routes]]
name = "limited"
path_prefix = "/limited"
upstream = "app"
auth = "jwt"
rate_limit = { requests = 2, per = "1m" }

[[routes]]
name = "open-limited"
path_prefix = "/open"
upstream = "app"
auth = "public"
rate_limit = { requests = 1, per = "1h", burst = 2 }
"#;

fn user(sub: &str) -> String {
    token(Algorithm::RS256, &claims(json!({ "sub": sub })))
}

async fn get(
    gw: &Gateway,
    path: &str,
    token: Option<&str>,
    xff: Option<&str>,
) -> reqwest::Response {
    let mut request = client().get(gw.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(xff) = xff {
        request = request.header("x-forwarded-for", xff);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn each_identity_gets_its_own_allowance_and_the_rest_get_429() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&with_admin(config_with(&upstream, "", LIMITED), "")).await;
    let (alice, bob) = (user("alice"), user("bob"));
    for _ in 0..2 {
        assert_eq!(
            get(&gw, "/limited/x", Some(&alice), None).await.status(),
            200
        );
    }
    let before = upstream.count();
    let refused = get(&gw, "/limited/x", Some(&alice), None).await;
    assert_eq!(refused.status(), 429);
    let headers = refused.headers().clone();
    // The next request fits 30 s after the first (2 per minute).
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((29..=30).contains(&retry), "{retry}");
    assert_eq!(headers["ratelimit-limit"], "2");
    assert_eq!(headers["ratelimit-remaining"], "0");
    assert_eq!(headers["ratelimit-reset"], headers["retry-after"]);
    assert_eq!(headers["ratelimit-policy"], "2;w=60;burst=2");
    assert_error(refused, 429, "rate_limited").await;
    assert_eq!(
        upstream.count(),
        before,
        "a refused request reached the upstream"
    );
    // Another identity, the same address: its own allowance.
    assert_eq!(get(&gw, "/limited/x", Some(&bob), None).await.status(), 200);
    // Another route has no limit.
    assert_eq!(get(&gw, "/api/x", Some(&alice), None).await.status(), 200);
    // Counted in the decision metrics and the route's status counts.
    let samples = scrape(&client(), &gw).await;
    assert_eq!(
        sample(
            &samples,
            r#"portcullis_auth_decisions_total{route="limited",outcome="rate_limited"}"#
        ),
        1.0
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_public_route_counts_client_addresses_and_believes_only_trusted_proxies() {
    let upstream = Upstream::start().await;
    // Untrusted peer: its X-Forwarded-For changes nothing.
    let gw = Gateway::start(&config_with(&upstream, "", LIMITED)).await;
    for (i, expected) in [(1, 200), (2, 200), (3, 429)] {
        let xff = format!("198.51.100.{i}");
        assert_eq!(
            get(&gw, "/open/x", None, Some(&xff)).await.status(),
            expected,
            "request {i}"
        );
    }
    gw.stop().await;
    // Trusted loopback proxy: each forwarded client has its own burst of 2.
    let gw = Gateway::start(&config_with(
        &upstream,
        "trusted_proxies = [\"127.0.0.1/32\"]",
        LIMITED,
    ))
    .await;
    for client in ["198.51.100.1", "198.51.100.2"] {
        for expected in [200, 200, 429] {
            let xff = format!("{client}, 127.0.0.1");
            assert_eq!(
                get(&gw, "/open/x", None, Some(&xff)).await.status(),
                expected,
                "{client}"
            );
        }
    }
    gw.stop().await;
}

#[tokio::test]
async fn an_unchanged_limit_keeps_its_counts_across_a_reload_and_a_changed_one_starts_over() {
    let upstream = Upstream::start().await;
    let text = with_admin(config_with(&upstream, "", LIMITED), "");
    let gw = Gateway::start(&text).await;
    let alice = user("alice");
    for expected in [200, 200, 429] {
        assert_eq!(
            get(&gw, "/limited/x", Some(&alice), None).await.status(),
            expected
        );
    }
    let reload = |text: String| {
        let gw = &gw;
        async move {
            std::fs::write(gw.config_path(), text).unwrap();
            let response = client().post(gw.admin_url("/reload")).send().await.unwrap();
            assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
        }
    };
    // Another route changes; this one does not.
    reload(text.replace("name = \"api\"", "name = \"api2\"")).await;
    assert_eq!(
        get(&gw, "/limited/x", Some(&alice), None).await.status(),
        429
    );
    reload(text.replace("requests = 2, per = \"1m\"", "requests = 3, per = \"1m\"")).await;
    assert_eq!(
        get(&gw, "/limited/x", Some(&alice), None).await.status(),
        200
    );
    gw.stop().await;
}

#[tokio::test]
async fn explain_and_check_name_the_limit_and_bad_limits_name_their_key() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config_with(&upstream, "", LIMITED)).await;
    let snapshot = gw.shared.load();
    for _ in 0..3 {
        // explain never counts: three runs, all allowed.
        let evaluation = portcullis::explain::evaluate(
            &snapshot,
            "GET",
            "http://t/limited/x",
            &portcullis::explain::Credential::Token(user("carol")),
            &[],
        )
        .await
        .unwrap();
        assert_eq!(evaluation.status, 200);
        assert!(
            evaluation
                .report()
                .contains("limit:      2 per 1m (burst 2) by sub (not counted by explain)"),
            "{}",
            evaluation.report()
        );
    }
    let summaries = portcullis::check::route_summaries(&snapshot);
    let line = summaries
        .iter()
        .find(|l| l.starts_with("route open-limited:"))
        .unwrap();
    assert!(
        line.ends_with("auth public; limited to 1 per 1h (burst 2) by ip"),
        "{line}"
    );
    gw.stop().await;

    for (limit, key) in [
        ("{ requests = 0 }", "routes[5].rate_limit.requests"),
        ("{ per = \"1s\" }", "routes[5].rate_limit.requests"),
        ("{ requests = 1, per = \"0s\" }", "routes[5].rate_limit.per"),
        ("{ requests = 1, burst = 0 }", "routes[5].rate_limit.burst"),
        (
            "{ requests = 1, key = \"email\" }",
            "routes[5].rate_limit.key",
        ),
        (
            "{ requests = 1, key = \"sub\" }",
            "routes[5].rate_limit.key",
        ),
    ] {
        let routes = format!(
            "[[routes]]\nname = \"x\"\npath_prefix = \"/x\"\nupstream = \"app\"\nauth = \"public\"\nrate_limit = {limit}\n"
        );
        let error = Gateway::try_start(&config_with(&upstream, "", &routes))
            .await
            .err()
            .expect(limit);
        assert!(error.contains(key), "{limit}: {error}");
    }
}

#[tokio::test]
async fn a_shared_limit_counts_across_instances_and_falls_back_to_each_when_redis_is_gone() {
    let redis = crate::support::oidc::RedisServer::start().await;
    let upstream = Upstream::start().await;
    let routes = r#"
[[routes]]
name = "shared"
path_prefix = "/shared"
upstream = "app"
auth = "jwt"
rate_limit = { requests = 3, per = "1h", shared = "redis" }
"#;
    let text = format!(
        "{}\n[redis]\nurl = \"{}\"\n",
        config_with(&upstream, "", routes),
        redis.url()
    );
    let (one, two) = (Gateway::start(&text).await, Gateway::start(&text).await);
    let alice = user("alice");
    // Three in all, whichever instance they reach.
    for (gw, expected) in [
        (&one, 200),
        (&two, 200),
        (&one, 200),
        (&two, 429),
        (&one, 429),
    ] {
        assert_eq!(
            get(gw, "/shared/x", Some(&alice), None).await.status(),
            expected
        );
    }
    let refused = get(&two, "/shared/x", Some(&alice), None).await;
    assert_eq!(refused.status(), 429);
    let retry: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1199..=1200).contains(&retry), "{retry}");
    assert_eq!(
        get(&one, "/shared/x", Some(&user("bob")), None)
            .await
            .status(),
        200
    );
    let summaries = portcullis::check::route_summaries(&one.shared.load());
    let line = summaries
        .iter()
        .find(|l| l.starts_with("route shared:"))
        .unwrap();
    assert!(
        line.ends_with("limited to 3 per 1h (burst 3) by sub, shared in Redis"),
        "{line}"
    );

    // Redis gone: each instance counts on its own (a fresh allowance here), neither
    // refuses everything nor lets everything through.
    drop(redis);
    for expected in [200, 200, 200, 429] {
        assert_eq!(
            get(&one, "/shared/x", Some(&alice), None).await.status(),
            expected
        );
    }
}
