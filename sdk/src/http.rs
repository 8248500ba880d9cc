//! The request and response a filter works on, and what it answers.
//!
//! In a plugin every call reads or changes the host's copy (the `fields`, `request` and `response`
//! imports); under [`crate::testing`] the same calls act on in-memory values (see `backend`).

use std::cell::OnceCell;
use std::net::IpAddr;

use crate::__private::bindings::gatehouse::plugin::types as wit;
use crate::backend;

/// Why a call on the request or the response was refused; nothing was changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// Not a valid header name.
    InvalidHeaderName,
    /// A header value with CR, LF or NUL.
    InvalidHeaderValue,
    /// The message already carries the most header fields plugins may leave on it (1,000).
    TooManyHeaders,
    /// Not a method token.
    InvalidMethod,
    /// A path that does not start with `/` or is not a valid URI path.
    InvalidPath,
    /// Not a valid URI query.
    InvalidQuery,
    /// A status outside 100-999.
    InvalidStatus,
    /// A body larger than a plugin may set (16 MiB) or than the host buffers for plugins.
    BodyTooLarge,
    /// A streamed response body, and the filter did not set [`Filter::RESPONSE_BODY`].
    BodyNotBuffered,
    /// The request body in `on_request` of a filter that did not set [`Filter::REQUEST_BODY`]:
    /// filters decide on the head, and the host reads no body for them.
    BodyNotRequested,
    /// The response, before there is one (in `on_request`).
    NoResponse,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Error::InvalidHeaderName => "invalid header name",
            Error::InvalidHeaderValue => "invalid header value (CR, LF or NUL)",
            Error::TooManyHeaders => {
                "a message may carry at most 1000 header fields set by plugins"
            }
            Error::InvalidMethod => "invalid method",
            Error::InvalidPath => "invalid path (it must start with `/`)",
            Error::InvalidQuery => "invalid query",
            Error::InvalidStatus => "invalid status (100-999)",
            Error::BodyTooLarge => "body too large for plugins",
            Error::BodyNotBuffered => "body is streamed and was not buffered",
            Error::BodyNotRequested => "the request body was not requested (Filter::REQUEST_BODY)",
            Error::NoResponse => "there is no response yet",
        })
    }
}

impl std::error::Error for Error {}

impl From<wit::ErrorCode> for Error {
    fn from(e: wit::ErrorCode) -> Error {
        match e {
            wit::ErrorCode::InvalidHeaderName => Error::InvalidHeaderName,
            wit::ErrorCode::InvalidHeaderValue => Error::InvalidHeaderValue,
            wit::ErrorCode::TooManyHeaders => Error::TooManyHeaders,
            wit::ErrorCode::InvalidMethod => Error::InvalidMethod,
            wit::ErrorCode::InvalidPath => Error::InvalidPath,
            wit::ErrorCode::InvalidQuery => Error::InvalidQuery,
            wit::ErrorCode::InvalidStatus => Error::InvalidStatus,
            wit::ErrorCode::BodyTooLarge => Error::BodyTooLarge,
            wit::ErrorCode::BodyNotBuffered => Error::BodyNotBuffered,
            wit::ErrorCode::BodyNotRequested => Error::BodyNotRequested,
            wit::ErrorCode::NoResponse => Error::NoResponse,
        }
    }
}

/// Which message a fields call is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Message {
    Request,
    Response,
}

fn lossy(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// The header and body methods, said once for both messages.
macro_rules! fields_methods {
    ($message:expr, $on_change:ident) => {
        /// The first value of a header as text (invalid UTF-8 replaced); names are
        /// case-insensitive.
        pub fn header(&self, name: &str) -> Option<String> {
            self.header_bytes(name).map(lossy)
        }

        /// The first value of a header as bytes.
        pub fn header_bytes(&self, name: &str) -> Option<Vec<u8>> {
            backend::header($message, name)
        }

        /// Every value of a header, in order.
        pub fn header_all(&self, name: &str) -> Vec<Vec<u8>> {
            backend::header_all($message, name)
        }

        /// All header fields, names in lower case.
        pub fn headers(&self) -> Vec<(String, Vec<u8>)> {
            backend::headers($message)
        }

        /// Sets a header, replacing its values.
        pub fn set_header(&mut self, name: &str, value: impl AsRef<[u8]>) -> Result<(), Error> {
            self.$on_change();
            backend::set_header($message, name, value.as_ref(), false)
        }

        /// Sets several headers at once (one host call), each replacing its values; names and
        /// values as `&str` or `String` (values may also be bytes).
        pub fn set_headers<N: AsRef<str>, V: AsRef<[u8]>>(
            &mut self,
            headers: &[(N, V)],
        ) -> Result<(), Error> {
            self.$on_change();
            let headers: Vec<(&str, &[u8])> = headers
                .iter()
                .map(|(n, v)| (n.as_ref(), v.as_ref()))
                .collect();
            backend::set_headers($message, &headers)
        }

        /// Adds a header value, keeping the others.
        pub fn append_header(&mut self, name: &str, value: impl AsRef<[u8]>) -> Result<(), Error> {
            self.$on_change();
            backend::set_header($message, name, value.as_ref(), true)
        }

        /// Removes every value of a header.
        pub fn remove_header(&mut self, name: &str) {
            self.$on_change();
            backend::remove_header($message, name);
        }

        /// Replaces the body (`content-length` follows).
        pub fn set_body(&mut self, body: impl AsRef<[u8]>) -> Result<(), Error> {
            backend::set_body($message, body.as_ref())
        }
    };
}

/// The client's request. Changes made in [`Filter::on_request`] are what the target sees.
pub struct Request {
    /// Method, path, query and host: passed with the call ([`Filter::REQUEST_HEAD`]) or fetched
    /// from the host together on first use.
    head: OnceCell<wit::RequestHead>,
    /// The client's address: passed with `on-request`, else fetched on first use.
    client: OnceCell<Option<IpAddr>>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request").finish_non_exhaustive()
    }
}

impl Request {
    pub(crate) fn new(head: Option<wit::RequestHead>, client: Option<Option<IpAddr>>) -> Request {
        Request {
            head: head.map_or_else(OnceCell::new, OnceCell::from),
            client: client.map_or_else(OnceCell::new, OnceCell::from),
        }
    }

    fn head(&self) -> &wit::RequestHead {
        self.head.get_or_init(backend::head)
    }

    /// The head may have changed: fetch it again on next use.
    fn changed(&mut self) {
        self.head.take();
    }

    fields_methods!(Message::Request, changed);

    /// The method, e.g. `GET`.
    pub fn method(&self) -> &str {
        method_str(&self.head().method)
    }

    /// Replaces the method.
    pub fn set_method(&mut self, method: &str) -> Result<(), Error> {
        self.changed();
        backend::set_method(method)
    }

    /// The path as received (percent-encoded), e.g. `/a%20b`.
    pub fn path(&self) -> &str {
        &self.head().path
    }

    /// Replaces the path (it must start with `/`).
    pub fn set_path(&mut self, path: &str) -> Result<(), Error> {
        self.changed();
        backend::set_path(path)
    }

    /// The raw query string without `?`.
    pub fn query(&self) -> Option<&str> {
        self.head().query.as_deref()
    }

    /// Replaces or (with `None`) removes the query string.
    pub fn set_query(&mut self, query: Option<&str>) -> Result<(), Error> {
        self.changed();
        backend::set_query(query)
    }

    /// The host the client asked for, without the port.
    pub fn host_name(&self) -> Option<&str> {
        self.head().host.as_deref()
    }

    /// The client's IP address (`None` on a Unix-socket listener).
    pub fn client_addr(&self) -> Option<IpAddr> {
        *self.client.get_or_init(backend::client_addr)
    }

    /// The client's IP address as text, e.g. `192.0.2.7` (`None` on a Unix-socket listener).
    pub fn client_ip(&self) -> Option<String> {
        self.client_addr().map(ip_text)
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &'static str {
        if self.is_tls() { "https" } else { "http" }
    }

    /// Whether the connection is TLS.
    pub fn is_tls(&self) -> bool {
        backend::is_tls()
    }

    /// The whole request body; in [`Filter::on_request`] only if the filter set
    /// [`Filter::REQUEST_BODY`] (else [`Error::BodyNotRequested`]).
    pub fn body(&self) -> Result<Vec<u8>, Error> {
        backend::body(Message::Request)
    }

    /// A value of the per-request context, shared by all plugins and phases.
    pub fn context(&self, key: &str) -> Option<String> {
        backend::context_get(key)
    }

    /// Sets a value of the per-request context.
    pub fn set_context(&mut self, key: &str, value: &str) {
        backend::context_set(key, value);
    }
}

/// The response on its way back to the client, in [`Filter::on_response`] (a [`LocalResponse`] is
/// what a filter answers with instead of the target).
pub struct Response {
    _private: (),
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Response").finish_non_exhaustive()
    }
}

impl Response {
    pub(crate) fn new() -> Response {
        Response { _private: () }
    }

    fn changed(&mut self) {}

    fields_methods!(Message::Response, changed);

    /// The status code.
    pub fn status(&self) -> u16 {
        backend::status()
    }

    /// Replaces the status code (100-999).
    pub fn set_status(&mut self, status: u16) -> Result<(), Error> {
        backend::set_status(status)
    }

    /// The whole body (see [`Filter::RESPONSE_BODY`] for streamed ones).
    pub fn body(&self) -> Result<Vec<u8>, Error> {
        backend::body(Message::Response)
    }
}

/// A response made by the filter instead of the target:
/// `LocalResponse::new(403).header("x-why", "bot").body("no\n")`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalResponse {
    /// The status code.
    pub status: u16,
    /// Header fields.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body.
    pub body: Vec<u8>,
}

impl LocalResponse {
    /// An empty response with this status.
    pub fn new(status: u16) -> LocalResponse {
        LocalResponse {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> LocalResponse {
        self.headers
            .push((name.to_ascii_lowercase(), value.as_ref().to_vec()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> LocalResponse {
        self.body = body.into();
        self
    }

    /// A redirect (`301`, `302`, `307` or `308`) to `location`.
    pub fn redirect(status: u16, location: &str) -> LocalResponse {
        LocalResponse::new(status).header("location", location)
    }
}

/// What [`Filter::on_request`] decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Go on with the next plugin, then the target.
    Continue,
    /// Answer now; later plugins and the target are skipped.
    Respond(LocalResponse),
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

impl From<LocalResponse> for Action {
    fn from(r: LocalResponse) -> Action {
        Action::Respond(r)
    }
}

pub(crate) fn method_str(method: &wit::MethodResult) -> &str {
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

/// A method as the contract's (owned) variant, for the test backend's `head`.
#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
pub(crate) fn method_result(method: &str) -> wit::MethodResult {
    match wit_method(method) {
        wit::MethodParam::Get => wit::MethodResult::Get,
        wit::MethodParam::Head => wit::MethodResult::Head,
        wit::MethodParam::Post => wit::MethodResult::Post,
        wit::MethodParam::Put => wit::MethodResult::Put,
        wit::MethodParam::Delete => wit::MethodResult::Delete,
        wit::MethodParam::Connect => wit::MethodResult::Connect,
        wit::MethodParam::Options => wit::MethodResult::Options,
        wit::MethodParam::Trace => wit::MethodResult::Trace,
        wit::MethodParam::Patch => wit::MethodResult::Patch,
        wit::MethodParam::Other(token) => wit::MethodResult::Other(token.to_string()),
    }
}

pub(crate) fn wit_method(method: &str) -> wit::MethodParam<'_> {
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
pub(crate) fn ip_addr(ip: wit::IpAddress) -> std::net::IpAddr {
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
