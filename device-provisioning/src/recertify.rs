//! Re-certification: a registered device gets a certificate for a new key,
//! the only way besides batch intake that a device certificate is made.
//!
//! Maker-checker, as customer review: one operator asks
//! ([`Provisioning::request_recertify`], with the device's new CSR and a
//! reason), a second, different operator approves
//! ([`Provisioning::approve_recertify`]). Both are audited. The CSR is
//! checked at both steps like a batch row's (signature, key type, a subject
//! serialNumber naming only this device, a key no device ever had). On
//! approval the new certificate is issued, its key registered to the device
//! and the certificate recorded as the device's, then every other
//! certificate of the device id is revoked (`superseded`). A retired device
//! is not re-certified; at most one request is pending per device.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use keyward_kms::db::{Tx, now_ms};
use keyward_kms::types::DeviceId;

use crate::Provisioning;
use crate::audit::{Action, Actor, AuditNote, Decision, Prepared, Refused};
use crate::certifier::{DeviceCsr, RevokeReason};
use crate::error::{ProvisioningError, Result};
use crate::store::{PendingRecertification, Store, UniqueColumn, is_unique_violation};
use crate::types::{DeviceState, OperatorId, Reason};

/// A re-certification, pending or done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recertification {
    pub device: DeviceId,
    pub requested_by: String,
    pub requested_at_ms: i64,
    /// The new certificate, once approved.
    pub cert_serial: Option<String>,
    /// Certificates revoked by the approval.
    pub revoked: Vec<String>,
}

/// A re-certification request checked before its transaction
/// ([`Provisioning::request_recertify_in`]).
#[derive(Debug, Clone)]
pub struct RecertifyRequest(PendingRecertification);

impl Provisioning {
    /// One operator asks for a new certificate for `device`'s new key. In a
    /// unit of work of its own; see [`Provisioning::request_recertify_in`].
    pub async fn request_recertify(
        &self,
        device: DeviceId,
        csr: &[u8],
        operator: &OperatorId,
        reason: &Reason,
    ) -> Decision<Recertification> {
        let step = self
            .prepare_request_recertify(device, csr, operator, reason)
            .await?;
        self.commit("request_recertify", step.note(), |mut tx| {
            let step = step.clone();
            async move {
                let done = Self::request_recertify_in(&mut tx, step).await;
                (tx, done)
            }
        })
        .await
    }

    /// [`Provisioning::request_recertify`]'s reads and CSR checks, before
    /// its transaction.
    pub async fn prepare_request_recertify(
        &self,
        device: DeviceId,
        csr: &[u8],
        operator: &OperatorId,
        reason: &Reason,
    ) -> Result<Prepared<RecertifyRequest>, Box<Refused>> {
        let mut note = AuditNote::new(
            Actor::Operator(operator.clone()),
            Action::RequestRecertify,
            format!("device:{device}"),
        );
        self.note_device_reason(&mut note, device, reason).await;
        let checked = async {
            self.recertifiable(device).await?;
            self.recertify_csr(device, csr).await
        }
        .await;
        match checked {
            Ok(checked) => Ok(Prepared {
                input: RecertifyRequest(PendingRecertification {
                    device,
                    csr: B64.encode(csr),
                    spki_sha256: checked.spki_sha256().to_owned(),
                    reason: reason.as_str().to_owned(),
                    requested_by: operator.as_str().to_owned(),
                    requested_at_ms: now_ms(),
                }),
                note,
            }),
            Err(e) => Err(note.refused(e)),
        }
    }

    /// Keeps the request ([`Provisioning::prepare_request_recertify`]) in
    /// the caller's transaction.
    pub async fn request_recertify_in(
        tx: &mut Tx,
        step: Prepared<RecertifyRequest>,
    ) -> Decision<Recertification> {
        let Prepared {
            input: RecertifyRequest(input),
            note,
        } = step;
        let result = Store::put_recertification_in(tx, &input)
            .await
            .map(|()| Recertification {
                device: input.device,
                requested_by: input.requested_by,
                requested_at_ms: input.requested_at_ms,
                cert_serial: None,
                revoked: Vec::new(),
            });
        note.finish(result)
    }

    /// A second operator approves the pending request: the new certificate
    /// is issued and every other certificate of the device revoked.
    pub async fn approve_recertify(
        &self,
        device: DeviceId,
        operator: &OperatorId,
    ) -> Decision<Recertification> {
        let mut note = AuditNote::new(
            Actor::Operator(operator.clone()),
            Action::ApproveRecertify,
            format!("device:{device}"),
        );
        let result = self.approve_inner(device, operator, &mut note).await;
        note.finish(result)
    }

    async fn approve_inner(
        &self,
        device: DeviceId,
        operator: &OperatorId,
        note: &mut AuditNote,
    ) -> Result<Recertification> {
        let pending = self
            .store
            .recertification(device)
            .await?
            .ok_or(ProvisioningError::NoPendingRecertification(device))?;
        note.detail("requested_by", &pending.requested_by);
        if operator.same_person(&pending.requested_by) {
            return Err(ProvisioningError::SelfApproval);
        }
        self.recertifiable(device).await?;
        let csr = B64
            .decode(&pending.csr)
            .map_err(|_| ProvisioningError::CorruptRecord("prov_recertifications.csr"))?;
        let checked = self.recertify_csr(device, &csr).await?;
        if !self.store.take_recertification(device).await? {
            return Err(ProvisioningError::NoPendingRecertification(device));
        }
        let cert = self.certifier.certify(&checked, device).await?;
        note.detail("cert_serial", &cert.serial);
        let registered = self
            .store
            .register_new_certificate(device, checked.spki_sha256(), &cert.serial)
            .await;
        if let Err(e) = registered {
            // Never leave a valid certificate the registry does not own.
            if let Err(r) = self
                .certifier
                .revoke(&cert.serial, RevokeReason::Superseded)
                .await
            {
                tracing::error!(device = %device, serial = %cert.serial, code = r.code(),
                    "could not revoke an unregistered re-certification; revoke it by hand");
            }
            return Err(if is_unique_violation(&e) {
                ProvisioningError::PublicKeyReused
            } else {
                e
            });
        }
        let revoked = self
            .revoke_device_certificates(device, RevokeReason::Superseded, Some(&cert.serial))
            .await?;
        note.detail("certificates_revoked", revoked.len());
        Ok(Recertification {
            device,
            requested_by: pending.requested_by,
            requested_at_ms: pending.requested_at_ms,
            cert_serial: Some(cert.serial),
            revoked,
        })
    }

    async fn recertifiable(&self, device: DeviceId) -> Result<()> {
        let rec = self.checkable(device).await?;
        if rec.state == DeviceState::Retired {
            return Err(ProvisioningError::DeviceState {
                device,
                state: rec.state,
                needed: "a registered device that is not retired",
            });
        }
        Ok(())
    }

    /// A CSR checked as a batch row's is, plus "a key no device ever had".
    async fn recertify_csr(&self, device: DeviceId, csr: &[u8]) -> Result<DeviceCsr> {
        let checked = self.certifier.check_csr(csr)?;
        if !checked.names_only(device) {
            return Err(ProvisioningError::CsrSubjectMismatch);
        }
        let fingerprint = checked.spki_sha256().to_owned();
        if !self
            .store
            .existing(UniqueColumn::DeviceKey, std::slice::from_ref(&fingerprint))
            .await?
            .is_empty()
        {
            return Err(ProvisioningError::PublicKeyReused);
        }
        Ok(checked)
    }
}
