//! What the gateway would do with a request, without sending it: `portcullis explain`, and
//! the `[[tests]]` tables `portcullis check` runs.
//!
//! The evaluation goes through the same canonicalisation, route table, verification,
//! requirement checks and header rewrite as the proxy; only the network is missing.

use std::fmt::Write as _;

use http::{HeaderMap, HeaderValue, Method, Uri};

use crate::auth::claims::Claims;
use crate::auth::{self, AuthError, Permit};
use crate::canonical::{canonical_host, canonical_path};
use crate::error::ProxyError;
use crate::identity::{self, ClientInfo};
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
    pub headers: Vec<(String, String)>,
    /// The other readings of the path a backend could make (I9), and their routes.
    pub readings: Vec<(String, String, Option<String>, bool)>,
    /// The cross-site request check, when the credential is a cookie.
    pub csrf: Option<crate::csrf::Verdict>,
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
        .ok_or("the URL needs a host, e.g. https://crm.example.com/api")?;
    let host = canonical_host(authority.as_str()).map_err(|e| e.to_string())?;
    let mut evaluation = Evaluation {
        route: None,
        considered: Vec::new(),
        status: 0,
        reason: "",
        provider: None,
        requirements: Vec::new(),
        upstream: None,
        headers: Vec::new(),
        readings: Vec::new(),
        csrf: None,
    };
    let matched = match crate::readings::match_target(&snapshot.routes, &host, uri.path(), &method)
    {
        Ok(matched) => matched,
        Err(refusal) => {
            if let Ok(path) = canonical_path(uri.path()) {
                evaluation.considered = candidates(snapshot, &host, &path, &method);
            }
            return Ok(evaluation.denied(&refusal.into()));
        }
    };
    let path = matched.matched();
    evaluation.considered = candidates(snapshot, &host, path, &method);
    let index = matched.index;
    let route = &snapshot.routes.routes()[index];
    evaluation.route = Some(route.name.to_string());
    evaluation.upstream = Some(snapshot.upstreams[route.upstream].name.to_string());
    let readings = crate::readings::list(
        &snapshot.routes,
        &host,
        path,
        &method,
        snapshot.upstreams[route.upstream].path_semantics,
        route.policy,
    );
    let Ok(readings) = readings else {
        return Ok(evaluation.denied(&ProxyError::AmbiguousPath));
    };
    evaluation.readings = readings
        .into_iter()
        .map(|r| {
            let name = r
                .route
                .map(|i| snapshot.routes.routes()[i].name.to_string());
            (r.label, r.path, name, r.agrees)
        })
        .collect();
    if evaluation.readings.iter().any(|r| !r.3) {
        return Ok(evaluation.denied(&ProxyError::AmbiguousPath));
    }

    let mut headers = HeaderMap::new();
    for (name, value) in extra {
        headers.append(
            http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("\"{name}\" is not a header name"))?,
            HeaderValue::from_str(value).map_err(|_| format!("the {name} value is not valid"))?,
        );
    }
    headers.insert(
        http::header::HOST,
        HeaderValue::from_str(authority.as_str()).map_err(|e| e.to_string())?,
    );
    let sources: &[TokenSource] = match &route.auth {
        RouteAuth::Protected(policy) => &policy.sources,
        RouteAuth::Public => &[],
    };
    let ctx = auth::AuthContext {
        providers: &snapshot.providers,
        cache: &snapshot.token_cache,
        // explain presents tokens or assumed claims, never a browser session.
        login: None,
        tls: false,
        now: auth::unix_now(),
    };
    let permit = match (&route.auth, credential) {
        (RouteAuth::Protected(policy), Credential::Claims(claims)) => {
            auth::authorize_assumed_claims(policy, claims)
        }
        (_, Credential::Token(token)) => {
            // Presented the way the route reads tokens: the first configured source.
            match sources.first() {
                Some(TokenSource::Cookie(name)) => {
                    let value = HeaderValue::from_str(&format!("{name}={token}"))
                        .map_err(|e| e.to_string())?;
                    headers.insert(http::header::COOKIE, value);
                }
                _ => {
                    let value = HeaderValue::from_str(&format!("Bearer {token}"))
                        .map_err(|e| e.to_string())?;
                    headers.insert(http::header::AUTHORIZATION, value);
                }
            }
            auth::authenticate(&route.auth, &headers, &ctx).await
        }
        _ => auth::authenticate(&route.auth, &headers, &ctx).await,
    };
    if let (RouteAuth::Protected(policy), Some(claims)) =
        (&route.auth, claims_of(credential, &permit))
    {
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
    let permit = match permit {
        Ok(permit) => permit,
        Err(error) => return Ok(evaluation.denied(&ProxyError::Denied(error))),
    };
    // The credential is a cookie when it came from one, or stands for a session.
    let ambient = permit.ambient()
        || matches!(
            (&route.auth, credential),
            (RouteAuth::Protected(p), Credential::Claims(_))
                if (!p.jwt && p.session) || matches!(p.sources.first(), Some(TokenSource::Cookie(_)))
        );
    if let (true, RouteAuth::Protected(policy)) = (ambient, &route.auth) {
        let scheme = uri.scheme_str().unwrap_or("http");
        let own = crate::csrf::Origin::of(scheme, authority.as_str());
        let verdict = crate::csrf::check(
            &policy.csrf,
            &method,
            &headers,
            own.as_ref(),
            &snapshot.server.trusted_origins,
        );
        evaluation.csrf = Some(verdict);
        if verdict.refused() {
            return Ok(evaluation.denied(&ProxyError::CsrfRejected));
        }
    }
    evaluation.provider = permit
        .identity()
        .map(|i| snapshot.providers[i.provider].name.to_string());
    evaluation.status = 200;
    evaluation.reason = if permit.identity().is_some() {
        "allowed"
    } else {
        "public"
    };
    let host_value = headers.get(http::header::HOST).cloned();
    let client = ClientInfo {
        peer: identity::peer_value("192.0.2.1".parse().expect("a documentation address")),
        tls: uri.scheme_str() == Some("https"),
        host: host_value.as_ref(),
        trusted: false,
    };
    identity::rewrite_request(
        &mut headers,
        &snapshot.identity,
        &permit,
        sources,
        &client,
        identity::RouteRules {
            keep_method_override: route.allow_method_override,
            original_uri: None,
        },
    );
    evaluation.headers = headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    Ok(evaluation)
}

fn claims_of(credential: &Credential, permit: &Result<Permit, AuthError>) -> Option<Claims> {
    match (credential, permit) {
        (Credential::Claims(claims), _) => Some(claims.clone()),
        (_, Ok(permit)) => permit.identity().map(|i| (*i.claims).clone()),
        _ => None,
    }
}

impl Evaluation {
    fn denied(mut self, error: &ProxyError) -> Evaluation {
        self.status = error.rendering().status.as_u16();
        self.reason = error.reason();
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
        match self.csrf {
            Some(crate::csrf::Verdict::NotChecked(why)) => {
                let _ = writeln!(out, "csrf:       not checked ({why})");
            }
            Some(crate::csrf::Verdict::Allowed(why)) => {
                let _ = writeln!(out, "csrf:       allowed ({why})");
            }
            Some(crate::csrf::Verdict::Refused(why)) => {
                let _ = writeln!(out, "csrf:       REFUSED ({why})");
            }
            None => {}
        }
        let _ = writeln!(
            out,
            "decision:   {decision} {} ({})",
            self.status, self.reason
        );
        if let Some(upstream) = &self.upstream
            && self.status < 400
        {
            let _ = writeln!(out, "upstream {upstream} would receive:");
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
