//! The genuine-device check (seed CN102004977A, "is it a valid device?").
//!
//! [`Provisioning::begin_check`] draws 32 random bytes from the HSM and keeps
//! them as a challenge with its own id ([`crate::challenges`]: up to four
//! outstanding per device, the oldest evicted), valid for the challenge TTL.
//! The device signs exactly those 32 bytes with its certified key: ECDSA
//! P-256 with SHA-256 (DER `Ecdsa-Sig-Value`) or RSASSA-PKCS1-v1_5 with
//! SHA-256. [`Provisioning::complete_check`] names the challenge it answers
//! and consumes that one challenge first (right or wrong, it is gone; the
//! others stay), then requires:
//!
//! 1. the device registered, from a completed batch, still `manufactured`
//!    (a device already verified or initialised elsewhere is refused), and
//!    not locked;
//! 2. its registered certificate known to the CA, issued for this device,
//!    chaining to the issuing CA, in validity and not revoked;
//! 3. the signature verifying under that certificate's public key
//!    (software verification: public key only).
//!
//! Pass: `manufactured → verified`. A refusal after a challenge was consumed
//! counts one failed attempt; an answer naming an unknown, used, expired or
//! evicted challenge is `challenge_invalid` and counts nothing (it cannot be
//! a guess). After [`DEFAULT_CHECK_ATTEMPT_LIMIT`] (configurable) failed
//! attempts the device is parked: new challenges and answers are refused
//! with `check_locked` and its outstanding challenges dropped, until an
//! operator's [`Provisioning::reset_check`] (audited) clears the counter.

use std::time::Duration;

use keyward_kms::db::{Tx, now_ms};
use keyward_kms::signing::verify;
use keyward_kms::types::DeviceId;

use crate::Provisioning;
use crate::audit::{Action, Actor, AuditNote, Audited, Decision, Kept, Prepared, Refused};
use crate::certifier::{CertificateStatus, DeviceCertificate};
use crate::challenges::{ChallengeId, ChallengePurpose, Challenges, NewChallenge};
use crate::error::{ProvisioningError, Result};
use crate::store::Store;
use crate::types::{DeviceState, OperatorId, Reason};

/// Bytes of a genuine-device challenge.
pub const CHALLENGE_LEN: usize = 32;
/// Default life of a challenge.
pub const DEFAULT_CHALLENGE_TTL: Duration = Duration::from_secs(120);
/// Failed genuine-device checks after which a device is parked.
pub const DEFAULT_CHECK_ATTEMPT_LIMIT: u32 = 5;

/// A challenge for the device to sign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// Carried in the answer.
    pub id: ChallengeId,
    pub device: DeviceId,
    pub bytes: [u8; CHALLENGE_LEN],
    pub expires_at_ms: i64,
}

/// A genuine-device challenge drawn for a device that may take the check,
/// to keep ([`Provisioning::begin_check_in`]).
#[derive(Debug, Clone)]
pub struct NewCheck {
    device: DeviceId,
    bytes: [u8; CHALLENGE_LEN],
    challenge: NewChallenge,
}

/// A genuine-device answer judged against the challenge it names, to
/// settle ([`Provisioning::complete_check_in`]).
#[derive(Debug, Clone)]
pub struct CompleteCheck {
    device: DeviceId,
    challenge: String,
    verdict: Verdict,
    limit: u32,
}

#[derive(Debug, Clone, Copy)]
enum Verdict {
    Verified,
    Failed(FailedCheck),
}

/// Why an answer to a live challenge failed: each uses the challenge up
/// and counts against the device.
#[derive(Debug, Clone, Copy)]
enum FailedCheck {
    State(DeviceState),
    Certificate(&'static str),
    ProofOfPossession,
}

impl FailedCheck {
    fn error(self, device: DeviceId) -> ProvisioningError {
        match self {
            Self::State(state) => ProvisioningError::DeviceState {
                device,
                state,
                needed: "manufactured",
            },
            Self::Certificate(why) => ProvisioningError::CertificateInvalid(why),
            Self::ProofOfPossession => ProvisioningError::ProofOfPossession,
        }
    }
}

impl Provisioning {
    /// Starts a genuine-device check: a fresh HSM random challenge with its
    /// own id (earlier ones stay, up to four). Refused unless the device is
    /// registered, its batch is complete, it is `manufactured` and not
    /// locked. In a unit of work of its own; see
    /// [`Provisioning::begin_check_in`].
    pub async fn begin_check(&self, device: DeviceId) -> Decision<Challenge> {
        let step = self.prepare_begin_check(device).await?;
        self.commit("begin_check", step.note(), |mut tx| {
            let step = step.clone();
            async move {
                let done = Self::begin_check_in(&mut tx, step).await;
                (tx, done)
            }
        })
        .await
    }

    /// [`Provisioning::begin_check`]'s reads, checks and HSM random, before
    /// its transaction.
    pub async fn prepare_begin_check(
        &self,
        device: DeviceId,
    ) -> Result<Prepared<NewCheck>, Box<Refused>> {
        let note = AuditNote::new(
            Actor::Device(device),
            Action::BeginCheck,
            format!("device:{device}"),
        );
        match self.draw_challenge(device).await {
            Ok(input) => Ok(Prepared { input, note }),
            Err(e) => Err(note.refused(e)),
        }
    }

    /// Keeps the challenge ([`Provisioning::prepare_begin_check`]) in the
    /// caller's transaction.
    pub async fn begin_check_in(tx: &mut Tx, step: Prepared<NewCheck>) -> Decision<Challenge> {
        let Prepared { input, note } = step;
        let result = Challenges::issue_in(tx, &input.challenge)
            .await
            .map(|issued| Challenge {
                id: issued.id,
                device: input.device,
                bytes: input.bytes,
                expires_at_ms: issued.expires_at_ms,
            });
        note.finish(result)
    }

    async fn draw_challenge(&self, device: DeviceId) -> Result<NewCheck> {
        let rec = self.checkable(device).await?;
        if rec.state != DeviceState::Manufactured {
            return Err(ProvisioningError::DeviceState {
                device,
                state: rec.state,
                needed: "manufactured",
            });
        }
        if rec.check_failures >= self.check_attempt_limit {
            return Err(ProvisioningError::CheckLocked(device));
        }
        let bytes: [u8; CHALLENGE_LEN] = self.kms.random().await?;
        let challenge = Challenges::prepare(
            device,
            ChallengePurpose::GenuineDevice,
            &bytes,
            self.challenge_ttl,
        )?;
        Ok(NewCheck {
            device,
            bytes,
            challenge,
        })
    }

    /// Completes the check with the device's signature over challenge `id`.
    /// Pass: the device becomes `verified` (the note's `cert_serial` names
    /// the certificate that proved it). A failed answer uses the challenge
    /// up and counts against the device (at the limit it is parked and its
    /// other challenges go), committed with its refusal. One unit of work
    /// of its own; see [`Provisioning::complete_check_in`].
    pub async fn complete_check(
        &self,
        device: DeviceId,
        id: &ChallengeId,
        signature_der: &[u8],
    ) -> Decision<()> {
        let step = self
            .prepare_complete_check(device, id, signature_der)
            .await?;
        self.commit("complete_check", step.note(), |mut tx| {
            let step = step.clone();
            async move {
                let done = Self::complete_check_in(&mut tx, step).await;
                (tx, done)
            }
        })
        .await?
        .answer()
    }

    /// [`Provisioning::complete_check`]'s reads and its verdict on the
    /// answer, before its transaction: the challenge is read, not taken
    /// yet. A refusal here (unknown or expired challenge, a parked device,
    /// a failure of the CA or database) writes nothing.
    pub async fn prepare_complete_check(
        &self,
        device: DeviceId,
        id: &ChallengeId,
        signature_der: &[u8],
    ) -> Result<Prepared<CompleteCheck>, Box<Refused>> {
        let mut note = AuditNote::new(
            Actor::Device(device),
            Action::CompleteCheck,
            format!("device:{device}"),
        );
        note.detail("challenge_id", id);
        match self.verdict(device, id, signature_der, &mut note).await {
            Ok(verdict) => Ok(Prepared {
                input: CompleteCheck {
                    device,
                    challenge: id.as_str().to_owned(),
                    verdict,
                    limit: self.check_attempt_limit,
                },
                note,
            }),
            Err(e) => Err(note.refused(e)),
        }
    }

    async fn verdict(
        &self,
        device: DeviceId,
        id: &ChallengeId,
        signature_der: &[u8],
        note: &mut AuditNote,
    ) -> Result<Verdict> {
        let rec = self.checkable(device).await?;
        if rec.check_failures >= self.check_attempt_limit {
            return Err(ProvisioningError::CheckLocked(device));
        }
        let purpose = ChallengePurpose::GenuineDevice;
        let challenge = match self.store.challenge(id.as_str(), device, &purpose).await? {
            Some(c) if now_ms() < c.expires_at_ms => c.bytes,
            _ => return Err(ProvisioningError::ChallengeInvalid),
        };
        if rec.state != DeviceState::Manufactured {
            return Ok(Verdict::Failed(FailedCheck::State(rec.state)));
        }
        let Some(serial) = rec.cert_serial.as_deref() else {
            return Ok(Verdict::Failed(FailedCheck::Certificate(
                "no certificate recorded",
            )));
        };
        note.detail("cert_serial", serial);
        let cert = match self.good_certificate(serial, device).await {
            Ok(cert) => cert,
            Err(ProvisioningError::CertificateInvalid(why)) => {
                return Ok(Verdict::Failed(FailedCheck::Certificate(why)));
            }
            Err(e) => return Err(e),
        };
        Ok(if verify(&cert.public_key, &challenge, signature_der) {
            Verdict::Verified
        } else {
            Verdict::Failed(FailedCheck::ProofOfPossession)
        })
    }

    /// The check settled in the caller's transaction: the challenge taken
    /// (gone already: another answer used it, refused), then the device
    /// verified, or the failure counted and, at the limit, its other
    /// challenges dropped. A failure commits; its note records the refusal
    /// and its value is the error to answer.
    pub async fn complete_check_in(
        tx: &mut Tx,
        step: Prepared<CompleteCheck>,
    ) -> Result<Kept<()>, Box<Refused>> {
        let Prepared { input: c, mut note } = step;
        let result = async {
            let purpose = ChallengePurpose::GenuineDevice;
            if !Store::take_challenge_in(tx, &c.challenge, c.device, &purpose).await? {
                return Err(ProvisioningError::ChallengeInvalid);
            }
            let failed = match c.verdict {
                Verdict::Verified => {
                    if !Store::mark_verified_in(tx, c.device).await? {
                        return Err(ProvisioningError::Conflict(
                            "the device changed state during the check",
                        ));
                    }
                    note.detail("from", DeviceState::Manufactured);
                    note.detail("to", DeviceState::Verified);
                    return Ok(None);
                }
                Verdict::Failed(f) => f.error(c.device),
            };
            let failures = Store::count_check_failure_in(tx, c.device).await?;
            note.detail("check_failures", failures);
            if failures >= c.limit {
                note.detail("locked", true);
                Store::drop_challenges_in(tx, c.device, &purpose).await?;
            }
            Ok(Some(failed))
        }
        .await;
        match result {
            Ok(None) => Ok(Audited {
                value: Ok(()),
                note,
            }),
            Ok(Some(error)) => Ok(note.kept(error)),
            Err(e) => Err(note.refused(e)),
        }
    }

    /// An operator clears a device's failed-check counter (a parked device
    /// may be challenged again). Returns the count it cleared. In a unit of
    /// work of its own; see [`Provisioning::reset_check_in`].
    pub async fn reset_check(
        &self,
        device: DeviceId,
        operator: &OperatorId,
        reason: &Reason,
    ) -> Decision<u32> {
        let step = self.prepare_reset_check(device, operator, reason).await?;
        self.commit("reset_check", step.note(), |mut tx| {
            let step = step.clone();
            async move {
                let done = Self::reset_check_in(&mut tx, step).await;
                (tx, done)
            }
        })
        .await
    }

    /// [`Provisioning::reset_check`]'s reads, before its transaction.
    pub async fn prepare_reset_check(
        &self,
        device: DeviceId,
        operator: &OperatorId,
        reason: &Reason,
    ) -> Result<Prepared<DeviceId>, Box<Refused>> {
        let mut note = AuditNote::new(
            Actor::Operator(operator.clone()),
            Action::ResetCheck,
            format!("device:{device}"),
        );
        self.note_device_reason(&mut note, device, reason).await;
        match self.device(device).await {
            Ok(_) => Ok(Prepared {
                input: device,
                note,
            }),
            Err(e) => Err(note.refused(e)),
        }
    }

    /// The counter cleared in the caller's transaction; the count it held.
    pub async fn reset_check_in(tx: &mut Tx, step: Prepared<DeviceId>) -> Decision<u32> {
        let Prepared {
            input: device,
            mut note,
        } = step;
        let result = Store::reset_check_failures_in(tx, device).await;
        if let Ok(cleared) = &result {
            note.detail("check_failures", cleared);
        }
        note.finish(result)
    }

    /// Whether `signature_der` over `message` (SHA-256, hashed once) is by
    /// the key of the device's certificate `serial`, which must be its
    /// registered one and in good standing at the CA.
    pub async fn verify_device_signature(
        &self,
        device: DeviceId,
        serial: &str,
        message: &[u8],
        signature_der: &[u8],
    ) -> Result<bool> {
        let cert = self.good_certificate(serial, device).await?;
        Ok(verify(&cert.public_key, message, signature_der))
    }

    /// The device's registered certificate, if the CA vouches for it.
    pub(crate) async fn good_certificate(
        &self,
        serial: &str,
        device: DeviceId,
    ) -> Result<DeviceCertificate> {
        match self.certifier.certificate(serial, device).await? {
            CertificateStatus::Good(cert) => Ok(cert),
            CertificateStatus::Revoked => Err(ProvisioningError::CertificateInvalid(
                "the certificate is revoked",
            )),
            CertificateStatus::Unknown => Err(ProvisioningError::CertificateInvalid(
                "the CA has no record of the certificate",
            )),
            CertificateStatus::Invalid(why) => Err(ProvisioningError::CertificateInvalid(why)),
        }
    }
}
