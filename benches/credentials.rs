//! The request-path cost of the credentials and checks of issue #23, one step at a time:
//! an API key (SHA-256, lookup, constant-time confirm), a client certificate's identity
//! (once per connection), the revocation denylist (empty, and with 100k revocations), and
//! an introspected token answered from the cache.
//!
//! cargo bench --features bench-internals --bench credentials

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis::auth::api_keys::{ApiKeys, new_key};
use portcullis::auth::claims::Claims;

fn api_keys(c: &mut Criterion) {
    let mut file = String::new();
    let mut keys = Vec::new();
    for i in 0..10_000 {
        let (key, digest) = new_key();
        file.push_str(&format!(
            "[[keys]]\nsha256 = \"{digest}\"\nsub = \"svc-{i}\"\nscopes = [\"crm.read\"]\n"
        ));
        keys.push(key);
    }
    let table =
        ApiKeys::parse(&file, http::HeaderName::from_static("x-api-key"), "ApiKey").unwrap();
    let key = keys[5000].clone();
    c.bench_function("api_key/verify (10k keys)", |b| {
        b.iter(|| table.verify(std::hint::black_box(key.as_bytes())).unwrap())
    });
    c.bench_function("api_key/unknown", |b| {
        b.iter(|| {
            table
                .verify(std::hint::black_box(b"pck_not-a-key-of-the-file-at-all"))
                .is_none()
        })
    });
}

fn client_cert(c: &mut Criterion) {
    let mut params = rcgen::CertificateParams::new(vec!["batch.corp".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Batch Job");
    params.subject_alt_names.push(rcgen::SanType::Rfc822Name(
        "batch@example.com".try_into().unwrap(),
    ));
    let key = rcgen::KeyPair::generate().unwrap();
    let der = params.self_signed(&key).unwrap().der().to_vec();
    let order = portcullis::auth::client_cert::DEFAULT_ORDER;
    c.bench_function("client_cert/identity (per connection)", |b| {
        b.iter(|| {
            portcullis::auth::client_cert::identity(std::hint::black_box(&der), &order).unwrap()
        })
    });
}

fn denylist(c: &mut Criterion) {
    use portcullis::revocation::{Denylist, Kind};
    let link = portcullis::redis_link::RedisLink::open(
        "redis://127.0.0.1:9",
        None,
        "p:",
        Duration::from_millis(10),
    )
    .unwrap();
    let list = Denylist::new(Arc::new(link));
    let now = 1_000;
    c.bench_function("denylist/check, none in force", |b| {
        b.iter(|| list.is_revoked(Kind::Jti, "", std::hint::black_box("a-jti"), 0, now))
    });
    for i in 0..100_000 {
        list.bench_insert(Kind::Jti, "", &format!("jti-{i}"), now + 600, now);
    }
    c.bench_function("denylist/check, 100k in force", |b| {
        b.iter(|| list.is_revoked(Kind::Jti, "", std::hint::black_box("a-jti"), 0, now))
    });
}

fn introspection(c: &mut Criterion) {
    use portcullis::auth::introspect::{Introspection, Settings};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let introspection = Introspection::new(Settings {
        url: "http://127.0.0.1:9/introspect".parse().unwrap(),
        client_id: "gw".into(),
        secret: "s".into(),
        http: reqwest::Client::new(),
        issuer: "https://idp".into(),
        audiences: vec!["crm".into()].into(),
        leeway: 30,
        cache_ttl: Duration::from_secs(60),
        negative_ttl: Duration::from_secs(5),
        cache_size: 100_000,
        introspect_jwts: false,
    });
    let claims = serde_json::json!({"sub": "svc", "scope": "crm.read"});
    let token = "2YotnFZFEjr1zCsicMWpAA2YotnFZFEjr1zCsicMWpAA";
    let now = portcullis::auth::unix_now();
    runtime.block_on(introspection.bench_prime(
        token,
        Claims::from_map(claims.as_object().unwrap().clone()),
        now + 3600,
    ));
    c.bench_function("introspection/cached answer", |b| {
        b.iter(|| {
            runtime
                .block_on(introspection.check(std::hint::black_box(token), now))
                .unwrap()
        })
    });
}

criterion_group!(benches, api_keys, client_cert, denylist, introspection);
criterion_main!(benches);
