//! [`OnlineError`]: why an online-protocol step failed.

use keyward_ca::CaError;
use keyward_device_provisioning::ProvisioningError;
use keyward_kms::{ErrorKind, KmsError};

/// Why an online-protocol step failed. Device-caused refusals carry a stable
/// code; infrastructure failures keep their cause for the log only.
#[derive(Debug, thiserror::Error)]
pub enum OnlineError {
    /// The protocol refused the request: `code` is stable
    /// (docs/protocol.md §10 lists them), `message` says why without quoting
    /// the input.
    #[error("{message}")]
    Refused {
        kind: ErrorKind,
        code: &'static str,
        message: &'static str,
    },
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
}

impl keyward_kms::db::TxError for OnlineError {
    fn database_error(&self) -> Option<&sqlx::Error> {
        match self {
            Self::Database(e) => Some(e),
            Self::Kms(KmsError::Database(e)) => Some(e),
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
    /// A refusal with a stable code.
    pub fn refused(kind: ErrorKind, code: &'static str, message: &'static str) -> Self {
        Self::Refused {
            kind,
            code,
            message,
        }
    }

    /// A malformed request field (400).
    pub fn invalid(code: &'static str, message: &'static str) -> Self {
        Self::refused(ErrorKind::Invalid, code, message)
    }

    /// A refused identity or state (403).
    pub fn forbidden(code: &'static str, message: &'static str) -> Self {
        Self::refused(ErrorKind::Forbidden, code, message)
    }

    /// The stable machine-readable code a client sees.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Refused { code, .. } => code,
            Self::Kms(e) => e.code(),
            Self::Provisioning(e) => e.code(),
            Self::Ca(e) => e.code(),
            Self::Audit(_) => "audit_unavailable",
            Self::Database(e) => keyward_kms::db::error_code(e),
        }
    }

    /// What sort of failure it is (mapped to HTTP once, in `http/error.rs`).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Refused { kind, .. } => *kind,
            Self::Kms(e) => e.kind(),
            Self::Provisioning(e) => e.kind(),
            Self::Ca(e) => e.kind(),
            Self::Audit(_) => ErrorKind::Unavailable,
            Self::Database(e) => keyward_kms::db::error_kind(e),
        }
    }
}
