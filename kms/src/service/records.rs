//! Working-key records held in memory, so a MAC check reads no catalog row
//! (docs/protocol.md §3.3, "Record cache").
//!
//! A record only ever loses usability: `active` → `retiring` (with an end
//! time) → `retired`, or a device retired outright. The end of a grace period
//! is a time held in the record and checked on every use; every other loss
//! is written to the catalog's change log in the transaction that makes it.
//! Before it trusts its records, a caller [`KeyRecords::sync`]s: one indexed
//! read of the changes after the last one this process saw, whose devices are
//! forgotten. So a change committed on any replica before a request starts
//! holds for that request on every replica.
//!
//! A record read from the catalog is kept only if no change was applied
//! between the sync before the read and the keeping (the generation
//! counter): a record read just before a change and kept just after it
//! would otherwise outlive it.
//!
//! Only usable records (active or retiring) are kept; a device whose records
//! are not here is read in bulk ([`crate::catalog::Catalog::working_keys`]).

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use lru::LruCache;

use crate::catalog::{Catalog, KeyState, WorkingKeyRecord};
use crate::db::now_ms;
use crate::error::Result;
use crate::types::{DeviceId, IssuerId, KeyVersion, WorkingKeyRole};

/// How long the catalog keeps change rows (pruned by the maintenance job).
pub const CHANGE_RETENTION_MS: i64 = 3_600_000;

/// A process that has not read the change log for this long may have missed
/// pruned rows: it forgets everything instead.
const RESYNC_AFTER_MS: i64 = CHANGE_RETENTION_MS / 2;

/// What a MAC, decryption or PIN check needs of a working key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyRecord {
    pub version: KeyVersion,
    pub role: WorkingKeyRole,
    pub r: [u8; 16],
    pub state: KeyState,
    pub retire_at_ms: Option<i64>,
}

impl From<&WorkingKeyRecord> for KeyRecord {
    fn from(w: &WorkingKeyRecord) -> Self {
        Self {
            version: w.version,
            role: w.role,
            r: w.r,
            state: w.state,
            retire_at_ms: w.retire_at_ms,
        }
    }
}

impl KeyRecord {
    /// See [`WorkingKeyRecord::usable_at`].
    pub fn usable_at(&self, now_ms: i64) -> bool {
        self.state.usable_at(self.retire_at_ms, now_ms)
    }
}

/// The records of this process, per issuer, least recently used devices
/// dropped beyond `capacity` devices per issuer.
#[derive(Debug)]
pub struct KeyRecords {
    capacity: NonZeroUsize,
    inner: Mutex<Inner>,
    /// One change-log read at a time; callers that queued behind a read
    /// which started after they arrived take its result.
    syncing: tokio::sync::Mutex<()>,
}

#[derive(Debug)]
struct Inner {
    issuers: HashMap<IssuerId, LruCache<DeviceId, Vec<KeyRecord>>>,
    /// The newest change applied; `None` before the first sync.
    seen: Option<i64>,
    synced_at_ms: i64,
    last_sync_started: Option<Instant>,
    /// Bumped whenever records are forgotten.
    generation: u64,
}

/// A token from [`KeyRecords::sync`]: records read from the catalog after
/// it may be kept with [`KeyRecords::keep`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Synced(u64);

impl KeyRecords {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: NonZeroUsize::new(capacity.max(1)).unwrap_or(NonZeroUsize::MIN),
            inner: Mutex::new(Inner {
                issuers: HashMap::new(),
                seen: None,
                synced_at_ms: 0,
                last_sync_started: None,
                generation: 0,
            }),
            syncing: tokio::sync::Mutex::new(()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies the catalog's changes since the last sync. Until it returns
    /// `Ok`, nothing held here may be used.
    pub async fn sync(&self, catalog: &Catalog) -> Result<Synced> {
        let arrived = Instant::now();
        let _one = self.syncing.lock().await;
        let (seen, stale) = {
            let inner = self.lock();
            if inner.last_sync_started.is_some_and(|s| s >= arrived) && inner.seen.is_some() {
                // A read that began after this caller arrived has finished.
                return Ok(Synced(inner.generation));
            }
            (
                inner.seen,
                now_ms().saturating_sub(inner.synced_at_ms) > RESYNC_AFTER_MS,
            )
        };
        let started = Instant::now();
        let started_ms = now_ms();
        match seen {
            Some(after) if !stale => {
                let (changed, newest) = catalog.key_changes_since(after).await?;
                let mut inner = self.lock();
                if !changed.is_empty() {
                    for (issuer, device) in &changed {
                        if let Some(devices) = inner.issuers.get_mut(issuer) {
                            devices.pop(device);
                        }
                    }
                    inner.generation += 1;
                }
                inner.seen = Some(newest);
                inner.synced_at_ms = started_ms;
                inner.last_sync_started = Some(started);
                Ok(Synced(inner.generation))
            }
            _ => {
                let newest = catalog.newest_key_change().await?;
                let mut inner = self.lock();
                inner.issuers.clear();
                inner.generation += 1;
                inner.seen = Some(newest);
                inner.synced_at_ms = started_ms;
                inner.last_sync_started = Some(started);
                Ok(Synced(inner.generation))
            }
        }
    }

    /// The record of `role` and `version`, if held.
    pub fn get(
        &self,
        issuer: &IssuerId,
        device: DeviceId,
        version: KeyVersion,
        role: WorkingKeyRole,
    ) -> Option<KeyRecord> {
        let mut inner = self.lock();
        let held = inner.issuers.get_mut(issuer)?.get(&device)?;
        held.iter()
            .find(|k| k.version == version && k.role == role)
            .copied()
    }

    /// Keeps records read from the catalog after `synced`, unless a change
    /// has been applied since (they may predate it) or they are not usable.
    pub fn keep<'a>(
        &self,
        synced: Synced,
        records: impl IntoIterator<Item = &'a WorkingKeyRecord>,
    ) {
        let mut inner = self.lock();
        if inner.generation != synced.0 {
            return;
        }
        let capacity = self.capacity;
        for rec in records {
            if !rec.state.usable() {
                continue;
            }
            let devices = inner
                .issuers
                .entry(rec.issuer.clone())
                .or_insert_with(|| LruCache::new(capacity));
            let key = KeyRecord::from(rec);
            let held = devices.get_or_insert_mut(rec.device, Vec::new);
            match held
                .iter_mut()
                .find(|k| k.version == key.version && k.role == key.role)
            {
                Some(slot) => *slot = key,
                None => held.push(key),
            }
        }
    }
}
