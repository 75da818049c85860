//! `prov_challenges`: challenges by id, several outstanding per (device,
//! purpose, scope), each used once. The domain rules are in `crate::challenges`.

use keyward_kms::db::Tx;
use keyward_kms::types::DeviceId;
use sqlx::Row;

use super::Store;
use crate::challenges::ChallengePurpose;
use crate::error::{ProvisioningError, Result};

/// A challenge as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredChallenge {
    /// 32 upper-case hex digits.
    pub id: String,
    pub device: DeviceId,
    pub purpose: &'static str,
    /// The issuer of a login challenge, `""` otherwise.
    pub scope: String,
    pub bytes: Vec<u8>,
    pub expires_at_ms: i64,
}

impl Store {
    /// Keeps `challenge`, and in the same transaction drops the device's
    /// expired challenges of that purpose and scope and the oldest ones beyond
    /// `max_outstanding`.
    pub(crate) async fn put_challenge(
        &self,
        challenge: &StoredChallenge,
        now: i64,
        max_outstanding: u32,
    ) -> Result<()> {
        self.db
            .write("put_challenge", |mut tx| async move {
                Self::put_challenge_in(&mut tx, challenge, now, max_outstanding).await?;
                Ok((tx, ()))
            })
            .await
    }

    /// [`Store::put_challenge`] in the caller's transaction.
    pub(crate) async fn put_challenge_in(
        tx: &mut Tx,
        challenge: &StoredChallenge,
        now: i64,
        max_outstanding: u32,
    ) -> Result<()> {
        let device = challenge.device.to_string();
        sqlx::query(
            "INSERT INTO prov_challenges \
             (id, device_id, purpose, scope, challenge, created_at_ms, expires_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(challenge.id.as_str())
        .bind(device.as_str())
        .bind(challenge.purpose)
        .bind(challenge.scope.as_str())
        .bind(hex::encode_upper(&challenge.bytes))
        .bind(now)
        .bind(challenge.expires_at_ms)
        .execute(&mut **tx)
        .await?;
        sqlx::query(
            "DELETE FROM prov_challenges WHERE device_id = $1 AND purpose = $2 \
             AND scope = $5 AND (expires_at_ms <= $3 OR id NOT IN (\
               SELECT id FROM prov_challenges WHERE device_id = $1 AND purpose = $2 \
               AND scope = $5 ORDER BY created_at_ms DESC, id DESC LIMIT $4))",
        )
        .bind(device.as_str())
        .bind(challenge.purpose)
        .bind(now)
        .bind(i64::from(max_outstanding))
        .bind(challenge.scope.as_str())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Deletes and returns challenge `id` if it is `device`'s for `purpose`
    /// and its scope
    /// (expired or not): one conditional `DELETE … RETURNING`, so of two
    /// concurrent answers at most one gets the row.
    pub(crate) async fn take_challenge(
        &self,
        id: &str,
        device: DeviceId,
        purpose: &ChallengePurpose,
    ) -> Result<Option<StoredChallenge>> {
        let row = self
            .db
            .write("take_challenge", |mut tx| async move {
                let row = sqlx::query(
                    "DELETE FROM prov_challenges WHERE id = $1 AND device_id = $2 AND purpose = $3 \
                     AND scope = $4 RETURNING challenge, expires_at_ms",
                )
                .bind(id)
                .bind(device.to_string())
                .bind(purpose.as_str())
                .bind(purpose.scope())
                .fetch_optional(&mut *tx)
                .await?;
                Ok::<_, ProvisioningError>((tx, row))
            })
            .await?;
        row.map(|row| stored(&row, id, device, purpose)).transpose()
    }

    /// Drops every outstanding challenge of `device` for `purpose`.
    pub(crate) async fn drop_challenges(
        &self,
        device: DeviceId,
        purpose: &ChallengePurpose,
    ) -> Result<()> {
        self.db
            .write("drop_challenges", |mut tx| async move {
                Self::drop_challenges_in(&mut tx, device, purpose).await?;
                Ok((tx, ()))
            })
            .await
    }

    /// [`Store::drop_challenges`] in the caller's transaction.
    pub(crate) async fn drop_challenges_in(
        tx: &mut Tx,
        device: DeviceId,
        purpose: &ChallengePurpose,
    ) -> Result<()> {
        sqlx::query(
            "DELETE FROM prov_challenges WHERE device_id = $1 AND purpose = $2 AND scope = $3",
        )
        .bind(device.to_string())
        .bind(purpose.as_str())
        .bind(purpose.scope())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Challenge `id` if it is `device`'s for `purpose` and its scope
    /// (expired or not), left in place: what a check reads before its
    /// transaction, which takes it with [`Store::take_challenge_in`].
    pub(crate) async fn challenge(
        &self,
        id: &str,
        device: DeviceId,
        purpose: &ChallengePurpose,
    ) -> Result<Option<StoredChallenge>> {
        let row = sqlx::query(
            "SELECT challenge, expires_at_ms FROM prov_challenges WHERE id = $1 \
             AND device_id = $2 AND purpose = $3 AND scope = $4",
        )
        .bind(id)
        .bind(device.to_string())
        .bind(purpose.as_str())
        .bind(purpose.scope())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| stored(&row, id, device, purpose)).transpose()
    }

    /// Deletes challenge `id` of `device` for `purpose` in the caller's
    /// transaction; `false` when it is gone already (another answer took
    /// it).
    pub(crate) async fn take_challenge_in(
        tx: &mut Tx,
        id: &str,
        device: DeviceId,
        purpose: &ChallengePurpose,
    ) -> Result<bool> {
        let n = sqlx::query(
            "DELETE FROM prov_challenges WHERE id = $1 AND device_id = $2 AND purpose = $3 \
             AND scope = $4",
        )
        .bind(id)
        .bind(device.to_string())
        .bind(purpose.as_str())
        .bind(purpose.scope())
        .execute(&mut **tx)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Deletes every expired challenge (any device, any purpose); returns
    /// how many, by purpose name.
    pub(crate) async fn purge_expired_challenges(&self, now: i64) -> Result<Vec<(String, u64)>> {
        let rows = self
            .db
            .write("purge_expired_challenges", |mut tx| async move {
                let rows = sqlx::query(
                    "DELETE FROM prov_challenges WHERE expires_at_ms <= $1 RETURNING purpose",
                )
                .bind(now)
                .fetch_all(&mut *tx)
                .await?;
                Ok::<_, ProvisioningError>((tx, rows))
            })
            .await?;
        let mut counts: Vec<(String, u64)> = Vec::new();
        for row in rows {
            let purpose: String = row.try_get("purpose")?;
            match counts.iter_mut().find(|(p, _)| *p == purpose) {
                Some((_, n)) => *n += 1,
                None => counts.push((purpose, 1)),
            }
        }
        Ok(counts)
    }
}

/// A challenge row (`challenge`, `expires_at_ms`) of `device` for `purpose`.
fn stored(
    row: &sqlx::any::AnyRow,
    id: &str,
    device: DeviceId,
    purpose: &ChallengePurpose,
) -> Result<StoredChallenge> {
    let hex_text: String = row.try_get("challenge")?;
    let bytes = hex::decode(&hex_text)
        .map_err(|_| ProvisioningError::CorruptRecord("prov_challenges.challenge"))?;
    Ok(StoredChallenge {
        id: id.to_owned(),
        device,
        purpose: purpose.as_str(),
        scope: purpose.scope().to_owned(),
        bytes,
        expires_at_ms: row.try_get("expires_at_ms")?,
    })
}
