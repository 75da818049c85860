//! `[confirmation]`: transaction confirmation over a second channel
//! (docs/protocol.md §11): the code's life, what a transaction may carry,
//! how the customer's message is made and where deliveries go.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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
    /// Checks before a code is sent; by default none.
    #[serde(default)]
    pub presend: PresendConfig,
}

/// `[confirmation.presend]`: what is asked before a code goes to a phone
/// whose SIM may have been swapped, and what a risk leads to: `refuse`
/// the confirmation, or `step_up` (it goes on, and the executor's order
/// names the risk so the core banking system applies its stronger check).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresendConfig {
    /// A CAMARA SIM-swap `check` endpoint (`https://…/check`: POST
    /// `{phoneNumber, maxAge}` → `{swapped}`); absent: not asked.
    pub sim_swap_url: Option<String>,
    /// PEM file of the CA(s) the endpoint's certificate must chain to.
    pub ca_file: Option<PathBuf>,
    /// File whose first line is the endpoint's bearer token; absent: none.
    pub token_file: Option<PathBuf>,
    /// CAMARA `maxAge`: how many hours back a swap counts (1 to 2400).
    #[serde(default = "default_max_age_hours")]
    pub max_age_hours: u32,
    /// The whole exchange with the endpoint; past it the submit fails
    /// closed (`presend_check_unavailable`).
    #[serde(default = "default_presend_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_refuse")]
    pub on_sim_swap: String,
    /// A contact that changed within this many days is a risk (0: off).
    #[serde(default)]
    pub contact_changed_days: u32,
    #[serde(default = "default_refuse")]
    pub on_contact_change: String,
}

impl Default for PresendConfig {
    fn default() -> Self {
        Self {
            sim_swap_url: None,
            ca_file: None,
            token_file: None,
            max_age_hours: default_max_age_hours(),
            timeout_ms: default_presend_timeout_ms(),
            on_sim_swap: default_refuse(),
            contact_changed_days: 0,
            on_contact_change: default_refuse(),
        }
    }
}

fn default_max_age_hours() -> u32 {
    240
}
fn default_presend_timeout_ms() -> u64 {
    3_000
}
fn default_refuse() -> String {
    "refuse".into()
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
            presend: PresendConfig::default(),
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
        self.presend.validate()
    }

    /// The pre-send check's files, relative to the config file's directory.
    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        let p = &mut self.presend;
        for f in [&mut p.ca_file, &mut p.token_file].into_iter().flatten() {
            *f = crate::normalize(&base.join(&*f));
        }
    }
}

impl PresendConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let key = |k: &str| format!("confirmation.presend.{k}");
        for (k, v) in [
            ("on_sim_swap", &self.on_sim_swap),
            ("on_contact_change", &self.on_contact_change),
        ] {
            if !matches!(v.as_str(), "refuse" | "step_up") {
                return Err(ConfigError::key(key(k), "must be refuse or step_up"));
            }
        }
        if !(1..=2400).contains(&self.max_age_hours) {
            return Err(ConfigError::key(key("max_age_hours"), "must be 1 to 2400"));
        }
        if !(100..=30_000).contains(&self.timeout_ms) {
            return Err(ConfigError::key(key("timeout_ms"), "must be 100 to 30000"));
        }
        if let Some(url) = &self.sim_swap_url {
            let rest = url.strip_prefix("https://").unwrap_or_default();
            let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
            if host.is_empty() || host.contains('@') {
                return Err(ConfigError::key(
                    key("sim_swap_url"),
                    "must be an https:// URL with a host and no user info",
                ));
            }
            if self.ca_file.is_none() {
                return Err(ConfigError::key(
                    key("ca_file"),
                    "the SIM-swap endpoint's CA is required",
                ));
            }
        }
        Ok(())
    }
}
