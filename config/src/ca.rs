//! `[ca]`: Keyward's certificate authority.

use serde::Deserialize;

/// Keyward's certificate authority.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaConfig {
    /// Key algorithm of the CA keys: `p256` or `rsa3072`.
    #[serde(default)]
    pub key_algorithm: CaKeyAlgorithm,
    /// Organisation (O) in CA and issued subjects.
    #[serde(default = "default_ca_organization")]
    pub organization: String,
    #[serde(default = "default_root_validity_days")]
    pub root_validity_days: u32,
    #[serde(default = "default_issuing_validity_days")]
    pub issuing_validity_days: u32,
    #[serde(default = "default_device_validity_days")]
    pub device_validity_days: u32,
    #[serde(default = "default_server_validity_days")]
    pub server_validity_days: u32,
    #[serde(default = "default_operator_validity_days")]
    pub operator_validity_days: u32,
    /// CRL next-update distance; the CRL is re-signed well before it.
    #[serde(default = "default_crl_validity_hours")]
    pub crl_validity_hours: u32,
}

/// Key algorithm of the CA key pairs in the HSM. Typed here so that a bad
/// value stops the start in [`Config::load`], before the HSM is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaKeyAlgorithm {
    /// ECDSA P-256.
    #[default]
    P256,
    /// RSA, 3072 bits.
    Rsa3072,
}

impl CaKeyAlgorithm {
    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::P256 => "p256",
            Self::Rsa3072 => "rsa3072",
        }
    }
}

impl std::fmt::Display for CaKeyAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Default for CaConfig {
    fn default() -> Self {
        Self {
            key_algorithm: CaKeyAlgorithm::default(),
            organization: default_ca_organization(),
            root_validity_days: default_root_validity_days(),
            issuing_validity_days: default_issuing_validity_days(),
            device_validity_days: default_device_validity_days(),
            server_validity_days: default_server_validity_days(),
            operator_validity_days: default_operator_validity_days(),
            crl_validity_hours: default_crl_validity_hours(),
        }
    }
}

fn default_ca_organization() -> String {
    "Keyward".into()
}
fn default_root_validity_days() -> u32 {
    7300
}
fn default_issuing_validity_days() -> u32 {
    3650
}
fn default_device_validity_days() -> u32 {
    1825
}
fn default_server_validity_days() -> u32 {
    397
}
fn default_operator_validity_days() -> u32 {
    365
}
fn default_crl_validity_hours() -> u32 {
    24
}
