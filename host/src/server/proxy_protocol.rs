//! The PROXY protocol (v1 text and v2 binary, HAProxy's), read before TLS or HTTP on listeners
//! behind an L4 load balancer: the client's real address comes first on the connection.
//!
//! The header is parsed by the `ppp` crate; what is ours is reading exactly the header's bytes,
//! never the first bytes of the TLS or HTTP stream after it.

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The v2 signature; a v1 header starts with `PROXY `.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// A v1 header is at most 107 bytes, CRLF included.
const V1_MAX: usize = 107;
/// Address data and TLVs we accept in a v2 header (the format allows 64 KiB).
const V2_MAX_PAYLOAD: usize = 1024;

/// The addresses a PROXY header names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proxied {
    /// The client as the load balancer saw it.
    pub client: SocketAddr,
    /// The address the client connected to.
    pub local: SocketAddr,
}

/// Why a connection's PROXY header was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Reading failed or the connection closed.
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
    /// Not a PROXY protocol header (or a malformed one).
    #[error("not a valid PROXY protocol header")]
    Invalid,
}

/// Reads one PROXY header. `Ok(None)`: a valid header without addresses (v2 `LOCAL`, v1
/// `UNKNOWN`: a health check of the balancer itself), so the connection's own addresses stand.
pub async fn read_header<IO>(io: &mut IO) -> Result<Option<Proxied>, ProxyError>
where
    IO: AsyncRead + Unpin,
{
    let mut buf = vec![0u8; 16];
    io.read_exact(&mut buf[..6]).await?;
    if &buf[..6] == b"PROXY " {
        // The line ends at CRLF; read byte by byte so nothing after it is consumed.
        buf.truncate(6);
        while !buf.ends_with(b"\r\n") {
            if buf.len() >= V1_MAX {
                return Err(ProxyError::Invalid);
            }
            buf.push(io.read_u8().await?);
        }
    } else if buf[..6] == V2_SIGNATURE[..6] {
        io.read_exact(&mut buf[6..16]).await?;
        if &buf[..12] != V2_SIGNATURE {
            return Err(ProxyError::Invalid);
        }
        let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
        if len > V2_MAX_PAYLOAD {
            return Err(ProxyError::Invalid);
        }
        buf.resize(16 + len, 0);
        io.read_exact(&mut buf[16..]).await?;
    } else {
        return Err(ProxyError::Invalid);
    }
    parse(&buf)
}

fn parse(header: &[u8]) -> Result<Option<Proxied>, ProxyError> {
    use ppp::{HeaderResult, v1, v2};
    let pair = |client: SocketAddr, local: SocketAddr| Some(Proxied { client, local });
    match HeaderResult::parse(header) {
        HeaderResult::V1(Ok(h)) => Ok(match h.addresses {
            v1::Addresses::Tcp4(a) => pair(
                SocketAddr::from((a.source_address, a.source_port)),
                SocketAddr::from((a.destination_address, a.destination_port)),
            ),
            v1::Addresses::Tcp6(a) => pair(
                SocketAddr::from((a.source_address, a.source_port)),
                SocketAddr::from((a.destination_address, a.destination_port)),
            ),
            v1::Addresses::Unknown => None,
        }),
        HeaderResult::V2(Ok(h)) => Ok(match (h.command, h.addresses) {
            (v2::Command::Local, _) => None,
            (v2::Command::Proxy, v2::Addresses::IPv4(a)) => pair(
                SocketAddr::from((a.source_address, a.source_port)),
                SocketAddr::from((a.destination_address, a.destination_port)),
            ),
            (v2::Command::Proxy, v2::Addresses::IPv6(a)) => pair(
                SocketAddr::from((a.source_address, a.source_port)),
                SocketAddr::from((a.destination_address, a.destination_port)),
            ),
            (v2::Command::Proxy, _) => None,
        }),
        _ => Err(ProxyError::Invalid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(bytes: &[u8]) -> (Result<Option<Proxied>, ProxyError>, Vec<u8>) {
        let mut io = bytes;
        let header = read_header(&mut io).await;
        (header, io.to_vec())
    }

    #[tokio::test]
    async fn v1_and_v2_headers_name_the_client_and_leave_the_stream_after_them() {
        let (h, rest) =
            read(b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nGET / HTTP/1.1\r\n").await;
        let h = h.expect("valid").expect("addresses");
        assert_eq!(h.client, "192.0.2.1:56324".parse().expect("addr"));
        assert_eq!(h.local, "198.51.100.2:443".parse().expect("addr"));
        assert_eq!(rest, b"GET / HTTP/1.1\r\n");

        let client: SocketAddr = "[2001:db8::1]:4000".parse().expect("addr");
        let local: SocketAddr = "[2001:db8::2]:443".parse().expect("addr");
        let mut bytes = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (client, local),
        )
        .build()
        .expect("v2");
        bytes.extend_from_slice(b"\x16\x03\x01");
        let (h, rest) = read(&bytes).await;
        assert_eq!(h.expect("valid"), Some(Proxied { client, local }));
        assert_eq!(rest, b"\x16\x03\x01");

        let (h, rest) = read(b"PROXY UNKNOWN\r\nX").await;
        assert_eq!(h.expect("valid"), None);
        assert_eq!(rest, b"X");
    }

    #[tokio::test]
    async fn anything_else_is_refused() {
        for bad in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"PROXY TCP4 nonsense\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 and then far too much text to be a header at all, past the limit\r\n",
            b"PROXY",
        ] {
            assert!(read(bad).await.0.is_err(), "{bad:?}");
        }
    }
}
