//! Route tests: every route of both listeners, in process against the
//! routers (`admin_app`, `public_app`) on a real installation (SoftHSM token,
//! test database, `init`), without TLS or a spawned binary. The TLS layer's
//! part — who the client is — is played by the `ClientIdentity` each request
//! carries; the listeners themselves are tested end to end in
//! `server_tls.rs` and the other `server_*.rs` files.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    dead_code,
    unreachable_pub
)]

#[path = "../common/mod.rs"]
mod common;
mod harness;

mod access;
mod bad_inputs;
mod ca;
mod channel;
mod channel_attack;
mod channel_ecdhe;
mod channel_pkcs1;
mod codes;
mod confirmations;
mod customers;
mod database;
mod devices;
mod idempotency;
mod issuers;
mod jobs;
mod loads;
mod login;
mod macs;
mod openapi;
mod outbox;
mod receipts;
mod trail;
mod transactions;
