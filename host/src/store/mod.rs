//! The key-value store and counters behind the plugins' host services, shared by every plugin and
//! every event-loop thread of the front process, and across instances when it lives in Redis.
//!
//! One store per process (not per thread or per instance), so a rate limit counts every request the
//! process sees. Keys are namespaced per plugin by the caller.

mod memory;
mod redis;
mod waits;

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use memory::MemoryStore;
pub use redis::RedisStore;
pub use waits::{Waiter, Waits};

use crate::config::{StoreBackend, StoreConfig};

pub use gatehouse_rate::{Rate, gcra};

/// The store could not be reached (a remote backend down or too slow); nothing was done.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the shared store is unavailable")]
pub struct Unavailable;

/// The key-value store and counters, kept across reloads.
#[derive(Debug)]
pub struct SharedStore {
    backend: Backend,
    /// Requests held by `request.wait-for` until a `host.notify` of their key.
    pub waits: Waits,
    /// The settings it was made with (a reload that changes them needs a restart).
    config: Option<StoreConfig>,
    /// Bytes the key-value part may hold.
    kv_budget: usize,
}

#[derive(Debug)]
enum Backend {
    Memory(MemoryStore),
    Redis(Box<RedisStore>),
}

impl SharedStore {
    /// A store in memory whose key-value part holds at most `kv_budget` bytes and whose counters
    /// at most `counter_budget` (names come from clients: a limit per IP address, say).
    pub fn new(kv_budget: usize, counter_budget: usize) -> SharedStore {
        SharedStore {
            backend: Backend::Memory(MemoryStore::new(kv_budget, counter_budget)),
            waits: Waits::default(),
            config: None,
            kv_budget,
        }
    }

    /// The store `[store]` asks for.
    pub fn for_config(config: &StoreConfig) -> Result<SharedStore, String> {
        let mut store = SharedStore::new(
            usize::try_from(config.kv_budget).unwrap_or(usize::MAX),
            usize::try_from(config.counter_budget).unwrap_or(usize::MAX),
        );
        if let StoreBackend::Redis(redis) = &config.backend {
            store.backend = Backend::Redis(Box::new(RedisStore::new(redis)?));
        }
        store.config = Some(config.clone());
        Ok(store)
    }

    /// Whether it was made from these settings.
    pub fn made_from(&self, config: &StoreConfig) -> bool {
        self.config.as_ref().is_none_or(|c| c == config)
    }

    /// Threads per event loop for plugin calls while the store is remote.
    pub fn threads(&self) -> usize {
        self.config.as_ref().map_or(16, |c| c.threads)
    }

    /// Whether its calls go over the network (and so must not run on an event-loop thread).
    pub fn is_remote(&self) -> bool {
        matches!(self.backend, Backend::Redis(_))
    }

    /// The value of `key`, unless absent or expired, with the version of what was read when
    /// this process sees every write (the memory backend; see [`SharedStore::kv_version`]).
    pub fn kv_get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u64>), Unavailable> {
        match &self.backend {
            Backend::Memory(m) => {
                let (value, version) = m.kv_get(key);
                Ok((value, Some(version)))
            }
            Backend::Redis(r) => Ok((r.kv_get(key)?, None)),
        }
    }

    /// A number that changes with every write to `key` (and its expiry or deletion), when this
    /// process sees every write: the memory backend. A Redis store is shared with other servers,
    /// whose writes this one does not see, so it has none.
    pub fn kv_version(&self, key: &str) -> Option<u64> {
        match &self.backend {
            Backend::Memory(m) => Some(m.kv_version(key)),
            Backend::Redis(_) => None,
        }
    }

    /// GCRA on `key` ([`gcra`], from `gatehouse-rate`), atomic across event loops and, with Redis, instances (one
    /// script there, by Redis's clock).
    pub fn rate_take(&self, key: &str, interval: u64, tolerance: u64) -> Result<Rate, Unavailable> {
        match &self.backend {
            Backend::Memory(m) => Ok(m.rate_take(key, now_ns, interval, tolerance)),
            Backend::Redis(r) => r.rate_take(key, interval, tolerance),
        }
    }

    /// Bytes the key-value store may hold (memory backend).
    pub fn kv_budget(&self) -> usize {
        self.kv_budget
    }

    /// Sets `key`; false if the value alone exceeds the budget.
    pub fn kv_set(
        &self,
        key: String,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<bool, Unavailable> {
        match &self.backend {
            Backend::Memory(m) => Ok(m.kv_set(key, value, ttl)),
            Backend::Redis(r) => r.kv_set(&key, &value, ttl),
        }
    }

    /// Deletes `key`; true if it was there (and not expired).
    pub fn kv_delete(&self, key: &str) -> Result<bool, Unavailable> {
        match &self.backend {
            Backend::Memory(m) => Ok(m.kv_delete(key)),
            Backend::Redis(r) => r.kv_delete(key),
        }
    }

    /// Sets `key` to `new` if its current value is `expected` (`None`: absent).
    pub fn kv_compare_and_swap(
        &self,
        key: String,
        expected: Option<&[u8]>,
        new: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<bool, Unavailable> {
        match &self.backend {
            Backend::Memory(m) => Ok(m.kv_compare_and_swap(key, expected, new, ttl)),
            Backend::Redis(r) => r.kv_compare_and_swap(&key, expected, &new, ttl),
        }
    }

    /// Adds `delta` to a counter (in its current window, if `window` is set) and returns the result.
    pub fn counter_incr(
        &self,
        name: &str,
        delta: i64,
        window: Option<Duration>,
    ) -> Result<i64, Unavailable> {
        match &self.backend {
            Backend::Memory(m) => Ok(m.counter_incr(name, delta, window)),
            Backend::Redis(r) => r.counter_incr(name, delta, window),
        }
    }

    /// A counter's value (in its current window, if `window` is set).
    pub fn counter_get(&self, name: &str, window: Option<Duration>) -> Result<i64, Unavailable> {
        match &self.backend {
            Backend::Memory(m) => Ok(m.counter_get(name, window)),
            Backend::Redis(r) => r.counter_get(name, window),
        }
    }
}

/// A stored theoretical arrival time: eight little-endian bytes.
fn tat_of(bytes: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(bytes).ok().map(u64::from_le_bytes)
}

/// Nanoseconds since the Unix epoch.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Locks a mutex; a panic while holding it cannot leave these maps half-updated in a way that
/// matters more than losing the server, so poisoning is ignored.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The index of the fixed window of `window_ms` that `now_ms` falls in (0 without a window).
fn current_window(now_ms: u64, window_ms: u64) -> u64 {
    now_ms.checked_div(window_ms).unwrap_or(0)
}
