//! [`ChannelError`]: why a channel step failed, with its stable code.

use keyward_kms::{ErrorKind, KmsError};
use keyward_protocol::ProtocolError;

/// Why a channel step failed. The key exchange has one refusal whatever
/// failed (certificate, signature, pre-master), and a channel has one
/// error whatever broke it, so neither tells a prober which check it hit.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// A message that is not the format it claims (`channel_malformed`).
    #[error("channel message refused: {0}")]
    Message(#[from] ProtocolError),
    /// The card offers no version and mode this server speaks.
    #[error("the card offers no protocol version and mode this server speaks")]
    Unsupported,
    /// The key exchange does not prove a registered card or does not carry
    /// a pre-master for this server.
    #[error("the key exchange is refused")]
    Refused,
    /// No open channel (or waiting handshake) under that id: unknown,
    /// expired, closed, or closed now by the record sent.
    #[error("the channel is closed")]
    Closed,
    #[error(transparent)]
    Kms(#[from] KmsError),
    #[error(transparent)]
    Provisioning(#[from] keyward_device_provisioning::ProvisioningError),
    #[error(transparent)]
    Ca(#[from] keyward_ca::CaError),
    #[error("audit trail: {0}")]
    Audit(#[from] crate::audit::AuditError),
    #[error("channel store: {0}")]
    Database(#[from] sqlx::Error),
}

impl keyward_kms::db::TxError for ChannelError {
    fn database_error(&self) -> Option<&sqlx::Error> {
        match self {
            Self::Database(e) => Some(e),
            Self::Kms(KmsError::Database(e)) => Some(e),
            // The audit record is staged in the step's transaction: a race
            // it loses there is the transaction's, retried like any other.
            Self::Audit(crate::audit::AuditError::Database(e)) => Some(e),
            _ => None,
        }
    }
}

impl ChannelError {
    /// The stable machine-readable code a client sees.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Message(e) => e.code(),
            Self::Unsupported => "channel_unsupported",
            Self::Refused => "channel_refused",
            Self::Closed => "channel_closed",
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
            Self::Message(_) | Self::Unsupported => ErrorKind::Invalid,
            Self::Refused | Self::Closed => ErrorKind::Forbidden,
            Self::Kms(e) => e.kind(),
            Self::Provisioning(e) => e.kind(),
            Self::Ca(e) => e.kind(),
            Self::Audit(_) => ErrorKind::Unavailable,
            Self::Database(e) => keyward_kms::db::error_kind(e),
        }
    }
}
