//! Gatehouse: the jobs of Nginx and Gunicorn in one binary.
//!
//! A request flows listener -> [`server`] (hyper, limits, wire checks) -> [`pipeline`] (admit, read
//! body, route, serve, log) -> a [`target`] such as [`static_files`]. [`config`] turns the TOML file
//! into the typed values all of these use.

mod access_log;
mod background;
mod body;
mod builtin;
mod cli;
mod config;
mod error;
mod forwarded;
mod logging;
mod metrics;
mod path;
mod peer;
mod pipeline;
mod plugin;
mod request_body;
mod request_target;
mod sandbox;
mod scaffold;
mod sendfile;
mod server;
mod static_files;
mod store;
mod target;
mod tls;
mod upstream;
mod wsgi;

pub use background::set_memory_trim;
pub use cli::main;

/// What the fuzz targets in `fuzz/` drive: every parser of bytes a client, an app or a user
/// controls, fed whatever the fuzzer makes. Each must return (an error is fine), never panic.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    /// The config loader on any text.
    pub fn config(text: &str) {
        let _ =
            crate::config::Config::parse(text, "fuzz.toml", std::path::Path::new("/nonexistent"));
    }

    /// The HTTP/1 wire guard on a byte stream cut into pieces where `cuts` says.
    pub fn wire(stream: &[u8], cuts: &[u8]) {
        crate::server::wire::fuzz(stream, cuts);
    }

    /// The worker transport's frames and the payloads inside them, from both sides.
    pub fn frames(bytes: &[u8]) {
        crate::wsgi::frame::fuzz(bytes);
    }

    /// The WSGI environ built from a request head parsed out of `head` (as hyper would accept
    /// it), with the request's own Host and path normalisation first.
    pub fn environ(head: &[u8]) {
        crate::wsgi::frame::fuzz_environ(head);
    }

    /// What plugins hand the host: paths, hosts, header names and values, local responses.
    pub fn host_calls(bytes: &[u8]) {
        crate::plugin::fuzz(bytes);
    }
}

/// What `benches/plugin_call.rs` drives in process (a chain built from hand-made plugin configs),
/// behind the `bench` feature so that ordinary builds export [`main`] alone and the compiler reports
/// every item nothing uses.
#[cfg(feature = "bench")]
#[doc(hidden)]
pub mod bench {
    pub use crate::body::Body;
    pub use crate::config::{Isolation, OnError, PluginConfig, PluginSource, StoreErrors};
    pub use crate::metrics::Metrics;
    pub use crate::plugin::{Chain, Exchange, Progress};
    pub use crate::sandbox::{MEMORY_LIMIT, TIME_LIMIT};
    pub use crate::store::SharedStore;
}
