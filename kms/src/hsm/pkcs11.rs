//! [`Hsm`] over `cryptoki`: one PKCS#11 context per module per process, an
//! anchor session that keeps the token logged in, a set of long-lived worker
//! sessions, and healing after an HSM restart (every session gone) or a
//! login the token ended (sessions left open, private objects hidden).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Function, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::elliptic_curve::{EcKdf, Ecdh1DeriveParams};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::Slot;
use keyward_config::{HsmConfig, MechanismOverrides};
use secrecy::SecretString;

use super::raw::RawModule;
use super::rv::classify;
use super::{
    Capabilities, Cipher, Derivation, Hsm, KeyPairKind, KeyPairUse, KeySpec, MacMechanism,
    MechanismId, OaepHash, ObjectId, PinTranslation, PublicKey, SecretKind, SignMechanism,
    UnwrapMechanism, WrapMechanism,
};
use crate::error::{KmsError, Result};

/// DER of the prime256v1 OID, the `CKA_EC_PARAMS` of P-256 keys.
const P256_PARAMS: [u8; 10] = [0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07];

const CKM_DES3_ECB_ENCRYPT_DATA: u64 = 0x1102;
const CKM_AES_ECB_ENCRYPT_DATA: u64 = 0x1104;
const CKM_DES3_CMAC: u64 = 0x138;
/// Full-length GCM tags only.
const GCM_TAG_BITS: u64 = 128;

/// PKCS#11 may be initialised once per module per process (cryptoki #260).
fn context(module: &Path) -> Result<Pkcs11> {
    static CONTEXTS: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let map = CONTEXTS.get_or_init(|| Mutex::new(HashMap::new()));
    let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(ctx) = map.get(module) {
        return Ok(ctx.clone());
    }
    let fail = |reason: String| KmsError::Module {
        module: module.display().to_string(),
        reason,
    };
    if !module.exists() {
        return Err(fail("file not found".into()));
    }
    let ctx = Pkcs11::new(module).map_err(|e| fail(e.to_string()))?;
    // Without OS_LOCKING_OK SoftHSM turns all its internal locking off.
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(fail(e.to_string())),
    }
    map.insert(module.to_owned(), ctx.clone());
    Ok(ctx)
}

/// Sessions and the epoch they belong to.
struct Sessions {
    /// Keeps the application logged in: login is token-wide and ends when the
    /// last session closes.
    anchor: Option<Session>,
    idle: Vec<Session>,
}

/// The `cryptoki` implementation of [`Hsm`].
pub struct Pkcs11Hsm {
    ctx: Pkcs11,
    raw: RawModule,
    module: PathBuf,
    token_label: String,
    pin: SecretString,
    overrides: MechanismOverrides,
    slot: Mutex<Slot>,
    sessions: Mutex<Sessions>,
    epoch: AtomicU64,
    caps: Capabilities,
    /// Held by every call that creates, finds or destroys objects when
    /// [`Capabilities::serialize_object_ops`] says so (see [`Pkcs11Hsm::object_lock`]).
    objects: Mutex<()>,
}

impl std::fmt::Debug for Pkcs11Hsm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Hsm")
            .field("module", &self.module)
            .field("token_label", &self.token_label)
            .field("epoch", &self.epoch.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Errors after which the session (or the whole login) is gone.
fn session_lost(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::DeviceRemoved
                | RvError::UserNotLoggedIn
                | RvError::TokenNotPresent
                | RvError::DeviceError
                | RvError::CryptokiNotInitialized,
            _
        )
    )
}

/// Whether the token ended this application's login behind its back (an
/// administrator at the HSM, a token-side timeout): the sessions stay open,
/// but private objects drop out of view and their handles stop working.
fn logged_out(s: &Session) -> bool {
    s.get_session_info().is_ok_and(|i| {
        matches!(
            i.session_state(),
            SessionState::RoPublic | SessionState::RwPublic
        )
    })
}

/// Whether `e` from a call on `s` means the session or the login is gone.
/// A call cut short by its session closing under it (an HSM restart
/// mid-call) may report anything, SoftHSM `CKR_GENERAL_ERROR`: then the
/// session itself tells. Asked on errors only.
fn lost(s: &Session, e: &CkError) -> bool {
    session_lost(e)
        || match s.get_session_info() {
            Err(info) => session_lost(&info),
            Ok(_) => handle_invalid(e) && logged_out(s),
        }
}

/// Errors that name an object handle the session can no longer use.
fn handle_invalid(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(RvError::ObjectHandleInvalid | RvError::KeyHandleInvalid, _)
    )
}

/// The token objects matching `template`; nothing found while logged out
/// is the lost login it is (private objects are hidden then), not an
/// absent object, so the caller heals instead of reporting a key missing.
fn find_visible(
    s: &Session,
    template: &[Attribute],
) -> std::result::Result<Vec<ObjectHandle>, CkError> {
    let found = s.find_objects(template)?;
    if found.is_empty() && logged_out(s) {
        return Err(CkError::Pkcs11(
            RvError::UserNotLoggedIn,
            Function::FindObjects,
        ));
    }
    Ok(found)
}

fn bool_attrs(spec: &KeySpec) -> [Attribute; 7] {
    let u = spec.usage;
    [
        Attribute::Encrypt(u.encrypt),
        Attribute::Decrypt(u.decrypt),
        Attribute::Sign(u.sign),
        Attribute::Verify(u.verify),
        Attribute::Derive(u.derive),
        Attribute::Wrap(u.wrap),
        Attribute::Unwrap(u.unwrap),
    ]
}

/// The template of a secret key: always sensitive; token objects private;
/// session objects public to this process only, which SoftHSM serves faster
/// (they stay sensitive, and no other process can see a session object).
fn secret_template(spec: &KeySpec, with_len: bool) -> Vec<Attribute> {
    let mut t = vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::Token(spec.token_label.is_some()),
        Attribute::Private(spec.token_label.is_some()),
        Attribute::Sensitive(true),
        Attribute::Extractable(spec.extractable),
    ];
    match spec.kind {
        SecretKind::Des2 => t.push(Attribute::KeyType(KeyType::DES2)),
        SecretKind::Aes(len) => {
            t.push(Attribute::KeyType(KeyType::AES));
            if with_len {
                t.push(Attribute::ValueLen((len as u64).into()));
            }
        }
        SecretKind::GenericSecret(len) => {
            t.push(Attribute::KeyType(KeyType::GENERIC_SECRET));
            if with_len {
                t.push(Attribute::ValueLen((len as u64).into()));
            }
        }
    }
    if let Some(label) = &spec.token_label {
        t.push(Attribute::Label(label.as_bytes().to_vec()));
    }
    t.extend(bool_attrs(spec));
    t
}

impl Pkcs11Hsm {
    /// Loads the module, finds the token by label and logs in.
    pub fn open(config: &HsmConfig, pin: SecretString) -> Result<Self> {
        let ctx = context(&config.module)?;
        let raw = RawModule::open(&config.module).map_err(|reason| KmsError::Module {
            module: config.module.display().to_string(),
            reason,
        })?;
        let slot = find_slot(&ctx, &config.token_label)?;
        let hsm = Self {
            ctx,
            raw,
            module: config.module.clone(),
            token_label: config.token_label.clone(),
            pin,
            overrides: config.mechanisms.clone(),
            slot: Mutex::new(slot),
            sessions: Mutex::new(Sessions {
                anchor: None,
                idle: Vec::new(),
            }),
            epoch: AtomicU64::new(0),
            caps: Capabilities::from_config(config),
            objects: Mutex::new(()),
        };
        hsm.reconnect(&mut lock(&hsm.sessions))?;
        Ok(hsm)
    }

    /// The token label this instance serves.
    pub fn token_label(&self) -> &str {
        &self.token_label
    }

    /// Closes every session of this application on the token, as an HSM
    /// restart or failover would. The next call heals. For operators who need
    /// to drop a wedged HSM connection, and for the healing tests.
    pub fn close_all_sessions(&self) -> Result<()> {
        let slot = *lock(&self.slot);
        self.raw.close_all_sessions(slot.id()).map_err(classify)
    }

    /// Opens the anchor session and logs in; drops whatever sessions there were.
    fn reconnect(&self, s: &mut Sessions) -> Result<()> {
        s.idle.clear();
        s.anchor = None;
        // The slot id may change when a token is re-created (SoftHSM derives it
        // from the serial), so look the label up again.
        let slot = find_slot(&self.ctx, &self.token_label)?;
        *lock(&self.slot) = slot;
        let anchor = self.ctx.open_rw_session(slot).map_err(classify)?;
        match anchor.login(UserType::User, Some(&self.pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(CkError::Pkcs11(RvError::PinIncorrect, _)) => {
                return Err(KmsError::Login("PIN incorrect".into()));
            }
            Err(CkError::Pkcs11(RvError::PinLocked, _)) => {
                return Err(KmsError::Login("PIN locked".into()));
            }
            Err(e) => return Err(classify(e)),
        }
        s.anchor = Some(anchor);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        tracing::info!(token = %self.token_label, epoch = self.epoch(), "HSM session anchor open and logged in");
        Ok(())
    }

    /// After a lost session: reconnect once per epoch, however many workers saw it.
    fn heal(&self, seen_epoch: u64) -> Result<()> {
        let mut s = lock(&self.sessions);
        if self.epoch() != seen_epoch && s.anchor.is_some() {
            return Ok(());
        }
        tracing::warn!(token = %self.token_label, "HSM session lost; reopening and logging in again");
        self.reconnect(&mut s)
    }

    fn checkout(&self) -> Result<(Session, u64)> {
        let mut s = lock(&self.sessions);
        if s.anchor.is_none() {
            self.reconnect(&mut s)?;
        }
        let epoch = self.epoch();
        if let Some(session) = s.idle.pop() {
            return Ok((session, epoch));
        }
        let slot = *lock(&self.slot);
        let session = self.ctx.open_rw_session(slot).map_err(classify)?;
        Ok((session, epoch))
    }

    fn checkin(&self, session: Session, epoch: u64) {
        let mut s = lock(&self.sessions);
        if epoch == self.epoch() {
            s.idle.push(session);
        }
    }

    /// Runs `op` on a pooled session. A lost session triggers healing; the
    /// operation is retried only when it references no objects (`objects` is
    /// empty), since object handles do not survive a restart.
    fn with_session<T>(
        &self,
        objects: &[ObjectId],
        op: impl Fn(&Session) -> std::result::Result<T, CkError>,
    ) -> Result<T> {
        for attempt in 0..2 {
            let (session, epoch) = self.checkout()?;
            if objects.iter().any(|o| o.epoch != epoch) {
                self.checkin(session, epoch);
                return Err(KmsError::Stale);
            }
            match op(&session) {
                Ok(v) => {
                    self.checkin(session, epoch);
                    return Ok(v);
                }
                Err(e) if lost(&session, &e) => {
                    drop(session);
                    self.heal(epoch)?;
                    if attempt == 0 && objects.is_empty() {
                        continue;
                    }
                    return Err(KmsError::Stale);
                }
                // A search that met session objects being destroyed as the
                // sessions closed (SoftHSM) fails so, on a session that
                // still works: an object-free call is tried once more.
                Err(CkError::Pkcs11(RvError::GeneralError, _))
                    if attempt == 0 && objects.is_empty() =>
                {
                    self.checkin(session, epoch);
                }
                Err(e) => {
                    self.checkin(session, epoch);
                    return Err(classify(e));
                }
            }
        }
        Err(KmsError::Stale)
    }

    fn handle(obj: ObjectId) -> ObjectHandle {
        // ObjectHandle has no safe constructor from a number; the only numbers
        // in ObjectIds came from this module in the same epoch (checked by
        // `with_session`).
        handle_from_raw(obj.handle)
    }

    fn id(&self, h: ObjectHandle, epoch: u64) -> ObjectId {
        ObjectId {
            handle: h.handle(),
            epoch,
        }
    }

    fn mech(&self, m: MechanismId) -> Result<u64> {
        self.mechanism_number(m).ok_or(KmsError::MechanismMissing {
            name: mechanism_name(m),
            number: 0,
            purpose: "a configured operation (set it under [hsm.mechanisms])",
        })
    }

    /// The object lock, when this module needs object operations serialised.
    fn object_lock(&self) -> Option<MutexGuard<'_, ()>> {
        self.caps.serialize_object_ops.then(|| lock(&self.objects))
    }

    /// Creates an object under the object lock, tagging it with the epoch the
    /// session belonged to.
    fn create(
        &self,
        objects: &[ObjectId],
        op: impl Fn(&Session) -> std::result::Result<ObjectHandle, CkError>,
    ) -> Result<ObjectId> {
        let _guard = self.object_lock();
        let epoch = self.epoch();
        let h = self.with_session(objects, op)?;
        Ok(self.id(h, epoch))
    }
}

#[allow(unsafe_code)]
fn handle_from_raw(h: u64) -> ObjectHandle {
    // SAFETY: `new_from_raw` is unsafe only because an arbitrary number may not
    // name an object; callers pass handles this module returned in this epoch.
    unsafe { ObjectHandle::new_from_raw(h) }
}

/// `CKA_EC_POINT` is a DER OCTET STRING around the 65-byte uncompressed point
/// (some modules return the bare point).
fn strip_ec_point(p: &[u8]) -> Option<Vec<u8>> {
    match p {
        [0x04, 0x41, rest @ ..] if rest.len() == 65 => Some(rest.to_vec()),
        p if p.len() == 65 && p[0] == 0x04 => Some(p.to_vec()),
        _ => None,
    }
}

fn find_slot(ctx: &Pkcs11, label: &str) -> Result<Slot> {
    let slots = ctx.get_slots_with_token().map_err(classify)?;
    for slot in slots {
        if let Ok(info) = ctx.get_token_info(slot)
            && info.label().trim_end() == label
        {
            return Ok(slot);
        }
    }
    Err(KmsError::TokenNotFound(label.to_owned()))
}

/// The search template of the token data object `label`.
fn data_template(label: &str) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::DATA),
        Attribute::Token(true),
        Attribute::Label(label.as_bytes().to_vec()),
    ]
}

/// Human name of a mechanism for error messages.
pub fn mechanism_name(m: MechanismId) -> &'static str {
    match m {
        MechanismId::Des2KeyGen => "CKM_DES2_KEY_GEN",
        MechanismId::AesKeyGen => "CKM_AES_KEY_GEN",
        MechanismId::Des3Ecb => "CKM_DES3_ECB",
        MechanismId::Des3Cbc => "CKM_DES3_CBC",
        MechanismId::AesEcb => "CKM_AES_ECB",
        MechanismId::AesCbc => "CKM_AES_CBC",
        MechanismId::Des3EcbEncryptData => "CKM_DES3_ECB_ENCRYPT_DATA",
        MechanismId::AesEcbEncryptData => "CKM_AES_ECB_ENCRYPT_DATA",
        MechanismId::Des3Cmac => "CKM_DES3_CMAC",
        MechanismId::AesCmac => "CKM_AES_CMAC",
        MechanismId::Des3RetailVendor => "vendor X9.19 retail MAC",
        MechanismId::PinTranslateVendor => "vendor PIN translation",
        MechanismId::AesKeyWrap => "CKM_AES_KEY_WRAP",
        MechanismId::AesKeyWrapPad => "CKM_AES_KEY_WRAP_PAD",
        MechanismId::AesGcm => "CKM_AES_GCM",
        MechanismId::RsaOaep => "CKM_RSA_PKCS_OAEP",
        MechanismId::RsaPkcs => "CKM_RSA_PKCS",
        MechanismId::EcKeyPairGen => "CKM_EC_KEY_PAIR_GEN",
        MechanismId::Ecdh1Derive => "CKM_ECDH1_DERIVE",
        MechanismId::Ecdsa => "CKM_ECDSA",
        MechanismId::RsaKeyPairGen => "CKM_RSA_PKCS_KEY_PAIR_GEN",
        MechanismId::Sha256RsaPkcs => "CKM_SHA256_RSA_PKCS",
        MechanismId::Sha256RsaPkcsPss => "CKM_SHA256_RSA_PKCS_PSS",
        MechanismId::GenericSecretKeyGen => "CKM_GENERIC_SECRET_KEY_GEN",
        MechanismId::Sha256Hmac => "CKM_SHA256_HMAC",
    }
}

impl Hsm for Pkcs11Hsm {
    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    fn capabilities(&self) -> Capabilities {
        self.caps
    }

    fn ping(&self) -> Result<()> {
        self.with_session(&[], |s| s.get_session_info().map(|_| ()))
    }

    fn drop_sessions(&self, logout: bool) -> Result<()> {
        if !logout {
            return self.close_all_sessions();
        }
        let s = lock(&self.sessions);
        match &s.anchor {
            Some(anchor) => anchor.logout().map_err(classify),
            None => Ok(()),
        }
    }

    fn mechanism_number(&self, m: MechanismId) -> Option<u64> {
        let o = &self.overrides;
        Some(match m {
            MechanismId::Des2KeyGen => MechanismType::DES2_KEY_GEN.into(),
            MechanismId::AesKeyGen => MechanismType::AES_KEY_GEN.into(),
            MechanismId::Des3Ecb => MechanismType::DES3_ECB.into(),
            MechanismId::Des3Cbc => MechanismType::DES3_CBC.into(),
            MechanismId::AesEcb => MechanismType::AES_ECB.into(),
            MechanismId::AesCbc => MechanismType::AES_CBC.into(),
            MechanismId::Des3EcbEncryptData => {
                o.des3_ecb_encrypt_data.unwrap_or(CKM_DES3_ECB_ENCRYPT_DATA)
            }
            MechanismId::AesEcbEncryptData => {
                o.aes_ecb_encrypt_data.unwrap_or(CKM_AES_ECB_ENCRYPT_DATA)
            }
            MechanismId::Des3Cmac => o.des3_cmac.unwrap_or(CKM_DES3_CMAC),
            MechanismId::AesCmac => MechanismType::AES_CMAC.into(),
            MechanismId::Des3RetailVendor => return o.des3_retail_mac,
            MechanismId::PinTranslateVendor => return o.pin_translate,
            MechanismId::AesKeyWrap => MechanismType::AES_KEY_WRAP.into(),
            MechanismId::AesKeyWrapPad => MechanismType::AES_KEY_WRAP_PAD.into(),
            MechanismId::AesGcm => MechanismType::AES_GCM.into(),
            MechanismId::RsaOaep => MechanismType::RSA_PKCS_OAEP.into(),
            MechanismId::RsaPkcs => MechanismType::RSA_PKCS.into(),
            MechanismId::EcKeyPairGen => MechanismType::ECC_KEY_PAIR_GEN.into(),
            MechanismId::Ecdh1Derive => MechanismType::ECDH1_DERIVE.into(),
            MechanismId::Ecdsa => MechanismType::ECDSA.into(),
            MechanismId::RsaKeyPairGen => MechanismType::RSA_PKCS_KEY_PAIR_GEN.into(),
            MechanismId::Sha256RsaPkcs => MechanismType::SHA256_RSA_PKCS.into(),
            MechanismId::Sha256RsaPkcsPss => MechanismType::SHA256_RSA_PKCS_PSS.into(),
            MechanismId::GenericSecretKeyGen => MechanismType::GENERIC_SECRET_KEY_GEN.into(),
            MechanismId::Sha256Hmac => MechanismType::SHA256_HMAC.into(),
        })
    }

    fn supports(&self, m: MechanismId) -> Result<bool> {
        let Some(number) = self.mechanism_number(m) else {
            return Ok(false);
        };
        let slot = *lock(&self.slot);
        let list = self.raw.mechanism_list(slot.id()).map_err(classify)?;
        Ok(list.contains(&number))
    }

    fn random(&self, len: usize) -> Result<Vec<u8>> {
        let len = u32::try_from(len).map_err(|_| KmsError::invalid("length", "too large"))?;
        self.with_session(&[], |s| s.generate_random_vec(len))
    }

    fn find_key(&self, label: &str) -> Result<Option<ObjectId>> {
        let _guard = self.object_lock();
        let epoch = self.epoch();
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Token(true),
            Attribute::Label(label.as_bytes().to_vec()),
        ];
        let found = self.with_session(&[], |s| find_visible(s, &template))?;
        Ok(found.first().map(|h| self.id(*h, epoch)))
    }

    fn generate_key(&self, spec: &KeySpec) -> Result<ObjectId> {
        let mech = match spec.kind {
            SecretKind::Des2 => Mechanism::Des2KeyGen,
            SecretKind::Aes(_) => Mechanism::AesKeyGen,
            SecretKind::GenericSecret(_) => Mechanism::GenericSecretKeyGen,
        };
        let template = secret_template(spec, true);
        self.create(&[], |s| s.generate_key(&mech, &template))
    }

    fn import_key(&self, spec: &KeySpec, value: &[u8]) -> Result<ObjectId> {
        let expected = match spec.kind {
            SecretKind::Des2 => 16,
            SecretKind::Aes(len) | SecretKind::GenericSecret(len) => len,
        };
        if value.len() != expected {
            return Err(KmsError::invalid("key", "wrong length for the key type"));
        }
        let mut template = secret_template(spec, false);
        template.push(Attribute::Value(value.to_vec()));
        self.create(&[], |s| s.create_object(&template))
    }

    fn check_value(&self, key: ObjectId) -> Result<Option<[u8; 3]>> {
        let attrs = self.with_session(&[key], |s| {
            s.get_attributes(Self::handle(key), &[AttributeType::CheckValue])
        })?;
        Ok(attrs.into_iter().find_map(|a| match a {
            Attribute::CheckValue(v) if v.len() >= 3 => Some([v[0], v[1], v[2]]),
            _ => None,
        }))
    }

    fn derive_key(
        &self,
        base: ObjectId,
        how: Derivation,
        data: &[u8],
        spec: &KeySpec,
    ) -> Result<ObjectId> {
        let (mech, block) = match how {
            Derivation::Des3Ecb => (self.mech(MechanismId::Des3EcbEncryptData)?, 8),
            Derivation::AesEcb => (self.mech(MechanismId::AesEcbEncryptData)?, 16),
        };
        if data.is_empty() || !data.len().is_multiple_of(block) {
            return Err(KmsError::invalid(
                "derivation data",
                "must be a non-empty multiple of the block size",
            ));
        }
        let template = secret_template(spec, true);
        self.create(&[base], |s| {
            self.raw
                .derive_encrypt_data(s, mech, Self::handle(base), data, &template)
        })
    }

    fn encrypt(&self, key: ObjectId, cipher: Cipher, data: &[u8]) -> Result<Vec<u8>> {
        let mech = cipher_mechanism(cipher);
        self.with_session(&[key], |s| s.encrypt(&mech, Self::handle(key), data))
    }

    fn decrypt(&self, key: ObjectId, cipher: Cipher, data: &[u8]) -> Result<Vec<u8>> {
        let mech = cipher_mechanism(cipher);
        self.with_session(&[key], |s| s.decrypt(&mech, Self::handle(key), data))
    }

    fn translate_pin(
        &self,
        _from: ObjectId,
        _to: ObjectId,
        _pin: &PinTranslation,
    ) -> Result<Vec<u8>> {
        // Vendors define PIN translation each with their own mechanism
        // parameter block (formats, PAN, key handles); none is standard
        // PKCS#11. The seam is here for the module that has one; until its
        // parameter block is written for it, a configured number is probed
        // at start but the call is refused rather than guessed.
        Err(KmsError::Unsupported {
            operation: "translate a PIN block",
            reason: match self.capabilities().pin_translate {
                false => {
                    "no PIN-translation mechanism is configured (hsm.mechanisms.pin_translate); \
                     SoftHSM has none"
                }
                true => "the configured vendor mechanism's parameter block is not implemented",
            },
        })
    }

    fn mac(&self, key: ObjectId, mech: MacMechanism, data: &[u8]) -> Result<Vec<u8>> {
        match mech {
            MacMechanism::AesCmac => self.with_session(&[key], |s| {
                s.sign(&Mechanism::AesCMac, Self::handle(key), data)
            }),
            MacMechanism::HmacSha256 => self.with_session(&[key], |s| {
                s.sign(&Mechanism::Sha256Hmac, Self::handle(key), data)
            }),
            MacMechanism::Des3Cmac | MacMechanism::Des3RetailVendor => {
                let number = self.mech(match mech {
                    MacMechanism::Des3Cmac => MechanismId::Des3Cmac,
                    _ => MechanismId::Des3RetailVendor,
                })?;
                self.with_session(&[key], |s| {
                    self.raw.sign(s, number, Self::handle(key), data)
                })
            }
        }
    }

    fn generate_ephemeral_p256(&self, extractable: bool) -> Result<(ObjectId, Vec<u8>)> {
        let public = [
            Attribute::Token(false),
            Attribute::Private(false),
            Attribute::EcParams(P256_PARAMS.to_vec()),
            Attribute::Verify(false),
        ];
        let private = [
            Attribute::Token(false),
            Attribute::Private(false),
            Attribute::Sensitive(true),
            Attribute::Extractable(extractable),
            Attribute::Derive(true),
            Attribute::Sign(false),
        ];
        let _guard = self.object_lock();
        let epoch = self.epoch();
        let (point, private) = self.with_session(&[], |s| {
            let (pubh, privh) =
                s.generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)?;
            let attrs = s.get_attributes(pubh, &[AttributeType::EcPoint]);
            s.destroy_object(pubh)?;
            let point = match attrs?.into_iter().next() {
                Some(Attribute::EcPoint(p)) => p,
                _ => Vec::new(),
            };
            Ok((point, privh))
        })?;
        let point = strip_ec_point(&point).ok_or(KmsError::Hsm {
            function: "C_GetAttributeValue",
            problem: "unexpected CKA_EC_POINT encoding",
        })?;
        Ok((self.id(private, epoch), point))
    }

    fn ecdh_derive(
        &self,
        private: ObjectId,
        peer_point: &[u8],
        spec: &KeySpec,
    ) -> Result<ObjectId> {
        if peer_point.len() != 65 || peer_point[0] != 0x04 {
            return Err(KmsError::invalid(
                "public point",
                "must be an uncompressed P-256 point (65 bytes)",
            ));
        }
        let template = secret_template(spec, true);
        let mech = Mechanism::Ecdh1Derive(Ecdh1DeriveParams::new(EcKdf::null(), peer_point));
        self.create(&[private], |s| {
            s.derive_key(&mech, Self::handle(private), &template)
        })
    }

    fn unwrap_p256_private(&self, unwrapping: ObjectId, wrapped: &[u8]) -> Result<ObjectId> {
        // SoftHSM takes the curve and value from the PKCS#8 inside.
        let template = [
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::KeyType(KeyType::EC),
            Attribute::Token(false),
            Attribute::Private(false),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Derive(true),
            Attribute::Sign(false),
            Attribute::Decrypt(false),
            Attribute::Unwrap(false),
        ];
        self.create(&[unwrapping], |s| {
            s.unwrap_key(
                &Mechanism::AesKeyWrapPad,
                Self::handle(unwrapping),
                wrapped,
                &template,
            )
        })
    }

    fn import_public_key(&self, key: &PublicKey) -> Result<ObjectId> {
        let template = match key {
            PublicKey::Rsa { modulus, exponent } => vec![
                Attribute::Class(ObjectClass::PUBLIC_KEY),
                Attribute::KeyType(KeyType::RSA),
                Attribute::Token(false),
                Attribute::Private(false),
                Attribute::Modulus(modulus.clone()),
                Attribute::PublicExponent(exponent.clone()),
                Attribute::Wrap(true),
                Attribute::Encrypt(false),
                Attribute::Verify(false),
            ],
            PublicKey::P256(_) => {
                return Err(KmsError::invalid(
                    "public key",
                    "P-256 keys are used through ECDH, not imported",
                ));
            }
        };
        self.create(&[], |s| s.create_object(&template))
    }

    fn wrap_key(&self, wrapping: ObjectId, mech: WrapMechanism, key: ObjectId) -> Result<Vec<u8>> {
        let mech = match mech {
            WrapMechanism::AesKeyWrap => Mechanism::AesKeyWrap,
            WrapMechanism::AesKeyWrapPad => Mechanism::AesKeyWrapPad,
            WrapMechanism::RsaOaepSha1 => Mechanism::RsaPkcsOaep(PkcsOaepParams::new(
                MechanismType::SHA1,
                PkcsMgfType::MGF1_SHA1,
                PkcsOaepSource::empty(),
            )),
        };
        self.with_session(&[wrapping, key], |s| {
            s.wrap_key(&mech, Self::handle(wrapping), Self::handle(key))
        })
    }

    fn unwrap_key(
        &self,
        unwrapping: ObjectId,
        mech: UnwrapMechanism,
        wrapped: &[u8],
        spec: &KeySpec,
    ) -> Result<ObjectId> {
        let mech = match mech {
            UnwrapMechanism::RsaOaep(hash) => {
                let (hash, mgf) = match hash {
                    OaepHash::Sha1 => (MechanismType::SHA1, PkcsMgfType::MGF1_SHA1),
                    OaepHash::Sha256 => (MechanismType::SHA256, PkcsMgfType::MGF1_SHA256),
                };
                Mechanism::RsaPkcsOaep(PkcsOaepParams::new(hash, mgf, PkcsOaepSource::empty()))
            }
            UnwrapMechanism::RsaPkcs => Mechanism::RsaPkcs,
            UnwrapMechanism::AesKeyWrapPad => Mechanism::AesKeyWrapPad,
        };
        // The length comes from the wrapped value; SoftHSM refuses
        // CKA_VALUE_LEN in an unwrap template (and leaves it 0 after).
        let template = secret_template(spec, false);
        self.create(&[unwrapping], |s| {
            s.unwrap_key(&mech, Self::handle(unwrapping), wrapped, &template)
        })
    }

    fn set_unextractable(&self, key: ObjectId) -> Result<()> {
        self.with_session(&[key], |s| {
            s.update_attributes(Self::handle(key), &[Attribute::Extractable(false)])
        })
    }

    fn gcm_encrypt(
        &self,
        key: ObjectId,
        nonce: &[u8; 12],
        aad: &[u8],
        data: &[u8],
    ) -> Result<Vec<u8>> {
        self.with_session(&[key], |s| {
            let mut iv = *nonce;
            let params = GcmParams::new(&mut iv, aad, GCM_TAG_BITS.into())?;
            s.encrypt(&Mechanism::AesGcm(params), Self::handle(key), data)
        })
    }

    fn gcm_decrypt(
        &self,
        key: ObjectId,
        nonce: &[u8; 12],
        aad: &[u8],
        data: &[u8],
    ) -> Result<Vec<u8>> {
        self.with_session(&[key], |s| {
            let mut iv = *nonce;
            let params = GcmParams::new(&mut iv, aad, GCM_TAG_BITS.into())?;
            s.decrypt(&Mechanism::AesGcm(params), Self::handle(key), data)
        })
    }

    fn destroy(&self, obj: ObjectId) -> Result<()> {
        let _guard = self.object_lock();
        match self.with_session(&[obj], |s| s.destroy_object(Self::handle(obj))) {
            // Already gone with its session or epoch: nothing left to destroy.
            Err(KmsError::Stale) => Ok(()),
            other => other,
        }
    }

    fn generate_key_pair(
        &self,
        kind: KeyPairKind,
        label: &str,
        usage: KeyPairUse,
    ) -> Result<(ObjectId, PublicKey)> {
        let (sign, unwrap) = (usage == KeyPairUse::Sign, usage == KeyPairUse::Unwrap);
        let id = label.as_bytes().to_vec();
        let mut public = vec![
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Label(id.clone()),
            Attribute::Id(id.clone()),
            Attribute::Verify(sign),
            Attribute::Encrypt(false),
            Attribute::Wrap(false),
        ];
        let private = vec![
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Label(id.clone()),
            Attribute::Id(id),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(sign),
            Attribute::Decrypt(false),
            Attribute::Derive(false),
            Attribute::Unwrap(unwrap),
        ];
        let mech = match kind {
            KeyPairKind::P256 => {
                public.push(Attribute::EcParams(P256_PARAMS.to_vec()));
                Mechanism::EccKeyPairGen
            }
            KeyPairKind::Rsa(bits) => {
                public.push(Attribute::ModulusBits(u64::from(bits).into()));
                public.push(Attribute::PublicExponent(vec![0x01, 0x00, 0x01]));
                Mechanism::RsaPkcsKeyPairGen
            }
        };
        let private_id = self.create(&[], |s| {
            s.generate_key_pair(&mech, &public, &private)
                .map(|(_, privh)| privh)
        })?;
        let public = self
            .public_key(label)?
            .ok_or_else(|| KmsError::KeyMissing(label.to_owned()))?;
        Ok((private_id, public))
    }

    fn find_private_key(&self, label: &str) -> Result<Option<ObjectId>> {
        let _guard = self.object_lock();
        let epoch = self.epoch();
        let template = [
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Token(true),
            Attribute::Label(label.as_bytes().to_vec()),
        ];
        let found = self.with_session(&[], |s| find_visible(s, &template))?;
        Ok(found.first().map(|h| self.id(*h, epoch)))
    }

    fn public_key(&self, label: &str) -> Result<Option<PublicKey>> {
        let _guard = self.object_lock();
        let template = [
            Attribute::Class(ObjectClass::PUBLIC_KEY),
            Attribute::Token(true),
            Attribute::Label(label.as_bytes().to_vec()),
        ];
        let attrs = self.with_session(&[], |s| {
            let Some(h) = s.find_objects(&template)?.first().copied() else {
                return Ok(None);
            };
            s.get_attributes(
                h,
                &[
                    AttributeType::KeyType,
                    AttributeType::EcPoint,
                    AttributeType::Modulus,
                    AttributeType::PublicExponent,
                ],
            )
            .map(Some)
        })?;
        let Some(attrs) = attrs else { return Ok(None) };
        let (mut point, mut modulus, mut exponent, mut key_type) = (None, None, None, None);
        for a in attrs {
            match a {
                Attribute::KeyType(k) => key_type = Some(k),
                Attribute::EcPoint(p) => point = Some(p),
                Attribute::Modulus(m) => modulus = Some(m),
                Attribute::PublicExponent(e) => exponent = Some(e),
                _ => {}
            }
        }
        let bad = |problem: &'static str| KmsError::Hsm {
            function: "C_GetAttributeValue",
            problem,
        };
        match key_type {
            Some(KeyType::EC) => {
                let p = point.ok_or_else(|| bad("public key without CKA_EC_POINT"))?;
                Ok(Some(PublicKey::P256(
                    strip_ec_point(&p).ok_or_else(|| bad("public key point encoding"))?,
                )))
            }
            Some(KeyType::RSA) => Ok(Some(PublicKey::Rsa {
                modulus: modulus.ok_or_else(|| bad("public key without CKA_MODULUS"))?,
                exponent: exponent.ok_or_else(|| bad("public key without CKA_PUBLIC_EXPONENT"))?,
            })),
            _ => Err(bad("public key of an unsupported type")),
        }
    }

    fn sign(&self, key: ObjectId, mech: SignMechanism, data: &[u8]) -> Result<Vec<u8>> {
        use sha2::Digest;
        match mech {
            SignMechanism::EcdsaSha256 => {
                let digest = sha2::Sha256::digest(data);
                self.with_session(&[key], |s| {
                    s.sign(&Mechanism::Ecdsa, Self::handle(key), &digest)
                })
            }
            SignMechanism::RsaPkcs1Sha256 => self.with_session(&[key], |s| {
                s.sign(&Mechanism::Sha256RsaPkcs, Self::handle(key), data)
            }),
            SignMechanism::RsaPssSha256 => {
                let params = PkcsPssParams {
                    hash_alg: MechanismType::SHA256,
                    mgf: PkcsMgfType::MGF1_SHA256,
                    s_len: 32u64.into(),
                };
                self.with_session(&[key], |s| {
                    s.sign(
                        &Mechanism::Sha256RsaPkcsPss(params),
                        Self::handle(key),
                        data,
                    )
                })
            }
        }
    }

    fn read_data(&self, label: &str) -> Result<Vec<Vec<u8>>> {
        let _guard = self.object_lock();
        let template = data_template(label);
        self.with_session(&[], |s| {
            let mut values = Vec::new();
            for h in find_visible(s, &template)? {
                for a in s.get_attributes(h, &[AttributeType::Value])? {
                    if let Attribute::Value(v) = a {
                        values.push(v);
                    }
                }
            }
            Ok(values)
        })
    }

    fn write_data(&self, label: &str, value: &[u8]) -> Result<()> {
        let _guard = self.object_lock();
        let template = data_template(label);
        self.with_session(&[], |s| {
            let old = find_visible(s, &template)?;
            let mut t = template.clone();
            t.push(Attribute::Private(true));
            t.push(Attribute::Application(b"keyward".to_vec()));
            t.push(Attribute::Value(value.to_vec()));
            s.create_object(&t)?;
            for h in old {
                s.destroy_object(h)?;
            }
            Ok(())
        })
    }
}

/// The cryptoki mechanism of a [`Cipher`] (encrypt and decrypt alike).
fn cipher_mechanism(cipher: Cipher) -> Mechanism<'static> {
    match cipher {
        Cipher::Des3Ecb => Mechanism::Des3Ecb,
        Cipher::Des3Cbc(iv) => Mechanism::Des3Cbc(iv),
        Cipher::AesEcb => Mechanism::AesEcb,
        Cipher::AesCbc(iv) => Mechanism::AesCbc(iv),
    }
}
