//! The sandbox's defaults and fixed limits, in one place.

use std::time::Duration;

/// Default wall-clock budget of one plugin call (`time_limit`).
pub const TIME_LIMIT: Duration = Duration::from_millis(100);

/// Default linear-memory ceiling of one plugin instance (`memory_limit`).
pub const MEMORY_LIMIT: u64 = 64 * 1024 * 1024;

/// How often the epoch advances: the resolution of `time_limit`.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Largest body a plugin may produce (a local response or a replaced body); more is a plugin error.
pub const MAX_PLUGIN_BODY: usize = 16 * 1024 * 1024;

/// Default byte budget of the shared key-value store.
pub const KV_BUDGET: u64 = 64 * 1024 * 1024;

/// Most instances of one plugin kept warm in its pool; more concurrent calls than event-loop
/// threads never happen, so this only bounds what a burst of replacements leaves behind.
pub const POOL_MAX: usize = 64;

/// Epoch ticks for a time limit: rounded up, plus one because the current tick is already partly
/// spent when the deadline is set.
pub fn deadline_ticks(limit: Duration) -> u64 {
    let tick = EPOCH_TICK.as_nanos();
    (limit.as_nanos().div_ceil(tick) as u64).max(1) + 1
}

/// The engine configuration every plugin runs under: compiled with Cranelift, interrupted by
/// epochs, no WASI, no threads, no async (sync calls keep a call at ~0.5 us).
pub fn engine_config() -> wasmtime::Config {
    let mut config = wasmtime::Config::new();
    config.epoch_interruption(true);
    config.wasm_component_model(true);
    config.cranelift_opt_level(wasmtime::OptLevel::Speed);
    // For profiling plugins: `perf report` then names their functions (from /tmp/perf-PID.map).
    if std::env::var_os(PERFMAP_ENV).is_some_and(|v| v == "1") {
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    config
}

/// Set to `1` to have wasmtime write a perf map of the plugins' compiled code.
pub const PERFMAP_ENV: &str = "GATEHOUSE_PERFMAP";

/// Lines of stdout and stderr one plugin may write to the host's log per second; more are
/// dropped and counted.
pub const STDIO_LINES_PER_SECOND: u32 = 100;

/// Longest line of a plugin's stdout or stderr kept for the log; the rest of the line is cut.
pub const STDIO_LINE_MAX: usize = 1024;

/// Most counters one plugin may define (`metrics::add` names); adding to another is dropped with a
/// warning: each is a series `/metrics` shows for the life of the process.
pub const MAX_PLUGIN_METRICS: usize = 100;

/// Most header fields a plugin may leave on a request or response, or put in a local response;
/// more is the plugin's error.
pub const MAX_PLUGIN_HEADERS: usize = 1000;

/// WASI for what Rust's `std` links to, with nothing granted: no preopened directories, no
/// environment variables or arguments, no sockets or name lookups; stdin closed; stdout and stderr
/// go to the plugin's log (see `plugin::wasi`).
pub fn wasi_ctx(output: &std::sync::Arc<super::wasi::OutputBudget>) -> wasmtime_wasi::WasiCtx {
    let mut builder = wasmtime_wasi::WasiCtx::builder();
    builder
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .stdout(output.stream("stdout"))
        .stderr(output.stream("stderr"));
    builder.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_round_up() {
        assert_eq!(deadline_ticks(Duration::from_millis(100)), 21);
        assert_eq!(deadline_ticks(Duration::from_millis(1)), 2);
        assert_eq!(deadline_ticks(Duration::ZERO), 2);
    }
}
