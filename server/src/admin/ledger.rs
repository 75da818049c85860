//! The ledger and the e-purse loads for operators (docs/admin-api.md,
//! "Ledger and loads"): accounts, credits (a second operator above the
//! configured amount), statements, `ledger verify`, and the loads.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;

use super::{ALL_ROLES, Operator, PROVISIONERS};
use crate::audit::{AuditEvent, Outcome};
use crate::http::ApiError;
use crate::ledger::store::EntryRow;
use crate::ledger::{AccountView, LedgerError, NewAccount};
use crate::load::{LoadRow, State as LoadState};
use crate::state::AppState;
use crate::wire::loads as wire;

/// A refused operator step, recorded before it is answered.
async fn refused(
    op: &Operator,
    state: &AppState,
    action: &'static str,
    target: &str,
    e: LedgerError,
) -> ApiError {
    let code = e.code();
    let event = AuditEvent::OperatorAction {
        action,
        target: target.to_owned(),
    };
    if e.kind().is_client() {
        let _ = op.audit(state, &event, Outcome::Refused { code }).await;
    }
    ApiError::from_kind(e.kind(), code, e)
}

fn account_view(v: AccountView) -> wire::AccountView {
    wire::AccountView {
        account: v.row.id,
        kind: v.row.kind,
        customer_id: v.row.customer_id,
        currency: v.row.currency,
        floor_minor: v.row.floor_minor,
        balance_minor: v.balance_minor,
        created_at_ms: v.row.created_at_ms,
    }
}

fn entry_view(e: EntryRow, balance_after: Option<i64>) -> wire::EntryView {
    wire::EntryView {
        entry_id: e.id,
        transfer_id: e.transfer_id,
        step: e.step,
        account: e.account_id,
        delta_minor: e.delta_minor,
        currency: e.currency,
        created_at_ms: e.created_at_ms,
        balance_after_minor: balance_after,
    }
}

pub async fn create_account(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Json(body): Json<wire::NewAccount>,
) -> Result<(StatusCode, Json<wire::AccountView>), ApiError> {
    op.require(&state, PROVISIONERS).await?;
    let target = format!("account:{}", body.account);
    let new = NewAccount {
        number: body.account,
        customer_id: body.customer_id,
        currency: body.currency,
        overdraft_minor: body.overdraft_minor,
    };
    match state
        .ledger
        .create_account(&op.actor, &op.request_id, new)
        .await
    {
        Ok(v) => Ok((StatusCode::CREATED, Json(account_view(v)))),
        Err(e) => Err(refused(&op, &state, "ledger.account_create", &target, e).await),
    }
}

pub async fn show_account(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
) -> Result<Json<wire::AccountView>, ApiError> {
    op.read(
        &state,
        ALL_ROLES,
        "ledger.account_show",
        &format!("account:{id}"),
    )
    .await?;
    let v = state
        .ledger
        .account(&id)
        .await
        .map_err(|e| ApiError::from_kind(e.kind(), e.code(), e))?;
    Ok(Json(account_view(v)))
}

pub async fn credit(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
    Json(body): Json<wire::CreditRequest>,
) -> Result<(StatusCode, Json<wire::CreditView>), ApiError> {
    op.require(&state, PROVISIONERS).await?;
    let target = format!("account:{id}");
    let c = state
        .ledger
        .credit(
            op.operator_id()?.as_str(),
            &op.actor,
            &op.request_id,
            &id,
            body.amount_minor,
            &body.reference,
        )
        .await;
    match c {
        Ok(c) => Ok((
            if c.state == "posted" {
                StatusCode::CREATED
            } else {
                StatusCode::ACCEPTED
            },
            Json(wire::CreditView {
                credit_id: c.credit_id,
                state: c.state.to_owned(),
                transfer_id: c.transfer_id,
                balance_after_minor: c.balance_after_minor,
            }),
        )),
        Err(e) => Err(refused(&op, &state, "ledger.credit", &target, e).await),
    }
}

pub async fn approve_credit(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
) -> Result<Json<wire::CreditView>, ApiError> {
    op.require(&state, PROVISIONERS).await?;
    let target = format!("credit:{id}");
    match state
        .ledger
        .approve_credit(&op.operator_id()?, &op.actor, &op.request_id, &id)
        .await
    {
        Ok(c) => Ok(Json(wire::CreditView {
            credit_id: c.credit_id,
            state: c.state.to_owned(),
            transfer_id: c.transfer_id,
            balance_after_minor: c.balance_after_minor,
        })),
        Err(e) => Err(refused(&op, &state, "ledger.credit_approve", &target, e).await),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatementQuery {
    pub at_ms: Option<i64>,
    pub limit: Option<i64>,
}

pub async fn statement(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
    Query(q): Query<StatementQuery>,
) -> Result<Json<wire::Statement>, ApiError> {
    op.read(
        &state,
        ALL_ROLES,
        "ledger.statement",
        &format!("account:{id}"),
    )
    .await?;
    let (view, at_balance, lines) = state
        .ledger
        .statement(&id, q.at_ms, q.limit.unwrap_or(100).clamp(1, 10_000))
        .await
        .map_err(|e| ApiError::from_kind(e.kind(), e.code(), e))?;
    Ok(Json(wire::Statement {
        account: account_view(view),
        at_ms: q.at_ms,
        balance_at_minor: at_balance,
        entries: lines
            .into_iter()
            .map(|l| entry_view(l.entry, Some(l.balance_after_minor)))
            .collect(),
    }))
}

pub async fn verify(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
) -> Result<Json<wire::LedgerReport>, ApiError> {
    op.read(&state, ALL_ROLES, "ledger.verify", "-").await?;
    let report = state
        .ledger
        .verify()
        .await
        .map_err(|e| ApiError::from_kind(e.kind(), e.code(), e))?;
    Ok(Json(report))
}

fn load_view(l: LoadRow, full: bool, entries: Vec<EntryRow>) -> wire::LoadView {
    wire::LoadView {
        load_id: l.id,
        device_id: l.device_id,
        sequence: l.sequence,
        customer_id: l.customer_id,
        account: l.account_id,
        amount_minor: l.amount_minor,
        currency: l.currency,
        state: l.state.as_str().to_owned(),
        reason: l.reason,
        device_reason: l.device_reason,
        wallet_before_minor: l.wallet_before,
        wallet_after_minor: l.wallet_after,
        flagged: l.flagged,
        created_at_ms: l.created_at_ms,
        expires_at_ms: l.expires_at_ms,
        decided_at_ms: l.decided_at_ms,
        settled_at_ms: l.settled_at_ms,
        permit: full.then(|| B64.encode(&l.permit)),
        permit_signature: full.then(|| B64.encode(&l.permit_sig)),
        report: if full {
            l.report.map(|r| B64.encode(r))
        } else {
            None
        },
        entries: entries.into_iter().map(|e| entry_view(e, None)).collect(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadQuery {
    pub state: Option<String>,
    pub limit: Option<i64>,
}

pub async fn list_loads(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Query(q): Query<LoadQuery>,
) -> Result<Json<wire::LoadList>, ApiError> {
    op.read(&state, ALL_ROLES, "loads.list", "-").await?;
    let filter = match q.state.as_deref() {
        None | Some("") => None,
        Some(s) => Some(LoadState::parse(s).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_input",
                "state is one of pending, posted, voided, doubtful, late_applied, not_applied",
            )
        })?),
    };
    let loads = state
        .loads
        .list(filter, q.limit.unwrap_or(100).clamp(1, 1_000))
        .await?;
    Ok(Json(wire::LoadList {
        loads: loads
            .into_iter()
            .map(|l| load_view(l, false, Vec::new()))
            .collect(),
    }))
}

pub async fn show_load(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
) -> Result<Json<wire::LoadView>, ApiError> {
    op.read(&state, ALL_ROLES, "loads.show", &format!("load:{id}"))
        .await?;
    let (load, entries) = state.loads.show(&id).await?;
    Ok(Json(load_view(load, true, entries)))
}
