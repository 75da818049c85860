//! Errors of the kms crate. Each variant has a stable machine-readable code
//! ([`KmsError::code`]) and a kind ([`KmsError::kind`], an [`ErrorKind`]) that
//! the edge maps to HTTP/CLI errors with one match; the crates above give
//! their errors the same [`ErrorKind`], and a wrapped error keeps its kind.
//! Messages never carry key material, PINs or MAC values.

use crate::db::ColumnError;
use crate::hsm::Rv;
use crate::types::{DeviceId, IssuerId, KeyVersion};

/// What sort of failure an error is, for the edge to answer with one match
/// (a status code, a retry hint) whatever crate the error comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The caller's input is wrong; retrying it unchanged fails again.
    Invalid,
    /// What the caller named does not exist.
    NotFound,
    /// The request clashes with the current state (exists already, wrong state).
    Conflict,
    /// The caller may not do this, or failed a check of its identity.
    Forbidden,
    /// At capacity: retry shortly.
    Busy,
    /// A dependency (HSM, database) is not reachable right now: retry later.
    Unavailable,
    /// Our fault (a bug, a corrupt record, a misconfiguration).
    Internal,
    /// This HSM cannot do it: the operation needs a vendor mechanism the
    /// token does not have or the configuration does not name (a 501; never
    /// a software fallback with a bank-side secret).
    Unsupported,
}

impl ErrorKind {
    /// Whether the caller was at fault (a 4xx), rather than the server.
    pub fn is_client(self) -> bool {
        matches!(
            self,
            Self::Invalid | Self::NotFound | Self::Conflict | Self::Forbidden
        )
    }

    /// Stable lower-case name, for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Invalid => "invalid",
            Self::NotFound => "not_found",
            Self::Conflict => "conflict",
            Self::Forbidden => "forbidden",
            Self::Busy => "busy",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
            Self::Unsupported => "unsupported",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

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
    /// An operation this HSM cannot perform inside the token (PIN
    /// translation on SoftHSM): the caller gets a 501, never a host-side
    /// fallback.
    #[error("the HSM cannot {operation}: {reason}")]
    Unsupported {
        operation: &'static str,
        reason: &'static str,
    },
    /// The token refused a mechanism at call time (`CKR_MECHANISM_INVALID`).
    #[error("HSM refused the mechanism of {function}")]
    MechanismRejected { function: &'static str },
    /// A PKCS#11 call failed with a return value that means neither busy nor
    /// gone (see `hsm::rv::classify`).
    #[error("HSM call {function} failed: {rv}")]
    Pkcs11 { function: &'static str, rv: Rv },
    /// The token is at its limit (sessions, memory): retry shortly.
    #[error("HSM busy: {function} returned {rv}")]
    HsmBusy { function: &'static str, rv: Rv },
    /// The token is gone or not usable (removed, device error, logged out).
    #[error("HSM unavailable: {function} returned {rv}")]
    HsmUnavailable { function: &'static str, rv: Rv },
    /// The HSM or its worker gave no usable answer (no return value to
    /// show): `problem` says what was wrong, never with key bytes.
    #[error("HSM call {function}: {problem}")]
    Hsm {
        function: &'static str,
        problem: &'static str,
    },
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
    /// A confirmation of a version that is no longer waiting for one
    /// (another confirmation, on any replica, got there first).
    #[error("key version {version} is {state}, not pending")]
    KeyVersionNotPending { version: KeyVersion, state: String },
    /// The device has a pending offer already (version named): one offer at
    /// a time per (issuer, device). Internal: the offer is sent again.
    #[error("key version {0} is already offered")]
    OfferPending(KeyVersion),
    /// A secure-channel input the HSM would not take: a pre-master that does
    /// not unwrap (whatever the reason: padding, length, value) or a record
    /// that does not open. One variant, one message, so the answer tells a
    /// peer nothing about which check failed.
    #[error("secure channel refused")]
    ChannelRefused,
    /// Bad input from a caller: `field` names what was wrong, never its value.
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// A device's account field decrypted and unpadded to bytes that are not
    /// UTF-8 text: the device sent something other than an account number.
    #[error("a decrypted account field is not UTF-8 text")]
    AccountFieldNotUtf8,
    #[error("message of {len} bytes exceeds the {max}-byte limit")]
    MessageTooLong { len: usize, max: usize },
    #[error("algorithm {algorithm} does not apply to {family} keys")]
    AlgorithmFamily {
        algorithm: &'static str,
        family: &'static str,
    },
    /// A bulk request over [`crate::service::MAX_BULK_ITEMS`]; nothing was checked.
    #[error("{len} items exceed the {max}-item limit of one bulk request")]
    TooManyItems { len: usize, max: usize },

    #[error("key catalog: {0}")]
    Database(#[from] sqlx::Error),
    #[error("key catalog migration: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
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
            Self::MechanismMissing { .. }
            | Self::MechanismRejected { .. }
            | Self::Unsupported { .. } => "hsm_mechanism_missing",
            Self::Pkcs11 { .. } | Self::Hsm { .. } => "hsm_error",
            Self::HsmBusy { .. } => "hsm_busy",
            Self::HsmUnavailable { .. } => "hsm_unavailable",
            // The HSM reconnected under the call more than its own retry
            // covers: the request may be sent again.
            Self::Stale => "hsm_unavailable",
            Self::Busy => "hsm_busy",
            Self::PoolClosed => "hsm_unavailable",
            Self::KeyMissing(_) => "key_missing",
            Self::UnknownIssuer(_) => "unknown_issuer",
            Self::IssuerExists(_) => "issuer_exists",
            Self::UnknownKeyVersion { .. } => "unknown_key_version",
            Self::KeyVersionNotUsable { .. } => "key_version_not_usable",
            Self::KeyVersionSuperseded { .. } => "key_version_superseded",
            Self::KcvMismatch(_) => "kcv_mismatch",
            Self::KeyVersionNotPending { .. } => "key_version_not_pending",
            Self::OfferPending(_) => "offer_pending",
            Self::ChannelRefused => "channel_refused",
            Self::Invalid { .. } => "invalid_input",
            Self::AccountFieldNotUtf8 => "account_field_not_utf8",
            Self::MessageTooLong { .. } => "message_too_long",
            Self::AlgorithmFamily { .. } => "algorithm_family_mismatch",
            Self::TooManyItems { .. } => "too_many_items",
            Self::Database(e) => crate::db::error_code(e),
            Self::Migration(_) | Self::CorruptRecord(_) => "database_error",
        }
    }

    /// What sort of failure this is. Refusals of the caller's input are
    /// [`ErrorKind::Invalid`] unless a more precise kind applies (today's
    /// 400s); a full queue or a token at its limit is [`ErrorKind::Busy`]; a
    /// token or pool that is gone is [`ErrorKind::Unavailable`].
    pub fn kind(&self) -> ErrorKind {
        use ErrorKind as K;
        match self {
            Self::UnknownIssuer(_) | Self::UnknownKeyVersion { .. } => K::NotFound,
            Self::ChannelRefused => K::Forbidden,
            Self::IssuerExists(_) | Self::KeyVersionNotPending { .. } | Self::OfferPending(_) => {
                K::Conflict
            }
            Self::KeyVersionNotUsable { .. }
            | Self::KeyVersionSuperseded { .. }
            | Self::KcvMismatch(_)
            | Self::Invalid { .. }
            | Self::AccountFieldNotUtf8
            | Self::MessageTooLong { .. }
            | Self::AlgorithmFamily { .. }
            | Self::TooManyItems { .. } => K::Invalid,
            Self::Busy | Self::HsmBusy { .. } => K::Busy,
            Self::Unsupported { .. } => K::Unsupported,
            Self::Database(e) => crate::db::error_kind(e),
            Self::PoolClosed
            | Self::HsmUnavailable { .. }
            | Self::Stale
            | Self::Module { .. }
            | Self::TokenNotFound(_)
            | Self::Login(_) => K::Unavailable,
            Self::MechanismMissing { .. }
            | Self::MechanismRejected { .. }
            | Self::Pkcs11 { .. }
            | Self::Hsm { .. }
            | Self::KeyMissing(_)
            | Self::Migration(_)
            | Self::CorruptRecord(_) => K::Internal,
        }
    }

    /// True when the caller's input was at fault (a 4xx), false for server-side
    /// trouble (a 5xx). The same as a kind of invalid, not found, conflict or
    /// forbidden.
    pub fn is_client_error(&self) -> bool {
        matches!(
            self.kind(),
            ErrorKind::Invalid | ErrorKind::NotFound | ErrorKind::Conflict | ErrorKind::Forbidden
        )
    }

    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            reason: reason.into(),
        }
    }
}

impl From<ColumnError> for KmsError {
    fn from(e: ColumnError) -> Self {
        match e {
            ColumnError::Read(e) => Self::Database(e),
            ColumnError::Corrupt(what) => Self::CorruptRecord(what),
        }
    }
}

impl crate::db::TxError for KmsError {
    fn database_error(&self) -> Option<&sqlx::Error> {
        match self {
            Self::Database(e) => Some(e),
            _ => None,
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = KmsError> = std::result::Result<T, E>;
