//! The head sent to a server and the head sent back: hop-by-hop fields removed both ways (RFC 9110
//! section 7.6.1), the client named in `X-Forwarded-For`/`-Proto`/`-Host` or `Forwarded` per the
//! trust settings, `Via` if asked for, and the `Upgrade` handshake passed through.

use http::header::{
    CONNECTION, EXPECT, HOST, HeaderMap, HeaderName, HeaderValue, PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE, VIA,
};
use http::request::Parts;

use crate::config::{ForwardedHeader, Forwarding};
use crate::peer::Peer;

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
const VIA_VALUE: HeaderValue = HeaderValue::from_static("1.1 gatehouse");

/// Whether the client asks for a WebSocket on an HTTP/1.1 connection. Other protocols are not
/// offered to servers: a server that accepted `h2c` would take every later request on the
/// connection past the plugins.
pub fn wants_upgrade(req: &Parts) -> bool {
    req.version == http::Version::HTTP_11
        && req
            .headers
            .get(UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"))
        && connection_has(&req.headers, "upgrade")
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Removes the fields that belong to one connection, those `Connection` names included.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        CONNECTION,
        KEEP_ALIVE,
        PROXY_CONNECTION,
        PROXY_AUTHENTICATE,
        PROXY_AUTHORIZATION,
        TE,
        TRAILER,
        TRANSFER_ENCODING,
        UPGRADE,
    ] {
        headers.remove(name);
    }
}

/// What the request head to a server is built from.
pub struct Outgoing<'a> {
    /// The trust settings (`[server] forwarded_allow_ips`, `forwarded_header`).
    pub forwarding: &'a Forwarding,
    /// Send the client's `Host` (else the server's authority).
    pub preserve_host: bool,
    /// The server's `host:port`, for `Host` when it is not preserved.
    pub server_authority: Option<&'a str>,
    /// Add `Via`.
    pub via: bool,
}

/// The header fields sent to a server for `req` from `peer`.
pub fn request_headers(req: &Parts, peer: &Peer, out: &Outgoing<'_>) -> HeaderMap {
    let mut headers = req.headers.clone();
    let upgrade = wants_upgrade(req)
        .then(|| headers.get(UPGRADE).cloned())
        .flatten();
    strip_hop_by_hop(&mut headers);
    // We answer `Expect: 100-continue` ourselves (when the body is first read).
    headers.remove(EXPECT);
    if let Some(protocol) = upgrade {
        headers.insert(UPGRADE, protocol);
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
    let host = req.headers.get(HOST).cloned();
    if !out.preserve_host
        && let Some(authority) = out
            .server_authority
            .and_then(|a| HeaderValue::from_str(a).ok())
    {
        headers.insert(HOST, authority);
    }
    // The connection's peer vouches for the header it sent only when it is trusted; otherwise the
    // chain starts with it, so a client cannot smuggle an address in.
    let peer_ip = peer.client.map(|c| c.ip());
    let trusted = peer_ip.is_some_and(|ip| out.forwarding.trusted.contains(ip));
    let scheme = if peer.remote.https { "https" } else { "http" };
    match out.forwarding.header {
        ForwardedHeader::XForwardedFor => {
            let mut chain = String::new();
            if trusted && let Some(prior) = joined(&req.headers, &X_FORWARDED_FOR) {
                chain.push_str(&prior);
                chain.push_str(", ");
            }
            if let Some(ip) = peer_ip {
                chain.push_str(&crate::peer::ip_text(ip));
            }
            headers.remove(FORWARDED);
            set(&mut headers, X_FORWARDED_FOR, &chain);
            set(&mut headers, X_FORWARDED_PROTO, scheme);
            match &host {
                Some(h) => {
                    headers.insert(X_FORWARDED_HOST, h.clone());
                }
                None => {
                    headers.remove(X_FORWARDED_HOST);
                }
            }
        }
        ForwardedHeader::Forwarded => {
            let mut value = String::new();
            if trusted && let Some(prior) = joined(&req.headers, &FORWARDED) {
                value.push_str(&prior);
                value.push_str(", ");
            }
            match peer_ip {
                Some(std::net::IpAddr::V6(v6)) => value.push_str(&format!("for=\"[{v6}]\"")),
                Some(ip) => value.push_str(&format!("for={ip}")),
                None => value.push_str("for=unknown"),
            }
            value.push_str(";proto=");
            value.push_str(scheme);
            // Left out when it holds a delimiter: a Host such as `a;for=6.6.6.6` must not add
            // parameters for a parser that does not honour the quotes.
            if let Some(h) = host.as_ref().and_then(|h| h.to_str().ok()).filter(|h| {
                h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
            }) {
                value.push_str(&format!(";host=\"{h}\""));
            }
            for name in [X_FORWARDED_FOR, X_FORWARDED_PROTO, X_FORWARDED_HOST] {
                headers.remove(name);
            }
            set(&mut headers, FORWARDED, &value);
        }
    }
    if out.via {
        headers.append(VIA, VIA_VALUE);
    }
    headers
}

/// The response head from a server, cleaned for the client (`Upgrade` kept on a 101).
pub fn response_headers(headers: &mut HeaderMap, switching: bool, via: bool) {
    let upgrade = switching.then(|| headers.get(UPGRADE).cloned()).flatten();
    strip_hop_by_hop(headers);
    if let Some(protocol) = upgrade {
        headers.insert(UPGRADE, protocol);
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
    if via {
        headers.append(VIA, VIA_VALUE);
    }
}

fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let values: Vec<&str> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
}

fn set(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    match HeaderValue::from_str(value) {
        Ok(v) => {
            headers.insert(name, v);
        }
        Err(_) => {
            headers.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Trusted;

    fn parts(headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().uri("/x");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).expect("req").into_parts().0
    }

    fn peer(ip: &str) -> Peer {
        let ip: std::net::IpAddr = ip.parse().expect("ip");
        Peer::new(Some(std::net::SocketAddr::new(ip, 5000)), None, false)
    }

    #[test]
    fn hop_by_hop_fields_go_and_the_chain_grows_only_from_a_trusted_peer() {
        let req = parts(&[
            ("host", "app.example"),
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("expect", "100-continue"),
            ("x-forwarded-for", "6.6.6.6"),
            ("accept", "*/*"),
        ]);
        let untrusted = Forwarding::default();
        let out = Outgoing {
            forwarding: &untrusted,
            preserve_host: true,
            server_authority: Some("10.0.0.2:9000"),
            via: true,
        };
        let h = request_headers(&req, &peer("192.0.2.7"), &out);
        for gone in ["connection", "x-secret", "keep-alive", "te", "expect"] {
            assert!(!h.contains_key(gone), "{gone}");
        }
        assert_eq!(
            h["x-forwarded-for"], "192.0.2.7",
            "a client's own claim is dropped"
        );
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "app.example");
        assert_eq!(h["host"], "app.example");
        assert_eq!(h["via"], "1.1 gatehouse");
        assert_eq!(h["accept"], "*/*");

        let trusted = Forwarding {
            trusted: Trusted::parse(&["192.0.2.0/24".into()]).expect("net"),
            header: ForwardedHeader::XForwardedFor,
        };
        let out = Outgoing {
            forwarding: &trusted,
            preserve_host: false,
            server_authority: Some("10.0.0.2:9000"),
            via: false,
        };
        let h = request_headers(&req, &peer("192.0.2.7"), &out);
        assert_eq!(h["x-forwarded-for"], "6.6.6.6, 192.0.2.7");
        assert_eq!(h["host"], "10.0.0.2:9000");
    }

    #[test]
    fn forwarded_is_written_when_it_is_the_chosen_header() {
        let req = parts(&[("host", "a.example"), ("x-forwarded-for", "1.1.1.1")]);
        let forwarding = Forwarding {
            trusted: Trusted::default(),
            header: ForwardedHeader::Forwarded,
        };
        let out = Outgoing {
            forwarding: &forwarding,
            preserve_host: true,
            server_authority: None,
            via: false,
        };
        let h = request_headers(&req, &peer("2001:db8::1"), &out);
        assert_eq!(
            h["forwarded"],
            "for=\"[2001:db8::1]\";proto=http;host=\"a.example\""
        );
        assert!(!h.contains_key("x-forwarded-for"));
    }

    #[test]
    fn only_websocket_upgrades_are_offered_to_servers() {
        let req = parts(&[
            ("host", "a"),
            ("connection", "Upgrade, HTTP2-Settings"),
            ("upgrade", "h2c"),
        ]);
        assert!(!wants_upgrade(&req));
        let forwarding = Forwarding::default();
        let out = Outgoing {
            forwarding: &forwarding,
            preserve_host: true,
            server_authority: None,
            via: false,
        };
        let h = request_headers(&req, &peer("127.0.0.1"), &out);
        assert!(
            !h.contains_key("upgrade") && !h.contains_key("connection"),
            "{h:?}"
        );
    }

    #[test]
    fn a_host_with_delimiters_is_left_out_of_forwarded() {
        let req = parts(&[("host", "a;proto=https;for=6.6.6.6")]);
        let forwarding = Forwarding {
            trusted: Trusted::default(),
            header: ForwardedHeader::Forwarded,
        };
        let out = Outgoing {
            forwarding: &forwarding,
            preserve_host: true,
            server_authority: None,
            via: false,
        };
        let h = request_headers(&req, &peer("192.0.2.1"), &out);
        assert_eq!(h["forwarded"], "for=192.0.2.1;proto=http");
    }

    #[test]
    fn upgrades_pass_through_both_ways() {
        let req = parts(&[
            ("host", "a"),
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "k"),
        ]);
        assert!(wants_upgrade(&req));
        let forwarding = Forwarding::default();
        let out = Outgoing {
            forwarding: &forwarding,
            preserve_host: true,
            server_authority: None,
            via: false,
        };
        let h = request_headers(&req, &peer("127.0.0.1"), &out);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        let mut back = HeaderMap::new();
        back.insert(UPGRADE, HeaderValue::from_static("websocket"));
        back.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        response_headers(&mut back, true, false);
        assert_eq!(back["upgrade"], "websocket");
        let mut back = HeaderMap::new();
        back.insert(UPGRADE, HeaderValue::from_static("h2c"));
        response_headers(&mut back, false, false);
        assert!(!back.contains_key("upgrade"));
    }
}
