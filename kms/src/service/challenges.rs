//! Challenge/response login primitives: a challenge from the HSM's RNG, its
//! seal (an HMAC under a token key, so any replica can check a challenge it
//! did not store), and the check of a device's answer under its `AUTH_d`.
//! What the seal covers, single use and expiry are the login protocol's to
//! enforce.

use subtle::ConstantTimeEq;

use crate::error::{KmsError, Result};
use crate::hsm::{Cipher, Usage};
use crate::keys::with_fresh_handles;
use crate::service::Kms;
use crate::service::audit::{hmac_job, hmac_key_spec};
use crate::types::{DeviceId, IssuerId, KeyFamily};

/// Label of the login-challenge seal key (256-bit generic secret; HMAC sign
/// and verify only; sensitive, never extractable). Its only use is sealing
/// login challenges, so a seal can never be mistaken for another MAC.
pub const CHALLENGE_SEAL_LABEL: &str = "keyward/login/challenge-seal";

/// A fresh challenge and the seal over `context ‖ challenge`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedChallenge {
    pub challenge: Vec<u8>,
    pub seal: [u8; 32],
}

impl Kms {
    /// Creates the challenge seal key when the token lacks it (`keyward
    /// init`, and `serve` on a token made before the key existed); returns
    /// whether it did.
    pub async fn ensure_challenge_seal_key(&self) -> Result<bool> {
        self.pool
            .run(|hsm| match hsm.find_key(CHALLENGE_SEAL_LABEL)? {
                Some(_) => Ok(false),
                None => hsm
                    .generate_key(&hmac_key_spec(CHALLENGE_SEAL_LABEL))
                    .map(|_| true),
            })
            .await
    }

    /// A random challenge of one cipher block of the issuer's family and
    /// `HMAC(K_seal, context ‖ challenge)`, in one HSM job.
    pub async fn sealed_challenge(
        &self,
        issuer: &IssuerId,
        context: Vec<u8>,
    ) -> Result<SealedChallenge> {
        let len = self.issuer_keys(issuer).await?.family.block_len();
        let cache = self.seal_key.clone();
        self.pool
            .run(move |hsm| {
                let challenge = hsm.random(len)?;
                let mut data = context;
                data.extend_from_slice(&challenge);
                let seal = hmac_job(hsm, &cache, CHALLENGE_SEAL_LABEL, &data)?;
                Ok(SealedChallenge { challenge, seal })
            })
            .await
    }

    /// Whether `seal` starts `HMAC(K_seal, data)` (at least 16 bytes of it),
    /// compared in constant time.
    pub async fn challenge_seal_verify(&self, data: Vec<u8>, seal: &[u8]) -> Result<bool> {
        if seal.len() < 16 || seal.len() > 32 {
            return Ok(false);
        }
        let cache = self.seal_key.clone();
        let expected = self
            .pool
            .run(move |hsm| hmac_job(hsm, &cache, CHALLENGE_SEAL_LABEL, &data))
            .await?;
        Ok(expected[..seal.len()].ct_eq(seal).into())
    }

    /// A random challenge for challenge/response login, from the HSM's RNG:
    /// one cipher block of the issuer's family (8 bytes TDES, 16 AES).
    pub async fn challenge(&self, issuer: &IssuerId) -> Result<Vec<u8>> {
        let len = self.issuer_keys(issuer).await?.family.block_len();
        self.pool.run(move |hsm| hsm.random(len)).await
    }

    /// Checks a device's answer `E_AUTH_d(challenge)`, computed in the HSM
    /// and compared in constant time.
    pub async fn verify_challenge_response(
        &self,
        issuer: &IssuerId,
        device: DeviceId,
        challenge: &[u8],
        response: &[u8],
    ) -> Result<bool> {
        let ik = self.issuer_keys(issuer).await?;
        let block = ik.family.block_len();
        if challenge.len() != block {
            return Err(KmsError::invalid(
                "challenge",
                "wrong length for the issuer's family",
            ));
        }
        if response.len() != block {
            return Ok(false);
        }
        let challenge = challenge.to_vec();
        let response = response.to_vec();
        let cache = self.cache.clone();
        self.pool
            .run(move |hsm| {
                with_fresh_handles(&cache, || {
                    let auth = cache.auth(hsm, &ik, device, Usage::ENCRYPT)?;
                    let cipher = match ik.family {
                        KeyFamily::Tdes => Cipher::Des3Ecb,
                        KeyFamily::Aes => Cipher::AesEcb,
                    };
                    let expected = hsm.encrypt(auth, cipher, &challenge)?;
                    Ok(bool::from(expected.ct_eq(&response)))
                })
            })
            .await
    }
}
