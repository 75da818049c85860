//! Device provisioning (seed CN102004977A steps 1-2, CN101957958A): the
//! domain layer between the factory and an issued device. Manufacturing
//! intake with device certificates, the genuine-device check, original keys
//! through the init package, customer registration with maker-checker
//! review, PSAM/ESAM binding to a customer per issuer, and the device
//! lifecycle.
//!
//! [`Provisioning`] is the async API the server's admin routes call (`kwctl`
//! reaches it only through those routes, over the admin API; it links this
//! crate for its domain types and the manifest format, never the service).
//! Every state-changing operation returns a [`Decision`]: the value
//! with an [`AuditNote`] (actor, action, target, outcome, details), or a
//! [`Refused`] holding the note and the typed [`ProvisioningError`] (stable
//! [`ProvisioningError::code`], [`ProvisioningError::kind`]). The
//! server writes the note to its audit trail; this crate keeps no audit table.
//!
//! ```text
//! import_batch ─▶ manufactured ─begin_check/complete_check─▶ verified
//!   ─init_package/confirm_init─▶ initialised ─bind─▶ issued ⇄ suspended
//!   (any state) ─transition─▶ retired (certificate revoked)
//! apply ─▶ submitted ─approve (another operator)─▶ approved customer
//!                    └reject─▶ rejected ─correct_and_resubmit / close
//! ```
//!
//! # Layout
//! - [`types`]: validated ids and values ([`BatchId`], [`OperatorId`],
//!   [`DeviceState`] and its edges, [`CustomerApplication`], the redacted
//!   [`NationalId`] and [`Contact`], …).
//! - [`intake`]: the manifest format, all-or-nothing batch import, the
//!   row-by-row [`ImportReport`].
//! - [`challenges`]: [`Challenges`], challenges by id for every purpose
//!   (bounded outstanding per device, single use, expiry), the one mechanism
//!   the genuine-device check and login's random-auth call.
//! - [`check`]: HSM-random challenges and proof of possession of the
//!   certified key (ECDSA P-256 / RSA PKCS#1, SHA-256, software
//!   verification), with an attempt limit per device.
//! - [`recertify`]: a new certificate for a new key of a registered device,
//!   requested by one operator and approved by another; every other
//!   certificate of the device is revoked.
//! - [`recovery`]: import leases, recovery of imports whose process died,
//!   an operator's abort, and the OCSP standing of device certificates
//!   ([`keyward_ca::ocsp::CertStanding`]).
//! - [`init`]: init packages (`Kms::init_package`) per (device, issuer),
//!   KCV confirmation, operator reinit.
//! - [`customers`]: applications, review, approve/reject/resubmit/close.
//! - [`binding`]: binding a device's secure element(s) to a customer.
//! - [`lifecycle`]: the registry's read side and operator transitions.
//! - [`certifier`]: [`DeviceCertifier`], the CA as provisioning uses it, and
//!   its implementation for [`keyward_ca::Ca`].
//! - [`audit`]: [`AuditNote`], [`Decision`], [`Refused`].
//! - `store/`: every SQL statement of the crate, one file per table group
//!   (`batches`, `devices`, `checks`, `inits`, `customers`, `bindings`), each
//!   write one transaction under the key catalog's rules; `mod.rs` holds the
//!   migrations (`migrations/{sqlite,postgres}`, versions 3001+, tables
//!   `prov_*`). The domain modules above hold no SQL.
//! - [`error`]: [`ProvisioningError`], [`CertifierError`], [`ErrorKind`].
//!
//! Must not: hold or log key bytes (only the KCVs an init package announced
//! are stored); log or audit a national id or contact address; move a device
//! along an evidence edge without its evidence; hold a database transaction
//! across an HSM or CA call.

pub mod audit;
pub mod binding;
pub mod certifier;
pub mod challenges;
pub mod check;
pub mod customers;
pub mod error;
pub mod fault;
pub mod init;
pub mod intake;
pub mod lifecycle;
pub mod recertify;
pub mod recovery;
mod store;
pub mod types;

use std::sync::Arc;
use std::time::Duration;

use keyward_kms::Kms;

pub use audit::{
    Action, Actor, AuditNote, Audited, Decision, Kept, Outcome, Prepared, RedactedText, Refused,
};
pub use binding::{BindRequest, Binding};
pub use certifier::{
    CertificateStatus, DeviceCertificate, DeviceCertifier, DeviceCsr, DeviceKeyKind, RevokeReason,
    SignedDeviceCertificate,
};
pub use challenges::{ChallengeId, ChallengePurpose, Challenges, IssuedChallenge};
pub use check::{
    CHALLENGE_LEN, Challenge, CompleteCheck, DEFAULT_CHALLENGE_TTL, DEFAULT_CHECK_ATTEMPT_LIMIT,
};
pub use customers::{ApplicationDecision, ApplicationView, Approval, Customer};
pub use error::{CertifierError, ErrorKind, ProvisioningError, Result};
pub use init::{ConfirmInit, InitRecord, InitState, Reinit};
pub use intake::{BatchRecord, BatchState, ImportReport, MANIFEST_HEADER, RowOutcome, RowReport};
pub use lifecycle::{DeviceRecord, Transition};
pub use recertify::Recertification;
pub use recovery::{AbortReport, DEFAULT_IMPORT_LEASE};
pub use types::{
    Account, ApplicationId, ApplicationState, BatchId, Contact, ContactKind, CustomerApplication,
    CustomerId, DeviceState, NationalId, OperatorId, Reason, SeSerial, SecureElement,
};

/// The provisioning service. Cheap to clone: clones share the HSM pool, the
/// database pool and the certifier.
#[derive(Debug, Clone)]
pub struct Provisioning {
    kms: Kms,
    certifier: Arc<dyn DeviceCertifier>,
    store: store::Store,
    challenges: Challenges,
    challenge_ttl: Duration,
    check_attempt_limit: u32,
    /// How long an import holds its batch without renewing (`recovery`).
    import_lease: Duration,
}

impl Provisioning {
    /// Brings the provisioning tables up to date in the catalog's database
    /// (the kms catalog must be migrated first: `Kms::open` does that) and
    /// returns the service.
    pub async fn new(kms: Kms, certifier: Arc<dyn DeviceCertifier>) -> Result<Self> {
        let store = store::Store::new(kms.db());
        store.migrate().await?;
        Ok(Self {
            kms,
            certifier,
            challenges: Challenges::new(store.clone()),
            store,
            challenge_ttl: DEFAULT_CHALLENGE_TTL,
            check_attempt_limit: DEFAULT_CHECK_ATTEMPT_LIMIT,
            import_lease: DEFAULT_IMPORT_LEASE,
        })
    }

    /// Sets how many failed genuine-device checks park a device (at least 1).
    pub fn with_check_attempt_limit(mut self, limit: u32) -> Self {
        self.check_attempt_limit = limit.max(1);
        self
    }

    /// The challenge mechanism, for every purpose (login's random-auth
    /// challenges use it too).
    pub fn challenges(&self) -> &Challenges {
        &self.challenges
    }

    /// Sets how long a genuine-device challenge stays valid.
    pub fn with_challenge_ttl(mut self, ttl: Duration) -> Self {
        self.challenge_ttl = ttl;
        self
    }

    pub fn kms(&self) -> &Kms {
        &self.kms
    }

    pub fn certifier(&self) -> &Arc<dyn DeviceCertifier> {
        &self.certifier
    }
}
