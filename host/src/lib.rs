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
mod server;
mod static_files;
mod store;
mod target;
mod tls;
mod upstream;
mod wsgi;

pub use cli::main;

/// What `benches/plugin_call.rs` drives in process (a chain built from hand-made plugin configs),
/// behind the `bench` feature so that ordinary builds export [`main`] alone and the compiler reports
/// every item nothing uses.
#[cfg(feature = "bench")]
#[doc(hidden)]
pub mod bench {
    pub use crate::body::Body;
    pub use crate::config::{Isolation, OnError, PluginConfig, PluginSource};
    pub use crate::metrics::Metrics;
    pub use crate::plugin::{Chain, Exchange, Progress};
    pub use crate::sandbox::{MEMORY_LIMIT, TIME_LIMIT};
    pub use crate::store::SharedStore;
}
