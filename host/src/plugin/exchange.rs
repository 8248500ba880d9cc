//! The request (and later the response) the plugin chain works on, owned by the host.
//!
//! An [`Exchange`] is moved into a plugin's store for the duration of one call and moved back after
//! it, so guests read and change it through host calls and nothing is copied that a plugin does not
//! touch.

use std::net::IpAddr;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::request::Parts;
use http::{HeaderValue, Response};

use crate::body::Body;
use crate::request_body::{RequestBody, Reservation};

/// A request on its way through the chain, and its response once there is one.
#[derive(Debug)]
pub struct Exchange {
    /// Method, URI, version and headers as the target will see them.
    pub request: Parts,
    /// The whole request body once it has been read (for a plugin that declared it needs it, or
    /// by the pipeline for the target) or set by a plugin; `None` while it is unread.
    pub body: Option<RequestBody>,
    /// What the body read from the client holds of the process's body budget, until the exchange
    /// ends.
    pub body_reserved: Option<Reservation>,
    /// The client's address as resolved for the request (`None` on a Unix socket).
    pub client: Option<IpAddr>,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The verified client certificate's subject (mutual TLS).
    pub client_subject: Option<std::sync::Arc<str>>,
    /// The per-request context shared by plugins and phases.
    pub context: Vec<(String, String)>,
    /// Header bytes plugins have set on this exchange (see `MAX_PLUGIN_HEADER_BYTES`).
    pub plugin_header_bytes: usize,
    /// The response, present during `on-response` and `on-log`.
    pub response: Option<Response<Body>>,
    /// The response body was larger than plugins may buffer: it streams on unread.
    pub response_too_large: bool,
    /// A wait the running `on-request` asked for (`request.wait-for`).
    pub wait: Option<crate::store::Waiter>,
    /// Fields plugins set on the response before there was one (`request.set-response-headers`),
    /// with the position in the chain of the plugin that set each: set on the response where that
    /// plugin's `on-response` would run, so a plugin earlier in the chain (a cache) does not see
    /// (or store) what a later one set for this client.
    pub response_fields: Vec<(usize, http::HeaderName, HeaderValue)>,
}

impl Exchange {
    /// An exchange for a request head; `body` is `Some` when it is already known (empty).
    pub fn new(
        request: Parts,
        body: Option<RequestBody>,
        client: Option<IpAddr>,
        tls: bool,
    ) -> Exchange {
        Exchange {
            request,
            body,
            body_reserved: None,
            client,
            tls,
            client_subject: None,
            context: Vec::new(),
            plugin_header_bytes: 0,
            response: None,
            response_too_large: false,
            wait: None,
            response_fields: Vec::new(),
        }
    }

    /// The host the client asked for, without the port.
    pub fn host(&self) -> Option<&str> {
        host_of(self.request.headers.get(HOST), &self.request.uri)
    }

    /// The parts of the head `on-request` may pass, held apart from the exchange.
    pub fn head(&self) -> HeadSource {
        HeadSource {
            method: self.request.method.clone(),
            uri: self.request.uri.clone(),
            host: self.request.headers.get(HOST).cloned(),
        }
    }

    /// Keeps the fields the call of the plugin at `position` set for the response, within the
    /// bound on fields plugins may set (past it they are dropped).
    pub fn stage_response_fields(&mut self, position: usize, fields: &mut http::HeaderMap) {
        for (name, value) in fields.drain() {
            let Some(name) = name else { continue };
            if self.response_fields.len() >= crate::sandbox::MAX_PLUGIN_HEADERS {
                break;
            }
            self.response_fields.push((position, name, value));
        }
    }

    /// Sets on the response the fields the plugin at `position` left for it.
    pub fn set_response_fields(&mut self, position: usize) {
        if self.response_fields.is_empty() {
            return;
        }
        let Some(response) = self.response.as_mut() else {
            return;
        };
        fields_onto(&self.response_fields, position, response.headers_mut());
    }

    /// Sets on `headers` the fields the plugin at `position` left for the response.
    pub fn response_fields_onto(&self, position: usize, headers: &mut http::HeaderMap) {
        fields_onto(&self.response_fields, position, headers);
    }

    /// Replaces the request body, keeping the framing headers true to it.
    pub fn set_request_body(&mut self, body: Vec<u8>) {
        let len = body.len();
        self.body = Some(RequestBody::Memory(Bytes::from(body)));
        self.request.headers.remove(TRANSFER_ENCODING);
        self.request
            .headers
            .insert(CONTENT_LENGTH, HeaderValue::from(len));
    }

    /// A stand-in an instance holds between hook calls, swapped with the real one for each call.
    pub fn placeholder() -> Exchange {
        let (request, ()) = http::Request::new(()).into_parts();
        Exchange::new(request, None, None, false)
    }

    /// A context value.
    pub fn context_get(&self, key: &str) -> Option<&str> {
        self.context
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Sets a context value, within `MAX_CONTEXT_ENTRIES` entries and `MAX_CONTEXT_BYTES`.
    pub fn context_set(&mut self, key: String, value: String) -> Result<(), &'static str> {
        use crate::sandbox::{MAX_CONTEXT_BYTES, MAX_CONTEXT_ENTRIES};
        let index = self.context.iter().position(|(k, _)| *k == key);
        let bytes: usize = self
            .context
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != index)
            .map(|(_, (k, v))| k.len() + v.len())
            .sum::<usize>()
            + key.len()
            + value.len();
        if bytes > MAX_CONTEXT_BYTES {
            return Err("the request context would pass 64 KiB");
        }
        match index {
            Some(i) => self.context[i].1 = value,
            None if self.context.len() >= MAX_CONTEXT_ENTRIES => {
                return Err("the request context already has 64 entries");
            }
            None => self.context.push((key, value)),
        }
        Ok(())
    }
}

/// Method, URI and `Host` header of a request: clones that share the request's buffers, so the
/// head can be lent to a call while the store owns the exchange.
#[derive(Debug)]
pub struct HeadSource {
    /// The method.
    pub method: http::Method,
    /// The URI (path and query).
    pub uri: http::Uri,
    /// The `Host` header, if any.
    pub host: Option<HeaderValue>,
}

impl HeadSource {
    /// The host the client asked for, without the port.
    pub fn host(&self) -> Option<&str> {
        host_of(self.host.as_ref(), &self.uri)
    }
}

/// The `Host` header, else the URI's host (absolute form), without the port.
fn host_of<'a>(header: Option<&'a HeaderValue>, uri: &'a http::Uri) -> Option<&'a str> {
    let raw = match header {
        Some(v) => v.to_str().ok()?,
        None => uri.host()?,
    };
    Some(strip_port(raw))
}

/// `example.com:8080` -> `example.com`; `[::1]:80` -> `[::1]`.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

/// Sets the fields staged for `position` on `headers`, each replacing its values.
fn fields_onto(
    fields: &[(usize, http::HeaderName, HeaderValue)],
    position: usize,
    headers: &mut http::HeaderMap,
) {
    for (at, name, value) in fields {
        if *at == position {
            headers.insert(name.clone(), value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::strip_port;

    #[test]
    fn ports_are_stripped() {
        assert_eq!(strip_port("example.com:8080"), "example.com");
        assert_eq!(strip_port("example.com"), "example.com");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
    }
}
