//! `portcullis check`: what it prints besides "ok": one line per route, warnings about
//! configs that are valid but probably not meant (with `--strict` they fail the check),
//! and the `[[tests]]` tables, run through the same decision as the proxy's (`explain`).

use crate::explain;
use crate::snapshot::Snapshot;

/// Warnings `check` prints (with `--strict` they fail the check): a public route whose
/// prefix covers a protected route's prefix, so paths that miss the protected prefix by
/// one segment (`/apix`, `/api-v2`) are public.
pub fn lint(snapshot: &Snapshot) -> Vec<String> {
    use crate::policy::RouteAuth;
    use crate::router::PathMatch;
    let routes = snapshot.routes.routes();
    let mut warnings = Vec::new();
    // Protected routes by host: a public prefix is only compared with its own host's.
    let mut protected_by_host: std::collections::HashMap<_, Vec<_>> = Default::default();
    for route in routes
        .iter()
        .filter(|r| !matches!(r.auth, RouteAuth::Public))
    {
        protected_by_host
            .entry(&route.host)
            .or_default()
            .push(route);
    }
    for public in routes
        .iter()
        .filter(|r| matches!(r.auth, RouteAuth::Public))
    {
        let PathMatch::Prefix(p) = &public.path else {
            continue;
        };
        for protected in protected_by_host.get(&public.host).into_iter().flatten() {
            let q = match &protected.path {
                PathMatch::Prefix(q) | PathMatch::Exact(q) => q,
            };
            let covers =
                **p == *"/" || (q.starts_with(&**p) && q.as_bytes().get(p.len()) == Some(&b'/'));
            if covers {
                warnings.push(format!(
                    "route \"{}\" is public and its prefix {p} covers protected route \"{}\" ({q}): \
                     requests next to {q} (e.g. {q}x) are public; make sure that is intended",
                    public.name, protected.name
                ));
            }
        }
    }
    for route in routes {
        let RouteAuth::Protected(policy) = &route.auth else {
            continue;
        };
        let cookie = policy.session
            || (policy.jwt
                && policy
                    .sources
                    .iter()
                    .any(|s| matches!(s, crate::policy::TokenSource::Cookie(_))));
        if cookie && !policy.csrf.enabled {
            warnings.push(format!(
                "route \"{}\" takes a cookie credential and has csrf = \"off\": another site's \
                 page can make a logged-in browser send it state-changing requests; \
                 list partner origins in server.trusted_origins instead",
                route.name
            ));
        }
    }
    if let Some(login) = &snapshot.login
        && !login.store.is_server_side()
        && snapshot.denylist.is_none()
    {
        warnings.push(
            "login.store is \"cookie\": sessions live only in the browser, so a logout elsewhere \
             (back-channel logout, another instance) cannot end them before they expire; \
             use store = \"redis\" or a [redis] table (the shared denylist) when that matters"
                .to_owned(),
        );
    }
    warnings
}

/// One line per route, for `portcullis check`.
pub fn route_summaries(snapshot: &Snapshot) -> Vec<String> {
    use crate::policy::RouteAuth;
    use crate::router::{HostMatch, PathMatch};
    snapshot
        .routes
        .routes()
        .iter()
        .map(|route| {
            let host = match &route.host {
                HostMatch::Any => "any host".to_owned(),
                HostMatch::Exact(h) => format!("host {h}"),
                HostMatch::Wildcard(s) => format!("host *{s}"),
            };
            let path = match &route.path {
                PathMatch::Exact(p) => format!("path {p}"),
                PathMatch::Prefix(p) => format!("prefix {p}"),
            };
            let methods = route
                .methods
                .as_ref()
                .map_or("all methods".to_owned(), |m| {
                    m.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(",")
                });
            let upstream = &snapshot.upstreams[route.upstream];
            let auth = match &route.auth {
                RouteAuth::Public => "public".to_owned(),
                RouteAuth::Protected(policy) => {
                    let providers: Vec<String> = policy
                        .providers
                        .iter()
                        .map(|&i| {
                            let p = &snapshot.providers[i];
                            match &p.introspection {
                                Some(i) if i.introspect_jwts => {
                                    format!("{} (every token introspected)", p.name)
                                }
                                Some(_) => format!("{} (opaque tokens introspected)", p.name),
                                None => p.name.to_string(),
                            }
                        })
                        .collect();
                    let sources: Vec<String> =
                        policy.sources.iter().map(ToString::to_string).collect();
                    let mut parts = Vec::new();
                    if policy.jwt {
                        parts.push(format!(
                            "jwt from {} via {}",
                            sources.join(", "),
                            providers.join(", ")
                        ));
                    }
                    if policy.api_key {
                        parts.push("api key".to_owned());
                    }
                    if policy.mtls {
                        parts.push("client certificate".to_owned());
                    }
                    if policy.session {
                        use crate::policy::Unauthenticated;
                        parts.push(
                            match policy.on_unauthenticated {
                                Unauthenticated::Negotiate => {
                                    "session (without one: browsers log in, other requests 401)"
                                }
                                Unauthenticated::Redirect => "session (without one: log in)",
                                Unauthenticated::Deny => "session (without one: 401)",
                            }
                            .to_owned(),
                        );
                    }
                    let mut text = parts.join(" or ");
                    if !policy.scopes.is_empty() {
                        text.push_str(&format!("; requires scopes {}", policy.scopes.join(" ")));
                    }
                    for claim in policy.claims.iter() {
                        text.push_str(&format!(
                            "; requires {} in [{}]",
                            claim.name,
                            claim.accepted.join(", ")
                        ));
                    }
                    if policy.forward_token {
                        text.push_str("; forwards the token");
                    }
                    let tokens = &route.session_tokens;
                    for (what, header) in [("access", &tokens.access), ("ID", &tokens.id)] {
                        if let Some(header) = header {
                            text.push_str(&format!(
                                "; sends the session's {what} token in {header}"
                            ));
                        }
                    }
                    if let Some(assertion) = snapshot.identity.assertion() {
                        text.push_str(&format!(
                            "; asserts the identity in {} ({})",
                            assertion.header(),
                            assertion.algorithm().name()
                        ));
                    }
                    if !policy.csrf.enabled {
                        text.push_str("; csrf off");
                    } else if policy.csrf.allow_same_site {
                        text.push_str("; csrf allows same-site");
                    }
                    text
                }
            };
            let auth = match &route.rate_limit {
                Some(limit) => format!("{auth}; limited to {}", limit.spec().describe()),
                None => auth,
            };
            let mapped = match (upstream.mapping.prefix.as_deref(), &route.strip_prefix) {
                (None, None) => String::new(),
                (prefix, _) => format!(", {} as {}", route.mount(), prefix.unwrap_or("/")),
            };
            format!(
                "route {}: {host}, {path}, {methods} -> {} ({}){mapped}; auth {auth}",
                route.name,
                upstream.name,
                upstream.describe()
            )
        })
        .collect()
}

/// The outcome of the `[[tests]]` tables: how many passed, and a line per failure.
pub struct RuleTestReport {
    pub passed: usize,
    pub failures: Vec<String>,
}

/// Runs the `[[tests]]` tables.
pub async fn run_rule_tests(snapshot: &Snapshot) -> RuleTestReport {
    let mut report = RuleTestReport {
        passed: 0,
        failures: Vec::new(),
    };
    for test in &snapshot.rule_tests {
        let credential = match &test.claims {
            Some(claims) => explain::Credential::Claims(claims.clone()),
            None => explain::Credential::None,
        };
        let outcome = explain::evaluate(snapshot, &test.method, &test.url, &credential, &[]).await;
        let problems: Vec<String> = match outcome {
            Err(error) => vec![error],
            Ok(evaluation) => {
                let mut problems = Vec::new();
                if let Some(status) = test.expect_status
                    && status != evaluation.status
                {
                    problems.push(format!(
                        "status {} ({}), expected {status}",
                        evaluation.status, evaluation.reason
                    ));
                }
                let route = evaluation.route.as_deref().unwrap_or("-");
                if let Some(expected) = &test.expect_route
                    && expected != route
                {
                    problems.push(format!("route {route}, expected {expected}"));
                }
                let target = evaluation.target.as_deref().unwrap_or("-");
                if let Some(expected) = &test.expect_upstream_target
                    && expected != target
                {
                    problems.push(format!("upstream target {target}, expected {expected}"));
                }
                problems
            }
        };
        if problems.is_empty() {
            report.passed += 1;
        } else {
            report.failures.push(format!(
                "test \"{}\" ({} {}): {}",
                test.name,
                test.method,
                test.url,
                problems.join("; ")
            ));
        }
    }
    report
}
