//! The channel tables (migrations 2070, 2078, 2081). Writes run inside the caller's
//! transaction (`_in`); the wrapped keys are written as the HSM gave them
//! and never read by anything but the HSM's unwrap.

use keyward_kms::db::{Database, Tx};
use keyward_kms::service::CHANNEL_KEY_LABEL;
use sqlx::Row;

/// A handshake waiting for the card's key exchange.
#[derive(Clone)]
pub struct HandshakeRow {
    pub id: String,
    pub terminal_id: String,
    pub client_hello: Vec<u8>,
    pub server_hello: Vec<u8>,
    /// The channel key the ServerHello named.
    pub key_label: String,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    /// The ECDHE mode's ephemeral private key, wrapped under the state KEK.
    pub server_ephemeral: Option<Vec<u8>>,
}

impl std::fmt::Debug for HandshakeRow {
    /// The wrapped ephemeral is not printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandshakeRow")
            .field("id", &self.id)
            .field("key_label", &self.key_label)
            .field("expires_at_ms", &self.expires_at_ms)
            .finish_non_exhaustive()
    }
}

/// A channel as stored: its keys are wrapped under the state KEK.
#[derive(Clone)]
pub struct ChannelRow {
    pub id: String,
    pub device_id: String,
    /// The serial of the card certificate the key exchange proved.
    pub card_serial: String,
    pub terminal_id: String,
    pub open: bool,
    pub c2s_key: Vec<u8>,
    pub s2c_key: Vec<u8>,
    pub exporter_key: Vec<u8>,
    pub iv_c2s: Vec<u8>,
    pub iv_s2c: Vec<u8>,
    pub c2s_sequence: i64,
    pub s2c_sequence: i64,
    pub c2s_generation: i64,
    pub s2c_generation: i64,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
}

impl std::fmt::Debug for ChannelRow {
    /// The wrapped keys are not printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelRow")
            .field("id", &self.id)
            .field("open", &self.open)
            .field("c2s_sequence", &self.c2s_sequence)
            .field("s2c_sequence", &self.s2c_sequence)
            .finish_non_exhaustive()
    }
}

pub async fn insert_handshake(db: &Database, h: &HandshakeRow) -> Result<(), sqlx::Error> {
    db.execute("channel.hello", || {
        sqlx::query(
            "INSERT INTO channel_handshakes (id, terminal_id, client_hello, server_hello, \
             created_at_ms, expires_at_ms, key_label, server_ephemeral) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&h.id)
        .bind(&h.terminal_id)
        .bind(&h.client_hello)
        .bind(&h.server_hello)
        .bind(h.created_at_ms)
        .bind(h.expires_at_ms)
        .bind(&h.key_label)
        .bind(&h.server_ephemeral)
    })
    .await?;
    Ok(())
}

pub async fn handshake(db: &Database, id: &str) -> Result<Option<HandshakeRow>, sqlx::Error> {
    sqlx::query(
        "SELECT id, terminal_id, client_hello, server_hello, created_at_ms, expires_at_ms, \
         key_label, server_ephemeral FROM channel_handshakes WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(db.pool())
    .await?
    .map(|r| {
        Ok(HandshakeRow {
            id: r.try_get("id")?,
            terminal_id: r.try_get("terminal_id")?,
            client_hello: r.try_get("client_hello")?,
            server_hello: r.try_get("server_hello")?,
            key_label: r
                .try_get::<Option<String>, _>("key_label")?
                .unwrap_or_else(|| CHANNEL_KEY_LABEL.to_owned()),
            created_at_ms: r.try_get("created_at_ms")?,
            expires_at_ms: r.try_get("expires_at_ms")?,
            server_ephemeral: r.try_get("server_ephemeral")?,
        })
    })
    .transpose()
}

/// Takes the handshake `id` (single use); false when another step (or
/// replica) took it first.
pub async fn take_handshake_in(tx: &mut Tx, id: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM channel_handshakes WHERE id = $1")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn insert_in(tx: &mut Tx, c: &ChannelRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO channels (id, device_id, terminal_id, state, c2s_key, s2c_key, \
         exporter_key, iv_c2s, iv_s2c, c2s_sequence, s2c_sequence, c2s_generation, \
         s2c_generation, created_at_ms, expires_at_ms, card_serial) \
         VALUES ($1, $2, $3, 'open', $4, $5, $6, $7, $8, 0, 0, 0, 0, $9, $10, $11)",
    )
    .bind(&c.id)
    .bind(&c.device_id)
    .bind(&c.terminal_id)
    .bind(&c.c2s_key)
    .bind(&c.s2c_key)
    .bind(&c.exporter_key)
    .bind(&c.iv_c2s)
    .bind(&c.iv_s2c)
    .bind(c.created_at_ms)
    .bind(c.expires_at_ms)
    .bind(&c.card_serial)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub async fn get(db: &Database, id: &str) -> Result<Option<ChannelRow>, sqlx::Error> {
    sqlx::query(
        "SELECT id, device_id, terminal_id, state, c2s_key, s2c_key, exporter_key, iv_c2s, \
         iv_s2c, c2s_sequence, s2c_sequence, c2s_generation, s2c_generation, created_at_ms, \
         expires_at_ms, card_serial FROM channels WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(db.pool())
    .await?
    .map(|r| {
        let state: String = r.try_get("state")?;
        Ok(ChannelRow {
            id: r.try_get("id")?,
            device_id: r.try_get("device_id")?,
            card_serial: r.try_get("card_serial")?,
            terminal_id: r.try_get("terminal_id")?,
            open: state == "open",
            c2s_key: r.try_get("c2s_key")?,
            s2c_key: r.try_get("s2c_key")?,
            exporter_key: r.try_get("exporter_key")?,
            iv_c2s: r.try_get("iv_c2s")?,
            iv_s2c: r.try_get("iv_s2c")?,
            c2s_sequence: r.try_get("c2s_sequence")?,
            s2c_sequence: r.try_get("s2c_sequence")?,
            c2s_generation: r.try_get("c2s_generation")?,
            s2c_generation: r.try_get("s2c_generation")?,
            created_at_ms: r.try_get("created_at_ms")?,
            expires_at_ms: r.try_get("expires_at_ms")?,
        })
    })
    .transpose()
}

/// Claims one data record: moves both sequences past it if the channel is
/// still open, unexpired, and exactly where the record was opened (the
/// card's generation and sequence, the server's generation and sequence). A
/// compare-and-set committed before the carried request runs: two replicas
/// never both run one record, and its answer is sealed under the server
/// sequence claimed. With `next_key` the server's direction moves to its
/// next key: generation + 1, its record 0 then sent (sequence 1).
pub async fn claim_in(
    tx: &mut Tx,
    row: &ChannelRow,
    now_ms: i64,
    next_key: Option<&[u8]>,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE channels SET c2s_sequence = c2s_sequence + 1, \
         s2c_sequence = CASE WHEN $7 IS NULL THEN s2c_sequence + 1 ELSE 1 END, \
         s2c_generation = CASE WHEN $7 IS NULL THEN s2c_generation ELSE s2c_generation + 1 END, \
         s2c_key = COALESCE($7, s2c_key) \
         WHERE id = $1 AND state = 'open' AND expires_at_ms > $2 AND c2s_sequence = $3 \
         AND c2s_generation = $4 AND s2c_sequence = $5 AND s2c_generation = $6",
    )
    .bind(&row.id)
    .bind(now_ms)
    .bind(row.c2s_sequence)
    .bind(row.c2s_generation)
    .bind(row.s2c_sequence)
    .bind(row.s2c_generation)
    .bind(next_key)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The card's key update at sequence `c2s`: its next key, generation + 1,
/// sequence 0.
pub async fn rekey_c2s_in(
    tx: &mut Tx,
    id: &str,
    c2s: i64,
    generation: i64,
    key: &[u8],
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE channels SET c2s_key = $1, c2s_generation = $2 + 1, c2s_sequence = 0 \
         WHERE id = $3 AND state = 'open' AND c2s_sequence = $4 AND c2s_generation = $2",
    )
    .bind(key)
    .bind(generation)
    .bind(id)
    .bind(c2s)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Closes the channel; false when it was closed already.
pub async fn close_in(tx: &mut Tx, id: &str, now_ms: i64) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE channels SET state = 'closed', closed_at_ms = $1 WHERE id = $2 AND state = 'open'",
    )
    .bind(now_ms)
    .bind(id)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// A resumption ticket as stored (migration 2071): its secret is wrapped
/// under the state KEK.
#[derive(Clone)]
pub struct TicketRow {
    pub id: String,
    pub device_id: String,
    pub cert_serial: String,
    pub secret: Vec<u8>,
    pub channel_id: String,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    pub used_at_ms: Option<i64>,
}

impl std::fmt::Debug for TicketRow {
    /// Neither the handle nor the wrapped secret is printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketRow")
            .field("channel_id", &self.channel_id)
            .field("expires_at_ms", &self.expires_at_ms)
            .field("used", &self.used_at_ms.is_some())
            .finish_non_exhaustive()
    }
}

pub async fn insert_ticket_in(tx: &mut Tx, t: &TicketRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO channel_tickets (id, device_id, cert_serial, secret, channel_id, \
         created_at_ms, expires_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&t.id)
    .bind(&t.device_id)
    .bind(&t.cert_serial)
    .bind(&t.secret)
    .bind(&t.channel_id)
    .bind(t.created_at_ms)
    .bind(t.expires_at_ms)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub async fn ticket(db: &Database, id: &str) -> Result<Option<TicketRow>, sqlx::Error> {
    sqlx::query(
        "SELECT id, device_id, cert_serial, secret, channel_id, created_at_ms, expires_at_ms, \
         used_at_ms FROM channel_tickets WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(db.pool())
    .await?
    .map(|r| {
        Ok(TicketRow {
            id: r.try_get("id")?,
            device_id: r.try_get("device_id")?,
            cert_serial: r.try_get("cert_serial")?,
            secret: r.try_get("secret")?,
            channel_id: r.try_get("channel_id")?,
            created_at_ms: r.try_get("created_at_ms")?,
            expires_at_ms: r.try_get("expires_at_ms")?,
            used_at_ms: r.try_get("used_at_ms")?,
        })
    })
    .transpose()
}

/// Spends the ticket `id` (single use); false when it was spent already
/// (by another replica too) or has expired.
pub async fn use_ticket_in(tx: &mut Tx, id: &str, now_ms: i64) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE channel_tickets SET used_at_ms = $1 \
         WHERE id = $2 AND used_at_ms IS NULL AND expires_at_ms > $1",
    )
    .bind(now_ms)
    .bind(id)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The channel key new handshakes use: the newest rotated one, or init's.
pub async fn current_key(db: &Database) -> Result<String, sqlx::Error> {
    let label: Option<String> =
        sqlx::query_scalar("SELECT label FROM channel_keys ORDER BY created_at_ms DESC LIMIT 1")
            .fetch_optional(db.pool())
            .await?;
    Ok(label.unwrap_or_else(|| CHANNEL_KEY_LABEL.to_owned()))
}

/// Makes `label` (certified under `serial`) the current channel key.
pub async fn insert_key_in(
    tx: &mut Tx,
    label: &str,
    serial: &str,
    now_ms: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO channel_keys (label, cert_serial, created_at_ms) VALUES ($1, $2, $3)")
        .bind(label)
        .bind(serial)
        .bind(now_ms)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Removes what can no longer be used at `now_ms`: handshakes past their
/// expiry, channels expired or closed, tickets expired or spent. Returns
/// the counts in that order.
pub async fn sweep(db: &Database, now_ms: i64) -> Result<[u64; 3], sqlx::Error> {
    let mut out = [0; 3];
    for (i, sql) in [
        "DELETE FROM channel_handshakes WHERE expires_at_ms <= $1",
        "DELETE FROM channels WHERE expires_at_ms <= $1 OR state = 'closed'",
        "DELETE FROM channel_tickets WHERE expires_at_ms <= $1 OR used_at_ms IS NOT NULL",
    ]
    .into_iter()
    .enumerate()
    {
        out[i] = db
            .execute("channel.sweep", || sqlx::query(sql).bind(now_ms))
            .await?;
    }
    Ok(out)
}

/// Open channels not yet expired at `now_ms`.
pub async fn count_open(db: &Database, now_ms: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM channels WHERE state = 'open' AND expires_at_ms > $1")
        .bind(now_ms)
        .fetch_one(db.pool())
        .await
}

/// Closes every open channel `terminal` relays; their ids.
pub async fn close_relayed_in(
    tx: &mut Tx,
    terminal: &str,
    now_ms: i64,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE channels SET state = 'closed', closed_at_ms = $1 \
         WHERE terminal_id = $2 AND state = 'open' RETURNING id",
    )
    .bind(now_ms)
    .bind(terminal)
    .fetch_all(&mut **tx)
    .await
}
