//! `[confirmation]`: transaction confirmation over a second channel
//! (docs/protocol.md §11): the code's life, what a transaction may carry,
//! how the customer's message is made and where deliveries go.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::ConfigError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfirmationConfig {
    /// How long a code may be confirmed (PSD2 RTS Art. 4: at most 5 min).
    #[serde(default = "default_code_ttl_secs")]
    pub code_ttl_secs: u64,
    /// Wrong codes before the confirmation closes as failed (at most 5).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// ISO 4217 codes a transaction may be in.
    #[serde(default = "default_currencies")]
    pub currencies: Vec<String>,
    /// Largest amount, in minor units of any currency.
    #[serde(default = "default_max_amount_minor")]
    pub max_amount_minor: u64,
    /// The bank's host name, bound into the message's last line
    /// (`@bank.example #12345678`) so phones autofill only for it.
    #[serde(default = "default_origin")]
    pub origin: String,
    /// A look-alike payee name: `flag` it in the message, or `refuse` it.
    #[serde(default = "default_confusable_payee")]
    pub confusable_payee: String,
    /// Payee names a look-alike of which is flagged (e.g. the bank's own).
    #[serde(default)]
    pub known_payees: Vec<String>,
    /// Outbox channel per contact kind (`sms`, `email`, `im`).
    #[serde(default = "default_channels")]
    pub channels: BTreeMap<String, String>,
    /// The `[outbox]` webhook endpoint of the SMS/IM gateway, for contact
    /// kinds whose channel is `webhook`.
    #[serde(default = "default_gateway")]
    pub gateway: String,
    /// Outbox channel of executed transactions (the core banking system).
    #[serde(default = "default_executor_channel")]
    pub executor_channel: String,
    /// Recipient (endpoint) of executed transactions on that channel.
    #[serde(default = "default_executor")]
    pub executor: String,
}

impl Default for ConfirmationConfig {
    fn default() -> Self {
        Self {
            code_ttl_secs: default_code_ttl_secs(),
            max_attempts: default_max_attempts(),
            currencies: default_currencies(),
            max_amount_minor: default_max_amount_minor(),
            origin: default_origin(),
            confusable_payee: default_confusable_payee(),
            known_payees: Vec::new(),
            channels: default_channels(),
            gateway: default_gateway(),
            executor_channel: default_executor_channel(),
            executor: default_executor(),
        }
    }
}

fn default_code_ttl_secs() -> u64 {
    300
}
fn default_max_attempts() -> u32 {
    3
}
fn default_currencies() -> Vec<String> {
    ["EUR", "CNY", "USD", "GBP", "CHF"]
        .map(String::from)
        .to_vec()
}
fn default_max_amount_minor() -> u64 {
    100_000_000
}
fn default_origin() -> String {
    "bank.example".into()
}
fn default_confusable_payee() -> String {
    "flag".into()
}
fn default_channels() -> BTreeMap<String, String> {
    ["sms", "email", "im"]
        .map(|k| (k.to_owned(), "file".to_owned()))
        .into_iter()
        .collect()
}
fn default_gateway() -> String {
    "sms-gateway".into()
}
fn default_executor_channel() -> String {
    "file".into()
}
fn default_executor() -> String {
    "core-banking".into()
}

impl ConfirmationConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if !(30..=300).contains(&self.code_ttl_secs) {
            return Err(ConfigError::key(
                "confirmation.code_ttl_secs",
                "must be 30 to 300",
            ));
        }
        if !(1..=5).contains(&self.max_attempts) {
            return Err(ConfigError::key(
                "confirmation.max_attempts",
                "must be 1 to 5",
            ));
        }
        if self.currencies.is_empty()
            || self
                .currencies
                .iter()
                .any(|c| c.len() != 3 || !c.bytes().all(|b| b.is_ascii_uppercase()))
        {
            return Err(ConfigError::key(
                "confirmation.currencies",
                "one or more ISO 4217 alphabetic codes",
            ));
        }
        if self.max_amount_minor == 0 {
            return Err(ConfigError::key(
                "confirmation.max_amount_minor",
                "must be positive",
            ));
        }
        if !matches!(self.confusable_payee.as_str(), "flag" | "refuse") {
            return Err(ConfigError::key(
                "confirmation.confusable_payee",
                "must be flag or refuse",
            ));
        }
        for kind in ["sms", "email", "im"] {
            if !self.channels.contains_key(kind) {
                return Err(ConfigError::key(
                    format!("confirmation.channels.{kind}"),
                    "every contact kind needs a channel",
                ));
            }
        }
        Ok(())
    }
}
