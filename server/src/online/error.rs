//! [`OnlineError`]: why an online-protocol step failed.

use keyward_kms::{ErrorKind, KmsError};

/// Why an online-protocol step failed. Device-caused refusals carry a stable
/// code; infrastructure failures keep their cause for the log only.
#[derive(Debug, thiserror::Error)]
pub enum OnlineError {
    /// A key operation failed (the kms error says whether it was the caller).
    #[error(transparent)]
    Kms(#[from] KmsError),
    /// The protocol state could not be read or written.
    #[error("online store: {0}")]
    Database(#[from] sqlx::Error),
}

impl OnlineError {
    /// The stable machine-readable code a client sees.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Kms(e) => e.code(),
            Self::Database(e) => keyward_kms::db::error_code(e),
        }
    }

    /// What sort of failure it is (mapped to HTTP once, in `http/error.rs`).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Kms(e) => e.kind(),
            Self::Database(e) => keyward_kms::db::error_kind(e),
        }
    }
}
