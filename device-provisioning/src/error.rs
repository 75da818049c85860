//! Errors of provisioning. Each variant has a stable machine-readable code
//! ([`ProvisioningError::code`]) and a kind ([`ProvisioningError::kind`])
//! that the server maps to HTTP/CLI errors; a wrapped kms or CA error keeps
//! its kind (an HSM busy is [`ErrorKind::Busy`] whichever path it took).
//! [`ProvisioningError::is_client_error`] splits refusals (4xx) from trouble
//! on our side (5xx). Messages name fields and ids, never personal data
//! (national ids, contact addresses) or key material.

use std::error::Error as StdError;
use std::fmt;

use keyward_ca::CaError;
use keyward_kms::KmsError;
use keyward_kms::db::TxError;
use keyward_kms::types::{DeviceId, IssuerId};

use crate::intake::ImportReport;
use crate::types::{
    ApplicationId, ApplicationState, BatchId, CustomerId, DeviceState, SecureElement,
};

/// What sort of failure an error is: the workspace's one classification, so a
/// kms or CA error's kind passes through unchanged.
pub use keyward_kms::ErrorKind;

/// Why a provisioning operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ProvisioningError {
    /// Bad input: `field` names what was wrong, never its value.
    #[error("invalid {field}: {reason}")]
    Invalid {
        field: &'static str,
        reason: &'static str,
    },
    #[error("batch {0} already exists")]
    BatchExists(BatchId),
    #[error("batch {0} is not registered")]
    UnknownBatch(BatchId),
    /// An abort asked for a batch that already completed.
    #[error("batch {0} is complete; retire its devices instead")]
    BatchComplete(BatchId),
    /// An abort asked for a batch whose import still holds a live lease.
    #[error("batch {0} is still being imported; abort it once its lease has run out")]
    ImportRunning(BatchId),
    /// This import lost its batch (its lease was taken over by recovery or an
    /// operator's abort): it stopped issuing and did not complete.
    #[error("the import of batch {0} was taken over; its certificates are revoked")]
    ImportAborted(BatchId),
    /// At least one row of a manufacturing file was refused, so none was
    /// registered; the report says which rows and why.
    #[error("batch {} refused: {} of {} rows rejected", .0.batch_id, .0.rejected(), .0.rows.len())]
    BatchRejected(Box<ImportReport>),
    #[error("device {0} is not registered")]
    UnknownDevice(DeviceId),
    /// The device is in the wrong lifecycle state for the operation.
    #[error("device {device} is {state}; the operation needs {needed}")]
    DeviceState {
        device: DeviceId,
        state: DeviceState,
        needed: &'static str,
    },
    #[error("challenge unknown, used or expired")]
    ChallengeInvalid,
    /// The device failed the genuine-device check as often as allowed: it
    /// is parked until an operator resets it.
    #[error("device {0} is locked after too many failed genuine-device checks")]
    CheckLocked(DeviceId),
    /// A CSR's subject serialNumber is not the device id of its row.
    #[error("the CSR's subject serialNumber is not the device id")]
    CsrSubjectMismatch,
    /// The public key is already registered to a device (a key belongs to at
    /// most one device, ever).
    #[error("the public key is already registered to a device")]
    PublicKeyReused,
    #[error("no re-certification is pending for device {0}")]
    NoPendingRecertification(DeviceId),
    #[error("a re-certification is already pending for device {0}")]
    RecertificationPending(DeviceId),
    /// The device certificate is missing, revoked, not the registered one, or
    /// does not chain to the Keyward CA.
    #[error("device certificate not acceptable: {0}")]
    CertificateInvalid(&'static str),
    /// The signature over the challenge does not verify with the certified key.
    #[error("proof of possession of the certified key failed")]
    ProofOfPossession,
    #[error("no init package is pending for device {device} at issuer {issuer}")]
    NoPendingInit { device: DeviceId, issuer: IssuerId },
    /// Original keys were already delivered (and confirmed or refused) for this
    /// issuer: only an operator's reinit allows another package.
    #[error(
        "device {device} has had original keys for issuer {issuer}: an operator reinit is required"
    )]
    ReinitRequired { device: DeviceId, issuer: IssuerId },
    /// The device reported KCVs that differ from the package's: an intrusion
    /// signal (seed CN102004977A). Recorded; the device is not initialised.
    #[error("device {device} reported KCVs that do not match the init package for issuer {issuer}")]
    KcvMismatch { device: DeviceId, issuer: IssuerId },
    #[error("unknown application {0}")]
    UnknownApplication(ApplicationId),
    #[error("application {id} is {state}; the operation needs {needed}")]
    ApplicationState {
        id: ApplicationId,
        state: ApplicationState,
        needed: &'static str,
    },
    /// Maker-checker: the operator who submitted an application may not decide it.
    #[error("an application cannot be approved or rejected by the operator who submitted it")]
    SelfApproval,
    /// Another approved customer has the same national id.
    #[error("a customer with this national id is already registered")]
    CustomerExists,
    #[error("unknown customer {0}")]
    UnknownCustomer(CustomerId),
    #[error("customer {customer} is not approved (application {state})")]
    CustomerNotApproved {
        customer: CustomerId,
        state: ApplicationState,
    },
    #[error("a bound account is not among the customer's accounts")]
    AccountsNotHeld,
    #[error("the device has no {} serial to bind", .0.as_str())]
    SecureElementMissing(SecureElement),
    #[error("device {device} has no confirmed original keys for issuer {issuer}")]
    IssuerNotInitialised { device: DeviceId, issuer: IssuerId },
    #[error("device {0} is bound to another customer")]
    BoundToOtherCustomer(DeviceId),
    #[error("device {device} is already bound for issuer {issuer}")]
    AlreadyBound { device: DeviceId, issuer: IssuerId },
    #[error("no lifecycle transition from {from} to {to} by an operator")]
    InvalidTransition { from: DeviceState, to: DeviceState },
    /// A concurrent change won: read again and retry.
    #[error("conflicting concurrent change: {0}")]
    Conflict(&'static str),
    #[error(transparent)]
    Kms(#[from] KmsError),
    #[error(transparent)]
    Certifier(#[from] CertifierError),
    #[error("provisioning registry: {0}")]
    Database(#[from] sqlx::Error),
    #[error("provisioning registry migration: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// A stored value that does not parse back (the name says which column).
    #[error("provisioning registry holds a malformed {0}")]
    CorruptRecord(&'static str),
}

impl From<keyward_kms::db::ColumnError> for ProvisioningError {
    fn from(e: keyward_kms::db::ColumnError) -> Self {
        match e {
            keyward_kms::db::ColumnError::Read(e) => Self::Database(e),
            keyward_kms::db::ColumnError::Corrupt(what) => Self::CorruptRecord(what),
        }
    }
}

/// A catalog write inside a provisioning unit of work carries its database
/// error in `Kms`: a lost race there is retried too.
impl TxError for ProvisioningError {
    fn database_error(&self) -> Option<&sqlx::Error> {
        match self {
            Self::Database(e) => Some(e),
            Self::Kms(e) => e.database_error(),
            _ => None,
        }
    }
}

impl ProvisioningError {
    /// Stable code for clients, audit outcomes and metrics; never changes once
    /// released.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Invalid { .. } => "invalid_input",
            Self::BatchExists(_) => "batch_exists",
            Self::UnknownBatch(_) => "unknown_batch",
            Self::BatchComplete(_) => "batch_complete",
            Self::ImportRunning(_) => "import_running",
            Self::ImportAborted(_) => "import_aborted",
            Self::BatchRejected(_) => "batch_rejected",
            Self::UnknownDevice(_) => "unknown_device",
            Self::DeviceState { .. } => "device_state",
            Self::ChallengeInvalid => "challenge_invalid",
            Self::CheckLocked(_) => "check_locked",
            Self::CsrSubjectMismatch => "csr_subject_mismatch",
            Self::PublicKeyReused => "public_key_reused",
            Self::NoPendingRecertification(_) => "no_pending_recertification",
            Self::RecertificationPending(_) => "recertification_pending",
            Self::CertificateInvalid(_) => "certificate_invalid",
            Self::ProofOfPossession => "proof_of_possession_failed",
            Self::NoPendingInit { .. } => "no_pending_init",
            Self::ReinitRequired { .. } => "reinit_required",
            Self::KcvMismatch { .. } => "kcv_mismatch",
            Self::UnknownApplication(_) => "unknown_application",
            Self::ApplicationState { .. } => "application_state",
            Self::SelfApproval => "self_approval",
            Self::CustomerExists => "customer_exists",
            Self::UnknownCustomer(_) => "unknown_customer",
            Self::CustomerNotApproved { .. } => "customer_not_approved",
            Self::AccountsNotHeld => "accounts_not_held",
            Self::SecureElementMissing(_) => "secure_element_missing",
            Self::IssuerNotInitialised { .. } => "issuer_not_initialised",
            Self::BoundToOtherCustomer(_) => "device_bound_elsewhere",
            Self::AlreadyBound { .. } => "already_bound",
            Self::InvalidTransition { .. } => "invalid_transition",
            Self::Conflict(_) => "conflict",
            Self::Kms(e) => e.code(),
            Self::Certifier(e) => e.code(),
            Self::Database(e) => keyward_kms::db::error_code(e),
            Self::Migration(_) | Self::CorruptRecord(_) => "database_error",
        }
    }

    /// What sort of failure this is; a kms or CA error keeps its own kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Invalid { .. }
            | Self::BatchRejected(_)
            | Self::ChallengeInvalid
            | Self::CsrSubjectMismatch
            | Self::AccountsNotHeld
            | Self::SecureElementMissing(_) => ErrorKind::Invalid,
            Self::UnknownDevice(_)
            | Self::UnknownBatch(_)
            | Self::UnknownApplication(_)
            | Self::UnknownCustomer(_) => ErrorKind::NotFound,
            Self::CertificateInvalid(_) | Self::ProofOfPossession | Self::SelfApproval => {
                ErrorKind::Forbidden
            }
            Self::BatchExists(_)
            | Self::BatchComplete(_)
            | Self::ImportRunning(_)
            | Self::ImportAborted(_)
            | Self::DeviceState { .. }
            | Self::NoPendingInit { .. }
            | Self::ReinitRequired { .. }
            | Self::KcvMismatch { .. }
            | Self::ApplicationState { .. }
            | Self::CustomerExists
            | Self::CustomerNotApproved { .. }
            | Self::IssuerNotInitialised { .. }
            | Self::BoundToOtherCustomer(_)
            | Self::AlreadyBound { .. }
            | Self::InvalidTransition { .. }
            | Self::CheckLocked(_)
            | Self::PublicKeyReused
            | Self::NoPendingRecertification(_)
            | Self::RecertificationPending(_)
            | Self::Conflict(_) => ErrorKind::Conflict,
            Self::Kms(e) => e.kind(),
            Self::Certifier(e) => e.kind(),
            Self::Database(e) => keyward_kms::db::error_kind(e),
            Self::Migration(_) | Self::CorruptRecord(_) => ErrorKind::Internal,
        }
    }

    /// True when the caller's input or the state of the records refused the
    /// operation (a 4xx), false for trouble on the server's side (a 5xx).
    pub fn is_client_error(&self) -> bool {
        self.kind().is_client()
    }

    /// The row-by-row report of a refused batch.
    pub fn import_report(&self) -> Option<&ImportReport> {
        match self {
            Self::BatchRejected(r) => Some(r),
            _ => None,
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = ProvisioningError> = std::result::Result<T, E>;

/// What the certificate authority behind [`crate::DeviceCertifier`] answered
/// when it did not do what was asked. The cause is kept as a source (never
/// stringified), with the CA's own stable code and kind.
#[derive(Debug)]
pub struct CertifierError {
    code: &'static str,
    kind: ErrorKind,
    source: Box<dyn StdError + Send + Sync + 'static>,
}

impl CertifierError {
    /// `code` is the CA's stable code (e.g. `csr_signature`); `kind` says
    /// what sort of failure it is (the request at fault, the HSM busy, …).
    pub fn new(
        code: &'static str,
        kind: ErrorKind,
        source: impl Into<Box<dyn StdError + Send + Sync + 'static>>,
    ) -> Self {
        Self {
            code,
            kind,
            source: source.into(),
        }
    }
    pub fn code(&self) -> &'static str {
        self.code
    }
    /// The kind of the CA's error, unchanged (an HSM busy stays busy).
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
    pub fn is_client_error(&self) -> bool {
        self.kind.is_client()
    }
}

impl From<CaError> for CertifierError {
    fn from(e: CaError) -> Self {
        Self::new(e.code(), e.kind(), e)
    }
}

impl fmt::Display for CertifierError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "certificate authority: {} ({})", self.source, self.code)
    }
}

impl StdError for CertifierError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source.source()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable_and_classified() {
        assert_eq!(ProvisioningError::SelfApproval.code(), "self_approval");
        assert!(ProvisioningError::SelfApproval.is_client_error());
        let e = ProvisioningError::InvalidTransition {
            from: DeviceState::Manufactured,
            to: DeviceState::Issued,
        };
        assert_eq!(e.code(), "invalid_transition");
        assert!(!ProvisioningError::CorruptRecord("x").is_client_error());
        let c = CertifierError::new("csr_signature", ErrorKind::Invalid, "bad signature");
        assert_eq!(ProvisioningError::from(c).code(), "csr_signature");
        assert_eq!(
            ProvisioningError::UnknownDevice(DeviceId::from_bytes([1; 8])).kind(),
            ErrorKind::NotFound
        );
        assert_eq!(ProvisioningError::SelfApproval.kind(), ErrorKind::Forbidden);
    }

    /// An HSM busy answers "busy" on every path it can reach provisioning by:
    /// from kms directly (challenge randomness, init packages, retiring
    /// keys), and from the CA wrapped in the certifier's error (certifying
    /// during a batch import, certificate lookups, revocation), also when a
    /// certifier reports it without a CA error behind it.
    #[test]
    fn busy_passes_through_every_wrapping() {
        let direct = ProvisioningError::Kms(KmsError::Busy);
        let via_ca = ProvisioningError::from(CertifierError::from(CaError::Kms(KmsError::Busy)));
        let certifier_own = ProvisioningError::from(CertifierError::new(
            "hsm_busy",
            ErrorKind::Busy,
            "queue full",
        ));
        for e in [direct, via_ca, certifier_own] {
            assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
            assert_eq!(e.code(), "hsm_busy", "{e}");
            assert!(!e.is_client_error(), "{e}");
        }
        let closed = ProvisioningError::Certifier(CaError::Kms(KmsError::PoolClosed).into());
        assert_eq!(closed.kind(), ErrorKind::Unavailable);
        let refused = ProvisioningError::Certifier(CaError::CsrSignature.into());
        assert_eq!(refused.kind(), ErrorKind::Invalid);
        assert!(refused.is_client_error());
    }
}
