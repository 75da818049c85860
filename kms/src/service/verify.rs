//! Transaction-MAC verification, one item ([`Kms::verify_mac`]) or many
//! ([`Kms::verify_macs`], "checks MACs in bulk": thousands of items in, one
//! answer per item out, in order).
//!
//! Working-key records come from memory (`records.rs`: one change-log read
//! per call, not one catalog read per item); the ones not held are read in
//! bulk. The resolved items are cut into contiguous chunks that run on all
//! HSM workers at once. A failure is confined to its item or
//! group; only a request over [`MAX_BULK_ITEMS`] fails as a whole.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::task::JoinSet;

use crate::db::now_ms;
use crate::error::{KmsError, Result};
use crate::hsm::{Hsm, Usage};
use crate::keys::{IssuerKeys, KeyCache, with_fresh_handles};
use crate::mac::{self, MacKeys};
use crate::service::Kms;
use crate::service::records::KeyRecord;
use crate::service::working_keys::not_usable;
use crate::types::{DeviceId, IssuerId, KeyVersion, MacAlgorithm, Padding, WorkingKeyRole};

/// The most items one bulk request may carry.
pub const MAX_BULK_ITEMS: usize = 10_000;

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

/// A bulk item whose issuer and working key are known.
struct Resolved {
    index: usize,
    issuer: Arc<IssuerKeys>,
    r: [u8; 16],
    item: MacItem,
}

/// The code of an item whose (device, version) has no working key.
const UNKNOWN_KEY_VERSION: &str = "unknown_key_version";

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
        out[index] = MacOutcome::Error(not_usable(rec.version, rec.state).code());
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

    /// Checks many MACs: items are grouped by key, each key's record is read
    /// once, and the groups are spread over the HSM workers. Answers come
    /// back in input order; one bad item never fails the batch. More than
    /// [`MAX_BULK_ITEMS`] items is [`KmsError::TooManyItems`], with nothing
    /// checked.
    pub async fn verify_macs(&self, items: Vec<MacItem>) -> Result<Vec<MacOutcome>> {
        if items.len() > MAX_BULK_ITEMS {
            return Err(KmsError::TooManyItems {
                len: items.len(),
                max: MAX_BULK_ITEMS,
            });
        }
        let mut out = vec![MacOutcome::Error("internal_error"); items.len()];
        let resolved = self.resolve(items, &mut out).await;
        self.verify_resolved(resolved, &mut out).await;
        Ok(out)
    }

    /// Finds each item's issuer and working key: from the records held in
    /// memory after one sync of the change log, the rest read from the
    /// catalog together, one issuer at a time. Items that cannot be
    /// resolved get their error in `out`.
    async fn resolve(&self, items: Vec<MacItem>, out: &mut [MacOutcome]) -> Vec<Resolved> {
        let synced = match self.records.sync(&self.catalog).await {
            Ok(s) => s,
            Err(e) => {
                out.fill(MacOutcome::Error(e.code()));
                return Vec::new();
            }
        };
        let now = now_ms();
        // A request names few issuers: a list, not a map.
        let mut issuers: Vec<(IssuerId, Result<Arc<IssuerKeys>, &'static str>)> = Vec::new();
        let mut resolved = Vec::with_capacity(items.len());
        let mut missing: Vec<(usize, usize, MacItem)> = Vec::new();
        for (index, item) in items.into_iter().enumerate() {
            let slot = match issuers.iter().position(|(id, _)| *id == item.issuer) {
                Some(slot) => slot,
                None => {
                    let ik = self.issuer_keys(&item.issuer).await;
                    issuers.push((item.issuer.clone(), ik.map(Arc::new).map_err(|e| e.code())));
                    issuers.len() - 1
                }
            };
            let ik = match &issuers[slot].1 {
                Ok(ik) => ik,
                Err(code) => {
                    out[index] = MacOutcome::Error(code);
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
                    for (index, _) in wanted {
                        out[index] = MacOutcome::Error(e.code());
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
                    None => out[index] = MacOutcome::Error(UNKNOWN_KEY_VERSION),
                }
            }
        }
        resolved
    }

    /// Runs the resolved items in chunks on every HSM worker at once.
    async fn verify_resolved(&self, mut resolved: Vec<Resolved>, out: &mut [MacOutcome]) {
        let chunks = (self.pool.workers() * 4).max(1);
        let per_chunk = resolved.len().div_ceil(chunks).max(1);
        let mut jobs = JoinSet::new();
        while !resolved.is_empty() {
            let rest = resolved.split_off(per_chunk.min(resolved.len()));
            let chunk = std::mem::replace(&mut resolved, rest);
            let pool = self.pool.clone();
            let cache = self.cache.clone();
            let indices: Vec<usize> = chunk.iter().map(|r| r.index).collect();
            jobs.spawn(async move {
                let result = pool
                    .run(move |hsm| {
                        Ok(chunk
                            .iter()
                            .map(|r| {
                                let outcome = match verify_one(hsm, &cache, &r.issuer, r.r, &r.item)
                                {
                                    Ok(true) => MacOutcome::Valid,
                                    Ok(false) => MacOutcome::Invalid,
                                    Err(e) => MacOutcome::Error(e.code()),
                                };
                                (r.index, outcome)
                            })
                            .collect::<Vec<_>>())
                    })
                    .await;
                (indices, result)
            });
        }
        while let Some(joined) = jobs.join_next().await {
            match joined {
                Ok((_, Ok(results))) => {
                    for (index, outcome) in results {
                        out[index] = outcome;
                    }
                }
                Ok((indices, Err(e))) => {
                    let code = e.code();
                    for index in indices {
                        out[index] = MacOutcome::Error(code);
                    }
                }
                Err(_) => {} // a panicked task leaves its items as internal_error
            }
        }
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
