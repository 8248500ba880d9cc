//! The response phase: plugins' `on-response`, in reverse order, over the plugins whose
//! `on-request` ran.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::CONTENT_LENGTH;
use http::{HeaderValue, Response, Version};
use http_body_util::BodyExt;

use super::{Gateway, error_response};
use crate::body::{Body, ChunkStream};
use crate::error::HttpError;
use crate::plugin::{Exchange, Ran};

/// `on-response` of every plugin whose `on-request` ran (at least one: the session calls this only
/// then), in reverse order, with the body buffered first if one of them asked for it.
pub(super) async fn on_response(
    gateway: &Arc<Gateway>,
    ex: &mut Box<Exchange>,
    ran: Ran,
    response: Response<Body>,
    version: Version,
) -> Response<Body> {
    let response = if gateway.plugins.wants_response_body(ran) {
        match buffer_response(response, gateway.limits.plugin_body_size).await {
            Ok(Buffered::Whole(r)) => r,
            Ok(Buffered::TooLarge(r)) => {
                ex.response_too_large = true;
                r
            }
            Err(e) => return error_response(&e, version),
        }
    } else {
        response
    };
    ex.response = Some(response);
    let outcome = super::off_loop::on_response(gateway, ex, ran).await;
    match (outcome, ex.response.take()) {
        (Ok(()), Some(response)) => response,
        (Err(e), _) => error_response(&e, version),
        // Plugins change the response in place; none can take it away.
        (Ok(()), None) => error_response(&HttpError::Internal, version),
    }
}

/// A response body after buffering for plugins.
enum Buffered {
    /// In memory, whole.
    Whole(Response<Body>),
    /// Larger than plugins may buffer: streamed on as it came (what was read first, then the
    /// rest), unchanged; plugins' `body` calls answer `body-too-large`.
    TooLarge(Response<Body>),
}

/// Reads a streamed response body into memory for plugins that read or change bodies, up to
/// `limit`; a larger one goes on streaming (a cache passes it through without storing it).
async fn buffer_response(response: Response<Body>, limit: u64) -> Result<Buffered, HttpError> {
    let (mut parts, body) = response.into_parts();
    if matches!(body, Body::Empty | Body::Full(_)) {
        return Ok(Buffered::Whole(Response::from_parts(parts, body)));
    }
    let mut body = body;
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            tracing::warn!(error = %e, "response body failed while buffering it for plugins");
            HttpError::BadGateway
        })?;
        if let Ok(data) = frame.into_data() {
            if (buf.len() + data.len()) as u64 > limit {
                buf.extend_from_slice(&data);
                let resumed = Resumed {
                    read: Some(buf.freeze()),
                    rest: body,
                };
                return Ok(Buffered::TooLarge(Response::from_parts(
                    parts,
                    Body::Stream(Box::new(resumed)),
                )));
            }
            buf.extend_from_slice(&data);
        }
    }
    parts.headers.remove(http::header::TRANSFER_ENCODING);
    parts
        .headers
        .insert(CONTENT_LENGTH, HeaderValue::from(buf.len()));
    Ok(Buffered::Whole(Response::from_parts(
        parts,
        Body::full(buf.freeze()),
    )))
}

/// A body whose first bytes were read already: those, then the rest as it comes.
#[derive(Debug)]
struct Resumed {
    read: Option<Bytes>,
    rest: Body,
}

impl ChunkStream for Resumed {
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<std::io::Result<Bytes>>> {
        if let Some(read) = self.read.take() {
            return Poll::Ready(Some(Ok(read)));
        }
        loop {
            return match http_body::Body::poll_frame(std::pin::Pin::new(&mut self.rest), cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => Poll::Ready(Some(Ok(data))),
                    // Trailers: nothing a client of these targets is sent.
                    Err(_) => continue,
                },
            };
        }
    }
}
