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
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Two labels: the label sets most families here use.
type Labels = [(&'static str, String); 2];
/// One label.
type Label = [(&'static str, String); 1];
/// Seconds summed over calls (with the call count, an average).
pub type SecondsCounter = Counter<f64, std::sync::atomic::AtomicU64>;

/// Response-head latency buckets, in seconds: 0.5 ms to about 33 s.
fn latency_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0005, 3.0, 11,
    ))
}

type HistogramFamily = Family<Label, Histogram, fn() -> Histogram>;

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
    response_seconds: HistogramFamily,
    connections: Gauge,
    tls_handshakes: Family<Label, Counter>,
    plugin_calls: Family<Labels, Counter>,
    plugin_seconds: Family<Labels, SecondsCounter>,
    upstream_up: Family<Labels, Gauge>,
    upstream_failures: Family<Labels, Counter>,
    upstream_retries: Family<Label, Counter>,
    wsgi_in_flight: Family<Label, Gauge>,
    wsgi_restarts: Family<Labels, Counter>,
}

/// The handles one plugin's calls count into, resolved once when it loads.
#[derive(Debug, Clone)]
pub struct PluginCallMetrics {
    /// Calls, per hook (on-request, on-response, on-log).
    pub calls: [Counter; 3],
    /// Seconds spent in them, per hook.
    pub seconds: [SecondsCounter; 3],
}

/// The handles one upstream server counts into.
#[derive(Debug, Clone)]
pub struct UpstreamServerMetrics {
    /// 1 while requests may go to it, 0 while it is left out.
    pub up: Gauge,
    /// Requests to it that failed (refused, reset, timed out).
    pub failures: Counter,
}

/// The handles one WSGI target counts into.
#[derive(Debug, Clone, Default)]
pub struct WsgiMetrics {
    /// Requests admitted and not finished (queued or running).
    pub in_flight: Gauge,
    /// Workers replaced, by why.
    pub restarts: Family<Labels, Counter>,
    /// The target's name, for the `restarts` labels.
    pub target: String,
}

impl WsgiMetrics {
    /// Counts one worker replaced for `reason` (`crash`, `timeout`, `max_requests`, `reload`).
    pub fn restarted(&self, reason: &str) {
        self.restarts
            .get_or_create(&[
                ("target", self.target.clone()),
                ("reason", reason.to_string()),
            ])
            .inc();
    }
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
        let response_seconds: HistogramFamily =
            Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register(
            "gatehouse_response_head_seconds",
            "Time from a request's arrival to its response head, by target (\"-\" when none answered)",
            response_seconds.clone(),
        );
        let connections = Gauge::default();
        registry.register(
            "gatehouse_connections_active",
            "Client connections open now",
            connections.clone(),
        );
        let tls_handshakes = Family::default();
        registry.register(
            "gatehouse_tls_handshakes",
            "TLS handshakes, by result (ok, failed, timeout)",
            tls_handshakes.clone(),
        );
        let plugin_calls = Family::default();
        registry.register(
            "gatehouse_plugin_calls",
            "Plugin hook calls, by plugin and hook",
            plugin_calls.clone(),
        );
        let plugin_seconds = Family::default();
        registry.register(
            "gatehouse_plugin_call_seconds",
            "Time spent in plugin hook calls, by plugin and hook",
            plugin_seconds.clone(),
        );
        let upstream_up = Family::default();
        registry.register(
            "gatehouse_upstream_server_up",
            "1 while an upstream server takes requests, 0 while it is left out (failing or failing its health checks)",
            upstream_up.clone(),
        );
        let upstream_failures = Family::default();
        registry.register(
            "gatehouse_upstream_failures",
            "Requests to an upstream server that failed (refused, reset, timed out)",
            upstream_failures.clone(),
        );
        let upstream_retries = Family::default();
        registry.register(
            "gatehouse_upstream_retries",
            "Requests tried again on another server, by target",
            upstream_retries.clone(),
        );
        let wsgi_in_flight = Family::default();
        registry.register(
            "gatehouse_wsgi_requests_in_flight",
            "WSGI requests admitted and not finished (waiting for a thread or running), by target",
            wsgi_in_flight.clone(),
        );
        let wsgi_restarts = Family::default();
        registry.register(
            "gatehouse_wsgi_worker_restarts",
            "WSGI workers replaced, by target and reason",
            wsgi_restarts.clone(),
        );
        Metrics {
            response_seconds,
            connections,
            tls_handshakes,
            plugin_calls,
            plugin_seconds,
            upstream_up,
            upstream_failures,
            upstream_retries,
            wsgi_in_flight,
            wsgi_restarts,
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

    /// The open-connections gauge.
    pub fn connections(&self) -> &Gauge {
        &self.connections
    }

    /// Counts a TLS handshake's result (`ok`, `failed`, `timeout`).
    pub fn tls_handshake(&self, result: &'static str) {
        self.tls_handshakes
            .get_or_create(&[("result", result.to_string())])
            .inc();
    }

    /// The handles a plugin's calls count into.
    pub fn plugin_calls(&self, plugin: &str) -> PluginCallMetrics {
        let labels = |hook: &str| [("plugin", plugin.to_string()), ("hook", hook.to_string())];
        let hooks = ["on-request", "on-response", "on-log"];
        PluginCallMetrics {
            calls: hooks.map(|h| self.plugin_calls.get_or_create_owned(&labels(h))),
            seconds: hooks.map(|h| self.plugin_seconds.get_or_create_owned(&labels(h))),
        }
    }

    /// The handles an upstream server counts into.
    pub fn upstream_server(&self, target: &str, server: &str) -> UpstreamServerMetrics {
        let labels = [
            ("target", target.to_string()),
            ("server", server.to_string()),
        ];
        let up = self.upstream_up.get_or_create_owned(&labels);
        up.set(1);
        UpstreamServerMetrics {
            up,
            failures: self.upstream_failures.get_or_create_owned(&labels),
        }
    }

    /// An upstream target's retry counter.
    pub fn upstream_retries(&self, target: &str) -> Counter {
        self.upstream_retries
            .get_or_create_owned(&[("target", target.to_string())])
    }

    /// The handles a WSGI target counts into.
    pub fn wsgi(&self, target: &str) -> WsgiMetrics {
        WsgiMetrics {
            in_flight: self
                .wsgi_in_flight
                .get_or_create_owned(&[("target", target.to_string())]),
            restarts: self.wsgi_restarts.clone(),
            target: target.to_string(),
        }
    }

    /// Per-target response counters for one configuration's targets (in `Targets` order).
    pub fn responses_for(&self, targets: &[&str]) -> ResponseCounters {
        let names = targets
            .iter()
            .map(|t| t.to_string())
            .chain(std::iter::once("-".to_string()))
            .collect::<Vec<_>>();
        ResponseCounters {
            latency: names
                .iter()
                .map(|name| {
                    self.response_seconds
                        .get_or_create_owned(&[("target", name.clone())])
                })
                .collect(),
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

    /// A plugin's own counter, made on first use; `None` if the plugin already has `max_series`
    /// counters and this would be a new one.
    pub fn plugin_counter(&self, plugin: &str, name: &str, max_series: usize) -> Option<Counter> {
        let labels = [("plugin", plugin.to_string()), ("name", name.to_string())];
        if let Some(counter) = self.plugin_counters.get(&labels) {
            return Some(counter.clone());
        }
        {
            let mut series = self
                .plugin_series
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // Another thread may have made it meanwhile: it exists once.
            if let Some(counter) = self.plugin_counters.get(&labels) {
                return Some(counter.clone());
            }
            let count = series.entry(plugin.to_string()).or_default();
            if *count >= max_series {
                return None;
            }
            *count += 1;
        }
        Some(self.plugin_counters.get_or_create(&labels).clone())
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
    /// Per target (and last, "-").
    latency: Vec<Histogram>,
    /// Per target (and last, "-"), per status code from 100.
    slots: Vec<(String, Vec<OnceLock<Counter>>)>,
}

impl ResponseCounters {
    /// Counts a response of `status` from the target at `target` (`None`: no target answered),
    /// whose head was ready `elapsed` after the request arrived.
    pub fn count(&self, target: Option<usize>, status: u16, elapsed: std::time::Duration) {
        let row = target
            .filter(|&t| t + 1 < self.slots.len())
            .unwrap_or(self.slots.len().saturating_sub(1));
        if let Some(histogram) = self.latency.get(row) {
            histogram.observe(elapsed.as_secs_f64());
        }
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

    /// Adds `by` to a plugin's counter, which must have room (`why`).
    fn add(m: &Metrics, plugin: &str, name: &str, max_series: usize, by: u64, why: &str) {
        m.plugin_counter(plugin, name, max_series)
            .expect(why)
            .inc_by(by);
    }

    #[test]
    fn series_are_labelled_and_never_collide() {
        let m = Metrics::new();
        add(&m, "a_b", "c", 10, 2, "room for it");
        add(&m, "a", "b_c", 10, 5, "room for it");
        add(&m, "a_b", "c", 10, 1, "room for it");
        m.plugin_failure("a", "on-request");
        let responses = m.responses_for(&["site"]);
        let ms = std::time::Duration::from_millis(1);
        responses.count(Some(0), 200, ms);
        responses.count(Some(0), 200, ms);
        responses.count(None, 404, ms);
        let text = m.render();
        for line in [
            "gatehouse_plugin_total{plugin=\"a_b\",name=\"c\"} 3",
            "gatehouse_plugin_total{plugin=\"a\",name=\"b_c\"} 5",
            "gatehouse_plugin_failures_total{plugin=\"a\",hook=\"on-request\"} 1",
            "gatehouse_responses_total{target=\"site\",status=\"200\"} 2",
            "gatehouse_responses_total{target=\"-\",status=\"404\"} 1",
            "gatehouse_response_head_seconds_count{target=\"site\"} 2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }

    #[test]
    fn a_plugin_cannot_make_unbounded_series() {
        let m = Metrics::new();
        for i in 0..3 {
            add(&m, "p", &format!("n{i}"), 3, 1, "room for it");
        }
        assert!(m.plugin_counter("p", "one-more", 3).is_none());
        add(&m, "p", "n0", 3, 1, "existing ones still count");
        add(&m, "q", "n0", 3, 1, "other plugins are not affected");
    }
}
