//! The confirmations table (`confirmations`, migration 2050) and their
//! evidence receipts (`confirmation_evidence`, migration 2051): a submitted
//! transaction as received and as parsed, the stored form of its code, and
//! its state. Writes run inside the caller's transaction (`_in`), so a
//! step's row, its outbox row and its audit record commit together.

use keyward_kms::db::{Database, Tx};
use keyward_kms::types::{DeviceId, IssuerId};
use sqlx::Row;

/// Where a confirmation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Waiting for the device's signed confirmation.
    Pending,
    /// Confirmed and handed to the executor.
    Executed,
    /// Closed: the attempts ran out.
    Failed,
    /// Closed: the signed transaction was not the one received.
    Tampered,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Executed => "executed",
            Self::Failed => "failed",
            Self::Tampered => "tampered",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "executed" => Self::Executed,
            "failed" => Self::Failed,
            "tampered" => Self::Tampered,
            _ => return None,
        })
    }
}

/// A new confirmation's row.
#[derive(Clone)]
pub struct NewConfirmation {
    pub id: String,
    pub device: DeviceId,
    pub issuer: IssuerId,
    pub customer: String,
    pub received: Vec<u8>,
    pub payer_account: String,
    pub payee_account: String,
    pub payee_name: String,
    pub amount_minor: i64,
    pub currency: String,
    pub reference: Option<String>,
    pub payee_flagged: bool,
    pub rendered_sha256: String,
    pub code_mac: Vec<u8>,
    pub max_attempts: u32,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    pub delivery_id: String,
    /// The pre-send check's step-up risks, comma-separated (empty: none).
    pub step_up: String,
}

impl std::fmt::Debug for NewConfirmation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewConfirmation")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// A confirmation as stored (the code's MAC included: for the check only).
#[derive(Clone)]
pub struct Stored {
    pub id: String,
    pub device: String,
    pub issuer: String,
    pub customer: String,
    pub received: Vec<u8>,
    pub code_mac: Vec<u8>,
    pub attempts: u32,
    pub max_attempts: u32,
    pub state: State,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    pub decided_at_ms: Option<i64>,
    pub delivery_id: String,
    pub execution_id: Option<String>,
    pub amount_minor: i64,
    pub currency: String,
    pub payee_flagged: bool,
    /// SHA-256 (hex) of the message the customer was sent.
    pub rendered_sha256: String,
    /// The pre-send check's step-up risks, comma-separated.
    step_up: String,
}

impl Stored {
    /// The pre-send check's step-up risks (`sim_swap`, `contact_changed`).
    pub fn step_up(&self) -> Vec<&str> {
        self.step_up.split(',').filter(|r| !r.is_empty()).collect()
    }
}

impl std::fmt::Debug for Stored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stored")
            .field("id", &self.id)
            .field("state", &self.state)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

/// What a wrong answer did to a pending confirmation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// One more attempt counted; this many are left.
    Left(u32),
    /// That was the last: the confirmation closed as failed.
    Closed,
    /// It was not pending any more (decided meanwhile): nothing written.
    NotPending,
}

pub async fn insert_in(tx: &mut Tx, c: &NewConfirmation) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO confirmations (id, device_id, issuer_id, customer_id, received, \
         payer_account, payee_account, payee_name, amount_minor, currency, reference, \
         payee_flagged, rendered_sha256, code_mac, attempts, max_attempts, state, \
         created_at_ms, expires_at_ms, delivery_id, step_up) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, 0, $15, \
         'pending', $16, $17, $18, $19)",
    )
    .bind(&c.id)
    .bind(c.device.to_string())
    .bind(c.issuer.as_str())
    .bind(&c.customer)
    .bind(&c.received)
    .bind(&c.payer_account)
    .bind(&c.payee_account)
    .bind(&c.payee_name)
    .bind(c.amount_minor)
    .bind(&c.currency)
    .bind(&c.reference)
    .bind(i64::from(c.payee_flagged))
    .bind(&c.rendered_sha256)
    .bind(&c.code_mac)
    .bind(i64::from(c.max_attempts))
    .bind(c.created_at_ms)
    .bind(c.expires_at_ms)
    .bind(&c.delivery_id)
    .bind(&c.step_up)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn stored(r: &sqlx::any::AnyRow) -> Result<Stored, sqlx::Error> {
    let state: String = r.try_get("state")?;
    Ok(Stored {
        id: r.try_get("id")?,
        device: r.try_get("device_id")?,
        issuer: r.try_get("issuer_id")?,
        customer: r.try_get("customer_id")?,
        received: r.try_get("received")?,
        code_mac: r.try_get("code_mac")?,
        attempts: r
            .try_get::<i64, _>("attempts")?
            .try_into()
            .unwrap_or(u32::MAX),
        max_attempts: r.try_get::<i64, _>("max_attempts")?.try_into().unwrap_or(0),
        state: State::parse(&state).ok_or_else(|| sqlx::Error::ColumnDecode {
            index: "state".into(),
            source: "unknown confirmation state".into(),
        })?,
        created_at_ms: r.try_get("created_at_ms")?,
        expires_at_ms: r.try_get("expires_at_ms")?,
        decided_at_ms: r.try_get("decided_at_ms")?,
        delivery_id: r.try_get("delivery_id")?,
        execution_id: r.try_get("execution_id")?,
        amount_minor: r.try_get("amount_minor")?,
        currency: r.try_get("currency")?,
        payee_flagged: r.try_get::<i64, _>("payee_flagged")? != 0,
        rendered_sha256: r.try_get("rendered_sha256")?,
        step_up: r.try_get("step_up")?,
    })
}

/// The confirmation `id`, if any.
pub async fn get(db: &Database, id: &str) -> Result<Option<Stored>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT id, device_id, issuer_id, customer_id, received, code_mac, attempts, \
         max_attempts, state, created_at_ms, expires_at_ms, decided_at_ms, delivery_id, \
         execution_id, amount_minor, currency, payee_flagged, rendered_sha256, step_up \
         FROM confirmations WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(db.pool())
    .await?;
    row.as_ref().map(stored).transpose()
}

/// Counts a wrong answer of a pending confirmation; the one that reaches
/// the limit closes it as failed.
pub async fn count_attempt_in(tx: &mut Tx, id: &str, now_ms: i64) -> Result<Counted, sqlx::Error> {
    let row = sqlx::query(
        "UPDATE confirmations SET attempts = attempts + 1 \
         WHERE id = $1 AND state = 'pending' RETURNING attempts, max_attempts",
    )
    .bind(id)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(row) = row else {
        return Ok(Counted::NotPending);
    };
    let (attempts, max): (i64, i64) = (row.try_get("attempts")?, row.try_get("max_attempts")?);
    if attempts < max {
        return Ok(Counted::Left(u32::try_from(max - attempts).unwrap_or(0)));
    }
    sqlx::query(
        "UPDATE confirmations SET state = 'failed', decided_at_ms = $2 \
         WHERE id = $1 AND state = 'pending'",
    )
    .bind(id)
    .bind(now_ms)
    .execute(&mut **tx)
    .await?;
    Ok(Counted::Closed)
}

/// Closes a pending confirmation as `state` (executed: with the device's
/// signature and the execution's outbox message). `false` if it was not
/// pending any more, or had expired: nothing written.
pub async fn decide_in(
    tx: &mut Tx,
    id: &str,
    state: State,
    signature: Option<&[u8]>,
    execution_id: Option<&str>,
    now_ms: i64,
) -> Result<bool, sqlx::Error> {
    // An execution needs a live confirmation; tampering closes any pending
    // one (the evidence is kept even past its expiry).
    let live = i64::from(state == State::Executed);
    let done = sqlx::query(
        "UPDATE confirmations SET state = $2, decided_at_ms = $3, signature = $4, \
         execution_id = $5 WHERE id = $1 AND state = 'pending' \
         AND ($6 = 0 OR (attempts < max_attempts AND expires_at_ms > $3))",
    )
    .bind(id)
    .bind(state.as_str())
    .bind(now_ms)
    .bind(signature)
    .bind(execution_id)
    .bind(live)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// An executed confirmation's evidence: the signed receipt and what it
/// hashes that the confirmation row does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvidence {
    /// The canonical receipt bytes (`keyward_protocol` `Evidence`).
    pub receipt: Vec<u8>,
    /// The evidence key's DER signature over `receipt`.
    pub signature: Vec<u8>,
    /// The rendered message's UTF-8 bytes (its code used up); empty when
    /// it could not be rendered again identically.
    pub message: Vec<u8>,
    pub signer_serial: String,
}

/// Stores the evidence of confirmation `id`, inside the transaction that
/// marks it executed.
pub async fn insert_evidence_in(
    tx: &mut Tx,
    id: &str,
    e: &StoredEvidence,
    now_ms: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO confirmation_evidence \
         (confirmation_id, receipt, signature, message, signer_serial, created_at_ms) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(id)
    .bind(&e.receipt)
    .bind(&e.signature)
    .bind(&e.message)
    .bind(&e.signer_serial)
    .bind(now_ms)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The evidence of confirmation `id`, if it was executed.
pub async fn evidence(db: &Database, id: &str) -> Result<Option<StoredEvidence>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT receipt, signature, message, signer_serial FROM confirmation_evidence \
         WHERE confirmation_id = $1",
    )
    .bind(id)
    .fetch_optional(db.pool())
    .await?;
    row.map(|r| {
        Ok(StoredEvidence {
            receipt: r.try_get("receipt")?,
            signature: r.try_get("signature")?,
            message: r.try_get("message")?,
            signer_serial: r.try_get("signer_serial")?,
        })
    })
    .transpose()
}
