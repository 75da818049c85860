//! The HSM side of the card-to-server secure channel: the server's RSA
//! channel key, the pre-master it unwraps, the PRF key schedule, record
//! encryption, Finished/exporter MACs, and channel state wrapped for the
//! database so any replica can continue a channel.
//!
//! Every channel secret is an HSM session object behind a [`ChannelSecret`]
//! (destroyed when the handle goes); no key byte reaches the host. The PRF
//! is AES-256 on single blocks (`CKM_AES_ECB_ENCRYPT_DATA` with 32 bytes of
//! data gives a 32-byte AES key), because SoftHSM 2.6.1 has no
//! `CKM_HKDF_DERIVE`.
//!
//! One secret, one use ([`ChannelKeyUse`]): the pre-master and master
//! secret only derive; traffic keys encrypt, decrypt and derive (their
//! rekeyed successor); Finished and exporter keys only MAC. Traffic, MAC and
//! resumption secrets are extractable so that they can be wrapped under the
//! state KEK ([`CHANNEL_STATE_KEK_LABEL`], wrap/unwrap only, never
//! extractable); they stay sensitive, so never leave in clear.
//!
//! The RSA key unwraps only: no `CKA_DECRYPT`, so the pre-master is never
//! in host memory. The mechanism is RSA-OAEP with an empty label; its hash
//! is probed on the key's first use, SHA-256 first ([`Kms::channel_oaep_hash`]
//! says which, and the card must use it). SoftHSM 2.6.1 takes only SHA-1
//! (MGF1-SHA-1) for OAEP unwrapping, so on it the channel runs OAEP-SHA-1,
//! which is as sound as an encryption padding (OAEP's security does not rest
//! on collision resistance). SoftHSM answers a bad ciphertext with an error
//! (`CKR_GENERAL_ERROR`); every unwrap failure that is not the HSM being busy
//! or gone becomes [`KmsError::ChannelRefused`], as does a pre-master of any
//! length but 32 bytes. Every refusal costs the same HSM work: a ciphertext
//! of the wrong length or not below the modulus reaches the module as an
//! in-range decoy (one RSA operation, as bad padding), and a refused unwrap
//! goes on with a random secret through the steps a good pre-master takes
//! (docs/security.md §1). The OAEP decoding itself is the module's.
//! PKCS#1 v1.5, where configured, goes through the same unwrap behind
//! implicit rejection (`channel_pkcs1`).

mod ecdhe;

pub use ecdhe::P256_POINT_LEN;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cryptoki_sys::{CKR_KEY_FUNCTION_NOT_PERMITTED, CKR_KEY_TYPE_INCONSISTENT};
use subtle::ConstantTimeEq;

use crate::error::{ErrorKind, KmsError, Result};
use crate::hsm::{
    Derivation, Hsm, KeyPairKind, KeyPairUse, KeySpec, MacMechanism, MechanismId, OaepHash,
    ObjectId, PublicKey, SecretKind, UnwrapMechanism, Usage, WrapMechanism,
};
use crate::keys::{KeyCache, with_fresh_handles};
use crate::pool::HsmPool;
use crate::service::Kms;

/// Label of the channel RSA key pair `keyward init` makes.
pub const CHANNEL_KEY_LABEL: &str = "keyward/channel/rsa";
/// Label of the AES-256 key that wraps channel state for the database.
pub const CHANNEL_STATE_KEK_LABEL: &str = "keyward/channel/state-kek";
/// Modulus size of a new channel key.
pub const CHANNEL_KEY_BITS: u32 = 2048;
/// Length of every channel secret (AES-256).
pub const CHANNEL_SECRET_LEN: usize = 32;
/// Largest RSA ciphertext taken (a 4096-bit modulus).
const MAX_CIPHERTEXT: usize = 512;
/// Largest record plaintext or ciphertext the HSM is given.
pub const MAX_RECORD_LEN: usize = 1 << 20;
/// Largest wrapped state value (an AES-256 key wraps to 40 bytes).
const MAX_WRAPPED_STATE: usize = 64;

/// Mechanisms the secure channel needs.
pub const CHANNEL_MECHANISMS: &[(MechanismId, &str)] = &[
    (
        MechanismId::RsaKeyPairGen,
        "the channel key (created by init)",
    ),
    (MechanismId::RsaOaep, "channel pre-master unwrap (RSA-OAEP)"),
    (MechanismId::AesEcbEncryptData, "channel key schedule"),
    (MechanismId::AesGcm, "channel records"),
    (MechanismId::AesCmac, "channel Finished and exporter MACs"),
    (
        MechanismId::AesKeyGen,
        "the channel state KEK (created by init)",
    ),
    (MechanismId::AesKeyWrapPad, "channel state at rest"),
    (MechanismId::AesKeyWrap, "channel pre-master length check"),
    (MechanismId::EcKeyPairGen, "channel ECDHE ephemeral key"),
    (MechanismId::Ecdh1Derive, "channel ECDHE key agreement"),
    (
        MechanismId::AesEcb,
        "channel ECDHE salt of the master secret",
    ),
];

/// What a channel secret may do; each secret gets exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKeyUse {
    /// Pre-master and master secret: derive only, never extractable.
    Secret,
    /// A direction's record key: AES-GCM both ways, and derive for rekey.
    Traffic,
    /// Finished and exporter keys: AES-CMAC only.
    Mac,
    /// The resumption secret: derive only, kept (wrapped) for tickets.
    Resumption,
}

impl ChannelKeyUse {
    fn usage(self) -> Usage {
        match self {
            Self::Secret | Self::Resumption => Usage::DERIVE,
            Self::Traffic => Usage {
                encrypt: true,
                decrypt: true,
                derive: true,
                ..Usage::NONE
            },
            Self::Mac => Usage::MAC,
        }
    }

    /// Whether the secret may be wrapped for the database.
    fn extractable(self) -> bool {
        self != Self::Secret
    }

    pub(super) fn spec(self) -> KeySpec {
        KeySpec {
            kind: SecretKind::Aes(CHANNEL_SECRET_LEN),
            usage: self.usage(),
            token_label: None,
            extractable: self.extractable(),
        }
    }
}

/// A channel secret in the HSM (a session object). The object is destroyed
/// when the handle is dropped or [`Kms::channel_forget`] is called; its
/// `Debug` shows the use only.
pub struct ChannelSecret {
    pub(super) obj: ObjectId,
    pub(super) key_use: ChannelKeyUse,
    pub(super) pool: HsmPool,
    /// False once [`Kms::channel_forget`] has taken the destruction over.
    pub(super) owned: bool,
}

impl std::fmt::Debug for ChannelSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelSecret")
            .field("use", &self.key_use)
            .finish_non_exhaustive()
    }
}

impl ChannelSecret {
    pub fn key_use(&self) -> ChannelKeyUse {
        self.key_use
    }

    fn require(&self, key_use: ChannelKeyUse, what: &'static str) -> Result<ObjectId> {
        if self.key_use == key_use {
            Ok(self.obj)
        } else {
            Err(KmsError::invalid(
                "channel key",
                format!("not a key for {what}"),
            ))
        }
    }
}

impl Drop for ChannelSecret {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        let obj = self.obj;
        let queued = self.pool.detach(move |hsm| {
            if let Err(e) = hsm.destroy(obj) {
                tracing::warn!(error = %e, "could not destroy a channel secret");
            }
        });
        if let Err(e) = queued {
            tracing::warn!(error = %e, "could not queue the destruction of a channel secret");
        }
    }
}

/// A channel private key's handle, the OAEP hash it unwraps with, and its
/// modulus (big-endian, no leading zero).
#[derive(Debug, Clone)]
pub(crate) struct ChannelKey {
    pub(super) obj: ObjectId,
    hash: OaepHash,
    pub(super) modulus: Arc<[u8]>,
}

/// The channel private keys by label, found once and again after an HSM
/// reconnect.
pub(crate) type ChannelKeyCache = Arc<Mutex<HashMap<String, ChannelKey>>>;

/// The private key `label`, from `cache` or the token (its OAEP hash probed
/// on first use).
pub(super) fn channel_key(
    hsm: &dyn Hsm,
    cache: &ChannelKeyCache,
    label: &str,
) -> Result<ChannelKey> {
    if let Some(k) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(label) {
        return Ok(k.clone());
    }
    let obj = hsm
        .find_private_key(label)?
        .ok_or_else(|| KmsError::KeyMissing(label.to_owned()))?;
    let Some(PublicKey::Rsa { modulus, .. }) = hsm.public_key(label)? else {
        return Err(KmsError::KeyMissing(label.to_owned()));
    };
    let start = modulus
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(modulus.len());
    let k = ChannelKey {
        obj,
        hash: probe_oaep(hsm, obj, modulus.len() - start)?,
        modulus: modulus[start..].into(),
    };
    cache
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(label.to_owned(), k.clone());
    Ok(k)
}

/// The ciphertext the module is given: `ciphertext` when it is exactly the
/// modulus's length and below the modulus (RFC 8017 §7.1.2), otherwise a
/// fixed in-range value that fails the padding check. A module refuses an
/// out-of-range ciphertext before its private-key operation, so without
/// this a wrong length or a value ≥ the modulus would be answered faster
/// than bad padding; now every refusal costs one RSA operation. (Length and
/// value are public: comparing them leaks nothing.)
fn in_range(ciphertext: &[u8], modulus: &[u8]) -> Vec<u8> {
    if ciphertext.len() == modulus.len() && ciphertext < modulus {
        return ciphertext.to_vec();
    }
    let mut decoy = vec![0u8; modulus.len()];
    if let Some(last) = decoy.last_mut() {
        *last = 2;
    }
    decoy
}

/// Whether an error says the HSM is busy or gone rather than anything
/// about the input: those pass through, everything else is the one refusal.
pub(super) fn hsm_state(e: &KmsError) -> bool {
    matches!(e.kind(), ErrorKind::Busy | ErrorKind::Unavailable)
}

/// The channel key's OAEP hash when the module takes it for unwrapping:
/// SHA-256 first. A module that does not know a hash refuses the mechanism
/// parameter before it decrypts anything (SoftHSM 2.6.1: SHA-256 gives
/// `CKR_ARGUMENTS_BAD`; only SHA-1 unwraps), so a zero ciphertext tells
/// which is available without a known plaintext. What the module does with
/// that ciphertext's bad padding (an error, as SoftHSM; or a key, as a
/// module that rejects implicitly) is logged: the path refusals take.
fn probe_oaep(hsm: &dyn Hsm, key: ObjectId, modulus_len: usize) -> Result<OaepHash> {
    let zero = vec![0u8; modulus_len];
    for hash in [OaepHash::Sha256, OaepHash::Sha1] {
        let spec = ChannelKeyUse::Secret.spec();
        match hsm.unwrap_key(key, UnwrapMechanism::RsaOaep(hash), &zero, &spec) {
            Ok(obj) => {
                hsm.destroy(obj)?;
                tracing::info!(
                    ?hash,
                    "channel key: the module answers bad OAEP padding with a key \
                     (rejects implicitly); such a key fails the card's Finished"
                );
                return Ok(hash);
            }
            Err(e) if hsm_state(&e) || matches!(e, KmsError::Stale) => return Err(e),
            Err(KmsError::MechanismRejected { .. }) => continue,
            Err(KmsError::Pkcs11 { rv, .. }) if rv.is_argument_error() => continue,
            // A key that may not unwrap is a misconfiguration, not a refusal.
            Err(KmsError::Pkcs11 { rv, .. })
                if rv.code() == CKR_KEY_FUNCTION_NOT_PERMITTED
                    || rv.code() == CKR_KEY_TYPE_INCONSISTENT =>
            {
                return Err(KmsError::Hsm {
                    function: "C_UnwrapKey",
                    problem: "the channel key is not an RSA key that may unwrap",
                });
            }
            Err(_) => {
                tracing::info!(
                    ?hash,
                    "channel key: the module answers bad OAEP padding with an error; \
                     a refused unwrap goes on with a random secret, then is refused"
                );
                return Ok(hash);
            }
        }
    }
    Err(KmsError::MechanismMissing {
        name: "CKM_RSA_PKCS_OAEP",
        number: 0x9,
        purpose: "channel pre-master unwrap (no OAEP hash the module takes)",
    })
}

/// Unwraps a pre-master and checks, without seeing it, that it is 32 bytes:
/// it is unwrapped extractable, wrapped once under the state KEK with RFC
/// 3394 AES key wrap (which takes only multiples of 8 bytes and adds 8), and
/// made non-extractable before anything else sees it, and one key derived
/// from it (only an AES key derives: the wrap alone passes 25 to 31
/// bytes, which SoftHSM pads). SoftHSM 2.6.1 leaves
/// `CKA_VALUE_LEN` of an unwrapped key at 0 (and refuses it in the unwrap
/// template), so the length cannot be read. The RFC 3394 value is dropped;
/// it could not be passed off as state, which is RFC 5649 (another IV).
///
/// A ciphertext the module refuses goes on with a random secret through the
/// same steps (made, wrapped, made non-extractable, destroyed), so a
/// refusal costs what a good ciphertext does whichever check failed; only
/// then is it refused.
pub(super) fn unwrap_checked(
    hsm: &dyn Hsm,
    pool: &HsmPool,
    key: &ChannelKey,
    kek: ObjectId,
    mech: UnwrapMechanism,
    ciphertext: &[u8],
) -> Result<ChannelSecret> {
    let passes = |e: &KmsError| hsm_state(e) || matches!(e, KmsError::Stale);
    let spec = KeySpec {
        extractable: true,
        ..ChannelKeyUse::Secret.spec()
    };
    let ciphertext = in_range(ciphertext, &key.modulus);
    let (obj, unwrapped) = match hsm.unwrap_key(key.obj, mech, &ciphertext, &spec) {
        Ok(obj) => (obj, true),
        Err(e) if passes(&e) => return Err(e),
        Err(_) => (hsm.generate_key(&spec)?, false),
    };
    let secret = ChannelSecret {
        obj,
        key_use: ChannelKeyUse::Secret,
        pool: pool.clone(),
        owned: true,
    };
    let length_ok = match hsm.wrap_key(kek, WrapMechanism::AesKeyWrap, obj) {
        Ok(wrapped) => wrapped.len() == CHANNEL_SECRET_LEN + 8,
        Err(e) if passes(&e) => return Err(e),
        Err(_) => false,
    };
    // SoftHSM pads a key of 25 to 31 bytes with zeros for RFC 3394, so it
    // wraps to 40 bytes as 32 do; of those lengths only 32 is an AES key,
    // and only an AES key derives. The derived key is dropped (destroyed
    // by a detached job, as a refused secret is).
    let derives = match hsm.derive_key(
        obj,
        Derivation::AesEcb,
        &[0; CHANNEL_SECRET_LEN],
        &ChannelKeyUse::Secret.spec(),
    ) {
        Ok(probe) => {
            drop(ChannelSecret {
                obj: probe,
                key_use: ChannelKeyUse::Secret,
                pool: pool.clone(),
                owned: true,
            });
            true
        }
        Err(e) if passes(&e) => return Err(e),
        Err(_) => false,
    };
    hsm.set_unextractable(obj)?;
    if unwrapped & length_ok & derives {
        Ok(secret)
    } else {
        Err(KmsError::ChannelRefused)
    }
}

impl Kms {
    /// The channel key pair `label` (RSA, unwrap only, never extractable),
    /// generated in the HSM when absent; returns its public key and whether
    /// it was created.
    pub async fn ensure_channel_key(&self, label: &str) -> Result<(PublicKey, bool)> {
        let l = label.to_owned();
        self.pool()
            .run(move |hsm| match hsm.public_key(&l)? {
                Some(p) if hsm.find_private_key(&l)?.is_some() => Ok((p, false)),
                Some(_) => Err(KmsError::KeyMissing(l.clone())),
                None => hsm
                    .generate_key_pair(KeyPairKind::Rsa(CHANNEL_KEY_BITS), &l, KeyPairUse::Unwrap)
                    .map(|(_, p)| (p, true)),
            })
            .await
    }

    /// The public key of the channel key pair `label`, which must exist
    /// with its private half (a serving replica never makes one).
    pub async fn channel_public_key(&self, label: &str) -> Result<PublicKey> {
        let l = label.to_owned();
        self.pool()
            .run(move |hsm| match hsm.public_key(&l)? {
                Some(p) if hsm.find_private_key(&l)?.is_some() => Ok(p),
                _ => Err(KmsError::KeyMissing(l.clone())),
            })
            .await
    }

    /// Creates the channel state KEK when the token lacks it; returns
    /// whether it did.
    pub async fn ensure_channel_state_kek(&self) -> Result<bool> {
        self.pool()
            .run(|hsm| match hsm.find_key(CHANNEL_STATE_KEK_LABEL)? {
                Some(_) => Ok(false),
                None => hsm
                    .generate_key(&KeySpec {
                        kind: SecretKind::Aes(32),
                        usage: Usage {
                            wrap: true,
                            unwrap: true,
                            ..Usage::NONE
                        },
                        token_label: Some(CHANNEL_STATE_KEK_LABEL.to_owned()),
                        extractable: false,
                    })
                    .map(|_| true),
            })
            .await
    }

    /// The pre-master the card encrypted to the channel key `key_label`
    /// (RSA-OAEP, SHA-256), unwrapped inside the HSM as a derive-only
    /// secret. Any ciphertext that does not give a 32-byte secret is
    /// [`KmsError::ChannelRefused`], whatever the reason.
    pub async fn unwrap_premaster(
        &self,
        key_label: &str,
        ciphertext: Vec<u8>,
    ) -> Result<ChannelSecret> {
        if ciphertext.is_empty() || ciphertext.len() > MAX_CIPHERTEXT {
            return Err(KmsError::ChannelRefused);
        }
        let pool = self.pool().clone();
        self.with_channel_key(key_label, move |hsm, key, handles| {
            let kek = handles.master(hsm, CHANNEL_STATE_KEK_LABEL)?;
            let oaep = UnwrapMechanism::RsaOaep(key.hash);
            unwrap_checked(hsm, &pool, key, kek, oaep, &ciphertext)
        })
        .await
    }

    /// Runs `step` on an HSM worker with the channel key `key_label`; a
    /// stale handle (the module reopened its sessions) clears the key
    /// caches and runs it once more.
    pub(super) async fn with_channel_key<T, F>(&self, key_label: &str, step: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(&dyn Hsm, &ChannelKey, &KeyCache) -> Result<T> + Send + 'static,
    {
        let label = key_label.to_owned();
        let (cache, handles) = (self.channel_keys.clone(), self.cache_arc());
        self.pool()
            .run(move |hsm| {
                let attempt = || step(hsm, &channel_key(hsm, &cache, &label)?, &handles);
                match attempt() {
                    Err(KmsError::Stale) => {
                        cache.lock().unwrap_or_else(|p| p.into_inner()).clear();
                        handles.clear();
                        attempt()
                    }
                    other => other,
                }
            })
            .await
    }

    /// The OAEP hash the channel key `key_label` unwraps with on this
    /// module (probed once): what the card must encrypt with.
    pub async fn channel_oaep_hash(&self, key_label: &str) -> Result<OaepHash> {
        let (label, cache) = (key_label.to_owned(), self.channel_keys.clone());
        self.pool()
            .run(move |hsm| channel_key(hsm, &cache, &label).map(|k| k.hash))
            .await
    }

    /// `PRF(base, data)`: AES-256 of the two blocks of `data` under `base`,
    /// inside the HSM, as a new secret of `key_use`. `base` must be able to
    /// derive (a pre-master, master, traffic or resumption secret).
    pub async fn channel_derive(
        &self,
        base: &ChannelSecret,
        data: [u8; 32],
        key_use: ChannelKeyUse,
    ) -> Result<ChannelSecret> {
        let mut out = self.channel_derive_all(base, vec![(data, key_use)]).await?;
        out.pop().ok_or(KmsError::Hsm {
            function: "C_DeriveKey",
            problem: "no key derived",
        })
    }

    /// [`Kms::channel_derive`] for several inputs in one HSM job (a
    /// handshake's whole schedule), in order.
    pub async fn channel_derive_all(
        &self,
        base: &ChannelSecret,
        items: Vec<([u8; 32], ChannelKeyUse)>,
    ) -> Result<Vec<ChannelSecret>> {
        if !base.key_use.usage().derive {
            return Err(KmsError::invalid("channel key", "not a derivation key"));
        }
        let (base, pool) = (base.obj, self.pool().clone());
        self.pool()
            .run(move |hsm| derive_secrets(hsm, &pool, base, &items))
            .await
    }

    /// `AES-CMAC(key, data)` under a [`ChannelKeyUse::Mac`] secret.
    pub async fn channel_cmac(&self, key: &ChannelSecret, data: Vec<u8>) -> Result<[u8; 16]> {
        let obj = key.require(ChannelKeyUse::Mac, "a MAC")?;
        if data.len() > crate::mac::MAX_MESSAGE_LEN {
            return Err(KmsError::MessageTooLong {
                len: data.len(),
                max: crate::mac::MAX_MESSAGE_LEN,
            });
        }
        let out = self
            .pool()
            .run(move |hsm| hsm.mac(obj, MacMechanism::AesCmac, &data))
            .await?;
        out.try_into().map_err(|_| KmsError::Hsm {
            function: "C_Sign",
            problem: "AES-CMAC of unexpected length",
        })
    }

    /// Whether `mac` is the full 16-byte CMAC of `data`, compared in
    /// constant time.
    pub async fn channel_cmac_verify(
        &self,
        key: &ChannelSecret,
        data: Vec<u8>,
        mac: &[u8],
    ) -> Result<bool> {
        let expected = self.channel_cmac(key, data).await?;
        Ok(expected.ct_eq(mac).into())
    }

    /// AES-256-GCM of `plaintext` under a traffic key: ciphertext ‖ 16-byte
    /// tag. The caller makes the nonce unique (iv XOR sequence).
    pub async fn channel_seal(
        &self,
        key: &ChannelSecret,
        nonce: [u8; 12],
        aad: Vec<u8>,
        plaintext: Vec<u8>,
    ) -> Result<Vec<u8>> {
        let obj = key.require(ChannelKeyUse::Traffic, "records")?;
        if plaintext.len() > MAX_RECORD_LEN || aad.len() > MAX_RECORD_LEN {
            return Err(KmsError::MessageTooLong {
                len: plaintext.len().max(aad.len()),
                max: MAX_RECORD_LEN,
            });
        }
        self.pool()
            .run(move |hsm| hsm.gcm_encrypt(obj, &nonce, &aad, &plaintext))
            .await
    }

    /// The plaintext of a record sealed by [`Kms::channel_seal`] (or the
    /// card). A record that does not open, whatever the reason, is
    /// [`KmsError::ChannelRefused`].
    pub async fn channel_open(
        &self,
        key: &ChannelSecret,
        nonce: [u8; 12],
        aad: Vec<u8>,
        ciphertext: Vec<u8>,
    ) -> Result<Vec<u8>> {
        let obj = key.require(ChannelKeyUse::Traffic, "records")?;
        if ciphertext.len() < 16 || ciphertext.len() > MAX_RECORD_LEN || aad.len() > MAX_RECORD_LEN
        {
            return Err(KmsError::ChannelRefused);
        }
        self.pool()
            .run(move |hsm| {
                hsm.gcm_decrypt(obj, &nonce, &aad, &ciphertext)
                    .map_err(|e| match e {
                        e if hsm_state(&e) || matches!(e, KmsError::Stale) => e,
                        _ => KmsError::ChannelRefused,
                    })
            })
            .await
    }

    /// `key` wrapped under the state KEK (AES key wrap with padding), for
    /// the database. Only extractable secrets (not the pre-master or
    /// master secret) can be wrapped.
    pub async fn channel_wrap_state(&self, key: &ChannelSecret) -> Result<Vec<u8>> {
        if !key.key_use.extractable() {
            return Err(KmsError::invalid("channel key", "not one that is kept"));
        }
        let (obj, cache) = (key.obj, self.cache_arc());
        // The KEK's kept handle may be of an older epoch (the HSM reopened
        // its sessions): looked up again, and the wrap run once more.
        self.pool()
            .run(move |hsm| {
                with_fresh_handles(&cache, || {
                    let kek = cache.master(hsm, CHANNEL_STATE_KEK_LABEL)?;
                    hsm.wrap_key(kek, WrapMechanism::AesKeyWrapPad, obj)
                })
            })
            .await
    }

    /// A secret of `key_use` from a value of [`Kms::channel_wrap_state`],
    /// on any replica with the same token. A value that does not unwrap to
    /// a 32-byte key is [`KmsError::CorruptRecord`].
    pub async fn channel_unwrap_state(
        &self,
        wrapped: Vec<u8>,
        key_use: ChannelKeyUse,
    ) -> Result<ChannelSecret> {
        check_wrapped_state(&wrapped, key_use)?;
        let (cache, pool) = (self.cache_arc(), self.pool().clone());
        self.pool()
            .run(move |hsm| {
                let obj = unwrap_state(hsm, &cache, &wrapped, key_use)?;
                Ok(ChannelSecret {
                    obj,
                    key_use,
                    pool,
                    owned: true,
                })
            })
            .await
    }

    /// A resumption's check in one HSM job: the ticket's secret unwrapped
    /// (as [`Kms::channel_unwrap_state`]), `K_binder = PRF(secret,
    /// binder_input)`, and the card's `binder` compared in constant time with
    /// `AES-CMAC(K_binder, bound)`; the binder key is destroyed in the same
    /// job. The secret when the binder verifies, `None` when it does not.
    pub async fn channel_resumption_secret(
        &self,
        wrapped: Vec<u8>,
        binder_input: [u8; 32],
        bound: Vec<u8>,
        binder: [u8; 16],
    ) -> Result<Option<ChannelSecret>> {
        if bound.len() > crate::mac::MAX_MESSAGE_LEN {
            return Err(KmsError::MessageTooLong {
                len: bound.len(),
                max: crate::mac::MAX_MESSAGE_LEN,
            });
        }
        check_wrapped_state(&wrapped, ChannelKeyUse::Resumption)?;
        let (cache, pool) = (self.cache_arc(), self.pool().clone());
        self.pool()
            .run(move |hsm| {
                let obj = unwrap_state(hsm, &cache, &wrapped, ChannelKeyUse::Resumption)?;
                let verified = (|| {
                    let key = hsm.derive_key(
                        obj,
                        Derivation::AesEcb,
                        &binder_input,
                        &ChannelKeyUse::Mac.spec(),
                    )?;
                    let mac = hsm.mac(key, MacMechanism::AesCmac, &bound);
                    if let Err(e) = hsm.destroy(key) {
                        tracing::warn!(error = %e, "could not destroy a binder key");
                    }
                    Ok::<_, KmsError>(bool::from(mac?.as_slice().ct_eq(&binder)))
                })();
                match verified {
                    Ok(true) => Ok(Some(ChannelSecret {
                        obj,
                        key_use: ChannelKeyUse::Resumption,
                        pool,
                        owned: true,
                    })),
                    other => {
                        // Refused or failed: the secret goes now, in this job.
                        if let Err(e) = hsm.destroy(obj) {
                            tracing::warn!(error = %e, "could not destroy a channel secret");
                        }
                        other.map(|_| None)
                    }
                }
            })
            .await
    }

    /// A channel's opening in **one** HSM job (each job is two thread
    /// hand-offs, which cost more than SoftHSM's own work here): the master
    /// `PRF(base, master_input)`, the five keys of [`ChannelSchedule`] under
    /// it, the Finished MAC over `schedule.finished_data`, a 16-byte ticket
    /// handle from the module's RNG, and the four kept keys wrapped under
    /// the state KEK. `base` and every derived key are destroyed in the same
    /// job, whatever its outcome; nothing of the schedule outlives it.
    pub async fn channel_establish(
        &self,
        base: ChannelSecret,
        schedule: ChannelSchedule,
    ) -> Result<EstablishedChannel> {
        if !base.key_use.usage().derive {
            return Err(KmsError::invalid("channel key", "not a derivation key"));
        }
        let cache = self.cache_arc();
        self.pool()
            .run(move |hsm| {
                let mut base = base;
                let made = establish_in(hsm, &cache, base.obj, &schedule);
                // Destroyed here, not by a job of its own.
                base.owned = false;
                if let Err(e) = hsm.destroy(base.obj) {
                    tracing::warn!(error = %e, "could not destroy a channel secret");
                }
                made
            })
            .await
    }

    /// Destroys `keys` in one queued HSM job without waiting (dropping
    /// each does the same in a job of its own).
    pub fn channel_forget_all(&self, keys: Vec<ChannelSecret>) {
        let objs: Vec<ObjectId> = keys
            .into_iter()
            .map(|mut k| {
                k.owned = false;
                k.obj
            })
            .collect();
        let queued = self.pool().detach(move |hsm| {
            for obj in objs {
                if let Err(e) = hsm.destroy(obj) {
                    tracing::warn!(error = %e, "could not destroy a channel secret");
                }
            }
        });
        if let Err(e) = queued {
            tracing::warn!(error = %e, "could not queue the destruction of channel secrets");
        }
    }

    /// Destroys a channel secret now and waits for it (a closed channel);
    /// dropping the handle does the same without waiting.
    pub async fn channel_forget(&self, mut key: ChannelSecret) -> Result<()> {
        let obj = key.obj;
        key.owned = false;
        self.pool().run(move |hsm| hsm.destroy(obj)).await
    }
}

/// The inputs of [`Kms::channel_establish`]: the master's PRF input, each
/// key's label input (`keyward_protocol::channel::label_input`), and what
/// the Finished MAC covers.
#[derive(Debug, Clone)]
pub struct ChannelSchedule {
    pub master_input: [u8; 32],
    pub c2s: [u8; 32],
    pub s2c: [u8; 32],
    pub finished: [u8; 32],
    pub exporter: [u8; 32],
    pub resumption: [u8; 32],
    pub finished_data: Vec<u8>,
}

/// A new channel as the HSM leaves it: the Finished MAC, the ticket handle,
/// and the kept keys wrapped under the state KEK (they name keys only this
/// HSM can unwrap). Its `Debug` shows none of them: the handle is a card's
/// ticket.
#[derive(Clone, PartialEq, Eq)]
pub struct EstablishedChannel {
    pub finished_mac: [u8; 16],
    pub ticket_handle: [u8; 16],
    pub c2s: Vec<u8>,
    pub s2c: Vec<u8>,
    pub exporter: Vec<u8>,
    pub resumption: Vec<u8>,
}

impl std::fmt::Debug for EstablishedChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EstablishedChannel").finish_non_exhaustive()
    }
}

/// [`Kms::channel_establish`]'s work on a worker: every object it makes is
/// destroyed before it returns.
fn establish_in(
    hsm: &dyn Hsm,
    cache: &KeyCache,
    base: ObjectId,
    s: &ChannelSchedule,
) -> Result<EstablishedChannel> {
    use ChannelKeyUse::{Mac, Resumption, Secret, Traffic};
    let master = hsm.derive_key(base, Derivation::AesEcb, &s.master_input, &Secret.spec())?;
    let mut made = Vec::with_capacity(5);
    let derived = [
        (&s.c2s, Traffic),
        (&s.s2c, Traffic),
        (&s.finished, Mac),
        (&s.exporter, Mac),
        (&s.resumption, Resumption),
    ]
    .iter()
    .try_for_each(|(data, key_use)| {
        made.push(hsm.derive_key(master, Derivation::AesEcb, *data, &key_use.spec())?);
        Ok::<_, KmsError>(())
    });
    let out = derived.and_then(|()| {
        let [c2s, s2c, finished, exporter, resumption] = made[..] else {
            return Err(KmsError::Hsm {
                function: "C_DeriveKey",
                problem: "fewer keys derived than asked",
            });
        };
        let fixed = |v: Vec<u8>, function| {
            <[u8; 16]>::try_from(v.as_slice()).map_err(|_| KmsError::Hsm {
                function,
                problem: "unexpected length",
            })
        };
        let finished_mac = fixed(
            hsm.mac(finished, MacMechanism::AesCmac, &s.finished_data)?,
            "C_Sign",
        )?;
        let ticket_handle = fixed(hsm.random(16)?, "C_GenerateRandom")?;
        let kek = with_fresh_handles(cache, || cache.master(hsm, CHANNEL_STATE_KEK_LABEL))?;
        let wrap = |obj| hsm.wrap_key(kek, WrapMechanism::AesKeyWrapPad, obj);
        Ok(EstablishedChannel {
            finished_mac,
            ticket_handle,
            c2s: wrap(c2s)?,
            s2c: wrap(s2c)?,
            exporter: wrap(exporter)?,
            resumption: wrap(resumption)?,
        })
    });
    for obj in std::iter::once(master).chain(made) {
        if let Err(e) = hsm.destroy(obj) {
            tracing::warn!(error = %e, "could not destroy a channel secret");
        }
    }
    out
}

/// `PRF(base, data)` for each of `items`, in order, as owned secrets, in a
/// worker's job.
fn derive_secrets(
    hsm: &dyn Hsm,
    pool: &HsmPool,
    base: ObjectId,
    items: &[([u8; 32], ChannelKeyUse)],
) -> Result<Vec<ChannelSecret>> {
    items
        .iter()
        .map(|(data, key_use)| {
            let obj = hsm.derive_key(base, Derivation::AesEcb, data, &key_use.spec())?;
            Ok(ChannelSecret {
                obj,
                key_use: *key_use,
                pool: pool.clone(),
                owned: true,
            })
        })
        .collect()
}

/// A value of [`Kms::channel_wrap_state`] worth trying to unwrap as a
/// secret of `key_use`; anything else is [`KmsError::CorruptRecord`].
fn check_wrapped_state(wrapped: &[u8], key_use: ChannelKeyUse) -> Result<()> {
    if wrapped.is_empty() || wrapped.len() > MAX_WRAPPED_STATE || !key_use.extractable() {
        return Err(KmsError::CorruptRecord("wrapped channel state"));
    }
    Ok(())
}

/// Unwraps channel state under the state KEK, in a worker's job. A value
/// that does not unwrap to a 32-byte key is [`KmsError::CorruptRecord`]
/// (AES key wrap with padding checks the length it wrapped, and only
/// 32-byte secrets are ever wrapped).
fn unwrap_state(
    hsm: &dyn Hsm,
    cache: &KeyCache,
    wrapped: &[u8],
    key_use: ChannelKeyUse,
) -> Result<ObjectId> {
    // As for the wrap: a stale KEK handle is looked up again.
    with_fresh_handles(cache, || {
        let kek = cache.master(hsm, CHANNEL_STATE_KEK_LABEL)?;
        hsm.unwrap_key(
            kek,
            UnwrapMechanism::AesKeyWrapPad,
            wrapped,
            &key_use.spec(),
        )
        .map_err(|e| match e {
            e if hsm_state(&e) || matches!(e, KmsError::Stale) => e,
            _ => KmsError::CorruptRecord("wrapped channel state"),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::in_range;

    #[test]
    fn only_a_ciphertext_of_the_modulus_length_below_it_reaches_the_module() {
        let n = [0xc0, 0x01, 0x02];
        let decoy = vec![0, 0, 2];
        assert_eq!(in_range(&[0xbf, 0xff, 0xff], &n), vec![0xbf, 0xff, 0xff]);
        assert_eq!(in_range(&[0, 0, 0], &n), vec![0, 0, 0]);
        assert_eq!(in_range(&[0xc0, 0x01, 0x02], &n), decoy, "equal to n");
        assert_eq!(in_range(&[0xff, 0xff, 0xff], &n), decoy, "above n");
        assert_eq!(in_range(&[0x01, 0x02], &n), decoy, "short");
        assert_eq!(in_range(&[0, 0x01, 0x02, 0x03], &n), decoy, "long");
    }
}
