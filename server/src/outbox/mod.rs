//! The crash-safe outbox: what a protocol step must send (a confirmation
//! code to the customer, an execution order to the core banking system, a
//! load notice) is written as a row of table `outbox` **in the step's own
//! transaction** ([`enqueue_in`]), so the message exists exactly when the
//! step committed. A background job ([`drain_job`], once across replicas)
//! claims due rows under a lease, sends each through its channel's
//! [`Sender`] outside any transaction, and records the outcome: `sent`, or
//! `failed` and retried with exponential backoff and jitter, until
//! `max_attempts` ends it as `gave_up`.
//!
//! Delivery is at least once: a crash after a send and before its outcome
//! is recorded sends it again when the lease lapses, with the **same message
//! id** (made once at enqueue), so an idempotent receiver acts once.
//!
//! Must not: log or show a recipient or payload (personal data; the admin
//! view has neither); hold a transaction across a send; record anything but
//! a short stable code as a message's error.

pub mod receipts;
pub mod senders;
pub mod store;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyward_config::OutboxConfig;
use keyward_kms::db::{Database, now_ms};
use rand::Rng;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

pub use senders::{Outgoing, SendError, Sender, Senders, SetupError};
pub use store::{Backlog, Delivery, MessageView, enqueue_in, record_receipt_in};

use crate::jobs::{Job, JobError};
use crate::metrics::Metrics;
use crate::state::AppState;

/// How a message leaves: the sender that delivers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// One JSON line per message in a file (development, the demo).
    File,
    /// A signed HTTPS webhook (Standard Webhooks v1); the recipient names
    /// the configured endpoint.
    Webhook,
    /// E-mail; the recipient is the address.
    Smtp,
}

impl Channel {
    pub const ALL: [Self; 3] = [Self::File, Self::Webhook, Self::Smtp];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::Webhook => "webhook",
            Self::Smtp => "smtp",
        }
    }
}

impl FromStr for Channel {
    type Err = UnknownValue;
    fn from_str(s: &str) -> Result<Self, UnknownValue> {
        Self::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or(UnknownValue)
    }
}

/// Where a message is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Not tried yet.
    Pending,
    Sent,
    /// Tried and failed; tried again at `next_attempt_at_ms`.
    Failed,
    /// Refused for good, or out of attempts.
    GaveUp,
}

impl State {
    pub const ALL: [Self; 4] = [Self::Pending, Self::Sent, Self::Failed, Self::GaveUp];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Sent => "sent",
            Self::Failed => "failed",
            Self::GaveUp => "gave_up",
        }
    }
}

impl FromStr for State {
    type Err = UnknownValue;
    fn from_str(s: &str) -> Result<Self, UnknownValue> {
        Self::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or(UnknownValue)
    }
}

/// What the receiver reported back about a sent message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReceiptStatus {
    Delivered,
    Failed,
}

impl ReceiptStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }
}

impl FromStr for ReceiptStatus {
    type Err = UnknownValue;
    fn from_str(s: &str) -> Result<Self, UnknownValue> {
        [Self::Delivered, Self::Failed]
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or(UnknownValue)
    }
}

/// A stored value outside its closed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unknown value")]
pub struct UnknownValue;

/// A message's stable id: a random UUID made at enqueue and sent on every
/// attempt (the webhook's `webhook-id`), so a receiver can drop repeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(uuid::Uuid);

impl MessageId {
    pub fn new() -> Self {
        Self(uuid::Uuid::new_v4())
    }
}

impl Default for MessageId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for MessageId {
    type Err = UnknownValue;
    fn from_str(s: &str) -> Result<Self, UnknownValue> {
        uuid::Uuid::try_parse(s).map(Self).map_err(|_| UnknownValue)
    }
}

/// A message to enqueue. `recipient` (an address, or for a webhook the
/// endpoint's name) and `payload` (the exact bytes to deliver) are personal
/// data: `Debug` shows neither.
#[derive(Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// What it is, e.g. `confirmation.code`, `confirmation.execute`.
    pub topic: String,
    pub channel: Channel,
    pub recipient: String,
    /// What it belongs to (a confirmation id): the admin view's key.
    pub subject_id: String,
    pub payload: Vec<u8>,
}

impl fmt::Debug for NewMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewMessage")
            .field("topic", &self.topic)
            .field("channel", &self.channel)
            .field("subject_id", &self.subject_id)
            .field("payload_len", &self.payload.len())
            .finish_non_exhaustive()
    }
}

/// What one drain run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drained {
    pub sent: u64,
    /// Failed, to be tried again.
    pub retrying: u64,
    pub gave_up: u64,
    /// Outcomes not recorded because another replica had taken the message
    /// over (this one's lease had lapsed); that replica records its own.
    pub lost_lease: u64,
}

/// The outbox: the drain, its senders and the admin view. Cheap to clone.
#[derive(Clone)]
pub struct Outbox(Arc<Inner>);

struct Inner {
    db: Database,
    senders: Arc<Senders>,
    config: OutboxConfig,
    metrics: Metrics,
    /// Rung by [`Outbox::wake`]; the drain job waits on it between runs.
    wake: tokio::sync::Notify,
    /// How the gateway's delivery receipts are checked.
    receipts: receipts::Receipts,
}

impl fmt::Debug for Outbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outbox")
            .field("senders", &self.0.senders)
            .field("config", &self.0.config)
            .finish_non_exhaustive()
    }
}

impl Outbox {
    /// The outbox with the senders `config` describes (secret and CA files
    /// read now, so a bad one stops start-up).
    pub fn new(db: Database, config: &OutboxConfig, metrics: Metrics) -> Result<Self, SetupError> {
        let senders = Senders::from_config(config)?;
        let receipts = receipts::Receipts::from_config(config.receipts.as_ref())?;
        Ok(Self::assemble(db, config, senders, receipts, metrics))
    }

    /// How the gateway's delivery receipts are checked.
    pub fn receipts(&self) -> &receipts::Receipts {
        &self.0.receipts
    }

    /// The outbox with `senders` (tests) and no receipt secrets.
    pub fn with_senders(
        db: Database,
        config: &OutboxConfig,
        senders: Senders,
        metrics: Metrics,
    ) -> Self {
        Self::assemble(db, config, senders, receipts::Receipts::default(), metrics)
    }

    fn assemble(
        db: Database,
        config: &OutboxConfig,
        senders: Senders,
        receipts: receipts::Receipts,
        metrics: Metrics,
    ) -> Self {
        for channel in Channel::ALL {
            for outcome in ["sent", "retry", "gave_up"] {
                metrics
                    .outbox_deliveries
                    .with_label_values(&[channel.as_str(), outcome]);
            }
        }
        Self(Arc::new(Inner {
            db,
            senders: Arc::new(senders),
            config: config.clone(),
            metrics,
            wake: tokio::sync::Notify::new(),
            receipts,
        }))
    }

    /// Whether a message on `channel` to `recipient` has a sender here: a
    /// protocol step checks before it enqueues (a webhook's recipient must
    /// name a configured endpoint).
    pub fn can_send(&self, channel: Channel, recipient: &str) -> bool {
        self.0.senders.can_send(channel, recipient)
    }

    /// The messages of `subject_id`, oldest first: state, attempts, last
    /// error and times; never recipient or payload.
    pub async fn messages_of(&self, subject_id: &str) -> Result<Vec<MessageView>, sqlx::Error> {
        store::messages_of(&self.0.db, subject_id).await
    }

    /// Messages still to send and the age of the oldest.
    pub async fn backlog(&self) -> Result<Backlog, sqlx::Error> {
        store::backlog(&self.0.db, now_ms()).await
    }

    /// Sets the backlog gauges from the shared table.
    pub async fn refresh_gauges(&self) -> Result<Backlog, sqlx::Error> {
        let b = self.backlog().await?;
        let m = &self.0.metrics;
        m.outbox_backlog
            .set(i64::try_from(b.messages).unwrap_or(i64::MAX));
        m.outbox_oldest_age_seconds.set(b.oldest_age_ms / 1000);
        Ok(b)
    }

    /// Tells this replica's drain that a message was committed, so it goes
    /// now rather than at the next interval. A protocol step calls it after
    /// its transaction committed; cheap, and harmless when nothing waits
    /// (on a replica not running the drain the message waits for the
    /// drain's next run there).
    pub fn wake(&self) {
        self.0.wake.notify_one();
    }

    /// [`Outbox::drain`], again each time [`Outbox::wake`] rings, for
    /// `period`: the drain job's run, so a woken message is sent at once.
    pub async fn drain_for(&self, owner: &str, period: Duration) -> Result<Drained, sqlx::Error> {
        let until = Instant::now() + period;
        let mut total = Drained::default();
        loop {
            let d = self.drain(owner).await?;
            total.sent += d.sent;
            total.retrying += d.retrying;
            total.gave_up += d.gave_up;
            total.lost_lease += d.lost_lease;
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero()
                || tokio::time::timeout(left, self.0.wake.notified())
                    .await
                    .is_err()
            {
                return Ok(total);
            }
        }
    }

    /// Claims due messages as `owner` and delivers them, batch after batch,
    /// until none are due or one interval has passed. Each send runs in its
    /// own task, at most `concurrency` at once, bounded by half the lease so
    /// it ends before another replica could take the message over.
    pub async fn drain(&self, owner: &str) -> Result<Drained, sqlx::Error> {
        let cfg = &self.0.config;
        let started = Instant::now();
        let budget = Duration::from_millis(cfg.interval_ms);
        let send_limit = Duration::from_millis(cfg.lease_ms / 2);
        let lease_ms = i64::try_from(cfg.lease_ms).unwrap_or(i64::MAX);
        let gate = Arc::new(Semaphore::new(cfg.concurrency.max(1) as usize));
        let mut drained = Drained::default();
        loop {
            let claimed = store::claim(&self.0.db, owner, now_ms(), lease_ms, cfg.batch).await?;
            if !claimed.is_empty() {
                crate::fault_point!("outbox.claimed");
            }
            let full = claimed.len() >= cfg.batch as usize;
            let mut sends = JoinSet::new();
            for msg in claimed {
                let senders = self.0.senders.clone();
                let gate = gate.clone();
                sends.spawn(async move {
                    let _turn = gate.acquire_owned().await;
                    let result = tokio::time::timeout(send_limit, senders.send(&msg))
                        .await
                        .unwrap_or(Err(SendError::Timeout));
                    (msg, result)
                });
            }
            while let Some(done) = sends.join_next().await {
                let Ok((msg, result)) = done else {
                    // A sender panicked: its message's lease lapses and the
                    // message is tried again.
                    tracing::error!("an outbox send panicked; retried after its lease");
                    continue;
                };
                self.record(owner, &msg, result, &mut drained).await?;
            }
            if !full || started.elapsed() >= budget {
                return Ok(drained);
            }
        }
    }

    async fn record(
        &self,
        owner: &str,
        msg: &Outgoing,
        result: Result<(), SendError>,
        drained: &mut Drained,
    ) -> Result<(), sqlx::Error> {
        let cfg = &self.0.config;
        let now = now_ms();
        let outcome = match &result {
            Ok(()) => store::Outcome::Sent,
            Err(e) if e.retryable() && msg.attempt < cfg.max_attempts => store::Outcome::Retry {
                at_ms: now.saturating_add(backoff_ms(cfg, msg.attempt)),
                code: e.code(),
            },
            Err(e) => store::Outcome::GaveUp { code: e.code() },
        };
        if let Err(e) = &result {
            tracing::warn!(
                message_id = %msg.message_id,
                topic = %msg.topic,
                channel = msg.channel.as_str(),
                attempt = msg.attempt,
                code = e.code(),
                error = %e,
                "outbox delivery failed"
            );
        }
        if result.is_ok() {
            crate::fault_point!("outbox.send.acknowledged");
            if msg.topic == crate::confirmation::TOPIC_EXECUTE {
                crate::fault_point!("confirmation.executor.sent");
            }
        }
        if !store::record(&self.0.db, &msg.message_id, owner, &outcome, now).await? {
            drained.lost_lease += 1;
            tracing::warn!(message_id = %msg.message_id, "outbox outcome not recorded: the message was taken over");
            return Ok(());
        }
        let label = match outcome {
            store::Outcome::Sent => {
                crate::fault_point!("outbox.send.marked");
                drained.sent += 1;
                "sent"
            }
            store::Outcome::Retry { .. } => {
                drained.retrying += 1;
                "retry"
            }
            store::Outcome::GaveUp { .. } => {
                drained.gave_up += 1;
                "gave_up"
            }
        };
        self.0
            .metrics
            .outbox_deliveries
            .with_label_values(&[msg.channel.as_str(), label])
            .inc();
        Ok(())
    }
}

/// The wait after failed attempt `attempt` (1 for the first): the base
/// doubled per attempt, capped, then drawn from its upper half so replicas
/// and messages that failed together do not retry together.
fn backoff_ms(cfg: &OutboxConfig, attempt: u32) -> i64 {
    let doubled = cfg
        .backoff_base_ms
        .saturating_mul(1u64 << attempt.saturating_sub(1).min(40));
    let ceiling = doubled.min(cfg.backoff_max_ms).max(1);
    let wait = rand::thread_rng().gen_range(ceiling / 2..=ceiling);
    i64::try_from(wait).unwrap_or(i64::MAX)
}

/// [`Outbox::drain_for`] one interval, once across replicas: the replica
/// holding the lease drains every `outbox.interval_ms`, and at once when a
/// step on it calls [`Outbox::wake`].
pub fn drain_job(state: &AppState) -> Job<AppState> {
    let every = interval(state);
    Job::new("outbox.drain", every, move |state: AppState| async move {
        let owner = state.online.replica().to_owned();
        state.outbox.drain_for(&owner, every).await?;
        Ok(())
    })
    .once_across_replicas()
}

/// [`Outbox::refresh_gauges`] on every replica (the table is shared), so
/// any replica's `/metrics` shows the backlog.
pub fn gauges_job(state: &AppState) -> Job<AppState> {
    Job::new(
        "outbox.gauges",
        interval(state).max(Duration::from_secs(1)),
        |state: AppState| async move {
            state
                .outbox
                .refresh_gauges()
                .await
                .map(|_| ())
                .map_err(JobError::from)
        },
    )
}

fn interval(state: &AppState) -> Duration {
    Duration::from_millis(state.config.outbox.interval_ms.max(10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let cfg = OutboxConfig {
            backoff_base_ms: 1_000,
            backoff_max_ms: 10_000,
            ..OutboxConfig::default()
        };
        for _ in 0..100 {
            assert!((500..=1_000).contains(&backoff_ms(&cfg, 1)));
            assert!((1_000..=2_000).contains(&backoff_ms(&cfg, 2)));
            assert!((4_000..=8_000).contains(&backoff_ms(&cfg, 4)));
            assert!((5_000..=10_000).contains(&backoff_ms(&cfg, 5)));
            assert!((5_000..=10_000).contains(&backoff_ms(&cfg, 99)));
        }
    }

    #[test]
    fn names_round_trip_and_debug_hides_personal_data() {
        for c in Channel::ALL {
            assert_eq!(c.as_str().parse::<Channel>(), Ok(c));
        }
        for s in State::ALL {
            assert_eq!(s.as_str().parse::<State>(), Ok(s));
        }
        let id = MessageId::new();
        assert_eq!(id.to_string().parse::<MessageId>(), Ok(id));
        assert_eq!(id.to_string().len(), 36);
        let msg = NewMessage {
            topic: "confirmation.code".into(),
            channel: Channel::Smtp,
            recipient: "jane@example.org".into(),
            subject_id: "c-1".into(),
            payload: b"code 12345678".to_vec(),
        };
        let shown = format!("{msg:?}");
        assert!(
            !shown.contains("jane") && !shown.contains("12345678"),
            "{shown}"
        );
    }
}
