//! `[outbox]`: the crash-safe outbox's drain and its senders (file, signed
//! HTTPS webhook). Secrets are named by file, never written inline.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::ConfigError;

/// How the outbox drain delivers what protocol steps enqueued: at least
/// once, with the same message id on every retry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxConfig {
    /// How often the drain runs (once across replicas).
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// Messages claimed at a time.
    #[serde(default = "default_batch")]
    pub batch: u32,
    /// Deliveries in flight at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
    /// Attempts before a message is given up.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Wait after the first failed attempt; doubles after each, with jitter.
    #[serde(default = "default_backoff_base_ms")]
    pub backoff_base_ms: u64,
    /// The longest wait between attempts.
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
    /// How long a claimed message stays with the replica sending it; a
    /// replica that dies mid-send leaves it to be sent again after this.
    #[serde(default = "default_lease_ms")]
    pub lease_ms: u64,
    /// The file sender (development and the demo); absent: no `file` channel.
    #[serde(default)]
    pub file: Option<FileSenderConfig>,
    /// Signed HTTPS webhooks (Standard Webhooks v1), by endpoint name: a
    /// `webhook` message's recipient names its endpoint.
    #[serde(default)]
    pub webhooks: BTreeMap<String, WebhookConfig>,
    /// E-mail through an SMTP relay; absent: no `smtp` channel.
    #[serde(default)]
    pub smtp: Option<SmtpConfig>,
    /// The gateway's inbound delivery receipts; absent: every receipt is
    /// refused (no signature can verify).
    #[serde(default)]
    pub receipts: Option<ReceiptsConfig>,
}

/// How the gateway's delivery receipts are authenticated (besides its
/// `service` client certificate): Standard Webhooks v1 signatures.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiptsConfig {
    /// Files each holding one `whsec_<base64>` secret the gateway signs
    /// with; a receipt verifying under any one is accepted (rotation).
    pub secret_files: Vec<PathBuf>,
    /// How far a receipt's `webhook-timestamp` may be from our clock.
    #[serde(default = "default_receipt_window_secs")]
    pub window_secs: u64,
}

fn default_receipt_window_secs() -> u64 {
    300
}

/// How the SMTP connection is protected: never in clear.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmtpTls {
    /// Plain connection upgraded by STARTTLS, which the relay must offer
    /// (submission, port 587).
    Starttls,
    /// TLS from the first byte (port 465).
    Implicit,
}

/// The SMTP relay: a message's recipient is the address, its payload the
/// plain-text body.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    /// PEM file of the CA(s) the relay's certificate must chain to.
    pub ca_file: PathBuf,
    /// AUTH user; with `password_file` (first line), or neither.
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    /// The sender address (`From`).
    pub from: String,
    pub subject: String,
    /// Connecting and each exchange with the relay.
    #[serde(default = "default_request_timeout_ms")]
    pub timeout_ms: u64,
}

/// The file sender: one JSON line per message.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSenderConfig {
    /// Relative paths are under `data_dir`.
    pub path: PathBuf,
}

/// One webhook endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `https://host[:port]/path`.
    pub url: String,
    /// PEM file of the CA(s) the endpoint's certificate must chain to.
    pub ca_file: PathBuf,
    /// Files each holding one `whsec_<base64>` secret; every one signs, so a
    /// receiver rotating its secret accepts either.
    pub secret_files: Vec<PathBuf>,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// The whole request, answer included.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            interval_ms: default_interval_ms(),
            batch: default_batch(),
            concurrency: default_concurrency(),
            max_attempts: default_max_attempts(),
            backoff_base_ms: default_backoff_base_ms(),
            backoff_max_ms: default_backoff_max_ms(),
            lease_ms: default_lease_ms(),
            file: None,
            webhooks: BTreeMap::new(),
            smtp: None,
            receipts: None,
        }
    }
}

fn default_interval_ms() -> u64 {
    1_000
}
fn default_batch() -> u32 {
    100
}
fn default_concurrency() -> u32 {
    16
}
fn default_max_attempts() -> u32 {
    8
}
fn default_backoff_base_ms() -> u64 {
    2_000
}
fn default_backoff_max_ms() -> u64 {
    300_000
}
fn default_lease_ms() -> u64 {
    60_000
}
fn default_connect_timeout_ms() -> u64 {
    3_000
}
fn default_request_timeout_ms() -> u64 {
    10_000
}

impl OutboxConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let range = |key: &str, v: u64, lo: u64, hi: u64| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(ConfigError::key(
                    format!("outbox.{key}"),
                    format!("must be {lo} to {hi}"),
                ))
            }
        };
        range("interval_ms", self.interval_ms, 10, 600_000)?;
        range("batch", self.batch.into(), 1, 10_000)?;
        range("concurrency", self.concurrency.into(), 1, 1_000)?;
        range("max_attempts", self.max_attempts.into(), 1, 100)?;
        range("backoff_base_ms", self.backoff_base_ms, 10, 3_600_000)?;
        range(
            "backoff_max_ms",
            self.backoff_max_ms,
            self.backoff_base_ms,
            86_400_000,
        )?;
        range("lease_ms", self.lease_ms, 1_000, 3_600_000)?;
        for (name, hook) in &self.webhooks {
            let key = |k: &str| format!("outbox.webhooks.{name}.{k}");
            if name.is_empty()
                || name.len() > 32
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
            {
                return Err(ConfigError::key(
                    "outbox.webhooks",
                    "endpoint names are 1 to 32 of a-z, 0-9, '-', '_'",
                ));
            }
            let rest = hook.url.strip_prefix("https://").unwrap_or_default();
            let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
            if host.is_empty() || host.contains('@') {
                return Err(ConfigError::key(
                    key("url"),
                    "must be an https:// URL with a host and no user info",
                ));
            }
            if !(1..=4).contains(&hook.secret_files.len()) {
                return Err(ConfigError::key(
                    key("secret_files"),
                    "must name 1 to 4 files",
                ));
            }
            range(
                &format!("webhooks.{name}.connect_timeout_ms"),
                hook.connect_timeout_ms,
                10,
                60_000,
            )?;
            range(
                &format!("webhooks.{name}.request_timeout_ms"),
                hook.request_timeout_ms,
                10,
                120_000,
            )?;
            // A claim must outlast the slowest send, or a second replica
            // would send the message while the first still is.
            if self.lease_ms < 2 * (hook.connect_timeout_ms + hook.request_timeout_ms) {
                return Err(ConfigError::key(
                    "outbox.lease_ms",
                    format!(
                        "must be at least twice outbox.webhooks.{name}'s connect + request timeouts"
                    ),
                ));
            }
        }
        if let Some(r) = &self.receipts {
            if !(1..=4).contains(&r.secret_files.len()) {
                return Err(ConfigError::key(
                    "outbox.receipts.secret_files",
                    "must name 1 to 4 files",
                ));
            }
            range("receipts.window_secs", r.window_secs, 10, 3_600)?;
        }
        if let Some(smtp) = &self.smtp {
            if smtp.host.is_empty() || smtp.port == 0 {
                return Err(ConfigError::key(
                    "outbox.smtp.host",
                    "host and port are required",
                ));
            }
            if smtp.username.is_some() != smtp.password_file.is_some() {
                return Err(ConfigError::key(
                    "outbox.smtp.password_file",
                    "username and password_file go together (the password is never inline)",
                ));
            }
            if !smtp.from.contains('@') || smtp.subject.is_empty() {
                return Err(ConfigError::key(
                    "outbox.smtp.from",
                    "from must be an address and subject not empty",
                ));
            }
            range("smtp.timeout_ms", smtp.timeout_ms, 10, 120_000)?;
            if self.lease_ms < 4 * smtp.timeout_ms {
                return Err(ConfigError::key(
                    "outbox.lease_ms",
                    "must be at least four times outbox.smtp.timeout_ms",
                ));
            }
        }
        Ok(())
    }

    /// Relative sender paths: the file sender's under `data_dir`, secret and
    /// CA files under the config file's directory (as `hsm.pin_file`).
    pub(crate) fn resolve_paths(&mut self, base: &Path, data_dir: &Path) {
        if let Some(file) = &mut self.file {
            file.path = crate::normalize(&data_dir.join(&file.path));
        }
        if let Some(smtp) = &mut self.smtp {
            smtp.ca_file = crate::normalize(&base.join(&smtp.ca_file));
            if let Some(p) = &mut smtp.password_file {
                *p = crate::normalize(&base.join(&*p));
            }
        }
        if let Some(r) = &mut self.receipts {
            for f in &mut r.secret_files {
                *f = crate::normalize(&base.join(&*f));
            }
        }
        for hook in self.webhooks.values_mut() {
            hook.ca_file = crate::normalize(&base.join(&hook.ca_file));
            for f in &mut hook.secret_files {
                *f = crate::normalize(&base.join(&*f));
            }
        }
    }
}
