//! Proxy headers: `X-Forwarded-For` with `X-Forwarded-Proto`, or RFC 7239 `Forwarded`, whichever
//! `[server] forwarded_header` names (only that one is read), believed only when the connection
//! comes from an address in `[server] forwarded_allow_ips`. Resolved once per request, before
//! plugins run, so plugins, the access log and the app see the same client and scheme.
//!
//! The client is found the way nginx's `real_ip_recursive` finds it: walk the chain from the nearest
//! hop outwards, skipping trusted proxies; the first untrusted address is the client.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;

#[cfg(test)]
use crate::config::Trusted;
use crate::config::{ForwardedHeader, Forwarding};
use crate::peer::Remote;

/// The client and scheme for a request from `peer` (`None`: a Unix socket), after believing what a
/// trusted proxy says; `tls` is whether the connection itself is TLS.
pub fn resolve(
    peer: Option<SocketAddr>,
    tls: bool,
    headers: &HeaderMap,
    forwarding: &Forwarding,
) -> Remote {
    let mut remote = Remote {
        ip: peer.map(|a| a.ip()),
        port: peer.map(|a| a.port()),
        https: tls,
    };
    let Some(peer) = peer else { return remote };
    if !forwarding.trusted.contains(peer.ip()) {
        return remote;
    }
    let (chain, proto) = forwarded_chain(headers, forwarding.header);
    let mut named = None;
    for hop in chain.iter().rev() {
        match hop {
            // A trusted proxy: the client is further out. If every hop is trusted, the origin is the
            // outermost one.
            Some(ip) if forwarding.trusted.contains(*ip) => named = Some(*ip),
            Some(ip) => {
                named = Some(*ip);
                break;
            }
            // An obfuscated or unparsable hop: stop believing the chain here.
            None => break,
        }
    }
    if let Some(ip) = named {
        remote.ip = Some(ip);
        remote.port = None;
    }
    if let Some(proto) = proto {
        remote.https = proto.eq_ignore_ascii_case("https");
    }
    remote
}

/// The `for` chain (nearest hop last) and the scheme the nearest proxy reported, from the one
/// header configured.
fn forwarded_chain(
    headers: &HeaderMap,
    header: ForwardedHeader,
) -> (Vec<Option<IpAddr>>, Option<String>) {
    let values = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(',').map(|s| s.trim().to_string()))
            .collect()
    };
    if header == ForwardedHeader::Forwarded {
        let forwarded = values("forwarded");
        let mut chain = Vec::new();
        let mut proto = None;
        for element in &forwarded {
            for pair in element.split(';') {
                let Some((key, value)) = pair.split_once('=') else {
                    continue;
                };
                let value = value.trim().trim_matches('"');
                match key.trim().to_ascii_lowercase().as_str() {
                    "for" => chain.push(parse_node(value)),
                    "proto" => proto = Some(value.to_string()),
                    _ => {}
                }
            }
        }
        return (chain, proto);
    }
    let chain = values("x-forwarded-for")
        .iter()
        .map(|v| parse_node(v))
        .collect();
    let proto = values("x-forwarded-proto").pop();
    (chain, proto)
}

/// `1.2.3.4`, `1.2.3.4:80`, `[::1]`, `[::1]:80`, `::1`.
fn parse_node(node: &str) -> Option<IpAddr> {
    let node = node.trim();
    if let Ok(ip) = node.parse() {
        return Some(ip);
    }
    if let Ok(sa) = node.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    node.strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .and_then(|n| n.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        h
    }

    fn trusting(list: &[&str], header: ForwardedHeader) -> Forwarding {
        Forwarding {
            trusted: Trusted::parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("valid"),
            header,
        }
    }

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().expect("ip"))
    }

    const XFF: ForwardedHeader = ForwardedHeader::XForwardedFor;

    #[test]
    fn untrusted_peers_are_not_believed() {
        let peer = Some("203.0.113.9:5000".parse().expect("addr"));
        let h = headers(&[
            ("X-Forwarded-For", "1.1.1.1"),
            ("X-Forwarded-Proto", "https"),
        ]);
        let r = resolve(peer, false, &h, &trusting(&["127.0.0.1"], XFF));
        assert_eq!(
            (r.ip, r.port, r.https),
            (ip("203.0.113.9"), Some(5000), false)
        );
        let r = resolve(peer, false, &h, &Forwarding::default());
        assert_eq!(r.ip, ip("203.0.113.9"));
    }

    #[test]
    fn trusted_chain_is_walked_from_the_nearest_hop() {
        let peer = Some("10.0.0.2:5000".parse().expect("addr"));
        let h = headers(&[
            ("X-Forwarded-For", "6.6.6.6, 1.2.3.4, 10.0.0.7"),
            ("X-Forwarded-Proto", "https"),
        ]);
        let r = resolve(peer, false, &h, &trusting(&["10.0.0.0/8"], XFF));
        assert_eq!(
            r.ip,
            ip("1.2.3.4"),
            "the spoofable leftmost entry is ignored"
        );
        assert_eq!((r.port, r.https), (None, true));
        let r = resolve(peer, false, &h, &trusting(&["*"], XFF));
        assert_eq!(
            r.ip,
            ip("6.6.6.6"),
            "with every hop trusted, the outermost is the origin"
        );
    }

    #[test]
    fn only_the_configured_header_is_read() {
        let peer = Some("127.0.0.1:1".parse().expect("addr"));
        // A client behind a proxy that appends X-Forwarded-For adds a Forwarded of its own.
        let h = headers(&[
            ("Forwarded", "for=192.0.2.60;proto=https;by=203.0.113.43"),
            ("X-Forwarded-For", "9.9.9.9"),
        ]);
        let r = resolve(peer, false, &h, &trusting(&["127.0.0.1"], XFF));
        assert_eq!(
            (r.ip, r.https),
            (ip("9.9.9.9"), false),
            "Forwarded is ignored"
        );
        let fw = trusting(&["127.0.0.1"], ForwardedHeader::Forwarded);
        let r = resolve(peer, false, &h, &fw);
        assert_eq!(
            (r.ip, r.https),
            (ip("192.0.2.60"), true),
            "X-Forwarded-For is ignored"
        );
        let h = headers(&[("Forwarded", "for=\"[2001:db8:cafe::17]:4711\"")]);
        assert_eq!(resolve(peer, false, &h, &fw).ip, ip("2001:db8:cafe::17"));
        let h = headers(&[("Forwarded", "for=_hidden, for=198.51.100.17")]);
        assert_eq!(resolve(peer, false, &h, &fw).ip, ip("198.51.100.17"));
        assert!(Trusted::parse(&["nonsense".to_string()]).is_err());
    }

    #[test]
    fn tls_is_https_unless_a_trusted_proxy_says_otherwise() {
        let peer = Some("127.0.0.1:1".parse().expect("addr"));
        let r = resolve(peer, true, &HeaderMap::new(), &Forwarding::default());
        assert!(r.https);
        let r = resolve(None, false, &HeaderMap::new(), &Forwarding::default());
        assert_eq!((r.ip, r.port, r.https), (None, None, false));
    }
}
