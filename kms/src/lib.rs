//! Keyward's key management: the only crate that talks to the HSM.
//!
//! # Layout
//! - [`hsm`]: the PKCS#11 seam — the [`hsm::Hsm`] trait and its `cryptoki`
//!   implementation, the small raw-FFI module for mechanisms `cryptoki`
//!   lacks, the one classification of PKCS#11 return values ([`hsm::Rv`]),
//!   and the module's vendor differences ([`hsm::Capabilities`]).
//! - [`pool`]: worker threads that own the HSM calls, fed by a bounded queue.
//! - [`types`]: domain types (`IssuerId`, `DeviceId`, `KeyVersion`, `Kcv`,
//!   `MacAlgorithm`, …) that the layers above speak in.
//! - [`keys`]: the key hierarchy of docs/protocol.md §3 — issuer master keys,
//!   diversification, working keys, KCVs, the derived-key cache.
//! - [`mac`]: transaction MACs (ISO 9797-1 M1/M3, CMAC, CUP-ECB) and KCVs built
//!   on HSM primitives.
//! - [`wrap`]: the init package's HSM job — keys wrapped to a device public key.
//! - [`signing`]: [`signing::SigningKey`], a token key pair (CA, TLS, permits)
//!   signing through the pool.
//! - [`db`]: database plumbing shared by every crate with tables (the
//!   connection, write transactions and their retry, embedded migrations,
//!   column parsing, the one clock [`db::now_ms`]).
//! - [`catalog`]: the key catalog in SQLite or PostgreSQL (labels, KCVs,
//!   versions, states; never key bytes), on [`db`].
//! - [`service`]: [`Kms`], the facade the crates above use, one file per
//!   operation family (issuers, working keys, MAC verification incl. bulk,
//!   challenges, init package, signing, the audit trail's HMAC key and
//!   checkpoint); it does not hand out its pool,
//!   catalog or cache.
//! - [`error`]: [`KmsError`] with a stable code and an [`ErrorKind`].
//!
//! Must not: expose a `cryptoki` type above [`hsm`]; hold key bytes outside
//! the HSM; log or format a key, PIN or MAC value.

pub mod catalog;
pub mod db;
pub mod error;
pub mod hsm;
pub mod keys;
pub mod mac;
pub mod pool;
pub mod service;
pub mod signing;
pub mod types;
pub mod wrap;

pub use error::{ErrorKind, KmsError, Result};
pub use service::{
    AUDIT_CHECKPOINT_LABEL, AUDIT_MAC_LABEL, AUDIT_MECHANISMS, AnswerCheck, JOB_ITEMS,
    JOBS_PER_WORKER, Kms, KmsStats, MAX_BULK_ITEMS, MacBatch, MacError, MacItem, MacOutcome,
    NewIssuer, NewIssuerKey, OfferedKey, PinBlock, PinFormat, WorkingKeyOffer,
};
