//! Bulk MAC verification ("checks MACs in bulk"): thousands of items in, one
//! answer per item out, in order.
//!
//! Items are grouped by (issuer, device, version) so each working-key record is
//! read from the catalog once; the resolved items are then cut into contiguous
//! chunks (so a chunk mostly hits one cached key) and the chunks run on all HSM
//! workers at once. A failure is confined to its item or group.

use std::collections::HashMap;

use tokio::task::JoinSet;

use crate::keys::IssuerKeys;
use crate::service::{Kms, MacItem, MacOutcome, verify_one};
use crate::types::{DeviceId, IssuerId, KeyVersion};

/// The most items one request may carry.
pub const MAX_BULK_ITEMS: usize = 10_000;

struct Resolved {
    index: usize,
    issuer: IssuerKeys,
    r: [u8; 16],
    item: MacItem,
}

pub(crate) async fn verify(kms: &Kms, items: Vec<MacItem>) -> Vec<MacOutcome> {
    let mut out = vec![MacOutcome::Error("internal_error"); items.len()];
    let mut groups: HashMap<(IssuerId, DeviceId, KeyVersion), Vec<(usize, MacItem)>> =
        HashMap::new();
    for (index, item) in items.into_iter().enumerate() {
        groups
            .entry((item.issuer.clone(), item.device, item.version))
            .or_default()
            .push((index, item));
    }
    let mut issuers: HashMap<IssuerId, Result<IssuerKeys, &'static str>> = HashMap::new();
    let mut resolved = Vec::new();
    for ((issuer, _, _), members) in groups {
        let ik = match issuers.get(&issuer) {
            Some(r) => r.clone(),
            None => {
                let r = kms.issuer_keys(&issuer).await.map_err(|e| e.code());
                issuers.insert(issuer.clone(), r.clone());
                r
            }
        };
        let tak = match ik {
            Ok(ik) => match kms.usable_tak(&members[0].1).await {
                Ok(rec) => Ok((ik, rec.r)),
                Err(e) => Err(e.code()),
            },
            Err(code) => Err(code),
        };
        match tak {
            Ok((ik, r)) => resolved.extend(members.into_iter().map(|(index, item)| Resolved {
                index,
                issuer: ik.clone(),
                r,
                item,
            })),
            Err(code) => {
                for (index, _) in members {
                    out[index] = MacOutcome::Error(code);
                }
            }
        }
    }

    let chunks = (kms.pool().workers() * 4).max(1);
    let per_chunk = resolved.len().div_ceil(chunks).max(1);
    let mut jobs = JoinSet::new();
    while !resolved.is_empty() {
        let rest = resolved.split_off(per_chunk.min(resolved.len()));
        let chunk = std::mem::replace(&mut resolved, rest);
        let pool = kms.pool().clone();
        let cache = kms.cache_arc();
        let retail_vendor = kms.retail_vendor();
        let indices: Vec<usize> = chunk.iter().map(|r| r.index).collect();
        jobs.spawn(async move {
            let result = pool
                .run(move |hsm| {
                    Ok(chunk
                        .iter()
                        .map(|r| {
                            let outcome = match verify_one(
                                hsm,
                                &cache,
                                &r.issuer,
                                r.r,
                                &r.item,
                                retail_vendor,
                            ) {
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
    out
}
