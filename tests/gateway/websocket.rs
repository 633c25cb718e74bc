//! WebSocket through the gateway: a real tokio-tungstenite app and client, real sockets.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::Algorithm;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::operations::{sample, scrape, with_admin};
use crate::support::*;

/// The standard config (with the admin listener) plus upstream `ws` (the WebSocket app),
/// a public route `/bad` to `bad_upstream`, and `routes`.
fn ws_config(app: &WsApp, bad: std::net::SocketAddr, server_extra: &str, routes: &str) -> String {
    // The standard `app` upstream is not used here.
    let unused = "127.0.0.1:9".parse().unwrap();
    let text = config(unused, routes).replace(
        "[upstreams.echo]",
        &format!(
            "[upstreams.ws]\nurl = \"http://{}\"\n\n[upstreams.bad]\nurl = \"http://{bad}\"\n\n[upstreams.echo]",
            app.addr
        ),
    );
    with_admin(text, server_extra)
}

const WS_ROUTES: &str = r#"
[[routes]]
name = "chat"
path_prefix = "/chat"
upstream = "ws"
auth = "jwt"
websocket = true

[[routes]]
name = "feed"
path_prefix = "/feed"
upstream = "ws"
auth = "jwt"
websocket = true
close_on_expiry = false
max_upgraded_lifetime = "1s"

[[routes]]
name = "quiet"
path_prefix = "/quiet"
upstream = "ws"
auth = "jwt"
websocket = true
upgraded_idle_timeout = "400ms"

[[routes]]
name = "plain"
path_prefix = "/plain"
upstream = "ws"
auth = "jwt"

[[routes]]
name = "cookie-chat"
path_prefix = "/cookie-chat"
upstream = "ws"
auth = "jwt"
token_sources = ["cookie:at"]
websocket = true

[[routes]]
name = "bad-ws"
path_prefix = "/bad-ws"
upstream = "bad"
auth = "public"
websocket = true

[[routes]]
name = "bad"
path_prefix = "/bad"
upstream = "bad"
auth = "public"
"#;

async fn gateway(app: &WsApp) -> Gateway {
    let bad = bad_upstream().await;
    Gateway::start(&ws_config(app, bad, "shutdown_grace = \"1s\"", WS_ROUTES)).await
}

fn ws_url(gw: &Gateway, path: &str) -> String {
    format!("ws://{}{path}", gw.http)
}

/// The next data message, or `None` once the connection has ended (within `within`).
async fn next_data(ws: &mut WsClient, within: Duration) -> Option<Message> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => panic!("neither a message nor the end within {within:?}"),
            Ok(None) | Ok(Some(Err(_))) => return None,
            Ok(Some(Ok(Message::Close(_)))) => return None,
            Ok(Some(Ok(message))) if message.is_text() || message.is_binary() => {
                return Some(message);
            }
            Ok(Some(Ok(_))) => continue,
        }
    }
}

#[tokio::test]
async fn an_unauthenticated_handshake_is_401_and_reaches_nothing() {
    let app = WsApp::start().await;
    let gw = gateway(&app).await;
    assert_eq!(
        ws_connect(&ws_url(&gw, "/chat/room"), &[]).await.err(),
        Some(401)
    );
    let expired = token(Algorithm::RS256, &claims(json!({"exp": now() - 600})));
    let bearer = format!("Bearer {expired}");
    assert_eq!(
        ws_connect(&ws_url(&gw, "/chat/room"), &[("authorization", &bearer)])
            .await
            .err(),
        Some(401)
    );
    assert!(app.handshakes().is_empty());
}

#[tokio::test]
async fn an_authenticated_websocket_carries_messages_both_ways() {
    let app = WsApp::start().await;
    let gw = gateway(&app).await;
    let bearer = format!("Bearer {}", valid_token());
    let mut ws = ws_connect(
        &ws_url(&gw, "/chat/room?x=1"),
        &[("authorization", &bearer), ("x-auth-user", "mallory")],
    )
    .await
    .expect("upgraded");
    // The app's handshake: the verified identity, not the client's, and no token.
    let handshakes = app.handshakes();
    assert_eq!(handshakes.len(), 1);
    let (path, headers) = &handshakes[0];
    assert_eq!(path, "/chat/room?x=1");
    assert_eq!(
        headers.get_all("x-auth-user").iter().collect::<Vec<_>>(),
        ["alice"]
    );
    assert!(!headers.contains_key("authorization"));
    assert_eq!(headers["upgrade"], "websocket");

    let big: Vec<u8> = (0..4 << 20).map(|i| (i % 251) as u8).collect();
    for message in [
        Message::text("hello"),
        Message::binary(vec![0u8, 1, 2, 255]),
        Message::binary(big.clone()),
        Message::text("é".repeat(70_000)),
    ] {
        ws.send(message.clone()).await.unwrap();
        let echoed = next_data(&mut ws, Duration::from_secs(10)).await.unwrap();
        assert_eq!(echoed, message);
    }
    let c = client();
    assert_eq!(
        sample(&scrape(&c, &gw).await, "portcullis_upgraded_connections"),
        1.0
    );
    ws.close(None).await.unwrap();
    drop(ws);
    for _ in 0..50 {
        if sample(&scrape(&c, &gw).await, "portcullis_upgraded_connections") == 0.0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the upgraded connection is still counted after its close");
}

#[tokio::test]
async fn a_websocket_is_closed_when_its_token_expires() {
    let app = WsApp::start().await;
    let gw = gateway(&app).await;
    let short = token(Algorithm::RS256, &claims(json!({"exp": now() + 2})));
    let bearer = format!("Bearer {short}");
    let started = std::time::Instant::now();
    let mut ws = ws_connect(&ws_url(&gw, "/chat/live"), &[("authorization", &bearer)])
        .await
        .expect("upgraded");
    ws.send(Message::text("still valid")).await.unwrap();
    assert!(next_data(&mut ws, Duration::from_secs(1)).await.is_some());
    // Nothing more is sent: the gateway ends it when exp passes (whole seconds).
    assert_eq!(next_data(&mut ws, Duration::from_secs(5)).await, None);
    let lived = started.elapsed();
    assert!(lived >= Duration::from_millis(900), "{lived:?}");
    assert!(lived < Duration::from_secs(4), "{lived:?}");
}

#[tokio::test]
async fn lifetime_and_idle_limits_close_upgraded_connections() {
    let app = WsApp::start().await;
    let gw = gateway(&app).await;
    let bearer = format!("Bearer {}", valid_token());
    // /feed: at most 1 s, even while busy.
    let mut ws = ws_connect(&ws_url(&gw, "/feed"), &[("authorization", &bearer)])
        .await
        .expect("upgraded");
    let started = std::time::Instant::now();
    let mut echoed = 0;
    loop {
        if ws.send(Message::text("tick")).await.is_err() {
            break;
        }
        match next_data(&mut ws, Duration::from_secs(3)).await {
            Some(_) => echoed += 1,
            None => break,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lived = started.elapsed();
    assert!(echoed >= 5, "{echoed}");
    assert!(
        lived >= Duration::from_millis(900) && lived < Duration::from_secs(3),
        "{lived:?}"
    );

    // /quiet: closed after 400 ms of silence, kept while it talks.
    let mut ws = ws_connect(&ws_url(&gw, "/quiet"), &[("authorization", &bearer)])
        .await
        .expect("upgraded");
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        ws.send(Message::text("keep")).await.unwrap();
        assert!(next_data(&mut ws, Duration::from_secs(1)).await.is_some());
    }
    let silent = std::time::Instant::now();
    assert_eq!(next_data(&mut ws, Duration::from_secs(3)).await, None);
    assert!(
        silent.elapsed() >= Duration::from_millis(350)
            && silent.elapsed() < Duration::from_millis(900),
        "{:?}",
        silent.elapsed()
    );
}

#[tokio::test]
async fn only_routes_with_websocket_upgrade() {
    let app = WsApp::start().await;
    let recorder = Upstream::start().await;
    let gw = gateway(&app).await;
    let bearer = format!("Bearer {}", valid_token());
    // /plain goes to the same app, but without `Upgrade`: the app refuses a handshake
    // that is not one, and nothing is upgraded.
    let refused = ws_connect(&ws_url(&gw, "/plain"), &[("authorization", &bearer)]).await;
    assert!(refused.is_err());
    assert!(app.handshakes().is_empty());
    // What a plain route forwards: no Upgrade, no Connection: upgrade.
    let gw2 = Gateway::standard(&recorder).await;
    let refused = ws_connect(&ws_url(&gw2, "/api/ws"), &[("authorization", &bearer)]).await;
    assert_eq!(refused.err(), Some(200));
    let seen = recorder.last();
    assert!(seen.header_values("upgrade").is_empty());
    assert!(
        seen.header_values("connection")
            .iter()
            .all(|v| !v.to_ascii_lowercase().contains("upgrade"))
    );
    assert!(seen.header_values("sec-websocket-key").len() == 1);
}

#[tokio::test]
async fn an_app_that_switches_protocols_unasked_is_502() {
    let app = WsApp::start().await;
    let gw = gateway(&app).await;
    let c = client();
    // A plain request on a websocket route, and a handshake on a route without it: the
    // gateway asked for no upgrade, so the app's 101 is a broken answer.
    let response = c.get(gw.url("/bad-ws/switch")).send().await.unwrap();
    assert_error(response, 502, "bad_gateway").await;
    assert_eq!(
        ws_connect(&ws_url(&gw, "/bad/switch"), &[]).await.err(),
        Some(502)
    );
    // Asked for websocket, the app switches to something else: 502 too.
    assert_eq!(
        ws_connect(&ws_url(&gw, "/bad-ws/switch"), &[]).await.err(),
        Some(502)
    );
}

#[tokio::test]
async fn a_cookie_websocket_from_another_site_is_refused() {
    let app = WsApp::start().await;
    let gw = gateway(&app).await;
    let cookie = format!("at={}", valid_token());
    let own = format!("http://{}", gw.http);
    // Cross-site WebSocket hijacking: the browser attaches the cookie to another site's
    // handshake, and says where it comes from.
    assert_eq!(
        ws_connect(
            &ws_url(&gw, "/cookie-chat"),
            &[("cookie", &cookie), ("origin", "https://evil.example")]
        )
        .await
        .err(),
        Some(403)
    );
    assert!(app.handshakes().is_empty());
    let mut ws = ws_connect(
        &ws_url(&gw, "/cookie-chat"),
        &[("cookie", &cookie), ("origin", &own)],
    )
    .await
    .expect("same origin upgrades");
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(
        next_data(&mut ws, Duration::from_secs(2)).await,
        Some(Message::text("hi"))
    );
}

#[tokio::test]
async fn upgraded_connections_end_after_the_shutdown_grace() {
    let app = WsApp::start().await;
    let mut gw = gateway(&app).await;
    let bearer = format!("Bearer {}", valid_token());
    let mut ws = ws_connect(&ws_url(&gw, "/chat/x"), &[("authorization", &bearer)])
        .await
        .expect("upgraded");
    gw.begin_stop();
    // Within the grace (1 s) it still works.
    tokio::time::sleep(Duration::from_millis(300)).await;
    ws.send(Message::text("during the grace")).await.unwrap();
    assert!(next_data(&mut ws, Duration::from_secs(1)).await.is_some());
    // Then it is closed, and the gateway has stopped.
    assert_eq!(next_data(&mut ws, Duration::from_secs(3)).await, None);
    gw.stopped(Duration::from_secs(3)).await.unwrap();
}
