//! Token key pairs as facade operations: find or generate one by label and
//! hand back a [`SigningKey`] that signs through the worker pool.

use crate::error::{KmsError, Result};
use crate::hsm::{KeyPairKind, KeyPairUse, PublicKey};
use crate::service::Kms;
use crate::signing::SigningKey;

impl Kms {
    /// The key pair labelled `label`, generating it in the HSM when absent.
    /// Returns whether it was created, so bootstrap can report what it did.
    pub async fn ensure_signing_key(
        &self,
        label: &str,
        kind: KeyPairKind,
    ) -> Result<(SigningKey, bool)> {
        let l = label.to_owned();
        let (public, created) = self
            .pool()
            .run(move |hsm| match hsm.public_key(&l)? {
                Some(p) if hsm.find_private_key(&l)?.is_some() => Ok((p, false)),
                Some(_) => Err(KmsError::KeyMissing(l.clone())),
                None => hsm
                    .generate_key_pair(kind, &l, KeyPairUse::Sign)
                    .map(|(_, p)| (p, true)),
            })
            .await?;
        let kind = match (&public, kind) {
            (PublicKey::P256(_), _) => KeyPairKind::P256,
            (PublicKey::Rsa { modulus, .. }, _) => KeyPairKind::Rsa((modulus.len() * 8) as u32),
        };
        Ok((self.signing_key_from(label, kind, public), created))
    }

    /// An existing key pair by label, or [`KmsError::KeyMissing`].
    pub async fn signing_key(&self, label: &str) -> Result<SigningKey> {
        let l = label.to_owned();
        let public = self
            .pool()
            .run(move |hsm| hsm.public_key(&l)?.ok_or(KmsError::KeyMissing(l)))
            .await?;
        let kind = match &public {
            PublicKey::P256(_) => KeyPairKind::P256,
            PublicKey::Rsa { modulus, .. } => KeyPairKind::Rsa((modulus.len() * 8) as u32),
        };
        Ok(self.signing_key_from(label, kind, public))
    }

    fn signing_key_from(&self, label: &str, kind: KeyPairKind, public: PublicKey) -> SigningKey {
        SigningKey::new(label, kind, public, self.pool.clone())
    }
}
