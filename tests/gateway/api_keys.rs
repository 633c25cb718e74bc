//! `auth = "api_key"`: keys made by `portcullis api-key new`, kept as hashes in a file
//! that reloads; the identity they stand for reaches the app, the key never does.

use crate::cli::portcullis;
use crate::operations::with_admin;
use crate::support::*;

/// A key made by the binary, and the `[[keys]]` entry it printed.
fn new_key(args: &[&str]) -> (String, String) {
    let out = portcullis()
        .args(["api-key", "new"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let entry = String::from_utf8(out.stderr).unwrap();
    assert!(key.starts_with("pck_") && key.len() == 47, "{key}");
    assert!(!entry.contains(&key), "the file entry holds the key itself");
    (key, entry)
}

const ROUTES: &str = r#"
[[routes]]
name = "batch"
path_prefix = "/batch"
upstream = "app"
auth = "api_key"
[routes.require]
scopes = ["crm.read"]

[[routes]]
name = "either"
path_prefix = "/either"
upstream = "app"
auth = ["jwt", "api_key"]
rate_limit = { requests = 1, per = "1h", key = "api_key" }
"#;

fn gateway_config(upstream: &Upstream, keys_file: &std::path::Path) -> String {
    with_admin(
        config_with(
            upstream,
            "",
            &format!(
                "{ROUTES}\n[api_keys]\nfile = {:?}\n",
                keys_file.display().to_string()
            ),
        ),
        "",
    )
}

async fn get(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = client().get(gw.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn an_api_key_is_its_identity_and_never_reaches_the_app() {
    let (reader, reader_entry) = new_key(&[
        "--sub",
        "svc-batch",
        "--scope",
        "crm.read",
        "--claim",
        "email=batch@example.com",
    ]);
    let (writer, writer_entry) = new_key(&["--sub", "svc-other", "--note", "no scopes"]);
    let dir = tempfile::tempdir().unwrap();
    let keys_file = dir.path().join("api-keys.toml");
    std::fs::write(&keys_file, format!("{reader_entry}\n{writer_entry}")).unwrap();
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&gateway_config(&upstream, &keys_file)).await;

    // In X-API-Key or as `Authorization: ApiKey`: the identity, and no key upstream.
    let authorization = format!("apikey {reader}");
    for header in [
        ("X-API-Key", reader.as_str()),
        ("Authorization", authorization.as_str()),
    ] {
        let response = get(&gw, "/batch/run", &[header]).await;
        assert_eq!(response.status(), 200, "{header:?}");
        let seen = upstream.last();
        assert_eq!(seen.header_values("x-auth-user"), ["svc-batch"]);
        assert_eq!(seen.header_values("x-auth-email"), ["batch@example.com"]);
        assert!(seen.header_values("x-api-key").is_empty());
        assert!(seen.header_values("authorization").is_empty());
    }
    // A key without the route's scope: 403; an unknown key, a key one character off, or
    // none: 401, and nothing reaches the app.
    let before = upstream.count();
    let response = get(&gw, "/batch/run", &[("X-API-Key", &writer)]).await;
    assert_error(response, 403, "insufficient_scope").await;
    let mut near = reader.clone();
    near.pop();
    near.push(if reader.ends_with('A') { 'B' } else { 'A' });
    for key in ["pck_unknown", near.as_str()] {
        let response = get(&gw, "/batch/run", &[("X-API-Key", key)]).await;
        assert_error(response, 401, "invalid_token").await;
    }
    assert_error(get(&gw, "/batch/run", &[]).await, 401, "unauthorized").await;
    // Two different keys in one request: ambiguous.
    let other = format!("ApiKey {writer}");
    let response = get(
        &gw,
        "/batch/run",
        &[("X-API-Key", &reader), ("Authorization", &other)],
    )
    .await;
    assert_error(response, 400, "ambiguous_credential").await;
    assert_eq!(upstream.count(), before);

    // A route that takes a JWT or a key; its limit counts each key on its own.
    assert_eq!(
        get(&gw, "/either/x", &[("X-API-Key", &reader)])
            .await
            .status(),
        200
    );
    assert_eq!(
        get(&gw, "/either/x", &[("X-API-Key", &reader)])
            .await
            .status(),
        429
    );
    assert_eq!(
        get(&gw, "/either/x", &[("X-API-Key", &writer)])
            .await
            .status(),
        200
    );
    let bearer = format!("Bearer {}", valid_token());
    assert_eq!(
        get(&gw, "/either/x", &[("Authorization", &bearer)])
            .await
            .status(),
        200
    );
    // On any route, a key the client sends is removed.
    assert_eq!(
        get(&gw, "/public/x", &[("X_API_Key", &reader)])
            .await
            .status(),
        200
    );
    assert!(upstream.last().header_values("x_api_key").is_empty());

    // A key removed from the file stops working at the reload.
    std::fs::write(&keys_file, &writer_entry).unwrap();
    let reload = client().post(gw.admin_url("/reload")).send().await.unwrap();
    assert_eq!(reload.status(), 200);
    let response = get(&gw, "/batch/run", &[("X-API-Key", &reader)]).await;
    assert_error(response, 401, "invalid_token").await;

    let summaries = portcullis::check::route_summaries(&gw.shared.load());
    let either = summaries
        .iter()
        .find(|l| l.starts_with("route either:"))
        .unwrap();
    assert!(either.contains("auth jwt from bearer via ec, ed, hs, rsa or api key; limited to 1 per 1h (burst 1) by api_key"), "{either}");
    gw.stop().await;
}

#[tokio::test]
async fn a_bad_keys_file_or_route_names_the_key() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let keys_file = dir.path().join("api-keys.toml");
    std::fs::write(&keys_file, "[[keys]]\nsha256 = \"nope\"\nsub = \"a\"\n").unwrap();
    let error = Gateway::try_start(&gateway_config(&upstream, &keys_file))
        .await
        .err()
        .unwrap();
    assert!(
        error.contains("api_keys.file") && error.contains("keys[0].sha256"),
        "{error}"
    );
    let routes =
        "[[routes]]\nname = \"k\"\npath_prefix = \"/k\"\nupstream = \"app\"\nauth = \"api_key\"\n";
    let error = Gateway::try_start(&config_with(&upstream, "", routes))
        .await
        .err()
        .unwrap();
    assert!(
        error.contains("routes[5].auth: names \"api_key\" but there is no [api_keys] table"),
        "{error}"
    );
}
