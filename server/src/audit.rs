//! The audit trail: an append-only, hash-chained table of typed events.
//!
//! Each record is `(seq, at_ms, actor, action, target, outcome, request_id,
//! detail_json, prev_hash, hash)` with
//! `hash = SHA-256(prev_hash_bytes || canonical)` where `canonical` is the
//! compact JSON array `[seq, at_ms, actor, action, target, outcome,
//! request_id, detail_json]` (`detail_json` as the stored string) and the
//! first record's `prev_hash` is 32 zero bytes. Hashes are stored as lower-case
//! hex. [`AuditLog::verify_chain`] recomputes the chain and names the first
//! record that does not fit.
//!
//! Appends are serialised on the one-row `audit_head` table (`BEGIN IMMEDIATE`
//! on SQLite, `SELECT … FOR UPDATE` on PostgreSQL), so the chain never forks.
//! Security operations write their record *before* the effect and are refused
//! when that write fails (fail closed); see `admin/`.
//!
//! Must not: put key bytes, PINs, private keys or CSR/certificate bodies in a
//! record. Details carry serials, profiles, names, roles and error codes.

use keyward_config::DatabaseKind;
use keyward_device_provisioning::AuditNote;
pub use keyward_device_provisioning::{Actor, Outcome};
use keyward_kms::db::now_ms;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::{AnyPool, Row};

use crate::metrics::Metrics;

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const VERIFY_PAGE: i64 = 1000;

/// Why an audit operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("audit head row is missing (migration 2001 not applied?)")]
    NoHead,
}

/// What happened. Each variant gives an `action`, a `target` and a detail
/// object; the enum is the list of everything the trail can say.
#[derive(Debug, Clone)]
pub enum AuditEvent {
    /// `keyward init` created something (CA keys, TLS key/cert, first operator).
    Bootstrap { component: String, detail: String },
    /// A certificate issued (or, with outcome `requested`, about to be).
    CertificateIssued {
        serial: Option<String>,
        profile: String,
        subject: String,
    },
    /// An issuer and its master keys created (or about to be).
    IssuerCreated {
        issuer: String,
        family: &'static str,
    },
    /// A certificate revoked (or about to be).
    CertificateRevoked { serial: String, reason: String },
    /// A read or other action by an operator (`certificates.list`, `crl.get`, …).
    OperatorAction {
        action: &'static str,
        target: String,
    },
    /// A request refused by the admin API's authorisation (`forbidden_role`,
    /// `client_certificate_required`).
    AccessRefused {
        method: String,
        route: String,
        code: &'static str,
        role: Option<String>,
    },
    /// A TLS handshake that failed on a listener. `suppressed` counts the
    /// refusals not recorded since the previous record (rate limit).
    TlsClientRefused {
        listener: &'static str,
        reason: String,
        suppressed: u64,
    },
    /// The chain was checked.
    AuditVerified {
        records: u64,
        first_bad: Option<i64>,
    },
    /// The service started or stopped listening.
    Service {
        action: &'static str,
        detail: String,
    },
    /// A failure after an authorised `requested` record (the effect did not happen).
    OperationFailed { action: String, code: String },
    /// A provisioning decision, as the provisioning layer noted it. The
    /// note's own actor (the device or operator it acted for) goes in the
    /// detail as `subject`; the record's actor is whoever made the call.
    Provisioning(AuditNote),
    /// An intrusion signal ([`crate::security`]): action `security.<kind>`.
    Security {
        kind: crate::security::SecurityKind,
        target: String,
        detail: serde_json::Value,
    },
}

impl AuditEvent {
    /// The outcome record of an operation that failed with `code` after its
    /// `requested` record (the effect did not happen).
    pub fn failed(action: &str, code: &'static str) -> (Self, Outcome) {
        (
            Self::OperationFailed {
                action: action.to_owned(),
                code: code.to_owned(),
            },
            Outcome::Failed { code },
        )
    }

    fn parts(&self) -> (String, String, serde_json::Value) {
        use serde_json::json;
        match self {
            Self::Bootstrap { component, detail } => (
                "bootstrap".into(),
                component.clone(),
                json!({ "detail": detail }),
            ),
            Self::CertificateIssued {
                serial,
                profile,
                subject,
            } => (
                "certificate.issue".into(),
                serial.clone().unwrap_or_else(|| "-".into()),
                json!({ "profile": profile, "subject": subject }),
            ),
            Self::IssuerCreated { issuer, family } => (
                "issuer.create".into(),
                format!("issuer:{issuer}"),
                json!({ "family": family }),
            ),
            Self::CertificateRevoked { serial, reason } => (
                "certificate.revoke".into(),
                serial.clone(),
                json!({ "reason": reason }),
            ),
            Self::OperatorAction { action, target } => {
                ((*action).to_owned(), target.clone(), json!({}))
            }
            Self::AccessRefused {
                method,
                route,
                code,
                role,
            } => (
                "access.refused".into(),
                format!("{method} {route}"),
                json!({ "code": code, "role": role }),
            ),
            Self::TlsClientRefused {
                listener,
                reason,
                suppressed,
            } => (
                "tls.client_refused".into(),
                format!("listener:{listener}"),
                json!({ "reason": reason, "suppressed_before": suppressed }),
            ),
            Self::AuditVerified { records, first_bad } => (
                "audit.verify".into(),
                "audit_log".into(),
                json!({ "records": records, "first_bad": first_bad }),
            ),
            Self::Service { action, detail } => (
                format!("service.{action}"),
                "keyward".into(),
                json!({ "detail": detail }),
            ),
            Self::OperationFailed { action, code } => {
                (action.clone(), "-".into(), json!({ "code": code }))
            }
            Self::Security {
                kind,
                target,
                detail,
            } => (
                format!("security.{}", kind.as_str()),
                target.clone(),
                detail.clone(),
            ),
            Self::Provisioning(note) => {
                let mut detail = serde_json::Map::new();
                detail.insert("subject".into(), note.actor.to_string().into());
                if let Some(code) = note.outcome.code() {
                    detail.insert("code".into(), code.into());
                }
                for (name, value) in &note.details {
                    detail.insert((*name).to_owned(), value.clone().into());
                }
                (
                    note.action.as_str().to_owned(),
                    note.target.clone(),
                    serde_json::Value::Object(detail),
                )
            }
        }
    }
}

/// One record as stored (and as `GET /admin/v1/audit` shows it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct AuditRecord {
    pub seq: i64,
    pub at_ms: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
    pub request_id: String,
    pub detail_json: String,
    pub prev_hash: String,
    pub hash: String,
}

impl AuditRecord {
    /// The hash this record should carry, given its fields and `prev_hash`.
    pub fn compute_hash(&self) -> String {
        chain_hash(
            &self.prev_hash,
            self.seq,
            self.at_ms,
            [
                &self.actor,
                &self.action,
                &self.target,
                &self.outcome,
                &self.request_id,
                &self.detail_json,
            ],
        )
    }
}

fn chain_hash(prev_hash: &str, seq: i64, at_ms: i64, fields: [&str; 6]) -> String {
    // A prev_hash that is not 64 hex digits (tampered) still hashes
    // deterministically: its text bytes stand in for the decoded value.
    let prev = hex::decode(prev_hash).unwrap_or_else(|_| prev_hash.as_bytes().to_vec());
    let canonical = serde_json::json!([
        seq, at_ms, fields[0], fields[1], fields[2], fields[3], fields[4], fields[5]
    ])
    .to_string();
    let mut h = Sha256::new();
    h.update(&prev);
    h.update(canonical.as_bytes());
    hex::encode(h.finalize())
}

/// The result of [`AuditLog::verify_chain`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Records read.
    pub records: u64,
    /// The first record whose link or hash is wrong (or the seq where records
    /// are missing); `None` when the whole chain holds.
    pub first_bad: Option<i64>,
    /// What was wrong with `first_bad`.
    pub problem: Option<String>,
    /// The head row's seq (the last record written).
    pub head_seq: i64,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.first_bad.is_none()
    }
}

/// The audit trail on the catalog's database. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AuditLog {
    pool: AnyPool,
    kind: DatabaseKind,
    metrics: Option<Metrics>,
}

impl AuditLog {
    /// The trail on `pool` (migrations must have run).
    pub fn new(pool: AnyPool, kind: DatabaseKind, metrics: Option<Metrics>) -> Self {
        Self {
            pool,
            kind,
            metrics,
        }
    }

    /// The one way an operation with an effect is recorded, whoever the
    /// actor: `requested` first — if it cannot be written the effect does not
    /// run (fail closed) — then the effect, then the outcome record `settle`
    /// names for its result (refusals and failures included). The outcome
    /// record is best effort: the effect has happened by then, so a write
    /// that fails is logged, with the `requested` record as its trace.
    ///
    /// Callers whose effect must survive a client timeout run the whole call
    /// in a task of its own.
    pub async fn recorded<T, E, Fut>(
        &self,
        actor: &Actor,
        request_id: &str,
        requested: &AuditEvent,
        effect: Fut,
        settle: impl FnOnce(&Result<T, E>) -> (AuditEvent, Outcome),
    ) -> Result<Result<T, E>, AuditError>
    where
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        self.append(actor, requested, Outcome::Requested, request_id)
            .await?;
        let result = effect.await;
        let (event, outcome) = settle(&result);
        if let Err(e) = self.append(actor, &event, outcome, request_id).await {
            let (action, target, _) = event.parts();
            tracing::error!(action, target, outcome = outcome.as_str(), error = %e,
                "operation done but its outcome record could not be written");
        }
        Ok(result)
    }

    /// Recomputes the chain and records that it did (after the check, so the
    /// check covers what came before it). A record that cannot be written is
    /// logged; the report stands.
    pub async fn verify_and_record(
        &self,
        actor: &Actor,
        request_id: &str,
    ) -> Result<VerifyReport, AuditError> {
        let report = self.verify_chain().await?;
        let outcome = if report.ok() {
            Outcome::Success
        } else {
            Outcome::Failed {
                code: "audit_chain_broken",
            }
        };
        let event = AuditEvent::AuditVerified {
            records: report.records,
            first_bad: report.first_bad,
        };
        let _ = self.append(actor, &event, outcome, request_id).await;
        Ok(report)
    }

    /// Appends one record and returns it. On error nothing was written.
    pub async fn append(
        &self,
        actor: &Actor,
        event: &AuditEvent,
        outcome: Outcome,
        request_id: &str,
    ) -> Result<AuditRecord, AuditError> {
        let (action, target, detail) = event.parts();
        let result = self
            .try_append(
                actor.to_string(),
                action.clone(),
                target,
                outcome,
                request_id,
                detail.to_string(),
            )
            .await;
        if let Some(m) = &self.metrics {
            match &result {
                Ok(_) => m.audit_records.with_label_values(&[&action]).inc(),
                Err(_) => m.audit_write_failures.inc(),
            }
        }
        if let Err(e) = &result {
            tracing::error!(error = %e, action, request_id, "audit write failed");
        }
        result
    }

    async fn try_append(
        &self,
        actor: String,
        action: String,
        target: String,
        outcome: Outcome,
        request_id: &str,
        detail_json: String,
    ) -> Result<AuditRecord, AuditError> {
        let mut tx = match self.kind {
            DatabaseKind::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            DatabaseKind::Postgres => self.pool.begin().await?,
        };
        let head_sql = match self.kind {
            DatabaseKind::Sqlite => "SELECT seq, hash FROM audit_head WHERE id = 1",
            DatabaseKind::Postgres => "SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE",
        };
        let head = sqlx::query(head_sql)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(AuditError::NoHead)?;
        let prev_seq: i64 = head.try_get(0)?;
        let prev_hash: String = head.try_get(1)?;
        let mut rec = AuditRecord {
            seq: prev_seq + 1,
            at_ms: now_ms(),
            actor,
            action,
            target,
            outcome: outcome.as_str().to_owned(),
            request_id: request_id.to_owned(),
            detail_json,
            prev_hash,
            hash: String::new(),
        };
        rec.hash = rec.compute_hash();
        sqlx::query(
            "INSERT INTO audit_log (seq, at_ms, actor, action, target, outcome, request_id, \
             detail_json, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(rec.seq)
        .bind(rec.at_ms)
        .bind(rec.actor.as_str())
        .bind(rec.action.as_str())
        .bind(rec.target.as_str())
        .bind(rec.outcome.as_str())
        .bind(rec.request_id.as_str())
        .bind(rec.detail_json.as_str())
        .bind(rec.prev_hash.as_str())
        .bind(rec.hash.as_str())
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1")
            .bind(rec.seq)
            .bind(rec.hash.as_str())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(rec)
    }

    /// Recomputes the whole chain, page by page.
    pub async fn verify_chain(&self) -> Result<VerifyReport, AuditError> {
        let head = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1")
            .fetch_optional(&self.pool)
            .await?
            .ok_or(AuditError::NoHead)?;
        let head_seq: i64 = head.try_get(0)?;
        let head_hash: String = head.try_get(1)?;

        let mut report = VerifyReport {
            records: 0,
            first_bad: None,
            problem: None,
            head_seq,
        };
        let mut running = GENESIS.to_owned();
        let mut expected_seq = 1i64;
        loop {
            let rows = sqlx::query(
                "SELECT seq, at_ms, actor, action, target, outcome, request_id, detail_json, \
                 prev_hash, hash FROM audit_log WHERE seq >= $1 ORDER BY seq LIMIT $2",
            )
            .bind(expected_seq)
            .bind(VERIFY_PAGE)
            .fetch_all(&self.pool)
            .await?;
            if rows.is_empty() {
                break;
            }
            for row in &rows {
                let rec = AuditRecord {
                    seq: row.try_get(0)?,
                    at_ms: row.try_get(1)?,
                    actor: row.try_get(2)?,
                    action: row.try_get(3)?,
                    target: row.try_get(4)?,
                    outcome: row.try_get(5)?,
                    request_id: row.try_get(6)?,
                    detail_json: row.try_get(7)?,
                    prev_hash: row.try_get(8)?,
                    hash: row.try_get(9)?,
                };
                report.records += 1;
                if report.first_bad.is_none() {
                    let problem = if rec.seq != expected_seq {
                        Some(format!(
                            "records {expected_seq}..{} are missing",
                            rec.seq - 1
                        ))
                    } else if rec.prev_hash != running {
                        Some("prev_hash does not match the previous record".to_owned())
                    } else if rec.compute_hash() != rec.hash {
                        Some("record does not match its hash".to_owned())
                    } else {
                        None
                    };
                    if let Some(p) = problem {
                        // For a gap, the first missing seq is the first bad one.
                        report.first_bad = Some(expected_seq.min(rec.seq));
                        report.problem = Some(p);
                    }
                }
                // Follow the stored chain so one bad record is reported once.
                running = rec.hash.clone();
                expected_seq = rec.seq + 1;
            }
        }
        if report.first_bad.is_none() && (expected_seq - 1 != head_seq || running != head_hash) {
            let last = expected_seq - 1;
            report.first_bad = Some(last.min(head_seq) + 1);
            report.problem = Some(format!(
                "the head names record {head_seq} but the log ends at {last}"
            ));
        }
        Ok(report)
    }

    /// The last `limit` records, newest first (admin listing).
    pub async fn recent(&self, limit: i64) -> Result<Vec<AuditRecord>, AuditError> {
        let rows = sqlx::query(
            "SELECT seq, at_ms, actor, action, target, outcome, request_id, detail_json, \
             prev_hash, hash FROM audit_log ORDER BY seq DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(AuditRecord {
                    seq: row.try_get(0)?,
                    at_ms: row.try_get(1)?,
                    actor: row.try_get(2)?,
                    action: row.try_get(3)?,
                    target: row.try_get(4)?,
                    outcome: row.try_get(5)?,
                    request_id: row.try_get(6)?,
                    detail_json: row.try_get(7)?,
                    prev_hash: row.try_get(8)?,
                    hash: row.try_get(9)?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: i64, prev: &str) -> AuditRecord {
        let mut r = AuditRecord {
            seq,
            at_ms: 1_700_000_000_000,
            actor: "operator:alice#01".into(),
            action: "certificate.revoke".into(),
            target: "0A1B".into(),
            outcome: "success".into(),
            request_id: "r-1".into(),
            detail_json: r#"{"reason":"key_compromise"}"#.into(),
            prev_hash: prev.into(),
            hash: String::new(),
        };
        r.hash = r.compute_hash();
        r
    }

    #[test]
    fn hash_covers_every_field_and_the_link() {
        let a = rec(1, GENESIS);
        let b = rec(2, &a.hash);
        assert_eq!(a.hash.len(), 64);
        assert_ne!(a.hash, b.hash);
        for edit in [
            |r: &mut AuditRecord| r.actor.push('x'),
            |r: &mut AuditRecord| r.action.push('x'),
            |r: &mut AuditRecord| r.target.push('x'),
            |r: &mut AuditRecord| r.outcome.push('x'),
            |r: &mut AuditRecord| r.request_id.push('x'),
            |r: &mut AuditRecord| r.detail_json.push(' '),
            |r: &mut AuditRecord| r.at_ms += 1,
            |r: &mut AuditRecord| r.seq += 1,
            |r: &mut AuditRecord| r.prev_hash = "1".repeat(64),
        ] {
            let mut t = a.clone();
            edit(&mut t);
            assert_ne!(t.compute_hash(), a.hash);
        }
    }

    #[test]
    fn field_boundaries_are_unambiguous() {
        let mut a = rec(1, GENESIS);
        let mut b = a.clone();
        a.actor = "ab".into();
        a.action = "c".into();
        b.actor = "a".into();
        b.action = "bc".into();
        assert_ne!(a.compute_hash(), b.compute_hash());
    }
}
