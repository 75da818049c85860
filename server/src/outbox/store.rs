//! Table `outbox` (server migration 2040): enqueue inside a caller's
//! transaction, the drain's claim and outcome, receipts, the admin view.
//! The same SQL on SQLite and PostgreSQL, but for the claim's row locking.

use std::future::Future;

use keyward_config::DatabaseKind;
use keyward_kms::db::{
    ColumnError, Database, MAX_ATTEMPTS, Tx, int_col, now_ms, parse_col, parse_opt,
};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Channel, MessageId, NewMessage, Outgoing, ReceiptStatus, State};

/// Writes `msg` as a `pending` message inside the caller's transaction: it
/// is sent only if, and once, that transaction commits. The id is new.
pub async fn enqueue_in(tx: &mut Tx, msg: &NewMessage) -> Result<MessageId, sqlx::Error> {
    let id = MessageId::new();
    let now = now_ms();
    sqlx::query(
        "INSERT INTO outbox (message_id, topic, channel, recipient, subject_id, payload, \
         state, attempts, next_attempt_at_ms, created_at_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, 'pending', 0, $7, $7)",
    )
    .bind(id.to_string())
    .bind(&msg.topic)
    .bind(msg.channel.as_str())
    .bind(&msg.recipient)
    .bind(&msg.subject_id)
    .bind(msg.payload.as_slice())
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(id)
}

/// Records the receiver's report `receipt_id` on message `id` (a delivery
/// receipt), inside the caller's transaction. Whether the message exists.
pub async fn record_receipt_in(
    tx: &mut Tx,
    id: &MessageId,
    status: ReceiptStatus,
    receipt_id: &str,
    at_ms: i64,
) -> Result<bool, sqlx::Error> {
    let n = sqlx::query(
        "UPDATE outbox SET receipt_status = $1, receipt_at_ms = $2, receipt_id = $3 \
         WHERE message_id = $4",
    )
    .bind(status.as_str())
    .bind(at_ms)
    .bind(receipt_id)
    .bind(id.to_string())
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// The claim: one conditional UPDATE whose WHERE clause holds the whole
/// rule (due, still to send, not leased), checked again on each row it
/// changes. PostgreSQL also skips rows another replica's claim has locked,
/// so that claim takes the next ones instead of waiting.
macro_rules! claim_sql {
    ($lock:literal) => {
        concat!(
            "UPDATE outbox SET lease_owner = $1, lease_until_ms = $2, attempts = attempts + 1 \
             WHERE message_id IN ( \
                 SELECT message_id FROM outbox \
                 WHERE state IN ('pending', 'failed') AND next_attempt_at_ms <= $3 \
                   AND (lease_until_ms IS NULL OR lease_until_ms <= $3) \
                 ORDER BY next_attempt_at_ms LIMIT $4",
            $lock,
            ") AND state IN ('pending', 'failed') \
             AND (lease_until_ms IS NULL OR lease_until_ms <= $3) \
             RETURNING message_id, topic, channel, recipient, payload, attempts"
        )
    };
}

/// Leases up to `limit` due messages to `owner` until `now + lease_ms` and
/// counts the attempt: of two replicas claiming at once, each message goes
/// to one.
pub(super) async fn claim(
    db: &Database,
    owner: &str,
    now: i64,
    lease_ms: i64,
    limit: u32,
) -> Result<Vec<Outgoing>, sqlx::Error> {
    let sql = match db.kind() {
        DatabaseKind::Sqlite => claim_sql!(""),
        DatabaseKind::Postgres => claim_sql!(" FOR UPDATE SKIP LOCKED"),
    };
    let rows = alone(db, || {
        sqlx::query(sql)
            .bind(owner)
            .bind(now.saturating_add(lease_ms))
            .bind(now)
            .bind(i64::from(limit))
            .fetch_all(db.pool())
    })
    .await?;
    rows.iter().map(outgoing).collect()
}

/// Runs one write statement on its own, in no transaction: the drain's
/// statements each carry their whole condition, so a transaction would add
/// nothing but serializable races with the other replica's claim. Takes
/// this process's writer turn on SQLite, like every write, and runs the
/// statement again if PostgreSQL still reports a lost race (a server whose
/// default isolation is serializable).
async fn alone<T, F, Fut>(db: &Database, mut statement: F) -> Result<T, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, sqlx::Error>>,
{
    let mut attempt = 1;
    loop {
        let result = {
            let _turn = db.writer_turn().await?;
            statement().await
        };
        match result {
            Err(e) if attempt < MAX_ATTEMPTS && db.is_serialization_failure(&e) => {
                tokio::time::sleep(std::time::Duration::from_millis(u64::from(attempt) * 5)).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

fn outgoing(r: &AnyRow) -> Result<Outgoing, sqlx::Error> {
    Ok(Outgoing {
        message_id: parse_col(r, "message_id", "outbox.message_id").map_err(corrupt)?,
        topic: r.try_get("topic")?,
        channel: parse_col(r, "channel", "outbox.channel").map_err(corrupt)?,
        recipient: r.try_get("recipient")?,
        payload: r.try_get("payload")?,
        attempt: int_col(r, "attempts", "outbox.attempts").map_err(corrupt)?,
    })
}

/// A column that did not read back as its domain type.
fn corrupt(e: ColumnError) -> sqlx::Error {
    match e {
        ColumnError::Read(e) => e,
        corrupt => sqlx::Error::Decode(Box::new(corrupt)),
    }
}

/// What became of one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    Sent,
    Retry { at_ms: i64, code: &'static str },
    GaveUp { code: &'static str },
}

/// Records `outcome` for message `id` and ends `owner`'s lease on it, unless
/// another owner has taken it over (one conditional UPDATE). Whether it was
/// recorded.
pub(super) async fn record(
    db: &Database,
    id: &MessageId,
    owner: &str,
    outcome: &Outcome,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let (state, next_at, code, sent_at) = match *outcome {
        Outcome::Sent => (State::Sent, None, None, Some(now)),
        Outcome::Retry { at_ms, code } => (State::Failed, Some(at_ms), Some(code), None),
        Outcome::GaveUp { code } => (State::GaveUp, None, Some(code), None),
    };
    let id = id.to_string();
    let n = alone(db, || {
        sqlx::query(
            "UPDATE outbox SET state = $1, \
             next_attempt_at_ms = COALESCE($2, next_attempt_at_ms), \
             last_error = COALESCE($3, last_error), sent_at_ms = $4, \
             lease_owner = NULL, lease_until_ms = NULL, \
             payload = CASE WHEN $1 IN ('sent', 'gave_up') THEN $7 ELSE payload END \
             WHERE message_id = $5 AND lease_owner = $6 AND state IN ('pending', 'failed')",
        )
        .bind(state.as_str())
        .bind(next_at)
        .bind(code)
        .bind(sent_at)
        .bind(&id)
        .bind(owner)
        // A settled message's body is erased: a one-time code must not
        // outlive its delivery in the database.
        .bind(Vec::<u8>::new())
        .execute(db.pool())
    })
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// One message as the admin view shows it: no recipient, no payload.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MessageView {
    pub message_id: String,
    pub topic: String,
    pub channel: String,
    pub state: String,
    pub attempts: u32,
    /// The last failure's code, kept after a later success.
    pub last_error: Option<String>,
    pub created_at_ms: i64,
    /// When the next attempt is due (pending, failed).
    pub next_attempt_at_ms: i64,
    pub sent_at_ms: Option<i64>,
    pub receipt_status: Option<String>,
    pub receipt_at_ms: Option<i64>,
}

pub(super) async fn messages_of(
    db: &Database,
    subject_id: &str,
) -> Result<Vec<MessageView>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT message_id, topic, channel, state, attempts, last_error, created_at_ms, \
         next_attempt_at_ms, sent_at_ms, receipt_status, receipt_at_ms \
         FROM outbox WHERE subject_id = $1 ORDER BY created_at_ms, message_id",
    )
    .bind(subject_id)
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|r| {
            // Checked against their closed sets, so the view never shows a
            // value the code does not know.
            let channel: Channel = parse_col(r, "channel", "outbox.channel").map_err(corrupt)?;
            let state: State = parse_col(r, "state", "outbox.state").map_err(corrupt)?;
            let receipt: Option<ReceiptStatus> =
                parse_opt(r, "receipt_status", "outbox.receipt_status").map_err(corrupt)?;
            Ok(MessageView {
                message_id: r.try_get("message_id")?,
                topic: r.try_get("topic")?,
                channel: channel.as_str().to_owned(),
                state: state.as_str().to_owned(),
                attempts: int_col(r, "attempts", "outbox.attempts").map_err(corrupt)?,
                last_error: r.try_get("last_error")?,
                created_at_ms: r.try_get("created_at_ms")?,
                next_attempt_at_ms: r.try_get("next_attempt_at_ms")?,
                sent_at_ms: r.try_get("sent_at_ms")?,
                receipt_status: receipt.map(|s| s.as_str().to_owned()),
                receipt_at_ms: r.try_get("receipt_at_ms")?,
            })
        })
        .collect()
}

/// What became of one message, as an evidence receipt names it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delivery {
    /// When the receiver accepted it (`sent`).
    pub sent_at_ms: Option<i64>,
    /// The receiver's delivery report, if any.
    pub receipt_status: Option<ReceiptStatus>,
    pub receipt_at_ms: Option<i64>,
    /// The receiver's id of that report.
    pub receipt_id: Option<String>,
}

/// The delivery facts of message `id`, if it exists.
pub async fn delivery(db: &Database, id: &str) -> Result<Option<Delivery>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT sent_at_ms, receipt_status, receipt_at_ms, receipt_id FROM outbox \
         WHERE message_id = $1",
    )
    .bind(id)
    .fetch_optional(db.pool())
    .await?;
    row.map(|r| {
        Ok(Delivery {
            sent_at_ms: r.try_get("sent_at_ms")?,
            receipt_status: parse_opt(&r, "receipt_status", "outbox.receipt_status")
                .map_err(corrupt)?,
            receipt_at_ms: r.try_get("receipt_at_ms")?,
            receipt_id: r.try_get("receipt_id")?,
        })
    })
    .transpose()
}

/// Messages still to send (`pending` or `failed`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    pub messages: u64,
    /// Age of the oldest of them (0 when there are none).
    pub oldest_age_ms: i64,
}

pub(super) async fn backlog(db: &Database, now: i64) -> Result<Backlog, sqlx::Error> {
    let r = sqlx::query(
        "SELECT COUNT(*) AS n, MIN(created_at_ms) AS oldest FROM outbox \
         WHERE state IN ('pending', 'failed')",
    )
    .fetch_one(db.pool())
    .await?;
    let oldest: Option<i64> = r.try_get("oldest")?;
    Ok(Backlog {
        messages: int_col(&r, "n", "outbox.n").map_err(corrupt)?,
        oldest_age_ms: oldest.map_or(0, |t| now.saturating_sub(t).max(0)),
    })
}
