//! The TOML file as the operator writes it: serde types only, no validation beyond shape.
//!
//! Every table denies unknown keys, so a typo (`path_prefx`) is an error instead of a
//! silently ignored rule. Defaults are documented on each field; `compile.rs` turns these
//! into runtime types and checks everything else.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Listeners and connection-level settings. Required: without a listener nothing is served.
    pub server: RawServer,
    /// TLS certificate for the `https` listener. Required when `server.https` is set.
    pub tls: Option<RawTls>,
    /// JWT issuers by name. Default: none (then only `public` routes are possible).
    #[serde(default)]
    pub providers: BTreeMap<String, RawProvider>,
    /// Upstreams by name. At least one is needed for any route.
    #[serde(default)]
    pub upstreams: BTreeMap<String, RawUpstream>,
    /// How the verified identity reaches upstreams. Default: no identity headers.
    #[serde(default)]
    pub identity: RawIdentity,
    /// The route rules. Order does not matter: the most specific match wins.
    #[serde(default)]
    /// Boxed: compiling consumes them one at a time and frees each (a 100k-route file holds
    /// 60 MB of them).
    pub routes: Vec<Box<RawRoute>>,
    /// Rule tests that `portcullis check` runs; ignored by `serve`.
    #[serde(default)]
    pub tests: Vec<RawRuleTest>,
    /// Browser login through an OpenID provider, for `auth = "session"` routes. Default: none.
    pub login: Option<RawLogin>,
    /// The forward-auth endpoint for a front proxy (nginx `auth_request`, Traefik, Caddy).
    /// Default: none.
    pub forward_auth: Option<RawForwardAuth>,
    /// Static keys for machine clients, for `auth = "api_key"` routes. Default: none.
    pub api_keys: Option<RawApiKeys>,
    /// Redis shared by the instances: the revocation denylist (logout, back-channel logout
    /// and admin `POST /revoke` reach every instance) and `rate_limit.shared = "redis"`.
    /// Default: none.
    pub redis: Option<RawRedis>,
}

/// `[redis]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    /// `redis://[:password@]host:port[/db]` or `rediss://`. One of this and `url_env`.
    pub url: Option<String>,
    /// Env var holding the URL (when it carries a password).
    pub url_env: Option<String>,
    /// PEM CA bundle trusted for `rediss://` instead of the system roots.
    pub ca_file: Option<String>,
    /// Key prefix. Default `portcullis:`.
    pub prefix: Option<String>,
    /// Connect and command timeout. Default `2s`.
    pub timeout: Option<String>,
}

/// `[api_keys]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApiKeys {
    /// The keys file (TOML: `[[keys]]` with `sha256`, `sub`, `scopes`, `claims`), reloaded
    /// with the config. Required.
    pub file: String,
    /// The header a key is read from. Default `"X-API-Key"`.
    pub header: Option<String>,
    /// Or `Authorization: <scheme> KEY`. Default `"ApiKey"`.
    pub scheme: Option<String>,
}

/// `[forward_auth]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawForwardAuth {
    /// The endpoint's path on the listeners. Default `/_portcullis/auth`.
    pub path: Option<String>,
    /// A listener of its own that serves the endpoint and nothing else (e.g.
    /// `"127.0.0.1:9091"`, beside the front proxy). Default: none.
    pub listen: Option<String>,
}

/// `[login]`: the OIDC client and its sessions.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLogin {
    /// A `[providers.NAME]` with `discovery`: its endpoints and keys are used. Required.
    pub provider: String,
    /// The client id registered at the IdP. Required.
    pub client_id: String,
    /// Env var holding the client secret (client_secret_basic). Without a secret the
    /// gateway is a public client (PKCE only).
    pub client_secret_env: Option<String>,
    /// File holding the client secret (one line), instead of `client_secret_env`.
    pub client_secret_file: Option<String>,
    /// Callback path on every host. Default `/_portcullis/callback`.
    pub redirect_path: Option<String>,
    /// Absolute callback URL, when a front proxy changes scheme or host. Default: built from
    /// the request (`http(s)://HOST/redirect_path`).
    pub redirect_url: Option<String>,
    /// Space-separated or a list. Default `"openid email profile"`; must contain `openid`.
    pub scopes: Option<RawScopes>,
    /// Default `__Host-portcullis` (without the prefix on plain HTTP).
    pub cookie_name: Option<String>,
    /// Env var with the cookie keys: base64 32-byte keys separated by commas or spaces; the
    /// first seals, all open (rotation). One of this or `cookie_keys_file` is required.
    pub cookie_keys_env: Option<String>,
    /// File with the cookie keys, one per line.
    pub cookie_keys_file: Option<String>,
    /// `Secure` on the cookies. Default: when the request came over TLS.
    pub cookie_secure: Option<bool>,
    /// `"cookie"` (default), `"memory"` or `"redis"`.
    pub store: Option<String>,
    /// `redis://[:password@]host:port[/db]` (or `rediss://`). Required with store = "redis".
    pub redis_url: Option<String>,
    /// Env var holding the Redis URL instead (when it carries a password).
    pub redis_url_env: Option<String>,
    /// PEM CA bundle trusted for `rediss://` instead of the system roots. Default: none.
    pub redis_ca_file: Option<String>,
    /// Key prefix in Redis. Default `portcullis:`.
    pub redis_prefix: Option<String>,
    /// Connect and command timeout for Redis. Default `2s`.
    pub redis_timeout: Option<String>,
    /// Sessions kept by store = "memory" at most. Default 100000.
    pub max_sessions: Option<u64>,
    /// A session without requests for this long ends. Default `2h`.
    pub idle_timeout: Option<String>,
    /// A session ends this long after login, whatever happens. Default `12h`.
    pub lifetime: Option<String>,
    /// Hosts that `rd` return URLs may name besides the request's own. Default none.
    #[serde(default)]
    pub allowed_redirect_hosts: Vec<String>,
    /// Sent to the IdP's end_session_endpoint as post_logout_redirect_uri (must be
    /// registered there). Default: none.
    pub post_logout_redirect_url: Option<String>,
    /// Send the session's access token to the app on every session route, in this header
    /// (e.g. `"X-Forwarded-Access-Token"`); routes may override. Default: not sent.
    pub forward_access_token: Option<String>,
    /// The same for the session's ID token (e.g. `"X-Forwarded-Id-Token"`). Default: not
    /// sent.
    pub forward_id_token: Option<String>,
}

/// A route's `forward_access_token` / `forward_id_token`: a header name, `true` (the
/// `[login]` header, or the usual name), or `false` (not on this route).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawForwardSetting {
    Header(String),
    On(bool),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawScopes {
    Text(String),
    List(Vec<String>),
}

/// `auth = "jwt"` or `auth = ["jwt", "session"]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawAuth {
    One(String),
    Many(Vec<String>),
}

/// `[[tests]]`: a request, a credential, and the expected outcome.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRuleTest {
    /// Shown in the report. Required.
    pub name: Option<String>,
    /// `"METHOD URL"`, e.g. `"GET https://crm.example.com/api/x"`. Required.
    pub request: Option<String>,
    /// Claims taken as verified (the signature is not checked). No `claims`: no token.
    pub claims: Option<toml::Table>,
    /// Expected status (200 stands for "forwarded").
    pub expect_status: Option<u16>,
    /// Expected route name (`"-"`: no route).
    pub expect_route: Option<String>,
    /// Expected path and query the app receives (after `path_prefix` / `strip_prefix`).
    pub expect_upstream_target: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// Plain-HTTP listener address (`"127.0.0.1:8080"`). Optional.
    pub http: Option<String>,
    /// TLS listener address. Optional; needs `[tls]`.
    pub https: Option<String>,
    /// Admin listener (`/healthz`, `/readyz`, `/metrics`, `POST /reload`). Off unless set;
    /// keep it on a private interface.
    pub admin: Option<String>,
    /// Env var holding a token the admin listener then requires (`Authorization: Bearer
    /// TOKEN`) for everything but `/healthz` and `/readyz`. Required when `admin` is not a
    /// loopback address.
    pub admin_token_env: Option<String>,
    /// File holding that token (one line), instead of `admin_token_env`.
    pub admin_token_file: Option<String>,
    /// Probe-only listener: `GET /healthz` and `GET /readyz`, nothing else (for
    /// Kubernetes probes and Docker `HEALTHCHECK` on the pod IP). Off unless set.
    pub health: Option<String>,
    /// Reload when the config file changes (polled every second, debounced). Default true.
    pub watch_config: Option<bool>,
    /// CIDRs whose `X-Forwarded-*` / `Forwarded` / `X-Real-IP` headers are kept and appended
    /// to. Default: none, so those headers are dropped and rewritten for every client.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Time a client has to send its request headers (slowloris guard). Default `"10s"`.
    pub header_read_timeout: Option<String>,
    /// Time a client has to finish the TLS handshake. Default `"10s"`.
    pub tls_handshake_timeout: Option<String>,
    /// In-flight requests get this long to finish on shutdown. Default `"30s"`.
    pub shutdown_grace: Option<String>,
    /// On SIGTERM, `/readyz` answers 503 at once and the listeners keep accepting this long
    /// before they close (and `shutdown_grace` starts): time for a load balancer or the
    /// Kubernetes endpoints controller to stop sending new connections. Default `"0s"`.
    pub shutdown_delay: Option<String>,
    /// Linux: the client listeners wake for a new connection only once it has sent its
    /// first bytes, or this long after the handshake (`TCP_DEFER_ACCEPT`, whole seconds);
    /// `"0s"` wakes at once. Default `"1s"`.
    pub defer_accept: Option<String>,
    /// Open client connections at most; beyond it new connections wait in the listen
    /// backlog. Default 10000.
    pub max_connections: Option<usize>,
    /// Request header block size limit (names + values), 431 beyond. Default `"32KiB"`.
    pub max_header_bytes: Option<RawSize>,
    /// Number of request headers, 431 beyond. Default 100.
    pub max_headers: Option<usize>,
    /// Request-target (path and query) length, 414 beyond. Default `"8KiB"`.
    pub max_uri_bytes: Option<RawSize>,
    /// Default request body limit for every route, 413 beyond. Default: none.
    pub max_body_size: Option<RawSize>,
    /// Longest silence between two pieces of a request body, then 408. Default `"30s"`.
    pub request_body_timeout: Option<String>,
    /// Entries of the verified-token cache (shared by all providers). Default 100000.
    pub token_cache_size: Option<u64>,
    /// HTTP/2 concurrent streams per connection. Default 100.
    pub http2_max_concurrent_streams: Option<u32>,
    /// Longest time a write to the client may make no progress (a client that stopped
    /// reading); then the connection and its upstream connection are closed. Default `"60s"`.
    pub client_write_timeout: Option<String>,
    /// Origins (`https://portal.example.com`) whose pages may send cookie-authenticated
    /// state-changing requests to this gateway (a partner's form, an SSO portal). Default:
    /// none, only the request's own origin.
    #[serde(default)]
    pub trusted_origins: Vec<String>,
    /// A request id in this field (e.g. `"X-Request-Id"`): kept from a trusted proxy,
    /// generated (UUID v4) otherwise, sent upstream, returned to the client, logged.
    /// Default: none.
    pub request_id: Option<String>,
}

/// A size: an integer number of bytes or a string such as `"10MiB"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawSize {
    Bytes(u64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// PEM certificate chain, leaf first.
    pub cert: String,
    /// PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub key: String,
    /// PEM CA certificate(s) that sign client certificates: the listener then asks for one
    /// (for `auth = "mtls"` routes). Default: none, no client certificates.
    pub client_ca: Option<String>,
    /// `"optional"` (default: connections without a certificate are served, `mtls` routes
    /// answer them 401) or `"required"` (the handshake fails without one).
    pub client_auth: Option<String>,
    /// PEM CRL file(s) of the client CA: revoked certificates fail the handshake; reloaded
    /// with the config. Default: none.
    pub client_crl: Option<RawOneOrMany>,
    /// Which name of a client certificate is its `sub`: the first present of these
    /// (`"san_uri"`, `"san_email"`, `"san_dns"`, `"cn"`). Default: that order.
    pub identity_from: Option<RawOneOrMany>,
}

/// One text or a list of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawOneOrMany {
    One(String),
    Many(Vec<String>),
}

impl RawOneOrMany {
    pub fn items(&self) -> Vec<&str> {
        match self {
            RawOneOrMany::One(one) => vec![one.as_str()],
            RawOneOrMany::Many(many) => many.iter().map(String::as_str).collect(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    /// The exact `iss` value tokens of this provider carry. Required.
    pub issuer: String,
    /// `aud` must contain one of these. Required and non-empty: a token minted for another
    /// application must never be accepted here.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Allow-list of JWT algorithms. Required and non-empty; the token's header never widens it.
    #[serde(default)]
    pub algorithms: Vec<String>,
    /// Verification keys: a PEM file path, or `{ file = "...", kid = "..." }` to bind the key
    /// to one `kid`. A key without a `kid` is tried for any token of its algorithm family.
    #[serde(default)]
    pub public_keys: Vec<RawPublicKey>,
    /// Name of the environment variable holding the HMAC secret (HS256/384/512).
    pub hmac_secret_env: Option<String>,
    /// Or: a file holding the HMAC secret (a mounted secret); one trailing newline is ignored.
    pub hmac_secret_file: Option<String>,
    /// Clock skew allowed on `exp`, `nbf` and `iat`. Default `"30s"`.
    pub leeway: Option<String>,
    /// A local JWKS file (keys chosen by `kid`).
    pub jwks_file: Option<String>,
    /// A JWKS URL, fetched and kept fresh.
    pub jwks_url: Option<String>,
    /// The issuer's base URL: `/.well-known/openid-configuration` gives `issuer` (must equal
    /// `issuer`) and `jwks_uri`. Exclusive with `jwks_url`.
    pub discovery: Option<String>,
    /// Period of background key refreshes (shortened by the JWKS `Cache-Control: max-age`,
    /// never below `min_refresh_interval`). Default `"5m"`.
    pub refresh_interval: Option<String>,
    /// At most one fetch per this interval for unknown kids, and the retry pace while the
    /// IdP fails. Default `"30s"`.
    pub min_refresh_interval: Option<String>,
    /// Time limit of one IdP request. Default `"10s"`.
    pub fetch_timeout: Option<String>,
    /// Refuse to start until this provider's keys were fetched. Default false: start, retry
    /// with backoff, deny its tokens until keys arrive.
    #[serde(default)]
    pub require_keys_at_start: bool,
    /// Extra PEM CA certificate(s) for HTTPS to the IdP (besides the system roots).
    pub ca_file: Option<String>,
    /// How long a verified token may be reused from the cache (bounded by its `exp`).
    /// `"0s"` disables caching for this provider. Default `"5m"`.
    pub cache_ttl: Option<String>,
    /// RFC 7662 introspection for tokens that are not JWTs (opaque access tokens). With it,
    /// `algorithms` may be empty: the provider then only introspects. Default: none.
    pub introspection: Option<RawIntrospection>,
    /// Introspect JWTs too, after their signature checked out (revocation at the issuer).
    /// Default false.
    #[serde(default)]
    pub introspect_jwts: bool,
}

/// `introspection = { url = "...", client_id = "...", client_secret_env = "..." }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIntrospection {
    /// The issuer's introspection endpoint. Required.
    pub url: String,
    /// The gateway's client at the issuer (HTTP Basic). Required.
    pub client_id: String,
    /// Env var holding its secret; or `client_secret_file`. One is required.
    pub client_secret_env: Option<String>,
    pub client_secret_file: Option<String>,
    /// How long an active answer is reused (never past the token's `exp`). Default `"60s"`.
    pub cache_ttl: Option<String>,
    /// How long an inactive answer is reused. Default `"10s"`.
    pub negative_ttl: Option<String>,
    /// Answers kept at most. Default 100000.
    pub cache_size: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawPublicKey {
    Path(String),
    Detailed(RawKeyFile),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKeyFile {
    pub file: String,
    pub kid: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    /// `http://host:port` or `https://host:port` of the app. Exactly one of `url` and
    /// `builtin`.
    pub url: Option<String>,
    /// A built-in upstream instead of `url`; only `"echo"` exists.
    pub builtin: Option<String>,
    /// Time to wait for the upstream's response headers before answering 504. Default `"30s"`.
    pub timeout: Option<String>,
    /// Longest silence between two pieces of the response body; then the stream to the
    /// client is cut. Default `"60s"`.
    pub body_timeout: Option<String>,
    /// Time to establish a TCP connection before answering 502. Default `"5s"`.
    pub connect_timeout: Option<String>,
    /// Idle pooled connections kept per upstream and worker thread. Default 256.
    pub pool_max_idle: Option<usize>,
    /// How long an idle pooled connection is kept. Default `"90s"`.
    pub pool_idle_timeout: Option<String>,
    /// How the app reads paths, for reading agreement (invariant I9): `"strict"` (every
    /// reading a common backend makes must land on the authorized route's policy),
    /// `"servlet"` (Tomcat, Jetty, Spring: `;params` stripped, decoded once, trailing
    /// slash) or `"iis"` (IIS, ASP.NET: case folded, decoded twice, `\` as `/`, trailing
    /// slash). Default `"strict"`.
    pub path_semantics: Option<String>,
    /// `https://` only: PEM CA certificates trusted for this upstream in addition to the
    /// system's roots (there is no option to skip verification).
    pub ca_file: Option<String>,
    /// `https://` only: the name the app's certificate must carry and the SNI sent; default
    /// the URL's host (an IP address is verified against the certificate's IP addresses).
    pub server_name: Option<String>,
    /// `https://` only: PEM client certificate chain for mTLS to the app (with `client_key`).
    pub client_cert: Option<String>,
    /// `https://` only: PEM private key of `client_cert`.
    pub client_key: Option<String>,
    /// The app's own path prefix: a route's mount (its `strip_prefix`, else its matched
    /// prefix) is replaced by it, segment-wise (`/crm/x` -> `/x` with `"/"`). Default: paths
    /// are forwarded as they are.
    pub path_prefix: Option<String>,
    /// The `Host` sent to the app. Default: the client's.
    pub host: Option<String>,
    /// `Location`, `Content-Location` and `Refresh` pointing at the app's own origin are
    /// rewritten to the client's origin (and paths under `path_prefix` back under the
    /// mount). Default true.
    pub rewrite_redirects: Option<bool>,
    /// `Set-Cookie` paths under `path_prefix` are mapped back under the mount. Default true.
    pub rewrite_cookie_paths: Option<bool>,
    /// Several instances of the app, instead of `url`: `["http://10.0.0.5:8080", ...]`
    /// (all http:// or all https://).
    pub targets: Option<Vec<String>>,
    /// How requests are spread over `targets`: `"round_robin"` (default) or
    /// `"least_requests"` (two random choices, fewer requests in flight wins).
    pub balance: Option<String>,
    /// Active checks of each target; without it, targets are only ejected passively.
    pub health_check: Option<RawHealthCheck>,
    /// Consecutive failures (no connection, a broken answer, a 502) that take a target out.
    /// Default 5; 0: never.
    pub eject_after: Option<u32>,
    /// How long an ejected target stays out before it is tried again. Default `"30s"`.
    pub eject_for: Option<String>,
    /// How often the targets' host names are resolved again; each address a name resolves
    /// to is a target for balancing. Default `"5s"`; `"0s"`: never (a named target is one
    /// target, its name resolved at each new connection).
    pub dns_refresh: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    /// Path (and query) of a `GET` each target answers with 2xx or 3xx when it is well.
    /// Required.
    pub path: Option<String>,
    /// Between two checks of a target. Default `"5s"`.
    pub interval: Option<String>,
    /// For one check (connect, TLS, answer head). Default `"2s"`.
    pub timeout: Option<String>,
    /// Consecutive successes that bring a target back. Default 2.
    pub healthy: Option<u32>,
    /// Consecutive failures that take a target out. Default 3.
    pub unhealthy: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdentity {
    /// Header name -> claim name. Every listed header is stripped from every client request.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A JWT the gateway signs for every forwarded authenticated request, which the app can
    /// verify (see `docs/identity-assertion.md`). Default: none.
    pub assertion: Option<RawAssertion>,
}

/// `[identity] assertion = { ... }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAssertion {
    /// The header it travels in (stripped from every client request). Default
    /// `"X-Auth-Assertion"`.
    pub header: Option<String>,
    /// `"ES256"` (default) or `"ES384"`.
    pub algorithm: Option<String>,
    /// PEM EC private key (PKCS#8 or SEC1) that signs. One of this and `key_files`.
    pub key_file: Option<String>,
    /// Rotation: the first key signs, all are published in the JWKS.
    pub key_files: Option<Vec<String>>,
    /// `exp - iat` of each assertion. Default `"60s"`.
    pub lifetime: Option<String>,
    /// `iss` of each assertion: the gateway's name. Default `"portcullis"`.
    pub issuer: Option<String>,
    /// Signatures kept for reuse (each for half the lifetime). Default 100000.
    pub cache_size: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Unique name, used in logs and metrics. Required.
    pub name: Option<String>,
    /// `"crm.example.com"` or `"*.example.com"`; any host when absent.
    pub host: Option<String>,
    /// Segment-boundary prefix: `/api` matches `/api` and `/api/x`, not `/apix`.
    pub path_prefix: Option<String>,
    /// Exact path instead of a prefix.
    pub path: Option<String>,
    /// Methods this route matches; all when absent.
    pub methods: Option<Vec<String>>,
    /// Upstream name. Required.
    pub upstream: Option<String>,
    /// `"public"`, `"jwt"`, `"session"`, `"api_key"` or a list such as `["jwt", "session"]`
    /// (any of them; a Bearer token is tried first, then an API key, then the session).
    /// Required: there is no silent default.
    pub auth: Option<RawAuth>,
    /// Session routes without a session: `"redirect"` (to log in) or `"deny"` (401).
    /// Default: redirect browser navigations, 401 for everything else.
    pub on_unauthenticated: Option<String>,
    /// Providers allowed on this route (`auth = "jwt"`). Default: all providers.
    pub providers: Option<Vec<String>>,
    /// Where the token is read: `"bearer"` and/or `"cookie:NAME"`. Default `["bearer"]`.
    pub token_sources: Option<Vec<String>>,
    /// Forward the consumed credential to the upstream. Default false.
    #[serde(default)]
    pub forward_token: bool,
    /// Requirements on the verified claims; 403 when one fails.
    pub require: Option<RawRequire>,
    /// Request body limit for this route (overrides `server.max_body_size`), 413 beyond.
    pub max_body_size: Option<RawSize>,
    /// Let `%2F` through in paths (kept encoded, matched and forwarded as `%2F`). Default
    /// false: 400. Only for apps that need it (e.g. object keys in paths).
    #[serde(default)]
    pub allow_encoded_slash: bool,
    /// Forward `X-HTTP-Method-Override`, `X-Method-Override`, `X-HTTP-Method`. Default false:
    /// removed, since they turn an allowed GET into a DELETE at many frameworks.
    #[serde(default)]
    pub allow_method_override: bool,
    /// Match with `;params` removed from each path segment (`/app;jsessionid=1/x` matches
    /// as `/app/x`) and forward the path with them. Default false: a path whose parameters
    /// would change its route is refused (400 `ambiguous_path`).
    #[serde(default)]
    pub allow_path_params: bool,
    /// Cross-site request forgery check for requests authenticated by a cookie (session or
    /// `cookie:NAME`): `"origin"` (default) refuses a state-changing request another site
    /// made the browser send (403 `csrf_rejected`); `"off"` turns it off for this route.
    pub csrf: Option<String>,
    /// Let `Sec-Fetch-Site: same-site` requests through (sibling subdomains). Default false.
    #[serde(default)]
    pub csrf_allow_same_site: bool,
    /// Safe methods this app changes state on (e.g. `["GET"]`): refused when the browser
    /// marks them cross-site. Default none.
    pub csrf_unsafe_methods: Option<Vec<String>>,
    /// Send the app `X-Original-URL` holding the canonical path and query that was
    /// authorized (for IIS, Symfony and Zend apps that route by it). Default false: every
    /// client-sent header naming another path is removed and none is added.
    #[serde(default)]
    pub forward_original_uri: bool,
    /// The part of the route's path that is where its upstream is mounted: replaced by the
    /// upstream's `path_prefix` (default `"/"` when this is set). Default: the route's
    /// `path_prefix` (or `path`) when the upstream has a `path_prefix`.
    pub strip_prefix: Option<String>,
    /// Lets `Upgrade: websocket` through to the app on this route (HTTP/1.1). Default false:
    /// `Upgrade` is removed and an app's `101` is a 502.
    #[serde(default)]
    pub websocket: bool,
    /// An upgraded connection is closed this long after the upgrade. Default `"24h"`.
    pub max_upgraded_lifetime: Option<String>,
    /// An upgraded connection is closed when nothing moved either way for this long.
    /// Default `"10m"`.
    pub upgraded_idle_timeout: Option<String>,
    /// An upgraded connection is closed when the credential that opened it expires (the
    /// JWT's `exp`, the session's end). Default true.
    pub close_on_expiry: Option<bool>,
    /// Send the login session's access token to the app (session routes): a header name,
    /// `true` or `false`. Default: `[login] forward_access_token`.
    pub forward_access_token: Option<RawForwardSetting>,
    /// The same for the session's ID token. Default: `[login] forward_id_token`.
    pub forward_id_token: Option<RawForwardSetting>,
    /// Requests per identity or client address on this route, counted by this instance;
    /// beyond it 429 with `Retry-After`. Default: none.
    pub rate_limit: Option<RawRateLimit>,
}

/// `rate_limit = { requests = 100, per = "1s", burst = 200, key = "sub" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    /// Requests let through per `per` at the sustained rate. Required.
    pub requests: Option<u32>,
    /// The window of `requests`. Default `"1s"`.
    pub per: Option<String>,
    /// Requests a quiet key may send at once. Default: `requests`.
    pub burst: Option<u32>,
    /// What is counted: `"sub"` (the verified identity; its address when it has no `sub`)
    /// or `"ip"` (the client's address). Default `"sub"` on protected routes, `"ip"` on
    /// public ones.
    pub key: Option<String>,
    /// Keys remembered at most; beyond it the least limited are forgotten. Default 100000.
    pub max_keys: Option<usize>,
    /// `"redis"`: counted across instances in the `[redis]` Redis (one round trip per
    /// request; this instance's count when Redis does not answer within 50 ms). Default:
    /// per instance.
    pub shared: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRequire {
    /// Every one must be in `scope` (space-delimited) or `scp` (array or string).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Claim name -> accepted value(s); the claim equals one, or (an array) contains one.
    #[serde(default)]
    pub claims: BTreeMap<String, RawClaimValues>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawClaimValues {
    One(RawScalar),
    Many(Vec<RawScalar>),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawScalar {
    Str(String),
    Int(i64),
    Bool(bool),
}
