//! `/admin/v1/audit`: the trail, its verification against a database writer
//! (each tampering is detected), and signed checkpoints.

use axum::http::StatusCode;
use keyward_ca::Role;
use keyward_config::DatabaseKind;
use serde_json::Value;
use sqlx::AnyPool;

use crate::common::tamper::{
    append_forged, drop_guards, exec, head, records, rewrite_and_rechain, set_head, strip_keying,
};
use crate::harness::App;

#[tokio::test]
async fn auditors_read_and_verify_the_trail_operators_do_not() {
    let app = App::new().await;
    let carol = app.operator("carol", Role::Auditor).await;
    let recent = app.get(&carol, "/admin/v1/audit?limit=5").await;
    let records = recent.expect(StatusCode::OK)["records"]
        .as_array()
        .unwrap()
        .clone();
    assert!(!records.is_empty() && records.len() <= 5);
    // Every record since init carries an HSM MAC.
    assert!(
        records
            .iter()
            .all(|r| r["mac"].as_str().map(str::len) == Some(64))
    );
    let verified = app.get(&carol, "/admin/v1/audit/verify").await;
    let body = verified.expect(StatusCode::OK);
    assert_eq!(body["ok"], true, "{body}");
    assert!(body["records"].as_u64().unwrap() > 0);
    assert_eq!(body["keyed_from"], 1, "{body}");
    assert!(body["checkpoint_seq"].as_i64().unwrap() >= 1, "{body}");
    assert!(app.audited("audit.verify", "success").await);
    let signed = app.get(&carol, "/admin/v1/audit/checkpoint").await;
    assert!(signed.expect(StatusCode::OK)["signature"].is_string());

    let dave = app.operator("dave", Role::Operator).await;
    for path in [
        "/admin/v1/audit",
        "/admin/v1/audit/verify",
        "/admin/v1/audit/checkpoint",
    ] {
        app.get(&dave, path)
            .await
            .refused(StatusCode::FORBIDDEN, "forbidden_role");
    }
}

fn db(app: &App) -> (AnyPool, DatabaseKind) {
    let db = app.state.kms.db();
    (db.pool().clone(), db.kind())
}

/// The API's verdict, and the start-up check's (from the HSM checkpoint),
/// taken first: the API's check appends its own record.
async fn verdicts(app: &App) -> (Value, Option<i64>) {
    let start = app.state.audit.verify_from_checkpoint().await.unwrap();
    let api = app.get(&app.root, "/admin/v1/audit/verify").await;
    let api = api.expect(StatusCode::OK).clone();
    (api, start.first_bad)
}

/// A few more records (each listing is audited).
async fn grow(app: &App, n: usize) {
    for _ in 0..n {
        app.get(&app.root, "/admin/v1/audit?limit=1")
            .await
            .expect(StatusCode::OK);
    }
}

#[tokio::test]
async fn a_forged_but_correctly_chained_record_is_detected() {
    let app = App::new().await;
    grow(&app, 3).await;
    let (pool, _) = db(&app);
    // The triggers cannot check a MAC: this append passes them.
    let forged = append_forged(&pool).await;
    let (api, start) = verdicts(&app).await;
    assert_eq!(api["ok"], false, "{api}");
    assert_eq!(api["first_bad"], forged, "{api}");
    assert!(api["problem"].as_str().unwrap().contains("MAC"), "{api}");
    assert_eq!(start, Some(forged));
    // No signed checkpoint vouches for a broken trail.
    app.get(&app.root, "/admin/v1/audit/checkpoint")
        .await
        .refused(StatusCode::CONFLICT, "audit_chain_broken");
}

#[tokio::test]
async fn the_last_ten_records_deleted_and_an_old_valid_head_restored_are_detected() {
    let app = App::new().await;
    let (pool, _) = db(&app);
    let old = head(&pool).await;
    // An external anchor taken before the cut.
    grow(&app, 10).await;
    let signed = app.get(&app.root, "/admin/v1/audit/checkpoint").await;
    let signed = signed.expect(StatusCode::OK).clone();
    // serve's checkpoint task runs.
    assert!(app.state.audit.checkpoint().await.unwrap());
    let (before_seq, ..) = head(&pool).await;
    assert!(before_seq >= old.0 + 10);

    // The stored checkpoint holds on the intact trail; an altered one does not.
    let stored: keyward_server::wire::AuditCheckpoint =
        serde_json::from_value(signed.clone()).unwrap();
    assert!(app.state.audit.verify_against(&stored).await.unwrap().ok());
    let mut bad = stored.clone();
    bad.at_ms += 1;
    let report = app.state.audit.verify_against(&bad).await.unwrap();
    assert_eq!(report.first_bad, Some(bad.seq), "{report:?}");
    assert!(report.problem.unwrap().contains("signature"));

    // The guards refuse it...
    assert!(
        exec(
            &pool,
            &format!("DELETE FROM audit_log WHERE seq > {}", old.0)
        )
        .await
        .is_err()
    );
    assert!(
        exec(&pool, &format!("UPDATE audit_head SET seq = {}", old.0))
            .await
            .is_err()
    );
    // ...so the writer drops them, cuts the tail and restores the head row as
    // it was (a once-valid head, MAC and all: only the HSM checkpoint knows).
    let (p, k) = db(&app);
    drop_guards(&p, k).await;
    exec(
        &pool,
        &format!("DELETE FROM audit_log WHERE seq > {}", old.0),
    )
    .await
    .unwrap();
    set_head(&pool, old.0, &old.1, old.2, old.3.as_deref()).await;

    let (api, start) = verdicts(&app).await;
    assert_eq!(api["ok"], false, "{api}");
    assert_eq!(api["first_bad"], old.0 + 1, "{api}");
    assert!(
        api["problem"].as_str().unwrap().contains("checkpoint"),
        "{api}"
    );
    assert_eq!(start, Some(old.0 + 1));

    // The stored signed checkpoint says the same, through the API.
    let q: Vec<String> = ["seq", "hash", "at_ms", "signature", "key", "key_sha256"]
        .iter()
        .map(|k| {
            let v = match &signed[k] {
                Value::String(s) => s.clone(),
                v => v.to_string(),
            };
            let v: String = v
                .bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect();
            format!("{k}={v}")
        })
        .collect();
    let against = app
        .get(
            &app.root,
            &format!("/admin/v1/audit/verify?{}", q.join("&")),
        )
        .await;
    let against = against.expect(StatusCode::OK);
    assert_eq!(against["ok"], false, "{against}");
    // (The API's own check above appended a record after the cut.)
    assert!(
        against["problem"].as_str().unwrap().contains("removed"),
        "{against}"
    );
}

#[tokio::test]
async fn an_old_record_rewritten_and_rechained_is_detected() {
    let app = App::new().await;
    grow(&app, 5).await;
    let (pool, _) = db(&app);
    let (p, k) = db(&app);
    drop_guards(&p, k).await;
    let target = 3i64;
    rewrite_and_rechain(&pool, target).await;
    // The SHA-256 chain alone holds again...
    let mut running = "0".repeat(64);
    for r in records(&pool).await {
        assert_eq!(r.prev_hash, running);
        assert_eq!(r.compute_hash(), r.hash);
        running = r.hash;
    }
    // ...but the MACs do not.
    let (api, _) = verdicts(&app).await;
    assert_eq!(api["ok"], false, "{api}");
    assert_eq!(api["first_bad"], target, "{api}");
}

#[tokio::test]
async fn the_head_row_is_guarded_and_rewriting_it_is_detected() {
    let app = App::new().await;
    grow(&app, 2).await;
    let (pool, _) = db(&app);
    for sql in [
        "UPDATE audit_head SET seq = seq - 1",
        "UPDATE audit_head SET seq = seq + 1",
        "UPDATE audit_head SET keyed_from = NULL, mac = NULL",
        "UPDATE audit_head SET hash = '1111111111111111111111111111111111111111111111111111111111111111'",
        "DELETE FROM audit_head",
    ] {
        assert!(
            exec(&pool, sql).await.is_err(),
            "the database accepted {sql}"
        );
    }
    let (api, _) = verdicts(&app).await;
    assert_eq!(api["ok"], true, "{api}");

    // Without the guards: claim the trail was never keyed.
    let (p, k) = db(&app);
    drop_guards(&p, k).await;
    strip_keying(&pool).await;
    let (api, start) = verdicts(&app).await;
    assert_eq!(api["ok"], false, "{api}");
    assert_eq!(api["first_bad"], 1, "{api}");
    assert_eq!(start, Some(1));

    // Or a head MAC of someone's choosing.
    let (seq, hash, ..) = head(&pool).await;
    set_head(&pool, seq, &hash, Some(1), Some(&"cd".repeat(32))).await;
    let (api, _) = verdicts(&app).await;
    assert_eq!(api["ok"], false, "{api}");
    assert!(api["problem"].as_str().unwrap().contains("head"), "{api}");
}

/// Group commit: 300 appends at once are written in groups, each caller
/// gets its own record, the seqs are contiguous and the chain verifies.
#[tokio::test]
async fn concurrent_appends_are_written_in_groups_and_chain() {
    use keyward_server::audit::{Actor, AuditEvent, Outcome};
    let app = App::new().await;
    let before = app.state.audit.verify_chain().await.unwrap().head_seq;
    let mut set = tokio::task::JoinSet::new();
    for i in 0..300u32 {
        let audit = app.state.audit.clone();
        set.spawn(async move {
            let event = AuditEvent::Online {
                action: "test.group",
                target: format!("t{i}"),
                detail: serde_json::json!({ "i": i }),
            };
            audit
                .append(&Actor::System, &event, Outcome::Success, &format!("r{i}"))
                .await
                .unwrap()
        });
    }
    let mut seqs = Vec::new();
    while let Some(rec) = set.join_next().await {
        let rec = rec.unwrap();
        let i: u32 = rec.target[1..].parse().unwrap();
        assert_eq!(
            rec.request_id,
            format!("r{i}"),
            "a caller got another's record"
        );
        assert_eq!(rec.mac.as_deref().map(str::len), Some(64));
        seqs.push(rec.seq);
    }
    seqs.sort_unstable();
    let first = seqs[0];
    assert!(first > before);
    assert_eq!(seqs, (first..first + 300).collect::<Vec<_>>());
    let report = app.state.audit.verify_chain().await.unwrap();
    assert!(report.ok(), "{report:?}");
    let (api, start) = verdicts(&app).await;
    assert_eq!(api["ok"], true, "{api}");
    assert_eq!(start, None);
}

/// Verification while another writer (another replica, say) appends: the
/// head moves in the transaction of its records, so a trail that grows
/// during the check is whole, never "broken" (a replica restarting beside a
/// busy one checks the trail at start, and would refuse to serve).
#[tokio::test(flavor = "multi_thread")]
async fn a_trail_that_grows_while_it_is_verified_verifies() {
    use keyward_server::audit::{Actor, AuditEvent, Outcome};
    let app = App::new().await;
    let audit = app.state.audit.clone();
    let writer = tokio::spawn(async move {
        for i in 0..300u32 {
            let event = AuditEvent::Online {
                action: "test.grow",
                target: format!("t{i}"),
                detail: serde_json::json!({ "i": i }),
            };
            audit
                .append(&Actor::System, &event, Outcome::Success, &format!("r{i}"))
                .await
                .unwrap();
        }
    });
    let mut checks = 0;
    while !writer.is_finished() {
        let report = app.state.audit.verify_from_checkpoint().await.unwrap();
        assert!(report.ok(), "check {checks}: {report:?}");
        checks += 1;
    }
    writer.await.unwrap();
    assert!(checks > 0);
}
