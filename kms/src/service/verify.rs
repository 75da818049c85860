//! Transaction-MAC verification, one item ([`Kms::verify_mac`]) or many
//! ([`Kms::verify_batch`], [`Kms::verify_macs`]: thousands of items in, one
//! answer per item out, in order).
//!
//! kms is the one scheduler of a bulk verification: it alone knows how many
//! HSM workers there are, so it cuts a batch into jobs of [`JOB_ITEMS`] and
//! keeps [`JOBS_PER_WORKER`] of them per worker in flight; callers (the
//! server's bulk engine, the benches) only take the answers in order, a job
//! at a time. Each job reads its working-key records from memory
//! (`records.rs`: one change-log read per job, not one catalog read per
//! item), the ones not held in bulk, then runs on one worker. A failure is
//! confined to its item or job; only a call over [`MAX_BULK_ITEMS`] fails as
//! a whole.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use tokio::task::JoinHandle;

use crate::db::now_ms;
use crate::error::{ErrorKind, KmsError, Result};
use crate::hsm::{Hsm, Usage};
use crate::keys::{IssuerKeys, KeyCache, with_fresh_handles};
use crate::mac::{self, MacKeys};
use crate::pool::Lane;
use crate::service::Kms;
use crate::service::records::KeyRecord;
use crate::service::working_keys::not_usable;
use crate::types::{DeviceId, IssuerId, KeyVersion, MacAlgorithm, Padding, WorkingKeyRole};

/// The most items one bulk call may carry (`keyward_config::bulk`, where
/// the bulk limits are sized together).
pub const MAX_BULK_ITEMS: usize = keyward_config::bulk::MAX_CALL_ITEMS;

/// Items in one HSM job (`keyward_config::bulk`).
pub const JOB_ITEMS: usize = keyward_config::bulk::JOB_ITEMS;

/// Jobs of one batch in flight per HSM worker: one running, one resolved
/// and queued, so a worker never waits for the next job to be read.
pub const JOBS_PER_WORKER: usize = 2;

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

/// Why one item has no verdict. The item as sent (read by the caller
/// before kms sees it) or as kms found it; each has a stable code, which
/// the answer carries, and a kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum MacError {
    #[error("the item is not an object of the item's fields")]
    InvalidItem,
    #[error("the device id is not 16 hex digits")]
    InvalidDeviceId,
    #[error("the issuer id is not an issuer id")]
    InvalidIssuerId,
    #[error("the message is not base64")]
    InvalidMessage,
    #[error("the MAC is not base64")]
    InvalidMac,
    #[error("no such MAC algorithm")]
    UnsupportedAlgorithm,
    #[error("the padding is not 0, 1 or 2")]
    InvalidPadding,
    #[error("no such issuer")]
    UnknownIssuer,
    #[error("the device has no working key of that version")]
    UnknownKeyVersion,
    #[error("the key version is not usable now")]
    KeyVersionNotUsable,
    #[error("the algorithm does not apply to the issuer's keys")]
    AlgorithmFamily,
    /// A MAC length or padding the algorithm does not take.
    #[error("invalid input")]
    InvalidInput,
    #[error("the message is too long")]
    MessageTooLong,
    /// The service could not check the item (HSM, database): any other
    /// kms error, by its kind and code.
    #[error("{code}")]
    Service { kind: ErrorKind, code: &'static str },
    /// The item's job was lost (it panicked).
    #[error("internal error")]
    Internal,
}

impl MacError {
    /// The stable code of the item's `error` answer.
    pub fn code(self) -> &'static str {
        match self {
            Self::InvalidItem => "invalid_item",
            Self::InvalidDeviceId => "invalid_device_id",
            Self::InvalidIssuerId => "invalid_issuer_id",
            Self::InvalidMessage => "invalid_message",
            Self::InvalidMac => "invalid_mac",
            Self::UnsupportedAlgorithm => "unsupported_algorithm",
            Self::InvalidPadding => "invalid_padding",
            Self::UnknownIssuer => "unknown_issuer",
            Self::UnknownKeyVersion => "unknown_key_version",
            Self::KeyVersionNotUsable => "key_version_not_usable",
            Self::AlgorithmFamily => "algorithm_family_mismatch",
            Self::InvalidInput => "invalid_input",
            Self::MessageTooLong => "message_too_long",
            Self::Service { code, .. } => code,
            Self::Internal => "internal_error",
        }
    }

    /// Whose fault: the item's ([`ErrorKind::is_client`]) or the service's.
    pub fn kind(self) -> ErrorKind {
        match self {
            Self::UnknownIssuer | Self::UnknownKeyVersion => ErrorKind::NotFound,
            Self::Service { kind, .. } => kind,
            Self::Internal => ErrorKind::Internal,
            _ => ErrorKind::Invalid,
        }
    }
}

impl From<&KmsError> for MacError {
    fn from(e: &KmsError) -> Self {
        match e {
            KmsError::UnknownIssuer(_) => Self::UnknownIssuer,
            KmsError::UnknownKeyVersion { .. } => Self::UnknownKeyVersion,
            KmsError::KeyVersionNotUsable { .. } => Self::KeyVersionNotUsable,
            KmsError::AlgorithmFamily { .. } => Self::AlgorithmFamily,
            KmsError::Invalid { .. } => Self::InvalidInput,
            KmsError::MessageTooLong { .. } => Self::MessageTooLong,
            e => Self::Service {
                kind: e.kind(),
                code: e.code(),
            },
        }
    }
}

/// The answer for one [`MacItem`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MacOutcome {
    Valid,
    Invalid,
    /// The item could not be checked.
    Error(MacError),
}

/// A bulk item whose issuer and working key are known.
struct Resolved {
    index: usize,
    issuer: Arc<IssuerKeys>,
    r: [u8; 16],
    item: MacItem,
}

/// An item with its key record: resolved if the key is usable now,
/// otherwise its error.
fn place(
    resolved: &mut Vec<Resolved>,
    out: &mut [MacOutcome],
    now: i64,
    ik: &Arc<IssuerKeys>,
    rec: &KeyRecord,
    index: usize,
    item: MacItem,
) {
    if rec.usable_at(now) {
        resolved.push(Resolved {
            index,
            issuer: ik.clone(),
            r: rec.r,
            item,
        });
    } else {
        out[index] = MacOutcome::Error(MacError::from(&not_usable(rec.version, rec.state)));
    }
}

/// A bulk verification under way ([`Kms::verify_batch`]): its jobs' answers
/// in input order, one job at a time.
#[derive(Debug)]
pub struct MacBatch {
    kms: Kms,
    rest: std::vec::IntoIter<std::result::Result<MacItem, MacError>>,
    /// Each running job's item count and task.
    running: VecDeque<(usize, JoinHandle<Vec<MacOutcome>>)>,
    in_flight: usize,
}

impl MacBatch {
    fn fill(&mut self) {
        while self.running.len() < self.in_flight {
            let job: Vec<_> = self.rest.by_ref().take(JOB_ITEMS).collect();
            if job.is_empty() {
                return;
            }
            let len = job.len();
            let task = tokio::spawn(self.kms.clone().run_job(job));
            self.running.push_back((len, task));
        }
    }

    /// The next job's answers, in input order; `None` after the last.
    pub async fn next(&mut self) -> Option<Vec<MacOutcome>> {
        let (len, task) = self.running.pop_front()?;
        self.fill();
        // A panicked job: its items are errors, the batch goes on.
        Some(
            task.await
                .unwrap_or_else(|_| vec![MacOutcome::Error(MacError::Internal); len]),
        )
    }

    /// Starts no more jobs; [`MacBatch::next`] still gives the running ones.
    pub fn stop(&mut self) {
        self.rest = Vec::new().into_iter();
    }
}

impl Kms {
    /// Checks one transaction MAC with the device's `TAK` of `version`.
    pub async fn verify_mac(&self, item: MacItem) -> Result<bool> {
        let ik = self.issuer_keys(&item.issuer).await?;
        let tak = self.usable_tak(&item).await?;
        let cache = self.cache.clone();
        self.pool
            .run(move |hsm| verify_one(hsm, &cache, &ik, tak.r, &item))
            .await
    }

    /// Checks many MACs; the answers come back in input order and one bad
    /// item never fails the batch. More than [`MAX_BULK_ITEMS`] items is
    /// [`KmsError::TooManyItems`], with nothing checked.
    pub async fn verify_macs(&self, items: Vec<MacItem>) -> Result<Vec<MacOutcome>> {
        let len = items.len();
        let mut batch = self.verify_batch(items.into_iter().map(Ok).collect())?;
        let mut out = Vec::with_capacity(len);
        while let Some(job) = batch.next().await {
            out.extend(job);
        }
        Ok(out)
    }

    /// Starts checking many MACs, [`JOB_ITEMS`] per HSM job with
    /// [`JOBS_PER_WORKER`] jobs per worker in flight, and answers job by job
    /// ([`MacBatch::next`]) so a caller can stream them. An item the caller
    /// could not read comes as its error and keeps its place.
    pub fn verify_batch(
        &self,
        items: Vec<std::result::Result<MacItem, MacError>>,
    ) -> Result<MacBatch> {
        if items.len() > MAX_BULK_ITEMS {
            return Err(KmsError::TooManyItems {
                len: items.len(),
                max: MAX_BULK_ITEMS,
            });
        }
        let mut batch = MacBatch {
            kms: self.clone(),
            rest: items.into_iter(),
            running: VecDeque::new(),
            in_flight: (self.pool.bulk_workers() * JOBS_PER_WORKER).max(1),
        };
        batch.fill();
        Ok(batch)
    }

    /// One job: its items resolved, then checked on one HSM worker. A
    /// failure of the pool as a whole is every item's error.
    async fn run_job(self, job: Vec<std::result::Result<MacItem, MacError>>) -> Vec<MacOutcome> {
        let mut out = vec![MacOutcome::Error(MacError::Internal); job.len()];
        let mut items = Vec::with_capacity(job.len());
        for (index, item) in job.into_iter().enumerate() {
            match item {
                Ok(item) => items.push((index, item)),
                Err(e) => out[index] = MacOutcome::Error(e),
            }
        }
        let resolved = self.resolve(items, &mut out).await;
        if resolved.is_empty() {
            return out;
        }
        let indices: Vec<usize> = resolved.iter().map(|r| r.index).collect();
        let cache = self.cache.clone();
        // The bulk lane: its own workers, below the interactive ones.
        let checked = self
            .pool
            .run_in(Lane::Bulk, move |hsm| {
                Ok(resolved
                    .iter()
                    .map(|r| {
                        let outcome = match verify_one(hsm, &cache, &r.issuer, r.r, &r.item) {
                            Ok(true) => MacOutcome::Valid,
                            Ok(false) => MacOutcome::Invalid,
                            Err(e) => MacOutcome::Error(MacError::from(&e)),
                        };
                        (r.index, outcome)
                    })
                    .collect::<Vec<_>>())
            })
            .await;
        match checked {
            Ok(results) => {
                for (index, outcome) in results {
                    out[index] = outcome;
                }
            }
            Err(e) => {
                let e = MacError::from(&e);
                for index in indices {
                    out[index] = MacOutcome::Error(e);
                }
            }
        }
        out
    }

    /// Finds each item's issuer and working key: from the records held in
    /// memory after one sync of the change log, the rest read from the
    /// catalog together, one issuer at a time. Items that cannot be
    /// resolved get their error in `out`.
    async fn resolve(&self, items: Vec<(usize, MacItem)>, out: &mut [MacOutcome]) -> Vec<Resolved> {
        let synced = match self.records.sync(&self.catalog).await {
            Ok(s) => s,
            Err(e) => {
                let e = MacError::from(&e);
                for (index, _) in items {
                    out[index] = MacOutcome::Error(e);
                }
                return Vec::new();
            }
        };
        let now = now_ms();
        // A request names few issuers: a list, not a map.
        let mut issuers: Vec<(IssuerId, std::result::Result<Arc<IssuerKeys>, MacError>)> =
            Vec::new();
        let mut resolved = Vec::with_capacity(items.len());
        let mut missing: Vec<(usize, usize, MacItem)> = Vec::new();
        for (index, item) in items {
            let slot = match issuers.iter().position(|(id, _)| *id == item.issuer) {
                Some(slot) => slot,
                None => {
                    let ik = self.issuer_keys(&item.issuer).await;
                    issuers.push((
                        item.issuer.clone(),
                        ik.map(Arc::new).map_err(|e| MacError::from(&e)),
                    ));
                    issuers.len() - 1
                }
            };
            let ik = match &issuers[slot].1 {
                Ok(ik) => ik,
                Err(e) => {
                    out[index] = MacOutcome::Error(*e);
                    continue;
                }
            };
            match self
                .records
                .get(&item.issuer, item.device, item.version, WorkingKeyRole::Tak)
            {
                Some(rec) => place(&mut resolved, out, now, ik, &rec, index, item),
                None => missing.push((slot, index, item)),
            }
        }
        for (slot, (issuer, ik)) in issuers.iter().enumerate() {
            let Ok(ik) = ik else { continue };
            let wanted: Vec<(usize, MacItem)> = missing
                .extract_if(.., |(s, _, _)| *s == slot)
                .map(|(_, index, item)| (index, item))
                .collect();
            if wanted.is_empty() {
                continue;
            }
            let mut pairs: Vec<(DeviceId, KeyVersion)> = wanted
                .iter()
                .map(|(_, it)| (it.device, it.version))
                .collect();
            pairs.sort_unstable();
            pairs.dedup();
            let found = match self
                .catalog
                .working_keys(issuer, WorkingKeyRole::Tak, &pairs)
                .await
            {
                Ok(found) => found,
                Err(e) => {
                    let e = MacError::from(&e);
                    for (index, _) in wanted {
                        out[index] = MacOutcome::Error(e);
                    }
                    continue;
                }
            };
            self.records.keep(synced, &found);
            let by_key: HashMap<(DeviceId, KeyVersion), KeyRecord> = found
                .iter()
                .map(|w| ((w.device, w.version), KeyRecord::from(w)))
                .collect();
            for (index, item) in wanted {
                match by_key.get(&(item.device, item.version)) {
                    Some(rec) => place(&mut resolved, out, now, ik, rec, index, item),
                    None => out[index] = MacOutcome::Error(MacError::UnknownKeyVersion),
                }
            }
        }
        resolved
    }

    async fn usable_tak(&self, item: &MacItem) -> Result<KeyRecord> {
        self.usable_working_key(&item.issuer, item.device, item.version, WorkingKeyRole::Tak)
            .await
    }
}

/// The HSM part of one MAC check, run on a worker.
fn verify_one(
    hsm: &dyn Hsm,
    cache: &KeyCache,
    ik: &IssuerKeys,
    r: [u8; 16],
    item: &MacItem,
) -> Result<bool> {
    if item.algorithm.family() != ik.family {
        return Err(KmsError::AlgorithmFamily {
            algorithm: item.algorithm.as_str(),
            family: ik.family.as_str(),
        });
    }
    with_fresh_handles(cache, || {
        let keys = mac_keys(hsm, cache, ik, item.device, r, item.algorithm)?;
        mac::verify(
            hsm,
            &keys,
            item.algorithm,
            item.padding,
            &item.message,
            &item.mac,
        )
    })
}

/// The derived objects a MAC algorithm needs, each with only the usage it
/// needs; a vendor retail-MAC mechanism signs with the TAK itself, the
/// emulation also needs `K1K1`.
fn mac_keys(
    hsm: &dyn Hsm,
    cache: &KeyCache,
    ik: &IssuerKeys,
    device: DeviceId,
    r: [u8; 16],
    alg: MacAlgorithm,
) -> Result<MacKeys> {
    let vendor_retail = hsm.capabilities().vendor_retail_mac;
    let usage = match alg {
        MacAlgorithm::CmacTdes | MacAlgorithm::CmacAes => Usage {
            sign: true,
            ..Usage::NONE
        },
        MacAlgorithm::Iso9797M3 if vendor_retail => Usage {
            sign: true,
            ..Usage::NONE
        },
        _ => Usage::ENCRYPT,
    };
    let tak = cache.working(hsm, ik, device, r, usage)?;
    let k1k1 = if alg == MacAlgorithm::Iso9797M3 && !vendor_retail {
        let mut half = [0u8; 16];
        half[..8].copy_from_slice(&r[..8]);
        half[8..].copy_from_slice(&r[..8]);
        Some(cache.working(hsm, ik, device, half, Usage::ENCRYPT)?)
    } else {
        None
    };
    Ok(MacKeys { tak, k1k1 })
}
