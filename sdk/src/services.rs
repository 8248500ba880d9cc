//! Host services: a shared key-value store, counters, metrics, logging, clock and random.
//!
//! In a plugin each call goes to the Gatehouse process (one store for all threads and plugins, keys
//! namespaced per plugin). Natively (under `cargo test`) they use an in-memory store per test
//! thread, inspected and reset through [`crate::testing`].

#[cfg(target_arch = "wasm32")]
use crate::__private::bindings::gatehouse::plugin::host as backend;
#[cfg(not(target_arch = "wasm32"))]
use crate::testing::backend;

/// A duration in the contract's milliseconds, rounded up: a time to live shorter than the clock's
/// step must not become zero (gone at once) nor shrink.
fn millis(d: Option<std::time::Duration>) -> Option<u64> {
    d.map(|d| d.as_nanos().div_ceil(1_000_000).min(u128::from(u64::MAX)) as u64)
}

/// The shared key-value store: values with an optional time to live, evicted least-recently-used
/// when the store's byte budget is full.
pub mod kv {
    use super::{backend, millis};
    use std::time::Duration;

    /// The value of `key`, unless absent or expired.
    pub fn get(key: &str) -> Option<Vec<u8>> {
        backend::kv_get(key)
    }

    /// Sets `key`, optionally expiring after `ttl`; false if the value cannot fit in the store.
    pub fn set(key: &str, value: &[u8], ttl: Option<Duration>) -> bool {
        backend::kv_set(key, value, millis(ttl))
    }

    /// Deletes `key`; true if it was there.
    pub fn delete(key: &str) -> bool {
        backend::kv_delete(key)
    }

    /// Sets `key` to `new` only if its value is `expected` (`None`: absent); true if it was set.
    pub fn compare_and_swap(
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
        ttl: Option<Duration>,
    ) -> bool {
        backend::kv_compare_and_swap(key, expected, new, millis(ttl))
    }
}

/// Rate limits by the generic cell rate algorithm (GCRA), kept in the store: exact across every
/// thread of the server (and, with a Redis store, every instance): a [`rate::Rule`] the host
/// applies with no call into the plugin ([`rate::enforce`]), or one host call per request
/// ([`rate::take`]) for a limit a rule cannot say.
pub mod rate {
    use super::backend;
    use std::time::Duration;

    pub use gatehouse_rate::{Fields, KeyPart, REFUSAL_TYPE, Rule};

    /// Hands `rule` to the host; only from [`Filter::new`](crate::Filter::new). The host then
    /// applies it to every request the plugin applies to, before the plugin's `on_request` (if it
    /// has one) and with no call into the plugin: it joins the key's parts, takes from that key
    /// as [`take`] would, and either answers the refusal (`status`, `Retry-After`, the fields) or
    /// lets the request go on with the `RateLimit-Policy` and `RateLimit` fields set for its
    /// response. A call into a plugin costs more than the whole limit, so a plugin that only
    /// limits needs no `on_request` at all. The error says why the host cannot apply the rule.
    /// The test harness applies it the same way in [`crate::testing::on_request`] (the rule of
    /// the filter built last on the test thread).
    pub fn enforce(rule: Rule) -> Result<(), String> {
        rule.check()?;
        hand_over(rule)
    }

    #[cfg(target_arch = "wasm32")]
    fn hand_over(rule: Rule) -> Result<(), String> {
        use backend::KeyPart as Part;
        let key: Vec<Part<'_>> = rule
            .key
            .iter()
            .map(|part| match part {
                KeyPart::ClientIp => Part::ClientIp,
                KeyPart::Host => Part::Host,
                KeyPart::Method => Part::Method,
                KeyPart::Path => Part::Path,
                KeyPart::PathSegments(n) => Part::PathSegments(*n),
                KeyPart::Header(name) => Part::Header(name),
            })
            .collect();
        backend::enforce_rate_rule(backend::RateRule {
            key: &key,
            interval_ns: rule.interval_ns,
            tolerance_ns: rule.tolerance_ns,
            status: rule.status,
            fields: rule.fields.as_ref().map(|f| backend::RateFields {
                name: &f.name,
                policy: &f.policy,
            }),
            limited_metric: rule.limited_metric.as_deref(),
        })
    }

    #[cfg(not(target_arch = "wasm32"))]
    fn hand_over(rule: Rule) -> Result<(), String> {
        backend::enforce_rate_rule(rule);
        Ok(())
    }

    /// What [`take`] decided.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Rate {
        /// Counted. `ahead`: how far the key's theoretical arrival time now runs ahead of the
        /// clock (`interval` per request taken, draining with time).
        Allowed {
            /// How far ahead.
            ahead: Duration,
        },
        /// Refused and not counted: a request would pass after `retry_in`.
        Limited {
            /// How long until one would.
            retry_in: Duration,
        },
    }

    /// Takes one request from `key`'s allowance: one per `interval` at the steady rate, with
    /// `tolerance` more at once (the burst, as time: `burst * interval`). The key's value in the
    /// store is its theoretical arrival time (8 bytes).
    pub fn take(key: &str, interval: Duration, tolerance: Duration) -> Rate {
        let ns = |d: Duration| d.as_nanos().min(u128::from(u64::MAX)) as u64;
        match backend::rate_take(key, ns(interval), ns(tolerance)) {
            backend::RateVerdict::Allowed(n) => Rate::Allowed {
                ahead: Duration::from_nanos(n),
            },
            backend::RateVerdict::Limited(n) => Rate::Limited {
                retry_in: Duration::from_nanos(n),
            },
        }
    }
}

/// Atomic counters, exact across every thread of the server; optionally in fixed time windows
/// (a rate limit: the count starts from zero in each new window).
pub mod counter {
    use super::{backend, millis};
    use std::time::Duration;

    /// Adds `delta` and returns the new value.
    pub fn incr(name: &str, delta: i64) -> i64 {
        backend::counter_incr(name, delta, None)
    }

    /// Adds `delta` within the current window of length `window` and returns the window's count.
    pub fn incr_in_window(name: &str, delta: i64, window: Duration) -> i64 {
        backend::counter_incr(name, delta, millis(Some(window)))
    }

    /// The current value.
    pub fn get(name: &str) -> i64 {
        backend::counter_get(name, None)
    }

    /// The count in the current window of length `window`.
    pub fn get_in_window(name: &str, window: Duration) -> i64 {
        backend::counter_get(name, millis(Some(window)))
    }
}

/// Metrics the plugin defines, exported with the host's metrics as
/// `gatehouse_plugin_<plugin>_<name>_total`.
pub mod metrics {
    use super::backend;

    /// Adds `delta` to the metric `name`.
    pub fn add(name: &str, delta: u64) {
        backend::metric_add(name, delta);
    }
}

/// Log lines in the host's log, tagged with the plugin's name.
pub mod log {
    use super::backend;
    use backend::Level;

    /// Logs at `trace`.
    pub fn trace(message: &str) {
        backend::log(Level::Trace, message);
    }
    /// Logs at `debug`.
    pub fn debug(message: &str) {
        backend::log(Level::Debug, message);
    }
    /// Logs at `info`.
    pub fn info(message: &str) {
        backend::log(Level::Info, message);
    }
    /// Logs at `warn`.
    pub fn warn(message: &str) {
        backend::log(Level::Warn, message);
    }
    /// Logs at `error`.
    pub fn error(message: &str) {
        backend::log(Level::Error, message);
    }
}

/// Request collapsing: waking the requests that [`Request::wait_for`](crate::Request::wait_for)
/// holds.
pub mod waits {
    use super::backend;

    /// Wakes every request waiting on `key`, on every event loop of the server.
    pub fn notify(key: &str) {
        backend::notify(key);
    }
}

/// Time and randomness from the host.
pub mod clock {
    use super::backend;

    /// Milliseconds since the Unix epoch.
    pub fn now_ms() -> u64 {
        backend::now_ms()
    }

    /// A monotonic clock in nanoseconds, for measuring durations.
    pub fn monotonic_ns() -> u64 {
        backend::monotonic_ns()
    }

    /// A random number from the host's cryptographic generator.
    pub fn random_u64() -> u64 {
        backend::random_u64()
    }
}
