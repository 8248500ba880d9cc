//! Who is on the other end of a connection, as targets and plugins see it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// The connection a request came on, reduced to what a target needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The connection's peer address; `None` on a Unix socket.
    pub client: Option<SocketAddr>,
    /// The local address the connection came in on; `None` on a Unix socket.
    pub local: Option<SocketAddr>,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The subject of the client's verified certificate (mutual TLS), RFC 4514 form.
    pub client_subject: Option<Arc<str>>,
    /// The client as plugins, the access log and the app see it (see [`crate::forwarded`]).
    pub remote: Remote,
    /// Whether the connection sends files with `sendfile` (plain HTTP/1 over TCP).
    pub sends_files: bool,
}

/// The client of one request: the connection's peer, or the client a trusted proxy names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remote {
    /// Its address; `None` on a Unix socket.
    pub ip: Option<IpAddr>,
    /// Its port, known only when the client is the peer itself.
    pub port: Option<u16>,
    /// Whether it used HTTPS (TLS here, or a trusted proxy's `proto`).
    pub https: bool,
}

impl Peer {
    /// A connection's peer, its own client until a request says otherwise.
    pub fn new(client: Option<SocketAddr>, local: Option<SocketAddr>, tls: bool) -> Peer {
        Peer {
            client,
            local,
            tls,
            client_subject: None,
            remote: Remote {
                ip: client.map(|a| a.ip()),
                port: client.map(|a| a.port()),
                https: tls,
            },
            sends_files: false,
        }
    }
}

/// An IP address as text, for the environ's `REMOTE_ADDR`. IPv4 by hand: `Display`
/// (the formatting machinery) costs ~1,300 instructions, 5% of the front's work on a hello world.
pub fn ip_text(ip: IpAddr) -> String {
    let IpAddr::V4(v4) = ip else {
        return ip.to_string();
    };
    let mut text = String::with_capacity(15);
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text.push('.');
        }
        if octet >= 100 {
            text.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            text.push(char::from(b'0' + octet / 10 % 10));
        }
        text.push(char::from(b'0' + octet % 10));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::ip_text;

    #[test]
    fn ip_text_matches_display() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "255.255.255.255",
            "9.99.100.199",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:1.2.3.4",
        ] {
            let parsed: std::net::IpAddr = ip.parse().expect("an address");
            assert_eq!(ip_text(parsed), parsed.to_string());
        }
    }
}
