//! Every config problem names the key to fix: one invalid fragment per issue site of
//! `compile/`, and the exact key it must be reported under.

use std::path::PathBuf;
use std::time::Duration;

use super::{ConfigError, load_str};

/// A valid config: one listener, a remote provider (no file needed), an upstream, a route.
const BASE: &str = r#"
[server]
http = "127.0.0.1:0"
{server}

[providers.p]
issuer = "https://issuer.test"
audiences = ["app"]
algorithms = ["RS256"]
jwks_url = "http://127.0.0.1:9/jwks"
{provider}

[upstreams.app]
url = "http://127.0.0.1:9"
{upstream}

[[routes]]
name = "base"
path_prefix = "/"
upstream = "app"
auth = "jwt"

{tables}
"#;

#[derive(Default)]
struct Fragment {
    server: &'static str,
    provider: &'static str,
    upstream: &'static str,
    tables: &'static str,
}

fn text(f: &Fragment) -> String {
    BASE.replace("{server}", f.server)
        .replace("{provider}", f.provider)
        .replace("{upstream}", f.upstream)
        .replace("{tables}", f.tables)
}

fn server(lines: &'static str) -> Fragment {
    Fragment {
        server: lines,
        ..Fragment::default()
    }
}

fn provider(lines: &'static str) -> Fragment {
    Fragment {
        provider: lines,
        ..Fragment::default()
    }
}

fn upstream(lines: &'static str) -> Fragment {
    Fragment {
        upstream: lines,
        ..Fragment::default()
    }
}

fn tables(lines: &'static str) -> Fragment {
    Fragment {
        tables: lines,
        ..Fragment::default()
    }
}

/// The keys of the issues a config text is refused for.
fn issue_keys(text: &str) -> Result<Vec<String>, String> {
    match load_str(text, PathBuf::from("/nonexistent/portcullis.toml")) {
        Ok(_) => Err("accepted".to_owned()),
        Err(ConfigError::Invalid { issues, .. }) => Ok(issues.into_iter().map(|i| i.key).collect()),
        Err(other) => Err(format!("not an issue list: {other}")),
    }
}

#[test]
fn the_base_is_valid() {
    let text = text(&Fragment::default());
    if let Err(e) = load_str(&text, PathBuf::from("/nonexistent/portcullis.toml")) {
        panic!("{e}");
    }
}

#[test]
fn defer_accept_is_a_second_unless_set_and_zero_turns_it_off() {
    let load = |f: &Fragment| {
        load_str(&text(f), PathBuf::from("/nonexistent/portcullis.toml"))
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let default = load(&Fragment::default());
    assert_eq!(default.server.defer_accept, Duration::from_secs(1));
    let off = load(&server(r#"defer_accept = "0s""#));
    assert_eq!(off.server.defer_accept, Duration::ZERO);
    let longer = load(&server(r#"defer_accept = "1m""#));
    assert_eq!(longer.server.defer_accept, Duration::from_secs(60));
}

#[test]
fn every_issue_names_its_key() {
    let route = |lines: &'static str| {
        tables(Box::leak(
            format!("[[routes]]\nname = \"x\"\nupstream = \"app\"\n{lines}").into_boxed_str(),
        ))
    };
    let cases: Vec<(Fragment, &str)> = vec![
        // [server]
        (server(r#"https = "nowhere""#), "server.https"),
        (server(r#"admin = "1.2.3.4""#), "server.admin"),
        (
            server(r#"header_read_timeout = "0s""#),
            "server.header_read_timeout",
        ),
        (
            server(r#"header_read_timeout = "soon""#),
            "server.header_read_timeout",
        ),
        (
            server(r#"client_write_timeout = "0s""#),
            "server.client_write_timeout",
        ),
        (
            server(r#"request_body_timeout = "0s""#),
            "server.request_body_timeout",
        ),
        (
            server(r#"tls_handshake_timeout = "0s""#),
            "server.tls_handshake_timeout",
        ),
        (server(r#"defer_accept = "500ms""#), "server.defer_accept"),
        (server(r#"defer_accept = "later""#), "server.defer_accept"),
        (server("max_connections = 0"), "server.max_connections"),
        (server("max_headers = 0"), "server.max_headers"),
        (
            server(r#"max_header_bytes = "lots""#),
            "server.max_header_bytes",
        ),
        (
            server(r#"max_body_size = "10 parsecs""#),
            "server.max_body_size",
        ),
        (
            server(r#"trusted_proxies = ["not-an-ip"]"#),
            "server.trusted_proxies[0]",
        ),
        (
            server(r#"trusted_origins = ["https://x/path"]"#),
            "server.trusted_origins[0]",
        ),
        (server(r#"https = "127.0.0.1:0""#), "tls"),
        (
            tables("[tls]\ncert = \"missing.crt\"\nkey = \"missing.key\""),
            "tls",
        ),
        // [providers.NAME]
        (provider(r#"leeway = "a while""#), "providers.p.leeway"),
        (
            provider(r#"refresh_interval = "0s""#),
            "providers.p.refresh_interval",
        ),
        (
            provider(r#"cache_ttl = "forever""#),
            "providers.p.cache_ttl",
        ),
        (
            provider(r#"discovery = "http://127.0.0.1:9""#),
            "providers.p.discovery",
        ),
        (
            tables(
                "[providers.q]\nissuer = \"\"\naudiences = [\"a\"]\nalgorithms = [\"RS256\"]\njwks_url = \"http://127.0.0.1:9/j\"",
            ),
            "providers.q.issuer",
        ),
        (
            tables(
                "[providers.q]\nissuer = \"i\"\nalgorithms = [\"RS256\"]\njwks_url = \"http://127.0.0.1:9/j\"",
            ),
            "providers.q.audiences",
        ),
        (
            tables(
                "[providers.q]\nissuer = \"i\"\naudiences = [\"a\"]\njwks_url = \"http://127.0.0.1:9/j\"",
            ),
            "providers.q.algorithms",
        ),
        (
            tables(
                "[providers.q]\nissuer = \"i\"\naudiences = [\"a\"]\nalgorithms = [\"RS256\", \"RS256\"]\njwks_url = \"http://127.0.0.1:9/j\"",
            ),
            "providers.q.algorithms[1]",
        ),
        (
            tables(
                "[providers.q]\nissuer = \"i\"\naudiences = [\"a\"]\nalgorithms = [\"none\"]\njwks_url = \"http://127.0.0.1:9/j\"",
            ),
            "providers.q.algorithms[0]",
        ),
        (
            tables("[providers.q]\nissuer = \"i\"\naudiences = [\"a\"]\nalgorithms = [\"HS256\"]"),
            "providers.q.hmac_secret_env",
        ),
        (
            tables("[providers.q]\nissuer = \"i\"\naudiences = [\"a\"]\nalgorithms = [\"ES256\"]"),
            "providers.q.algorithms",
        ),
        (
            tables(
                "[providers.q]\nissuer = \"i\"\naudiences = [\"a\"]\nalgorithms = [\"RS256\"]\npublic_keys = [\"missing.pem\"]",
            ),
            "providers.q.public_keys[0]",
        ),
        (
            tables(
                "[providers.q]\nissuer = \"i\"\naudiences = [\"a\"]\nalgorithms = [\"RS256\"]\njwks_file = \"missing.json\"",
            ),
            "providers.q.jwks_file",
        ),
        (
            tables(
                "[providers.q]\nissuer = \"i\"\naudiences = [\"a\"]\nalgorithms = [\"RS256\"]\njwks_url = \"ftp://x\"",
            ),
            "providers.q.jwks_url",
        ),
        // [upstreams.NAME]
        (upstream(r#"timeout = "0s""#), "upstreams.app.timeout"),
        (
            upstream(r#"connect_timeout = "0s""#),
            "upstreams.app.connect_timeout",
        ),
        (
            upstream(r#"path_semantics = "tomcat""#),
            "upstreams.app.path_semantics",
        ),
        (
            tables("[upstreams.b]\nbuiltin = \"mirror\""),
            "upstreams.b.builtin",
        ),
        (
            tables("[upstreams.b]\nbuiltin = \"echo\"\nurl = \"http://127.0.0.1:9\""),
            "upstreams.b",
        ),
        (tables("[upstreams.b]"), "upstreams.b"),
        (tables("[upstreams.b]\nurl = \"::\""), "upstreams.b.url"),
        (
            tables("[upstreams.b]\nurl = \"ftp://h:1\""),
            "upstreams.b.url",
        ),
        (
            tables("[upstreams.b]\nurl = \"http://h:1/app\""),
            "upstreams.b.url",
        ),
        (
            tables("[upstreams.b]\nurl = \"https://user@h:1\""),
            "upstreams.b.url",
        ),
        (upstream(r#"ca_file = "ca.pem""#), "upstreams.app.ca_file"),
        (
            upstream(r#"server_name = "app.test""#),
            "upstreams.app.server_name",
        ),
        (
            upstream(r#"client_cert = "c.pem""#),
            "upstreams.app.client_cert",
        ),
        (
            upstream(r#"client_key = "k.pem""#),
            "upstreams.app.client_key",
        ),
        (
            tables("[upstreams.b]\nbuiltin = \"echo\"\nca_file = \"ca.pem\""),
            "upstreams.b.ca_file",
        ),
        (
            tables("[upstreams.b]\nurl = \"https://h:1\"\nca_file = \"/nonexistent/ca.pem\""),
            "upstreams.b.ca_file",
        ),
        (
            tables("[upstreams.b]\nurl = \"https://h:1\"\nserver_name = \"bad name!\""),
            "upstreams.b.server_name",
        ),
        (
            tables("[upstreams.b]\nurl = \"https://h:1\"\nclient_key = \"/nonexistent/k.pem\""),
            "upstreams.b.client_key",
        ),
        (tables("[upstreams.b]\ntargets = []"), "upstreams.b.targets"),
        (tables("[forward_auth]"), "forward_auth"),
        (server("admin = \"0.0.0.0:9901\""), "server.admin"),
        (
            Fragment {
                server: "trusted_proxies = [\"10.0.0.0/8\"]",
                tables: "[forward_auth]\nlisten = \"nowhere\"",
                ..Fragment::default()
            },
            "forward_auth.listen",
        ),
        (server("health = \"localhost\""), "server.health"),
        (
            Fragment {
                server: "trusted_proxies = [\"10.0.0.0/8\"]",
                tables: "[forward_auth]\npath = \"/auth\"",
                ..Fragment::default()
            },
            "forward_auth.path",
        ),
        (
            Fragment {
                server: "trusted_proxies = [\"10.0.0.0/8\"]",
                tables: "[forward_auth]\npath = \"/_portcullis/login\"",
                ..Fragment::default()
            },
            "forward_auth.path",
        ),
        (
            upstream(r#"dns_refresh = "often""#),
            "upstreams.app.dns_refresh",
        ),
        (
            upstream(r#"targets = ["http://127.0.0.1:8"]"#),
            "upstreams.app",
        ),
        (
            tables("[upstreams.b]\ntargets = [\"http://h:1\", \"https://h:2\"]"),
            "upstreams.b.targets",
        ),
        (
            tables("[upstreams.b]\ntargets = [\"http://h:1\", \"ftp://h:2\"]"),
            "upstreams.b.targets[1]",
        ),
        (upstream(r#"balance = "random""#), "upstreams.app.balance"),
        (upstream(r#"eject_for = "soon""#), "upstreams.app.eject_for"),
        (
            upstream(r#"health_check = { interval = "1s" }"#),
            "upstreams.app.health_check.path",
        ),
        (
            upstream(r#"health_check = { path = "/h", healthy = 0 }"#),
            "upstreams.app.health_check.healthy",
        ),
        (
            upstream(r#"health_check = { path = "/h", timeout = "0s" }"#),
            "upstreams.app.health_check.timeout",
        ),
        (
            upstream(r#"path_prefix = "/a/../b""#),
            "upstreams.app.path_prefix",
        ),
        (
            upstream(r#"path_prefix = "/a;b""#),
            "upstreams.app.path_prefix",
        ),
        (upstream(r#"host = "a b""#), "upstreams.app.host"),
        (
            tables(
                "[[routes]]\nname = \"crm\"\npath_prefix = \"/crm\"\nupstream = \"app\"\nauth = \"public\"\nstrip_prefix = \"/cr\"",
            ),
            "routes[1].strip_prefix",
        ),
        (
            tables(
                "[[routes]]\nname = \"ws\"\npath_prefix = \"/ws\"\nupstream = \"app\"\nauth = \"jwt\"\nmax_upgraded_lifetime = \"1h\"",
            ),
            "routes[1].max_upgraded_lifetime",
        ),
        (
            tables(
                "[[routes]]\nname = \"ws\"\npath_prefix = \"/ws\"\nupstream = \"app\"\nauth = \"jwt\"\nwebsocket = true\nupgraded_idle_timeout = \"0s\"",
            ),
            "routes[1].upgraded_idle_timeout",
        ),
        // A mapped public route would open a second door to the app's /admin.
        (
            tables(
                "[[routes]]\nname = \"crm\"\npath_prefix = \"/crm\"\nupstream = \"app\"\nauth = \"public\"\nstrip_prefix = \"/crm\"\n\n[[routes]]\nname = \"admin\"\npath_prefix = \"/admin\"\nupstream = \"app\"\nauth = \"public\"\nmethods = [\"GET\"]",
            ),
            "routes[0]",
        ),
        // [identity]
        (
            tables("[identity]\nheaders = { \"X Auth\" = \"sub\" }"),
            "identity.headers.\"X Auth\"",
        ),
        (
            tables("[identity]\nheaders = { \"X_Auth_User\" = \"sub\" }"),
            "identity.headers.\"X_Auth_User\"",
        ),
        (
            tables("[identity]\nheaders = { \"X-Forwarded-For\" = \"sub\" }"),
            "identity.headers.\"X-Forwarded-For\"",
        ),
        (
            tables("[identity]\nheaders = { \"X-A\" = \"sub\", \"x-a\" = \"email\" }"),
            "identity.headers.\"x-a\"",
        ),
        (
            tables("[identity]\nheaders = { \"X-A\" = \"\" }"),
            "identity.headers.\"X-A\"",
        ),
        // [[routes]]
        (
            tables(
                "[[routes]]\nname = \"base\"\npath_prefix = \"/b\"\nupstream = \"app\"\nauth = \"public\"",
            ),
            "routes[1].name",
        ),
        (
            tables("[[routes]]\npath_prefix = \"/b\"\nupstream = \"app\"\nauth = \"public\""),
            "routes[1].name",
        ),
        (
            tables(
                "[[routes]]\nname = \"x\"\npath_prefix = \"/b\"\nauth = \"public\"\nupstream = \"nope\"",
            ),
            "routes[1].upstream",
        ),
        (
            tables("[[routes]]\nname = \"x\"\npath_prefix = \"/b\"\nauth = \"public\""),
            "routes[1].upstream",
        ),
        (
            route("path_prefix = \"/b\"\nauth = \"public\"\nhost = \"x.test:80\""),
            "routes[1].host",
        ),
        (route("auth = \"public\""), "routes[1]"),
        (
            route("path = \"/a\"\npath_prefix = \"/a\"\nauth = \"public\""),
            "routes[1]",
        ),
        (
            route("path_prefix = \"/a/../b\"\nauth = \"public\""),
            "routes[1].path_prefix",
        ),
        (route("path = \"a\"\nauth = \"public\""), "routes[1].path"),
        (
            route("path_prefix = \"/a;b\"\nauth = \"public\""),
            "routes[1].path_prefix",
        ),
        (
            route("path_prefix = \"/a%3Ab\"\nauth = \"public\""),
            "routes[1].path_prefix",
        ),
        (
            route("path_prefix = \"/b\"\nauth = \"public\"\nmethods = []"),
            "routes[1].methods",
        ),
        (
            route("path_prefix = \"/b\"\nauth = \"public\"\nmethods = [\"get\"]"),
            "routes[1].methods[0]",
        ),
        (route("path_prefix = \"/b\""), "routes[1].auth"),
        (
            route("path_prefix = \"/b\"\nauth = \"magic\""),
            "routes[1].auth",
        ),
        (
            route("path_prefix = \"/b\"\nauth = [\"jwt\", \"jwt\"]"),
            "routes[1].auth",
        ),
        (
            route("path_prefix = \"/b\"\nauth = \"session\""),
            "routes[1].auth",
        ),
        (
            route("path_prefix = \"/b\"\nauth = \"public\"\nproviders = [\"p\"]"),
            "routes[1].providers",
        ),
        (
            route("path_prefix = \"/b\"\nauth = \"public\"\nforward_token = true"),
            "routes[1].forward_token",
        ),
        (
            route("path_prefix = \"/b\"\nauth = \"public\"\ncsrf = \"off\""),
            "routes[1].csrf",
        ),
        (
            route("path_prefix = \"/b\"\nauth = \"public\"\ncsrf_allow_same_site = true"),
            "routes[1].csrf_allow_same_site",
        ),
        (
            route("path_prefix = \"/b\"\nauth = \"jwt\"\ncsrf = \"strict\""),
            "routes[1].csrf",
        ),
        (
            route("path_prefix = \"/b\"\nauth = \"jwt\"\ncsrf_unsafe_methods = [\"POST\"]"),
            "routes[1].csrf_unsafe_methods[0]",
        ),
        (
            route("path_prefix = \"/b\"\nauth = \"jwt\"\non_unauthenticated = \"deny\""),
            "routes[1].on_unauthenticated",
        ),
        (
            route("path_prefix = \"/b\"\nauth = \"jwt\"\nproviders = []"),
            "routes[1].providers",
        ),
        (
            route("path_prefix = \"/b\"\nauth = \"jwt\"\nproviders = [\"nope\"]"),
            "routes[1].providers[0]",
        ),
        (
            route("path_prefix = \"/b\"\nauth = \"jwt\"\ntoken_sources = []"),
            "routes[1].token_sources",
        ),
        (
            route("path_prefix = \"/b\"\nauth = \"jwt\"\ntoken_sources = [\"bearer\", \"bearer\"]"),
            "routes[1].token_sources[1]",
        ),
        (
            route("path_prefix = \"/b\"\nauth = \"jwt\"\ntoken_sources = [\"header:x\"]"),
            "routes[1].token_sources[0]",
        ),
        (
            route("path_prefix = \"/b\"\nauth = \"jwt\"\n[routes.require]\nscopes = [\"a b\"]"),
            "routes[1].require.scopes",
        ),
        (
            route("path_prefix = \"/b\"\nauth = \"jwt\"\n[routes.require]\nclaims = { role = [] }"),
            "routes[1].require.claims.role",
        ),
        (
            route("path_prefix = \"/b\"\nauth = \"public\"\nmax_body_size = \"big\""),
            "routes[1].max_body_size",
        ),
        (
            tables(
                "[[routes]]\nname = \"dup\"\npath_prefix = \"/\"\nupstream = \"app\"\nauth = \"public\"",
            ),
            "routes[1]",
        ),
        // [[tests]]
        (
            tables("[[tests]]\nrequest = \"GET http://x/\"\nexpect_status = 200"),
            "tests[0].name",
        ),
        (
            tables("[[tests]]\nname = \"t\"\nexpect_status = 200"),
            "tests[0].request",
        ),
        (
            tables("[[tests]]\nname = \"t\"\nrequest = \"GET http://x/\""),
            "tests[0]",
        ),
        // [login]
        (
            tables("[login]\nprovider = \"nope\"\nclient_id = \"c\"\ncookie_keys_env = \"X\""),
            "login.provider",
        ),
        (
            tables("[login]\nprovider = \"p\"\nclient_id = \"c\"\ncookie_keys_env = \"X\""),
            "login.provider",
        ),
    ];
    let mut failures = Vec::new();
    for (fragment, key) in &cases {
        let text = text(fragment);
        match issue_keys(&text) {
            Ok(keys) if keys.iter().any(|k| k == key) => {}
            got => failures.push(format!("expected {key}, got {got:?} for:\n{text}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n---\n"));
    assert!(cases.len() >= 80, "{} cases", cases.len());
}

#[test]
fn every_login_issue_names_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("cookie.keys");
    std::fs::write(&keys, "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n").unwrap();
    let bad_keys = dir.path().join("bad.keys");
    std::fs::write(&bad_keys, "not base64 at all\n").unwrap();
    let login = |lines: &str, keys_line: Option<String>| {
        let keys_line =
            keys_line.unwrap_or_else(|| format!("cookie_keys_file = \"{}\"", keys.display()));
        let tables = format!(
            "[providers.idp]\nissuer = \"http://127.0.0.1:9\"\naudiences = [\"a\"]\n\
             algorithms = [\"RS256\"]\ndiscovery = \"http://127.0.0.1:9\"\n\n\
             [login]\nprovider = \"idp\"\nclient_id = \"c\"\n{keys_line}\n{lines}\n"
        );
        BASE.replace("{server}", "")
            .replace("{provider}", "")
            .replace("{upstream}", "")
            .replace("{tables}", &tables)
    };
    assert!(
        load_str(&login("", None), PathBuf::from("/nonexistent/p.toml")).is_ok(),
        "the login base is valid"
    );
    let cases: Vec<(String, &str)> = vec![
        (login("", Some(String::new())), "login.cookie_keys_env"),
        (
            login("", Some("cookie_keys_file = \"/nonexistent/keys\"".into())),
            "login.cookie_keys_file",
        ),
        (
            login(
                "",
                Some(format!("cookie_keys_file = \"{}\"", bad_keys.display())),
            ),
            "login.cookie_keys_file",
        ),
        (
            login(
                "",
                Some("cookie_keys_env = \"PORTCULLIS_TEST_NO_SUCH_VARIABLE\"".into()),
            ),
            "login.cookie_keys_env",
        ),
        (
            login(
                "client_secret_env = \"PORTCULLIS_TEST_NO_SUCH_VARIABLE\"",
                None,
            ),
            "login.client_secret_env",
        ),
        (
            login("client_secret_file = \"/nonexistent/secret\"", None),
            "login.client_secret_file",
        ),
        (
            login("redirect_path = \"callback\"", None),
            "login.redirect_path",
        ),
        (
            login("redirect_path = \"/_portcullis/login\"", None),
            "login.redirect_path",
        ),
        (
            login("redirect_url = \"ftp://x/cb\"", None),
            "login.redirect_url",
        ),
        (
            login("post_logout_redirect_url = \"nope\"", None),
            "login.post_logout_redirect_url",
        ),
        (login("scopes = \"email profile\"", None), "login.scopes"),
        (login("cookie_name = \"a b\"", None), "login.cookie_name"),
        (login("idle_timeout = \"0s\"", None), "login.idle_timeout"),
        (login("lifetime = \"soon\"", None), "login.lifetime"),
        (login("store = \"disk\"", None), "login.store"),
        (login("store = \"redis\"", None), "login.redis_url"),
        (
            login(
                "store = \"redis\"\nredis_url_env = \"PORTCULLIS_TEST_NO_SUCH_VARIABLE\"",
                None,
            ),
            "login.redis_url_env",
        ),
        (
            login(
                "store = \"redis\"\nredis_url = \"redis://127.0.0.1:6379\"\nredis_timeout = \"0s\"",
                None,
            ),
            "login.redis_timeout",
        ),
        (
            login(
                "store = \"redis\"\nredis_url = \"rediss://127.0.0.1:6379\"\nredis_ca_file = \"/nonexistent/ca.pem\"",
                None,
            ),
            "login.redis_ca_file",
        ),
        (login("max_sessions = 10", None), "login.max_sessions"),
        (login("redis_prefix = \"p:\"", None), "login.redis_prefix"),
        (
            login("client_id = \"\"", None).replace("client_id = \"c\"\n", ""),
            "login.client_id",
        ),
    ];
    let mut failures = Vec::new();
    for (text, key) in &cases {
        match issue_keys(text) {
            Ok(keys) if keys.iter().any(|k| k == key) => {}
            got => failures.push(format!("expected {key}, got {got:?} for:\n{text}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n---\n"));
}
