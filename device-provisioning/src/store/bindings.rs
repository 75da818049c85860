//! `prov_bindings`: a device's secure element(s) bound to a customer, one
//! row per issuer.

use keyward_kms::types::{DeviceId, IssuerId};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::Store;
use super::customers::{join_accounts, split_accounts};
use super::devices::{advance_in, state_in};
use crate::binding::Binding;
use crate::error::Result;
use crate::types::{CustomerId, DeviceState};
use keyward_kms::db::{Tx, parse_col, parse_opt};

const BINDING_COLUMNS: &str = "device_id, issuer_id, customer_id, secure_element, psam_serial, \
     esam_serial, accounts, bound_by, bound_at_ms";

impl Store {
    /// Records `binding` if `allowed` passes the device's state and its
    /// existing bindings (issuer, customer), both read in the same
    /// transaction (the caller's); the device's first binding moves it
    /// `initialised → issued`. Returns the state the device was in. A second binding for
    /// the same issuer that raced this one is a unique violation.
    pub(crate) async fn bind_in<F>(
        tx: &mut Tx,
        binding: &Binding,
        allowed: F,
    ) -> Result<DeviceState>
    where
        F: Fn(DeviceState, &[(IssuerId, CustomerId)]) -> Result<()>,
    {
        let device = binding.device;
        let state = state_in(tx, device).await?;
        let existing =
            sqlx::query("SELECT issuer_id, customer_id FROM prov_bindings WHERE device_id = $1")
                .bind(device.to_string())
                .fetch_all(&mut **tx)
                .await?
                .iter()
                .map(|row| {
                    Ok((
                        parse_col(row, "issuer_id", "prov_bindings.issuer_id")?,
                        parse_col(row, "customer_id", "prov_bindings.customer_id")?,
                    ))
                })
                .collect::<Result<Vec<_>>>()?;
        allowed(state, &existing)?;
        sqlx::query(
            "INSERT INTO prov_bindings (device_id, issuer_id, customer_id, secure_element, \
             psam_serial, esam_serial, accounts, bound_by, bound_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(device.to_string())
        .bind(binding.issuer.as_str())
        .bind(binding.customer.as_str())
        .bind(binding.secure_element.as_str())
        .bind(binding.psam_serial.as_ref().map(|s| s.as_str().to_owned()))
        .bind(binding.esam_serial.as_ref().map(|s| s.as_str().to_owned()))
        .bind(join_accounts(&binding.accounts))
        .bind(binding.bound_by.as_str())
        .bind(binding.bound_at_ms)
        .execute(&mut **tx)
        .await?;
        if state == DeviceState::Initialised {
            advance_in(
                tx,
                device,
                DeviceState::Initialised,
                DeviceState::Issued,
                binding.bound_at_ms,
            )
            .await?;
        }
        Ok(state)
    }

    /// Every binding of a device, by issuer.
    pub(crate) async fn bindings(&self, device: DeviceId) -> Result<Vec<Binding>> {
        let sql = format!(
            "SELECT {BINDING_COLUMNS} FROM prov_bindings WHERE device_id = $1 ORDER BY issuer_id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(device.to_string())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(binding_from_row).collect()
    }

    /// The devices bound to a customer, by id.
    pub(crate) async fn customer_devices(&self, customer: &CustomerId) -> Result<Vec<DeviceId>> {
        let rows = sqlx::query(
            "SELECT DISTINCT device_id FROM prov_bindings WHERE customer_id = $1 ORDER BY device_id",
        )
        .bind(customer.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok(parse_col(r, "device_id", "prov_bindings.device_id")?))
            .collect()
    }
}

fn binding_from_row(row: &AnyRow) -> Result<Binding> {
    let accounts: String = row.try_get("accounts")?;
    Ok(Binding {
        device: parse_col(row, "device_id", "prov_bindings.device_id")?,
        issuer: parse_col(row, "issuer_id", "prov_bindings.issuer_id")?,
        customer: parse_col(row, "customer_id", "prov_bindings.customer_id")?,
        secure_element: parse_col(row, "secure_element", "prov_bindings.secure_element")?,
        psam_serial: parse_opt(row, "psam_serial", "prov_bindings.psam_serial")?,
        esam_serial: parse_opt(row, "esam_serial", "prov_bindings.esam_serial")?,
        accounts: split_accounts(&accounts, "prov_bindings.accounts")?,
        bound_by: row.try_get("bound_by")?,
        bound_at_ms: row.try_get("bound_at_ms")?,
    })
}
