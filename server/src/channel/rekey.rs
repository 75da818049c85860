//! The server's own rekey (docs/protocol.md §14.4): its direction moves to
//! the next key generation before its sequence number reaches 2^20 − 1, by
//! a key update record under the current key followed by the answer under
//! the next key at sequence 0. (The one-hour rule holds by the channel's
//! one-hour lifetime.)

use std::sync::Arc;

use keyward_kms::service::{ChannelKeyUse, ChannelSecret};
use keyward_protocol::channel::{self, ChannelId, Direction, Record, RecordType};

use super::store::ChannelRow;
use super::{Channels, Result};

/// The server's sealed answer.
pub(super) struct Sealed {
    /// The key update record sent first, when the direction rekeyed.
    pub key_update: Option<Vec<u8>>,
    /// The data record.
    pub record: Vec<u8>,
}

/// The server's direction for one answer: its current key and, when the
/// answer is due to move it on, the next (with its wrapped form, which the
/// record's claim stores). Made before the claim: it depends on the
/// channel's state only, never on the answer.
pub(super) struct S2cKeys {
    current: Arc<ChannelSecret>,
    pub next: Option<(Arc<ChannelSecret>, Vec<u8>)>,
}

/// Whether the server's direction must move to its next key before sending
/// record `s2c_seq`: the last number of a generation carries the update.
pub(super) fn s2c_due(s2c_seq: u64) -> bool {
    s2c_seq >= channel::REKEY_AFTER_RECORDS - 1
}

impl Channels {
    /// The keys the server's record `s2c_seq` is sealed under (the current
    /// one kept by the replica, or unwrapped). HSM work only.
    pub(super) async fn s2c_keys(&self, row: &ChannelRow, s2c_seq: u64) -> Result<S2cKeys> {
        let kms = &self.0.kms;
        let next_gen = u64::try_from(row.s2c_generation)
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        let due = s2c_due(s2c_seq);
        let (current, next) = self
            .with_key(row, Direction::S2c, |current| async move {
                if !due {
                    return Ok((current, None));
                }
                let next = kms
                    .channel_derive(
                        &current,
                        channel::rekey_input(next_gen),
                        ChannelKeyUse::Traffic,
                    )
                    .await?;
                let wrapped = kms.channel_wrap_state(&next).await?;
                Ok((current, Some((Arc::new(next), wrapped))))
            })
            .await?;
        Ok(S2cKeys { current, next })
    }

    /// `answer` sealed as the server's record `s2c_seq` of channel `id`:
    /// when the direction moves on, a key update under the current key at
    /// `s2c_seq` first, then the answer under the next key at 0.
    pub(super) async fn seal_answer(
        &self,
        keys: &S2cKeys,
        id: ChannelId,
        iv_s2c: &[u8; 12],
        s2c_seq: u64,
        answer: Vec<u8>,
    ) -> Result<Sealed> {
        let kms = &self.0.kms;
        let seal = |key, kind, sequence, plain| async move {
            let header = Record::header(id, kind, sequence);
            let ciphertext = kms
                .channel_seal(
                    key,
                    channel::nonce(iv_s2c, sequence),
                    header.to_vec(),
                    plain,
                )
                .await?;
            Ok::<_, super::ChannelError>(
                Record {
                    channel: id,
                    kind,
                    sequence,
                    ciphertext,
                }
                .encode(),
            )
        };
        match &keys.next {
            None => Ok(Sealed {
                key_update: None,
                record: seal(&keys.current, RecordType::Data, s2c_seq, answer).await?,
            }),
            Some((next, _)) => Ok(Sealed {
                key_update: Some(
                    seal(&keys.current, RecordType::KeyUpdate, s2c_seq, Vec::new()).await?,
                ),
                record: seal(next, RecordType::Data, 0, answer).await?,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_number_of_a_generation_carries_the_update() {
        assert!(!s2c_due(0));
        assert!(!s2c_due(channel::REKEY_AFTER_RECORDS - 2));
        assert!(s2c_due(channel::REKEY_AFTER_RECORDS - 1));
    }
}
