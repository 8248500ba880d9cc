//! The host's request and response, through the `fields`, `request` and `response` imports.

use std::net::IpAddr;

use crate::__private::bindings::gatehouse::plugin::{fields, request, response, types as wit};
use crate::error::Error;
use crate::http::{Message, ip_addr, wit_method};

fn message(m: Message) -> wit::Message {
    match m {
        Message::Request => wit::Message::Request,
        Message::Response => wit::Message::Response,
    }
}

pub(crate) fn header(m: Message, name: &str) -> Option<Vec<u8>> {
    fields::header(message(m), name)
}

pub(crate) fn header_all(m: Message, name: &str) -> Vec<Vec<u8>> {
    fields::header_all(message(m), name)
}

pub(crate) fn headers(m: Message) -> Vec<(String, Vec<u8>)> {
    fields::headers(message(m))
        .into_iter()
        .map(|h| (h.name, h.value))
        .collect()
}

pub(crate) fn set_header(m: Message, name: &str, value: &[u8], append: bool) -> Result<(), Error> {
    if append {
        fields::append_header(message(m), name, value).map_err(Error::from)
    } else {
        fields::set_header(message(m), name, value).map_err(Error::from)
    }
}

pub(crate) fn set_headers(m: Message, headers: &[(&str, &[u8])]) -> Result<(), Error> {
    let headers: Vec<wit::HeaderFieldParam<'_>> = headers
        .iter()
        .map(|(name, value)| wit::HeaderFieldParam { name, value })
        .collect();
    fields::set_headers(message(m), &headers).map_err(Error::from)
}

pub(crate) fn remove_header(m: Message, name: &str) {
    fields::remove_header(message(m), name);
}

pub(crate) fn body(m: Message) -> Result<Vec<u8>, Error> {
    fields::body(message(m)).map_err(Error::from)
}

pub(crate) fn set_body(m: Message, body: &[u8]) -> Result<(), Error> {
    fields::set_body(message(m), body).map_err(Error::from)
}

pub(crate) fn head() -> wit::RequestHead {
    request::head()
}

pub(crate) fn set_method(method: &str) -> Result<(), Error> {
    request::set_method(wit_method(method)).map_err(Error::from)
}

pub(crate) fn set_path(path: &str) -> Result<(), Error> {
    request::set_path(path).map_err(Error::from)
}

pub(crate) fn set_query(query: Option<&str>) -> Result<(), Error> {
    request::set_query(query).map_err(Error::from)
}

pub(crate) fn client_addr() -> Option<IpAddr> {
    request::client_addr().map(ip_addr)
}

pub(crate) fn is_tls() -> bool {
    request::is_tls()
}

pub(crate) fn client_cert_subject() -> Option<String> {
    request::client_cert_subject()
}

pub(crate) fn context_get(key: &str) -> Option<String> {
    request::context_get(key)
}

pub(crate) fn wait_for(key: &str, timeout_ms: u32) {
    request::wait_for(key, timeout_ms);
}

pub(crate) fn continue_for_client(ttl_ms: u32) {
    request::continue_for_client(ttl_ms);
}

pub(crate) fn set_response_headers(headers: &[(&str, &[u8])]) -> Result<(), Error> {
    let headers: Vec<wit::HeaderFieldParam<'_>> = headers
        .iter()
        .map(|(name, value)| wit::HeaderFieldParam { name, value })
        .collect();
    request::set_response_headers(&headers).map_err(Error::from)
}

pub(crate) fn offer_answer(a: &crate::Answer) -> bool {
    let headers: Vec<wit::HeaderFieldParam<'_>> = a
        .response
        .headers
        .iter()
        .map(|(name, value)| wit::HeaderFieldParam { name, value })
        .collect();
    let consult: Vec<&str> = a.consult_if_present.iter().map(String::as_str).collect();
    let depends: Vec<&str> = a.depends_on.iter().map(String::as_str).collect();
    let vary: Vec<&str> = a.vary.iter().map(String::as_str).collect();
    request::offer_answer(wit::Answer {
        response: wit::LocalResponse {
            status: a.response.status,
            headers: &headers,
            body: &a.response.body,
        },
        response_time: a.response_time_ms,
        initial_age: a.initial_age_ms,
        lifetime: a.lifetime_ms,
        consult_if_present: &consult,
        vary: &vary,
        depends_on: &depends,
        cache_status: a.cache_status.as_deref(),
        metric: a.metric.as_deref(),
    })
}

pub(crate) fn context_set(key: &str, value: &str) {
    request::context_set(key, value);
}

pub(crate) fn status() -> u16 {
    response::status()
}

pub(crate) fn set_status(status: u16) -> Result<(), Error> {
    response::set_status(status).map_err(Error::from)
}

pub(crate) fn respond(r: &crate::LocalResponse) {
    let headers: Vec<wit::HeaderFieldParam<'_>> = r
        .headers
        .iter()
        .map(|(name, value)| wit::HeaderFieldParam { name, value })
        .collect();
    request::respond(wit::LocalResponse {
        status: r.status,
        headers: &headers,
        body: &r.body,
    });
}
