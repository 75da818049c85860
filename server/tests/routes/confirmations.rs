//! Transaction confirmation over a second channel on the public router
//! (docs/protocol.md §11): submit, the code from the customer's message,
//! the device's signature over `tx ‖ code`, executed once; a transaction
//! the PC altered is tampered; wrong codes run out; bad input is typed.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use keyward_protocol::confirmation::Code;
use keyward_server::edge::identity::ClientIdentity;
use keyward_tests::simulator::SimDevice;
use keyward_tests::terminal::LoginOptions;
use serde_json::{Value, json};

use crate::harness::{Answer, App, send};
use crate::login::{issued, login};

/// A logged-in device of customer `n` at bank-a: the device, its identity,
/// its session token and its account.
async fn session(app: &App, n: u8) -> (SimDevice, ClientIdentity, String, String) {
    app.issuer("bank-a", "tdes").await;
    let (mut d, who) = issued(app, n, &["bank-a"]).await;
    let (_, a) = login(app, &who, &mut d, "bank-a", LoginOptions::default()).await;
    let token = a.expect(StatusCode::OK)["session_token"]
        .as_str()
        .unwrap()
        .to_owned();
    (d, who, token, format!("62220202001122{n:02}"))
}

async fn post(app: &App, who: &ClientIdentity, token: &str, path: &str, body: Vec<u8>) -> Answer {
    let req = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {token}"))
        .body(Body::from(body))
        .unwrap();
    send(&app.public, who, req).await
}

fn tx(payer: &str, amount: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "payer_account": payer,
        "payee_account": "DE89370400440532013000",
        "payee_name": "ACME GmbH",
        "amount": amount,
        "currency": "EUR",
        "reference": "Invoice 2026-118",
    }))
    .unwrap()
}

/// The code in the message queued for the customer (what the phone shows).
async fn code_sent(app: &App, id: &str) -> Code {
    let payload: Vec<u8> = sqlx::query_scalar(
        "SELECT o.payload FROM outbox o JOIN confirmations c ON o.message_id = c.delivery_id \
         WHERE c.id = $1",
    )
    .bind(id)
    .fetch_one(app.state.kms.db().pool())
    .await
    .unwrap();
    let text = serde_json::from_slice::<Value>(&payload).unwrap()["text"]
        .as_str()
        .unwrap()
        .to_owned();
    let digits = text
        .lines()
        .find_map(|l| l.strip_prefix("Code "))
        .expect("a code line");
    Code::parse(digits.trim()).unwrap()
}

async fn state_of(app: &App, id: &str) -> String {
    sqlx::query_scalar("SELECT state FROM confirmations WHERE id = $1")
        .bind(id)
        .fetch_one(app.state.kms.db().pool())
        .await
        .unwrap()
}

/// `POST path` (a confirm route) with `tx`, `code` and the signature.
async fn confirm(
    app: &App,
    who: &ClientIdentity,
    token: &str,
    path: &str,
    tx: &[u8],
    code: &str,
    signature: &[u8],
) -> Answer {
    post(app, who, token, path, confirm_body(tx, code, signature)).await
}

fn confirm_body(tx: &[u8], code: &str, signature: &[u8]) -> Vec<u8> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    serde_json::to_vec(&json!({
        "transaction": b64.encode(tx),
        "code": code,
        "signature": b64.encode(signature),
    }))
    .unwrap()
}

async fn submit(app: &App, who: &ClientIdentity, token: &str, body: Vec<u8>) -> String {
    let a = post(app, who, token, "/v1/confirmations", body).await;
    a.expect(StatusCode::CREATED)["confirmation_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn an_honest_confirmation_executes_once() {
    let app = App::new().await;
    let (d, who, token, account) = session(&app, 41).await;
    let t = tx(&account, json!(123456));
    let id = submit(&app, &who, &token, t.clone()).await;
    let code = code_sent(&app, &id).await;
    let sig = d.sign_confirmation(&t, &code);
    let path = format!("/v1/confirmations/{id}/confirm");
    let a = confirm(&app, &who, &token, &path, &t, code.as_str(), &sig).await;
    assert_eq!(a.expect(StatusCode::OK)["state"], "executed");
    assert_eq!(state_of(&app, &id).await, "executed");
    // Once: the same confirmation again is refused, and one execution is
    // queued for the executor.
    confirm(&app, &who, &token, &path, &t, code.as_str(), &sig)
        .await
        .refused(StatusCode::FORBIDDEN, "confirmation_refused");
    let executions: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM outbox WHERE subject_id = $1 AND topic = 'confirmation.execute'",
    )
    .bind(&id)
    .fetch_one(app.state.kms.db().pool())
    .await
    .unwrap();
    assert_eq!(executions, 1);
    assert!(app.audited("confirmation.execute", "success").await);
    // What an operator sees: the state and both deliveries, no code.
    let view = app
        .get(&app.root, &format!("/admin/v1/confirmations/{id}"))
        .await;
    let view = view.expect(StatusCode::OK);
    assert_eq!(view["state"], "executed");
    assert_eq!(view["deliveries"].as_array().unwrap().len(), 2);
    assert!(!view.to_string().contains(code.as_str()));
}

#[tokio::test]
async fn a_transaction_the_pc_altered_is_tampered() {
    let app = App::new().await;
    let (d, who, token, account) = session(&app, 42).await;
    let t = tx(&account, json!(1000));
    let id = submit(&app, &who, &token, t.clone()).await;
    let code = code_sent(&app, &id).await;
    // The device was shown (and signed) another amount; so was a byte of
    // whitespace, or the keys in another order.
    let altered = tx(&account, json!(100000));
    let sig = d.sign_confirmation(&altered, &code);
    let path = format!("/v1/confirmations/{id}/confirm");
    confirm(&app, &who, &token, &path, &altered, code.as_str(), &sig)
        .await
        .refused(StatusCode::CONFLICT, "confirmation_tampered");
    assert_eq!(state_of(&app, &id).await, "tampered");
    assert!(
        app.audited("security.transaction_tampered", "refused")
            .await
    );
    // Closed for good: the honest bytes no longer help.
    let sig = d.sign_confirmation(&t, &code);
    confirm(&app, &who, &token, &path, &t, code.as_str(), &sig)
        .await
        .refused(StatusCode::FORBIDDEN, "confirmation_refused");

    let id = submit(&app, &who, &token, t.clone()).await;
    let code = code_sent(&app, &id).await;
    let mut spaced = t.clone();
    spaced.push(b' ');
    let sig = d.sign_confirmation(&spaced, &code);
    let path = format!("/v1/confirmations/{id}/confirm");
    confirm(&app, &who, &token, &path, &spaced, code.as_str(), &sig)
        .await
        .refused(StatusCode::CONFLICT, "confirmation_tampered");
}

#[tokio::test]
async fn wrong_codes_and_bad_signatures_run_out_with_one_answer() {
    let app = App::new().await;
    let (d, who, token, account) = session(&app, 43).await;
    let other = SimDevice::p256("0A0B0C0D0E0F10FF".parse().unwrap()).unwrap();
    let t = tx(&account, json!(500));
    let id = submit(&app, &who, &token, t.clone()).await;
    let code = code_sent(&app, &id).await;
    let wrong = Code::parse(if code.as_str() == "00000000" {
        "11111111"
    } else {
        "00000000"
    })
    .unwrap();
    let path = format!("/v1/confirmations/{id}/confirm");
    // A wrong code, a malformed one, another device's signature: one answer.
    for (c, sig) in [
        (wrong.as_str().to_owned(), d.sign_confirmation(&t, &wrong)),
        ("1234".to_owned(), d.sign_confirmation(&t, &wrong)),
        (code.as_str().to_owned(), other.sign_confirmation(&t, &code)),
    ] {
        confirm(&app, &who, &token, &path, &t, &c, &sig)
            .await
            .refused(StatusCode::FORBIDDEN, "confirmation_refused");
    }
    assert_eq!(state_of(&app, &id).await, "failed");
    assert!(app.audited("confirmation.failed", "refused").await);
    // The right code after the attempts ran out: the same answer.
    let sig = d.sign_confirmation(&t, &code);
    confirm(&app, &who, &token, &path, &t, code.as_str(), &sig)
        .await
        .refused(StatusCode::FORBIDDEN, "confirmation_refused");
}

#[tokio::test]
async fn twenty_confirms_at_once_execute_once() {
    let app = App::new().await;
    let (d, who, token, account) = session(&app, 44).await;
    let t = tx(&account, json!(777));
    let id = submit(&app, &who, &token, t.clone()).await;
    let code = code_sent(&app, &id).await;
    let sig = d.sign_confirmation(&t, &code);
    let path = format!("/v1/confirmations/{id}/confirm");
    let body = confirm_body(&t, code.as_str(), &sig);
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (app, who, token, path, body) = (
            app.public.clone(),
            who.clone(),
            token.clone(),
            path.clone(),
            body.clone(),
        );
        set.spawn(async move {
            let req = Request::builder()
                .method(Method::POST)
                .uri(path)
                .header("content-type", "application/json")
                .header("authorization", format!("Bearer {token}"))
                .body(Body::from(body))
                .unwrap();
            send(&app, &who, req).await
        });
    }
    let answers: Vec<Answer> = set.join_all().await;
    let ok = answers
        .iter()
        .filter(|a| a.status == StatusCode::OK)
        .count();
    assert_eq!(
        ok,
        1,
        "{:?}",
        answers.iter().map(|a| a.status).collect::<Vec<_>>()
    );
    assert!(
        answers
            .iter()
            .all(|a| a.status == StatusCode::OK || a.code() == "confirmation_refused")
    );
}

#[tokio::test]
async fn bad_transactions_are_typed_and_change_nothing() {
    let app = App::new().await;
    let (_, who, token, account) = session(&app, 45).await;
    let cases: Vec<(Vec<u8>, StatusCode, &str)> = vec![
        (
            tx(&account, json!(0)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "amount_invalid",
        ),
        (
            tx(&account, json!(-5)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "amount_invalid",
        ),
        (
            tx(&account, json!(12.5)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "amount_invalid",
        ),
        (
            tx(&account, json!("100")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "amount_invalid",
        ),
        (
            tx(&account, json!(1_000_000_000_000u64)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "amount_over_limit",
        ),
        (
            tx("62220202001122999", json!(100)),
            StatusCode::FORBIDDEN,
            "payer_account_not_held",
        ),
        (
            br#"{"payer_account":"1","payer_account":"2"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "duplicate_field",
        ),
        (
            b"not json".to_vec(),
            StatusCode::BAD_REQUEST,
            "transaction_malformed",
        ),
    ];
    for (body, status, code) in cases {
        post(&app, &who, &token, "/v1/confirmations", body)
            .await
            .refused(status, code);
    }
    let mut bidi = serde_json::from_slice::<Value>(&tx(&account, json!(100))).unwrap();
    bidi["payee_name"] = json!("ACME\u{202E}HbmG");
    post(
        &app,
        &who,
        &token,
        "/v1/confirmations",
        serde_json::to_vec(&bidi).unwrap(),
    )
    .await
    .refused(StatusCode::UNPROCESSABLE_ENTITY, "text_forbidden_character");
    let mut yen = serde_json::from_slice::<Value>(&tx(&account, json!(100))).unwrap();
    yen["currency"] = json!("XXX");
    post(
        &app,
        &who,
        &token,
        "/v1/confirmations",
        serde_json::to_vec(&yen).unwrap(),
    )
    .await
    .refused(StatusCode::UNPROCESSABLE_ENTITY, "currency_unknown");
    // No session: the session door answers before the body is read.
    let req = Request::builder()
        .method(Method::POST)
        .uri("/v1/confirmations")
        .body(Body::from(tx(&account, json!(100))))
        .unwrap();
    send(&app.public, &who, req)
        .await
        .refused(StatusCode::FORBIDDEN, "session_required");
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM confirmations")
        .fetch_one(app.state.kms.db().pool())
        .await
        .unwrap();
    assert_eq!(n, 0);
}

/// An executed confirmation's evidence: none before execution; then a
/// receipt naming what was received, shown and signed and the gateway's
/// delivery receipt, which `openssl` and the documented Python check verify
/// from the exported files alone, and which a changed byte no longer
/// verifies.
#[tokio::test]
async fn an_executed_confirmation_has_evidence_openssl_verifies() {
    use keyward_protocol::confirmation::{Evidence, evidence::sha256};
    use keyward_server::confirmation::export;
    use keyward_server::wire::confirmations::EvidenceExport;

    let (app, _secrets) = crate::receipts::app_with_receipts().await;
    let (d, who, token, account) = session(&app, 43).await;
    let t = tx(&account, json!(98765));
    let id = submit(&app, &who, &token, t.clone()).await;
    // The gateway reports the code's message delivered.
    let delivery: String =
        sqlx::query_scalar("SELECT delivery_id FROM confirmations WHERE id = $1")
            .bind(&id)
            .fetch_one(app.state.kms.db().pool())
            .await
            .unwrap();
    let gateway = crate::macs::service(&app, "sms-gateway").await;
    let secret = crate::receipts::secret_text();
    let now = keyward_kms::db::now_ms() / 1000;
    let r = crate::receipts::post_receipt(
        &app,
        &gateway,
        &secret,
        "msg_ev1",
        now,
        &delivery,
        "delivered",
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    let evidence_path = format!("/admin/v1/confirmations/{id}/evidence");
    app.get(&app.root, &evidence_path)
        .await
        .refused(StatusCode::CONFLICT, "evidence_not_available");
    let code = code_sent(&app, &id).await;
    let sig = d.sign_confirmation(&t, &code);
    let path = format!("/v1/confirmations/{id}/confirm");
    confirm(&app, &who, &token, &path, &t, code.as_str(), &sig)
        .await
        .expect(StatusCode::OK);

    let operator = app.operator("olga", keyward_ca::Role::Operator).await;
    app.get(&operator, &evidence_path)
        .await
        .refused(StatusCode::FORBIDDEN, "forbidden_role");
    let auditor = app.operator("aude", keyward_ca::Role::Auditor).await;
    let a = app.get(&auditor, &evidence_path).await;
    let e: EvidenceExport = serde_json::from_value(a.expect(StatusCode::OK).clone()).unwrap();
    assert!(app.audited("confirmations.evidence", "success").await);

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("evidence");
    let files = export::write_dir(&e, &out).unwrap();
    assert_eq!(files.len(), 6, "{files:?}");
    let receipt = Evidence::parse(&std::fs::read(out.join(export::RECEIPT)).unwrap()).unwrap();
    assert_eq!(receipt.confirmation_id, id);
    assert_eq!(receipt.transaction_sha256, sha256(&t));
    assert_eq!(receipt.device_signature, sig);
    assert_eq!(receipt.delivery_message_id, delivery);
    assert_eq!(receipt.delivery_receipt_id.as_deref(), Some("msg_ev1"));
    assert!(receipt.delivered_at_ms.is_some());
    assert!(receipt.sent_at_ms.is_none() || receipt.sent_at_ms >= Some(receipt.submitted_at_ms));
    assert!(receipt.confirmed_at_ms >= receipt.submitted_at_ms);
    let message = std::fs::read_to_string(out.join(export::MESSAGE)).unwrap();
    assert!(
        message.starts_with("Pay EUR 987.65 to ACME GmbH"),
        "{message}"
    );
    // The code in it is spent: the receipt never carries the code's HMAC.
    let mac: Vec<u8> = sqlx::query_scalar("SELECT code_mac FROM confirmations WHERE id = $1")
        .bind(&id)
        .fetch_one(app.state.kms.db().pool())
        .await
        .unwrap();
    assert!(!a.text.contains(&hex::encode(&mac)));
    assert_eq!(receipt.code_mac_id, sha256(&mac));

    std::fs::write(out.join("ca.pem"), app.state.ca.root_pem()).unwrap();
    let check = |dir: &std::path::Path| crate::common::run_evidence_check(dir);
    let ran = check(&out);
    let stdout = String::from_utf8_lossy(&ran.stdout);
    assert!(
        ran.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    assert!(stdout.contains("Verified OK"), "{stdout}");
    assert!(stdout.contains("receipt hashes match"), "{stdout}");

    // One byte of the receipt changed: the signature no longer verifies.
    let mut bytes = std::fs::read(out.join(export::RECEIPT)).unwrap();
    let at = bytes.len() - 2;
    bytes[at] ^= 1;
    std::fs::write(out.join(export::RECEIPT), &bytes).unwrap();
    let ran = check(&out);
    assert!(!ran.status.success());
    assert!(String::from_utf8_lossy(&ran.stdout).contains("Verification failure"));
}

/// A tampered confirmation executes nothing and has no evidence receipt.
#[tokio::test]
async fn a_tampered_confirmation_has_no_evidence() {
    let app = App::new().await;
    let (d, who, token, account) = session(&app, 44).await;
    let t = tx(&account, json!(500));
    let id = submit(&app, &who, &token, t.clone()).await;
    let code = code_sent(&app, &id).await;
    let altered = tx(&account, json!(50000));
    let sig = d.sign_confirmation(&altered, &code);
    let path = format!("/v1/confirmations/{id}/confirm");
    confirm(&app, &who, &token, &path, &altered, code.as_str(), &sig)
        .await
        .refused(StatusCode::CONFLICT, "confirmation_tampered");
    app.get(&app.root, &format!("/admin/v1/confirmations/{id}/evidence"))
        .await
        .refused(StatusCode::CONFLICT, "evidence_not_available");
    app.get(&app.root, "/admin/v1/confirmations/nope/evidence")
        .await
        .refused(StatusCode::NOT_FOUND, "unknown_confirmation");
}

/// What the test's SIM-swap endpoint answers, and what it was asked.
#[derive(Default)]
struct SimSwapSide {
    /// (status, swapped) of the next answers; (200, false) once empty.
    answers: std::sync::Mutex<std::collections::VecDeque<(u16, bool)>>,
    /// Each request's JSON body and `authorization` header.
    asked: std::sync::Mutex<Vec<(Value, String)>>,
}

/// A CAMARA-style SIM-swap endpoint on a real local HTTPS listener, and an
/// installation whose `[confirmation.presend]` asks it with `edit` applied.
async fn app_with_sim_swap(
    edit: impl FnOnce(&mut keyward_config::PresendConfig),
) -> (App, std::sync::Arc<SimSwapSide>, tempfile::TempDir) {
    use http_body_util::{BodyExt, Full};
    let side = std::sync::Arc::new(SimSwapSide::default());
    let ca = keyward_tests::webhook::test_ca();
    let s = side.clone();
    let base = keyward_tests::webhook::serve_https(
        &ca,
        move |req: hyper::Request<hyper::body::Incoming>| {
            let s = s.clone();
            async move {
                let auth = req
                    .headers()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                s.asked.lock().unwrap().push((body, auth));
                let (status, swapped) = s
                    .answers
                    .lock()
                    .unwrap()
                    .pop_front()
                    .unwrap_or((200, false));
                let mut r = hyper::Response::new(Full::new(bytes::Bytes::from(
                    json!({ "swapped": swapped }).to_string(),
                )));
                *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                Ok::<_, std::convert::Infallible>(r)
            }
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("simswap-ca.pem");
    let pem = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &ca.ca_der);
    let lines: Vec<&str> = pem
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    std::fs::write(
        &ca_file,
        format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            lines.join("\n")
        ),
    )
    .unwrap();
    let token_file = dir.path().join("simswap.token");
    std::fs::write(&token_file, "tok-123\n").unwrap();
    let app = App::with_config(|c| {
        let p = &mut c.confirmation.presend;
        p.sim_swap_url = Some(format!("{base}/sim-swap/v1/check"));
        p.ca_file = Some(ca_file);
        p.token_file = Some(token_file);
        edit(p);
    })
    .await;
    (app, side, dir)
}

fn outcomes(app: &App, outcome: &str) -> u64 {
    app.state
        .metrics
        .confirmations
        .with_label_values(&[outcome])
        .get()
}

/// Confirmations and outbox messages stored.
async fn rows(app: &App) -> (i64, i64) {
    sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM confirmations) AS c, (SELECT COUNT(*) FROM outbox) AS o",
    )
    .fetch_one(app.state.kms.db().pool())
    .await
    .unwrap()
}

/// The SIM-swap endpoint is asked before a code goes out: swapped refuses
/// with nothing sent or stored; not swapped goes on; an endpoint that does
/// not answer fails closed. Each is audited and counted.
#[tokio::test]
async fn a_swapped_sim_refuses_before_any_code_is_sent() {
    let (app, side, _dir) = app_with_sim_swap(|_| {}).await;
    let (_d, who, token, account) = session(&app, 45).await;
    side.answers.lock().unwrap().push_back((200, true));
    let a = post(
        &app,
        &who,
        &token,
        "/v1/confirmations",
        tx(&account, json!(700)),
    )
    .await;
    a.refused(StatusCode::FORBIDDEN, "refused_pre_send");
    assert!(
        !a.text.contains("sim"),
        "the answer names no rule: {}",
        a.text
    );
    assert_eq!(rows(&app).await, (0, 0));
    assert_eq!(outcomes(&app, "refused_pre_send"), 1);
    let trail = app.trail().await;
    assert!(trail.iter().any(|r| r["action"] == "confirmation.submit"
        && r["outcome"] == "refused"
        && r.to_string().contains("sim_swap")));
    // What the endpoint was asked: the number and maxAge, with the token.
    let asked = side.asked.lock().unwrap().clone();
    assert_eq!(
        asked,
        vec![(
            json!({"phoneNumber": "+8613800138000", "maxAge": 240}),
            "Bearer tok-123".to_owned()
        )]
    );

    // Not swapped: the confirmation goes on.
    let id = submit(&app, &who, &token, tx(&account, json!(701))).await;
    assert_eq!(state_of(&app, &id).await, "pending");

    // An endpoint that fails: closed, typed, audited.
    side.answers.lock().unwrap().push_back((500, false));
    post(
        &app,
        &who,
        &token,
        "/v1/confirmations",
        tx(&account, json!(702)),
    )
    .await
    .refused(StatusCode::SERVICE_UNAVAILABLE, "presend_check_unavailable");
    assert!(app.audited("confirmation.submit", "refused").await);
    assert_eq!(rows(&app).await.0, 1);
}

/// `step_up`: a swapped SIM lets the confirmation go on, and the executor's
/// order names the risk.
#[tokio::test]
async fn a_swapped_sim_is_stepped_up_when_configured() {
    let (app, side, _dir) = app_with_sim_swap(|p| p.on_sim_swap = "step_up".into()).await;
    let (d, who, token, account) = session(&app, 46).await;
    side.answers.lock().unwrap().push_back((200, true));
    let t = tx(&account, json!(800));
    let id = submit(&app, &who, &token, t.clone()).await;
    assert_eq!(outcomes(&app, "stepped_up"), 1);
    let code = code_sent(&app, &id).await;
    let sig = d.sign_confirmation(&t, &code);
    let path = format!("/v1/confirmations/{id}/confirm");
    confirm(&app, &who, &token, &path, &t, code.as_str(), &sig)
        .await
        .expect(StatusCode::OK);
    let order: Vec<u8> = sqlx::query_scalar(
        "SELECT payload FROM outbox WHERE subject_id = $1 AND topic = 'confirmation.execute'",
    )
    .bind(&id)
    .fetch_one(app.state.kms.db().pool())
    .await
    .unwrap();
    let order: Value = serde_json::from_slice(&order).unwrap();
    assert_eq!(order["step_up"], json!(["sim_swap"]));
}

/// A contact set within `contact_changed_days` is refused (the test's
/// customer was approved a moment ago) before the endpoint is asked.
#[tokio::test]
async fn a_recently_changed_contact_is_refused() {
    let (app, side, _dir) = app_with_sim_swap(|p| p.contact_changed_days = 7).await;
    let (_d, who, token, account) = session(&app, 47).await;
    post(
        &app,
        &who,
        &token,
        "/v1/confirmations",
        tx(&account, json!(900)),
    )
    .await
    .refused(StatusCode::FORBIDDEN, "refused_pre_send");
    assert!(side.asked.lock().unwrap().is_empty());
    let trail = app.trail().await;
    assert!(
        trail
            .iter()
            .any(|r| r.to_string().contains("contact_changed"))
    );
}
