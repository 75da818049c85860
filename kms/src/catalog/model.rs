//! What the catalog stores, as domain values. No type here can hold key bytes:
//! master keys are named by their HSM label, working keys by the public input
//! `R` they are re-derived from.

use std::fmt;
use std::str::FromStr;

use crate::error::KmsError;
use crate::types::{DeviceId, IssuerId, Kcv, KeyFamily, KeyVersion, WorkingKeyRole};

/// An issuer and its master keys, created together so an issuer is never
/// recorded without the keys its devices are diversified from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerRecord {
    pub id: IssuerId,
    pub family: KeyFamily,
    pub master_keys: Vec<MasterKeyRecord>,
    pub created_at_ms: i64,
}

impl IssuerRecord {
    /// The master key of `role`, if the issuer has one.
    pub fn master_key(&self, role: MasterKeyRole) -> Option<&MasterKeyRecord> {
        self.master_keys.iter().find(|k| k.role == role)
    }
}

/// An issuer master key as the catalog knows it: where it is on the token
/// (label) and how to recognise it (KCV), never its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterKeyRecord {
    pub role: MasterKeyRole,
    pub label: String,
    pub kcv: Kcv,
}

/// Which issuer token key: the master derivation keys (docs/protocol.md
/// §3.1) and the zone PIN key (§8.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MasterKeyRole {
    /// Derives `TMK_d`, which protects working-key delivery.
    ImkTmk,
    /// Derives `AUTH_d`, the challenge/response key.
    ImkAuth,
    /// The zone PIN key a PIN block is translated to for the issuer's
    /// systems; encrypt-only (no host may decrypt a PIN block under it).
    Zpk,
}

impl MasterKeyRole {
    pub const ALL: [MasterKeyRole; 3] = [Self::ImkTmk, Self::ImkAuth, Self::Zpk];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ImkTmk => "IMK-TMK",
            Self::ImkAuth => "IMK-AUTH",
            Self::Zpk => "ZPK",
        }
    }

    /// What the key may do on the token.
    pub fn usage(self) -> crate::hsm::Usage {
        match self {
            Self::ImkTmk | Self::ImkAuth => crate::hsm::Usage::DERIVE,
            Self::Zpk => crate::hsm::Usage::ENCRYPT,
        }
    }
}

impl FromStr for MasterKeyRole {
    type Err = KmsError;
    fn from_str(s: &str) -> Result<Self, KmsError> {
        match s {
            "IMK-TMK" => Ok(Self::ImkTmk),
            "IMK-AUTH" => Ok(Self::ImkAuth),
            "ZPK" => Ok(Self::Zpk),
            _ => Err(KmsError::invalid(
                "role",
                "must be IMK-TMK, IMK-AUTH or ZPK",
            )),
        }
    }
}

impl fmt::Display for MasterKeyRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One working key of a version being offered to a device: the HSM derived it
/// from `R` to compute the KCV and then forgot it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewWorkingKey {
    pub role: WorkingKeyRole,
    pub r: [u8; 16],
    pub kcv: Kcv,
}

/// A recorded working key with the state of its version, which is all a
/// caller needs to decide whether to re-derive and use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkingKeyRecord {
    pub issuer: IssuerId,
    pub device: DeviceId,
    pub version: KeyVersion,
    pub role: WorkingKeyRole,
    pub r: [u8; 16],
    pub kcv: Kcv,
    pub state: KeyState,
    pub created_at_ms: i64,
    /// End of the grace period of a replaced (`retiring`) version.
    pub retire_at_ms: Option<i64>,
}

impl WorkingKeyRecord {
    /// Whether the key may be used at `now_ms`: its version is active, or
    /// replaced and still inside its grace period. The time is checked here
    /// too, not only by the job that marks versions `retired`, so a key
    /// stops at the end of its grace period to the millisecond.
    pub fn usable_at(&self, now_ms: i64) -> bool {
        self.state.usable_at(self.retire_at_ms, now_ms)
    }
}

/// The life of one working-key version of an (issuer, device).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionRecord {
    pub version: KeyVersion,
    pub state: KeyState,
    pub created_at_ms: i64,
    pub activated_at_ms: Option<i64>,
    /// When a `retiring` version stops being accepted.
    pub retire_at_ms: Option<i64>,
}

/// State of a working-key version. A version only moves forward:
/// `pending → active → retiring → retired`, or `pending → rejected`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyState {
    /// Offered to the device, KCVs not yet confirmed: not usable.
    Pending,
    /// Confirmed by the device: the version in use.
    Active,
    /// Replaced, but still accepted until its grace period ends, for
    /// transactions the device made before it switched.
    Retiring,
    /// The device reported a KCV mismatch (an intrusion signal): never usable.
    Rejected,
    /// Past its grace period: never usable again.
    Retired,
}

impl KeyState {
    pub const ALL: [KeyState; 5] = [
        Self::Pending,
        Self::Active,
        Self::Retiring,
        Self::Rejected,
        Self::Retired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Active => "active",
            Self::Retiring => "retiring",
            Self::Rejected => "rejected",
            Self::Retired => "retired",
        }
    }

    /// Whether MACs, PIN blocks and data under keys of this version are accepted.
    pub fn usable(self) -> bool {
        matches!(self, Self::Active | Self::Retiring)
    }

    /// [`KeyState::usable`], and for a replaced version also before the end
    /// of its grace period, `retire_at_ms`.
    pub fn usable_at(self, retire_at_ms: Option<i64>, now_ms: i64) -> bool {
        match self {
            Self::Active => true,
            Self::Retiring => retire_at_ms.is_none_or(|end| now_ms < end),
            _ => false,
        }
    }
}

impl FromStr for KeyState {
    type Err = KmsError;
    fn from_str(s: &str) -> Result<Self, KmsError> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                KmsError::invalid(
                    "state",
                    "must be pending, active, retiring, rejected or retired",
                )
            })
    }
}

impl fmt::Display for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in KeyState::ALL {
            assert_eq!(s.as_str().parse::<KeyState>().unwrap(), s);
        }
        for r in MasterKeyRole::ALL {
            assert_eq!(r.as_str().parse::<MasterKeyRole>().unwrap(), r);
        }
        assert!("Active".parse::<KeyState>().is_err());
        assert!("IMK".parse::<MasterKeyRole>().is_err());
    }

    #[test]
    fn only_active_and_retiring_are_usable() {
        let usable: Vec<_> = KeyState::ALL.into_iter().filter(|s| s.usable()).collect();
        assert_eq!(usable, [KeyState::Active, KeyState::Retiring]);
    }
}
