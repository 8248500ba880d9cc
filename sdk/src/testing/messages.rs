//! The request and response a test hands to a hook: built with their helpers, read back after it.

use std::collections::HashMap;

/// A request for a test: method, path, headers, body, client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TestRequest {
    /// The method.
    pub method: String,
    /// The path (percent-encoded).
    pub path: String,
    /// The query string without `?`.
    pub query: Option<String>,
    /// Header fields, names in lower case.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body.
    pub body: Vec<u8>,
    /// The client's IP address.
    pub client_ip: Option<String>,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The verified client certificate's subject (mutual TLS).
    pub client_cert_subject: Option<String>,
    /// The per-request context.
    pub context: HashMap<String, String>,
    /// The wait the filter asked for in its last `on_request` ([`Request::wait_for`](crate::Request::wait_for)): key and
    /// timeout in milliseconds.
    pub waiting: Option<(String, u32)>,
    /// Fields the filter set for the response in `on_request`
    /// ([`Request::set_response_headers`](crate::Request::set_response_headers)): [`on_response`](super::on_response) sets them on the response first, as
    /// the host does.
    pub response_headers: Vec<(String, Vec<u8>)>,
    /// The answer the filter offered in its last `on_request` ([`Request::offer_answer`](crate::Request::offer_answer)); the
    /// harness accepts every offer, where the host may refuse one (see the method).
    pub offered: Option<crate::Answer>,
    /// How long the `Continue` of the filter's last `on_request` holds for its client
    /// ([`Request::continue_for_client`](crate::Request::continue_for_client)); the host keeps it
    /// only for a `Continue` that set no response fields.
    pub continue_for_client: Option<std::time::Duration>,
}

impl TestRequest {
    /// A request with this method and target (`/path?query`).
    pub fn new(method: &str, target: &str) -> TestRequest {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p.to_string(), Some(q.to_string())),
            None => (target.to_string(), None),
        };
        TestRequest {
            method: method.to_string(),
            path,
            query,
            headers: Vec::new(),
            body: Vec::new(),
            client_ip: Some("127.0.0.1".into()),
            tls: false,
            client_cert_subject: None,
            context: HashMap::new(),
            waiting: None,
            offered: None,
            continue_for_client: None,
            response_headers: Vec::new(),
        }
    }

    /// A `GET` request.
    pub fn get(target: &str) -> TestRequest {
        TestRequest::new("GET", target)
    }

    /// Adds a header (builder style).
    pub fn with_header(mut self, name: &str, value: &str) -> TestRequest {
        self.headers
            .push((name.to_ascii_lowercase(), value.as_bytes().to_vec()));
        self
    }

    /// Sets the body (builder style).
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> TestRequest {
        self.body = body.into();
        self
    }

    /// Sets the client address (builder style).
    pub fn with_client_ip(mut self, ip: &str) -> TestRequest {
        self.client_ip = Some(ip.to_string());
        self
    }

    /// The first value of a header as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    pub(crate) fn host_name(&self) -> Option<&str> {
        let (_, value) = self
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("host"))?;
        let host = std::str::from_utf8(value).ok()?;
        Some(host.rsplit_once(':').map_or(host, |(n, _)| n))
    }
}

/// A response for testing [`Filter::on_response`](crate::Filter::on_response).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestResponse {
    /// The status.
    pub status: u16,
    /// Header fields.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body.
    pub body: Vec<u8>,
}

impl TestResponse {
    /// A response with this status and body.
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> TestResponse {
        TestResponse {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// The first value of a header as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}
