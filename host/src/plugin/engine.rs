//! The wasmtime engine and the WASI context every plugin runs under (the limits they enforce are in
//! [`crate::sandbox`]).

/// The engine configuration every plugin runs under: compiled with Cranelift, interrupted by
/// epochs, no threads, no async (sync calls keep a call at ~0.5 us); the WASI plugins get is
/// `plugin::wasi`.
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
