//! The device registry's read side and the operator's lifecycle transitions.
//!
//! The lifecycle is [`DeviceState`]'s graph. [`Provisioning::transition`]
//! takes only the operator edges — `issued ⇄ suspended` and `→ retired` from
//! any state but `retired` (a device that fails its check, or is lost in
//! stock, must be retirable too). The evidence-bearing edges are refused here
//! with `invalid_transition`: `manufactured → verified` is taken only by
//! [`Provisioning::complete_check`], `verified → initialised` by
//! [`Provisioning::confirm_init`], `initialised → issued` by
//! [`Provisioning::bind`]. Retiring revokes every certificate the CA holds
//! for the device id first (fail closed: a device is never retired with a
//! valid certificate), then closes every working-key version of the device
//! at every issuer.

use keyward_kms::catalog::Catalog;
use keyward_kms::db::{Tx, now_ms};
use keyward_kms::types::DeviceId;

use crate::Provisioning;
use crate::audit::{Action, Actor, AuditNote, Decision, Refused};
use crate::certifier::{DeviceKeyKind, RevokeReason};
use crate::error::{ProvisioningError, Result};
use crate::intake::BatchState;
use crate::store::Store;
use crate::types::{BatchId, DeviceState, OperatorId, Reason, SeSerial};

/// An operator's move of a device, checked and ready to commit
/// ([`Provisioning::prepare_transition`], [`Provisioning::transition_in`]).
#[derive(Debug, Clone)]
pub struct Transition {
    device: DeviceId,
    from: DeviceState,
    to: DeviceState,
    /// The certificates retiring revokes.
    revoke: Vec<String>,
    note: AuditNote,
}

/// A registered device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    pub device_id: DeviceId,
    pub batch_id: BatchId,
    pub psam_serial: Option<SeSerial>,
    pub esam_serial: Option<SeSerial>,
    pub model: String,
    pub firmware: String,
    pub key_kind: DeviceKeyKind,
    /// `None` only while its batch is importing.
    pub cert_serial: Option<String>,
    pub state: DeviceState,
    /// Failed genuine-device checks so far.
    pub check_failures: u32,
    pub verified_at_ms: Option<i64>,
    pub created_at_ms: i64,
    pub state_changed_at_ms: i64,
}

/// Most devices one listing returns.
pub const MAX_DEVICE_LISTING: u32 = 10_000;

impl Provisioning {
    /// A registered device (including one whose batch is still importing).
    pub async fn device(&self, device: DeviceId) -> Result<DeviceRecord> {
        Ok(self.device_and_batch_state(device).await?.0)
    }

    /// The devices of a batch, by device id.
    pub async fn batch_devices(&self, batch: &BatchId, limit: u32) -> Result<Vec<DeviceRecord>> {
        self.devices(None, Some(batch), limit, 0).await
    }

    /// Registered devices by device id, optionally only those in `state`
    /// and/or of `batch`; paged with `limit` (capped at
    /// [`MAX_DEVICE_LISTING`]) and `offset`.
    pub async fn devices(
        &self,
        state: Option<DeviceState>,
        batch: Option<&BatchId>,
        limit: u32,
        offset: u32,
    ) -> Result<Vec<DeviceRecord>> {
        let limit = limit.clamp(1, MAX_DEVICE_LISTING);
        self.store.devices(state, batch, limit, offset).await
    }

    async fn device_and_batch_state(&self, device: DeviceId) -> Result<(DeviceRecord, BatchState)> {
        self.store
            .device(device)
            .await?
            .ok_or(ProvisioningError::UnknownDevice(device))
    }

    /// A device from a completed batch, with its certificate recorded: what
    /// the check and the init package start from. A device of a batch still
    /// importing is not registered yet.
    pub(crate) async fn checkable(&self, device: DeviceId) -> Result<DeviceRecord> {
        let (rec, batch_state) = self.device_and_batch_state(device).await?;
        if batch_state != BatchState::Complete || rec.cert_serial.is_none() {
            return Err(ProvisioningError::UnknownDevice(device));
        }
        Ok(rec)
    }

    /// Every valid certificate the CA holds for `device`, and its
    /// `registered` one whatever the CA lists: what retiring or
    /// re-certifying revokes, so a certificate minted for the device id any
    /// other way dies too.
    pub(crate) async fn device_certificates(
        &self,
        device: DeviceId,
        registered: Option<&str>,
    ) -> Result<Vec<String>> {
        let mut serials = self.certifier.valid_certificates(device).await?;
        if let Some(registered) = registered
            && !serials.iter().any(|s| s == registered)
        {
            serials.push(registered.to_owned());
        }
        Ok(serials)
    }

    /// An operator moves a device along an operator edge (module docs);
    /// returns the state it left. In a unit of work of its own: a caller
    /// with an audit trail commits [`Provisioning::transition_in`] with its
    /// outcome record instead.
    pub async fn transition(
        &self,
        device: DeviceId,
        to: DeviceState,
        operator: &OperatorId,
        reason: &Reason,
    ) -> Decision<DeviceState> {
        let step = self
            .prepare_transition(device, to, operator, reason)
            .await?;
        let note = step.note.clone();
        self.commit("transition", &note, |mut tx| {
            let step = step.clone();
            async move {
                let done = self.transition_in(&mut tx, step).await;
                (tx, done)
            }
        })
        .await
    }

    /// An operator's move, read and checked before its transaction opens:
    /// the state it leaves, and for retiring the certificates to revoke.
    pub async fn prepare_transition(
        &self,
        device: DeviceId,
        to: DeviceState,
        operator: &OperatorId,
        reason: &Reason,
    ) -> Result<Transition, Box<Refused>> {
        let mut note = AuditNote::new(
            Actor::Operator(operator.clone()),
            Action::Transition,
            format!("device:{device}"),
        );
        note.detail("to", to);
        self.note_device_reason(&mut note, device, reason).await;
        let read = async {
            let rec = self.device(device).await?;
            note.detail("from", rec.state);
            if !rec.state.operator_edge(to) {
                return Err(ProvisioningError::InvalidTransition {
                    from: rec.state,
                    to,
                });
            }
            let mut revoke = Vec::new();
            if to == DeviceState::Retired {
                if let Some(registered) = &rec.cert_serial {
                    note.detail("revoked_cert_serial", registered);
                }
                revoke = self
                    .device_certificates(device, rec.cert_serial.as_deref())
                    .await?;
            }
            Ok((rec.state, revoke))
        }
        .await;
        match read {
            Ok((from, revoke)) => Ok(Transition {
                device,
                from,
                to,
                revoke,
                note,
            }),
            Err(e) => Err(note.refused(e)),
        }
    }

    /// The move in the caller's transaction: retiring revokes every
    /// certificate of the device (fail closed: a device is never retired
    /// with a valid certificate) and closes its working keys with it; false
    /// changes (the device moved meanwhile) are a conflict.
    pub async fn transition_in(&self, tx: &mut Tx, step: Transition) -> Decision<DeviceState> {
        let Transition {
            device,
            from,
            to,
            revoke,
            mut note,
        } = step;
        let result = async {
            let changed = if to == DeviceState::Retired {
                for serial in &revoke {
                    self.certifier
                        .revoke_in(tx, serial, RevokeReason::Retired)
                        .await?;
                }
                note.detail("certificates_revoked", revoke.len());
                // One identity: the symmetric keys go with the certificate.
                let keys = Catalog::retire_device_in(tx, device, now_ms()).await?;
                note.detail("key_versions_closed", keys);
                Store::retire_in(tx, device).await?
            } else {
                // Suspend/resume need the state just read.
                Store::change_state_in(tx, device, from, to).await?
            };
            if !changed {
                return Err(ProvisioningError::Conflict(
                    "the device changed state meanwhile",
                ));
            }
            Ok(from)
        }
        .await;
        note.finish(result)
    }

    /// The registry's half of an operator's `issued ⇄ suspended` edge in the
    /// caller's transaction, for a step that commits it with rows of its
    /// own; false if the device was no longer in `from`.
    /// [`ProvisioningError::InvalidTransition`] for any other edge.
    pub async fn change_state_in(
        tx: &mut Tx,
        device: DeviceId,
        from: DeviceState,
        to: DeviceState,
    ) -> Result<bool> {
        if !from.operator_edge(to) || to == DeviceState::Retired {
            return Err(ProvisioningError::InvalidTransition { from, to });
        }
        Store::change_state_in(tx, device, from, to).await
    }

    /// The registry's half of retiring a device in the caller's transaction:
    /// its row and its outstanding challenges; false if it was already
    /// retired. The caller revokes its certificates
    /// ([`DeviceCertifier::revoke_in`](crate::DeviceCertifier::revoke_in))
    /// and closes its working keys (`Catalog::retire_device_in`) in the same
    /// transaction, as [`Provisioning::transition_in`] does.
    pub async fn retire_in(tx: &mut Tx, device: DeviceId) -> Result<bool> {
        Store::retire_in(tx, device).await
    }
}
