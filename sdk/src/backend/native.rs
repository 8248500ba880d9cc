//! The test harness's request and response: [`crate::testing`] moves them in for one hook call and
//! back out after it, and these functions act on them the way the host acts on its own (the same
//! checks, the same errors).

use std::cell::RefCell;
use std::net::IpAddr;

use crate::__private::bindings::gatehouse::plugin::types as wit;
use crate::error::Error;
use crate::http::Message;
use crate::testing::messages::{TestRequest, TestResponse};

/// Most header fields a message may carry once plugins have set them (as the host bounds them).
const MAX_HEADERS: usize = 1000;

/// What one hook call works on.
pub(crate) struct Exchange {
    pub(crate) req: TestRequest,
    pub(crate) resp: Option<TestResponse>,
    /// Whether the request body may be read (in `on_request`, only with `Filter::REQUEST_BODY`).
    pub(crate) body_readable: bool,
}

thread_local! {
    static CURRENT: RefCell<Option<Exchange>> = const { RefCell::new(None) };
}

/// Runs `hook` with `exchange` as the current request and response, and gives them back.
pub(crate) fn with_exchange(exchange: Exchange, hook: impl FnOnce()) -> Exchange {
    CURRENT.with(|c| *c.borrow_mut() = Some(exchange));
    hook();
    CURRENT
        .with(|c| c.borrow_mut().take())
        .expect("gatehouse-sdk: the test exchange is gone")
}

fn with<R>(f: impl FnOnce(&mut Exchange) -> R) -> R {
    CURRENT.with(|c| match c.borrow_mut().as_mut() {
        Some(ex) => f(ex),
        None => panic!("gatehouse-sdk: request or response used outside a hook"),
    })
}

fn fields_of(ex: &mut Exchange, m: Message) -> Result<&mut Vec<(String, Vec<u8>)>, Error> {
    match m {
        Message::Request => Ok(&mut ex.req.headers),
        Message::Response => ex
            .resp
            .as_mut()
            .map(|r| &mut r.headers)
            .ok_or(Error::NoResponse),
    }
}

fn read<R>(m: Message, f: impl FnOnce(&[(String, Vec<u8>)]) -> R) -> R {
    with(|ex| match fields_of(ex, m) {
        Ok(fields) => f(fields),
        Err(_) => panic!("gatehouse-sdk: the response used in on_request"),
    })
}

pub(crate) fn header(m: Message, name: &str) -> Option<Vec<u8>> {
    read(m, |h| {
        h.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    })
}

pub(crate) fn header_all(m: Message, name: &str) -> Vec<Vec<u8>> {
    read(m, |h| {
        h.iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .collect()
    })
}

pub(crate) fn headers(m: Message) -> Vec<(String, Vec<u8>)> {
    read(m, <[_]>::to_vec)
}

/// An HTTP token (RFC 9110 5.6.2): what header names and methods are made of.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn set_field(
    headers: &mut Vec<(String, Vec<u8>)>,
    name: &str,
    value: &[u8],
    append: bool,
) -> Result<(), Error> {
    if !is_token(name) {
        return Err(Error::InvalidHeaderName);
    }
    if value.iter().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
        return Err(Error::InvalidHeaderValue);
    }
    let exists = headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    if (append || !exists) && headers.len() >= MAX_HEADERS {
        return Err(Error::TooManyHeaders);
    }
    if !append {
        headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }
    headers.push((name.to_ascii_lowercase(), value.to_vec()));
    Ok(())
}

pub(crate) fn set_header(m: Message, name: &str, value: &[u8], append: bool) -> Result<(), Error> {
    with(|ex| set_field(fields_of(ex, m)?, name, value, append))
}

pub(crate) fn set_headers(m: Message, headers: &[(&str, &[u8])]) -> Result<(), Error> {
    with(|ex| {
        let fields = fields_of(ex, m)?;
        headers
            .iter()
            .try_for_each(|(n, v)| set_field(fields, n, v, false))
    })
}

pub(crate) fn remove_header(m: Message, name: &str) {
    with(|ex| {
        if let Ok(fields) = fields_of(ex, m) {
            fields.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        }
    });
}

pub(crate) fn body(m: Message) -> Result<Vec<u8>, Error> {
    with(|ex| match m {
        Message::Request if !ex.body_readable => Err(Error::BodyNotRequested),
        Message::Request => Ok(ex.req.body.clone()),
        Message::Response => ex
            .resp
            .as_ref()
            .map(|r| r.body.clone())
            .ok_or(Error::NoResponse),
    })
}

pub(crate) fn set_body(m: Message, body: &[u8]) -> Result<(), Error> {
    with(|ex| match m {
        Message::Request => {
            ex.req.body = body.to_vec();
            Ok(())
        }
        Message::Response => match ex.resp.as_mut() {
            Some(r) => {
                r.body = body.to_vec();
                Ok(())
            }
            None => Err(Error::NoResponse),
        },
    })
}

pub(crate) fn head() -> wit::RequestHead {
    with(|ex| wit::RequestHead {
        method: crate::http::method_result(&ex.req.method),
        path: ex.req.path.clone(),
        query: ex.req.query.clone(),
        host: ex.req.host_name().map(str::to_string),
    })
}

pub(crate) fn set_method(method: &str) -> Result<(), Error> {
    if !is_token(method) {
        return Err(Error::InvalidMethod);
    }
    with(|ex| ex.req.method = method.to_string());
    Ok(())
}

pub(crate) fn set_path(path: &str) -> Result<(), Error> {
    if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == b'?' || b == b'#') {
        return Err(Error::InvalidPath);
    }
    with(|ex| ex.req.path = path.to_string());
    Ok(())
}

pub(crate) fn set_query(query: Option<&str>) -> Result<(), Error> {
    if query.is_some_and(|q| q.bytes().any(|b| b <= b' ' || b == b'#')) {
        return Err(Error::InvalidQuery);
    }
    with(|ex| ex.req.query = query.map(str::to_string));
    Ok(())
}

pub(crate) fn client_addr() -> Option<IpAddr> {
    with(|ex| ex.req.client_ip.as_deref().and_then(|ip| ip.parse().ok()))
}

pub(crate) fn is_tls() -> bool {
    with(|ex| ex.req.tls)
}

pub(crate) fn client_cert_subject() -> Option<String> {
    with(|ex| ex.req.client_cert_subject.clone())
}

pub(crate) fn context_get(key: &str) -> Option<String> {
    with(|ex| ex.req.context.get(key).cloned())
}

pub(crate) fn wait_for(key: &str, timeout_ms: u32) {
    with(|ex| ex.req.waiting = Some((key.to_string(), timeout_ms)));
}

pub(crate) fn set_response_headers(headers: &[(&str, &[u8])]) -> Result<(), Error> {
    with(|ex| {
        let target = match &mut ex.resp {
            Some(resp) => &mut resp.headers,
            None => &mut ex.req.response_headers,
        };
        for (name, value) in headers {
            let name = name.to_ascii_lowercase();
            target.retain(|(n, _)| *n != name);
            target.push((name, value.to_vec()));
        }
    });
    Ok(())
}

pub(crate) fn continue_for_client(ttl_ms: u32) {
    with(|ex| {
        ex.req.continue_for_client = Some(std::time::Duration::from_millis(u64::from(ttl_ms)))
    });
}

pub(crate) fn offer_answer(answer: &crate::Answer) -> bool {
    with(|ex| ex.req.offered = Some(answer.clone()));
    true
}

pub(crate) fn context_set(key: &str, value: &str) {
    with(|ex| {
        ex.req.context.insert(key.to_string(), value.to_string());
    });
}

pub(crate) fn status() -> u16 {
    with(|ex| match &ex.resp {
        Some(r) => r.status,
        None => panic!("gatehouse-sdk: the response used in on_request"),
    })
}

pub(crate) fn set_status(status: u16) -> Result<(), Error> {
    if !(100..=999).contains(&status) {
        return Err(Error::InvalidStatus);
    }
    with(|ex| match ex.resp.as_mut() {
        Some(r) => {
            r.status = status;
            Ok(())
        }
        None => Err(Error::NoResponse),
    })
}

/// The harness reads a local response from the returned `Action` itself.
pub(crate) fn respond(_: &crate::LocalResponse) {}
