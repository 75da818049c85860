//! Challenge/response login primitives: a challenge from the HSM's RNG, its
//! seal (an HMAC under a token key, so any replica can check a challenge it
//! did not store), and the check of a device's answer under its `AUTH_d`.
//! What the seal covers, single use and expiry are the login protocol's to
//! enforce.

use subtle::ConstantTimeEq;

use crate::error::{KmsError, Result};
use crate::hsm::{Cipher, Hsm, Usage};
use crate::keys::{IssuerKeys, KeyCache, with_fresh_handles};
use crate::service::Kms;
use crate::service::audit::{hmac_job, hmac_key_spec};
use crate::types::{DeviceId, IssuerId, KeyFamily};

/// Label of the login-challenge seal key (256-bit generic secret; HMAC sign
/// and verify only; sensitive, never extractable). Its only use is sealing
/// login challenges, so a seal can never be mistaken for another MAC.
pub const CHALLENGE_SEAL_LABEL: &str = "keyward/login/challenge-seal";

/// What [`Kms::check_login_answer`] found.
#[derive(Clone, PartialEq, Eq)]
pub struct AnswerCheck<const N: usize> {
    pub seal_ok: bool,
    /// The answer is right (never with a bad seal).
    pub right: bool,
    /// Fresh HSM random bytes (a session token).
    pub random: [u8; N],
}

impl<const N: usize> std::fmt::Debug for AnswerCheck<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnswerCheck")
            .field("seal_ok", &self.seal_ok)
            .field("right", &self.right)
            .field("random", &"<redacted>")
            .finish()
    }
}

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

    /// A login answer checked in one HSM job: whether `seal` starts
    /// `HMAC(K_seal, sealed_data)` (16 to 32 bytes of it, in constant time);
    /// if so, whether `response` is `E_AUTH_d(challenge)`; and `N` random
    /// bytes for the session a right answer opens. One job, because a login
    /// finish needs all three and each job is a round trip to a worker.
    pub async fn check_login_answer<const N: usize>(
        &self,
        issuer: &IssuerId,
        device: DeviceId,
        sealed_data: Vec<u8>,
        seal: &[u8],
        challenge: &[u8],
        response: &[u8],
    ) -> Result<AnswerCheck<N>> {
        if seal.len() < 16 || seal.len() > 32 {
            return Ok(AnswerCheck {
                seal_ok: false,
                right: false,
                random: [0; N],
            });
        }
        let ik = self.issuer_keys(issuer).await?;
        let seal = seal.to_vec();
        let (challenge, response) = (challenge.to_vec(), response.to_vec());
        let (seal_key, cache) = (self.seal_key.clone(), self.cache.clone());
        self.pool
            .run(move |hsm| {
                let expected = hmac_job(hsm, &seal_key, CHALLENGE_SEAL_LABEL, &sealed_data)?;
                let seal_ok = bool::from(expected[..seal.len()].ct_eq(&seal));
                let right = seal_ok && answer_job(hsm, &cache, &ik, device, &challenge, &response)?;
                let random = hsm.random(N)?.try_into().map_err(|_| KmsError::Hsm {
                    function: "C_GenerateRandom",
                    problem: "short read",
                })?;
                Ok(AnswerCheck {
                    seal_ok,
                    right,
                    random,
                })
            })
            .await
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
        let challenge = challenge.to_vec();
        let response = response.to_vec();
        let cache = self.cache.clone();
        self.pool
            .run(move |hsm| answer_job(hsm, &cache, &ik, device, &challenge, &response))
            .await
    }
}

/// Whether `response` is `E_AUTH_d(challenge)`, in the HSM, compared in
/// constant time. A challenge that is not one block of the issuer's family
/// is refused; a response of another length is simply wrong.
fn answer_job(
    hsm: &dyn Hsm,
    cache: &KeyCache,
    ik: &IssuerKeys,
    device: DeviceId,
    challenge: &[u8],
    response: &[u8],
) -> Result<bool> {
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
    with_fresh_handles(cache, || {
        let auth = cache.auth(hsm, ik, device, Usage::ENCRYPT)?;
        let cipher = match ik.family {
            KeyFamily::Tdes => Cipher::Des3Ecb,
            KeyFamily::Aes => Cipher::AesEcb,
        };
        let expected = hsm.encrypt(auth, cipher, challenge)?;
        Ok(bool::from(expected.ct_eq(response)))
    })
}
