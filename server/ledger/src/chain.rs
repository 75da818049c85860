//! The hash chain over entries: a canonical byte encoding of an [`Entry`],
//! `hash(n) = SHA-256("keyward-ledger/v1 entry" || hash(n-1) || n || entry)`
//! from [`GENESIS`], and [`verify_chain`]. The server seals entries in
//! sealing order (a background job, so writers never wait on the previous
//! hash) and signs [`checkpoint_message`] in the HSM; this module only says
//! which bytes.
//!
//! Encoding v1 of an entry, fixed layout, integers big-endian:
//!
//! | bytes | field |
//! | --- | --- |
//! | 1 | version, `0x01` |
//! | 16 | transfer id |
//! | 2 + n | account id as text (`C-1`, `sys:float:EUR`), length-prefixed |
//! | 3 | currency, ASCII |
//! | 8 | delta, signed (two's complement) |
//! | 1 | entry kind ([`EntryKind::tag`]) |
//!
//! Worked example (kept true by `tests::worked_example`): the entry
//! `{transfer 00 01 .. 0f, account "C-1", EUR, delta -100, open}` at
//! sequence 1 after [`GENESIS`] encodes as
//! `01 000102030405060708090a0b0c0d0e0f 0003 432d31 455552 ffffffffffffff9c 01`
//! and hashes to
//! `93b58c5173e6462c2b289b26c4371565397228af92b10f21a12a2eefc405f6a7`.

use sha2::{Digest, Sha256};

use crate::Entry;

/// The hash before the first entry.
pub const GENESIS: [u8; 32] = [0; 32];

/// The version byte that opens every encoded entry.
pub const ENCODING_VERSION: u8 = 1;

const ENTRY_DOMAIN: &[u8] = b"keyward-ledger/v1 entry";
const CHECKPOINT_DOMAIN: &[u8] = b"keyward-ledger/v1 checkpoint";

/// The canonical bytes of `entry` (encoding v1, see the module docs).
pub fn encode_entry(entry: &Entry) -> Vec<u8> {
    let account = entry.account.to_string();
    // An account id is at most 34 bytes (a number) or a short system name.
    let len = u16::try_from(account.len()).unwrap_or(u16::MAX);
    let mut out = Vec::with_capacity(1 + 16 + 2 + account.len() + 3 + 8 + 1);
    out.push(ENCODING_VERSION);
    out.extend_from_slice(entry.transfer.as_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(account.as_bytes());
    out.extend_from_slice(&entry.currency.as_bytes());
    out.extend_from_slice(&entry.delta.minor_units().to_be_bytes());
    out.push(entry.kind.tag());
    out
}

/// The hash that seals `entry` as number `seq` after `prev`.
pub fn chain_hash(prev: &[u8; 32], seq: u64, entry: &Entry) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(ENTRY_DOMAIN);
    h.update(prev);
    h.update(seq.to_be_bytes());
    h.update(encode_entry(entry));
    h.finalize().into()
}

/// The last sealed entry: its sequence number (0 before the first) and hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainHead {
    pub seq: u64,
    pub hash: [u8; 32],
}

impl ChainHead {
    pub const GENESIS: ChainHead = ChainHead {
        seq: 0,
        hash: GENESIS,
    };
}

/// The bytes the server signs in the HSM to checkpoint the chain at `head`.
pub fn checkpoint_message(head: &ChainHead) -> Vec<u8> {
    let mut out = Vec::with_capacity(CHECKPOINT_DOMAIN.len() + 8 + 32);
    out.extend_from_slice(CHECKPOINT_DOMAIN);
    out.extend_from_slice(&head.seq.to_be_bytes());
    out.extend_from_slice(&head.hash);
    out
}

/// Where a chain first fails to verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainBreak {
    /// Entry `seq` came where `expected` should have: one is missing,
    /// repeated or out of order.
    SequenceGap { seq: u64, expected: u64 },
    /// Entry `seq`'s stored hash is not the one its content and predecessor
    /// give: it, or an entry before it, was changed.
    HashMismatch { seq: u64 },
}

/// Verifies `(seq, entry, stored hash)` in sealing order from `start`
/// ([`ChainHead::GENESIS`], or a verified checkpoint). Returns the head
/// reached, or the first break.
pub fn verify_chain<'a>(
    start: ChainHead,
    sealed: impl IntoIterator<Item = (u64, &'a Entry, [u8; 32])>,
) -> Result<ChainHead, ChainBreak> {
    let mut head = start;
    for (seq, entry, stored) in sealed {
        let expected = head.seq.wrapping_add(1);
        if seq != expected {
            return Err(ChainBreak::SequenceGap { seq, expected });
        }
        let hash = chain_hash(&head.hash, seq, entry);
        if hash != stored {
            return Err(ChainBreak::HashMismatch { seq });
        }
        head = ChainHead { seq, hash };
    }
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Delta, EntryKind, TransferId};

    fn example() -> Entry {
        let mut id = [0u8; 16];
        for (i, b) in id.iter_mut().enumerate() {
            *b = i as u8;
        }
        Entry {
            transfer: TransferId::from_bytes(id),
            account: "C-1".parse().unwrap(),
            currency: "EUR".parse().unwrap(),
            delta: Delta::from_minor_units(-100).unwrap(),
            kind: EntryKind::Open,
        }
    }

    /// The module docs' worked example, byte for byte.
    #[test]
    fn worked_example() {
        let docs = include_str!("chain.rs");
        let encoded = hex::encode(encode_entry(&example()));
        assert_eq!(
            encoded,
            "01000102030405060708090a0b0c0d0e0f0003432d31455552ffffffffffffff9c01"
        );
        let hash = hex::encode(chain_hash(&GENESIS, 1, &example()));
        assert!(docs.contains(&format!("//! `{hash}`.")), "{hash}");
    }

    #[test]
    fn verify_finds_the_first_break() {
        let mut e2 = example();
        e2.account = "sys:loads_in_flight:EUR".parse().unwrap();
        e2.delta = Delta::from_minor_units(100).unwrap();
        let entries = [example(), e2.clone(), example()];
        let mut sealed = Vec::new();
        let mut prev = GENESIS;
        for (i, e) in entries.iter().enumerate() {
            let seq = i as u64 + 1;
            prev = chain_hash(&prev, seq, e);
            sealed.push((seq, e, prev));
        }
        let head = verify_chain(ChainHead::GENESIS, sealed.iter().copied()).unwrap();
        assert_eq!(head, ChainHead { seq: 3, hash: prev });

        // Resuming from a checkpoint verifies the rest only.
        let checkpoint = ChainHead {
            seq: 1,
            hash: sealed[0].2,
        };
        assert_eq!(
            verify_chain(checkpoint, sealed[1..].iter().copied()),
            Ok(head)
        );

        let mut changed = e2;
        changed.delta = Delta::from_minor_units(101).unwrap();
        let mut tampered = sealed.clone();
        tampered[1].1 = &changed;
        assert_eq!(
            verify_chain(ChainHead::GENESIS, tampered),
            Err(ChainBreak::HashMismatch { seq: 2 })
        );

        let mut gap = sealed.clone();
        gap.remove(1);
        assert_eq!(
            verify_chain(ChainHead::GENESIS, gap),
            Err(ChainBreak::SequenceGap {
                seq: 3,
                expected: 2
            })
        );

        // Reordering is a break even with the hashes carried along.
        let mut reordered = sealed.clone();
        reordered.swap(0, 1);
        reordered[0].0 = 1;
        reordered[1].0 = 2;
        assert_eq!(
            verify_chain(ChainHead::GENESIS, reordered),
            Err(ChainBreak::HashMismatch { seq: 1 })
        );
    }

    #[test]
    fn every_field_is_bound() {
        let base = chain_hash(&GENESIS, 1, &example());
        assert_ne!(chain_hash(&GENESIS, 2, &example()), base);
        assert_ne!(chain_hash(&[1; 32], 1, &example()), base);
        let mut e = example();
        e.kind = EntryKind::Void;
        assert_ne!(chain_hash(&GENESIS, 1, &e), base);
        let mut e = example();
        e.currency = "USD".parse().unwrap();
        assert_ne!(chain_hash(&GENESIS, 1, &e), base);
        let mut e = example();
        e.transfer = TransferId::from_bytes([9; 16]);
        assert_ne!(chain_hash(&GENESIS, 1, &e), base);
        // Length prefix: "C-1" + currency can't be read as "C-1E" + "UR…".
        let mut e = example();
        e.account = "C-1E".parse().unwrap();
        assert_ne!(encode_entry(&e)[..24], encode_entry(&example())[..24]);
        let cp = checkpoint_message(&ChainHead { seq: 7, hash: base });
        assert!(cp.starts_with(b"keyward-ledger/v1 checkpoint"));
        assert_eq!(cp.len(), 28 + 8 + 32);
    }
}
