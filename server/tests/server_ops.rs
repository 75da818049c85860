//! Operations: health and metrics for Prometheus, the audit trail's hash
//! chain, its HSM checkpoint and signed checkpoints, error documents,
//! graceful shutdown, background jobs across two replicas.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{Server, require_tool, sample};
use sqlx::Connection;

#[tokio::test(flavor = "multi_thread")]
async fn ready_live_and_metrics_that_promtool_accepts() {
    require_tool("promtool", "prometheus");
    let s = Server::started().await;
    // Traffic first, so the labelled families have samples.
    assert_eq!(s.admin("/admin/v1/ca/certificates", &[]).status, 200);
    let _ = s.curl(&s.public.clone(), "/v1/ping", &[]);

    let ready = s.curl(&s.admin.clone(), "/ready", &[]);
    assert_eq!(ready.status, 200, "{ready:?}\n{}", s.log());
    assert_eq!(ready.json()["status"], "ready");
    assert_eq!(s.curl(&s.admin.clone(), "/live", &[]).status, 200);

    let text = s.metrics();
    common::promtool_check(&text);

    for family in [
        "keyward_http_requests_total",
        "keyward_http_request_duration_seconds_bucket",
        "keyward_hsm_pool_busy",
        "keyward_hsm_pool_queued",
        "keyward_hsm_jobs_rejected_total",
        "keyward_hsm_derived_key_cache_hits_total",
        "keyward_hsm_derived_key_cache_misses_total",
        "keyward_hsm_derived_key_cache_evictions_total",
        "keyward_hsm_operation_duration_seconds_bucket",
        "keyward_certificates_revoked_total",
        "keyward_crl_age_seconds",
        "keyward_db_pool_connections",
        "keyward_tls_handshake_failures_total",
        "keyward_job_failures_total",
        "keyward_job_last_success_timestamp_seconds",
        "keyward_audit_checkpoint_failures_total",
    ] {
        assert!(text.contains(family), "{family} missing:\n{text}");
    }
    // The certificates the replica serves with, for the expiry alerts.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    for certificate in ["server", "evidence", "issuing_ca", "root_ca"] {
        let not_after = sample(
            &text,
            &format!(
                r#"keyward_certificate_expiry_timestamp_seconds{{certificate="{certificate}"}}"#
            ),
        )
        .unwrap_or_else(|| panic!("{certificate} expiry missing:\n{text}"));
        assert!(not_after > now + 86_400.0, "{certificate}: {not_after}");
    }
    // Route templates, never raw paths.
    assert!(
        text.contains(r#"route="/admin/v1/ca/certificates""#),
        "{text}"
    );
    assert!(text.contains(r#"route="/ready",status="200""#), "{text}");
    // The TLS handshakes signed in the HSM were timed.
    assert!(
        sample(
            &text,
            r#"keyward_hsm_operation_duration_seconds_count{operation="tls_handshake_sign",outcome="ok"}"#
        )
        .unwrap()
            >= 1.0,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_chain_verifies_and_names_the_first_tampered_record() {
    let mut s = Server::started().await;
    s.new_operator("carol", "auditor");
    let v = s.admin("/admin/v1/audit/verify", &[]).json();
    assert_eq!(v["ok"], true, "{v}");
    let records = v["records"].as_u64().unwrap();
    assert!(records >= 5, "{v}");
    assert!(
        s.stop().success(),
        "serve did not exit cleanly:\n{}",
        s.log()
    );

    let ok = s.keyward(&["--json", "audit", "verify"]);
    assert!(ok.status.success());
    let ok: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(ok["ok"], true, "{ok}");
    assert_eq!(ok["first_bad"], serde_json::Value::Null);

    // The table refuses edits; whoever drops the guard is still caught.
    let target = 3i64;
    let catalog = s.db.catalog().await.unwrap();
    let pool = catalog.db().pool();
    let blocked = sqlx::query("UPDATE audit_log SET actor = 'someone-else' WHERE seq = $1")
        .bind(target)
        .execute(pool)
        .await;
    assert!(blocked.is_err(), "audit_log accepted an UPDATE");
    let mut conn = pool.acquire().await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    match s.db.kind() {
        keyward_config::DatabaseKind::Sqlite => {
            sqlx::query("DROP TRIGGER audit_log_no_update")
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        keyward_config::DatabaseKind::Postgres => {
            sqlx::query("ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_change")
                .execute(&mut *tx)
                .await
                .unwrap();
        }
    }
    sqlx::query("UPDATE audit_log SET actor = 'someone-else' WHERE seq = $1")
        .bind(target)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    drop(conn);

    let bad = s.keyward(&["--json", "audit", "verify"]);
    assert_eq!(
        bad.status.code(),
        Some(1),
        "verify must fail on a broken chain"
    );
    let bad: serde_json::Value = serde_json::from_slice(&bad.stdout).unwrap();
    assert_eq!(bad["ok"], false, "{bad}");
    assert_eq!(bad["first_bad"], target, "{bad}");
    let text = s.keyward(&["audit", "verify"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains(&format!("BROKEN at record {target}")));

    // The API says the same once the server is back. (serve's start-up check
    // covers the records after the HSM checkpoint; a record this old is for
    // the full check — see the next test for a break serve refuses.)
    s.start();
    let api = s.admin("/admin/v1/audit/verify", &[]).json();
    assert_eq!(api["ok"], false);
    assert_eq!(api["first_bad"], target);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cut_trail_is_caught_by_the_hsm_checkpoint_and_a_stored_signed_one() {
    use sqlx::Row;
    let mut s = Server::started().await;
    s.new_operator("carol", "auditor");
    let catalog = s.db.catalog().await.unwrap();
    let pool = catalog.db().pool().clone();
    // A head as it once was, MAC and all.
    let old = sqlx::query("SELECT seq, hash, keyed_from, mac FROM audit_head WHERE id = 1")
        .fetch_one(&pool)
        .await
        .unwrap();
    let (old_seq, old_hash): (i64, String) = (old.get(0), old.get(1));
    let (old_keyed, old_mac): (Option<i64>, Option<String>) = (old.get(2), old.get(3));
    for _ in 0..10 {
        assert_eq!(s.admin("/admin/v1/audit?limit=1", &[]).status, 200);
    }
    // The auditor stores a signed checkpoint elsewhere, and it checks out.
    let dir = s.dir.path().to_owned();
    let file = dir.join("checkpoint.json");
    let file_arg = file.to_str().unwrap();
    let out = s.kwctl(&dir, "carol", &["audit", "checkpoint", "--out", file_arg]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stored: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert!(stored["seq"].as_i64().unwrap() >= old_seq + 10, "{stored}");
    let out = s.kwctl(&dir, "carol", &["audit", "verify", "--against", file_arg]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Shutdown writes the last HSM checkpoint.
    assert!(s.stop().success(), "{}", s.log());

    common::tamper::drop_guards(&pool, s.db.kind()).await;
    sqlx::query("DELETE FROM audit_log WHERE seq > $1")
        .bind(old_seq)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE audit_head SET seq = $1, hash = $2, keyed_from = $3, mac = $4 WHERE id = 1",
    )
    .bind(old_seq)
    .bind(old_hash.as_str())
    .bind(old_keyed)
    .bind(old_mac.as_deref())
    .execute(&pool)
    .await
    .unwrap();
    drop(catalog);

    // Offline: the HSM checkpoint shows the cut...
    let bad = s.keyward(&["--json", "audit", "verify"]);
    assert_eq!(bad.status.code(), Some(1));
    let bad: serde_json::Value = serde_json::from_slice(&bad.stdout).unwrap();
    assert_eq!(bad["ok"], false, "{bad}");
    assert_eq!(bad["first_bad"], old_seq + 1, "{bad}");
    // ...and so does the stored checkpoint.
    let against = s.keyward(&["--json", "audit", "verify", "--against", file_arg]);
    assert_eq!(against.status.code(), Some(1));
    let against: serde_json::Value = serde_json::from_slice(&against.stdout).unwrap();
    assert!(
        against["problem"].as_str().unwrap().contains("removed"),
        "{against}"
    );
    // serve refuses to start on it, unless told otherwise.
    let (status, stderr) = s.serve_refused();
    assert!(!status.success());
    assert!(stderr.contains("checkpoint"), "{stderr}");
    s.start_with(&["--allow-broken-audit"]);
    let api = s.admin("/admin/v1/audit/verify", &[]).json();
    assert_eq!(api["ok"], false, "{api}");
    // Once the head this replica writes passes the HSM checkpoint's record,
    // the checkpoint writer refuses the cut trail every second, counted for
    // the alert (KeywardAuditCheckpointFailing). Each read is audited.
    for _ in 0..20 {
        assert_eq!(s.admin("/admin/v1/audit?limit=1", &[]).status, 200);
    }
    let t0 = Instant::now();
    let failures = loop {
        let text = s.metrics();
        let n = sample(&text, "keyward_audit_checkpoint_failures_total").unwrap();
        if n >= 2.0 || t0.elapsed() > Duration::from_secs(15) {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(failures >= 2.0, "{failures}");
}

/// A scheduled verifier must not erase what it finds: a trail cut back to
/// an older, once-valid head fails every verification (none of them chains
/// a record onto it or moves the HSM checkpoint), `serve` refuses, and only
/// an operator's audited repair, whose record names what was lost, settles it.
#[tokio::test(flavor = "multi_thread")]
async fn a_cut_trail_stays_broken_however_often_it_is_verified_until_repaired() {
    use common::tamper;
    let mut s = Server::started().await;
    let catalog = s.db.catalog().await.unwrap();
    let pool = catalog.db().pool().clone();
    let (old_seq, old_hash, old_keyed, old_mac) = tamper::head(&pool).await;
    for _ in 0..10 {
        assert_eq!(s.admin("/admin/v1/audit?limit=1", &[]).status, 200);
    }
    // Shutdown writes the last HSM checkpoint.
    assert!(s.stop().success(), "{}", s.log());
    let (cut_from, _, _, _) = tamper::head(&pool).await;

    tamper::drop_guards(&pool, s.db.kind()).await;
    sqlx::query("DELETE FROM audit_log WHERE seq > $1")
        .bind(old_seq)
        .execute(&pool)
        .await
        .unwrap();
    tamper::set_head(&pool, old_seq, &old_hash, old_keyed, old_mac.as_deref()).await;

    for run in 1..=20 {
        let out = s.keyward(&["--json", "audit", "verify"]);
        assert_eq!(out.status.code(), Some(1), "run {run}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["ok"], false, "run {run}: {v}");
        assert_eq!(v["first_bad"], old_seq + 1, "run {run}: {v}");
        assert!(
            v["problem"].as_str().unwrap().contains("removed"),
            "run {run}: {v}"
        );
        // Nothing was chained onto the cut trail.
        assert_eq!(tamper::head(&pool).await.0, old_seq, "run {run}");
    }
    // Each failure is an incident with what it found, outside the chain.
    let incidents: Vec<(i64, i64, String)> = sqlx::query_as(
        "SELECT first_bad, head_seq, problem FROM audit_incidents WHERE repaired_by IS NULL",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(incidents.len(), 20);
    assert!(
        incidents
            .iter()
            .all(|(bad, head, p)| *bad == old_seq + 1 && *head == old_seq && p.contains("removed")),
        "{incidents:?}"
    );
    let (status, stderr) = s.serve_refused();
    assert!(!status.success());
    assert!(stderr.contains("checkpoint"), "{stderr}");

    // The operator's repair: refused without a reason, then recorded with
    // what was lost, and the trail verifies again.
    assert!(!s.keyward(&["audit", "repair"]).status.success());
    let out = s.keyward(&[
        "--json",
        "audit",
        "repair",
        "--reason",
        "restored from backup",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["repaired"], true, "{r}");
    assert_eq!(r["lost_from"], old_seq + 1, "{r}");
    assert!(r["lost_to"].as_i64().unwrap() >= cut_from, "{r}");
    let records = tamper::records(&pool).await;
    let repair = records
        .iter()
        .find(|r| r.action == "audit.repair" && r.outcome == "requested")
        .expect("the repair is recorded");
    let detail: serde_json::Value = serde_json::from_str(&repair.detail_json).unwrap();
    assert_eq!(detail["lost_from"], old_seq + 1, "{detail}");
    assert_eq!(detail["reason"], "restored from backup", "{detail}");
    assert_eq!(detail["open_incidents"], 20, "{detail}");
    assert!(
        records
            .iter()
            .any(|r| r.action == "audit.repair" && r.outcome == "success")
    );
    let ok = s.keyward(&["--json", "audit", "verify"]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    // Repaired once: a second repair finds nothing to do.
    assert!(
        !s.keyward(&["audit", "repair", "--reason", "again"])
            .status
            .success()
    );
    drop(catalog);
    s.start();
    let api = s.admin("/admin/v1/audit/verify", &[]).json();
    assert_eq!(api["ok"], true, "{api}");
}

#[tokio::test(flavor = "multi_thread")]
async fn offline_verify_detects_a_forged_record_a_rechained_one_and_a_rewritten_head() {
    use common::tamper;
    for case in ["forged", "rechained", "head"] {
        let mut s = Server::started().await;
        assert_eq!(s.admin("/admin/v1/audit?limit=1", &[]).status, 200);
        assert!(s.stop().success(), "{}", s.log());
        let catalog = s.db.catalog().await.unwrap();
        let pool = catalog.db().pool().clone();
        let expected = match case {
            "forged" => tamper::append_forged(&pool).await,
            "rechained" => {
                tamper::drop_guards(&pool, s.db.kind()).await;
                tamper::rewrite_and_rechain(&pool, 3).await;
                3
            }
            _ => {
                tamper::drop_guards(&pool, s.db.kind()).await;
                tamper::strip_keying(&pool).await;
                1
            }
        };
        drop(catalog);
        let out = s.keyward(&["--json", "audit", "verify"]);
        assert_eq!(out.status.code(), Some(1), "{case}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["ok"], false, "{case}: {v}");
        assert_eq!(v["first_bad"], expected, "{case}: {v}");
    }
}

/// Two `keyward serve` processes on one database: the online maintenance job
/// (once across replicas) is held by one of them, as the `jobs` table shows,
/// and taken over by the other when the holder is killed.
#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_run_a_once_job_one_at_a_time_and_the_survivor_takes_over() {
    use keyward_server::jobs::Leases;
    let mut s = Server::started_with(common::Options {
        extra: "[online]\njobs_interval_ms = 200\n".into(),
        ..Default::default()
    })
    .await;
    let b = s.replica("b");
    let leases = Leases::new(
        keyward_kms::db::Database::connect(&s.db.config)
            .await
            .unwrap(),
    );
    let lease = || async {
        leases
            .get("online.maintenance")
            .await
            .unwrap()
            .expect("the maintenance job never ran")
    };
    // Each process names itself in its log when its jobs start.
    let b_log = || std::fs::read_to_string(&b.log).unwrap_or_default();
    let first = lease().await;
    let on_a = s.log().contains(&first.holder);
    assert!(
        on_a != b_log().contains(&first.holder),
        "holder {} is not exactly one of the two replicas",
        first.holder
    );
    // While both run, the holder keeps renewing and nobody else gets it.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = lease().await;
        assert_eq!(now.holder, first.holder);
        assert!(now.last_run_at_ms > first.last_run_at_ms);
    }
    // The holder dies without a word; the other takes over after its lease.
    let (survivor_log, killed) = if on_a {
        s.kill();
        (b.log.clone(), None)
    } else {
        (s.dir.path().join("serve.log"), Some(b))
    };
    drop(killed);
    let deadline = Instant::now() + Duration::from_secs(15);
    let taken = loop {
        let now = lease().await;
        if now.holder != first.holder {
            break now;
        }
        assert!(Instant::now() < deadline, "nobody took the lease over");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let survivor = std::fs::read_to_string(survivor_log).unwrap();
    assert!(survivor.contains(&taken.holder), "{survivor}");
    assert!(taken.lease_until_ms > keyward_kms::db::now_ms());
}

/// A real `keyward serve` drains the outbox: a message committed in the
/// shared database reaches the file sender's file, and `/metrics` shows the
/// delivery and an empty backlog.
#[tokio::test(flavor = "multi_thread")]
async fn serve_drains_the_outbox_through_the_file_sender() {
    use keyward_server::outbox::{Channel, NewMessage, enqueue_in};
    let s = Server::started_with(common::Options {
        extra: "[outbox]\ninterval_ms = 100\n[outbox.file]\npath = \"outbox.jsonl\"\n".into(),
        ..Default::default()
    })
    .await;
    let db = keyward_kms::db::Database::connect(&s.db.config)
        .await
        .unwrap();
    let msg = NewMessage {
        topic: "confirmation.code".into(),
        channel: Channel::File,
        recipient: "+4915112345678".into(),
        subject_id: "conf-e2e".into(),
        payload: b"Code 12345678".to_vec(),
    };
    let id = db
        .write("test.enqueue", |mut tx| {
            let msg = msg.clone();
            async move {
                let id = enqueue_in(&mut tx, &msg).await?;
                Ok::<_, sqlx::Error>((tx, id))
            }
        })
        .await
        .unwrap();
    let file = s.data.join("outbox.jsonl");
    let deadline = Instant::now() + Duration::from_secs(15);
    let line = loop {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        if let Some(l) = text.lines().next() {
            break serde_json::from_str::<serde_json::Value>(l).unwrap();
        }
        assert!(Instant::now() < deadline, "nothing delivered: {}", s.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(line["message_id"], id.to_string());
    assert_eq!(line["payload"], "Code 12345678");
    // The log names neither recipient nor payload.
    let log = s.log();
    assert!(!log.contains("4915112345678") && !log.contains("12345678"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = s.metrics();
        let sent = sample(
            &m,
            "keyward_outbox_deliveries_total{channel=\"file\",outcome=\"sent\"}",
        );
        if sent == Some(1.0) && sample(&m, "keyward_outbox_backlog") == Some(0.0) {
            break;
        }
        assert!(Instant::now() < deadline, "{m}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
