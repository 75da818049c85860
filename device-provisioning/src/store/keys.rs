//! `prov_device_keys` (every public key a device certificate was issued for:
//! one key, one device, ever) and `prov_recertifications` (a re-certification
//! waiting for its second operator).

use keyward_kms::types::DeviceId;
use sqlx::Row;

use super::Store;
use crate::error::{ProvisioningError, Result};
use keyward_kms::db::{Tx, now_ms};

/// A re-certification as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PendingRecertification {
    pub device: DeviceId,
    /// Base64 of the CSR's DER.
    pub csr: String,
    pub spki_sha256: String,
    pub reason: String,
    pub requested_by: String,
    pub requested_at_ms: i64,
}

impl Store {
    /// Keeps a re-certification request in the caller's transaction;
    /// [`ProvisioningError::RecertificationPending`] if the device has one
    /// already.
    pub(crate) async fn put_recertification_in(
        tx: &mut Tx,
        r: &PendingRecertification,
    ) -> Result<()> {
        let put = sqlx::query(
            "INSERT INTO prov_recertifications \
             (device_id, csr, spki_sha256, reason, requested_by, requested_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(r.device.to_string())
        .bind(r.csr.as_str())
        .bind(r.spki_sha256.as_str())
        .bind(r.reason.as_str())
        .bind(r.requested_by.as_str())
        .bind(r.requested_at_ms)
        .execute(&mut **tx)
        .await;
        match put.map_err(ProvisioningError::from) {
            Err(e) if super::is_unique_violation(&e) => {
                Err(ProvisioningError::RecertificationPending(r.device))
            }
            other => other.map(|_| ()),
        }
    }

    /// The device's pending re-certification.
    pub(crate) async fn recertification(
        &self,
        device: DeviceId,
    ) -> Result<Option<PendingRecertification>> {
        let row = sqlx::query(
            "SELECT csr, spki_sha256, reason, requested_by, requested_at_ms \
             FROM prov_recertifications WHERE device_id = $1",
        )
        .bind(device.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(PendingRecertification {
                device,
                csr: row.try_get("csr")?,
                spki_sha256: row.try_get("spki_sha256")?,
                reason: row.try_get("reason")?,
                requested_by: row.try_get("requested_by")?,
                requested_at_ms: row.try_get("requested_at_ms")?,
            })
        })
        .transpose()
    }

    /// Takes the device's pending re-certification in the caller's
    /// transaction; false if there was none.
    pub(crate) async fn take_recertification_in(tx: &mut Tx, device: DeviceId) -> Result<bool> {
        let n = sqlx::query("DELETE FROM prov_recertifications WHERE device_id = $1")
            .bind(device.to_string())
            .execute(&mut **tx)
            .await?
            .rows_affected();
        Ok(n == 1)
    }

    /// Registers the key `spki_sha256` to `device` (a unique violation if
    /// any device has it) and makes `serial` the device's certificate, in
    /// the caller's transaction.
    pub(crate) async fn register_new_certificate_in(
        tx: &mut Tx,
        device: DeviceId,
        spki_sha256: &str,
        serial: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO prov_device_keys (spki_sha256, device_id, registered_at_ms) \
             VALUES ($1, $2, $3)",
        )
        .bind(spki_sha256)
        .bind(device.to_string())
        .bind(now_ms())
        .execute(&mut **tx)
        .await?;
        sqlx::query("UPDATE prov_devices SET cert_serial = $2 WHERE device_id = $1")
            .bind(device.to_string())
            .bind(serial)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}
