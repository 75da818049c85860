//! The init package as a facade operation: the device's key is checked and
//! the issuer looked up here; the HSM job that wraps `TMK_d` and `AUTH_d` is
//! [`crate::wrap`].

use crate::error::{KmsError, Result};
use crate::hsm::PublicKey;
use crate::keys::with_fresh_handles;
use crate::service::Kms;
use crate::types::{DeviceId, IssuerId};
use crate::wrap::{InitPackage, MIN_RSA_BITS, WrapScheme, build};

impl Kms {
    /// Builds the init package for `device` under `issuer`, wrapped to
    /// `device_key` (the public key of its certificate).
    pub async fn init_package(
        &self,
        issuer: &IssuerId,
        device: DeviceId,
        device_key: PublicKey,
    ) -> Result<InitPackage> {
        let scheme = match &device_key {
            PublicKey::P256(point) => {
                if point.len() != 65 || point[0] != 0x04 {
                    return Err(KmsError::invalid(
                        "device public key",
                        "must be an uncompressed P-256 point",
                    ));
                }
                WrapScheme::EcdhP256AesKw
            }
            PublicKey::Rsa { modulus, .. } => {
                let bits = modulus.iter().skip_while(|b| **b == 0).count() * 8;
                if bits < MIN_RSA_BITS {
                    return Err(KmsError::invalid(
                        "device public key",
                        "RSA modulus shorter than 2048 bits",
                    ));
                }
                WrapScheme::RsaOaepSha1
            }
        };
        let rec = self.issuer(issuer).await?;
        let family = rec.family;
        let issuer_id = rec.id.clone();
        let cache = self.cache_arc();
        let (ephemeral_point, keys) = self
            .pool()
            .run(move |hsm| {
                with_fresh_handles(&cache, || {
                    build(hsm, &cache, &issuer_id, family, device, &device_key)
                })
            })
            .await?;
        Ok(InitPackage {
            issuer: rec.id,
            device,
            family,
            scheme,
            ephemeral_point,
            keys,
        })
    }
}
