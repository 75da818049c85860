//! The server's side of the ledger: the rules are `keyward_ledger`'s (pure,
//! server/ledger); this module reads the rows a step needs inside the
//! caller's write transaction, asks the rules, and writes what they decided
//! ([`store`]). A refusal rolls the caller's transaction back: nothing
//! moves.
//!
//! Customer balances live in their rows (floor held by the database too);
//! system balances (loads in flight, float, receivable, external) are sums
//! of entries, so no step rewrites a shared hot row.

mod service;
pub mod store;

/// The table every unit of work that books on the ledger takes its turn
/// on first ([`keyward_kms::db::Database::write_in_turn`]): loads all post
/// to the one float, so on PostgreSQL they queue rather than abort one
/// another's serializable transactions.
pub const TURN: &str = "ledger_accounts";

pub use service::{
    AccountView, CHECKPOINT_KEY_LABEL, Credit, Ledger, LedgerError, NewAccount, StatementLine,
    VerifyReport,
};

use std::str::FromStr;

use keyward_kms::db::Tx;
use keyward_ledger::{
    Account, AccountId, AccountKind, Amount, Balance, Currency, Payer, Posting, Reconciliation,
    Refusal, Transfer, TransferId, TransferKind, TransferState, VoidReason,
};

use store::{AccountRow, BookError, Booking, TransferRow};

/// A row the rules cannot read: a database someone edited by hand.
fn corrupt(what: &str) -> sqlx::Error {
    sqlx::Error::Protocol(format!("ledger row does not parse: {what}"))
}

/// The rules' view of an account row.
pub fn account_of(row: &AccountRow) -> Result<Account, sqlx::Error> {
    let id = AccountId::from_str(&row.id).map_err(|_| corrupt("account id"))?;
    let currency = Currency::from_str(&row.currency).map_err(|_| corrupt("currency"))?;
    Ok(Account {
        kind: id.kind(),
        id,
        currency,
        floor: Balance::new(row.floor_minor),
        balance: Balance::new(row.balance_minor),
    })
}

/// The rules' view of a transfer row.
pub fn transfer_of(row: &TransferRow) -> Result<Transfer, sqlx::Error> {
    let void = |r: Option<&str>| match r {
        Some("failure") => Ok(VoidReason::Failure),
        Some("bad_report") => Ok(VoidReason::BadReport),
        Some("timeout") => Ok(VoidReason::Timeout),
        Some("operator") => Ok(VoidReason::Operator),
        _ => Err(corrupt("void reason")),
    };
    Ok(Transfer {
        id: TransferId::from_str(&row.id).map_err(|_| corrupt("transfer id"))?,
        kind: match row.kind {
            "external_credit" => TransferKind::ExternalCredit,
            "external_debit" => TransferKind::ExternalDebit,
            _ => TransferKind::Load,
        },
        debit: AccountId::from_str(&row.debit).map_err(|_| corrupt("debit account"))?,
        credit: AccountId::from_str(&row.credit).map_err(|_| corrupt("credit account"))?,
        amount: Amount::new(row.amount_minor).map_err(|_| corrupt("amount"))?,
        currency: Currency::from_str(&row.currency).map_err(|_| corrupt("currency"))?,
        state: match row.state.as_str() {
            "pending" => TransferState::Pending,
            "posted" => TransferState::Posted,
            "voided" => TransferState::Voided(void(row.void_reason.as_deref())?),
            _ => return Err(corrupt("transfer state")),
        },
        reconciliation: match row.late.as_deref() {
            None => Reconciliation::None,
            Some("customer") => Reconciliation::LateApplied(Payer::Customer),
            Some("receivable") => Reconciliation::LateApplied(Payer::Receivable),
            Some("closed") => Reconciliation::Closed,
            Some(_) => return Err(corrupt("reconciliation")),
        },
    })
}

fn void_reason_str(r: VoidReason) -> &'static str {
    match r {
        VoidReason::Failure => "failure",
        VoidReason::BadReport => "bad_report",
        VoidReason::Timeout => "timeout",
        VoidReason::Operator => "operator",
    }
}

fn kind_str(k: TransferKind) -> &'static str {
    match k {
        TransferKind::Load => "load",
        TransferKind::ExternalCredit => "external_credit",
        TransferKind::ExternalDebit => "external_debit",
    }
}

/// Writes a posting the rules made: its entries, and the customer rows'
/// balances (floor-checked by the database as well).
async fn book<E>(tx: &mut Tx, posting: &Posting, now: i64) -> Result<(), E>
where
    E: From<Refusal> + From<sqlx::Error>,
{
    let Some(first) = posting.entries().first() else {
        return Err(Refusal::PostingEmpty.into());
    };
    let bookings: Vec<Booking> = posting
        .entries()
        .iter()
        .map(|e| Booking {
            account: e.account.to_string(),
            delta_minor: e.delta.minor_units(),
            customer: e.account.kind() == AccountKind::Customer,
        })
        .collect();
    store::book_in(
        tx,
        &first.transfer.to_string(),
        first.kind.as_str(),
        first.currency.as_str(),
        &bookings,
        now,
    )
    .await
    .map_err(|e| match e {
        BookError::BelowFloor => Refusal::ExceedsBalance.into(),
        BookError::Database(e) => e.into(),
    })
}

/// A customer account by number, in `currency`, read in the transaction;
/// when `owner` is given, only if it is that customer's.
async fn customer_in<E>(
    tx: &mut Tx,
    number: &str,
    currency: Currency,
    owner: Option<&str>,
) -> Result<Account, E>
where
    E: From<Refusal> + From<sqlx::Error>,
{
    let row = store::account_in(tx, number)
        .await?
        .ok_or(Refusal::AccountNotFound)?;
    if owner.is_some_and(|o| row.customer_id.as_deref() != Some(o)) {
        return Err(Refusal::AccountMismatch.into());
    }
    let account = account_of(&row)?;
    account.check(AccountKind::Customer)?;
    if account.currency != currency {
        return Err(Refusal::CurrencyMismatch.into());
    }
    Ok(account)
}

async fn transfer_in<E>(tx: &mut Tx, id: TransferId) -> Result<Transfer, E>
where
    E: From<Refusal> + From<sqlx::Error>,
{
    let row = store::transfer_in(tx, &id.to_string())
        .await?
        .ok_or(Refusal::TransferNotFound)?;
    Ok(transfer_of(&row)?)
}

fn row_of(t: &Transfer, now: i64) -> TransferRow {
    TransferRow {
        id: t.id.to_string(),
        kind: kind_str(t.kind),
        debit: t.debit.to_string(),
        credit: t.credit.to_string(),
        amount_minor: t.amount.minor_units(),
        currency: t.currency.to_string(),
        state: match t.state {
            TransferState::Pending => "pending",
            TransferState::Posted => "posted",
            TransferState::Voided(_) => "voided",
        }
        .into(),
        void_reason: None,
        late: None,
        created_at_ms: now,
        decided_at_ms: None,
    }
}

/// Debits `customer`'s account and holds the amount in loads-in-flight:
/// a pending load. Returns the customer's balance after.
pub async fn open_load_in<E>(
    tx: &mut Tx,
    customer: &str,
    account: &str,
    currency: Currency,
    id: TransferId,
    amount: Amount,
    now: i64,
) -> Result<Balance, E>
where
    E: From<Refusal> + From<sqlx::Error>,
{
    let customer = customer_in::<E>(tx, account, currency, Some(customer)).await?;
    let suspense = Account::system(AccountKind::LoadsInFlight, currency)?;
    let (transfer, posting) = keyward_ledger::open_pending(&customer, &suspense, id, amount)?;
    store::insert_transfer_in(tx, &row_of(&transfer, now)).await?;
    book::<E>(tx, &posting, now).await?;
    Ok(customer.balance.checked_sub(amount)?)
}

/// Completes a pending load: loads-in-flight → float.
pub async fn post_load_in<E>(tx: &mut Tx, id: TransferId, now: i64) -> Result<(), E>
where
    E: From<Refusal> + From<sqlx::Error>,
{
    let transfer = transfer_in::<E>(tx, id).await?;
    let (_, posting) = keyward_ledger::post(&transfer)?;
    if !store::decide_transfer_in(tx, &id.to_string(), "posted", None, now).await? {
        return Err(Refusal::NotPending.into());
    }
    book::<E>(tx, &posting, now).await
}

/// Reverses a pending load: loads-in-flight → the customer.
pub async fn void_load_in<E>(
    tx: &mut Tx,
    id: TransferId,
    reason: VoidReason,
    now: i64,
) -> Result<(), E>
where
    E: From<Refusal> + From<sqlx::Error>,
{
    let transfer = transfer_in::<E>(tx, id).await?;
    let (_, posting) = keyward_ledger::void(&transfer, reason)?;
    let reason = Some(void_reason_str(reason));
    if !store::decide_transfer_in(tx, &id.to_string(), "voided", reason, now).await? {
        return Err(Refusal::NotPending.into());
    }
    book::<E>(tx, &posting, now).await
}

/// Settles a load voided without proof, once: `applied` (the purse proved
/// it loaded) re-debits it into the float, from the customer or, when the
/// customer is short, from the receivable; otherwise the reversal stands.
/// Returns who paid, if anyone.
pub async fn settle_doubtful_in<E>(
    tx: &mut Tx,
    id: TransferId,
    applied: bool,
    now: i64,
) -> Result<Option<Payer>, E>
where
    E: From<Refusal> + From<sqlx::Error>,
{
    let transfer = transfer_in::<E>(tx, id).await?;
    let (late, payer) = if applied {
        let customer =
            customer_in::<E>(tx, &transfer.debit.to_string(), transfer.currency, None).await?;
        let (next, posting) = keyward_ledger::reconcile_late(&transfer, &customer)?;
        book::<E>(tx, &posting, now).await?;
        match next.reconciliation {
            Reconciliation::LateApplied(Payer::Customer) => ("customer", Some(Payer::Customer)),
            _ => ("receivable", Some(Payer::Receivable)),
        }
    } else {
        keyward_ledger::close_doubtful(&transfer)?;
        ("closed", None)
    };
    if !store::settle_late_in(tx, &id.to_string(), late).await? {
        return Err(Refusal::AlreadyReconciled.into());
    }
    Ok(payer)
}

/// Money entering the ledger: external → the customer, posted at once.
/// Returns the transfer id and the customer's balance after.
pub async fn credit_external_in<E>(
    tx: &mut Tx,
    account: &str,
    id: TransferId,
    amount: Amount,
    now: i64,
) -> Result<Balance, E>
where
    E: From<Refusal> + From<sqlx::Error>,
{
    let row = store::account_in(tx, account)
        .await?
        .ok_or(Refusal::AccountNotFound)?;
    let customer = account_of(&row)?;
    let (transfer, posting) = keyward_ledger::credit_external(&customer, id, amount)?;
    let mut t = row_of(&transfer, now);
    t.decided_at_ms = Some(now);
    store::insert_transfer_in(tx, &t).await?;
    book::<E>(tx, &posting, now).await?;
    Ok(customer.balance.checked_add(amount)?)
}

/// [`Ledger::seal`], once across replicas, every `load.sweep_interval_ms`.
pub fn seal_job(state: &crate::state::AppState) -> crate::jobs::Job<crate::state::AppState> {
    use crate::jobs::{Job, JobError};
    let every = std::time::Duration::from_millis(state.config.load.sweep_interval_ms);
    Job::new(
        "ledger.seal",
        every,
        |state: crate::state::AppState| async move {
            state
                .ledger
                .seal()
                .await
                .map(drop)
                .map_err(|e| JobError::failed(e.code(), e))
        },
    )
    .once_across_replicas()
}
