//! The host side of the WIT contract: what a guest's calls on `request`, `response` and `host` do.
//!
//! Every call acts on the [`Exchange`] moved into the store for the current hook call. The guest holds
//! its handles for the instance's life (`init` hands them over), so a call outside a hook finds no
//! exchange: an error (a trap), never a panic.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, Uri};
use wasmtime::component::{Resource, ResourceTable};
use wasmtime::{Result, StoreLimits};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::gatehouse::plugin::{host, http as wit};
use super::exchange::{self, Exchange, HeadSource, RequestRef, ResponseRef};
use crate::body::Body;
use crate::metrics::Metrics;
use crate::request_body::RequestBody;
use crate::sandbox::{MAX_PLUGIN_BODY, MAX_PLUGIN_HEADERS, MAX_PLUGIN_METRICS};
use crate::store::{self, SharedStore};

/// What every call of one plugin shares: its name, its key namespace and the process's services.
#[derive(Debug)]
pub struct PluginInfo {
    /// The plugin's name in logs and metrics.
    pub name: String,
    /// Prefix of its keys and counters in the shared store.
    pub namespace: String,
    /// The shared key-value store and counters.
    pub store: Arc<SharedStore>,
    /// The process's metrics.
    pub metrics: Arc<Metrics>,
    /// Largest request body handed to plugins.
    pub body_limit: u64,
    /// What its stdout and stderr may write to the log.
    pub output: Arc<super::wasi::OutputBudget>,
}

/// A plugin store's data.
pub struct HostState {
    /// The request being worked on during a hook call (swapped in and out by the call), else a
    /// placeholder.
    pub exchange: Box<Exchange>,
    /// Whether a hook call is running: handles used outside one are an error.
    pub in_hook: bool,
    /// The response `on-request` answers with, set by `request.respond`.
    pub local: Option<wit::LocalResponse>,
    /// Where [`scoped`] builds keys.
    scratch: String,
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
            local: None,
            scratch: String::new(),
            limits,
            wasi: super::engine::wasi_ctx(&info.output),
            info,
            table: ResourceTable::new(),
        }
    }

    fn ex(&mut self) -> Result<&mut Exchange> {
        if !self.in_hook {
            wasmtime::bail!("request handle used outside a hook call");
        }
        Ok(&mut self.exchange)
    }

    fn response(&mut self) -> Result<&mut http::Response<Body>> {
        self.ex()?
            .response
            .as_mut()
            .ok_or_else(|| wasmtime::format_err!("response handle used before there is a response"))
    }
}

impl HostState {
    /// The resource table WASI's streams and pollables live in.
    pub fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
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

/// `key` in `namespace`, built in a buffer the store keeps (no allocation for a lookup; by hand,
/// since `format!` costs more than a counter update).
fn scoped<'a>(scratch: &'a mut String, namespace: &str, key: &str) -> &'a str {
    scratch.clear();
    scratch.push_str(namespace);
    scratch.push('\0');
    scratch.push_str(key);
    scratch
}

/// Method, path, query and host, as `request.head` returns them.
pub fn request_head(ex: &Exchange) -> wit::RequestHeadResult {
    wit::RequestHeadResult {
        method: wit_method(&ex.request.method),
        path: ex.request.uri.path().to_string(),
        query: ex.request.uri.query().map(str::to_string),
        host: ex.host().map(str::to_string),
    }
}

/// The same, lent to an `on-request` call: lowered into the guest straight from the request's
/// buffers.
pub fn lent_head(head: &HeadSource) -> wit::RequestHeadParam<'_> {
    wit::RequestHeadParam {
        method: method_as!(&head.method, MethodParam, |token| token),
        path: head.uri.path(),
        query: head.uri.query(),
        host: head.host(),
    }
}

/// An address as the contract's numbers; an IPv4-mapped IPv6 address (a dual-stack listener's view
/// of an IPv4 client) is the IPv4 address it stands for.
pub fn wit_ip(ip: std::net::IpAddr) -> wit::IpAddress {
    match ip.to_canonical() {
        std::net::IpAddr::V4(v4) => wit::IpAddress::V4(u32::from(v4)),
        std::net::IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            // Truncation is the point: the high and the low 64 bits.
            wit::IpAddress::V6(((bits >> 64) as u64, bits as u64))
        }
    }
}

fn checked_body(body: Vec<u8>) -> Result<Vec<u8>> {
    if body.len() > MAX_PLUGIN_BODY {
        wasmtime::bail!(
            "body of {} bytes is larger than the {MAX_PLUGIN_BODY} bytes a plugin may set",
            body.len()
        );
    }
    Ok(body)
}

fn fields(headers: &http::HeaderMap) -> Vec<wit::Header> {
    exchange::all_fields(headers)
        .into_iter()
        .map(|(name, value)| wit::Header { name, value })
        .collect()
}

fn set_header(
    headers: &mut http::HeaderMap,
    name: &str,
    value: Vec<u8>,
    append: bool,
) -> std::result::Result<(), String> {
    let name = exchange::header_name(name)?;
    let value = exchange::header_value(value)?;
    // Each new field grows the map: a bound keeps a plugin from building a head no one can send.
    if (append || !headers.contains_key(&name)) && headers.len() >= MAX_PLUGIN_HEADERS {
        return Err(format!(
            "a message may carry at most {MAX_PLUGIN_HEADERS} header fields set by plugins"
        ));
    }
    if append {
        headers.append(name, value);
    } else {
        headers.insert(name, value);
    }
    Ok(())
}

fn first(headers: &http::HeaderMap, name: &str) -> Option<Vec<u8>> {
    headers.get(name).map(|v| v.as_bytes().to_vec())
}

impl wit::Host for HostState {}

/// A method as the contract carries it (the common ones without a string), as either generated
/// type: `$other` makes the token of any other method.
macro_rules! method_as {
    ($method:expr, $ty:ident, $other:expr) => {
        match *$method {
            Method::GET => wit::$ty::Get,
            Method::HEAD => wit::$ty::Head,
            Method::POST => wit::$ty::Post,
            Method::PUT => wit::$ty::Put,
            Method::DELETE => wit::$ty::Delete,
            Method::CONNECT => wit::$ty::Connect,
            Method::OPTIONS => wit::$ty::Options,
            Method::TRACE => wit::$ty::Trace,
            Method::PATCH => wit::$ty::Patch,
            ref other => wit::$ty::Other($other(other.as_str())),
        }
    };
}
use method_as;

/// A method as `request.method` returns it.
fn wit_method(method: &Method) -> wit::MethodResult {
    method_as!(method, MethodResult, str::to_string)
}

/// A method from a plugin; an invalid token comes back as the error.
fn http_method(method: wit::MethodResult) -> std::result::Result<Method, String> {
    Ok(match method {
        wit::MethodResult::Get => Method::GET,
        wit::MethodResult::Head => Method::HEAD,
        wit::MethodResult::Post => Method::POST,
        wit::MethodResult::Put => Method::PUT,
        wit::MethodResult::Delete => Method::DELETE,
        wit::MethodResult::Connect => Method::CONNECT,
        wit::MethodResult::Options => Method::OPTIONS,
        wit::MethodResult::Trace => Method::TRACE,
        wit::MethodResult::Patch => Method::PATCH,
        wit::MethodResult::Other(token) => {
            Method::from_bytes(token.as_bytes()).map_err(|_| token)?
        }
    })
}

fn set_all(
    headers: &mut http::HeaderMap,
    fields: Vec<wit::Header>,
) -> std::result::Result<(), String> {
    for h in fields {
        set_header(headers, &h.name, h.value, false)?;
    }
    Ok(())
}

impl wit::HostRequest for HostState {
    fn head(&mut self, _: Resource<RequestRef>) -> Result<wit::RequestHeadResult> {
        Ok(request_head(self.ex()?))
    }

    fn set_headers(
        &mut self,
        _: Resource<RequestRef>,
        headers: Vec<wit::Header>,
    ) -> Result<std::result::Result<(), String>> {
        Ok(set_all(&mut self.ex()?.request.headers, headers))
    }

    fn method(&mut self, _: Resource<RequestRef>) -> Result<wit::MethodResult> {
        Ok(wit_method(&self.ex()?.request.method))
    }

    fn set_method(
        &mut self,
        _: Resource<RequestRef>,
        method: wit::MethodResult,
    ) -> Result<std::result::Result<(), String>> {
        Ok(match http_method(method) {
            Ok(m) => {
                self.ex()?.request.method = m;
                Ok(())
            }
            Err(token) => Err(format!("invalid method {token:?}")),
        })
    }

    fn path(&mut self, _: Resource<RequestRef>) -> Result<String> {
        Ok(self.ex()?.request.uri.path().to_string())
    }

    fn set_path(
        &mut self,
        _: Resource<RequestRef>,
        path: String,
    ) -> Result<std::result::Result<(), String>> {
        let ex = self.ex()?;
        if !path.starts_with('/') {
            return Ok(Err(format!("a path starts with `/`: {path:?}")));
        }
        let query = ex.request.uri.query().map(str::to_string);
        Ok(replace_path_and_query(
            &mut ex.request.uri,
            &path,
            query.as_deref(),
        ))
    }

    fn query(&mut self, _: Resource<RequestRef>) -> Result<Option<String>> {
        Ok(self.ex()?.request.uri.query().map(str::to_string))
    }

    fn set_query(
        &mut self,
        _: Resource<RequestRef>,
        query: Option<String>,
    ) -> Result<std::result::Result<(), String>> {
        let ex = self.ex()?;
        let path = ex.request.uri.path().to_string();
        Ok(replace_path_and_query(
            &mut ex.request.uri,
            &path,
            query.as_deref(),
        ))
    }

    fn host(&mut self, _: Resource<RequestRef>) -> Result<Option<String>> {
        Ok(self.ex()?.host().map(str::to_string))
    }

    fn header(&mut self, _: Resource<RequestRef>, name: String) -> Result<Option<Vec<u8>>> {
        Ok(first(&self.ex()?.request.headers, &name))
    }

    fn header_all(&mut self, _: Resource<RequestRef>, name: String) -> Result<Vec<Vec<u8>>> {
        Ok(exchange::all_values(&self.ex()?.request.headers, &name))
    }

    fn headers(&mut self, _: Resource<RequestRef>) -> Result<Vec<wit::Header>> {
        Ok(fields(&self.ex()?.request.headers))
    }

    fn set_header(
        &mut self,
        _: Resource<RequestRef>,
        name: String,
        value: Vec<u8>,
    ) -> Result<std::result::Result<(), String>> {
        Ok(set_header(
            &mut self.ex()?.request.headers,
            &name,
            value,
            false,
        ))
    }

    fn append_header(
        &mut self,
        _: Resource<RequestRef>,
        name: String,
        value: Vec<u8>,
    ) -> Result<std::result::Result<(), String>> {
        Ok(set_header(
            &mut self.ex()?.request.headers,
            &name,
            value,
            true,
        ))
    }

    fn remove_header(&mut self, _: Resource<RequestRef>, name: String) -> Result<()> {
        self.ex()?.request.headers.remove(name.as_str());
        Ok(())
    }

    fn client_addr(&mut self, _: Resource<RequestRef>) -> Result<Option<wit::IpAddress>> {
        Ok(self.ex()?.client.map(|a| wit_ip(a.ip())))
    }

    fn respond(&mut self, _: Resource<RequestRef>, response: wit::LocalResponse) -> Result<()> {
        // Like every request call, an error outside a hook.
        self.ex()?;
        self.local = Some(response);
        Ok(())
    }

    fn scheme(&mut self, _: Resource<RequestRef>) -> Result<String> {
        Ok(self.ex()?.scheme().to_string())
    }

    fn is_tls(&mut self, _: Resource<RequestRef>) -> Result<bool> {
        Ok(self.ex()?.tls)
    }

    fn version(&mut self, _: Resource<RequestRef>) -> Result<String> {
        Ok(self.ex()?.version().to_string())
    }

    fn body(
        &mut self,
        _: Resource<RequestRef>,
    ) -> Result<std::result::Result<Vec<u8>, wit::BodyError>> {
        let limit = self.info.body_limit;
        Ok(match &self.ex()?.body {
            None => Err(wit::BodyError::NotRequested),
            Some(RequestBody::Memory(b)) if b.len() as u64 <= limit => Ok(b.to_vec()),
            Some(_) => Err(wit::BodyError::TooLarge),
        })
    }

    fn set_body(&mut self, _: Resource<RequestRef>, body: Vec<u8>) -> Result<()> {
        let body = checked_body(body)?;
        self.ex()?.set_request_body(body);
        Ok(())
    }

    fn context_get(&mut self, _: Resource<RequestRef>, key: String) -> Result<Option<String>> {
        Ok(self.ex()?.context_get(&key).map(str::to_string))
    }

    fn context_set(&mut self, _: Resource<RequestRef>, key: String, value: String) -> Result<()> {
        self.ex()?.context_set(key, value);
        Ok(())
    }

    fn drop(&mut self, _: Resource<RequestRef>) -> Result<()> {
        Ok(())
    }
}

/// Rebuilds a URI's path and query, keeping scheme and authority (HTTP/2 and absolute-form).
fn replace_path_and_query(
    uri: &mut Uri,
    path: &str,
    query: Option<&str>,
) -> std::result::Result<(), String> {
    let pq = match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let mut parts = std::mem::take(uri).into_parts();
    let old = parts.path_and_query.clone();
    match pq.parse() {
        Ok(pq) => {
            parts.path_and_query = Some(pq);
            *uri = Uri::from_parts(parts).unwrap_or_default();
            Ok(())
        }
        Err(_) => {
            parts.path_and_query = old;
            *uri = Uri::from_parts(parts).unwrap_or_default();
            Err(format!("invalid path or query {pq:?}"))
        }
    }
}

impl wit::HostResponse for HostState {
    fn set_headers(
        &mut self,
        _: Resource<ResponseRef>,
        headers: Vec<wit::Header>,
    ) -> Result<std::result::Result<(), String>> {
        Ok(set_all(self.response()?.headers_mut(), headers))
    }

    fn status(&mut self, _: Resource<ResponseRef>) -> Result<u16> {
        Ok(self.response()?.status().as_u16())
    }

    fn set_status(
        &mut self,
        _: Resource<ResponseRef>,
        status: u16,
    ) -> Result<std::result::Result<(), String>> {
        Ok(match StatusCode::from_u16(status) {
            Ok(s) => {
                *self.response()?.status_mut() = s;
                Ok(())
            }
            Err(_) => Err(format!("invalid status {status}")),
        })
    }

    fn header(&mut self, _: Resource<ResponseRef>, name: String) -> Result<Option<Vec<u8>>> {
        Ok(first(self.response()?.headers(), &name))
    }

    fn header_all(&mut self, _: Resource<ResponseRef>, name: String) -> Result<Vec<Vec<u8>>> {
        Ok(exchange::all_values(self.response()?.headers(), &name))
    }

    fn headers(&mut self, _: Resource<ResponseRef>) -> Result<Vec<wit::Header>> {
        Ok(fields(self.response()?.headers()))
    }

    fn set_header(
        &mut self,
        _: Resource<ResponseRef>,
        name: String,
        value: Vec<u8>,
    ) -> Result<std::result::Result<(), String>> {
        Ok(set_header(
            self.response()?.headers_mut(),
            &name,
            value,
            false,
        ))
    }

    fn append_header(
        &mut self,
        _: Resource<ResponseRef>,
        name: String,
        value: Vec<u8>,
    ) -> Result<std::result::Result<(), String>> {
        Ok(set_header(
            self.response()?.headers_mut(),
            &name,
            value,
            true,
        ))
    }

    fn remove_header(&mut self, _: Resource<ResponseRef>, name: String) -> Result<()> {
        self.response()?.headers_mut().remove(name.as_str());
        Ok(())
    }

    fn body(
        &mut self,
        _: Resource<ResponseRef>,
    ) -> Result<std::result::Result<Vec<u8>, wit::BodyError>> {
        Ok(match self.response()?.body() {
            Body::Empty => Ok(Vec::new()),
            Body::Full(Some(b)) => Ok(b.to_vec()),
            Body::Full(None) => Ok(Vec::new()),
            _ => Err(wit::BodyError::NotBuffered),
        })
    }

    fn set_body(&mut self, _: Resource<ResponseRef>, body: Vec<u8>) -> Result<()> {
        let body = checked_body(body)?;
        let response = self.response()?;
        let len = body.len();
        *response.body_mut() = Body::full(Bytes::from(body));
        let headers = response.headers_mut();
        headers.remove(http::header::TRANSFER_ENCODING);
        headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(len));
        Ok(())
    }

    fn drop(&mut self, _: Resource<ResponseRef>) -> Result<()> {
        Ok(())
    }
}

fn ttl(ms: Option<u64>) -> Option<Duration> {
    ms.map(Duration::from_millis)
}

impl host::Host for HostState {
    fn log(&mut self, level: host::Level, message: String) -> Result<()> {
        let plugin = self.info.name.as_str();
        match level {
            host::Level::Trace => tracing::trace!(plugin, "{message}"),
            host::Level::Debug => tracing::debug!(plugin, "{message}"),
            host::Level::Info => tracing::info!(plugin, "{message}"),
            host::Level::Warn => tracing::warn!(plugin, "{message}"),
            host::Level::Error => tracing::error!(plugin, "{message}"),
        }
        Ok(())
    }

    fn kv_get(&mut self, key: String) -> Result<Option<Vec<u8>>> {
        let key = scoped(&mut self.scratch, &self.info.namespace, &key);
        Ok(self.info.store.kv_get(key))
    }

    fn kv_set(&mut self, key: String, value: Vec<u8>, ttl_ms: Option<u64>) -> Result<bool> {
        let key = scoped(&mut self.scratch, &self.info.namespace, &key).to_string();
        Ok(self.info.store.kv_set(key, value, ttl(ttl_ms)))
    }

    fn kv_delete(&mut self, key: String) -> Result<bool> {
        let key = scoped(&mut self.scratch, &self.info.namespace, &key);
        Ok(self.info.store.kv_delete(key))
    }

    fn kv_compare_and_swap(
        &mut self,
        key: String,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<bool> {
        let key = scoped(&mut self.scratch, &self.info.namespace, &key).to_string();
        Ok(self
            .info
            .store
            .kv_compare_and_swap(key, expected.as_deref(), new, ttl(ttl_ms)))
    }

    fn counter_incr(&mut self, name: String, delta: i64, window_ms: Option<u64>) -> Result<i64> {
        let key = scoped(&mut self.scratch, &self.info.namespace, &name);
        Ok(self.info.store.counter_incr(key, delta, ttl(window_ms)))
    }

    fn counter_get(&mut self, name: String, window_ms: Option<u64>) -> Result<i64> {
        let key = scoped(&mut self.scratch, &self.info.namespace, &name);
        Ok(self.info.store.counter_get(key, ttl(window_ms)))
    }

    fn metric_add(&mut self, name: String, delta: u64) -> Result<()> {
        if !self
            .info
            .metrics
            .plugin_add(&self.info.name, &name, delta, MAX_PLUGIN_METRICS)
        {
            tracing::warn!(plugin = %self.info.name, metric = %name,
                "plugin metric not counted: a plugin may define at most {MAX_PLUGIN_METRICS}");
        }
        Ok(())
    }

    fn now_ms(&mut self) -> Result<u64> {
        Ok(store::now_ms())
    }

    fn monotonic_ns(&mut self) -> Result<u64> {
        Ok(monotonic_ns())
    }

    fn random_u64(&mut self) -> Result<u64> {
        Ok(rand::random())
    }
}

fn monotonic_ns() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_nanos() as u64
}

#[cfg(test)]
mod tests {
    use super::{http_method, lent_head, request_head, wit_ip, wit_method};
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
