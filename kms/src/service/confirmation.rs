//! Second-channel confirmation codes: the HSM draws the randomness a code
//! is made from, and keeps the code only as `HMAC(K_code, context ‖ code)`
//! under a key of its own, so the database never holds a code in clear and
//! a code's MAC can never be mistaken for another MAC.

use subtle::ConstantTimeEq;

use crate::error::Result;
use crate::service::Kms;
use crate::service::audit::{hmac_job, hmac_key_spec};

/// Label of the confirmation-code MAC key (256-bit generic secret; HMAC
/// sign and verify only; sensitive, never extractable).
pub const CONFIRMATION_CODE_LABEL: &str = "keyward/confirmation/code-mac";

impl Kms {
    /// Creates the confirmation-code key when the token lacks it (`keyward
    /// init`, and `serve` on a token made before the key existed); returns
    /// whether it did.
    pub async fn ensure_confirmation_code_key(&self) -> Result<bool> {
        self.pool
            .run(|hsm| match hsm.find_key(CONFIRMATION_CODE_LABEL)? {
                Some(_) => Ok(false),
                None => hsm
                    .generate_key(&hmac_key_spec(CONFIRMATION_CODE_LABEL))
                    .map(|_| true),
            })
            .await
    }

    /// `HMAC(K_code, data)`: what is stored of a code (`data` is the
    /// caller's context and the code).
    pub async fn confirmation_code_mac(&self, data: Vec<u8>) -> Result<[u8; 32]> {
        let cache = self.code_key.clone();
        self.pool
            .run(move |hsm| hmac_job(hsm, &cache, CONFIRMATION_CODE_LABEL, &data))
            .await
    }

    /// Whether `stored` is `HMAC(K_code, data)`, compared in constant time.
    pub async fn confirmation_code_matches(&self, data: Vec<u8>, stored: &[u8]) -> Result<bool> {
        let expected = self.confirmation_code_mac(data).await?;
        Ok(expected.ct_eq(stored).into())
    }
}
