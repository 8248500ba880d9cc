//! The normalise phase, right after admit: the request's host and path are rewritten once into the
//! form every later phase reads ([`crate::request_target`]), and the host rules of RFC 9112
//! section 3.2 and RFC 9113 section 8.3.1 are applied.

use http::header::HOST;
use http::{HeaderValue, Request, Version};

use crate::error::HttpError;
use crate::request_target::{normalise_host, normalise_path, replace_path_and_query};

/// Puts the head in normal form, or says why it has none:
/// - HTTP/1.1 without `Host` is a 400 (HTTP/1.0 may omit it); repeats were refused by admit;
/// - an absolute-form target's authority wins over `Host`, which is set to it;
/// - HTTP/2's `:authority` and a `Host` that disagree are a 400; `Host` is set to the authority, so
///   every reader finds the host in one place;
/// - the host and the path are normalised; an invalid host or a path with no normal form is a 400.
pub fn normalise<B>(req: &mut Request<B>) -> Result<(), HttpError> {
    let authority = req.uri().authority().map(|a| a.as_str().to_owned());
    let header = match req.headers().get(HOST) {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| HttpError::BadRequest("invalid host"))?
                .to_owned(),
        ),
        None => None,
    };
    let host = match (req.version(), authority, header) {
        (Version::HTTP_2 | Version::HTTP_3, Some(authority), Some(header)) => {
            if canonical(&authority)? != canonical(&header)? {
                return Err(HttpError::BadRequest(
                    ":authority and Host name different hosts",
                ));
            }
            Some(authority)
        }
        (_, Some(authority), _) => Some(authority),
        (_, None, Some(header)) => Some(header),
        (Version::HTTP_11, None, None) => {
            return Err(HttpError::BadRequest("HTTP/1.1 request without Host"));
        }
        (_, None, None) => None,
    };
    if let Some(host) = host {
        let normal = normalise_host(&host)
            .map_err(HttpError::BadRequest)?
            .unwrap_or(host);
        let value =
            HeaderValue::from_str(&normal).map_err(|_| HttpError::BadRequest("invalid host"))?;
        req.headers_mut().insert(HOST, value);
    }
    // `*` (OPTIONS) and authority-form (CONNECT) targets have no path to normalise.
    if req.uri().path().starts_with('/') {
        if let Some(path) = normalise_path(req.uri().path()).map_err(HttpError::BadRequest)? {
            let query = req.uri().query().map(str::to_owned);
            replace_path_and_query(req.uri_mut(), &path, query.as_deref())
                .map_err(|()| HttpError::BadRequest("invalid path"))?;
        }
    }
    Ok(())
}

fn canonical(host: &str) -> Result<String, HttpError> {
    Ok(normalise_host(host)
        .map_err(HttpError::BadRequest)?
        .unwrap_or_else(|| host.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(
        version: Version,
        uri: &str,
        hosts: &[&str],
    ) -> Result<(String, Option<String>), HttpError> {
        let mut b = Request::builder().version(version).uri(uri);
        for h in hosts {
            b = b.header(HOST, *h);
        }
        let mut req = b.body(()).expect("request");
        normalise(&mut req)?;
        Ok((
            req.uri().path().to_string(),
            req.headers()
                .get(HOST)
                .map(|v| v.to_str().expect("ascii").to_string()),
        ))
    }

    #[test]
    fn host_rules() {
        assert!(run(Version::HTTP_11, "/", &[]).is_err());
        assert_eq!(run(Version::HTTP_10, "/", &[]), Ok(("/".into(), None)));
        assert_eq!(
            run(Version::HTTP_11, "/", &["Admin.Example.com."]),
            Ok(("/".into(), Some("admin.example.com".into())))
        );
        // Absolute form: the target's authority wins.
        assert_eq!(
            run(
                Version::HTTP_11,
                "http://real.example/x",
                &["other.example"]
            ),
            Ok(("/x".into(), Some("real.example".into())))
        );
        assert_eq!(
            run(Version::HTTP_2, "https://a.example/x", &["A.example."]),
            Ok(("/x".into(), Some("a.example".into())))
        );
        assert!(run(Version::HTTP_2, "https://a.example/x", &["b.example"]).is_err());
        assert_eq!(
            run(Version::HTTP_2, "https://a.example/x", &[]),
            Ok(("/x".into(), Some("a.example".into())))
        );
        assert!(run(Version::HTTP_11, "/", &["bad host"]).is_err());
    }

    #[test]
    fn paths_rewritten_once() {
        assert_eq!(
            run(Version::HTTP_11, "/%61dmin/./x?q=%61", &["h"]),
            Ok(("/admin/x".into(), Some("h".into())))
        );
        assert!(run(Version::HTTP_11, "/a%2fb", &["h"]).is_err());
        assert!(run(Version::HTTP_11, "/../etc/passwd", &["h"]).is_err());
    }
}
