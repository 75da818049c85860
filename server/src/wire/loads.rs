//! The e-purse load (`/v1/loads`, docs/protocol.md §13) and its operators'
//! view (`/admin/v1/loads`, `/admin/v1/accounts`, `/admin/v1/ledger`). The
//! signed messages themselves are `keyward_protocol::load`'s binary
//! formats, carried here in base64 beside their signature.

use serde::{Deserialize, Serialize};

/// A signed load message: request, report or purse status.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signed {
    /// The exact signed bytes, base64.
    pub payload: String,
    /// The device's DER signature over them (ECDSA P-256 or RSA PKCS#1
    /// v1.5, SHA-256), base64.
    pub signature: String,
}

impl std::fmt::Debug for Signed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signed").finish_non_exhaustive()
    }
}

/// `POST /v1/loads` → 201: the permit, signed by the HSM load-permit key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permit {
    pub load_id: String,
    /// The permit's bytes (`KWLP`), base64; a retried request gets the
    /// same bytes.
    pub permit: String,
    /// DER ECDSA P-256/SHA-256 signature over them, base64.
    pub signature: String,
    /// The account's balance after the debit; absent on a retry.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub balance_after_minor: Option<i64>,
    /// The permit key's `load-permit` certificate and the issuing CA's,
    /// PEM: the purse checks the signature with it, up to the Keyward root.
    pub certificate_chain: String,
}

/// A load's state after a report or a settlement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadState {
    pub load_id: String,
    /// `pending`, `posted`, `voided`, `doubtful`, `late_applied`,
    /// `not_applied`.
    pub state: String,
}

/// `POST /v1/loads/status` → 200: the loads the purse's status settled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusSettled {
    pub settled: Vec<LoadState>,
}

/// A load as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadView {
    pub load_id: String,
    pub device_id: String,
    pub sequence: i64,
    pub customer_id: String,
    pub account: String,
    pub amount_minor: i64,
    pub currency: String,
    pub state: String,
    pub reason: Option<String>,
    pub device_reason: Option<i64>,
    pub wallet_before_minor: i64,
    pub wallet_after_minor: Option<i64>,
    /// The report's balance did not add up, or the report was bad.
    pub flagged: bool,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    pub decided_at_ms: Option<i64>,
    pub settled_at_ms: Option<i64>,
    /// The permit's bytes and signature, base64 (only in `show`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub permit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub permit_signature: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub report: Option<String>,
    /// The ledger entries of the load (only in `show`).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub entries: Vec<EntryView>,
}

/// `GET /admin/v1/loads` → 200.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadList {
    pub loads: Vec<LoadView>,
}

/// A ledger entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryView {
    pub entry_id: i64,
    pub transfer_id: String,
    pub step: String,
    pub account: String,
    pub delta_minor: i64,
    pub currency: String,
    pub created_at_ms: i64,
    /// The account's balance after this entry (statements only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub balance_after_minor: Option<i64>,
}

/// `POST /admin/v1/accounts`: open a customer's account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewAccount {
    /// The account number (6-34 of A-Z, 0-9; provisioning's accounts).
    pub account: String,
    pub customer_id: String,
    /// ISO 4217 alphabetic code.
    pub currency: String,
    /// How far below zero the balance may go, minor units (default 0).
    #[serde(default)]
    pub overdraft_minor: i64,
}

/// An account and its balance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountView {
    pub account: String,
    /// `customer`, `loads_in_flight`, `float`, `receivable`, `external`.
    pub kind: String,
    pub customer_id: Option<String>,
    pub currency: String,
    pub floor_minor: i64,
    pub balance_minor: i64,
    pub created_at_ms: i64,
}

/// `POST /admin/v1/accounts/{id}/credits`: money entering the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreditRequest {
    pub amount_minor: i64,
    /// Why (the payment's reference): recorded, shown in the statement's
    /// audit trail.
    pub reference: String,
}

/// A credit: `posted` with the balance after it, or `pending` a second
/// operator's approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditView {
    pub credit_id: String,
    pub state: String,
    pub transfer_id: Option<String>,
    pub balance_after_minor: Option<i64>,
}

/// `GET /admin/v1/accounts/{id}/statement`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statement {
    pub account: AccountView,
    /// The point in time asked for (`at_ms`), if any, and the balance then.
    pub at_ms: Option<i64>,
    pub balance_at_minor: i64,
    /// The latest entries, oldest first, each with the balance after it.
    pub entries: Vec<EntryView>,
}

pub use crate::ledger::VerifyReport as LedgerReport;
