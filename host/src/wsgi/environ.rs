//! The WSGI environ, built in Rust from the request head (PEP 3333).
//!
//! Values are bytes here; the worker turns each into a native `str` by decoding it as latin-1, as
//! PEP 3333 requires, so any byte in a path or header survives the trip. The worker adds the `wsgi.*`
//! objects (input, errors, file_wrapper, flags).

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};

use http::Version;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, COOKIE, HOST};
use http::request::Parts;

/// What the environ needs besides the request head.
#[derive(Debug, Clone)]
pub struct Origin<'a> {
    /// The client's IP (after trusted proxy headers); `None` on a Unix socket.
    pub remote_ip: Option<IpAddr>,
    /// The client's port, when the client is the peer itself.
    pub remote_port: Option<u16>,
    /// The local address the request came in on, for `SERVER_NAME`/`SERVER_PORT` without a Host.
    pub local: Option<SocketAddr>,
    /// `http` or `https` (after trusted proxy headers).
    pub scheme: &'a str,
    /// The mount prefix of the application (`""` at the root): `SCRIPT_NAME`.
    pub script_name: &'a str,
    /// The verified client certificate's subject, with mutual TLS: `SSL_CLIENT_S_DN`.
    pub client_subject: Option<&'a str>,
}

/// Where environ pairs go: straight into a request frame, or (in tests) a list.
pub trait Sink {
    /// One `KEY = value` pair.
    fn put(&mut self, key: &str, value: &[u8]);
    /// `HTTP_<NAME>` for header `name` (lower-case, as `http` stores it), its values joined by `separator`.
    fn put_header(
        &mut self,
        name: &str,
        values: http::header::GetAll<'_, http::HeaderValue>,
        separator: &[u8],
    );
}

impl Sink for Vec<(String, Vec<u8>)> {
    fn put(&mut self, key: &str, value: &[u8]) {
        self.push((key.to_string(), value.to_vec()));
    }

    fn put_header(
        &mut self,
        name: &str,
        values: http::header::GetAll<'_, http::HeaderValue>,
        separator: &[u8],
    ) {
        let mut key = String::with_capacity(5 + name.len());
        push_header_key(&mut key, name);
        self.push((key, join(values, separator)));
    }
}

/// `HTTP_` and the header name upper-cased with `-` as `_`.
pub fn push_header_key(key: &mut String, name: &str) {
    key.push_str("HTTP_");
    key.extend(name.chars().map(|c| {
        if c == '-' {
            '_'
        } else {
            c.to_ascii_uppercase()
        }
    }));
}

/// A repeated header's values joined (PEP 3333 / RFC 9110: `, `, or `; ` for Cookie).
pub fn join(values: http::header::GetAll<'_, http::HeaderValue>, separator: &[u8]) -> Vec<u8> {
    let mut value = Vec::new();
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            value.extend_from_slice(separator);
        }
        value.extend_from_slice(v.as_bytes());
    }
    value
}

/// Builds the CGI part of the environ as a list (what [`write()`] sends), for tests.
#[cfg(any(test, feature = "fuzzing"))]
pub fn build(req: &Parts, origin: &Origin<'_>, body_len: usize) -> Vec<(String, Vec<u8>)> {
    let mut env = Vec::with_capacity(16 + req.headers.len());
    write(req, origin, body_len, &mut env);
    env
}

/// Writes the CGI part of the environ for a request with a buffered body of `body_len` bytes.
pub fn write(req: &Parts, origin: &Origin<'_>, body_len: usize, env: &mut impl Sink) {
    env.put("REQUEST_METHOD", req.method.as_str().as_bytes());
    env.put("SCRIPT_NAME", origin.script_name.as_bytes());
    let path = req.uri.path();
    let below = path.strip_prefix(origin.script_name).unwrap_or(path);
    let decoded: std::borrow::Cow<'_, [u8]> = percent_encoding::percent_decode_str(below).into();
    env.put("PATH_INFO", &decoded);
    env.put("QUERY_STRING", req.uri.query().unwrap_or("").as_bytes());
    // HTTP/2 requests are described as HTTP/1.1: PEP 3333 apps know only the two.
    env.put(
        "SERVER_PROTOCOL",
        if req.version == Version::HTTP_10 {
            b"HTTP/1.0"
        } else {
            b"HTTP/1.1"
        },
    );

    let (name, port) = server_name_port(req, origin);
    env.put("SERVER_NAME", name.as_bytes());
    env.put("SERVER_PORT", port.as_bytes());
    match origin.remote_ip {
        Some(ip) => env.put("REMOTE_ADDR", crate::peer::ip_text(ip).as_bytes()),
        None => env.put("REMOTE_ADDR", b"unix"),
    }
    if let Some(port) = origin.remote_port {
        env.put("REMOTE_PORT", itoa::Buffer::new().format(port).as_bytes());
    }
    env.put("wsgi.url_scheme", origin.scheme.as_bytes());
    if origin.scheme == "https" {
        // What Apache's mod_ssl and nginx's fastcgi_params set; Django and Werkzeug read them.
        env.put("HTTPS", b"on");
    }
    if let Some(subject) = origin.client_subject {
        // nginx's $ssl_client_s_dn and $ssl_client_verify, under mod_ssl's names.
        env.put("SSL_CLIENT_S_DN", subject.as_bytes());
        env.put("SSL_CLIENT_VERIFY", b"SUCCESS");
    }

    if let Some(ct) = req.headers.get(CONTENT_TYPE) {
        env.put("CONTENT_TYPE", ct.as_bytes());
    }
    // The body is fully buffered, so a chunked body has a known length too: frameworks such as
    // Django read exactly CONTENT_LENGTH bytes.
    if req.headers.contains_key(CONTENT_LENGTH) || body_len > 0 {
        env.put(
            "CONTENT_LENGTH",
            itoa::Buffer::new().format(body_len).as_bytes(),
        );
    }

    // `keys()` yields each name once, whatever the number of values.
    for name in req.headers.keys() {
        // `X_Forwarded_For` and `X-Forwarded-For` would both become HTTP_X_FORWARDED_FOR; names with
        // underscores are dropped (as nginx and gunicorn do) so one cannot spoof the other.
        if name == CONTENT_TYPE || name == CONTENT_LENGTH || name.as_str().contains('_') {
            continue;
        }
        let separator: &[u8] = if name == COOKIE { b"; " } else { b", " };
        env.put_header(name.as_str(), req.headers.get_all(name), separator);
    }
    // HTTP/2 carries the host as the `:authority` pseudo-header; apps (Django's ALLOWED_HOSTS, URL
    // building) look for HTTP_HOST.
    if !req.headers.contains_key(HOST) {
        if let Some(authority) = req.uri.authority() {
            env.put("HTTP_HOST", authority.as_str().as_bytes());
        }
    }
}

/// `SERVER_NAME`/`SERVER_PORT`: from the Host header (or the HTTP/2 authority), else the local address.
fn server_name_port<'a>(req: &'a Parts, origin: &Origin<'_>) -> (Cow<'a, str>, Cow<'a, str>) {
    let default_port = if origin.scheme == "https" {
        "443"
    } else {
        "80"
    };
    let host = req
        .headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()));
    if let Some(host) = host.filter(|h| !h.is_empty()) {
        // `[::1]:8000`, `example.com:8000`, `example.com`
        let (name, port) = match host.rfind(':') {
            Some(i) if !host[i..].contains(']') => (&host[..i], &host[i + 1..]),
            _ => (host, ""),
        };
        let port = if port.is_empty() { default_port } else { port };
        return (name.into(), port.into());
    }
    match origin.local {
        Some(addr) => (addr.ip().to_string().into(), addr.port().to_string().into()),
        None => ("localhost".into(), default_port.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn environ(req: Request<()>, script_name: &str, body_len: usize) -> Vec<(String, Vec<u8>)> {
        let (parts, ()) = req.into_parts();
        let origin = Origin {
            remote_ip: Some("10.1.2.3".parse().expect("ip")),
            remote_port: Some(5555),
            local: Some("127.0.0.1:8000".parse().expect("addr")),
            scheme: "http",
            client_subject: None,
            script_name,
        };
        build(&parts, &origin, body_len)
    }

    fn get<'a>(env: &'a [(String, Vec<u8>)], key: &str) -> Option<&'a [u8]> {
        env.iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_slice())
    }

    #[test]
    fn cgi_keys() {
        let req = Request::builder()
            .method("POST")
            .uri("/app/caf%C3%A9/x%2Fy?a=1&b=%20")
            .header("Host", "example.com:8080")
            .header("Content-Type", "text/plain")
            .header("Content-Length", "5")
            .body(())
            .expect("req");
        let env = environ(req, "/app", 5);
        assert_eq!(get(&env, "REQUEST_METHOD"), Some(&b"POST"[..]));
        assert_eq!(get(&env, "SCRIPT_NAME"), Some(&b"/app"[..]));
        // Percent-decoded to bytes (the worker decodes them as latin-1, so é arrives as 'Ã©').
        assert_eq!(get(&env, "PATH_INFO"), Some("/café/x/y".as_bytes()));
        assert_eq!(
            get(&env, "QUERY_STRING"),
            Some(&b"a=1&b=%20"[..]),
            "raw, not decoded"
        );
        assert_eq!(get(&env, "SERVER_NAME"), Some(&b"example.com"[..]));
        assert_eq!(get(&env, "SERVER_PORT"), Some(&b"8080"[..]));
        assert_eq!(get(&env, "SERVER_PROTOCOL"), Some(&b"HTTP/1.1"[..]));
        assert_eq!(get(&env, "REMOTE_ADDR"), Some(&b"10.1.2.3"[..]));
        assert_eq!(get(&env, "REMOTE_PORT"), Some(&b"5555"[..]));
        assert_eq!(get(&env, "CONTENT_TYPE"), Some(&b"text/plain"[..]));
        assert_eq!(get(&env, "CONTENT_LENGTH"), Some(&b"5"[..]));
        assert_eq!(
            get(&env, "HTTP_CONTENT_TYPE"),
            None,
            "no HTTP_ prefix for these two"
        );
        assert_eq!(get(&env, "HTTP_CONTENT_LENGTH"), None);
        assert_eq!(get(&env, "HTTP_HOST"), Some(&b"example.com:8080"[..]));
        assert_eq!(get(&env, "wsgi.url_scheme"), Some(&b"http"[..]));
    }

    #[test]
    fn absent_when_absent_and_server_never_empty() {
        let req = Request::builder()
            .version(Version::HTTP_10)
            .uri("/")
            .body(())
            .expect("req");
        let env = environ(req, "", 0);
        assert_eq!(get(&env, "CONTENT_TYPE"), None);
        assert_eq!(get(&env, "CONTENT_LENGTH"), None);
        assert_eq!(get(&env, "SCRIPT_NAME"), Some(&b""[..]));
        assert_eq!(get(&env, "PATH_INFO"), Some(&b"/"[..]));
        assert_eq!(get(&env, "QUERY_STRING"), Some(&b""[..]));
        assert_eq!(get(&env, "SERVER_NAME"), Some(&b"127.0.0.1"[..]));
        assert_eq!(get(&env, "SERVER_PORT"), Some(&b"8000"[..]));
        assert_eq!(get(&env, "SERVER_PROTOCOL"), Some(&b"HTTP/1.0"[..]));
        let req = Request::builder()
            .uri("/")
            .header("Host", "[::1]")
            .body(())
            .expect("req");
        let env = environ(req, "", 0);
        assert_eq!(get(&env, "SERVER_NAME"), Some(&b"[::1]"[..]));
        assert_eq!(get(&env, "SERVER_PORT"), Some(&b"80"[..]));
    }

    #[test]
    fn repeated_headers_are_joined_and_underscored_names_dropped() {
        let req = Request::builder()
            .uri("/")
            .header("Accept", "text/html")
            .header("Accept", "application/json")
            .header("Cookie", "a=1")
            .header("Cookie", "b=2")
            .header("X_Forwarded_For", "6.6.6.6")
            .header("X-Forwarded-For", "1.1.1.1")
            .header(
                "X-Raw",
                http::HeaderValue::from_bytes(b"caf\xe9").expect("obs-text"),
            )
            .version(Version::HTTP_2)
            .body(())
            .expect("req");
        let env = environ(req, "", 0);
        assert_eq!(
            get(&env, "HTTP_ACCEPT"),
            Some(&b"text/html, application/json"[..])
        );
        assert_eq!(get(&env, "HTTP_COOKIE"), Some(&b"a=1; b=2"[..]));
        assert_eq!(get(&env, "HTTP_X_FORWARDED_FOR"), Some(&b"1.1.1.1"[..]));
        assert_eq!(
            env.iter()
                .filter(|(k, _)| k == "HTTP_X_FORWARDED_FOR")
                .count(),
            1
        );
        assert_eq!(
            get(&env, "HTTP_X_RAW"),
            Some(&b"caf\xe9"[..]),
            "bytes kept for latin-1 decoding"
        );
        assert_eq!(get(&env, "SERVER_PROTOCOL"), Some(&b"HTTP/1.1"[..]));
    }

    #[test]
    fn encoding_straight_into_a_frame_matches_the_list() {
        let req = Request::builder()
            .uri("/a%20b?q")
            .header("Accept", "a")
            .header("Accept", "b")
            .header("Cookie", "x=1")
            .header("Cookie", "y=2")
            .header("X-Long-Name", "v")
            .body(())
            .expect("req");
        let (parts, ()) = req.into_parts();
        let origin = Origin {
            remote_ip: None,
            remote_port: None,
            local: None,
            scheme: "https",
            client_subject: Some("CN=alice,O=Example"),
            script_name: "",
        };
        let listed = build(&parts, &origin, 3);
        let mut payload = Vec::new();
        let mut encoder = crate::wsgi::frame::PairEncoder::new(&mut payload);
        write(&parts, &origin, 3, &mut encoder);
        encoder.finish();
        crate::wsgi::frame::encode_body(&mut payload, Ok(b"abc"));
        let decoded = crate::wsgi::frame::decode_request(payload.into()).expect("decodes");
        assert_eq!(decoded.environ.to_vec(), listed);
        assert_eq!(&decoded.body[..], b"abc");
        assert_eq!(get(&listed, "HTTP_X_LONG_NAME"), Some(&b"v"[..]));
        assert_eq!(get(&listed, "HTTP_COOKIE"), Some(&b"x=1; y=2"[..]));
    }

    #[test]
    fn http2_authority_becomes_http_host() {
        let req = Request::builder()
            .uri("https://example.com:8443/x")
            .version(Version::HTTP_2)
            .body(())
            .expect("req");
        let env = environ(req, "", 0);
        assert_eq!(get(&env, "HTTP_HOST"), Some(&b"example.com:8443"[..]));
        assert_eq!(get(&env, "SERVER_NAME"), Some(&b"example.com"[..]));
        let req = Request::builder()
            .uri("/x")
            .header("Host", "a.test")
            .body(())
            .expect("req");
        assert_eq!(
            environ(req, "", 0)
                .iter()
                .filter(|(k, _)| k == "HTTP_HOST")
                .count(),
            1
        );
    }

    #[test]
    fn chunked_body_gets_its_buffered_length() {
        let req = Request::builder()
            .method("POST")
            .uri("/")
            .header("Transfer-Encoding", "chunked")
            .body(())
            .expect("req");
        let env = environ(req, "", 11);
        assert_eq!(get(&env, "CONTENT_LENGTH"), Some(&b"11"[..]));
    }
}
