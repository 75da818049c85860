//! `/admin/v1/batches`, `/admin/v1/devices`: intake, the genuine-device
//! check, init packages, lifecycle, bindings, each through its route with
//! the simulator playing the device.

use axum::http::StatusCode;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use keyward_ca::Role;
use keyward_server::wire::devices as wire;
use keyward_tests::simulator::SimDevice;
use serde_json::{Value, json};

use crate::harness::App;

fn device(n: u8) -> SimDevice {
    SimDevice::p256(format!("01020304050607{n:02X}").parse().unwrap()).unwrap()
}

fn path(d: &SimDevice, tail: &str) -> String {
    format!("/admin/v1/devices/{}{tail}", d.id)
}

/// Challenge, signature, check: the device is `verified`.
pub(crate) async fn check(app: &App, d: &SimDevice) {
    let c = app.post(&app.root, &path(d, "/challenge"), json!({})).await;
    let c: wire::ChallengeAnswer =
        serde_json::from_value(c.expect(StatusCode::CREATED).clone()).unwrap();
    let sig = d.sign_challenge(&hex::decode(&c.challenge).unwrap());
    let done = app
        .post(
            &app.root,
            &path(d, "/check"),
            json!({"challenge_id": c.challenge_id, "signature": B64.encode(sig)}),
        )
        .await;
    assert_eq!(done.expect(StatusCode::OK)["state"], "verified");
}

/// An init package for `issuer`, loaded by the device; the confirm body.
pub(crate) async fn init(app: &App, d: &mut SimDevice, issuer: &str) -> Value {
    let pkg = app
        .post(&app.root, &path(d, "/init"), json!({"issuer_id": issuer}))
        .await;
    let pkg = keyward_tests::wire::init_package_from_json(pkg.expect(StatusCode::CREATED)).unwrap();
    let answer = d.load_init_package(&pkg).unwrap();
    assert!(answer.accepted);
    serde_json::to_value(keyward_tests::wire::confirm_body(issuer, &answer)).unwrap()
}

/// A customer applied for by one operator and approved by another.
async fn customer(app: &App, account: &str) -> String {
    customer_as(app, ("alice", "bob"), "110101199003071234", account).await
}

/// A customer with `national_id` and `account`, applied for by the first of
/// `operators` and approved by the second (both made here).
pub(crate) async fn customer_as(
    app: &App,
    operators: (&str, &str),
    national_id: &str,
    account: &str,
) -> String {
    let maker = app.operator(operators.0, Role::Operator).await;
    let checker = app.operator(operators.1, Role::Operator).await;
    let applied = app
        .post(
            &maker,
            "/admin/v1/applications",
            json!({"name": "Li Lei", "national_id": national_id,
                   "accounts": [account], "contact": {"kind": "sms", "address": "+8613800138000"}}),
        )
        .await;
    let id = applied.expect(StatusCode::CREATED)["application_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let approved = app
        .post(
            &checker,
            &format!("/admin/v1/applications/{id}/approve"),
            json!({}),
        )
        .await;
    approved.expect(StatusCode::OK)["customer_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_device_goes_from_the_factory_to_issued_and_retired_through_the_routes() {
    let app = App::new().await;
    app.issuer("bank-a", "tdes").await;
    let mut d1 = device(1);
    let d2 = device(2);

    // Intake.
    let imported = app.import("F-1", &[&d1, &d2]).await;
    let report: wire::ImportAnswer =
        serde_json::from_value(imported.expect(StatusCode::CREATED).clone()).unwrap();
    assert_eq!(report.state, "complete");
    assert!(report.rows.iter().all(|r| r.outcome == "registered"));
    let batch = app.get(&app.root, "/admin/v1/batches/F-1").await;
    let batch: wire::Batch = serde_json::from_value(batch.expect(StatusCode::OK).clone()).unwrap();
    assert_eq!(batch.device_count, 2);
    let list = app
        .get(
            &app.root,
            "/admin/v1/devices?state=manufactured&batch_id=F-1&limit=1",
        )
        .await;
    let list: wire::DeviceList =
        serde_json::from_value(list.expect(StatusCode::OK).clone()).unwrap();
    assert_eq!(list.devices.len(), 1);

    // Check, original keys, confirmation.
    check(&app, &d1).await;
    let confirm = init(&app, &mut d1, "bank-a").await;
    let done = app
        .post(&app.root, &path(&d1, "/init/confirm"), confirm)
        .await;
    assert_eq!(done.expect(StatusCode::OK)["state"], "initialised");

    // Binding to an approved customer.
    let customer = customer(&app, "6222020200112233").await;
    let bound = app
        .post(
            &app.root,
            &path(&d1, "/bindings"),
            json!({"customer_id": customer, "issuer_id": "bank-a",
                   "secure_element": "psam", "accounts": ["6222020200112233"]}),
        )
        .await;
    let binding: wire::Binding =
        serde_json::from_value(bound.expect(StatusCode::CREATED).clone()).unwrap();
    assert_eq!(binding.customer_id, customer);
    let shown = app.get(&app.root, &path(&d1, "")).await;
    let shown: wire::DeviceDetail =
        serde_json::from_value(shown.expect(StatusCode::OK).clone()).unwrap();
    assert_eq!(shown.device.state, "issued");
    assert_eq!(shown.inits.len(), 1);
    assert_eq!(shown.bindings.len(), 1);
    let cust = app
        .get(&app.root, &format!("/admin/v1/customers/{customer}"))
        .await;
    assert_eq!(
        cust.expect(StatusCode::OK)["devices"],
        json!([d1.id.to_string()])
    );

    // Reinit allows one more package.
    let reinit = app
        .post(
            &app.root,
            &path(&d1, "/reinit"),
            json!({"issuer_id": "bank-a", "reason": "keys lost in repair"}),
        )
        .await;
    reinit.expect(StatusCode::OK);

    // Lifecycle: suspend, resume, retire (its certificate revoked).
    for (to, from) in [
        ("suspended", "issued"),
        ("issued", "suspended"),
        ("retired", "issued"),
    ] {
        let a = app
            .post(
                &app.root,
                &path(&d1, "/state"),
                json!({"to": to, "reason": "route test"}),
            )
            .await;
        let a: wire::StateAnswer =
            serde_json::from_value(a.expect(StatusCode::OK).clone()).unwrap();
        assert_eq!((a.from.as_str(), a.state.as_str()), (from, to));
    }
    let cert = app
        .get(
            &app.root,
            &format!(
                "/admin/v1/ca/certificates/{}",
                shown.device.cert_serial.unwrap()
            ),
        )
        .await;
    assert_eq!(cert.expect(StatusCode::OK)["status"], "revoked");
    assert!(app.audited("device.transition", "success").await);
}

/// A device's transition and a check reset write their `requested` record
/// first and commit with their outcome record: when that record cannot be
/// staged the device keeps its state, its certificate and its counter; a
/// refusal is recorded after it.
#[tokio::test]
async fn device_decisions_commit_with_their_outcome_records() {
    let app = App::new().await;
    let d = device(3);
    app.import("F-3", &[&d]).await.expect(StatusCode::CREATED);
    let shown = app.get(&app.root, &path(&d, "")).await;
    let shown: wire::DeviceDetail =
        serde_json::from_value(shown.expect(StatusCode::OK).clone()).unwrap();
    let cert = format!(
        "/admin/v1/ca/certificates/{}",
        shown.device.cert_serial.unwrap()
    );
    let retire = json!({"to": "retired", "reason": "route test"});
    app.exec(&format!(
        "UPDATE prov_devices SET check_failures = 2 WHERE device_id = '{}'",
        d.id
    ))
    .await;
    let failures = || async {
        let shown = app.get(&app.root, &path(&d, "")).await;
        let shown: wire::DeviceDetail =
            serde_json::from_value(shown.expect(StatusCode::OK).clone()).unwrap();
        shown.device.check_failures
    };
    let reset = json!({"reason": "route test"});

    app.break_audit_staging().await;
    let refused = app
        .post(&app.root, &path(&d, "/check/reset"), reset.clone())
        .await;
    refused.refused(StatusCode::SERVICE_UNAVAILABLE, "audit_unavailable");
    assert_eq!(failures().await, 2);
    assert_eq!(
        app.outcomes_of("provisioning.reset_check", refused.request_id())
            .await,
        ["requested", "failure"]
    );
    let refused = app
        .post(&app.root, &path(&d, "/state"), retire.clone())
        .await;
    refused.refused(StatusCode::SERVICE_UNAVAILABLE, "audit_unavailable");
    let state = app.get(&app.root, &path(&d, "")).await;
    let state: wire::DeviceDetail =
        serde_json::from_value(state.expect(StatusCode::OK).clone()).unwrap();
    assert_eq!(state.device.state, "manufactured");
    let c = app.get(&app.root, &cert).await;
    assert_eq!(c.expect(StatusCode::OK)["status"], "valid");
    assert_eq!(
        app.outcomes_of("device.transition", refused.request_id())
            .await,
        ["requested", "failure"]
    );

    app.heal_audit_staging().await;
    let cleared = app.post(&app.root, &path(&d, "/check/reset"), reset).await;
    assert_eq!(cleared.expect(StatusCode::OK)["check_failures_cleared"], 2);
    assert_eq!(failures().await, 0);
    assert_eq!(
        app.outcomes_of("provisioning.reset_check", cleared.request_id())
            .await,
        ["requested", "success"]
    );
    let retired = app.post(&app.root, &path(&d, "/state"), retire).await;
    retired.expect(StatusCode::OK);
    let c = app.get(&app.root, &cert).await;
    assert_eq!(c.expect(StatusCode::OK)["status"], "revoked");
    assert_eq!(
        app.outcomes_of("device.transition", retired.request_id())
            .await,
        ["requested", "success"]
    );
    let again = app
        .post(
            &app.root,
            &path(&d, "/state"),
            json!({"to": "issued", "reason": "route test"}),
        )
        .await;
    again.refused(StatusCode::CONFLICT, "invalid_transition");
    assert_eq!(
        app.outcomes_of("device.transition", again.request_id())
            .await,
        ["requested", "refused"]
    );
}

/// A binding commits with its outcome record: when that record cannot be
/// staged the device stays unbound and `initialised`.
#[tokio::test]
async fn a_binding_commits_with_its_outcome_record() {
    let app = App::new().await;
    app.issuer("bank-a", "tdes").await;
    let mut d = device(4);
    app.import("F-4", &[&d]).await.expect(StatusCode::CREATED);
    check(&app, &d).await;
    let confirm = init(&app, &mut d, "bank-a").await;
    app.post(&app.root, &path(&d, "/init/confirm"), confirm)
        .await
        .expect(StatusCode::OK);
    let customer = customer(&app, "6222020200112233").await;
    let bind = json!({"customer_id": customer, "issuer_id": "bank-a",
                      "secure_element": "psam", "accounts": ["6222020200112233"]});
    let shown = || async {
        let shown = app.get(&app.root, &path(&d, "")).await;
        let shown: wire::DeviceDetail =
            serde_json::from_value(shown.expect(StatusCode::OK).clone()).unwrap();
        (shown.device.state, shown.bindings.len())
    };

    app.break_audit_staging().await;
    let refused = app
        .post(&app.root, &path(&d, "/bindings"), bind.clone())
        .await;
    refused.refused(StatusCode::SERVICE_UNAVAILABLE, "audit_unavailable");
    assert_eq!(shown().await, ("initialised".to_owned(), 0));
    assert_eq!(
        app.outcomes_of("device.bind", refused.request_id()).await,
        ["requested", "failure"]
    );

    app.heal_audit_staging().await;
    let bound = app.post(&app.root, &path(&d, "/bindings"), bind).await;
    bound.expect(StatusCode::CREATED);
    assert_eq!(shown().await, ("issued".to_owned(), 1));
    assert_eq!(
        app.outcomes_of("device.bind", bound.request_id()).await,
        ["requested", "success"]
    );
}

#[tokio::test]
async fn device_refusals_are_typed_and_audited() {
    let app = App::new().await;
    app.issuer("bank-a", "tdes").await;
    let d1 = device(1);
    app.import("F-1", &[&d1]).await.expect(StatusCode::CREATED);

    // The same batch again: conflict; a bad row rejects the whole batch.
    app.import("F-1", &[&device(2)])
        .await
        .refused(StatusCode::CONFLICT, "batch_exists");
    let bad = app
        .post(
            &app.root,
            "/admin/v1/batches",
            json!({"batch_id": "F-2", "manifest": format!("{}\nnot,a,row\n", keyward_device_provisioning::MANIFEST_HEADER)}),
        )
        .await;
    bad.refused(StatusCode::UNPROCESSABLE_ENTITY, "batch_rejected");
    assert!(
        bad.body["error"]["rows"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
    );
    app.get(&app.root, "/admin/v1/batches/F-2")
        .await
        .refused(StatusCode::NOT_FOUND, "unknown_batch");

    // Unknown device, bad id.
    app.get(&app.root, "/admin/v1/devices/0A0A0A0A0A0A0A0A")
        .await
        .refused(StatusCode::NOT_FOUND, "unknown_device");
    let a = app.get(&app.root, "/admin/v1/devices/xyz").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);

    // A signature by another key fails the check; the same challenge again
    // (used) and an unknown one are `challenge_invalid`.
    let c = app
        .post(&app.root, &path(&d1, "/challenge"), json!({}))
        .await;
    let cid = c.expect(StatusCode::CREATED)["challenge_id"].clone();
    let other = device(3).sign_challenge(&[0u8; 32]);
    app.post(
        &app.root,
        &path(&d1, "/check"),
        json!({"challenge_id": cid, "signature": B64.encode(&other)}),
    )
    .await
    .refused(StatusCode::FORBIDDEN, "proof_of_possession_failed");
    for id in [cid.clone(), json!("00112233445566778899AABBCCDDEEFF")] {
        app.post(
            &app.root,
            &path(&d1, "/check"),
            json!({"challenge_id": id, "signature": B64.encode(&other)}),
        )
        .await
        .refused(StatusCode::FORBIDDEN, "challenge_invalid");
    }
    app.post(
        &app.root,
        &path(&d1, "/check"),
        json!({"challenge_id": cid, "signature": "%%%"}),
    )
    .await
    .refused(StatusCode::BAD_REQUEST, "invalid_input");

    // No init package before the check; no binding before issue.
    app.post(
        &app.root,
        &path(&d1, "/init"),
        json!({"issuer_id": "bank-a"}),
    )
    .await
    .refused(StatusCode::CONFLICT, "device_state");
    let a = app
        .post(
            &app.root,
            &path(&d1, "/state"),
            json!({"to": "suspended", "reason": "x"}),
        )
        .await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{}", a.text);
    let auditor = app.operator("carol", Role::Auditor).await;
    app.post(
        &auditor,
        &path(&d1, "/init"),
        json!({"issuer_id": "bank-a"}),
    )
    .await
    .refused(StatusCode::FORBIDDEN, "forbidden_role");
    assert!(app.audited("provisioning.complete_check", "refused").await);
}

#[tokio::test]
async fn a_wrong_kcv_confirms_nothing() {
    let app = App::new().await;
    app.issuer("bank-a", "tdes").await;
    let mut d1 = device(1);
    app.import("F-1", &[&d1]).await.expect(StatusCode::CREATED);
    check(&app, &d1).await;
    let mut confirm = init(&app, &mut d1, "bank-a").await;
    confirm["kcvs"][0]["value"] = json!("000000");
    let a = app
        .post(&app.root, &path(&d1, "/init/confirm"), confirm)
        .await;
    a.refused(StatusCode::FORBIDDEN, "kcv_mismatch");
    let shown = app.get(&app.root, &path(&d1, "")).await;
    assert_eq!(shown.expect(StatusCode::OK)["state"], "verified");
}

/// A check's answer commits with its outcome record: with the trail
/// unable to take it the challenge is not used up (the same answer
/// verifies once the trail heals); a wrong answer uses it up and counts
/// against the device in the same transaction as its refused record.
#[tokio::test]
async fn a_check_answer_commits_with_its_outcome_record() {
    let app = App::new().await;
    app.issuer("bank-a", "tdes").await;
    let d = device(6);
    app.import("F-6", &[&d]).await.expect(StatusCode::CREATED);
    let challenge = || async {
        let c = app
            .post(&app.root, &path(&d, "/challenge"), json!({}))
            .await;
        serde_json::from_value::<wire::ChallengeAnswer>(c.expect(StatusCode::CREATED).clone())
            .unwrap()
    };
    let answer = |c: &wire::ChallengeAnswer, sig: Vec<u8>| json!({"challenge_id": c.challenge_id, "signature": B64.encode(sig)});

    let wrong = challenge().await;
    let refused = app
        .post(
            &app.root,
            &path(&d, "/check"),
            answer(&wrong, vec![0x30, 0]),
        )
        .await;
    refused.refused(StatusCode::FORBIDDEN, "proof_of_possession_failed");
    assert_eq!(
        app.outcomes_of("provisioning.complete_check", refused.request_id())
            .await,
        ["requested", "refused"]
    );
    let shown = app.get(&app.root, &path(&d, "")).await;
    assert_eq!(shown.expect(StatusCode::OK)["check_failures"], 1);
    // Used up: the right answer to it now finds no challenge.
    let sig = d.sign_challenge(&hex::decode(&wrong.challenge).unwrap());
    app.post(&app.root, &path(&d, "/check"), answer(&wrong, sig))
        .await
        .refused(StatusCode::FORBIDDEN, "challenge_invalid");

    // A challenge is kept with its outcome record, or not at all.
    let kept = app.rows("prov_challenges").await;
    app.break_audit_staging().await;
    let cut = app
        .post(&app.root, &path(&d, "/challenge"), json!({}))
        .await;
    cut.refused(StatusCode::SERVICE_UNAVAILABLE, "audit_unavailable");
    assert_eq!(
        app.outcomes_of("provisioning.begin_check", cut.request_id())
            .await,
        ["requested", "failure"]
    );
    assert_eq!(app.rows("prov_challenges").await, kept);
    app.heal_audit_staging().await;

    let c = challenge().await;
    let sig = d.sign_challenge(&hex::decode(&c.challenge).unwrap());
    app.break_audit_staging().await;
    let cut = app
        .post(&app.root, &path(&d, "/check"), answer(&c, sig.clone()))
        .await;
    cut.refused(StatusCode::SERVICE_UNAVAILABLE, "audit_unavailable");
    assert_eq!(
        app.outcomes_of("provisioning.complete_check", cut.request_id())
            .await,
        ["requested", "failure"]
    );
    app.heal_audit_staging().await;
    let done = app
        .post(&app.root, &path(&d, "/check"), answer(&c, sig))
        .await;
    assert_eq!(done.expect(StatusCode::OK)["state"], "verified");
}

/// An init package and its confirmation commit with their outcome records:
/// with the trail unable to take them nothing is recorded or initialised; a mismatch is kept (the
/// package refused for good, recorded as refused) in the same transaction.
#[tokio::test]
async fn an_init_confirmation_commits_with_its_outcome_record_and_a_mismatch_is_kept() {
    let app = App::new().await;
    app.issuer("bank-a", "tdes").await;
    let mut d = device(5);
    app.import("F-5", &[&d]).await.expect(StatusCode::CREATED);
    check(&app, &d).await;
    // A package is recorded with its outcome record, or not at all.
    app.break_audit_staging().await;
    let cut = app
        .post(
            &app.root,
            &path(&d, "/init"),
            json!({"issuer_id": "bank-a"}),
        )
        .await;
    cut.refused(StatusCode::SERVICE_UNAVAILABLE, "audit_unavailable");
    assert_eq!(
        app.outcomes_of("provisioning.init_package", cut.request_id())
            .await,
        ["requested", "failure"]
    );
    assert_eq!(app.rows("prov_inits").await, 0);
    app.heal_audit_staging().await;
    let confirm = init(&app, &mut d, "bank-a").await;
    let state = || async {
        let shown = app.get(&app.root, &path(&d, "")).await;
        shown.expect(StatusCode::OK)["state"].clone()
    };

    app.break_audit_staging().await;
    let cut = app
        .post(&app.root, &path(&d, "/init/confirm"), confirm.clone())
        .await;
    cut.refused(StatusCode::SERVICE_UNAVAILABLE, "audit_unavailable");
    assert_eq!(state().await, "verified");
    assert_eq!(
        app.outcomes_of("provisioning.confirm_init", cut.request_id())
            .await,
        ["requested", "failure"]
    );
    app.heal_audit_staging().await;

    let mut wrong = confirm.clone();
    wrong["kcvs"][0]["value"] = json!("000000");
    let refused = app.post(&app.root, &path(&d, "/init/confirm"), wrong).await;
    refused.refused(StatusCode::FORBIDDEN, "kcv_mismatch");
    assert_eq!(
        app.outcomes_of("provisioning.confirm_init", refused.request_id())
            .await,
        ["requested", "refused"]
    );
    // Kept: the right KCVs now find no pending package.
    app.post(&app.root, &path(&d, "/init/confirm"), confirm)
        .await
        .refused(StatusCode::CONFLICT, "no_pending_init");
    assert_eq!(state().await, "verified");
}

/// A KCV mismatch is an intrusion event: its own audit action
/// and the `keyward_security_events_total{kind="kcv_mismatch"}` counter.
#[tokio::test]
async fn a_kcv_mismatch_is_a_security_event() {
    let app = App::new().await;
    app.issuer("bank-a", "tdes").await;
    let mut d1 = device(1);
    app.import("F-1", &[&d1]).await.expect(StatusCode::CREATED);
    let before = app.get(&crate::harness::anonymous(), "/metrics").await;
    assert!(
        before
            .text
            .contains(r#"keyward_security_events_total{kind="kcv_mismatch"} 0"#),
        "the counter is exported before the first event"
    );
    check(&app, &d1).await;
    let mut confirm = init(&app, &mut d1, "bank-a").await;
    confirm["kcvs"][0]["value"] = json!("000000");
    app.post(&app.root, &path(&d1, "/init/confirm"), confirm)
        .await
        .refused(StatusCode::FORBIDDEN, "kcv_mismatch");
    let trail = app.trail().await;
    let event = trail
        .iter()
        .find(|r| r["action"] == "security.kcv_mismatch")
        .expect("a security.kcv_mismatch record");
    assert_eq!(event["target"], format!("device:{}", d1.id));
    assert_eq!(event["outcome"], "refused");
    let after = app.get(&crate::harness::anonymous(), "/metrics").await;
    assert!(
        after
            .text
            .contains(r#"keyward_security_events_total{kind="kcv_mismatch"} 1"#),
        "{}",
        after.text
    );
}

/// Failed checks park the device (`check_locked`) until an
/// operator resets it through the audited route.
#[tokio::test]
async fn a_parked_device_is_reset_by_an_operator() {
    let app = App::new().await;
    let d1 = device(1);
    app.import("F-1", &[&d1]).await.expect(StatusCode::CREATED);
    let thief = device(9);
    for _ in 0..5 {
        let c = app
            .post(&app.root, &path(&d1, "/challenge"), json!({}))
            .await;
        let c: wire::ChallengeAnswer =
            serde_json::from_value(c.expect(StatusCode::CREATED).clone()).unwrap();
        let sig = thief.sign_challenge(&hex::decode(&c.challenge).unwrap());
        app.post(
            &app.root,
            &path(&d1, "/check"),
            json!({"challenge_id": c.challenge_id, "signature": B64.encode(sig)}),
        )
        .await
        .refused(StatusCode::FORBIDDEN, "proof_of_possession_failed");
    }
    app.post(&app.root, &path(&d1, "/challenge"), json!({}))
        .await
        .refused(StatusCode::CONFLICT, "check_locked");
    let auditor = app.operator("carol", Role::Auditor).await;
    app.post(&auditor, &path(&d1, "/check/reset"), json!({"reason": "x"}))
        .await
        .refused(StatusCode::FORBIDDEN, "forbidden_role");
    let reset = app
        .post(
            &app.root,
            &path(&d1, "/check/reset"),
            json!({"reason": "device inspected"}),
        )
        .await;
    assert_eq!(reset.expect(StatusCode::OK)["check_failures_cleared"], 5);
    assert!(app.audited("provisioning.reset_check", "success").await);
    check(&app, &d1).await;
}

/// Re-certification through the routes is maker-checker: one operator
/// requests, another approves.
#[tokio::test]
async fn recertification_is_requested_by_one_operator_and_approved_by_another() {
    let app = App::new().await;
    let d1 = device(1);
    app.import("F-1", &[&d1]).await.expect(StatusCode::CREATED);
    let old = app.get(&app.root, &path(&d1, "")).await.body["cert_serial"]
        .as_str()
        .unwrap()
        .to_owned();
    let renewed = SimDevice::p256(d1.id).unwrap();
    let b64 = B64.encode(renewed.csr_der());
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    let pem = format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
        lines.join("\n")
    );
    let alice = app.operator("alice", Role::Operator).await;
    let bob = app.operator("bob", Role::Operator).await;
    let ask = || async {
        app.post(
            &alice,
            &path(&d1, "/recertify"),
            json!({"csr_pem": pem, "reason": "key rotated"}),
        )
        .await
    };
    // The request is kept with its outcome record, or not at all.
    app.break_audit_staging().await;
    let cut = ask().await;
    cut.refused(StatusCode::SERVICE_UNAVAILABLE, "audit_unavailable");
    assert_eq!(
        app.outcomes_of("provisioning.recertify_request", cut.request_id())
            .await,
        ["requested", "failure"]
    );
    app.heal_audit_staging().await;
    let asked = ask().await;
    assert_eq!(asked.expect(StatusCode::ACCEPTED)["state"], "pending");
    app.post(&alice, &path(&d1, "/recertify/approve"), json!({}))
        .await
        .refused(StatusCode::FORBIDDEN, "self_approval");
    // The approval commits with its outcome record or not at all: no new
    // certificate, the old one valid, the request still pending.
    let certificates = app.rows("certificates").await;
    app.break_audit_staging().await;
    let cut = app
        .post(&bob, &path(&d1, "/recertify/approve"), json!({}))
        .await;
    cut.refused(StatusCode::SERVICE_UNAVAILABLE, "audit_unavailable");
    assert_eq!(
        app.outcomes_of("provisioning.recertify_approve", cut.request_id())
            .await,
        ["requested", "failure"]
    );
    assert_eq!(app.rows("certificates").await, certificates);
    let still = app
        .get(&app.root, &format!("/admin/v1/ca/certificates/{old}"))
        .await;
    assert_eq!(still.expect(StatusCode::OK)["status"], "valid");
    app.heal_audit_staging().await;
    let done = app
        .post(&bob, &path(&d1, "/recertify/approve"), json!({}))
        .await;
    let done: wire::RecertifyAnswer =
        serde_json::from_value(done.expect(StatusCode::OK).clone()).unwrap();
    assert_eq!(done.state, "done");
    assert_eq!(done.revoked, vec![old.clone()]);
    let cert = app
        .get(&app.root, &format!("/admin/v1/ca/certificates/{old}"))
        .await;
    assert_eq!(cert.expect(StatusCode::OK)["status"], "revoked");
    assert!(
        app.audited("provisioning.recertify_approve", "success")
            .await
    );
}
