//! `prov_batches`, and the three writes of an import, each one transaction
//! over a batch and its devices: reserve (batch `importing`, devices
//! `manufactured` without a certificate), complete (serials recorded, batch
//! `complete`) and the undo of an import cut short.
//!
//! An `importing` batch belongs to one import attempt (`importer`) while its
//! lease (`lease_until_ms`) runs: completing, renewing and removing are
//! conditional on still holding it, so an attempt whose batch was taken over
//! by recovery (or an operator's abort) cannot complete it afterwards.

use keyward_kms::types::DeviceId;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::Store;
use crate::certifier::DeviceKeyKind;
use crate::error::{ProvisioningError, Result};
use crate::intake::{BatchRecord, BatchState};
use crate::types::{BatchId, OperatorId, SeSerial};
use keyward_kms::db::{int_col, now_ms, parse_col};

/// A device to reserve with its batch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NewDevice<'a> {
    pub device: DeviceId,
    pub psam: Option<&'a SeSerial>,
    pub esam: Option<&'a SeSerial>,
    pub model: &'a str,
    pub firmware: &'a str,
    pub key_kind: DeviceKeyKind,
    /// SHA-256 of the certified key's SPKI (`prov_device_keys`).
    pub spki_sha256: &'a str,
}

impl Store {
    /// A batch by id.
    pub(crate) async fn batch(&self, id: &BatchId) -> Result<Option<BatchRecord>> {
        let row = sqlx::query(
            "SELECT id, state, device_count, imported_by, imported_at_ms, completed_at_ms \
             FROM prov_batches WHERE id = $1",
        )
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(batch_from_row).transpose()
    }

    /// Writes the batch (`importing`) and its devices (`manufactured`, no
    /// certificate yet) in one transaction. A unique violation (a device, a
    /// serial or the batch registered concurrently) is returned as such.
    pub(crate) async fn reserve_batch(
        &self,
        batch_id: &BatchId,
        devices: &[NewDevice<'_>],
        operator: &OperatorId,
        lease: &Lease<'_>,
    ) -> Result<()> {
        let count = i64::try_from(devices.len()).unwrap_or(i64::MAX);
        self.db
            .write("reserve_batch", |mut tx| async move {
                let now = now_ms();
                sqlx::query(
                "INSERT INTO prov_batches (id, state, device_count, imported_by, imported_at_ms, \
                 importer, lease_until_ms) VALUES ($1, 'importing', $2, $3, $4, $5, $6)",
            )
            .bind(batch_id.as_str())
            .bind(count)
            .bind(operator.as_str())
            .bind(now)
            .bind(lease.importer)
            .bind(now.saturating_add(lease.ms))
            .execute(&mut *tx)
            .await?;
                for d in devices {
                    sqlx::query(
                        "INSERT INTO prov_devices (device_id, batch_id, psam_serial, esam_serial, \
                         model, firmware, key_kind, state, created_at_ms, state_changed_at_ms) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, 'manufactured', $8, $8)",
                    )
                    .bind(d.device.to_string())
                    .bind(batch_id.as_str())
                    .bind(d.psam.map(|s| s.as_str().to_owned()))
                    .bind(d.esam.map(|s| s.as_str().to_owned()))
                    .bind(d.model)
                    .bind(d.firmware)
                    .bind(d.key_kind.as_str())
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query(
                        "INSERT INTO prov_device_keys (spki_sha256, device_id, registered_at_ms) \
                         VALUES ($1, $2, $3)",
                    )
                    .bind(d.spki_sha256)
                    .bind(d.device.to_string())
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
                Ok((tx, ()))
            })
            .await
    }

    /// Records each device's certificate serial and completes the batch, if
    /// `importer` still holds it; `false` (nothing written) if it does not:
    /// the batch was taken over, and its certificates are being revoked.
    pub(crate) async fn complete_batch(
        &self,
        batch_id: &BatchId,
        importer: &str,
        certs: &[(DeviceId, &str)],
    ) -> Result<bool> {
        self.db
            .write("complete_batch", |mut tx| async move {
                // The claim first: a lost batch writes nothing at all.
                let done = sqlx::query(
                    "UPDATE prov_batches SET state = 'complete', completed_at_ms = $2, \
                     lease_until_ms = NULL \
                     WHERE id = $1 AND state = 'importing' AND importer = $3",
                )
                .bind(batch_id.as_str())
                .bind(now_ms())
                .bind(importer)
                .execute(&mut *tx)
                .await?;
                if done.rows_affected() != 1 {
                    return Ok((tx, false));
                }
                for (device, serial) in certs {
                    sqlx::query(
                        "UPDATE prov_devices SET cert_serial = $2 \
                         WHERE device_id = $1 AND batch_id = $3",
                    )
                    .bind(device.to_string())
                    .bind(*serial)
                    .bind(batch_id.as_str())
                    .execute(&mut *tx)
                    .await?;
                }
                Ok((tx, true))
            })
            .await
    }

    /// Extends `importer`'s lease on an `importing` batch to `until_ms`;
    /// `false` when it no longer holds the batch.
    pub(crate) async fn renew_lease(
        &self,
        batch_id: &BatchId,
        importer: &str,
        until_ms: i64,
    ) -> Result<bool> {
        self.db
            .write("renew_lease", |mut tx| async move {
                let renewed = sqlx::query(
                    "UPDATE prov_batches SET lease_until_ms = $3 \
                     WHERE id = $1 AND state = 'importing' AND importer = $2",
                )
                .bind(batch_id.as_str())
                .bind(importer)
                .bind(until_ms)
                .execute(&mut *tx)
                .await?;
                Ok((tx, renewed.rows_affected() == 1))
            })
            .await
    }

    /// `importing` batches whose lease ran out before `now_ms` (or that have
    /// none: left by a version without leases), oldest first.
    pub(crate) async fn stale_imports(&self, now_ms: i64) -> Result<Vec<BatchId>> {
        let rows = sqlx::query(
            "SELECT id FROM prov_batches WHERE state = 'importing' \
             AND (lease_until_ms IS NULL OR lease_until_ms < $1) ORDER BY imported_at_ms, id",
        )
        .bind(now_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok(parse_col(r, "id", "prov_batches.id")?))
            .collect()
    }

    /// Takes over an `importing` batch whose lease ran out: one conditional
    /// update, so of two replicas recovering at once exactly one wins.
    pub(crate) async fn claim_import(&self, batch_id: &BatchId, lease: &Lease<'_>) -> Result<bool> {
        self.db
            .write("claim_import", |mut tx| async move {
                let now = now_ms();
                let claimed = sqlx::query(
                    "UPDATE prov_batches SET importer = $2, lease_until_ms = $3 \
                     WHERE id = $1 AND state = 'importing' \
                     AND (lease_until_ms IS NULL OR lease_until_ms < $4)",
                )
                .bind(batch_id.as_str())
                .bind(lease.importer)
                .bind(now.saturating_add(lease.ms))
                .bind(now)
                .execute(&mut *tx)
                .await?;
                Ok((tx, claimed.rows_affected() == 1))
            })
            .await
    }

    /// Removes the reservation of an import that did not complete — its
    /// devices, their keys and the batch — if `importer` still holds it;
    /// `false` (nothing removed) if it does not.
    pub(crate) async fn remove_reservation(
        &self,
        batch_id: &BatchId,
        importer: &str,
    ) -> Result<bool> {
        let outcome = self.db.write("remove_reservation", |mut tx| async move {
            let held = sqlx::query(
                "SELECT id FROM prov_batches \
                 WHERE id = $1 AND state = 'importing' AND importer = $2",
            )
            .bind(batch_id.as_str())
            .bind(importer)
            .fetch_optional(&mut *tx)
            .await?;
            if held.is_none() {
                return Ok((tx, false));
            }
            sqlx::query(
                "DELETE FROM prov_device_keys WHERE device_id IN \
                 (SELECT device_id FROM prov_devices WHERE batch_id = $1)",
            )
            .bind(batch_id.as_str())
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM prov_devices WHERE batch_id = $1")
                .bind(batch_id.as_str())
                .execute(&mut *tx)
                .await?;
            let removed = sqlx::query(
                "DELETE FROM prov_batches \
                 WHERE id = $1 AND state = 'importing' AND importer = $2",
            )
            .bind(batch_id.as_str())
            .bind(importer)
            .execute(&mut *tx)
            .await?;
            if removed.rows_affected() != 1 {
                // Lost after the deletes: the error rolls them back.
                return Err(ProvisioningError::ImportAborted(batch_id.clone()));
            }
            Ok((tx, true))
        });
        match outcome.await {
            Err(ProvisioningError::ImportAborted(_)) => Ok(false),
            other => other,
        }
    }

    /// The device ids reserved or registered in a batch.
    pub(crate) async fn batch_device_ids(&self, batch_id: &BatchId) -> Result<Vec<DeviceId>> {
        let rows = sqlx::query(
            "SELECT device_id FROM prov_devices WHERE batch_id = $1 ORDER BY device_id",
        )
        .bind(batch_id.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok(parse_col(r, "device_id", "prov_devices.device_id")?))
            .collect()
    }
}

/// An import attempt's hold on a batch: its random id and lease length.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lease<'a> {
    pub importer: &'a str,
    pub ms: i64,
}

/// A batch state column.
pub(super) fn batch_state(row: &AnyRow, col: &str) -> Result<BatchState> {
    let state: String = row.try_get(col)?;
    match state.as_str() {
        "importing" => Ok(BatchState::Importing),
        "complete" => Ok(BatchState::Complete),
        _ => Err(ProvisioningError::CorruptRecord("prov_batches.state")),
    }
}

fn batch_from_row(row: &AnyRow) -> Result<BatchRecord> {
    Ok(BatchRecord {
        id: parse_col(row, "id", "prov_batches.id")?,
        state: batch_state(row, "state")?,
        device_count: int_col(row, "device_count", "prov_batches.device_count")?,
        imported_by: row.try_get("imported_by")?,
        imported_at_ms: row.try_get("imported_at_ms")?,
        completed_at_ms: row.try_get("completed_at_ms")?,
    })
}
