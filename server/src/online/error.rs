//! [`OnlineError`]: why an online-protocol step failed.

use keyward_ca::CaError;
use keyward_device_provisioning::ProvisioningError;
use keyward_kms::{ErrorKind, KmsError};

use super::Refusal;

/// Why an online-protocol step failed. Device-caused refusals carry a stable
/// code; infrastructure failures keep their cause for the log only.
#[derive(Debug, thiserror::Error)]
pub enum OnlineError {
    /// The protocol refused the request (docs/protocol.md §10 lists the
    /// codes).
    #[error("{0}")]
    Refused(#[from] Refusal),
    /// A key operation failed (the kms error says whether it was the caller).
    #[error(transparent)]
    Kms(#[from] KmsError),
    /// The device registry or the challenge store failed.
    #[error(transparent)]
    Provisioning(#[from] ProvisioningError),
    /// The CA failed (a lockout's revocation).
    #[error(transparent)]
    Ca(#[from] CaError),
    /// The audit trail could not be written (the step is refused).
    #[error("audit trail: {0}")]
    Audit(#[from] crate::audit::AuditError),
    /// The protocol state could not be read or written.
    #[error("online store: {0}")]
    Database(#[from] sqlx::Error),
    /// The group write this step was part of failed (nothing of it was
    /// written); the cause as the writer saw it.
    #[error("online group write failed ({code})")]
    Group { code: &'static str, kind: ErrorKind },
    /// The device was refused too often in its refusal window: answered
    /// 429 `too_many_refusals` until the window ends.
    #[error("too many refused calls from this device; retry after {retry_after_secs} s")]
    Throttled { retry_after_secs: u32 },
    /// The device started more logins in a minute than
    /// `online.login_starts_per_minute`: answered 429 `too_many_logins`
    /// until its minute ends.
    #[error("too many login starts from this device; retry after {retry_after_secs} s")]
    TooManyLogins { retry_after_secs: u32 },
}

impl keyward_kms::db::TxError for OnlineError {
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

impl From<keyward_kms::db::ColumnError> for OnlineError {
    fn from(e: keyward_kms::db::ColumnError) -> Self {
        Self::Kms(e.into())
    }
}

impl OnlineError {
    /// The stable machine-readable code a client sees.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Refused(r) => r.code(),
            Self::Kms(e) => e.code(),
            Self::Provisioning(e) => e.code(),
            Self::Ca(e) => e.code(),
            Self::Audit(_) => "audit_unavailable",
            Self::Database(e) => keyward_kms::db::error_code(e),
            Self::Group { code, .. } => code,
            Self::Throttled { .. } => "too_many_refusals",
            Self::TooManyLogins { .. } => "too_many_logins",
        }
    }

    /// What sort of failure it is (mapped to HTTP once, in `http/error.rs`).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Refused(r) => r.kind(),
            Self::Kms(e) => e.kind(),
            Self::Provisioning(e) => e.kind(),
            Self::Ca(e) => e.kind(),
            Self::Audit(_) => ErrorKind::Unavailable,
            Self::Database(e) => keyward_kms::db::error_kind(e),
            Self::Group { kind, .. } => *kind,
            // A client's doing; its answer is 429 (the code table).
            Self::Throttled { .. } | Self::TooManyLogins { .. } => ErrorKind::Forbidden,
        }
    }
}
