//! The `host` interface: logging, the shared key-value store and counters, plugin metrics, clocks.

use std::time::Duration;

use wasmtime::Result;

use super::{HostState, scoped};
use crate::config::StoreErrors;
use crate::plugin::bindings::gatehouse::plugin::host;
use crate::sandbox::MAX_PLUGIN_METRICS;
use crate::store;

fn ttl(ms: Option<u64>) -> Option<Duration> {
    ms.map(Duration::from_millis)
}

/// A store call's answer: the store's, or while it is unreachable, `open` (the value the plugin
/// gets as if the store were empty and refused writes) or a failed call (`store_errors = closed`:
/// the request gets 503).
fn answer<T>(result: Result<T, store::Unavailable>, errors: StoreErrors, open: T) -> Result<T> {
    match (result, errors) {
        (Ok(value), _) => Ok(value),
        (Err(_), StoreErrors::Open) => Ok(open),
        (Err(unavailable), StoreErrors::Closed) => Err(wasmtime::Error::new(unavailable)),
    }
}

impl host::Host for HostState {
    fn log(&mut self, level: host::Level, message: String) -> Result<()> {
        let plugin = self.info.name.as_str();
        match level {
            host::Level::Trace => tracing::trace!(plugin, "{message}"),
            host::Level::Debug => tracing::debug!(plugin, "{message}"),
            host::Level::Info => tracing::info!(plugin, "{message}"),
            host::Level::Warn => tracing::warn!(plugin, "{message}"),
            host::Level::Error => tracing::error!(plugin, "{message}"),
        }
        Ok(())
    }

    fn kv_get(&mut self, key: String) -> Result<Option<Vec<u8>>> {
        let key = scoped(&mut self.scratch, &self.info.namespace, &key);
        let read = self.info.store.kv_get(key);
        if let Ok((_, Some(version))) = &read {
            self.reads.record(key, *version);
        }
        answer(read.map(|(value, _)| value), self.info.store_errors, None)
    }

    fn kv_set(&mut self, key: String, value: Vec<u8>, ttl_ms: Option<u64>) -> Result<bool> {
        let key = scoped(&mut self.scratch, &self.info.namespace, &key).to_string();
        answer(
            self.info.store.kv_set(key, value, ttl(ttl_ms)),
            self.info.store_errors,
            false,
        )
    }

    fn kv_delete(&mut self, key: String) -> Result<bool> {
        let key = scoped(&mut self.scratch, &self.info.namespace, &key);
        answer(
            self.info.store.kv_delete(key),
            self.info.store_errors,
            false,
        )
    }

    fn kv_compare_and_swap(
        &mut self,
        key: String,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<bool> {
        let key = scoped(&mut self.scratch, &self.info.namespace, &key).to_string();
        answer(
            self.info
                .store
                .kv_compare_and_swap(key, expected.as_deref(), new, ttl(ttl_ms)),
            self.info.store_errors,
            false,
        )
    }

    fn counter_incr(&mut self, name: String, delta: i64, window_ms: Option<u64>) -> Result<i64> {
        let key = scoped(&mut self.scratch, &self.info.namespace, &name);
        answer(
            self.info.store.counter_incr(key, delta, ttl(window_ms)),
            self.info.store_errors,
            0,
        )
    }

    fn counter_get(&mut self, name: String, window_ms: Option<u64>) -> Result<i64> {
        let key = scoped(&mut self.scratch, &self.info.namespace, &name);
        answer(
            self.info.store.counter_get(key, ttl(window_ms)),
            self.info.store_errors,
            0,
        )
    }

    fn rate_take(
        &mut self,
        key: String,
        interval_ns: u64,
        tolerance_ns: u64,
    ) -> Result<host::RateVerdict> {
        let key = scoped(&mut self.scratch, &self.info.namespace, &key);
        let rate = self.info.store.rate_take(key, interval_ns, tolerance_ns);
        // With `store_errors = "open"`, an unreachable store lets every request through (as one
        // that takes the first request of a full bucket: the `RateLimit` fields stay plausible).
        Ok(
            match answer(
                rate,
                self.info.store_errors,
                store::Rate::Allowed(interval_ns),
            )? {
                store::Rate::Allowed(ahead) => host::RateVerdict::Allowed(ahead),
                store::Rate::Limited(wait) => host::RateVerdict::Limited(wait),
            },
        )
    }

    fn enforce_rate_rule(&mut self, rule: host::RateRule) -> Result<Result<(), String>> {
        if self.in_hook {
            return Ok(Err(
                "a rate rule is handed over in init, not in a hook".into()
            ));
        }
        let rule = rate_rule(rule);
        Ok(rule.check().map(|()| self.rate_rule = Some(rule)))
    }

    fn metric_add(&mut self, name: String, delta: u64) -> Result<()> {
        if let Some(counter) = self.metric(name) {
            counter.inc_by(delta);
        }
        Ok(())
    }

    fn now_ms(&mut self) -> Result<u64> {
        Ok(store::now_ms())
    }

    fn monotonic_ns(&mut self) -> Result<u64> {
        Ok(monotonic_ns())
    }

    fn random_u64(&mut self) -> Result<u64> {
        Ok(rand::random())
    }

    fn notify(&mut self, key: String) -> Result<()> {
        let key = scoped(&mut self.scratch, &self.info.namespace, &key);
        self.info.store.waits.notify(key);
        Ok(())
    }
}

impl HostState {
    /// The handle of the plugin's metric `name`; `None` past `MAX_PLUGIN_METRICS` names (said
    /// in the log).
    pub(super) fn metric(
        &mut self,
        name: String,
    ) -> Option<prometheus_client::metrics::counter::Counter> {
        if let Some(counter) = self.counters.get(&name) {
            return Some(counter.clone());
        }
        match self
            .info
            .metrics
            .plugin_counter(&self.info.name, &name, MAX_PLUGIN_METRICS)
        {
            Some(counter) => {
                self.counters.insert(name, counter.clone());
                Some(counter)
            }
            None => {
                tracing::warn!(plugin = %self.info.name, metric = %name,
                    "plugin metric not counted: a plugin may define at most {MAX_PLUGIN_METRICS}");
                None
            }
        }
    }
}

fn monotonic_ns() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_nanos() as u64
}

/// The contract's rate rule as the shared crate words it.
fn rate_rule(rule: host::RateRule) -> gatehouse_rate::Rule {
    use gatehouse_rate::KeyPart;
    gatehouse_rate::Rule {
        key: rule
            .key
            .into_iter()
            .map(|part| match part {
                host::KeyPart::ClientIp => KeyPart::ClientIp,
                host::KeyPart::Host => KeyPart::Host,
                host::KeyPart::Method => KeyPart::Method,
                host::KeyPart::Path => KeyPart::Path,
                host::KeyPart::PathSegments(n) => KeyPart::PathSegments(n),
                host::KeyPart::Header(name) => KeyPart::Header(name),
            })
            .collect(),
        interval_ns: rule.interval_ns,
        tolerance_ns: rule.tolerance_ns,
        status: rule.status,
        fields: rule.fields.map(|f| gatehouse_rate::Fields {
            name: f.name,
            policy: f.policy,
        }),
        limited_metric: rule.limited_metric,
    }
}
