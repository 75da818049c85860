//! [`LoadError`]: why a load step failed, with its stable code.

use keyward_device_provisioning::ProvisioningError;
use keyward_kms::{ErrorKind, KmsError};
use keyward_ledger::Refusal;
use keyward_protocol::ProtocolError;

/// Why a load step failed. What a device causes carries a stable code
/// (docs/protocol.md §13); infrastructure failures keep their cause for the
/// log only. A refused step moves no money of its own: beyond its audit
/// record, only what the signed request proved about earlier loads
/// (their settlement) stands.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The signed bytes break the format (after the signature verified).
    #[error("load message refused: {0}")]
    Message(#[from] ProtocolError),
    /// The ledger's rules refuse the step (e.g. the balance is short).
    #[error("ledger: {0}")]
    Ledger(#[from] Refusal),
    /// The signature does not verify under the session device's key.
    #[error("the load message's signature does not verify")]
    SignatureInvalid,
    /// The message names another device than the session's.
    #[error("the load message is another device's")]
    DeviceMismatch,
    /// The session's device has no binding with the session's issuer, or
    /// the account or customer is not the binding's.
    #[error("the account is not one of the device's customer's accounts")]
    AccountNotHeld,
    /// The amount is over the per-load limit.
    #[error("the amount is over the per-load limit of {max} minor units")]
    AmountOverLimit { max: u64 },
    /// The sequence number is not greater than the device's last: replayed
    /// or out of order.
    #[error("the sequence number is not greater than the device's last")]
    SequenceStale,
    /// The sequence number is the one of an earlier request with other
    /// bytes.
    #[error("the sequence number was used by another request")]
    SequenceConflict,
    /// No such load of this device.
    #[error("no such load")]
    Unknown,
    /// The load was already decided otherwise.
    #[error("the load is already {0}")]
    Finished(&'static str),
    /// The report does not answer the load it names (request, sequence)
    /// or its balance does not add up: the load is voided as doubtful.
    #[error("the report does not match its load")]
    ReportMismatch,
    #[error(transparent)]
    Kms(#[from] KmsError),
    #[error(transparent)]
    Provisioning(#[from] ProvisioningError),
    #[error("audit trail: {0}")]
    Audit(#[from] crate::audit::AuditError),
    #[error("load store: {0}")]
    Database(#[from] sqlx::Error),
}

impl keyward_kms::db::TxError for LoadError {
    fn database_error(&self) -> Option<&sqlx::Error> {
        match self {
            Self::Database(e) => Some(e),
            Self::Kms(e) => keyward_kms::db::TxError::database_error(e),
            Self::Audit(e) => keyward_kms::db::TxError::database_error(e),
            Self::Provisioning(e) => keyward_kms::db::TxError::database_error(e),
            _ => None,
        }
    }
}

impl From<keyward_kms::db::ColumnError> for LoadError {
    fn from(e: keyward_kms::db::ColumnError) -> Self {
        Self::Kms(e.into())
    }
}

impl LoadError {
    /// The stable machine-readable code a client sees.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Message(e) => e.code(),
            Self::Ledger(e) => e.code(),
            Self::SignatureInvalid => "load_signature_invalid",
            Self::DeviceMismatch => "load_device_mismatch",
            Self::AccountNotHeld => "payer_account_not_held",
            Self::AmountOverLimit { .. } => "amount_over_limit",
            Self::SequenceStale => "load_sequence_stale",
            Self::SequenceConflict => "load_sequence_conflict",
            Self::Unknown => "unknown_load",
            Self::Finished(_) => "load_finished",
            Self::ReportMismatch => "load_report_mismatch",
            Self::Kms(e) => e.code(),
            Self::Provisioning(e) => e.code(),
            Self::Audit(_) => "audit_unavailable",
            Self::Database(e) => keyward_kms::db::error_code(e),
        }
    }

    /// What sort of failure it is (mapped to HTTP once, in `http/error.rs`).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Message(_) | Self::AmountOverLimit { .. } => ErrorKind::Invalid,
            Self::Ledger(e) => ledger_kind(e),
            Self::SignatureInvalid
            | Self::DeviceMismatch
            | Self::AccountNotHeld
            | Self::ReportMismatch => ErrorKind::Forbidden,
            Self::Unknown => ErrorKind::NotFound,
            Self::SequenceStale | Self::SequenceConflict | Self::Finished(_) => ErrorKind::Conflict,
            Self::Kms(e) => e.kind(),
            Self::Provisioning(e) => e.kind(),
            Self::Audit(_) => ErrorKind::Unavailable,
            Self::Database(e) => keyward_kms::db::error_kind(e),
        }
    }
}

/// The sort of each ledger refusal: a value that can never be right is
/// invalid, a step the ledger's state refuses is a conflict.
pub fn ledger_kind(r: &Refusal) -> ErrorKind {
    use Refusal as R;
    match r {
        R::AccountNotFound | R::TransferNotFound => ErrorKind::NotFound,
        R::ExceedsBalance
        | R::AlreadyPosted
        | R::AlreadyVoided
        | R::NotPending
        | R::NotDoubtful
        | R::AlreadyReconciled
        | R::ExistsWithDifferentAmount
        | R::ExistsWithDifferentAccounts
        | R::AccountExists => ErrorKind::Conflict,
        // A posting the server built wrong is its bug, never the caller's.
        R::UnbalancedPosting | R::PostingEmpty | R::PostingMixesTransfers => ErrorKind::Internal,
        _ => ErrorKind::Invalid,
    }
}
