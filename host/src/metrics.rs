//! The process's metrics, kept across reloads and exported in the OpenMetrics text format by the
//! `metrics` target, through the Prometheus client crate.
//!
//! Every series is labelled rather than named after what it counts: responses by `target` and
//! `status`, plugin failures by `plugin` and `hook`, a plugin's own counters by `plugin` and
//! `name`, so two plugins never share a series (`a_b` with `c` and `a` with `b_c` stay apart).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// Two labels: the label sets every family here uses.
type Labels = [(&'static str, String); 2];

/// The counters behind `/metrics`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    responses: Family<Labels, Counter>,
    plugin_failures: Family<Labels, Counter>,
    plugin_counters: Family<Labels, Counter>,
    /// Series each plugin has created, to bound what a plugin can make the host remember.
    plugin_series: Mutex<HashMap<String, usize>>,
    log_dropped: Family<[(&'static str, String); 1], Counter>,
    /// Where each log's dropped-line count is read from when the metrics are rendered.
    drop_sources: Mutex<Vec<(&'static str, DropSource)>>,
}

/// Reads a log's running count of dropped lines.
#[derive(Clone)]
struct DropSource(Arc<dyn Fn() -> u64 + Send + Sync>);

impl std::fmt::Debug for DropSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DropSource")
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    /// Empty counters, registered.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let responses = Family::<Labels, Counter>::default();
        let plugin_failures = Family::<Labels, Counter>::default();
        let plugin_counters = Family::<Labels, Counter>::default();
        let log_dropped = Family::default();
        registry.register(
            "gatehouse_log_lines_dropped",
            "Log lines dropped because their output (stdout, stderr, a file) did not keep up, by log",
            log_dropped.clone(),
        );
        registry.register(
            "gatehouse_responses",
            "Responses sent, by target (\"-\" when none answered) and status code",
            responses.clone(),
        );
        registry.register(
            "gatehouse_plugin_failures",
            "Plugin calls that trapped, timed out, ran out of memory or answered nonsense",
            plugin_failures.clone(),
        );
        registry.register(
            "gatehouse_plugin",
            "Counters plugins define (the SDK's metrics::add), by plugin and name",
            plugin_counters.clone(),
        );
        Metrics {
            registry,
            responses,
            plugin_failures,
            plugin_counters,
            plugin_series: Mutex::new(HashMap::new()),
            log_dropped,
            drop_sources: Mutex::new(Vec::new()),
        }
    }

    /// Exports a log's dropped lines as `gatehouse_log_lines_dropped_total{log}`; `read` gives the
    /// running count.
    pub fn watch_dropped_lines(
        &self,
        log: &'static str,
        read: impl Fn() -> u64 + Send + Sync + 'static,
    ) {
        self.drop_sources
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((log, DropSource(Arc::new(read))));
    }

    /// Per-target response counters for one configuration's targets (in `Targets` order).
    pub fn responses_for(&self, targets: &[&str]) -> ResponseCounters {
        let names = targets
            .iter()
            .map(|t| t.to_string())
            .chain(std::iter::once("-".to_string()))
            .collect::<Vec<_>>();
        ResponseCounters {
            family: self.responses.clone(),
            slots: names
                .into_iter()
                .map(|name| {
                    (
                        name,
                        std::iter::repeat_with(OnceLock::new)
                            .take(STATUSES)
                            .collect(),
                    )
                })
                .collect(),
        }
    }

    /// Counts a failed plugin call.
    pub fn plugin_failure(&self, plugin: &str, hook: &'static str) {
        self.plugin_failures
            .get_or_create(&[("plugin", plugin.to_string()), ("hook", hook.to_string())])
            .inc();
    }

    /// Adds to a plugin's own counter; false if the plugin already has `max_series` counters and
    /// this would be a new one (nothing is added).
    pub fn plugin_add(&self, plugin: &str, name: &str, delta: u64, max_series: usize) -> bool {
        let labels = [("plugin", plugin.to_string()), ("name", name.to_string())];
        if let Some(counter) = self.plugin_counters.get(&labels) {
            counter.inc_by(delta);
            return true;
        }
        {
            let mut series = self
                .plugin_series
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // Another thread may have made it meanwhile: it counts once.
            if let Some(counter) = self.plugin_counters.get(&labels) {
                counter.inc_by(delta);
                return true;
            }
            let count = series.entry(plugin.to_string()).or_default();
            if *count >= max_series {
                return false;
            }
            *count += 1;
        }
        self.plugin_counters.get_or_create(&labels).inc_by(delta);
        true
    }

    /// Everything, in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let sources = self
            .drop_sources
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        for (log, read) in sources {
            let counter = self.log_dropped.get_or_create(&[("log", log.to_string())]);
            let (now, seen) = ((read.0)(), counter.get());
            if now > seen {
                counter.inc_by(now - seen);
            }
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Status codes 100-599 each get a slot.
const STATUSES: usize = 500;

/// Response counters resolved ahead for one configuration's targets, so counting a response is
/// one atomic increment once its (target, status) pair has been seen: no label strings built
/// per request.
#[derive(Debug)]
pub struct ResponseCounters {
    family: Family<Labels, Counter>,
    /// Per target (and last, "-"), per status code from 100.
    slots: Vec<(String, Vec<OnceLock<Counter>>)>,
}

impl ResponseCounters {
    /// Counts a response of `status` from the target at `target` (`None`: no target answered).
    pub fn count(&self, target: Option<usize>, status: u16) {
        let row = target
            .filter(|&t| t + 1 < self.slots.len())
            .unwrap_or(self.slots.len().saturating_sub(1));
        let Some((name, slots)) = self.slots.get(row) else {
            return;
        };
        let index = usize::from(status).saturating_sub(100).min(STATUSES - 1);
        if let Some(slot) = slots.get(index) {
            slot.get_or_init(|| {
                self.family.get_or_create_owned(&[
                    ("target", name.clone()),
                    ("status", status.to_string()),
                ])
            })
            .inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_labelled_and_never_collide() {
        let m = Metrics::new();
        assert!(m.plugin_add("a_b", "c", 2, 10));
        assert!(m.plugin_add("a", "b_c", 5, 10));
        assert!(m.plugin_add("a_b", "c", 1, 10));
        m.plugin_failure("a", "on-request");
        let responses = m.responses_for(&["site"]);
        responses.count(Some(0), 200);
        responses.count(Some(0), 200);
        responses.count(None, 404);
        let text = m.render();
        for line in [
            "gatehouse_plugin_total{plugin=\"a_b\",name=\"c\"} 3",
            "gatehouse_plugin_total{plugin=\"a\",name=\"b_c\"} 5",
            "gatehouse_plugin_failures_total{plugin=\"a\",hook=\"on-request\"} 1",
            "gatehouse_responses_total{target=\"site\",status=\"200\"} 2",
            "gatehouse_responses_total{target=\"-\",status=\"404\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }

    #[test]
    fn a_plugin_cannot_make_unbounded_series() {
        let m = Metrics::new();
        for i in 0..3 {
            assert!(m.plugin_add("p", &format!("n{i}"), 1, 3));
        }
        assert!(!m.plugin_add("p", "one-more", 1, 3));
        assert!(m.plugin_add("p", "n0", 1, 3), "existing ones still count");
        assert!(
            m.plugin_add("q", "n0", 1, 3),
            "other plugins are not affected"
        );
    }
}
