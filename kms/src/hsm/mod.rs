//! The PKCS#11 seam: one synchronous, object-safe trait ([`Hsm`]) and its
//! one implementation over `cryptoki` ([`Pkcs11Hsm`]).
//!
//! Everything above this module speaks in [`ObjectId`]s and the small enums
//! below, never in `cryptoki` types. Vendors differ only by configuration
//! (mechanism overrides) and by one [`Capabilities`] value built when the
//! module is opened, never by `if vendor == …`. PKCS#11 return values are
//! sorted into typed errors in one place (`rv`, [`Rv`]).
//!
//! The trait is blocking: callers on an async runtime go through
//! [`crate::pool::HsmPool`], whose worker threads are the only ones that call it.

mod pkcs11;
mod raw;
mod rv;

pub use pkcs11::Pkcs11Hsm;
pub use pkcs11::mechanism_name;
pub use rv::Rv;

use keyward_config::{HsmConfig, MechanismOverrides};

use crate::error::Result;

/// What this token offers beyond the standard mechanisms and what it needs
/// worked around: one value per module, built when it is opened, that the
/// operations consult (as Cosmian KMS's `HsmCapabilities`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// A vendor ANSI X9.19 retail-MAC mechanism is configured
    /// (`[hsm.mechanisms] des3_retail_mac`, checked against the token at
    /// start): `ISO9797-1-M3` uses it, with `sign` on the TAK, instead of the
    /// two-key emulation.
    pub vendor_retail_mac: bool,
    /// A vendor PIN-translation mechanism is configured
    /// (`[hsm.mechanisms] pin_translate`, checked against the token at
    /// start); without one PIN blocks are refused, never decrypted on the
    /// host.
    pub pin_translate: bool,
    /// Serialise object creation, lookup and destruction on one lock.
    /// SoftHSM 2.6.1 races between object creation and `C_FindObjects`
    /// (SoftHSMv2 #573). `hsm.serialize_object_ops`, on by default. A call
    /// that creates an object runs whole under the lock, its cryptography
    /// included: key derivation (the first sight of a device in a bulk
    /// batch) and the channel's RSA unwrap run one at a time in the process
    /// (1,235 unwraps/s from 2 sessions here, 2,314/s without the lock,
    /// docs/performance.md). A module without the race may turn it off.
    pub serialize_object_ops: bool,
}

impl Capabilities {
    /// The capabilities that follow from the configuration: mechanism
    /// overrides and the object lock.
    pub fn from_config(hsm: &HsmConfig) -> Self {
        let mechanisms: &MechanismOverrides = &hsm.mechanisms;
        Self {
            vendor_retail_mac: mechanisms.des3_retail_mac.is_some(),
            pin_translate: mechanisms.pin_translate.is_some(),
            serialize_object_ops: hsm.serialize_object_ops,
        }
    }
}

/// A key object on the token, valid in every session of this process until the
/// token restarts (see [`Hsm::epoch`]). Never persisted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ObjectId {
    pub(crate) handle: u64,
    pub(crate) epoch: u64,
}

/// Secret key types Keyward creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretKind {
    /// 2-key TDES (16 bytes; PKCS#11 `CKK_DES2`).
    Des2,
    /// AES with the given length in bytes (16, 24 or 32).
    Aes(usize),
    /// A generic secret of the given length in bytes (`CKK_GENERIC_SECRET`),
    /// the key type of HMAC keys (the audit trail's MAC key).
    GenericSecret(usize),
}

/// What a key may be used for. Each key gets only what its role needs: an
/// `encrypt` right on a derivation key would print derived keys in clear.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub encrypt: bool,
    pub decrypt: bool,
    pub sign: bool,
    pub verify: bool,
    pub derive: bool,
    pub wrap: bool,
    pub unwrap: bool,
}

impl Usage {
    pub const DERIVE: Usage = Usage {
        derive: true,
        ..Usage::NONE
    };
    pub const ENCRYPT: Usage = Usage {
        encrypt: true,
        ..Usage::NONE
    };
    pub const DECRYPT: Usage = Usage {
        decrypt: true,
        ..Usage::NONE
    };
    pub const MAC: Usage = Usage {
        sign: true,
        verify: true,
        ..Usage::NONE
    };
    pub const NONE: Usage = Usage {
        encrypt: false,
        decrypt: false,
        sign: false,
        verify: false,
        derive: false,
        wrap: false,
        unwrap: false,
    };
}

/// Where a new key lives and whether it may ever leave the HSM (wrapped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpec {
    pub kind: SecretKind,
    pub usage: Usage,
    /// `Some(label)`: a persistent token object; `None`: a session object that
    /// disappears with the process.
    pub token_label: Option<String>,
    /// Only keys that must travel (wrapped) are extractable. Always sensitive.
    pub extractable: bool,
}

impl KeySpec {
    /// A session object with the given usage, not extractable.
    pub fn session(kind: SecretKind, usage: Usage) -> Self {
        Self {
            kind,
            usage,
            token_label: None,
            extractable: false,
        }
    }
}

/// Key derivation by encrypting data under the base key, inside the HSM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Derivation {
    /// `CKM_DES3_ECB_ENCRYPT_DATA`: 3DES-ECB, odd parity forced on the result.
    Des3Ecb,
    /// `CKM_AES_ECB_ENCRYPT_DATA`.
    AesEcb,
}

/// Raw block-cipher encryption (the building block of CBC-MAC emulation,
/// KCVs and challenge responses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cipher {
    Des3Ecb,
    Des3Cbc([u8; 8]),
    AesEcb,
    AesCbc([u8; 16]),
}

/// What a PIN translation needs besides the two keys: ISO 9564 formats in
/// and out, and the PAN the block is bound to (formats 0, 3 and 4 mix it in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinTranslation {
    pub from_format: u8,
    pub to_format: u8,
    /// The account number (masked in `Debug`).
    pub pan: crate::types::Pan,
    /// The encrypted PIN block (8 bytes formats 0 and 3, 16 bytes format 4).
    pub block: Vec<u8>,
}

/// MAC mechanisms with a native PKCS#11 form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MacMechanism {
    /// `CKM_DES3_CMAC` (8-byte output).
    Des3Cmac,
    /// `CKM_AES_CMAC` (16-byte output).
    AesCmac,
    /// A vendor ANSI X9.19 retail MAC (8-byte output), configured by number.
    Des3RetailVendor,
    /// `CKM_SHA256_HMAC` (32-byte output) on a generic secret.
    HmacSha256,
}

/// How a key is wrapped (for a device, or for the database).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WrapMechanism {
    /// RFC 3394 AES key wrap (`CKM_AES_KEY_WRAP`).
    AesKeyWrap,
    /// RFC 5649 AES key wrap with padding (`CKM_AES_KEY_WRAP_PAD`).
    AesKeyWrapPad,
    /// RSA-OAEP with SHA-1 and MGF1-SHA-1.
    RsaOaepSha1,
}

/// How a wrapped key is brought into the HSM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnwrapMechanism {
    /// RSA-OAEP with the given hash for both OAEP and MGF1, empty label.
    RsaOaep(OaepHash),
    /// RSAES-PKCS1-v1_5 (`CKM_RSA_PKCS`): only behind implicit rejection
    /// (the secure channel's `pkcs1v15` padding), never on its own.
    RsaPkcs,
    /// RFC 5649 AES key wrap with padding (`CKM_AES_KEY_WRAP_PAD`).
    AesKeyWrapPad,
}

/// The hash of RSA-OAEP (and of its MGF1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OaepHash {
    Sha1,
    Sha256,
}

/// What the private half of a token key pair may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPairUse {
    /// Sign only (CA, TLS, permits, evidence).
    Sign,
    /// Unwrap only: keys encrypted to it become HSM objects and are never
    /// seen in clear (no `CKA_DECRYPT`, which would hand the host the
    /// plaintext).
    Unwrap,
}

/// A public key as it travels: P-256 uncompressed point or RSA modulus/exponent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// `04 || X || Y`, 65 bytes.
    P256(Vec<u8>),
    Rsa {
        modulus: Vec<u8>,
        exponent: Vec<u8>,
    },
}

/// Asymmetric key pairs Keyward keeps on the token (CA, TLS, permit signing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPairKind {
    P256,
    /// RSA with the modulus size in bits (public exponent 65537).
    Rsa(u32),
}

/// Signature mechanisms for token key pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignMechanism {
    /// ECDSA P-256 over SHA-256: the host hashes, the HSM signs the digest
    /// (`CKM_ECDSA`; SoftHSM has no `CKM_ECDSA_SHA256`). Output: raw `r || s`.
    EcdsaSha256,
    /// RSASSA-PKCS1-v1_5 with SHA-256 (`CKM_SHA256_RSA_PKCS`).
    RsaPkcs1Sha256,
    /// RSASSA-PSS with SHA-256, MGF1-SHA-256, 32-byte salt (TLS 1.3).
    RsaPssSha256,
}

/// Mechanisms Keyward can ask the token about (see [`Hsm::supports`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MechanismId {
    Des2KeyGen,
    AesKeyGen,
    Des3Ecb,
    Des3Cbc,
    AesEcb,
    AesCbc,
    Des3EcbEncryptData,
    AesEcbEncryptData,
    Des3Cmac,
    AesCmac,
    Des3RetailVendor,
    /// A vendor PIN-translation mechanism (configured, never standard).
    PinTranslateVendor,
    AesKeyWrap,
    AesKeyWrapPad,
    AesGcm,
    RsaOaep,
    RsaPkcs,
    EcKeyPairGen,
    Ecdh1Derive,
    Ecdsa,
    RsaKeyPairGen,
    Sha256RsaPkcs,
    Sha256RsaPkcsPss,
    GenericSecretKeyGen,
    Sha256Hmac,
}

/// The one trait at the PKCS#11 seam. Blocking; implementations are shared
/// between worker threads (`Send + Sync`) and pick a session per call.
pub trait Hsm: Send + Sync + std::fmt::Debug {
    /// The module's vendor differences, fixed when it was opened.
    fn capabilities(&self) -> Capabilities;
    /// Increases every time the implementation had to reopen its sessions
    /// (HSM restart, failover). Cached [`ObjectId`]s of an older epoch are stale.
    fn epoch(&self) -> u64;
    /// Cheap liveness check (session info), for readiness probes.
    fn ping(&self) -> Result<()>;
    /// Ends this application's hold on the token as an HSM restart or an
    /// administrator at the HSM would: every session closed, or (`logout`)
    /// the login ended with the sessions left open. The next calls heal.
    /// For the HSM fault tests and an operator dropping a wedged connection.
    fn drop_sessions(&self, logout: bool) -> Result<()>;
    /// The mechanism number this implementation will use for `m`, after
    /// overrides; `None` when it is not configured at all.
    fn mechanism_number(&self, m: MechanismId) -> Option<u64>;
    /// Whether the token offers `m`.
    fn supports(&self, m: MechanismId) -> Result<bool>;
    /// Bytes from the token's RNG.
    fn random(&self, len: usize) -> Result<Vec<u8>>;
    /// A secret-key token object by label.
    fn find_key(&self, label: &str) -> Result<Option<ObjectId>>;
    /// A new random secret key, generated inside the HSM.
    fn generate_key(&self, spec: &KeySpec) -> Result<ObjectId>;
    /// A secret key from clear bytes: for known-answer tests and key-component
    /// ceremonies only. Never reachable from a network API.
    fn import_key(&self, spec: &KeySpec, value: &[u8]) -> Result<ObjectId>;
    /// The token's `CKA_CHECK_VALUE` of a generated or imported key (never
    /// trust it on derived keys: SoftHSM 2.6.1 gets derived DES2 keys wrong).
    fn check_value(&self, key: ObjectId) -> Result<Option<[u8; 3]>>;
    /// `E_base(data)` as a new key, inside the HSM.
    fn derive_key(
        &self,
        base: ObjectId,
        how: Derivation,
        data: &[u8],
        spec: &KeySpec,
    ) -> Result<ObjectId>;
    fn encrypt(&self, key: ObjectId, cipher: Cipher, data: &[u8]) -> Result<Vec<u8>>;
    /// `C_Decrypt` (a data key's account fields; never a PIN block).
    fn decrypt(&self, key: ObjectId, cipher: Cipher, data: &[u8]) -> Result<Vec<u8>>;
    /// Re-encrypts a PIN block from `from` (the device's `TPK`) to `to` (the
    /// issuer's `ZPK`) inside the HSM, with the vendor mechanism of
    /// `[hsm.mechanisms] pin_translate`. The clear block never reaches the
    /// host; a module without such a mechanism answers
    /// [`crate::KmsError::Unsupported`].
    fn translate_pin(&self, from: ObjectId, to: ObjectId, pin: &PinTranslation) -> Result<Vec<u8>>;
    fn mac(&self, key: ObjectId, mech: MacMechanism, data: &[u8]) -> Result<Vec<u8>>;
    /// An ephemeral P-256 key pair as session objects; returns the private key
    /// (derive only, sensitive; `extractable` so that it can be wrapped for
    /// another replica) and the public point.
    fn generate_ephemeral_p256(&self, extractable: bool) -> Result<(ObjectId, Vec<u8>)>;
    /// A P-256 private key wrapped by [`Hsm::wrap_key`] with
    /// [`WrapMechanism::AesKeyWrapPad`], unwrapped under `unwrapping` as a
    /// session object that may only derive (ECDH), never extractable.
    fn unwrap_p256_private(&self, unwrapping: ObjectId, wrapped: &[u8]) -> Result<ObjectId>;
    /// ECDH (null KDF) of `private` with the peer's uncompressed point, giving
    /// a session AES key of `spec`.
    fn ecdh_derive(&self, private: ObjectId, peer_point: &[u8], spec: &KeySpec)
    -> Result<ObjectId>;
    /// Imports a public key as a session object (to wrap keys for a device).
    fn import_public_key(&self, key: &PublicKey) -> Result<ObjectId>;
    fn wrap_key(&self, wrapping: ObjectId, mech: WrapMechanism, key: ObjectId) -> Result<Vec<u8>>;
    /// A key of `spec` from `wrapped`, decrypted under `unwrapping` inside
    /// the HSM.
    fn unwrap_key(
        &self,
        unwrapping: ObjectId,
        mech: UnwrapMechanism,
        wrapped: &[u8],
        spec: &KeySpec,
    ) -> Result<ObjectId>;
    /// Clears `CKA_EXTRACTABLE` of a key (a one-way change in PKCS#11).
    fn set_unextractable(&self, key: ObjectId) -> Result<()>;
    /// AES-GCM encryption with a 12-byte nonce: ciphertext ‖ 16-byte tag.
    fn gcm_encrypt(
        &self,
        key: ObjectId,
        nonce: &[u8; 12],
        aad: &[u8],
        data: &[u8],
    ) -> Result<Vec<u8>>;
    /// AES-GCM decryption of ciphertext ‖ 16-byte tag; a tag that does not
    /// verify is an error.
    fn gcm_decrypt(
        &self,
        key: ObjectId,
        nonce: &[u8; 12],
        aad: &[u8],
        data: &[u8],
    ) -> Result<Vec<u8>>;
    fn destroy(&self, obj: ObjectId) -> Result<()>;
    /// A key pair generated inside the HSM as token objects labelled `label`:
    /// the private key sensitive, never extractable, with only the right of
    /// `usage`.
    fn generate_key_pair(
        &self,
        kind: KeyPairKind,
        label: &str,
        usage: KeyPairUse,
    ) -> Result<(ObjectId, PublicKey)>;
    /// A private key token object by label.
    fn find_private_key(&self, label: &str) -> Result<Option<ObjectId>>;
    /// The public half of the key pair labelled `label`.
    fn public_key(&self, label: &str) -> Result<Option<PublicKey>>;
    /// Signs `data` (the whole message; hashing is part of the mechanism).
    fn sign(&self, key: ObjectId, mech: SignMechanism, data: &[u8]) -> Result<Vec<u8>>;
    /// The values of the private token data objects (`CKO_DATA`) labelled
    /// `label`: state kept outside the database (the audit checkpoint).
    /// Usually one; two when a process ended inside [`Hsm::write_data`].
    fn read_data(&self, label: &str) -> Result<Vec<Vec<u8>>>;
    /// Replaces the data object `label`: creates the new one, then destroys
    /// the old ones (SoftHSM makes `CKA_VALUE` read-only, so it cannot be
    /// updated in place; this order never leaves the token without one).
    fn write_data(&self, label: &str, value: &[u8]) -> Result<()>;
}
