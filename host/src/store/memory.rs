//! The store in the front process's memory (the default backend): an LRU map with a byte budget
//! and per-entry expiry, and counters in fixed windows, each behind one lock.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lru::LruCache;

use super::{current_window, lock, now_ms};

/// Bookkeeping bytes charged per entry on top of its key and value.
const ENTRY_OVERHEAD: usize = 64;

/// The version of an absent key.
pub const ABSENT: u64 = 0;

/// Bookkeeping bytes charged per counter on top of its name.
const COUNTER_OVERHEAD: usize = 64;

/// The key-value store and counters in memory.
#[derive(Debug)]
pub struct MemoryStore {
    kv: Mutex<Kv>,
    counters: Mutex<Counters>,
}

impl MemoryStore {
    /// A store whose key-value part holds at most `kv_budget` bytes and whose counters at most
    /// `counter_budget` (names come from clients: a limit per IP address, say).
    pub fn new(kv_budget: usize, counter_budget: usize) -> MemoryStore {
        MemoryStore {
            kv: Mutex::new(Kv {
                entries: LruCache::unbounded(),
                bytes: 0,
                budget: kv_budget,
                last_version: ABSENT,
            }),
            counters: Mutex::new(Counters {
                by_window: HashMap::new(),
                len: 0,
                sweep_at: 1024,
                bytes: 0,
                budget: counter_budget,
            }),
        }
    }

    /// The value of `key`, unless absent or expired, and the version of what was read (see
    /// [`MemoryStore::kv_version`]).
    pub fn kv_get(&self, key: &str) -> (Option<Vec<u8>>, u64) {
        let mut kv = lock(&self.kv);
        match kv.get(key, Instant::now()) {
            Some(e) => (Some(e.value.clone()), e.version),
            None => (None, ABSENT),
        }
    }

    /// The version of `key`'s value: a number no other value of any key has had, or [`ABSENT`].
    /// Reading it counts as a use of the entry (least recently used entries go first).
    pub fn kv_version(&self, key: &str) -> u64 {
        lock(&self.kv)
            .get(key, Instant::now())
            .map_or(ABSENT, |e| e.version)
    }

    /// Sets `key`; false if the value alone exceeds the budget.
    pub fn kv_set(&self, key: String, value: Vec<u8>, ttl: Option<Duration>) -> bool {
        lock(&self.kv).set(key, value, ttl, Instant::now())
    }

    /// GCRA on `key` at the time `now` reads (see [`super::gcra`]), under the lock: exact across
    /// event loops.
    pub fn rate_take(
        &self,
        key: &str,
        now: impl FnOnce() -> u64,
        interval: u64,
        tolerance: u64,
    ) -> super::Rate {
        let mut kv = lock(&self.kv);
        // Read under the lock: a time read before it could be older than the one another event
        // loop stored with, and refuse a request for that skew alone.
        let now = now();
        let instant = Instant::now();
        let stored = kv.get(key, instant).and_then(|e| super::tat_of(&e.value));
        let (rate, new_tat) = super::gcra(stored, now, interval, tolerance);
        if let Some(new_tat) = new_tat {
            let ttl = Some(Duration::from_nanos(new_tat - now));
            let value = new_tat.to_le_bytes();
            // A key's state is rewritten on every request it takes: in place once it exists (no
            // allocation and less time under the lock both event loops take).
            if !kv.overwrite(key, &value, ttl, instant) {
                kv.set(key.to_string(), value.to_vec(), ttl, instant);
            }
        }
        rate
    }

    /// Deletes `key`; true if it was there (and not expired).
    pub fn kv_delete(&self, key: &str) -> bool {
        let mut kv = lock(&self.kv);
        let present = kv.get(key, Instant::now()).is_some();
        kv.remove(key);
        present
    }

    /// Sets `key` to `new` if its current value is `expected` (`None`: absent).
    pub fn kv_compare_and_swap(
        &self,
        key: String,
        expected: Option<&[u8]>,
        new: Vec<u8>,
        ttl: Option<Duration>,
    ) -> bool {
        let now = Instant::now();
        let mut kv = lock(&self.kv);
        let current = kv.peek(&key, now);
        if current != expected {
            return false;
        }
        kv.set(key, new, ttl, now)
    }

    /// Adds `delta` to a counter (in its current window, if `window` is set) and returns the result.
    pub fn counter_incr(&self, name: &str, delta: i64, window: Option<Duration>) -> i64 {
        let window_ms = window.map_or(0, |w| w.as_millis().max(1) as u64);
        let now = now_ms();
        let current = current_window(now, window_ms);
        let mut guard = lock(&self.counters);
        guard.sweep(now);
        let counters = &mut *guard;
        let map = counters
            .by_window
            .entry(window_ms)
            .or_insert_with(LruCache::unbounded);
        // Looked up by reference: the name is copied only for a new counter.
        match map.get_mut(name) {
            Some(slot) => {
                if slot.window != current {
                    *slot = Counter {
                        window: current,
                        value: 0,
                    };
                }
                slot.value = slot.value.saturating_add(delta);
                slot.value
            }
            None => {
                map.put(
                    name.to_string(),
                    Counter {
                        window: current,
                        value: delta,
                    },
                );
                counters.len += 1;
                counters.bytes += name.len() + COUNTER_OVERHEAD;
                // Past the budget the counters used longest ago go (in this window length, the
                // one growing).
                while counters.bytes > counters.budget {
                    match map.pop_lru() {
                        Some((old, _)) => {
                            counters.bytes -= old.len() + COUNTER_OVERHEAD;
                            counters.len -= 1;
                        }
                        None => break,
                    }
                }
                delta
            }
        }
    }

    /// A counter's value (in its current window, if `window` is set).
    pub fn counter_get(&self, name: &str, window: Option<Duration>) -> i64 {
        let window_ms = window.map_or(0, |w| w.as_millis().max(1) as u64);
        let counters = lock(&self.counters);
        match counters
            .by_window
            .get(&window_ms)
            .and_then(|m| m.peek(name))
        {
            Some(c) if c.window == current_window(now_ms(), window_ms) => c.value,
            _ => 0,
        }
    }
}

#[derive(Debug)]
struct Entry {
    value: Vec<u8>,
    expires: Option<Instant>,
    /// Which write made it (see `MemoryStore::kv_version`).
    version: u64,
}

/// An LRU map with a byte budget and per-entry expiry.
#[derive(Debug)]
struct Kv {
    entries: LruCache<String, Entry>,
    bytes: usize,
    budget: usize,
    /// The version of the last write.
    last_version: u64,
}

impl Kv {
    fn cost(key: &str, value: &[u8]) -> usize {
        key.len() + value.len() + ENTRY_OVERHEAD
    }

    fn get(&mut self, key: &str, now: Instant) -> Option<&Entry> {
        let live = self.entries.peek(key)?.expires.is_none_or(|t| t > now);
        if live {
            self.entries.get(key)
        } else {
            self.remove(key);
            None
        }
    }

    /// Replaces the value of `key` with one of the same length (so the same cost) as a new
    /// write; false if there is no such value.
    fn overwrite(&mut self, key: &str, value: &[u8], ttl: Option<Duration>, now: Instant) -> bool {
        let Some(entry) = self.entries.get_mut(key) else {
            return false;
        };
        if entry.value.len() != value.len() {
            return false;
        }
        entry.value.copy_from_slice(value);
        entry.expires = ttl.map(|t| now + t);
        self.last_version += 1;
        entry.version = self.last_version;
        true
    }

    fn peek(&self, key: &str, now: Instant) -> Option<&[u8]> {
        self.entries
            .peek(key)
            .filter(|e| e.expires.is_none_or(|t| t > now))
            .map(|e| e.value.as_slice())
    }

    fn remove(&mut self, key: &str) {
        if let Some((k, e)) = self.entries.pop_entry(key) {
            self.bytes -= Kv::cost(&k, &e.value);
        }
    }

    fn set(&mut self, key: String, value: Vec<u8>, ttl: Option<Duration>, now: Instant) -> bool {
        let cost = Kv::cost(&key, &value);
        if cost > self.budget {
            return false;
        }
        self.remove(&key);
        while self.bytes + cost > self.budget {
            match self.entries.pop_lru() {
                Some((k, e)) => self.bytes -= Kv::cost(&k, &e.value),
                None => break,
            }
        }
        self.bytes += cost;
        self.last_version += 1;
        self.entries.put(
            key,
            Entry {
                value,
                expires: ttl.map(|t| now + t),
                version: self.last_version,
            },
        );
        true
    }
}

#[derive(Debug, Clone, Copy)]
struct Counter {
    window: u64,
    value: i64,
}

/// Counters by (name, window length); windows that have passed are swept as the map grows, and
/// past the byte budget the least recently used go.
#[derive(Debug)]
struct Counters {
    /// By window length in milliseconds (0: no window), then by name, least recently used first.
    by_window: HashMap<u64, LruCache<String, Counter>>,
    /// Counters in all windows.
    len: usize,
    sweep_at: usize,
    /// Bytes charged for them (names plus bookkeeping), within `budget`.
    bytes: usize,
    budget: usize,
}

impl Counters {
    fn sweep(&mut self, now: u64) {
        if self.len < self.sweep_at {
            return;
        }
        for (&window_ms, map) in self.by_window.iter_mut() {
            if window_ms != 0 {
                let stale: Vec<String> = map
                    .iter()
                    .filter(|(_, c)| c.window != current_window(now, window_ms))
                    .map(|(k, _)| k.clone())
                    .collect();
                for name in stale {
                    map.pop(&name);
                    self.bytes -= name.len() + COUNTER_OVERHEAD;
                }
            }
        }
        self.len = self.by_window.values().map(LruCache::len).sum();
        self.sweep_at = (self.len * 2).max(1024);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_ttl_cas_and_budget() {
        let s = MemoryStore::new(3 * (ENTRY_OVERHEAD + 2), 1 << 20);
        assert!(s.kv_set("a".into(), b"1".to_vec(), None));
        assert_eq!(s.kv_get("a").0, Some(b"1".to_vec()));
        assert!(!s.kv_compare_and_swap("a".into(), Some(b"2"), b"3".to_vec(), None));
        assert!(s.kv_compare_and_swap("a".into(), Some(b"1"), b"3".to_vec(), None));
        assert!(s.kv_compare_and_swap("n".into(), None, b"x".to_vec(), None));
        assert!(!s.kv_compare_and_swap("n".into(), None, b"y".to_vec(), None));
        assert!(s.kv_set("b".into(), b"2".to_vec(), None));
        // Touch a so b is the least recently used, then overflow the budget.
        assert!(s.kv_get("a").0.is_some());
        assert!(s.kv_set("c".into(), b"3".to_vec(), None));
        assert_eq!(s.kv_get("n").0, None, "least recently used entry evicted");
        assert!(s.kv_get("a").0.is_some() && s.kv_get("c").0.is_some());
        assert!(!s.kv_set("big".into(), vec![0; 1000], None));
        assert!(s.kv_set("t".into(), b"1".to_vec(), Some(Duration::from_millis(0))));
        assert_eq!(s.kv_get("t").0, None, "expired");
        assert!(s.kv_delete("a"));
        assert!(!s.kv_delete("a"));
    }

    #[test]
    fn every_write_makes_a_new_version_and_expiry_or_deletion_absence() {
        let s = MemoryStore::new(1 << 20, 1 << 20);
        assert_eq!(s.kv_version("k"), ABSENT);
        assert!(s.kv_set("k".into(), b"1".to_vec(), None));
        let (value, first) = s.kv_get("k");
        assert_eq!(
            (value.as_deref(), s.kv_version("k")),
            (Some(&b"1"[..]), first)
        );
        assert_ne!(first, ABSENT);
        // The same bytes written again are another version: a reader cannot tell the two apart.
        assert!(s.kv_set("k".into(), b"1".to_vec(), None));
        let second = s.kv_version("k");
        assert!(second != first && second != ABSENT);
        assert!(s.kv_compare_and_swap("k".into(), Some(b"1"), b"2".to_vec(), None));
        assert!(![first, second, ABSENT].contains(&s.kv_version("k")));
        assert!(s.kv_delete("k"));
        assert_eq!(s.kv_get("k"), (None, ABSENT));
        assert!(s.kv_set("t".into(), b"1".to_vec(), Some(Duration::from_millis(0))));
        assert_eq!(s.kv_version("t"), ABSENT, "expired");
    }

    #[test]
    fn gcra_lets_the_burst_through_then_the_steady_rate() {
        use super::super::Rate;
        let s = MemoryStore::new(1 << 20, 1 << 20);
        let (second, t0) = (1_000_000_000, 10_000_000_000_000);
        // 2 a second (one every 0.5 s) with a burst of 2 more: three at once, then one per 0.5 s.
        let take = |at: u64| s.rate_take("k", || t0 + at, second / 2, second);
        assert_eq!(take(0), Rate::Allowed(second / 2));
        let first = s.kv_version("k");
        assert_eq!(take(0), Rate::Allowed(second));
        let second_version = s.kv_version("k");
        assert!(
            ![ABSENT, first].contains(&second_version),
            "rewritten in place, a new write"
        );
        assert_eq!(take(0), Rate::Allowed(3 * second / 2));
        let third = s.kv_version("k");
        assert_eq!(take(0), Rate::Limited(second / 2));
        assert_eq!(s.kv_version("k"), third, "a refusal writes nothing");
        assert_eq!(
            lock(&s.kv).bytes,
            Kv::cost("k", &[0; 8]),
            "one entry's cost"
        );
        assert_eq!(take(second / 4), Rate::Limited(second / 4), "not counted");
        assert_eq!(take(second / 2), Rate::Allowed(3 * second / 2));
        assert_eq!(take(second / 2), Rate::Limited(second / 2));
        // Idle long enough, and the key is gone with its time to live.
        assert_eq!(take(100 * second), Rate::Allowed(second / 2));
        // A clock gone back an hour: refused for one interval, not for the hour.
        let back = s.rate_take(
            "k",
            || t0 + 100 * second - 3600 * second,
            second / 2,
            second,
        );
        assert_eq!(back, Rate::Limited(second / 2));
    }

    #[test]
    fn counters_stay_within_their_budget_dropping_the_least_recently_used() {
        let s = MemoryStore::new(1024, 10 * (COUNTER_OVERHEAD + 6));
        let hour = Some(Duration::from_secs(3600));
        for i in 0..1000 {
            s.counter_incr(&format!("ip{i:04}"), 1, hour);
            // One key stays in use throughout and is never the one dropped.
            s.counter_incr("keeper", 1, hour);
        }
        assert_eq!(s.counter_get("keeper", hour), 1000);
        assert_eq!(s.counter_get("ip0999", hour), 1);
        assert_eq!(s.counter_get("ip0000", hour), 0, "dropped long ago");
        let c = lock(&s.counters);
        assert!(c.bytes <= c.budget, "{} > {}", c.bytes, c.budget);
        assert!(c.len <= 10);
    }

    #[test]
    fn counters_count_within_windows() {
        let s = MemoryStore::new(1024, 1 << 20);
        assert_eq!(s.counter_incr("x", 2, None), 2);
        assert_eq!(s.counter_incr("x", 3, None), 5);
        assert_eq!(s.counter_get("x", None), 5);
        let hour = Some(Duration::from_secs(3600));
        assert_eq!(
            s.counter_incr("x", 1, hour),
            1,
            "a windowed counter is separate"
        );
        assert_eq!(s.counter_get("x", hour), 1);
        assert_eq!(s.counter_get("y", hour), 0);
        // A window that has passed starts from zero.
        let ms = Some(Duration::from_millis(1));
        assert_eq!(s.counter_incr("x", 4, ms), 4);
        std::thread::sleep(Duration::from_millis(3));
        assert_eq!(s.counter_incr("x", 1, ms), 1);
        assert_eq!(s.counter_get("x", None), 5, "the others are untouched");
    }
}
