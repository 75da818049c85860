//! Re-certification: a registered device gets a certificate for a new key,
//! the only way besides batch intake that a device certificate is made.
//!
//! Maker-checker, as customer review: one operator asks
//! ([`Provisioning::request_recertify`], with the device's new CSR and a
//! reason), a second, different operator approves
//! ([`Provisioning::approve_recertify`]). Both are audited. The CSR is
//! checked at both steps like a batch row's (signature, key type, a subject
//! serialNumber naming only this device, a key no device ever had). On
//! approval the new certificate is signed first (HSM work, no transaction
//! open), then in one transaction with the approval's audit record it is
//! registered (issued), its key registered to the device, the certificate
//! recorded as the device's, and every other certificate of the device id
//! revoked (`superseded`): a crash leaves either the old certificates or
//! only the new one valid, never both. A retired device
//! is not re-certified; at most one request is pending per device.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use keyward_kms::db::{Tx, now_ms};
use keyward_kms::types::DeviceId;

use crate::Provisioning;
use crate::audit::{Action, Actor, AuditNote, Decision, Prepared, Refused};
use crate::certifier::{DeviceCsr, RevokeReason, SignedDeviceCertificate};
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

/// A re-certification approved and its certificate signed, before its
/// transaction ([`Provisioning::approve_recertify_in`]).
#[derive(Debug, Clone)]
pub struct RecertifyApproval {
    device: DeviceId,
    spki_sha256: String,
    requested_by: String,
    requested_at_ms: i64,
    signed: SignedDeviceCertificate,
    /// The device's certificates that the new one replaces.
    replaced: Vec<String>,
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
    /// is issued and every other certificate of the device revoked. In a
    /// unit of work of its own; see [`Provisioning::approve_recertify_in`].
    pub async fn approve_recertify(
        &self,
        device: DeviceId,
        operator: &OperatorId,
    ) -> Decision<Recertification> {
        let step = self.prepare_approve_recertify(device, operator).await?;
        self.commit("approve_recertify", step.note(), |mut tx| {
            let step = step.clone();
            async move {
                let done = self.approve_recertify_in(&mut tx, step).await;
                (tx, done)
            }
        })
        .await
    }

    /// [`Provisioning::approve_recertify`]'s reads and checks, and the new
    /// certificate signed (HSM work), before its transaction; the
    /// certificates it replaces are read here too.
    pub async fn prepare_approve_recertify(
        &self,
        device: DeviceId,
        operator: &OperatorId,
    ) -> Result<Prepared<RecertifyApproval>, Box<Refused>> {
        let mut note = AuditNote::new(
            Actor::Operator(operator.clone()),
            Action::ApproveRecertify,
            format!("device:{device}"),
        );
        match self.approvable(device, operator, &mut note).await {
            Ok(input) => Ok(Prepared { input, note }),
            Err(e) => Err(note.refused(e)),
        }
    }

    async fn approvable(
        &self,
        device: DeviceId,
        operator: &OperatorId,
        note: &mut AuditNote,
    ) -> Result<RecertifyApproval> {
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
        let registered = self.device(device).await?.cert_serial;
        let replaced = self
            .device_certificates(device, registered.as_deref())
            .await?;
        let signed = self.certifier.sign(&checked, device).await?;
        note.detail("cert_serial", &signed.certificate.serial);
        Ok(RecertifyApproval {
            device,
            spki_sha256: checked.spki_sha256().to_owned(),
            requested_by: pending.requested_by,
            requested_at_ms: pending.requested_at_ms,
            signed,
            replaced,
        })
    }

    /// The approval ([`Provisioning::prepare_approve_recertify`]) in the
    /// caller's transaction: the request taken, the new certificate issued
    /// and registered to the device, the ones it replaces revoked (the CRL
    /// is re-signed after the commit). A request gone meanwhile is
    /// refused, and so is a key another device registered meanwhile.
    pub async fn approve_recertify_in(
        &self,
        tx: &mut Tx,
        step: Prepared<RecertifyApproval>,
    ) -> Decision<Recertification> {
        let Prepared { input, mut note } = step;
        let result = async {
            let device = input.device;
            if !Store::take_recertification_in(tx, device).await? {
                return Err(ProvisioningError::NoPendingRecertification(device));
            }
            self.certifier.register_in(tx, &input.signed).await?;
            let serial = &input.signed.certificate.serial;
            match Store::register_new_certificate_in(tx, device, &input.spki_sha256, serial).await {
                Err(e) if is_unique_violation(&e) => {
                    return Err(ProvisioningError::PublicKeyReused);
                }
                other => other?,
            }
            let mut revoked = Vec::new();
            for old in input.replaced.iter().filter(|s| *s != serial) {
                if self
                    .certifier
                    .revoke_in(tx, old, RevokeReason::Superseded)
                    .await?
                {
                    revoked.push(old.clone());
                }
            }
            note.detail("certificates_revoked", revoked.len());
            Ok(Recertification {
                device,
                requested_by: input.requested_by.clone(),
                requested_at_ms: input.requested_at_ms,
                cert_serial: Some(serial.clone()),
                revoked,
            })
        }
        .await;
        note.finish(result)
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
