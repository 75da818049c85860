//! The key hierarchy of docs/protocol.md §3, inside the HSM.
//!
//! ```text
//! IMK-TMK, IMK-AUTH (token objects, derive-only)      per issuer
//!   └─ TMK_d = DIV(IMK-TMK, D), AUTH_d = DIV(IMK-AUTH, D)   per device, session objects
//!        └─ TPK/TAK/TDK = DIV'(TMK_d, R)                  per version, session objects
//! ```
//! Derived keys are never stored: the catalog keeps `R` and the HSM re-derives
//! on demand. A bounded LRU keeps recently used derived objects so a MAC
//! verification costs one HSM call; evicted objects are destroyed. A working
//! key derived for a MAC does not keep its `TMK_d` (one object per device,
//! not two: SoftHSM spends ~8 KiB of memory per session object). Every
//! derived object gets only the usage its caller asked for, and an object id
//! from before an HSM reconnect is never used (see [`crate::hsm::Hsm::epoch`]).

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use lru::LruCache;

use crate::catalog::MasterKeyRole;
use crate::error::{KmsError, Result};
use crate::hsm::{Derivation, Hsm, KeySpec, ObjectId, SecretKind, Usage};
use crate::types::{DeviceId, IssuerId, KcvMethod, KeyFamily};

/// Label of an issuer master key on the token.
pub fn master_label(issuer: &IssuerId, role: MasterKeyRole) -> String {
    format!("keyward/{issuer}/{}", role.as_str())
}

impl KeyFamily {
    /// The PKCS#11 key type of this family's keys.
    pub(crate) fn secret_kind(self) -> SecretKind {
        match self {
            Self::Tdes => SecretKind::Des2,
            Self::Aes => SecretKind::Aes(16),
        }
    }
    /// `DIV` / `DIV'`: encryption of the data under the base key, in the HSM.
    pub(crate) fn derivation(self) -> Derivation {
        match self {
            Self::Tdes => Derivation::Des3Ecb,
            Self::Aes => Derivation::AesEcb,
        }
    }
    /// The usage a throw-away copy needs to have its KCV computed.
    pub(crate) fn kcv_usage(self) -> Usage {
        match self {
            Self::Tdes => Usage::ENCRYPT,
            Self::Aes => Usage {
                sign: true,
                ..Usage::NONE
            },
        }
    }
}

/// Where a derived key hangs in the hierarchy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyPath {
    /// `TMK_d`, derive-only.
    Tmk,
    /// `AUTH_d` with the given usage.
    Auth(UsageBits),
    /// `DIV'(TMK_d, data)` with the given usage (`data` is `R`, or `R1||R1` for
    /// the single-DES half of an X9.19 key).
    Working { data: [u8; 16], usage: UsageBits },
}

/// [`Usage`] packed for hashing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UsageBits(u8);

impl From<Usage> for UsageBits {
    fn from(u: Usage) -> Self {
        Self(
            u.encrypt as u8
                | (u.decrypt as u8) << 1
                | (u.sign as u8) << 2
                | (u.verify as u8) << 3
                | (u.derive as u8) << 4
                | (u.wrap as u8) << 5
                | (u.unwrap as u8) << 6,
        )
    }
}

impl From<UsageBits> for Usage {
    fn from(b: UsageBits) -> Self {
        Usage {
            encrypt: b.0 & 1 != 0,
            decrypt: b.0 & 2 != 0,
            sign: b.0 & 4 != 0,
            verify: b.0 & 8 != 0,
            derive: b.0 & 16 != 0,
            wrap: b.0 & 32 != 0,
            unwrap: b.0 & 64 != 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    issuer: IssuerId,
    device: DeviceId,
    path: KeyPath,
}

/// Hit and miss counters of the derived-key cache.
#[derive(Debug, Default)]
pub struct CacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub evictions: AtomicU64,
}

/// Handles of master keys and derived keys, shared by all HSM workers.
#[derive(Debug)]
pub struct KeyCache {
    masters: Mutex<HashMap<String, ObjectId>>,
    derived: Mutex<LruCache<CacheKey, ObjectId>>,
    pub stats: CacheStats,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Which issuer and family a derivation runs under.
#[derive(Debug, Clone)]
pub struct IssuerKeys {
    pub id: IssuerId,
    pub family: KeyFamily,
}

impl KeyCache {
    pub fn new(capacity: usize) -> Self {
        let cap = NonZeroUsize::new(capacity.max(1)).unwrap_or(NonZeroUsize::MIN);
        Self {
            masters: Mutex::new(HashMap::new()),
            derived: Mutex::new(LruCache::new(cap)),
            stats: CacheStats::default(),
        }
    }

    /// Forgets every handle (after an HSM reconnect). Session objects died
    /// with their sessions; token objects are looked up again.
    pub fn clear(&self) {
        lock(&self.masters).clear();
        lock(&self.derived).clear();
    }

    /// Number of derived keys held.
    pub fn len(&self) -> usize {
        lock(&self.derived).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A master key by label, cached.
    pub fn master(&self, hsm: &dyn Hsm, label: &str) -> Result<ObjectId> {
        if let Some(id) = lock(&self.masters).get(label) {
            return Ok(*id);
        }
        let id = hsm
            .find_key(label)?
            .ok_or_else(|| KmsError::KeyMissing(label.to_owned()))?;
        lock(&self.masters).insert(label.to_owned(), id);
        Ok(id)
    }

    fn derived(
        &self,
        hsm: &dyn Hsm,
        key: CacheKey,
        make: impl FnOnce() -> Result<ObjectId>,
    ) -> Result<ObjectId> {
        if let Some(id) = lock(&self.derived).get(&key) {
            self.stats.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(*id);
        }
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        let id = make()?;
        let mut cache = lock(&self.derived);
        if let Some(existing) = cache.get(&key).copied() {
            // Another worker derived the same key meanwhile: keep theirs.
            drop(cache);
            let _ = hsm.destroy(id);
            return Ok(existing);
        }
        let evicted = cache.push(key, id);
        drop(cache);
        if let Some((_, old)) = evicted {
            self.stats.evictions.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = hsm.destroy(old) {
                tracing::warn!(error = %e, "could not destroy an evicted derived key");
            }
        }
        Ok(id)
    }

    /// `TMK_d = DIV(IMK-TMK, D)`, derive-only.
    pub fn tmk(&self, hsm: &dyn Hsm, issuer: &IssuerKeys, device: DeviceId) -> Result<ObjectId> {
        let key = CacheKey {
            issuer: issuer.id.clone(),
            device,
            path: KeyPath::Tmk,
        };
        self.derived(hsm, key, || self.derive_tmk(hsm, issuer, device))
    }

    fn derive_tmk(&self, hsm: &dyn Hsm, issuer: &IssuerKeys, device: DeviceId) -> Result<ObjectId> {
        let imk = self.master(hsm, &master_label(&issuer.id, MasterKeyRole::ImkTmk))?;
        derive(
            hsm,
            imk,
            issuer.family,
            &device.diversification_block(),
            Usage::DERIVE,
            false,
        )
    }

    /// `AUTH_d = DIV(IMK-AUTH, D)` with `usage` (encrypt, for challenge responses).
    pub fn auth(
        &self,
        hsm: &dyn Hsm,
        issuer: &IssuerKeys,
        device: DeviceId,
        usage: Usage,
    ) -> Result<ObjectId> {
        let key = CacheKey {
            issuer: issuer.id.clone(),
            device,
            path: KeyPath::Auth(usage.into()),
        };
        self.derived(hsm, key, || {
            let imk = self.master(hsm, &master_label(&issuer.id, MasterKeyRole::ImkAuth))?;
            derive(
                hsm,
                imk,
                issuer.family,
                &device.diversification_block(),
                usage,
                false,
            )
        })
    }

    /// `DIV'(TMK_d, data)` with `usage`.
    pub fn working(
        &self,
        hsm: &dyn Hsm,
        issuer: &IssuerKeys,
        device: DeviceId,
        data: [u8; 16],
        usage: Usage,
    ) -> Result<ObjectId> {
        let key = CacheKey {
            issuer: issuer.id.clone(),
            device,
            path: KeyPath::Working {
                data,
                usage: usage.into(),
            },
        };
        self.derived(hsm, key, || {
            // A held TMK_d is used; otherwise one is derived for this step
            // and destroyed: the cache's room goes to the keys every MAC
            // uses, not to one a device needs only when a key is derived.
            let held = lock(&self.derived)
                .peek(&CacheKey {
                    issuer: issuer.id.clone(),
                    device,
                    path: KeyPath::Tmk,
                })
                .copied();
            if let Some(tmk) = held {
                return derive(hsm, tmk, issuer.family, &data, usage, false);
            }
            let tmk = self.derive_tmk(hsm, issuer, device)?;
            let out = derive(hsm, tmk, issuer.family, &data, usage, false);
            if let Err(e) = hsm.destroy(tmk) {
                tracing::warn!(error = %e, "could not destroy a transient TMK_d");
            }
            out
        })
    }
}

/// One derivation step as a session object.
pub(crate) fn derive(
    hsm: &dyn Hsm,
    base: ObjectId,
    family: KeyFamily,
    data: &[u8],
    usage: Usage,
    extractable: bool,
) -> Result<ObjectId> {
    let spec = KeySpec {
        kind: family.secret_kind(),
        usage,
        token_label: None,
        extractable,
    };
    hsm.derive_key(base, family.derivation(), data, &spec)
}

/// Runs `f`; if it hit a stale handle (HSM reconnect), clears the cache and
/// runs it once more.
pub(crate) fn with_fresh_handles<T>(cache: &KeyCache, f: impl Fn() -> Result<T>) -> Result<T> {
    match f() {
        Err(KmsError::Stale) => {
            cache.clear();
            f()
        }
        other => other,
    }
}

/// A throw-away copy of a derived key with the usage its KCV needs; the key
/// used for delivery or derivation itself never gets `encrypt`.
pub(crate) fn kcv_of_derived(
    hsm: &dyn Hsm,
    base: ObjectId,
    family: KeyFamily,
    data: &[u8],
) -> Result<crate::types::Kcv> {
    let copy = derive(hsm, base, family, data, family.kcv_usage(), false)?;
    let kcv = crate::mac::kcv(hsm, copy, family.kcv_method());
    hsm.destroy(copy)?;
    kcv
}

/// The KCV method recorded for a master key: what `CKA_CHECK_VALUE` means on
/// a generated key (PKCS#11: the first 3 bytes of the zero block encrypted).
pub(crate) fn master_kcv_method(family: KeyFamily) -> KcvMethod {
    match family {
        KeyFamily::Tdes => KcvMethod::Tdes,
        KeyFamily::Aes => KcvMethod::AesEcb,
    }
}
