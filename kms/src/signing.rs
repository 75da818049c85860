//! Signing with key pairs that live on the token (CA keys, the server's TLS
//! key, the load-permit key). Synchronous callers (rcgen, rustls) use
//! [`SigningKey::sign_blocking`]; the private key never leaves the HSM.

use std::sync::{Arc, Mutex};

use crate::error::{KmsError, Result};
use crate::hsm::{Hsm, KeyPairKind, ObjectId, PublicKey, SignMechanism};
use crate::pool::HsmPool;

/// A token key pair by label, ready to sign through the worker pool.
#[derive(Debug, Clone)]
pub struct SigningKey {
    label: Arc<str>,
    kind: KeyPairKind,
    public: PublicKey,
    pool: HsmPool,
    /// The private key's handle, found once and again after an HSM reconnect.
    handle: Arc<Mutex<Option<ObjectId>>>,
}

impl SigningKey {
    /// The key pair `label` of `kind`, signing through `pool`.
    pub(crate) fn new(label: &str, kind: KeyPairKind, public: PublicKey, pool: HsmPool) -> Self {
        Self {
            label: label.into(),
            kind,
            public,
            pool,
            handle: Arc::default(),
        }
    }

    pub fn label(&self) -> &str {
        &self.label
    }
    pub fn kind(&self) -> KeyPairKind {
        self.kind
    }
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// Signs `data`. ECDSA signatures come back DER-encoded (`Ecdsa-Sig-Value`),
    /// as X.509, TLS and docs/protocol.md §1 carry them.
    pub async fn sign(&self, mech: SignMechanism, data: &[u8]) -> Result<Vec<u8>> {
        let (label, data, handle) = (self.label.clone(), data.to_vec(), self.handle.clone());
        self.pool
            .run(move |hsm| sign_job(hsm, &label, &handle, mech, &data))
            .await
    }

    /// [`SigningKey::sign`] for synchronous callers; inside a tokio runtime,
    /// call it under `block_in_place`.
    pub fn sign_blocking(&self, mech: SignMechanism, data: &[u8]) -> Result<Vec<u8>> {
        let (label, data, handle) = (self.label.clone(), data.to_vec(), self.handle.clone());
        self.pool
            .run_blocking(move |hsm| sign_job(hsm, &label, &handle, mech, &data))
    }
}

fn sign_job(
    hsm: &dyn Hsm,
    label: &str,
    handle: &Mutex<Option<ObjectId>>,
    mech: SignMechanism,
    data: &[u8],
) -> Result<Vec<u8>> {
    let attempt = || -> Result<Vec<u8>> {
        let cached = *handle.lock().unwrap_or_else(|p| p.into_inner());
        let key = match cached {
            Some(k) => k,
            None => {
                let k = hsm
                    .find_private_key(label)?
                    .ok_or_else(|| KmsError::KeyMissing(label.to_owned()))?;
                *handle.lock().unwrap_or_else(|p| p.into_inner()) = Some(k);
                k
            }
        };
        let sig = hsm.sign(key, mech, data)?;
        match mech {
            SignMechanism::EcdsaSha256 => ecdsa_raw_to_der(&sig),
            _ => Ok(sig),
        }
    };
    match attempt() {
        Err(KmsError::Stale) => {
            *handle.lock().unwrap_or_else(|p| p.into_inner()) = None;
            attempt()
        }
        other => other,
    }
}

/// Converts PKCS#11's raw `r || s` into a DER `Ecdsa-Sig-Value`.
pub fn ecdsa_raw_to_der(raw: &[u8]) -> Result<Vec<u8>> {
    if raw.is_empty() || !raw.len().is_multiple_of(2) || raw.len() > 132 {
        return Err(KmsError::Hsm {
            function: "C_Sign",
            problem: "ECDSA signature of unexpected length",
        });
    }
    let (r, s) = raw.split_at(raw.len() / 2);
    let int = |v: &[u8]| {
        let v = match v.iter().position(|b| *b != 0) {
            Some(i) => &v[i..],
            None => &[0u8][..],
        };
        let mut out = vec![0x02];
        let pad = v[0] & 0x80 != 0;
        out.push((v.len() + usize::from(pad)) as u8);
        if pad {
            out.push(0);
        }
        out.extend_from_slice(v);
        out
    };
    let (r, s) = (int(r), int(s));
    let body_len = r.len() + s.len();
    let mut out = vec![0x30];
    if body_len >= 0x80 {
        out.push(0x81);
    }
    out.push(body_len as u8);
    out.extend(r);
    out.extend(s);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_of_raw_signatures() {
        let mut raw = [0u8; 64];
        raw[0] = 0x80; // r needs a leading zero
        raw[32] = 0x00;
        raw[33] = 0x01; // s has a leading zero to drop
        let der = ecdsa_raw_to_der(&raw).unwrap();
        assert_eq!(der[0], 0x30);
        assert_eq!(der[2], 0x02);
        assert_eq!(der[3], 33);
        assert_eq!(der[4], 0x00);
        let s_at = 4 + 33;
        assert_eq!(der[s_at], 0x02);
        assert_eq!(der[s_at + 1], 31);
        assert_eq!(der[1] as usize, der.len() - 2);
        assert!(ecdsa_raw_to_der(&[1, 2, 3]).is_err());
    }
}
