//! The senders: one per channel ([`file`], [`webhook`], [`smtp`]), behind
//! one [`Sender`] trait, picked per message by [`Senders`].

pub mod file;
pub mod smtp;
pub mod webhook;

use std::collections::BTreeMap;
use std::fmt;

use keyward_config::OutboxConfig;

use super::{Channel, MessageId};

pub use file::FileSender;
pub use smtp::SmtpSender;
pub use webhook::{
    HttpsClient, WebhookSecret, WebhookSender, read_roots, read_secrets, signature, verify,
};

/// A claimed message on its way out. `recipient` and `payload` are personal
/// data: `Debug` shows neither.
#[derive(Clone)]
pub struct Outgoing {
    pub message_id: MessageId,
    pub topic: String,
    pub channel: Channel,
    pub recipient: String,
    pub payload: Vec<u8>,
    /// Which attempt this is (1 for the first).
    pub attempt: u32,
}

impl fmt::Debug for Outgoing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outgoing")
            .field("message_id", &self.message_id)
            .field("topic", &self.topic)
            .field("channel", &self.channel)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

/// Delivers one message. Called outside any transaction; must not log the
/// recipient or payload.
pub trait Sender: Send + Sync {
    fn send(&self, msg: &Outgoing) -> impl Future<Output = Result<(), SendError>> + Send;
}

/// Why a delivery failed. Its [`SendError::code`] is what the message's row
/// keeps; the message (for logs) names no recipient, payload or secret.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("no sender is configured for this channel and recipient")]
    NotConfigured,
    #[error("the delivery timed out")]
    Timeout,
    #[error("could not connect: {0}")]
    Connect(String),
    #[error("TLS with the receiver failed: {0}")]
    Tls(String),
    #[error("the request failed: {0}")]
    Request(String),
    #[error("the receiver answered HTTP {0}")]
    Status(u16),
    #[error("writing the delivery file: {0}")]
    Io(#[from] std::io::Error),
    #[error("the relay answered SMTP {0}")]
    SmtpReply(u16),
    #[error("the recipient is not an address this channel can send to")]
    BadRecipient,
    #[error("the payload cannot be sent on this channel")]
    BadPayload,
}

impl SendError {
    /// Whether a later attempt may succeed: timeouts, connection trouble,
    /// HTTP 5xx, 408 and 429, SMTP 4xx may pass; other HTTP 4xx, redirects,
    /// SMTP 5xx, a bad address and a missing sender will not.
    pub fn retryable(&self) -> bool {
        match self {
            Self::NotConfigured | Self::BadRecipient | Self::BadPayload => false,
            Self::SmtpReply(code) => (400..500).contains(code),
            Self::Timeout | Self::Connect(_) | Self::Tls(_) | Self::Request(_) | Self::Io(_) => {
                true
            }
            Self::Status(s) => matches!(s, 408 | 429 | 500..=599),
        }
    }

    /// A short stable code (a bounded set), kept as the message's last error.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotConfigured => "not_configured",
            Self::Timeout => "timeout",
            Self::Connect(_) => "connect_failed",
            Self::Tls(_) => "tls_failed",
            Self::Request(_) => "request_failed",
            Self::Status(408) => "http_408",
            Self::Status(429) => "http_429",
            Self::Status(400..=499) => "http_4xx",
            Self::Status(500..=599) => "http_5xx",
            Self::Status(_) => "http_other",
            Self::Io(_) => "io_failed",
            Self::SmtpReply(400..=499) => "smtp_4xx",
            Self::SmtpReply(_) => "smtp_5xx",
            Self::BadRecipient => "bad_recipient",
            Self::BadPayload => "bad_payload",
        }
    }
}

/// A sender's configuration that cannot be used: named by key, never with a
/// secret's value.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// `key`: the configuration table (`webhooks.sms`, `receipts`).
    #[error("outbox.{key}: cannot read {what} {path}: {reason}")]
    File {
        key: String,
        what: &'static str,
        path: String,
        reason: String,
    },
    #[error("outbox.webhooks.{endpoint}: {problem}")]
    Webhook { endpoint: String, problem: String },
    #[error("outbox.smtp: {problem}")]
    Smtp { problem: String },
}

/// Every configured sender, picked per message by channel and recipient.
#[derive(Debug, Default)]
pub struct Senders {
    pub file: Option<FileSender>,
    /// By endpoint name (a `webhook` message's recipient).
    pub webhooks: BTreeMap<String, WebhookSender>,
    pub smtp: Option<SmtpSender>,
}

impl Senders {
    pub fn from_config(config: &OutboxConfig) -> Result<Self, SetupError> {
        let webhooks = config
            .webhooks
            .iter()
            .map(|(name, cfg)| Ok((name.clone(), WebhookSender::from_config(name, cfg)?)))
            .collect::<Result<_, SetupError>>()?;
        Ok(Self {
            file: config
                .file
                .as_ref()
                .map(|f| FileSender::new(f.path.clone())),
            webhooks,
            smtp: config
                .smtp
                .as_ref()
                .map(SmtpSender::from_config)
                .transpose()?,
        })
    }

    pub fn can_send(&self, channel: Channel, recipient: &str) -> bool {
        match channel {
            Channel::File => self.file.is_some(),
            Channel::Webhook => self.webhooks.contains_key(recipient),
            Channel::Smtp => self.smtp.is_some(),
        }
    }

    /// Sends `msg` through its channel's sender.
    pub async fn send(&self, msg: &Outgoing) -> Result<(), SendError> {
        match msg.channel {
            Channel::File => match &self.file {
                Some(file) => file.send(msg).await,
                None => Err(SendError::NotConfigured),
            },
            Channel::Webhook => match self.webhooks.get(&msg.recipient) {
                Some(hook) => hook.send(msg).await,
                None => Err(SendError::NotConfigured),
            },
            Channel::Smtp => match &self.smtp {
                Some(smtp) => smtp.send(msg).await,
                None => Err(SendError::NotConfigured),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_split_into_retryable_and_final() {
        for s in [408, 429, 500, 502, 503, 599] {
            assert!(SendError::Status(s).retryable(), "{s}");
        }
        for s in [301, 400, 401, 403, 404, 409, 413, 422] {
            assert!(!SendError::Status(s).retryable(), "{s}");
        }
        assert_eq!(SendError::Status(503).code(), "http_5xx");
        assert_eq!(SendError::Status(404).code(), "http_4xx");
        assert!(SendError::Timeout.retryable());
        assert!(SendError::SmtpReply(451).retryable());
        assert!(!SendError::SmtpReply(550).retryable());
        assert_eq!(SendError::SmtpReply(550).code(), "smtp_5xx");
        assert!(!SendError::NotConfigured.retryable());
    }
}
