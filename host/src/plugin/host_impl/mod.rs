//! The host side of the WIT contract, one file per interface: `fields` (headers and bodies of
//! either message), `request`, `response` and `host` (the shared services).
//!
//! Every call acts on the [`Exchange`] swapped into the store for the current hook call; a call
//! outside a hook finds none: an error (a trap), never a panic.

mod fields;
mod request;
mod response;
mod services;

use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime::{Result, StoreLimits};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::gatehouse::plugin::types as wit;
use super::exchange::Exchange;
use crate::body::Body;
use crate::metrics::Metrics;
use crate::store::SharedStore;

pub use request::{lent_head, wit_ip};

/// What every call of one plugin shares: its name, its key namespace and the process's services.
#[derive(Debug)]
pub struct PluginInfo {
    /// The plugin's name in logs and metrics.
    pub name: String,
    /// Prefix of its keys and counters in the shared store.
    pub namespace: String,
    /// The shared key-value store and counters.
    pub store: Arc<SharedStore>,
    /// What its store calls answer while a remote store is unreachable.
    pub store_errors: crate::config::StoreErrors,
    /// The process's metrics.
    pub metrics: Arc<Metrics>,
    /// Largest request body handed to plugins.
    pub body_limit: u64,
    /// What its stdout and stderr may write to the log.
    pub output: Arc<super::wasi::OutputBudget>,
    /// The answers it has left with the host (`request.offer-answer`).
    pub answers: super::answers::Answers,
}

/// A plugin store's data.
pub struct HostState {
    /// The request being worked on during a hook call (swapped in and out by the call), else a
    /// placeholder.
    pub exchange: Box<Exchange>,
    /// Whether a hook call is running: handles used outside one are an error.
    pub in_hook: bool,
    /// Whether that call is `on-request` (the only one that may offer an answer).
    pub in_on_request: bool,
    /// The store reads of the running call, with the versions read.
    pub reads: Reads,
    /// Fields the running `on-request` set for the response (`request.set-response-headers`),
    /// moved to the exchange if the call succeeds.
    pub staged: http::HeaderMap,
    /// The answer the running `on-request` offered (`request.offer-answer`), kept by the chain
    /// if the call answers `respond`.
    pub offered: Option<(String, super::answers::Answer)>,
    /// The response `on-request` answers with, set by `request.respond`.
    pub local: Option<wit::LocalResponse>,
    /// How long the running `on-request`'s `continue` holds for its client
    /// (`request.continue-for-client`), in milliseconds.
    pub continue_for_client: Option<u32>,
    /// Whether the running call changed the request (method, path, query, fields, body,
    /// context): such a `continue` does not hold for the client's next requests.
    pub changed_request: bool,
    /// The rate rule `init` handed the host (`host.enforce-rate-rule`).
    pub rate_rule: Option<gatehouse_rate::Rule>,
    /// Where [`scoped`] builds keys.
    scratch: String,
    /// Handles of the plugin's own counters this instance has counted into, so a `metric-add`
    /// is a map lookup, not a lookup by labels in the registry (at most `MAX_PLUGIN_METRICS`).
    counters: std::collections::HashMap<String, prometheus_client::metrics::counter::Counter>,
    /// Memory limits enforced by wasmtime.
    pub limits: StoreLimits,
    /// The plugin this store belongs to.
    pub info: Arc<PluginInfo>,
    /// WASI with nothing granted (no files, sockets, environment), for what Rust's std links to.
    wasi: WasiCtx,
    table: ResourceTable,
}

impl HostState {
    /// Fresh state for one instance of a plugin.
    pub fn new(info: Arc<PluginInfo>, limits: StoreLimits) -> HostState {
        HostState {
            exchange: Box::new(Exchange::placeholder()),
            in_hook: false,
            in_on_request: false,
            reads: Reads::default(),
            offered: None,
            staged: http::HeaderMap::new(),
            local: None,
            continue_for_client: None,
            changed_request: false,
            rate_rule: None,
            scratch: String::new(),
            counters: std::collections::HashMap::new(),
            limits,
            wasi: super::engine::wasi_ctx(&info.output),
            info,
            table: ResourceTable::new(),
        }
    }

    pub(super) fn ex(&mut self) -> Result<&mut Exchange> {
        if !self.in_hook {
            wasmtime::bail!("request handle used outside a hook call");
        }
        Ok(&mut self.exchange)
    }

    /// The request, for a call that changes it (noted: see `changed_request`).
    pub(super) fn changing_request(&mut self) -> Result<&mut Exchange> {
        self.changed_request = true;
        self.ex()
    }

    pub(super) fn response(&mut self) -> Result<&mut http::Response<Body>> {
        self.ex()?
            .response
            .as_mut()
            .ok_or_else(|| wasmtime::format_err!("response handle used before there is a response"))
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The "version" of a key a call read twice with a write between: no answer can rest on it.
pub(super) const CHANGED_WHILE_READ: u64 = u64::MAX;

/// The store keys a hook call has read and the versions it read (see
/// [`SharedStore::kv_version`]), for an answer it offers. The strings stay from call to call: once
/// warm, remembering a read allocates nothing.
#[derive(Debug, Default)]
pub struct Reads {
    entries: Vec<(String, u64)>,
    len: usize,
}

impl Reads {
    /// Forgets the reads of the last call.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Remembers that `key` was read at `version`; a key read again at another version is
    /// [`CHANGED_WHILE_READ`]. Past `MAX_ANSWER_READS` keys, further ones are not remembered.
    fn record(&mut self, key: &str, version: u64) {
        if let Some(entry) = self.entries[..self.len].iter_mut().find(|(k, _)| k == key) {
            if entry.1 != version {
                entry.1 = CHANGED_WHILE_READ;
            }
            return;
        }
        if self.len == crate::sandbox::MAX_ANSWER_READS {
            return;
        }
        match self.entries.get_mut(self.len) {
            Some(entry) => {
                entry.0.clear();
                entry.0.push_str(key);
                entry.1 = version;
            }
            None => self.entries.push((key.to_string(), version)),
        }
        self.len += 1;
    }

    /// The version of `key` this call read.
    fn version(&self, key: &str) -> Option<u64> {
        self.entries[..self.len]
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| *v)
    }
}

/// `key` in `namespace`, built in a buffer the store keeps (no allocation for a lookup; by hand,
/// since `format!` costs more than a counter update).
pub(super) fn scoped<'a>(scratch: &'a mut String, namespace: &str, key: &str) -> &'a str {
    scratch.clear();
    scratch.push_str(namespace);
    scratch.push('\0');
    scratch.push_str(key);
    scratch
}

impl wit::Host for HostState {}

#[cfg(test)]
mod tests {
    use super::request::{http_method, lent_head, request_head, wit_ip, wit_method};
    use crate::plugin::exchange::Exchange;
    use http::Method;

    fn exchange(method: &str, uri: &str, host: Option<&str>) -> Exchange {
        let mut builder = http::Request::builder().method(method).uri(uri);
        if let Some(host) = host {
            builder = builder.header("host", host);
        }
        let (parts, ()) = builder.body(()).expect("a request").into_parts();
        Exchange::new(parts, None, None, false)
    }

    #[test]
    fn a_key_read_twice_across_a_write_vouches_for_nothing() {
        let mut reads = super::Reads::default();
        reads.record("a", 1);
        reads.record("a", 1);
        assert_eq!(reads.version("a"), Some(1));
        reads.record("b", 7);
        reads.record("a", 2);
        assert_eq!(reads.version("a"), Some(super::CHANGED_WHILE_READ));
        assert_eq!(reads.version("b"), Some(7));
        reads.clear();
        assert_eq!(reads.version("a"), None, "a new call read nothing yet");
        for i in 0..crate::sandbox::MAX_ANSWER_READS + 4 {
            reads.record(&format!("k{i}"), 3);
        }
        assert_eq!(
            reads.version("k0"),
            Some(3),
            "the strings of the last call reused"
        );
        let past = format!("k{}", crate::sandbox::MAX_ANSWER_READS);
        assert_eq!(reads.version(&past), None, "bounded");
    }

    #[test]
    fn addresses_cross_the_contract_as_numbers() {
        let ip = |text: &str| text.parse().expect("an address");
        assert!(matches!(
            wit_ip(ip("192.0.2.7")),
            super::wit::IpAddress::V4(0xC000_0207)
        ));
        // A dual-stack listener's view of an IPv4 client is that client.
        assert!(matches!(
            wit_ip(ip("::ffff:192.0.2.7")),
            super::wit::IpAddress::V4(0xC000_0207)
        ));
        assert!(matches!(
            wit_ip(ip("2001:db8::7:1")),
            super::wit::IpAddress::V6((0x2001_0db8_0000_0000, 0x7_0001))
        ));
    }

    #[test]
    fn the_head_lent_to_on_request_is_the_one_request_head_returns() {
        for (method, uri, host) in [
            ("GET", "/a/b?x=1&y", Some("example.com:8080")),
            ("PROPFIND", "/", Some("[::1]:8443")),
            ("POST", "http://origin.example/p", None),
            ("GET", "/no-host", None),
        ] {
            let ex = exchange(method, uri, host);
            let owned = request_head(&ex);
            let source = ex.head();
            let lent = lent_head(&source);
            assert_eq!(lent.path, owned.path, "{uri}");
            assert_eq!(lent.query, owned.query.as_deref(), "{uri}");
            assert_eq!(lent.host, owned.host.as_deref(), "{uri}");
            assert_eq!(
                format!("{:?}", lent.method).replace("MethodParam", "MethodResult"),
                format!("{:?}", owned.method),
                "{method}"
            );
        }
        assert_eq!(
            exchange("GET", "/", Some("a.example:80")).head().host(),
            Some("a.example")
        );
    }

    #[test]
    fn methods_round_trip() {
        for m in [
            "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
            "PROPFIND",
        ] {
            let method = Method::from_bytes(m.as_bytes()).expect("a method");
            assert_eq!(http_method(wit_method(&method)), Ok(method));
        }
        assert!(matches!(
            wit_method(&Method::GET),
            super::wit::MethodResult::Get
        ));
        assert_eq!(
            http_method(super::wit::MethodResult::Other("BAD METHOD".into())),
            Err("BAD METHOD".to_string())
        );
    }
}

#[cfg(feature = "fuzzing")]
pub(super) use fields::fuzz_set_header;
