//! `/admin/v1/ca/*` and `/admin/v1/operators`: the CA's certificates, their
//! revocation, the CRL, new operators; OCSP on the admin listener.

use axum::http::{Method, StatusCode};
use keyward_ca::Role;
use serde_json::json;

use crate::harness::{App, anonymous, der_of_pem, identity_of};

fn csr_pem() -> String {
    keyward_tests::simulator::client_csr_pem().unwrap()
}

#[tokio::test]
async fn an_admin_issues_lists_shows_and_revokes_certificates() {
    let app = App::new().await;
    let issued = app
        .post(
            &app.root,
            "/admin/v1/ca/certificates",
            json!({"csr_pem": csr_pem(), "profile": "server-tls", "dns_names": ["hsm-gw.bank.example"]}),
        )
        .await;
    let body = issued.expect(StatusCode::CREATED).clone();
    let serial = body["serial"].as_str().unwrap().to_owned();
    assert_eq!(body["profile"], "server-tls");
    assert!(
        body["chain_pem"]
            .as_str()
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
    assert!(app.audited("certificate.issue", "requested").await);
    assert!(app.audited("certificate.issue", "success").await);

    let list = app
        .get(&app.root, "/admin/v1/ca/certificates?profile=server-tls")
        .await;
    let certs = list.expect(StatusCode::OK)["certificates"]
        .as_array()
        .unwrap()
        .clone();
    assert!(certs.iter().any(|c| c["serial"] == serial.as_str()));
    let show = app
        .get(&app.root, &format!("/admin/v1/ca/certificates/{serial}"))
        .await;
    assert_eq!(show.expect(StatusCode::OK)["status"], "valid");

    let revoked = app
        .post(
            &app.root,
            &format!("/admin/v1/ca/certificates/{serial}/revoke"),
            json!({"reason": "superseded"}),
        )
        .await;
    assert_eq!(revoked.expect(StatusCode::OK)["status"], "revoked");
    // The CRL the listeners now use lists it.
    let crl = app.get(&app.root, "/admin/v1/ca/crl").await;
    assert_eq!(crl.status, StatusCode::OK, "{}", crl.text);
    assert!(app.audited("certificate.revoke", "success").await);
    // Twice is a conflict.
    app.post(
        &app.root,
        &format!("/admin/v1/ca/certificates/{serial}/revoke"),
        json!({}),
    )
    .await
    .refused(StatusCode::CONFLICT, "already_revoked");
}

/// Issuance and revocation write their `requested` record first and commit
/// the certificate's row with the outcome record: when that record cannot
/// be staged, nothing is issued or revoked.
#[tokio::test]
async fn issuance_and_revocation_commit_with_their_outcome_records() {
    let app = App::new().await;
    let body =
        json!({"csr_pem": csr_pem(), "profile": "server-tls", "dns_names": ["gw.bank.example"]});
    let issued = app
        .post(&app.root, "/admin/v1/ca/certificates", body.clone())
        .await;
    let serial = issued.expect(StatusCode::CREATED)["serial"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        app.outcomes_of("certificate.issue", issued.request_id())
            .await,
        ["requested", "success"]
    );
    let server_certs = || async {
        let a = app
            .get(&app.root, "/admin/v1/ca/certificates?profile=server-tls")
            .await;
        a.expect(StatusCode::OK)["certificates"]
            .as_array()
            .unwrap()
            .len()
    };
    let before = server_certs().await;

    app.break_audit_staging().await;
    let refused = app
        .post(&app.root, "/admin/v1/ca/certificates", body.clone())
        .await;
    refused.refused(StatusCode::SERVICE_UNAVAILABLE, "audit_unavailable");
    assert_eq!(server_certs().await, before, "nothing was issued");
    assert_eq!(
        app.outcomes_of("certificate.issue", refused.request_id())
            .await,
        ["requested", "failure"]
    );
    let revoke = format!("/admin/v1/ca/certificates/{serial}/revoke");
    let refused = app
        .post(&app.root, &revoke, json!({"reason": "superseded"}))
        .await;
    refused.refused(StatusCode::SERVICE_UNAVAILABLE, "audit_unavailable");
    let show = app
        .get(&app.root, &format!("/admin/v1/ca/certificates/{serial}"))
        .await;
    assert_eq!(show.expect(StatusCode::OK)["status"], "valid");
    assert_eq!(
        app.outcomes_of("certificate.revoke", refused.request_id())
            .await,
        ["requested", "failure"]
    );

    app.heal_audit_staging().await;
    let revoked = app
        .post(&app.root, &revoke, json!({"reason": "superseded"}))
        .await;
    assert_eq!(revoked.expect(StatusCode::OK)["status"], "revoked");
    assert_eq!(
        app.outcomes_of("certificate.revoke", revoked.request_id())
            .await,
        ["requested", "success"]
    );
}

/// An admin revoking the certificate it calls with would lock itself out:
/// refused with 409 `self_revocation`, audited, the caller still admitted;
/// another admin may revoke it.
#[tokio::test]
async fn an_operator_cannot_revoke_its_own_certificate() {
    let app = App::new().await;
    let own = app.root.cert.as_ref().unwrap().serial.clone();
    let revoke = format!("/admin/v1/ca/certificates/{own}/revoke");
    let refused = app
        .post(&app.root, &revoke, json!({"reason": "keyCompromise"}))
        .await;
    refused.refused(StatusCode::CONFLICT, "self_revocation");
    assert_eq!(
        app.outcomes_of("certificate.revoke", refused.request_id())
            .await,
        ["refused"]
    );
    app.get(&app.root, "/admin/v1/whoami")
        .await
        .expect(StatusCode::OK);

    let second = app.operator("second-admin", Role::Admin).await;
    let revoked = app.post(&second, &revoke, json!({})).await;
    assert_eq!(revoked.expect(StatusCode::OK)["status"], "revoked");
    app.get(&app.root, "/admin/v1/whoami")
        .await
        .refused(StatusCode::FORBIDDEN, "certificate_revoked");
}

#[tokio::test]
async fn certificate_refusals_are_typed() {
    let app = App::new().await;
    let dave = app.operator("dave", Role::Operator).await;
    // Server and permit certificates are an admin's.
    app.post(
        &dave,
        "/admin/v1/ca/certificates",
        json!({"csr_pem": csr_pem(), "profile": "server-tls", "dns_names": ["x.example"]}),
    )
    .await
    .refused(StatusCode::FORBIDDEN, "forbidden_role");
    // Operators have their own endpoint.
    app.post(
        &app.root,
        "/admin/v1/ca/certificates",
        json!({"csr_pem": csr_pem(), "profile": "operator"}),
    )
    .await
    .refused(StatusCode::BAD_REQUEST, "use_operators_endpoint");
    // Device certificates come only from provisioning, for
    // an admin too; the refusal is audited.
    app.post(
        &app.root,
        "/admin/v1/ca/certificates",
        json!({"csr_pem": csr_pem(), "profile": "device", "device_id": "0102030405060708"}),
    )
    .await
    .refused(StatusCode::FORBIDDEN, "device_certificates_by_provisioning");
    assert!(app.audited("certificate.issue", "refused").await);
    // Not a CSR.
    let a = app
        .post(
            &app.root,
            "/admin/v1/ca/certificates",
            json!({"csr_pem": "garbage", "profile": "server-tls", "dns_names": ["p.example"]}),
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
    // Unknown serial.
    app.get(&app.root, "/admin/v1/ca/certificates/0A0B0C0D")
        .await
        .refused(StatusCode::NOT_FOUND, "unknown_serial");
    // A revoked serial that was never issued here.
    app.post(
        &app.root,
        "/admin/v1/ca/certificates/0A0B0C0D/revoke",
        json!({}),
    )
    .await
    .refused(StatusCode::NOT_FOUND, "unknown_serial");
}

#[tokio::test]
async fn an_admin_certifies_a_new_operator_who_can_then_act() {
    let app = App::new().await;
    let issued = app
        .post(
            &app.root,
            "/admin/v1/operators",
            json!({"csr_pem": csr_pem(), "name": "erin", "role": "auditor"}),
        )
        .await;
    let body = issued.expect(StatusCode::CREATED).clone();
    let erin = identity_of(&der_of_pem(body["certificate_pem"].as_str().unwrap()));
    let me = app.get(&erin, "/admin/v1/whoami").await;
    assert_eq!(me.expect(StatusCode::OK)["role"], "auditor");
    // Only an admin makes operators.
    app.post(
        &erin,
        "/admin/v1/operators",
        json!({"csr_pem": csr_pem(), "name": "frank", "role": "admin"}),
    )
    .await
    .refused(StatusCode::FORBIDDEN, "forbidden_role");
    let a = app
        .post(
            &app.root,
            "/admin/v1/operators",
            json!({"csr_pem": csr_pem(), "name": "frank", "role": "root"}),
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
}

#[tokio::test]
async fn ocsp_answers_anonymous_clients() {
    let app = App::new().await;
    // A body that is no OCSP request: a signed-nothing malformedRequest
    // answer, not an HTTP error.
    let mut req = axum::http::Request::builder()
        .method(Method::POST)
        .uri("/ocsp")
        .header("content-type", "application/ocsp-request")
        .body(axum::body::Body::from(vec![0x30, 0x00]))
        .unwrap();
    req.extensions_mut().insert(anonymous());
    let res = tower::ServiceExt::oneshot(app.admin.clone(), req)
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.headers()["content-type"],
        keyward_ca::OCSP_RESPONSE_CONTENT_TYPE
    );
    let bytes = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(
        bytes.as_ref(),
        keyward_ca::malformed_request_der().as_slice()
    );
    // GET with a base64 request that is not one.
    let a = app.get(&anonymous(), "/ocsp/AAAA").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
}

/// `init`'s certified-key step, on the confirmation evidence key: its
/// certificate may sign statements (digitalSignature, contentCommitment)
/// and nothing else; a second run finds it; once revoked, the next run
/// certifies the same HSM key again, audited.
#[tokio::test]
async fn init_certifies_the_evidence_key_once_and_again_after_revocation() {
    use keyward_ca::{IssueRequest, Profile, RevocationReason};
    use keyward_kms::hsm::KeyPairKind;
    use keyward_server::bootstrap::{self, InitReport};
    use keyward_server::confirmation::EVIDENCE_KEY_LABEL;
    use x509_parser::prelude::{FromDer, X509Certificate};

    let app = App::new().await;
    // No other key gets a certificate of the server's own signing or
    // channel profiles through the admin API, not even an admin's.
    for profile in ["evidence", "load-permit", "channel"] {
        app.post(
            &app.root,
            "/admin/v1/ca/certificates",
            json!({"csr_pem": csr_pem(), "profile": profile, "common_name": "mine"}),
        )
        .await
        .refused(StatusCode::BAD_REQUEST, "profile_reserved");
    }
    let s = &app.state;
    let first = bootstrap::certified_key(&s.kms, &s.ca, EVIDENCE_KEY_LABEL, Profile::Evidence)
        .await
        .unwrap();
    let der = der_of_pem(&first.cert.pem);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    let usage = cert.key_usage().unwrap().unwrap().value;
    assert!(usage.digital_signature() && usage.non_repudiation());
    assert!(!usage.key_encipherment() && !usage.key_cert_sign() && !usage.crl_sign());
    assert!(cert.extended_key_usage().unwrap().is_none());
    assert!(!cert.is_ca());

    let ensure = || async {
        let mut report = InitReport::default();
        let key = bootstrap::ensure_certified_key(
            &s.kms,
            &s.ca,
            &s.audit,
            EVIDENCE_KEY_LABEL,
            KeyPairKind::P256,
            IssueRequest::evidence(None),
            &mut report,
        )
        .await
        .unwrap();
        (key, report)
    };
    let (again, report) = ensure().await;
    assert_eq!(again.cert.serial, first.cert.serial);
    assert!(!report.changed(), "{:?}", report.created);

    s.ca.revoke(&first.cert.serial, RevocationReason::Superseded)
        .await
        .unwrap();
    let (renewed, report) = ensure().await;
    assert_ne!(renewed.cert.serial, first.cert.serial);
    assert_eq!(renewed.key.public_key(), first.key.public_key());
    assert_eq!(report.created.len(), 1, "{:?}", report.created);
    let trail = app.trail().await;
    let serial = renewed.cert.serial.to_string();
    assert!(
        trail
            .iter()
            .any(|r| r.to_string().contains(&serial) && r.to_string().contains("evidence")),
        "no audit record names the new evidence certificate"
    );
}

/// `init`'s channel step: the channel key (RSA, unwrap only) with a
/// keyEncipherment-only `channel` certificate, the state KEK and the
/// implicit-rejection key; a second
/// run finds them; once revoked, the next run certifies the same key again,
/// audited.
#[tokio::test]
async fn init_certifies_the_channel_key_once_and_again_after_revocation() {
    use keyward_ca::{Profile, RevocationReason};
    use keyward_kms::service::CHANNEL_KEY_LABEL;
    use keyward_server::bootstrap::{self, InitReport};
    use x509_parser::prelude::{FromDer, X509Certificate};

    let app = App::new().await;
    let s = &app.state;
    let ensure = || async {
        let mut report = InitReport::default();
        let cert = bootstrap::ensure_channel_key(&s.kms, &s.ca, &s.audit, &mut report)
            .await
            .unwrap();
        (cert, report)
    };
    // `init` made it already.
    let (first, report) = ensure().await;
    assert!(!report.changed(), "{:?}", report.created);
    assert_eq!(first.profile, Profile::Channel);
    let der = der_of_pem(&first.pem);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    let usage = cert.key_usage().unwrap().unwrap().value;
    assert!(usage.key_encipherment());
    assert!(!usage.digital_signature() && !usage.non_repudiation());
    assert!(cert.extended_key_usage().unwrap().is_none());
    assert!(!cert.is_ca());
    let (public, created) = s.kms.ensure_channel_key(CHANNEL_KEY_LABEL).await.unwrap();
    assert!(!created);
    assert!(!s.kms.ensure_channel_state_kek().await.unwrap());
    assert!(!s.kms.ensure_channel_implicit_rejection_key().await.unwrap());
    assert_eq!(
        bootstrap::current_certificate(&s.ca, Profile::Channel, &public, 0)
            .await
            .unwrap()
            .unwrap()
            .serial,
        first.serial
    );

    s.ca.revoke(&first.serial, RevocationReason::Superseded)
        .await
        .unwrap();
    let (renewed, report) = ensure().await;
    assert_ne!(renewed.serial, first.serial);
    assert_eq!(report.created.len(), 1, "{:?}", report.created);
    let trail = app.trail().await;
    let serial = renewed.serial.to_string();
    assert!(
        trail
            .iter()
            .any(|r| r.to_string().contains(&serial) && r.to_string().contains("channel")),
        "no audit record names the new channel certificate"
    );
}
