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
//! approve or reject it ([`ProvisioningError::SelfApproval`]), nor may an
//! operator whose name looks like theirs ([`OperatorId::same_person`]); the
//! schema backs the exact case for approvals. An application allocates its customer id when
//! it is made; the customer exists, and may be bound to devices, once the
//! application is approved. One approved customer per national id, in its
//! canonical form ([`NationalId`]).
//!
//! The national id is stored canonical, the contact address as given; both
//! are returned to the reviewer, and never logged or put in an audit note. A
//! reason typed by the checker is stored as typed on the application, and
//! noted in the trail redacted of this customer's data as well
//! ([`crate::audit::redact_free_text`]).

use keyward_kms::types::DeviceId;

use crate::Provisioning;
use crate::audit::{Action, Actor, AuditNote, Decision, RedactedText};
use crate::error::{ProvisioningError, Result};
use crate::store::is_unique_violation;
use crate::types::{
    Account, ApplicationId, ApplicationState, Contact, CustomerApplication, CustomerId, NationalId,
    OperatorId, Reason,
};
use keyward_kms::db::now_ms;

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
                .insert_application(&id, &customer_id, &application, submitted_by, now)
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
        self.store
            .application(id)
            .await?
            .ok_or_else(|| ProvisioningError::UnknownApplication(id.clone()))
    }

    /// Applications in `state`, oldest first (the review queue), at most
    /// `limit` (capped at [`MAX_LISTING`]).
    pub async fn applications(
        &self,
        state: ApplicationState,
        limit: u32,
    ) -> Result<Vec<ApplicationView>> {
        self.store
            .applications(state, limit.clamp(1, MAX_LISTING))
            .await
    }

    /// The checker approves: the customer exists from now on.
    pub async fn approve(&self, id: &ApplicationId, operator: &OperatorId) -> Decision<Customer> {
        let mut note = AuditNote::new(
            Actor::Operator(operator.clone()),
            Action::Approve,
            format!("application:{id}"),
        );
        let result = async {
            let app = decidable(self.review(id).await?, operator)?;
            if !app.application.national_id.is_canonical() {
                return Err(ProvisioningError::Invalid {
                    field: "national_id",
                    reason: "stored before national ids were canonical and not canonical: reject the application so that its maker corrects it",
                });
            }
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
        let app = self.review(id).await;
        let own = app
            .as_ref()
            .map_or(Vec::new(), |a| a.application.personal_terms());
        note.reason(reason, &own);
        let result = async {
            let app = decidable(app?, operator)?;
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
            let resubmitted = self
                .store
                .resubmit(id, app.revision, &corrected, revision, operator, now)
                .await?;
            if !resubmitted {
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
        let app = self.review(id).await;
        let own = app
            .as_ref()
            .map_or(Vec::new(), |a| a.application.personal_terms());
        note.reason(reason, &own);
        let result = async {
            let app = app?;
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
        let app = self
            .store
            .application_of_customer(id)
            .await?
            .ok_or_else(|| ProvisioningError::UnknownCustomer(id.clone()))?;
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
        self.store.customer_devices(id).await
    }

    /// Notes `reason` for an operation on `device`
    /// ([`Provisioning::device_reason_for_trail`]).
    pub(crate) async fn note_device_reason(
        &self,
        note: &mut AuditNote,
        device: DeviceId,
        reason: &Reason,
    ) {
        note.redacted_reason(self.device_reason_for_trail(device, reason).await);
    }

    /// `reason`, given for an operation on `device`, as the trail may keep
    /// it: redacted of the personal data of the customer the device is bound
    /// to as well, if any (a failed lookup leaves the general filter).
    pub async fn device_reason_for_trail(&self, device: DeviceId, reason: &Reason) -> RedactedText {
        let mut apps = Vec::new();
        for b in self.store.bindings(device).await.unwrap_or_default() {
            if let Ok(Some(app)) = self.store.application_of_customer(&b.customer).await {
                apps.push(app.application);
            }
        }
        let own: Vec<&str> = apps
            .iter()
            .flat_map(CustomerApplication::personal_terms)
            .collect();
        reason.for_trail(&own)
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
        let decided = self
            .store
            .decide(id, revision, to, operator, reason, now)
            .await?;
        if decided {
            Ok(())
        } else {
            Err(ProvisioningError::Conflict(
                "the application changed meanwhile",
            ))
        }
    }
}

/// `app` if it is submitted and `operator` is not its maker, nor looks like
/// them.
fn decidable(app: ApplicationView, operator: &OperatorId) -> Result<ApplicationView> {
    if app.state != ApplicationState::Submitted {
        return Err(ProvisioningError::ApplicationState {
            id: app.id.clone(),
            state: app.state,
            needed: "submitted",
        });
    }
    if operator.same_person(&app.submitted_by) {
        return Err(ProvisioningError::SelfApproval);
    }
    Ok(app)
}
