//! `POST /v1/transactions` (docs/protocol.md §10.5): a device's transaction
//! message with its MAC, account fields under `TDK` and a PIN block under
//! `TPK`. Binary values are base64.

use keyward_kms::types::Pan;
use serde::{Deserialize, Serialize};

/// The transaction as the device sends it (a session is required).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransactionRequest {
    /// The working-key version the device computed with.
    pub key_version: u32,
    /// One of the five transaction MAC algorithms (`ISO9797-1-M1-TDES`,
    /// `ISO9797-1-M3`, `CMAC-TDES`, `CMAC-AES`, `CUP-ECB`).
    pub algorithm: String,
    /// ISO/IEC 9797-1 padding method (1 or 2) where the algorithm takes one.
    #[serde(default)]
    pub padding: Option<u8>,
    /// base64 of the transaction message.
    pub message: String,
    /// base64 of the MAC (for `CUP-ECB`, of its 8 ASCII characters).
    pub mac: String,
    /// Account fields encrypted under `TDK`.
    #[serde(default)]
    pub accounts: Vec<EncryptedField>,
    #[serde(default)]
    pub pin_block: Option<PinBlock>,
}

/// One account field: `CBC_TDK(IV, field || 0x80 || 0…)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptedField {
    /// What the field is (`payer`, `payee`, …): 1–32 of `a-z 0-9 _`.
    pub name: String,
    /// base64 of one cipher block.
    pub iv: String,
    /// base64 of the ciphertext.
    pub data: String,
}

/// An ISO 9564 PIN block under `TPK`, and the PAN it is bound to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinBlock {
    /// 0 or 3 (tdes issuers), 4 (aes issuers).
    pub format: u8,
    /// base64 of the encrypted block (8 or 16 bytes).
    pub block: String,
    /// 12 to 19 digits, checked as the body is read (a malformed one is the
    /// body's `422 invalid_request`) and masked in `Debug`.
    pub pan: Pan,
}

/// The server's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransactionAnswer {
    /// `valid` or `invalid`.
    pub result: String,
    /// `mac_valid` or `mac_invalid`.
    pub code: String,
    pub key_version: u32,
    /// Each account field, decrypted in the HSM and checked against the
    /// device's binding for the issuer (never echoed back).
    pub accounts: Vec<AccountCheck>,
    /// base64 of the PIN block translated to the issuer's zone PIN key.
    pub pin_block: Option<String>,
}

/// Whether a decrypted account field is one of the binding's accounts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountCheck {
    pub name: String,
    pub bound: bool,
}
