//! The admit phase: refuse what must never reach a target, before any of it is read or routed.

use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST};
use http::{HeaderMap, Method, Request, Version};

use super::verdicts::HeadVerdict;
use crate::config::Limits;
use crate::error::HttpError;

/// Checks one request head against the limits and the smuggling rules.
pub fn admit<B>(
    req: &Request<B>,
    verdict: Option<HeadVerdict>,
    limits: &Limits,
) -> Result<(), HttpError> {
    match verdict {
        Some(HeadVerdict::Reject(why)) => return Err(HttpError::BadRequest(why)),
        Some(HeadVerdict::TooLarge) => return Err(HttpError::HeadersTooLarge),
        Some(HeadVerdict::Clean) | None => {}
    }
    check_method(req.method())?;
    check_target(req, limits.max_uri_length)?;
    if req.headers().len() > limits.max_headers {
        return Err(HttpError::HeadersTooLarge);
    }
    check_headers(req.headers(), limits.max_header_field_size)?;
    if let Some(len) = content_length(req.headers())? {
        if len > limits.max_body_size {
            return Err(HttpError::PayloadTooLarge);
        }
    }
    Ok(())
}

/// Methods are upper-case tokens, as nginx requires: `get` or `-bl` are refused rather than guessed at.
fn check_method(method: &Method) -> Result<(), HttpError> {
    let m = method.as_str();
    if m.is_empty()
        || m.len() > 32
        || !m
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b == b'_' || b == b'-')
    {
        return Err(HttpError::BadRequest("invalid method"));
    }
    Ok(())
}

/// The four request-target forms of RFC 9112 section 3.2, each only where it belongs, and the length limit.
fn check_target<B>(req: &Request<B>, max_len: usize) -> Result<(), HttpError> {
    let uri = req.uri();
    let len = uri.path_and_query().map_or(0, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.scheme_str().map_or(0, str::len);
    if len > max_len {
        return Err(HttpError::UriTooLong);
    }
    if req.method() == Method::CONNECT {
        return if uri.scheme().is_none() && uri.authority().is_some() {
            Ok(())
        } else {
            Err(HttpError::BadRequest("CONNECT needs an authority target"))
        };
    }
    if uri.scheme().is_some() {
        return Ok(()); // absolute-form
    }
    if uri.authority().is_some() && req.version() < Version::HTTP_2 {
        return Err(HttpError::BadRequest(
            "authority-form target outside CONNECT",
        ));
    }
    match uri.path() {
        "*" if req.method() == Method::OPTIONS => Ok(()),
        "*" => Err(HttpError::BadRequest(
            "asterisk-form target outside OPTIONS",
        )),
        p if p.starts_with('/') => Ok(()),
        _ => Err(HttpError::BadRequest("request target must start with /")),
    }
}

/// Field values with control characters, oversized fields, and repeats of fields that must be single
/// are refused.
fn check_headers(headers: &HeaderMap, max_field: usize) -> Result<(), HttpError> {
    for (name, value) in headers {
        if value
            .as_bytes()
            .iter()
            .any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
        {
            return Err(HttpError::BadRequest("control character in a header value"));
        }
        // Measured as the line on the wire: `Name: value\r\n`.
        if name.as_str().len() + 2 + value.len() + 2 > max_field {
            return Err(HttpError::HeadersTooLarge);
        }
    }
    for single in [HOST, CONTENT_LENGTH, CONTENT_TYPE] {
        let mut values = headers.get_all(&single).iter();
        if values.next().is_some() && values.next().is_some() {
            return Err(HttpError::BadRequest(
                "repeated Host, Content-Length or Content-Type",
            ));
        }
    }
    Ok(())
}

/// The declared body length; only plain digits are a length.
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, HttpError> {
    let Some(value) = headers.get(CONTENT_LENGTH) else {
        return Ok(None);
    };
    let bytes = value.as_bytes();
    if bytes.is_empty() || !bytes.iter().all(u8::is_ascii_digit) {
        return Err(HttpError::BadRequest(
            "Content-Length is not a plain number",
        ));
    }
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Some)
        .ok_or(HttpError::BadRequest("Content-Length out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, uri: &str) -> Request<()> {
        Request::builder()
            .method(method)
            .uri(uri)
            .body(())
            .expect("request")
    }

    fn limits() -> Limits {
        Limits::default()
    }

    #[test]
    fn methods() {
        assert!(admit(&req("GET", "/"), None, &limits()).is_ok());
        assert!(admit(&req("PROPFIND", "/"), None, &limits()).is_ok());
        assert_eq!(
            admit(&req("get", "/"), None, &limits()),
            Err(HttpError::BadRequest("invalid method"))
        );
        assert_eq!(
            admit(&req("-bl", "/"), None, &limits()),
            Err(HttpError::BadRequest("invalid method"))
        );
    }

    #[test]
    fn target_forms() {
        assert!(admit(&req("OPTIONS", "*"), None, &limits()).is_ok());
        assert!(admit(&req("GET", "*"), None, &limits()).is_err());
        assert!(admit(&req("CONNECT", "example.com:443"), None, &limits()).is_ok());
        assert!(admit(&req("GET", "example.com:443"), None, &limits()).is_err());
        assert!(admit(&req("GET", "http://example.com/x"), None, &limits()).is_ok());
    }

    #[test]
    fn uri_limit() {
        let r = req("GET", &format!("/{}", "a".repeat(100)));
        let small = Limits {
            max_uri_length: 64,
            ..Limits::default()
        };
        assert_eq!(admit(&r, None, &small), Err(HttpError::UriTooLong));
        assert!(admit(&r, None, &limits()).is_ok());
    }

    #[test]
    fn header_rules() {
        let mut r = req("GET", "/");
        r.headers_mut()
            .insert("x-big", "a".repeat(9000).parse().expect("v"));
        assert_eq!(admit(&r, None, &limits()), Err(HttpError::HeadersTooLarge));
        let mut r = req("GET", "/");
        r.headers_mut().append(HOST, "a".parse().expect("v"));
        r.headers_mut().append(HOST, "b".parse().expect("v"));
        assert!(admit(&r, None, &limits()).is_err());
        let mut r = req("POST", "/");
        r.headers_mut()
            .insert(CONTENT_LENGTH, "+1".parse().expect("v"));
        assert!(admit(&r, None, &limits()).is_err());
        let mut r = req("POST", "/");
        r.headers_mut().insert(
            CONTENT_LENGTH,
            (20u64 << 20).to_string().parse().expect("v"),
        );
        assert_eq!(admit(&r, None, &limits()), Err(HttpError::PayloadTooLarge));
    }

    #[test]
    fn wire_verdicts_win() {
        assert_eq!(
            admit(&req("GET", "/"), Some(HeadVerdict::TooLarge), &limits()),
            Err(HttpError::HeadersTooLarge)
        );
        assert!(matches!(
            admit(&req("GET", "/"), Some(HeadVerdict::Reject("x")), &limits()),
            Err(HttpError::BadRequest("x"))
        ));
    }
}
