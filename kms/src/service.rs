//! [`Kms`]: the facade the server and the provisioning pipeline call. Async,
//! speaks domain types only, and keeps the catalog and the HSM consistent.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use keyward_config::Config;

use crate::catalog::{
    Catalog, IssuerRecord, KeyState, MasterKeyRecord, MasterKeyRole, NewWorkingKey,
    WorkingKeyRecord,
};
use crate::error::{KmsError, Result};
use crate::hsm::{Hsm, KeySpec, MechanismId, Pkcs11Hsm, Usage};
use crate::keys::{self, IssuerKeys, KeyCache, master_label, with_fresh_handles};
use crate::mac::{self, MacKeys};
use crate::pool::HsmPool;
use crate::types::{
    DeviceId, IssuerId, Kcv, KeyFamily, KeyVersion, MacAlgorithm, Padding, WorkingKeyRole,
};

/// Default time a replaced working-key version stays valid.
pub const DEFAULT_ROTATION_GRACE: Duration = Duration::from_secs(24 * 3600);

/// A working key offered to a device: it derives `DIV'(TMK_d, r)` and checks `kcv`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferedKey {
    pub role: WorkingKeyRole,
    pub r: [u8; 16],
    pub kcv: Kcv,
}

/// A new, pending working-key version.
#[derive(Debug, Clone)]
pub struct WorkingKeyOffer {
    pub version: KeyVersion,
    pub keys: Vec<OfferedKey>,
}

/// One MAC to check, as it arrives in a request.
#[derive(Debug, Clone)]
pub struct MacItem {
    pub issuer: IssuerId,
    pub device: DeviceId,
    pub version: KeyVersion,
    pub algorithm: MacAlgorithm,
    pub padding: Option<Padding>,
    pub message: Vec<u8>,
    pub mac: Vec<u8>,
}

/// The answer for one [`MacItem`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MacOutcome {
    Valid,
    Invalid,
    /// The item could not be checked; the stable error code says why.
    Error(&'static str),
}

/// The key-management service: HSM pool, derived-key cache and key catalog.
#[derive(Debug, Clone)]
pub struct Kms {
    pool: HsmPool,
    catalog: Catalog,
    cache: Arc<KeyCache>,
    /// Issuers never change once created, so their family is cached here and
    /// the hot paths read one catalog row (the working key), not two.
    issuers: Arc<RwLock<HashMap<IssuerId, IssuerKeys>>>,
    retail_vendor: bool,
    grace: Duration,
}

/// Mechanisms every issuer of a family needs.
pub fn required_mechanisms(family: KeyFamily) -> &'static [(MechanismId, &'static str)] {
    match family {
        KeyFamily::Tdes => &[
            (MechanismId::Des2KeyGen, "TDES issuer master keys"),
            (MechanismId::Des3EcbEncryptData, "TDES key diversification"),
            (MechanismId::Des3Ecb, "TDES KCVs and challenge responses"),
            (MechanismId::Des3Cbc, "ISO 9797-1 CBC-MACs"),
            (MechanismId::Des3Cmac, "CMAC-TDES"),
        ],
        KeyFamily::Aes => &[
            (MechanismId::AesKeyGen, "AES issuer master keys"),
            (MechanismId::AesEcbEncryptData, "AES key diversification"),
            (MechanismId::AesEcb, "AES challenge responses"),
            (MechanismId::AesCmac, "CMAC-AES and AES KCVs"),
        ],
    }
}

/// Mechanisms the init package needs, whatever the family.
pub const INIT_PACKAGE_MECHANISMS: &[(MechanismId, &str)] = &[
    (
        MechanismId::EcKeyPairGen,
        "init package (ephemeral ECDH key)",
    ),
    (
        MechanismId::Ecdh1Derive,
        "init package (ECDH key agreement)",
    ),
    (MechanismId::AesKeyWrap, "init package (RFC 3394 key wrap)"),
    (MechanismId::RsaOaep, "init package for RSA devices"),
];

impl Kms {
    /// Opens the HSM and the catalog from configuration, and refuses to start
    /// when the token lacks a mechanism the catalog's issuers need.
    pub async fn open(config: &Config) -> Result<Self> {
        let pin = config
            .hsm
            .pin()
            .map_err(|e| KmsError::Login(e.to_string()))?;
        let hsm_config = config.hsm.clone();
        let hsm = tokio::task::spawn_blocking(move || Pkcs11Hsm::open(&hsm_config, pin))
            .await
            .map_err(|e| KmsError::Hsm {
                function: "open".into(),
                rv: e.to_string(),
            })??;
        let retail_vendor = config.hsm.mechanisms.des3_retail_mac.is_some();
        let pool = HsmPool::start(Arc::new(hsm), config.hsm.sessions, config.hsm.queue_depth)?;
        let catalog = Catalog::connect(&config.database).await?;
        let kms = Self::new(pool, catalog, config.hsm.derived_key_cache, retail_vendor);
        kms.probe().await?;
        Ok(kms)
    }

    /// Assembles a service from parts (tests, tools).
    pub fn new(
        pool: HsmPool,
        catalog: Catalog,
        cache_capacity: usize,
        retail_vendor: bool,
    ) -> Self {
        Self {
            pool,
            catalog,
            cache: Arc::new(KeyCache::new(cache_capacity)),
            issuers: Arc::default(),
            retail_vendor,
            grace: DEFAULT_ROTATION_GRACE,
        }
    }

    /// Sets how long a replaced working-key version stays valid.
    pub fn with_rotation_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    pub fn pool(&self) -> &HsmPool {
        &self.pool
    }

    pub fn cache(&self) -> &KeyCache {
        &self.cache
    }

    /// Checks that the token offers every mechanism the catalog's issuers (and
    /// the init package) need; the error names the first one missing.
    pub async fn probe(&self) -> Result<()> {
        let families: Vec<KeyFamily> = self
            .catalog
            .issuers()
            .await?
            .into_iter()
            .map(|i| i.family)
            .collect();
        self.probe_families(&families).await
    }

    /// [`Kms::probe`] for explicit families.
    pub async fn probe_families(&self, families: &[KeyFamily]) -> Result<()> {
        let mut needed: Vec<(MechanismId, &'static str)> = INIT_PACKAGE_MECHANISMS.to_vec();
        for f in [KeyFamily::Tdes, KeyFamily::Aes] {
            if families.contains(&f) {
                needed.extend_from_slice(required_mechanisms(f));
            }
        }
        if self.retail_vendor {
            needed.push((
                MechanismId::Des3RetailVendor,
                "X9.19 retail MAC (configured)",
            ));
        }
        self.pool
            .run(move |hsm| {
                for (m, purpose) in needed {
                    if !hsm.supports(m)? {
                        return Err(KmsError::MechanismMissing {
                            name: crate::hsm::mechanism_name(m),
                            number: hsm.mechanism_number(m).unwrap_or(0),
                            purpose,
                        });
                    }
                }
                Ok(())
            })
            .await
    }

    /// Ready when the HSM and the catalog both answer.
    pub async fn ready(&self) -> Result<()> {
        self.pool.run(|hsm| hsm.ping()).await?;
        self.catalog.ping().await
    }

    /// Creates an issuer: its master keys are generated in the HSM as token
    /// objects (sensitive, non-extractable, derive-only) and recorded with
    /// their KCVs. A master key left on the token by an interrupted earlier
    /// attempt is adopted rather than duplicated.
    pub async fn create_issuer(&self, id: IssuerId, family: KeyFamily) -> Result<IssuerRecord> {
        if self.catalog.issuer(&id).await?.is_some() {
            return Err(KmsError::IssuerExists(id));
        }
        self.probe_families(&[family]).await?;
        let roles = [MasterKeyRole::ImkTmk, MasterKeyRole::ImkAuth];
        let labels: Vec<String> = roles.iter().map(|r| master_label(&id, *r)).collect();
        let generated = self
            .pool
            .run(move |hsm| {
                let mut out = Vec::new();
                for label in labels {
                    let (obj, created) = match hsm.find_key(&label)? {
                        Some(obj) => (obj, false),
                        None => {
                            let spec = KeySpec {
                                kind: family.secret_kind(),
                                usage: Usage::DERIVE,
                                token_label: Some(label.clone()),
                                extractable: false,
                            };
                            (hsm.generate_key(&spec)?, true)
                        }
                    };
                    let kcv = hsm.check_value(obj)?.ok_or_else(|| KmsError::Hsm {
                        function: "GetAttributeValue".into(),
                        rv: "token gave no CKA_CHECK_VALUE".into(),
                    })?;
                    out.push((label, obj, created, kcv));
                }
                Ok(out)
            })
            .await?;
        let record = IssuerRecord {
            id: id.clone(),
            family,
            master_keys: roles
                .iter()
                .zip(&generated)
                .map(|(role, (label, _, _, kcv))| MasterKeyRecord {
                    role: *role,
                    label: label.clone(),
                    kcv: Kcv {
                        method: keys::master_kcv_method(family),
                        value: *kcv,
                    },
                })
                .collect(),
            created_at_ms: now_ms(),
        };
        if let Err(e) = self.catalog.create_issuer(&record).await {
            // Leave no orphan master keys behind that this call created.
            let created: Vec<_> = generated.iter().filter(|g| g.2).map(|g| g.1).collect();
            let _ = self
                .pool
                .run(move |hsm| {
                    for obj in created {
                        hsm.destroy(obj)?;
                    }
                    Ok(())
                })
                .await;
            return Err(e);
        }
        tracing::info!(issuer = %id, family = %family, "issuer created with HSM master keys");
        Ok(record)
    }

    /// An issuer or [`KmsError::UnknownIssuer`].
    pub async fn issuer(&self, id: &IssuerId) -> Result<IssuerRecord> {
        self.catalog
            .issuer(id)
            .await?
            .ok_or_else(|| KmsError::UnknownIssuer(id.clone()))
    }

    pub(crate) async fn issuer_keys(&self, id: &IssuerId) -> Result<IssuerKeys> {
        if let Some(ik) = self
            .issuers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
        {
            return Ok(ik.clone());
        }
        let rec = self.issuer(id).await?;
        let ik = IssuerKeys {
            id: rec.id,
            family: rec.family,
        };
        self.issuers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), ik.clone());
        Ok(ik)
    }

    /// Draws fresh `R`s (HSM RNG) for TPK, TAK and TDK, computes their KCVs in
    /// the HSM and records a pending version. Nothing is active until the
    /// device confirms the KCVs ([`Kms::confirm_working_keys`]).
    pub async fn offer_working_keys(
        &self,
        issuer: &IssuerId,
        device: DeviceId,
    ) -> Result<WorkingKeyOffer> {
        let ik = self.issuer_keys(issuer).await?;
        let cache = self.cache.clone();
        let keys = self
            .pool
            .run(move |hsm| {
                with_fresh_handles(&cache, || {
                    let tmk = cache.tmk(hsm, &ik, device)?;
                    WorkingKeyRole::ALL
                        .iter()
                        .map(|role| {
                            let r: [u8; 16] = hsm
                                .random(16)?
                                .try_into()
                                .map_err(|_| KmsError::invalid("random", "short read"))?;
                            let kcv = keys::kcv_of_derived(hsm, tmk, ik.family, &r)?;
                            Ok(OfferedKey {
                                role: *role,
                                r,
                                kcv,
                            })
                        })
                        .collect::<Result<Vec<_>>>()
                })
            })
            .await?;
        let new: Vec<NewWorkingKey> = keys
            .iter()
            .map(|k| NewWorkingKey {
                role: k.role,
                r: k.r,
                kcv: k.kcv,
            })
            .collect();
        let version = self
            .catalog
            .add_pending_version(issuer, device, &new)
            .await?;
        Ok(WorkingKeyOffer { version, keys })
    }

    /// The device's KCVs for a pending version. All match: the version becomes
    /// active and the previous one enters its grace period. Any mismatch (or a
    /// missing role) is an intrusion signal: the version is rejected for good
    /// and [`KmsError::KcvMismatch`] is returned.
    pub async fn confirm_working_keys(
        &self,
        issuer: &IssuerId,
        device: DeviceId,
        version: KeyVersion,
        device_kcvs: &[(WorkingKeyRole, Kcv)],
    ) -> Result<()> {
        let mut all_match = true;
        for role in WorkingKeyRole::ALL {
            let rec = self.working_key(issuer, device, version, role).await?;
            if rec.state != KeyState::Pending {
                return Err(KmsError::KeyVersionNotUsable {
                    version,
                    state: rec.state.as_str().to_owned(),
                });
            }
            let reported = device_kcvs.iter().find(|(r, _)| *r == role).map(|(_, k)| k);
            all_match &= reported.is_some_and(|k| k.matches(&rec.kcv));
        }
        if all_match {
            self.catalog
                .activate_version(issuer, device, version, self.grace)
                .await
        } else {
            self.catalog.reject_version(issuer, device, version).await?;
            tracing::warn!(issuer = %issuer, device = %device, version = %version, "working-key KCV mismatch reported by device; version rejected");
            Err(KmsError::KcvMismatch(version))
        }
    }

    async fn working_key(
        &self,
        issuer: &IssuerId,
        device: DeviceId,
        version: KeyVersion,
        role: WorkingKeyRole,
    ) -> Result<WorkingKeyRecord> {
        self.catalog
            .working_key(issuer, device, version, role)
            .await?
            .ok_or_else(|| KmsError::UnknownKeyVersion {
                issuer: issuer.clone(),
                device,
                version,
            })
    }

    /// Checks one transaction MAC with the device's `TAK` of `version`.
    pub async fn verify_mac(&self, item: MacItem) -> Result<bool> {
        let ik = self.issuer_keys(&item.issuer).await?;
        let tak = self.usable_tak(&item).await?;
        let cache = self.cache.clone();
        let retail_vendor = self.retail_vendor;
        self.pool
            .run(move |hsm| verify_one(hsm, &cache, &ik, tak.r, &item, retail_vendor))
            .await
    }

    /// Checks many MACs: items are grouped by key, each key's record is read
    /// once, and the groups are spread over the HSM workers. Answers come
    /// back in input order; one bad item never fails the batch.
    pub async fn verify_macs(&self, items: Vec<MacItem>) -> Vec<MacOutcome> {
        crate::bulk::verify(self, items).await
    }

    pub(crate) async fn usable_tak(&self, item: &MacItem) -> Result<WorkingKeyRecord> {
        let rec = self
            .working_key(&item.issuer, item.device, item.version, WorkingKeyRole::Tak)
            .await?;
        if !rec.state.usable() {
            return Err(KmsError::KeyVersionNotUsable {
                version: item.version,
                state: rec.state.as_str().to_owned(),
            });
        }
        Ok(rec)
    }

    pub(crate) fn cache_arc(&self) -> Arc<KeyCache> {
        self.cache.clone()
    }

    pub(crate) fn retail_vendor(&self) -> bool {
        self.retail_vendor
    }

    /// A random challenge for challenge/response login, from the HSM's RNG:
    /// one cipher block of the issuer's family (8 bytes TDES, 16 AES). Single
    /// use and expiry are the login protocol's to enforce.
    pub async fn challenge(&self, issuer: &IssuerId) -> Result<Vec<u8>> {
        let len = self.issuer_keys(issuer).await?.family.block_len();
        self.pool.run(move |hsm| hsm.random(len)).await
    }

    /// Checks a device's answer `E_AUTH_d(challenge)`, computed in the HSM
    /// and compared in constant time.
    pub async fn verify_challenge_response(
        &self,
        issuer: &IssuerId,
        device: DeviceId,
        challenge: &[u8],
        response: &[u8],
    ) -> Result<bool> {
        let ik = self.issuer_keys(issuer).await?;
        let block = ik.family.block_len();
        if challenge.len() != block {
            return Err(KmsError::invalid(
                "challenge",
                "wrong length for the issuer's family",
            ));
        }
        if response.len() != block {
            return Ok(false);
        }
        let challenge = challenge.to_vec();
        let response = response.to_vec();
        let cache = self.cache.clone();
        self.pool
            .run(move |hsm| {
                with_fresh_handles(&cache, || {
                    let auth = cache.auth(hsm, &ik, device, Usage::ENCRYPT)?;
                    let cipher = match ik.family {
                        KeyFamily::Tdes => crate::hsm::Cipher::Des3Ecb,
                        KeyFamily::Aes => crate::hsm::Cipher::AesEcb,
                    };
                    let expected = hsm.encrypt(auth, cipher, &challenge)?;
                    use subtle::ConstantTimeEq;
                    Ok(bool::from(expected.ct_eq(&response)))
                })
            })
            .await
    }
}

/// The HSM part of one MAC check, run on a worker.
pub(crate) fn verify_one(
    hsm: &dyn Hsm,
    cache: &KeyCache,
    ik: &IssuerKeys,
    r: [u8; 16],
    item: &MacItem,
    retail_vendor: bool,
) -> Result<bool> {
    if item.algorithm.family() != ik.family {
        return Err(KmsError::AlgorithmFamily {
            algorithm: item.algorithm.as_str(),
            family: ik.family.as_str(),
        });
    }
    with_fresh_handles(cache, || {
        let keys = mac_keys(
            hsm,
            cache,
            ik,
            item.device,
            r,
            item.algorithm,
            retail_vendor,
        )?;
        mac::verify(
            hsm,
            &keys,
            item.algorithm,
            item.padding,
            &item.message,
            &item.mac,
            retail_vendor,
        )
    })
}

/// The derived objects a MAC algorithm needs, each with only the usage it needs.
fn mac_keys(
    hsm: &dyn Hsm,
    cache: &KeyCache,
    ik: &IssuerKeys,
    device: DeviceId,
    r: [u8; 16],
    alg: MacAlgorithm,
    retail_vendor: bool,
) -> Result<MacKeys> {
    let usage = match alg {
        MacAlgorithm::CmacTdes | MacAlgorithm::CmacAes => Usage {
            sign: true,
            ..Usage::NONE
        },
        MacAlgorithm::Iso9797M3 if retail_vendor => Usage {
            sign: true,
            ..Usage::NONE
        },
        _ => Usage::ENCRYPT,
    };
    let tak = cache.working(hsm, ik, device, r, usage)?;
    let k1k1 = if alg == MacAlgorithm::Iso9797M3 && !retail_vendor {
        let mut half = [0u8; 16];
        half[..8].copy_from_slice(&r[..8]);
        half[8..].copy_from_slice(&r[..8]);
        Some(cache.working(hsm, ik, device, half, Usage::ENCRYPT)?)
    } else {
        None
    };
    Ok(MacKeys { tak, k1k1 })
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
