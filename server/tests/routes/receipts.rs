//! `POST /admin/v1/outbox/receipts`: the gateway's delivery receipts, with
//! its service certificate and a Standard Webhooks signature; refused when
//! the signature is bad, the timestamp outside the window, the webhook-id
//! already used or the message unknown — each typed and audited.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use base64::Engine;
use keyward_kms::db::now_ms;
use keyward_server::edge::identity::ClientIdentity;
use keyward_server::outbox::senders::{WebhookSecret, signature};
use keyward_server::outbox::{Channel, MessageId, NewMessage, enqueue_in};
use serde_json::json;

use crate::harness::{Answer, App, send};
use crate::macs::service;

/// The gateway's receipt secret (the test's own, 32 bytes).
pub fn secret_text() -> String {
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode([42u8; 32])
    )
}

/// An installation whose `[outbox.receipts]` trusts [`secret_text`]; the
/// returned directory holds the secret file.
pub async fn app_with_receipts() -> (App, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway-receipts.whsec");
    std::fs::write(&path, secret_text()).unwrap();
    let app = App::with_config(|c| {
        c.outbox.receipts = Some(keyward_config::ReceiptsConfig {
            secret_files: vec![path],
            window_secs: 300,
        });
    })
    .await;
    (app, dir)
}

/// A receipt request signed with `secret` at `timestamp` (seconds).
pub async fn post_receipt(
    app: &App,
    who: &ClientIdentity,
    secret: &str,
    webhook_id: &str,
    timestamp: i64,
    message_id: &str,
    status: &str,
) -> Answer {
    let body = serde_json::to_vec(&json!({"message_id": message_id, "status": status})).unwrap();
    let secret = WebhookSecret::parse(secret).unwrap();
    let req = Request::builder()
        .method(Method::POST)
        .uri("/admin/v1/outbox/receipts")
        .header("content-type", "application/json")
        .header("webhook-id", webhook_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header(
            "webhook-signature",
            signature(&[secret], webhook_id, timestamp, &body),
        )
        .body(Body::from(body))
        .unwrap();
    send(&app.admin, who, req).await
}

async fn message(app: &App) -> MessageId {
    let msg = NewMessage {
        topic: "confirmation.code".to_owned(),
        channel: Channel::File,
        recipient: "+4915112345678".to_owned(),
        subject_id: "receipt-test".to_owned(),
        payload: b"{}".to_vec(),
    };
    let msg = &msg;
    app.state
        .kms
        .db()
        .write("test.enqueue", |mut tx| async move {
            let id = enqueue_in(&mut tx, msg).await?;
            Ok::<_, sqlx::Error>((tx, id))
        })
        .await
        .unwrap()
}

async fn receipt_of(app: &App, id: &MessageId) -> (Option<String>, Option<String>) {
    let row: (Option<String>, Option<String>) =
        sqlx::query_as("SELECT receipt_status, receipt_id FROM outbox WHERE message_id = $1")
            .bind(id.to_string())
            .fetch_one(app.state.kms.db().pool())
            .await
            .unwrap();
    row
}

#[tokio::test]
async fn a_signed_receipt_is_recorded_once() {
    let (app, _dir) = app_with_receipts().await;
    let gw = service(&app, "sms-gateway").await;
    let id = message(&app).await;
    let now = now_ms() / 1000;
    let a = post_receipt(
        &app,
        &gw,
        &secret_text(),
        "msg_r1",
        now,
        &id.to_string(),
        "delivered",
    )
    .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.text);
    assert_eq!(
        receipt_of(&app, &id).await,
        (Some("delivered".into()), Some("msg_r1".into()))
    );
    assert!(app.audited("outbox.receipt", "success").await);

    // The same webhook-id again, freshly signed: a replay.
    post_receipt(
        &app,
        &gw,
        &secret_text(),
        "msg_r1",
        now + 1,
        &id.to_string(),
        "failed",
    )
    .await
    .refused(StatusCode::CONFLICT, "receipt_replayed");
    assert_eq!(receipt_of(&app, &id).await.0.as_deref(), Some("delivered"));
    assert!(app.audited("outbox.receipt", "refused").await);
}

#[tokio::test]
async fn bad_receipts_are_typed_and_change_nothing() {
    let (app, _dir) = app_with_receipts().await;
    let gw = service(&app, "sms-gateway").await;
    let id = message(&app).await.to_string();
    let now = now_ms() / 1000;
    let other = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode([7u8; 32])
    );
    post_receipt(&app, &gw, &other, "msg_b1", now, &id, "delivered")
        .await
        .refused(StatusCode::UNAUTHORIZED, "receipt_signature_invalid");
    for late in [now - 301, now + 301] {
        post_receipt(&app, &gw, &secret_text(), "msg_b2", late, &id, "delivered")
            .await
            .refused(StatusCode::BAD_REQUEST, "receipt_outside_window");
    }
    let unknown = MessageId::new().to_string();
    post_receipt(
        &app,
        &gw,
        &secret_text(),
        "msg_b3",
        now,
        &unknown,
        "delivered",
    )
    .await
    .refused(StatusCode::NOT_FOUND, "unknown_message");
    post_receipt(&app, &gw, &secret_text(), "msg_b4", now, &id, "read")
        .await
        .refused(StatusCode::BAD_REQUEST, "receipt_invalid");
    post_receipt(&app, &gw, &secret_text(), "msg b5", now, &id, "delivered")
        .await
        .refused(StatusCode::BAD_REQUEST, "receipt_invalid");
    // No headers at all.
    let req = Request::builder()
        .method(Method::POST)
        .uri("/admin/v1/outbox/receipts")
        .header("content-type", "application/json")
        .body(Body::from(format!(
            r#"{{"message_id":"{id}","status":"delivered"}}"#
        )))
        .unwrap();
    send(&app.admin, &gw, req)
        .await
        .refused(StatusCode::UNAUTHORIZED, "receipt_signature_invalid");
    assert_eq!(receipt_of(&app, &id.parse().unwrap()).await, (None, None));
    // The refused ids were not burned: the good receipt still goes in
    // under an id an unknown message was refused with.
    let a = post_receipt(&app, &gw, &secret_text(), "msg_b3", now, &id, "failed").await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.text);

    // Only a service certificate: an operator or no certificate is refused
    // before the signature is looked at.
    post_receipt(
        &app,
        &app.root,
        &secret_text(),
        "msg_b6",
        now,
        &id,
        "delivered",
    )
    .await
    .refused(StatusCode::FORBIDDEN, "forbidden_role");
    post_receipt(
        &app,
        &crate::harness::anonymous(),
        &secret_text(),
        "msg_b7",
        now,
        &id,
        "delivered",
    )
    .await
    .refused(StatusCode::UNAUTHORIZED, "client_certificate_required");
}

/// Without `[outbox.receipts]` no receipt verifies.
#[tokio::test]
async fn without_a_configured_secret_every_receipt_is_refused() {
    let app = App::new().await;
    let gw = service(&app, "sms-gateway").await;
    let id = message(&app).await.to_string();
    post_receipt(
        &app,
        &gw,
        &secret_text(),
        "msg_n1",
        now_ms() / 1000,
        &id,
        "delivered",
    )
    .await
    .refused(StatusCode::UNAUTHORIZED, "receipt_signature_invalid");
}
