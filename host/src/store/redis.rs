//! The store in Redis (or a server speaking its protocol), shared by every instance that names
//! the same server: KV with TTL, compare-and-swap and windowed counters, each one round trip.
//!
//! Calls block their thread for the round trip, so the pipeline runs plugin calls off the event
//! loops when the store is here (`SharedStore::is_remote`). Connections are pooled; every call has
//! a timeout; after a failure the store answers `Unavailable` at once for `retry_after` instead of
//! making every request wait for a dead server (what each plugin then does is its
//! `store_errors` setting).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::{Commands, Connection, RedisResult, Script};

use super::{Unavailable, current_window, lock, now_ms};
use crate::config::RedisConfig;

/// Sets `KEYS[1]` to `ARGV[3]` if its value is `ARGV[2]` (`ARGV[1]` = "1") or it is absent
/// (`ARGV[1]` = "0"); `ARGV[4]` is a TTL in milliseconds or empty. One script: atomic in Redis.
const CAS: &str = r"
local cur = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if cur ~= ARGV[2] then return 0 end
elseif cur then
  return 0
end
if ARGV[4] == '' then
  redis.call('SET', KEYS[1], ARGV[3])
else
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
end
return 1
";

/// Adds `ARGV[1]` to `KEYS[1]` and, with a window (`ARGV[2]` ms), lets it expire after two of
/// them: a window's counter is gone soon after the window is.
const INCR: &str = r"
local v = redis.call('INCRBY', KEYS[1], ARGV[1])
if ARGV[2] ~= '' then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return v
";

/// GCRA (`super::gcra`) on `KEYS[1]` in one script, by Redis's own clock (`TIME`: one clock for
/// every instance), in microseconds: Lua's numbers are doubles, exact to 2^53, which nanoseconds
/// since the epoch are not. `ARGV[1]` is the interval and `ARGV[2]` the tolerance, in
/// microseconds; the key holds the theoretical arrival time as decimal microseconds. Answers
/// {1, ahead} or {0, wait}, microseconds.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local room = interval + tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '') or now
if tat < now then tat = now end
if tat > now + room then tat = now + room end
local new_tat = tat + interval
local ahead = new_tat - now
if ahead > room then return {0, ahead - room} end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.max(1, math.ceil(ahead / 1000)))
return {1, ahead}
";

/// A pool of connections to one Redis server.
pub struct RedisStore {
    client: redis::Client,
    idle: Mutex<Vec<Connection>>,
    max_idle: usize,
    timeout: Duration,
    prefix: String,
    retry_after: Duration,
    started: Instant,
    /// Milliseconds since `started` until which calls fail at once.
    down_until: AtomicU64,
    /// Whether the last call failed (so the outage and the recovery are logged once each).
    down: AtomicBool,
    cas: Script,
    incr: Script,
    gcra: Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store on the server `config.url` names; nothing is connected until the first call.
    pub fn new(config: &RedisConfig) -> Result<RedisStore, String> {
        let client = redis::Client::open(config.url.as_str())
            .map_err(|e| format!("store.backend {:?}: {e}", config.url))?;
        Ok(RedisStore {
            client,
            idle: Mutex::new(Vec::new()),
            max_idle: config.pool,
            timeout: config.timeout,
            prefix: config.prefix.clone(),
            retry_after: config.retry_after,
            started: Instant::now(),
            down_until: AtomicU64::new(0),
            down: AtomicBool::new(false),
            gcra: Script::new(GCRA),
            cas: Script::new(CAS),
            incr: Script::new(INCR),
        })
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn connect(&self) -> RedisResult<Connection> {
        let con = self.client.get_connection_with_timeout(self.timeout)?;
        con.set_read_timeout(Some(self.timeout))?;
        con.set_write_timeout(Some(self.timeout))?;
        Ok(con)
    }

    /// Runs `f` on a pooled connection; a failure takes the store out for `retry_after`.
    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> RedisResult<T>) -> Result<T, Unavailable> {
        if self.elapsed_ms() < self.down_until.load(Ordering::Acquire) {
            return Err(Unavailable);
        }
        let pooled = lock(&self.idle).pop();
        let mut con = match pooled.map_or_else(|| self.connect(), Ok) {
            Ok(con) => con,
            Err(error) => return Err(self.failed(&error)),
        };
        match f(&mut con) {
            Ok(value) => {
                if self.down.swap(false, Ordering::AcqRel) {
                    tracing::warn!("the shared store is reachable again");
                }
                let mut idle = lock(&self.idle);
                if idle.len() < self.max_idle {
                    idle.push(con);
                }
                Ok(value)
            }
            Err(error) => Err(self.failed(&error)),
        }
    }

    fn failed(&self, error: &redis::RedisError) -> Unavailable {
        let until = self
            .elapsed_ms()
            .saturating_add(u64::try_from(self.retry_after.as_millis()).unwrap_or(u64::MAX));
        self.down_until.store(until, Ordering::Release);
        // Pooled connections may be broken the same way: start afresh.
        lock(&self.idle).clear();
        if !self.down.swap(true, Ordering::AcqRel) {
            tracing::warn!(%error, retry_after = ?self.retry_after,
                "the shared store is unavailable; plugins get their store_errors answer until it is back");
        }
        Unavailable
    }

    pub fn kv_get(&self, key: &str) -> Result<Option<Vec<u8>>, Unavailable> {
        let key = self.key(key);
        self.with(|c| c.get(&key))
    }

    pub fn kv_set(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool, Unavailable> {
        let key = self.key(key);
        self.with(|c| {
            let mut cmd = redis::cmd("SET");
            cmd.arg(&key).arg(value);
            if let Some(ttl) = ttl {
                cmd.arg("PX").arg(ttl.as_millis().max(1) as u64);
            }
            cmd.query::<()>(c)
        })?;
        Ok(true)
    }

    pub fn kv_delete(&self, key: &str) -> Result<bool, Unavailable> {
        let key = self.key(key);
        self.with(|c| c.del::<_, u64>(&key)).map(|n| n > 0)
    }

    pub fn kv_compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool, Unavailable> {
        let key = self.key(key);
        let ttl = ttl.map_or_else(String::new, |t| (t.as_millis().max(1) as u64).to_string());
        self.with(|c| {
            self.cas
                .key(&key)
                .arg(if expected.is_some() { "1" } else { "0" })
                .arg(expected.unwrap_or_default())
                .arg(new)
                .arg(&ttl)
                .invoke::<i64>(c)
        })
        .map(|set| set == 1)
    }

    /// GCRA on `key` in one round trip (see `GCRA`). The clock counts microseconds, so the
    /// interval is at least one and one more microsecond of tolerance stands for requests that
    /// read the same microsecond.
    pub fn rate_take(
        &self,
        key: &str,
        interval_ns: u64,
        tolerance_ns: u64,
    ) -> Result<super::Rate, Unavailable> {
        let key = self.key(key);
        let interval = interval_ns.div_ceil(1000).max(1);
        let tolerance = tolerance_ns.div_ceil(1000).saturating_add(1);
        let (allowed, us): (i64, i64) = self.with(|c| {
            self.gcra
                .key(&key)
                .arg(interval)
                .arg(tolerance)
                .invoke::<(i64, i64)>(c)
        })?;
        let ns = u64::try_from(us).unwrap_or(0).saturating_mul(1000);
        Ok(if allowed == 1 {
            super::Rate::Allowed(ns)
        } else {
            super::Rate::Limited(ns)
        })
    }

    /// The key of a counter in its current window: windows are numbered from the epoch, so every
    /// instance (with a synchronised clock) counts in the same one.
    fn counter_key(&self, name: &str, window: Option<Duration>) -> (String, Option<u64>) {
        match window {
            Some(w) => {
                let ms = w.as_millis().max(1) as u64;
                let index = current_window(now_ms(), ms);
                (format!("{}{name}\u{1f}{ms}:{index}", self.prefix), Some(ms))
            }
            None => (self.key(name), None),
        }
    }

    pub fn counter_incr(
        &self,
        name: &str,
        delta: i64,
        window: Option<Duration>,
    ) -> Result<i64, Unavailable> {
        let (key, window_ms) = self.counter_key(name, window);
        let expire = window_ms.map_or_else(String::new, |ms| ms.saturating_mul(2).to_string());
        self.with(|c| self.incr.key(&key).arg(delta).arg(&expire).invoke::<i64>(c))
    }

    pub fn counter_get(&self, name: &str, window: Option<Duration>) -> Result<i64, Unavailable> {
        let (key, _) = self.counter_key(name, window);
        self.with(|c| c.get::<_, Option<i64>>(&key))
            .map(|v| v.unwrap_or(0))
    }
}
