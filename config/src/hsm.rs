//! `[hsm]`: the PKCS#11 token, its PIN and mechanism overrides.

use std::path::PathBuf;

use secrecy::SecretString;
use serde::Deserialize;

use crate::{ConfigError, yes};

/// How to reach the PKCS#11 token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HsmConfig {
    /// Path of the PKCS#11 module (`.so`).
    pub module: PathBuf,
    /// Token label. Slots are chosen by label only: slot numbers change between
    /// HSM restarts and SoftHSM derives them from the token serial.
    pub token_label: String,
    /// File holding the user PIN (first line). Exactly one of `pin_file`, `pin_env`.
    pub pin_file: Option<PathBuf>,
    /// Name of an environment variable holding the user PIN.
    pub pin_env: Option<String>,
    /// Interactive worker threads (the calls a request waits on), each
    /// using one long-lived session.
    #[serde(default = "default_sessions")]
    pub sessions: usize,
    /// Bulk MAC verification's own worker threads and sessions (default:
    /// as many as `sessions`): a switch's batches never hold an interactive
    /// worker.
    #[serde(default)]
    pub bulk_sessions: Option<usize>,
    /// The bulk workers' nice value, 0 to 19 (Linux): where the module
    /// computes on the server's cores (SoftHSM), bulk work takes only the
    /// CPU that logins, transactions and readiness leave. 0 turns it off.
    #[serde(default = "default_bulk_nice")]
    pub bulk_nice: i32,
    /// Jobs that may wait for a worker before callers get a "busy" error.
    #[serde(default = "default_queue_depth")]
    pub queue_depth: usize,
    /// Derived per-device keys kept as session objects (LRU).
    #[serde(default = "default_derived_key_cache")]
    pub derived_key_cache: usize,
    /// Serialise object creation, lookup and destruction in the process
    /// (SoftHSM 2.6.1 races without it, SoftHSMv2 #573). Off only for a
    /// module known not to.
    #[serde(default = "yes")]
    pub serialize_object_ops: bool,
    /// Mechanism numbers to use instead of the PKCS#11 standard ones, for
    /// HSMs that expose an operation under a vendor code.
    #[serde(default)]
    pub mechanisms: MechanismOverrides,
}

/// Per-operation PKCS#11 mechanism numbers. `None` means the standard mechanism
/// (or, for the retail MAC, the portable emulation).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MechanismOverrides {
    /// `CKM_DES3_ECB_ENCRYPT_DATA` (0x1102) replacement.
    pub des3_ecb_encrypt_data: Option<u64>,
    /// `CKM_AES_ECB_ENCRYPT_DATA` (0x1104) replacement.
    pub aes_ecb_encrypt_data: Option<u64>,
    /// `CKM_DES3_CMAC` (0x138) replacement.
    pub des3_cmac: Option<u64>,
    /// A vendor ANSI X9.19 retail-MAC mechanism (e.g. `CKM_VENDOR_DEFINED + 0x150`);
    /// without one the MAC is built from single-DES-equivalent DES2 keys.
    pub des3_retail_mac: Option<u64>,
    /// A vendor PIN-translation mechanism (TPK → ZPK inside the HSM). SoftHSM
    /// has none: without one, PIN routes answer `501 hsm_mechanism_missing`.
    pub pin_translate: Option<u64>,
}

impl HsmConfig {
    /// The bulk lane's workers: `bulk_sessions`, else as many as `sessions`.
    pub fn bulk_sessions(&self) -> usize {
        self.bulk_sessions.unwrap_or(self.sessions)
    }

    /// Reads the user PIN from its file or environment variable.
    pub fn pin(&self) -> Result<SecretString, ConfigError> {
        let (source_name, raw) = match (&self.pin_file, &self.pin_env) {
            (Some(path), None) => (
                path.display().to_string(),
                std::fs::read_to_string(path).map_err(|e| ConfigError::Pin {
                    source_name: path.display().to_string(),
                    reason: e.kind().to_string(),
                })?,
            ),
            (None, Some(var)) => (
                format!("${var}"),
                std::env::var(var).map_err(|_| ConfigError::Pin {
                    source_name: format!("${var}"),
                    reason: "variable is not set or not UTF-8".into(),
                })?,
            ),
            _ => {
                return Err(ConfigError::key(
                    "hsm.pin_file",
                    "exactly one of hsm.pin_file and hsm.pin_env must be set",
                ));
            }
        };
        let pin = raw.lines().next().unwrap_or("").trim().to_owned();
        if pin.is_empty() {
            return Err(ConfigError::Pin {
                source_name,
                reason: "it is empty".into(),
            });
        }
        Ok(SecretString::from(pin))
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.token_label.is_empty() || self.token_label.len() > 32 {
            return Err(ConfigError::key(
                "hsm.token_label",
                "must be 1 to 32 characters (PKCS#11 label length)",
            ));
        }
        if self.pin_file.is_some() == self.pin_env.is_some() {
            return Err(ConfigError::key(
                "hsm.pin_file",
                "exactly one of hsm.pin_file and hsm.pin_env must be set (the PIN is never inline)",
            ));
        }
        if !(1..=256).contains(&self.sessions) {
            return Err(ConfigError::key(
                "hsm.sessions",
                "must be between 1 and 256",
            ));
        }
        if !(1..=256).contains(&self.bulk_sessions()) {
            return Err(ConfigError::key(
                "hsm.bulk_sessions",
                "must be between 1 and 256",
            ));
        }
        if !(0..=19).contains(&self.bulk_nice) {
            return Err(ConfigError::key(
                "hsm.bulk_nice",
                "must be between 0 and 19",
            ));
        }
        if self.queue_depth < self.sessions {
            return Err(ConfigError::key(
                "hsm.queue_depth",
                "must be at least hsm.sessions",
            ));
        }
        if self.derived_key_cache == 0 {
            return Err(ConfigError::key(
                "hsm.derived_key_cache",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

fn default_sessions() -> usize {
    2
}
/// `hsm.bulk_nice` when the file says nothing.
pub const DEFAULT_BULK_NICE: i32 = 10;

fn default_bulk_nice() -> i32 {
    DEFAULT_BULK_NICE
}
fn default_queue_depth() -> usize {
    4096
}
fn default_derived_key_cache() -> usize {
    10_000
}
