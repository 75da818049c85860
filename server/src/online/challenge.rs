//! Login challenges that any replica can check without a row: the challenge
//! id carries the challenge, when it was issued and when it expires, sealed
//! with an HMAC under an HSM key ([`keyward_kms::service::CHALLENGE_SEAL_LABEL`])
//! over those and the device, the issuer and the client certificate it was
//! issued to. Issuing one writes nothing; the finish that uses it inserts its
//! seal into `online_challenges_used` in the same transaction as its effect
//! (the session, or the counted failure), so it is single use across
//! replicas; the maintenance job deletes seals once their challenge expired.
//!
//! The id (base64url, no padding) is, byte by byte:
//!
//! | bytes | field |
//! |---|---|
//! | 1 | format, `0x01` |
//! | 8 | issued at, unix ms, big-endian |
//! | 8 | expires at, unix ms, big-endian |
//! | 1 | challenge length *n* (8 TDES, 16 AES) |
//! | *n* | the challenge |
//! | 16 | the seal: the first 16 bytes of HMAC-SHA256(K_seal, context) |
//!
//! and the context is `"keyward/login-challenge/v1" ‖ 0x00 ‖ device id (16
//! hex) ‖ 0x00 ‖ issuer id ‖ 0x00 ‖ certificate serial (hex) ‖ 0x00 ‖ issued
//! at ‖ expires at ‖ challenge`. Devices treat the id as opaque.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keyward_kms::types::{DeviceId, IssuerId};

/// The format byte of the ids this server issues.
const FORMAT: u8 = 1;
/// Bytes of the seal carried in the id.
pub const SEAL_BYTES: usize = 16;
/// Longest challenge id accepted on the wire (an AES challenge's is 67
/// characters).
pub const MAX_ID_CHARS: usize = 128;

/// Who and what a challenge is for: the part of the seal that the id does
/// not carry.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    pub device: DeviceId,
    pub issuer: &'a IssuerId,
    pub serial: &'a str,
}

impl Scope<'_> {
    /// The bytes sealed for a challenge issued at `issued_at_ms`, expiring at
    /// `expires_at_ms`, before the challenge itself (which the HSM appends
    /// when it draws it).
    pub fn context(&self, issued_at_ms: i64, expires_at_ms: i64) -> Vec<u8> {
        let mut c = Vec::with_capacity(96);
        c.extend_from_slice(b"keyward/login-challenge/v1\0");
        c.extend_from_slice(self.device.to_string().as_bytes());
        c.push(0);
        c.extend_from_slice(self.issuer.as_str().as_bytes());
        c.push(0);
        c.extend_from_slice(self.serial.as_bytes());
        c.push(0);
        c.extend_from_slice(&issued_at_ms.to_be_bytes());
        c.extend_from_slice(&expires_at_ms.to_be_bytes());
        c
    }
}

/// A challenge as its id carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedId {
    pub issued_at_ms: i64,
    pub expires_at_ms: i64,
    pub challenge: Vec<u8>,
    pub seal: [u8; SEAL_BYTES],
}

impl SealedId {
    /// The id on the wire.
    pub fn encode(&self) -> String {
        let mut b = Vec::with_capacity(34 + self.challenge.len());
        b.push(FORMAT);
        b.extend_from_slice(&self.issued_at_ms.to_be_bytes());
        b.extend_from_slice(&self.expires_at_ms.to_be_bytes());
        // A challenge is one cipher block: 8 or 16 bytes.
        b.push(u8::try_from(self.challenge.len()).unwrap_or(u8::MAX));
        b.extend_from_slice(&self.challenge);
        b.extend_from_slice(&self.seal);
        URL_SAFE_NO_PAD.encode(b)
    }

    /// Reads an id; `None` for anything this server did not issue in this
    /// format (the caller answers `challenge_invalid`, as for a forged one).
    pub fn decode(id: &str) -> Option<Self> {
        if id.len() > MAX_ID_CHARS {
            return None;
        }
        let b = URL_SAFE_NO_PAD.decode(id).ok()?;
        let (&format, rest) = b.split_first()?;
        if format != FORMAT || rest.len() < 17 {
            return None;
        }
        let issued_at_ms = i64::from_be_bytes(rest[..8].try_into().ok()?);
        let expires_at_ms = i64::from_be_bytes(rest[8..16].try_into().ok()?);
        let n = usize::from(rest[16]);
        let rest = &rest[17..];
        if !matches!(n, 8 | 16) || rest.len() != n + SEAL_BYTES {
            return None;
        }
        Some(Self {
            issued_at_ms,
            expires_at_ms,
            challenge: rest[..n].to_vec(),
            seal: rest[n..].try_into().ok()?,
        })
    }

    /// The sealed bytes, to check the seal against.
    pub fn sealed_data(&self, scope: &Scope<'_>) -> Vec<u8> {
        let mut data = scope.context(self.issued_at_ms, self.expires_at_ms);
        data.extend_from_slice(&self.challenge);
        data
    }

    /// What `online_challenges_used` stores: the seal in hex (it is unique
    /// per challenge, and not secret).
    pub fn used_key(&self) -> String {
        hex::encode(self.seal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: usize) -> SealedId {
        SealedId {
            issued_at_ms: 1_700_000_000_000,
            expires_at_ms: 1_700_000_060_000,
            challenge: (0..n as u8).collect(),
            seal: [0xA5; SEAL_BYTES],
        }
    }

    #[test]
    fn ids_round_trip_and_stay_short() {
        for n in [8, 16] {
            let id = sample(n);
            let wire = id.encode();
            assert!(wire.len() <= MAX_ID_CHARS, "{}", wire.len());
            assert_eq!(SealedId::decode(&wire), Some(id));
        }
    }

    #[test]
    fn anything_else_is_not_an_id() {
        let good = sample(8).encode();
        for bad in [
            "",
            "00112233445566778899aabbccddeeff",
            &good[..good.len() - 2],
            &format!("{good}AA"),
            "!!!!",
        ] {
            assert_eq!(SealedId::decode(bad), None, "{bad}");
        }
        let mut b = URL_SAFE_NO_PAD.decode(&good).unwrap();
        b[0] = 2;
        assert_eq!(SealedId::decode(&URL_SAFE_NO_PAD.encode(&b)), None);
    }

    #[test]
    fn the_context_binds_device_issuer_and_certificate() {
        let issuer: IssuerId = "bank-a".parse().unwrap();
        let other: IssuerId = "bank-b".parse().unwrap();
        let device: DeviceId = "F000000000000001".parse().unwrap();
        let a = Scope {
            device,
            issuer: &issuer,
            serial: "01AB",
        };
        let b = Scope {
            device,
            issuer: &other,
            serial: "01AB",
        };
        let c = Scope {
            device,
            issuer: &issuer,
            serial: "01AC",
        };
        let id = sample(8);
        assert_ne!(id.sealed_data(&a), id.sealed_data(&b));
        assert_ne!(id.sealed_data(&a), id.sealed_data(&c));
    }
}
