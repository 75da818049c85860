//! `[channel]`: the card-to-server secure channel (docs/protocol.md §14).

use serde::Deserialize;

/// The secure channel's settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
    /// How cards encrypt the pre-master to the channel key.
    #[serde(default)]
    pub padding: ChannelPadding,
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
