//! The `fields` interface: header fields and bodies, one API for the request and the response.

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue};
use wasmtime::Result;

use super::HostState;
use super::wit::{ErrorCode, HeaderField as Header, Message};
use crate::body::Body;
use crate::plugin::bindings::gatehouse::plugin::fields;
use crate::request_body::RequestBody;
use crate::sandbox::{MAX_PLUGIN_BODY, MAX_PLUGIN_HEADER_BYTES, MAX_PLUGIN_HEADERS};

impl HostState {
    /// The header fields of one message; the response's before there is one is the guest's error.
    fn headers_of(&mut self, message: Message) -> Result<&mut HeaderMap> {
        Ok(match message {
            Message::Request => &mut self.ex()?.request.headers,
            Message::Response => self.response()?.headers_mut(),
        })
    }

    /// Notes a change to `message` (see `changed_request`).
    fn note_change(&mut self, message: Message) {
        if matches!(message, Message::Request) {
            self.changed_request = true;
        }
    }

    /// Sets `fields` on the response, or before there is one, on the fields that wait for it
    /// (`request.set-response-headers`); bounded as any fields a plugin sets.
    pub(super) fn set_response_fields(
        &mut self,
        fields: Vec<Header>,
    ) -> Result<Result<(), ErrorCode>> {
        // Framing and hop-by-hop fields are the server's to set for the connection.
        const SERVERS: &[&str] = &[
            "content-length",
            "transfer-encoding",
            "connection",
            "keep-alive",
            "proxy-connection",
            "te",
            "trailer",
            "upgrade",
        ];
        if fields
            .iter()
            .any(|h| SERVERS.iter().any(|s| h.name.eq_ignore_ascii_case(s)))
        {
            return Ok(Err(ErrorCode::InvalidHeaderName));
        }
        let bytes = fields.iter().map(|h| h.name.len() + h.value.len()).sum();
        if let Err(e) = self.charge_header_bytes(bytes)? {
            return Ok(Err(e));
        }
        // Before there is a response, they wait in the store until the call succeeds: a call that
        // fails leaves none.
        let headers = match self.exchange.response.as_mut() {
            Some(r) => r.headers_mut(),
            None => &mut self.staged,
        };
        Ok(fields
            .into_iter()
            .try_for_each(|h| set(headers, &h.name, h.value, false)))
    }

    /// Counts `bytes` more header data set by plugins on the exchange: past what they may set on
    /// one, `too-many-headers` and nothing counted.
    fn charge_header_bytes(&mut self, bytes: usize) -> Result<Result<(), ErrorCode>> {
        let ex = self.ex()?;
        let total = ex.plugin_header_bytes.saturating_add(bytes);
        if total > MAX_PLUGIN_HEADER_BYTES {
            return Ok(Err(ErrorCode::TooManyHeaders));
        }
        ex.plugin_header_bytes = total;
        Ok(Ok(()))
    }

    /// The same for a call that answers an error code: no response yet is `no-response`, and
    /// `bytes` more header data than plugins may set on one exchange is `too-many-headers`.
    fn headers_for_change(
        &mut self,
        message: Message,
        bytes: usize,
    ) -> Result<Result<&mut HeaderMap, ErrorCode>> {
        if let Err(e) = self.charge_header_bytes(bytes)? {
            return Ok(Err(e));
        }
        self.note_change(message);
        let ex = &mut self.exchange;
        Ok(match message {
            Message::Request => Ok(&mut ex.request.headers),
            Message::Response => match ex.response.as_mut() {
                Some(r) => Ok(r.headers_mut()),
                None => Err(ErrorCode::NoResponse),
            },
        })
    }
}

/// A header name from a guest, lower-cased by `HeaderName`.
fn name(name: &str) -> Result<HeaderName, ErrorCode> {
    HeaderName::from_bytes(name.as_bytes()).map_err(|_| ErrorCode::InvalidHeaderName)
}

/// A header value from a guest: no CR, LF or NUL.
fn value(value: Vec<u8>) -> Result<HeaderValue, ErrorCode> {
    HeaderValue::from_maybe_shared(Bytes::from(value)).map_err(|_| ErrorCode::InvalidHeaderValue)
}

/// Sets (or appends) one field, within the bound on fields a plugin may leave on a message.
fn set(headers: &mut HeaderMap, field: &str, v: Vec<u8>, append: bool) -> Result<(), ErrorCode> {
    let field = name(field)?;
    let v = value(v)?;
    // Each new field grows the map: a bound keeps a plugin from building a head no one can send.
    if (append || !headers.contains_key(&field)) && headers.len() >= MAX_PLUGIN_HEADERS {
        return Err(ErrorCode::TooManyHeaders);
    }
    if append {
        headers.append(field, v);
    } else {
        headers.insert(field, v);
    }
    Ok(())
}

impl fields::Host for HostState {
    fn header(&mut self, message: Message, name: String) -> Result<Option<Vec<u8>>> {
        let headers = self.headers_of(message)?;
        Ok(headers.get(name.as_str()).map(|v| v.as_bytes().to_vec()))
    }

    fn header_all(&mut self, message: Message, name: String) -> Result<Vec<Vec<u8>>> {
        let headers = self.headers_of(message)?;
        Ok(headers
            .get_all(name.as_str())
            .iter()
            .map(|v| v.as_bytes().to_vec())
            .collect())
    }

    fn headers(&mut self, message: Message) -> Result<Vec<Header>> {
        let headers = self.headers_of(message)?;
        Ok(headers
            .iter()
            .map(|(k, v)| Header {
                name: k.as_str().to_string(),
                value: v.as_bytes().to_vec(),
            })
            .collect())
    }

    fn set_header(
        &mut self,
        message: Message,
        name: String,
        value: Vec<u8>,
    ) -> Result<Result<(), ErrorCode>> {
        let bytes = name.len() + value.len();
        Ok(self
            .headers_for_change(message, bytes)?
            .and_then(|headers| set(headers, &name, value, false)))
    }

    fn append_header(
        &mut self,
        message: Message,
        name: String,
        value: Vec<u8>,
    ) -> Result<Result<(), ErrorCode>> {
        let bytes = name.len() + value.len();
        Ok(self
            .headers_for_change(message, bytes)?
            .and_then(|headers| set(headers, &name, value, true)))
    }

    fn set_headers(
        &mut self,
        message: Message,
        fields: Vec<Header>,
    ) -> Result<Result<(), ErrorCode>> {
        let bytes = fields.iter().map(|h| h.name.len() + h.value.len()).sum();
        Ok(self
            .headers_for_change(message, bytes)?
            .and_then(|headers| {
                fields
                    .into_iter()
                    .try_for_each(|h| set(headers, &h.name, h.value, false))
            }))
    }

    fn remove_header(&mut self, message: Message, name: String) -> Result<()> {
        self.note_change(message);
        self.headers_of(message)?.remove(name.as_str());
        Ok(())
    }

    fn body(&mut self, message: Message) -> Result<Result<Vec<u8>, ErrorCode>> {
        let limit = self.info.body_limit;
        let ex = self.ex()?;
        Ok(match message {
            Message::Request => match &ex.body {
                None => Err(ErrorCode::BodyNotRequested),
                Some(RequestBody::Memory(b)) if b.len() as u64 <= limit => Ok(b.to_vec()),
                Some(_) => Err(ErrorCode::BodyTooLarge),
            },
            Message::Response => match ex.response.as_ref().map(http::Response::body) {
                None => Err(ErrorCode::NoResponse),
                Some(_) if ex.response_too_large => Err(ErrorCode::BodyTooLarge),
                Some(Body::Empty | Body::Full(None)) => Ok(Vec::new()),
                Some(Body::Full(Some(b))) => Ok(b.to_vec()),
                Some(_) => Err(ErrorCode::BodyNotBuffered),
            },
        })
    }

    fn set_body(&mut self, message: Message, body: Vec<u8>) -> Result<Result<(), ErrorCode>> {
        if body.len() > MAX_PLUGIN_BODY {
            return Ok(Err(ErrorCode::BodyTooLarge));
        }
        self.note_change(message);
        let ex = self.ex()?;
        Ok(match message {
            Message::Request => {
                ex.set_request_body(body);
                Ok(())
            }
            Message::Response => match ex.response.as_mut() {
                None => Err(ErrorCode::NoResponse),
                Some(response) => {
                    let len = body.len();
                    *response.body_mut() = Body::full(Bytes::from(body));
                    let headers = response.headers_mut();
                    headers.remove(TRANSFER_ENCODING);
                    headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
                    Ok(())
                }
            },
        })
    }
}

/// A plugin's `set-header`, checks included (fuzzing).
#[cfg(feature = "fuzzing")]
pub(in crate::plugin) fn fuzz_set_header(
    headers: &mut HeaderMap,
    field: &str,
    v: Vec<u8>,
) -> Result<(), ErrorCode> {
    set(headers, field, v, true)
}
