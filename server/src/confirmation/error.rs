//! [`ConfirmError`]: why a confirmation step failed, with its stable code.

use keyward_device_provisioning::ProvisioningError;
use keyward_kms::{ErrorKind, KmsError};
use keyward_protocol::ProtocolError;

/// Why a confirmation step failed. The refusals a device causes carry a
/// stable code (docs/protocol.md §11); infrastructure failures keep their
/// cause for the log only.
#[derive(Debug, thiserror::Error)]
pub enum ConfirmError {
    /// The transaction as submitted breaks a rule of the signed format.
    #[error("transaction refused: {0}")]
    Transaction(#[from] ProtocolError),
    /// The session's device has no binding with the session's issuer.
    #[error("the device is not bound to a customer of this issuer")]
    NotBound,
    /// The payer account is not one of the binding's accounts.
    #[error("the payer account is not one of the device's accounts")]
    AccountNotHeld,
    /// No such confirmation of this device.
    #[error("no such confirmation")]
    Unknown,
    /// The code is wrong, expired or used, or the signature does not
    /// verify: one answer, so a failure never says which check failed.
    #[error("the confirmation was refused")]
    Refused,
    /// The signed transaction is not the one received: closed for good.
    #[error("the signed transaction differs from the one received")]
    Tampered,
    /// A pre-send rule whose policy is `refuse` found this risk: no code
    /// was sent.
    #[error("the confirmation was refused before sending its code")]
    RefusedPreSend(super::presend::Risk),
    /// The SIM-swap endpoint did not answer usably: fails closed.
    #[error("the pre-send check is unavailable ({0})")]
    PresendUnavailable(&'static str),
    /// Evidence asked of a confirmation that was not executed.
    #[error("only an executed confirmation has an evidence receipt")]
    NoEvidence,
    /// The evidence could not be made or read back (our fault).
    #[error("evidence receipt: {0}")]
    Evidence(&'static str),
    #[error(transparent)]
    Ca(#[from] keyward_ca::CaError),
    #[error(transparent)]
    Kms(#[from] KmsError),
    #[error(transparent)]
    Provisioning(#[from] ProvisioningError),
    #[error("audit trail: {0}")]
    Audit(#[from] crate::audit::AuditError),
    #[error("confirmation store: {0}")]
    Database(#[from] sqlx::Error),
}

impl keyward_kms::db::TxError for ConfirmError {
    fn database_error(&self) -> Option<&sqlx::Error> {
        match self {
            Self::Database(e) => Some(e),
            Self::Kms(e) => keyward_kms::db::TxError::database_error(e),
            Self::Audit(e) => keyward_kms::db::TxError::database_error(e),
            Self::Provisioning(e) => keyward_kms::db::TxError::database_error(e),
            Self::Ca(e) => keyward_kms::db::TxError::database_error(e),
            _ => None,
        }
    }
}

impl From<keyward_kms::db::ColumnError> for ConfirmError {
    fn from(e: keyward_kms::db::ColumnError) -> Self {
        Self::Kms(e.into())
    }
}

impl ConfirmError {
    /// The stable machine-readable code a client sees.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Transaction(e) => e.code(),
            Self::NotBound => "issuer_not_bound",
            Self::AccountNotHeld => "payer_account_not_held",
            Self::Unknown => "unknown_confirmation",
            Self::Refused => "confirmation_refused",
            Self::Tampered => "confirmation_tampered",
            Self::NoEvidence => "evidence_not_available",
            Self::RefusedPreSend(_) => "refused_pre_send",
            Self::PresendUnavailable(_) => "presend_check_unavailable",
            Self::Evidence(_) => "internal_error",
            Self::Ca(e) => e.code(),
            Self::Kms(e) => e.code(),
            Self::Provisioning(e) => e.code(),
            Self::Audit(_) => "audit_unavailable",
            Self::Database(e) => keyward_kms::db::error_code(e),
        }
    }

    /// What sort of failure it is (mapped to HTTP once, in `http/error.rs`).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Transaction(_) => ErrorKind::Invalid,
            Self::NotBound | Self::AccountNotHeld | Self::Refused | Self::RefusedPreSend(_) => {
                ErrorKind::Forbidden
            }
            Self::PresendUnavailable(_) => ErrorKind::Unavailable,
            Self::Unknown => ErrorKind::NotFound,
            Self::Tampered | Self::NoEvidence => ErrorKind::Conflict,
            Self::Evidence(_) => ErrorKind::Internal,
            Self::Ca(e) => e.kind(),
            Self::Kms(e) => e.kind(),
            Self::Provisioning(e) => e.kind(),
            Self::Audit(_) => ErrorKind::Unavailable,
            Self::Database(e) => keyward_kms::db::error_kind(e),
        }
    }
}
