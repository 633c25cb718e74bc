//! Where a browser may be sent back after login or logout.
//!
//! Only a path on this host, or an absolute http(s) URL whose host is the request's own or
//! is listed in `allowed_redirect_hosts`. Everything else (`//evil`, `/\evil`,
//! `https://evil`, `%2F%2Fevil`, control characters, userinfo tricks) becomes `/`: an open
//! redirect on the login endpoint would hand phishers a trusted link.

use reqwest::Url;

/// `target` when it is safe, else `/`.
pub fn safe_return(target: &str, request_host: &str, allowed_hosts: &[Box<str>]) -> String {
    if is_safe_path(target) {
        return target.to_owned();
    }
    if let Some(url) = allowed_absolute(target, request_host, allowed_hosts) {
        return url;
    }
    "/".to_owned()
}

/// A path-absolute reference (`/x`), also after every round of percent-decoding: never
/// `//host`, never a backslash (browsers read `/\host` as `//host`), never a control byte.
fn is_safe_path(target: &str) -> bool {
    if target.contains(' ') || target.len() > 2048 {
        return false;
    }
    let mut text = target.to_owned();
    for _ in 0..4 {
        let bytes = text.as_bytes();
        // A decoded space is fine (`/a%20b`); a decoded control byte is not (browsers drop
        // tabs and newlines from URLs, so `/%09/evil` could turn into `//evil`).
        let path_absolute = bytes.first() == Some(&b'/')
            && !matches!(bytes.get(1), Some(b'/') | Some(b'\\'))
            && !bytes.iter().any(|&b| b == b'\\' || b.is_ascii_control());
        if !path_absolute {
            return false;
        }
        let decoded = percent_decode(&text);
        if decoded == text {
            return true;
        }
        text = decoded;
    }
    false
}

fn allowed_absolute(target: &str, request_host: &str, allowed: &[Box<str>]) -> Option<String> {
    if target.bytes().any(|b| b == b'\\' || b.is_ascii_control()) {
        return None;
    }
    let url = Url::parse(target).ok()?;
    if !matches!(url.scheme(), "http" | "https")
        || !url.username().is_empty()
        || url.password().is_some()
    {
        return None;
    }
    let host = url.host_str()?.trim_end_matches('.').to_ascii_lowercase();
    let request_host = request_host.trim_end_matches('.');
    let ok = host.eq_ignore_ascii_case(request_host)
        || allowed.iter().any(|a| a.eq_ignore_ascii_case(&host));
    ok.then(|| url.to_string())
}

/// One round of percent-decoding; invalid escapes and non-UTF-8 results are left alone.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).and_then(|b| (*b as char).to_digit(16)),
                bytes.get(i + 2).and_then(|b| (*b as char).to_digit(16)),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check(target: &str) -> String {
        safe_return(target, "app.example.com", &["sso.example.com".into()])
    }

    #[test]
    fn local_paths_pass() {
        for ok in ["/", "/crm/x?y=1#z", "/a%20b", "/caf%C3%A9"] {
            assert_eq!(check(ok), ok);
        }
    }

    #[test]
    fn open_redirects_fall_back_to_the_root() {
        for bad in [
            "//evil.example",
            "///evil.example",
            "/\\evil.example",
            "\\\\evil.example",
            "https://evil.example/",
            "http://evil.example",
            "//evil.example/%2e%2e",
            "/%2Fevil.example",
            "/%2fevil.example",
            "/%5Cevil.example",
            "/%252F%252Fevil.example",
            "%2F%2Fevil.example",
            "javascript:alert(1)",
            "data:text/html,x",
            "evil.example",
            "/\tevil",
            "/%09/evil.example",
            "/a b",
            "/\r\nLocation: https://evil",
            "https://app.example.com@evil.example/",
            "https://user:pw@app.example.com/",
            "https://evil.example\\@app.example.com/",
            "",
        ] {
            assert_eq!(check(bad), "/", "{bad:?}");
        }
    }

    #[test]
    fn own_host_and_listed_hosts_pass_as_absolute_urls() {
        assert_eq!(
            check("https://app.example.com/x"),
            "https://app.example.com/x"
        );
        assert_eq!(
            check("https://SSO.example.com/y"),
            "https://sso.example.com/y"
        );
        assert_eq!(check("https://sub.app.example.com/"), "/");
    }

    proptest! {
        /// Whatever comes in, what goes out never leaves for a foreign host.
        #[test]
        fn never_a_foreign_host(target in "[/\\\\%a-zA-Z0-9:.@?#]{0,24}") {
            let out = check(&target);
            if out.starts_with('/') {
                prop_assert!(!out.starts_with("//") && !out.contains('\\'));
                prop_assert!(is_safe_path(&out));
            } else {
                let url = Url::parse(&out).unwrap();
                let host = url.host_str().unwrap();
                prop_assert!(host == "app.example.com" || host == "sso.example.com");
            }
        }
    }
}
