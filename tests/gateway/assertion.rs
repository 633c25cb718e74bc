//! `[identity] assertion`: the signed identity JWT, checked by an app that verifies it the
//! way a real one would, with `jsonwebtoken` and the JWKS the gateway serves.

use std::sync::{Arc, Mutex, OnceLock};

use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::support::*;

/// An app that trusts nothing but a valid assertion: it fetches the gateway's JWKS, checks
/// the signature, `iss`, `aud`, `exp` and that `htm`/`rth` name the very request it got;
/// more than one assertion field is refused too.
/// 200 with the asserted claims, or 401 with the reason.
struct App {
    addr: std::net::SocketAddr,
    jwks_url: Arc<OnceLock<String>>,
    /// The assertions it received, in order.
    received: Arc<Mutex<Vec<Option<String>>>>,
}

impl App {
    async fn start(audiences: &'static [&'static str]) -> App {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let jwks_url: Arc<OnceLock<String>> = Arc::default();
        let received: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
        let (url, seen) = (jwks_url.clone(), received.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (url, seen) = (url.clone(), seen.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let (url, seen) = (url.clone(), seen.clone());
                        async move {
                            let assertion = request
                                .headers()
                                .get("x-auth-assertion")
                                .map(|v| v.to_str().unwrap().to_owned());
                            seen.lock().unwrap().push(assertion.clone());
                            let target = request.uri().path_and_query().unwrap().as_str();
                            let count =
                                request.headers().get_all("x-auth-assertion").iter().count();
                            let verdict = match assertion {
                                None => Err("no assertion".to_owned()),
                                Some(_) if count > 1 => Err("several assertions".to_owned()),
                                Some(token) => {
                                    let jwks = fetch_jwks(url.get().unwrap()).await;
                                    check(
                                        &jwks,
                                        &token,
                                        audiences,
                                        request.method().as_str(),
                                        target,
                                    )
                                }
                            };
                            let (status, body) = match verdict {
                                Ok(claims) => (200, claims),
                                Err(why) => (401, json!({ "error": why })),
                            };
                            Ok::<_, std::convert::Infallible>(
                                Response::builder()
                                    .status(status)
                                    .body(Full::new(bytes::Bytes::from(body.to_string())))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        App {
            addr,
            jwks_url,
            received,
        }
    }

    fn last(&self) -> Option<String> {
        self.received.lock().unwrap().last().cloned().flatten()
    }

    /// Sends a request straight to the app (as a process on its network could).
    async fn direct(&self, method: &str, target: &str, assertion: &str) -> (u16, Value) {
        let response = client()
            .request(
                method.parse().unwrap(),
                format!("http://{}{target}", self.addr),
            )
            .header("x-auth-assertion", assertion)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }
}

async fn fetch_jwks(url: &str) -> JwkSet {
    client()
        .get(url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// What an app does with the assertion.
fn check(
    jwks: &JwkSet,
    token: &str,
    audiences: &[&str],
    method: &str,
    target: &str,
) -> Result<Value, String> {
    let header = decode_header(token).map_err(|e| e.to_string())?;
    let jwk = jwks
        .find(header.kid.as_deref().ok_or("no kid")?)
        .ok_or("unknown kid")?;
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_issuer(&["portcullis-test"]);
    validation.set_audience(audiences);
    validation.leeway = 0;
    let claims = decode::<Value>(token, &DecodingKey::from_jwk(jwk).unwrap(), &validation)
        .map_err(|e| e.to_string())?
        .claims;
    if claims["htm"] != method {
        return Err("htm".into());
    }
    if claims["rth"] != rth(method, target) {
        return Err("rth".into());
    }
    Ok(claims)
}

fn rth(method: &str, target: &str) -> String {
    use base64::Engine;
    let digest = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        format!("{method} {target}").as_bytes(),
    );
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest)
}

fn ec_key_pem() -> String {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .unwrap()
        .serialize_pem()
}

/// The standard providers, `app` as the upstream, routes `/public`, `/api` (jwt) and
/// `/mounted` (jwt, upstream `legacy`: the same app mounted there), the assertion with `keys`.
async fn gateway(app: &App, key_setting: &str, extra: &str) -> Gateway {
    let text = config(
        app.addr,
        &format!(
            r#"
[identity.assertion]
issuer = "portcullis-test"
{key_setting}
{extra}

[[routes]]
name = "public"
path_prefix = "/public"
upstream = "app"
auth = "public"

[[routes]]
name = "api"
path_prefix = "/api"
upstream = "app"
auth = "jwt"

[upstreams.legacy]
url = "http://{app}"
path_prefix = "/"

[[routes]]
name = "mounted"
path_prefix = "/mounted"
upstream = "legacy"
auth = "jwt"
"#,
            app = app.addr
        ),
    )
    // The admin listener, to serve the JWKS there too.
    .replace(
        "https = \"127.0.0.1:0\"",
        "https = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"",
    );
    let gw = Gateway::start(&text).await;
    app.jwks_url
        .set(gw.url("/.well-known/portcullis/jwks.json"))
        .unwrap();
    gw
}

fn key_files(n: usize) -> (tempfile::TempDir, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let paths = (0..n)
        .map(|i| {
            let path = dir.path().join(format!("assertion-{i}.pem"));
            std::fs::write(&path, ec_key_pem()).unwrap();
            path.display().to_string()
        })
        .collect();
    (dir, paths)
}

async fn get(
    gw: &Gateway,
    path: &str,
    token: Option<&str>,
    extra: &[(&str, &str)],
) -> (u16, Value) {
    let mut request = client().get(gw.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn the_app_verifies_the_assertion_and_refuses_tampered_and_replayed_ones() {
    let app = App::start(&["app", "legacy"]).await;
    let (_dir, keys) = key_files(1);
    let gw = gateway(&app, &format!("key_file = {:?}", keys[0]), "").await;
    let token = token(
        Algorithm::RS256,
        &claims(json!({"email": "alice@example.com", "groups": ["crm"], "secret": "x"})),
    );

    // Through the gateway: the app accepts it, and it carries the identity.
    let (status, asserted) = get(&gw, "/api/orders?id=7", Some(&token), &[]).await;
    assert_eq!(status, 200, "{asserted}");
    assert_eq!(asserted["sub"], "alice");
    assert_eq!(asserted["email"], "alice@example.com");
    assert_eq!(asserted["groups"], json!(["crm"]));
    assert_eq!(asserted["aud"], "app");
    assert_eq!(asserted["htm"], "GET");
    assert!(
        asserted.get("secret").is_none(),
        "an unmapped claim was asserted"
    );
    assert_eq!(
        asserted["exp"].as_u64().unwrap() - asserted["iat"].as_u64().unwrap(),
        60
    );
    let genuine = app.last().unwrap();

    // Straight to the app: the genuine assertion on its own request passes (the app's
    // check is not a stub), the same assertion on another path, query or method does not.
    assert_eq!(app.direct("GET", "/api/orders?id=7", &genuine).await.0, 200);
    for (method, target) in [
        ("GET", "/api/orders?id=8"),
        ("GET", "/api/admin"),
        ("DELETE", "/api/orders?id=7"),
    ] {
        let (status, why) = app.direct(method, target, &genuine).await;
        assert_eq!(
            status, 401,
            "{method} {target} accepted a replayed assertion"
        );
        assert!(why["error"] == "rth" || why["error"] == "htm", "{why}");
    }
    // Tampered: another subject in the payload, the signature kept.
    let mut parts: Vec<String> = genuine.split('.').map(str::to_owned).collect();
    {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut payload: Value = serde_json::from_slice(&b64.decode(&parts[1]).unwrap()).unwrap();
        payload["sub"] = json!("admin");
        parts[1] = b64.encode(payload.to_string());
    }
    let (status, why) = app
        .direct("GET", "/api/orders?id=7", &parts.join("."))
        .await;
    assert_eq!(status, 401);
    assert_eq!(why["error"], "InvalidSignature");

    // A client's own assertion never reaches the app, in any spelling, public routes too;
    // on an authenticated route the gateway's replaces it.
    let (status, why) = get(&gw, "/public/x", None, &[("X-Auth-Assertion", &genuine)]).await;
    assert_eq!((status, why["error"].as_str()), (401, Some("no assertion")));
    let raw = raw_request(
        gw.http,
        format!("GET /public/x HTTP/1.1\r\nHost: t\r\nX_Auth_Assertion: {genuine}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&raw), 401, "{raw}");
    let other = crate::support::token(Algorithm::RS256, &claims(json!({"sub": "bob"})));
    let (status, asserted) = get(
        &gw,
        "/api/orders?id=7",
        Some(&other),
        &[("x-auth-assertion", &genuine)],
    )
    .await;
    assert_eq!((status, asserted["sub"].as_str()), (200, Some("bob")));

    // Under a mount the binding is to the target the app receives.
    let (status, asserted) = get(&gw, "/mounted/orders?id=7", Some(&token), &[]).await;
    assert_eq!(status, 200, "{asserted}");
    assert_eq!(asserted["rth"], rth("GET", "/orders?id=7"));
    assert_eq!(asserted["aud"], "legacy");
    gw.stop().await;
}

#[tokio::test]
async fn an_expired_assertion_is_refused_and_a_fresh_one_is_sent() {
    let app = App::start(&["app", "legacy"]).await;
    let (_dir, keys) = key_files(1);
    let gw = gateway(
        &app,
        &format!("key_file = {:?}", keys[0]),
        "lifetime = \"2s\"",
    )
    .await;
    let token = valid_token();
    assert_eq!(get(&gw, "/api/x", Some(&token), &[]).await.0, 200);
    let first = app.last().unwrap();
    // Reused within half the lifetime at most; after the lifetime the old one is refused.
    tokio::time::sleep(std::time::Duration::from_millis(3100)).await;
    let (status, why) = app.direct("GET", "/api/x", &first).await;
    assert_eq!(
        (status, why["error"].as_str()),
        (401, Some("ExpiredSignature"))
    );
    assert_eq!(get(&gw, "/api/x", Some(&token), &[]).await.0, 200);
    assert_ne!(app.last().unwrap(), first);
    gw.stop().await;
}

#[tokio::test]
async fn rotation_publishes_both_keys_on_the_listeners_and_the_admin_listener() {
    let app = App::start(&["app", "legacy"]).await;
    let (_dir, keys) = key_files(2);
    let gw = gateway(
        &app,
        &format!("key_files = [{:?}, {:?}]", keys[0], keys[1]),
        "",
    )
    .await;
    let on_listener = fetch_jwks(&gw.url("/.well-known/portcullis/jwks.json")).await;
    assert_eq!(on_listener.keys.len(), 2);
    // The admin listener serves them without the admin token (they are public).
    let on_admin = client()
        .get(gw.admin_url("/.well-known/portcullis/jwks.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(on_admin.status(), 200);
    assert_eq!(on_admin.headers()["content-type"], "application/json");
    let on_admin: JwkSet = on_admin.json().await.unwrap();
    assert_eq!(
        serde_json::to_value(&on_admin).unwrap(),
        serde_json::to_value(&on_listener).unwrap()
    );
    // Signed with the first key.
    assert_eq!(get(&gw, "/api/x", Some(&valid_token()), &[]).await.0, 200);
    let kid = decode_header(app.last().unwrap()).unwrap().kid.unwrap();
    assert_eq!(on_listener.keys[0].common.key_id.as_deref(), Some(&*kid));
    // `explain` describes the assertion without printing one; `check` lists it per route.
    let snapshot = gw.shared.load();
    let evaluation = portcullis::explain::evaluate(
        &snapshot,
        "GET",
        "http://t/mounted/x?y=1",
        &portcullis::explain::Credential::Token(valid_token()),
        &[],
    )
    .await
    .unwrap();
    let report = evaluation.report();
    assert!(
        report.contains("x-auth-assertion: <ES256 JWT signed by the gateway: aud legacy, sub alice, for GET /x?y=1, valid 60 s>"),
        "{report}"
    );
    let summaries = portcullis::check::route_summaries(&snapshot);
    let api = summaries
        .iter()
        .find(|l| l.starts_with("route api:"))
        .unwrap();
    assert!(
        api.ends_with("; asserts the identity in x-auth-assertion (ES256)"),
        "{api}"
    );
    let public = summaries
        .iter()
        .find(|l| l.starts_with("route public:"))
        .unwrap();
    assert!(!public.contains("asserts"), "{public}");
    // Only GET and HEAD; the endpoint is the gateway's, before any route.
    let post = client()
        .post(gw.url("/.well-known/portcullis/jwks.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 405);
    assert_eq!(post.headers()["allow"], "GET, HEAD");
    gw.stop().await;
}

#[tokio::test]
async fn a_bad_assertion_setting_names_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let rsa = dir.path().join("rsa.pem");
    std::fs::write(
        &rsa,
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
            .unwrap()
            .serialize_pem(),
    )
    .unwrap();
    for (setting, key) in [
        (String::new(), "identity.assertion"),
        (
            format!("key_file = {:?}", rsa.display().to_string()),
            "identity.assertion.key_file",
        ),
        (
            "key_file = \"missing.pem\"".to_owned(),
            "identity.assertion.key_file",
        ),
        (
            "key_file = \"x\"\nalgorithm = \"RS256\"".to_owned(),
            "identity.assertion.algorithm",
        ),
        (
            "key_file = \"x\"\nheader = \"X-Auth-User\"".to_owned(),
            "identity.assertion.header",
        ),
        (
            "key_file = \"x\"\nlifetime = \"1s\"".to_owned(),
            "identity.assertion.lifetime",
        ),
    ] {
        let text = config(
            "127.0.0.1:9".parse().unwrap(),
            &format!("[identity.assertion]\n{setting}\n"),
        );
        let error = Gateway::try_start(&text).await.err().expect(&setting);
        assert!(error.contains(key), "{setting}: {error}");
    }
}
