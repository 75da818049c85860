//! The admin listener: health and metrics for Prometheus, and the admin API
//! for operators (docs/admin-api.md).
//!
//! - `health`: `/live`, `/ready`, `/metrics` and `/openapi.json` (the API
//!   description of both listeners, docs/openapi.json), reachable without a
//!   client certificate (the admin listener's TLS verifier allows that).
//! - `ocsp`: `POST /ocsp` and `GET /ocsp/{request}`, the OCSP responder for
//!   the issuing CA's certificates, also without a client certificate.
//! - `/admin/v1/*`: the [`require_operator`] middleware admits only
//!   connections with an operator certificate carrying a role (OU); each
//!   handler then checks the role it needs with [`Operator::require`].
//!   Refusals are audited (`access.refused`).
//! - `certificates`, `operators`, `trail`: the CA (operator and service
//!   certificates) and the audit trail.
//! - `macs`: bulk MAC verification, for `service` certificates as well as
//!   operators, with a caller check and limits of its own.
//! - `issuers`, `devices`, `customers`: provisioning (issuers and their
//!   master keys, manufacturing batches, the genuine-device check, init
//!   packages, lifecycle, customer review, bindings).
//!
//! Roles: `admin` may do everything; `operator` lists, reads, issues and
//! revokes device certificates, reads the CRL, and runs provisioning (all but
//! creating issuers); `auditor` reads everything that is not a secret and
//! the audit trail, and verifies the chain.

/// A provisioning step's `…_in(&mut tx, prepared)` as the effect of
/// [`Operator::decide_write`]: its refusal rolls the transaction back.
macro_rules! in_tx {
    ($step:path) => {
        |mut tx, step| async move {
            let done = $step(&mut tx, step)
                .await
                .map_err(crate::audit::StepError::Effect)?;
            Ok((tx, done))
        }
    };
}

mod certificates;
mod channel;
mod confirmations;
mod customers;
mod devices;
mod health;
mod issuers;
mod keys;
mod ledger;
pub mod macs;
mod ocsp;
mod operators;
mod receipts;
mod trail;

pub use issuers::create_recorded;

use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use keyward_ca::{Role, Serial};

use keyward_device_provisioning::{Action, Audited, Decision, OperatorId, Refused};
use keyward_kms::db::Tx;

use crate::audit::{Actor, AuditEvent, Outcome, StepError};
use crate::edge::identity::{ClientIdentity, PeerCertificate};
use crate::http::access::{Door, DoorRefusal};
use crate::http::idempotency;
use crate::http::layers::{self, Intake};
use crate::http::{ApiError, stack_config};
use crate::metrics::Listener;
use crate::state::AppState;

/// Routes of the admin listener, with the middleware stack.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/admin/v1/whoami", get(whoami))
        .route(
            "/admin/v1/ca/certificates",
            get(certificates::list).post(certificates::issue),
        )
        .route(
            "/admin/v1/ca/certificates/{serial}",
            get(certificates::show),
        )
        .route(
            "/admin/v1/ca/certificates/{serial}/revoke",
            post(certificates::revoke),
        )
        .route("/admin/v1/ca/crl", get(certificates::crl))
        .route("/admin/v1/operators", post(operators::issue))
        .route("/admin/v1/services", post(operators::issue_service))
        .route(
            "/admin/v1/issuers",
            get(issuers::list).post(issuers::create),
        )
        .route("/admin/v1/issuers/{id}", get(issuers::show))
        .route("/admin/v1/batches/{id}", get(devices::batch))
        .route("/admin/v1/batches/{id}/abort", post(devices::abort_batch))
        .route("/admin/v1/devices", get(devices::list))
        .route("/admin/v1/devices/{id}", get(devices::show))
        .route("/admin/v1/devices/{id}/challenge", post(devices::challenge))
        .route("/admin/v1/devices/{id}/check", post(devices::check))
        .route(
            "/admin/v1/devices/{id}/check/reset",
            post(devices::reset_check),
        )
        .route("/admin/v1/devices/{id}/recertify", post(devices::recertify))
        .route(
            "/admin/v1/devices/{id}/recertify/approve",
            post(devices::approve_recertify),
        )
        .route("/admin/v1/devices/{id}/init", post(devices::init))
        .route(
            "/admin/v1/devices/{id}/init/confirm",
            post(devices::confirm),
        )
        .route("/admin/v1/devices/{id}/reinit", post(devices::reinit))
        .route("/admin/v1/devices/{id}/state", post(devices::set_state))
        .route("/admin/v1/devices/{id}/bindings", post(devices::bind))
        .route(
            "/admin/v1/applications",
            get(customers::list).post(customers::apply),
        )
        .route("/admin/v1/applications/{id}", get(customers::review))
        .route(
            "/admin/v1/applications/{id}/approve",
            post(customers::approve),
        )
        .route(
            "/admin/v1/applications/{id}/reject",
            post(customers::reject),
        )
        .route(
            "/admin/v1/applications/{id}/resubmit",
            post(customers::resubmit),
        )
        .route("/admin/v1/applications/{id}/close", post(customers::close))
        .route("/admin/v1/customers/{id}", get(customers::show))
        .route("/admin/v1/confirmations/{id}", get(confirmations::show))
        .route("/admin/v1/accounts", post(ledger::create_account))
        .route("/admin/v1/accounts/{id}", get(ledger::show_account))
        .route("/admin/v1/accounts/{id}/credits", post(ledger::credit))
        .route("/admin/v1/accounts/{id}/statement", get(ledger::statement))
        .route(
            "/admin/v1/credits/{id}/approve",
            post(ledger::approve_credit),
        )
        .route("/admin/v1/ledger/verify", get(ledger::verify))
        .route("/admin/v1/loads", get(ledger::list_loads))
        .route("/admin/v1/loads/{id}", get(ledger::show_load))
        .route(
            "/admin/v1/confirmations/{id}/evidence",
            get(confirmations::evidence),
        )
        .route("/admin/v1/audit", get(trail::recent))
        .route("/admin/v1/audit/verify", get(trail::verify))
        .route("/admin/v1/audit/checkpoint", get(trail::checkpoint))
        .route("/admin/v1/devices/{id}/keys", get(keys::versions))
        .route(
            "/admin/v1/devices/{id}/credentials/{issuer}",
            get(keys::show_credential),
        )
        .route(
            "/admin/v1/devices/{id}/credentials/{issuer}/unlock",
            post(keys::unlock),
        )
        .route("/admin/v1/issuers/{id}/rotations", post(keys::rotate))
        .route("/admin/v1/channel/keys", post(channel::rotate_key))
        .route("/admin/v1/issuers/{id}/keys", post(issuers::add_key))
        .route(
            "/admin/v1/issuers/{id}/rotations/pending",
            get(keys::pending),
        )
        // Inside the operator check: answers are keyed by the operator.
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            idempotency::admin,
        ));
    // One budget for the admin API, health and metrics.
    let intake = Intake::new(&stack_config(&state, Listener::Admin));
    let api = intake
        .apply(api)
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_operator,
        ));
    let health = intake.apply(
        Router::new()
            .route("/live", get(health::live))
            .route("/ready", get(health::ready))
            .route("/metrics", get(health::metrics))
            .route("/openapi.json", get(health::openapi)),
    );
    // Batch imports certify thousands of devices: their own body limit and
    // time limit, the rest of the stack the same.
    let mut batch_stack = stack_config(&state, Listener::Admin);
    batch_stack.request_timeout =
        std::time::Duration::from_millis(state.config.server.batch_timeout_ms);
    batch_stack.body_read_timeout = batch_stack.request_timeout;
    batch_stack.max_body_bytes = state.config.server.batch_max_body_bytes;
    let batches = Router::new()
        .route("/admin/v1/batches", post(devices::import_batch))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            idempotency::admin,
        ));
    let batches =
        Intake::new(&batch_stack)
            .apply(batches)
            .route_layer(middleware::from_fn_with_state(
                state.clone(),
                require_operator,
            ));
    // Bulk MAC verification: services as well as operators (its own caller
    // check), bodies of up to `bulk_max_items` items, the batch time limit;
    // no idempotency layer (it verifies, changes nothing, and streams).
    let mut macs_stack = stack_config(&state, Listener::Admin);
    macs_stack.request_timeout =
        std::time::Duration::from_millis(state.config.server.batch_timeout_ms);
    macs_stack.body_read_timeout = macs_stack.request_timeout;
    macs_stack.max_body_bytes = state.config.server.bulk_max_body_bytes;
    let macs_routes = Intake::new(&macs_stack)
        .apply(Router::new().route("/admin/v1/macs/verify", post(macs::verify)))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            macs::require_verifier,
        ));
    // Anonymous OCSP: a concurrency budget and body limit of its own, so a
    // flood of it cannot make health, metrics or the admin API answer 503.
    let mut ocsp_stack = stack_config(&state, Listener::Admin);
    ocsp_stack.max_concurrent_requests = state.config.server.ocsp_max_concurrent_requests.max(1);
    ocsp_stack.max_body_bytes = state.config.server.ocsp_max_body_bytes;
    let ocsp_routes = Intake::new(&ocsp_stack).apply(
        Router::new()
            .route("/ocsp", post(ocsp::post))
            .route("/ocsp/{*request}", get(ocsp::get)),
    );
    // The gateway's delivery receipts: service certificates only, small
    // bodies; no idempotency layer (the webhook-id is the replay check).
    let mut receipts_stack = stack_config(&state, Listener::Admin);
    receipts_stack.max_body_bytes = crate::outbox::receipts::MAX_BODY;
    let receipt_routes = Intake::new(&receipts_stack)
        .apply(Router::new().route("/admin/v1/outbox/receipts", post(receipts::receive)))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            receipts::require_service,
        ));
    let router = health
        .merge(api)
        .merge(batches)
        .merge(macs_routes)
        .merge(receipt_routes)
        .merge(ocsp_routes)
        .with_state(state.clone());
    layers::apply(router, Listener::Admin, state.metrics.clone())
}

/// Every role: the reads.
pub const ALL_ROLES: &[Role] = &[Role::Admin, Role::Operator, Role::Auditor];
/// The roles that run provisioning.
pub const PROVISIONERS: &[Role] = &[Role::Admin, Role::Operator];

/// The operator behind an admin API request, from its client certificate.
#[derive(Debug, Clone)]
pub struct Operator {
    pub name: String,
    pub role: Role,
    pub serial: String,
    pub actor: Actor,
    pub request_id: String,
    method: String,
    route: String,
}

/// Admits only operator certificates with a role; audits every refusal.
async fn require_operator(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let door = Door::of(&req, "");
    let identity = req.extensions().get::<ClientIdentity>().cloned();
    let cert = identity.as_ref().and_then(|i| i.cert.clone());
    // Auditors read: a request that could change something is refused
    // before its body is read or parsed.
    let reads = matches!(*req.method(), Method::GET | Method::HEAD);
    let (actor, refusal) = match (&identity, &cert) {
        (Some(id), Some(c)) => match (c.role(), still_valid(&state, c).await) {
            (Some(Role::Auditor), Ok(())) if !reads => {
                (id.actor(), DoorRefusal::ForbiddenRole("admin or operator"))
            }
            (Some(role), Ok(())) => {
                req.extensions_mut().insert(Operator {
                    name: c.common_name.clone(),
                    role,
                    serial: c.serial.clone(),
                    actor: id.actor(),
                    request_id: door.request_id.clone(),
                    method: door.method.clone(),
                    route: door.route.clone(),
                });
                return next.run(req).await;
            }
            (Some(_), Err(e)) => (id.actor(), e),
            // A device (or other) certificate: known, but no operator.
            (None, _) => (
                id.actor(),
                DoorRefusal::ForbiddenRole("admin, operator or auditor"),
            ),
        },
        (Some(id), None) => (id.actor(), DoorRefusal::CertificateRequired),
        (None, _) => (Actor::Anonymous, DoorRefusal::CertificateRequired),
    };
    let role = cert.and_then(|c| c.role()).map(|r| r.as_str().to_owned());
    door.refuse(&state, &actor, role, refusal).await
}

/// A connection outlives a revocation (HTTP/2 and keep-alive reuse the
/// handshake), so each admin request also asks the registry: the certificate
/// must be registered here, not revoked and not expired. Fails closed: a
/// registry that does not answer refuses the request (5xx).
async fn still_valid(state: &AppState, cert: &PeerCertificate) -> Result<(), DoorRefusal> {
    let revoked =
        || DoorRefusal::Revoked("this operator certificate is revoked, expired or unknown");
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if cert.not_after <= now {
        return Err(revoked());
    }
    let serial: Serial = cert.serial.parse().map_err(|_| revoked())?;
    match state.ca.is_revoked(&serial).await {
        Ok(false) => Ok(()),
        Ok(true) | Err(keyward_ca::CaError::UnknownSerial(_)) => Err(revoked()),
        Err(e) => Err(e.into()),
    }
}

impl Operator {
    /// Refuses (403 `forbidden_role`, audited) unless the role is in `allowed`.
    pub async fn require(&self, state: &AppState, allowed: &[Role]) -> Result<(), ApiError> {
        if allowed.contains(&self.role) {
            return Ok(());
        }
        let needed: Vec<&str> = allowed.iter().map(|r| r.as_str()).collect();
        self.refuse(state, &needed.join(" or ")).await
    }

    /// Refuses with 403 `forbidden_role`, audited.
    pub async fn refuse<T>(&self, state: &AppState, needed: &str) -> Result<T, ApiError> {
        let event = AuditEvent::AccessRefused {
            method: self.method.clone(),
            route: self.route.clone(),
            code: "forbidden_role",
            role: Some(self.role.as_str().to_owned()),
        };
        let outcome = Outcome::Refused {
            code: "forbidden_role",
        };
        let _ = state
            .audit
            .append(&self.actor, &event, outcome, &self.request_id)
            .await;
        Err(ApiError::forbidden_role(needed))
    }

    /// Writes an audit record for this operator; the caller stops (fail
    /// closed, 503 `audit_unavailable`) if it cannot be written.
    pub async fn audit(
        &self,
        state: &AppState,
        event: &AuditEvent,
        outcome: Outcome,
    ) -> Result<(), ApiError> {
        state
            .audit
            .append(&self.actor, event, outcome, &self.request_id)
            .await
            .map(drop)
            .map_err(ApiError::audit_unavailable)
    }

    /// Checks the role and records the read before answering it (a read that
    /// cannot be recorded is not answered).
    pub async fn read(
        &self,
        state: &AppState,
        allowed: &[Role],
        action: &'static str,
        target: &str,
    ) -> Result<(), ApiError> {
        self.require(state, allowed).await?;
        let event = AuditEvent::OperatorAction {
            action,
            target: target.to_owned(),
        };
        self.audit(state, &event, Outcome::Success).await
    }

    /// The operator as provisioning names them: the certificate's CN, which
    /// maker-checker compares.
    pub fn operator_id(&self) -> Result<OperatorId, ApiError> {
        Ok(self.name.parse()?)
    }

    /// Runs an operation between this operator's audit records
    /// ([`AuditLog::recorded`](crate::audit::AuditLog::recorded)), in a task
    /// of its own so that a client timeout does not cut it in half. If the
    /// `requested` record cannot be written nothing is done (503
    /// `audit_unavailable`).
    pub async fn recorded<T, E, Fut, S>(
        &self,
        state: &AppState,
        requested: AuditEvent,
        effect: Fut,
        settle: S,
    ) -> Result<Result<T, E>, ApiError>
    where
        T: Send + 'static,
        E: Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        S: FnOnce(&Result<T, E>) -> (AuditEvent, Outcome) + Send + 'static,
    {
        let (audit, actor, rid) = (
            state.audit.clone(),
            self.actor.clone(),
            self.request_id.clone(),
        );
        let task = tokio::spawn(async move {
            audit
                .recorded(&actor, &rid, &requested, effect, settle)
                .await
        });
        task.await
            .map_err(ApiError::internal)?
            .map_err(ApiError::audit_unavailable)
    }

    /// Runs a step whose effect is a write on the shared database between
    /// this operator's audit records
    /// ([`AuditLog::recorded_prepared_write`](crate::audit::AuditLog::recorded_prepared_write)):
    /// `requested` first (503 `audit_unavailable` and nothing done if it
    /// cannot be written), then `prepare` (HSM work, no transaction open),
    /// then `effect` in one transaction with its outcome record. In a task
    /// of its own, so that a client timeout does not cut it in half.
    pub async fn recorded_write<P, T, E, Pre, F, Fut, S>(
        &self,
        state: &AppState,
        requested: AuditEvent,
        prepare: Pre,
        effect: F,
        settle: S,
    ) -> Result<Result<T, E>, ApiError>
    where
        P: Clone + Send + Sync + 'static,
        T: Send + 'static,
        E: keyward_kms::db::TxError + From<crate::audit::AuditError> + Send + Sync + 'static,
        Pre: Future<Output = Result<P, E>> + Send + 'static,
        F: FnMut(keyward_kms::db::Tx, P) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(keyward_kms::db::Tx, T), E>> + Send,
        S: Fn(Result<&T, &E>) -> (AuditEvent, Outcome) + Send + Sync + 'static,
    {
        let (audit, db, actor, rid) = (
            state.audit.clone(),
            state.kms.db().clone(),
            self.actor.clone(),
            self.request_id.clone(),
        );
        let task = tokio::spawn(async move {
            audit
                .recorded_prepared_write(&db, &actor, &rid, &requested, prepare, effect, settle)
                .await
        });
        task.await
            .map_err(ApiError::internal)?
            .map_err(ApiError::audit_unavailable)
    }

    /// Runs a provisioning decision that is a long job with durable steps of
    /// its own (a batch import, its abort) between its audit records
    /// ([`Self::recorded`]): the decision's own note is the outcome record,
    /// refusals included, written after its last step. Every other decision
    /// commits with its record ([`Self::decide_write`]).
    pub async fn decide<T, F>(
        &self,
        state: &AppState,
        action: Action,
        target: String,
        decision: F,
    ) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: Future<Output = Decision<T>> + Send + 'static,
    {
        let requested = AuditEvent::OperatorAction {
            action: action.as_str(),
            target,
        };
        let metrics = state.metrics.clone();
        let decided = self
            .recorded(state, requested, decision, move |decided| {
                let note = match decided {
                    Ok(done) => &done.note,
                    Err(refused) => &refused.note,
                };
                metrics
                    .provisioning_decisions
                    .with_label_values(&[action.as_str(), note.outcome.as_str()])
                    .inc();
                (AuditEvent::Provisioning(note.clone()), note.outcome)
            })
            .await?;
        decided
            .map(|done| done.value)
            .map_err(|refused| ApiError::from(refused.error))
    }

    /// Runs a provisioning decision whose effect is a write on the shared
    /// database ([`Self::recorded_write`]): `prepare` reads and checks with
    /// no transaction open, `effect` commits the decision's rows with its
    /// note as the outcome record. A refusal is rolled back and its note
    /// recorded after.
    pub async fn decide_write<P, T, Pre, F, Fut>(
        &self,
        state: &AppState,
        action: Action,
        target: String,
        prepare: Pre,
        effect: F,
    ) -> Result<T, ApiError>
    where
        P: Clone + Send + Sync + 'static,
        T: Send + Sync + 'static,
        Pre: Future<Output = Result<P, Box<Refused>>> + Send + 'static,
        F: FnMut(Tx, P) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(Tx, Audited<T>), StepError<Box<Refused>>>> + Send,
    {
        let requested = AuditEvent::OperatorAction {
            action: action.as_str(),
            target,
        };
        let prepare = async move { prepare.await.map_err(StepError::Effect) };
        let decided = self
            .recorded_write(state, requested, prepare, effect, move |r| match r {
                Ok(done) => (
                    AuditEvent::Provisioning(done.note.clone()),
                    done.note.outcome,
                ),
                Err(StepError::Effect(refused)) => (
                    AuditEvent::Provisioning(refused.note.clone()),
                    refused.note.outcome,
                ),
                Err(e) => AuditEvent::failed(action.as_str(), e.code()),
            })
            .await?;
        let outcome = match &decided {
            Ok(done) => done.note.outcome,
            Err(StepError::Effect(refused)) => refused.note.outcome,
            Err(e) => Outcome::Failed { code: e.code() },
        };
        state
            .metrics
            .provisioning_decisions
            .with_label_values(&[action.as_str(), outcome.as_str()])
            .inc();
        Ok(decided?.value)
    }
}

/// `GET /admin/v1/whoami`: the operator the server sees.
async fn whoami(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
) -> Result<Json<crate::wire::WhoAmI>, ApiError> {
    op.audit(
        &state,
        &AuditEvent::OperatorAction {
            action: "whoami",
            target: "-".into(),
        },
        Outcome::Success,
    )
    .await?;
    Ok(Json(crate::wire::WhoAmI {
        name: op.name,
        role: op.role.as_str().to_owned(),
        serial: op.serial,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The refusal names the roles that would do, in a sentence that reads.
    #[test]
    fn refusal_without_an_operator_role_reads_well() {
        let e = DoorRefusal::ForbiddenRole("admin, operator or auditor").into_answer();
        assert_eq!(e.code, "forbidden_role");
        assert_eq!(
            e.message,
            "this action needs the admin, operator or auditor role"
        );
    }
}
