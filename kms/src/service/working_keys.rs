//! Working keys: versions offered to a device, confirmed by its KCVs,
//! replaced with a grace period, and closed when the device is retired.

use crate::catalog::{Catalog, KeyState, NewWorkingKey, VersionRecord, WorkingKeyRecord};
use crate::db::Tx;
use crate::db::now_ms;
use crate::error::{KmsError, Result};
use crate::keys::{self, with_fresh_handles};
use crate::service::Kms;
use crate::service::records::{CHANGE_RETENTION_MS, KeyRecord};
use crate::types::{DeviceId, IssuerId, Kcv, KeyVersion, WorkingKeyRole};

/// A working key offered to a device: it derives `DIV'(TMK_d, r)` and checks `kcv`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferedKey {
    pub role: WorkingKeyRole,
    pub r: [u8; 16],
    pub kcv: Kcv,
}

/// A new, pending working-key version.
#[derive(Debug, Clone)]
pub struct WorkingKeyOffer {
    pub version: KeyVersion,
    pub keys: Vec<OfferedKey>,
}

impl Kms {
    /// Draws fresh `R`s (HSM RNG) for TPK, TAK and TDK, computes their KCVs in
    /// the HSM and records a pending version. Nothing is active until the
    /// device confirms the KCVs ([`Kms::confirm_working_keys`]).
    pub async fn offer_working_keys(
        &self,
        issuer: &IssuerId,
        device: DeviceId,
    ) -> Result<WorkingKeyOffer> {
        let ik = self.issuer_keys(issuer).await?;
        let cache = self.cache.clone();
        let keys = self
            .pool
            .run(move |hsm| {
                with_fresh_handles(&cache, || {
                    let tmk = cache.tmk(hsm, &ik, device)?;
                    WorkingKeyRole::ALL
                        .iter()
                        .map(|role| {
                            let r: [u8; 16] = hsm
                                .random(16)?
                                .try_into()
                                .map_err(|_| KmsError::invalid("random", "short read"))?;
                            let kcv = keys::kcv_of_derived(hsm, tmk, ik.family, &r)?;
                            Ok(OfferedKey {
                                role: *role,
                                r,
                                kcv,
                            })
                        })
                        .collect::<Result<Vec<_>>>()
                })
            })
            .await?;
        let new: Vec<NewWorkingKey> = keys
            .iter()
            .map(|k| NewWorkingKey {
                role: k.role,
                r: k.r,
                kcv: k.kcv,
            })
            .collect();
        match self.catalog.add_pending_version(issuer, device, &new).await {
            Ok(version) => Ok(WorkingKeyOffer { version, keys }),
            // A concurrent start offered first: that offer is the one.
            Err(KmsError::OfferPending(_)) => self
                .pending_offer(issuer, device)
                .await?
                .ok_or(KmsError::CorruptRecord("working_key_versions.state")),
            Err(e) => Err(e),
        }
    }

    /// The device's KCVs for a pending version. All match: the version becomes
    /// active and the previous one enters its grace period. Any mismatch (or a
    /// missing role) is an intrusion signal: the version is rejected for good
    /// and [`KmsError::KcvMismatch`] is returned. One unit of work; a caller
    /// that commits more with it uses [`Kms::check_confirmation`] and
    /// [`Kms::apply_confirmation_in`].
    pub async fn confirm_working_keys(
        &self,
        issuer: &IssuerId,
        device: DeviceId,
        version: KeyVersion,
        device_kcvs: &[(WorkingKeyRole, Kcv)],
    ) -> Result<()> {
        let matched = self
            .check_confirmation(issuer, device, version, device_kcvs)
            .await?;
        self.catalog
            .db()
            .write("confirm_working_keys", |mut tx| async move {
                self.apply_confirmation_in(&mut tx, issuer, device, version, matched)
                    .await
                    .map(|()| (tx, ()))
            })
            .await?;
        if matched {
            Ok(())
        } else {
            Err(KmsError::KcvMismatch(version))
        }
    }

    /// Whether the device's KCVs are those of every key of the pending
    /// `version` (a missing role is a mismatch). Reads only: keys of a version
    /// never change, and its state is checked again where the verdict is
    /// applied ([`Kms::apply_confirmation_in`]).
    pub async fn check_confirmation(
        &self,
        issuer: &IssuerId,
        device: DeviceId,
        version: KeyVersion,
        device_kcvs: &[(WorkingKeyRole, Kcv)],
    ) -> Result<bool> {
        let mut all_match = true;
        for role in WorkingKeyRole::ALL {
            let rec = self.working_key(issuer, device, version, role).await?;
            if rec.state != KeyState::Pending {
                return Err(KmsError::KeyVersionNotPending {
                    version,
                    state: rec.state.as_str().to_owned(),
                });
            }
            let reported = device_kcvs.iter().find(|(r, _)| *r == role).map(|(_, k)| k);
            all_match &= reported.is_some_and(|k| k.matches(&rec.kcv));
        }
        Ok(all_match)
    }

    /// Applies a verdict of [`Kms::check_confirmation`] in the caller's
    /// transaction: a match activates the version (the one it replaces
    /// enters its grace period), a mismatch rejects it for good.
    /// [`KmsError::KeyVersionNotPending`] if another confirmation got there
    /// first.
    pub async fn apply_confirmation_in(
        &self,
        tx: &mut Tx,
        issuer: &IssuerId,
        device: DeviceId,
        version: KeyVersion,
        matched: bool,
    ) -> Result<()> {
        if matched {
            Catalog::activate_version_in(tx, issuer, device, version, self.grace).await
        } else {
            tracing::warn!(issuer = %issuer, device = %device, version = %version,
                "working-key KCV mismatch reported by device; version rejected");
            Catalog::reject_version_in(tx, issuer, device, version).await
        }
    }

    /// The newest `pending` version of a device's working keys as it was
    /// offered (same `R`s and KCVs), to send again to a device that has not
    /// confirmed it yet; `None` without one. Re-sending instead of offering
    /// anew keeps a device that fails to answer from piling up versions.
    pub async fn pending_offer(
        &self,
        issuer: &IssuerId,
        device: DeviceId,
    ) -> Result<Option<WorkingKeyOffer>> {
        let versions = self.catalog.versions(issuer, device).await?;
        let Some(pending) = versions.iter().find(|v| v.state == KeyState::Pending) else {
            return Ok(None);
        };
        // Never offer a version older than one already in use: confirming
        // it would roll the device back. (The catalog keeps none since the
        // one-pending rule; this holds for rows from before it.)
        if versions
            .iter()
            .any(|v| v.version > pending.version && v.activated_at_ms.is_some())
        {
            self.catalog
                .reject_version(issuer, device, pending.version)
                .await?;
            return Ok(None);
        }
        let mut keys = Vec::with_capacity(WorkingKeyRole::ALL.len());
        for role in WorkingKeyRole::ALL {
            let rec = self
                .working_key(issuer, device, pending.version, role)
                .await?;
            keys.push(OfferedKey {
                role,
                r: rec.r,
                kcv: rec.kcv,
            });
        }
        Ok(Some(WorkingKeyOffer {
            version: pending.version,
            keys,
        }))
    }

    /// Ends the grace period of every replaced version whose time is up
    /// (`retiring` → `retired`); returns how many. A background job runs it
    /// on one replica at a time.
    pub async fn end_grace_periods(&self) -> Result<u64> {
        self.catalog.retire_due(now_ms()).await
    }

    /// Deletes change-log rows older than [`CHANGE_RETENTION_MS`]; returns
    /// how many. Run by the same job as [`Kms::end_grace_periods`].
    pub async fn prune_key_changes(&self) -> Result<u64> {
        self.catalog
            .prune_key_changes(now_ms().saturating_sub(CHANGE_RETENTION_MS))
            .await
    }

    /// Every working-key version of a device at an issuer, newest first.
    pub async fn key_versions(
        &self,
        issuer: &IssuerId,
        device: DeviceId,
    ) -> Result<Vec<VersionRecord>> {
        self.catalog.versions(issuer, device).await
    }

    /// A retired device keeps no usable key: its pending versions are
    /// rejected and its active and retiring ones retired now, at every
    /// issuer, in one transaction. Returns how many versions changed.
    pub async fn retire_device_keys(&self, device: DeviceId) -> Result<u64> {
        self.catalog.retire_device(device, now_ms()).await
    }
    /// A working key of `role` and `version` that may still be used (active,
    /// or replaced and inside its grace period), from the records held in
    /// memory when they are there (after a sync of the change log), else
    /// from the catalog.
    pub(super) async fn usable_working_key(
        &self,
        issuer: &IssuerId,
        device: DeviceId,
        version: KeyVersion,
        role: WorkingKeyRole,
    ) -> Result<KeyRecord> {
        let synced = self.records.sync(&self.catalog).await?;
        let rec = match self.records.get(issuer, device, version, role) {
            Some(rec) => rec,
            None => {
                let rec = self.working_key(issuer, device, version, role).await?;
                self.records.keep(synced, [&rec]);
                KeyRecord::from(&rec)
            }
        };
        if !rec.usable_at(now_ms()) {
            return Err(not_usable(version, rec.state));
        }
        Ok(rec)
    }

    pub(super) async fn working_key(
        &self,
        issuer: &IssuerId,
        device: DeviceId,
        version: KeyVersion,
        role: WorkingKeyRole,
    ) -> Result<WorkingKeyRecord> {
        self.catalog
            .working_key(issuer, device, version, role)
            .await?
            .ok_or_else(|| KmsError::UnknownKeyVersion {
                issuer: issuer.clone(),
                device,
                version,
            })
    }
}

/// A version that exists but may not be used (any more, or yet).
pub(super) fn not_usable(version: KeyVersion, state: KeyState) -> KmsError {
    KmsError::KeyVersionNotUsable {
        version,
        // A retiring version past its end is retired, whether or not the
        // job has marked it yet.
        state: match state {
            KeyState::Retiring => KeyState::Retired,
            s => s,
        }
        .as_str()
        .to_owned(),
    }
}
