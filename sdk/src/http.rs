//! The request and response a filter works on.
//!
//! In a plugin every call reads or changes the host's copy (the `fields`, `request` and `response`
//! imports); under [`crate::testing`] the same calls act on in-memory values (see `backend`).

use std::cell::OnceCell;
use std::net::IpAddr;

use crate::__private::bindings::gatehouse::plugin::types as wit;
use crate::backend;
use crate::error::Error;

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

/// The client's request. Changes made in [`Filter::on_request`](crate::Filter::on_request) are what the target sees.
pub struct Request {
    /// Method, path, query and host: passed with the call ([`Filter::REQUEST_HEAD`](crate::Filter::REQUEST_HEAD)) or fetched
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

    /// The subject of the client's verified certificate (mutual TLS) in RFC 4514 form, e.g.
    /// `CN=alice,O=Example`; `None` without one. Set by the server, so a client cannot forge it.
    pub fn client_cert_subject(&self) -> Option<String> {
        backend::client_cert_subject()
    }

    /// The whole request body; in [`Filter::on_request`](crate::Filter::on_request) only if the filter set
    /// [`Filter::REQUEST_BODY`](crate::Filter::REQUEST_BODY) (else [`Error::BodyNotRequested`]).
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

    /// Request collapsing: once this `on_request` returns [`Action::Continue`](crate::Action),
    /// the request waits until [`crate::waits::notify`] is called with `key` (by the request
    /// that is fetching what this one needs) or `timeout` passes (at most 10 s), then this
    /// filter's `on_request` runs again. A request waits at most three times; later calls are
    /// ignored.
    pub fn wait_for(&mut self, key: &str, timeout: std::time::Duration) {
        let ms = timeout.as_millis().min(u128::from(u32::MAX)) as u32;
        backend::wait_for(key, ms);
    }

    /// Sets header fields on the response this request will get, whatever makes it (the target,
    /// a later filter, the host), each replacing its values, before any `on_response` runs: a
    /// filter that only adds response fields needs no `on_response` (and so no second call into
    /// it per request).
    pub fn set_response_headers(&mut self, headers: &[(&str, &[u8])]) -> Result<(), Error> {
        backend::set_response_headers(headers)
    }

    /// Leaves `answer` with the host for later GET and HEAD requests with this request's scheme,
    /// host, path and query (as this filter sees them): the host gives it without calling the
    /// filter, while it is fresh, no field of [`Answer::consult_if_present`](crate::Answer::consult_if_present) is on the request,
    /// the request has not waited, and every key of [`Answer::depends_on`](crate::Answer::depends_on) holds the value this
    /// call read. None of the filter's hooks run for a request answered so. In
    /// [`Filter::on_request`](crate::Filter::on_request) only, kept once it returns
    /// [`Action::Respond`](crate::Action); false if the host refused it (a key not read in this
    /// call, a store shared with other servers, too large).
    pub fn offer_answer(&mut self, answer: &crate::Answer) -> bool {
        backend::offer_answer(answer)
    }

    /// Says that the [`Action::Continue`](crate::Action) this [`Filter::on_request`](crate::Filter::on_request)
    /// returns holds for every request from the same client address (this filter's, where it
    /// applies) for `ttl`: the host lets them go on without calling its `on_request` (its other
    /// hooks still run). For a decision that depends on nothing but [`Request::client_addr`] and
    /// changes nothing (an address filter): kept only if the call returns `Continue`, changes
    /// nothing of the request, sets no response fields and asks no wait; at most 1,024 addresses
    /// per thread that runs the chain, none across a reload.
    pub fn continue_for_client(&mut self, ttl: std::time::Duration) {
        let ms = ttl.as_millis().min(u128::from(u32::MAX)) as u32;
        backend::continue_for_client(ms);
    }
}

/// The response on its way back to the client, in [`Filter::on_response`](crate::Filter::on_response) (a [`LocalResponse`](crate::LocalResponse) is
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

    /// The whole body (see [`Filter::RESPONSE_BODY`](crate::Filter::RESPONSE_BODY) for streamed ones).
    pub fn body(&self) -> Result<Vec<u8>, Error> {
        backend::body(Message::Response)
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
