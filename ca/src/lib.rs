//! Keyward's certificate authority: a root CA and an issuing CA whose private
//! keys live in the HSM (signing goes through `keyward-kms`; no private key
//! ever leaves the token), certificates issued from CSRs or HSM public keys
//! under fixed profiles, a registry of every certificate in the catalog
//! database, revocation, and CRLs signed by the issuing CA.
//!
//! # Layout
//! - [`Ca`] (`authority/`): `mod.rs` the CA value and registry queries;
//!   `bootstrap.rs` (idempotent: keys `keyward/ca/root` and
//!   `keyward/ca/issuing`, the two CA certificates, the first CRL);
//!   `issue.rs` issuance and the leaf self-check; `crl.rs` revocation, CRL
//!   signing and refresh.
//! - [`profile`]: [`Profile`] (`device`, `server-tls`, `operator`, `service`,
//!   `load-permit`, `evidence`, `channel`), [`Role`], [`IssueRequest`]: the profile alone decides a
//!   certificate's subject, extensions and validity.
//! - `csr`: [`VerifiedCsr`], a CSR parsed and its signature checked once;
//!   only the public key is kept.
//! - [`hsm_key`]: [`HsmKey`], an HSM key pair as rcgen's `SigningKey`, and
//!   [`SubjectKey`], a public key to certify.
//! - [`registry`]: [`Serial`], [`CertRecord`], [`CertStatus`],
//!   [`RevocationReason`], [`CertFilter`].
//! - `store` and `migrate`: the CA's tables (`ca_authorities`, `certificates`,
//!   `ca_crl`) in the catalog database (`ca/migrations/{sqlite,postgres}`,
//!   versions 101..=199 in the shared `_sqlx_migrations` table).
//! - [`error`]: [`CaError`] with stable codes and an [`ErrorKind`].
//!
//! - [`ocsp`]: an OCSP responder (RFC 6960) for certificates of the issuing
//!   CA, [`OcspResponder`]: bounded requests, answers signed with the issuing
//!   CA's HSM key once and cached until the registry changes.
//!   Relying parties may also use the CRL (or, inside Keyward, the registry
//!   via [`Ca::is_revoked`]).
//!
//! Must not: sign with anything but an HSM key; trust a CSR for anything but
//! its public key; reuse a serial; let a CRL number go backwards; put key
//! bytes in an error or log line. No other crate depends on `rcgen`.

mod authority;
mod csr;
pub mod error;
pub mod hsm_key;
mod migrate;
pub mod names;
pub mod ocsp;
pub mod profile;
pub mod registry;
mod store;

pub use authority::{
    BootstrapReport, Ca, Crl, ISSUING_KEY_LABEL, IssuedCert, ROOT_KEY_LABEL, RevocationMarker,
    SignedCert,
};
pub use csr::VerifiedCsr;
pub use error::{CaError, ErrorKind, Result};
pub use hsm_key::{HsmKey, SubjectKey};
pub use names::{normal_name, person_name};
pub use ocsp::{
    OCSP_REQUEST_CONTENT_TYPE, OCSP_RESPONSE_CONTENT_TYPE, OcspAnswer, OcspLimits, OcspResponder,
    OcspSource, malformed_request_der,
};
pub use profile::{IssueRequest, Profile, Role, SERVICE_OU};
pub use registry::{CertFilter, CertRecord, CertStatus, RevocationReason, Serial};
