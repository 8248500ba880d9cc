//! The one place where request errors become HTTP statuses.

use http::StatusCode;

/// Why a request could not be served; each variant has exactly one status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// The request is malformed or ambiguous (smuggling shapes included); the connection is closed.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// The request target is longer than `max_uri_length`.
    #[error("request target too long")]
    UriTooLong,
    /// The request head is larger than `max_header_size`.
    #[error("request header fields too large")]
    HeadersTooLarge,
    /// The body is larger than `max_body_size`.
    #[error("request body too large")]
    PayloadTooLarge,
    /// The client did not send the body within `body_read_timeout`.
    #[error("timed out reading the request body")]
    RequestTimeout,
    /// The thing exists but may not be shown (a directory without index and without autoindex).
    #[error("forbidden")]
    Forbidden,
    /// Nothing is there (or it is hidden).
    #[error("not found")]
    NotFound,
    /// No plugin chose a target and there is no default target.
    #[error("no route")]
    NoRoute,
    /// The target does not support this method; the value is the `Allow` header.
    #[error("method not allowed")]
    MethodNotAllowed(&'static str),
    /// The requested byte range lies outside the file; the value is the file's length.
    #[error("range not satisfiable")]
    RangeNotSatisfiable(u64),
    /// The worker behind a target died or answered nonsense.
    #[error("bad gateway")]
    BadGateway,
    /// The target's queue is full (or no worker came up in time).
    #[error("service unavailable")]
    ServiceUnavailable,
    /// The request ran past the target's `timeout`.
    #[error("gateway timeout")]
    GatewayTimeout,
    /// Something failed on our side; the details are logged, never sent.
    #[error("internal error")]
    Internal,
}

impl HttpError {
    /// The status sent to the client.
    pub fn status(&self) -> StatusCode {
        match self {
            HttpError::BadRequest(_) => StatusCode::BAD_REQUEST,
            HttpError::UriTooLong => StatusCode::URI_TOO_LONG,
            HttpError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            HttpError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            HttpError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            HttpError::Forbidden => StatusCode::FORBIDDEN,
            HttpError::NotFound | HttpError::NoRoute => StatusCode::NOT_FOUND,
            HttpError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            HttpError::RangeNotSatisfiable(_) => StatusCode::RANGE_NOT_SATISFIABLE,
            HttpError::BadGateway => StatusCode::BAD_GATEWAY,
            HttpError::ServiceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            HttpError::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
            HttpError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Whether the connection must close after this answer: after a framing or read error the byte
    /// stream can no longer be trusted to hold the next request where we think it does.
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            HttpError::BadRequest(_)
                | HttpError::UriTooLong
                | HttpError::HeadersTooLarge
                | HttpError::PayloadTooLarge
                | HttpError::RequestTimeout
        )
    }
}

/// An error and its causes on one line, each cause once (many errors already name their cause in
/// their own message; "client error (Connect)" alone does not say the connection was refused).
pub fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let message = cause.to_string();
        if !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        source = cause.source();
    }
    text
}
