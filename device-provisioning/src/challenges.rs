//! Challenges by id: one mechanism for every challenge a device answers —
//! the genuine-device check now, login's random-auth challenges later.
//!
//! [`Challenges::issue`] keeps the bytes under a fresh random id, for one
//! [`ChallengePurpose`], valid for a TTL. Up to [`MAX_OUTSTANDING`] may be
//! outstanding per (device, purpose): a new one evicts the oldest beyond
//! that (and any expired), so two stations, or a retry through a load
//! balancer, asking at once do not defeat each other, and nobody can keep an
//! unbounded number alive. [`Challenges::answer`] consumes exactly the
//! challenge its id names — single use, whatever the caller then decides
//! about the answer — with one conditional `DELETE … RETURNING`, so of two
//! concurrent answers to one challenge, on one replica or two, at most one
//! gets its bytes. An id that is unknown, used, expired, evicted, or another
//! device's or purpose's is [`ProvisioningError::ChallengeInvalid`].
//!
//! The caller verifies the answer and counts failures (the genuine-device
//! check: [`crate::check`]); this module only keeps the bytes. Login
//! challenges are not kept here: the online service seals them instead of
//! storing them.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use keyward_kms::db::{Tx, now_ms};
use keyward_kms::types::DeviceId;
use rand::RngCore;

use crate::error::{ProvisioningError, Result};
use crate::store::{Store, StoredChallenge};

/// Most challenges outstanding per (device, purpose).
pub const MAX_OUTSTANDING: u32 = 4;
/// Largest challenge kept, in bytes.
pub const MAX_CHALLENGE_BYTES: usize = 64;

/// What a challenge is for: an answer counts only for the purpose (and
/// scope) it was issued for. The stored names ([`ChallengePurpose::as_str`],
/// [`ChallengePurpose::scope`]) never change.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ChallengePurpose {
    /// The genuine-device check (proof of possession of the certified key).
    GenuineDevice,
}

impl ChallengePurpose {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::GenuineDevice => "genuine_device",
        }
    }

    /// What the purpose is narrowed to, `""` for none (the stored column
    /// keeps room for a scoped purpose).
    pub fn scope(&self) -> &str {
        match self {
            Self::GenuineDevice => "",
        }
    }
}

/// A challenge's id: 16 random bytes, as 32 upper-case hex digits.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ChallengeId(String);

impl ChallengeId {
    fn random() -> Self {
        let mut b = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut b);
        Self(hex::encode_upper(b))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ChallengeId {
    type Err = ProvisioningError;
    /// 32 hex digits, either case.
    fn from_str(s: &str) -> Result<Self> {
        if s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Self(s.to_ascii_uppercase()))
        } else {
            Err(ProvisioningError::Invalid {
                field: "challenge_id",
                reason: "32 hexadecimal digits",
            })
        }
    }
}

impl fmt::Display for ChallengeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ChallengeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChallengeId({})", self.0)
    }
}

/// An issued challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedChallenge {
    pub id: ChallengeId,
    pub expires_at_ms: i64,
}

/// A challenge checked and named, not kept yet ([`Challenges::prepare`]).
#[derive(Debug, Clone)]
pub struct NewChallenge {
    stored: StoredChallenge,
    now: i64,
}

impl NewChallenge {
    fn issued(&self) -> IssuedChallenge {
        IssuedChallenge {
            id: ChallengeId(self.stored.id.clone()),
            expires_at_ms: self.stored.expires_at_ms,
        }
    }
}

/// The challenges of every purpose, in the provisioning database. Cheap to
/// clone.
#[derive(Debug, Clone)]
pub struct Challenges {
    store: Store,
}

impl Challenges {
    pub(crate) fn new(store: Store) -> Self {
        Self { store }
    }

    /// Keeps `bytes` (1..=[`MAX_CHALLENGE_BYTES`], drawn by the caller from
    /// the HSM) as a challenge for `device` and `purpose`, valid for `ttl`.
    pub async fn issue(
        &self,
        device: DeviceId,
        purpose: ChallengePurpose,
        bytes: &[u8],
        ttl: Duration,
    ) -> Result<IssuedChallenge> {
        let new = Self::prepare(device, purpose, bytes, ttl)?;
        self.store
            .put_challenge(&new.stored, new.now, MAX_OUTSTANDING)
            .await?;
        Ok(new.issued())
    }

    /// [`Challenges::issue`]'s checks and id, before the transaction that
    /// keeps it ([`Challenges::issue_in`]).
    pub fn prepare(
        device: DeviceId,
        purpose: ChallengePurpose,
        bytes: &[u8],
        ttl: Duration,
    ) -> Result<NewChallenge> {
        if bytes.is_empty() || bytes.len() > MAX_CHALLENGE_BYTES {
            return Err(ProvisioningError::Invalid {
                field: "challenge",
                reason: "1 to 64 bytes",
            });
        }
        let now = now_ms();
        let ttl = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        Ok(NewChallenge {
            stored: StoredChallenge {
                id: ChallengeId::random().0,
                device,
                purpose: purpose.as_str(),
                scope: purpose.scope().to_owned(),
                bytes: bytes.to_vec(),
                expires_at_ms: now.saturating_add(ttl),
            },
            now,
        })
    }

    /// Keeps a prepared challenge in the caller's transaction.
    pub async fn issue_in(tx: &mut Tx, new: &NewChallenge) -> Result<IssuedChallenge> {
        Store::put_challenge_in(tx, &new.stored, new.now, MAX_OUTSTANDING).await?;
        Ok(new.issued())
    }

    /// Consumes challenge `id` and returns its bytes if it is `device`'s, for
    /// `purpose`, and not expired; [`ProvisioningError::ChallengeInvalid`]
    /// otherwise. Either way the challenge is gone.
    pub async fn answer(
        &self,
        id: &ChallengeId,
        device: DeviceId,
        purpose: ChallengePurpose,
    ) -> Result<Vec<u8>> {
        match self
            .store
            .take_challenge(id.as_str(), device, &purpose)
            .await?
        {
            Some(c) if now_ms() < c.expires_at_ms => Ok(c.bytes),
            _ => Err(ProvisioningError::ChallengeInvalid),
        }
    }

    /// Drops every outstanding challenge of `device` for `purpose` (a locked
    /// or retired device answers none).
    pub async fn drop_all(&self, device: DeviceId, purpose: ChallengePurpose) -> Result<()> {
        self.store.drop_challenges(device, &purpose).await
    }
}

impl Challenges {
    /// Deletes every expired challenge; returns how many, by purpose name
    /// (`genuine_device`, `login`). A periodic sweep: expired challenges
    /// are refused anyway, this only keeps the table small.
    pub async fn purge_expired(&self) -> Result<Vec<(String, u64)>> {
        self.store.purge_expired_challenges(now_ms()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_32_hex_digits() {
        let id = ChallengeId::random();
        assert_eq!(id.as_str().len(), 32);
        assert_eq!(id.as_str().parse::<ChallengeId>().unwrap(), id);
        assert_eq!(
            id.as_str()
                .to_ascii_lowercase()
                .parse::<ChallengeId>()
                .unwrap(),
            id
        );
        assert!("xyz".parse::<ChallengeId>().is_err());
        assert_ne!(ChallengeId::random(), ChallengeId::random());
    }
}
