//! Keyward's ledger rules for the e-purse load: money as types, accounts,
//! two-phase transfers, double entry, the hash chain over entries and the
//! invariants, as pure functions over values.
//!
//! The server stores accounts, transfers and entries in SQL; for each step
//! it reads the rows it needs, calls one function here, and writes what
//! comes back (the new [`Transfer`] and the [`Posting`]'s entries) in the
//! same transaction, or answers with the [`Refusal`]'s code. Nothing here
//! reads a clock, draws a random number or does I/O: ids and times come in
//! as values, so the same inputs always give the same rows.
//!
//! A load is *pending → posted | voided*, each at most once (TigerBeetle's
//! two-phase transfer): [`open_pending`] debits the customer into the
//! loads-in-flight account, [`post`] moves the amount on to the float,
//! [`void`] gives it back. A void by timeout leaves the load *doubtful* (the
//! purse may have applied it and lost its report): [`reconcile_late`] debits
//! it again once, or [`close_doubtful`] lets the reversal stand. A retried
//! request with a known id is compared with [`check_retry`].
//!
//! # Layout
//!
//! - `amount`: [`Amount`], [`Delta`], [`Balance`], [`Currency`].
//! - `account`: [`AccountId`], [`AccountNumber`], [`AccountKind`], [`Account`].
//! - `transfer`: [`TransferId`], [`Transfer`] and its states, the steps.
//! - `entry`: [`Entry`], [`EntryKind`] (the allowed routes), [`Posting`].
//! - `chain`: the canonical entry encoding, [`chain_hash`], [`verify_chain`].
//! - `book`: [`Book`], the in-memory ledger; [`Book::check`], [`recompute`].
//! - `error`: [`Refusal`] and its stable codes.

mod account;
mod amount;
mod book;
mod chain;
mod entry;
mod error;
mod transfer;

pub use account::{Account, AccountId, AccountKind, AccountNumber};
pub use amount::{Amount, Balance, Currency, Delta};
pub use book::{Applied, Book, Violation, recompute};
pub use chain::{
    ChainBreak, ChainHead, ENCODING_VERSION, GENESIS, chain_hash, checkpoint_message, encode_entry,
    verify_chain,
};
pub use entry::{Entry, EntryKind, Posting};
pub use error::Refusal;
pub use transfer::{
    Payer, Reconciliation, Transfer, TransferId, TransferKind, TransferState, VoidReason,
    check_retry, close_doubtful, credit_external, debit_external, open_pending, post,
    reconcile_late, void,
};

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    /// Dependencies this crate may have: pure Rust, no I/O. Adding one is a
    /// decision for README.md's "must not" list, not a side effect.
    const ALLOWED: &[&str] = &["serde", "thiserror", "sha2", "hex"];

    /// Crates that would bring HTTP, a database, an HSM, TLS, a runtime, a
    /// clock or randomness.
    const FORBIDDEN: &[&str] = &[
        "cryptoki",
        "sqlx",
        "axum",
        "hyper",
        "rustls",
        "tokio",
        "reqwest",
        "lettre",
        "rand",
        "getrandom",
        "time",
        "chrono",
        "uuid",
        "keyward-",
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
            assert!(ALLOWED.contains(&n), "keyward-ledger may not depend on {n}");
        }
    }

    /// Nothing reachable from this crate in the lock file (dev-dependencies
    /// included, except proptest's own random number generator, which only
    /// the tests link) is one of [`FORBIDDEN`].
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
        assert!(graph.contains_key("keyward-ledger"));
        let mut seen = BTreeSet::new();
        let mut todo = vec!["keyward-ledger"];
        while let Some(n) = todo.pop() {
            if n != "proptest" && seen.insert(n) {
                todo.extend(graph.get(n).into_iter().flatten());
            }
        }
        assert!(seen.contains("sha2") && seen.contains("thiserror"));
        // The lock file lists an optional dependency wherever any workspace
        // member turns it on: the AEAD crates of the card's channel code
        // enable crypto-common's `rand_core` (and so `getrandom`), which the
        // lock file then shows under sha2's `digest` too, though a build of
        // this crate never enables it. `dependencies_are_the_pure_ones`
        // keeps this crate from naming either.
        const FEATURE_ARTIFACTS: &[&str] = &["rand_core", "getrandom"];
        for n in seen
            .iter()
            .filter(|n| **n != "keyward-ledger" && !FEATURE_ARTIFACTS.contains(n))
        {
            assert!(
                !FORBIDDEN.iter().any(|f| n.starts_with(f)),
                "keyward-ledger reaches {n}"
            );
        }
    }
}
