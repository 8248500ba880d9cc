//! The plugin chain: WebAssembly components run by wasmtime in a sandbox, called at each phase.
//!
//! [`Chain::load`] compiles every `[[plugins]]` entry once (cached on disk), initialises one instance
//! of each with its config, and keeps instances in a pool per plugin. A hook call takes an instance
//! from the pool, moves the request's [`Exchange`] into its store, calls the guest with a deadline
//! (epochs) and a memory ceiling, moves the exchange back, and returns the instance. An instance
//! that traps, panics, times out or runs out of memory is dropped and replaced; the request gets
//! 500 (or the plugin is skipped with `on_error = "continue"`).

mod answers;
mod bindings;
pub mod cache;
mod chain;
mod engine;
mod exchange;
mod host_impl;
mod instance;
mod limit;
mod memo;
mod wasi;

use std::sync::OnceLock;

use wasmtime::Engine;
use wasmtime::component::{HasSelf, Linker};

use crate::sandbox;
use bindings::gatehouse::plugin::types as wit;
pub use chain::{Chain, Decision, LogEntry, Progress, Ran};
pub use exchange::Exchange;
use host_impl::HostState;

/// Why a plugin could not be loaded; names the plugin.
#[derive(Debug, thiserror::Error)]
#[error("plugin `{name}`: {message}")]
pub struct LoadError {
    /// The plugin's name.
    pub name: String,
    /// What went wrong (the plugin's own message for a config error).
    pub message: String,
}

/// The process-wide wasmtime engine and linker, and the epoch ticker behind `time_limit`.
struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
}

fn runtime() -> Result<&'static Runtime, String> {
    static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            let engine = Engine::new(&engine::engine_config()).map_err(|e| e.to_string())?;
            let mut linker = Linker::new(&engine);
            wasi::add_to_linker(&mut linker).map_err(|e| e.to_string())?;
            bindings::Plugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
                .map_err(|e| e.to_string())?;
            let ticker = engine.clone();
            std::thread::Builder::new()
                .name("gatehouse-epoch".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(sandbox::EPOCH_TICK);
                        ticker.increment_epoch();
                    }
                })
                .map_err(|e| e.to_string())?;
            Ok(Runtime { engine, linker })
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// What a plugin can hand the host, from fuzz bytes split at 0xff: a path, a query, a host, a
/// header name and value, a local response; each through the checks the host calls make
/// (fuzzing).
#[cfg(feature = "fuzzing")]
pub fn fuzz(bytes: &[u8]) {
    let mut parts = bytes.split(|b| *b == 0xff);
    let mut next = || String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let (path, query, host, name, value) = (next(), next(), next(), next(), next());
    let _ = crate::request_target::normalise_host(&host);
    if let Ok(normal) = crate::request_target::normalise_path(&path) {
        let path = normal.unwrap_or(path);
        let mut uri = http::Uri::from_static("/");
        let _ = crate::request_target::replace_path_and_query(&mut uri, &path, Some(&query));
    }
    let mut headers = http::HeaderMap::new();
    let _ = host_impl::fuzz_set_header(&mut headers, &name, value.clone().into_bytes());
    let status = bytes.first().map_or(200, |b| u16::from(*b) * 4);
    let local = wit::LocalResponse {
        status,
        headers: vec![wit::HeaderField {
            name,
            value: value.into_bytes(),
        }],
        body: bytes.to_vec(),
    };
    let _ = chain::local_response(local);
}
