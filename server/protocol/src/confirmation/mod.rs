//! Transaction confirmation over a second channel: the transaction as the
//! client sent it, the one-time code, the bytes the device signs, and the
//! message the customer reads.

mod code;
pub mod evidence;
mod render;
mod text;
mod transaction;

pub use code::Code;
pub use evidence::Evidence;
pub use render::{Origin, Rendered, SmsEncoding, render};
pub use text::{PayeeCheck, PayeePolicy, invisible, skeleton};
pub use transaction::{Amount, Currency, Received, Rules, Transaction};

/// The bytes a device signs to confirm a transaction: `tx || code`, where
/// `tx` is the transaction exactly as the client sent it
/// ([`Received::raw`]) and `code` its 8 ASCII digits, with nothing between
/// or around them.
///
/// The signature is made over these bytes by the device key its certificate
/// holds: ECDSA P-256 with SHA-256 (the message is hashed once, by the
/// signer; the signature is DER `Ecdsa-Sig-Value`), or RSASSA-PKCS1-v1_5
/// with SHA-256. The verifier hashes the same bytes; it never re-encodes the
/// transaction.
pub fn signed_message(tx_bytes: &[u8], code: &Code) -> Vec<u8> {
    let mut m = Vec::with_capacity(tx_bytes.len() + Code::DIGITS);
    m.extend_from_slice(tx_bytes);
    m.extend_from_slice(code.as_bytes());
    m
}

#[cfg(test)]
mod tests;
