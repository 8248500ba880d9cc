//! The request and response a filter works on, and what it answers.
//!
//! In a plugin these wrap the host's handles (every call reads or changes the host's copy); under
//! [`crate::testing`] they wrap plain in-memory values.

use std::cell::Cell;

use crate::__private::bindings::gatehouse::plugin::http as wit;
use crate::testing::{TestRequest, TestResponse};
use crate::{Filter, LogEntry};

/// Why a body is not available to the filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// Larger than the host buffers for plugins.
    TooLarge,
    /// A streamed response body, and the filter did not set [`Filter::RESPONSE_BODY`].
    NotBuffered,
    /// The request body in `on_request` of a filter that did not set [`Filter::REQUEST_BODY`]:
    /// filters decide on the head, and the host reads no body for them.
    NotRequested,
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BodyError::TooLarge => "body too large for plugins",
            BodyError::NotBuffered => "body is streamed and was not buffered",
            BodyError::NotRequested => "the request body was not requested (Filter::REQUEST_BODY)",
        })
    }
}

impl From<wit::BodyError> for BodyError {
    fn from(e: wit::BodyError) -> BodyError {
        match e {
            wit::BodyError::TooLarge => BodyError::TooLarge,
            wit::BodyError::NotBuffered => BodyError::NotBuffered,
            wit::BodyError::NotRequested => BodyError::NotRequested,
        }
    }
}

enum ReqInner<'a> {
    Host(&'a wit::Request),
    Test(&'a mut TestRequest),
}

/// The client's request. Changes made in [`Filter::on_request`] are what the target sees.
pub struct Request<'a> {
    inner: ReqInner<'a>,
    /// Method, path, query and host: passed with the call ([`Filter::REQUEST_HEAD`]) or fetched
    /// from the host together on first use.
    head: std::cell::OnceCell<wit::RequestHead>,
    /// The client's address: passed with `on-request`, else fetched from the host on first use.
    client: std::cell::OnceCell<Option<std::net::IpAddr>>,
    /// Under the test harness: whether [`Request::body`] gives the body (the host decides this
    /// itself, by what the filter declared).
    body_readable: bool,
}

impl std::fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request").finish_non_exhaustive()
    }
}

fn lossy(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

impl<'a> Request<'a> {
    pub(crate) fn host(req: &'a wit::Request, head: Option<wit::RequestHead>) -> Request<'a> {
        Request {
            inner: ReqInner::Host(req),
            head: head.map_or_else(std::cell::OnceCell::new, std::cell::OnceCell::from),
            client: std::cell::OnceCell::new(),
            body_readable: true,
        }
    }

    pub(crate) fn test(req: &'a mut TestRequest, body_readable: bool) -> Request<'a> {
        Request {
            inner: ReqInner::Test(req),
            head: std::cell::OnceCell::new(),
            client: std::cell::OnceCell::new(),
            body_readable,
        }
    }

    fn head(&self, req: &wit::Request) -> &wit::RequestHead {
        self.head.get_or_init(|| req.head())
    }

    /// The method, e.g. `GET`.
    pub fn method(&self) -> &str {
        match &self.inner {
            ReqInner::Host(r) => method_str(&self.head(r).method),
            ReqInner::Test(t) => &t.method,
        }
    }

    /// Replaces the method.
    pub fn set_method(&mut self, method: &str) -> Result<(), String> {
        self.head.take();
        match &mut self.inner {
            ReqInner::Host(r) => r.set_method(wit_method(method)),
            ReqInner::Test(t) => {
                t.method = method.to_string();
                Ok(())
            }
        }
    }

    /// The path as received (percent-encoded), e.g. `/a%20b`.
    pub fn path(&self) -> &str {
        match &self.inner {
            ReqInner::Host(r) => &self.head(r).path,
            ReqInner::Test(t) => &t.path,
        }
    }

    /// Replaces the path (it must start with `/`).
    pub fn set_path(&mut self, path: &str) -> Result<(), String> {
        self.head.take();
        match &mut self.inner {
            ReqInner::Host(r) => r.set_path(path),
            ReqInner::Test(t) if path.starts_with('/') => {
                t.path = path.to_string();
                Ok(())
            }
            ReqInner::Test(_) => Err(format!("a path starts with `/`: {path:?}")),
        }
    }

    /// The raw query string without `?`.
    pub fn query(&self) -> Option<&str> {
        match &self.inner {
            ReqInner::Host(r) => self.head(r).query.as_deref(),
            ReqInner::Test(t) => t.query.as_deref(),
        }
    }

    /// Replaces or (with `None`) removes the query string.
    pub fn set_query(&mut self, query: Option<&str>) -> Result<(), String> {
        self.head.take();
        match &mut self.inner {
            ReqInner::Host(r) => r.set_query(query),
            ReqInner::Test(t) => {
                t.query = query.map(str::to_string);
                Ok(())
            }
        }
    }

    /// The host the client asked for, without the port.
    pub fn host_name(&self) -> Option<&str> {
        match &self.inner {
            ReqInner::Host(r) => self.head(r).host.as_deref(),
            ReqInner::Test(t) => t.host_name(),
        }
    }

    /// The first value of a header as text (invalid UTF-8 replaced); names are case-insensitive.
    pub fn header(&self, name: &str) -> Option<String> {
        self.header_bytes(name).map(lossy)
    }

    /// The first value of a header as bytes.
    pub fn header_bytes(&self, name: &str) -> Option<Vec<u8>> {
        match &self.inner {
            ReqInner::Host(r) => r.header(name),
            ReqInner::Test(t) => t.header_raw(name),
        }
    }

    /// Every value of a header, in order.
    pub fn header_all(&self, name: &str) -> Vec<Vec<u8>> {
        match &self.inner {
            ReqInner::Host(r) => r.header_all(name),
            ReqInner::Test(t) => t.header_all(name),
        }
    }

    /// All header fields, names in lower case.
    pub fn headers(&self) -> Vec<(String, Vec<u8>)> {
        match &self.inner {
            ReqInner::Host(r) => r.headers().into_iter().map(|h| (h.name, h.value)).collect(),
            ReqInner::Test(t) => t.headers.clone(),
        }
    }

    /// Sets a header, replacing its values.
    pub fn set_header(&mut self, name: &str, value: impl AsRef<[u8]>) -> Result<(), String> {
        self.head.take();
        match &mut self.inner {
            ReqInner::Host(r) => r.set_header(name, value.as_ref()),
            ReqInner::Test(t) => t.set_header(name, value.as_ref(), false),
        }
    }

    /// Sets several headers at once (one host call), each replacing its values; names and values
    /// as `&str` or `String` (values may also be bytes).
    pub fn set_headers<N: AsRef<str>, V: AsRef<[u8]>>(
        &mut self,
        headers: &[(N, V)],
    ) -> Result<(), String> {
        self.head.take();
        match &mut self.inner {
            ReqInner::Host(r) => r.set_headers(&wit_headers(headers)),
            ReqInner::Test(t) => headers
                .iter()
                .try_for_each(|(n, v)| t.set_header(n.as_ref(), v.as_ref(), false)),
        }
    }

    /// Adds a header value, keeping the others.
    pub fn append_header(&mut self, name: &str, value: impl AsRef<[u8]>) -> Result<(), String> {
        self.head.take();
        match &mut self.inner {
            ReqInner::Host(r) => r.append_header(name, value.as_ref()),
            ReqInner::Test(t) => t.set_header(name, value.as_ref(), true),
        }
    }

    /// Removes a header.
    pub fn remove_header(&mut self, name: &str) {
        self.head.take();
        match &mut self.inner {
            ReqInner::Host(r) => r.remove_header(name),
            ReqInner::Test(t) => t.remove_header(name),
        }
    }

    /// The client's IP address (`None` on a Unix-socket listener).
    pub fn client_addr(&self) -> Option<std::net::IpAddr> {
        match &self.inner {
            ReqInner::Host(r) => *self.client.get_or_init(|| r.client_addr().map(ip_addr)),
            ReqInner::Test(t) => t.client_ip.as_deref().and_then(|ip| ip.parse().ok()),
        }
    }

    /// The client's IP address as text, e.g. `192.0.2.7` (`None` on a Unix-socket listener).
    pub fn client_ip(&self) -> Option<String> {
        match &self.inner {
            ReqInner::Host(_) => self.client_addr().map(ip_text),
            ReqInner::Test(t) => t.client_ip.clone(),
        }
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> String {
        match &self.inner {
            ReqInner::Host(r) => r.scheme(),
            ReqInner::Test(t) => if t.tls { "https" } else { "http" }.to_string(),
        }
    }

    /// Whether the connection is TLS.
    pub fn is_tls(&self) -> bool {
        match &self.inner {
            ReqInner::Host(r) => r.is_tls(),
            ReqInner::Test(t) => t.tls,
        }
    }

    /// The whole request body, in [`Filter::on_request`] only if the filter set
    /// [`Filter::REQUEST_BODY`] (else [`BodyError::NotRequested`]).
    pub fn body(&self) -> Result<Vec<u8>, BodyError> {
        match &self.inner {
            ReqInner::Host(r) => r.body().map_err(Into::into),
            ReqInner::Test(_) if !self.body_readable => Err(BodyError::NotRequested),
            ReqInner::Test(t) => Ok(t.body.clone()),
        }
    }

    /// Replaces the body (`content-length` follows).
    pub fn set_body(&mut self, body: impl Into<Vec<u8>>) {
        let body = body.into();
        match &mut self.inner {
            ReqInner::Host(r) => r.set_body(&body),
            ReqInner::Test(t) => t.body = body,
        }
    }

    /// A value of the per-request context, shared by all plugins and phases.
    pub fn context(&self, key: &str) -> Option<String> {
        match &self.inner {
            ReqInner::Host(r) => r.context_get(key),
            ReqInner::Test(t) => t.context.get(key).cloned(),
        }
    }

    /// Sets a value of the per-request context.
    pub fn set_context(&mut self, key: &str, value: &str) {
        match &mut self.inner {
            ReqInner::Host(r) => r.context_set(key, value),
            ReqInner::Test(t) => {
                t.context.insert(key.to_string(), value.to_string());
            }
        }
    }
}

fn method_str(method: &wit::MethodResult) -> &str {
    match method {
        wit::MethodResult::Get => "GET",
        wit::MethodResult::Head => "HEAD",
        wit::MethodResult::Post => "POST",
        wit::MethodResult::Put => "PUT",
        wit::MethodResult::Delete => "DELETE",
        wit::MethodResult::Connect => "CONNECT",
        wit::MethodResult::Options => "OPTIONS",
        wit::MethodResult::Trace => "TRACE",
        wit::MethodResult::Patch => "PATCH",
        wit::MethodResult::Other(token) => token,
    }
}

fn wit_method(method: &str) -> wit::MethodParam<'_> {
    match method {
        "GET" => wit::MethodParam::Get,
        "HEAD" => wit::MethodParam::Head,
        "POST" => wit::MethodParam::Post,
        "PUT" => wit::MethodParam::Put,
        "DELETE" => wit::MethodParam::Delete,
        "CONNECT" => wit::MethodParam::Connect,
        "OPTIONS" => wit::MethodParam::Options,
        "TRACE" => wit::MethodParam::Trace,
        "PATCH" => wit::MethodParam::Patch,
        other => wit::MethodParam::Other(other),
    }
}

/// An address from the contract's numbers.
fn ip_addr(ip: wit::IpAddress) -> std::net::IpAddr {
    match ip {
        wit::IpAddress::V4(bits) => std::net::Ipv4Addr::from(bits).into(),
        wit::IpAddress::V6((high, low)) => {
            std::net::Ipv6Addr::from((u128::from(high) << 64) | u128::from(low)).into()
        }
    }
}

/// IPv4 by hand: `Display` (the formatting machinery) costs more than the host call that fetched it.
fn ip_text(ip: std::net::IpAddr) -> String {
    let std::net::IpAddr::V4(v4) = ip else {
        return ip.to_string();
    };
    let mut text = String::with_capacity(15);
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text.push('.');
        }
        if octet >= 100 {
            text.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            text.push(char::from(b'0' + octet / 10 % 10));
        }
        text.push(char::from(b'0' + octet % 10));
    }
    text
}

fn wit_headers<N: AsRef<str>, V: AsRef<[u8]>>(headers: &[(N, V)]) -> Vec<wit::HeaderParam<'_>> {
    headers
        .iter()
        .map(|(name, value)| wit::HeaderParam {
            name: name.as_ref(),
            value: value.as_ref(),
        })
        .collect()
}

enum RespInner<'a> {
    Host(&'a wit::Response),
    Test(&'a mut TestResponse),
}

/// The response on its way back to the client, in [`Filter::on_response`].
pub struct Reply<'a> {
    inner: RespInner<'a>,
}

impl std::fmt::Debug for Reply<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reply").finish_non_exhaustive()
    }
}

impl<'a> Reply<'a> {
    pub(crate) fn test(resp: &'a mut TestResponse) -> Reply<'a> {
        Reply {
            inner: RespInner::Test(resp),
        }
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        match &self.inner {
            RespInner::Host(r) => r.status(),
            RespInner::Test(t) => t.status,
        }
    }

    /// Replaces the status code.
    pub fn set_status(&mut self, status: u16) -> Result<(), String> {
        match &mut self.inner {
            RespInner::Host(r) => r.set_status(status),
            RespInner::Test(t) if (100..=999).contains(&status) => {
                t.status = status;
                Ok(())
            }
            RespInner::Test(_) => Err(format!("invalid status {status}")),
        }
    }

    /// The first value of a header as text.
    pub fn header(&self, name: &str) -> Option<String> {
        match &self.inner {
            RespInner::Host(r) => r.header(name).map(lossy),
            RespInner::Test(t) => t.header(name),
        }
    }

    /// All header fields.
    pub fn headers(&self) -> Vec<(String, Vec<u8>)> {
        match &self.inner {
            RespInner::Host(r) => r.headers().into_iter().map(|h| (h.name, h.value)).collect(),
            RespInner::Test(t) => t.headers.clone(),
        }
    }

    /// Sets a header, replacing its values.
    pub fn set_header(&mut self, name: &str, value: impl AsRef<[u8]>) -> Result<(), String> {
        match &mut self.inner {
            RespInner::Host(r) => r.set_header(name, value.as_ref()),
            RespInner::Test(t) => t.set_header(name, value.as_ref(), false),
        }
    }

    /// Sets several headers at once (one host call), each replacing its values; names and values
    /// as `&str` or `String` (values may also be bytes).
    pub fn set_headers<N: AsRef<str>, V: AsRef<[u8]>>(
        &mut self,
        headers: &[(N, V)],
    ) -> Result<(), String> {
        match &mut self.inner {
            RespInner::Host(r) => r.set_headers(&wit_headers(headers)),
            RespInner::Test(t) => headers
                .iter()
                .try_for_each(|(n, v)| t.set_header(n.as_ref(), v.as_ref(), false)),
        }
    }

    /// Adds a header value.
    pub fn append_header(&mut self, name: &str, value: impl AsRef<[u8]>) -> Result<(), String> {
        match &mut self.inner {
            RespInner::Host(r) => r.append_header(name, value.as_ref()),
            RespInner::Test(t) => t.set_header(name, value.as_ref(), true),
        }
    }

    /// Removes a header.
    pub fn remove_header(&mut self, name: &str) {
        match &mut self.inner {
            RespInner::Host(r) => r.remove_header(name),
            RespInner::Test(t) => t.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name)),
        }
    }

    /// The whole body (see [`Filter::RESPONSE_BODY`] for streamed ones).
    pub fn body(&self) -> Result<Vec<u8>, BodyError> {
        match &self.inner {
            RespInner::Host(r) => r.body().map_err(Into::into),
            RespInner::Test(t) => Ok(t.body.clone()),
        }
    }

    /// Replaces the body (`content-length` follows).
    pub fn set_body(&mut self, body: impl Into<Vec<u8>>) {
        let body = body.into();
        match &mut self.inner {
            RespInner::Host(r) => r.set_body(&body),
            RespInner::Test(t) => t.body = body,
        }
    }
}

/// A response made by the filter: `Response::new(403).header("x-why", "bot").body("no\n")`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Header fields.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// An empty response with this status.
    pub fn new(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Response {
        self.headers
            .push((name.to_ascii_lowercase(), value.as_ref().to_vec()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Response {
        self.body = body.into();
        self
    }

    /// A redirect (`301`, `302`, `307` or `308`) to `location`.
    pub fn redirect(status: u16, location: &str) -> Response {
        Response::new(status).header("location", location)
    }
}

/// What [`Filter::on_request`] decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Go on with the next plugin, then the target.
    Continue,
    /// Answer now; later plugins and the target are skipped.
    Respond(Response),
    /// Go on, and send the request to this target (unless a later plugin chooses again).
    Route {
        /// A target name from the config's `[targets]`; another name fails the request (500).
        target: String,
        /// A prefix of the request's path, ending at a segment, that the target treats as its
        /// mount point (WSGI: `SCRIPT_NAME`); one the path is not below fails the request (500).
        strip_prefix: Option<String>,
    },
}

impl Action {
    /// Route to `target`.
    pub fn route(target: &str) -> Action {
        Action::Route {
            target: target.to_string(),
            strip_prefix: None,
        }
    }
}

impl From<Response> for Action {
    fn from(r: Response) -> Action {
        Action::Respond(r)
    }
}

thread_local! {
    static UNIMPLEMENTED: Cell<bool> = const { Cell::new(false) };
    static FILTER: std::cell::RefCell<Option<Box<dyn std::any::Any>>> = const { std::cell::RefCell::new(None) };
    pub(crate) static TARGETS: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The request and response handles `init` received; they stand for those of every hook call.
    static HANDLES: std::cell::RefCell<Option<(wit::Request, wit::Response)>> = const { std::cell::RefCell::new(None) };
}

fn with_handles<R>(f: impl FnOnce(&wit::Request, &wit::Response) -> R) -> R {
    HANDLES.with(|cell| match cell.borrow().as_ref() {
        Some((req, resp)) => f(req, resp),
        None => panic!("gatehouse-sdk: a hook ran before init"),
    })
}

/// Called by the default hooks: the host will stop calling them.
pub(crate) fn mark_unimplemented() {
    UNIMPLEMENTED.with(|u| u.set(true));
}

/// Runs a hook and reports whether the default (do-nothing) implementation ran.
pub(crate) fn run_hook(hook: impl FnOnce()) -> bool {
    UNIMPLEMENTED.with(|u| u.set(false));
    hook();
    UNIMPLEMENTED.with(|u| u.replace(false))
}

/// Parses the config and builds the filter (shared by the export glue and the test harness).
pub(crate) fn build<F: Filter>(config: &str) -> Result<F, String> {
    let config: F::Config = serde_json::from_str(config).map_err(|e| format!("{e}"))?;
    F::new(config)
}

fn with_filter<F: Filter, R>(f: impl FnOnce(&F) -> R) -> R {
    FILTER.with(|cell| {
        let slot = cell.borrow();
        match slot.as_ref().and_then(|b| b.downcast_ref::<F>()) {
            Some(filter) => f(filter),
            None => panic!("gatehouse-sdk: a hook ran before init"),
        }
    })
}

/// `init` export.
pub fn init<F: Filter>(
    config: String,
    targets: Vec<String>,
    req: wit::Request,
    resp: wit::Response,
) -> Result<wit::Capabilities, String> {
    TARGETS.with(|t| *t.borrow_mut() = targets);
    HANDLES.with(|h| *h.borrow_mut() = Some((req, resp)));
    std::panic::set_hook(Box::new(|info| {
        crate::log::error(&format!("plugin panicked: {info}"));
    }));
    let filter = build::<F>(&config)?;
    FILTER.with(|cell| *cell.borrow_mut() = Some(Box::new(filter)));
    Ok(wit::Capabilities {
        response_body: F::RESPONSE_BODY,
        request_head: F::REQUEST_HEAD,
        request_body: F::REQUEST_BODY,
    })
}

/// `on-request` export.
pub fn on_request<F: Filter>(
    head: Option<wit::RequestHead>,
    client: Option<wit::IpAddress>,
) -> wit::Action {
    with_handles(|req, _| {
        let mut request = Request {
            client: std::cell::OnceCell::from(client.map(ip_addr)),
            ..Request::host(req, head)
        };
        let mut action = Action::Continue;
        let unimplemented =
            run_hook(|| action = with_filter::<F, _>(|f| f.on_request(&mut request)));
        match action {
            Action::Continue if unimplemented => wit::Action::Unimplemented,
            Action::Continue => wit::Action::Continue,
            Action::Respond(r) => {
                let headers: Vec<wit::HeaderParam<'_>> = r
                    .headers
                    .iter()
                    .map(|(name, value)| wit::HeaderParam { name, value })
                    .collect();
                req.respond(wit::LocalResponse {
                    status: r.status,
                    headers: &headers,
                    body: &r.body,
                });
                wit::Action::Respond
            }
            Action::Route {
                target,
                strip_prefix,
            } => wit::Action::Route(wit_route(&request, &target, strip_prefix.as_deref())),
        }
    })
}

/// A route as the contract has it: the target's position in the config's list, and the mount
/// point's length in the path. A name or prefix that does not fit is logged here (the host only
/// sees numbers) and sent as a number the host rejects, so the request fails as for any plugin error.
fn wit_route(request: &Request, target: &str, strip_prefix: Option<&str>) -> wit::Route {
    const INVALID: u32 = u32::MAX;
    let index = TARGETS.with(|t| t.borrow().iter().position(|name| name == target));
    let target = index.map_or_else(
        || {
            crate::log::error(&format!(
                "routed to {target:?}, which is not a configured target"
            ));
            INVALID
        },
        |i| i as u32,
    );
    let strip_prefix = match strip_prefix {
        None | Some("") => 0,
        Some(prefix) if request.path().starts_with(prefix) => prefix.len() as u32,
        Some(prefix) => {
            crate::log::error(&format!(
                "strip_prefix {prefix:?} is not a prefix of the path {:?}",
                request.path()
            ));
            INVALID
        }
    };
    wit::Route {
        target,
        strip_prefix,
    }
}

fn status(unimplemented: bool) -> wit::HookStatus {
    if unimplemented {
        wit::HookStatus::Unimplemented
    } else {
        wit::HookStatus::Done
    }
}

/// `on-response` export.
pub fn on_response<F: Filter>() -> wit::HookStatus {
    with_handles(|req, resp| {
        let mut request = Request::host(req, None);
        let mut reply = Reply {
            inner: RespInner::Host(resp),
        };
        status(run_hook(|| {
            with_filter::<F, _>(|f| f.on_response(&mut request, &mut reply))
        }))
    })
}

/// `on-log` export.
pub fn on_log<F: Filter>(entry: wit::LogEntry) -> wit::HookStatus {
    with_handles(|req, _| {
        let mut request = Request::host(req, None);
        let entry = LogEntry {
            status: entry.status,
            bytes_sent: entry.bytes_sent,
            duration_us: entry.duration_us,
            target: entry.target,
        };
        status(run_hook(|| {
            with_filter::<F, _>(|f| f.on_log(&mut request, &entry))
        }))
    })
}

#[cfg(test)]
mod tests {
    use super::{ip_addr, ip_text, method_str, wit, wit_method};
    use std::net::IpAddr;

    #[test]
    fn addresses_cross_the_contract_as_numbers() {
        let v4: IpAddr = "192.0.2.7".parse().expect("an address");
        assert_eq!(ip_addr(wit::IpAddress::V4(0xC000_0207)), v4);
        assert_eq!(ip_text(v4), "192.0.2.7");
        let v6: IpAddr = "2001:db8::7:1".parse().expect("an address");
        assert_eq!(
            ip_addr(wit::IpAddress::V6((0x2001_0db8_0000_0000, 0x7_0001))),
            v6
        );
        assert_eq!(ip_text(v6), "2001:db8::7:1");
    }

    #[test]
    fn methods_cross_the_contract_as_cases_or_tokens() {
        assert!(matches!(wit_method("GET"), wit::MethodParam::Get));
        assert!(matches!(wit_method("PATCH"), wit::MethodParam::Patch));
        assert!(matches!(
            wit_method("PROPFIND"),
            wit::MethodParam::Other("PROPFIND")
        ));
        assert_eq!(method_str(&wit::MethodResult::Options), "OPTIONS");
        assert_eq!(
            method_str(&wit::MethodResult::Other("PROPFIND".into())),
            "PROPFIND"
        );
    }
}
