//! `Idempotency-Key`: a retry gets the first answer; a request cut by its
//! timeout still takes effect, has its outcome recorded, and its retry gets
//! the real answer; a key whose owner died is taken over by its retry.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use keyward_tests::simulator::SimDevice;
use serde_json::{Value, json};

use crate::harness::{Answer, App, send};

async fn post_with_key(app: &App, path: &str, key: &str, body: &Value) -> Answer {
    let req = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(Body::from(body.to_string()))
        .unwrap();
    send(&app.admin, &app.root, req).await
}

async fn count(app: &App, action: &str, outcome: &str) -> usize {
    app.trail()
        .await
        .iter()
        .filter(|r| r["action"] == action && r["outcome"] == outcome)
        .count()
}

#[tokio::test]
async fn a_retry_with_the_same_key_gets_the_first_answer() {
    let app = App::new().await;
    let body = json!({"issuer_id": "bank-a", "family": "tdes"});
    let first = post_with_key(&app, "/admin/v1/issuers", "k-1", &body).await;
    first.expect(StatusCode::CREATED);
    let again = post_with_key(&app, "/admin/v1/issuers", "k-1", &body).await;
    assert_eq!(again.status, StatusCode::CREATED, "{}", again.text);
    assert_eq!(again.body, first.body);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    // The work was done once.
    assert_eq!(count(&app, "issuer.create", "requested").await, 1);
    // The same key for another request is refused; a new key does new work
    // (here: refused, the issuer exists).
    let other = json!({"issuer_id": "bank-b", "family": "tdes"});
    post_with_key(&app, "/admin/v1/issuers", "k-1", &other)
        .await
        .refused(StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused");
    // The same body with another query string is another request.
    post_with_key(&app, "/admin/v1/issuers?force=1", "k-1", &body)
        .await
        .refused(StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused");
    post_with_key(&app, "/admin/v1/issuers", "k-2", &body)
        .await
        .refused(StatusCode::CONFLICT, "issuer_exists");
    post_with_key(&app, "/admin/v1/issuers", "bad key", &body)
        .await
        .refused(StatusCode::BAD_REQUEST, "invalid_idempotency_key");
    // Keys are the client's own: another operator's same key is new work.
    let dave = app.operator("dave", keyward_ca::Role::Admin).await;
    let req = Request::builder()
        .method(Method::POST)
        .uri("/admin/v1/issuers")
        .header("content-type", "application/json")
        .header("idempotency-key", "k-1")
        .body(Body::from(other.to_string()))
        .unwrap();
    send(&app.admin, &dave, req)
        .await
        .expect(StatusCode::CREATED);
}

#[tokio::test]
async fn a_request_cut_by_its_timeout_takes_effect_is_recorded_and_its_retry_gets_the_answer() {
    // The batch route's time limit far below what certifying 300 devices
    // takes (about 0.5 s here), far above what a replayed answer takes.
    const DEVICES: u16 = 300;
    let app = App::with_config(|c| c.server.batch_timeout_ms = 150).await;
    app.issuer("bank-a", "tdes").await;
    let devices: Vec<SimDevice> = (1..=DEVICES)
        .map(|n| SimDevice::p256(format!("0A0B0C0D0E0F{n:04X}").parse().unwrap()).unwrap())
        .collect();
    let mut manifest = format!("{}\n", keyward_device_provisioning::MANIFEST_HEADER);
    for d in &devices {
        manifest.push_str(&d.manifest_row());
        manifest.push('\n');
    }
    let body = json!({"batch_id": "T-1", "manifest": manifest});
    let cut = post_with_key(&app, "/admin/v1/batches", "import-t1", &body).await;
    cut.refused(StatusCode::SERVICE_UNAVAILABLE, "timeout");

    // The import went on; the retry is told so, then gets the real answer.
    let deadline = Instant::now() + Duration::from_secs(60);
    let answer = loop {
        let a = post_with_key(&app, "/admin/v1/batches", "import-t1", &body).await;
        match a.status {
            StatusCode::CREATED => break a,
            // Still running (or, on a very slow machine, the retry cut too).
            StatusCode::CONFLICT | StatusCode::SERVICE_UNAVAILABLE => {
                assert!(Instant::now() < deadline, "{}", a.text);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            _ => panic!("{}", a.text),
        }
    };
    assert_eq!(answer.headers["idempotent-replayed"], "true");
    let rows = answer.body["rows"].as_array().unwrap();
    assert_eq!(rows.len(), usize::from(DEVICES));
    assert!(rows.iter().all(|r| r["outcome"] == "registered"));
    // Done once, and its outcome is in the trail next to its request.
    assert_eq!(
        count(&app, "provisioning.import_batch", "requested").await,
        1
    );
    assert_eq!(count(&app, "provisioning.import_batch", "success").await, 1);
    let batch = app.get(&app.root, "/admin/v1/batches/T-1").await;
    assert_eq!(batch.expect(StatusCode::OK)["device_count"], DEVICES);
}

/// Puts key `key` of the root operator in the table as `running` for `body`
/// on `path`, leased until `lease_until_ms`: what a request leaves behind
/// when its process dies (lapsed) or while it still runs (live).
async fn leave_running(app: &App, path: &str, key: &str, body: &Value, lease_until_ms: i64) {
    let hash = keyward_server::http::idempotency::fingerprint(None, body.to_string().as_bytes());
    let now = keyward_kms::db::now_ms();
    sqlx::query(
        "INSERT INTO http_idempotency \
         (principal, key, method, path, body_sha256, state, created_at_ms, owner, lease_until_ms) \
         VALUES ($1, $2, 'POST', $3, $4, 'running', $5, 'a-replica-that-died', $6)",
    )
    .bind(app.root.actor().to_string())
    .bind(key)
    .bind(path)
    .bind(hash)
    .bind(now - 60_000)
    .bind(lease_until_ms)
    .execute(app.state.kms.db().pool())
    .await
    .unwrap();
}

#[tokio::test]
async fn a_key_whose_owner_died_is_taken_over_by_the_retry() {
    let app = App::new().await;
    let now = keyward_kms::db::now_ms();
    let body = json!({"issuer_id": "bank-a", "family": "tdes"});
    // Its process died a while ago: the lease lapsed.
    leave_running(&app, "/admin/v1/issuers", "k-dead", &body, now - 1_000).await;
    let retry = post_with_key(&app, "/admin/v1/issuers", "k-dead", &body).await;
    assert_eq!(retry.status, StatusCode::CREATED, "{}", retry.text);
    assert!(retry.headers.get("idempotent-replayed").is_none());
    assert_eq!(count(&app, "issuer.create", "requested").await, 1);
    // Settled by the run that took it over: the next retry replays.
    let again = post_with_key(&app, "/admin/v1/issuers", "k-dead", &body).await;
    assert_eq!(again.status, StatusCode::CREATED, "{}", again.text);
    assert_eq!(again.headers["idempotent-replayed"], "true");

    // A live lease: its owner is still at work.
    let other = json!({"issuer_id": "bank-b", "family": "tdes"});
    leave_running(&app, "/admin/v1/issuers", "k-live", &other, now + 60_000).await;
    let busy = post_with_key(&app, "/admin/v1/issuers", "k-live", &other).await;
    busy.refused(StatusCode::CONFLICT, "request_in_progress");
    assert_eq!(busy.headers["retry-after"], "1");
    // A lapsed lease is taken over only by the same request.
    leave_running(&app, "/admin/v1/issuers", "k-dead-2", &other, now - 1_000).await;
    post_with_key(&app, "/admin/v1/issuers", "k-dead-2", &body)
        .await
        .refused(StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused");
}
