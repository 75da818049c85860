//! The init package (seed CN102004977A, device initialisation): `TMK_d` and
//! `AUTH_d` wrapped to the device's certified public key, never in clear.
//!
//! P-256 devices: an ephemeral HSM key pair, ECDH with the device point (null
//! KDF) gives an AES-256 KEK, and each key is wrapped with RFC 3394
//! (`CKM_AES_KEY_WRAP`). RSA devices: RSA-OAEP (SHA-1/MGF1-SHA-1). The
//! extractable copies, the KEK and the ephemeral key are session objects
//! destroyed before the job ends, on success or failure.

use crate::catalog::MasterKeyRole;
use crate::error::Result;
use crate::hsm::{Hsm, KeySpec, ObjectId, PublicKey, SecretKind, Usage, WrapMechanism};
use crate::keys::{self, master_label};
#[cfg(doc)]
use crate::service::Kms;
use crate::types::{DeviceId, IssuerId, Kcv, KeyFamily};

/// How the package's keys are wrapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WrapScheme {
    /// ECDH P-256 (ephemeral-static, null KDF) + RFC 3394 AES key wrap.
    EcdhP256AesKw,
    /// RSA-OAEP with SHA-1 and MGF1-SHA-1.
    RsaOaepSha1,
}

impl WrapScheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EcdhP256AesKw => "ECDH-P256+AES-KW",
            Self::RsaOaepSha1 => "RSA-OAEP-SHA1",
        }
    }
}

/// One wrapped key of the package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedKey {
    /// `TMK` or `AUTH`.
    pub name: &'static str,
    pub wrapped: Vec<u8>,
    pub kcv: Kcv,
}

/// What the device receives to initialise itself.
#[derive(Debug, Clone)]
pub struct InitPackage {
    pub issuer: IssuerId,
    pub device: DeviceId,
    pub family: KeyFamily,
    pub scheme: WrapScheme,
    /// The HSM's ephemeral P-256 point (`04||X||Y`) for ECDH packages.
    pub ephemeral_point: Option<Vec<u8>>,
    pub keys: Vec<WrappedKey>,
}

/// Destroys the session objects it holds when dropped.
struct Scratch<'a> {
    hsm: &'a dyn Hsm,
    objects: Vec<ObjectId>,
}

impl Scratch<'_> {
    fn keep(&mut self, obj: ObjectId) -> ObjectId {
        self.objects.push(obj);
        obj
    }
}

impl Drop for Scratch<'_> {
    fn drop(&mut self) {
        for obj in self.objects.drain(..) {
            if let Err(e) = self.hsm.destroy(obj) {
                tracing::warn!(error = %e, "could not destroy a temporary init-package object");
            }
        }
    }
}

/// Smallest RSA modulus accepted for wrapping (bits).
pub const MIN_RSA_BITS: usize = 2048;

/// The HSM job of [`Kms::init_package`]: the wrapped keys and, for ECDH
/// packages, the ephemeral point.
pub(crate) fn build(
    hsm: &dyn Hsm,
    cache: &keys::KeyCache,
    issuer: &IssuerId,
    family: KeyFamily,
    device: DeviceId,
    device_key: &PublicKey,
) -> Result<(Option<Vec<u8>>, Vec<WrappedKey>)> {
    let mut scratch = Scratch {
        hsm,
        objects: Vec::new(),
    };
    let (kek, mech, point) = match device_key {
        PublicKey::P256(point) => {
            let (eph, eph_point) = hsm.generate_ephemeral_p256(false)?;
            scratch.keep(eph);
            let spec = KeySpec {
                kind: SecretKind::Aes(32),
                usage: Usage {
                    wrap: true,
                    ..Usage::NONE
                },
                token_label: None,
                extractable: false,
            };
            let kek = scratch.keep(hsm.ecdh_derive(eph, point, &spec)?);
            (kek, WrapMechanism::AesKeyWrap, Some(eph_point))
        }
        PublicKey::Rsa { .. } => {
            let kek = scratch.keep(hsm.import_public_key(device_key)?);
            (kek, WrapMechanism::RsaOaepSha1, None)
        }
    };
    let data = device.diversification_block();
    let mut out = Vec::new();
    for (name, role) in [
        ("TMK", MasterKeyRole::ImkTmk),
        ("AUTH", MasterKeyRole::ImkAuth),
    ] {
        let imk = cache.master(hsm, &master_label(issuer, role))?;
        let copy = scratch.keep(keys::derive(hsm, imk, family, &data, Usage::NONE, true)?);
        let wrapped = hsm.wrap_key(kek, mech, copy)?;
        let kcv = keys::kcv_of_derived(hsm, imk, family, &data)?;
        out.push(WrappedKey { name, wrapped, kcv });
    }
    Ok((point, out))
}
