//! Proxy headers: `X-Forwarded-For`, `X-Forwarded-Proto` and `Forwarded` (RFC 7239), believed only
//! when the connection comes from an address in `forwarded_allow_ips`.
//!
//! The client is found the way nginx's `real_ip_recursive` finds it: walk the chain from the nearest
//! hop outwards, skipping trusted proxies; the first untrusted address is the client.

use std::net::{IpAddr, SocketAddr};

pub use crate::config::Trusted;
use http::HeaderMap;

/// Who the client is and which scheme it used, after believing what trusted proxies say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// The client's address (port kept only when it is the peer itself).
    pub addr: Option<SocketAddr>,
    /// Its IP when a proxy named it (no port is known then).
    pub forwarded_ip: Option<IpAddr>,
    /// `http` or `https`.
    pub scheme: &'static str,
}

/// Resolves the real client and scheme for a request from `peer`.
pub fn resolve(peer: Option<SocketAddr>, headers: &HeaderMap, trusted: &Trusted) -> Client {
    let mut client = Client {
        addr: peer,
        forwarded_ip: None,
        scheme: "http",
    };
    let Some(peer) = peer else { return client };
    if !trusted.contains(peer.ip()) {
        return client;
    }
    let (chain, proto) = forwarded_chain(headers);
    for hop in chain.iter().rev() {
        match hop {
            // A trusted proxy: the client is further out. If every hop is trusted, the origin is the
            // outermost one.
            Some(ip) if trusted.contains(*ip) => client.forwarded_ip = Some(*ip),
            Some(ip) => {
                client.forwarded_ip = Some(*ip);
                break;
            }
            // An obfuscated or unparsable hop: stop believing the chain here.
            None => break,
        }
    }
    if let Some(proto) = proto {
        client.scheme = if proto.eq_ignore_ascii_case("https") {
            "https"
        } else {
            "http"
        };
    }
    client
}

/// The `for` chain (nearest hop last) and the scheme the nearest proxy reported.
fn forwarded_chain(headers: &HeaderMap) -> (Vec<Option<IpAddr>>, Option<String>) {
    let values = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(',').map(|s| s.trim().to_string()))
            .collect()
    };
    let forwarded = values("forwarded");
    if !forwarded.is_empty() {
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

    fn trusted(list: &[&str]) -> Trusted {
        Trusted::parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("valid")
    }

    #[test]
    fn untrusted_peers_are_not_believed() {
        let peer = Some("203.0.113.9:5000".parse().expect("addr"));
        let h = headers(&[
            ("X-Forwarded-For", "1.1.1.1"),
            ("X-Forwarded-Proto", "https"),
        ]);
        let c = resolve(peer, &h, &trusted(&["127.0.0.1"]));
        assert_eq!((c.forwarded_ip, c.scheme), (None, "http"));
        let c = resolve(peer, &h, &Trusted::default());
        assert_eq!(c.forwarded_ip, None);
    }

    #[test]
    fn trusted_chain_is_walked_from_the_nearest_hop() {
        let peer = Some("10.0.0.2:5000".parse().expect("addr"));
        let h = headers(&[
            ("X-Forwarded-For", "6.6.6.6, 1.2.3.4, 10.0.0.7"),
            ("X-Forwarded-Proto", "https"),
        ]);
        let c = resolve(peer, &h, &trusted(&["10.0.0.0/8"]));
        assert_eq!(
            c.forwarded_ip,
            Some("1.2.3.4".parse().expect("ip")),
            "the spoofable leftmost entry is ignored"
        );
        assert_eq!(c.scheme, "https");
        let c = resolve(peer, &h, &trusted(&["*"]));
        assert_eq!(
            c.forwarded_ip,
            Some("6.6.6.6".parse().expect("ip")),
            "with every hop trusted, the outermost is the origin"
        );
    }

    #[test]
    fn rfc_7239_forwarded() {
        let peer = Some("127.0.0.1:1".parse().expect("addr"));
        let h = headers(&[
            ("Forwarded", "for=192.0.2.60;proto=https;by=203.0.113.43"),
            ("X-Forwarded-For", "9.9.9.9"),
        ]);
        let c = resolve(peer, &h, &trusted(&["127.0.0.1"]));
        assert_eq!(
            c.forwarded_ip,
            Some("192.0.2.60".parse().expect("ip")),
            "Forwarded wins over X-Forwarded-For"
        );
        assert_eq!(c.scheme, "https");
        let h = headers(&[("Forwarded", "for=\"[2001:db8:cafe::17]:4711\"")]);
        assert_eq!(
            resolve(peer, &h, &trusted(&["127.0.0.1"])).forwarded_ip,
            Some("2001:db8:cafe::17".parse().expect("ip"))
        );
        let h = headers(&[("Forwarded", "for=_hidden, for=198.51.100.17")]);
        assert_eq!(
            resolve(peer, &h, &trusted(&["127.0.0.1"])).forwarded_ip,
            Some("198.51.100.17".parse().expect("ip"))
        );
        assert!(Trusted::parse(&["nonsense".to_string()]).is_err());
    }
}
