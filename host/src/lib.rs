//! Gatehouse: the jobs of Nginx and Gunicorn in one binary.
//!
//! A request flows listener -> [`server`] (hyper, limits, wire checks) -> [`pipeline`] (admit, read
//! body, route, serve, log) -> a [`target`] such as [`static_files`]. [`config`] turns the TOML file
//! into the typed values all of these use.

pub mod access_log;
pub mod body;
pub mod builtin;
pub mod cli;
pub mod config;
pub mod error;
pub mod logging;
pub mod metrics;
pub mod path;
pub mod peer;
pub mod pipeline;
pub mod plugin;
pub mod request_body;
pub mod sandbox;
pub mod scaffold;
pub mod server;
pub mod static_files;
pub mod store;
pub mod target;
pub mod wsgi;
