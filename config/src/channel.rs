//! `[channel]`: the card-to-server secure channel (docs/protocol.md §14).

use serde::Deserialize;

use crate::ConfigError;

/// A handshake mode the server may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChannelMode {
    /// Ephemeral P-256 ECDH salting the RSA-transported pre-master:
    /// forward secrecy.
    EcdheP256,
    /// The card's pre-master, RSA-encrypted to the channel key.
    RsaTransport,
}

/// The secure channel's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
    /// The modes the server runs, its preference first: it picks the first
    /// the card offers. Forward-secret ECDHE first by default.
    #[serde(default = "default_modes")]
    pub modes: Vec<ChannelMode>,
    /// How cards encrypt the pre-master to the channel key.
    #[serde(default)]
    pub padding: ChannelPadding,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        Self {
            modes: default_modes(),
            padding: ChannelPadding::default(),
        }
    }
}

fn default_modes() -> Vec<ChannelMode> {
    vec![ChannelMode::EcdheP256, ChannelMode::RsaTransport]
}

impl ChannelConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let distinct = self
            .modes
            .iter()
            .enumerate()
            .all(|(i, m)| !self.modes[..i].contains(m));
        if self.modes.is_empty() || !distinct {
            return Err(ConfigError::key(
                "channel.modes",
                "must list one or more distinct modes",
            ));
        }
        Ok(())
    }
}

/// The RSA encryption padding of the pre-master, named in the ServerHello.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelPadding {
    /// RSA-OAEP (the default): non-malleable, no padding oracle to guard.
    #[default]
    Oaep,
    /// RSAES-PKCS1-v1_5, for cards that cannot do OAEP: only with implicit
    /// rejection (a bad ciphertext goes on with a substitute pre-master,
    /// never a distinct answer); needs `CKM_RSA_PKCS` and the
    /// implicit-rejection key, both checked at start.
    Pkcs1v15,
}
