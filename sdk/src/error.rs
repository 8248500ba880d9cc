//! Why a call on the request or the response was refused.

use crate::__private::bindings::gatehouse::plugin::types as wit;

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
    /// A streamed response body, and the filter did not set [`Filter::RESPONSE_BODY`](crate::Filter::RESPONSE_BODY).
    BodyNotBuffered,
    /// The request body in `on_request` of a filter that did not set [`Filter::REQUEST_BODY`](crate::Filter::REQUEST_BODY):
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
