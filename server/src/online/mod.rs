//! The online protocols' domain logic: what terminals do all day once they
//! are provisioned. Routes in [`crate::public`] translate HTTP into calls
//! here; nothing here sees HTTP, and every piece of protocol state lives in
//! the database (through [`store`]) so any replica can take any step.
//!
//! Rooms, as the protocols arrive (docs/protocol.md):
//! - sessions and login challenges (random challenge/response, lockout);
//! - working-key rotation policy;
//! - signed confirmations over the second channel;
//! - the e-purse ledger (loads and reversals, one transaction with their
//!   ledger entries);
//! - the card-to-server secure channel.
//!
//! [`error::OnlineError`] is the error of this layer, sorted by kind like the
//! lower crates' errors and mapped to HTTP once, in `http/error.rs`.

pub mod error;
pub mod login;
pub mod store;

pub use error::OnlineError;
pub use store::OnlineStore;
