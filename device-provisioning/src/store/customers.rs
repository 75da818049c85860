//! `prov_applications`: customer applications; an approved application is
//! the customer record. Accounts are stored comma-separated.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::Store;
use crate::customers::ApplicationView;
use crate::error::{ProvisioningError, Result};
use crate::types::{
    Account, ApplicationId, ApplicationState, Contact, CustomerApplication, CustomerId, NationalId,
    OperatorId, Reason,
};
use keyward_kms::db::{Tx, int_col, parse_col};

const APP_COLUMNS: &str = "id, customer_id, state, name, national_id, accounts, contact_kind, \
     contact_address, revision, submitted_by, submitted_at_ms, decided_by, decided_at_ms, \
     decision_reason";

impl Store {
    /// Records a new application (`submitted`, revision 1) in the caller's
    /// transaction.
    pub(crate) async fn insert_application_in(tx: &mut Tx, app: &ApplicationView) -> Result<()> {
        let a = &app.application;
        sqlx::query(
            "INSERT INTO prov_applications (id, customer_id, state, name, national_id, \
             accounts, contact_kind, contact_address, revision, submitted_by, \
             submitted_at_ms) VALUES ($1, $2, 'submitted', $3, $4, $5, $6, $7, 1, $8, $9)",
        )
        .bind(app.id.as_str())
        .bind(app.customer_id.as_str())
        .bind(a.name.as_str())
        .bind(a.national_id.expose())
        .bind(join_accounts(&a.accounts))
        .bind(a.contact.kind.as_str())
        .bind(a.contact.address())
        .bind(app.submitted_by.as_str())
        .bind(app.submitted_at_ms)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// One application by id.
    pub(crate) async fn application(&self, id: &ApplicationId) -> Result<Option<ApplicationView>> {
        let sql = format!("SELECT {APP_COLUMNS} FROM prov_applications WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(view_from_row).transpose()
    }

    /// The application that allocated a customer id.
    pub(crate) async fn application_of_customer(
        &self,
        id: &CustomerId,
    ) -> Result<Option<ApplicationView>> {
        let sql = format!("SELECT {APP_COLUMNS} FROM prov_applications WHERE customer_id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(view_from_row).transpose()
    }

    /// Applications in `state`, oldest first, at most `limit`.
    pub(crate) async fn applications(
        &self,
        state: ApplicationState,
        limit: u32,
    ) -> Result<Vec<ApplicationView>> {
        let sql = format!(
            "SELECT {APP_COLUMNS} FROM prov_applications WHERE state = $1 \
             ORDER BY submitted_at_ms, id LIMIT $2"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(state.as_str())
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(view_from_row).collect()
    }

    /// A rejected application of `revision`, corrected and submitted again
    /// as `app` in the caller's transaction; false if it changed meanwhile.
    pub(crate) async fn resubmit_in(
        tx: &mut Tx,
        revision: u32,
        app: &ApplicationView,
    ) -> Result<bool> {
        let a = &app.application;
        let n = sqlx::query(
            "UPDATE prov_applications SET state = 'submitted', name = $3, \
             national_id = $4, accounts = $5, contact_kind = $6, contact_address = $7, \
             revision = $8, submitted_by = $9, submitted_at_ms = $10, \
             decided_by = NULL, decided_at_ms = NULL, decision_reason = NULL \
             WHERE id = $1 AND state = 'rejected' AND revision = $2",
        )
        .bind(app.id.as_str())
        .bind(i64::from(revision))
        .bind(a.name.as_str())
        .bind(a.national_id.expose())
        .bind(join_accounts(&a.accounts))
        .bind(a.contact.kind.as_str())
        .bind(a.contact.address())
        .bind(i64::from(app.revision))
        .bind(app.submitted_by.as_str())
        .bind(app.submitted_at_ms)
        .execute(&mut **tx)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Moves an application of `revision` to a decided state (approved and
    /// rejected from `submitted`, closed from `submitted` or `rejected`) in
    /// the caller's transaction; false if it changed meanwhile. Approving a
    /// second customer with the same national id is a unique violation.
    pub(crate) async fn decide_in(
        tx: &mut Tx,
        id: &ApplicationId,
        revision: u32,
        to: ApplicationState,
        operator: &OperatorId,
        reason: Option<&Reason>,
        now: i64,
    ) -> Result<bool> {
        let from_states = match to {
            ApplicationState::Closed => "('submitted', 'rejected')",
            _ => "('submitted')",
        };
        let sql = format!(
            "UPDATE prov_applications SET state = $3, decided_by = $4, decided_at_ms = $5, \
             decision_reason = $6 WHERE id = $1 AND revision = $2 AND state IN {from_states}"
        );
        let n = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id.as_str())
            .bind(i64::from(revision))
            .bind(to.as_str())
            .bind(operator.as_str())
            .bind(now)
            .bind(reason.map(|r| r.as_str().to_owned()))
            .execute(&mut **tx)
            .await?
            .rows_affected();
        Ok(n == 1)
    }
}

/// The backfill that rewrites national ids stored before the canonical form.
const CANONICAL_BACKFILL: &str = "national_id_canonical";

impl Store {
    /// Rewrites, once, the national ids stored before they were canonical
    /// (`110101-1990…`, Arabic-Indic digits) to their canonical form, so the
    /// one-customer-per-national-id index holds on old rows too. Two
    /// approved customers whose ids are one in canonical form (the look-alike
    /// duplicates this form exists to stop) are left as stored and logged by
    /// application id for review; an id that has no canonical form (a
    /// Cyrillic `Х`) is left as stored: such an application cannot be
    /// approved until it is corrected.
    pub(crate) async fn canonicalise_national_ids(&self) -> Result<()> {
        let conflicts = self
            .db
            .write("canonicalise_national_ids", |mut tx| async move {
                let none: Vec<String> = Vec::new();
                let done = sqlx::query("SELECT name FROM prov_backfills WHERE name = $1")
                    .bind(CANONICAL_BACKFILL)
                    .fetch_optional(&mut *tx)
                    .await?;
                if done.is_some() {
                    return Ok::<_, ProvisioningError>((tx, none));
                }
                let rows = sqlx::query("SELECT id, state, national_id FROM prov_applications")
                    .fetch_all(&mut *tx)
                    .await?;
                let mut ids = Vec::with_capacity(rows.len());
                for row in &rows {
                    let id: String = row.try_get("id")?;
                    let state: String = row.try_get("state")?;
                    let stored: String = row.try_get("national_id")?;
                    let canonical = NationalId::from_stored(stored.clone()).expose().to_owned();
                    ids.push((id, state == "approved", stored, canonical));
                }
                let mut approved = std::collections::HashMap::<&str, usize>::new();
                for (_, is_approved, _, canonical) in &ids {
                    if *is_approved {
                        *approved.entry(canonical.as_str()).or_default() += 1;
                    }
                }
                let mut conflicts = Vec::new();
                for (id, is_approved, stored, canonical) in &ids {
                    if stored == canonical {
                        continue;
                    }
                    if *is_approved && approved[canonical.as_str()] > 1 {
                        conflicts.push(id.clone());
                        continue;
                    }
                    sqlx::query("UPDATE prov_applications SET national_id = $2 WHERE id = $1")
                        .bind(id)
                        .bind(canonical)
                        .execute(&mut *tx)
                        .await?;
                }
                sqlx::query("INSERT INTO prov_backfills (name, done_at_ms) VALUES ($1, $2)")
                    .bind(CANONICAL_BACKFILL)
                    .bind(keyward_kms::db::now_ms())
                    .execute(&mut *tx)
                    .await?;
                Ok((tx, conflicts))
            })
            .await?;
        if !conflicts.is_empty() {
            tracing::warn!(
                applications = ?conflicts,
                "approved customers share a national id in canonical form; left as stored for review"
            );
        }
        Ok(())
    }
}

/// Accounts as one column (accounts are alphanumeric: no comma).
pub(super) fn join_accounts(accounts: &[Account]) -> String {
    accounts
        .iter()
        .map(Account::as_str)
        .collect::<Vec<_>>()
        .join(",")
}

/// An accounts column read back.
pub(super) fn split_accounts(s: &str, what: &'static str) -> Result<Vec<Account>> {
    s.split(',')
        .map(|a| {
            a.parse()
                .map_err(|_| ProvisioningError::CorruptRecord(what))
        })
        .collect()
}

fn corrupt<E>(what: &'static str) -> impl FnOnce(E) -> ProvisioningError {
    move |_| ProvisioningError::CorruptRecord(what)
}

fn view_from_row(row: &AnyRow) -> Result<ApplicationView> {
    let accounts: String = row.try_get("accounts")?;
    let national_id: String = row.try_get("national_id")?;
    let address: String = row.try_get("contact_address")?;
    Ok(ApplicationView {
        id: parse_col(row, "id", "prov_applications.id")?,
        customer_id: parse_col(row, "customer_id", "prov_applications.customer_id")?,
        state: parse_col(row, "state", "prov_applications.state")?,
        application: CustomerApplication {
            name: row.try_get("name")?,
            national_id: NationalId::from_stored(national_id),
            accounts: split_accounts(&accounts, "prov_applications.accounts")?,
            contact: Contact::new(
                parse_col(row, "contact_kind", "prov_applications.contact_kind")?,
                address,
            )
            .map_err(corrupt("prov_applications.contact_address"))?,
        },
        revision: int_col(row, "revision", "prov_applications.revision")?,
        submitted_by: row.try_get("submitted_by")?,
        submitted_at_ms: row.try_get("submitted_at_ms")?,
        decided_by: row.try_get("decided_by")?,
        decided_at_ms: row.try_get("decided_at_ms")?,
        decision_reason: row.try_get("decision_reason")?,
    })
}
