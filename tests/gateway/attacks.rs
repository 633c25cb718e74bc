//! The attack suite: each case is a concrete request an attacker would send, with the
//! status the client must get and what the upstream must (not) have received.
//!
//! Routes (from `support::ROUTES`): `/public` public, `/api` any valid token, `/admin`
//! scope + role, `/cookie` cookie token, `/both` bearer or cookie. No catch-all route.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};

use crate::support::*;

/// What the upstream must have seen after the request.
enum Upstream_ {
    /// Nothing at all.
    Untouched,
    /// Exactly one request, for which the check holds.
    Got(fn(&Seen) -> bool),
}
use Upstream_::*;

struct Case {
    name: String,
    raw: String,
    status: u16,
    upstream: Upstream_,
}

fn case(name: impl Into<String>, raw: impl Into<String>, status: u16, upstream: Upstream_) -> Case {
    Case {
        name: name.into(),
        raw: raw.into(),
        status,
        upstream,
    }
}

/// `GET path` with extra raw header lines.
fn get(path: &str, headers: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\n{headers}Connection: close\r\n\r\n")
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}\r\n")
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

/// A token from raw header and claims JSON, signed with `key` for `alg`.
fn forge(header: &Value, claims: &Value, alg: Algorithm, key: &EncodingKey) -> String {
    let message = format!("{}.{}", b64(header), b64(claims));
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).unwrap();
    format!("{message}.{signature}")
}

fn no_identity(seen: &Seen) -> bool {
    [
        "x-auth-user",
        "x_auth_user",
        "x-auth-email",
        "x-auth-groups",
        "x_auth_groups",
    ]
    .iter()
    .all(|h| seen.header_values(h).is_empty())
}

fn alice(seen: &Seen) -> bool {
    seen.header_values("x-auth-user") == ["alice"]
        && seen.header_values("x_auth_user").is_empty()
        && seen.header_values("x-auth-groups") == ["eng,ops"]
}

fn path_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    // Reach /api through the public sibling: resolved to /api (401) or refused (400).
    for (path, status) in [
        ("/public/../api", 401),
        ("/public/%2e%2e/api", 401),
        ("/public/%2E%2E/api", 401),
        ("/public/.%2e/api", 401),
        ("/public/./../api", 401),
        ("//api", 401),
        ("/./api", 401),
        ("/%61%70%69", 401),
        ("http://t/public/../api", 401),
        ("/public/..%2fapi", 400),
        ("/public%2f..%2fapi", 400),
        ("/public/..;/api", 400),
        ("/public/..;jsessionid=1/api", 400),
        ("/public/.;/../api", 400),
        ("/public/%5c../api", 400),
        ("/public/..%5capi", 400),
        ("/public/%00/../api", 400),
        ("/api%00.json", 400),
        ("/%2e%2e/api", 400),
        ("/public/../../api", 400),
        ("/public/%c0%ae%c0%ae/api", 400),
        ("/public/%%32%65%%32%65/api", 400),
        ("/public/%e0%80%ae/api", 400),
        ("/public/%zz/../api", 400),
    ] {
        cases.push(case(
            format!("path {path}"),
            get(path, ""),
            status,
            Untouched,
        ));
    }
    // Case matters in paths: /API is not /api, and no route takes it.
    cases.push(case("path /API", get("/API", ""), 404, Untouched));
    cases.push(case("path /Public", get("/Public", ""), 404, Untouched));
    // Decoded twice (IIS, some PHP stacks), this is /api: refused, whatever the app.
    cases.push(case(
        "double-encoded dots that read as another route",
        get("/public/%252e%252e/api", ""),
        400,
        Untouched,
    ));
    // A literal percent sign that reads as nothing else stays literal: the app gets
    // exactly what was matched.
    cases.push(case(
        "a literal percent sign stays literal",
        get("/public/100%25/x", ""),
        200,
        Got(|s| s.path_and_query == "/public/100%25/x"),
    ));
    cases.push(case(
        "query never routes",
        get("/public?next=/../api", ""),
        200,
        Got(|s| s.path_and_query == "/public?next=/../api"),
    ));
    cases.push(case(
        "query cannot reach /api",
        get("/api?/public", ""),
        401,
        Untouched,
    ));
    cases
}

fn identity_cases() -> Vec<Case> {
    let token = valid_token();
    let spoofs = [
        "X-Auth-User: admin\r\n",
        "x-auth-user: admin\r\n",
        "X-AUTH-USER: admin\r\n",
        "X_Auth_User: admin\r\n",
        "x_auth_user: admin\r\n",
        "X-Auth-User: admin\r\nX-Auth-User: root\r\n",
        "X-Auth-User: admin\r\nx_auth_user: root\r\n",
        "X-Auth-Groups: admins\r\n",
        "X_AUTH_GROUPS: admins\r\n",
        "X-Auth-User:\r\n",
        "Connection: X-Auth-User\r\nX-Auth-User: admin\r\n",
    ];
    let mut cases = Vec::new();
    for spoof in spoofs {
        cases.push(case(
            format!("public spoof {spoof:?}"),
            get("/public", spoof),
            200,
            Got(no_identity),
        ));
        cases.push(case(
            format!("authenticated spoof {spoof:?}"),
            get("/api", &format!("{}{spoof}", bearer(&token))),
            200,
            Got(alice),
        ));
    }
    cases.push(case(
        "spoof without token on /api",
        get("/api", "X-Auth-User: alice\r\n"),
        401,
        Untouched,
    ));
    cases
}

fn forwarding_cases() -> Vec<Case> {
    vec![
        case(
            "X-Forwarded-For spoof",
            get("/public", "X-Forwarded-For: 10.0.0.1\r\n"),
            200,
            Got(|s| s.header_values("x-forwarded-for") == ["127.0.0.1"]),
        ),
        case(
            "X_Forwarded_For spoof (read as X-Forwarded-For by CGI apps)",
            get("/public", "X_Forwarded_For: 10.0.0.1\r\n"),
            200,
            Got(|s| {
                s.header_values("x_forwarded_for").is_empty()
                    && s.header_values("x-forwarded-for") == ["127.0.0.1"]
            }),
        ),
        case(
            "X-Real-IP spoof",
            get("/public", "X-Real-IP: 10.0.0.1\r\n"),
            200,
            Got(|s| s.header_values("x-real-ip") == ["127.0.0.1"]),
        ),
        case(
            "X-Forwarded-Proto spoof",
            get("/public", "X-Forwarded-Proto: https\r\n"),
            200,
            Got(|s| s.header_values("x-forwarded-proto") == ["http"]),
        ),
        case(
            "X-Forwarded-Host spoof",
            get("/public", "X-Forwarded-Host: admin.internal\r\n"),
            200,
            Got(|s| s.header_values("x-forwarded-host") == ["t"]),
        ),
        case(
            "Forwarded spoof",
            get("/public", "Forwarded: for=10.0.0.1;proto=https\r\n"),
            200,
            Got(|s| s.header_values("forwarded").is_empty()),
        ),
        case(
            "two X-Forwarded-For headers",
            get(
                "/public",
                "X-Forwarded-For: 1.1.1.1\r\nX-Forwarded-For: 2.2.2.2\r\n",
            ),
            200,
            Got(|s| s.header_values("x-forwarded-for") == ["127.0.0.1"]),
        ),
        case(
            "method override",
            get("/public", "X-HTTP-Method-Override: DELETE\r\n"),
            200,
            Got(|s| s.header_values("x-http-method-override").is_empty()),
        ),
        case(
            "method override (X-Method-Override)",
            get("/public", "X-Method-Override: DELETE\r\n"),
            200,
            Got(|s| s.header_values("x-method-override").is_empty()),
        ),
        case(
            "method override (X-HTTP-Method)",
            get("/public", "X-HTTP-Method: DELETE\r\n"),
            200,
            Got(|s| s.header_values("x-http-method").is_empty()),
        ),
        case(
            "method override (underscores)",
            get("/public", "X_HTTP_Method_Override: DELETE\r\n"),
            200,
            Got(|s| s.header_values("x_http_method_override").is_empty()),
        ),
    ]
}

fn framing_cases() -> Vec<Case> {
    let smuggled = "GET /public/smuggled HTTP/1.1\r\nHost: t\r\n\r\n";
    vec![
        // CL + TE: hyper reads the chunked body, drops Content-Length, closes afterwards;
        // the bytes after the chunked body are never a second request.
        case(
            "CL then TE",
            format!(
                "POST /public HTTP/1.1\r\nHost: t\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            200,
            Got(|s| {
                s.method == "POST"
                    && s.path_and_query == "/public"
                    && s.body_len == 0
                    && s.header_values("content-length").len() <= 1
            }),
        ),
        case(
            "TE then CL",
            format!(
                "POST /public HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            200,
            Got(|s| s.path_and_query == "/public" && s.body_len == 0),
        ),
        case(
            "conflicting Content-Length",
            "POST /public HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde",
            400,
            Untouched,
        ),
        case(
            "signed Content-Length",
            "POST /public HTTP/1.1\r\nHost: t\r\nContent-Length: +5\r\n\r\nabcde",
            400,
            Untouched,
        ),
        case(
            "Content-Length list",
            "POST /public HTTP/1.1\r\nHost: t\r\nContent-Length: 5, 6\r\n\r\nabcde",
            400,
            Untouched,
        ),
        case(
            "TE not chunked last",
            "POST /public HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
            400,
            Untouched,
        ),
        case(
            "TE xchunked",
            "POST /public HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
            400,
            Untouched,
        ),
        case(
            "TE on HTTP/1.0",
            "POST /public HTTP/1.0\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
            Untouched,
        ),
        case(
            "obs-fold header",
            "GET /public HTTP/1.1\r\nHost: t\r\nX-Auth-User: a\r\n admin\r\nConnection: close\r\n\r\n",
            400,
            Untouched,
        ),
        case(
            "space before colon",
            "GET /public HTTP/1.1\r\nHost: t\r\nX-Auth-User : admin\r\nConnection: close\r\n\r\n",
            400,
            Untouched,
        ),
        case(
            "NUL in header",
            "GET /public HTTP/1.1\r\nHost: t\r\nX-A: a\0b\r\nConnection: close\r\n\r\n",
            400,
            Untouched,
        ),
        case(
            "space in target",
            "GET /public /api HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            400,
            Untouched,
        ),
        case(
            "two Host headers",
            "GET /public HTTP/1.1\r\nHost: t\r\nHost: admin\r\nConnection: close\r\n\r\n",
            400,
            Untouched,
        ),
        case(
            "no Host",
            "GET /public HTTP/1.1\r\nConnection: close\r\n\r\n",
            400,
            Untouched,
        ),
        case(
            "absolute-form host disagrees",
            "GET http://admin.test/public HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            400,
            Untouched,
        ),
        case(
            "bare LF is normalised",
            "GET /public HTTP/1.1\nHost: t\nConnection: close\n\n",
            200,
            Got(|s| s.path_and_query == "/public"),
        ),
        case(
            "CONNECT is not proxied",
            "CONNECT t:443 HTTP/1.1\r\nHost: t:443\r\nConnection: close\r\n\r\n",
            400,
            Untouched,
        ),
        case(
            "asterisk-form",
            "OPTIONS * HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            400,
            Untouched,
        ),
        case(
            "huge header block",
            get("/public", &format!("X-Big: {}\r\n", "a".repeat(40_000))),
            431,
            Untouched,
        ),
        case(
            "too many headers",
            get(
                "/public",
                &(0..150)
                    .map(|i| format!("X-H{i}: v\r\n"))
                    .collect::<String>(),
            ),
            431,
            Untouched,
        ),
        case(
            "long target",
            get(&format!("/public/{}", "a".repeat(9_000)), ""),
            414,
            Untouched,
        ),
    ]
}

fn jwt_cases() -> Vec<Case> {
    let k = keys();
    let rsa = signing_key(Algorithm::RS256);
    let good = claims(json!({}));
    let valid = valid_token();
    let (head, rest) = valid.split_once('.').unwrap();
    let (payload, signature) = rest.split_once('.').unwrap();
    let attacker = EncodingKey::from_rsa_pem(k.rsa_other.serialize_pem().as_bytes()).unwrap();
    let attacker_jwk = json!({"kty": "RSA", "n": "AQAB", "e": "AQAB"});
    // The signature with non-zero padding bits: same bytes to a lenient decoder.
    let last = signature.chars().last().unwrap();
    let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let v = alphabet.find(last).unwrap();
    let noncanonical = format!(
        "{}{}",
        &signature[..signature.len() - 1],
        alphabet.chars().nth((v & 0b110000) | 0b0001).unwrap()
    );
    let es_zero = format!(
        "{}.{}.{}",
        b64(&json!({"alg": "ES256"})),
        b64(&good),
        URL_SAFE_NO_PAD.encode([0u8; 64])
    );
    let tokens: Vec<(&str, String)> = vec![
        (
            "alg none",
            format!("{}.{payload}.", b64(&json!({"alg": "none"}))),
        ),
        (
            "alg None",
            format!("{}.{payload}.", b64(&json!({"alg": "None"}))),
        ),
        (
            "alg NONE with signature",
            format!("{}.{payload}.{signature}", b64(&json!({"alg": "NONE"}))),
        ),
        (
            "HS256 with the RSA public key as secret",
            forge(
                &json!({"alg": "HS256"}),
                &good,
                Algorithm::HS256,
                &EncodingKey::from_secret(k.rsa.public_key_pem().as_bytes()),
            ),
        ),
        (
            "kid path traversal with empty HMAC secret",
            forge(
                &json!({"alg": "HS256", "kid": "../../../../dev/null"}),
                &good,
                Algorithm::HS256,
                &EncodingKey::from_secret(b""),
            ),
        ),
        (
            "kid SQL injection",
            forge(
                &json!({"alg": "HS256", "kid": "x' UNION SELECT 'secret"}),
                &good,
                Algorithm::HS256,
                &EncodingKey::from_secret(b"secret"),
            ),
        ),
        (
            "jku to attacker keys",
            forge(
                &json!({"alg": "RS256", "jku": "http://127.0.0.1:1/jwks.json"}),
                &good,
                Algorithm::RS256,
                &attacker,
            ),
        ),
        (
            "x5u to attacker cert",
            forge(
                &json!({"alg": "RS256", "x5u": "http://127.0.0.1:1/cert.pem"}),
                &good,
                Algorithm::RS256,
                &attacker,
            ),
        ),
        (
            "embedded jwk",
            forge(
                &json!({"alg": "RS256", "jwk": attacker_jwk}),
                &good,
                Algorithm::RS256,
                &attacker,
            ),
        ),
        (
            "embedded x5c",
            forge(
                &json!({"alg": "RS256", "x5c": ["MIIB"]}),
                &good,
                Algorithm::RS256,
                &attacker,
            ),
        ),
        (
            "crit header",
            forge(
                &json!({"alg": "RS256", "crit": ["b64"], "b64": false}),
                &good,
                Algorithm::RS256,
                &rsa,
            ),
        ),
        (
            "duplicate alg in header",
            format!(
                "{}.{payload}.{signature}",
                URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","alg":"none"}"#)
            ),
        ),
        ("duplicate sub claim", {
            let claims_json = format!(
                r#"{{"iss":"{ISSUER}","aud":"{AUDIENCE}","exp":{},"sub":"alice","sub":"admin"}}"#,
                now() + 600
            );
            let message = format!(
                "{}.{}",
                b64(&json!({"alg": "RS256"})),
                URL_SAFE_NO_PAD.encode(claims_json)
            );
            let sig =
                jsonwebtoken::crypto::sign(message.as_bytes(), &rsa, Algorithm::RS256).unwrap();
            format!("{message}.{sig}")
        }),
        ("trailing data after signature", format!("{valid}.AAAA")),
        ("trailing dot", format!("{valid}.")),
        ("signature with padding", format!("{valid}==")),
        (
            "non-canonical base64url signature",
            format!("{head}.{payload}.{noncanonical}"),
        ),
        (
            "standard base64 alphabet",
            valid.replace('-', "+").replace('_', "/"),
        ),
        ("ECDSA zero signature", es_zero),
        ("ES256 signature in DER form", {
            let t = token(Algorithm::ES256, &good);
            let (m, s) = t.rsplit_once('.').unwrap();
            let raw = URL_SAFE_NO_PAD.decode(s).unwrap();
            let mut der = vec![0x30, 0x44, 0x02, 0x20];
            der.extend_from_slice(&raw[..32]);
            der.extend_from_slice(&[0x02, 0x20]);
            der.extend_from_slice(&raw[32..]);
            format!("{m}.{}", URL_SAFE_NO_PAD.encode(der))
        }),
        (
            "oversized token",
            format!("{head}.{}.{signature}", "A".repeat(20_000)),
        ),
        (
            "header is not JSON",
            format!(
                "{}.{payload}.{signature}",
                URL_SAFE_NO_PAD.encode("alg=RS256")
            ),
        ),
        (
            "payload is a JSON array",
            forge(
                &json!({"alg": "RS256"}),
                &json!(["sub", "alice"]),
                Algorithm::RS256,
                &rsa,
            ),
        ),
        (
            "exp as a string",
            token(
                Algorithm::RS256,
                &claims(json!({"exp": (now() + 600).to_string()})),
            ),
        ),
        (
            "issuer with trailing slash",
            token(
                Algorithm::RS256,
                &claims(json!({"iss": format!("{ISSUER}/")})),
            ),
        ),
        (
            "issuer case changed",
            token(
                Algorithm::RS256,
                &claims(json!({"iss": ISSUER.to_uppercase()})),
            ),
        ),
        (
            "audience as object",
            token(Algorithm::RS256, &claims(json!({"aud": {"aud": AUDIENCE}}))),
        ),
        ("JWE-shaped token", format!("{head}.a.b.c.d")),
        ("empty token parts", "..".to_owned()),
    ];
    let mut cases: Vec<Case> = tokens
        .into_iter()
        .map(|(name, token)| {
            case(
                format!("jwt: {name}"),
                get("/api", &bearer(&token)),
                401,
                Untouched,
            )
        })
        .collect();
    cases.push(case(
        "jwt: token in the query string",
        get(&format!("/api?access_token={valid}"), ""),
        401,
        Untouched,
    ));
    cases.push(case(
        "jwt: two tokens in one header",
        get(
            "/api",
            &format!("Authorization: Bearer {valid}, Bearer {valid}\r\n"),
        ),
        400,
        Untouched,
    ));
    cases.push(case(
        "jwt: two Authorization headers",
        get("/api", &format!("{}{}", bearer(&valid), bearer(&valid))),
        400,
        Untouched,
    ));
    // A well-signed token whose sub is an object: a registered claim of the wrong type.
    cases.push(case(
        "jwt: object-valued sub is refused",
        get(
            "/api",
            &bearer(&token(
                Algorithm::RS256,
                &claims(json!({"sub": {"$ne": ""}})),
            )),
        ),
        401,
        Untouched,
    ));
    cases.push(case(
        "jwt: CRLF in a claim never becomes a header",
        get(
            "/api",
            &bearer(&token(
                Algorithm::RS256,
                &claims(json!({"sub": "alice\r\nX-Admin: 1"})),
            )),
        ),
        200,
        Got(|s| {
            s.header_values("x-auth-user") == ["UTF-8''alice%0D%0AX-Admin%3A%201"]
                && s.header_values("x-admin").is_empty()
        }),
    ));
    cases
}

#[tokio::test]
async fn the_attack_suite() {
    let upstream = Upstream::start().await;
    let gw = Gateway::standard(&upstream).await;
    let mut all = Vec::new();
    all.extend(path_cases());
    all.extend(identity_cases());
    all.extend(forwarding_cases());
    all.extend(framing_cases());
    all.extend(jwt_cases());
    assert!(all.len() >= 60, "only {} cases", all.len());
    let mut failures = Vec::new();
    for case in &all {
        let before = upstream.count();
        let answer = raw_request(gw.http, case.raw.as_bytes()).await;
        let status = answer.split(' ').nth(1).and_then(|s| s.parse::<u16>().ok());
        let received = upstream.requests()[before..].to_vec();
        let upstream_ok = match (&case.upstream, received.as_slice()) {
            (Untouched, []) => true,
            (Got(check), [seen]) => check(seen),
            _ => false,
        };
        if status != Some(case.status) || !upstream_ok {
            failures.push(format!(
                "{}: status {status:?} (want {}), upstream received {:?}",
                case.name,
                case.status,
                received
                    .iter()
                    .map(|s| (&s.method, &s.path_and_query, s.body_len))
                    .collect::<Vec<_>>()
            ));
        }
    }
    eprintln!(
        "attack suite: {} cases, {} failures",
        all.len(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        all.len(),
        failures.join("\n")
    );
}
