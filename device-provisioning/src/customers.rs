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
use crate::audit::{Action, Actor, AuditNote, Decision, Prepared, RedactedText, Refused};
use crate::error::{ProvisioningError, Result};
use crate::store::{Store, is_unique_violation};
use crate::types::{
    Account, ApplicationId, ApplicationState, Contact, CustomerApplication, CustomerId, NationalId,
    OperatorId, Reason,
};
use keyward_kms::db::{Tx, now_ms};

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

/// An application moved to a decided state, checked before its
/// transaction ([`Provisioning::prepare_reject`],
/// [`Provisioning::prepare_close`], [`Provisioning::prepare_approve`]).
#[derive(Debug, Clone)]
pub struct ApplicationDecision {
    id: ApplicationId,
    revision: u32,
    to: ApplicationState,
    operator: OperatorId,
    reason: Option<Reason>,
    now: i64,
}

impl ApplicationDecision {
    /// The move in `tx`; a conflict if the application changed meanwhile.
    async fn apply_in(&self, tx: &mut Tx) -> Result<()> {
        let decided = Store::decide_in(
            tx,
            &self.id,
            self.revision,
            self.to,
            &self.operator,
            self.reason.as_ref(),
            self.now,
        )
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

/// An approval checked before its transaction: the move and the customer
/// it makes.
#[derive(Debug, Clone)]
pub struct Approval {
    decision: ApplicationDecision,
    customer: Customer,
}

/// A rejected application corrected, checked before its transaction: the
/// revision it replaces and the application as it will stand.
#[derive(Debug, Clone)]
pub struct Resubmission {
    from_revision: u32,
    view: ApplicationView,
}

impl Provisioning {
    /// Records a customer's application, submitted by `submitted_by` (the
    /// maker). In a unit of work of its own; see [`Provisioning::apply_in`].
    pub async fn apply(
        &self,
        application: CustomerApplication,
        submitted_by: &OperatorId,
    ) -> Decision<ApplicationView> {
        let step = self.prepare_apply(application, submitted_by)?;
        self.commit("apply", step.note(), |mut tx| {
            let step = step.clone();
            async move {
                let done = Self::apply_in(&mut tx, step).await;
                (tx, done)
            }
        })
        .await
    }

    /// [`Provisioning::apply`]'s checks and ids, before its transaction.
    pub fn prepare_apply(
        &self,
        application: CustomerApplication,
        submitted_by: &OperatorId,
    ) -> Result<Prepared<ApplicationView>, Box<Refused>> {
        let id = ApplicationId::generate();
        let mut note = AuditNote::new(
            Actor::Operator(submitted_by.clone()),
            Action::Apply,
            format!("application:{id}"),
        );
        let mut application = application;
        if let Err(e) = application.validate() {
            return Err(note.refused(e));
        }
        let customer_id = CustomerId::generate();
        note.detail("customer_id", &customer_id);
        let input = ApplicationView {
            id,
            customer_id,
            state: ApplicationState::Submitted,
            application,
            revision: 1,
            submitted_by: submitted_by.as_str().to_owned(),
            submitted_at_ms: now_ms(),
            decided_by: None,
            decided_at_ms: None,
            decision_reason: None,
        };
        Ok(Prepared { input, note })
    }

    /// Records the application ([`Provisioning::prepare_apply`]) in the
    /// caller's transaction.
    pub async fn apply_in(
        tx: &mut Tx,
        step: Prepared<ApplicationView>,
    ) -> Decision<ApplicationView> {
        let Prepared { input, note } = step;
        let result = Store::insert_application_in(tx, &input).await;
        note.finish(result.map(|()| input))
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

    /// The checker approves: the customer exists from now on. In a unit of
    /// work of its own; see [`Provisioning::approve_in`].
    pub async fn approve(&self, id: &ApplicationId, operator: &OperatorId) -> Decision<Customer> {
        let step = self.prepare_approve(id, operator).await?;
        self.commit("approve", step.note(), |mut tx| {
            let step = step.clone();
            async move {
                let done = Self::approve_in(&mut tx, step).await;
                (tx, done)
            }
        })
        .await
    }

    /// [`Provisioning::approve`]'s reads and checks, before its transaction.
    pub async fn prepare_approve(
        &self,
        id: &ApplicationId,
        operator: &OperatorId,
    ) -> Result<Prepared<Approval>, Box<Refused>> {
        let mut note = AuditNote::new(
            Actor::Operator(operator.clone()),
            Action::Approve,
            format!("application:{id}"),
        );
        let read = async {
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
            Ok(Approval {
                decision: ApplicationDecision {
                    id: id.clone(),
                    revision: app.revision,
                    to: ApplicationState::Approved,
                    operator: operator.clone(),
                    reason: None,
                    now,
                },
                customer: Customer {
                    id: app.customer_id,
                    application_id: app.id,
                    name: app.application.name,
                    national_id: app.application.national_id,
                    accounts: app.application.accounts,
                    contact: app.application.contact,
                    approved_by: operator.as_str().to_owned(),
                    approved_at_ms: now,
                },
            })
        }
        .await;
        match read {
            Ok(input) => Ok(Prepared { input, note }),
            Err(e) => Err(note.refused(e)),
        }
    }

    /// The approval in the caller's transaction; a second customer with the
    /// same national id is `customer_exists`.
    pub async fn approve_in(tx: &mut Tx, step: Prepared<Approval>) -> Decision<Customer> {
        let Prepared { input, note } = step;
        let result = match input.decision.apply_in(tx).await {
            Err(e) if is_unique_violation(&e) => Err(ProvisioningError::CustomerExists),
            Err(e) => Err(e),
            Ok(()) => Ok(input.customer),
        };
        note.finish(result)
    }

    /// The checker rejects; the application goes back to the maker. In a
    /// unit of work of its own; see [`Provisioning::application_decision_in`].
    pub async fn reject(
        &self,
        id: &ApplicationId,
        operator: &OperatorId,
        reason: &Reason,
    ) -> Decision<()> {
        let step = self.prepare_reject(id, operator, reason).await?;
        self.commit_application_decision(step).await
    }

    /// [`Provisioning::reject`]'s reads and checks, before its transaction.
    pub async fn prepare_reject(
        &self,
        id: &ApplicationId,
        operator: &OperatorId,
        reason: &Reason,
    ) -> Result<Prepared<ApplicationDecision>, Box<Refused>> {
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
        let read = app.and_then(|app| decidable(app, operator));
        match read {
            Ok(app) => {
                note.detail("revision", app.revision);
                Ok(Prepared {
                    input: ApplicationDecision {
                        id: id.clone(),
                        revision: app.revision,
                        to: ApplicationState::Rejected,
                        operator: operator.clone(),
                        reason: Some(reason.clone()),
                        now: now_ms(),
                    },
                    note,
                })
            }
            Err(e) => Err(note.refused(e)),
        }
    }

    /// A rejection or closing in the caller's transaction.
    pub async fn application_decision_in(
        tx: &mut Tx,
        step: Prepared<ApplicationDecision>,
    ) -> Decision<()> {
        let Prepared { input, note } = step;
        note.finish(input.apply_in(tx).await)
    }

    async fn commit_application_decision(
        &self,
        step: Prepared<ApplicationDecision>,
    ) -> Decision<()> {
        self.commit("application_decision", step.note(), |mut tx| {
            let step = step.clone();
            async move {
                let done = Self::application_decision_in(&mut tx, step).await;
                (tx, done)
            }
        })
        .await
    }

    /// The maker corrects a rejected application and submits it again; the
    /// corrector becomes its submitter (and may not decide it). In a unit of
    /// work of its own; see [`Provisioning::resubmit_in`].
    pub async fn correct_and_resubmit(
        &self,
        id: &ApplicationId,
        corrected: CustomerApplication,
        operator: &OperatorId,
    ) -> Decision<ApplicationView> {
        let step = self.prepare_resubmit(id, corrected, operator).await?;
        self.commit("resubmit", step.note(), |mut tx| {
            let step = step.clone();
            async move {
                let done = Self::resubmit_in(&mut tx, step).await;
                (tx, done)
            }
        })
        .await
    }

    /// [`Provisioning::correct_and_resubmit`]'s reads and checks, before its
    /// transaction.
    pub async fn prepare_resubmit(
        &self,
        id: &ApplicationId,
        corrected: CustomerApplication,
        operator: &OperatorId,
    ) -> Result<Prepared<Resubmission>, Box<Refused>> {
        let mut note = AuditNote::new(
            Actor::Operator(operator.clone()),
            Action::Resubmit,
            format!("application:{id}"),
        );
        let mut corrected = corrected;
        let read = async {
            corrected.validate()?;
            let app = self.review(id).await?;
            if app.state != ApplicationState::Rejected {
                return Err(ProvisioningError::ApplicationState {
                    id: id.clone(),
                    state: app.state,
                    needed: "rejected",
                });
            }
            Ok(app)
        }
        .await;
        match read {
            Ok(app) => {
                let revision = app.revision + 1;
                note.detail("revision", revision);
                let input = Resubmission {
                    from_revision: app.revision,
                    view: ApplicationView {
                        id: id.clone(),
                        customer_id: app.customer_id,
                        state: ApplicationState::Submitted,
                        application: corrected,
                        revision,
                        submitted_by: operator.as_str().to_owned(),
                        submitted_at_ms: now_ms(),
                        decided_by: None,
                        decided_at_ms: None,
                        decision_reason: None,
                    },
                };
                Ok(Prepared { input, note })
            }
            Err(e) => Err(note.refused(e)),
        }
    }

    /// The resubmission ([`Provisioning::prepare_resubmit`]) in the caller's
    /// transaction; a conflict if the application changed meanwhile.
    pub async fn resubmit_in(
        tx: &mut Tx,
        step: Prepared<Resubmission>,
    ) -> Decision<ApplicationView> {
        let Prepared { input, note } = step;
        let result = match Store::resubmit_in(tx, input.from_revision, &input.view).await {
            Ok(true) => Ok(input.view),
            Ok(false) => Err(ProvisioningError::Conflict(
                "the application changed meanwhile",
            )),
            Err(e) => Err(e),
        };
        note.finish(result)
    }

    /// Ends an application for good (rejected, or withdrawn while
    /// submitted). In a unit of work of its own; see
    /// [`Provisioning::application_decision_in`].
    pub async fn close(
        &self,
        id: &ApplicationId,
        operator: &OperatorId,
        reason: &Reason,
    ) -> Decision<()> {
        let step = self.prepare_close(id, operator, reason).await?;
        self.commit_application_decision(step).await
    }

    /// [`Provisioning::close`]'s reads and checks, before its transaction.
    pub async fn prepare_close(
        &self,
        id: &ApplicationId,
        operator: &OperatorId,
        reason: &Reason,
    ) -> Result<Prepared<ApplicationDecision>, Box<Refused>> {
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
        let read = app.and_then(|app| {
            if matches!(
                app.state,
                ApplicationState::Rejected | ApplicationState::Submitted
            ) {
                Ok(app)
            } else {
                Err(ProvisioningError::ApplicationState {
                    id: id.clone(),
                    state: app.state,
                    needed: "rejected or submitted",
                })
            }
        });
        match read {
            Ok(app) => {
                note.detail("from", app.state);
                Ok(Prepared {
                    input: ApplicationDecision {
                        id: id.clone(),
                        revision: app.revision,
                        to: ApplicationState::Closed,
                        operator: operator.clone(),
                        reason: Some(reason.clone()),
                        now: now_ms(),
                    },
                    note,
                })
            }
            Err(e) => Err(note.refused(e)),
        }
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
