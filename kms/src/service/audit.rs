//! The audit trail's HSM side: a non-extractable HMAC key that keys the
//! trail's hash chain, and a checkpoint of the trail's head kept on the
//! token, outside the database.
//!
//! A database writer can recompute SHA-256 but not an HMAC under
//! [`AUDIT_MAC_LABEL`], so a forged or re-chained record cannot carry a
//! valid MAC; and the checkpoint, which only this process writes, shows a
//! tail cut back to an older, once-valid head. The server decides what the
//! MACs cover (`server/src/audit.rs`); this file only holds the key.

use std::sync::{Arc, Mutex};

use subtle::ConstantTimeEq;

use crate::error::{KmsError, Result};
use crate::hsm::{Hsm, KeySpec, MacMechanism, MechanismId, ObjectId, SecretKind, Usage};
use crate::service::Kms;

/// Label of the audit trail's HMAC key (256-bit generic secret; sign and
/// verify only; sensitive, never extractable).
pub const AUDIT_MAC_LABEL: &str = "keyward/audit/mac";
/// Label of the token data object holding the audit checkpoint.
pub const AUDIT_CHECKPOINT_LABEL: &str = "keyward/audit/checkpoint";
/// Largest checkpoint value accepted (the server writes 80 bytes).
const MAX_CHECKPOINT: usize = 1024;
/// MACs computed in one HSM job (about 10 ms of SoftHSM time).
pub const MAX_MACS_PER_JOB: usize = 256;

/// Mechanisms the audit trail needs, whatever the issuers.
pub const AUDIT_MECHANISMS: &[(MechanismId, &str)] = &[
    (
        MechanismId::GenericSecretKeyGen,
        "audit trail MAC key (created by init)",
    ),
    (MechanismId::Sha256Hmac, "audit trail MACs"),
];

fn audit_key_spec() -> KeySpec {
    hmac_key_spec(AUDIT_MAC_LABEL)
}

/// A 256-bit generic secret on the token for HMAC-SHA256: sign and verify
/// only, sensitive, never extractable.
pub(crate) fn hmac_key_spec(label: &str) -> KeySpec {
    KeySpec {
        kind: SecretKind::GenericSecret(32),
        usage: Usage::MAC,
        token_label: Some(label.to_owned()),
        extractable: false,
    }
}

/// The audit key's handle, found once and again after an HSM reconnect.
pub(crate) type AuditKeyCache = Arc<Mutex<Option<ObjectId>>>;

fn mac_job(hsm: &dyn Hsm, cache: &Mutex<Option<ObjectId>>, data: &[u8]) -> Result<[u8; 32]> {
    hmac_job(hsm, cache, AUDIT_MAC_LABEL, data)
}

/// `HMAC-SHA256` under the token key labelled `label`, its handle found once
/// (`cache`) and again after an HSM reconnect.
pub(crate) fn hmac_job(
    hsm: &dyn Hsm,
    cache: &Mutex<Option<ObjectId>>,
    label: &str,
    data: &[u8],
) -> Result<[u8; 32]> {
    let attempt = || -> Result<Vec<u8>> {
        let cached = *cache.lock().unwrap_or_else(|p| p.into_inner());
        let key = match cached {
            Some(k) => k,
            None => {
                let k = hsm
                    .find_key(label)?
                    .ok_or_else(|| KmsError::KeyMissing(label.to_owned()))?;
                *cache.lock().unwrap_or_else(|p| p.into_inner()) = Some(k);
                k
            }
        };
        hsm.mac(key, MacMechanism::HmacSha256, data)
    };
    let out = match attempt() {
        Err(KmsError::Stale) => {
            *cache.lock().unwrap_or_else(|p| p.into_inner()) = None;
            attempt()
        }
        other => other,
    }?;
    out.try_into().map_err(|_| KmsError::Hsm {
        function: "C_Sign",
        problem: "HMAC-SHA256 of unexpected length",
    })
}

impl Kms {
    /// Creates the audit MAC key when the token lacks it (`keyward init`);
    /// returns whether it did.
    pub async fn ensure_audit_key(&self) -> Result<bool> {
        self.pool()
            .run(|hsm| match hsm.find_key(AUDIT_MAC_LABEL)? {
                Some(_) => Ok(false),
                None => hsm.generate_key(&audit_key_spec()).map(|_| true),
            })
            .await
    }

    /// Whether the token holds the audit MAC key.
    pub async fn has_audit_key(&self) -> Result<bool> {
        self.pool()
            .run(|hsm| hsm.find_key(AUDIT_MAC_LABEL).map(|k| k.is_some()))
            .await
    }

    /// `HMAC-SHA256(K_audit, data)`, computed in the HSM. One `C_Sign`.
    pub async fn audit_mac(&self, data: &[u8]) -> Result<[u8; 32]> {
        let (cache, data) = (self.audit_key.clone(), data.to_vec());
        self.pool()
            .run(move |hsm| mac_job(hsm, &cache, &data))
            .await
    }

    /// The audit MACs of several inputs in one HSM job (one `C_Sign` each),
    /// in order: an append MACs its record and the new head together.
    pub async fn audit_macs(&self, inputs: Vec<Vec<u8>>) -> Result<Vec<[u8; 32]>> {
        if inputs.len() > MAX_MACS_PER_JOB {
            return Err(KmsError::invalid("audit MACs", "too many in one job"));
        }
        let cache = self.audit_key.clone();
        self.pool()
            .run(move |hsm| inputs.iter().map(|d| mac_job(hsm, &cache, d)).collect())
            .await
    }

    /// Whether `mac` is the audit MAC of `data`; the comparison is constant
    /// time, so a caller probing MACs learns nothing from timing.
    pub async fn audit_mac_verify(&self, data: &[u8], mac: &[u8]) -> Result<bool> {
        let expected = self.audit_mac(data).await?;
        Ok(expected.ct_eq(mac).into())
    }

    /// [`Kms::audit_mac_verify`] for many `(data, mac)` pairs in HSM jobs of
    /// at most [`MAX_MACS_PER_JOB`], so verifying a long trail does not pay
    /// a queue round trip per record nor hold a worker for long.
    pub async fn audit_macs_verify(&self, items: Vec<(Vec<u8>, Vec<u8>)>) -> Result<Vec<bool>> {
        let mut out = Vec::with_capacity(items.len());
        for chunk in items.chunks(MAX_MACS_PER_JOB) {
            let (cache, chunk) = (self.audit_key.clone(), chunk.to_vec());
            let part: Vec<bool> = self
                .pool()
                .run(move |hsm| {
                    chunk
                        .iter()
                        .map(|(d, m)| mac_job(hsm, &cache, d).map(|e| e.ct_eq(m).into()))
                        .collect()
                })
                .await?;
            out.extend(part);
        }
        Ok(out)
    }

    /// The audit checkpoints stored on the token: none before the first
    /// write, usually one, two when a process ended in the middle of
    /// replacing it (the caller takes the newest that verifies).
    pub async fn audit_checkpoint(&self) -> Result<Vec<Vec<u8>>> {
        self.pool()
            .run(|hsm| hsm.read_data(AUDIT_CHECKPOINT_LABEL))
            .await
    }

    /// Replaces the audit checkpoint on the token.
    pub async fn set_audit_checkpoint(&self, value: &[u8]) -> Result<()> {
        if value.len() > MAX_CHECKPOINT {
            return Err(KmsError::invalid("audit checkpoint", "too long"));
        }
        let value = value.to_vec();
        self.pool()
            .run(move |hsm| hsm.write_data(AUDIT_CHECKPOINT_LABEL, &value))
            .await
    }
}
