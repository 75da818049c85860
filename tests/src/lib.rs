//! Test support for Keyward's cross-crate tests: SoftHSM tokens made per test,
//! test databases (SQLite, or PostgreSQL when `KEYWARD_TEST_DATABASE_URL` is
//! set), and the published vectors vendored in `tests/vectors/`.
//!
//! # Layout
//! - [`channel`]: the card's side of the card-to-server secure channel
//!   (docs/protocol.md §14) in software, and a software server for its tests.
//! - [`device`]: the device side of docs/protocol.md in software.
//! - [`simulator`]: a whole software device for provisioning tests (key pair,
//!   CSR, challenge signatures, init package, working keys, MACs), kept on
//!   disk for the `kwsim` binary (the device agent of demos and e2e tests).
//! - [`terminal`]: a terminal's mTLS client of the public listener and the
//!   login flow, done the device's way.
//! - [`wire`]: the admin API's init package and confirm JSON, parsed on the
//!   device side without the server's code.
//! - [`softhsm`]: a fresh SoftHSM token per test.
//! - [`db`]: a fresh, migrated catalog database per test.
//! - [`vectors`]: loader for `vectors.json`.
//! - [`webhook`]: a local HTTPS webhook receiver that checks signatures and
//!   records message ids.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod channel;
pub mod db;
pub mod device;
pub mod purse;
pub mod simulator;
pub mod smtp;
pub mod softhsm;
pub mod terminal;
pub mod vectors;
pub mod webhook;
pub mod wire;
