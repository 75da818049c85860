//! `[load]`: the e-purse load (docs/protocol.md §13): how long a permit
//! waits for its report, what one load may move, and who may credit an
//! account alone.

use serde::Deserialize;

use crate::ConfigError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadConfig {
    /// How long a permit waits for the device's report before the sweeper
    /// voids the load as doubtful (settled at the device's next contact).
    #[serde(default = "default_report_timeout_secs")]
    pub report_timeout_secs: u64,
    /// Largest amount one load may move, in minor units.
    #[serde(default = "default_max_amount_minor")]
    pub max_amount_minor: u64,
    /// How often the sweeper looks for loads past their timeout, and the
    /// ledger's sealing job for new entries.
    #[serde(default = "default_sweep_interval_ms")]
    pub sweep_interval_ms: u64,
    /// An operator credit above this (minor units) needs a second operator.
    #[serde(default = "default_dual_control_above_minor")]
    pub dual_control_above_minor: u64,
}

impl Default for LoadConfig {
    fn default() -> Self {
        Self {
            report_timeout_secs: default_report_timeout_secs(),
            max_amount_minor: default_max_amount_minor(),
            sweep_interval_ms: default_sweep_interval_ms(),
            dual_control_above_minor: default_dual_control_above_minor(),
        }
    }
}

fn default_report_timeout_secs() -> u64 {
    120
}
fn default_max_amount_minor() -> u64 {
    100_000
}
fn default_sweep_interval_ms() -> u64 {
    1_000
}
fn default_dual_control_above_minor() -> u64 {
    1_000_000
}

impl LoadConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=3_600).contains(&self.report_timeout_secs) {
            return Err(ConfigError::key(
                "load.report_timeout_secs",
                "must be 1 to 3600",
            ));
        }
        // The ledger's amounts are at most 10^15 minor units.
        if !(1..=1_000_000_000_000_000).contains(&self.max_amount_minor) {
            return Err(ConfigError::key(
                "load.max_amount_minor",
                "must be 1 to 10^15",
            ));
        }
        if self.dual_control_above_minor > 1_000_000_000_000_000 {
            return Err(ConfigError::key(
                "load.dual_control_above_minor",
                "must be at most 10^15",
            ));
        }
        if !(50..=60_000).contains(&self.sweep_interval_ms) {
            return Err(ConfigError::key(
                "load.sweep_interval_ms",
                "must be 50 to 60000",
            ));
        }
        Ok(())
    }
}
