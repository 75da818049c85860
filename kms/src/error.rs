//! Errors of the kms crate. Each variant has a stable machine-readable code
//! ([`KmsError::code`]) that the server maps to HTTP/CLI errors at the edge.
//! Messages never carry key material, PINs or MAC values.

use crate::types::{DeviceId, IssuerId, KeyVersion};

/// What went wrong below the server.
#[derive(Debug, thiserror::Error)]
pub enum KmsError {
    /// The PKCS#11 module could not be loaded or initialised.
    #[error("cannot load PKCS#11 module {module}: {reason}")]
    Module { module: String, reason: String },
    /// No token with the configured label is present.
    #[error("no HSM token labelled {0:?}")]
    TokenNotFound(String),
    /// The token refused the PIN (the PIN itself is never shown).
    #[error("HSM login failed: {0}")]
    Login(String),
    /// A mechanism the configured issuers need is not offered by the token.
    #[error("HSM lacks mechanism {name} (0x{number:X}) needed for {purpose}")]
    MechanismMissing {
        name: &'static str,
        number: u64,
        purpose: &'static str,
    },
    /// A PKCS#11 call failed; `function` and `rv` name the call and return code.
    #[error("HSM call {function} failed: {rv}")]
    Hsm { function: String, rv: String },
    /// An object handle outlived its session epoch (HSM restart); the caller
    /// looks the key up or derives it again.
    #[error("HSM object handle is stale after a reconnect")]
    Stale,
    /// All HSM workers are busy and the queue is full: shed load.
    #[error("HSM queue is full")]
    Busy,
    /// The HSM worker pool has stopped.
    #[error("HSM worker pool is shut down")]
    PoolClosed,
    /// A named key object is missing from the token.
    #[error("key {0:?} is not on the HSM token")]
    KeyMissing(String),

    #[error("unknown issuer {0}")]
    UnknownIssuer(IssuerId),
    #[error("issuer {0} already exists")]
    IssuerExists(IssuerId),
    #[error("no working key version {version} for device {device} at issuer {issuer}")]
    UnknownKeyVersion {
        issuer: IssuerId,
        device: DeviceId,
        version: KeyVersion,
    },
    #[error("key version {version} is {state}, not usable")]
    KeyVersionNotUsable { version: KeyVersion, state: String },
    /// A pending version older than the active one: activating it would roll
    /// the device back to keys it has already replaced.
    #[error("key version {version} is older than the active version {active}")]
    KeyVersionSuperseded {
        version: KeyVersion,
        active: KeyVersion,
    },
    #[error("KCV mismatch for key version {0}")]
    KcvMismatch(KeyVersion),
    /// Bad input from a caller: `field` names what was wrong, never its value.
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("message of {len} bytes exceeds the {max}-byte limit")]
    MessageTooLong { len: usize, max: usize },
    #[error("algorithm {algorithm} does not apply to {family} keys")]
    AlgorithmFamily {
        algorithm: &'static str,
        family: &'static str,
    },
    #[error("challenge unknown, used or expired")]
    ChallengeInvalid,

    #[error("key catalog: {0}")]
    Database(#[from] sqlx::Error),
    #[error("key catalog migration: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// A file or directory holding catalog data (national ids, contacts, key
    /// metadata) that other users of the machine may read.
    #[error(
        "{} is accessible to other users (mode {mode:03o}); fix it with `chmod {fix} {}` \
         (Keyward creates it {fix})",
        path.display(),
        path.display()
    )]
    InsecurePermissions {
        path: std::path::PathBuf,
        mode: u32,
        fix: &'static str,
    },
    /// A stored value that does not parse back (the name says which column):
    /// the database was edited by hand or by a newer release.
    #[error("key catalog holds a malformed {0}")]
    CorruptRecord(&'static str),
}

impl KmsError {
    /// Stable code for clients and metrics; never changes once released.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Module { .. } => "hsm_module",
            Self::TokenNotFound(_) => "hsm_token_not_found",
            Self::Login(_) => "hsm_login",
            Self::MechanismMissing { .. } => "hsm_mechanism_missing",
            Self::Hsm { .. } => "hsm_error",
            Self::Stale => "hsm_error",
            Self::Busy => "hsm_busy",
            Self::PoolClosed => "hsm_unavailable",
            Self::KeyMissing(_) => "key_missing",
            Self::UnknownIssuer(_) => "unknown_issuer",
            Self::IssuerExists(_) => "issuer_exists",
            Self::UnknownKeyVersion { .. } => "unknown_key_version",
            Self::KeyVersionNotUsable { .. } => "key_version_not_usable",
            Self::KeyVersionSuperseded { .. } => "key_version_superseded",
            Self::KcvMismatch(_) => "kcv_mismatch",
            Self::Invalid { .. } => "invalid_input",
            Self::MessageTooLong { .. } => "message_too_long",
            Self::AlgorithmFamily { .. } => "algorithm_family_mismatch",
            Self::ChallengeInvalid => "challenge_invalid",
            Self::InsecurePermissions { .. } => "insecure_permissions",
            Self::Database(_) | Self::Migration(_) | Self::CorruptRecord(_) => "database_error",
        }
    }

    /// True when the caller's input was at fault (a 4xx), false for server-side
    /// trouble (a 5xx).
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            Self::UnknownIssuer(_)
                | Self::IssuerExists(_)
                | Self::UnknownKeyVersion { .. }
                | Self::KeyVersionNotUsable { .. }
                | Self::KeyVersionSuperseded { .. }
                | Self::KcvMismatch(_)
                | Self::Invalid { .. }
                | Self::MessageTooLong { .. }
                | Self::AlgorithmFamily { .. }
                | Self::ChallengeInvalid
        )
    }

    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            reason: reason.into(),
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = KmsError> = std::result::Result<T, E>;
