//! Keyward configuration.
//!
//! One TOML file, overridable from the environment, validated before anything
//! touches the HSM or the database. Error messages name the offending key and
//! never echo its value: a misplaced PIN or database password must not end up in
//! a log line.
//!
//! # Layout
//! - [`Config`]: the file's schema (`deny_unknown_fields` everywhere); one
//!   module per section (`server`, `database`, `hsm`, `online`,
//!   `confirmation`, `outbox`, `ca`, `provisioning`, `log`, `channel`), each with
//!   its defaults and its own checks.
//! - [`Config::load`]: file → environment overrides (`KEYWARD__SECTION__KEY`) → validation.
//! - [`HsmConfig::pin`]: the user PIN, read from a file or an environment variable, never inline.
//! - [`ConfigError`]: what can go wrong, each variant naming a key or a path.

pub mod bulk;
mod ca;
mod channel;
mod confirmation;
mod database;
mod hsm;
mod load;
mod log;
mod online;
mod outbox;
mod provisioning;
mod server;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use ca::{CaConfig, CaKeyAlgorithm};
pub use channel::{ChannelConfig, ChannelMode, ChannelPadding};
pub use confirmation::{ConfirmationConfig, PresendConfig};
pub use database::{DatabaseConfig, DatabaseKind};
pub use hsm::{DEFAULT_BULK_NICE, HsmConfig, MechanismOverrides};
pub use load::LoadConfig;
pub use log::{LogConfig, LogFormat};
pub use online::{IssuerPolicyConfig, OnlineConfig};
pub use outbox::{
    FileSenderConfig, OutboxConfig, ReceiptsConfig, SmtpConfig, SmtpTls, WebhookConfig,
};
pub use provisioning::ProvisioningConfig;
pub use server::ServerConfig;

/// Prefix of environment variables that override file settings:
/// `KEYWARD__HSM__SESSIONS=4` sets `hsm.sessions`.
pub const ENV_PREFIX: &str = "KEYWARD__";

/// Why a configuration was refused. Messages carry key names and paths, never values.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML (line {line})")]
    Syntax { path: PathBuf, line: usize },
    #[error("config key `{key}`: {problem}")]
    Key { key: String, problem: String },
    #[error("environment override {var} does not name a config key")]
    BadOverride { var: String },
    #[error("cannot read the HSM PIN from {source_name}: {reason}")]
    Pin { source_name: String, reason: String },
}

impl ConfigError {
    pub(crate) fn key(key: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::Key {
            key: key.into(),
            problem: problem.into(),
        }
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Directory for the embedded database and local state; relative paths in
    /// the file are resolved against the config file's directory.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    pub hsm: HsmConfig,
    #[serde(default)]
    pub database: DatabaseConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub ca: CaConfig,
    #[serde(default)]
    pub provisioning: ProvisioningConfig,
    #[serde(default)]
    pub online: OnlineConfig,
    #[serde(default)]
    pub confirmation: ConfirmationConfig,
    #[serde(default)]
    pub outbox: OutboxConfig,
    #[serde(default)]
    pub load: LoadConfig,
    #[serde(default)]
    pub channel: ChannelConfig,
}

/// serde's `default = "…"` wants a function.
pub(crate) fn yes() -> bool {
    true
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("var")
}

impl Config {
    /// Loads `path`, applies `KEYWARD__…` overrides from the process
    /// environment, resolves relative paths against the file's directory and
    /// validates.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let env: BTreeMap<String, String> = std::env::vars()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_parts(&text, path, &env, base)
    }

    /// [`Config::load`] without touching the filesystem or the process
    /// environment (for tests and tools).
    pub fn from_parts(
        text: &str,
        path: &Path,
        env: &BTreeMap<String, String>,
        base_dir: &Path,
    ) -> Result<Self, ConfigError> {
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].lines().count().max(1))
                .unwrap_or(0);
            ConfigError::Syntax {
                path: path.to_owned(),
                line,
            }
        })?;
        for (var, value) in env {
            apply_override(&mut table, var, value)?;
        }
        let mut config: Config = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| ConfigError::key(e.path().to_string(), redact_serde(e.inner())))?;
        config.resolve_paths(base_dir);
        config.validate()?;
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        self.data_dir = normalize(&base.join(&self.data_dir));
        if let Some(pin_file) = &self.hsm.pin_file {
            self.hsm.pin_file = Some(normalize(&base.join(pin_file)));
        }
        self.outbox.resolve_paths(base, &self.data_dir);
        self.confirmation.resolve_paths(base);
        if let Some(rest) = self.database.url.strip_prefix("sqlite://") {
            let p = Path::new(rest.split('?').next().unwrap_or(rest));
            if p.is_relative() && rest != ":memory:" {
                let query = rest.find('?').map(|i| &rest[i..]).unwrap_or("");
                self.database.url =
                    format!("sqlite://{}{}", self.data_dir.join(p).display(), query);
            }
        }
    }

    /// Each section's checks, in the order a file's first error is reported.
    fn validate(&self) -> Result<(), ConfigError> {
        self.online.validate()?;
        self.confirmation.validate()?;
        self.load.validate()?;
        self.channel.validate()?;
        self.outbox.validate()?;
        self.provisioning.validate()?;
        self.hsm.validate()?;
        self.database.validate_url()?;
        self.server.validate()?;
        self.database.validate_pool()
    }
}

/// Removes `.` and `..` lexically: SQLite URLs with `..` in the path do not
/// open, and paths in messages read better without them.
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}

/// `KEYWARD__HSM__SESSIONS=4` → `hsm.sessions = 4`. The value is read as a TOML
/// scalar when it parses as one (numbers, booleans), else as a string.
fn apply_override(table: &mut toml::Table, var: &str, value: &str) -> Result<(), ConfigError> {
    let bad = || ConfigError::BadOverride {
        var: var.to_owned(),
    };
    let path: Vec<String> = var
        .strip_prefix(ENV_PREFIX)
        .ok_or_else(bad)?
        .split("__")
        .map(str::to_ascii_lowercase)
        .collect();
    if path.iter().any(String::is_empty) {
        return Err(bad());
    }
    let (last, parents) = path.split_last().ok_or_else(bad)?;
    let mut cursor = table;
    for part in parents {
        cursor = cursor
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(bad)?;
    }
    let parsed = format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .filter(|v| !v.is_table() && !v.is_array())
        .unwrap_or_else(|| toml::Value::String(value.to_owned()));
    cursor.insert(last.clone(), parsed);
    Ok(())
}

/// Keeps serde's description of what was expected and drops what was found,
/// which may be a secret typed into the wrong key.
fn redact_serde(e: &toml::de::Error) -> String {
    let msg = e.message();
    if msg.starts_with("unknown field") || msg.starts_with("missing field") {
        return msg.split(", expected").next().unwrap_or(msg).to_owned();
    }
    if msg.starts_with("unknown variant") {
        // "unknown variant `<value>`, expected …": keep only what was expected.
        return match msg.rsplit_once(", expected ") {
            Some((_, expected)) => format!("unknown variant, expected {expected}"),
            None => "unknown variant".to_owned(),
        };
    }
    match (msg.split(':').next(), msg.rsplit_once(", expected ")) {
        (Some(kind), Some((_, expected))) => format!("{kind}, expected {expected}"),
        (Some(kind), None) => kind.to_owned(),
        _ => "invalid value".to_owned(),
    }
}
