//! What operators do to the online credentials and working keys of devices:
//! read a credential, unlock one (the only way back from a lockout), ask for
//! new working keys at the next login for one device or an issuer's fleet,
//! list the devices that owe a key confirmation, and take a device's
//! sessions away when it leaves service. Each change is recorded before it
//! happens and its outcome after (the audit trail's `recorded`).

use keyward_device_provisioning::Reason;
use keyward_kms::types::{DeviceId, IssuerId};

use crate::audit::{Actor, AuditEvent, Outcome};
use crate::online::store::{Credential, DeviceStanding, OnlineStore, PendingRow};
use crate::online::{Online, OnlineError, OnlineEvent, Refusal};

type Result<T> = std::result::Result<T, OnlineError>;

/// An unlocked credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unlocked {
    /// The credential as it is now.
    pub credential: Credential,
    /// The lockout revoked the device's certificate: it cannot connect until
    /// it is re-certified (two operators).
    pub recertification_required: bool,
}

/// Why a device owes a key confirmation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingReason {
    NoKeys,
    Offered,
    Requested,
    Fleet,
}

impl PendingReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoKeys => "no_keys",
            Self::Offered => "offered",
            Self::Requested => "requested",
            Self::Fleet => "fleet",
        }
    }
}

/// A device that owes a key confirmation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingDevice {
    pub device: String,
    pub reason: PendingReason,
    pub active_version: Option<u32>,
}

impl Online {
    /// A device's credential at an issuer (never failed: the default).
    pub async fn credential(&self, issuer: &IssuerId, device: DeviceId) -> Result<Credential> {
        self.kms.issuer(issuer).await?;
        self.provisioning.device(device).await?;
        self.store.credential(issuer, device).await
    }

    /// An operator's unlock: the count to 0 and the lock lifted, recorded
    /// with the reason. `credential_not_locked` when there was no lock.
    pub async fn unlock(
        &self,
        actor: &Actor,
        request_id: &str,
        issuer: &IssuerId,
        device: DeviceId,
        reason: &Reason,
    ) -> Result<Unlocked> {
        self.provisioning.device(device).await?;
        let reason = self
            .provisioning
            .device_reason_for_trail(device, reason)
            .await;
        let requested = AuditEvent::from(OnlineEvent::Unlock {
            device,
            issuer: issuer.clone(),
            reason,
        });
        let before = self
            .audit
            .recorded_write(
                self.store.db(),
                actor,
                request_id,
                &requested,
                |mut tx| async move {
                    let before = OnlineStore::unlock_in(&mut tx, issuer, device).await?;
                    Ok::<_, OnlineError>((tx, before))
                },
                |r| match r {
                    Ok(Some(_)) => (requested.clone(), Outcome::Success),
                    Ok(None) => (
                        requested.clone(),
                        Outcome::Refused {
                            code: Refusal::CredentialNotLocked.code(),
                        },
                    ),
                    Err(e) => AuditEvent::failed("credential.unlock", e.code()),
                },
            )
            .await??;
        let before = before.ok_or(Refusal::CredentialNotLocked)?;
        Ok(Unlocked {
            credential: self.store.credential(issuer, device).await?,
            recertification_required: before.revoked_serial.is_some(),
        })
    }

    /// New working keys at the next login: for `device` (which must be
    /// bound for the issuer) or, with none, for the issuer's whole fleet (one
    /// row, no HSM work until each device logs in). Returns when it was
    /// asked.
    pub async fn request_rotation(
        &self,
        actor: &Actor,
        request_id: &str,
        issuer: &IssuerId,
        device: Option<DeviceId>,
    ) -> Result<i64> {
        self.kms.issuer(issuer).await?;
        if let Some(d) = device {
            let bound = self.provisioning.bindings(d).await?;
            if !bound.iter().any(|b| &b.issuer == issuer) {
                return Err(Refusal::IssuerNotBound.into());
            }
        }
        let requested = AuditEvent::from(OnlineEvent::RotationRequest {
            issuer: issuer.clone(),
            device,
        });
        let now = keyward_kms::db::now_ms();
        let by = &actor.to_string();
        self.audit
            .recorded_write(
                self.store.db(),
                actor,
                request_id,
                &requested,
                |mut tx| async move {
                    match device {
                        Some(d) => {
                            OnlineStore::request_rotation_in(&mut tx, issuer, d, now).await?
                        }
                        None => {
                            OnlineStore::request_fleet_rotation_in(&mut tx, issuer, now, by).await?
                        }
                    }
                    Ok::<_, OnlineError>((tx, ()))
                },
                |r| match r {
                    Ok(()) => (requested.clone(), Outcome::Success),
                    Err(e) => AuditEvent::failed("key.rotate_request", e.code()),
                },
            )
            .await??;
        Ok(now)
    }

    /// Bound devices of `issuer` that owe a key confirmation, and why.
    pub async fn pending_rotations(
        &self,
        issuer: &IssuerId,
        limit: u32,
    ) -> Result<Vec<PendingDevice>> {
        self.kms.issuer(issuer).await?;
        let fleet = self.store.fleet_rotation(issuer).await?;
        let rows = self.store.pending_rotations(issuer, limit).await?;
        Ok(rows
            .into_iter()
            .map(|r: PendingRow| {
                let reason = if r.active_version.is_none() && !r.has_pending {
                    PendingReason::NoKeys
                } else if r.has_pending {
                    PendingReason::Offered
                } else if r.rotate_requested_at_ms.is_some() {
                    PendingReason::Requested
                } else if fleet.is_some() {
                    PendingReason::Fleet
                } else {
                    PendingReason::Offered
                };
                PendingDevice {
                    device: r.device,
                    reason,
                    active_version: r.active_version,
                }
            })
            .collect())
    }

    /// A device's standing for the public listener's per-request check, in
    /// one read.
    pub async fn device_standing(&self, device: DeviceId) -> Result<Option<DeviceStanding>> {
        self.store.device_standing(device).await
    }
}
