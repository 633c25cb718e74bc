//! `[identity]`: the headers that carry the verified identity.

use std::collections::HashSet;

use http::header::HeaderName;

use crate::config::raw::*;
use crate::identity::IdentityPolicy;

use super::Compiler;

impl Compiler {
    pub(super) fn identity(&mut self, raw: &RawIdentity) -> IdentityPolicy {
        const RESERVED: &[&str] = &[
            "host",
            "authorization",
            "cookie",
            "content-length",
            "content-type",
            "transfer-encoding",
            "connection",
            "te",
            "trailer",
            "upgrade",
            "keep-alive",
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "forwarded",
            "x-real-ip",
        ];
        let mut headers = Vec::new();
        let mut seen = HashSet::new();
        for (header, claim) in &raw.headers {
            let key = format!("identity.headers.\"{header}\"");
            let Ok(name) = HeaderName::from_bytes(header.as_bytes()) else {
                self.issue(key, "is not a valid header name");
                continue;
            };
            if header.contains('_') {
                self.issue(
                    key,
                    "use '-' instead of '_' (both spellings are stripped from clients either way)",
                );
                continue;
            }
            if RESERVED.contains(&name.as_str()) {
                self.issue(
                    key,
                    "is a header the gateway manages itself; pick another name such as X-Auth-User",
                );
                continue;
            }
            if !seen.insert(name.clone()) {
                self.issue(key, "is listed twice (header names are case-insensitive)");
                continue;
            }
            if claim.is_empty() {
                self.issue(key, "needs the name of a claim, e.g. \"sub\"");
                continue;
            }
            headers.push((name, claim.as_str().into()));
        }
        IdentityPolicy::new(headers)
    }
}
