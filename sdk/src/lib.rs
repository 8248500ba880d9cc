//! Write Gatehouse plugins in Rust.
//!
//! A plugin is a type that implements [`Filter`], exported with [`export_filter!`] and built for
//! `wasm32-wasip2`:
//!
//! ```
//! use gatehouse_sdk::{Action, Filter, Request, Response};
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
//!
//!     fn new(config: Config) -> Result<Self, String> {
//!         Ok(BotBlock { config })
//!     }
//!
//!     fn on_request(&self, req: &mut Request) -> Action {
//!         let agent = req.header("user-agent").unwrap_or_default();
//!         if self.config.deny_user_agents.iter().any(|bad| agent.contains(bad.as_str())) {
//!             gatehouse_sdk::counter::incr("blocked", 1);
//!             return Response::new(403).body("no bots\n").into();
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

mod http;
pub mod services;
pub mod testing;

pub use http::{Action, BodyError, Reply, Request, Response};
pub use services::{clock, counter, kv, log, metrics};

/// A plugin. Every hook has a default that does nothing, so a filter implements only what it needs.
pub trait Filter: Sized + 'static {
    /// The plugin's configuration: its `config` table in the Gatehouse TOML file.
    type Config: serde::de::DeserializeOwned;

    /// Set to `true` to read and change streamed response bodies in [`Filter::on_response`] (the
    /// host then buffers them, up to `server.limits.body_buffer_size`).
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
    /// default goes on, and tells the host it need not call it again.
    fn on_request(&self, _req: &mut Request) -> Action {
        http::mark_unimplemented();
        Action::Continue
    }

    /// Called for each response, in reverse chain order. The default does nothing, and tells the host
    /// it need not call it again.
    fn on_response(&self, _req: &mut Request, _resp: &mut Reply) {
        http::mark_unimplemented();
    }

    /// Called once the response has been sent (for logs and counters). The default does nothing,
    /// and tells the host it need not call it again.
    fn on_log(&self, _req: &mut Request, _entry: &LogEntry) {
        http::mark_unimplemented();
    }
}

/// The names of the targets in the Gatehouse config (set before [`Filter::new`] runs), so a filter
/// that routes can check its config at load time.
pub fn targets() -> Vec<String> {
    http::TARGETS.with(|t| t.borrow().clone())
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
                    req: $crate::__private::WitRequest,
                    resp: $crate::__private::WitResponse,
                ) -> ::std::result::Result<
                    $crate::__private::Capabilities,
                    ::std::string::String,
                > {
                    $crate::__private::init::<$filter>(config, targets, req, resp)
                }
                fn on_request(
                    head: ::std::option::Option<$crate::__private::WitRequestHead>,
                    client: ::std::option::Option<$crate::__private::WitIpAddress>,
                ) -> $crate::__private::WitAction {
                    $crate::__private::on_request::<$filter>(head, client)
                }
                fn on_response() -> $crate::__private::HookStatus {
                    $crate::__private::on_response::<$filter>()
                }
                fn on_log(
                    entry: $crate::__private::WitLogEntry,
                ) -> $crate::__private::HookStatus {
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
    pub use crate::http::{init, on_log, on_request, on_response};
    pub use bindings::Guest;
    pub use bindings::gatehouse::plugin::http::{
        Action as WitAction, Capabilities, HookStatus, IpAddress as WitIpAddress,
        LogEntry as WitLogEntry, Request as WitRequest, RequestHead as WitRequestHead,
        Response as WitResponse,
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
