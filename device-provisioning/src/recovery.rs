//! Imports that did not finish: leases, recovery, an operator's abort, and
//! the standing of device certificates meanwhile.
//!
//! An import holds its `importing` batch through a lease (`importer`,
//! `lease_until_ms`), renewed by a [`LeaseKeeper`] on a timer of its own —
//! not between certificates, so an HSM stall does not let another replica
//! roll back a live import. When a process dies mid-import its lease runs
//! out; [`Provisioning::recover_stale_imports`] (run by the server at
//! start-up and on a schedule) claims such a batch with one conditional
//! update (of two replicas, one wins), revokes every still-valid certificate
//! of its devices, and removes the reservation: the batch is absent again and
//! the same file imports again. [`Provisioning::abort_batch`] does the same
//! for one batch on an operator's request, refusing while the lease is live.
//!
//! Until then an orphan certificate is no credential: the public listener
//! accepts only a device's registered certificate, and the OCSP responder
//! asks [`CertStanding`] (implemented here) and answers `unknown` for a
//! device certificate that is not the registered certificate of a device in
//! a `complete` batch.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use keyward_ca::ocsp::{CertStanding, StandingFuture};
use keyward_ca::{CaError, Serial};
use keyward_kms::db::now_ms;
use keyward_kms::types::DeviceId;

use crate::Provisioning;
use crate::audit::{Action, Actor, AuditNote, Decision};
use crate::certifier::RevokeReason;
use crate::error::{ProvisioningError, Result};
use crate::intake::BatchState;
use crate::store::{Lease, Store};
use crate::types::{BatchId, OperatorId};

/// How long an import holds its batch without renewing.
pub const DEFAULT_IMPORT_LEASE: Duration = Duration::from_secs(30);
/// Renewals per lease period: one every 5 s at the default lease, so a few
/// slow renewals in a row do not lose it.
const RENEWALS_PER_LEASE: u32 = 6;

/// A fresh id for one import attempt (not a secret: it only tells attempts
/// apart).
pub(crate) fn new_importer_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// Keeps an import attempt's lease alive on its own timer until dropped.
/// [`Self::lost`] turns true once the batch is no longer ours (renewal
/// matched no row) or renewals failed until the lease ran out; the holder
/// must then stop issuing.
#[derive(Debug)]
pub(crate) struct LeaseKeeper {
    lost: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl LeaseKeeper {
    pub(crate) fn start(store: Store, batch: BatchId, importer: String, lease: Duration) -> Self {
        let lost = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&lost);
        let every = (lease / RENEWALS_PER_LEASE).max(Duration::from_millis(10));
        let lease_ms = duration_ms(lease);
        let task = tokio::spawn(async move {
            let mut held_until = now_ms().saturating_add(lease_ms);
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let until = now_ms().saturating_add(lease_ms);
                match store.renew_lease(&batch, &importer, until).await {
                    Ok(true) => held_until = until,
                    Ok(false) => {
                        tracing::warn!(batch = %batch, "import lease taken over; stopping the import");
                        flag.store(true, Ordering::SeqCst);
                        return;
                    }
                    Err(e) if now_ms() >= held_until => {
                        tracing::error!(batch = %batch, code = e.code(), error = %e,
                            "import lease could not be renewed before it ran out; stopping the import");
                        flag.store(true, Ordering::SeqCst);
                        return;
                    }
                    Err(e) => tracing::warn!(batch = %batch, code = e.code(), error = %e,
                        "import lease renewal failed; retrying"),
                }
            }
        });
        Self { lost, task }
    }

    pub(crate) fn lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// What taking over an unfinished import undid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortReport {
    /// Devices whose reservation was removed.
    pub devices: usize,
    /// Certificates revoked (issued for those devices and still valid).
    pub revoked: usize,
}

impl Provisioning {
    /// Sets how long an import holds its batch without renewing (renewed
    /// every sixth of it); at least 100 ms.
    pub fn with_import_lease(mut self, lease: Duration) -> Self {
        self.import_lease = lease.max(Duration::from_millis(100));
        self
    }

    /// The import lease (also how often the server looks for stale imports).
    pub fn import_lease(&self) -> Duration {
        self.import_lease
    }

    pub(crate) fn lease_ms(&self) -> i64 {
        duration_ms(self.import_lease)
    }

    /// Takes over every `importing` batch whose lease ran out (or that has
    /// none) and undoes it: certificates revoked, reservation removed. Safe
    /// on several replicas at once (each batch is claimed by one). Returns
    /// one audit note per batch taken over (actor `system`, with counts),
    /// for the server to write; a batch another replica claimed first gets
    /// none. Only listing the stale batches fails the whole call.
    pub async fn recover_stale_imports(&self) -> Result<Vec<AuditNote>> {
        let stale = self.store.stale_imports(now_ms()).await?;
        let mut notes = Vec::new();
        for batch in stale {
            let mut note = AuditNote::new(
                Actor::System,
                Action::RecoverImport,
                format!("batch:{batch}"),
            );
            let taken = self.take_over(&batch, &mut note).await;
            let decided = match taken {
                Ok(None) => continue,
                Ok(Some(_)) => note.finish(Ok(())),
                Err(e) => {
                    tracing::error!(batch = %batch, code = e.code(), error = %e,
                        "recovering an unfinished import failed; retried on the next run");
                    note.finish(Err(e))
                }
            };
            notes.push(match decided {
                Ok(done) => done.note,
                Err(refused) => refused.note,
            });
        }
        Ok(notes)
    }

    /// An operator's abort of one unfinished import: the same undo as
    /// recovery, refused while the import's lease is live
    /// (`import_running`), for a complete batch (`batch_complete`) and an
    /// unknown one (`unknown_batch`).
    pub async fn abort_batch(
        &self,
        batch_id: &BatchId,
        operator: &OperatorId,
    ) -> Decision<AbortReport> {
        let mut note = AuditNote::new(
            Actor::Operator(operator.clone()),
            Action::AbortImport,
            format!("batch:{batch_id}"),
        );
        let result = self.abort(batch_id, &mut note).await;
        note.finish(result)
    }

    async fn abort(&self, batch_id: &BatchId, note: &mut AuditNote) -> Result<AbortReport> {
        let refusal = |b: Option<crate::intake::BatchRecord>| match b {
            None => ProvisioningError::UnknownBatch(batch_id.clone()),
            Some(b) if b.state == BatchState::Complete => {
                ProvisioningError::BatchComplete(batch_id.clone())
            }
            Some(_) => ProvisioningError::ImportRunning(batch_id.clone()),
        };
        let current = self.store.batch(batch_id).await?;
        if current
            .as_ref()
            .is_none_or(|b| b.state == BatchState::Complete)
        {
            return Err(refusal(current));
        }
        match self.take_over(batch_id, note).await? {
            Some(report) => Ok(report),
            // Not claimed: its lease is live, or it just completed or went.
            None => Err(refusal(self.store.batch(batch_id).await?)),
        }
    }

    /// Claims a stale `importing` batch and undoes it. `None` when it could
    /// not be claimed (its lease is live, or another replica was first).
    async fn take_over(
        &self,
        batch_id: &BatchId,
        note: &mut AuditNote,
    ) -> Result<Option<AbortReport>> {
        let importer = new_importer_id();
        let lease = Lease {
            importer: &importer,
            ms: self.lease_ms(),
        };
        if !self.store.claim_import(batch_id, &lease).await? {
            return Ok(None);
        }
        note.detail("importer", &importer);
        // Revoking a large batch signs many CRLs: keep the claim meanwhile.
        let keeper = LeaseKeeper::start(
            self.store.clone(),
            batch_id.clone(),
            importer.clone(),
            self.import_lease,
        );
        let devices = self.store.batch_device_ids(batch_id).await?;
        note.detail("devices", devices.len());
        let mut revoked = 0usize;
        let result = self
            .revoke_devices(batch_id, &devices, &keeper, &mut revoked)
            .await;
        note.detail("revoked", revoked);
        result?;
        // Revoked first, removed last: a crash in between leaves a batch
        // that the next run takes over again, never certificates nothing owns.
        let removed = self.store.remove_reservation(batch_id, &importer).await?;
        drop(keeper);
        if !removed {
            return Err(ProvisioningError::ImportAborted(batch_id.clone()));
        }
        tracing::info!(batch = %batch_id, devices = devices.len(), revoked,
            "unfinished import undone: certificates revoked, reservation removed");
        Ok(Some(AbortReport {
            devices: devices.len(),
            revoked,
        }))
    }

    /// Revokes every valid certificate of `devices`, in chunks (one CRL
    /// each), as long as the claim holds.
    async fn revoke_devices(
        &self,
        batch_id: &BatchId,
        devices: &[DeviceId],
        keeper: &LeaseKeeper,
        revoked: &mut usize,
    ) -> Result<()> {
        const CHUNK: usize = 250;
        let mut serials = Vec::new();
        for device in devices {
            serials.extend(self.certifier.valid_certificates(*device).await?);
        }
        for chunk in serials.chunks(CHUNK) {
            if keeper.lost() {
                return Err(ProvisioningError::ImportAborted(batch_id.clone()));
            }
            *revoked += self
                .certifier
                .revoke_all(chunk, RevokeReason::ImportAborted)
                .await?;
        }
        Ok(())
    }

    /// Whether `serial` is the registered certificate of `device` in a
    /// `complete` batch: the only device certificate OCSP may call `good`.
    pub async fn stands_as_credential(&self, device: DeviceId, serial: &str) -> Result<bool> {
        Ok(match self.store.device(device).await? {
            Some((rec, BatchState::Complete)) => rec
                .cert_serial
                .as_deref()
                .is_some_and(|s| s.eq_ignore_ascii_case(serial)),
            _ => false,
        })
    }
}

/// The OCSP responder's view of device certificates (see the module docs).
impl CertStanding for Provisioning {
    fn device_certificate_stands<'a>(
        &'a self,
        device: DeviceId,
        serial: &'a Serial,
    ) -> StandingFuture<'a> {
        Box::pin(async move {
            self.stands_as_credential(device, &serial.to_string())
                .await
                .map_err(|e| match e {
                    ProvisioningError::Database(db) => CaError::Database(db),
                    _ => CaError::CorruptRecord("prov_devices"),
                })
        })
    }
}
