//! Real parts for the login tests: the `oidc-provider` IdP (node), a real `redis-server`,
//! and a small browser (cookie jar per host:port, redirects followed by hand so each hop
//! can be inspected).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use reqwest::Url;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const CLIENT_SECRET: &str = "test-client-secret-0123456789";
/// Two cookie keys (base64 of 32 bytes each).
pub const COOKIE_KEY_A: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
pub const COOKIE_KEY_B: &str = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";

fn idp_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/oidc")
}

/// The OpenID provider, running as a child process for the life of the value.
pub struct OidcIdp {
    pub issuer: String,
    child: Child,
}

impl OidcIdp {
    pub async fn start() -> OidcIdp {
        OidcIdp::start_with(&[]).await
    }

    /// `env`: e.g. `[("IDP_ID_TOKEN_TTL", "5")]`.
    pub async fn start_with(env: &[(&str, &str)]) -> OidcIdp {
        let dir = idp_dir();
        assert!(
            which("node"),
            "the login tests need Node.js (`node` on PATH): install it (Debian: apt-get install nodejs npm); \
             scripts/test.sh checks this"
        );
        assert!(
            dir.join("node_modules/oidc-provider").is_dir(),
            "the login tests need the oidc-provider package: run `npm ci --prefix tests/support/oidc` \
             (scripts/test.sh does it)"
        );
        let mut command = Command::new("node");
        command
            .arg(dir.join("idp.mjs"))
            .current_dir(&dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("cannot start node");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the IdP did not start within 30 s")
            .unwrap()
            .expect("the IdP exited before it was ready");
        let issuer = ready
            .strip_prefix("READY ")
            .unwrap_or_else(|| panic!("unexpected IdP output: {ready}"))
            .to_owned();
        // Keep draining its stdout so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        OidcIdp { issuer, child }
    }

    /// Registers client `client_id` with the gateways' callback and logout endpoints.
    pub async fn register(&self, client_id: &str, gateways: &[&crate::support::Gateway]) {
        self.register_with(client_id, gateways, "client_secret_basic")
            .await
    }

    /// `register` with a token endpoint auth method: `client_secret_basic`, or `none` for a
    /// public client (PKCE only, no secret).
    pub async fn register_with(
        &self,
        client_id: &str,
        gateways: &[&crate::support::Gateway],
        auth_method: &str,
    ) {
        let mut bases: Vec<String> = gateways.iter().map(|g| g.url("")).collect();
        bases.extend(
            gateways
                .iter()
                .filter(|g| g.https.is_some())
                .map(|g| g.https_url("")),
        );
        self.register_bases(client_id, &bases, gateways.len(), auth_method)
            .await
    }

    /// Registers client `client_id` for the gateways (or front proxies) at `bases`
    /// (`http://host:port`).
    pub async fn register_urls(&self, client_id: &str, bases: &[String]) {
        self.register_bases(client_id, bases, bases.len(), "client_secret_basic")
            .await
    }

    /// Registers a confidential service client that gets tokens with client_credentials
    /// (for `scope`) and may introspect and revoke them; its secret is `CLIENT_SECRET`.
    pub async fn register_service(&self, client_id: &str, scope: &str) {
        let metadata = json!({
            "client_id": client_id,
            "client_secret": CLIENT_SECRET,
            "redirect_uris": [],
            "grant_types": ["client_credentials"],
            "response_types": [],
            "scope": scope,
            "token_endpoint_auth_method": "client_secret_basic",
        });
        let response = crate::support::client()
            .post(format!("{}/__test/clients", self.issuer))
            .json(&metadata)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    }

    /// An opaque access token for service `client_id` (client_credentials).
    pub async fn service_token(&self, client_id: &str, scope: &str) -> String {
        let response = crate::support::client()
            .post(format!("{}/token", self.issuer))
            .basic_auth(client_id, Some(CLIENT_SECRET))
            .form(&[("grant_type", "client_credentials"), ("scope", scope)])
            .send()
            .await
            .unwrap();
        let body: serde_json::Value = response.json().await.unwrap();
        body["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no access token: {body}"))
            .to_owned()
    }

    /// Revokes `token` at the IdP (RFC 7009), as service `client_id`.
    pub async fn revoke(&self, client_id: &str, token: &str) {
        let response = crate::support::client()
            .post(format!("{}/token/revocation", self.issuer))
            .basic_auth(client_id, Some(CLIENT_SECRET))
            .form(&[("token", token)])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    }

    /// `bases`: the callback's origins; the first `plain` of them also get the logout URIs.
    async fn register_bases(
        &self,
        client_id: &str,
        bases: &[String],
        plain: usize,
        auth_method: &str,
    ) {
        let redirect_uris: Vec<String> = bases
            .iter()
            .map(|b| format!("{b}/_portcullis/callback"))
            .collect();
        let metadata = json!({
            "client_id": client_id,
            "client_secret": CLIENT_SECRET,
            "redirect_uris": redirect_uris,
            "post_logout_redirect_uris": bases[..plain].iter().map(|b| format!("{b}/bye")).collect::<Vec<_>>(),
            "backchannel_logout_uri": format!("{}/_portcullis/backchannel-logout", bases[0]),
            "backchannel_logout_session_required": true,
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": auth_method,
        });
        let mut metadata = metadata;
        if auth_method == "none" {
            metadata.as_object_mut().unwrap().remove("client_secret");
        }
        let response = crate::support::client()
            .post(format!("{}/__test/clients", self.issuer))
            .json(&metadata)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body = response.text().await.unwrap();
        assert_eq!(status, 201, "client registration refused: {body}");
    }

    pub fn kill(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join(program).is_file()))
}

/// The `[providers.idp]` and `[login]` tables for a gateway in front of `idp`.
/// `extra` is added to `[login]` (e.g. `store = "memory"`); keys and the client secret are
/// written to files in `dir`.
pub fn login_config(
    idp: &OidcIdp,
    client_id: &str,
    dir: &Path,
    keys: &[&str],
    extra: &str,
) -> String {
    let keys_file = dir.join(format!("{client_id}.keys"));
    std::fs::write(&keys_file, keys.join("\n")).unwrap();
    let secret_file = dir.join(format!("{client_id}.secret"));
    std::fs::write(&secret_file, CLIENT_SECRET).unwrap();
    format!(
        r#"
[providers.idp]
issuer = "{issuer}"
audiences = ["portcullis-api"]
algorithms = ["RS256"]
discovery = "{issuer}"

[login]
provider = "idp"
client_id = "{client_id}"
client_secret_file = "{secret}"
cookie_keys_file = "{keys}"
scopes = "openid email profile groups"
{extra}
"#,
        issuer = idp.issuer,
        secret = secret_file.display(),
        keys = keys_file.display(),
    )
}

/// Routes for the login tests: `/app` session only, `/mixed` JWT or session, `/deny`
/// session with on_unauthenticated = "deny", `/open` public.
pub const SESSION_ROUTES: &str = r#"
[[routes]]
name = "app"
path_prefix = "/app"
upstream = "app"
auth = "session"

[[routes]]
name = "mixed"
path_prefix = "/mixed"
upstream = "app"
auth = ["jwt", "session"]
providers = ["rsa"]

[[routes]]
name = "deny"
path_prefix = "/deny"
upstream = "app"
auth = "session"
on_unauthenticated = "deny"

[[routes]]
name = "staff"
path_prefix = "/staff"
upstream = "app"
auth = "session"
[routes.require]
claims = { groups = "sales" }

[[routes]]
name = "open"
path_prefix = "/open"
upstream = "app"
auth = "public"
"#;

/// A browser: one cookie jar keyed by host:port (cookie `Path` is ignored: every cookie of
/// a host is sent, which only makes the tests stricter), `Accept: text/html`.
pub struct Browser {
    http: reqwest::Client,
    jar: Mutex<HashMap<String, BTreeMap<String, String>>>,
}

/// One answer, with what the tests look at.
pub struct Page {
    pub url: Url,
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Page {
    pub fn location(&self) -> Option<Url> {
        self.headers
            .get("location")
            .map(|l| self.url.join(l.to_str().unwrap()).unwrap())
    }

    pub fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|_| panic!("not JSON: {}", self.body))
    }
}

fn authority(url: &Url) -> String {
    format!(
        "{}:{}",
        url.host_str().unwrap(),
        url.port_or_known_default().unwrap()
    )
}

impl Default for Browser {
    fn default() -> Self {
        Browser::new()
    }
}

impl Browser {
    pub fn new() -> Browser {
        Browser {
            http: reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            jar: Mutex::new(HashMap::new()),
        }
    }

    /// A browser that trusts the test certificate and finds `localhost` at the gateway's
    /// TLS listener.
    pub fn tls(gateway: &crate::support::Gateway) -> Browser {
        let cert =
            reqwest::Certificate::from_pem(crate::support::keys().tls_cert_pem.as_bytes()).unwrap();
        Browser {
            http: reqwest::Client::builder()
                .no_proxy()
                .tls_certs_only([cert])
                .resolve("localhost", gateway.https.unwrap())
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            jar: Mutex::new(HashMap::new()),
        }
    }

    /// The cookie `name` this browser holds for `url`'s host:port.
    pub fn cookie(&self, url: &str, name: &str) -> Option<String> {
        let url = Url::parse(url).unwrap();
        self.jar
            .lock()
            .unwrap()
            .get(&authority(&url))
            .and_then(|c| c.get(name).cloned())
    }

    pub fn set_cookie(&self, url: &str, name: &str, value: &str) {
        let url = Url::parse(url).unwrap();
        self.jar
            .lock()
            .unwrap()
            .entry(authority(&url))
            .or_default()
            .insert(name.to_owned(), value.to_owned());
    }

    pub fn remove_cookie(&self, url: &str, name: &str) {
        let url = Url::parse(url).unwrap();
        if let Some(c) = self.jar.lock().unwrap().get_mut(&authority(&url)) {
            c.remove(name);
        }
    }

    pub async fn get(&self, url: &str) -> Page {
        self.send(reqwest::Method::GET, Url::parse(url).unwrap(), None, &[])
            .await
    }

    /// A request with extra headers (they replace the browser's defaults).
    pub async fn send(
        &self,
        method: reqwest::Method,
        url: Url,
        form: Option<&[(&str, &str)]>,
        headers: &[(&str, &str)],
    ) -> Page {
        let mut request = self
            .http
            .request(method, url.clone())
            .header("accept", "text/html,application/xhtml+xml,*/*;q=0.8");
        let cookies = self
            .jar
            .lock()
            .unwrap()
            .get(&authority(&url))
            .map(|c| {
                c.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_default();
        if !cookies.is_empty() {
            request = request.header("cookie", cookies);
        }
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        if let Some(form) = form {
            request = request.form(form);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.text().await.unwrap();
        let page = Page {
            url,
            status,
            headers,
            body,
        };
        self.store(&page);
        page
    }

    fn store(&self, page: &Page) {
        let mut jar = self.jar.lock().unwrap();
        let cookies = jar.entry(authority(&page.url)).or_default();
        for set in page.set_cookies() {
            let first = set.split(';').next().unwrap();
            let (name, value) = first.split_once('=').unwrap();
            let lower = set.to_ascii_lowercase();
            let expired = lower.contains("max-age=0") || lower.contains("expires=thu, 01 jan 1970");
            if expired || value.is_empty() {
                cookies.remove(name.trim());
            } else {
                cookies.insert(name.trim().to_owned(), value.to_owned());
            }
        }
    }

    /// Follows redirects from `page` (at most 20); every page on the way is returned.
    pub async fn follow(&self, page: Page) -> Vec<Page> {
        self.follow_until(page, &|_| false).await
    }

    /// Like `follow`, but does not request a URL for which `stop` holds: the last page is
    /// then the redirect to it.
    pub async fn follow_until(&self, mut page: Page, stop: &dyn Fn(&Url) -> bool) -> Vec<Page> {
        let mut pages = Vec::new();
        for _ in 0..20 {
            match page.location() {
                Some(next) if (300..400).contains(&page.status) && !stop(&next) => {
                    pages.push(page);
                    page = self.send(reqwest::Method::GET, next, None, &[]).await;
                }
                _ => break,
            }
        }
        pages.push(page);
        pages
    }

    /// Opens `url`, and when the IdP's login form shows up, signs in as `user` (password
    /// "pw"), following every redirect. Returns every page seen, the last one last.
    pub async fn visit_and_login(&self, url: &str, user: &str) -> Vec<Page> {
        self.login_until(url, user, &|_| false).await
    }

    /// `visit_and_login`, stopping before any URL for which `stop` holds.
    pub async fn login_until(
        &self,
        url: &str,
        user: &str,
        stop: &dyn Fn(&Url) -> bool,
    ) -> Vec<Page> {
        let first = self.get(url).await;
        let mut pages = self.follow_until(first, stop).await;
        let last = pages.last().unwrap();
        if last.status == 200 && last.body.contains("name=\"login\"") {
            let action = last
                .body
                .split("action=\"")
                .nth(1)
                .and_then(|s| s.split('"').next())
                .expect("a login form with an action");
            let action = last.url.join(action).unwrap();
            let posted = self
                .send(
                    reqwest::Method::POST,
                    action,
                    Some(&[("login", user), ("password", "pw")]),
                    &[],
                )
                .await;
            pages.extend(self.follow_until(posted, stop).await);
        }
        pages
    }

    /// RP-initiated logout at the IdP for its session: the end-session page's form,
    /// confirmed. The IdP then sends back-channel logout tokens to the clients.
    pub async fn logout_at_idp(&self, idp: &OidcIdp) -> Page {
        let page = self.get(&format!("{}/session/end", idp.issuer)).await;
        assert_eq!(page.status, 200, "end-session page: {}", page.body);
        let xsrf = page
            .body
            .split("name=\"xsrf\" value=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap_or_else(|| panic!("no xsrf field in {}", page.body))
            .to_owned();
        let confirm = Url::parse(&format!("{}/session/end/confirm", idp.issuer)).unwrap();
        let posted = self
            .send(
                reqwest::Method::POST,
                confirm,
                Some(&[("xsrf", &xsrf), ("logout", "yes")]),
                &[],
            )
            .await;
        self.follow(posted).await.pop().unwrap()
    }
}

/// A real `redis-server` on a free loopback port, stopped on drop.
pub struct RedisServer {
    pub addr: SocketAddr,
    /// The TLS port, when started with `start_tls` (certificate: the test TLS certificate).
    pub tls_addr: Option<SocketAddr>,
    _dir: tempfile::TempDir,
    child: Child,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl RedisServer {
    pub async fn start() -> RedisServer {
        RedisServer::start_with(false).await
    }

    /// Also listening with TLS (the test certificate, for 127.0.0.1), no client certificates.
    pub async fn start_tls() -> RedisServer {
        RedisServer::start_with(true).await
    }

    async fn start_with(tls: bool) -> RedisServer {
        RedisServer::spawn(tls, &[], None).await
    }

    /// A replica of `primary`.
    pub async fn start_replica_of(primary: &RedisServer) -> RedisServer {
        let args = [
            "--replicaof".to_owned(),
            "127.0.0.1".to_owned(),
            primary.addr.port().to_string(),
        ];
        RedisServer::spawn(false, &args, None).await
    }

    /// A Redis Sentinel watching `primary` as service `service` (quorum 1, down after 1 s).
    pub async fn start_sentinel(primary: &RedisServer, service: &str) -> RedisServer {
        let conf = format!(
            "bind 127.0.0.1\nsentinel monitor {service} 127.0.0.1 {port} 1\n\
             sentinel down-after-milliseconds {service} 1000\n\
             sentinel failover-timeout {service} 10000\n",
            port = primary.addr.port()
        );
        RedisServer::spawn(false, &[], Some(conf)).await
    }

    /// `redis-server` on a free port with `args`; with `sentinel`, in Sentinel mode with
    /// that config (written into the server's folder: Sentinel rewrites it).
    async fn spawn(tls: bool, args: &[String], sentinel: Option<String>) -> RedisServer {
        assert!(
            which("redis-server"),
            "the Redis session tests need `redis-server` on PATH: apt-get install redis-server \
             (scripts/test.sh installs it)"
        );
        for _ in 0..10 {
            let port = free_port();
            let tls_port = tls.then(free_port);
            let dir = tempfile::tempdir().unwrap();
            let mut command = Command::new("redis-server");
            if let Some(conf) = &sentinel {
                let path = dir.path().join("sentinel.conf");
                std::fs::write(&path, conf).unwrap();
                command.arg(&path).arg("--sentinel");
            }
            command
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(args);
            if sentinel.is_none() {
                command
                    .args(["--save", "", "--appendonly", "no", "--dir"])
                    .arg(dir.path());
            }
            if let Some(tls_port) = tls_port {
                let keys = crate::support::keys();
                std::fs::write(dir.path().join("tls.crt"), &keys.tls_cert_pem).unwrap();
                std::fs::write(dir.path().join("tls.key"), &keys.tls_key_pem).unwrap();
                command
                    .args(["--tls-port", &tls_port.to_string()])
                    .arg("--tls-cert-file")
                    .arg(dir.path().join("tls.crt"))
                    .arg("--tls-key-file")
                    .arg(dir.path().join("tls.key"))
                    .args(["--tls-auth-clients", "no"]);
            }
            let child = command
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("cannot start redis-server");
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let mut server = RedisServer {
                addr,
                tls_addr: tls_port.map(|p| SocketAddr::from(([127, 0, 0, 1], p))),
                _dir: dir,
                child,
            };
            for _ in 0..50 {
                if server.ping().await {
                    return server;
                }
                if server.child.try_wait().unwrap().is_some() {
                    break; // the port was taken in between: try another
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = server.child.start_kill();
        }
        panic!("redis-server did not start");
    }

    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    async fn ping(&self) -> bool {
        self.command(&["PING"])
            .await
            .is_some_and(|r| r.starts_with("+PONG"))
    }

    /// One command in RESP; returns the raw reply (the tests only look at simple replies).
    pub async fn command(&self, args: &[&str]) -> Option<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(self.addr).await.ok()?;
        let mut request = format!("*{}\r\n", args.len());
        for a in args {
            request.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut buf = vec![0u8; 65536];
        let n = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf))
            .await
            .ok()?
            .ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    pub fn kill(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// A Redis Cluster of `redis-server`s on free ports (client and bus), each a primary with
/// a share of the slots, made by `redis-cli --cluster create`.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub async fn start(size: usize) -> RedisCluster {
        assert!(
            which("redis-cli"),
            "the Redis Cluster tests need `redis-cli` on PATH (Debian package redis-tools, \
             installed with redis-server; scripts/test.sh installs it)"
        );
        let mut nodes = Vec::new();
        for _ in 0..size {
            let args = [
                "--cluster-enabled".to_owned(),
                "yes".to_owned(),
                "--cluster-config-file".to_owned(),
                "nodes.conf".to_owned(),
                "--cluster-port".to_owned(),
                free_port().to_string(),
            ];
            nodes.push(RedisServer::spawn(false, &args, None).await);
        }
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(nodes.iter().map(|n| n.addr.to_string()))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .status()
            .await
            .expect("cannot run redis-cli");
        assert!(created.success(), "redis-cli --cluster create failed");
        for node in &nodes {
            until_reply(node, &["CLUSTER", "INFO"], "cluster_state:ok").await;
        }
        RedisCluster { nodes }
    }

    /// `redis+cluster://` naming only the first node: the others are found from it.
    pub fn url(&self) -> String {
        format!("redis+cluster://{}", self.nodes[0].addr)
    }

    /// How many keys match `pattern` on each node.
    pub async fn keys(&self, pattern: &str) -> Vec<usize> {
        let mut counts = Vec::new();
        for node in &self.nodes {
            let reply = node.command(&["KEYS", pattern]).await.unwrap();
            let count = reply
                .strip_prefix('*')
                .and_then(|r| r.split("\r\n").next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("not a KEYS reply: {reply:?}"));
            counts.push(count);
        }
        counts
    }
}

/// Asks `server` until the reply contains `needle` (at most 20 s).
pub async fn until_reply(server: &RedisServer, args: &[&str], needle: &str) {
    let started = std::time::Instant::now();
    loop {
        if server
            .command(args)
            .await
            .is_some_and(|r| r.contains(needle))
        {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{args:?} never said {needle:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
