//! What the gateway would do with a request, without sending it: `portcullis explain`, and
//! the `[[tests]]` tables `portcullis check` runs.
//!
//! The decision is the proxy's own (`decide.rs`): the same limits, gateway endpoints,
//! canonical target, route, readings, verification, requirements, cross-site check and
//! header rewrite. Only the network is missing; this module builds the request, presents
//! the credential, and reports.

use std::fmt::Write as _;

use http::{HeaderMap, HeaderValue, Method, Request, Uri};

use crate::auth::claims::Claims;
use crate::canonical::{canonical_host, canonical_path};
use crate::csrf::Verdict;
use crate::decide::{self, Decision, Facts, Trace};
use crate::error::ProxyError;
use crate::identity::{self, ClientInfo};
use crate::outcome::Outcome;
use crate::policy::{RouteAuth, TokenSource};
use crate::router::{HostMatch, PathMatch};
use crate::snapshot::Snapshot;

/// The credential to evaluate with.
pub enum Credential {
    None,
    /// A real token: signature and claims are checked.
    Token(String),
    /// Claims taken as verified (signature not checked): for rule tests.
    Claims(Claims),
}

/// The outcome of one evaluation.
pub struct Evaluation {
    pub route: Option<String>,
    /// Routes whose host, path and method match, most specific first.
    pub considered: Vec<String>,
    pub status: u16,
    pub reason: &'static str,
    pub provider: Option<String>,
    pub requirements: Vec<(String, bool)>,
    pub upstream: Option<String>,
    /// The route's rate limit, described (explain does not count the request).
    pub limit: Option<String>,
    /// The request line's target and headers the upstream would receive.
    pub target: Option<String>,
    pub headers: Vec<(String, String)>,
    /// The other readings of the path a backend could make (I9), and their routes.
    pub readings: Vec<(String, String, Option<String>, bool)>,
    /// The cross-site request check, when the credential is a cookie.
    pub csrf: Option<Verdict>,
    /// A gateway endpoint or a login redirect, in words.
    pub note: Option<String>,
}

/// Evaluates `method url` with `credential` and the request headers `extra` against
/// `snapshot`.
pub async fn evaluate(
    snapshot: &Snapshot,
    method: &str,
    url: &str,
    credential: &Credential,
    extra: &[(String, String)],
) -> Result<Evaluation, String> {
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| format!("\"{method}\" is not a method"))?;
    let uri: Uri = url.parse().map_err(|_| format!("\"{url}\" is not a URL"))?;
    let authority = uri
        .authority()
        .ok_or("the URL needs a host, e.g. https://crm.example.com/api")?
        .clone();
    let host = canonical_host(authority.as_str()).map_err(|e| e.to_string())?;
    let tls = uri.scheme_str() == Some("https");
    let mut evaluation = Evaluation {
        route: None,
        considered: Vec::new(),
        status: 0,
        reason: "",
        provider: None,
        requirements: Vec::new(),
        upstream: None,
        limit: None,
        target: None,
        headers: Vec::new(),
        readings: Vec::new(),
        csrf: None,
        note: None,
    };

    // The request as a client would send it: the target in origin form, `Host` from the URL.
    let mut headers = HeaderMap::new();
    for (name, value) in extra {
        headers.append(
            http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("\"{name}\" is not a header name"))?,
            HeaderValue::from_str(value).map_err(|_| format!("the {name} value is not valid"))?,
        );
    }
    if !headers.contains_key(http::header::HOST) {
        let value = HeaderValue::from_str(authority.as_str()).map_err(|e| e.to_string())?;
        headers.insert(http::header::HOST, value);
    }
    let origin_form = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let (mut parts, ()) = Request::builder()
        .method(method.clone())
        .uri(origin_form)
        .body(())
        .map_err(|e| e.to_string())?
        .into_parts();
    parts.headers = headers;

    // The credential, presented the way the matched route reads tokens (its first source).
    let matched = crate::readings::match_target(&snapshot.routes, &host, uri.path(), &method);
    let route = matched
        .as_ref()
        .ok()
        .map(|m| &snapshot.routes.routes()[m.index]);
    if let (Credential::Token(token), Some(route)) = (credential, route) {
        let sources: &[TokenSource] = match &route.auth {
            RouteAuth::Protected(policy) => &policy.sources,
            RouteAuth::Public => &[],
        };
        let (name, value) = match sources.first() {
            Some(TokenSource::Cookie(name)) => (http::header::COOKIE, format!("{name}={token}")),
            Some(TokenSource::Bearer) | None => {
                (http::header::AUTHORIZATION, format!("Bearer {token}"))
            }
        };
        let value = HeaderValue::from_str(&value).map_err(|e| e.to_string())?;
        parts.headers.append(name, value);
    }

    let facts = Facts {
        tls,
        trusted: false,
        now: Some(crate::auth::unix_now()),
        assumed: match credential {
            Credential::Claims(claims) => Some(claims.clone()),
            Credential::None | Credential::Token(_) => None,
        },
        // Explaining a request does not count it against a rate limit.
        peer: None,
        client_cert: None,
    };
    let mut trace = Trace {
        timed: true,
        ..Trace::default()
    };
    let decided = decide::decide(snapshot, &parts, &facts, &mut trace).await;

    // What led there, for the report.
    if let Ok(matched) = &matched {
        evaluation.considered = candidates(snapshot, &host, matched.matched(), &method);
        let route = &snapshot.routes.routes()[matched.index];
        let semantics = snapshot.upstreams[route.upstream].path_semantics;
        if let Ok(readings) = crate::readings::list(
            &snapshot.routes,
            &host,
            matched.matched(),
            &method,
            semantics,
            route.policy,
        ) {
            evaluation.readings = readings
                .into_iter()
                .map(|r| {
                    let name = r
                        .route
                        .map(|i| snapshot.routes.routes()[i].name.to_string());
                    (r.label, r.path, name, r.agrees)
                })
                .collect();
        }
    } else if let Ok(path) = canonical_path(uri.path()) {
        evaluation.considered = candidates(snapshot, &host, &path, &method);
    }
    if let Some(index) = trace.route {
        let route = &snapshot.routes.routes()[index];
        evaluation.route = Some(route.name.to_string());
        evaluation.upstream = Some(snapshot.upstreams[route.upstream].name.to_string());
        evaluation.limit = route.rate_limit.as_ref().map(|l| l.spec().describe());
        let claims = match credential {
            Credential::Claims(claims) => Some(claims.clone()),
            Credential::None | Credential::Token(_) => {
                trace.subject.as_ref().map(|c| (**c).clone())
            }
        };
        if let (RouteAuth::Protected(policy), Some(claims)) = (&route.auth, claims) {
            for scope in policy.scopes.iter() {
                evaluation.requirements.push((
                    format!("scope {scope}"),
                    claims.has_scopes(std::slice::from_ref(scope)),
                ));
            }
            for requirement in policy.claims.iter() {
                evaluation.requirements.push((
                    format!(
                        "claim {} in [{}]",
                        requirement.name,
                        requirement.accepted.join(", ")
                    ),
                    requirement.holds(&claims),
                ));
            }
        }
    }
    evaluation.provider = trace.provider.map(|p| snapshot.provider_name(p).to_owned());
    evaluation.csrf = trace.csrf;
    evaluation.reason = trace.outcome.as_label();

    match decided {
        Err(error) => Ok(evaluation.denied(&error, trace.outcome)),
        Ok(Decision::Endpoint(endpoint)) => {
            evaluation.status = 200;
            evaluation.note = Some(format!(
                "the gateway's own {endpoint:?} endpoint answers (no upstream)"
            ));
            Ok(evaluation)
        }
        Ok(Decision::LogIn { return_to, .. }) => {
            evaluation.status = 302;
            evaluation.note = Some(format!(
                "no session: the browser is sent to log in, then back to {return_to}"
            ));
            Ok(evaluation)
        }
        Ok(Decision::Forward(forward)) => {
            evaluation.status = 200;
            let client = ClientInfo {
                peer: identity::peer_value("192.0.2.1".parse().expect("a documentation address")),
                tls,
                host: forward.host_value.as_ref(),
                trusted: false,
            };
            let added = decide::rewrite(
                snapshot,
                forward.route,
                &forward.permit,
                &forward.path_and_query,
                forward.host_value.as_ref(),
                &mut parts,
                &client,
            );
            added.append_to(&mut parts.headers);
            evaluation.target = Some(
                decide::upstream_target(snapshot, forward.route, forward.path_and_query.clone())
                    .to_string(),
            );
            evaluation.headers = parts
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            if let (Some(assertion), Some(identity)) =
                (snapshot.identity.assertion(), forward.permit.identity())
            {
                // Described, not signed: explain prints no credential.
                let route = &snapshot.routes.routes()[forward.route];
                evaluation.headers.push((
                    assertion.header().as_str().to_owned(),
                    format!(
                        "<{} JWT signed by the gateway: aud {}, sub {}, for {} {}, valid {} s>",
                        assertion.algorithm().name(),
                        snapshot.upstreams[route.upstream].name,
                        identity.claims.subject().unwrap_or("-"),
                        parts.method,
                        evaluation.target.as_deref().unwrap_or(""),
                        assertion.lifetime_secs(),
                    ),
                ));
            }
            Ok(evaluation)
        }
    }
}

impl Evaluation {
    fn denied(mut self, error: &ProxyError, outcome: Outcome) -> Evaluation {
        self.status = error.rendering().status.as_u16();
        self.reason = if outcome == Outcome::Other {
            error.outcome().as_label()
        } else {
            outcome.as_label()
        };
        self
    }

    /// The human-readable report of `portcullis explain`.
    pub fn report(&self) -> String {
        let mut out = String::new();
        let decision = if self.status < 400 { "ALLOW" } else { "DENY" };
        let _ = writeln!(
            out,
            "considered: {}",
            if self.considered.is_empty() {
                "none".into()
            } else {
                self.considered.join(", ")
            }
        );
        let _ = writeln!(
            out,
            "route:      {}",
            self.route
                .as_deref()
                .unwrap_or("none (404: deny by default)")
        );
        for (label, path, route, agrees) in &self.readings {
            let _ = writeln!(
                out,
                "reading:    {path} ({label}) -> {}{}",
                route.as_deref().unwrap_or("no route"),
                if *agrees {
                    ""
                } else {
                    ": another policy, refused"
                }
            );
        }
        if let Some(provider) = &self.provider {
            let _ = writeln!(out, "provider:   {provider}");
        }
        for (requirement, holds) in &self.requirements {
            let _ = writeln!(
                out,
                "require:    {requirement}: {}",
                if *holds { "holds" } else { "FAILS" }
            );
        }
        if let Some(limit) = &self.limit {
            let _ = writeln!(out, "limit:      {limit} (not counted by explain)");
        }
        match self.csrf {
            Some(Verdict::NotChecked(why)) => {
                let _ = writeln!(out, "csrf:       not checked ({why})");
            }
            Some(Verdict::Allowed(why)) => {
                let _ = writeln!(out, "csrf:       allowed ({why})");
            }
            Some(Verdict::Refused(why)) => {
                let _ = writeln!(out, "csrf:       REFUSED ({why})");
            }
            None => {}
        }
        let _ = writeln!(
            out,
            "decision:   {decision} {} ({})",
            self.status, self.reason
        );
        if let Some(note) = &self.note {
            let _ = writeln!(out, "            {note}");
        }
        if let (Some(upstream), Some(target)) = (&self.upstream, &self.target) {
            let _ = writeln!(out, "upstream {upstream} would receive {target} with:");
            for (name, value) in &self.headers {
                let _ = writeln!(out, "  {name}: {value}");
            }
        }
        out
    }
}

/// Names of the routes that match host, path and method, in precedence order.
fn candidates(snapshot: &Snapshot, host: &str, path: &str, method: &Method) -> Vec<String> {
    let mut matching: Vec<(u8, usize, bool, &str)> = snapshot
        .routes
        .routes()
        .iter()
        .filter_map(|route| {
            let host_rank = match &route.host {
                HostMatch::Exact(h) if **h == *host => 3,
                HostMatch::Wildcard(s) if host.ends_with(&**s) => 2,
                HostMatch::Any => 1,
                _ => return None,
            };
            let path_rank = match &route.path {
                PathMatch::Exact(p) if **p == *path => usize::MAX,
                PathMatch::Prefix(p)
                    if **p == *"/" || path == &**p || path.starts_with(&format!("{p}/")) =>
                {
                    p.len()
                }
                _ => return None,
            };
            let restricted = match &route.methods {
                Some(methods) if methods.contains(method) => true,
                Some(_) => return None,
                None => false,
            };
            Some((host_rank, path_rank, restricted, &*route.name))
        })
        .collect();
    matching.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)).then(b.2.cmp(&a.2)));
    matching
        .into_iter()
        .map(|(_, _, _, name)| name.to_owned())
        .collect()
}
