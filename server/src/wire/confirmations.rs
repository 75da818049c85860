//! Transaction confirmation over a second channel (`/v1/confirmations`,
//! docs/protocol.md §11). The transaction itself is submitted as the
//! request body, exactly the bytes the device will sign; its format is
//! `keyward_protocol::confirmation`'s.

use serde::{Deserialize, Serialize};

/// `POST /v1/confirmations` → 201: the confirmation waiting for the code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submitted {
    pub confirmation_id: String,
    pub expires_at_ms: i64,
    pub max_attempts: u32,
    /// The payee looks like another: the customer's message warns of it.
    pub payee_flagged: bool,
}

/// `POST /v1/confirmations/{id}/confirm`: what the device signed and with
/// what.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Confirm {
    /// The transaction bytes the device signed, base64.
    pub transaction: String,
    /// The 8 digits the customer typed.
    pub code: String,
    /// DER signature (ECDSA P-256 or RSA PKCS#1 v1.5, SHA-256) over
    /// `transaction ‖ code`, base64.
    pub signature: String,
}

impl std::fmt::Debug for Confirm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Confirm").finish_non_exhaustive()
    }
}

/// `POST /v1/confirmations/{id}/confirm` → 200: executed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Executed {
    pub confirmation_id: String,
    pub state: String,
    pub executed_at_ms: i64,
}

/// `GET /admin/v1/confirmations/{id}`: a confirmation as an operator sees
/// it (no code, no transaction bytes, no contact), with its deliveries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfirmationView {
    pub confirmation_id: String,
    pub device_id: String,
    pub issuer_id: String,
    pub customer_id: String,
    pub state: String,
    pub attempts: u32,
    pub max_attempts: u32,
    pub amount_minor: i64,
    pub currency: String,
    pub payee_flagged: bool,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    pub decided_at_ms: Option<i64>,
    /// The outbox messages of this confirmation: the code's delivery and,
    /// once executed, the execution.
    pub deliveries: Vec<crate::outbox::MessageView>,
}

/// `GET /admin/v1/confirmations/{id}/evidence`: an executed confirmation's
/// evidence receipt and everything needed to check it outside Keyward
/// (docs/protocol.md §11.6). Holds personal data (the transaction).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvidenceExport {
    pub confirmation_id: String,
    /// The canonical receipt bytes, base64.
    pub receipt: String,
    /// The evidence key's DER ECDSA P-256/SHA-256 signature over them, base64.
    pub signature: String,
    /// The evidence certificate, then the issuing and root CA certificates.
    pub evidence_chain_pem: String,
    /// The device certificate the receipt names.
    pub device_certificate_pem: String,
    /// The transaction bytes exactly as received, base64.
    pub transaction: String,
    /// The message the customer was sent (its code used up), base64 of its
    /// UTF-8 bytes; `null` when it could not be rendered again identically
    /// (the receipt still holds its hash).
    pub message: Option<String>,
}

impl std::fmt::Debug for EvidenceExport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EvidenceExport")
            .field("confirmation_id", &self.confirmation_id)
            .finish_non_exhaustive()
    }
}
