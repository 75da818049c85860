//! What a replica keeps of its recent channels so that a record costs no
//! unwrap: the traffic keys it unwrapped (HSM session objects), the card
//! certificate the channel runs as, the exporter values it computed, and
//! the channel's row as its own last claim left it (a guess the claim's
//! compare-and-set checks, never a decision).
//!
//! The database stays the source of truth. A traffic key is found only for
//! exactly the wrapped value, direction and generation the channel's row
//! names now, so an entry only saves the unwrap of that value; the claim
//! (compare-and-set on the sequences and generations) still decides
//! whether a record runs, and any replica still takes any record. Bounded
//! by [`MAX_CHANNELS`] (least recently used first out); expired channels go
//! as the next one comes in, and a channel closed or rekeyed here drops what
//! it replaces. An evicted key's HSM object is destroyed when its last user
//! lets it go.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use keyward_kms::service::ChannelSecret;
use keyward_protocol::channel::Direction;

use super::store::ChannelRow;
use crate::edge::identity::PeerCertificate;

/// Channels kept per replica (each holds at most two traffic keys in the
/// HSM).
pub const MAX_CHANNELS: usize = 1024;
/// Exporter values kept per channel (a channel uses a few routes).
const MAX_PATHS: usize = 16;

#[derive(Default)]
pub(super) struct Cache(Mutex<Inner>);

#[derive(Default)]
struct Inner {
    /// Increases at every use: the least recently used entry is the lowest.
    tick: u64,
    channels: HashMap<String, Entry>,
}

struct Entry {
    used: u64,
    expires_at_ms: i64,
    /// One key per direction: the generation and wrapped value it came from.
    keys: Vec<Key>,
    card: Option<Option<PeerCertificate>>,
    exporter: HashMap<String, [u8; 16]>,
    /// The row after this replica's latest claim.
    row: Option<ChannelRow>,
}

struct Key {
    direction: Direction,
    generation: i64,
    wrapped: Vec<u8>,
    secret: Arc<ChannelSecret>,
}

/// The wrapped key and generation `row` names for `direction`.
fn named(row: &ChannelRow, direction: Direction) -> (&[u8], i64) {
    match direction {
        Direction::C2s => (&row.c2s_key, row.c2s_generation),
        Direction::S2c => (&row.s2c_key, row.s2c_generation),
    }
}

impl Cache {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The traffic key of `direction` that `row` names, if kept.
    pub fn key(&self, row: &ChannelRow, direction: Direction) -> Option<Arc<ChannelSecret>> {
        let (wrapped, generation) = named(row, direction);
        self.with(&row.id, |e| {
            e.keys
                .iter()
                .find(|k| {
                    k.direction == direction && k.generation == generation && k.wrapped == wrapped
                })
                .map(|k| k.secret.clone())
        })
        .flatten()
    }

    /// Keeps `secret` as the key of `direction` at `generation` (wrapped as
    /// `wrapped`) of the channel `row`, in place of that direction's key.
    pub fn put_key(
        &self,
        row: &ChannelRow,
        direction: Direction,
        generation: i64,
        wrapped: &[u8],
        secret: Arc<ChannelSecret>,
    ) {
        let key = Key {
            direction,
            generation,
            wrapped: wrapped.to_vec(),
            secret,
        };
        let replaced = self.with_entry(row, |e| {
            let old = e.keys.iter().position(|k| k.direction == direction);
            let old = old.map(|i| e.keys.swap_remove(i));
            e.keys.push(key);
            old
        });
        // Destroyed (when unused) outside the lock.
        drop(replaced);
    }

    /// Keeps the key `row` names for `direction`.
    pub fn put_named(&self, row: &ChannelRow, direction: Direction, secret: Arc<ChannelSecret>) {
        let (wrapped, generation) = named(row, direction);
        self.put_key(row, direction, generation, wrapped, secret);
    }

    /// The card certificate of channel `id`, if kept.
    pub fn card(&self, id: &str) -> Option<Option<PeerCertificate>> {
        self.with(id, |e| e.card.clone()).flatten()
    }

    pub fn put_card(&self, row: &ChannelRow, card: Option<PeerCertificate>) {
        self.with_entry(row, |e| e.card = Some(card));
    }

    /// The exporter value of `path` in channel `id`, if kept.
    pub fn exporter(&self, id: &str, path: &str) -> Option<[u8; 16]> {
        self.with(id, |e| e.exporter.get(path).copied()).flatten()
    }

    pub fn put_exporter(&self, row: &ChannelRow, path: &str, value: [u8; 16]) {
        self.with_entry(row, |e| {
            if e.exporter.len() < MAX_PATHS {
                e.exporter.insert(path.to_owned(), value);
            }
        });
    }

    /// The row of channel `id` as this replica's latest claim left it.
    pub fn row(&self, id: &str) -> Option<ChannelRow> {
        self.with(id, |e| e.row.clone()).flatten()
    }

    pub fn put_row(&self, row: ChannelRow) {
        let kept = row.clone();
        self.with_entry(&row, |e| e.row = Some(kept));
    }

    /// Drops the kept row of channel `id` (another replica moved on, or a
    /// step other than a claim changed it).
    pub fn forget_row(&self, id: &str) {
        self.with(id, |e| e.row = None);
    }

    /// Drops channel `id` (closed).
    pub fn forget(&self, id: &str) {
        let gone = self.lock().channels.remove(id);
        drop(gone);
    }

    /// Drops every entry: the HSM reopened its sessions, so every kept
    /// object is of an older epoch.
    pub fn clear(&self) {
        let gone = std::mem::take(&mut self.lock().channels);
        drop(gone);
    }

    /// How many channels are kept.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().channels.len()
    }

    fn with<T>(&self, id: &str, f: impl FnOnce(&mut Entry) -> T) -> Option<T> {
        let mut inner = self.lock();
        inner.tick += 1;
        let tick = inner.tick;
        inner.channels.get_mut(id).map(|e| {
            e.used = tick;
            f(e)
        })
    }

    /// `f` on the entry of `row`, made if absent: then the expired entries
    /// go, and at the bound the least recently used one.
    fn with_entry<T>(&self, row: &ChannelRow, f: impl FnOnce(&mut Entry) -> T) -> T {
        let mut evicted = Vec::new();
        let mut inner = self.lock();
        inner.tick += 1;
        let tick = inner.tick;
        if !inner.channels.contains_key(&row.id) {
            let now = keyward_kms::db::now_ms();
            let mut out: Vec<String> = inner
                .channels
                .iter()
                .filter(|(_, e)| e.expires_at_ms <= now)
                .map(|(id, _)| id.clone())
                .collect();
            if out.is_empty() && inner.channels.len() >= MAX_CHANNELS {
                out.extend(
                    inner
                        .channels
                        .iter()
                        .min_by_key(|(_, e)| e.used)
                        .map(|(id, _)| id.clone()),
                );
            }
            evicted.extend(out.iter().filter_map(|id| inner.channels.remove(id)));
        }
        let e = inner
            .channels
            .entry(row.id.clone())
            .or_insert_with(|| Entry {
                used: tick,
                expires_at_ms: row.expires_at_ms,
                keys: Vec::new(),
                card: None,
                exporter: HashMap::new(),
                row: None,
            });
        e.used = tick;
        let out = f(e);
        drop(inner);
        drop(evicted);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, expires_at_ms: i64) -> ChannelRow {
        ChannelRow {
            id: id.to_owned(),
            device_id: String::new(),
            card_serial: String::new(),
            terminal_id: String::new(),
            open: true,
            c2s_key: vec![1; 40],
            s2c_key: vec![2; 40],
            exporter_key: vec![3; 40],
            iv_c2s: vec![0; 12],
            iv_s2c: vec![0; 12],
            c2s_sequence: 0,
            s2c_sequence: 0,
            c2s_generation: 0,
            s2c_generation: 0,
            created_at_ms: 0,
            expires_at_ms,
        }
    }

    #[test]
    fn expired_channels_go_and_the_bound_drops_the_least_recently_used() {
        let c = Cache::default();
        let later = keyward_kms::db::now_ms() + 60_000;
        c.put_card(&row("expired", 1), None);
        assert!(c.card("expired").is_some());
        c.put_card(&row("c0", later), None);
        assert!(c.card("expired").is_none());
        for i in 1..MAX_CHANNELS {
            c.put_card(&row(&format!("c{i}"), later), None);
        }
        assert_eq!(c.len(), MAX_CHANNELS);
        assert!(c.card("c1").is_some());
        c.put_card(&row("new", later), None);
        assert_eq!(c.len(), MAX_CHANNELS);
        assert!(c.card("c0").is_none());
        // c1 used again: c2 is now the least recently used.
        assert!(c.card("c1").is_some());
        c.put_card(&row("newer", later), None);
        assert!(c.card("c1").is_some());
        assert!(c.card("c2").is_none());
        assert!(c.card("newer").is_some());
    }

    #[test]
    fn exporter_values_are_bounded_per_channel() {
        let c = Cache::default();
        let r = row("a", i64::MAX);
        for i in 0..MAX_PATHS + 4 {
            c.put_exporter(&r, &format!("/p{i}"), [i as u8; 16]);
        }
        assert_eq!(c.exporter("a", "/p0"), Some([0; 16]));
        assert_eq!(c.exporter("a", &format!("/p{MAX_PATHS}")), None);
        c.forget("a");
        assert_eq!(c.exporter("a", "/p0"), None);
    }
}
