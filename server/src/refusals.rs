//! Refusals of one kind from one source, counted in fixed windows, so that
//! a source that keeps being refused cannot flood the audit trail (or the
//! log) with one HSM-MACed record per refusal.
//!
//! In each window the first `full` refusals (and any the caller must keep
//! whole) are recorded in full; the rest are only counted. The count goes
//! out when the window closes: with the first refusal of the next window
//! ([`Admit::closed`]), or by [`RefusalWindows::take_closed`] (a sweep) and
//! [`RefusalWindows::take_all`] (shutdown) for a source that went quiet.
//! At most `cap` sources are tracked; when full, the oldest window closes
//! early to make room (its count is handed back, never dropped).
//!
//! The windows live in the process: with several replicas the bound is per
//! replica.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A window that closed with refusals only counted, to be written as one
/// record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed<K> {
    pub key: K,
    /// Refusals not recorded in full.
    pub counted: u64,
    /// Of those, how many were answered with a throttle (429).
    pub throttled: u64,
    /// When the window opened (unix ms).
    pub started_ms: i64,
}

/// What to do with one refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admit<K> {
    /// Record this refusal in full.
    pub record: bool,
    /// A window that closed now (this source's previous one, or the oldest
    /// one, closed to make room), to write first.
    pub closed: Option<Closed<K>>,
    /// Refusals of this source in its window so far, this one included.
    pub seen: u64,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    started_ms: i64,
    written: u32,
    counted: u64,
    throttled: u64,
}

impl Window {
    fn new(now: Instant) -> Self {
        Self {
            started: now,
            started_ms: keyward_kms::db::now_ms(),
            written: 0,
            counted: 0,
            throttled: 0,
        }
    }

    fn closed<K>(self, key: K) -> Option<Closed<K>> {
        (self.counted > 0).then_some(Closed {
            key,
            counted: self.counted,
            throttled: self.throttled,
            started_ms: self.started_ms,
        })
    }
}

/// Windows of refusals per source `K`; see the module docs.
#[derive(Debug)]
pub struct RefusalWindows<K> {
    full: u32,
    window: Duration,
    cap: usize,
    /// The refusal that makes this many in a window is kept whole too (it
    /// starts a throttle).
    mark: Option<u64>,
    windows: Mutex<HashMap<K, Window>>,
}

impl<K: Hash + Eq + Clone> RefusalWindows<K> {
    /// `full` records per `window` per source, `cap` sources at most.
    pub fn new(full: u32, window: Duration, cap: usize) -> Self {
        Self {
            full,
            window,
            cap: cap.max(1),
            mark: None,
            windows: Mutex::default(),
        }
    }

    /// Keeps whole the refusal that makes `n` in a window as well.
    pub fn marking(mut self, n: u64) -> Self {
        self.mark = Some(n);
        self
    }

    /// The window length.
    pub fn window(&self) -> Duration {
        self.window
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Window>> {
        self.windows.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One refusal from `key`: whether to record it in full (`keep`: it
    /// must be, whatever the budget), and a window to close first.
    /// `throttled`: it was answered with a throttle (counted apart).
    pub fn admit(&self, key: K, now: Instant, keep: bool, throttled: bool) -> Admit<K> {
        let mut map = self.lock();
        let mut closed = None;
        let expired = map
            .get(&key)
            .is_some_and(|w| now.duration_since(w.started) >= self.window);
        if expired && let Some(old) = map.remove(&key) {
            closed = old.closed(key.clone());
        }
        if !map.contains_key(&key) && map.len() >= self.cap {
            let oldest = map
                .iter()
                .min_by_key(|(_, w)| w.started)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest
                && let Some(old) = map.remove(&k)
            {
                // Only one of the two can be set: an expired window of `key`
                // left room already.
                closed = closed.or(old.closed(k));
            }
        }
        let w = map.entry(key).or_insert_with(|| Window::new(now));
        let marked = self.mark == Some(u64::from(w.written) + w.counted + 1);
        let record = !throttled && (keep || marked || w.written < self.full);
        if record {
            w.written = w.written.saturating_add(1);
        } else {
            w.counted += 1;
            w.throttled += u64::from(throttled);
        }
        let seen = u64::from(w.written) + w.counted;
        Admit {
            record,
            closed,
            seen,
        }
    }

    /// How long `key` is to wait when it was refused at least `limit`
    /// times in its current window.
    pub fn retry_after(&self, key: &K, now: Instant, limit: u64) -> Option<Duration> {
        let map = self.lock();
        let w = map.get(key)?;
        let elapsed = now.duration_since(w.started);
        (elapsed < self.window && u64::from(w.written) + w.counted >= limit)
            .then(|| self.window - elapsed)
    }

    /// Removes the windows that ended by `now`; the ones with refusals
    /// only counted, to write.
    pub fn take_closed(&self, now: Instant) -> Vec<Closed<K>> {
        let mut map = self.lock();
        let ended: Vec<K> = map
            .iter()
            .filter(|(_, w)| now.duration_since(w.started) >= self.window)
            .map(|(k, _)| k.clone())
            .collect();
        ended
            .into_iter()
            .filter_map(|k| map.remove(&k).and_then(|w| w.closed(k)))
            .collect()
    }

    /// Closes every window now (shutdown); the ones to write.
    pub fn take_all(&self) -> Vec<Closed<K>> {
        self.lock()
            .drain()
            .filter_map(|(k, w)| w.closed(k))
            .collect()
    }

    /// Sources tracked now.
    pub fn tracked(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_of_a_window_is_kept_whole_and_the_rest_counted_until_it_closes() {
        let w = RefusalWindows::new(2, Duration::from_secs(60), 10);
        let t0 = Instant::now();
        assert!(w.admit("a", t0, false, false).record);
        assert!(w.admit("a", t0, false, false).record);
        assert!(!w.admit("a", t0, false, false).record);
        // One that must be kept is, beyond the budget.
        assert!(w.admit("a", t0, true, false).record);
        assert!(!w.admit("a", t0, false, true).record);
        assert!(w.admit("b", t0, false, false).record);
        assert_eq!(w.retry_after(&"a", t0, 5), Some(Duration::from_secs(60)));
        assert_eq!(w.retry_after(&"a", t0, 6), None);
        // The next window opens by writing the last one's count.
        let t1 = t0 + Duration::from_secs(61);
        let a = w.admit("a", t1, false, false);
        assert!(a.record);
        let closed = a.closed.unwrap();
        assert_eq!((closed.key, closed.counted, closed.throttled), ("a", 2, 1));
        // The marked refusal is kept whole.
        let m = RefusalWindows::new(1, Duration::from_secs(60), 10).marking(3);
        let kept: Vec<bool> = (0..4)
            .map(|_| m.admit("a", t0, false, false).record)
            .collect();
        assert_eq!(kept, [true, false, true, false]);
        // A window with nothing counted closes without a record.
        assert_eq!(w.take_closed(t1), Vec::new());
        assert_eq!(w.tracked(), 1);
    }

    #[test]
    fn the_oldest_window_makes_room_and_its_count_is_handed_back() {
        let w = RefusalWindows::new(1, Duration::from_secs(60), 2);
        let t0 = Instant::now();
        w.admit(1, t0, false, false);
        w.admit(1, t0, false, false);
        w.admit(2, t0 + Duration::from_secs(1), false, false);
        let a = w.admit(3, t0 + Duration::from_secs(2), false, false);
        assert!(a.record);
        assert_eq!(a.closed.map(|c| (c.key, c.counted)), Some((1, 1)));
        assert_eq!(w.tracked(), 2);
        w.admit(3, t0 + Duration::from_secs(2), false, false);
        let all = w.take_all();
        assert_eq!(all.len(), 1);
        assert_eq!(w.tracked(), 0);
    }
}
