//! `prov_devices`: the registry's reads (with the state of each device's
//! batch) and the device state changes that are not part of another table's
//! transaction.

use std::collections::HashSet;

use keyward_kms::types::DeviceId;
use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};

use super::Store;
use super::batches::batch_state;
use crate::error::{ProvisioningError, Result};
use crate::intake::BatchState;
use crate::lifecycle::DeviceRecord;
use crate::types::{BatchId, DeviceState};
use keyward_kms::db::{Tx, now_ms, parse_col, parse_opt};

/// Ids per `IN (…)` list when looking rows up in bulk.
const LOOKUP_CHUNK: usize = 400;

const DEVICE_COLUMNS: &str = "d.device_id, d.batch_id, d.psam_serial, d.esam_serial, d.model, \
     d.firmware, d.key_kind, d.cert_serial, d.state, d.check_failures, d.verified_at_ms, \
     d.created_at_ms, d.state_changed_at_ms, b.state AS batch_state";

/// A column of the device registry whose values are unique, for bulk
/// lookups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UniqueColumn {
    DeviceId,
    PsamSerial,
    EsamSerial,
    /// `prov_device_keys.spki_sha256`: every key a device ever had.
    DeviceKey,
}

impl UniqueColumn {
    /// (table, column).
    fn name(self) -> (&'static str, &'static str) {
        match self {
            Self::DeviceId => ("prov_devices", "device_id"),
            Self::PsamSerial => ("prov_devices", "psam_serial"),
            Self::EsamSerial => ("prov_devices", "esam_serial"),
            Self::DeviceKey => ("prov_device_keys", "spki_sha256"),
        }
    }
}

impl Store {
    /// Which of `values` are already in `column`.
    pub(crate) async fn existing(
        &self,
        column: UniqueColumn,
        values: &[String],
    ) -> Result<HashSet<String>> {
        let (table, column) = column.name();
        let mut out = HashSet::new();
        for chunk in values.chunks(LOOKUP_CHUNK) {
            let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            // `table` and `column` are constants; the values are bound.
            let sql = format!(
                "SELECT {column} AS v FROM {table} WHERE {column} IN ({})",
                placeholders.join(", ")
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for v in chunk {
                q = q.bind(v.as_str());
            }
            for row in q.fetch_all(&self.pool).await? {
                out.insert(row.try_get::<String, _>("v")?);
            }
        }
        Ok(out)
    }

    /// A registered device with the state of its batch.
    pub(crate) async fn device(
        &self,
        device: DeviceId,
    ) -> Result<Option<(DeviceRecord, BatchState)>> {
        let sql = format!(
            "SELECT {DEVICE_COLUMNS} FROM prov_devices d JOIN prov_batches b ON b.id = d.batch_id \
             WHERE d.device_id = $1"
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(device.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| Ok((device_from_row(&row)?, batch_state(&row, "batch_state")?)))
            .transpose()
    }

    /// Registered devices by device id, optionally only those in `state`
    /// and/or of `batch`, paged.
    pub(crate) async fn devices(
        &self,
        state: Option<DeviceState>,
        batch: Option<&BatchId>,
        limit: u32,
        offset: u32,
    ) -> Result<Vec<DeviceRecord>> {
        // Only the filters given become placeholders: an untyped NULL
        // parameter is not portable between SQLite and PostgreSQL.
        let mut conditions = Vec::new();
        let mut values: Vec<&str> = Vec::new();
        for (column, value) in [
            ("d.state", state.map(DeviceState::as_str)),
            ("d.batch_id", batch.map(BatchId::as_str)),
        ] {
            if let Some(v) = value {
                values.push(v);
                conditions.push(format!("{column} = ${}", values.len()));
            }
        }
        let filter = if conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conditions.join(" AND "))
        };
        let n = values.len();
        let sql = format!(
            "SELECT {DEVICE_COLUMNS} FROM prov_devices d JOIN prov_batches b ON b.id = d.batch_id \
             {filter} ORDER BY d.device_id LIMIT ${} OFFSET ${}",
            n + 1,
            n + 2
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for v in values {
            query = query.bind(v);
        }
        let rows = query
            .bind(i64::from(limit))
            .bind(i64::from(offset))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(device_from_row).collect()
    }

    /// A `manufactured` device becomes `verified`, in the caller's
    /// transaction; `false` when it is in another state.
    pub(crate) async fn mark_verified_in(tx: &mut Tx, device: DeviceId) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE prov_devices SET state = 'verified', verified_at_ms = $2, \
             state_changed_at_ms = $2 WHERE device_id = $1 AND state = 'manufactured'",
        )
        .bind(device.to_string())
        .bind(now_ms())
        .execute(&mut **tx)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// One more failed genuine-device check, in the caller's transaction;
    /// returns the new count.
    pub(crate) async fn count_check_failure_in(tx: &mut Tx, device: DeviceId) -> Result<u32> {
        let row = sqlx::query(
            "UPDATE prov_devices SET check_failures = check_failures + 1 \
             WHERE device_id = $1 RETURNING check_failures",
        )
        .bind(device.to_string())
        .fetch_optional(&mut **tx)
        .await?;
        let n: i64 = match row {
            Some(row) => row.try_get("check_failures")?,
            None => 0,
        };
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    /// Clears a device's failed-check counter in the caller's transaction;
    /// the count it held.
    pub(crate) async fn reset_check_failures_in(tx: &mut Tx, device: DeviceId) -> Result<u32> {
        let row = sqlx::query("SELECT check_failures FROM prov_devices WHERE device_id = $1")
            .bind(device.to_string())
            .fetch_optional(&mut **tx)
            .await?;
        let n: i64 = match row {
            Some(row) => row.try_get("check_failures")?,
            None => 0,
        };
        sqlx::query("UPDATE prov_devices SET check_failures = 0 WHERE device_id = $1")
            .bind(device.to_string())
            .execute(&mut **tx)
            .await?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    /// `from → to` (an operator edge other than retiring) in the caller's
    /// transaction; false if the device was no longer in `from`.
    pub(crate) async fn change_state_in(
        tx: &mut Tx,
        device: DeviceId,
        from: DeviceState,
        to: DeviceState,
    ) -> Result<bool> {
        advance_in(tx, device, from, to, now_ms()).await
    }

    /// Retires a device from whatever state it is in (a retirement wins over
    /// any concurrent change but another retirement) and drops its
    /// outstanding challenge, in the caller's transaction; false if it was
    /// already retired.
    pub(crate) async fn retire_in(tx: &mut Tx, device: DeviceId) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE prov_devices SET state = 'retired', state_changed_at_ms = $2 \
             WHERE device_id = $1 AND state <> 'retired'",
        )
        .bind(device.to_string())
        .bind(now_ms())
        .execute(&mut **tx)
        .await?
        .rows_affected();
        sqlx::query("DELETE FROM prov_challenges WHERE device_id = $1")
            .bind(device.to_string())
            .execute(&mut **tx)
            .await?;
        Ok(n == 1)
    }
}

/// A device's state read inside another table's write transaction;
/// [`ProvisioningError::UnknownDevice`] if it is not registered.
pub(super) async fn state_in(tx: &mut Tx, device: DeviceId) -> Result<DeviceState> {
    let row = sqlx::query("SELECT state FROM prov_devices WHERE device_id = $1")
        .bind(device.to_string())
        .fetch_optional(&mut **tx)
        .await?
        .ok_or(ProvisioningError::UnknownDevice(device))?;
    Ok(parse_col(&row, "state", "prov_devices.state")?)
}

/// Moves a device `from → to` at `now` inside a write transaction (an
/// operator edge, or the first binding or confirmed keys inside another
/// table's); false if it was not in `from`.
pub(super) async fn advance_in(
    tx: &mut Tx,
    device: DeviceId,
    from: DeviceState,
    to: DeviceState,
    now: i64,
) -> Result<bool> {
    let n = sqlx::query(
        "UPDATE prov_devices SET state = $3, state_changed_at_ms = $2 \
         WHERE device_id = $1 AND state = $4",
    )
    .bind(device.to_string())
    .bind(now)
    .bind(to.as_str())
    .bind(from.as_str())
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(n == 1)
}

fn device_from_row(row: &AnyRow) -> Result<DeviceRecord> {
    let failures: i64 = row.try_get("check_failures")?;
    Ok(DeviceRecord {
        device_id: parse_col(row, "device_id", "prov_devices.device_id")?,
        batch_id: parse_col(row, "batch_id", "prov_devices.batch_id")?,
        psam_serial: parse_opt(row, "psam_serial", "prov_devices.psam_serial")?,
        esam_serial: parse_opt(row, "esam_serial", "prov_devices.esam_serial")?,
        model: row.try_get("model")?,
        firmware: row.try_get("firmware")?,
        key_kind: parse_col(row, "key_kind", "prov_devices.key_kind")?,
        cert_serial: row.try_get("cert_serial")?,
        state: parse_col(row, "state", "prov_devices.state")?,
        check_failures: u32::try_from(failures).unwrap_or(u32::MAX),
        verified_at_ms: row.try_get("verified_at_ms")?,
        created_at_ms: row.try_get("created_at_ms")?,
        state_changed_at_ms: row.try_get("state_changed_at_ms")?,
    })
}
