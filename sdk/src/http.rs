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
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BodyError::TooLarge => "body too large for plugins",
            BodyError::NotBuffered => "body is streamed and was not buffered",
        })
    }
}

impl From<wit::BodyError> for BodyError {
    fn from(e: wit::BodyError) -> BodyError {
        match e {
            wit::BodyError::TooLarge => BodyError::TooLarge,
            wit::BodyError::NotBuffered => BodyError::NotBuffered,
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
    /// Method, path, query and host, fetched from the host together on first use.
    head: std::cell::OnceCell<wit::RequestHead>,
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
    pub(crate) fn host(req: &'a wit::Request) -> Request<'a> {
        Request {
            inner: ReqInner::Host(req),
            head: std::cell::OnceCell::new(),
        }
    }

    pub(crate) fn test(req: &'a mut TestRequest) -> Request<'a> {
        Request {
            inner: ReqInner::Test(req),
            head: std::cell::OnceCell::new(),
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

    /// Sets several headers at once (one host call), each replacing its values.
    pub fn set_headers(&mut self, headers: &[(&str, &str)]) -> Result<(), String> {
        self.head.take();
        match &mut self.inner {
            ReqInner::Host(r) => r.set_headers(&wit_headers(headers)),
            ReqInner::Test(t) => headers
                .iter()
                .try_for_each(|(n, v)| t.set_header(n, v.as_bytes(), false)),
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
    pub fn client_ip(&self) -> Option<String> {
        match &self.inner {
            ReqInner::Host(r) => r.client_ip(),
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

    /// The whole request body.
    pub fn body(&self) -> Result<Vec<u8>, BodyError> {
        match &self.inner {
            ReqInner::Host(r) => r.body().map_err(Into::into),
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

fn wit_headers<'a>(headers: &[(&'a str, &'a str)]) -> Vec<wit::HeaderParam<'a>> {
    headers
        .iter()
        .map(|(name, value)| wit::HeaderParam {
            name,
            value: value.as_bytes(),
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

    /// Sets several headers at once (one host call), each replacing its values.
    pub fn set_headers(&mut self, headers: &[(&str, &str)]) -> Result<(), String> {
        match &mut self.inner {
            RespInner::Host(r) => r.set_headers(&wit_headers(headers)),
            RespInner::Test(t) => headers
                .iter()
                .try_for_each(|(n, v)| t.set_header(n, v.as_bytes(), false)),
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
        /// A target name from the config's `[targets]`.
        target: String,
        /// A path prefix the target treats as its mount point (WSGI: `SCRIPT_NAME`).
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
pub fn init<F: Filter>(config: String, targets: Vec<String>) -> Result<wit::Capabilities, String> {
    TARGETS.with(|t| *t.borrow_mut() = targets);
    std::panic::set_hook(Box::new(|info| {
        crate::log::error(&format!("plugin panicked: {info}"));
    }));
    let filter = build::<F>(&config)?;
    FILTER.with(|cell| *cell.borrow_mut() = Some(Box::new(filter)));
    Ok(wit::Capabilities {
        response_body: F::RESPONSE_BODY,
    })
}

/// `on-request` export.
pub fn on_request<F: Filter>(req: &wit::Request) -> wit::Action {
    let mut request = Request::host(req);
    let mut action = Action::Continue;
    let unimplemented = run_hook(|| action = with_filter::<F, _>(|f| f.on_request(&mut request)));
    match action {
        Action::Continue if unimplemented => wit::Action::Unimplemented,
        Action::Continue => wit::Action::Continue,
        Action::Respond(r) => wit::Action::Respond(wit::LocalResponse {
            status: r.status,
            headers: r
                .headers
                .into_iter()
                .map(|(name, value)| wit::HeaderResult { name, value })
                .collect(),
            body: r.body,
        }),
        Action::Route {
            target,
            strip_prefix,
        } => wit::Action::Route(wit::Route {
            target,
            strip_prefix,
        }),
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
pub fn on_response<F: Filter>(req: &wit::Request, resp: &wit::Response) -> wit::HookStatus {
    let mut request = Request::host(req);
    let mut reply = Reply {
        inner: RespInner::Host(resp),
    };
    status(run_hook(|| {
        with_filter::<F, _>(|f| f.on_response(&mut request, &mut reply))
    }))
}

/// `on-log` export.
pub fn on_log<F: Filter>(req: &wit::Request, entry: wit::LogEntry) -> wit::HookStatus {
    let mut request = Request::host(req);
    let entry = LogEntry {
        status: entry.status,
        bytes_sent: entry.bytes_sent,
        duration_us: entry.duration_us,
        target: entry.target,
    };
    status(run_hook(|| {
        with_filter::<F, _>(|f| f.on_log(&mut request, &entry))
    }))
}

#[cfg(test)]
mod tests {
    use super::{method_str, wit, wit_method};

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
