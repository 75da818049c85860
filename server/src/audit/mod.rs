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
//! The chain is keyed in the HSM: a database writer can
//! recompute SHA-256, so each record appended since migration 2002 also
//! carries `mac = HMAC-SHA256(K, "keyward-audit-record-v1\0" || hash)` under
//! the non-extractable token key `keyward/audit/mac`, and the head row its
//! own MAC over `(seq, keyed_from, hash)` (`keyed_from`: the first record
//! with a MAC, which anchors every older record). A checkpoint of the head
//! is kept on the token (outside the database), written at most every
//! [`CHECKPOINT_INTERVAL`] and on shutdown, so a tail cut back to an older,
//! once-valid head shows too. See [`verify`] and docs/threat-model.md.
//!
//! # Layout
//! - `mod.rs` (here): events, records, appending;
//! - [`keyed`]: what the MACs cover and the checkpoint's encoding;
//! - [`verify`]: verification (full, from the checkpoint, against a stored
//!   signed checkpoint), the checkpoint writer and the signed checkpoint.
//!
//! Appends are serialised on the one-row `audit_head` table (`BEGIN IMMEDIATE`
//! on SQLite, `SELECT … FOR UPDATE` on PostgreSQL), so the chain never forks.
//! Security operations write their record *before* the effect and are refused
//! when that write fails (fail closed); see `admin/`.
//!
//! Must not: put key bytes, PINs, private keys or CSR/certificate bodies in a
//! record. Details carry serials, profiles, names, roles and error codes.

/// The columns [`record_of`] reads, in order (a macro, for `concat!`).
macro_rules! record_columns {
    () => {
        "seq, at_ms, actor, action, target, outcome, request_id, detail_json, prev_hash, hash, mac"
    };
}

pub mod keyed;
pub mod repair;
pub mod verify;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyward_config::DatabaseKind;
use keyward_device_provisioning::AuditNote;
pub use keyward_device_provisioning::{Actor, Outcome};
use keyward_kms::db::now_ms;
use keyward_kms::{ErrorKind, Kms, KmsError};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::{AnyPool, Row};

pub use repair::{RepairOutcome, Repaired};
pub use verify::{SignedCheckpoint, VerifyReport};

use crate::metrics::Metrics;

/// The action of a bulk MAC verification batch's record, answered or refused.
const MAC_BATCH: &str = "mac.verify_batch";

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// How often serve writes the HSM checkpoint when the trail has grown: the
/// window in which the newest records could be cut off unseen by a
/// database writer (see docs/threat-model.md).
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

/// Label of the P-256 token key that signs checkpoints for external storage
/// (`GET /admin/v1/audit/checkpoint`), created by `keyward init`.
pub const AUDIT_SIGNING_LABEL: &str = "keyward/audit/sign";

/// Why an audit operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("audit head row is missing (migration 2001 not applied?)")]
    NoHead,
    /// The HSM could not MAC, sign or keep the checkpoint.
    #[error("audit trail HSM operation: {0}")]
    Kms(#[from] KmsError),
    /// The chain does not verify, so the operation (a signed checkpoint)
    /// was refused.
    #[error("audit trail broken at record {seq}: {problem}")]
    Broken { seq: i64, problem: String },
    /// A stored checkpoint given to verify against is not one.
    #[error("invalid audit checkpoint: {0}")]
    InvalidCheckpoint(&'static str),
    /// The group write this record was part of failed (nothing of it was
    /// written); the cause, as the writer saw it.
    #[error("audit group write: {message}")]
    Group {
        code: &'static str,
        kind: ErrorKind,
        message: String,
    },
}

/// A staging or chaining write inside a caller's unit of work that lost a
/// race on PostgreSQL is the unit's lost race: it runs again.
impl keyward_kms::db::TxError for AuditError {
    fn database_error(&self) -> Option<&sqlx::Error> {
        match self {
            Self::Database(e) => Some(e),
            Self::Kms(e) => keyward_kms::db::TxError::database_error(e),
            _ => None,
        }
    }
}

impl AuditError {
    /// The stable code a client sees.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Database(e) if keyward_kms::db::error_kind(e) != ErrorKind::Internal => {
                keyward_kms::db::error_code(e)
            }
            Self::Database(_) | Self::NoHead => "audit_error",
            Self::Kms(e) => e.code(),
            Self::Broken { .. } => "audit_chain_broken",
            Self::InvalidCheckpoint(_) => "invalid_checkpoint",
            Self::Group { code, .. } => code,
        }
    }

    /// What sort of failure it is (mapped to HTTP once, in `http/error.rs`).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Database(e) => keyward_kms::db::error_kind(e),
            Self::NoHead => ErrorKind::Internal,
            Self::Kms(e) => e.kind(),
            Self::Broken { .. } => ErrorKind::Conflict,
            Self::InvalidCheckpoint(_) => ErrorKind::Invalid,
            Self::Group { kind, .. } => *kind,
        }
    }

    /// The same failure for every record of a group write.
    fn for_group(&self) -> Self {
        Self::Group {
            code: self.code(),
            kind: self.kind(),
            message: self.to_string(),
        }
    }
}

/// Why a step run through [`AuditLog::recorded_write`] failed, for a
/// step whose own error cannot hold an audit error (a crate below the
/// server's): its own refusal or failure, the outcome record that could not
/// be staged (the step is undone), or the database around it.
#[derive(Debug, thiserror::Error)]
pub enum StepError<E> {
    #[error(transparent)]
    Effect(E),
    #[error("audit trail: {0}")]
    Audit(#[from] AuditError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// A step's own error: its code, and the database error inside it (a lost
/// race reruns the step).
pub trait StepCause {
    fn code(&self) -> &'static str;
    fn database_error(&self) -> Option<&sqlx::Error>;
}

impl StepCause for keyward_ca::CaError {
    fn code(&self) -> &'static str {
        keyward_ca::CaError::code(self)
    }
    fn database_error(&self) -> Option<&sqlx::Error> {
        keyward_kms::db::TxError::database_error(self)
    }
}

impl StepCause for keyward_kms::KmsError {
    fn code(&self) -> &'static str {
        keyward_kms::KmsError::code(self)
    }
    fn database_error(&self) -> Option<&sqlx::Error> {
        keyward_kms::db::TxError::database_error(self)
    }
}

impl StepCause for Box<keyward_device_provisioning::Refused> {
    fn code(&self) -> &'static str {
        self.error.code()
    }
    fn database_error(&self) -> Option<&sqlx::Error> {
        keyward_kms::db::TxError::database_error(&self.error)
    }
}

impl<E: StepCause> keyward_kms::db::TxError for StepError<E> {
    fn database_error(&self) -> Option<&sqlx::Error> {
        match self {
            Self::Effect(e) => e.database_error(),
            Self::Audit(e) => keyward_kms::db::TxError::database_error(e),
            Self::Database(e) => Some(e),
        }
    }
}

impl<E: StepCause> StepError<E> {
    /// The stable code of the failure (the outcome record's).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Effect(e) => e.code(),
            Self::Audit(_) => "audit_unavailable",
            Self::Database(e) => keyward_kms::db::error_code(e),
        }
    }
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
    /// An operator re-anchored a trail cut back to an older head: what the
    /// verification found and which records were lost (`lost_from` unknown
    /// when the trail was written on after the cut).
    AuditRepaired {
        reason: String,
        problem: String,
        head_seq: i64,
        checkpoint_seq: i64,
        checkpoint_hash: String,
        lost_from: Option<i64>,
        lost_to: i64,
        incidents: u64,
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
    /// A step of an online protocol (`login.start`, `login.lockout`,
    /// `key.activate`, `credential.unlock`, …): `detail` holds identifiers
    /// only (issuer, version, counts), never a challenge, response or token.
    Online {
        action: &'static str,
        target: String,
        detail: serde_json::Value,
    },
    /// A bulk MAC verification batch, answered: counts only, never a
    /// message or a MAC.
    MacBatchVerified {
        summary: crate::wire::macs::Summary,
        error_codes: std::collections::BTreeMap<&'static str, u64>,
        encoding: crate::bulk::Encoding,
        streamed: bool,
    },
    /// A bulk MAC verification batch refused whole (`code`), with its
    /// item count and the limit when it was too large.
    MacBatchRefused {
        code: &'static str,
        encoding: crate::bulk::Encoding,
        too_large: Option<(usize, usize)>,
    },
    /// An intrusion signal ([`crate::security`]): action `security.<kind>`.
    Security {
        kind: crate::security::kind::SecurityKind,
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
            Self::AuditRepaired {
                reason,
                problem,
                head_seq,
                checkpoint_seq,
                checkpoint_hash,
                lost_from,
                lost_to,
                incidents,
            } => (
                "audit.repair".into(),
                "audit_log".into(),
                json!({ "reason": reason, "problem": problem, "head_seq": head_seq,
                        "checkpoint_seq": checkpoint_seq, "checkpoint_hash": checkpoint_hash,
                        "lost_from": lost_from, "lost_to": lost_to,
                        "lost": lost_from.map(|f| lost_to - f + 1),
                        "open_incidents": incidents }),
            ),
            Self::Service { action, detail } => (
                format!("service.{action}"),
                "keyward".into(),
                json!({ "detail": detail }),
            ),
            Self::OperationFailed { action, code } => {
                (action.clone(), "-".into(), json!({ "code": code }))
            }
            Self::Online {
                action,
                target,
                detail,
            } => ((*action).to_owned(), target.clone(), detail.clone()),
            Self::MacBatchVerified {
                summary,
                error_codes,
                encoding,
                streamed,
            } => (
                MAC_BATCH.into(),
                "-".into(),
                json!({ "items": summary.total(), "valid": summary.valid,
                        "invalid": summary.invalid, "error": summary.error,
                        "error_codes": error_codes, "encoding": encoding.as_str(),
                        "streamed": streamed }),
            ),
            Self::MacBatchRefused {
                code,
                encoding,
                too_large,
            } => {
                let mut detail = json!({ "encoding": encoding.as_str(), "code": code });
                if let Some((items, max)) = too_large {
                    detail["items"] = (*items).into();
                    detail["max"] = (*max).into();
                }
                (MAC_BATCH.into(), "-".into(), detail)
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
    /// HMAC of `hash` under the HSM audit key (hex); `None` on records from
    /// before the trail was keyed.
    #[serde(default)]
    pub mac: Option<String>,
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

/// The head row: the last record's seq and hash, where keying began, and
/// the head's MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Head {
    pub seq: i64,
    pub hash: String,
    pub keyed_from: Option<i64>,
    pub mac: Option<String>,
}

/// The audit trail on the key catalog's database, keyed by the HSM. Cheap
/// to clone; clones share what this process has written.
#[derive(Debug, Clone)]
pub struct AuditLog {
    pool: AnyPool,
    kind: DatabaseKind,
    /// For the writer's turn ([`keyward_kms::db::Database::writer_turn`]).
    db: keyward_kms::db::Database,
    metrics: Option<Metrics>,
    kms: Kms,
    /// The newest head this process wrote: the only state the checkpoint
    /// writer puts on the token (never a head read back from the database,
    /// which a writer could have forged).
    written: Arc<Mutex<Option<Head>>>,
    /// Serialises checkpoint writes; holds the seq last checkpointed.
    checkpointed: Arc<tokio::sync::Mutex<i64>>,
    /// Records waiting to be written, and the right to write them (group
    /// commit, see [`AuditLog::append`]).
    queue: Arc<Mutex<Queue>>,
    writer: Arc<tokio::sync::Mutex<()>>,
    /// Wakes the background chainer, once `serve` started one
    /// ([`AuditLog::chain_in_background`]).
    chainer: Arc<std::sync::OnceLock<Arc<tokio::sync::Notify>>>,
}

/// Records in one group write at most: each record's MAC and its head's
/// go to the HSM in one job (at most 256 MACs).
const GROUP_MAX: usize = 128;

#[derive(Debug, Default)]
struct Queue {
    waiting: Vec<Pending>,
    next_ticket: u64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A record waiting for the group write that carries it.
struct Pending {
    ticket: u64,
    entry: Entry,
    reply: tokio::sync::oneshot::Sender<Result<AuditRecord, AuditError>>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("action", &self.entry.action)
            .finish_non_exhaustive()
    }
}

/// What a caller records; the writer adds seq, time, chain and MAC.
#[derive(Debug)]
struct Entry {
    actor: String,
    action: String,
    target: String,
    outcome: String,
    request_id: String,
    detail_json: String,
}

impl AuditLog {
    /// The trail in `kms`'s database (migrations must have run), MACed with
    /// its audit key.
    pub fn new(kms: &Kms, metrics: Option<Metrics>) -> Self {
        Self {
            pool: kms.db().pool().clone(),
            db: kms.db().clone(),
            kind: kms.db().kind(),
            metrics,
            kms: kms.clone(),
            written: Arc::default(),
            checkpointed: Arc::default(),
            queue: Arc::default(),
            writer: Arc::default(),
            chainer: Arc::default(),
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

    /// [`AuditLog::recorded`] for an effect that is one unit of work on the
    /// shared database: `requested` first (fail closed), then `effect` in a
    /// transaction that also stages the outcome record of its success, so
    /// the effect and its outcome commit together or not at all. A failed
    /// effect is rolled back and its outcome appended; staged records are
    /// chained right after the commit.
    pub async fn recorded_write<T, E, F, Fut>(
        &self,
        db: &keyward_kms::db::Database,
        actor: &Actor,
        request_id: &str,
        requested: &AuditEvent,
        mut effect: F,
        settle: impl Fn(Result<&T, &E>) -> (AuditEvent, Outcome),
    ) -> Result<Result<T, E>, AuditError>
    where
        E: keyward_kms::db::TxError + From<AuditError>,
        F: FnMut(keyward_kms::db::Tx) -> Fut,
        Fut: std::future::Future<Output = Result<(keyward_kms::db::Tx, T), E>>,
    {
        let prepare = async { Ok(()) };
        self.recorded_prepared_write(
            db,
            actor,
            request_id,
            requested,
            prepare,
            |tx, ()| effect(tx),
            settle,
        )
        .await
    }

    /// [`AuditLog::recorded_write`] for an effect with HSM work (signing a
    /// certificate, say): `prepare` runs after the `requested` record and
    /// before the transaction opens, and hands `effect` what it made; a
    /// failed `prepare` is settled as a failed effect.
    #[allow(clippy::too_many_arguments)]
    pub async fn recorded_prepared_write<P, T, E, Pre, F, Fut>(
        &self,
        db: &keyward_kms::db::Database,
        actor: &Actor,
        request_id: &str,
        requested: &AuditEvent,
        prepare: Pre,
        mut effect: F,
        settle: impl Fn(Result<&T, &E>) -> (AuditEvent, Outcome),
    ) -> Result<Result<T, E>, AuditError>
    where
        P: Clone,
        E: keyward_kms::db::TxError + From<AuditError>,
        Pre: std::future::Future<Output = Result<P, E>>,
        F: FnMut(keyward_kms::db::Tx, P) -> Fut,
        Fut: std::future::Future<Output = Result<(keyward_kms::db::Tx, T), E>>,
    {
        self.append(actor, requested, Outcome::Requested, request_id)
            .await?;
        let settle = &settle;
        let result = match prepare.await {
            Ok(prepared) => {
                db.write("audited effect", |tx| {
                    let effect = effect(tx, prepared.clone());
                    async move {
                        let (mut tx, value) = effect.await?;
                        let (event, outcome) = settle(Ok(&value));
                        self.stage_in(&mut tx, actor, &event, outcome, request_id)
                            .await?;
                        Ok((tx, value))
                    }
                })
                .await
            }
            Err(e) => Err(e),
        };
        match &result {
            Ok(_) => self.chain_staged().await,
            Err(err) => {
                let (event, outcome) = settle(Err(err));
                if let Err(e) = self.append(actor, &event, outcome, request_id).await {
                    let (action, target, _) = event.parts();
                    tracing::error!(action, target, outcome = outcome.as_str(), error = %e,
                        "operation refused but its outcome record could not be written");
                }
            }
        }
        Ok(result)
    }

    /// Recomputes the chain (and checks `against`, a stored signed
    /// checkpoint, when given) and records that it did (after the check, so
    /// the check covers what came before it): in the chain when it holds;
    /// as an incident outside it when it does not, so a failed check never
    /// moves the head or the checkpoint of a broken trail
    /// ([`repair`]). A record that cannot be written is logged; the report
    /// stands.
    pub async fn verify_and_record(
        &self,
        actor: &Actor,
        request_id: &str,
        against: Option<&SignedCheckpoint>,
    ) -> Result<VerifyReport, AuditError> {
        let report = match against {
            Some(stored) => self.verify_against(stored).await?,
            None => self.verify_chain().await?,
        };
        if report.ok() {
            let event = AuditEvent::AuditVerified {
                records: report.records,
                first_bad: None,
            };
            let _ = self
                .append(actor, &event, Outcome::Success, request_id)
                .await;
        } else if let Err(e) = self.record_incident(actor, request_id, &report).await {
            tracing::error!(error = %e, request_id, "audit incident not recorded");
        }
        Ok(report)
    }

    /// Appends one record and returns it. On error nothing was written.
    ///
    /// Group commit: concurrent appends are written together, one
    /// transaction (one fsync, one head update, one HSM job for all their
    /// MACs) for as many records as were waiting. The caller that finds the
    /// writer free takes every waiting record and writes them in a task of
    /// its own, so a caller that goes away never cuts a group write short;
    /// each caller gets its own record, or the group's error.
    pub async fn append(
        &self,
        actor: &Actor,
        event: &AuditEvent,
        outcome: Outcome,
        request_id: &str,
    ) -> Result<AuditRecord, AuditError> {
        let (action, target, detail) = event.parts();
        let entry = Entry {
            actor: actor.to_string(),
            action: action.clone(),
            target,
            outcome: outcome.as_str().to_owned(),
            request_id: request_id.to_owned(),
            detail_json: detail.to_string(),
        };
        let result = self.written_in_a_group(entry).await;
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

    async fn written_in_a_group(&self, entry: Entry) -> Result<AuditRecord, AuditError> {
        let (reply, mut answer) = tokio::sync::oneshot::channel();
        let ticket = {
            let mut q = lock(&self.queue);
            q.next_ticket += 1;
            let ticket = q.next_ticket;
            q.waiting.push(Pending {
                ticket,
                entry,
                reply,
            });
            ticket
        };
        loop {
            let writer = self.writer.clone().lock_owned().await;
            // A writer before us may have taken and written ours.
            if let Ok(result) = answer.try_recv() {
                return result;
            }
            let group: Vec<Pending> = {
                let mut q = lock(&self.queue);
                let n = q.waiting.len().min(GROUP_MAX);
                q.waiting.drain(..n).collect()
            };
            let ours = group.iter().any(|p| p.ticket == ticket);
            let this = self.clone();
            tokio::spawn(async move {
                let _writer = writer;
                let (entries, replies): (Vec<Entry>, Vec<_>) =
                    group.into_iter().map(|p| (p.entry, p.reply)).unzip();
                match this.try_append(entries).await {
                    Ok(records) => {
                        for (reply, rec) in replies.into_iter().zip(records) {
                            let _ = reply.send(Ok(rec));
                        }
                    }
                    Err(e) => {
                        for reply in replies {
                            let _ = reply.send(Err(e.for_group()));
                        }
                    }
                }
            });
            if ours {
                return answer.await.unwrap_or_else(|_| {
                    Err(AuditError::Group {
                        code: "audit_error",
                        kind: ErrorKind::Internal,
                        message: "the group writer stopped".into(),
                    })
                });
            }
            // Ours was beyond this group: wait for the writer again.
        }
    }

    /// Records that this process wrote `head` (keeps the newest).
    fn note_written(&self, head: Head) {
        let mut w = lock(&self.written);
        if w.as_ref().is_none_or(|h| h.seq < head.seq) {
            *w = Some(head);
        }
    }

    /// Writes `entries`, in order, in one transaction; returns their records.
    async fn try_append(&self, entries: Vec<Entry>) -> Result<Vec<AuditRecord>, AuditError> {
        let _turn = self.db.writer_turn().await?;
        let mut tx = self.begin_chain().await?;
        let (records, head) = self.chain_in(&mut tx, entries).await?;
        tx.commit().await?;
        crate::fault_point!("audit.append.committed");
        self.noted(head);
        Ok(records)
    }

    /// A transaction holding the trail's head: `BEGIN IMMEDIATE` on SQLite;
    /// on PostgreSQL the head row is locked by [`AuditLog::chain_in`].
    async fn begin_chain(&self) -> Result<keyward_kms::db::Tx, AuditError> {
        Ok(match self.kind {
            DatabaseKind::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            DatabaseKind::Postgres => self.pool.begin().await?,
        }
        .into())
    }

    /// Records that this process wrote `head`, once its transaction
    /// committed.
    fn noted(&self, head: Option<Head>) {
        if let Some(head) = head {
            self.note_written(head);
        }
    }

    /// Chains `entries` after the head, in `tx`: sequence numbers, hashes,
    /// the MACs of each record and of the head on it.
    async fn chain_in(
        &self,
        tx: &mut keyward_kms::db::Tx,
        entries: Vec<Entry>,
    ) -> Result<(Vec<AuditRecord>, Option<Head>), AuditError> {
        let head_sql = match self.kind {
            DatabaseKind::Sqlite => "SELECT seq, hash, keyed_from FROM audit_head WHERE id = 1",
            DatabaseKind::Postgres => {
                "SELECT seq, hash, keyed_from FROM audit_head WHERE id = 1 FOR UPDATE"
            }
        };
        let head = sqlx::query(head_sql)
            .fetch_optional(&mut **tx)
            .await?
            .ok_or(AuditError::NoHead)?;
        let head_seq: i64 = head.try_get(0)?;
        let mut prev_hash: String = head.try_get(1)?;
        let keyed_from: Option<i64> = head.try_get(2)?;
        let at_ms = now_ms();
        let mut records = Vec::with_capacity(entries.len());
        for (seq, e) in (head_seq + 1..).zip(entries) {
            let mut rec = AuditRecord {
                seq,
                at_ms,
                actor: e.actor,
                action: e.action,
                target: e.target,
                outcome: e.outcome,
                request_id: e.request_id,
                detail_json: e.detail_json,
                prev_hash,
                hash: String::new(),
                mac: None,
            };
            rec.hash = rec.compute_hash();
            prev_hash = rec.hash.clone();
            records.push(rec);
        }
        let Some(first) = records.first() else {
            return Ok((records, None));
        };
        // The first record written with the key anchors every older one.
        let keyed_from = keyed_from.unwrap_or(first.seq);
        // Each record's MAC and the MAC of the head on it (the head moves
        // one record at a time, the triggers check it), all in one HSM job
        // while the head is locked (the inputs depend on it).
        let inputs: Vec<Vec<u8>> = records
            .iter()
            .flat_map(|r| {
                [
                    keyed::record_input(&r.hash),
                    keyed::head_input(r.seq, keyed_from, &r.hash),
                ]
            })
            .collect();
        let macs = self.kms.audit_macs(inputs).await?;
        if macs.len() != 2 * records.len() {
            return Err(KmsError::Hsm {
                function: "C_Sign",
                problem: "wrong number of audit MACs",
            }
            .into());
        }
        let mut head_mac = String::new();
        for (rec, pair) in records.iter_mut().zip(macs.chunks(2)) {
            rec.mac = Some(hex::encode(pair[0]));
            head_mac = hex::encode(pair[1]);
            sqlx::query(
                "INSERT INTO audit_log (seq, at_ms, actor, action, target, outcome, request_id, \
                 detail_json, prev_hash, hash, mac) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
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
            .bind(rec.mac.as_deref())
            .execute(&mut **tx)
            .await?;
            sqlx::query(
                "UPDATE audit_head SET seq = $1, hash = $2, keyed_from = $3, mac = $4 WHERE id = 1",
            )
            .bind(rec.seq)
            .bind(rec.hash.as_str())
            .bind(keyed_from)
            .bind(head_mac.as_str())
            .execute(&mut **tx)
            .await?;
        }
        let head = records.last().map(|last| Head {
            seq: last.seq,
            hash: last.hash.clone(),
            keyed_from: Some(keyed_from),
            mac: Some(head_mac),
        });
        Ok((records, head))
    }

    /// Stages a record in `tx`, the transaction of the effect it records:
    /// it commits with that effect or not at all. [`AuditLog::flush_staged`]
    /// chains it after the commit; a record a crash left staged is chained
    /// at the next start. A staging that fails fails the effect's
    /// transaction (fail closed).
    pub async fn stage_in(
        &self,
        tx: &mut keyward_kms::db::Tx,
        actor: &Actor,
        event: &AuditEvent,
        outcome: Outcome,
        request_id: &str,
    ) -> Result<(), AuditError> {
        let (action, target, detail) = event.parts();
        sqlx::query(
            "INSERT INTO audit_staged (actor, action, target, outcome, request_id, detail_json) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(actor.to_string())
        .bind(action.as_str())
        .bind(target.as_str())
        .bind(outcome.as_str())
        .bind(request_id)
        .bind(detail.to_string())
        .execute(&mut **tx)
        .await
        .map_err(|e| {
            if let Some(m) = &self.metrics {
                m.audit_write_failures.inc();
            }
            tracing::error!(error = %e, action, request_id, "audit staging failed");
            AuditError::from(e)
        })?;
        Ok(())
    }

    /// Chains every staged record, oldest first, removing each from the
    /// stage in the same transaction (so a record is chained once, whichever
    /// replica flushes); returns how many. Run after a transaction that
    /// staged records commits, and at start-up.
    pub async fn flush_staged(&self) -> Result<u64, AuditError> {
        let mut total = 0u64;
        loop {
            let _writer = self.writer.lock().await;
            let _turn = self.db.writer_turn().await?;
            let mut tx = self.begin_chain().await?;
            // On PostgreSQL the head lock comes first, so two flushers
            // never both take the same staged rows.
            if self.kind == DatabaseKind::Postgres {
                sqlx::query("SELECT seq FROM audit_head WHERE id = 1 FOR UPDATE")
                    .execute(&mut *tx)
                    .await?;
            }
            let rows = sqlx::query(
                "SELECT id, actor, action, target, outcome, request_id, detail_json \
                 FROM audit_staged ORDER BY id LIMIT $1",
            )
            .bind(i64::try_from(GROUP_MAX).unwrap_or(i64::MAX))
            .fetch_all(&mut *tx)
            .await?;
            if rows.is_empty() {
                return Ok(total);
            }
            let mut entries = Vec::with_capacity(rows.len());
            let mut ids = Vec::with_capacity(rows.len());
            for row in &rows {
                ids.push(row.try_get::<i64, _>("id")?);
                entries.push(Entry {
                    actor: row.try_get("actor")?,
                    action: row.try_get("action")?,
                    target: row.try_get("target")?,
                    outcome: row.try_get("outcome")?,
                    request_id: row.try_get("request_id")?,
                    detail_json: row.try_get("detail_json")?,
                });
            }
            // Exactly the rows read: on PostgreSQL (read committed) a row
            // with a lower id whose transaction commits after the read would
            // fall under `id <= last` and be removed without being chained.
            for id in &ids {
                sqlx::query("DELETE FROM audit_staged WHERE id = $1")
                    .bind(*id)
                    .execute(&mut *tx)
                    .await?;
            }
            let (records, head) = self.chain_in(&mut tx, entries).await?;
            tx.commit().await?;
            crate::fault_point!("audit.staged.flushed");
            self.noted(head);
            if let Some(m) = &self.metrics {
                for r in &records {
                    m.audit_records.with_label_values(&[&r.action]).inc();
                }
            }
            total += records.len() as u64;
        }
    }

    /// After a transaction that staged records committed: they are chained
    /// by the background chainer where `serve` runs one (the request does
    /// not wait for the chain's commit and HSM MAC, and a burst of
    /// requests is chained in a few group writes), else here. A record
    /// staged is durable with its effect already; one not chained yet (the
    /// chain failed, or the process died) is chained by the next flush or
    /// at the next start.
    pub async fn chain_staged(&self) {
        if let Some(wake) = self.chainer.get() {
            wake.notify_one();
        } else if let Err(e) = self.flush_staged().await {
            tracing::warn!(code = e.code(), error = %e,
                "audit record committed with its effect; chained at the next flush");
        }
    }

    /// Starts the background chainer ([`AuditLog::chain_staged`]); it also
    /// runs every second while a failure left records staged, and every
    /// minute otherwise.
    pub fn chain_in_background(&self) {
        let wake = Arc::new(tokio::sync::Notify::new());
        if self.chainer.set(wake.clone()).is_err() {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let mut behind = false;
            loop {
                let wait = Duration::from_secs(if behind { 1 } else { 60 });
                let _ = tokio::time::timeout(wait, wake.notified()).await;
                // A task of its own: a panic in one flush (a fault point)
                // does not end the chainer.
                let flush = tokio::spawn({
                    let this = this.clone();
                    async move { this.flush_staged().await }
                });
                behind = match flush.await {
                    Ok(Ok(_)) => false,
                    Ok(Err(e)) => {
                        tracing::warn!(code = e.code(), error = %e,
                            "chaining staged audit records failed; retrying");
                        true
                    }
                    Err(_) => true,
                };
            }
        });
    }

    /// The last `limit` records, newest first (admin listing).
    pub async fn recent(&self, limit: i64) -> Result<Vec<AuditRecord>, AuditError> {
        if self.chainer.get().is_some() {
            self.flush_staged().await?;
        }
        let rows = sqlx::query(concat!(
            "SELECT ",
            record_columns!(),
            " FROM audit_log ORDER BY seq DESC LIMIT $1"
        ))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(record_of).collect::<Result<_, _>>()?)
    }
}

fn record_of(row: &sqlx::any::AnyRow) -> Result<AuditRecord, sqlx::Error> {
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
        mac: row.try_get(10)?,
    })
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
            mac: None,
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

    /// A batch's record keeps one action and one detail shape, answered or
    /// refused: counts and codes, nothing of an item.
    #[test]
    fn mac_batch_events_name_one_action_and_carry_counts() {
        let answered = AuditEvent::MacBatchVerified {
            summary: crate::wire::macs::Summary {
                valid: 2,
                invalid: 1,
                error: 1,
            },
            error_codes: [("key_not_found", 1)].into(),
            encoding: crate::bulk::Encoding::Binary,
            streamed: true,
        };
        let (action, target, detail) = answered.parts();
        assert_eq!((action.as_str(), target.as_str()), (MAC_BATCH, "-"));
        assert_eq!(
            detail,
            serde_json::json!({ "items": 4, "valid": 2, "invalid": 1, "error": 1,
                                "error_codes": { "key_not_found": 1 },
                                "encoding": "binary", "streamed": true })
        );
        let refused = AuditEvent::MacBatchRefused {
            code: "batch_too_large",
            encoding: crate::bulk::Encoding::Json,
            too_large: Some((10, 5)),
        };
        let (action, _, detail) = refused.parts();
        assert_eq!(action, MAC_BATCH);
        assert_eq!(
            detail,
            serde_json::json!({ "encoding": "json", "code": "batch_too_large",
                                "items": 10, "max": 5 })
        );
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
