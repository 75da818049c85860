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
    Action, ApplicationId, ApplicationState, Contact, CustomerApplication, CustomerId, NationalId,
    Provisioning, Reason,
};
use serde::Deserialize;

use super::{ALL_ROLES, Operator, PROVISIONERS};
use crate::http::ApiError;
use crate::state::AppState;
use crate::wire::customers as wire;

/// The applicant's data, checked.
fn application(body: wire::ApplicationRequest) -> Result<CustomerApplication, ApiError> {
    Ok(CustomerApplication {
        name: body.name,
        national_id: NationalId::new(body.national_id)?,
        accounts: body
            .accounts
            .iter()
            .map(|a| a.parse())
            .collect::<Result<_, _>>()?,
        contact: Contact::new(body.contact.kind.parse()?, body.contact.address)?,
    })
}

/// `POST /admin/v1/applications`: the caller is the maker.
pub async fn apply(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Json(body): Json<wire::ApplicationRequest>,
) -> Result<Response, ApiError> {
    op.require(&state, PROVISIONERS).await?;
    let application = application(body)?;
    let operator = op.operator_id()?;
    let step = state.provisioning.prepare_apply(application, &operator);
    let view = op
        .decide_write(
            &state,
            Action::Apply,
            "application:new".into(),
            async move { step },
            in_tx!(Provisioning::apply_in),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(wire::Application::from(&view))).into_response())
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
) -> Result<Json<wire::ApplicationList>, ApiError> {
    let st: ApplicationState = q.state.as_deref().unwrap_or("submitted").parse()?;
    op.read(&state, ALL_ROLES, "applications.list", "-").await?;
    let list = state
        .provisioning
        .applications(st, q.limit.unwrap_or(100))
        .await?;
    Ok(Json(wire::ApplicationList {
        applications: list.iter().map(wire::Application::from).collect(),
    }))
}

/// `GET /admin/v1/applications/{id}`: the review.
pub async fn review(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
) -> Result<Json<wire::Application>, ApiError> {
    let id: ApplicationId = id.parse()?;
    op.read(
        &state,
        ALL_ROLES,
        "applications.review",
        &format!("application:{id}"),
    )
    .await?;
    Ok(Json(wire::Application::from(
        &state.provisioning.review(&id).await?,
    )))
}

/// `POST /admin/v1/applications/{id}/approve`: the checker approves.
pub async fn approve(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
) -> Result<Json<wire::Customer>, ApiError> {
    op.require(&state, PROVISIONERS).await?;
    let id: ApplicationId = id.parse()?;
    let operator = op.operator_id()?;
    let p = state.provisioning.clone();
    let target = format!("application:{id}");
    let customer = op
        .decide_write(
            &state,
            Action::Approve,
            target,
            async move { p.prepare_approve(&id, &operator).await },
            in_tx!(Provisioning::approve_in),
        )
        .await?;
    Ok(Json(wire::Customer::new(&customer, &[])))
}

/// `POST /admin/v1/applications/{id}/reject`: back to the applicant.
pub async fn reject(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
    Json(body): Json<wire::ReasonRequest>,
) -> Result<Json<wire::Application>, ApiError> {
    decide_with_reason(state, op, &id, &body.reason, Action::Reject).await
}

/// `POST /admin/v1/applications/{id}/resubmit`: a rejected application,
/// corrected; the caller becomes its maker.
pub async fn resubmit(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
    Json(body): Json<wire::ApplicationRequest>,
) -> Result<Json<wire::Application>, ApiError> {
    op.require(&state, PROVISIONERS).await?;
    let id: ApplicationId = id.parse()?;
    let corrected = application(body)?;
    let operator = op.operator_id()?;
    let p = state.provisioning.clone();
    let target = format!("application:{id}");
    let view = op
        .decide_write(
            &state,
            Action::Resubmit,
            target,
            async move { p.prepare_resubmit(&id, corrected, &operator).await },
            in_tx!(Provisioning::resubmit_in),
        )
        .await?;
    Ok(Json(wire::Application::from(&view)))
}

/// `POST /admin/v1/applications/{id}/close`: ended for good.
pub async fn close(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
    Json(body): Json<wire::ReasonRequest>,
) -> Result<Json<wire::Application>, ApiError> {
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
) -> Result<Json<wire::Application>, ApiError> {
    op.require(&state, PROVISIONERS).await?;
    let id: ApplicationId = id.parse()?;
    let reason: Reason = reason.parse()?;
    let operator = op.operator_id()?;
    let (p, i) = (state.provisioning.clone(), id.clone());
    let prepare = async move {
        if action == Action::Reject {
            p.prepare_reject(&i, &operator, &reason).await
        } else {
            p.prepare_close(&i, &operator, &reason).await
        }
    };
    op.decide_write(
        &state,
        action,
        format!("application:{id}"),
        prepare,
        in_tx!(Provisioning::application_decision_in),
    )
    .await?;
    Ok(Json(wire::Application::from(
        &state.provisioning.review(&id).await?,
    )))
}

/// `GET /admin/v1/customers/{id}`: the customer and the devices bound to them.
pub async fn show(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
) -> Result<Json<wire::Customer>, ApiError> {
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
    Ok(Json(wire::Customer::new(&customer, &devices)))
}
