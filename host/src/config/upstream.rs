//! `[targets.NAME] upstream = [...]`: HTTP servers behind Gatehouse, balanced and health-checked
//! (nginx's `upstream` block and `proxy_*` settings, under the same names where nginx has one).

use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::errors::{ConfigError, Doc};
use super::raw::RawTarget;
use super::units::Seconds;

/// An upstream target, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    /// The servers, in the order written.
    pub servers: Vec<UpstreamServer>,
    /// How a server is picked for each request.
    pub balance: Balance,
    /// Time to establish a connection (and its TLS handshake).
    pub connect_timeout: Duration,
    /// Time from the last byte of the request to the response head (nginx's
    /// `proxy_read_timeout` for the first read).
    pub first_byte_timeout: Duration,
    /// Longest pause between two reads of the response body.
    pub read_timeout: Duration,
    /// Requests in flight to one server at most; further requests wait up to `connect_timeout`
    /// for one to finish, then try another server.
    pub max_connections: usize,
    /// Idle keep-alive connections kept per server and event loop.
    pub keepalive: usize,
    /// How long an idle keep-alive connection is kept.
    pub keepalive_timeout: Duration,
    /// Further servers tried when one fails before answering (safe requests only).
    pub retries: u32,
    /// Retries in flight allowed, as a share of the requests in flight (at least 3 at any time),
    /// so retries cannot multiply the load on struggling servers (Envoy's retry budget).
    pub retry_budget: f64,
    /// Consecutive failures after which a server is left out for `fail_timeout` (0: never).
    pub max_fails: u32,
    /// How long a failing server is left out before it is tried again.
    pub fail_timeout: Duration,
    /// Active health checks, if configured.
    pub health_check: Option<HealthCheck>,
    /// Read the whole request body before contacting a server (nginx's
    /// `proxy_request_buffering on`); default: stream it.
    pub request_buffering: bool,
    /// Send the client's `Host`; otherwise the server's own `host:port`.
    pub preserve_host: bool,
    /// Add `Via: 1.1 gatehouse` both ways.
    pub via: bool,
    /// Speak HTTP/2 to the servers (prior knowledge for `http://`, ALPN for `https://`).
    pub http2: bool,
    /// CAs to verify `https://` servers with (default: the system's).
    pub tls_ca: Option<PathBuf>,
    /// Verify `https://` servers' certificates (only for tests and trusted networks: off).
    pub tls_verify: bool,
}

/// One server of an upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamServer {
    /// Where it is.
    pub endpoint: Endpoint,
    /// Its share of the requests relative to the others (round robin and least-request).
    pub weight: u32,
    /// As written, for logs and metrics.
    pub label: String,
}

/// A server's address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `http://host:port`.
    Http {
        /// A name (resolved at connect time) or an IP address.
        host: String,
        /// The port.
        port: u16,
    },
    /// `https://host:port`, verified against `host` unless `tls_verify = false`.
    Https {
        /// A name or an IP address; also the name the certificate is checked against.
        host: String,
        /// The port.
        port: u16,
    },
    /// `unix:/path/to.sock` (HTTP over a Unix-domain socket).
    Unix(PathBuf),
}

/// How a server is picked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Balance {
    /// Smooth weighted round robin (nginx's default).
    RoundRobin,
    /// Two servers at random, the one with fewer requests in flight per weight (Envoy's default).
    LeastRequest,
    /// Consistent hashing on a key, so a key sticks to a server while it is up.
    Hash(HashKey),
}

/// What `balance = "hash"` hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// The client's IP address.
    ClientIp,
    /// A request header (lower case).
    Header(String),
    /// A cookie.
    Cookie(String),
}

/// `health_check = { ... }`: requests sent to every server in the background.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// The path requested (GET).
    pub path: String,
    /// How often.
    pub interval: Duration,
    /// How long one check may take.
    pub timeout: Duration,
    /// Statuses that count as healthy: `min..=max`.
    pub expect: (u16, u16),
    /// Failed checks in a row that mark a server down.
    pub fails: u32,
    /// Passed checks in a row that mark it up again.
    pub passes: u32,
}

impl RawTarget {
    /// The upstream-only settings this target sets.
    pub(super) fn upstream_settings_used(&self) -> Vec<&'static str> {
        [
            ("balance", self.balance.is_some()),
            ("hash_key", self.hash_key.is_some()),
            ("connect_timeout", self.connect_timeout.is_some()),
            ("first_byte_timeout", self.first_byte_timeout.is_some()),
            ("read_timeout", self.read_timeout.is_some()),
            ("max_connections", self.max_connections.is_some()),
            ("keepalive", self.keepalive.is_some()),
            ("keepalive_timeout", self.keepalive_timeout.is_some()),
            ("retries", self.retries.is_some()),
            ("retry_budget", self.retry_budget.is_some()),
            ("max_fails", self.max_fails.is_some()),
            ("fail_timeout", self.fail_timeout.is_some()),
            ("health_check", self.health_check.is_some()),
            ("request_buffering", self.request_buffering.is_some()),
            ("preserve_host", self.preserve_host.is_some()),
            ("via", self.via.is_some()),
            ("http2", self.http2.is_some()),
            ("tls_ca", self.tls_ca.is_some()),
            ("tls_verify", self.tls_verify.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect()
    }

    pub(super) fn validate_upstream(
        &self,
        list: &Spanned<Vec<Spanned<String>>>,
        key: &str,
        doc: &Doc<'_>,
        base: &Path,
        errors: &mut Vec<ConfigError>,
    ) -> Option<UpstreamConfig> {
        let before = errors.len();
        let mut misplaced = self.wsgi_settings_used();
        let statics = self.static_settings().into_iter();
        misplaced.extend(statics.filter_map(|(name, span)| span.map(|_| name)));
        if self.mount.is_some() {
            misplaced.push("mount");
        }
        if !misplaced.is_empty() {
            errors.push(doc.error(
                list.span(),
                key,
                format!(
                    "{} do(es) not apply to `upstream` targets",
                    misplaced.join(", ")
                ),
            ));
        }
        if list.get_ref().is_empty() {
            errors.push(doc.error(
                list.span(),
                &format!("{key}.upstream"),
                "name at least one server, e.g. [\"http://127.0.0.1:9000\"]",
            ));
        }
        let servers: Vec<UpstreamServer> = list
            .get_ref()
            .iter()
            .enumerate()
            .filter_map(|(i, entry)| {
                parse_server(entry.get_ref(), base)
                    .map_err(|e| {
                        errors.push(doc.error(entry.span(), &format!("{key}.upstream[{i}]"), e))
                    })
                    .ok()
            })
            .collect();
        let balance = match (
            self.balance.as_ref().map(|b| b.get_ref().as_str()),
            &self.hash_key,
        ) {
            (None | Some("round-robin"), None) => Some(Balance::RoundRobin),
            (Some("least-request"), None) => Some(Balance::LeastRequest),
            (Some("hash"), Some(k)) => match parse_hash_key(k.get_ref()) {
                Ok(k) => Some(Balance::Hash(k)),
                Err(e) => {
                    errors.push(doc.error(k.span(), &format!("{key}.hash_key"), e));
                    None
                }
            },
            (Some("hash"), None) => {
                errors.push(doc.error(
                    self.balance.as_ref().map_or(0..0, Spanned::span),
                    &format!("{key}.hash_key"),
                    "balance = \"hash\" needs hash_key: \"client_ip\", \"header:NAME\" or \"cookie:NAME\"",
                ));
                None
            }
            (_, Some(k)) => {
                errors.push(doc.error(
                    k.span(),
                    &format!("{key}.hash_key"),
                    "hash_key is for balance = \"hash\"",
                ));
                None
            }
            (Some(other), None) => {
                errors.push(doc.error(
                    self.balance.as_ref().map_or(0..0, Spanned::span),
                    &format!("{key}.balance"),
                    format!("{other:?} is not one of \"round-robin\", \"least-request\", \"hash\""),
                ));
                None
            }
        };
        let retry_budget = match &self.retry_budget {
            Some(b) if !(0.0..=1.0).contains(b.get_ref()) => {
                errors.push(doc.error(
                    b.span(),
                    &format!("{key}.retry_budget"),
                    "a share between 0.0 and 1.0 (e.g. 0.2: retries may add 20% to the requests in flight)",
                ));
                0.2
            }
            Some(b) => *b.get_ref(),
            None => 0.2,
        };
        let health_check = self.health_check.as_ref().and_then(|h| {
            let hc = h.get_ref();
            let path = hc.path.clone().unwrap_or_else(|| "/".into());
            if !path.starts_with('/') {
                errors.push(doc.error(
                    h.span(),
                    &format!("{key}.health_check.path"),
                    "a path starting with `/`",
                ));
                return None;
            }
            let expect = match hc.expect.as_deref() {
                None => (200, 399),
                Some(text) => match parse_status_range(text) {
                    Some(r) => r,
                    None => {
                        errors.push(doc.error(
                            h.span(),
                            &format!("{key}.health_check.expect"),
                            format!("{text:?} is not a status (\"200\") or a class (\"2xx\")"),
                        ));
                        return None;
                    }
                },
            };
            let interval = hc.interval.map_or(Duration::from_secs(5), |s| s.0);
            let timeout = hc.timeout.map_or(Duration::from_secs(2), |s| s.0);
            if interval < Duration::from_millis(100) || timeout < Duration::from_millis(10) {
                errors.push(doc.error(
                    h.span(),
                    &format!("{key}.health_check"),
                    "interval must be at least 100ms and timeout at least 10ms",
                ));
                return None;
            }
            Some(HealthCheck {
                path,
                interval,
                timeout,
                expect,
                fails: hc.fails.unwrap_or(2).max(1),
                passes: hc.passes.unwrap_or(2).max(1),
            })
        });
        let tls_ca = self.tls_ca.as_ref().map(|p| {
            let full = base.join(p.get_ref());
            if !full.is_file() {
                errors.push(doc.error(
                    p.span(),
                    &format!("{key}.tls_ca"),
                    format!("{} is not a readable file", full.display()),
                ));
            }
            full
        });
        if errors.len() > before {
            return None;
        }
        let secs =
            |v: &Option<Seconds>, default: u64| v.map_or(Duration::from_secs(default), |s| s.0);
        // As nginx: a lone server is never left out (there is nothing to fail over to, and
        // leaving it out would turn one client's broken request into 502s for everyone); 0
        // turns passive ejection off.
        let max_fails = if servers.len() == 1 {
            0
        } else {
            self.max_fails.unwrap_or(3)
        };
        Some(UpstreamConfig {
            servers,
            balance: balance?,
            connect_timeout: secs(&self.connect_timeout, 5),
            first_byte_timeout: secs(&self.first_byte_timeout, 60),
            read_timeout: secs(&self.read_timeout, 60),
            max_connections: self.max_connections.map_or(1024, |n| n.max(1) as usize),
            keepalive: self.keepalive.map_or(32, |n| n as usize),
            keepalive_timeout: secs(&self.keepalive_timeout, 60),
            retries: self.retries.unwrap_or(2),
            retry_budget,
            max_fails,
            fail_timeout: secs(&self.fail_timeout, 10),
            health_check,
            request_buffering: self.request_buffering.unwrap_or(false),
            preserve_host: self.preserve_host.unwrap_or(true),
            via: self.via.unwrap_or(false),
            http2: self.http2.unwrap_or(false),
            tls_ca,
            tls_verify: self.tls_verify.unwrap_or(true),
        })
    }
}

/// `http://host:port`, `https://host[:port]` or `unix:/path`, optionally followed by ` weight=N`.
fn parse_server(text: &str, base: &Path) -> Result<UpstreamServer, String> {
    let mut words = text.split_whitespace();
    let url = words.next().ok_or("an empty server")?;
    let mut weight = 1;
    for option in words {
        match option.split_once('=') {
            Some(("weight", n)) => {
                weight = n
                    .parse::<u32>()
                    .ok()
                    .filter(|w| (1..=1000).contains(w))
                    .ok_or_else(|| format!("weight {n:?}: a number from 1 to 1000"))?;
            }
            _ => {
                return Err(format!(
                    "unknown server option {option:?} (known: weight=N)"
                ));
            }
        }
    }
    let endpoint = if let Some(path) = url.strip_prefix("unix:") {
        if path.is_empty() {
            return Err("a unix socket needs a path, e.g. \"unix:/run/app.sock\"".into());
        }
        Endpoint::Unix(base.join(path))
    } else {
        let (https, rest) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
            (Some(rest), _) => (false, rest),
            (_, Some(rest)) => (true, rest),
            _ => {
                return Err(format!(
                    "{url:?}: expected http://HOST:PORT, https://HOST:PORT or unix:PATH"
                ));
            }
        };
        let authority = rest.trim_end_matches('/');
        if authority.contains('/') {
            return Err(format!(
                "{url:?}: a server is an address without a path (the request's path is sent as it came)"
            ));
        }
        let uri: http::uri::Authority = authority
            .parse()
            .map_err(|_| format!("{url:?}: not a host and port"))?;
        let host = uri
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if host.is_empty() {
            return Err(format!("{url:?}: no host"));
        }
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        if https {
            Endpoint::Https { host, port }
        } else {
            Endpoint::Http { host, port }
        }
    };
    Ok(UpstreamServer {
        endpoint,
        weight,
        label: url.to_string(),
    })
}

fn parse_hash_key(text: &str) -> Result<HashKey, String> {
    match text.split_once(':') {
        None if text == "client_ip" => Ok(HashKey::ClientIp),
        Some(("header", name)) if http::HeaderName::from_bytes(name.as_bytes()).is_ok() => {
            Ok(HashKey::Header(name.to_ascii_lowercase()))
        }
        Some(("cookie", name)) if !name.is_empty() => Ok(HashKey::Cookie(name.to_string())),
        _ => Err(format!(
            "{text:?}: expected \"client_ip\", \"header:NAME\" or \"cookie:NAME\""
        )),
    }
}

/// `"200"` or `"2xx"`.
fn parse_status_range(text: &str) -> Option<(u16, u16)> {
    let text = text.trim();
    if let Some(class) = text.strip_suffix("xx") {
        let c: u16 = class.parse().ok().filter(|c| (1..=5).contains(c))?;
        return Some((c * 100, c * 100 + 99));
    }
    let s: u16 = text.parse().ok().filter(|s| (100..=599).contains(s))?;
    Some((s, s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_parse_with_their_weights() {
        let base = Path::new("/etc/gh");
        let s = parse_server("http://10.0.0.2:9000 weight=3", base).expect("http");
        assert_eq!(
            s.endpoint,
            Endpoint::Http {
                host: "10.0.0.2".into(),
                port: 9000
            }
        );
        assert_eq!(s.weight, 3);
        let s = parse_server("https://[::1]", base).expect("https");
        assert_eq!(
            s.endpoint,
            Endpoint::Https {
                host: "::1".into(),
                port: 443
            }
        );
        let s = parse_server("unix:run/app.sock", base).expect("unix");
        assert_eq!(s.endpoint, Endpoint::Unix("/etc/gh/run/app.sock".into()));
        for bad in [
            "10.0.0.2:9000",
            "http://a:9000/api",
            "http://a:9000 weight=0",
            "http://a:9000 backup",
            "unix:",
        ] {
            assert!(parse_server(bad, base).is_err(), "{bad}");
        }
        assert_eq!(parse_status_range("2xx"), Some((200, 299)));
        assert_eq!(parse_status_range("204"), Some((204, 204)));
        assert_eq!(parse_status_range("7xx"), None);
        assert_eq!(
            parse_hash_key("header:X-User"),
            Ok(HashKey::Header("x-user".into()))
        );
    }
}
