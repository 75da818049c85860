//! The device registry's read side and the operator's lifecycle transitions.
//!
//! The lifecycle is [`DeviceState`]'s graph. [`Provisioning::transition`]
//! takes only the operator edges — `issued ⇄ suspended` and `→ retired` from
//! any state but `retired` (a device that fails its check, or is lost in
//! stock, must be retirable too). The evidence-bearing edges are refused here
//! with `invalid_transition`: `manufactured → verified` is taken only by
//! [`Provisioning::complete_check`], `verified → initialised` by
//! [`Provisioning::confirm_init`], `initialised → issued` by
//! [`Provisioning::bind`]. Retiring revokes the device certificate first
//! (fail closed: a device is never retired with a valid certificate), then
//! closes every working-key version of the device at every issuer.

use keyward_kms::types::DeviceId;
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::Provisioning;
use crate::audit::{Action, Actor, AuditNote, Decision};
use crate::certifier::{DeviceKeyKind, RevokeReason};
use crate::error::{ProvisioningError, Result};
use crate::types::{BatchId, DeviceState, OperatorId, Reason, SeSerial};
use keyward_kms::db::{now_ms, parse_col, parse_opt};

/// A registered device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    pub device_id: DeviceId,
    pub batch_id: BatchId,
    pub psam_serial: Option<SeSerial>,
    pub esam_serial: Option<SeSerial>,
    pub model: String,
    pub firmware: String,
    pub key_kind: DeviceKeyKind,
    /// `None` only while its batch is importing.
    pub cert_serial: Option<String>,
    pub state: DeviceState,
    /// Failed genuine-device checks so far.
    pub check_failures: u32,
    pub verified_at_ms: Option<i64>,
    pub created_at_ms: i64,
    pub state_changed_at_ms: i64,
}

const DEVICE_COLUMNS: &str = "d.device_id, d.batch_id, d.psam_serial, d.esam_serial, d.model, \
     d.firmware, d.key_kind, d.cert_serial, d.state, d.check_failures, d.verified_at_ms, \
     d.created_at_ms, d.state_changed_at_ms, b.state AS batch_state";

/// Most devices one listing returns.
pub const MAX_DEVICE_LISTING: u32 = 10_000;

impl Provisioning {
    /// A registered device (including one whose batch is still importing).
    pub async fn device(&self, device: DeviceId) -> Result<DeviceRecord> {
        Ok(self.device_and_batch_state(device).await?.0)
    }

    /// The devices of a batch, by device id.
    pub async fn batch_devices(&self, batch: &BatchId, limit: u32) -> Result<Vec<DeviceRecord>> {
        let sql = format!(
            "SELECT {DEVICE_COLUMNS} FROM prov_devices d JOIN prov_batches b ON b.id = d.batch_id \
             WHERE d.batch_id = $1 ORDER BY d.device_id LIMIT $2"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(batch.as_str())
            .bind(i64::from(limit.clamp(1, MAX_DEVICE_LISTING)))
            .fetch_all(&self.store.pool)
            .await?;
        rows.iter().map(device_from_row).collect()
    }

    /// Registered devices by device id, optionally only those in `state`
    /// and/or of `batch`; paged with `limit` (capped at
    /// [`MAX_DEVICE_LISTING`]) and `offset`.
    pub async fn devices(
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
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for v in values {
            query = query.bind(v);
        }
        let rows = query
            .bind(i64::from(limit.clamp(1, MAX_DEVICE_LISTING)))
            .bind(i64::from(offset))
            .fetch_all(&self.store.pool)
            .await?;
        rows.iter().map(device_from_row).collect()
    }

    async fn device_and_batch_state(&self, device: DeviceId) -> Result<(DeviceRecord, String)> {
        let sql = format!(
            "SELECT {DEVICE_COLUMNS} FROM prov_devices d JOIN prov_batches b ON b.id = d.batch_id \
             WHERE d.device_id = $1"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(device.to_string())
            .fetch_optional(&self.store.pool)
            .await?
            .ok_or(ProvisioningError::UnknownDevice(device))?;
        let batch_state: String = row.try_get("batch_state")?;
        Ok((device_from_row(&row)?, batch_state))
    }

    /// A device from a completed batch, with its certificate recorded: what
    /// the check and the init package start from. A device of a batch still
    /// importing is not registered yet.
    pub(crate) async fn checkable(&self, device: DeviceId) -> Result<DeviceRecord> {
        let (rec, batch_state) = self.device_and_batch_state(device).await?;
        if batch_state != "complete" || rec.cert_serial.is_none() {
            return Err(ProvisioningError::UnknownDevice(device));
        }
        Ok(rec)
    }

    /// An operator moves a device along an operator edge (module docs);
    /// returns the state it left.
    pub async fn transition(
        &self,
        device: DeviceId,
        to: DeviceState,
        operator: &OperatorId,
        reason: &Reason,
    ) -> Decision<DeviceState> {
        let mut note = AuditNote::new(
            Actor::Operator(operator.clone()),
            Action::Transition,
            format!("device:{device}"),
        );
        note.detail("to", to);
        note.detail("reason", reason);
        let result = self.transition_inner(device, to, &mut note).await;
        note.finish(result)
    }

    async fn transition_inner(
        &self,
        device: DeviceId,
        to: DeviceState,
        note: &mut AuditNote,
    ) -> Result<DeviceState> {
        let rec = self.device(device).await?;
        let from = rec.state;
        note.detail("from", from);
        if !from.operator_edge(to) {
            return Err(ProvisioningError::InvalidTransition { from, to });
        }
        if to == DeviceState::Retired
            && let Some(serial) = &rec.cert_serial
        {
            self.certifier.revoke(serial, RevokeReason::Retired).await?;
            note.detail("revoked_cert_serial", serial);
        }
        if to == DeviceState::Retired {
            // One identity: the symmetric keys go with the certificate.
            let keys = self.kms.retire_device_keys(device).await?;
            note.detail("key_versions_closed", keys);
        }
        let n = self
            .store
            .retrying(|| async {
                let mut tx = self.store.begin_write().await?;
                // Retiring wins over any concurrent change but a retirement;
                // suspend/resume need the state just read.
                let n = if to == DeviceState::Retired {
                    sqlx::query(
                        "UPDATE prov_devices SET state = 'retired', state_changed_at_ms = $2 \
                         WHERE device_id = $1 AND state <> 'retired'",
                    )
                    .bind(device.to_string())
                    .bind(now_ms())
                    .execute(&mut *tx)
                    .await?
                } else {
                    sqlx::query(
                        "UPDATE prov_devices SET state = $2, state_changed_at_ms = $3 \
                         WHERE device_id = $1 AND state = $4",
                    )
                    .bind(device.to_string())
                    .bind(to.as_str())
                    .bind(now_ms())
                    .bind(from.as_str())
                    .execute(&mut *tx)
                    .await?
                }
                .rows_affected();
                if to == DeviceState::Retired {
                    sqlx::query("DELETE FROM prov_challenges WHERE device_id = $1")
                        .bind(device.to_string())
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(n)
            })
            .await?;
        if n != 1 {
            return Err(ProvisioningError::Conflict(
                "the device changed state meanwhile",
            ));
        }
        Ok(from)
    }
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
