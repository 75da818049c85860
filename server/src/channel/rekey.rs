//! The server's own rekey (docs/protocol.md §14.4): its direction moves to
//! the next key generation before its sequence number reaches 2^20 − 1, by
//! a key update record under the current key followed by the answer under
//! the next key at sequence 0. (The one-hour rule holds by the channel's
//! one-hour lifetime.)

use keyward_kms::service::ChannelKeyUse;
use keyward_protocol::channel::{self, ChannelId, Record, RecordType};

use super::store::ChannelRow;
use super::{Channels, Result};

/// The server's sealed answer.
pub(super) struct Sealed {
    /// The key update record sent first, when the direction rekeyed.
    pub key_update: Option<Vec<u8>>,
    /// The data record.
    pub record: Vec<u8>,
    /// The direction's next key, wrapped for the database, when it rekeyed.
    pub next_key: Option<Vec<u8>>,
}

/// Whether the server's direction must move to its next key before sending
/// record `s2c_seq`: the last number of a generation carries the update.
pub(super) fn s2c_due(s2c_seq: u64) -> bool {
    s2c_seq >= channel::REKEY_AFTER_RECORDS - 1
}

impl Channels {
    /// `answer` sealed as the server's record `s2c_seq` of channel `id`,
    /// rekeying first when due. HSM work only; the caller stores the move.
    pub(super) async fn seal_answer(
        &self,
        row: &ChannelRow,
        id: ChannelId,
        iv_s2c: &[u8; 12],
        s2c_seq: u64,
        answer: Vec<u8>,
    ) -> Result<Sealed> {
        let kms = &self.0.kms;
        let s2c = kms
            .channel_unwrap_state(row.s2c_key.clone(), ChannelKeyUse::Traffic)
            .await?;
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
        if !s2c_due(s2c_seq) {
            let record = seal(&s2c, RecordType::Data, s2c_seq, answer).await?;
            return Ok(Sealed {
                key_update: None,
                record,
                next_key: None,
            });
        }
        let key_update = seal(&s2c, RecordType::KeyUpdate, s2c_seq, Vec::new()).await?;
        let next_gen = u64::try_from(row.s2c_generation)
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        let next = kms
            .channel_derive(&s2c, channel::rekey_input(next_gen), ChannelKeyUse::Traffic)
            .await?;
        let record = seal(&next, RecordType::Data, 0, answer).await?;
        let next_key = kms.channel_wrap_state(&next).await?;
        Ok(Sealed {
            key_update: Some(key_update),
            record,
            next_key: Some(next_key),
        })
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
