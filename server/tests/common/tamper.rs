//! Tampering with the audit trail as a database writer would, which the
//! verification must detect each time; for the route tests and the
//! end-to-end tests alike.

use keyward_config::DatabaseKind;
use keyward_server::audit::AuditRecord;
use sqlx::{AnyPool, Row};

pub async fn exec(pool: &AnyPool, sql: &str) -> Result<(), sqlx::Error> {
    sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(pool)
        .await
        .map(|_| ())
}

/// What a writer with DDL rights does first: drop (disable) the triggers.
pub async fn drop_guards(pool: &AnyPool, kind: DatabaseKind) {
    match kind {
        DatabaseKind::Sqlite => {
            for t in [
                "audit_log_no_update",
                "audit_log_no_delete",
                "audit_log_append_at_head",
                "audit_head_advance_only",
                "audit_head_no_delete",
                "audit_head_no_insert",
            ] {
                exec(pool, &format!("DROP TRIGGER {t}")).await.unwrap();
            }
        }
        DatabaseKind::Postgres => {
            for t in ["audit_log", "audit_head"] {
                exec(pool, &format!("ALTER TABLE {t} DISABLE TRIGGER USER"))
                    .await
                    .unwrap();
            }
        }
    }
}

pub async fn head(pool: &AnyPool) -> (i64, String, Option<i64>, Option<String>) {
    let r = sqlx::query("SELECT seq, hash, keyed_from, mac FROM audit_head WHERE id = 1")
        .fetch_one(pool)
        .await
        .unwrap();
    (
        r.get::<i64, _>(0),
        r.get::<String, _>(1),
        r.get::<Option<i64>, _>(2),
        r.get::<Option<String>, _>(3),
    )
}

pub async fn records(pool: &AnyPool) -> Vec<AuditRecord> {
    let rows = sqlx::query(
        "SELECT seq, at_ms, actor, action, target, outcome, request_id, detail_json, \
         prev_hash, hash, mac FROM audit_log ORDER BY seq",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    rows.iter()
        .map(|r| AuditRecord {
            seq: r.get(0),
            at_ms: r.get(1),
            actor: r.get(2),
            action: r.get(3),
            target: r.get(4),
            outcome: r.get(5),
            request_id: r.get(6),
            detail_json: r.get(7),
            prev_hash: r.get(8),
            hash: r.get(9),
            mac: r.get(10),
        })
        .collect()
}

pub async fn insert(pool: &AnyPool, r: &AuditRecord) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO audit_log (seq, at_ms, actor, action, target, outcome, request_id, \
         detail_json, prev_hash, hash, mac) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(r.seq)
    .bind(r.at_ms)
    .bind(r.actor.as_str())
    .bind(r.action.as_str())
    .bind(r.target.as_str())
    .bind(r.outcome.as_str())
    .bind(r.request_id.as_str())
    .bind(r.detail_json.as_str())
    .bind(r.prev_hash.as_str())
    .bind(r.hash.as_str())
    .bind(r.mac.as_deref())
    .execute(pool)
    .await
    .map(|_| ())
}

pub async fn set_head(
    pool: &AnyPool,
    seq: i64,
    hash: &str,
    keyed_from: Option<i64>,
    mac: Option<&str>,
) {
    sqlx::query(
        "UPDATE audit_head SET seq = $1, hash = $2, keyed_from = $3, mac = $4 WHERE id = 1",
    )
    .bind(seq)
    .bind(hash)
    .bind(keyed_from)
    .bind(mac)
    .execute(pool)
    .await
    .unwrap();
}

/// (a) A forged record appended after the head, correctly chained, with a
/// MAC of the forger's choosing; the head moved onto it. Returns its seq.
pub async fn append_forged(pool: &AnyPool) -> i64 {
    let (seq, hash, keyed_from, mac) = head(pool).await;
    let mut forged = AuditRecord {
        seq: seq + 1,
        at_ms: 1_800_000_000_000,
        actor: "operator:admin#01".into(),
        action: "certificate.revoke".into(),
        target: "0A1B".into(),
        outcome: "success".into(),
        request_id: "forged".into(),
        detail_json: r#"{"reason":"key_compromise"}"#.into(),
        prev_hash: hash,
        hash: String::new(),
        // Any 64 hex digits: only the HSM can make the right ones.
        mac: Some("ab".repeat(32)),
    };
    forged.hash = forged.compute_hash();
    insert(pool, &forged).await.unwrap();
    set_head(pool, forged.seq, &forged.hash, keyed_from, mac.as_deref()).await;
    forged.seq
}

/// (c) Record `target` rewritten and every later one re-chained, the head
/// fixed: the SHA-256 chain holds again (the guards must be dropped first).
pub async fn rewrite_and_rechain(pool: &AnyPool, target: i64) {
    let mut prev = String::new();
    for mut r in records(pool).await.into_iter().filter(|r| r.seq >= target) {
        if r.seq == target {
            r.actor = "operator:someone-else#99".into();
        } else {
            r.prev_hash = prev.clone();
        }
        r.hash = r.compute_hash();
        prev = r.hash.clone();
        sqlx::query("UPDATE audit_log SET actor = $1, prev_hash = $2, hash = $3 WHERE seq = $4")
            .bind(r.actor.as_str())
            .bind(r.prev_hash.as_str())
            .bind(r.hash.as_str())
            .bind(r.seq)
            .execute(pool)
            .await
            .unwrap();
    }
    let (seq, _, keyed_from, mac) = head(pool).await;
    set_head(pool, seq, &prev, keyed_from, mac.as_deref()).await;
}

/// (d) The head row claims the trail was never keyed (the guards must be
/// dropped first).
pub async fn strip_keying(pool: &AnyPool) {
    exec(pool, "UPDATE audit_head SET keyed_from = NULL, mac = NULL")
        .await
        .unwrap();
}
