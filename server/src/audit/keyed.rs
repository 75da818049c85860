//! What the audit MACs cover, and the HSM checkpoint's encoding. Each input
//! starts with its own domain string, so a record MAC can never pass for a
//! head MAC (a truncated trail whose head is set to an old record's hash
//! needs a head MAC it cannot get).

/// Hex as stored, decoded; text that is not 64 hex digits (tampered) still
/// gives deterministic bytes, which then fail their MAC.
fn hash_bytes(hash_hex: &str) -> Vec<u8> {
    hex::decode(hash_hex).unwrap_or_else(|_| hash_hex.as_bytes().to_vec())
}

/// The record MAC's input: `"keyward-audit-record-v1\0" || hash`. The hash
/// covers the record's seq, fields and link.
pub fn record_input(hash_hex: &str) -> Vec<u8> {
    let mut v = b"keyward-audit-record-v1\0".to_vec();
    v.extend(hash_bytes(hash_hex));
    v
}

/// The head (and checkpoint) MAC's input:
/// `"keyward-audit-head-v1\0" || seq || keyed_from || hash`, integers as
/// 8-byte big-endian.
pub fn head_input(seq: i64, keyed_from: i64, hash_hex: &str) -> Vec<u8> {
    let mut v = b"keyward-audit-head-v1\0".to_vec();
    v.extend(seq.to_be_bytes());
    v.extend(keyed_from.to_be_bytes());
    v.extend(hash_bytes(hash_hex));
    v
}

/// The head as kept on the token (`keyward/audit/checkpoint`):
/// `seq || keyed_from || hash || head MAC`, 80 bytes. `keyed_from` is in it
/// so a writer cannot claim the trail was never keyed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub seq: i64,
    pub keyed_from: i64,
    /// Lower-case hex, as in the table.
    pub hash: String,
    pub mac: [u8; 32],
}

const LEN: usize = 8 + 8 + 32 + 32;

impl Checkpoint {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(LEN);
        v.extend(self.seq.to_be_bytes());
        v.extend(self.keyed_from.to_be_bytes());
        v.extend(hash_bytes(&self.hash));
        v.extend(self.mac);
        v
    }

    /// `None` unless `bytes` is exactly one encoded checkpoint.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != LEN {
            return None;
        }
        let int = |b: &[u8]| b.try_into().ok().map(i64::from_be_bytes);
        Some(Self {
            seq: int(&bytes[0..8])?,
            keyed_from: int(&bytes[8..16])?,
            hash: hex::encode(&bytes[16..48]),
            mac: bytes[48..80].try_into().ok()?,
        })
    }

    /// The input its MAC covers (the head MAC of that state).
    pub fn mac_input(&self) -> Vec<u8> {
        head_input(self.seq, self.keyed_from, &self.hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_round_trips_and_domains_differ() {
        let cp = Checkpoint {
            seq: 42,
            keyed_from: 1,
            hash: "ab".repeat(32),
            mac: [7; 32],
        };
        assert_eq!(Checkpoint::decode(&cp.encode()), Some(cp.clone()));
        assert_eq!(Checkpoint::decode(&cp.encode()[1..]), None);
        assert_ne!(record_input(&cp.hash), head_input(42, 1, &cp.hash)[..]);
        assert_ne!(head_input(42, 1, &cp.hash), head_input(42, 2, &cp.hash));
    }
}
