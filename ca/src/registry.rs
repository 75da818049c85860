//! The registry's vocabulary: serial numbers, certificate records, statuses,
//! revocation reasons and listing filters. The SQL lives in `store`.

use std::fmt;
use std::str::FromStr;

use keyward_kms::types::DeviceId;
use rand::RngCore;

use crate::error::{CaError, Result};
use crate::profile::{Profile, Role};

/// Bytes of a serial the CA assigns (RFC 5280 allows up to 20).
pub(crate) const SERIAL_LEN: usize = 16;

/// A certificate serial number: the positive integer as upper-case hex of its
/// minimal big-endian bytes (`3F0A…`), the registry's key. Parse one from hex
/// (case-insensitive, `:` separators allowed) or build it from the raw DER
/// integer bytes of a certificate ([`Serial::from_bytes`]).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Serial(String);

impl Serial {
    /// From the big-endian bytes of the serial (leading zero bytes, as DER
    /// adds for a high bit, are dropped).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
        let bytes = &bytes[start..];
        if bytes.is_empty() || bytes.len() > 20 {
            return Err(CaError::Invalid {
                field: "serial",
                reason: "a positive integer of at most 20 bytes",
            });
        }
        Ok(Self(hex::encode_upper(bytes)))
    }

    /// A fresh random positive serial of [`SERIAL_LEN`] bytes whose first
    /// byte is never zero, so its hex is always 32 digits.
    pub(crate) fn random() -> Self {
        let mut b = [0u8; SERIAL_LEN];
        rand::rngs::OsRng.fill_bytes(&mut b);
        b[0] &= 0x7f;
        if b[0] == 0 {
            b[0] = 0x01;
        }
        Self(hex::encode_upper(b))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The big-endian bytes of the serial.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Always valid: built only from bytes or checked hex.
        hex::decode(&self.0).unwrap_or_default()
    }
}

impl FromStr for Serial {
    type Err = CaError;
    fn from_str(s: &str) -> Result<Self> {
        let digits: String = s.chars().filter(|c| *c != ':').collect();
        let bad = CaError::Invalid {
            field: "serial",
            reason: "hexadecimal digits",
        };
        if digits.is_empty() || digits.len() > 40 {
            return Err(bad);
        }
        let padded = if digits.len() % 2 == 1 {
            format!("0{digits}")
        } else {
            digits
        };
        let bytes = hex::decode(padded).map_err(|_| bad)?;
        Self::from_bytes(&bytes)
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Serial({})", self.0)
    }
}

/// Whether a registered certificate still stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CertStatus {
    Valid,
    Revoked,
}

impl CertStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Valid => "valid",
            Self::Revoked => "revoked",
        }
    }
}

impl FromStr for CertStatus {
    type Err = CaError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "valid" => Ok(Self::Valid),
            "revoked" => Ok(Self::Revoked),
            _ => Err(CaError::Invalid {
                field: "status",
                reason: "valid or revoked",
            }),
        }
    }
}

/// Why a certificate was revoked: the RFC 5280 §5.3.1 reason codes that apply
/// to end-entity certificates this CA issues. `certificateHold` is left out on
/// purpose: a revocation here is final (an operator re-issues instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RevocationReason {
    Unspecified,
    KeyCompromise,
    AffiliationChanged,
    Superseded,
    CessationOfOperation,
    /// E.g. a device locked after ten failed logins (docs/protocol.md §7).
    PrivilegeWithdrawn,
}

impl RevocationReason {
    pub const ALL: [RevocationReason; 6] = [
        Self::Unspecified,
        Self::KeyCompromise,
        Self::AffiliationChanged,
        Self::Superseded,
        Self::CessationOfOperation,
        Self::PrivilegeWithdrawn,
    ];

    /// The RFC 5280 name (`keyCompromise`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::KeyCompromise => "keyCompromise",
            Self::AffiliationChanged => "affiliationChanged",
            Self::Superseded => "superseded",
            Self::CessationOfOperation => "cessationOfOperation",
            Self::PrivilegeWithdrawn => "privilegeWithdrawn",
        }
    }

    /// The CRLReason code.
    pub fn code(self) -> u8 {
        match self {
            Self::Unspecified => 0,
            Self::KeyCompromise => 1,
            Self::AffiliationChanged => 3,
            Self::Superseded => 4,
            Self::CessationOfOperation => 5,
            Self::PrivilegeWithdrawn => 9,
        }
    }

    /// The CRL entry's reasonCode; absent for `unspecified`, as RFC 5280
    /// §5.3.1 asks.
    pub(crate) fn crl_reason(self) -> Option<rcgen::RevocationReason> {
        use rcgen::RevocationReason as R;
        match self {
            Self::Unspecified => None,
            Self::KeyCompromise => Some(R::KeyCompromise),
            Self::AffiliationChanged => Some(R::AffiliationChanged),
            Self::Superseded => Some(R::Superseded),
            Self::CessationOfOperation => Some(R::CessationOfOperation),
            Self::PrivilegeWithdrawn => Some(R::PrivilegeWithdrawn),
        }
    }
}

impl fmt::Display for RevocationReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RevocationReason {
    type Err = CaError;
    /// The RFC 5280 name, case-insensitive (`keyCompromise`, `keycompromise`).
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str().eq_ignore_ascii_case(s))
            .ok_or(CaError::Invalid {
                field: "reason",
                reason: "an RFC 5280 reason: unspecified, keyCompromise, affiliationChanged, \
                         superseded, cessationOfOperation, privilegeWithdrawn",
            })
    }
}

/// One registered certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertRecord {
    pub serial: Serial,
    pub profile: Profile,
    /// The subject DN as text (`CN=…, O=…`), for listings.
    pub subject: String,
    pub device_id: Option<DeviceId>,
    pub operator_role: Option<Role>,
    pub not_before_ms: i64,
    pub not_after_ms: i64,
    pub issued_at_ms: i64,
    pub status: CertStatus,
    pub revoked_at_ms: Option<i64>,
    pub reason: Option<RevocationReason>,
    pub pem: String,
}

/// Which certificates [`crate::Ca::list`] returns: every set field must
/// match. Newest first; `limit` defaults to 100 and is capped at 1000.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertFilter {
    pub profile: Option<Profile>,
    pub status: Option<CertStatus>,
    pub device_id: Option<DeviceId>,
    pub limit: Option<u32>,
    pub offset: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials() {
        let s = Serial::random();
        assert_eq!(s.as_str().len(), 32);
        assert_eq!(s.to_bytes().len(), SERIAL_LEN);
        assert!(s.to_bytes()[0] != 0 && s.to_bytes()[0] < 0x80);
        assert_eq!(s.as_str().parse::<Serial>().unwrap(), s);
        assert_eq!(
            "00:8f:0a".parse::<Serial>().unwrap(),
            Serial::from_bytes(&[0x8f, 0x0a]).unwrap()
        );
        assert_eq!("abc".parse::<Serial>().unwrap().as_str(), "0ABC");
        assert!("".parse::<Serial>().is_err());
        assert!("00".parse::<Serial>().is_err());
        assert!("xy".parse::<Serial>().is_err());
        assert_ne!(Serial::random(), Serial::random());
    }

    #[test]
    fn reasons() {
        for r in RevocationReason::ALL {
            assert_eq!(r.as_str().parse::<RevocationReason>().unwrap(), r);
        }
        assert_eq!(
            "KEYCOMPROMISE".parse::<RevocationReason>().unwrap(),
            RevocationReason::KeyCompromise
        );
        assert!("certificateHold".parse::<RevocationReason>().is_err());
        assert_eq!(RevocationReason::Unspecified.crl_reason(), None);
    }
}
