//! Device provisioning on SoftHSM with the real Keyward CA, one module per
//! workflow step, in one test binary (one link instead of six). SQLite, or
//! PostgreSQL with `KEYWARD_TEST_DATABASE_URL`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

mod binding;
mod check;
mod customers;
mod init;
mod intake;
mod lifecycle;
mod recovery;
