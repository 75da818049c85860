//! Customer registration with maker-checker review (seed CN102004977A: the
//! customer applies, the bank reviews; on rejection the application goes back
//! or ends).
//!
//! ```text
//! apply ─▶ submitted ─approve─▶ approved   (the customer exists)
//!              │  ▲
//!           reject │ correct_and_resubmit
//!              ▼  │
//!           rejected ─close─▶ closed        (submitted ─close─▶ closed too)
//! ```
//!
//! The operator who submitted (or last resubmitted) an application may not
//! approve or reject it ([`ProvisioningError::SelfApproval`]); the schema
//! backs this for approvals. An application allocates its customer id when
//! it is made; the customer exists, and may be bound to devices, once the
//! application is approved. One approved customer per national id.
//!
//! The national id and the contact address are stored as given, returned to
//! the reviewer, and never logged or put in an audit note.

use keyward_kms::types::DeviceId;
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::Provisioning;
use crate::audit::{Action, Actor, AuditNote, Decision};
use crate::error::{ProvisioningError, Result};
use crate::store::{is_unique_violation, now_ms, parse_col};
use crate::types::{
    Account, ApplicationId, ApplicationState, Contact, CustomerApplication, CustomerId, NationalId,
    OperatorId, Reason,
};

/// An application as the reviewer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplicationView {
    pub id: ApplicationId,
    pub customer_id: CustomerId,
    pub state: ApplicationState,
    pub application: CustomerApplication,
    /// 1 for the first submission, +1 for each resubmission.
    pub revision: u32,
    pub submitted_by: String,
    pub submitted_at_ms: i64,
    /// Who approved, rejected or closed it, when, and why (reject/close).
    pub decided_by: Option<String>,
    pub decided_at_ms: Option<i64>,
    pub decision_reason: Option<String>,
}

/// A registered (approved) customer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Customer {
    pub id: CustomerId,
    pub application_id: ApplicationId,
    pub name: String,
    pub national_id: NationalId,
    pub accounts: Vec<Account>,
    pub contact: Contact,
    pub approved_by: String,
    pub approved_at_ms: i64,
}

/// Most applications one listing returns.
pub const MAX_LISTING: u32 = 1000;

const APP_COLUMNS: &str = "id, customer_id, state, name, national_id, accounts, contact_kind, \
     contact_address, revision, submitted_by, submitted_at_ms, decided_by, decided_at_ms, \
     decision_reason";

impl Provisioning {
    /// Records a customer's application, submitted by `submitted_by` (the maker).
    pub async fn apply(
        &self,
        mut application: CustomerApplication,
        submitted_by: &OperatorId,
    ) -> Decision<ApplicationView> {
        let id = ApplicationId::generate();
        let mut note = AuditNote::new(
            Actor::Operator(submitted_by.clone()),
            Action::Apply,
            format!("application:{id}"),
        );
        let result = async {
            application.validate()?;
            let customer_id = CustomerId::generate();
            note.detail("customer_id", &customer_id);
            let now = now_ms();
            self.store
                .retrying(|| async {
                    let mut tx = self.store.begin_write().await?;
                    sqlx::query(
                        "INSERT INTO prov_applications (id, customer_id, state, name, national_id, \
                         accounts, contact_kind, contact_address, revision, submitted_by, \
                         submitted_at_ms) VALUES ($1, $2, 'submitted', $3, $4, $5, $6, $7, 1, $8, $9)",
                    )
                    .bind(id.as_str())
                    .bind(customer_id.as_str())
                    .bind(application.name.as_str())
                    .bind(application.national_id.expose())
                    .bind(join_accounts(&application.accounts))
                    .bind(application.contact.kind.as_str())
                    .bind(application.contact.address())
                    .bind(submitted_by.as_str())
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    Ok(())
                })
                .await?;
            Ok(ApplicationView {
                id: id.clone(),
                customer_id,
                state: ApplicationState::Submitted,
                application,
                revision: 1,
                submitted_by: submitted_by.as_str().to_owned(),
                submitted_at_ms: now,
                decided_by: None,
                decided_at_ms: None,
                decision_reason: None,
            })
        }
        .await;
        note.finish(result)
    }

    /// One application, for the checker's review.
    pub async fn review(&self, id: &ApplicationId) -> Result<ApplicationView> {
        let sql = format!("SELECT {APP_COLUMNS} FROM prov_applications WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id.as_str())
            .fetch_optional(&self.store.pool)
            .await?
            .ok_or_else(|| ProvisioningError::UnknownApplication(id.clone()))?;
        view_from_row(&row)
    }

    /// Applications in `state`, oldest first (the review queue), at most
    /// `limit` (capped at [`MAX_LISTING`]).
    pub async fn applications(
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
            .bind(i64::from(limit.clamp(1, MAX_LISTING)))
            .fetch_all(&self.store.pool)
            .await?;
        rows.iter().map(view_from_row).collect()
    }

    /// The checker approves: the customer exists from now on.
    pub async fn approve(&self, id: &ApplicationId, operator: &OperatorId) -> Decision<Customer> {
        let mut note = AuditNote::new(
            Actor::Operator(operator.clone()),
            Action::Approve,
            format!("application:{id}"),
        );
        let result = async {
            let app = self.decidable(id, operator).await?;
            note.detail("customer_id", &app.customer_id);
            note.detail("revision", app.revision);
            let now = now_ms();
            let r = self
                .decide(
                    id,
                    app.revision,
                    ApplicationState::Approved,
                    operator,
                    None,
                    now,
                )
                .await;
            match r {
                Err(e) if is_unique_violation(&e) => return Err(ProvisioningError::CustomerExists),
                other => other?,
            }
            Ok(Customer {
                id: app.customer_id,
                application_id: app.id,
                name: app.application.name,
                national_id: app.application.national_id,
                accounts: app.application.accounts,
                contact: app.application.contact,
                approved_by: operator.as_str().to_owned(),
                approved_at_ms: now,
            })
        }
        .await;
        note.finish(result)
    }

    /// The checker rejects; the application goes back to the maker.
    pub async fn reject(
        &self,
        id: &ApplicationId,
        operator: &OperatorId,
        reason: &Reason,
    ) -> Decision<()> {
        let mut note = AuditNote::new(
            Actor::Operator(operator.clone()),
            Action::Reject,
            format!("application:{id}"),
        );
        note.detail("reason", reason);
        let result = async {
            let app = self.decidable(id, operator).await?;
            note.detail("revision", app.revision);
            self.decide(
                id,
                app.revision,
                ApplicationState::Rejected,
                operator,
                Some(reason),
                now_ms(),
            )
            .await
        }
        .await;
        note.finish(result)
    }

    /// The maker corrects a rejected application and submits it again; the
    /// corrector becomes its submitter (and may not decide it).
    pub async fn correct_and_resubmit(
        &self,
        id: &ApplicationId,
        mut corrected: CustomerApplication,
        operator: &OperatorId,
    ) -> Decision<ApplicationView> {
        let mut note = AuditNote::new(
            Actor::Operator(operator.clone()),
            Action::Resubmit,
            format!("application:{id}"),
        );
        let result = async {
            corrected.validate()?;
            let app = self.review(id).await?;
            if app.state != ApplicationState::Rejected {
                return Err(ProvisioningError::ApplicationState {
                    id: id.clone(),
                    state: app.state,
                    needed: "rejected",
                });
            }
            let revision = app.revision + 1;
            note.detail("revision", revision);
            let now = now_ms();
            let n = self
                .store
                .retrying(|| async {
                    let mut tx = self.store.begin_write().await?;
                    let n = sqlx::query(
                        "UPDATE prov_applications SET state = 'submitted', name = $3, \
                         national_id = $4, accounts = $5, contact_kind = $6, contact_address = $7, \
                         revision = $8, submitted_by = $9, submitted_at_ms = $10, \
                         decided_by = NULL, decided_at_ms = NULL, decision_reason = NULL \
                         WHERE id = $1 AND state = 'rejected' AND revision = $2",
                    )
                    .bind(id.as_str())
                    .bind(i64::from(app.revision))
                    .bind(corrected.name.as_str())
                    .bind(corrected.national_id.expose())
                    .bind(join_accounts(&corrected.accounts))
                    .bind(corrected.contact.kind.as_str())
                    .bind(corrected.contact.address())
                    .bind(i64::from(revision))
                    .bind(operator.as_str())
                    .bind(now)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    tx.commit().await?;
                    Ok(n)
                })
                .await?;
            if n != 1 {
                return Err(ProvisioningError::Conflict(
                    "the application changed meanwhile",
                ));
            }
            Ok(ApplicationView {
                id: id.clone(),
                customer_id: app.customer_id,
                state: ApplicationState::Submitted,
                application: corrected,
                revision,
                submitted_by: operator.as_str().to_owned(),
                submitted_at_ms: now,
                decided_by: None,
                decided_at_ms: None,
                decision_reason: None,
            })
        }
        .await;
        note.finish(result)
    }

    /// Ends an application for good (rejected, or withdrawn while submitted).
    pub async fn close(
        &self,
        id: &ApplicationId,
        operator: &OperatorId,
        reason: &Reason,
    ) -> Decision<()> {
        let mut note = AuditNote::new(
            Actor::Operator(operator.clone()),
            Action::Close,
            format!("application:{id}"),
        );
        note.detail("reason", reason);
        let result = async {
            let app = self.review(id).await?;
            if !matches!(
                app.state,
                ApplicationState::Rejected | ApplicationState::Submitted
            ) {
                return Err(ProvisioningError::ApplicationState {
                    id: id.clone(),
                    state: app.state,
                    needed: "rejected or submitted",
                });
            }
            note.detail("from", app.state);
            self.decide(
                id,
                app.revision,
                ApplicationState::Closed,
                operator,
                Some(reason),
                now_ms(),
            )
            .await
        }
        .await;
        note.finish(result)
    }

    /// A registered customer; [`ProvisioningError::CustomerNotApproved`] if
    /// the application behind the id is not approved.
    pub async fn customer(&self, id: &CustomerId) -> Result<Customer> {
        let sql = format!("SELECT {APP_COLUMNS} FROM prov_applications WHERE customer_id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id.as_str())
            .fetch_optional(&self.store.pool)
            .await?
            .ok_or_else(|| ProvisioningError::UnknownCustomer(id.clone()))?;
        let app = view_from_row(&row)?;
        if app.state != ApplicationState::Approved {
            return Err(ProvisioningError::CustomerNotApproved {
                customer: id.clone(),
                state: app.state,
            });
        }
        Ok(Customer {
            id: app.customer_id,
            application_id: app.id,
            name: app.application.name,
            national_id: app.application.national_id,
            accounts: app.application.accounts,
            contact: app.application.contact,
            approved_by: app.decided_by.ok_or(ProvisioningError::CorruptRecord(
                "prov_applications.decided_by",
            ))?,
            approved_at_ms: app.decided_at_ms.ok_or(ProvisioningError::CorruptRecord(
                "prov_applications.decided_at_ms",
            ))?,
        })
    }

    /// The devices bound to a customer.
    pub async fn customer_devices(&self, id: &CustomerId) -> Result<Vec<DeviceId>> {
        let rows = sqlx::query(
            "SELECT DISTINCT device_id FROM prov_bindings WHERE customer_id = $1 ORDER BY device_id",
        )
        .bind(id.as_str())
        .fetch_all(&self.store.pool)
        .await?;
        rows.iter()
            .map(|r| parse_col(r, "device_id", "prov_bindings.device_id"))
            .collect()
    }

    /// A submitted application that `operator` may decide.
    async fn decidable(
        &self,
        id: &ApplicationId,
        operator: &OperatorId,
    ) -> Result<ApplicationView> {
        let app = self.review(id).await?;
        if app.state != ApplicationState::Submitted {
            return Err(ProvisioningError::ApplicationState {
                id: id.clone(),
                state: app.state,
                needed: "submitted",
            });
        }
        if app.submitted_by == operator.as_str() {
            return Err(ProvisioningError::SelfApproval);
        }
        Ok(app)
    }

    /// Moves an application of `revision` to a decided state; a concurrent
    /// change (another decision, a resubmission) is a conflict.
    async fn decide(
        &self,
        id: &ApplicationId,
        revision: u32,
        to: ApplicationState,
        operator: &OperatorId,
        reason: Option<&Reason>,
        now: i64,
    ) -> Result<()> {
        let from_states = match to {
            ApplicationState::Closed => "('submitted', 'rejected')",
            _ => "('submitted')",
        };
        let sql = format!(
            "UPDATE prov_applications SET state = $3, decided_by = $4, decided_at_ms = $5, \
             decision_reason = $6 WHERE id = $1 AND revision = $2 AND state IN {from_states}"
        );
        let n = self
            .store
            .retrying(|| async {
                let mut tx = self.store.begin_write().await?;
                let n = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                    .bind(id.as_str())
                    .bind(i64::from(revision))
                    .bind(to.as_str())
                    .bind(operator.as_str())
                    .bind(now)
                    .bind(reason.map(|r| r.as_str().to_owned()))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                tx.commit().await?;
                Ok(n)
            })
            .await?;
        if n == 1 {
            Ok(())
        } else {
            Err(ProvisioningError::Conflict(
                "the application changed meanwhile",
            ))
        }
    }
}

fn join_accounts(accounts: &[Account]) -> String {
    accounts
        .iter()
        .map(Account::as_str)
        .collect::<Vec<_>>()
        .join(",")
}

pub(crate) fn split_accounts(s: &str, what: &'static str) -> Result<Vec<Account>> {
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
    let revision: i64 = row.try_get("revision")?;
    Ok(ApplicationView {
        id: parse_col(row, "id", "prov_applications.id")?,
        customer_id: parse_col(row, "customer_id", "prov_applications.customer_id")?,
        state: parse_col(row, "state", "prov_applications.state")?,
        application: CustomerApplication {
            name: row.try_get("name")?,
            national_id: NationalId::new(national_id)
                .map_err(corrupt("prov_applications.national_id"))?,
            accounts: split_accounts(&accounts, "prov_applications.accounts")?,
            contact: Contact::new(
                parse_col(row, "contact_kind", "prov_applications.contact_kind")?,
                address,
            )
            .map_err(corrupt("prov_applications.contact_address"))?,
        },
        revision: u32::try_from(revision).map_err(corrupt("prov_applications.revision"))?,
        submitted_by: row.try_get("submitted_by")?,
        submitted_at_ms: row.try_get("submitted_at_ms")?,
        decided_by: row.try_get("decided_by")?,
        decided_at_ms: row.try_get("decided_at_ms")?,
        decision_reason: row.try_get("decision_reason")?,
    })
}
