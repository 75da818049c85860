//! Who may reach what: health and metrics without a certificate, the admin
//! API only with a valid operator certificate and the right role, refusals
//! audited; the public listener's ping.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use keyward_ca::Role;
use serde_json::json;

use keyward_server::edge::identity::ClientIdentity;

use crate::harness::{App, anonymous, call, der_of_pem, identity_of, send};

#[tokio::test]
async fn health_and_metrics_need_no_certificate() {
    let app = App::new().await;
    let anon = anonymous();
    app.get(&anon, "/live").await.expect(StatusCode::OK);
    let ready = app.get(&anon, "/ready").await;
    ready.expect(StatusCode::OK);
    let metrics = app.get(&anon, "/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert!(metrics.text.contains("keyward_"), "{}", metrics.text);
}

#[tokio::test]
async fn whoami_names_the_operator() {
    let app = App::new().await;
    let me = app.get(&app.root, "/admin/v1/whoami").await;
    let body = me.expect(StatusCode::OK);
    assert_eq!(body["name"], "admin");
    assert_eq!(body["role"], "admin");
    assert!(app.audited("whoami", "success").await);
}

#[tokio::test]
async fn the_admin_api_refuses_anonymous_and_device_clients() {
    let app = App::new().await;
    app.get(&anonymous(), "/admin/v1/whoami")
        .await
        .refused(StatusCode::UNAUTHORIZED, "client_certificate_required");
    // A device certificate is known to the CA but is no operator.
    let device =
        keyward_tests::simulator::SimDevice::p256("0102030405060701".parse().unwrap()).unwrap();
    app.issuer("bank-a", "tdes").await;
    app.import("B-ACCESS", &[&device])
        .await
        .expect(StatusCode::CREATED);
    let devices = app
        .state
        .ca
        .list(&keyward_ca::CertFilter::default())
        .await
        .unwrap();
    let cert = devices
        .iter()
        .find(|c| c.device_id.is_some())
        .expect("a device certificate");
    app.get(&identity_of(&der_of_pem(&cert.pem)), "/admin/v1/whoami")
        .await
        .refused(StatusCode::FORBIDDEN, "forbidden_role");
    assert!(app.audited("access.refused", "refused").await);
}

#[tokio::test]
async fn roles_decide_what_an_operator_may_do() {
    let app = App::new().await;
    let auditor = app.operator("carol", Role::Auditor).await;
    let operator = app.operator("dave", Role::Operator).await;
    // Everyone reads.
    app.get(&auditor, "/admin/v1/issuers")
        .await
        .expect(StatusCode::OK);
    // Creating an issuer is an admin's act.
    for who in [&auditor, &operator] {
        app.post(
            who,
            "/admin/v1/issuers",
            serde_json::json!({"issuer_id": "bank-x", "family": "tdes"}),
        )
        .await
        .refused(StatusCode::FORBIDDEN, "forbidden_role");
    }
    // Provisioning is not for auditors.
    app.post(
        &auditor,
        "/admin/v1/devices/0102030405060708/challenge",
        serde_json::json!({}),
    )
    .await
    .refused(StatusCode::FORBIDDEN, "forbidden_role");
}

/// A role that may not write is refused from the headers: an auditor's
/// malformed (or huge) body is never parsed, so it is 403 and audited, not
/// 422.
#[tokio::test]
async fn an_auditors_write_is_refused_before_its_body_is_read() {
    let app = App::new().await;
    let auditor = app.operator("carol", Role::Auditor).await;
    for path in [
        "/admin/v1/issuers",
        "/admin/v1/batches",
        "/admin/v1/macs/verify",
    ] {
        let req = axum::http::Request::builder()
            .method("POST")
            .uri(path)
            .header("content-type", "application/json")
            .body(axum::body::Body::from("{not json"))
            .unwrap();
        let answer = send(&app.admin, &auditor, req).await;
        answer.refused(StatusCode::FORBIDDEN, "forbidden_role");
        assert_eq!(answer.headers["connection"], "close", "{path}");
    }
    let refused: Vec<_> = app
        .trail()
        .await
        .into_iter()
        .filter(|r| r["action"] == "access.refused")
        .collect::<Vec<_>>();
    assert_eq!(refused.len(), 3, "{refused:#?}");
}

#[tokio::test]
async fn a_revoked_operator_is_refused_on_the_next_request() {
    let app = App::new().await;
    let dave = app.operator("dave", Role::Operator).await;
    app.get(&dave, "/admin/v1/whoami")
        .await
        .expect(StatusCode::OK);
    let serial = dave.cert.as_ref().unwrap().serial.clone();
    app.post(
        &app.root,
        &format!("/admin/v1/ca/certificates/{serial}/revoke"),
        serde_json::json!({"reason": "keyCompromise"}),
    )
    .await
    .expect(StatusCode::OK);
    // Same identity, as on a kept-alive connection: refused per request.
    app.get(&dave, "/admin/v1/whoami")
        .await
        .refused(StatusCode::FORBIDDEN, "certificate_revoked");
}

#[tokio::test]
async fn unknown_routes_and_bad_bodies_are_typed_json_errors() {
    let app = App::new().await;
    let a = app.get(&app.root, "/admin/v1/nothing-here").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.text);
    assert!(a.code().len() > 1, "{}", a.text);
    let a = app
        .post(
            &app.root,
            "/admin/v1/issuers",
            serde_json::json!({"issuer_id": 7}),
        )
        .await;
    assert!(a.status.is_client_error(), "{}", a.text);
    assert!(a.body["error"]["request_id"].is_string(), "{}", a.text);
}

/// The identity of device `d`'s registered certificate.
pub(crate) async fn device_identity(
    app: &App,
    d: &keyward_tests::simulator::SimDevice,
) -> ClientIdentity {
    let serial: keyward_ca::Serial = app
        .state
        .provisioning
        .device(d.id)
        .await
        .unwrap()
        .cert_serial
        .unwrap()
        .parse()
        .unwrap();
    let rec = app.state.ca.get(&serial).await.unwrap().unwrap();
    identity_of(&der_of_pem(&rec.pem))
}

#[tokio::test]
async fn the_public_ping_names_the_device() {
    let app = App::new().await;
    let d = keyward_tests::simulator::SimDevice::p256("0102030405060701".parse().unwrap()).unwrap();
    app.import("B-PING", &[&d])
        .await
        .expect(StatusCode::CREATED);
    let who = device_identity(&app, &d).await;
    let a = call(&app.public, &who, Method::GET, "/v1/ping", None).await;
    let body = a.expect(StatusCode::OK);
    let ping: keyward_server::wire::Ping = serde_json::from_value(body.clone()).unwrap();
    assert!(ping.pong);
    let client = ping.client.unwrap();
    assert_eq!(client.kind, "device");
    assert_eq!(client.device_id.as_deref(), Some(d.id.to_string().as_str()));
}

/// The public listener takes exactly the device profile, and
/// only the device's current registered certificate that is not revoked —
/// checked per request, so a kept-alive connection does not outlive a
/// revocation.
#[tokio::test]
async fn the_public_listener_takes_only_current_device_certificates() {
    let app = App::new().await;
    let ping = |who: ClientIdentity| {
        let public = app.public.clone();
        async move { call(&public, &who, Method::GET, "/v1/ping", None).await }
    };
    // Operator and admin certificates, a load permit: refused, audited.
    let dave = app.operator("dave", Role::Operator).await;
    for who in [app.root.clone(), dave] {
        ping(who)
            .await
            .refused(StatusCode::FORBIDDEN, "device_certificate_required");
    }
    let permit_key =
        keyward_tests::simulator::SimDevice::p256("0A0A0A0A0A0A0A0A".parse().unwrap()).unwrap();
    let permit = app
        .state
        .ca
        .issue_from_csr(
            permit_key.csr_der(),
            keyward_ca::IssueRequest {
                profile: keyward_ca::Profile::LoadPermit,
                device_id: None,
                operator: None,
                dns_names: vec![],
                common_name: Some("permit".into()),
            },
        )
        .await
        .unwrap();
    ping(identity_of(&permit.der))
        .await
        .refused(StatusCode::FORBIDDEN, "device_certificate_required");
    assert!(app.audited("access.refused", "refused").await);

    // A device's registered certificate passes; a second certificate minted
    // for the same device id (not the registered one) does not.
    let d = keyward_tests::simulator::SimDevice::p256("0102030405060701".parse().unwrap()).unwrap();
    app.import("B-PUB", &[&d]).await.expect(StatusCode::CREATED);
    let who = device_identity(&app, &d).await;
    ping(who.clone()).await.expect(StatusCode::OK);
    let clone = app
        .state
        .ca
        .issue_from_csr(permit_key.csr_der(), keyward_ca::IssueRequest::device(d.id))
        .await
        .unwrap();
    ping(identity_of(&clone.der))
        .await
        .refused(StatusCode::FORBIDDEN, "device_certificate_not_current");

    // Revoked: refused on the same identity (a kept-alive connection).
    let serial = who.cert.as_ref().unwrap().serial.clone();
    app.post(
        &app.root,
        &format!("/admin/v1/ca/certificates/{serial}/revoke"),
        json!({"reason": "keyCompromise"}),
    )
    .await
    .expect(StatusCode::OK);
    ping(who)
        .await
        .refused(StatusCode::FORBIDDEN, "certificate_revoked");
}

#[tokio::test]
async fn errors_are_json_with_the_request_id() {
    let app = App::new().await;
    let get = |rid: Option<&str>| {
        let mut b = Request::builder().method(Method::GET).uri("/admin/v1/nope");
        if let Some(rid) = rid {
            b = b.header("x-request-id", rid);
        }
        b.body(Body::empty()).unwrap()
    };
    // An unknown route: the id in the header and in the body agree.
    let a = send(&app.admin, &app.root, get(None)).await;
    a.refused(StatusCode::NOT_FOUND, "not_found");
    let rid = a.body["error"]["request_id"].as_str().unwrap();
    assert_eq!(a.headers["x-request-id"], rid);
    // A caller's well-formed request id is kept; a malformed one replaced.
    let a = send(&app.admin, &app.root, get(Some("trace-42"))).await;
    assert_eq!(a.body["error"]["request_id"], "trace-42");
    let a = send(&app.admin, &app.root, get(Some("bad id with space"))).await;
    assert_ne!(a.body["error"]["request_id"], "bad id with space");

    // Too large a body: 413 (the installation's limit is 1 MiB).
    let big = json!({ "csr_pem": "A".repeat(2 << 20), "name": "x", "role": "admin" });
    app.post(&app.root, "/admin/v1/operators", big)
        .await
        .refused(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");
    // Bad input: 400 with the layer's code.
    app.post(
        &app.root,
        "/admin/v1/operators",
        json!({ "csr_pem": "not a csr", "name": "x", "role": "admin" }),
    )
    .await
    .refused(StatusCode::BAD_REQUEST, "csr_invalid");
    app.post(
        &app.root,
        "/admin/v1/operators",
        json!({ "csr_pem": "x", "name": "x", "role": "root" }),
    )
    .await
    .refused(StatusCode::BAD_REQUEST, "invalid_input");
}

#[tokio::test]
async fn operators_revoke_device_certificates_only() {
    let app = App::new().await;
    let dave = app.operator("dave", Role::Operator).await;
    let carol = app.operator("carol", Role::Auditor).await;
    let serial = carol.cert.as_ref().unwrap().serial.clone();
    let path = format!("/admin/v1/ca/certificates/{serial}/revoke");
    app.post(&dave, &path, json!({}))
        .await
        .refused(StatusCode::FORBIDDEN, "forbidden_role");
    app.post(&app.root, &path, json!({}))
        .await
        .expect(StatusCode::OK);
}
