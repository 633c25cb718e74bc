//! The shared denylist (`[redis]`, a real redis-server): a JWT revoked by `jti` on one
//! instance is refused by the others; a cookie session logged out (or ended by back-channel
//! logout) on one instance is refused everywhere; Redis down refuses nothing new.

use std::time::{Duration, Instant};

use jsonwebtoken::Algorithm;
use serde_json::json;

use crate::operations::{sample, scrape, with_admin};
use crate::support::oidc::*;
use crate::support::*;

fn with_redis(text: String, redis: &RedisServer) -> String {
    format!("{text}\n[redis]\nurl = \"{}\"\n", redis.url())
}

/// Polls `status` until it returns `expected` (the revocation travels by pub/sub), at
/// most 3 s; returns how long it took.
async fn until_status<F, Fut>(expected: u16, mut status: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = u16>,
{
    let started = Instant::now();
    loop {
        let got = status().await;
        if got == expected {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "still {got}, not {expected}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn bearer(gw: &Gateway, token: &str) -> u16 {
    client()
        .get(gw.url("/api/x"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn revoke(gw: &Gateway, body: serde_json::Value) -> reqwest::Response {
    client()
        .post(gw.admin_url("/revoke"))
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_jwt_revoked_on_one_instance_is_refused_by_every_instance_until_its_exp() {
    let redis = RedisServer::start().await;
    let upstream = Upstream::start().await;
    let text = with_redis(with_admin(config(upstream.addr, ROUTES), ""), &redis);
    let (one, two) = (Gateway::start(&text).await, Gateway::start(&text).await);
    let exp = now() + 600;
    let doomed = token(Algorithm::RS256, &claims(json!({"jti": "t-1", "exp": exp})));
    let other = token(Algorithm::RS256, &claims(json!({"jti": "t-2"})));
    for gw in [&one, &two] {
        assert_eq!(bearer(gw, &doomed).await, 200);
    }

    let response = revoke(&one, json!({"jti": "t-1", "exp": exp})).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<serde_json::Value>().await.unwrap(),
        json!({"revoked": "jti", "until": exp})
    );
    // At once on the instance that took it; on the other as soon as the message arrives.
    assert_eq!(bearer(&one, &doomed).await, 401);
    let took = until_status(401, || bearer(&two, &doomed)).await;
    eprintln!("the revocation reached the other instance in {took:?}");
    let before = upstream.count();
    let refused = client()
        .get(two.url("/api/x"))
        .bearer_auth(&doomed)
        .send()
        .await
        .unwrap();
    assert_error(refused, 401, "invalid_token").await;
    assert_eq!(upstream.count(), before);
    assert_eq!(bearer(&two, &other).await, 200);
    // In Redis: one entry, scored by the token's exp, named by a digest (no jti in clear).
    let entries = redis
        .command(&["ZRANGE", "portcullis:revoked", "0", "-1", "WITHSCORES"])
        .await
        .unwrap();
    assert!(
        entries.starts_with("*2\r\n")
            && entries.ends_with(&format!("{exp}\r\n"))
            && !entries.contains("t-1"),
        "{entries:?}"
    );
    // An instance started later reads it at start.
    let three = Gateway::start(&text).await;
    until_status(401, || bearer(&three, &doomed)).await;
    let samples = scrape(&client(), &three).await;
    assert_eq!(sample(&samples, "portcullis_revocation_synced"), 1.0);
    assert_eq!(sample(&samples, "portcullis_revocations"), 1.0);
    let refusals = sample(
        &scrape(&client(), &two).await,
        r#"portcullis_auth_decisions_total{route="api",outcome="revoked"}"#,
    );
    assert!(refusals >= 1.0, "{refusals}");

    // Bad requests to /revoke.
    for body in [
        json!({"jti": "x"}),
        json!({"jti": "", "exp": exp}),
        json!({"jti": "x", "exp": 5}),
        json!({"jti": "x", "exp": exp, "sub": "y"}),
    ] {
        assert_eq!(revoke(&one, body.clone()).await.status(), 400, "{body}");
    }
    // Redis gone: nothing new can be revoked (503), what is known stays revoked, the rest
    // is served.
    drop(redis);
    assert_eq!(
        revoke(&one, json!({"jti": "t-2", "exp": exp}))
            .await
            .status(),
        503
    );
    assert_eq!(bearer(&two, &doomed).await, 401);
    assert_eq!(bearer(&two, &other).await, 200);
    until_status(0, || {
        let two = &two;
        async move {
            sample(
                &scrape(&client(), two).await,
                "portcullis_revocation_synced",
            ) as u16
        }
    })
    .await;
}

#[tokio::test]
async fn revoke_without_a_redis_table_is_404() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&with_admin(config(upstream.addr, ROUTES), "")).await;
    let response = revoke(&gw, json!({"jti": "x", "exp": now() + 60})).await;
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn cookie_sessions_end_everywhere_at_logout_and_back_channel_logout() {
    let redis = RedisServer::start().await;
    let upstream = Upstream::start().await;
    let idp = OidcIdp::start().await;
    let dir = tempfile::tempdir().unwrap();
    let client_id = "denylist-client";
    let mut text = config(upstream.addr, SESSION_ROUTES);
    text.push_str(&login_config(
        &idp,
        client_id,
        dir.path(),
        &[COOKIE_KEY_A],
        "",
    ));
    let text = with_redis(text, &redis);
    let (one, two) = (Gateway::start(&text).await, Gateway::start(&text).await);
    idp.register(client_id, &[&one, &two]).await;

    // A cookie session (the default store) works on both instances.
    let browser = Browser::new();
    browser.visit_and_login(&one.url("/app/x"), "alice").await;
    let cookie = browser.cookie(&one.url("/"), "portcullis").unwrap();
    let elsewhere = Browser::new();
    elsewhere.set_cookie(&two.url("/"), "portcullis", &cookie);
    assert_eq!(elsewhere.get(&two.url("/app/y")).await.status, 200);
    // Logout on one: the same cookie is refused on two (sent to log in again).
    assert_eq!(
        browser.get(&one.url("/_portcullis/logout")).await.status,
        302
    );
    until_status(302, || async {
        elsewhere.get(&two.url("/app/y")).await.status
    })
    .await;

    // A new login; the IdP's back-channel logout (to instance one) ends it on two too.
    let browser = Browser::new();
    browser.visit_and_login(&one.url("/app/x"), "alice").await;
    let cookie = browser.cookie(&one.url("/"), "portcullis").unwrap();
    let elsewhere = Browser::new();
    elsewhere.set_cookie(&two.url("/"), "portcullis", &cookie);
    assert_eq!(elsewhere.get(&two.url("/app/y")).await.status, 200);
    let done = browser.logout_at_idp(&idp).await;
    assert!(done.status < 400, "{}", done.body);
    let count = upstream.count();
    until_status(302, || async {
        elsewhere.get(&two.url("/app/y")).await.status
    })
    .await;
    assert_eq!(upstream.count(), count);
    // A login after the back-channel logout is a new session: not covered by it.
    let again = Browser::new();
    let pages = again.visit_and_login(&two.url("/app/z"), "alice").await;
    assert_eq!(pages.last().unwrap().status, 200);
}

/// `[redis] url = "redis+cluster://..."`: the denylist (one sorted set and a channel, on
/// whichever nodes) and a shared rate limit (a key per identity, spread over the nodes)
/// work across two instances on a cluster of three primaries.
#[tokio::test]
async fn revocations_and_shared_limits_travel_through_a_redis_cluster() {
    let cluster = RedisCluster::start(3).await;
    let upstream = Upstream::start().await;
    let routes = format!(
        "{ROUTES}
[[routes]]
name = \"shared\"
path_prefix = \"/shared\"
upstream = \"app\"
auth = \"jwt\"
rate_limit = {{ requests = 2, per = \"1h\", shared = \"redis\" }}
"
    );
    let text = format!(
        "{}\n[redis]\nurl = \"{}\"\n",
        with_admin(config(upstream.addr, &routes), ""),
        cluster.url()
    );
    let (one, two) = (Gateway::start(&text).await, Gateway::start(&text).await);
    let exp = now() + 600;
    let doomed = token(Algorithm::RS256, &claims(json!({"jti": "c-1", "exp": exp})));
    assert_eq!(bearer(&two, &doomed).await, 200);
    assert_eq!(
        revoke(&one, json!({"jti": "c-1", "exp": exp}))
            .await
            .status(),
        200
    );
    let took = until_status(401, || bearer(&two, &doomed)).await;
    eprintln!("the revocation crossed the cluster in {took:?}");
    // An instance started later reads it from the cluster at start.
    let three = Gateway::start(&text).await;
    until_status(401, || bearer(&three, &doomed)).await;

    // Two per identity in all, whichever instance; each of 20 identities has its own key
    // (so the keys are spread over the nodes).
    let shared = |gw: &Gateway, sub: &str| {
        let request = client()
            .get(gw.url("/shared/x"))
            .bearer_auth(token(Algorithm::RS256, &claims(json!({"sub": sub}))));
        async move { request.send().await.unwrap().status().as_u16() }
    };
    // (Both instances hold their cluster connection by now: the revocation went through
    // it. Before that, a shared limit counts locally rather than wait.)
    for n in 0..20 {
        let sub = format!("user-{n}");
        assert_eq!(shared(&one, &sub).await, 200, "{sub}");
        assert_eq!(shared(&two, &sub).await, 200, "{sub}");
        assert_eq!(shared(&one, &sub).await, 429, "{sub}");
        assert_eq!(shared(&two, &sub).await, 429, "{sub}");
    }
    let per_node = cluster.keys("portcullis:rl:*").await;
    eprintln!("rate-limit keys per cluster node: {per_node:?}");
    assert!(per_node.iter().sum::<usize>() >= 20, "{per_node:?}");
    assert!(
        per_node.iter().filter(|&&n| n > 0).count() >= 2,
        "20 keys on one node of three: {per_node:?}"
    );
}
