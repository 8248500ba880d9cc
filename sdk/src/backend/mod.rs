//! Where the request and response a filter sees live: the host's, through the WIT imports, in a
//! plugin (`wasm32`); the test harness's in-memory ones natively. Chosen at compile time, so a
//! plugin carries no test code and a test no host calls.

#[cfg(target_arch = "wasm32")]
mod host;
#[cfg(target_arch = "wasm32")]
pub(crate) use host::*;

#[cfg(not(target_arch = "wasm32"))]
pub(crate) mod native;
#[cfg(not(target_arch = "wasm32"))]
pub(crate) use native::*;
