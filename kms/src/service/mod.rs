//! [`Kms`]: the facade the server and the provisioning pipeline call. Async,
//! speaks domain types only, and keeps the catalog and the HSM consistent.
//! It offers operations, not its parts: callers never reach into its worker
//! pool, key catalog or derived-key cache.
//!
//! # Layout
//! One file per operation family, each an `impl Kms` block:
//! - `mod.rs` (here): the struct, opening, probing, readiness, shutdown,
//!   statistics, random bytes and the shared database handle;
//! - `issuers.rs`: creating and listing issuers;
//! - `working_keys.rs`: offering, confirming, listing and retiring a
//!   device's working-key versions;
//! - `verify.rs`: transaction-MAC verification, one and in bulk;
//! - `records.rs`: working-key records held in memory, kept true across
//!   replicas by the catalog's change log;
//! - `challenges.rs`: challenge/response login primitives;
//! - `init_package.rs`: the init package (its HSM job is in [`crate::wrap`]);
//! - `signing.rs`: token key pairs (the signer is [`crate::signing`]);
//! - `audit.rs`: the audit trail's HMAC key and its checkpoint on the token;
//! - `channel.rs`, `channel_pkcs1.rs`: the secure channel's HSM side (the
//!   second: PKCS#1 v1.5 key transport with implicit rejection).

mod audit;
mod challenges;
mod channel;
mod channel_pkcs1;
mod confirmation;
mod init_package;
mod issuers;
mod records;
mod signing;
mod transaction;
mod verify;
mod working_keys;

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use keyward_config::Config;

pub use audit::{AUDIT_CHECKPOINT_LABEL, AUDIT_MAC_LABEL, AUDIT_MECHANISMS};
pub use challenges::{AnswerCheck, CHALLENGE_SEAL_LABEL, SealedChallenge};
pub use channel::{
    CHANNEL_KEY_BITS, CHANNEL_KEY_LABEL, CHANNEL_MECHANISMS, CHANNEL_SECRET_LEN,
    CHANNEL_STATE_KEK_LABEL, ChannelKeyUse, ChannelSchedule, ChannelSecret, EstablishedChannel,
    MAX_RECORD_LEN, P256_POINT_LEN,
};
pub use channel_pkcs1::{
    CHANNEL_IMPLICIT_REJECTION_LABEL, CHANNEL_PKCS1_MECHANISMS, Pkcs1BadPadding,
};
pub use confirmation::CONFIRMATION_CODE_LABEL;
pub use issuers::{NewIssuer, NewIssuerKey};
pub use records::{CHANGE_RETENTION_MS, KeyRecord};
pub use transaction::{MAX_ACCOUNT_FIELD, PinBlock, PinFormat};
pub use verify::{
    JOB_ITEMS, JOBS_PER_WORKER, MAX_BULK_ITEMS, MacBatch, MacError, MacItem, MacOutcome,
};
pub use working_keys::{OfferedKey, WorkingKeyOffer};

use crate::catalog::Catalog;
use crate::db::Database;
use crate::error::{KmsError, Result};
use crate::hsm::{MechanismId, Pkcs11Hsm};
use crate::keys::{IssuerKeys, KeyCache};
use crate::pool::{HsmPool, PoolSize};
use crate::types::{IssuerId, KeyFamily};

/// Default time a replaced working-key version stays valid.
pub const DEFAULT_ROTATION_GRACE: Duration = Duration::from_secs(24 * 3600);

/// The key-management service: HSM pool, derived-key cache and key catalog.
#[derive(Debug, Clone)]
pub struct Kms {
    pool: HsmPool,
    catalog: Catalog,
    cache: Arc<KeyCache>,
    /// Working-key records of the devices in use, so a MAC check reads no
    /// catalog row; as many devices as the derived-key cache holds keys.
    records: Arc<records::KeyRecords>,
    /// Issuers never change once created, so their family is cached here and
    /// the hot paths read one catalog row (the working key), not two.
    issuers: Arc<RwLock<HashMap<IssuerId, IssuerKeys>>>,
    grace: Duration,
    /// The audit MAC key's handle, once found.
    audit_key: audit::AuditKeyCache,
    /// The login-challenge seal key's handle, once found.
    seal_key: audit::AuditKeyCache,
    /// The confirmation-code MAC key's handle, once found.
    code_key: audit::AuditKeyCache,
    /// The channel private keys' handles, once found.
    channel_keys: channel::ChannelKeyCache,
}

/// A snapshot of the service's counters and gauges, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KmsStats {
    /// HSM worker threads in both lanes (one session each), as `hsm_busy`
    /// counts them.
    pub hsm_workers: usize,
    /// Jobs running on a worker.
    pub hsm_busy: usize,
    /// Jobs waiting for a worker.
    pub hsm_queued: usize,
    /// Jobs refused because the queue was full (since start).
    pub hsm_rejected: u64,
    /// Jobs finished with any outcome (since start).
    pub hsm_completed: u64,
    /// Derived-key cache hits, misses and evictions (since start).
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub cache_evictions: u64,
    /// Database connections open, and how many of them are idle.
    pub db_connections: u32,
    pub db_idle: usize,
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
    /// Opens the HSM from configuration and the catalog on `db` (the
    /// process's database, which the process opened and shares with every
    /// store), and refuses to start when the token lacks a mechanism the
    /// catalog's issuers need.
    pub async fn open(config: &Config, db: Database) -> Result<Self> {
        let pin = config
            .hsm
            .pin()
            .map_err(|e| KmsError::Login(e.to_string()))?;
        let hsm_config = config.hsm.clone();
        let hsm = tokio::task::spawn_blocking(move || Pkcs11Hsm::open(&hsm_config, pin))
            .await
            .map_err(|_| KmsError::Hsm {
                function: "open",
                problem: "the thread opening the module failed",
            })??;
        let pool = HsmPool::start_sized(
            Arc::new(hsm),
            PoolSize {
                interactive: config.hsm.sessions,
                bulk: config.hsm.bulk_sessions(),
                bulk_nice: config.hsm.bulk_nice,
                queue_depth: config.hsm.queue_depth,
            },
        )?;
        let catalog = Catalog::open(db).await?;
        let kms = Self::new(pool, catalog, config.hsm.derived_key_cache)
            .with_rotation_grace(Duration::from_secs(config.online.rotation_grace_secs));
        kms.probe().await?;
        Ok(kms)
    }

    /// Assembles a service from parts (tests, tools). The HSM's vendor
    /// differences come with the pool ([`HsmPool::capabilities`]).
    pub fn new(pool: HsmPool, catalog: Catalog, cache_capacity: usize) -> Self {
        Self {
            pool,
            catalog,
            cache: Arc::new(KeyCache::new(cache_capacity)),
            records: Arc::new(records::KeyRecords::new(cache_capacity)),
            issuers: Arc::default(),
            grace: DEFAULT_ROTATION_GRACE,
            audit_key: Arc::default(),
            seal_key: Arc::default(),
            code_key: Arc::default(),
            channel_keys: Arc::default(),
        }
    }

    /// Sets how long a replaced working-key version stays valid.
    pub fn with_rotation_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// The database the key catalog lives in, for the crates that keep their
    /// own tables there (CA, provisioning, audit). They follow the
    /// transaction rules of [`crate::db`].
    pub fn db(&self) -> &Database {
        self.catalog.db()
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
        needed.extend_from_slice(AUDIT_MECHANISMS);
        needed.extend_from_slice(CHANNEL_MECHANISMS);
        for f in [KeyFamily::Tdes, KeyFamily::Aes] {
            if families.contains(&f) {
                needed.extend_from_slice(required_mechanisms(f));
            }
        }
        if self.pool.capabilities().pin_translate {
            needed.push((
                MechanismId::PinTranslateVendor,
                "PIN translation (configured)",
            ));
        }
        if self.pool.capabilities().vendor_retail_mac {
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

    /// `N` bytes from the HSM's random number generator (challenges, nonces).
    pub async fn random<const N: usize>(&self) -> Result<[u8; N]> {
        let bytes = self.pool.run(|hsm| hsm.random(N)).await?;
        bytes.try_into().map_err(|_| KmsError::Hsm {
            function: "C_GenerateRandom",
            problem: "short read",
        })
    }

    /// The token's vendor differences (what `keyward check` reports).
    pub fn capabilities(&self) -> crate::hsm::Capabilities {
        self.pool.capabilities()
    }

    /// Interactive HSM worker threads, which is how many interactive HSM
    /// operations run at once: callers size their own parallelism by it.
    pub fn hsm_workers(&self) -> usize {
        self.pool.workers()
    }

    /// A snapshot of the pool, cache and database counters.
    pub fn stats(&self) -> KmsStats {
        let pool = self.pool.stats();
        let cache = &self.cache.stats;
        let db = self.db().pool();
        KmsStats {
            hsm_workers: self.pool.workers() + self.pool.bulk_workers(),
            hsm_busy: pool.busy.load(Relaxed),
            hsm_queued: self.pool.queued(),
            hsm_rejected: pool.rejected.load(Relaxed),
            hsm_completed: pool.completed.load(Relaxed),
            cache_hits: cache.hits.load(Relaxed),
            cache_misses: cache.misses.load(Relaxed),
            cache_evictions: cache.evictions.load(Relaxed),
            db_connections: db.size(),
            db_idle: db.num_idle(),
        }
    }

    /// Finishes the queued HSM jobs and joins the workers
    /// ([`HsmPool::shutdown`]); blocks. A process calls it as it ends, after
    /// its runtime is gone; a second call does nothing.
    pub fn shutdown(&self) {
        self.pool.shutdown();
    }

    /// A handle for [`Kms::shutdown`] at the end of the process that does not
    /// keep the HSM workers alive until then.
    pub fn exit_handle(&self) -> crate::pool::PoolExit {
        self.pool.exit_handle()
    }

    /// Drops the HSM sessions (or, `logout`, the login) as an HSM restart
    /// would ([`crate::hsm::Hsm::drop_sessions`]); the next calls heal.
    pub async fn drop_hsm_sessions(&self, logout: bool) -> Result<()> {
        self.pool.run(move |h| h.drop_sessions(logout)).await
    }

    pub(crate) fn pool(&self) -> &HsmPool {
        &self.pool
    }

    pub(crate) fn cache_arc(&self) -> Arc<KeyCache> {
        self.cache.clone()
    }
}
