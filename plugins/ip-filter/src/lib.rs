//! `ip-filter`: allow and deny lists of IPv4 and IPv6 addresses and CIDR blocks, as nginx's
//! `allow` / `deny`. Scope it to paths or hosts with the chain's `paths` / `hosts`.
//!
//! ```toml
//! [[plugins]]
//! use = "ip-filter"
//! paths = ["/admin"]
//! [plugins.config]
//! allow = ["10.0.0.0/8", "2001:db8::/32", "127.0.0.1"]
//! deny = ["10.6.6.0/24"]
//! ```
//!
//! The most specific matching block decides (the longest prefix; for equal prefixes `deny`
//! wins), so a `deny` inside an `allow` block carves a hole and an `allow` inside a `deny` block
//! lets one address through. A client no block matches is let through if `allow` is empty (a
//! deny list) and refused if it is not (an allow list). Refused requests get 403 before any body
//! is read. The address is the client's as the server resolved it (`forwarded_allow_ips`),
//! IPv4-mapped IPv6 addresses counting as IPv4; a Unix-socket client has none and is refused
//! by an allow list. The decision is the address's alone: once a client is let through, the host
//! lets its next requests through without calling the plugin (`continue_for_client`).

use std::net::IpAddr;
use std::time::Duration;

use gatehouse_sdk::{Action, Filter, Hook, LocalResponse, Request, metrics};
use ipnet::IpNet;
use serde::Deserialize;

/// How long an allowed client's `Continue` holds without a call: the lists change only with the
/// config, and a reload starts afresh.
const CLIENT_HOLDS: Duration = Duration::from_secs(3600);

/// The plugin's `config` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
    /// The status for refused clients (default 403).
    status: Option<u16>,
}

/// The filter: blocks, most specific first.
#[derive(Debug)]
pub struct IpFilter {
    /// (block, allowed), sorted by prefix length, longest first; deny before allow for equal ones.
    rules: Vec<(IpNet, bool)>,
    allow_list: bool,
    status: u16,
}

fn parse(text: &str, list: &str) -> Result<IpNet, String> {
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    text.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("{list}: {text:?} is not an IP address or CIDR block"))
}

impl Filter for IpFilter {
    type Config = Config;
    const HOOKS: &'static [Hook] = &[Hook::OnRequest];

    fn new(config: Config) -> Result<Self, String> {
        let mut rules = Vec::new();
        for text in &config.allow {
            rules.push((parse(text, "allow")?, true));
        }
        for text in &config.deny {
            rules.push((parse(text, "deny")?, false));
        }
        if rules.is_empty() {
            return Err("give `allow` or `deny` (or both) a list of addresses".into());
        }
        rules.sort_by(|a, b| b.0.prefix_len().cmp(&a.0.prefix_len()).then(a.1.cmp(&b.1)));
        let status = config.status.unwrap_or(403);
        if !(400..=599).contains(&status) {
            return Err(format!("status must be 4xx or 5xx, not {status}"));
        }
        Ok(IpFilter {
            rules,
            allow_list: !config.allow.is_empty(),
            status,
        })
    }

    fn on_request(&self, req: &mut Request) -> Action {
        if self.allows(req.client_addr()) {
            // The decision is the address's alone: the host lets this client's next requests
            // through without a call (a reload starts afresh with the new lists).
            req.continue_for_client(CLIENT_HOLDS);
            return Action::Continue;
        }
        metrics::add("refused", 1);
        LocalResponse::new(self.status)
            .text(format!("{} Forbidden\n", self.status))
            .into()
    }
}

impl IpFilter {
    /// Whether `client` may pass.
    fn allows(&self, client: Option<IpAddr>) -> bool {
        let Some(ip) = client.map(|ip| ip.to_canonical()) else {
            return !self.allow_list;
        };
        self.rules
            .iter()
            .find(|(net, _)| net.contains(&ip))
            .map_or(!self.allow_list, |(_, allowed)| *allowed)
    }
}

gatehouse_sdk::export_filter!(IpFilter);

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_sdk::testing::{self, TestRequest};

    fn decide(config: &str, ip: &str) -> bool {
        let f: IpFilter = testing::init(config).expect("config");
        let mut req = TestRequest::get("/").with_client_ip(ip);
        let allowed = testing::on_request(&f, &mut req) == Action::Continue;
        // Only a client let through is let through again without a call.
        assert_eq!(
            req.continue_for_client.is_some(),
            allowed,
            "{ip}: {:?}",
            req.continue_for_client
        );
        allowed
    }

    #[test]
    fn allow_lists_refuse_everyone_else() {
        let c = r#"{"allow": ["10.0.0.0/8", "2001:db8::/32"]}"#;
        assert!(decide(c, "10.1.2.3"));
        assert!(decide(c, "2001:db8::1"));
        assert!(!decide(c, "192.0.2.1"));
        assert!(!decide(c, "2001:db9::1"));
        assert!(
            decide(c, "::ffff:10.0.0.1"),
            "an IPv4-mapped address is IPv4"
        );
    }

    #[test]
    fn deny_lists_let_everyone_else_through_and_the_most_specific_block_wins() {
        let c = r#"{"deny": ["192.0.2.0/24"]}"#;
        assert!(!decide(c, "192.0.2.9"));
        assert!(decide(c, "198.51.100.1"));
        let c = r#"{"allow": ["10.0.0.0/8"], "deny": ["10.6.6.0/24"]}"#;
        assert!(decide(c, "10.1.1.1"));
        assert!(!decide(c, "10.6.6.6"));
        let c = r#"{"allow": ["10.6.6.6"], "deny": ["10.0.0.0/8"]}"#;
        assert!(decide(c, "10.6.6.6"));
        assert!(!decide(c, "10.6.6.7"));
        assert!(!decide(
            r#"{"allow": ["1.2.3.4"], "deny": ["1.2.3.4"]}"#,
            "1.2.3.4"
        ));
    }

    #[test]
    fn refusals_are_403_with_a_body_and_counted() {
        testing::reset();
        let f: IpFilter = testing::init(r#"{"allow": ["10.0.0.0/8"]}"#).expect("config");
        let mut req = TestRequest::get("/").with_client_ip("192.0.2.1");
        match testing::on_request(&f, &mut req) {
            Action::Respond(r) => assert_eq!(r.status, 403),
            other => panic!("{other:?}"),
        }
        assert_eq!(testing::metric("refused"), 1);
    }

    #[test]
    fn bad_configs_say_what_is_wrong() {
        let err = testing::init::<IpFilter>(r#"{"allow": ["10.0.0.300"]}"#).expect_err("bad");
        assert!(err.contains("10.0.0.300"), "{err}");
        assert!(testing::init::<IpFilter>("{}").is_err());
        assert!(testing::init::<IpFilter>(r#"{"deny": ["::1"], "status": 200}"#).is_err());
    }
}
