//! Reading agreement (I9) never panics, and what it lets through is stable: the forwarded
//! path routes to the same route again, and every reading of it agrees.
#![no_main]

use std::sync::OnceLock;

use http::Method;
use libfuzzer_sys::fuzz_target;
use portcullis::Snapshot;
use portcullis::readings::{PathSemantics, list, route_target};

/// Public parents over protected children, an exact path, an upper-case route path, an
/// encoded-slash route and a path-parameter route.
fn snapshot() -> &'static Snapshot {
    static SNAPSHOT: OnceLock<Snapshot> = OnceLock::new();
    SNAPSHOT.get_or_init(|| {
        let text = r#"
[server]
http = "127.0.0.1:0"
[providers.p]
issuer = "https://issuer"
audiences = ["a"]
algorithms = ["RS256"]
jwks_url = "http://127.0.0.1:9/jwks"
[upstreams.app]
builtin = "echo"
[[routes]]
name = "root"
path_prefix = "/"
upstream = "app"
auth = "public"
[[routes]]
name = "admin"
path_prefix = "/admin"
upstream = "app"
auth = "jwt"
[[routes]]
name = "files"
path_prefix = "/files"
upstream = "app"
auth = "public"
allow_encoded_slash = true
[[routes]]
name = "files-admin"
path_prefix = "/files/admin"
upstream = "app"
auth = "jwt"
[[routes]]
name = "exact"
path = "/x"
upstream = "app"
auth = "jwt"
[[routes]]
name = "reports"
path_prefix = "/Reports"
upstream = "app"
auth = "jwt"
[[routes]]
name = "shop"
path_prefix = "/shop"
upstream = "app"
auth = "jwt"
allow_path_params = true
"#;
        // Keys are never fetched: only the route table is used.
        portcullis::config::load_str(text, "fuzz.toml".into()).unwrap_or_else(|e| panic!("{e}"))
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let raw = format!("/{text}");
    let snapshot = snapshot();
    let routes = &snapshot.routes;
    for semantics in [PathSemantics::Strict, PathSemantics::Servlet, PathSemantics::Iis] {
        let Ok((index, forwarded)) = route_target(routes, "h", &raw, &Method::GET, |_| semantics)
        else {
            continue;
        };
        let again = route_target(routes, "h", &forwarded, &Method::GET, |_| semantics)
            .expect("a forwarded path is accepted again");
        assert_eq!(again.0, index, "{raw} -> {forwarded}");
        let policy = routes.routes()[index].policy;
        let matched = portcullis::readings::match_target(routes, "h", &forwarded, &Method::GET)
            .expect("matched");
        let readings = list(routes, "h", matched.matched(), &Method::GET, semantics, policy)
            .expect("readable");
        assert!(readings.iter().all(|r| r.agrees), "{raw}: {readings:?}");
    }
});
