//! `prov_inits`: the original-key record of each (device, issuer): the KCVs
//! the last init package announced, its confirmation, and an operator's
//! pending reinit.

use keyward_kms::types::{DeviceId, IssuerId, Kcv, KcvMethod};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::Store;
use super::devices::{advance_in, state_in};
use crate::error::{ProvisioningError, Result};
use crate::init::{InitRecord, InitState};
use crate::types::{DeviceState, OperatorId, Reason};
use keyward_kms::db::{Tx, int_col, now_ms, parse_col};

const INIT_COLUMNS: &str = "issuer_id, state, kcv_method, tmk_kcv, auth_kcv, packages, \
     packaged_at_ms, confirmed_at_ms, reinit_by";

impl Store {
    /// The original-key record of (device, issuer), if any.
    pub(crate) async fn init_record(
        &self,
        device: DeviceId,
        issuer: &IssuerId,
    ) -> Result<Option<InitRecord>> {
        let sql = format!(
            "SELECT {INIT_COLUMNS} FROM prov_inits WHERE device_id = $1 AND issuer_id = $2"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(device.to_string())
            .bind(issuer.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| init_from_row(device, &r)).transpose()
    }

    /// Every issuer's original-key record of a device, by issuer.
    pub(crate) async fn init_records(&self, device: DeviceId) -> Result<Vec<InitRecord>> {
        let sql = format!(
            "SELECT {INIT_COLUMNS} FROM prov_inits WHERE device_id = $1 ORDER BY issuer_id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(device.to_string())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| init_from_row(device, r)).collect()
    }

    /// Records a delivered package as `pending` in the caller's transaction,
    /// if the device's state (read in it) passes `allowed`. A confirmed or
    /// refused record is overwritten only with an operator's reinit, which
    /// this consumes; false when there was none.
    pub(crate) async fn record_package_in<F>(
        tx: &mut Tx,
        device: DeviceId,
        issuer: &IssuerId,
        tmk: Kcv,
        auth: Kcv,
        allowed: F,
    ) -> Result<bool>
    where
        F: Fn(DeviceState) -> Result<()>,
    {
        allowed(state_in(tx, device).await?)?;
        let n = sqlx::query(
            "INSERT INTO prov_inits (device_id, issuer_id, state, kcv_method, tmk_kcv, \
             auth_kcv, packages, packaged_at_ms) \
             VALUES ($1, $2, 'pending', $3, $4, $5, 1, $6) \
             ON CONFLICT (device_id, issuer_id) DO UPDATE SET state = 'pending', \
               kcv_method = excluded.kcv_method, tmk_kcv = excluded.tmk_kcv, \
               auth_kcv = excluded.auth_kcv, packages = prov_inits.packages + 1, \
               packaged_at_ms = excluded.packaged_at_ms, confirmed_at_ms = NULL, \
               reinit_by = NULL, reinit_reason = NULL \
             WHERE prov_inits.state = 'pending' OR prov_inits.reinit_by IS NOT NULL",
        )
        .bind(device.to_string())
        .bind(issuer.as_str())
        .bind(tmk.method.as_str())
        .bind(tmk.hex())
        .bind(auth.hex())
        .bind(now_ms())
        .execute(&mut **tx)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Allows one more package for a confirmed or refused record, in the
    /// caller's transaction; false if the record is not confirmed or refused
    /// (a pending one needs none).
    pub(crate) async fn allow_reinit_in(
        tx: &mut Tx,
        device: DeviceId,
        issuer: &IssuerId,
        operator: &OperatorId,
        reason: &Reason,
    ) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE prov_inits SET reinit_by = $3, reinit_reason = $4 \
             WHERE device_id = $1 AND issuer_id = $2 \
               AND state IN ('initialised', 'refused')",
        )
        .bind(device.to_string())
        .bind(issuer.as_str())
        .bind(operator.as_str())
        .bind(reason.as_str())
        .execute(&mut **tx)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Settles the pending package of (device, issuer) confirmed from
    /// `packages` packages as `outcome`, in the caller's transaction; an
    /// `initialised` package moves a `verified` device to `initialised`
    /// (`true` when it did). A package that changed since it was read is a
    /// conflict.
    pub(crate) async fn settle_package_in(
        tx: &mut Tx,
        device: DeviceId,
        issuer: &IssuerId,
        outcome: InitState,
        packages: u32,
    ) -> Result<bool> {
        let now = now_ms();
        let n = sqlx::query(
            "UPDATE prov_inits SET state = $3, confirmed_at_ms = $4 \
             WHERE device_id = $1 AND issuer_id = $2 AND state = 'pending' \
               AND packages = $5",
        )
        .bind(device.to_string())
        .bind(issuer.as_str())
        .bind(outcome.as_str())
        .bind(now)
        .bind(i64::from(packages))
        .execute(&mut **tx)
        .await?
        .rows_affected();
        if n != 1 {
            return Err(ProvisioningError::Conflict(
                "the init package changed during confirmation",
            ));
        }
        Ok(outcome == InitState::Initialised
            && advance_in(
                tx,
                device,
                DeviceState::Verified,
                DeviceState::Initialised,
                now,
            )
            .await?)
    }
}

fn init_from_row(device: DeviceId, row: &AnyRow) -> Result<InitRecord> {
    let method: KcvMethod = parse_col(row, "kcv_method", "prov_inits.kcv_method")?;
    let kcv = |col: &str| -> Result<Kcv> {
        let v: String = row.try_get(col)?;
        Kcv::parse(method.as_str(), &v)
            .map_err(|_| ProvisioningError::CorruptRecord("prov_inits.kcv"))
    };
    Ok(InitRecord {
        device,
        issuer: parse_col(row, "issuer_id", "prov_inits.issuer_id")?,
        state: parse_col(row, "state", "prov_inits.state")?,
        tmk_kcv: kcv("tmk_kcv")?,
        auth_kcv: kcv("auth_kcv")?,
        packages: int_col(row, "packages", "prov_inits.packages")?,
        packaged_at_ms: row.try_get("packaged_at_ms")?,
        confirmed_at_ms: row.try_get("confirmed_at_ms")?,
        reinit_by: row.try_get("reinit_by")?,
    })
}
