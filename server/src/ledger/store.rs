//! The ledger's tables (migration 2060): accounts, transfers and their
//! append-only entries. The rules are `keyward_ledger`'s; this file only
//! writes what they decided, inside the caller's transaction (`_in`), so a
//! step's entries, its load row, its outbox row and its audit record commit
//! together.
//!
//! Two rules are also the database's own, so no code path can break them:
//! a customer balance never goes below its floor (a `CHECK`, and the
//! guarded `UPDATE` that books it), and a transfer's step books each
//! account once (`UNIQUE (transfer_id, step, account_id)`).

use keyward_kms::db::{Database, Tx};
use sqlx::Row;

/// An account's row. System accounts keep 0 in `balance_minor`: their
/// balance is the sum of their entries ([`balance`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountRow {
    pub id: String,
    pub kind: String,
    pub currency: String,
    pub customer_id: Option<String>,
    pub floor_minor: i64,
    pub balance_minor: i64,
    pub created_at_ms: i64,
}

/// A transfer's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferRow {
    pub id: String,
    pub kind: &'static str,
    pub debit: String,
    pub credit: String,
    pub amount_minor: i64,
    pub currency: String,
    pub state: String,
    pub void_reason: Option<String>,
    pub late: Option<String>,
    pub created_at_ms: i64,
    pub decided_at_ms: Option<i64>,
}

/// One entry to book: the account, its signed change, whether the account
/// is a customer's (its row's balance moves, floor-checked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Booking {
    pub account: String,
    pub delta_minor: i64,
    pub customer: bool,
}

/// Why a booking could not be written.
#[derive(Debug, thiserror::Error)]
pub enum BookError {
    /// The customer's balance would fall below its floor (another step
    /// took the money since the rules looked).
    #[error("the balance would fall below the account's floor")]
    BelowFloor,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

pub(super) const ACCOUNT_COLUMNS: &str =
    "id, kind, currency, customer_id, floor_minor, balance_minor, created_at_ms";

pub(super) fn account_row(r: &sqlx::any::AnyRow) -> Result<AccountRow, sqlx::Error> {
    Ok(AccountRow {
        id: r.try_get("id")?,
        kind: r.try_get("kind")?,
        currency: r.try_get("currency")?,
        customer_id: r.try_get("customer_id")?,
        floor_minor: r.try_get("floor_minor")?,
        balance_minor: r.try_get("balance_minor")?,
        created_at_ms: r.try_get("created_at_ms")?,
    })
}

/// Inserts an account; `false` when one with this id exists.
pub async fn insert_account_in(tx: &mut Tx, a: &AccountRow) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO ledger_accounts (id, kind, currency, customer_id, floor_minor, \
         balance_minor, created_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(&a.id)
    .bind(&a.kind)
    .bind(&a.currency)
    .bind(&a.customer_id)
    .bind(a.floor_minor)
    .bind(a.balance_minor)
    .bind(a.created_at_ms)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn account_in(tx: &mut Tx, id: &str) -> Result<Option<AccountRow>, sqlx::Error> {
    let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM ledger_accounts WHERE id = $1");
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?
        .as_ref()
        .map(account_row)
        .transpose()
}

pub async fn account(db: &Database, id: &str) -> Result<Option<AccountRow>, sqlx::Error> {
    let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM ledger_accounts WHERE id = $1");
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(db.pool())
        .await?
        .as_ref()
        .map(account_row)
        .transpose()
}

/// The account's balance: its row's for a customer's, the sum of its
/// entries for a system account.
pub async fn balance(db: &Database, a: &AccountRow) -> Result<i64, sqlx::Error> {
    if a.kind == "customer" {
        return Ok(a.balance_minor);
    }
    entries_sum(db, &a.id, i64::MAX).await
}

/// The sum of an account's entries up to and including entry `upto`.
pub async fn entries_sum(db: &Database, account: &str, upto: i64) -> Result<i64, sqlx::Error> {
    let row = sqlx::query(
        "SELECT CAST(COALESCE(SUM(delta_minor), 0) AS BIGINT) AS s FROM ledger_entries \
         WHERE account_id = $1 AND id <= $2",
    )
    .bind(account)
    .bind(upto)
    .fetch_one(db.pool())
    .await?;
    row.try_get("s")
}

pub async fn insert_transfer_in(tx: &mut Tx, t: &TransferRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO ledger_transfers (id, kind, debit_account, credit_account, amount_minor, \
         currency, state, created_at_ms, decided_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&t.id)
    .bind(t.kind)
    .bind(&t.debit)
    .bind(&t.credit)
    .bind(t.amount_minor)
    .bind(&t.currency)
    .bind(&t.state)
    .bind(t.created_at_ms)
    .bind(t.decided_at_ms)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub(super) const TRANSFER_COLUMNS: &str = "id, kind, debit_account, credit_account, amount_minor, currency, \
     state, void_reason, late, created_at_ms, decided_at_ms";

pub(super) fn transfer_row(r: &sqlx::any::AnyRow) -> Result<TransferRow, sqlx::Error> {
    let kind: String = r.try_get("kind")?;
    Ok(TransferRow {
        id: r.try_get("id")?,
        kind: match kind.as_str() {
            "external_credit" => "external_credit",
            "external_debit" => "external_debit",
            "load" => "load",
            _ => {
                return Err(sqlx::Error::ColumnDecode {
                    index: "kind".into(),
                    source: format!("unknown transfer kind {kind:?}").into(),
                });
            }
        },
        debit: r.try_get("debit_account")?,
        credit: r.try_get("credit_account")?,
        amount_minor: r.try_get("amount_minor")?,
        currency: r.try_get("currency")?,
        state: r.try_get("state")?,
        void_reason: r.try_get("void_reason")?,
        late: r.try_get("late")?,
        created_at_ms: r.try_get("created_at_ms")?,
        decided_at_ms: r.try_get("decided_at_ms")?,
    })
}

pub async fn transfer_in(tx: &mut Tx, id: &str) -> Result<Option<TransferRow>, sqlx::Error> {
    let sql = format!("SELECT {TRANSFER_COLUMNS} FROM ledger_transfers WHERE id = $1");
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?
        .as_ref()
        .map(transfer_row)
        .transpose()
}

pub async fn transfer(db: &Database, id: &str) -> Result<Option<TransferRow>, sqlx::Error> {
    let sql = format!("SELECT {TRANSFER_COLUMNS} FROM ledger_transfers WHERE id = $1");
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(db.pool())
        .await?
        .as_ref()
        .map(transfer_row)
        .transpose()
}

/// Posts or voids a pending transfer; `false` when it was not pending
/// (decided meanwhile: the caller's transaction must roll back).
pub async fn decide_transfer_in(
    tx: &mut Tx,
    id: &str,
    state: &str,
    void_reason: Option<&str>,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE ledger_transfers SET state = $1, void_reason = $2, decided_at_ms = $3 \
         WHERE id = $4 AND state = 'pending'",
    )
    .bind(state)
    .bind(void_reason)
    .bind(now)
    .bind(id)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Settles a doubtful (timeout-voided) load once; `false` when it was not
/// doubtful or was settled already.
pub async fn settle_late_in(tx: &mut Tx, id: &str, late: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE ledger_transfers SET late = $1 \
         WHERE id = $2 AND state = 'voided' AND void_reason IN ('timeout', 'bad_report') AND late IS NULL",
    )
    .bind(late)
    .bind(id)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Books one step's entries. A customer's balance moves in its row, only
/// while it stays at or above the floor ([`BookError::BelowFloor`]).
pub async fn book_in(
    tx: &mut Tx,
    transfer: &str,
    step: &str,
    currency: &str,
    entries: &[Booking],
    now: i64,
) -> Result<(), BookError> {
    for e in entries {
        if e.customer {
            let moved = sqlx::query(
                "UPDATE ledger_accounts SET balance_minor = balance_minor + $1 \
                 WHERE id = $2 AND kind = 'customer' AND balance_minor + $1 >= floor_minor",
            )
            .bind(e.delta_minor)
            .bind(&e.account)
            .execute(&mut **tx)
            .await?;
            if moved.rows_affected() != 1 {
                return Err(BookError::BelowFloor);
            }
        }
        sqlx::query(
            "INSERT INTO ledger_entries (transfer_id, step, account_id, delta_minor, currency, \
             created_at_ms) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(transfer)
        .bind(step)
        .bind(&e.account)
        .bind(e.delta_minor)
        .bind(currency)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// An entry as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryRow {
    pub id: i64,
    pub transfer_id: String,
    pub step: String,
    pub account_id: String,
    pub delta_minor: i64,
    pub currency: String,
    pub created_at_ms: i64,
    pub chain_seq: Option<i64>,
    pub chain_hash: Option<Vec<u8>>,
}

pub(super) const ENTRY_COLUMNS: &str = "id, transfer_id, step, account_id, delta_minor, currency, \
     created_at_ms, chain_seq, chain_hash";

pub(super) fn entry_row(r: &sqlx::any::AnyRow) -> Result<EntryRow, sqlx::Error> {
    Ok(EntryRow {
        id: r.try_get("id")?,
        transfer_id: r.try_get("transfer_id")?,
        step: r.try_get("step")?,
        account_id: r.try_get("account_id")?,
        delta_minor: r.try_get("delta_minor")?,
        currency: r.try_get("currency")?,
        created_at_ms: r.try_get("created_at_ms")?,
        chain_seq: r.try_get("chain_seq")?,
        chain_hash: r.try_get("chain_hash")?,
    })
}

/// An account's entries in booking order, `after` the given entry id.
pub async fn account_entries(
    db: &Database,
    account: &str,
    after: i64,
    limit: i64,
) -> Result<Vec<EntryRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {ENTRY_COLUMNS} FROM ledger_entries WHERE account_id = $1 AND id > $2 \
         ORDER BY id LIMIT $3"
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(account)
        .bind(after)
        .bind(limit)
        .fetch_all(db.pool())
        .await?
        .iter()
        .map(entry_row)
        .collect()
}

/// A transfer's entries in booking order.
pub async fn transfer_entries(db: &Database, transfer: &str) -> Result<Vec<EntryRow>, sqlx::Error> {
    let sql =
        format!("SELECT {ENTRY_COLUMNS} FROM ledger_entries WHERE transfer_id = $1 ORDER BY id");
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(transfer)
        .fetch_all(db.pool())
        .await?
        .iter()
        .map(entry_row)
        .collect()
}

/// Entries not yet in the chain, oldest first.
pub async fn unsealed(db: &Database, limit: i64) -> Result<Vec<EntryRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {ENTRY_COLUMNS} FROM ledger_entries WHERE chain_seq IS NULL ORDER BY id LIMIT $1"
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(limit)
        .fetch_all(db.pool())
        .await?
        .iter()
        .map(entry_row)
        .collect()
}

/// Puts an entry in the chain; `false` when it was sealed meanwhile.
pub async fn seal_in(tx: &mut Tx, id: i64, seq: i64, hash: &[u8]) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE ledger_entries SET chain_seq = $1, chain_hash = $2 WHERE id = $3 AND chain_seq IS NULL",
    )
    .bind(seq)
    .bind(hash)
    .bind(id)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// A signed head of the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub chain_seq: i64,
    pub chain_hash: Vec<u8>,
    pub signature: Vec<u8>,
    pub signed_at_ms: i64,
}

pub async fn insert_checkpoint_in(tx: &mut Tx, c: &Checkpoint) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO ledger_checkpoints (chain_seq, chain_hash, signature, signed_at_ms) \
         VALUES ($1, $2, $3, $4)",
    )
    .bind(c.chain_seq)
    .bind(&c.chain_hash)
    .bind(&c.signature)
    .bind(c.signed_at_ms)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Every checkpoint, oldest first, read in the caller's transaction (one
/// snapshot with the rows it checks).
pub async fn checkpoints_in(tx: &mut Tx) -> Result<Vec<Checkpoint>, sqlx::Error> {
    sqlx::query(
        "SELECT chain_seq, chain_hash, signature, signed_at_ms FROM ledger_checkpoints \
         ORDER BY chain_seq",
    )
    .fetch_all(&mut **tx)
    .await?
    .iter()
    .map(|r| {
        Ok(Checkpoint {
            chain_seq: r.try_get("chain_seq")?,
            chain_hash: r.try_get("chain_hash")?,
            signature: r.try_get("signature")?,
            signed_at_ms: r.try_get("signed_at_ms")?,
        })
    })
    .collect()
}

/// The chain's head: its last sealed entry's seq and hash.
pub async fn chain_head(db: &Database) -> Result<Option<(i64, Vec<u8>)>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT chain_seq, chain_hash FROM ledger_entries WHERE chain_seq IS NOT NULL \
         ORDER BY chain_seq DESC LIMIT 1",
    )
    .fetch_optional(db.pool())
    .await?;
    row.map(|r| Ok((r.try_get("chain_seq")?, r.try_get("chain_hash")?)))
        .transpose()
}
