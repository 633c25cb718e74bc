//! Where the app lives, and where the browser sees it: an app mounted under `/crm` that
//! believes it lives at `/`.
//!
//! - On the way in, the route's *mount* (its `strip_prefix`, else its matched prefix or
//!   exact path) is replaced, segment-wise, by the upstream's `path_prefix`
//!   (`/crm/x` → `/x`): nginx's `location /crm/ { proxy_pass http://app/; }`.
//! - On the way out, `Location`, `Content-Location` and `Refresh` that point at the app's own
//!   origin (a target's `scheme://host:port`, or the `host` sent to it) are rewritten to the
//!   client's origin, and their paths under `path_prefix` mapped back under the mount; a
//!   root-relative one is mapped back too. A redirect to any other origin is left alone.
//!   `Set-Cookie` paths under `path_prefix` are mapped back under the mount
//!   (`rewrite_cookie_paths`): nginx's `proxy_redirect default` and `proxy_cookie_path`.
//!
//! Pure functions over strings, so that `explain` shows the same mapped target.

use http::HeaderMap;
use http::header::{CONTENT_LOCATION, HeaderName, HeaderValue, LOCATION, SET_COOKIE};
use http::uri::PathAndQuery;

/// `[upstreams.NAME]`'s mapping keys, compiled.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Mapping {
    /// `path_prefix`: the app's own prefix (`/` or without a trailing slash). `None`: paths
    /// are forwarded as they are.
    pub prefix: Option<Box<str>>,
    /// `rewrite_redirects`.
    pub rewrite_redirects: bool,
    /// `rewrite_cookie_paths`.
    pub rewrite_cookie_paths: bool,
    /// Origins that are the app's own (`http://10.0.0.5:8080`), lower-case, without a default
    /// port: what its absolute redirects may start with.
    pub own_origins: Vec<Box<str>>,
}

impl Mapping {
    /// Anything to rewrite in an answer at all.
    pub fn rewrites_answers(&self) -> bool {
        self.rewrite_redirects || (self.rewrite_cookie_paths && self.prefix.is_some())
    }
}

/// The path the app receives for `path_and_query` on a route mounted at `mount`: the mount
/// replaced by `prefix`, segment-wise, the query kept.
///
/// `mount` is canonical and a segment prefix of the canonical path; the forwarded path may
/// still carry `;params` (routes with `allow_path_params`), so segments are counted rather
/// than bytes compared.
pub fn map_request(prefix: &str, mount: &str, path_and_query: &PathAndQuery) -> PathAndQuery {
    let path = path_and_query.path();
    let rest = strip_segments(path, segments(mount));
    let mut text = String::with_capacity(
        prefix.len() + rest.len() + 1 + path_and_query.query().map_or(0, str::len) + 1,
    );
    join(prefix, rest, &mut text);
    if let Some(query) = path_and_query.query() {
        text.push('?');
        text.push_str(query);
    }
    // Built from the parts of a valid target: cannot fail; keep the original if it did.
    PathAndQuery::try_from(text).unwrap_or_else(|_| path_and_query.clone())
}

/// The number of segments of a canonical path (`/` has none).
fn segments(path: &str) -> usize {
    if path == "/" {
        0
    } else {
        path.bytes().filter(|&b| b == b'/').count()
    }
}

/// `path` without its first `n` segments: what follows them (`""`, `"/"` or `"/more"`).
fn strip_segments(path: &str, n: usize) -> &str {
    let mut rest = path;
    for _ in 0..n {
        let Some(after) = rest.strip_prefix('/') else {
            return rest;
        };
        rest = match after.find('/') {
            Some(i) => &after[i..],
            None => "",
        };
    }
    rest
}

/// `prefix` followed by `rest` (`""` or starting with `/`), without a double slash.
fn join(prefix: &str, rest: &str, out: &mut String) {
    if prefix == "/" {
        out.push_str(if rest.is_empty() { "/" } else { rest });
    } else {
        out.push_str(prefix);
        out.push_str(rest);
    }
}

/// `path` (in the app's space) under `prefix` segment-wise: what follows the prefix.
fn under<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    if prefix == "/" {
        return path.starts_with('/').then_some(path);
    }
    let rest = path.strip_prefix(prefix)?;
    (rest.is_empty() || rest.starts_with(['/', '?', '#'])).then_some(rest)
}

/// The public form of a path in the app's space: under the app's prefix, mapped back under
/// the mount; `None` when it is outside the prefix (left as it is).
fn public_path(path: &str, prefix: &str, mount: &str) -> Option<String> {
    let rest = under(path, prefix)?;
    let mut out = String::with_capacity(mount.len() + rest.len());
    let rest_path_end = rest.find(['?', '#']).unwrap_or(rest.len());
    join(mount, &rest[..rest_path_end], &mut out);
    out.push_str(&rest[rest_path_end..]);
    Some(out)
}

/// What a response rewrite needs to know about the request.
pub struct Public<'a> {
    /// The client's origin, `https://portal.example.com[:port]`, as the client addressed it.
    pub origin: &'a str,
    /// The app's prefix: its `path_prefix`, `/` when only the route strips a prefix, `None`
    /// when paths are not mapped.
    pub prefix: Option<&'a str>,
    /// The route's mount (see the module note).
    pub mount: &'a str,
}

/// The answer carries a field `rewrite_answer` may change: one pass over the names, which
/// compare as tags for the standard ones (most answers have none of these).
pub fn has_rewritable(headers: &HeaderMap) -> bool {
    // Comparisons of names, not of their text: a standard name against another is a tag
    // compare, where `as_str` looks the text up for every field of every answer.
    headers.keys().any(|name| {
        name == LOCATION || name == SET_COOKIE || name == CONTENT_LOCATION || *name == REFRESH
    })
}

static REFRESH: HeaderName = HeaderName::from_static("refresh");

/// Rewrites the answer's `Location`, `Content-Location`, `Refresh` and `Set-Cookie` paths
/// (see the module note). Fields it cannot read as text are left as they are.
pub fn rewrite_answer(mapping: &Mapping, public: &Public<'_>, headers: &mut HeaderMap) {
    if mapping.rewrite_redirects {
        for name in [LOCATION, CONTENT_LOCATION] {
            if let Some(value) = headers.get(&name)
                && let Some(new) = rewrite_url(mapping, public, value.to_str().unwrap_or(""))
                && let Ok(new) = HeaderValue::try_from(new)
            {
                headers.insert(name, new);
            }
        }
        if let Some(value) = headers.get("refresh")
            && let Ok(text) = value.to_str()
            && let Some(new) = rewrite_refresh(mapping, public, text)
            && let Ok(new) = HeaderValue::try_from(new)
        {
            headers.insert("refresh", new);
        }
    }
    if mapping.rewrite_cookie_paths
        && let Some(prefix) = public.prefix
        && headers.contains_key(SET_COOKIE)
    {
        let cookies: Vec<HeaderValue> = headers.get_all(SET_COOKIE).iter().cloned().collect();
        headers.remove(SET_COOKIE);
        for cookie in cookies {
            let new = cookie
                .to_str()
                .ok()
                .and_then(|text| rewrite_cookie_path(text, prefix, public.mount))
                .and_then(|text| HeaderValue::try_from(text).ok());
            headers.append(SET_COOKIE, new.unwrap_or(cookie));
        }
    }
}

/// A URL of a redirect: absolute at the app's own origin → the client's origin, the path
/// mapped back; root-relative → the path mapped back. `None`: unchanged.
pub fn rewrite_url(mapping: &Mapping, public: &Public<'_>, url: &str) -> Option<String> {
    let prefix = public.prefix;
    if url.starts_with('/') && !url.starts_with("//") {
        let prefix = prefix?;
        return public_path(url, prefix, public.mount);
    }
    let (origin, path) = split_origin(url)?;
    if !mapping
        .own_origins
        .iter()
        .any(|own| same_origin(own, origin))
    {
        return None;
    }
    let path = if path.is_empty() { "/" } else { path };
    let path = match prefix {
        Some(prefix) => public_path(path, prefix, public.mount).unwrap_or_else(|| path.to_owned()),
        None => path.to_owned(),
    };
    Some(format!("{}{path}", public.origin))
}

/// `5; url=http://app/x` → the URL part rewritten.
fn rewrite_refresh(mapping: &Mapping, public: &Public<'_>, text: &str) -> Option<String> {
    let lower = text.to_ascii_lowercase();
    let at = lower.find("url=")? + 4;
    let url = text[at..].trim().trim_matches(['\'', '"']);
    let new = rewrite_url(mapping, public, url)?;
    Some(format!("{}{new}", &text[..at]))
}

/// `scheme://authority` and the rest (path, query, fragment) of an absolute URL.
fn split_origin(url: &str) -> Option<(&str, &str)> {
    let scheme_end = url.find("://")?;
    let after = &url[scheme_end + 3..];
    let end = after.find(['/', '?', '#']).unwrap_or(after.len());
    Some((&url[..scheme_end + 3 + end], &after[end..]))
}

/// Compares an origin from a redirect with one of the app's (lower-case, no default port).
fn same_origin(own: &str, origin: &str) -> bool {
    let origin = origin.to_ascii_lowercase();
    let origin = origin
        .strip_suffix(":80")
        .filter(|_| origin.starts_with("http://"))
        .or_else(|| {
            origin
                .strip_suffix(":443")
                .filter(|_| origin.starts_with("https://"))
        })
        .unwrap_or(&origin);
    own == origin
}

/// The app's origin for `own_origins`: lower-case, without the scheme's default port.
pub fn origin_text(scheme: &str, authority: &str) -> Box<str> {
    let authority = authority.to_ascii_lowercase();
    let authority = match scheme {
        "http" => authority.strip_suffix(":80").unwrap_or(&authority),
        "https" => authority.strip_suffix(":443").unwrap_or(&authority),
        _ => &authority,
    };
    format!("{scheme}://{authority}").into()
}

/// A `Set-Cookie` whose `Path` is under `prefix`, with that path mapped back under `mount`.
fn rewrite_cookie_path(cookie: &str, prefix: &str, mount: &str) -> Option<String> {
    let mut out = String::with_capacity(cookie.len() + mount.len());
    let mut changed = false;
    for (i, attribute) in cookie.split(';').enumerate() {
        if i > 0 {
            out.push(';');
        }
        let trimmed = attribute.trim_start();
        if i > 0
            && let Some((name, value)) = trimmed.split_once('=')
            && name.trim().eq_ignore_ascii_case("path")
            && let Some(mut public) = public_path(value.trim(), prefix, mount)
        {
            // The app's root is the mount itself: `/crm` matches `/crm` and `/crm/…`.
            if public.len() > 1 && public.ends_with('/') && public[..public.len() - 1] == *mount {
                public.pop();
            }
            out.push_str(&attribute[..attribute.len() - trimmed.len()]);
            out.push_str("Path=");
            out.push_str(&public);
            changed = true;
            continue;
        }
        out.push_str(attribute);
    }
    changed.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pq(text: &str) -> PathAndQuery {
        PathAndQuery::try_from(text).unwrap()
    }

    #[test]
    fn the_mount_is_replaced_by_the_prefix_segment_wise() {
        for (prefix, mount, path, expected) in [
            ("/", "/crm", "/crm", "/"),
            ("/", "/crm", "/crm/", "/"),
            ("/", "/crm", "/crm/x/y?q=1", "/x/y?q=1"),
            ("/app", "/crm", "/crm", "/app"),
            ("/app", "/crm", "/crm/", "/app/"),
            ("/app", "/crm", "/crm/x", "/app/x"),
            ("/app", "/", "/x", "/app/x"),
            ("/app", "/", "/", "/app/"),
            ("/", "/", "/x", "/x"),
            ("/", "/crm/live", "/crm/live/feed", "/feed"),
            // ;params on the mount's segments (allow_path_params) go with them.
            ("/", "/crm", "/crm;jsessionid=1/x", "/x"),
            ("/a", "/crm", "/crm/x;jsessionid=1", "/a/x;jsessionid=1"),
            // An exact route's whole path is its mount.
            (
                "/login.do",
                "/sign-in",
                "/sign-in?next=%2F",
                "/login.do?next=%2F",
            ),
        ] {
            assert_eq!(
                map_request(prefix, mount, &pq(path)).as_str(),
                expected,
                "{prefix} {mount} {path}"
            );
        }
    }

    fn mapping() -> Mapping {
        Mapping {
            prefix: None,
            rewrite_redirects: true,
            rewrite_cookie_paths: true,
            own_origins: vec![
                origin_text("http", "crm-internal:8080"),
                origin_text("https", "10.0.0.5:443"),
            ],
        }
    }

    fn client(prefix: Option<&str>) -> Public<'_> {
        Public {
            origin: "https://portal.example.com",
            prefix,
            mount: "/crm",
        }
    }

    #[test]
    fn redirects_to_the_apps_own_origin_come_back_under_the_mount() {
        let (m, public) = (mapping(), client(Some("/")));
        for (url, expected) in [
            (
                "http://crm-internal:8080/login",
                Some("https://portal.example.com/crm/login"),
            ),
            (
                "HTTP://CRM-INTERNAL:8080/login?x=1#f",
                Some("https://portal.example.com/crm/login?x=1#f"),
            ),
            (
                "http://crm-internal:8080",
                Some("https://portal.example.com/crm/"),
            ),
            (
                "https://10.0.0.5/a",
                Some("https://portal.example.com/crm/a"),
            ),
            (
                "https://10.0.0.5:443/a",
                Some("https://portal.example.com/crm/a"),
            ),
            ("/login", Some("/crm/login")),
            ("/", Some("/crm/")),
            // Other origins, other ports, relative and scheme-relative URLs stay.
            ("https://idp.example.com/auth", None),
            ("http://crm-internal:8081/login", None),
            ("http://crm-internal/login", None),
            ("login", None),
            ("//crm-internal:8080/x", None),
        ] {
            assert_eq!(rewrite_url(&m, &public, url).as_deref(), expected, "{url}");
        }
        // Under a prefix of its own, only paths under that prefix map back.
        let public = client(Some("/app"));
        assert_eq!(
            rewrite_url(&m, &public, "/app/x").as_deref(),
            Some("/crm/x")
        );
        assert_eq!(rewrite_url(&m, &public, "/app").as_deref(), Some("/crm"));
        assert_eq!(rewrite_url(&m, &public, "/apple"), None);
        assert_eq!(
            rewrite_url(&m, &public, "http://crm-internal:8080/other").as_deref(),
            Some("https://portal.example.com/other")
        );
        // Without a prefix mapping, only the origin changes.
        let public = client(None);
        assert_eq!(rewrite_url(&m, &public, "/login"), None);
        assert_eq!(
            rewrite_url(&m, &public, "http://crm-internal:8080/login").as_deref(),
            Some("https://portal.example.com/login")
        );
    }

    #[test]
    fn answers_are_rewritten_field_by_field() {
        let (m, public) = (mapping(), client(Some("/")));
        let mut headers = HeaderMap::new();
        headers.insert(LOCATION, "http://crm-internal:8080/home".parse().unwrap());
        headers.insert(CONTENT_LOCATION, "/doc/1".parse().unwrap());
        headers.insert(
            "refresh",
            "5; url=http://crm-internal:8080/bye".parse().unwrap(),
        );
        headers.append(
            SET_COOKIE,
            "JSESSIONID=abc; Path=/; HttpOnly".parse().unwrap(),
        );
        headers.append(SET_COOKIE, "pref=1; path=/reports; Secure".parse().unwrap());
        headers.append(SET_COOKIE, "other=1; Path=/elsewhere/../x".parse().unwrap());
        headers.append(SET_COOKIE, "plain=1".parse().unwrap());
        rewrite_answer(&m, &public, &mut headers);
        assert_eq!(headers[LOCATION], "https://portal.example.com/crm/home");
        assert_eq!(headers[CONTENT_LOCATION], "/crm/doc/1");
        assert_eq!(
            headers["refresh"],
            "5; url=https://portal.example.com/crm/bye"
        );
        let cookies: Vec<_> = headers
            .get_all(SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(
            cookies,
            [
                "JSESSIONID=abc; Path=/crm; HttpOnly",
                "pref=1; Path=/crm/reports; Secure",
                "other=1; Path=/crm/elsewhere/../x",
                "plain=1",
            ]
        );
        // Off: nothing changes.
        let off = Mapping {
            rewrite_redirects: false,
            rewrite_cookie_paths: false,
            ..m
        };
        let mut headers = HeaderMap::new();
        headers.insert(LOCATION, "http://crm-internal:8080/home".parse().unwrap());
        headers.append(SET_COOKIE, "a=1; Path=/".parse().unwrap());
        rewrite_answer(&off, &public, &mut headers);
        assert_eq!(headers[LOCATION], "http://crm-internal:8080/home");
        assert_eq!(headers[SET_COOKIE], "a=1; Path=/");
    }

    proptest::proptest! {
        /// Mapped in and back out, a path under the mount comes back as it was.
        #[test]
        fn a_path_maps_in_and_back_out_unchanged(
            mount in proptest::sample::select(vec!["/", "/crm", "/crm/live"]),
            prefix in proptest::sample::select(vec!["/", "/app", "/a/b"]),
            rest in proptest::collection::vec("[a-z0-9.]{1,6}", 0..4),
            slash in proptest::bool::ANY,
        ) {
            let mut path = if mount == "/" { String::new() } else { mount.to_owned() };
            for segment in &rest {
                path.push('/');
                path.push_str(segment);
            }
            if slash || path.is_empty() {
                path.push('/');
            }
            let mapped = map_request(prefix, mount, &pq(&path));
            let back = public_path(mapped.path(), prefix, mount).unwrap();
            // `/crm/` and `/crm` both map to the prefix's root and come back as the mount
            // (with its slash when the prefix keeps one).
            let expected = if rest.is_empty() && mount != "/" && prefix == "/" {
                format!("{mount}/")
            } else {
                path.clone()
            };
            proptest::prop_assert_eq!(back, expected);
        }
    }
}
