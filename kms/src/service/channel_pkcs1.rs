//! PKCS#1 v1.5 key transport for the secure channel, only where configured
//! (`channel.padding = "pkcs1v15"`, for cards that cannot do OAEP), and
//! only behind implicit rejection: every key exchange runs the unwrap
//! (`CKM_RSA_PKCS`, with the uniform work of `channel::unwrap_checked`)
//! **and** derives the substitute pre-master
//!
//! ```text
//! PRF(K_ir, SHA-256("keyward channel v1 implicit rejection" ‖ SHA-256(modulus) ‖ ciphertext))
//! ```
//!
//! under the implicit-rejection key ([`CHANNEL_IMPLICIT_REJECTION_LABEL`]).
//! A ciphertext that does not give a 32-byte pre-master (bad padding, a
//! wrong length, a value ≥ the modulus) goes on with the substitute: the
//! answer is a ServerFinished the card cannot verify, never an error, so
//! neither the answer nor the work says which check failed (Bleichenbacher
//! 1998, ROBOT 2017, Marvin 2023). The substitute depends only on the key
//! and the ciphertext, so sending one ciphertext again changes nothing.
//!
//! No version bytes: the pre-master is 32 bytes (docs/protocol.md §14.1),
//! never seen by the host, and SoftHSM cannot compare bytes of a key it
//! holds. A TLS-style 34-byte plaintext fails the length check and is
//! rejected implicitly like any other.

use sha2::{Digest, Sha256};

use crate::error::{KmsError, Result};
use crate::hsm::{
    Derivation, Hsm, KeySpec, MechanismId, ObjectId, PublicKey, SecretKind, UnwrapMechanism, Usage,
};
use crate::service::Kms;
use crate::service::channel::{
    CHANNEL_STATE_KEK_LABEL, ChannelKey, ChannelKeyUse, ChannelSecret, channel_key, hsm_state,
    unwrap_checked,
};

/// Label of the AES-256 key the substitute pre-master is derived under:
/// derive only, sensitive, never extractable (`keyward init`; `serve`
/// makes it when the padding is `pkcs1v15` and the token lacks it).
pub const CHANNEL_IMPLICIT_REJECTION_LABEL: &str = "keyward/channel/implicit-rejection";

/// Mechanisms the `pkcs1v15` padding needs besides
/// [`super::CHANNEL_MECHANISMS`] (checked at start when it is configured).
pub const CHANNEL_PKCS1_MECHANISMS: &[(MechanismId, &str)] = &[(
    MechanismId::RsaPkcs,
    "channel pre-master unwrap (RSAES-PKCS1-v1_5, channel.padding = pkcs1v15)",
)];

/// The context of the substitute pre-master's derivation input.
const IMPLICIT_REJECTION_CONTEXT: &[u8] = b"keyward channel v1 implicit rejection";

/// What the module answers a PKCS#1 v1.5 ciphertext with bad padding with
/// (probed at start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pkcs1BadPadding {
    /// An error (SoftHSM 2.6.1 on OpenSSL 3.0): the server's substitute
    /// takes the pre-master's place.
    Error,
    /// A key (a module that rejects implicitly itself, as OpenSSL ≥ 3.2):
    /// when it is 32 bytes it acts as the substitute; any other length
    /// fails the length check and the server's substitute is used.
    Value,
}

/// The 32-byte input of the substitute pre-master's derivation: it names
/// the channel key (its modulus's hash) and the ciphertext as received.
fn substitute_input(modulus: &[u8], ciphertext: &[u8]) -> [u8; 32] {
    Sha256::new()
        .chain_update(IMPLICIT_REJECTION_CONTEXT)
        .chain_update(Sha256::digest(modulus))
        .chain_update(ciphertext)
        .finalize()
        .into()
}

/// The pre-master of a PKCS#1 v1.5 ciphertext, or the substitute: both are
/// computed, one is kept and the other destroyed, whichever way it goes.
fn unwrap_or_substitute(
    hsm: &dyn Hsm,
    pool: &crate::pool::HsmPool,
    key: &ChannelKey,
    kek: ObjectId,
    ir: ObjectId,
    ciphertext: &[u8],
) -> Result<ChannelSecret> {
    let unwrapped = unwrap_checked(hsm, pool, key, kek, UnwrapMechanism::RsaPkcs, ciphertext);
    let substitute = ChannelSecret {
        obj: hsm.derive_key(
            ir,
            Derivation::AesEcb,
            &substitute_input(&key.modulus, ciphertext),
            &ChannelKeyUse::Secret.spec(),
        )?,
        key_use: ChannelKeyUse::Secret,
        pool: pool.clone(),
        owned: true,
    };
    match unwrapped {
        Ok(pms) => Ok(pms),
        Err(KmsError::ChannelRefused) => Ok(substitute),
        Err(e) => Err(e),
    }
}

/// A ciphertext of `public` whose plaintext is a PKCS#1 v1.5 *signature*
/// block (`00 01 ff…ff 00` and 32 bytes): the wrong block type, so bad
/// encryption padding whatever else the module checks. Raw RSA with the
/// public key: no secret.
fn bad_padding_ciphertext(public: &PublicKey) -> Option<Vec<u8>> {
    let PublicKey::Rsa { modulus, exponent } = public else {
        return None;
    };
    let n = rsa::BigUint::from_bytes_be(modulus);
    let k = modulus.iter().skip_while(|b| **b == 0).count();
    if k < 64 {
        return None;
    }
    let mut em = vec![0xff; k];
    em[0] = 0;
    em[1] = 1;
    em[k - 33] = 0;
    em[k - 32..].fill(0x5a);
    let c = rsa::BigUint::from_bytes_be(&em)
        .modpow(&rsa::BigUint::from_bytes_be(exponent), &n)
        .to_bytes_be();
    let mut out = vec![0; k.saturating_sub(c.len())];
    out.extend_from_slice(&c);
    Some(out)
}

impl Kms {
    /// Creates the implicit-rejection key when the token lacks it; returns
    /// whether it did.
    pub async fn ensure_channel_implicit_rejection_key(&self) -> Result<bool> {
        self.pool()
            .run(
                |hsm| match hsm.find_key(CHANNEL_IMPLICIT_REJECTION_LABEL)? {
                    Some(_) => Ok(false),
                    None => hsm
                        .generate_key(&KeySpec {
                            kind: SecretKind::Aes(32),
                            usage: Usage::DERIVE,
                            token_label: Some(CHANNEL_IMPLICIT_REJECTION_LABEL.to_owned()),
                            extractable: false,
                        })
                        .map(|_| true),
                },
            )
            .await
    }

    /// The pre-master the card encrypted to the channel key `key_label`
    /// with RSAES-PKCS1-v1_5, unwrapped inside the HSM as a derive-only
    /// secret; for any ciphertext that does not give a 32-byte pre-master,
    /// the substitute (never [`KmsError::ChannelRefused`]). Only the HSM
    /// being busy or gone, or a missing key, is an error.
    pub async fn unwrap_premaster_pkcs1(
        &self,
        key_label: &str,
        ciphertext: Vec<u8>,
    ) -> Result<ChannelSecret> {
        let pool = self.pool().clone();
        self.with_channel_key(key_label, move |hsm, key, handles| {
            let kek = handles.master(hsm, CHANNEL_STATE_KEK_LABEL)?;
            let ir = handles.master(hsm, CHANNEL_IMPLICIT_REJECTION_LABEL)?;
            unwrap_or_substitute(hsm, &pool, key, kek, ir, &ciphertext)
        })
        .await
    }

    /// The start-up check of the `pkcs1v15` padding: the module offers
    /// `CKM_RSA_PKCS`, the implicit-rejection key exists, and one
    /// ciphertext with bad padding (made with the public key) is unwrapped
    /// with the channel key `key_label` to see what the module does with
    /// it. The answer is logged (one line, no secret) and returned.
    pub async fn probe_channel_pkcs1(&self, key_label: &str) -> Result<Pkcs1BadPadding> {
        let label = key_label.to_owned();
        let (cache, handles) = (self.channel_keys.clone(), self.cache_arc());
        let found = self
            .pool()
            .run(move |hsm| {
                for (m, purpose) in CHANNEL_PKCS1_MECHANISMS {
                    if !hsm.supports(*m)? {
                        return Err(KmsError::MechanismMissing {
                            name: crate::hsm::mechanism_name(*m),
                            number: hsm.mechanism_number(*m).unwrap_or(0),
                            purpose,
                        });
                    }
                }
                handles.master(hsm, CHANNEL_IMPLICIT_REJECTION_LABEL)?;
                let key = channel_key(hsm, &cache, &label)?;
                let public = hsm
                    .public_key(&label)?
                    .ok_or_else(|| KmsError::KeyMissing(label.clone()))?;
                let ciphertext = bad_padding_ciphertext(&public).ok_or(KmsError::Hsm {
                    function: "C_GetAttributeValue",
                    problem: "the channel key is not an RSA key of 512 bits or more",
                })?;
                let spec = ChannelKeyUse::Secret.spec();
                match hsm.unwrap_key(key.obj, UnwrapMechanism::RsaPkcs, &ciphertext, &spec) {
                    Ok(obj) => {
                        hsm.destroy(obj)?;
                        Ok(Pkcs1BadPadding::Value)
                    }
                    Err(e) if hsm_state(&e) || matches!(e, KmsError::Stale) => Err(e),
                    Err(_) => Ok(Pkcs1BadPadding::Error),
                }
            })
            .await?;
        match found {
            // Measured with SoftHSM 2.6.1: the module's error path is timed
            // apart from its success path (docs/security.md §2).
            Pkcs1BadPadding::Error => tracing::warn!(
                "channel key: the module answers bad PKCS#1 v1.5 padding with an error; \
                 such a key exchange goes on with the server's substitute pre-master, \
                 but the module may time its error apart from its success: \
                 prefer channel.padding = \"oaep\" with this module"
            ),
            Pkcs1BadPadding::Value => tracing::info!(
                "channel key: the module answers bad PKCS#1 v1.5 padding with a key \
                 (rejects implicitly itself); a 32-byte one acts as the substitute, \
                 any other length goes on with the server's substitute pre-master"
            ),
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::{bad_padding_ciphertext, substitute_input};
    use crate::hsm::PublicKey;

    #[test]
    fn the_substitute_input_names_the_key_and_the_ciphertext() {
        let a = substitute_input(&[1; 256], &[7; 256]);
        assert_eq!(a, substitute_input(&[1; 256], &[7; 256]));
        assert_ne!(a, substitute_input(&[2; 256], &[7; 256]));
        assert_ne!(a, substitute_input(&[1; 256], &[8; 256]));
    }

    #[test]
    fn the_probe_ciphertext_decrypts_to_a_signature_block() {
        use rsa::traits::{PrivateKeyParts, PublicKeyParts};
        let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 1024).unwrap();
        let public = PublicKey::Rsa {
            modulus: key.n().to_bytes_be(),
            exponent: key.e().to_bytes_be(),
        };
        let c = bad_padding_ciphertext(&public).unwrap();
        assert_eq!(c.len(), 128);
        let m = rsa::BigUint::from_bytes_be(&c)
            .modpow(key.d(), key.n())
            .to_bytes_be();
        // The leading zero byte is dropped by the integer.
        assert_eq!(&m[..3], &[1, 0xff, 0xff]);
        assert_eq!(m[m.len() - 33], 0);
        assert!(bad_padding_ciphertext(&PublicKey::P256(vec![4; 65])).is_none());
    }
}
