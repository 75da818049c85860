//! Errors of the CA. Each variant has a stable machine-readable code
//! ([`CaError::code`]) that the server maps to HTTP/CLI errors at the edge.
//! Messages never carry key material: a CSR problem is described, never
//! quoted.

pub use keyward_kms::ErrorKind;
use keyward_kms::KmsError;
use keyward_kms::db::TxError;

use crate::profile::Profile;
use crate::registry::Serial;

/// What went wrong in the CA.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The CSR does not parse (or is not a CSR at all).
    #[error("certificate signing request is malformed: {0}")]
    CsrInvalid(&'static str),
    /// The CSR parses but its self-signature does not verify.
    #[error("certificate signing request signature does not verify")]
    CsrSignature,
    /// The subject key is of a type or size the CA does not certify.
    #[error("unsupported subject key: {0}")]
    UnsupportedKey(&'static str),
    /// The request lacks what the profile needs, or carries what it forbids.
    #[error("{profile} certificate: {reason}")]
    ProfileRequirements {
        profile: Profile,
        reason: &'static str,
    },
    /// Bad input from a caller: `field` names what was wrong, never its value.
    #[error("invalid {field}: {reason}")]
    Invalid {
        field: &'static str,
        reason: &'static str,
    },
    #[error("no certificate with serial {0}")]
    UnknownSerial(Serial),
    #[error("certificate {0} is already revoked")]
    AlreadyRevoked(Serial),
    /// A stored CA certificate does not belong to the HSM key of that name, or
    /// the chain does not link up. The CA refuses to start (fail closed).
    #[error("CA certificate {which} does not match its HSM key or chain: {reason}")]
    CaKeyMismatch {
        which: &'static str,
        reason: &'static str,
    },
    /// The issuing CA certificate has expired: nothing more can be issued.
    #[error("the issuing CA certificate has expired")]
    CaExpired,
    /// The CA section of the configuration cannot be used.
    #[error("invalid CA configuration {field}: {reason}")]
    Config {
        field: &'static str,
        reason: &'static str,
    },
    /// rcgen refused to build or sign a certificate or CRL.
    #[error("certificate encoding failed")]
    Encoding(#[source] rcgen::Error),
    /// A certificate the CA just signed does not verify under the CA key
    /// (an HSM fault): it is discarded, never handed out.
    #[error("self-check of a freshly signed {0} failed")]
    SelfCheck(&'static str),
    /// An OCSP response could not be DER-encoded (a malformed request is
    /// not an error: it is answered with `malformedRequest`).
    #[error("OCSP response encoding failed")]
    OcspEncoding(#[source] der::Error),
    #[error(transparent)]
    Kms(#[from] KmsError),
    #[error("CA registry: {0}")]
    Database(#[from] sqlx::Error),
    #[error("CA registry migration: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// A stored value that does not parse back (the name says which column).
    #[error("CA registry holds a malformed {0}")]
    CorruptRecord(&'static str),
    /// A blocking signing task did not complete (panicked or was cancelled).
    #[error("CA signing task failed")]
    Task(#[source] tokio::task::JoinError),
}

impl From<keyward_kms::db::ColumnError> for CaError {
    fn from(e: keyward_kms::db::ColumnError) -> Self {
        match e {
            keyward_kms::db::ColumnError::Read(e) => Self::Database(e),
            keyward_kms::db::ColumnError::Corrupt(what) => Self::CorruptRecord(what),
        }
    }
}

/// A catalog write inside a CA unit of work carries its database error in
/// `Kms`: a lost race there is retried too.
impl TxError for CaError {
    fn database_error(&self) -> Option<&sqlx::Error> {
        match self {
            Self::Database(e) => Some(e),
            Self::Kms(e) => e.database_error(),
            _ => None,
        }
    }
}

impl CaError {
    /// Stable code for clients and metrics; never changes once released.
    pub fn code(&self) -> &'static str {
        match self {
            Self::CsrInvalid(_) => "csr_invalid",
            Self::CsrSignature => "csr_signature",
            Self::UnsupportedKey(_) => "unsupported_key",
            Self::ProfileRequirements { .. } => "profile_requirements",
            Self::Invalid { .. } => "invalid_input",
            Self::UnknownSerial(_) => "unknown_serial",
            Self::AlreadyRevoked(_) => "already_revoked",
            Self::CaKeyMismatch { .. } => "ca_key_mismatch",
            Self::CaExpired => "ca_expired",
            Self::Config { .. } => "ca_config",
            Self::Encoding(_) => "certificate_encoding",
            Self::OcspEncoding(_) => "ocsp_encoding",
            Self::SelfCheck(_) => "ca_self_check",
            Self::Kms(e) => e.code(),
            Self::Database(e) => keyward_kms::db::error_code(e),
            Self::Migration(_) | Self::CorruptRecord(_) => "database_error",
            Self::Task(_) => "internal_error",
        }
    }

    /// What sort of failure this is; a kms error keeps its own kind (an HSM
    /// busy is [`ErrorKind::Busy`] however it reached the CA).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::CsrInvalid(_)
            | Self::CsrSignature
            | Self::UnsupportedKey(_)
            | Self::ProfileRequirements { .. }
            | Self::Invalid { .. } => ErrorKind::Invalid,
            Self::UnknownSerial(_) => ErrorKind::NotFound,
            Self::AlreadyRevoked(_) => ErrorKind::Conflict,
            Self::Kms(e) => e.kind(),
            Self::Database(e) => keyward_kms::db::error_kind(e),
            Self::CaKeyMismatch { .. }
            | Self::CaExpired
            | Self::Config { .. }
            | Self::Encoding(_)
            | Self::SelfCheck(_)
            | Self::OcspEncoding(_)
            | Self::Migration(_)
            | Self::CorruptRecord(_)
            | Self::Task(_) => ErrorKind::Internal,
        }
    }

    /// True when the caller's input was at fault (a 4xx), false for server-side
    /// trouble (a 5xx).
    pub fn is_client_error(&self) -> bool {
        self.kind().is_client()
    }

    pub(crate) fn profile(profile: Profile, reason: &'static str) -> Self {
        Self::ProfileRequirements { profile, reason }
    }
}

/// Result alias of this crate.
pub type Result<T, E = CaError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_busy_passes_through() {
        assert_eq!(CaError::CsrSignature.kind(), ErrorKind::Invalid);
        assert_eq!(CaError::CorruptRecord("x").kind(), ErrorKind::Internal);
        let busy = CaError::Kms(KmsError::Busy);
        assert_eq!(busy.kind(), ErrorKind::Busy);
        assert_eq!(busy.code(), "hsm_busy");
        assert!(!busy.is_client_error());
        assert_eq!(
            CaError::Kms(KmsError::PoolClosed).kind(),
            ErrorKind::Unavailable
        );
        assert!(CaError::AlreadyRevoked(Serial::random()).is_client_error());
    }
}
