//! The gateway's delivery receipts (docs/protocol.md §12.4): an inbound
//! Standard Webhooks v1 request saying a message was delivered or failed.
//! Besides the gateway's `service` client certificate, each receipt must
//! carry a signature under a configured secret (checked in constant time),
//! a timestamp within the window of our clock, and a `webhook-id` never
//! seen before: the ids are kept in table `outbox_receipts` (server
//! migration 2052) for twice the window, past which the timestamp check
//! refuses a replay anyway. The receipt, its id and the caller's audit
//! record commit in one transaction.

use keyward_config::ReceiptsConfig;
use keyward_kms::ErrorKind;
use keyward_kms::db::Tx;
use serde::Deserialize;

use super::senders::{SetupError, WebhookSecret, read_secrets, verify};
use super::{MessageId, ReceiptStatus};

/// Longest `webhook-id` kept (it is named in evidence receipts).
const MAX_ID: usize = 64;
/// Largest receipt body read.
pub const MAX_BODY: usize = 4096;

/// Why a receipt was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReceiptError {
    /// Missing or malformed webhook headers, or no signature verifies.
    #[error("the receipt's webhook signature does not verify")]
    SignatureInvalid,
    #[error("the receipt's webhook-timestamp is outside the accepted window")]
    OutsideWindow,
    #[error("a receipt with this webhook-id was already received")]
    Replayed,
    #[error("no outbox message has this id")]
    UnknownMessage,
    /// The signed body is not `{"message_id", "status"}`.
    #[error("the receipt body is not valid: {0}")]
    Invalid(&'static str),
    #[error("audit trail: {0}")]
    Audit(#[from] crate::audit::AuditError),
    #[error("outbox store: {0}")]
    Database(#[from] sqlx::Error),
}

impl keyward_kms::db::TxError for ReceiptError {
    fn database_error(&self) -> Option<&sqlx::Error> {
        match self {
            Self::Database(e) => Some(e),
            Self::Audit(e) => keyward_kms::db::TxError::database_error(e),
            _ => None,
        }
    }
}

impl ReceiptError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::SignatureInvalid => "receipt_signature_invalid",
            Self::OutsideWindow => "receipt_outside_window",
            Self::Replayed => "receipt_replayed",
            Self::UnknownMessage => "unknown_message",
            Self::Invalid(_) => "receipt_invalid",
            Self::Audit(_) => "audit_unavailable",
            Self::Database(e) => keyward_kms::db::error_code(e),
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::SignatureInvalid => ErrorKind::Forbidden,
            Self::OutsideWindow | Self::Invalid(_) => ErrorKind::Invalid,
            Self::Replayed => ErrorKind::Conflict,
            Self::UnknownMessage => ErrorKind::NotFound,
            Self::Audit(_) => ErrorKind::Unavailable,
            Self::Database(e) => keyward_kms::db::error_kind(e),
        }
    }
}

/// The configured secrets and window; without configuration, nothing
/// verifies.
#[derive(Debug, Clone, Default)]
pub struct Receipts {
    secrets: Vec<WebhookSecret>,
    window_secs: i64,
}

/// A receipt whose signature, window and body checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// The gateway's `webhook-id`: the receipt's id.
    pub receipt_id: String,
    pub message_id: MessageId,
    pub status: ReceiptStatus,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    message_id: String,
    status: String,
}

impl Receipts {
    /// Reads the secret files (a bad one stops start-up).
    pub fn from_config(cfg: Option<&ReceiptsConfig>) -> Result<Self, SetupError> {
        let Some(cfg) = cfg else {
            return Ok(Self::default());
        };
        Ok(Self {
            secrets: read_secrets("receipts", &cfg.secret_files)?,
            window_secs: i64::try_from(cfg.window_secs).unwrap_or(i64::MAX),
        })
    }

    /// Checks a receipt's headers and body at `now_secs`: the signature
    /// first, so nothing of an unsigned body is read.
    pub fn check(
        &self,
        id: Option<&str>,
        timestamp: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
        now_secs: i64,
    ) -> Result<Checked, ReceiptError> {
        let (Some(id), Some(timestamp), Some(signature)) = (id, timestamp, signature) else {
            return Err(ReceiptError::SignatureInvalid);
        };
        let ts: i64 = timestamp
            .parse()
            .map_err(|_| ReceiptError::SignatureInvalid)?;
        if !verify(&self.secrets, id, ts, body, signature) {
            return Err(ReceiptError::SignatureInvalid);
        }
        if now_secs.abs_diff(ts) > self.window_secs.unsigned_abs() {
            return Err(ReceiptError::OutsideWindow);
        }
        let ok_id = (1..=MAX_ID).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !ok_id {
            return Err(ReceiptError::Invalid(
                "webhook-id is 1 to 64 of A-Z a-z 0-9 _ - .",
            ));
        }
        let b: Body = serde_json::from_slice(body)
            .map_err(|_| ReceiptError::Invalid("a JSON object {message_id, status}"))?;
        Ok(Checked {
            receipt_id: id.to_owned(),
            message_id: b
                .message_id
                .parse()
                .map_err(|_| ReceiptError::Invalid("message_id is a message id"))?,
            status: b
                .status
                .parse()
                .map_err(|_| ReceiptError::Invalid("status is delivered or failed"))?,
        })
    }

    /// Records `r` in the caller's transaction: its id, refused if seen
    /// before, and the message's receipt; ids older than twice the window
    /// are forgotten.
    pub async fn record_in(
        &self,
        tx: &mut Tx,
        r: &Checked,
        now_ms: i64,
    ) -> Result<(), ReceiptError> {
        let keep_ms = self.window_secs.saturating_mul(2000);
        sqlx::query("DELETE FROM outbox_receipts WHERE received_at_ms < $1")
            .bind(now_ms.saturating_sub(keep_ms))
            .execute(&mut **tx)
            .await?;
        let fresh = sqlx::query(
            "INSERT INTO outbox_receipts (webhook_id, message_id, status, received_at_ms) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (webhook_id) DO NOTHING",
        )
        .bind(&r.receipt_id)
        .bind(r.message_id.to_string())
        .bind(r.status.as_str())
        .bind(now_ms)
        .execute(&mut **tx)
        .await?
        .rows_affected()
            == 1;
        if !fresh {
            return Err(ReceiptError::Replayed);
        }
        if !super::record_receipt_in(tx, &r.message_id, r.status, &r.receipt_id, now_ms).await? {
            return Err(ReceiptError::UnknownMessage);
        }
        Ok(())
    }
}
