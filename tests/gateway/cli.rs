//! The binary: --help, check (valid, invalid, every shipped example), token, serve.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;

pub(crate) fn portcullis() -> Command {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn run(command: &mut Command) -> (i32, String, String) {
    let out = command.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_explains_every_command() {
    let (code, out, _) = run(portcullis().arg("--help"));
    assert_eq!(code, 0);
    for word in [
        "serve",
        "check",
        "explain",
        "token",
        "--log-format",
        "authentication gateway",
    ] {
        assert!(out.contains(word), "--help lacks {word}: {out}");
    }
    for (sub, words) in [
        ("serve", &["--config", "--workers", "SIGTERM"][..]),
        (
            "check",
            &["--config", "--strict", "Exit status", "[[tests]]"][..],
        ),
        (
            "explain",
            &[
                "--config",
                "--token",
                "--claims",
                "headers the upstream would get",
            ][..],
        ),
        (
            "token",
            &[
                "--key",
                "--sub",
                "--scope",
                "--claim",
                "--ttl",
                "--kid",
                "--alg",
                "--secret-env",
            ][..],
        ),
    ] {
        let (code, out, _) = run(portcullis().args([sub, "--help"]));
        assert_eq!(code, 0);
        for word in words {
            assert!(out.contains(word), "{sub} --help lacks {word}: {out}");
        }
    }
}

#[test]
fn version_names_the_commit_and_the_build() {
    let (code, out, _) = run(portcullis().arg("--version"));
    assert_eq!(code, 0);
    let expected_commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    assert!(
        out.starts_with(&format!(
            "portcullis {} (commit ",
            env!("CARGO_PKG_VERSION")
        )),
        "{out}"
    );
    if let Some(commit) = expected_commit {
        // The binary of this very checkout (cargo rebuilt it for the commit).
        assert!(out.contains(&commit), "{out} lacks {commit}");
    }
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    assert!(out.contains(&format!("; {profile}")), "{out}");
}

#[test]
fn every_shipped_config_passes_check() {
    let mut files = Vec::new();
    let mut dirs = vec![repo("config")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "toml") {
                files.push(path);
            }
        }
    }
    assert!(files.len() >= 2, "{files:?}");
    for file in files {
        let (code, out, err) = run(portcullis()
            .args(["check", "--config"])
            .arg(&file)
            .env("PARTNER_SECRET", "0123456789abcdef0123456789abcdef")
            .env("INTRANET_CLIENT_SECRET", "secret")
            .env("PORTCULLIS_COOKIE_KEYS", crate::support::oidc::COOKIE_KEY_A));
        assert_eq!(code, 0, "{}: {err}", file.display());
        assert!(out.contains(": ok ("), "{out}");
        assert!(out.contains("  route "), "{out}");
        assert!(
            !out.contains(" failed") || out.contains(" 0 failed"),
            "{out}"
        );
    }
    // Without its secrets the SSO example names each missing variable and its key.
    let (code, _, err) = run(portcullis()
        .args(["check", "--config"])
        .arg(repo("config/examples/intranet-sso.toml")));
    assert_eq!(code, 1);
    for expected in [
        "login.client_secret_env: environment variable INTRANET_CLIENT_SECRET is not set",
        "login.cookie_keys_env: environment variable PORTCULLIS_COOKIE_KEYS is not set",
    ] {
        assert!(err.contains(expected), "{err}");
    }
}

/// The allocator options `.cargo/config.toml` compiles into jemalloc are in the binary
/// (a build that lost them would still work, only slower on new connections).
#[test]
fn the_binary_carries_the_allocator_options() {
    let (code, _, err) = run(portcullis()
        .args(["check", "--config"])
        .arg(repo("config/portcullis.toml"))
        .env("_RJEM_MALLOC_CONF", "stats_print:true"));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("opt.tcache_nslots_small_min: 64"),
        "jemalloc's statistics do not show the option:\n{}",
        err.lines()
            .filter(|l| l.contains("opt.") || l.contains("malloc_conf"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(err.contains("opt.background_thread: true"));
}

#[test]
fn check_names_the_key_and_the_fix() {
    let dir = fixture_dir();
    let file = dir.path().join("bad.toml");
    let cases = [
        (
            "[server]\nhttp = \"127.0.0.1:0\"\n[upstreams.app]\nurl = \"http://127.0.0.1:9\"\n[[routes]]\nname = \"a\"\npath_prefix = \"/\"\nupstream = \"app\"\nauth = \"public\"\n[[routes]]\nname = \"b\"\npath_prefix = \"/b\"\nupstream = \"crm\"\nauth = \"public\"\n",
            "routes[1].upstream: no upstream named \"crm\"; define [upstreams.crm] or use one of: app",
        ),
        (
            "[server]\nhttp = \"127.0.0.1:0\"\n[upstreams.app]\nurl = \"http://127.0.0.1:9\"\n[[routes]]\nname = \"a\"\npath_prefix = \"/\"\nupstream = \"app\"\n",
            "routes[0].auth: required (there is no default)",
        ),
        (
            "[server]\nhttp = \"127.0.0.1:0\"\n[upstreams.app]\nurl = \"http://127.0.0.1:9\"\n[[routes]]\nname = \"a\"\npath_prefx = \"/\"\n",
            "unknown field `path_prefx`",
        ),
        (
            "[server]\nhttp = \"127.0.0.1:0\"\n[providers.p]\nissuer = \"i\"\naudiences = [\"a\"]\nalgorithms = [\"none\"]\n",
            "providers.p.algorithms[0]: \"none\" is not a supported algorithm",
        ),
        (
            "[server]\nhttp = \"127.0.0.1:0\"\n[providers.p]\nissuer = \"i\"\nalgorithms = [\"RS256\"]\npublic_keys = [\"rsa.pub.pem\"]\n",
            "providers.p.audiences: required",
        ),
        (
            "[server]\nhttp = \"127.0.0.1:0\"\n[providers.p]\nissuer = \"i\"\naudiences = [\"a\"]\nalgorithms = [\"ES256\"]\npublic_keys = [\"rsa.pub.pem\"]\n",
            "providers.p.algorithms: ES256 is listed but no key of the provider is EC",
        ),
        (
            "[server]\nhttp = \"127.0.0.1:0\"\n[providers.p]\nissuer = \"i\"\naudiences = [\"a\"]\nalgorithms = [\"HS256\"]\nhmac_secret_env = \"PORTCULLIS_TEST_UNSET_VAR\"\n",
            "providers.p.hmac_secret_env: environment variable PORTCULLIS_TEST_UNSET_VAR is not set",
        ),
        (
            "[server]\nhttp = \"127.0.0.1:0\"\n[upstreams.app]\nurl = \"http://127.0.0.1:9\"\n[[routes]]\nname = \"a\"\npath_prefix = \"/a/../b\"\nupstream = \"app\"\nauth = \"public\"\n",
            "routes[0].path_prefix: \"/a/../b\" is not in canonical form; requests are matched as \"/b\"",
        ),
        (
            "[server]\nhttp = \"127.0.0.1:0\"\n[upstreams.app]\nurl = \"http://127.0.0.1:9\"\n[[routes]]\nname = \"a\"\npath_prefix = \"/a\"\nupstream = \"app\"\nauth = \"public\"\n[[routes]]\nname = \"b\"\npath_prefix = \"/a/\"\nupstream = \"app\"\nauth = \"public\"\n",
            "routes[1]: matches exactly the same host, path and methods as routes[0]",
        ),
        (
            "[server]\nhttp = \"localhost:8080\"\n",
            "server.http: \"localhost:8080\" is not a listen address",
        ),
        (
            "[server]\nhttp = \"127.0.0.1:0\"\n[identity]\nheaders = { \"X-Auth-User\" = \"sub\", \"x-auth-user\" = \"email\" }\n",
            "is listed twice",
        ),
        // A zero timeout or interval would expire at once, every time: refused, by key.
        (
            "[server]\nhttp = \"127.0.0.1:0\"\nheader_read_timeout = \"0s\"\n",
            "server.header_read_timeout: must be more than 0 (0 would expire at once, every time); write e.g. \"10s\"",
        ),
        (
            "[server]\nhttp = \"127.0.0.1:0\"\n[upstreams.app]\nurl = \"http://127.0.0.1:9\"\nconnect_timeout = \"0ms\"\n",
            "upstreams.app.connect_timeout: must be more than 0",
        ),
        (
            "[server]\nhttp = \"127.0.0.1:0\"\n[providers.p]\nissuer = \"https://idp.example\"\naudiences = [\"a\"]\nalgorithms = [\"RS256\"]\njwks_url = \"https://idp.example/jwks\"\nmin_refresh_interval = \"0s\"\n",
            "providers.p.min_refresh_interval: must be more than 0",
        ),
    ];
    for (text, expected) in cases {
        std::fs::write(&file, text).unwrap();
        let (code, _, err) = run(portcullis().args(["check", "--config"]).arg(&file));
        assert_eq!(code, 1, "{text}");
        assert!(err.contains(expected), "expected {expected:?} in:\n{err}");
        // serve refuses the same file with exit 64.
        let (code, _, err) = run(portcullis().args(["serve", "--config"]).arg(&file));
        assert_eq!(code, 64, "{err}");
        assert!(err.contains(expected));
    }
}

#[test]
fn check_names_each_session_duration_that_is_below_a_second() {
    // The SSO example with sessions shorter than the one-second grain they are kept in.
    let example = std::fs::read_to_string(repo("config/examples/intranet-sso.toml")).unwrap();
    let text = example
        .replace("idle_timeout = \"1h\"", "idle_timeout = \"500ms\"")
        .replace("lifetime = \"10h\"", "lifetime = \"0s\"");
    assert!(
        text.contains("idle_timeout = \"500ms\"") && text.contains("lifetime = \"0s\""),
        "the example no longer sets both durations"
    );
    let dir = fixture_dir();
    let file = dir.path().join("sso.toml");
    std::fs::write(&file, text).unwrap();
    let (code, _, err) = run(portcullis().args(["check", "--config"]).arg(&file));
    assert_eq!(code, 1, "{err}");
    for expected in [
        "login.idle_timeout: must be at least 1s",
        "login.lifetime: must be at least 1s",
    ] {
        assert!(err.contains(expected), "expected {expected:?} in:\n{err}");
    }
}

#[tokio::test]
async fn the_readme_flow_works_on_the_default_config() {
    // The default config, on port-0 listeners instead of 8080/8443.
    let snapshot = portcullis::config::load(repo("config/portcullis.toml")).unwrap();
    let listeners = portcullis::Listeners {
        http: Some(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()),
        https: None,
        admin: None,
        health: None,
        forward_auth: None,
    };
    let addr = listeners.http_addr().unwrap();
    tokio::spawn(portcullis::run(
        listeners,
        snapshot.shared(),
        std::future::pending(),
    ));

    let (code, token, err) = run(portcullis().current_dir(repo("")).args([
        "token",
        "--config",
        "config/portcullis.toml",
        "--provider",
        "dev",
        "--key",
        "config/dev/signing.key.pem",
        "--sub",
        "alice",
        "--claim",
        "email=alice@example.com",
    ]));
    assert_eq!(code, 0, "{err}");
    let token = token.trim();
    let response = client()
        .get(format!("http://{addr}/hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let response = client()
        .get(format!("http://{addr}/hello"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let echo: serde_json::Value = response.json().await.unwrap();
    assert_eq!(echo["headers"]["x-auth-user"], "alice");
    assert_eq!(echo["headers"]["x-auth-email"], "alice@example.com");
    // The admin route needs the admin scope.
    let response = client()
        .get(format!("http://{addr}/admin"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let (_, admin, _) = run(portcullis().current_dir(repo("")).args([
        "token",
        "--config",
        "config/portcullis.toml",
        "--provider",
        "dev",
        "--key",
        "config/dev/signing.key.pem",
        "--sub",
        "root",
        "--scope",
        "admin",
    ]));
    let response = client()
        .get(format!("http://{addr}/admin"))
        .bearer_auth(admin.trim())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[test]
fn token_refuses_what_it_cannot_sign() {
    let (code, _, err) = run(portcullis().args(["token", "--alg", "HS256", "--sub", "a"]));
    assert_eq!(code, 2);
    assert!(err.contains("--secret-env"), "{err}");
    let (code, _, err) = run(portcullis().args(["token", "--alg", "RS256", "--sub", "a"]));
    assert_eq!(code, 2);
    assert!(err.contains("--key"), "{err}");
    let (code, out, _) = run(portcullis()
        .args([
            "token",
            "--secret-env",
            "PORTCULLIS_TEST_SECRET",
            "--sub",
            "a",
            "--ttl",
            "5m",
        ])
        .env("PORTCULLIS_TEST_SECRET", "x".repeat(32)));
    assert_eq!(code, 0);
    assert_eq!(out.trim().split('.').count(), 3);
}

#[test]
fn serve_reloads_on_sighup_and_exits_zero_on_sigterm() {
    let dir = fixture_dir();
    let file = dir.path().join("serve.toml");
    let text = "[server]\nhttp = \"127.0.0.1:0\"\nshutdown_grace = \"2s\"\nwatch_config = false\nrequest_id = \"X-Request-Id\"\n[upstreams.echo]\nbuiltin = \"echo\"\n[[routes]]\nname = \"all\"\npath_prefix = \"/\"\nupstream = \"echo\"\nauth = \"public\"\n";
    std::fs::write(&file, text).unwrap();
    let mut child = portcullis()
        .args(["serve", "--log-format", "json", "--config"])
        .arg(&file)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Log lines arrive on a channel, so a missing line fails the test instead of hanging it.
    let (tx, lines) = std::sync::mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let next_json = |what: &str| -> serde_json::Value {
        let line = lines
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("no {what} line"));
        serde_json::from_str(&line).unwrap_or_else(|_| panic!("{what} is not JSON: {line}"))
    };
    let wait_for = |message: &str| {
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if let Ok(line) = lines.recv_timeout(Duration::from_secs(10))
                && line.contains(message)
            {
                return;
            }
        }
        panic!("no log line with {message:?}");
    };
    let log = next_json("startup");
    let http = log["http"]
        .as_str()
        .unwrap()
        .trim_start_matches("Some(")
        .trim_end_matches(')')
        .to_owned();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let fetch = |path: &str| {
        rt.block_on(async {
            client()
                .get(format!("http://{http}{path}"))
                .header("x-request-id", "chosen-by-the-client")
                .send()
                .await
                .unwrap()
        })
    };
    let get = |path: &str| fetch(path).status();
    let response = fetch("/x?token=secret-value");
    assert_eq!(response.status(), 200);
    // A client's request id is replaced (no trusted proxies here) by a UUID, which the
    // answer carries and the decision line names.
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(id.len(), 36, "{id}");
    assert_ne!(id, "chosen-by-the-client");
    // The decision line is JSON, names the route, and never shows the query.
    let access = next_json("access");
    assert_eq!(access["route"], "all");
    assert_eq!(access["status"], 200);
    assert_eq!(access["decision"], "public");
    assert_eq!(access["request_id"], id.as_str());
    assert!(!access.to_string().contains("secret-value"));

    // SIGHUP reloads the edited file.
    std::fs::write(&file, text.replace("name = \"all\"", "name = \"renamed\"")).unwrap();
    let pid = child.id().to_string();
    Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    wait_for("config reloaded");
    assert_eq!(get("/y"), 200);
    assert_eq!(next_json("access after reload")["route"], "renamed");

    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let started = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert_eq!(status.code(), Some(0));
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "serve did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn check_runs_rule_tests_and_lints() {
    // The shipped example's tests all pass.
    let (code, out, err) = run(portcullis()
        .args(["check", "--config"])
        .arg(repo("config/examples/crm.toml"))
        .env("PARTNER_SECRET", "0123456789abcdef0123456789abcdef"));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("tests: 7 passed, 0 failed"), "{out}");

    // A failing expectation fails the check, naming the test.
    let dir = fixture_dir();
    let file = dir.path().join("rules.toml");
    let base = "[server]\nhttp = \"127.0.0.1:0\"\n[upstreams.app]\nbuiltin = \"echo\"\n\
        [providers.p]\nissuer = \"i\"\naudiences = [\"a\"]\nalgorithms = [\"RS256\"]\npublic_keys = [\"rsa.pub.pem\"]\n\
        [[routes]]\nname = \"site\"\npath_prefix = \"/\"\nupstream = \"app\"\nauth = \"public\"\n\
        [[routes]]\nname = \"api\"\npath_prefix = \"/api\"\nupstream = \"app\"\nauth = \"jwt\"\n[routes.require]\nscopes = [\"read\"]\n";
    let tests = "[[tests]]\nname = \"api is protected\"\nrequest = \"GET http://h/api/x\"\nexpect_status = 401\n\
        [[tests]]\nname = \"wrongly expects public\"\nrequest = \"GET http://h/api/x\"\nclaims = { sub = \"a\" }\nexpect_status = 200\n";
    std::fs::write(&file, format!("{base}{tests}")).unwrap();
    let (code, out, _) = run(portcullis().args(["check", "--config"]).arg(&file));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("tests: 1 passed, 1 failed"), "{out}");
    assert!(
        out.contains("FAIL test \"wrongly expects public\""),
        "{out}"
    );
    assert!(
        out.contains("status 403 (insufficient_scope), expected 200"),
        "{out}"
    );

    // The public catch-all covering /api is a warning: exit 0, or 2 with --strict.
    std::fs::write(&file, base).unwrap();
    let (code, out, _) = run(portcullis().args(["check", "--config"]).arg(&file));
    assert_eq!(code, 0);
    assert!(
        out.contains(
            "warning: route \"site\" is public and its prefix / covers protected route \"api\""
        ),
        "{out}"
    );
    let (code, _, _) = run(portcullis()
        .args(["check", "--strict", "--config"])
        .arg(&file));
    assert_eq!(code, 2);
}

#[test]
fn explain_shows_route_requirements_decision_and_headers() {
    let config = repo("config/examples/crm.toml");
    let explain = |args: &[&str]| {
        run(portcullis()
            .args(["explain", "--config"])
            .arg(&config)
            .args(args)
            .env("PARTNER_SECRET", "0123456789abcdef0123456789abcdef"))
    };
    let (code, out, err) = explain(&[
        "POST",
        "https://crm.example.com/api/customers",
        "--claims",
        r#"{"sub":"alice","scope":"crm.write","role":"sales","groups":["eng","ops"]}"#,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("considered: crm-api-write, crm-web"), "{out}");
    assert!(out.contains("route:      crm-api-write"), "{out}");
    assert!(out.contains("require:    scope crm.write: holds"), "{out}");
    assert!(
        out.contains("require:    claim role in [admin, sales]: holds"),
        "{out}"
    );
    assert!(out.contains("decision:   ALLOW 200 (allowed)"), "{out}");
    assert!(out.contains("  x-auth-user: alice"), "{out}");
    assert!(out.contains("  x-auth-groups: eng,ops"), "{out}");

    let (_, out, _) = explain(&[
        "GET",
        "https://crm.example.com/api/x",
        "--claims",
        r#"{"sub":"eve"}"#,
    ]);
    assert!(out.contains("require:    scope crm.read: FAILS"), "{out}");
    assert!(
        out.contains("decision:   DENY 403 (insufficient_scope)"),
        "{out}"
    );

    let (_, out, _) = explain(&["GET", "https://other.test/"]);
    assert!(out.contains("route:      none"), "{out}");
    assert!(out.contains("decision:   DENY 404 (no_route)"), "{out}");

    // A real token is verified: the dev key signs for kid corp-2026 in this example.
    let (code, token, err) = run(portcullis()
        .args([
            "token",
            "--key",
            "config/dev/signing.key.pem",
            "--iss",
            "https://idp.example.com",
            "--aud",
            "crm",
            "--kid",
            "corp-2026",
            "--sub",
            "carol",
            "--scope",
            "crm.read",
        ])
        .current_dir(repo("")));
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = explain(&[
        "GET",
        "https://crm.example.com/api/x",
        "--token",
        token.trim(),
    ]);
    assert!(out.contains("provider:   corp"), "{out}");
    assert!(out.contains("decision:   ALLOW 200 (allowed)"), "{out}");
    assert!(out.contains("  x-auth-user: carol"), "{out}");
    let (_, out, _) = explain(&[
        "GET",
        "https://crm.example.com/api/x",
        "--token",
        "not.a.token",
    ]);
    assert!(out.contains("decision:   DENY 401 (malformed)"), "{out}");
}

#[test]
fn explain_prints_the_readings_and_refuses_a_disagreeing_one() {
    let config = repo("config/portcullis.toml");
    let explain = |args: &[&str]| {
        run(portcullis()
            .args(["explain", "--config"])
            .arg(&config)
            .args(args))
    };
    let (code, out, err) = explain(&[
        "GET",
        "http://127.0.0.1:8080/ADMIN;x/users",
        "--claims",
        r#"{"sub":"alice"}"#,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("route:      app"), "{out}");
    assert!(
        out.contains("reading:    /admin/users (parameters removed, case folded) -> admin: another policy, refused"),
        "{out}"
    );
    assert!(
        out.contains("reading:    /ADMIN/users (parameters removed) -> app\n"),
        "{out}"
    );
    assert!(
        out.contains("decision:   DENY 400 (ambiguous_path)"),
        "{out}"
    );
    // An ordinary upper-case path: its folded reading is the same route.
    let (_, out, _) = explain(&[
        "GET",
        "http://127.0.0.1:8080/Reports/Q1.pdf",
        "--claims",
        r#"{"sub":"alice"}"#,
    ]);
    assert!(
        out.contains("reading:    /reports/q1.pdf (case folded) -> app\n"),
        "{out}"
    );
    assert!(out.contains("decision:   ALLOW 200 (allowed)"), "{out}");
}
