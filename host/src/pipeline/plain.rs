//! What a plain-HTTP listener answers before any plugin: the ACME HTTP-01 validation of a pending
//! order, and, on a listener with `redirect_https`, a redirect of everything else to HTTPS.

use std::sync::Arc;

use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, LOCATION};
use http::{HeaderValue, Request, Response, StatusCode};

use crate::body::Body;
use crate::error::HttpError;
use crate::tls::acme::Http01Tokens;

/// Where an ACME CA fetches HTTP-01 key authorizations (RFC 8555 section 8.3).
const ACME_PREFIX: &str = "/.well-known/acme-challenge/";

/// The answers a plain listener gives itself.
#[derive(Debug, Default)]
pub struct PlainListener {
    /// Redirect to HTTPS on this port (443 is left out of the URL).
    pub redirect_https: Option<u16>,
    /// Pending HTTP-01 validations.
    pub acme: Option<Arc<Http01Tokens>>,
}

impl PlainListener {
    /// Whether this listener answers anything itself.
    pub fn is_active(&self) -> bool {
        self.redirect_https.is_some() || self.acme.is_some()
    }
}

/// The listener's own answer to `req`, if it has one (the head is normalised).
pub(super) fn answer<B>(
    plain: &PlainListener,
    req: &Request<B>,
) -> Option<Result<Response<Body>, HttpError>> {
    let path = req.uri().path();
    if let (Some(tokens), Some(token)) = (&plain.acme, path.strip_prefix(ACME_PREFIX)) {
        return Some(match tokens.get(token) {
            Some(key_authorization) => Ok(text(StatusCode::OK, key_authorization, None)),
            None => Err(HttpError::NotFound),
        });
    }
    let port = plain.redirect_https?;
    let Some(host) = req.headers().get(HOST).and_then(|h| h.to_str().ok()) else {
        return Some(Err(HttpError::BadRequest("no Host to redirect to")));
    };
    let name = strip_port(host);
    let mut location = String::with_capacity(host.len() + path.len() + 16);
    location.push_str("https://");
    location.push_str(name);
    if port != 443 {
        location.push(':');
        location.push_str(itoa::Buffer::new().format(port));
    }
    // `OPTIONS *` has no path: it goes to the root.
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .filter(|p| p.starts_with('/'))
        .unwrap_or("/");
    location.push_str(target);
    // 308 keeps the method and body (a 301 turns a POST into a GET in browsers).
    Some(Ok(text(
        StatusCode::PERMANENT_REDIRECT,
        format!("redirecting to {location}\n"),
        Some(location),
    )))
}

/// The host without its port (`[::1]:80` keeps its brackets).
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

fn text(status: StatusCode, body: String, location: Option<String>) -> Response<Body> {
    let len = body.len();
    let mut response = Response::new(Body::full(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
    if let Some(location) = location.and_then(|l| HeaderValue::from_str(&l).ok()) {
        headers.insert(LOCATION, location);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(host: &str, target: &str) -> Request<()> {
        Request::builder()
            .uri(target)
            .header(HOST, host)
            .body(())
            .expect("request")
    }

    #[test]
    fn redirects_keep_the_host_path_and_query_and_name_the_https_port() {
        let plain = PlainListener {
            redirect_https: Some(8443),
            acme: None,
        };
        let r = answer(&plain, &req("example.com:8080", "/a/b?x=1"))
            .expect("an answer")
            .expect("a redirect");
        assert_eq!(r.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(r.headers()[LOCATION], "https://example.com:8443/a/b?x=1");
        let plain = PlainListener {
            redirect_https: Some(443),
            acme: None,
        };
        let r = answer(&plain, &req("[::1]:80", "/"))
            .expect("an answer")
            .expect("a redirect");
        assert_eq!(r.headers()[LOCATION], "https://[::1]/");
    }

    #[test]
    fn acme_tokens_are_answered_even_on_a_redirecting_listener() {
        let tokens = Arc::new(Http01Tokens::default());
        tokens.insert("tok", "tok.thumb");
        let plain = PlainListener {
            redirect_https: Some(443),
            acme: Some(Arc::clone(&tokens)),
        };
        let r = answer(&plain, &req("a.example", "/.well-known/acme-challenge/tok"))
            .expect("an answer")
            .expect("the token");
        assert_eq!(r.status(), StatusCode::OK);
        assert!(matches!(
            answer(
                &plain,
                &req("a.example", "/.well-known/acme-challenge/other")
            ),
            Some(Err(HttpError::NotFound))
        ));
    }
}
