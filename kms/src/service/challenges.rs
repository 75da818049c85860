//! Challenge/response login primitives: a challenge from the HSM's RNG and
//! the check of a device's answer under its `AUTH_d`. Single use and expiry
//! are the login protocol's to enforce.

use subtle::ConstantTimeEq;

use crate::error::{KmsError, Result};
use crate::hsm::{Cipher, Usage};
use crate::keys::with_fresh_handles;
use crate::service::Kms;
use crate::types::{DeviceId, IssuerId, KeyFamily};

impl Kms {
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
