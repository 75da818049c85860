//! `/admin/v1/applications`, `/admin/v1/customers`: customer registration
//! with maker-checker review. The caller's operator name is the maker of an
//! application and must differ from its checker; the provisioning layer
//! enforces it (`self_approval`).
//!
//! National ids and contact addresses are returned to operators (the
//! reviewer needs them) but never written to a log or an audit record.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use keyward_device_provisioning::{
    Action, ApplicationId, ApplicationState, ApplicationView, Contact, Customer,
    CustomerApplication, CustomerId, NationalId, Reason,
};
use serde::Deserialize;

use super::{ALL_ROLES, Operator, PROVISIONERS};
use crate::http::ApiError;
use crate::state::AppState;

fn application_json(a: &ApplicationView) -> serde_json::Value {
    let mut v = serde_json::json!({
        "application_id": a.id.as_str(),
        "customer_id": a.customer_id.as_str(),
        "state": a.state.as_str(),
        "revision": a.revision,
        "submitted_by": a.submitted_by,
        "submitted_at_ms": a.submitted_at_ms,
        "decided_by": a.decided_by,
        "decided_at_ms": a.decided_at_ms,
        "decision_reason": a.decision_reason,
    });
    if let (Some(obj), serde_json::Value::Object(fields)) =
        (v.as_object_mut(), person_json(&a.application))
    {
        obj.extend(fields);
    }
    v
}

fn person_json(a: &CustomerApplication) -> serde_json::Value {
    serde_json::json!({
        "name": a.name,
        "national_id": a.national_id.expose(),
        "accounts": a.accounts.iter().map(|x| x.as_str()).collect::<Vec<_>>(),
        "contact": { "kind": a.contact.kind.as_str(), "address": a.contact.address() },
    })
}

fn customer_json(c: &Customer, devices: &[keyward_kms::types::DeviceId]) -> serde_json::Value {
    serde_json::json!({
        "customer_id": c.id.as_str(),
        "application_id": c.application_id.as_str(),
        "name": c.name,
        "national_id": c.national_id.expose(),
        "accounts": c.accounts.iter().map(|x| x.as_str()).collect::<Vec<_>>(),
        "contact": { "kind": c.contact.kind.as_str(), "address": c.contact.address() },
        "approved_by": c.approved_by,
        "approved_at_ms": c.approved_at_ms,
        "devices": devices.iter().map(ToString::to_string).collect::<Vec<_>>(),
    })
}

/// What an applicant gives (apply and resubmit).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplicationBody {
    name: String,
    national_id: String,
    accounts: Vec<String>,
    contact: ContactBody,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContactBody {
    kind: String,
    address: String,
}

impl ApplicationBody {
    fn into_application(self) -> Result<CustomerApplication, ApiError> {
        Ok(CustomerApplication {
            name: self.name,
            national_id: NationalId::new(self.national_id)?,
            accounts: self
                .accounts
                .iter()
                .map(|a| a.parse())
                .collect::<Result<_, _>>()?,
            contact: Contact::new(self.contact.kind.parse()?, self.contact.address)?,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReasonBody {
    reason: String,
}

/// `POST /admin/v1/applications`: the caller is the maker.
pub async fn apply(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Json(body): Json<ApplicationBody>,
) -> Result<Response, ApiError> {
    op.require(&state, PROVISIONERS).await?;
    let application = body.into_application()?;
    let operator = op.operator_id()?;
    let p = state.provisioning.clone();
    let view = op
        .decide(
            &state,
            Action::Apply,
            "application:new".into(),
            async move { p.apply(application, &operator).await },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(application_json(&view))).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    state: Option<String>,
    limit: Option<u32>,
}

/// `GET /admin/v1/applications`: the review queue, oldest first.
pub async fn list(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Query(q): Query<ListQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let st: ApplicationState = q.state.as_deref().unwrap_or("submitted").parse()?;
    op.read(&state, ALL_ROLES, "applications.list", "-").await?;
    let list = state
        .provisioning
        .applications(st, q.limit.unwrap_or(100))
        .await?;
    Ok(Json(serde_json::json!({
        "applications": list.iter().map(application_json).collect::<Vec<_>>(),
    })))
}

/// `GET /admin/v1/applications/{id}`: the review.
pub async fn review(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id: ApplicationId = id.parse()?;
    op.read(
        &state,
        ALL_ROLES,
        "applications.review",
        &format!("application:{id}"),
    )
    .await?;
    Ok(Json(application_json(
        &state.provisioning.review(&id).await?,
    )))
}

/// `POST /admin/v1/applications/{id}/approve`: the checker approves.
pub async fn approve(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    op.require(&state, PROVISIONERS).await?;
    let id: ApplicationId = id.parse()?;
    let operator = op.operator_id()?;
    let p = state.provisioning.clone();
    let target = format!("application:{id}");
    let customer = op
        .decide(&state, Action::Approve, target, async move {
            p.approve(&id, &operator).await
        })
        .await?;
    Ok(Json(customer_json(&customer, &[])))
}

/// `POST /admin/v1/applications/{id}/reject`: back to the applicant.
pub async fn reject(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
    Json(body): Json<ReasonBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    decide_with_reason(state, op, &id, &body.reason, Action::Reject).await
}

/// `POST /admin/v1/applications/{id}/resubmit`: a rejected application,
/// corrected; the caller becomes its maker.
pub async fn resubmit(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
    Json(body): Json<ApplicationBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    op.require(&state, PROVISIONERS).await?;
    let id: ApplicationId = id.parse()?;
    let corrected = body.into_application()?;
    let operator = op.operator_id()?;
    let p = state.provisioning.clone();
    let target = format!("application:{id}");
    let view = op
        .decide(&state, Action::Resubmit, target, async move {
            p.correct_and_resubmit(&id, corrected, &operator).await
        })
        .await?;
    Ok(Json(application_json(&view)))
}

/// `POST /admin/v1/applications/{id}/close`: ended for good.
pub async fn close(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
    Json(body): Json<ReasonBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    decide_with_reason(state, op, &id, &body.reason, Action::Close).await
}

/// Reject or close: an operator's decision with a reason; answers with the
/// application as it now stands.
async fn decide_with_reason(
    state: AppState,
    op: Operator,
    id: &str,
    reason: &str,
    action: Action,
) -> Result<Json<serde_json::Value>, ApiError> {
    op.require(&state, PROVISIONERS).await?;
    let id: ApplicationId = id.parse()?;
    let reason: Reason = reason.parse()?;
    let operator = op.operator_id()?;
    let (p, i) = (state.provisioning.clone(), id.clone());
    op.decide(&state, action, format!("application:{id}"), async move {
        if action == Action::Reject {
            p.reject(&i, &operator, &reason).await
        } else {
            p.close(&i, &operator, &reason).await
        }
    })
    .await?;
    Ok(Json(application_json(
        &state.provisioning.review(&id).await?,
    )))
}

/// `GET /admin/v1/customers/{id}`: the customer and the devices bound to them.
pub async fn show(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id: CustomerId = id.parse()?;
    op.read(
        &state,
        ALL_ROLES,
        "customers.show",
        &format!("customer:{id}"),
    )
    .await?;
    let customer = state.provisioning.customer(&id).await?;
    let devices = state.provisioning.customer_devices(&id).await?;
    Ok(Json(customer_json(&customer, &devices)))
}
