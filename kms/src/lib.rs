//! Keyward's key management: the only crate that talks to the HSM.
//!
//! # Layout
//! - [`hsm`]: the PKCS#11 seam — the [`hsm::Hsm`] trait and its `cryptoki`
//!   implementation, with the small raw-FFI module for mechanisms `cryptoki`
//!   lacks.
//! - [`pool`]: worker threads that own the HSM calls, fed by a bounded queue.
//! - [`types`]: domain types (`IssuerId`, `DeviceId`, `KeyVersion`, `Kcv`,
//!   `MacAlgorithm`, …) that the layers above speak in.
//! - [`keys`]: the key hierarchy of docs/protocol.md §3 — issuer master keys,
//!   diversification, working keys, KCVs, the derived-key cache.
//! - [`mac`]: transaction MACs (ISO 9797-1 M1/M3, CMAC, CUP-ECB) and KCVs built
//!   on HSM primitives; [`bulk`]: batch verification.
//! - [`wrap`]: the init package — keys wrapped to a device public key.
//! - [`catalog`]: the key catalog in SQLite or PostgreSQL (labels, KCVs,
//!   versions, states; never key bytes).
//! - [`signing`]: token key pairs (CA, TLS, permits) signing through the pool.
//! - [`service`]: [`Kms`], the facade the server uses.
//!
//! Must not: expose a `cryptoki` type above [`hsm`]; hold key bytes outside
//! the HSM; log or format a key, PIN or MAC value.

pub mod bulk;
pub mod catalog;
pub mod error;
pub mod hsm;
pub mod keys;
pub mod mac;
pub mod pool;
pub mod service;
pub mod signing;
pub mod types;
pub mod wrap;

pub use error::{KmsError, Result};
pub use service::{Kms, MacItem, MacOutcome, OfferedKey, WorkingKeyOffer};
