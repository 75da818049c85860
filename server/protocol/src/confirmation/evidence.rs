//! The evidence receipt of an executed confirmation: what the bank states,
//! under its HSM evidence key, that the customer saw and signed. The
//! receipt is canonical text, so that anyone can check it with `openssl`
//! and a few lines of a script, and so that one receipt has one encoding:
//! a fixed first line, then one `name=value` line per field, every field
//! present, in the order of [`FIELDS`], each line ended by `\n`, nothing
//! else. Values are printable ASCII without spaces; hashes and the device
//! signature are lower-case hex, times are Unix milliseconds, and an absent
//! value is `-`.

use sha2::{Digest, Sha256};

use crate::error::ProtocolError;

/// First line of a version 1 receipt.
pub const EVIDENCE_V1: &str = "keyward-confirmation-evidence/v1";

/// The field names of a version 1 receipt, in their order.
pub const FIELDS: [&str; 16] = [
    "confirmation_id",
    "device_id",
    "transaction_sha256",
    "message_sha256",
    "device_signature",
    "device_certificate_serial",
    "device_certificate_sha256",
    "code_mac_key",
    "code_mac_id",
    "delivery_message_id",
    "delivery_receipt_id",
    "submitted_at_ms",
    "sent_at_ms",
    "delivered_at_ms",
    "confirmed_at_ms",
    "signer_certificate_serial",
];

/// Longest value accepted (a DER RSA-4096 signature in hex is 1024).
const MAX_VALUE: usize = 1100;

/// One executed confirmation's evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    pub confirmation_id: String,
    pub device_id: String,
    /// SHA-256 of the transaction bytes exactly as received.
    pub transaction_sha256: [u8; 32],
    /// SHA-256 of the rendered message's UTF-8 bytes (§11.4).
    pub message_sha256: [u8; 32],
    /// The device's DER signature over `tx ‖ code`.
    pub device_signature: Vec<u8>,
    pub device_certificate_serial: String,
    /// SHA-256 of the device certificate's DER.
    pub device_certificate_sha256: [u8; 32],
    /// Label of the HSM key the code's HMAC is made with.
    pub code_mac_key: String,
    /// SHA-256 of the stored code HMAC: names the stored value without
    /// carrying it.
    pub code_mac_id: [u8; 32],
    /// Outbox message id of the code's delivery.
    pub delivery_message_id: String,
    /// The gateway's delivery receipt id, when it reported one.
    pub delivery_receipt_id: Option<String>,
    pub submitted_at_ms: i64,
    /// When the gateway accepted the message (outbox `sent`).
    pub sent_at_ms: Option<i64>,
    /// When the gateway reported it delivered.
    pub delivered_at_ms: Option<i64>,
    pub confirmed_at_ms: i64,
    /// Serial of the evidence key's certificate that signs this receipt.
    pub signer_certificate_serial: String,
}

impl Evidence {
    /// The canonical bytes the evidence key signs; refuses a value that is
    /// empty, too long, or not printable ASCII without spaces.
    pub fn encode(&self) -> Result<Vec<u8>, ProtocolError> {
        let values = self.values();
        let mut out = String::with_capacity(1024);
        out.push_str(EVIDENCE_V1);
        out.push('\n');
        for (name, value) in FIELDS.iter().zip(&values) {
            if !valid_value(value) {
                return Err(ProtocolError::EvidenceMalformed);
            }
            out.push_str(name);
            out.push('=');
            out.push_str(value);
            out.push('\n');
        }
        Ok(out.into_bytes())
    }

    /// A receipt's fields; refuses anything [`Evidence::encode`] would not
    /// have written byte for byte.
    pub fn parse(bytes: &[u8]) -> Result<Self, ProtocolError> {
        let bad = || ProtocolError::EvidenceMalformed;
        let text = std::str::from_utf8(bytes).map_err(|_| bad())?;
        let body = text.strip_suffix('\n').ok_or_else(bad)?;
        let mut lines = body.split('\n');
        if lines.next() != Some(EVIDENCE_V1) {
            return Err(bad());
        }
        let mut values = Vec::with_capacity(FIELDS.len());
        for name in FIELDS {
            let line = lines.next().ok_or_else(bad)?;
            let value = line
                .strip_prefix(name)
                .and_then(|l| l.strip_prefix('='))
                .ok_or_else(bad)?;
            values.push(value);
        }
        if lines.next().is_some() {
            return Err(bad());
        }
        let hash = |v: &str| -> Result<[u8; 32], ProtocolError> {
            from_hex(v).and_then(|b| b.try_into().ok()).ok_or_else(bad)
        };
        let ms = |v: &str| -> Result<i64, ProtocolError> { v.parse().map_err(|_| bad()) };
        let opt = |v: &str| (v != "-").then(|| v.to_owned());
        let opt_ms = |v: &str| -> Result<Option<i64>, ProtocolError> {
            if v == "-" { Ok(None) } else { ms(v).map(Some) }
        };
        let e = Self {
            confirmation_id: values[0].to_owned(),
            device_id: values[1].to_owned(),
            transaction_sha256: hash(values[2])?,
            message_sha256: hash(values[3])?,
            device_signature: from_hex(values[4]).ok_or_else(bad)?,
            device_certificate_serial: values[5].to_owned(),
            device_certificate_sha256: hash(values[6])?,
            code_mac_key: values[7].to_owned(),
            code_mac_id: hash(values[8])?,
            delivery_message_id: values[9].to_owned(),
            delivery_receipt_id: opt(values[10]),
            submitted_at_ms: ms(values[11])?,
            sent_at_ms: opt_ms(values[12])?,
            delivered_at_ms: opt_ms(values[13])?,
            confirmed_at_ms: ms(values[14])?,
            signer_certificate_serial: values[15].to_owned(),
        };
        if e.encode()? != bytes {
            return Err(bad());
        }
        Ok(e)
    }

    fn values(&self) -> [String; 16] {
        let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
        let opt_ms = |v: Option<i64>| v.map_or_else(|| "-".to_owned(), |t| t.to_string());
        [
            self.confirmation_id.clone(),
            self.device_id.clone(),
            hex(&self.transaction_sha256),
            hex(&self.message_sha256),
            hex(&self.device_signature),
            self.device_certificate_serial.clone(),
            hex(&self.device_certificate_sha256),
            self.code_mac_key.clone(),
            hex(&self.code_mac_id),
            self.delivery_message_id.clone(),
            opt(&self.delivery_receipt_id),
            self.submitted_at_ms.to_string(),
            opt_ms(self.sent_at_ms),
            opt_ms(self.delivered_at_ms),
            self.confirmed_at_ms.to_string(),
            self.signer_certificate_serial.clone(),
        ]
    }
}

/// SHA-256, as the receipt's hashes are made.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Whether `v` can stand as a receipt value: 1 to [`MAX_VALUE`] printable
/// ASCII characters, no space, so no value can end a line or forge one.
fn valid_value(v: &str) -> bool {
    (1..=MAX_VALUE).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_graphic())
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// Lower-case hex only (the canonical form).
fn from_hex(s: &str) -> Option<Vec<u8>> {
    let digit = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    if s.is_empty() || !s.len().is_multiple_of(2) {
        return None;
    }
    s.as_bytes()
        .chunks(2)
        .map(|p| Some((digit(p[0])? << 4) | digit(p[1])?))
        .collect()
}
