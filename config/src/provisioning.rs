//! `[provisioning]`: genuine-device checks and batch imports.

use serde::Deserialize;

use crate::ConfigError;

/// Device provisioning.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvisioningConfig {
    /// Failed genuine-device checks after which a device is parked until an
    /// operator resets it (`kwctl device check-reset`).
    #[serde(default = "default_check_attempt_limit")]
    pub check_attempt_limit: u32,
    /// How long a batch import holds its batch without renewing (renewed
    /// every sixth of it). A process killed mid-import leaves a batch that
    /// is taken over and undone once this has passed; it is also how often
    /// `serve` looks for such batches.
    #[serde(default = "default_import_lease_ms")]
    pub import_lease_ms: u64,
}

impl Default for ProvisioningConfig {
    fn default() -> Self {
        Self {
            check_attempt_limit: default_check_attempt_limit(),
            import_lease_ms: default_import_lease_ms(),
        }
    }
}

fn default_import_lease_ms() -> u64 {
    30_000
}

fn default_check_attempt_limit() -> u32 {
    5
}

impl ProvisioningConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=100).contains(&self.check_attempt_limit) {
            return Err(ConfigError::key(
                "provisioning.check_attempt_limit",
                "must be 1 to 100",
            ));
        }
        if !(100..=3_600_000).contains(&self.import_lease_ms) {
            return Err(ConfigError::key(
                "provisioning.import_lease_ms",
                "must be 100 to 3600000 (one hour)",
            ));
        }
        Ok(())
    }
}
