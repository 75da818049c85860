//! The exact bytes Keyward's devices sign, and the rules of what the server
//! shows the customer, defined once for the server, `kwsim` and the device
//! simulator.
//!
//! This crate is pure: no HTTP, no database, no HSM, no clock and no random
//! number generator. Whatever needs one of those (the code's random bytes,
//! the signature check, the delivery) is the caller's; this crate only says
//! which bytes go in and what comes out, so that the format cannot drift
//! between the parts that must agree on it byte for byte.
//!
//! # Transaction confirmation ([`confirmation`])
//!
//! 1. The client submits a transaction as UTF-8 JSON. [`Transaction::parse`]
//!    checks it against the bank's [`Rules`] and returns a [`Received`]: the
//!    bytes exactly as they arrived, beside the parsed copy.
//! 2. The server draws an 8-digit [`Code`] from HSM random bytes
//!    ([`Code::from_random`], uniform by rejection sampling).
//! 3. [`render`] builds the second-channel message from the **parsed** fields
//!    only: amount and payee first, then the code, a reference cut to fit, and
//!    an origin-bound last line (`@bank.example #12345678`).
//! 4. The device signs [`signed_message`] = `tx || code`; the server checks
//!    that the signed `tx` is [`Received::raw`] byte for byte
//!    ([`Received::is_exactly`]) and the code, in constant time.
//!
//! `docs/protocol.md` §11 gives a worked example byte by byte; the test
//! `confirmation::tests::worked_example_in_the_docs` keeps it true.

pub mod confirmation;
mod error;

pub use confirmation::{
    Amount, Code, Currency, Origin, PayeeCheck, PayeePolicy, Received, Rendered, Rules,
    SmsEncoding, Transaction, render, signed_message,
};
pub use error::ProtocolError;
