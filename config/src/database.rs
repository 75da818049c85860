//! `[database]`: where the key catalog lives.

use serde::Deserialize;

use crate::ConfigError;

/// Where the key catalog lives.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://PATH` (embedded default) or `postgres://…`. A relative SQLite
    /// path is resolved against `data_dir`.
    #[serde(default = "default_database_url")]
    pub url: String,
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// How long a request waits for the database — a pooled connection, a
    /// new connection, SQLite's write lock — before it is answered `503
    /// database_unavailable` instead of hanging until the request timeout.
    #[serde(default = "default_acquire_timeout_ms")]
    pub acquire_timeout_ms: u64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: default_database_url(),
            max_connections: default_max_connections(),
            acquire_timeout_ms: default_acquire_timeout_ms(),
        }
    }
}

fn default_acquire_timeout_ms() -> u64 {
    1500
}

/// Which database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseKind {
    Sqlite,
    Postgres,
}

impl DatabaseConfig {
    /// The backend the URL selects; validation guarantees one of the two.
    pub fn kind(&self) -> DatabaseKind {
        if self.url.starts_with("sqlite:") {
            DatabaseKind::Sqlite
        } else {
            DatabaseKind::Postgres
        }
    }

    /// The URL's scheme: checked before the server section, as it always was.
    pub(crate) fn validate_url(&self) -> Result<(), ConfigError> {
        let url = &self.url;
        if !(url.starts_with("sqlite://")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            return Err(ConfigError::key(
                "database.url",
                "must start with sqlite://, postgres:// or postgresql://",
            ));
        }
        Ok(())
    }

    pub(crate) fn validate_pool(&self) -> Result<(), ConfigError> {
        if self.max_connections == 0 {
            return Err(ConfigError::key(
                "database.max_connections",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

fn default_database_url() -> String {
    "sqlite://keyward.db".into()
}
fn default_max_connections() -> u32 {
    8
}
