//! The response phase: plugins' `on-response`, in reverse order, over the plugins whose
//! `on-request` ran.

use bytes::BytesMut;
use http::header::CONTENT_LENGTH;
use http::{HeaderValue, Response, Version};
use http_body_util::BodyExt;

use super::{Gateway, error_response};
use crate::body::Body;
use crate::error::HttpError;
use crate::plugin::{Exchange, Ran};

/// `on-response` of every plugin whose `on-request` ran (at least one: the session calls this only
/// then), in reverse order, with the body buffered first if one of them asked for it.
pub(super) async fn on_response(
    gateway: &Gateway,
    ex: &mut Box<Exchange>,
    ran: Ran,
    response: Response<Body>,
    version: Version,
) -> Response<Body> {
    let response = if gateway.plugins.wants_response_body(ran) {
        match buffer_response(response, gateway.limits.plugin_body_size).await {
            Ok(r) => r,
            Err(e) => return error_response(&e, version),
        }
    } else {
        response
    };
    ex.response = Some(response);
    let outcome = gateway.plugins.on_response(ex, ran);
    match (outcome, ex.response.take()) {
        (Ok(()), Some(response)) => response,
        (Err(e), _) => error_response(&e, version),
        // Plugins change the response in place; none can take it away.
        (Ok(()), None) => error_response(&HttpError::Internal, version),
    }
}

/// Reads a streamed response body into memory for plugins that change bodies.
async fn buffer_response(
    response: Response<Body>,
    limit: u64,
) -> Result<Response<Body>, HttpError> {
    let (mut parts, body) = response.into_parts();
    if matches!(body, Body::Empty | Body::Full(_)) {
        return Ok(Response::from_parts(parts, body));
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
                tracing::error!(
                    limit,
                    "response body larger than server.limits.plugin_body_size, which plugins with RESPONSE_BODY may buffer"
                );
                return Err(HttpError::Internal);
            }
            buf.extend_from_slice(&data);
        }
    }
    parts.headers.remove(http::header::TRANSFER_ENCODING);
    parts
        .headers
        .insert(CONTENT_LENGTH, HeaderValue::from(buf.len()));
    Ok(Response::from_parts(parts, Body::full(buf.freeze())))
}
