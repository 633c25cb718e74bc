//! Cross-site request forgery: a browser attaches cookies to every request to a site,
//! including the ones another site's page makes it send. A request whose credential came
//! from a cookie (the gateway's session, or a `cookie:NAME` token source) and whose method
//! can change state is checked for where it came from, with what browsers send; a Bearer
//! token is never ambient, so Bearer and public requests are not checked.
//!
//! The rules (those of Go's `net/http` CrossOriginProtection):
//! 1. `Sec-Fetch-Site: same-origin` or `none` (typed, bookmarked) passes;
//! 2. an `Origin` listed in `server.trusted_origins` passes (a partner's form, an SSO
//!    portal), whatever `Sec-Fetch-Site` says;
//! 3. `Sec-Fetch-Site: same-site` passes where the route sets `csrf_allow_same_site`;
//!    `cross-site`, `same-site` otherwise, or any other value is refused;
//! 4. without `Sec-Fetch-Site` (older browsers), `Origin` must be the request's own origin
//!    (scheme, host and port as the gateway was addressed); `Origin: null` is refused;
//! 5. with neither header the request did not come from a browser (curl, another server)
//!    and passes: no browser sends a cross-origin unsafe request without `Origin`.
//!
//! GET, HEAD and OPTIONS are not checked (no header check can protect a GET that changes
//! state: a link is enough), except where a route lists them in `csrf_unsafe_methods`;
//! then they are refused only when the browser marks them cross-site (rule 3), since a
//! plain navigation carries no `Origin`.

use http::Method;
use http::header::{HeaderMap, HeaderName, ORIGIN};

static SEC_FETCH_SITE: HeaderName = HeaderName::from_static("sec-fetch-site");

/// A route's `csrf`, `csrf_allow_same_site` and `csrf_unsafe_methods`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CsrfPolicy {
    /// `csrf = "origin"` (the default); false for `"off"`.
    pub enabled: bool,
    pub allow_same_site: bool,
    /// Safe methods that change state on this app (checked when marked cross-site).
    pub unsafe_methods: Box<[Method]>,
}

impl Default for CsrfPolicy {
    fn default() -> Self {
        CsrfPolicy {
            enabled: true,
            allow_same_site: false,
            unsafe_methods: Box::new([]),
        }
    }
}

/// An origin: scheme, lower-case host, port (the scheme's default when absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    scheme: Box<str>,
    host: Box<str>,
    port: u16,
}

impl Origin {
    /// `https://host[:port]` as browsers send it in `Origin` (no path, no user info).
    pub fn parse(text: &str) -> Option<Origin> {
        let (scheme, authority) = text.split_once("://")?;
        let scheme = scheme.to_ascii_lowercase();
        if !matches!(scheme.as_str(), "http" | "https") || authority.contains(['/', '@', '?', '#'])
        {
            return None;
        }
        Origin::of(&scheme, authority)
    }

    /// The origin of a request addressed to `authority` (a `Host` value) over `scheme`.
    pub fn of(scheme: &str, authority: &str) -> Option<Origin> {
        let default = match scheme {
            "http" => 80,
            "https" => 443,
            _ => return None,
        };
        let (host, port) = match authority.rsplit_once(':') {
            // An IPv6 literal without a port has colons inside its brackets.
            Some((host, port)) if !port.contains(']') => (host, port.parse().ok()?),
            _ => (authority, default),
        };
        if host.is_empty() {
            return None;
        }
        Some(Origin {
            scheme: scheme.into(),
            host: host.to_ascii_lowercase().into(),
            port,
        })
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
    }
}

/// What the check decided, and why (for `explain` and the debug log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not a request the check applies to.
    NotChecked(&'static str),
    Allowed(&'static str),
    Refused(&'static str),
}

impl Verdict {
    pub fn refused(self) -> bool {
        matches!(self, Verdict::Refused(_))
    }
}

/// Checks a request whose credential came from a cookie. `own` is the request's own
/// origin, `None` when it cannot be told (no host): then only `Sec-Fetch-Site` and
/// `trusted` can let it pass.
pub fn check(
    policy: &CsrfPolicy,
    method: &Method,
    headers: &HeaderMap,
    own: Option<&Origin>,
    trusted: &[Origin],
) -> Verdict {
    if !policy.enabled {
        return Verdict::NotChecked("csrf is off on this route");
    }
    let safe = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    let listed = safe && policy.unsafe_methods.contains(method);
    if safe && !listed {
        return Verdict::NotChecked("safe method");
    }
    let mut sites = headers.get_all(&SEC_FETCH_SITE).iter();
    let site = sites.next();
    let mut origins = headers.get_all(ORIGIN).iter();
    let origin = origins.next();
    if sites.next().is_some() || origins.next().is_some() {
        return Verdict::Refused("more than one Sec-Fetch-Site or Origin header");
    }
    let origin_text = origin.and_then(|o| o.to_str().ok());
    let trusted_origin = || {
        origin_text
            .and_then(Origin::parse)
            .is_some_and(|o| trusted.contains(&o))
    };
    if let Some(site) = site {
        return match site.as_bytes() {
            b"same-origin" | b"none" => Verdict::Allowed("Sec-Fetch-Site: same-origin"),
            _ if trusted_origin() => Verdict::Allowed("Origin is in trusted_origins"),
            b"same-site" if policy.allow_same_site => {
                Verdict::Allowed("Sec-Fetch-Site: same-site, allowed on this route")
            }
            b"same-site" => Verdict::Refused("Sec-Fetch-Site: same-site"),
            b"cross-site" => Verdict::Refused("Sec-Fetch-Site: cross-site"),
            _ => Verdict::Refused("an unknown Sec-Fetch-Site"),
        };
    }
    if listed {
        // A safe method checked only when marked cross-site: without the header, a plain
        // navigation (which sends no Origin) cannot be told from a forged one.
        return Verdict::Allowed("no Sec-Fetch-Site on a safe method");
    }
    let Some(origin) = origin else {
        return Verdict::Allowed("no Origin and no Sec-Fetch-Site: not a browser");
    };
    match origin_text.map(Origin::parse) {
        _ if origin.as_bytes() == b"null" => Verdict::Refused("Origin: null"),
        Some(Some(parsed)) if own == Some(&parsed) => {
            Verdict::Allowed("Origin is the request's own")
        }
        Some(Some(parsed)) if trusted.contains(&parsed) => {
            Verdict::Allowed("Origin is in trusted_origins")
        }
        _ => Verdict::Refused("Origin is another origin"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn origin(text: &str) -> Origin {
        Origin::parse(text).unwrap()
    }

    fn verdict(
        policy: &CsrfPolicy,
        method: Method,
        site: Option<&str>,
        from: Option<&str>,
    ) -> Verdict {
        let mut headers = HeaderMap::new();
        if let Some(site) = site {
            headers.insert(&SEC_FETCH_SITE, HeaderValue::from_str(site).unwrap());
        }
        if let Some(from) = from {
            headers.insert(ORIGIN, HeaderValue::from_str(from).unwrap());
        }
        let own = Origin::of("https", "app.example.com");
        let trusted = [origin("https://portal.example.com")];
        check(policy, &method, &headers, own.as_ref(), &trusted)
    }

    #[test]
    fn origins_compare_by_scheme_host_and_port() {
        assert_eq!(
            origin("https://App.Example.com"),
            origin("https://app.example.com:443")
        );
        assert_ne!(
            origin("https://app.example.com"),
            origin("http://app.example.com")
        );
        assert_ne!(
            origin("https://app.example.com"),
            origin("https://app.example.com:8443")
        );
        assert_eq!(
            Origin::of("http", "app:8080"),
            Origin::parse("http://app:8080")
        );
        assert_eq!(
            Origin::of("https", "[::1]"),
            Origin::parse("https://[::1]:443")
        );
        for bad in [
            "null",
            "app.example.com",
            "ftp://x",
            "https://x/path",
            "https://u@x",
            "https://",
        ] {
            assert_eq!(Origin::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_header_matrix() {
        let default = CsrfPolicy::default();
        let same_site = CsrfPolicy {
            allow_same_site: true,
            ..CsrfPolicy::default()
        };
        let evil = Some("https://evil.example");
        let own = Some("https://app.example.com");
        let portal = Some("https://portal.example.com");
        // (policy, method, Sec-Fetch-Site, Origin, allowed)
        type Case<'a> = (
            &'a CsrfPolicy,
            Method,
            Option<&'a str>,
            Option<&'a str>,
            bool,
        );
        let cases: &[Case] = &[
            // Sec-Fetch-Site decides when present.
            (&default, Method::POST, Some("same-origin"), evil, true),
            (&default, Method::POST, Some("none"), None, true),
            (&default, Method::POST, Some("cross-site"), evil, false),
            (&default, Method::POST, Some("cross-site"), None, false),
            (&default, Method::POST, Some("same-site"), own, false),
            (&same_site, Method::POST, Some("same-site"), None, true),
            (&same_site, Method::POST, Some("cross-site"), evil, false),
            (&default, Method::POST, Some("cross-site"), portal, true),
            (&default, Method::POST, Some("nonsense"), None, false),
            // Older browsers: Origin.
            (&default, Method::POST, None, own, true),
            (&default, Method::POST, None, portal, true),
            (&default, Method::POST, None, evil, false),
            (&default, Method::POST, None, Some("null"), false),
            (
                &default,
                Method::POST,
                None,
                Some("http://app.example.com"),
                false,
            ),
            (
                &default,
                Method::PUT,
                None,
                Some("https://app.example.com:8443"),
                false,
            ),
            // Not a browser.
            (&default, Method::DELETE, None, None, true),
            // Safe methods are not checked.
            (&default, Method::GET, Some("cross-site"), evil, true),
            (&default, Method::HEAD, Some("cross-site"), evil, true),
            (&default, Method::OPTIONS, Some("cross-site"), evil, true),
        ];
        for (policy, method, site, from, allowed) in cases {
            let got = verdict(policy, method.clone(), *site, *from);
            assert_eq!(
                !got.refused(),
                *allowed,
                "{method} {site:?} {from:?}: {got:?}"
            );
        }
    }

    #[test]
    fn listed_safe_methods_are_refused_only_when_marked_cross_site() {
        let policy = CsrfPolicy {
            unsafe_methods: Box::new([Method::GET]),
            ..CsrfPolicy::default()
        };
        assert!(verdict(&policy, Method::GET, Some("cross-site"), None).refused());
        assert!(verdict(&policy, Method::GET, Some("same-site"), None).refused());
        assert!(!verdict(&policy, Method::GET, Some("same-origin"), None).refused());
        assert!(!verdict(&policy, Method::GET, None, None).refused());
        assert!(!verdict(&policy, Method::GET, None, Some("https://evil.example")).refused());
        assert!(!verdict(&policy, Method::HEAD, Some("cross-site"), None).refused());
    }

    #[test]
    fn off_checks_nothing_and_duplicates_are_refused() {
        let off = CsrfPolicy {
            enabled: false,
            ..CsrfPolicy::default()
        };
        assert!(!verdict(&off, Method::POST, Some("cross-site"), None).refused());
        let mut headers = HeaderMap::new();
        headers.append(&SEC_FETCH_SITE, HeaderValue::from_static("same-origin"));
        headers.append(&SEC_FETCH_SITE, HeaderValue::from_static("cross-site"));
        let verdict = check(&CsrfPolicy::default(), &Method::POST, &headers, None, &[]);
        assert!(verdict.refused());
    }
}
