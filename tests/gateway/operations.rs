//! Operator experience: admin endpoints, metrics with exact values, hot reload under load,
//! graceful shutdown.

use std::time::{Duration, Instant};

use crate::support::*;

pub(crate) fn with_admin(text: String, extra: &str) -> String {
    text.replace(
        "https = \"127.0.0.1:0\"",
        &format!("https = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nwatch_config = false\n{extra}"),
    )
}

/// The admin listener's `/metrics`, parsed (and checked) by `parse_metrics`.
pub(crate) async fn scrape(c: &reqwest::Client, gw: &Gateway) -> Vec<(String, f64)> {
    let text = c
        .get(gw.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    parse_metrics(&text)
}

/// Checks the text is Prometheus/OpenMetrics exposition: every sample line is
/// `name{labels} value`, every family has TYPE, and it ends with `# EOF`.
fn parse_metrics(text: &str) -> Vec<(String, f64)> {
    assert!(text.ends_with("# EOF\n"), "no EOF marker");
    let mut typed = std::collections::HashSet::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            typed.insert(rest.split(' ').next().unwrap().to_owned());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let name = series.split('{').next().unwrap();
        let family = ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        assert!(
            typed.contains(family) || typed.contains(name),
            "no TYPE for {name}"
        );
        if series.contains('{') {
            assert!(series.ends_with('}'), "bad labels in {line:?}");
        }
        samples.push((series.to_owned(), value));
    }
    samples
}

pub(crate) fn sample(samples: &[(String, f64)], series: &str) -> f64 {
    samples
        .iter()
        .find(|(s, _)| s == series)
        .map_or(0.0, |(_, v)| *v)
}

#[tokio::test]
async fn admin_reports_health_readiness_and_exact_metrics() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&with_admin(config(upstream.addr, ROUTES), "")).await;
    let c = client();
    assert_eq!(
        c.get(gw.admin_url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let ready = c.get(gw.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    // Exact deltas from here (the harness's readiness probes count too).
    let before = scrape(&c, &gw).await;
    for _ in 0..3 {
        assert_eq!(
            c.get(gw.url("/public/m")).send().await.unwrap().status(),
            200
        );
    }
    for _ in 0..2 {
        assert_eq!(c.get(gw.url("/api/m")).send().await.unwrap().status(), 401);
    }
    // Not an RFC 6750 b64token: refused for its form (checked on a token-cache miss).
    assert_eq!(
        c.get(gw.url("/api/m"))
            .bearer_auth("abc!def")
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        c.post(gw.url("/api/m"))
            .bearer_auth(valid_token())
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.get(gw.url("/nowhere")).send().await.unwrap().status(),
        404
    );
    let samples = scrape(&c, &gw).await;
    let expect = [
        (
            r#"portcullis_requests_total{route="public",method="read",status="2xx"}"#,
            3.0,
        ),
        (
            r#"portcullis_requests_total{route="api",method="read",status="4xx"}"#,
            3.0,
        ),
        (
            r#"portcullis_requests_total{route="api",method="write",status="2xx"}"#,
            1.0,
        ),
        (
            r#"portcullis_requests_total{route="-",method="read",status="4xx"}"#,
            1.0,
        ),
        (
            r#"portcullis_auth_decisions_total{route="public",outcome="public"}"#,
            3.0,
        ),
        (
            r#"portcullis_auth_decisions_total{route="api",outcome="missing"}"#,
            2.0,
        ),
        (
            r#"portcullis_auth_decisions_total{route="api",outcome="malformed_credential"}"#,
            1.0,
        ),
        (
            r#"portcullis_auth_decisions_total{route="api",outcome="allowed"}"#,
            1.0,
        ),
        (
            r#"portcullis_auth_decisions_total{route="-",outcome="no_route"}"#,
            1.0,
        ),
        (
            r#"portcullis_upstream_latency_seconds_count{upstream="app"}"#,
            4.0,
        ),
        (
            r#"portcullis_token_cache_lookups_total{result="miss"}"#,
            2.0,
        ),
    ];
    for (series, value) in expect {
        let delta = sample(&samples, series) - sample(&before, series);
        assert_eq!(delta, value, "{series} in\n{samples:?}");
    }
    let hash = &gw.shared.load().config_hash;
    assert_eq!(
        sample(
            &samples,
            &format!(r#"portcullis_config_info{{hash="{hash}"}}"#)
        ),
        1.0
    );
    assert!(sample(&samples, "portcullis_active_connections") >= 1.0);
}

const VERSION_A: &str = r#"
[[routes]]
name = "v"
path_prefix = "/v"
upstream = "app"
auth = "public"
"#;

const VERSION_B: &str = r#"
[[routes]]
name = "v"
path_prefix = "/v"
upstream = "app"
auth = "jwt"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_under_load_fail_no_request() {
    let upstream = Upstream::start().await;
    let a = with_admin(config(upstream.addr, VERSION_A), "");
    let b = with_admin(config(upstream.addr, VERSION_B), "");
    let gw = Gateway::start(&a).await;
    let url = gw.url("/v/x");
    let load = tokio::spawn(async move {
        let c = client();
        let (mut public, mut protected) = (0, 0);
        for _ in 0..3000 {
            let status = c
                .get(&url)
                .send()
                .await
                .expect("a request failed")
                .status()
                .as_u16();
            match status {
                200 => public += 1,
                401 => protected += 1,
                other => panic!("status {other} during a reload"),
            }
        }
        (public, protected)
    });
    let c = client();
    let path = gw.config_path();
    for i in 0..20 {
        std::fs::write(&path, if i % 2 == 0 { &b } else { &a }).unwrap();
        let response = c.post(gw.admin_url("/reload")).send().await.unwrap();
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
        let status = c.get(gw.url("/v/check")).send().await.unwrap().status();
        assert_eq!(
            status,
            if i % 2 == 0 { 401 } else { 200 },
            "reload {i} not in force"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // An invalid version: refused with check's message, the last good one keeps serving.
    std::fs::write(&path, a.replace("auth = \"public\"", "auth = \"maybe\"")).unwrap();
    let response = c.post(gw.admin_url("/reload")).send().await.unwrap();
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("routes[0].auth: \"maybe\" is not an auth mode"),
        "{body}"
    );
    assert_eq!(
        c.get(gw.url("/v/check")).send().await.unwrap().status(),
        200
    );
    let (public, protected) = load.await.unwrap();
    assert!(public > 0 && protected > 0, "{public} / {protected}");
    let samples = scrape(&c, &gw).await;
    assert_eq!(
        sample(&samples, r#"portcullis_config_reloads_total{result="ok"}"#),
        20.0
    );
    assert_eq!(
        sample(
            &samples,
            r#"portcullis_config_reloads_total{result="failed"}"#
        ),
        1.0
    );
    // The upstream pool survived the reloads: the upstream is unchanged in both versions.
    let connections = upstream
        .connections
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        connections <= 4,
        "{connections} upstream connections: pools were rebuilt"
    );
}

#[tokio::test]
async fn a_changed_config_file_is_picked_up() {
    let upstream = Upstream::start().await;
    let text = config(upstream.addr, VERSION_A);
    let gw = Gateway::start(&text).await;
    assert_eq!(
        client().get(gw.url("/v")).send().await.unwrap().status(),
        200
    );
    std::fs::write(gw.config_path(), config(upstream.addr, VERSION_B)).unwrap();
    let started = Instant::now();
    loop {
        let status = client().get(gw.url("/v")).send().await.unwrap().status();
        if status == 401 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the file change was not applied"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish_and_refuses_new_ones() {
    let upstream = Upstream::start().await;
    let text = with_admin(config(upstream.addr, ROUTES), "shutdown_grace = \"8s\"")
        .replace("timeout = \"1s\"", "timeout = \"10s\"");
    let mut gw = Gateway::start(&text).await;
    let slow_url = gw.url("/public/slow");
    let slow = tokio::spawn(async move {
        client()
            .get(slow_url)
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let admin = gw.admin_url("/readyz");
    let http = gw.http;
    let started = Instant::now();
    gw.begin_stop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        client().get(&admin).send().await.unwrap().status(),
        503,
        "readyz while draining"
    );
    assert!(
        tokio::net::TcpStream::connect(http).await.is_err(),
        "new connections accepted while draining"
    );
    assert_eq!(
        slow.await.unwrap().expect("the in-flight request failed"),
        200
    );
    gw.stopped(Duration::from_secs(8)).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(8));
}

/// `server.health` serves the probes and nothing else; with an admin token, the admin
/// listener serves the probes to anyone and the rest only with the token; `portcullis
/// health` exits 0 on a 200 and 1 otherwise.
#[tokio::test]
async fn probes_are_open_and_the_rest_of_the_admin_listener_needs_its_token() {
    let upstream = Upstream::start().await;
    let secrets = tempfile::tempdir().unwrap();
    let token_file = secrets.path().join("admin.token");
    let token = "0123456789abcdef0123456789abcdef";
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let extra = format!(
        "health = \"127.0.0.1:0\"\nadmin_token_file = \"{}\"\nheader_read_timeout = \"1s\"",
        token_file.display()
    );
    let gw = Gateway::start(&with_admin(config(upstream.addr, ROUTES), &extra)).await;
    let health = gw.health.expect("a health listener");
    let c = client();
    let status = |response: reqwest::Response| response.status().as_u16();
    for path in ["/healthz", "/readyz"] {
        let url = format!("http://{health}{path}");
        assert_eq!(status(c.get(&url).send().await.unwrap()), 200, "{path}");
        assert_eq!(status(c.get(gw.admin_url(path)).send().await.unwrap()), 200);
    }
    // The probe listener has nothing else, with or without a token.
    for path in ["/metrics", "/reload"] {
        let url = format!("http://{health}{path}");
        assert_eq!(
            status(c.get(&url).bearer_auth(token).send().await.unwrap()),
            404
        );
        assert_eq!(
            status(c.post(&url).bearer_auth(token).send().await.unwrap()),
            404
        );
    }
    // The admin listener: the token or 401.
    let metrics = gw.admin_url("/metrics");
    let refused = c.get(&metrics).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    assert!(refused.headers().contains_key("www-authenticate"));
    let wrong = c
        .get(&metrics)
        .bearer_auth("0123456789abcdef0123456789abcdeX");
    assert_eq!(status(wrong.send().await.unwrap()), 401);
    assert_eq!(
        status(c.post(gw.admin_url("/reload")).send().await.unwrap()),
        401
    );
    assert_eq!(
        status(c.get(&metrics).bearer_auth(token).send().await.unwrap()),
        200
    );
    // The scheme's name in any case.
    let lower = c
        .get(&metrics)
        .header("authorization", format!("bearer {token}"));
    assert_eq!(status(lower.send().await.unwrap()), 200);
    let reload = c.post(gw.admin_url("/reload")).bearer_auth(token);
    assert_eq!(status(reload.send().await.unwrap()), 200);

    let probe = |url: String| async move {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["health", "--url", &url, "--timeout", "2"])
            .output()
            .await
            .unwrap()
            .status
            .code()
    };
    assert_eq!(probe(format!("http://{health}/readyz")).await, Some(0));
    assert_eq!(probe(gw.admin_url("/metrics")).await, Some(1));
    // A connection that sends nothing, or half a head, is not held (I11): closed after
    // header_read_timeout, on the probe listener as on the admin one.
    for (addr, sent) in [
        (health, &b""[..]),
        (health, &b"GET /readyz HTTP/1.1\r\nHost: x\r\n"[..]),
        (gw.admin.unwrap(), &b"GET /metr"[..]),
    ] {
        use tokio::io::AsyncWriteExt;
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(sent).await.unwrap();
        let (_, closed_after) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
        let closed_after = closed_after.expect("the silent connection was kept open");
        assert!(closed_after < Duration::from_secs(3), "{closed_after:?}");
    }
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    assert_eq!(probe(format!("http://{closed}/readyz")).await, Some(1));
}

/// `shutdown_delay`: not ready at once, yet every request sent during the delay, on new
/// connections as on kept ones, is served; then the listeners close.
#[tokio::test]
async fn during_the_shutdown_delay_requests_keep_being_served_while_not_ready() {
    let upstream = Upstream::start().await;
    let text = with_admin(config(upstream.addr, ROUTES), "shutdown_delay = \"2s\"");
    let mut gw = Gateway::start(&text).await;
    let (admin, http, url) = (gw.admin_url("/readyz"), gw.http, gw.url("/public/x"));
    let kept = client();
    assert_eq!(kept.get(&url).send().await.unwrap().status(), 200);
    let started = Instant::now();
    gw.begin_stop();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(client().get(&admin).send().await.unwrap().status(), 503);
    // Continuous requests for most of the delay: none fails.
    let mut served = 0;
    while started.elapsed() < Duration::from_millis(1500) {
        let fresh = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        assert_eq!(fresh.get(&url).send().await.unwrap().status(), 200);
        assert_eq!(kept.get(&url).send().await.unwrap().status(), 200);
        served += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served > 10, "{served}");
    // After the delay the listeners are closed.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        tokio::net::TcpStream::connect(http).await.is_err(),
        "still accepting after the delay"
    );
    drop(kept);
    gw.stopped(Duration::from_secs(10)).await.unwrap();
}

/// A client of `gw`'s TLS listener (as `localhost`) that trusts only the certificate `pem`.
fn trusting(gw: &Gateway, pem: &str) -> reqwest::Client {
    let cert = reqwest::Certificate::from_pem(pem.as_bytes()).unwrap();
    reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([cert])
        .resolve("localhost", gw.https.unwrap())
        .build()
        .unwrap()
}

/// A certificate in a Kubernetes Secret volume: the files are symlinks through `..data`,
/// and an update points `..data` at a new folder. The watch notices (no file changed in
/// place) and the new certificate is served without a reload request.
#[tokio::test]
async fn a_secret_volume_swap_reloads_the_certificate() {
    use std::os::unix::fs::symlink;
    let upstream = Upstream::start().await;
    let mount = tempfile::tempdir().unwrap();
    let version = |name: &str, cert: &str, key: &str| {
        let dir = mount.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("tls.crt"), cert).unwrap();
        std::fs::write(dir.join("tls.key"), key).unwrap();
    };
    version("..2026_12_07_01", &keys().tls_cert_pem, &keys().tls_key_pem);
    symlink("..2026_12_07_01", mount.path().join("..data")).unwrap();
    for file in ["tls.crt", "tls.key"] {
        symlink(format!("..data/{file}"), mount.path().join(file)).unwrap();
    }
    let text = config(upstream.addr, ROUTES)
        .replace(
            "cert = \"tls.crt\"",
            &format!("cert = \"{}/tls.crt\"", mount.path().display()),
        )
        .replace(
            "key = \"tls.key\"",
            &format!("key = \"{}/tls.key\"", mount.path().display()),
        );
    assert!(text.contains(&mount.path().display().to_string()));
    let gw = Gateway::start(&text).await;
    let trusting = |pem: &str| trusting(&gw, pem);
    let url = gw.https_url("/public");
    assert!(
        trusting(&keys().tls_cert_pem)
            .get(&url)
            .send()
            .await
            .is_ok()
    );

    // What the kubelet does: the new version in a new folder, `..data` swapped atomically.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    version("..2026_12_07_02", &cert.pem(), &key.serialize_pem());
    symlink("..2026_12_07_02", mount.path().join("..data_tmp")).unwrap();
    std::fs::rename(mount.path().join("..data_tmp"), mount.path().join("..data")).unwrap();
    std::fs::remove_dir_all(mount.path().join("..2026_12_07_01")).unwrap();

    let new_client = trusting(&cert.pem());
    for _ in 0..100 {
        if new_client.get(&url).send().await.is_ok() {
            assert!(
                trusting(&keys().tls_cert_pem)
                    .get(&url)
                    .send()
                    .await
                    .is_err()
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the new certificate was never served");
}

#[tokio::test]
async fn tls_certificates_reload_without_a_restart() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&with_admin(config(upstream.addr, ROUTES), "")).await;
    let trusting = |pem: &str| trusting(&gw, pem);
    let old_pem = keys().tls_cert_pem.clone();
    assert_eq!(
        trusting(&old_pem)
            .get(gw.https_url("/public"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // A new certificate and key, then a reload.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(gw.dir.path().join("new.crt"), cert.pem()).unwrap();
    std::fs::write(gw.dir.path().join("new.key"), key.serialize_pem()).unwrap();
    let text = std::fs::read_to_string(gw.config_path())
        .unwrap()
        .replace("cert = \"tls.crt\"", "cert = \"new.crt\"")
        .replace("key = \"tls.key\"", "key = \"new.key\"");
    std::fs::write(gw.config_path(), text).unwrap();
    let response = client().post(gw.admin_url("/reload")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    // New connections get the new certificate; the old one is no longer presented.
    assert_eq!(
        trusting(&cert.pem())
            .get(gw.https_url("/public"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert!(
        trusting(&old_pem)
            .get(gw.https_url("/public"))
            .send()
            .await
            .is_err()
    );
}
