//! The loads table and the devices' sequence numbers (migration 2060).
//! Writes run inside the caller's transaction (`_in`). A load's request and
//! permit bytes are written once and never updated.

use keyward_kms::db::{Database, Tx};
use sqlx::Row;

/// Where a load stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Permit issued, the amount held in loads-in-flight.
    Pending,
    /// The purse applied it: the amount reached the float.
    Posted,
    /// The purse did not apply it (its failure report, or its next
    /// contact proved it): the amount went back.
    Voided,
    /// Voided without proof (no report in time, or a report that did not
    /// add up): settled at the device's next contact.
    Doubtful,
    /// Doubtful, then found applied: re-debited.
    LateApplied,
    /// Doubtful, then found not applied: the reversal stands.
    NotApplied,
}

impl State {
    pub const ALL: [State; 6] = [
        Self::Pending,
        Self::Posted,
        Self::Voided,
        Self::Doubtful,
        Self::LateApplied,
        Self::NotApplied,
    ];

    /// The states whose loads still hold money in suspense, bounded by the
    /// loads in flight; the others only grow, and are counted as they are
    /// reached (`keyward_loads_total`), never by reading the table.
    pub const UNSETTLED: [State; 2] = [Self::Pending, Self::Doubtful];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Posted => "posted",
            Self::Voided => "voided",
            Self::Doubtful => "doubtful",
            Self::LateApplied => "late_applied",
            Self::NotApplied => "not_applied",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

/// A load as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct LoadRow {
    pub id: String,
    pub device_id: String,
    pub issuer_id: String,
    pub sequence: i64,
    pub customer_id: String,
    pub account_id: String,
    pub amount_minor: i64,
    pub currency: String,
    pub wallet_before: i64,
    pub request: Vec<u8>,
    pub request_sig: Vec<u8>,
    pub permit: Vec<u8>,
    pub permit_sig: Vec<u8>,
    pub state: State,
    pub reason: Option<String>,
    pub device_reason: Option<i64>,
    pub report: Option<Vec<u8>>,
    pub report_sig: Option<Vec<u8>>,
    pub wallet_after: Option<i64>,
    pub flagged: bool,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    pub decided_at_ms: Option<i64>,
    pub settled_at_ms: Option<i64>,
}

impl std::fmt::Debug for LoadRow {
    /// The account number is the customer's: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadRow")
            .field("id", &self.id)
            .field("sequence", &self.sequence)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

const COLUMNS: &str = "id, device_id, issuer_id, sequence, customer_id, account_id, amount_minor, \
     currency, wallet_before, request, request_sig, permit, permit_sig, state, reason, \
     device_reason, report, report_sig, wallet_after, flagged, created_at_ms, expires_at_ms, \
     decided_at_ms, settled_at_ms";

fn row(r: &sqlx::any::AnyRow) -> Result<LoadRow, sqlx::Error> {
    let state: String = r.try_get("state")?;
    let flagged: i64 = r.try_get("flagged")?;
    Ok(LoadRow {
        id: r.try_get("id")?,
        device_id: r.try_get("device_id")?,
        issuer_id: r.try_get("issuer_id")?,
        sequence: r.try_get("sequence")?,
        customer_id: r.try_get("customer_id")?,
        account_id: r.try_get("account_id")?,
        amount_minor: r.try_get("amount_minor")?,
        currency: r.try_get("currency")?,
        wallet_before: r.try_get("wallet_before")?,
        request: r.try_get("request")?,
        request_sig: r.try_get("request_sig")?,
        permit: r.try_get("permit")?,
        permit_sig: r.try_get("permit_sig")?,
        state: State::parse(&state).ok_or_else(|| sqlx::Error::ColumnDecode {
            index: "state".into(),
            source: format!("unknown load state {state:?}").into(),
        })?,
        reason: r.try_get("reason")?,
        device_reason: r.try_get("device_reason")?,
        report: r.try_get("report")?,
        report_sig: r.try_get("report_sig")?,
        wallet_after: r.try_get("wallet_after")?,
        flagged: flagged != 0,
        created_at_ms: r.try_get("created_at_ms")?,
        expires_at_ms: r.try_get("expires_at_ms")?,
        decided_at_ms: r.try_get("decided_at_ms")?,
        settled_at_ms: r.try_get("settled_at_ms")?,
    })
}

pub async fn insert_in(tx: &mut Tx, l: &LoadRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO loads (id, device_id, issuer_id, sequence, customer_id, account_id, \
         amount_minor, currency, wallet_before, request, request_sig, permit, permit_sig, \
         state, created_at_ms, expires_at_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 'pending', $14, $15)",
    )
    .bind(&l.id)
    .bind(&l.device_id)
    .bind(&l.issuer_id)
    .bind(l.sequence)
    .bind(&l.customer_id)
    .bind(&l.account_id)
    .bind(l.amount_minor)
    .bind(&l.currency)
    .bind(l.wallet_before)
    .bind(&l.request)
    .bind(&l.request_sig)
    .bind(&l.permit)
    .bind(&l.permit_sig)
    .bind(l.created_at_ms)
    .bind(l.expires_at_ms)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub async fn get(db: &Database, id: &str) -> Result<Option<LoadRow>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM loads WHERE id = $1");
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(db.pool())
        .await?
        .as_ref()
        .map(row)
        .transpose()
}

pub async fn by_sequence(
    db: &Database,
    device: &str,
    sequence: i64,
) -> Result<Option<LoadRow>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM loads WHERE device_id = $1 AND sequence = $2");
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(device)
        .bind(sequence)
        .fetch_optional(db.pool())
        .await?
        .as_ref()
        .map(row)
        .transpose()
}

/// A device's loads not yet settled (pending or doubtful), oldest first.
pub async fn unsettled(db: &Database, device: &str) -> Result<Vec<LoadRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM loads WHERE device_id = $1 AND state IN ('pending', 'doubtful') \
         ORDER BY sequence"
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(device)
        .fetch_all(db.pool())
        .await?
        .iter()
        .map(row)
        .collect()
}

/// Pending loads whose report is overdue, oldest first.
pub async fn overdue(db: &Database, now: i64, limit: i64) -> Result<Vec<LoadRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM loads WHERE state = 'pending' AND expires_at_ms <= $1 \
         ORDER BY expires_at_ms LIMIT $2"
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(now)
        .bind(limit)
        .fetch_all(db.pool())
        .await?
        .iter()
        .map(row)
        .collect()
}

/// Loads in a state (or all), newest first.
pub async fn list(
    db: &Database,
    state: Option<State>,
    limit: i64,
) -> Result<Vec<LoadRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM loads WHERE ($1 = '' OR state = $1) \
         ORDER BY created_at_ms DESC, id LIMIT $2"
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(state.map_or("", State::as_str))
        .bind(limit)
        .fetch_all(db.pool())
        .await?
        .iter()
        .map(row)
        .collect()
}

/// An index search on `state` (`loads_state`, or the `loads_unsettled`
/// partial index, whose predicate this filter repeats), never a table scan.
const UNSETTLED_COUNTS: &str = "SELECT state, COUNT(*) AS n, CAST(COALESCE(SUM(amount_minor), 0) AS BIGINT) AS amount \
     FROM loads WHERE state IN ('pending', 'doubtful') GROUP BY state";

/// How many loads are in each unsettled state, and their amount. Reads the
/// unsettled loads' rows only, so its cost follows the loads in flight, not
/// the whole history (a gauge job runs it every second on every replica).
pub async fn unsettled_counts(db: &Database) -> Result<Vec<(String, i64, i64)>, sqlx::Error> {
    sqlx::query(UNSETTLED_COUNTS)
        .fetch_all(db.pool())
        .await?
        .iter()
        .map(|r| Ok((r.try_get("state")?, r.try_get("n")?, r.try_get("amount")?)))
        .collect()
}

/// What a decided report leaves on the load.
#[derive(Debug, Clone, Default)]
pub struct Decision<'a> {
    pub reason: Option<&'a str>,
    pub device_reason: Option<i64>,
    pub report: Option<(&'a [u8], &'a [u8])>,
    pub wallet_after: Option<i64>,
    pub flagged: bool,
}

/// Moves a load from `from` to `to` with what decided it; `false` when it
/// was not in `from` (decided meanwhile: roll back).
pub async fn decide_in(
    tx: &mut Tx,
    id: &str,
    from: State,
    to: State,
    d: &Decision<'_>,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let (report, report_sig) = d.report.unzip();
    let done = sqlx::query(
        "UPDATE loads SET state = $1, reason = COALESCE($2, reason), \
         device_reason = COALESCE($3, device_reason), report = COALESCE($4, report), \
         report_sig = COALESCE($5, report_sig), wallet_after = COALESCE($6, wallet_after), \
         flagged = CASE WHEN $7 = 1 THEN 1 ELSE flagged END, \
         decided_at_ms = COALESCE(decided_at_ms, $8), \
         settled_at_ms = CASE WHEN $1 IN ('late_applied', 'not_applied') THEN $8 \
                              ELSE settled_at_ms END \
         WHERE id = $9 AND state = $10",
    )
    .bind(to.as_str())
    .bind(d.reason)
    .bind(d.device_reason)
    .bind(report)
    .bind(report_sig)
    .bind(d.wallet_after)
    .bind(i64::from(d.flagged))
    .bind(now)
    .bind(id)
    .bind(from.as_str())
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Takes `sequence` as the device's newest; `false` when it is not greater
/// than the last one taken (a replay or an out-of-order message).
pub async fn take_sequence_in(
    tx: &mut Tx,
    device: &str,
    sequence: i64,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO purse_sequences (device_id, last_sequence) VALUES ($1, $2) \
         ON CONFLICT (device_id) DO NOTHING",
    )
    .bind(device)
    .bind(sequence)
    .execute(&mut **tx)
    .await?;
    if inserted.rows_affected() == 1 {
        return Ok(true);
    }
    let bumped = sqlx::query(
        "UPDATE purse_sequences SET last_sequence = $1 WHERE device_id = $2 AND last_sequence < $1",
    )
    .bind(sequence)
    .bind(device)
    .execute(&mut **tx)
    .await?;
    Ok(bumped.rows_affected() == 1)
}

/// The last sequence number a device used, 0 before its first.
pub async fn last_sequence(db: &Database, device: &str) -> Result<i64, sqlx::Error> {
    let row = sqlx::query("SELECT last_sequence FROM purse_sequences WHERE device_id = $1")
        .bind(device)
        .fetch_optional(db.pool())
        .await?;
    row.map_or(Ok(0), |r| r.try_get("last_sequence"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The gauge query finds the unsettled loads by an index, never by
    /// scanning the table: a scan of every load ever made, every second,
    /// slowed a 30-minute soak by a fifth.
    #[tokio::test]
    async fn the_gauge_query_reads_only_unsettled_loads() {
        let (_dir, db) = crate::migrate::test_database().await;
        let plan: Vec<String> = sqlx::query(sqlx::AssertSqlSafe(format!(
            "EXPLAIN QUERY PLAN {UNSETTLED_COUNTS}"
        )))
        .fetch_all(db.pool())
        .await
        .unwrap()
        .iter()
        .map(|r| r.try_get::<String, _>("detail").unwrap())
        .collect();
        assert!(
            !plan.is_empty() && plan.iter().all(|d| d.starts_with("SEARCH loads USING")),
            "{plan:?}"
        );
        let states: Vec<&str> = State::UNSETTLED.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            states,
            ["pending", "doubtful"],
            "the query's filter names these"
        );
    }
}
