//! `prov_batches`, and the three writes of an import, each one transaction
//! over a batch and its devices: reserve (batch `importing`, devices
//! `manufactured` without a certificate), complete (serials recorded, batch
//! `complete`) and the undo of an import cut short.

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
    ) -> Result<()> {
        let count = i64::try_from(devices.len()).unwrap_or(i64::MAX);
        self.retrying(|| async {
            let now = now_ms();
            let mut tx = self.begin_write().await?;
            sqlx::query(
                "INSERT INTO prov_batches (id, state, device_count, imported_by, imported_at_ms) \
                 VALUES ($1, 'importing', $2, $3, $4)",
            )
            .bind(batch_id.as_str())
            .bind(count)
            .bind(operator.as_str())
            .bind(now)
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
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// Records each device's certificate serial and completes the batch.
    pub(crate) async fn complete_batch(
        &self,
        batch_id: &BatchId,
        certs: &[(DeviceId, &str)],
    ) -> Result<()> {
        self.retrying(|| async {
            let mut tx = self.begin_write().await?;
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
            sqlx::query(
                "UPDATE prov_batches SET state = 'complete', completed_at_ms = $2 \
                 WHERE id = $1 AND state = 'importing'",
            )
            .bind(batch_id.as_str())
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// Removes the reservation of an import that did not complete: its
    /// devices, and the batch while it is still `importing`.
    pub(crate) async fn remove_reservation(&self, batch_id: &BatchId) -> Result<()> {
        self.retrying(|| async {
            let mut tx = self.begin_write().await?;
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
            sqlx::query("DELETE FROM prov_batches WHERE id = $1 AND state = 'importing'")
                .bind(batch_id.as_str())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }
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
