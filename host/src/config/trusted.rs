//! `[server] forwarded_allow_ips` and `forwarded_header`: which peers' proxy headers are believed,
//! and which header they set, as typed values.

use std::net::IpAddr;

use ipnet::IpNet;

/// The proxy header that names the client (nginx's `real_ip_header`): only this one is read, so a
/// client cannot add the other and have it believed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For` (and `X-Forwarded-Proto`), what nginx, HAProxy and cloud balancers set.
    #[default]
    #[serde(rename = "x-forwarded-for")]
    XForwardedFor,
    /// RFC 7239 `Forwarded` (`for=` and `proto=`).
    #[serde(rename = "forwarded")]
    Forwarded,
}

/// Whose proxy headers are believed, and which header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Forwarding {
    /// Peers whose header is believed (none by default: Gatehouse is usually the edge).
    pub trusted: Trusted,
    /// The header they set.
    pub header: ForwardedHeader,
}

/// Which peers may tell us who the client is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trusted(Vec<IpNet>);

impl Trusted {
    /// Parses entries such as `127.0.0.1`, `10.0.0.0/8`, `::1` or `*` (everyone).
    pub fn parse(entries: &[String]) -> Result<Trusted, String> {
        let mut nets = Vec::new();
        for entry in entries {
            let entry = entry.trim();
            if entry == "*" {
                nets.push("0.0.0.0/0".parse().map_err(|_| "internal")?);
                nets.push("::/0".parse().map_err(|_| "internal")?);
            } else if let Ok(net) = entry.parse::<IpNet>() {
                nets.push(net);
            } else if let Ok(ip) = entry.parse::<IpAddr>() {
                nets.push(IpNet::from(ip));
            } else {
                return Err(format!(
                    "{entry:?} is not an IP address or network (e.g. \"10.0.0.0/8\")"
                ));
            }
        }
        Ok(Trusted(nets))
    }

    /// Whether `ip` is one of the trusted peers (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.0.iter().any(|net| net.contains(&ip))
    }
}
