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

pub mod channel;
pub mod confirmation;
mod error;
pub mod load;
mod wire;

pub use confirmation::{
    Amount, Code, Currency, Origin, PayeeCheck, PayeePolicy, Received, Rendered, Rules,
    SmsEncoding, Transaction, invisible, render, signed_message,
};
pub use error::ProtocolError;

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    /// Dependencies this crate may have: pure Rust, no I/O. Adding one is a
    /// decision for README.md's "must not" list, not a side effect.
    const ALLOWED: &[&str] = &[
        "serde",
        "serde_json",
        "thiserror",
        "subtle",
        "sha2",
        "p256",
        "unicode-normalization",
        "unicode-properties",
        "unicode-security",
    ];

    /// Crates that would bring HTTP, a database, an HSM, TLS or a runtime.
    const FORBIDDEN: &[&str] = &[
        "cryptoki", "sqlx", "axum", "hyper", "rustls", "tokio", "reqwest", "lettre", "keyward-",
    ];

    #[test]
    fn dependencies_are_the_pure_ones() {
        let manifest = include_str!("../Cargo.toml");
        let section = manifest
            .split("\n[dependencies]\n")
            .nth(1)
            .and_then(|rest| rest.split("\n[").next())
            .unwrap_or_default();
        let names: Vec<&str> = section
            .lines()
            .filter_map(|l| l.split(['=', '.', ' ']).next())
            .filter(|n| !n.is_empty() && !n.starts_with('#'))
            .collect();
        assert!(!names.is_empty());
        for n in names {
            assert!(
                ALLOWED.contains(&n),
                "keyward-protocol may not depend on {n}"
            );
        }
    }

    /// Nothing reachable from this crate in the lock file (dev-dependencies
    /// included) is one of [`FORBIDDEN`].
    #[test]
    fn nothing_forbidden_is_reachable() {
        let lock = include_str!("../../../Cargo.lock");
        let mut graph: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for package in lock.split("[[package]]") {
            let Some(name) = package
                .lines()
                .find_map(|l| l.strip_prefix("name = \""))
                .and_then(|l| l.strip_suffix('"'))
            else {
                continue;
            };
            let deps = package
                .lines()
                .filter_map(|l| l.trim().strip_prefix('"'))
                .filter_map(|l| l.split(['"', ' ']).next());
            graph.entry(name).or_default().extend(deps);
        }
        assert!(graph.contains_key("keyward-protocol"));
        let mut seen = BTreeSet::new();
        let mut todo = vec!["keyward-protocol"];
        while let Some(n) = todo.pop() {
            if seen.insert(n) {
                todo.extend(graph.get(n).into_iter().flatten());
            }
        }
        assert!(seen.contains("unicode-security") && seen.contains("unicode-script"));
        for n in seen.iter().filter(|n| **n != "keyward-protocol") {
            assert!(
                !FORBIDDEN.iter().any(|f| n.starts_with(f)),
                "keyward-protocol reaches {n}"
            );
        }
    }
}
