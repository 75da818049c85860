//! Device login on the public router — start, key update, random
//! auth, session, lockout, rotation — with the simulator playing the device
//! (its responses and KCVs are its own), and every bad input a typed 4xx.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use keyward_ca::Role;
use keyward_server::edge::identity::ClientIdentity;
use keyward_server::wire::login as wire;
use keyward_tests::simulator::SimDevice;
use keyward_tests::terminal::{self, LoginOptions};
use serde_json::{Value, json};

use crate::access::device_identity;
use crate::devices::{check, customer_as, init};
use crate::harness::{Answer, App, call, send};

/// A device from the factory to `issued` for `issuers` (the first one
/// bound through its PSAM), and the identity of its certificate.
pub(crate) async fn issued(app: &App, n: u8, issuers: &[&str]) -> (SimDevice, ClientIdentity) {
    let mut d = SimDevice::p256(format!("0A0B0C0D0E0F10{n:02X}").parse().unwrap()).unwrap();
    app.import(&format!("L-{n}"), &[&d])
        .await
        .expect(StatusCode::CREATED);
    check(app, &d).await;
    let cust = customer(app, n).await;
    for issuer in issuers {
        let confirm = init(app, &mut d, issuer).await;
        app.post(
            &app.root,
            &format!("/admin/v1/devices/{}/init/confirm", d.id),
            confirm,
        )
        .await
        .expect(StatusCode::OK);
        app.post(
            &app.root,
            &format!("/admin/v1/devices/{}/bindings", d.id),
            json!({"customer_id": cust, "issuer_id": issuer, "secure_element": "psam",
                   "accounts": [format!("62220202001122{n:02}")]}),
        )
        .await
        .expect(StatusCode::CREATED);
    }
    let who = device_identity(app, &d).await;
    (d, who)
}

/// Customer `n`, applied for by one operator and approved by another.
async fn customer(app: &App, n: u8) -> String {
    customer_as(
        app,
        (&format!("alice-{n}"), &format!("bob-{n}")),
        &format!("1101011990030712{n:02}"),
        &format!("62220202001122{n:02}"),
    )
    .await
}

pub(crate) async fn start(app: &App, who: &ClientIdentity, body: Value) -> Answer {
    call(
        &app.public,
        who,
        Method::POST,
        "/v1/login/start",
        Some(body),
    )
    .await
}

pub(crate) async fn finish(app: &App, who: &ClientIdentity, body: Value) -> Answer {
    call(
        &app.public,
        who,
        Method::POST,
        "/v1/login/finish",
        Some(body),
    )
    .await
}

pub(crate) fn start_body(d: &SimDevice, issuer: &str) -> Value {
    serde_json::to_value(terminal::start_body(d, issuer)).unwrap()
}

/// A whole login as the device does it; the finish answer.
pub(crate) async fn login(
    app: &App,
    who: &ClientIdentity,
    d: &mut SimDevice,
    issuer: &str,
    opts: LoginOptions,
) -> (wire::LoginChallenge, Answer) {
    let c = start(app, who, start_body(d, issuer)).await;
    let c: wire::LoginChallenge =
        serde_json::from_value(c.expect(StatusCode::CREATED).clone()).unwrap();
    let confirmation = c
        .key_update
        .as_ref()
        .map(|u| terminal::confirm_update(d, issuer, u).unwrap().0);
    let body = terminal::finish_body(d, issuer, &c, confirmation, opts).unwrap();
    let a = finish(app, who, serde_json::to_value(body).unwrap()).await;
    (c, a)
}

/// A device's working-key versions at bank-a with their states, newest
/// first, as an operator reads them.
async fn key_states(app: &App, d: &SimDevice) -> Vec<(u32, String)> {
    let keys = app
        .get(
            &app.root,
            &format!("/admin/v1/devices/{}/keys?issuer_id=bank-a", d.id),
        )
        .await;
    let keys: wire::KeyVersions =
        serde_json::from_value(keys.expect(StatusCode::OK).clone()).unwrap();
    keys.versions
        .into_iter()
        .map(|v| (v.version, v.state))
        .collect()
}

pub(crate) async fn session(app: &App, who: &ClientIdentity, token: &str) -> Answer {
    let req = Request::builder()
        .method(Method::GET)
        .uri("/v1/session")
        .header("authorization", format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    send(&app.public, who, req).await
}

#[tokio::test]
async fn a_device_logs_in_takes_its_first_keys_and_rotates_on_demand() {
    let app = App::new().await;
    app.issuer("bank-a", "tdes").await;
    let (mut d, who) = issued(&app, 1, &["bank-a"]).await;

    // First login: no active version, so the answer carries keys.
    let (c, a) = login(&app, &who, &mut d, "bank-a", LoginOptions::default()).await;
    assert_eq!(c.key_version, None);
    let update = c.key_update.expect("first login offers keys");
    assert_eq!(update.keys.len(), 3);
    assert_eq!(c.challenge.len(), 12, "8 bytes, base64");
    let ok: wire::LoginAnswer = serde_json::from_value(a.expect(StatusCode::OK).clone()).unwrap();
    assert_eq!(ok.key_update.as_deref(), Some("activated"));
    assert_eq!(ok.key_version, Some(update.version));
    assert_eq!(d.key_version("bank-a"), Some(update.version));
    let s = session(&app, &who, &ok.session_token).await;
    let info: wire::SessionInfo = serde_json::from_value(s.expect(StatusCode::OK).clone()).unwrap();
    assert_eq!(info.device_id, d.id.to_string());
    assert!(app.audited("key.activate", "success").await);

    // Second login: nothing due; start and finish name the active version.
    let (c, a) = login(&app, &who, &mut d, "bank-a", LoginOptions::default()).await;
    assert!(c.key_update.is_none());
    assert_eq!(c.key_version, Some(update.version));
    let ok: wire::LoginAnswer = serde_json::from_value(a.expect(StatusCode::OK).clone()).unwrap();
    assert_eq!(
        (ok.key_version, ok.key_update),
        (Some(update.version), None)
    );

    // An operator asks for a rotation; the next login carries it.
    let pending = app
        .get(&app.root, "/admin/v1/issuers/bank-a/rotations/pending")
        .await;
    assert_eq!(pending.expect(StatusCode::OK)["devices"], json!([]));
    app.post(
        &app.root,
        "/admin/v1/issuers/bank-a/rotations",
        json!({"device_id": d.id.to_string()}),
    )
    .await
    .expect(StatusCode::OK);
    let pending = app
        .get(&app.root, "/admin/v1/issuers/bank-a/rotations/pending")
        .await;
    assert_eq!(
        pending.expect(StatusCode::OK)["devices"][0]["reason"],
        "requested"
    );
    let (c, a) = login(&app, &who, &mut d, "bank-a", LoginOptions::default()).await;
    let v2 = c.key_update.expect("rotation offered").version;
    assert_eq!(v2, update.version + 1);
    assert_eq!(a.expect(StatusCode::OK)["key_update"], "activated");
    let states = key_states(&app, &d).await;
    assert_eq!(
        states,
        vec![(v2, "active".into()), (update.version, "retiring".into())]
    );
    // Served: the request is not pending any more.
    let (c, _) = login(&app, &who, &mut d, "bank-a", LoginOptions::default()).await;
    assert!(c.key_update.is_none());

    // A fleet-wide rotation reaches the device lazily, at its next login.
    app.post(&app.root, "/admin/v1/issuers/bank-a/rotations", json!({}))
        .await
        .expect(StatusCode::OK);
    let (c, a) = login(&app, &who, &mut d, "bank-a", LoginOptions::default()).await;
    assert_eq!(c.key_update.map(|u| u.version), Some(v2 + 1));
    let ok: wire::LoginAnswer = serde_json::from_value(a.expect(StatusCode::OK).clone()).unwrap();

    // Logout ends the session.
    let req = Request::builder()
        .method(Method::DELETE)
        .uri("/v1/session")
        .header("authorization", format!("Bearer {}", ok.session_token))
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        send(&app.public, &who, req).await.status,
        StatusCode::NO_CONTENT
    );
    session(&app, &who, &ok.session_token)
        .await
        .refused(StatusCode::FORBIDDEN, "session_invalid");
}

#[tokio::test]
async fn login_refusals_are_typed_audited_and_change_nothing() {
    let app = App::new().await;
    app.issuer("bank-a", "aes").await;
    app.issuer("bank-z", "aes").await;
    let (mut d, who) = issued(&app, 2, &["bank-a"]).await;
    let (mut other, other_who) = issued(&app, 3, &["bank-a"]).await;

    let mut body = start_body(&d, "bank-a");
    body["device_id"] = json!(other.id.to_string());
    start(&app, &who, body)
        .await
        .refused(StatusCode::FORBIDDEN, "device_id_mismatch");
    start(&app, &who, start_body(&d, "bank-nowhere"))
        .await
        .refused(StatusCode::NOT_FOUND, "unknown_issuer");
    start(&app, &who, start_body(&d, "bank-z"))
        .await
        .refused(StatusCode::FORBIDDEN, "issuer_not_bound");
    let mut body = start_body(&d, "bank-a");
    body["psam_serial"] = json!("PSAMOTHER1");
    start(&app, &who, body)
        .await
        .refused(StatusCode::FORBIDDEN, "secure_element_mismatch");
    let mut body = start_body(&d, "bank-a");
    body["key_version"] = json!(42);
    start(&app, &who, body)
        .await
        .refused(StatusCode::CONFLICT, "unknown_key_version");
    let mut body = start_body(&d, "bank-a");
    body["extra"] = json!(1);
    assert!(start(&app, &who, body).await.status.is_client_error());
    let a = call(&app.public, &who, Method::POST, "/v1/login/start", None).await;
    assert!(a.status.is_client_error(), "{}", a.text);

    // Log in once so later starts carry no key update.
    let (_, a) = login(&app, &who, &mut d, "bank-a", LoginOptions::default()).await;
    let token = a.expect(StatusCode::OK)["session_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, a) = login(
        &app,
        &other_who,
        &mut other,
        "bank-a",
        LoginOptions::default(),
    )
    .await;
    a.expect(StatusCode::OK);

    // A replayed challenge.
    let c = start(&app, &who, start_body(&d, "bank-a")).await;
    let c: wire::LoginChallenge =
        serde_json::from_value(c.expect(StatusCode::CREATED).clone()).unwrap();
    let f = serde_json::to_value(
        terminal::finish_body(&d, "bank-a", &c, None, LoginOptions::default()).unwrap(),
    )
    .unwrap();
    finish(&app, &who, f.clone()).await.expect(StatusCode::OK);
    finish(&app, &who, f.clone())
        .await
        .refused(StatusCode::FORBIDDEN, "challenge_invalid");
    // Another device's challenge, answered by this one.
    let c = start(&app, &other_who, start_body(&other, "bank-a")).await;
    let c: wire::LoginChallenge =
        serde_json::from_value(c.expect(StatusCode::CREATED).clone()).unwrap();
    let f = serde_json::to_value(
        terminal::finish_body(&d, "bank-a", &c, None, LoginOptions::default()).unwrap(),
    )
    .unwrap();
    finish(&app, &who, f)
        .await
        .refused(StatusCode::FORBIDDEN, "challenge_invalid");
    // A confirmation of a version never offered.
    let c = start(&app, &who, start_body(&d, "bank-a")).await;
    let c: wire::LoginChallenge =
        serde_json::from_value(c.expect(StatusCode::CREATED).clone()).unwrap();
    let mut f = serde_json::to_value(
        terminal::finish_body(&d, "bank-a", &c, None, LoginOptions::default()).unwrap(),
    )
    .unwrap();
    f["key_confirmation"] = json!({"version": 99, "kcvs": []});
    finish(&app, &who, f)
        .await
        .refused(StatusCode::CONFLICT, "unknown_key_version");
    let mut f = json!({"issuer_id": "bank-a", "challenge_id": c.challenge_id, "response": "!!"});
    finish(&app, &who, f.clone())
        .await
        .refused(StatusCode::BAD_REQUEST, "invalid_response");
    f["challenge_id"] = json!("nope");
    finish(&app, &who, f)
        .await
        .refused(StatusCode::BAD_REQUEST, "invalid_challenge_id");

    // Sessions: none, another device's, garbage.
    let req = Request::builder()
        .uri("/v1/session")
        .body(Body::empty())
        .unwrap();
    send(&app.public, &who, req)
        .await
        .refused(StatusCode::FORBIDDEN, "session_required");
    session(&app, &other_who, &token)
        .await
        .refused(StatusCode::FORBIDDEN, "session_device_mismatch");
    session(&app, &who, "not-a-token")
        .await
        .refused(StatusCode::FORBIDDEN, "session_invalid");

    // Suspending the device ends its session, and resuming it does not
    // bring the session back.
    app.post(
        &app.root,
        &format!("/admin/v1/devices/{}/state", d.id),
        json!({"to": "suspended", "reason": "route test"}),
    )
    .await
    .expect(StatusCode::OK);
    session(&app, &who, &token)
        .await
        .refused(StatusCode::FORBIDDEN, "session_invalid");
    start(&app, &who, start_body(&d, "bank-a"))
        .await
        .refused(StatusCode::FORBIDDEN, "device_suspended");
    app.post(
        &app.root,
        &format!("/admin/v1/devices/{}/state", d.id),
        json!({"to": "issued", "reason": "route test"}),
    )
    .await
    .expect(StatusCode::OK);
    session(&app, &who, &token)
        .await
        .refused(StatusCode::FORBIDDEN, "session_invalid");
    assert!(app.audited("login.start", "refused").await);
    assert!(app.audited("login.finish", "refused").await);
    assert!(app.audited("session.refused", "refused").await);
}

#[tokio::test]
async fn ten_wrong_answers_lock_the_credential_and_revoke_the_certificate() {
    let app = App::with_config(|c| {
        c.online.issuers.insert(
            "bank-b".into(),
            keyward_config::IssuerPolicyConfig {
                revoke_on_lockout: Some(false),
                max_login_failures: Some(3),
                ..Default::default()
            },
        );
    })
    .await;
    app.issuer("bank-a", "tdes").await;
    app.issuer("bank-b", "aes").await;
    let (mut d, who) = issued(&app, 4, &["bank-a", "bank-b"]).await;
    let wrong = LoginOptions {
        wrong_response: true,
    };

    // bank-b: no revocation by policy; 3 failures lock it, bank-a unaffected.
    for _ in 0..2 {
        let (_, a) = login(&app, &who, &mut d, "bank-b", wrong).await;
        a.refused(StatusCode::FORBIDDEN, "response_invalid");
    }
    let (_, a) = login(&app, &who, &mut d, "bank-b", wrong).await;
    a.refused(StatusCode::FORBIDDEN, "credential_locked");
    start(&app, &who, start_body(&d, "bank-b"))
        .await
        .refused(StatusCode::FORBIDDEN, "credential_locked");
    let (_, a) = login(&app, &who, &mut d, "bank-a", LoginOptions::default()).await;
    let token = a.expect(StatusCode::OK)["session_token"]
        .as_str()
        .unwrap()
        .to_owned();

    // A success resets the count: 9 failures, a success, 9 more stay open.
    for _ in 0..9 {
        let (_, a) = login(&app, &who, &mut d, "bank-a", wrong).await;
        a.refused(StatusCode::FORBIDDEN, "response_invalid");
    }
    let (_, a) = login(&app, &who, &mut d, "bank-a", LoginOptions::default()).await;
    a.expect(StatusCode::OK);
    let cred = app
        .get(
            &app.root,
            &format!("/admin/v1/devices/{}/credentials/bank-a", d.id),
        )
        .await;
    assert_eq!(cred.expect(StatusCode::OK)["failures"], 0);
    for _ in 0..9 {
        let (_, a) = login(&app, &who, &mut d, "bank-a", wrong).await;
        a.refused(StatusCode::FORBIDDEN, "response_invalid");
    }
    // The tenth locks and revokes: the certificate is refused from now on.
    let (_, a) = login(&app, &who, &mut d, "bank-a", wrong).await;
    a.refused(StatusCode::FORBIDDEN, "credential_locked");
    let serial = who.cert.as_ref().unwrap().serial.parse().unwrap();
    assert!(app.state.ca.is_revoked(&serial).await.unwrap());
    session(&app, &who, &token)
        .await
        .refused(StatusCode::FORBIDDEN, "certificate_revoked");
    assert!(app.audited("login.lockout", "refused").await);
    let cred = app
        .get(
            &app.root,
            &format!("/admin/v1/devices/{}/credentials/bank-a", d.id),
        )
        .await;
    let cred: wire::Credential =
        serde_json::from_value(cred.expect(StatusCode::OK).clone()).unwrap();
    assert!(cred.locked);
    assert_eq!(
        cred.revoked_serial.as_deref(),
        Some(who.cert.as_ref().unwrap().serial.as_str())
    );

    // Only an admin unlocks; bank-b's lock stays.
    let alice = app.operator("alice-op", Role::Operator).await;
    let path = format!("/admin/v1/devices/{}/credentials/bank-a/unlock", d.id);
    app.post(&alice, &path, json!({"reason": "terminal repaired"}))
        .await
        .refused(StatusCode::FORBIDDEN, "forbidden_role");
    // The reason reaches the trail without the personal data typed into it.
    let u = app
        .post(
            &app.root,
            &path,
            json!({"reason": "terminal repaired, owner at li@mail.example or 138 0013 8000"}),
        )
        .await;
    let u: wire::UnlockAnswer = serde_json::from_value(u.expect(StatusCode::OK).clone()).unwrap();
    assert!(!u.credential.locked && u.recertification_required);
    app.post(&app.root, &path, json!({"reason": "again"}))
        .await
        .refused(StatusCode::CONFLICT, "credential_not_locked");
    let b = app
        .get(
            &app.root,
            &format!("/admin/v1/devices/{}/credentials/bank-b", d.id),
        )
        .await;
    assert_eq!(b.expect(StatusCode::OK)["locked"], true);
    assert!(app.audited("credential.unlock", "success").await);
    let trail = app.trail().await;
    let unlock = trail
        .iter()
        .find(|r| r["action"] == "credential.unlock" && r["outcome"] == "success")
        .expect("an unlock record");
    let detail: Value = serde_json::from_str(unlock["detail_json"].as_str().unwrap()).unwrap();
    assert_eq!(
        detail["reason"], "terminal repaired, owner at [redacted] or [redacted]",
        "{detail}"
    );
}

#[tokio::test]
async fn a_kcv_mismatch_on_a_key_update_is_an_intrusion() {
    let app = App::with_config(|c| {
        c.online.issuers.insert(
            "bank-s".into(),
            keyward_config::IssuerPolicyConfig {
                suspend_on_kcv_mismatch: Some(true),
                ..Default::default()
            },
        );
    })
    .await;
    app.issuer("bank-a", "tdes").await;
    app.issuer("bank-s", "aes").await;
    let (mut d, who) = issued(&app, 5, &["bank-a", "bank-s"]).await;
    d.tamper_tmk("bank-a").unwrap();
    let (c, a) = login(&app, &who, &mut d, "bank-a", LoginOptions::default()).await;
    let offered = c.key_update.unwrap().version;
    let a: wire::LoginAnswer = serde_json::from_value(a.expect(StatusCode::OK).clone()).unwrap();
    assert_eq!(a.key_update.as_deref(), Some("rejected"));
    assert_eq!(a.key_version, None);
    let keys = app
        .get(
            &app.root,
            &format!("/admin/v1/devices/{}/keys?issuer_id=bank-a", d.id),
        )
        .await;
    assert_eq!(
        keys.expect(StatusCode::OK)["versions"][0]["state"],
        "rejected"
    );
    assert_eq!(keys.body["versions"][0]["version"], offered);
    assert!(app.audited("security.kcv_mismatch", "refused").await);
    let metrics = app.state.metrics.render().1;
    assert!(
        metrics.contains("keyward_security_events_total{kind=\"kcv_mismatch\"} 1"),
        "{metrics}"
    );

    // With the suspend policy, the device is suspended at once.
    d.tamper_tmk("bank-s").unwrap();
    let (_, a) = login(&app, &who, &mut d, "bank-s", LoginOptions::default()).await;
    a.refused(StatusCode::FORBIDDEN, "kcv_mismatch");
    let shown = app
        .get(&app.root, &format!("/admin/v1/devices/{}", d.id))
        .await;
    assert_eq!(shown.expect(StatusCode::OK)["state"], "suspended");
}

#[tokio::test]
async fn one_challenge_answered_twice_at_once_succeeds_once() {
    let app = App::new().await;
    app.issuer("bank-a", "tdes").await;
    let (mut d, who) = issued(&app, 6, &["bank-a"]).await;
    let (_, a) = login(&app, &who, &mut d, "bank-a", LoginOptions::default()).await;
    a.expect(StatusCode::OK);
    for _ in 0..5 {
        let c = start(&app, &who, start_body(&d, "bank-a")).await;
        let c: wire::LoginChallenge =
            serde_json::from_value(c.expect(StatusCode::CREATED).clone()).unwrap();
        let f = serde_json::to_value(
            terminal::finish_body(&d, "bank-a", &c, None, LoginOptions::default()).unwrap(),
        )
        .unwrap();
        let (x, y) = tokio::join!(finish(&app, &who, f.clone()), finish(&app, &who, f));
        let ok = [&x, &y]
            .iter()
            .filter(|a| a.status == StatusCode::OK)
            .count();
        assert_eq!(ok, 1, "{} / {}", x.text, y.text);
        let other = if x.status == StatusCode::OK { &y } else { &x };
        other.refused(StatusCode::FORBIDDEN, "challenge_invalid");
    }
}

#[tokio::test]
async fn expired_challenges_and_sessions_are_refused() {
    let app = App::with_config(|c| c.online.challenge_ttl_ms = 1_000).await;
    app.issuer("bank-a", "tdes").await;
    let (mut d, who) = issued(&app, 7, &["bank-a"]).await;
    let (_, a) = login(&app, &who, &mut d, "bank-a", LoginOptions::default()).await;
    let token = a.expect(StatusCode::OK)["session_token"]
        .as_str()
        .unwrap()
        .to_owned();

    let c = start(&app, &who, start_body(&d, "bank-a")).await;
    let c: wire::LoginChallenge =
        serde_json::from_value(c.expect(StatusCode::CREATED).clone()).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    let f = serde_json::to_value(
        terminal::finish_body(&d, "bank-a", &c, None, LoginOptions::default()).unwrap(),
    )
    .unwrap();
    finish(&app, &who, f)
        .await
        .refused(StatusCode::FORBIDDEN, "challenge_invalid");
    // An expired challenge counts no failure.
    let cred = app
        .state
        .online
        .credential(&"bank-a".parse().unwrap(), d.id)
        .await
        .unwrap();
    assert_eq!(cred.failures, 0);

    // A session past its expiry (moved back in the shared table).
    sqlx::query("UPDATE online_sessions SET expires_at_ms = 1")
        .execute(app.state.kms.db().pool())
        .await
        .unwrap();
    session(&app, &who, &token)
        .await
        .refused(StatusCode::FORBIDDEN, "session_expired");

    // The maintenance job sweeps both (an unanswered challenge left to
    // expire, the expired session).
    start(&app, &who, start_body(&d, "bank-a"))
        .await
        .expect(StatusCode::CREATED);
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    app.state.online.maintain().await.unwrap();
    session(&app, &who, &token)
        .await
        .refused(StatusCode::FORBIDDEN, "session_invalid");
    let metrics = app.state.metrics.render().1;
    assert!(
        metrics.contains("keyward_login_challenges_total{event=\"expired\"} 1"),
        "{metrics}"
    );
}

async fn credential(app: &App, d: &SimDevice, issuer: &str) -> wire::Credential {
    let cred = app
        .get(
            &app.root,
            &format!("/admin/v1/devices/{}/credentials/{issuer}", d.id),
        )
        .await;
    serde_json::from_value(cred.expect(StatusCode::OK).clone()).unwrap()
}

#[tokio::test]
async fn a_lockout_whose_audit_record_cannot_be_written_does_not_happen() {
    let app = App::with_config(|c| {
        c.online.issuers.insert(
            "bank-a".into(),
            keyward_config::IssuerPolicyConfig {
                max_login_failures: Some(2),
                ..Default::default()
            },
        );
    })
    .await;
    app.issuer("bank-a", "tdes").await;
    let (mut d, who) = issued(&app, 5, &["bank-a"]).await;
    let wrong = LoginOptions {
        wrong_response: true,
    };
    let (_, a) = login(&app, &who, &mut d, "bank-a", wrong).await;
    a.refused(StatusCode::FORBIDDEN, "response_invalid");

    // The failure that would lock cannot stage its audit record: nothing
    // of the lockout happens (no lock, no revocation, the count unchanged).
    app.break_audit_staging().await;
    let (_, a) = login(&app, &who, &mut d, "bank-a", wrong).await;
    assert!(a.status.is_server_error(), "{} {}", a.status, a.text);
    let serial = who.cert.as_ref().unwrap().serial.parse().unwrap();
    assert!(!app.state.ca.is_revoked(&serial).await.unwrap());
    let cred = credential(&app, &d, "bank-a").await;
    assert!(!cred.locked);
    assert_eq!(cred.failures, 1);
    assert!(!app.audited("login.lockout", "refused").await);

    // Once the trail can be written, the same failure locks, revokes and
    // is recorded.
    app.heal_audit_staging().await;
    let (_, a) = login(&app, &who, &mut d, "bank-a", wrong).await;
    a.refused(StatusCode::FORBIDDEN, "credential_locked");
    assert!(app.state.ca.is_revoked(&serial).await.unwrap());
    assert!(credential(&app, &d, "bank-a").await.locked);
    assert!(app.audited("login.lockout", "refused").await);
}

#[tokio::test]
async fn a_lockout_cut_short_before_its_revocation_is_finished_by_recovery() {
    let app = App::new().await;
    app.issuer("bank-a", "tdes").await;
    let (d, who) = issued(&app, 6, &["bank-a"]).await;
    let cert = who.cert.as_ref().unwrap();
    // What the lockout's transaction leaves when the process dies right
    // after it: locked, the certificate named, not yet revoked.
    app.exec(&format!(
        "INSERT INTO online_credentials (issuer_id, device_id, failures, locked_at_ms, \
             revoked_serial) VALUES ('bank-a', '{}', 10, 1, '{}')",
        d.id, cert.serial
    ))
    .await;
    let serial = cert.serial.parse().unwrap();
    assert!(!app.state.ca.is_revoked(&serial).await.unwrap());
    let revoked = app.state.online.finish_lockouts().await.unwrap();
    assert_eq!(revoked, 1);
    assert!(app.state.ca.is_revoked(&serial).await.unwrap());
    // Again: nothing left to do.
    let again = app.state.online.finish_lockouts().await.unwrap();
    assert_eq!(again, 0);
}

/// The starts of one device at once, answered.
async fn starts_at_once(app: &App, who: &ClientIdentity, d: &SimDevice, n: usize) -> Vec<Answer> {
    let body = start_body(d, "bank-a");
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (public, who, body) = (app.public.clone(), who.clone(), body.clone());
        tasks.spawn(async move {
            call(&public, &who, Method::POST, "/v1/login/start", Some(body)).await
        });
    }
    tasks.join_all().await
}

#[tokio::test]
async fn concurrent_starts_share_one_offer_and_the_device_keeps_rotating() {
    let app = App::new().await;
    app.issuer("bank-a", "tdes").await;
    let (mut d, who) = issued(&app, 7, &["bank-a"]).await;
    let (_, a) = login(&app, &who, &mut d, "bank-a", LoginOptions::default()).await;
    a.expect(StatusCode::OK);

    for round in 0..2 {
        app.post(
            &app.root,
            "/admin/v1/issuers/bank-a/rotations",
            json!({"device_id": d.id.to_string()}),
        )
        .await
        .expect(StatusCode::OK);
        // Four starts at once (a retry on timeout is enough): one offer.
        let answers = starts_at_once(&app, &who, &d, 4).await;
        let versions: Vec<u32> = answers
            .iter()
            .map(|a| {
                a.expect(StatusCode::CREATED)["key_update"]["version"]
                    .as_u64()
                    .unwrap() as u32
            })
            .collect();
        assert!(
            versions.iter().all(|v| *v == versions[0]),
            "round {round}: {versions:?}"
        );
        // The device takes it at its next login, and the next rotation again.
        let (c, a) = login(&app, &who, &mut d, "bank-a", LoginOptions::default()).await;
        assert_eq!(c.key_update.map(|u| u.version), Some(versions[0]));
        assert_eq!(
            a.expect(StatusCode::OK)["key_update"],
            "activated",
            "round {round}"
        );
    }
    let states = key_states(&app, &d).await;
    assert!(states.iter().all(|(_, s)| s != "pending"), "{states:?}");
    assert_eq!(states.len(), 3, "one version per rotation");
}

#[tokio::test]
async fn two_finishes_confirming_one_offer_give_one_success_and_one_409() {
    let app = App::new().await;
    app.issuer("bank-a", "tdes").await;
    let (mut d, who) = issued(&app, 8, &["bank-a"]).await;
    let starts = starts_at_once(&app, &who, &d, 2).await;
    let challenges: Vec<wire::LoginChallenge> = starts
        .iter()
        .map(|a| serde_json::from_value(a.expect(StatusCode::CREATED).clone()).unwrap())
        .collect();
    let update = challenges[0]
        .key_update
        .clone()
        .expect("first keys offered");
    let (confirmation, matched) = terminal::confirm_update(&mut d, "bank-a", &update).unwrap();
    assert!(matched);
    let bodies: Vec<Value> = challenges
        .iter()
        .map(|c| {
            let b = terminal::finish_body(
                &d,
                "bank-a",
                c,
                Some(confirmation.clone()),
                LoginOptions::default(),
            )
            .unwrap();
            serde_json::to_value(b).unwrap()
        })
        .collect();
    let (a, b) = tokio::join!(
        finish(&app, &who, bodies[0].clone()),
        finish(&app, &who, bodies[1].clone())
    );
    let mut statuses = [a.status, b.status];
    statuses.sort();
    assert_eq!(
        statuses,
        [StatusCode::OK, StatusCode::CONFLICT],
        "{} / {}",
        a.text,
        b.text
    );
    let loser = if a.status == StatusCode::CONFLICT {
        &a
    } else {
        &b
    };
    assert_eq!(loser.code(), "key_version_not_pending");
}

#[tokio::test]
async fn an_activation_whose_audit_record_cannot_be_written_does_not_happen() {
    let app = App::new().await;
    app.issuer("bank-a", "tdes").await;
    let (mut d, who) = issued(&app, 9, &["bank-a"]).await;
    app.break_audit_staging().await;
    // The first login offers keys; its confirmation cannot be recorded, so
    // nothing is activated and no session opens.
    let (c, a) = login(&app, &who, &mut d, "bank-a", LoginOptions::default()).await;
    let offered = c.key_update.expect("first keys offered").version;
    assert!(a.status.is_server_error(), "{} {}", a.status, a.text);
    let states = key_states(&app, &d).await;
    assert_eq!(states, vec![(offered, "pending".to_owned())]);
    assert!(!app.audited("key.activate", "success").await);
}

/// Logins in a loop keep at most `max_sessions_per_credential` sessions:
/// each one past it ends the oldest.
#[tokio::test]
async fn a_credential_holds_a_bounded_number_of_sessions() {
    let app = App::with_config(|c| c.online.max_sessions_per_credential = 3).await;
    app.issuer("bank-a", "tdes").await;
    let (mut d, who) = issued(&app, 8, &["bank-a"]).await;
    let mut tokens = Vec::new();
    for _ in 0..12 {
        let (_, a) = login(&app, &who, &mut d, "bank-a", LoginOptions::default()).await;
        tokens.push(
            a.expect(StatusCode::OK)["session_token"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let live: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM online_sessions WHERE device_id = $1")
        .bind(d.id.to_string())
        .fetch_one(app.state.kms.db().pool())
        .await
        .unwrap();
    assert_eq!(live, 3);
    for (i, token) in tokens.iter().enumerate() {
        let a = session(&app, &who, token).await;
        if i < 9 {
            a.refused(StatusCode::FORBIDDEN, "session_invalid");
        } else {
            a.expect(StatusCode::OK);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_answers_at_once_count_to_the_limit_and_no_further() {
    // No revocation, so every answer reaches the credential's check.
    let app = App::with_config(|c| {
        c.online.issuers.insert(
            "bank-a".into(),
            keyward_config::IssuerPolicyConfig {
                revoke_on_lockout: Some(false),
                max_login_failures: Some(10),
                ..Default::default()
            },
        );
    })
    .await;
    app.issuer("bank-a", "tdes").await;
    let (mut d, who) = issued(&app, 9, &["bank-a"]).await;
    // Keys taken first, so every challenge below is a plain one.
    let (_, a) = login(&app, &who, &mut d, "bank-a", LoginOptions::default()).await;
    a.expect(StatusCode::OK);
    let wrong = LoginOptions {
        wrong_response: true,
    };
    let mut bodies = Vec::new();
    for _ in 0..30 {
        let c = start(&app, &who, start_body(&d, "bank-a")).await;
        let c: wire::LoginChallenge =
            serde_json::from_value(c.expect(StatusCode::CREATED).clone()).unwrap();
        let b = terminal::finish_body(&d, "bank-a", &c, None, wrong).unwrap();
        bodies.push(serde_json::to_value(b).unwrap());
    }
    // Thirty wrong answers at once against a limit of ten.
    let mut tasks = tokio::task::JoinSet::new();
    for body in bodies {
        let (public, who) = (app.public.clone(), who.clone());
        tasks.spawn(async move {
            call(&public, &who, Method::POST, "/v1/login/finish", Some(body)).await
        });
    }
    let answers = tasks.join_all().await;
    let codes: Vec<String> = answers.iter().map(|a| a.code().to_owned()).collect();
    let invalid = codes.iter().filter(|c| *c == "response_invalid").count();
    let locked = codes.iter().filter(|c| *c == "credential_locked").count();
    // Nine are counted and answered as wrong; the tenth locks, and it and
    // every answer after it are told the credential is locked.
    assert_eq!((invalid, locked), (9, 21), "{codes:?}");
    let cred = credential(&app, &d, "bank-a").await;
    assert!(cred.locked);
    assert_eq!(cred.failures, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_refused_session_calls_is_counted_in_a_few_records_and_throttled() {
    let app = App::new().await;
    app.issuer("bank-a", "tdes").await;
    let (d, who) = issued(&app, 10, &["bank-a"]).await;
    let target = format!("device:{}", d.id);
    // 5,000 refused calls from one device, 50 at a time.
    let started = std::time::Instant::now();
    let mut answers = Vec::new();
    for _ in 0..100 {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..50 {
            let (public, who) = (app.public.clone(), who.clone());
            tasks.spawn(async move {
                let req = Request::builder()
                    .method(Method::GET)
                    .uri("/v1/session")
                    .header("authorization", "Bearer not-a-session")
                    .body(Body::empty())
                    .unwrap();
                send(&public, &who, req).await
            });
        }
        answers.extend(tasks.join_all().await);
    }
    let took = started.elapsed();
    let refused = answers
        .iter()
        .filter(|a| a.status == StatusCode::FORBIDDEN && a.code() == "session_invalid")
        .count();
    let throttled: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.status == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    assert_eq!(refused, 100, "refused until the throttle");
    assert_eq!(throttled.len(), 4_900);
    for a in &throttled {
        assert_eq!(a.code(), "too_many_refusals");
        let wait: u64 = a.headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=61).contains(&wait), "{wait}");
    }

    // Every window closed (as at shutdown): its count is written.
    app.state.online.close_refusal_windows(true).await;
    let records: Vec<Value> = app
        .trail()
        .await
        .into_iter()
        .filter(|r| r["target"] == target.as_str())
        .filter(|r| {
            ["session.refused", "refusal.window", "refusal.throttle"]
                .contains(&r["action"].as_str().unwrap())
        })
        .collect();
    let detail =
        |r: &Value| -> Value { serde_json::from_str(r["detail_json"].as_str().unwrap()).unwrap() };
    let whole = records
        .iter()
        .filter(|r| r["action"] == "session.refused")
        .count() as u64;
    let counted: u64 = records
        .iter()
        .filter(|r| r["action"] == "refusal.window")
        .map(|r| detail(r)["counted"].as_u64().unwrap())
        .sum();
    assert!(records.len() <= 4, "{records:#?}");
    assert_eq!(whole + counted, 5_000, "{records:#?}");
    let throttle = records
        .iter()
        .find(|r| r["action"] == "refusal.throttle")
        .expect("the throttle is recorded");
    assert_eq!(detail(throttle)["refused"], 100);
    eprintln!(
        "5000 refused session calls in {took:?}: {} records ({whole} whole, {counted} counted)",
        records.len()
    );
}

/// Login starts past `login_starts_per_minute` are answered 429 with
/// `Retry-After` before any HSM or database work; another device is not
/// affected.
#[tokio::test]
async fn login_starts_past_the_minutes_budget_are_refused() {
    let app = App::with_config(|c| c.online.login_starts_per_minute = 5).await;
    app.issuer("bank-a", "tdes").await;
    let (d, who) = issued(&app, 9, &["bank-a"]).await;
    let (e, other) = issued(&app, 10, &["bank-a"]).await;
    for _ in 0..5 {
        start(&app, &who, start_body(&d, "bank-a"))
            .await
            .expect(StatusCode::CREATED);
    }
    let refused = start(&app, &who, start_body(&d, "bank-a")).await;
    refused.refused(StatusCode::TOO_MANY_REQUESTS, "too_many_logins");
    let wait: u64 = refused.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    start(&app, &other, start_body(&e, "bank-a"))
        .await
        .expect(StatusCode::CREATED);
}
