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
    /// The card's pre-master, RSA-OAEP to the channel key.
    RsaTransport,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
    /// The modes the server runs, its preference first: it picks the first
    /// the card offers. Forward-secret ECDHE first by default.
    #[serde(default = "default_modes")]
    pub modes: Vec<ChannelMode>,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        Self {
            modes: default_modes(),
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
