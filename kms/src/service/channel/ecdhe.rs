//! The ECDHE-P256 mode's HSM steps (docs/protocol.md §14.1, §14.3): the
//! server's ephemeral key pair, made in the HSM at the hello and kept only
//! wrapped under the state KEK in the handshake's row (so any replica takes
//! the key exchange), and the ECDH step at the key exchange that salts the
//! master secret.
//!
//! SoftHSM 2.6.1 derives by ECDH only with the null KDF and has no
//! concatenation, XOR or HKDF derivation, so the ECDH secret `Z` cannot be
//! mixed with the pre-master inside the module: `Z` becomes an AES-256 key
//! that may only encrypt, `C = PRF(Z, D_ms)` is computed by one `C_Encrypt`
//! (ECB over the two blocks of `D_ms`), and `C` goes back into the HSM as
//! derivation data under the pre-master. `C` passes through host memory; `Z`
//! and the ephemeral private key never do, and both are destroyed before
//! the step returns.

use crate::error::{KmsError, Result};
use crate::hsm::{Cipher, KeySpec, SecretKind, Usage, WrapMechanism};
use crate::keys::with_fresh_handles;
use crate::service::Kms;

use super::{CHANNEL_SECRET_LEN, CHANNEL_STATE_KEK_LABEL, hsm_state};

/// An uncompressed P-256 point: `04 ‖ X ‖ Y`.
pub const P256_POINT_LEN: usize = 65;
/// Largest wrapped ephemeral private key taken back (its PKCS#8, padded,
/// is well under this).
const MAX_WRAPPED_EPHEMERAL: usize = 512;

/// The ECDH secret's key: AES-256 that may only encrypt (the one
/// `C_Encrypt` that computes `C`), never extractable.
fn ecdh_spec() -> KeySpec {
    KeySpec::session(SecretKind::Aes(CHANNEL_SECRET_LEN), Usage::ENCRYPT)
}

impl Kms {
    /// A new ephemeral P-256 key pair for an ECDHE handshake: its public
    /// point and its private key wrapped under the state KEK (AES key wrap
    /// with padding). The private key is made extractable only to be
    /// wrapped (it stays sensitive, so it never leaves in clear) and its
    /// HSM object is destroyed before this returns.
    pub async fn channel_ephemeral(&self) -> Result<([u8; P256_POINT_LEN], Vec<u8>)> {
        let cache = self.cache_arc();
        self.pool()
            .run(move |hsm| {
                let kek =
                    with_fresh_handles(&cache, || cache.master(hsm, CHANNEL_STATE_KEK_LABEL))?;
                let (private, point) = hsm.generate_ephemeral_p256(true)?;
                let wrapped = hsm.wrap_key(kek, WrapMechanism::AesKeyWrapPad, private);
                hsm.destroy(private)?;
                let point = point.try_into().map_err(|_| KmsError::Hsm {
                    function: "C_GenerateKeyPair",
                    problem: "ephemeral point of unexpected length",
                })?;
                Ok((point, wrapped?))
            })
            .await
    }

    /// `C = PRF(Z, d_ms)` where `Z` is the ECDH secret of the ephemeral
    /// `wrapped` ([`Kms::channel_ephemeral`]) and the card's point `peer`
    /// (validated on the curve by the caller's decoding). The unwrapped
    /// private key and `Z` are session objects destroyed here, whatever
    /// the outcome. A wrapped value that does not unwrap is
    /// [`KmsError::CorruptRecord`]; a point the module refuses is
    /// [`KmsError::ChannelRefused`].
    pub async fn channel_ecdhe_salt(
        &self,
        wrapped: Vec<u8>,
        peer: [u8; P256_POINT_LEN],
        d_ms: [u8; 32],
    ) -> Result<[u8; 32]> {
        let corrupt = || KmsError::CorruptRecord("wrapped channel ephemeral");
        if wrapped.is_empty() || wrapped.len() > MAX_WRAPPED_EPHEMERAL {
            return Err(corrupt());
        }
        let passes = |e: &KmsError| hsm_state(e) || matches!(e, KmsError::Stale);
        let cache = self.cache_arc();
        self.pool()
            .run(move |hsm| {
                let kek =
                    with_fresh_handles(&cache, || cache.master(hsm, CHANNEL_STATE_KEK_LABEL))?;
                let private = hsm
                    .unwrap_p256_private(kek, &wrapped)
                    .map_err(|e| if passes(&e) { e } else { corrupt() })?;
                let z = hsm.ecdh_derive(private, &peer, &ecdh_spec());
                hsm.destroy(private)?;
                let z = z.map_err(|e| {
                    if passes(&e) {
                        e
                    } else {
                        KmsError::ChannelRefused
                    }
                })?;
                let c = hsm.encrypt(z, Cipher::AesEcb, &d_ms);
                hsm.destroy(z)?;
                c?.try_into().map_err(|_| KmsError::Hsm {
                    function: "C_Encrypt",
                    problem: "AES-ECB of unexpected length",
                })
            })
            .await
    }
}
