//! `[online]`: login, sessions and working-key rotation, with per-issuer
//! overrides.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::{ConfigError, yes};

/// The online service terminals use every day: login (random
/// challenge/response, lockout), sessions and working-key rotation
/// (docs/protocol.md §10). Issuer policy: the `[online]` values are the
/// defaults, `[online.issuers.<id>]` overrides them for one issuer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnlineConfig {
    /// How long a login challenge may be answered.
    #[serde(default = "default_login_challenge_ttl_ms")]
    pub challenge_ttl_ms: u64,
    /// How long a session lasts from its login (a terminal's working day).
    #[serde(default = "default_session_ttl_secs")]
    pub session_ttl_secs: u64,
    /// Login starts one device may make per minute (per replica); more are
    /// answered 429 `too_many_logins` until the minute ends.
    #[serde(default = "default_login_starts_per_minute")]
    pub login_starts_per_minute: u32,
    /// Live sessions one (device, issuer) credential may hold; a login past
    /// it ends the oldest.
    #[serde(default = "default_max_sessions_per_credential")]
    pub max_sessions_per_credential: u32,
    /// Consecutive failed responses that lock a (device, issuer) credential.
    #[serde(default = "default_max_login_failures")]
    pub max_login_failures: u32,
    /// Whether a lockout also revokes the device certificate (on by
    /// default). The certificate is the device's for every issuer: off keeps
    /// the device's other issuers working.
    #[serde(default = "yes")]
    pub revoke_on_lockout: bool,
    /// Whether a KCV mismatch on a key update suspends the device at once
    /// (otherwise the version is rejected and the device keeps its keys).
    #[serde(default)]
    pub suspend_on_kcv_mismatch: bool,
    /// Age of the active working-key version after which a login offers a
    /// new one.
    #[serde(default = "default_rotation_max_age_secs")]
    pub rotation_max_age_secs: u64,
    /// How long the version a rotation replaced stays accepted.
    #[serde(default = "default_rotation_grace_secs")]
    pub rotation_grace_secs: u64,
    /// How often each replica offers to run the background jobs (grace-period
    /// retirement, expired sessions and challenges); one replica runs them.
    #[serde(default = "default_jobs_interval_ms")]
    pub jobs_interval_ms: u64,
    /// Per-issuer overrides, by issuer id.
    #[serde(default)]
    pub issuers: BTreeMap<String, IssuerPolicyConfig>,
}

/// One issuer's overrides of the `[online]` defaults.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerPolicyConfig {
    pub max_login_failures: Option<u32>,
    pub revoke_on_lockout: Option<bool>,
    pub suspend_on_kcv_mismatch: Option<bool>,
    pub rotation_max_age_secs: Option<u64>,
}

impl Default for OnlineConfig {
    fn default() -> Self {
        Self {
            challenge_ttl_ms: default_login_challenge_ttl_ms(),
            session_ttl_secs: default_session_ttl_secs(),
            max_sessions_per_credential: default_max_sessions_per_credential(),
            login_starts_per_minute: default_login_starts_per_minute(),
            max_login_failures: default_max_login_failures(),
            revoke_on_lockout: true,
            suspend_on_kcv_mismatch: false,
            rotation_max_age_secs: default_rotation_max_age_secs(),
            rotation_grace_secs: default_rotation_grace_secs(),
            jobs_interval_ms: default_jobs_interval_ms(),
            issuers: BTreeMap::new(),
        }
    }
}

fn default_login_challenge_ttl_ms() -> u64 {
    60_000
}
fn default_login_starts_per_minute() -> u32 {
    60
}
fn default_max_sessions_per_credential() -> u32 {
    4
}
fn default_session_ttl_secs() -> u64 {
    8 * 3600
}
fn default_max_login_failures() -> u32 {
    10
}
fn default_rotation_max_age_secs() -> u64 {
    30 * 24 * 3600
}
fn default_rotation_grace_secs() -> u64 {
    24 * 3600
}
fn default_jobs_interval_ms() -> u64 {
    5_000
}

impl OnlineConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if !(1_000..=600_000).contains(&self.challenge_ttl_ms) {
            return Err(ConfigError::key(
                "online.challenge_ttl_ms",
                "must be 1000 to 600000",
            ));
        }
        if !(60..=7 * 24 * 3600).contains(&self.session_ttl_secs) {
            return Err(ConfigError::key(
                "online.session_ttl_secs",
                "must be 60 to 604800",
            ));
        }
        if !(1..=1_000_000).contains(&self.login_starts_per_minute) {
            return Err(ConfigError::key(
                "online.login_starts_per_minute",
                "must be 1 to 1000000",
            ));
        }
        if !(1..=64).contains(&self.max_sessions_per_credential) {
            return Err(ConfigError::key(
                "online.max_sessions_per_credential",
                "must be 1 to 64",
            ));
        }
        if self.jobs_interval_ms < 100 {
            return Err(ConfigError::key(
                "online.jobs_interval_ms",
                "must be at least 100",
            ));
        }
        let failures = std::iter::once((
            "online.max_login_failures".to_owned(),
            self.max_login_failures,
        ))
        .chain(self.issuers.iter().filter_map(|(id, p)| {
            p.max_login_failures
                .map(|n| (format!("online.issuers.{id}.max_login_failures"), n))
        }));
        for (key, n) in failures {
            if !(1..=100).contains(&n) {
                return Err(ConfigError::key(key, "must be 1 to 100"));
            }
        }
        Ok(())
    }
}
