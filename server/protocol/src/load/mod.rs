//! The e-purse load: the three signed messages (request, permit, report)
//! and the purse status a device sends at its next contact.
//!
//! Every message is a fixed binary layout (`crate::wire`): a 4-byte magic
//! naming the message, a version byte, big-endian integers and
//! length-prefixed ASCII, nothing after the last field. The signature is
//! made over these exact bytes and travels beside them; a receiver decodes
//! only what verified, and never re-encodes what was signed.
//!
//! | message        | magic  | signed by                      |
//! |----------------|--------|--------------------------------|
//! | [`LoadRequest`]| `KWLR` | the device key                 |
//! | [`LoadPermit`] | `KWLP` | the HSM load-permit key        |
//! | [`LoadReport`] | `KWLX` | the device key                 |
//! | [`PurseStatus`]| `KWLS` | the device key                 |
//!
//! A device's sequence number is one counter for its requests and status
//! messages: each uses the next value, strictly greater than the last the
//! server accepted, so none can be replayed. `last_applied` is the sequence
//! number of the last load the purse applied (0 before the first): what the
//! purse itself proves about a load whose report was lost.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::wire::{Format, Reader, Writer};
use crate::{Amount, Currency, ProtocolError};

/// The format version every message carries after its magic.
pub const VERSION: u8 = 1;

/// No load message is longer (the longest, a request, is at most 169 bytes).
pub const MAX_MESSAGE: usize = 512;

const FORMAT: Format = Format {
    version: VERSION,
    max: MAX_MESSAGE,
    malformed: ProtocolError::LoadMalformed,
    wrong_version: ProtocolError::LoadVersion,
};

/// Longest customer id and account number a request may carry.
const MAX_CUSTOMER: usize = 64;
const MAX_ACCOUNT: usize = 34;

/// How the device signs, as its request states it; it must be the
/// algorithm of the key its certificate holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// ECDSA P-256 over SHA-256 of the message, DER signature.
    EcdsaP256Sha256 = 1,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RsaPkcs1Sha256 = 2,
}

impl Algorithm {
    fn from_byte(b: u8) -> Result<Self, ProtocolError> {
        match b {
            1 => Ok(Self::EcdsaP256Sha256),
            2 => Ok(Self::RsaPkcs1Sha256),
            _ => Err(ProtocolError::FieldInvalid("algorithm")),
        }
    }
}

/// SHA-256 of a request's exact bytes: how the permit and the report name
/// the request they answer.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestId(pub [u8; 32]);

impl RequestId {
    pub fn of(request_bytes: &[u8]) -> Self {
        Self(Sha256::digest(request_bytes).into())
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequestId({self})")
    }
}

/// A device asks for a load (magic `KWLR`).
///
/// ```text
/// offset size field
///      0    4 "KWLR"
///      4    1 version (1)
///      5    8 device id
///     13    8 sequence number (≥ 1)
///     21    8 last applied sequence number (0: none)
///     29    8 wallet balance before this load, minor units
///     37    8 amount, minor units (> 0)
///     45    3 currency, ISO 4217 alphabetic
///     48    4 key version of the signing key
///     52    1 algorithm id (1 ECDSA P-256/SHA-256, 2 RSA PKCS#1 v1.5/SHA-256)
///     53   16 nonce
///     69  1+n customer id (1..=64 printable ASCII)
///      …  1+n account number (6..=34 of A-Z 0-9)
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct LoadRequest {
    pub device: [u8; 8],
    pub sequence: u64,
    pub last_applied: u64,
    pub wallet_balance: u64,
    pub amount: Amount,
    pub currency: Currency,
    pub key_version: u32,
    pub algorithm: Algorithm,
    pub nonce: [u8; 16],
    pub customer: String,
    pub account: String,
}

impl fmt::Debug for LoadRequest {
    /// The account number is the customer's: never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadRequest")
            .field("sequence", &self.sequence)
            .field("last_applied", &self.last_applied)
            .field("amount", &self.amount.minor_units())
            .field("currency", &self.currency.code())
            .finish_non_exhaustive()
    }
}

const REQUEST: &[u8; 4] = b"KWLR";

impl LoadRequest {
    /// The bytes the device signs. Panics only on a request that
    /// [`decode`](Self::decode) could never return (an over-long or
    /// malformed customer id or account), which is a caller's bug.
    pub fn encode(&self) -> Vec<u8> {
        assert!(valid_customer(&self.customer) && valid_account(&self.account));
        Writer::new(&FORMAT, REQUEST)
            .bytes(&self.device)
            .u64(self.sequence)
            .u64(self.last_applied)
            .u64(self.wallet_balance)
            .u64(self.amount.minor_units())
            .bytes(self.currency.code().as_bytes())
            .u32(self.key_version)
            .u8(self.algorithm as u8)
            .bytes(&self.nonce)
            .text(&self.customer)
            .text(&self.account)
            .finish()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(&FORMAT, bytes, REQUEST, "request")?;
        let device = r.array()?;
        let sequence = r.u64()?;
        let last_applied = r.u64()?;
        let wallet_balance = r.u64()?;
        let amount = Amount::new(r.u64()?).ok_or(ProtocolError::AmountInvalid)?;
        let currency = currency(&r.array()?)?;
        let key_version = r.u32()?;
        let algorithm = Algorithm::from_byte(r.u8()?)?;
        let nonce = r.array()?;
        let customer = r.text("customer", MAX_CUSTOMER)?.to_owned();
        let account = r.text("account", MAX_ACCOUNT)?;
        if !valid_account(account) {
            return Err(ProtocolError::AccountInvalid("account"));
        }
        let account = account.to_owned();
        r.end()?;
        if sequence == 0 {
            return Err(ProtocolError::FieldInvalid("sequence"));
        }
        if last_applied >= sequence {
            return Err(ProtocolError::FieldInvalid("last_applied"));
        }
        Ok(Self {
            device,
            sequence,
            last_applied,
            wallet_balance,
            amount,
            currency,
            key_version,
            algorithm,
            nonce,
            customer,
            account,
        })
    }
}

/// The server allows a load (magic `KWLP`), signed by the HSM load-permit
/// key after the account was debited.
///
/// ```text
/// offset size field
///      0    4 "KWLP"
///      4    1 version (1)
///      5   32 request id: SHA-256 of the request's bytes
///     37   16 load id
///     53    8 the request's sequence number
///     61   16 the request's nonce
///     77    8 amount, minor units
///     85    3 currency
///     88    8 host date and time: milliseconds since 1970-01-01T00:00:00Z
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadPermit {
    pub request: RequestId,
    pub load: [u8; 16],
    pub sequence: u64,
    pub nonce: [u8; 16],
    pub amount: Amount,
    pub currency: Currency,
    pub host_time_ms: u64,
}

const PERMIT: &[u8; 4] = b"KWLP";

impl LoadPermit {
    pub fn encode(&self) -> Vec<u8> {
        Writer::new(&FORMAT, PERMIT)
            .bytes(&self.request.0)
            .bytes(&self.load)
            .u64(self.sequence)
            .bytes(&self.nonce)
            .u64(self.amount.minor_units())
            .bytes(self.currency.code().as_bytes())
            .u64(self.host_time_ms)
            .finish()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(&FORMAT, bytes, PERMIT, "permit")?;
        let p = Self {
            request: RequestId(r.array()?),
            load: r.array()?,
            sequence: r.u64()?,
            nonce: r.array()?,
            amount: Amount::new(r.u64()?).ok_or(ProtocolError::AmountInvalid)?,
            currency: currency(&r.array()?)?,
            host_time_ms: r.u64()?,
        };
        r.end()?;
        Ok(p)
    }

    /// Whether this permit answers `request` (its id, sequence, nonce,
    /// amount and currency): what a device checks before loading.
    pub fn answers(&self, request_bytes: &[u8], request: &LoadRequest) -> bool {
        self.request == RequestId::of(request_bytes)
            && self.sequence == request.sequence
            && self.nonce == request.nonce
            && self.amount == request.amount
            && self.currency == request.currency
    }
}

/// What the purse did with a permit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Loaded; the purse's balance is now `wallet_balance`.
    Applied,
    /// Not loaded, for the device's `reason` (1..=255, recorded as sent);
    /// `wallet_balance` is the unchanged balance.
    Failed { reason: u8 },
}

/// The device reports the load's execution (magic `KWLX`).
///
/// ```text
/// offset size field
///      0    4 "KWLX"
///      4    1 version (1)
///      5   16 load id (from the permit)
///     21   32 request id
///     53    8 the request's sequence number
///     61    1 outcome: 1 applied, 2 failed
///     62    1 failure reason (0 when applied, 1..=255 when failed)
///     63    8 wallet balance after, minor units
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadReport {
    pub load: [u8; 16],
    pub request: RequestId,
    pub sequence: u64,
    pub outcome: Outcome,
    pub wallet_balance: u64,
}

const REPORT: &[u8; 4] = b"KWLX";

impl LoadReport {
    pub fn encode(&self) -> Vec<u8> {
        let (outcome, reason) = match self.outcome {
            Outcome::Applied => (1, 0),
            Outcome::Failed { reason } => (2, reason),
        };
        Writer::new(&FORMAT, REPORT)
            .bytes(&self.load)
            .bytes(&self.request.0)
            .u64(self.sequence)
            .u8(outcome)
            .u8(reason)
            .u64(self.wallet_balance)
            .finish()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(&FORMAT, bytes, REPORT, "report")?;
        let load = r.array()?;
        let request = RequestId(r.array()?);
        let sequence = r.u64()?;
        let outcome = match (r.u8()?, r.u8()?) {
            (1, 0) => Outcome::Applied,
            (2, reason @ 1..) => Outcome::Failed { reason },
            _ => return Err(ProtocolError::FieldInvalid("outcome")),
        };
        let wallet_balance = r.u64()?;
        r.end()?;
        Ok(Self {
            load,
            request,
            sequence,
            outcome,
            wallet_balance,
        })
    }
}

/// The purse's own account of itself, sent at the device's next contact
/// (magic `KWLS`): what settles a load whose report was lost.
///
/// ```text
/// offset size field
///      0    4 "KWLS"
///      4    1 version (1)
///      5    8 device id
///     13    8 sequence number (the device's next)
///     21    8 last applied sequence number (0: none)
///     29    8 wallet balance, minor units
///     37    3 currency
///     40   16 nonce
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurseStatus {
    pub device: [u8; 8],
    pub sequence: u64,
    pub last_applied: u64,
    pub wallet_balance: u64,
    pub currency: Currency,
    pub nonce: [u8; 16],
}

const STATUS: &[u8; 4] = b"KWLS";

impl PurseStatus {
    pub fn encode(&self) -> Vec<u8> {
        Writer::new(&FORMAT, STATUS)
            .bytes(&self.device)
            .u64(self.sequence)
            .u64(self.last_applied)
            .u64(self.wallet_balance)
            .bytes(self.currency.code().as_bytes())
            .bytes(&self.nonce)
            .finish()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(&FORMAT, bytes, STATUS, "status")?;
        let s = Self {
            device: r.array()?,
            sequence: r.u64()?,
            last_applied: r.u64()?,
            wallet_balance: r.u64()?,
            currency: currency(&r.array()?)?,
            nonce: r.array()?,
        };
        r.end()?;
        if s.sequence == 0 || s.last_applied >= s.sequence {
            return Err(ProtocolError::FieldInvalid("sequence"));
        }
        Ok(s)
    }
}

fn currency(code: &[u8; 3]) -> Result<Currency, ProtocolError> {
    std::str::from_utf8(code)
        .ok()
        .and_then(Currency::from_code)
        .ok_or(ProtocolError::CurrencyUnknown)
}

fn valid_customer(s: &str) -> bool {
    (1..=MAX_CUSTOMER).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic())
}

fn valid_account(s: &str) -> bool {
    (6..=MAX_ACCOUNT).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

#[cfg(test)]
mod tests;
