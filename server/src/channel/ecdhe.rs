//! The ECDHE-P256 mode's server steps (docs/protocol.md §14.1): an
//! ephemeral key at the hello, kept wrapped under the state KEK in the
//! handshake's row so any replica takes the key exchange, and the salt of
//! the master secret at the key exchange. The row goes (with the wrapped
//! key) when the key exchange takes the handshake, whatever its outcome;
//! the HSM objects are destroyed inside each step.

use keyward_config::ChannelMode;
use keyward_kms::{Kms, KmsError};
use keyward_protocol::channel::{self, CardKeyExchange, EphemeralKey, Mode};

use super::store::HandshakeRow;
use super::{ChannelError, Result};

/// The label `keyward_channel_handshake_modes_total` counts a full
/// handshake's mode by.
pub fn mode_label(mode: Mode) -> &'static str {
    match mode {
        Mode::RsaTransport => "rsa-transport",
        Mode::EcdheP256 => "ecdhe-p256",
        Mode::Resumption => "resumption",
    }
}

/// The modes `keyward_channel_handshake_modes_total` counts.
pub const MODE_LABELS: [&str; 2] = ["rsa-transport", "ecdhe-p256"];

/// The configured preference (`channel.modes`) as protocol modes.
pub fn modes(configured: &[ChannelMode]) -> Vec<Mode> {
    configured
        .iter()
        .map(|m| match m {
            ChannelMode::EcdheP256 => Mode::EcdheP256,
            ChannelMode::RsaTransport => Mode::RsaTransport,
        })
        .collect()
}

/// The hello's ephemeral in `mode`: its public key for the ServerHello and
/// its private key wrapped for the handshake's row; nothing in another mode.
pub async fn ephemeral(kms: &Kms, mode: Mode) -> Result<(Option<EphemeralKey>, Option<Vec<u8>>)> {
    if mode != Mode::EcdheP256 {
        return Ok((None, None));
    }
    let (point, wrapped) = kms.channel_ephemeral().await?;
    let public = EphemeralKey::from_bytes(&point).ok_or(KmsError::Hsm {
        function: "C_GenerateKeyPair",
        problem: "the ephemeral point is not on P-256",
    })?;
    Ok((Some(public), Some(wrapped)))
}

/// The PRF input under the pre-master that gives the master secret: in the
/// ECDHE mode `hybrid_master_input(C, H)` with `C = PRF(Z, D_ms)` computed
/// in the HSM from the handshake's wrapped ephemeral and the card's key;
/// otherwise `D_ms`. The caller runs this whatever its other checks gave,
/// so a refusal costs the same work.
pub async fn master_input(
    kms: &Kms,
    hs: &HandshakeRow,
    cke: &CardKeyExchange,
    h: &[u8; 32],
) -> Result<[u8; 32]> {
    let d_ms = channel::master_input(h);
    let Some(card) = cke.ephemeral else {
        return Ok(d_ms);
    };
    let wrapped = hs.server_ephemeral.clone().ok_or(KmsError::CorruptRecord(
        "channel handshake without its ephemeral",
    ))?;
    match kms
        .channel_ecdhe_salt(wrapped, *card.as_bytes(), d_ms)
        .await
    {
        Ok(c) => Ok(channel::hybrid_master_input(&c, h)),
        Err(KmsError::ChannelRefused) => Err(ChannelError::Refused),
        Err(e) => Err(e.into()),
    }
}
