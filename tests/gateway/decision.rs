//! One decision (#20): what `explain` (and `[[tests]]`) report is what the live gateway
//! does with the same request: status, route, and the headers the upstream receives.

use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::json;

use crate::support::*;

const ROUTES_EXTRA: &str = r#"
[[routes]]
name = "objects"
path_prefix = "/objects"
upstream = "app"
auth = "public"
allow_encoded_slash = true

[[routes]]
name = "objects-admin"
path_prefix = "/objects/admin"
upstream = "app"
auth = "jwt"

[[routes]]
name = "exact"
path = "/exact"
upstream = "app"
auth = "jwt"
forward_original_uri = true

[[routes]]
name = "root"
path_prefix = "/"
upstream = "app"
auth = "public"
"#;

#[tokio::test]
async fn explain_follows_an_encoded_slash_route_as_the_gateway_does() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config_with(&upstream, "", ROUTES_EXTRA)).await;
    let snapshot = gw.shared.load();
    let evaluation = portcullis::explain::evaluate(
        &snapshot,
        "GET",
        "http://t/objects/a%2Fb",
        &portcullis::explain::Credential::None,
        &[],
    )
    .await
    .unwrap();
    assert_eq!(evaluation.status, 200, "{}", evaluation.report());
    assert_eq!(evaluation.route.as_deref(), Some("objects"));
    let answer = raw_request(
        gw.http,
        b"GET /objects/a%2Fb HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&answer), 200);
    assert_eq!(upstream.last().path_and_query, "/objects/a%2Fb");
}

/// A request the generator makes: method, path, and raw header lines.
#[derive(Debug, Clone)]
struct Case {
    method: &'static str,
    path: String,
    headers: Vec<(String, String)>,
}

fn cases(tokens: Vec<String>) -> impl Strategy<Value = Case> {
    let piece = prop::sample::select(vec![
        "public",
        "api",
        "admin",
        "cookie",
        "both",
        "objects",
        "exact",
        "x",
        "Admin",
        "API",
        "..",
        ".",
        "a%2Fb",
        "%2e%2e",
        ";x",
        "%252e%252e",
        "a%20b",
        "",
        "%41pi",
    ]);
    let path = (prop::collection::vec(piece, 1..4), any::<bool>()).prop_map(|(p, slash)| {
        let mut path = format!("/{}", p.join("/"));
        if slash {
            path.push('/');
        }
        path
    });
    let credential = prop::sample::select(vec![0usize, 1, 2, 3, 4, 5]);
    let extra = prop::collection::vec(
        prop::sample::select(vec![
            ("X-Auth-User", "mallory"),
            ("X_Auth_Groups", "admins"),
            ("X-Original-URL", "/admin"),
            ("Origin", "https://evil.example"),
            ("Sec-Fetch-Site", "cross-site"),
            ("Sec-Fetch-Site", "same-origin"),
            ("X-HTTP-Method-Override", "DELETE"),
            ("Cookie", "theme=dark"),
        ]),
        0..3,
    );
    (
        prop::sample::select(vec!["GET", "POST", "DELETE"]),
        path,
        credential,
        extra,
    )
        .prop_map(move |(method, path, credential, extra)| {
            let mut headers: Vec<(String, String)> = extra
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            match credential {
                1 => headers.push(("Authorization".into(), format!("Bearer {}", tokens[0]))),
                2 => headers.push(("Authorization".into(), format!("Bearer {}", tokens[1]))),
                3 => headers.push(("Cookie".into(), format!("at={}", tokens[0]))),
                4 => headers.push(("Authorization".into(), "Bearer not.a.token".into())),
                5 => {
                    headers.push(("Authorization".into(), format!("Bearer {}", tokens[0])));
                    headers.push(("Cookie".into(), format!("at={}", tokens[1])));
                }
                _ => {}
            }
            Case {
                method,
                path,
                headers,
            }
        })
}

/// The headers that tell whether the decision and the rewrite agree.
const COMPARED: [&str; 7] = [
    "x-auth-user",
    "x-auth-email",
    "x-auth-groups",
    "authorization",
    "cookie",
    "x-original-url",
    "x-http-method-override",
];

#[test]
fn explain_agrees_with_the_live_gateway_on_generated_requests() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (upstream, gw) = runtime.block_on(async {
        let upstream = Upstream::start().await;
        let gw = Gateway::start(&config_with(&upstream, "", ROUTES_EXTRA)).await;
        (upstream, gw)
    });
    let tokens = vec![
        valid_token(),
        token(
            jsonwebtoken::Algorithm::RS256,
            &claims(json!({"sub": "root", "scope": "admin", "role": "admin"})),
        ),
    ];
    let mut runner = TestRunner::new(Config {
        cases: 400,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&cases(tokens), |case| {
            runtime.block_on(async {
                let snapshot = gw.shared.load_full();
                let evaluation = portcullis::explain::evaluate(
                    &snapshot,
                    case.method,
                    &format!("http://t{}", case.path),
                    &portcullis::explain::Credential::None,
                    &case.headers,
                )
                .await
                .map_err(TestCaseError::fail)?;
                let before = upstream.count();
                let mut raw = format!("{} {} HTTP/1.1\r\nHost: t\r\n", case.method, case.path);
                for (k, v) in &case.headers {
                    raw.push_str(&format!("{k}: {v}\r\n"));
                }
                raw.push_str("Content-Length: 0\r\nConnection: close\r\n\r\n");
                let answer = tokio::time::timeout(
                    Duration::from_secs(5),
                    raw_request(gw.http, raw.as_bytes()),
                )
                .await
                .map_err(|_| TestCaseError::fail("no answer"))?;
                let status = raw_status(&answer);
                prop_assert_eq!(
                    status,
                    evaluation.status,
                    "{:?}\nexplain said:\n{}\ngateway said:\n{}",
                    case,
                    evaluation.report(),
                    answer
                );
                let forwarded = upstream.count() > before;
                prop_assert_eq!(forwarded, status == 200, "{:?}", case);
                if forwarded {
                    let seen = upstream.last();
                    prop_assert_eq!(Some(seen.path_and_query.clone()), evaluation.target.clone());
                    for name in COMPARED {
                        let explained: Vec<String> = evaluation
                            .headers
                            .iter()
                            .filter(|(k, _)| k == name)
                            .map(|(_, v)| v.clone())
                            .collect();
                        prop_assert_eq!(
                            seen.header_values(name),
                            explained,
                            "{} for {:?}\n{}",
                            name,
                            case,
                            evaluation.report()
                        );
                    }
                }
                Ok(())
            })
        })
        .unwrap();
}
