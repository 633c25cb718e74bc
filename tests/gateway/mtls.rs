//! `auth = "mtls"`: client certificates verified in the handshake (`[tls] client_ca`,
//! `client_crl`), their identity on the route; certificates from rcgen-made CAs.

use crate::support::pki::{Ca, Leaf};
use crate::support::*;

/// A client presenting `leaf` (or none), trusting the gateway's test certificate.
fn client_with(gw: &Gateway, leaf: Option<&Leaf>) -> reqwest::Client {
    let cert = reqwest::Certificate::from_pem(keys().tls_cert_pem.as_bytes()).unwrap();
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([cert])
        .resolve("localhost", gw.https.unwrap());
    if let Some(leaf) = leaf {
        let pem = format!("{}{}", leaf.cert_pem, leaf.key_pem);
        builder = builder.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
    }
    builder.build().unwrap()
}

const ROUTES: &str = r#"
[[routes]]
name = "machines"
path_prefix = "/machines"
upstream = "app"
auth = "mtls"
[routes.require]
claims = { email = "batch@example.com" }

[[routes]]
name = "either"
path_prefix = "/either"
upstream = "app"
auth = ["jwt", "mtls"]
"#;

struct Setup {
    gw: Gateway,
    upstream: Upstream,
    ca: Ca,
    dir: tempfile::TempDir,
}

async fn setup(tls_extra: &str) -> Setup {
    let ca = Ca::new("clients");
    let dir = tempfile::tempdir().unwrap();
    let ca_file = ca.write(dir.path(), "clients-ca.pem");
    let crl_file = dir.path().join("clients.crl");
    std::fs::write(&crl_file, ca.crl(&[666])).unwrap();
    let upstream = Upstream::start().await;
    let text = crate::operations::with_admin(config_with(&upstream, "", ROUTES), "").replace(
        "key = \"tls.key\"",
        &format!(
            "key = \"tls.key\"\nclient_ca = {ca_file:?}\nclient_crl = {:?}\n{tls_extra}",
            crl_file.display().to_string()
        ),
    );
    let gw = Gateway::start(&text).await;
    Setup {
        gw,
        upstream,
        ca,
        dir,
    }
}

#[tokio::test]
async fn a_verified_client_certificate_is_the_identity_and_a_revoked_or_foreign_one_is_not() {
    let s = setup("").await;
    let batch = s.ca.client(
        "Batch Job",
        &["batch@example.com"],
        &["spiffe://corp/batch"],
        7,
    );
    let other = s.ca.client("Someone", &["someone@example.com"], &[], 8);
    let revoked = s.ca.client("Revoked", &["batch@example.com"], &[], 666);
    let foreign = Ca::new("elsewhere").client("Batch Job", &["batch@example.com"], &[], 7);

    // The certificate's identity: sub from the SAN URI (the default order), the email.
    let response = client_with(&s.gw, Some(&batch))
        .get(s.gw.https_url("/machines/run"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = s.upstream.last();
    assert_eq!(seen.header_values("x-auth-user"), ["spiffe://corp/batch"]);
    assert_eq!(seen.header_values("x-auth-email"), ["batch@example.com"]);
    // Requirements hold for certificates too.
    let response = client_with(&s.gw, Some(&other))
        .get(s.gw.https_url("/machines/run"))
        .send()
        .await
        .unwrap();
    assert_error(response, 403, "insufficient_scope").await;
    // No certificate (client_auth = "optional"): served, but the route says 401; the
    // mixed route takes a JWT instead.
    let none = client_with(&s.gw, None);
    let response = none
        .get(s.gw.https_url("/machines/run"))
        .send()
        .await
        .unwrap();
    assert_error(response, 401, "unauthorized").await;
    let response = none
        .get(s.gw.https_url("/either/x"))
        .bearer_auth(valid_token())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(s.upstream.last().header_values("x-auth-user"), ["alice"]);
    // Plain HTTP has no certificate.
    let response = client()
        .get(s.gw.url("/machines/run"))
        .send()
        .await
        .unwrap();
    assert_error(response, 401, "unauthorized").await;
    // Revoked by the CRL, or from another CA: the handshake fails, nothing is served.
    let before = s.upstream.count();
    for leaf in [&revoked, &foreign] {
        let failed = client_with(&s.gw, Some(leaf))
            .get(s.gw.https_url("/either/x"))
            .bearer_auth(valid_token())
            .send()
            .await;
        assert!(failed.is_err(), "a bad certificate was served: {failed:?}");
    }
    assert_eq!(s.upstream.count(), before);

    // The CRL reloads with the config: revoking serial 7 shuts the batch certificate out.
    std::fs::write(s.dir.path().join("clients.crl"), s.ca.crl(&[666, 7])).unwrap();
    let reload = client()
        .post(s.gw.admin_url("/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(reload.status(), 200);
    let failed = client_with(&s.gw, Some(&batch))
        .get(s.gw.https_url("/machines/run"))
        .send()
        .await;
    assert!(
        failed.is_err(),
        "a certificate revoked by the reloaded CRL was served"
    );

    let summaries = portcullis::check::route_summaries(&s.gw.shared.load());
    let either = summaries
        .iter()
        .find(|l| l.starts_with("route either:"))
        .unwrap();
    assert!(either.contains("or client certificate"), "{either}");
    s.gw.stop().await;
}

#[tokio::test]
async fn required_client_auth_refuses_a_handshake_without_a_certificate() {
    let s = setup("client_auth = \"required\"\nidentity_from = \"cn\"").await;
    let failed = client_with(&s.gw, None)
        .get(s.gw.https_url("/either/x"))
        .bearer_auth(valid_token())
        .send()
        .await;
    assert!(failed.is_err(), "served without a certificate: {failed:?}");
    let batch = s.ca.client("Batch Job", &["batch@example.com"], &[], 9);
    let response = client_with(&s.gw, Some(&batch))
        .get(s.gw.https_url("/either/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // identity_from = "cn": the subject's common name.
    assert_eq!(
        s.upstream.last().header_values("x-auth-user"),
        ["Batch Job"]
    );
    s.gw.stop().await;
}

#[tokio::test]
async fn mtls_settings_without_a_client_ca_name_their_key() {
    let upstream = Upstream::start().await;
    let routes =
        "[[routes]]\nname = \"m\"\npath_prefix = \"/m\"\nupstream = \"app\"\nauth = \"mtls\"\n";
    let text = config_with(&upstream, "", routes).replace(
        "key = \"tls.key\"",
        "key = \"tls.key\"\nclient_auth = \"required\"",
    );
    let error = Gateway::try_start(&text).await.err().unwrap();
    assert!(
        error.contains("tls.client_auth: only applies with client certificates"),
        "{error}"
    );
    assert!(error.contains("routes[5].auth: names \"mtls\""), "{error}");
}

/// With client certificates, a reload ends TLS resumption: a resumed session keeps the
/// certificate it began with, so a new CRL or CA must not be bypassed by resuming.
#[tokio::test]
async fn a_reload_ends_tls_resumption_when_client_certificates_are_verified() {
    use rustls::HandshakeKind::{Full, Resumed};
    let s = setup("").await;
    let https = s.gw.https.unwrap();
    let client = resuming_tls_client();
    assert_eq!(tls_get(https, client.clone(), "/either/x").await.1, Full);
    assert_eq!(tls_get(https, client.clone(), "/either/x").await.1, Resumed);
    let reload = crate::support::client()
        .post(s.gw.admin_url("/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(reload.status(), 200);
    assert_eq!(tls_get(https, client.clone(), "/either/x").await.1, Full);
    assert_eq!(tls_get(https, client, "/either/x").await.1, Resumed);
}
