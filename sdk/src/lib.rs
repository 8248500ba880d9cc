//! Write Gatehouse plugins in Rust.
//!
//! A plugin is a type that implements [`Filter`], exported with [`export_filter!`] and built for
//! `wasm32-wasip2`:
//!
//! ```
//! use gatehouse_sdk::{Action, Filter, Hook, LocalResponse, Request};
//!
//! #[derive(serde::Deserialize)]
//! struct Config {
//!     deny_user_agents: Vec<String>,
//! }
//!
//! struct BotBlock {
//!     config: Config,
//! }
//!
//! impl Filter for BotBlock {
//!     type Config = Config;
//!     const HOOKS: &'static [Hook] = &[Hook::OnRequest];
//!
//!     fn new(config: Config) -> Result<Self, String> {
//!         Ok(BotBlock { config })
//!     }
//!
//!     fn on_request(&self, req: &mut Request) -> Action {
//!         let agent = req.header("user-agent").unwrap_or_default();
//!         if self.config.deny_user_agents.iter().any(|bad| agent.contains(bad.as_str())) {
//!             gatehouse_sdk::counter::incr("blocked", 1);
//!             return LocalResponse::new(403).body("no bots\n").into();
//!         }
//!         Action::Continue
//!     }
//! }
//!
//! gatehouse_sdk::export_filter!(BotBlock);
//! # fn main() {}
//! ```
//!
//! Host services live in [`kv`], [`counter`], [`metrics`], [`log`] and [`clock`]. The [`testing`]
//! module runs a filter natively under `cargo test`, with in-memory services.
#![deny(missing_docs)]

mod answer;
mod backend;
mod error;
mod glue;
mod http;
pub mod services;
// The harness runs filters natively only; a plugin (wasm32) carries none of it.
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

pub use answer::{Action, Answer, LocalResponse};
pub use error::Error;
/// Durations (`"30s"`) and sizes (`"10MiB"`) for a filter's config, read as the server reads its
/// own: `#[derive(Deserialize)] struct Config { window: units::Seconds }`.
pub use gatehouse_units as units;
pub use http::{Request, Response};
pub use services::{clock, counter, kv, log, metrics, rate, waits};

/// A hook a filter has; see [`Filter::HOOKS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// [`Filter::on_request`].
    OnRequest,
    /// [`Filter::on_response`].
    OnResponse,
    /// [`Filter::on_log`].
    OnLog,
}

/// A plugin. Every hook has a default that does nothing, so a filter implements only what it needs
/// (and says which in [`Filter::HOOKS`]).
pub trait Filter: Sized + 'static {
    /// The plugin's configuration: its `config` table in the Gatehouse TOML file.
    type Config: serde::de::DeserializeOwned;

    /// The hooks the host calls. The default is all three, which is always right; list only the
    /// ones the filter implements (`&[Hook::OnRequest]`) and the host skips the others, saving a
    /// call into the plugin (~0.2 us) per request for each. A hook left out is never called, even
    /// if implemented.
    const HOOKS: &'static [Hook] = &[Hook::OnRequest, Hook::OnResponse, Hook::OnLog];

    /// The hooks this filter, as configured, has: [`Filter::HOOKS`] unless overridden. A filter
    /// whose config can leave a hook with nothing to do (a header filter with no request edits)
    /// returns fewer, and the host skips the call.
    fn hooks(&self) -> &'static [Hook] {
        Self::HOOKS
    }

    /// Set to `true` to read and change streamed response bodies in [`Filter::on_response`] (the
    /// host then buffers them, up to `server.limits.plugin_body_size`; a larger body
    /// streams on unchanged and [`Response::body`] gives [`Error::BodyTooLarge`]).
    const RESPONSE_BODY: bool = false;

    /// Set to `true` if [`Filter::on_request`] reads the request body ([`Request::body`]): the host
    /// then reads it (within `server.limits`) before this filter runs. Without it the filter
    /// decides on the head alone, and a request it refuses is answered before the client has sent
    /// its body (an `Expect: 100-continue` upload is never sent at all).
    const REQUEST_BODY: bool = false;

    /// Set to `true` if the filter reads the method, path, query or host on most requests (a router
    /// does): the host then passes them with each [`Filter::on_request`] call, saving the host call
    /// that otherwise fetches them on first use.
    const REQUEST_HEAD: bool = false;

    /// Builds the filter from its configuration; an `Err` is reported by `gatehouse check` and at
    /// startup with the plugin's name.
    fn new(config: Self::Config) -> Result<Self, String>;

    /// Called for each request, in chain order: change it, answer it, or pick its target. The
    /// default goes on.
    fn on_request(&self, _req: &mut Request) -> Action {
        Action::Continue
    }

    /// Called for each response, in reverse chain order. The default does nothing.
    fn on_response(&self, _req: &mut Request, _resp: &mut Response) {}

    /// Called once the response has been sent (for logs and counters). The default does nothing.
    fn on_log(&self, _req: &mut Request, _entry: &LogEntry) {}
}

/// The names of the targets in the Gatehouse config (set before [`Filter::new`] runs), so a filter
/// that routes can check its config at load time.
pub fn targets() -> Vec<String> {
    glue::TARGETS.with(|t| t.borrow().clone())
}

/// What happened to a request, as seen by [`Filter::on_log`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// The status sent.
    pub status: u16,
    /// Body bytes sent.
    pub bytes_sent: u64,
    /// From the request's arrival to its last byte, in microseconds.
    pub duration_us: u64,
    /// The target that answered, if one did.
    pub target: Option<String>,
}

/// Exports a [`Filter`] as the plugin's implementation of the `gatehouse:plugin` world.
#[macro_export]
macro_rules! export_filter {
    ($filter:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct GatehouseExport;
            impl $crate::__private::Guest for GatehouseExport {
                fn init(
                    config: ::std::string::String,
                    targets: ::std::vec::Vec<::std::string::String>,
                ) -> ::std::result::Result<
                    $crate::__private::Capabilities,
                    ::std::string::String,
                > {
                    $crate::__private::init::<$filter>(config, targets)
                }
                fn on_request(
                    head: ::std::option::Option<$crate::__private::WitRequestHead>,
                    client: ::std::option::Option<$crate::__private::WitIpAddress>,
                ) -> $crate::__private::WitAction {
                    $crate::__private::on_request::<$filter>(head, client)
                }
                fn on_response() {
                    $crate::__private::on_response::<$filter>()
                }
                fn on_log(entry: $crate::__private::WitLogEntry) {
                    $crate::__private::on_log::<$filter>(entry)
                }
            }
            $crate::__export_plugin_impl!(GatehouseExport with_types_in $crate::__private::bindings);
        };
        // Natively (unit tests) there is nothing to export; this keeps the filter reachable so
        // the compiler does not call it dead code.
        #[cfg(not(target_arch = "wasm32"))]
        const _: () = {
            let _ = $crate::__private::init::<$filter>;
        };
    };
}

/// Glue for [`export_filter!`]; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use crate::glue::{init, on_log, on_request, on_response};
    pub use bindings::Guest;
    pub use bindings::gatehouse::plugin::types::{
        Action as WitAction, Capabilities, IpAddress as WitIpAddress, LogEntry as WitLogEntry,
        RequestHead as WitRequestHead,
    };

    #[allow(missing_docs, unsafe_code, clippy::all)]
    pub mod bindings {
        wit_bindgen::generate!({
            path: "../wit",
            world: "plugin",
            pub_export_macro: true,
            export_macro_name: "__export_plugin_impl",
            default_bindings_module: "gatehouse_sdk::__private::bindings",
            // Imports borrow their arguments: setting headers copies nothing in the guest.
            ownership: Borrowing { duplicate_if_necessary: true },
        });
    }
}
