//! `prov_challenges`: a device's one outstanding genuine-device challenge.

use keyward_kms::types::DeviceId;
use sqlx::Row;

use super::Store;
use crate::check::CHALLENGE_LEN;
use crate::error::{ProvisioningError, Result};

/// A challenge as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StoredChallenge {
    pub bytes: [u8; CHALLENGE_LEN],
    pub expires_at_ms: i64,
}

impl Store {
    /// Keeps `challenge` as the device's one outstanding challenge, replacing
    /// any earlier one.
    pub(crate) async fn put_challenge(
        &self,
        device: DeviceId,
        challenge: &StoredChallenge,
        now: i64,
    ) -> Result<()> {
        self.retrying(|| async {
            let mut tx = self.begin_write().await?;
            sqlx::query(
                "INSERT INTO prov_challenges (device_id, challenge, created_at_ms, expires_at_ms) \
                 VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (device_id) DO UPDATE SET challenge = excluded.challenge, \
                 created_at_ms = excluded.created_at_ms, expires_at_ms = excluded.expires_at_ms",
            )
            .bind(device.to_string())
            .bind(hex::encode_upper(challenge.bytes))
            .bind(now)
            .bind(challenge.expires_at_ms)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// Deletes and returns the device's challenge (expired or not): a
    /// challenge is used once.
    pub(crate) async fn take_challenge(&self, device: DeviceId) -> Result<Option<StoredChallenge>> {
        let row = self
            .retrying(|| async {
                let mut tx = self.begin_write().await?;
                let row = sqlx::query(
                    "DELETE FROM prov_challenges WHERE device_id = $1 \
                     RETURNING challenge, expires_at_ms",
                )
                .bind(device.to_string())
                .fetch_optional(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(row)
            })
            .await?;
        let Some(row) = row else { return Ok(None) };
        let hex_text: String = row.try_get("challenge")?;
        let mut bytes = [0u8; CHALLENGE_LEN];
        hex::decode_to_slice(&hex_text, &mut bytes)
            .map_err(|_| ProvisioningError::CorruptRecord("prov_challenges.challenge"))?;
        Ok(Some(StoredChallenge {
            bytes,
            expires_at_ms: row.try_get("expires_at_ms")?,
        }))
    }
}
